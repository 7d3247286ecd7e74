//! `--mode bind` (README "Modes"): the docroot is a read-only bind mount of the active
//! release, swapped at each switch, and the daemon is not in the data path. Each test runs a
//! real daemon on a fixture whose directory is a shared bind mount (`Fixture::bind`).

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use crate::common::{
    Fixture, ParkedShell, as_nobody, is_mounted, nobody_shell, one_line_error, persisted,
    refused_start, stdout, wait_until,
};

/// Mounts at exactly `path`, from /proc/self/mountinfo.
fn mounts_at(path: &Path) -> usize {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let want = path.to_string_lossy().replace(' ', "\\040");
    text.lines()
        .filter(|l| l.split(' ').nth(4) == Some(want.as_str()))
        .count()
}

/// Mounts at or below the fixture (other tests mount elsewhere at the same time).
fn mounts_in(fx: &Fixture) -> usize {
    crate::common::mounts_under(&fx.root).len()
}

#[test]
fn switch_rollback_status_and_list_work_through_switchctl() {
    let fx = Fixture::bind("bm-basic");
    fx.two_releases();
    let _d = fx.start(&["--initial", "1"]);
    assert_eq!(fx.read("index.php"), "<?php echo 'release 1';");
    fx.activate("2");
    assert_eq!(fx.read("index.php"), "<?php echo 'release 2';");
    assert_eq!(fx.read("only-in-2.txt"), "new in 2");
    assert!(!fx.m("only-in-1.txt").exists());
    assert_eq!(persisted(&fx.state()), "active=2 previous=1");

    let json = stdout(&fx.ctl(&["status", "--json"]));
    assert!(json.contains("\"mode\":\"bind\""), "{json}");
    let text = stdout(&fx.ctl(&["status"]));
    assert!(text.contains("mode:         bind"), "{text}");
    assert!(text.contains("active:       2"), "{text}");
    let list = stdout(&fx.ctl(&["list"]));
    assert!(list.contains('1') && list.contains('2'), "{list}");

    let out = fx.ctl(&["rollback"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(fx.read("index.php"), "<?php echo 'release 1';");
    assert_eq!(fx.active(), "1");
    assert_eq!(mounts_at(&fx.mnt()), 1, "one mount at the mount point");
}

#[test]
fn writes_give_erofs_as_root_and_as_nobody() {
    let fx = Fixture::bind("bm-erofs");
    fx.two_releases();
    fx.open_up_for_others();
    let _d = fx.start(&["--initial", "1"]);
    let err = std::fs::write(fx.m("index.php"), "x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");
    let err = std::fs::write(fx.m("new.txt"), "x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");
    let script = format!("echo x > {}/new.txt", fx.mnt().display());
    let out = nobody_shell(&script).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("Read-only"), "{err}");
    let read = as_nobody(&["cat", &fx.m("index.php").to_string_lossy()]);
    assert_eq!(stdout(&read), "<?php echo 'release 1';");
}

#[test]
fn a_held_file_and_a_working_directory_keep_their_release_and_wait_drain_waits() {
    let fx = Fixture::bind("bm-held");
    fx.two_releases();
    let _d = fx.start(&["--initial", "1"]);
    let mut held = std::fs::File::open(fx.m("index.php")).unwrap();
    let parked = ParkedShell::park(&fx.m("app"), "cat a/b/c/deep.php");
    fx.activate("2");
    let mut text = String::new();
    held.read_to_string(&mut text).unwrap();
    assert_eq!(
        text, "<?php echo 'release 1';",
        "a held file follows its release"
    );
    assert_eq!(
        parked.resume(),
        "deep 1",
        "a working directory keeps its release"
    );

    // Something holds release 2 now; a switch away that waits for the drain returns only
    // once it is let go (a held cwd in a child shell).
    let mut holder = Command::new("sh")
        .args(["-c", "cd \"$1\" && echo ready && read x", "sh"])
        .arg(fx.mnt())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(holder.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line, "ready\n");
    let status = stdout(&fx.ctl(&["status", "--json"]));
    assert!(status.contains("\"working_dirs\":1"), "{status}");
    let started = std::time::Instant::now();
    let mut stdin = holder.stdin.take().unwrap();
    let release = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(1500));
        stdin.write_all(b"go\n").unwrap();
    });
    let out = fx.ctl(&["activate", "1", "--wait-drain=20"]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(1400),
        "--wait-drain returned while release 2 was still held: {out:?}"
    );
    release.join().unwrap();
    holder.wait().unwrap();
    assert_eq!(fx.read("index.php"), "<?php echo 'release 1';");
}

#[test]
fn sigkill_leaves_the_docroot_serving_and_a_new_daemon_adopts_it() {
    let fx = Fixture::bind("bm-kill");
    fx.two_releases();
    let mut d = fx.start(&["--initial", "1"]);
    fx.activate("2");
    d.stop_with(libc::SIGKILL);
    std::mem::forget(d); // its drop would unmount the docroot this test keeps
    assert_eq!(fx.read("index.php"), "<?php echo 'release 2';");
    assert!(is_mounted(&fx.mnt()));

    let d2 = fx.start(&[]);
    assert!(
        d2.log_text()
            .contains("adopted the bind mount of release \"2\"")
    );
    assert_eq!(fx.active(), "2");
    assert_eq!(mounts_at(&fx.mnt()), 1, "adopted, not stacked");
    fx.activate("1");
    assert_eq!(fx.read("index.php"), "<?php echo 'release 1';");

    // A plain stop leaves it serving too, for the next start.
    let mut d2 = d2;
    let status = d2.stop_with(libc::SIGTERM);
    assert!(status.success(), "{status}: {}", d2.log_text());
    std::mem::forget(d2);
    assert_eq!(fx.read("index.php"), "<?php echo 'release 1';");
}

#[test]
fn a_foreign_mount_stacked_on_the_docroot_is_never_detached() {
    let fx = Fixture::bind("bm-foreign");
    fx.two_releases();
    let _d = fx.start(&["--initial", "1"]);
    let other = fx.root.join("other");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("index.php"), "foreign").unwrap();
    crate::common::bind_mount(&other, &fx.mnt());
    let err = one_line_error(&fx.ctl(&["activate", "2"]));
    assert!(err.contains("did not make"), "{err}");
    assert_eq!(
        fx.read("index.php"),
        "foreign",
        "the foreign mount stays on top"
    );
    assert_eq!(persisted(&fx.state()), "active=1 previous=-");
    assert_eq!(fx.active(), "1");
    crate::common::force_unmount(&fx.mnt()); // the foreign one, ours is beneath
    assert_eq!(fx.read("index.php"), "<?php echo 'release 1';");
    fx.activate("2");
    assert_eq!(fx.read("index.php"), "<?php echo 'release 2';");
}

#[test]
fn a_relative_link_leaving_the_release_is_refused_with_one_line() {
    let fx = Fixture::bind("bm-links");
    fx.two_releases();
    std::fs::create_dir_all(fx.root.join("shared")).unwrap();
    std::fs::write(fx.root.join("shared/.env"), "secret").unwrap();
    std::os::unix::fs::symlink("../../shared/.env", fx.releases().join("2/.env")).unwrap();
    let _d = fx.start(&["--initial", "1"]);
    let err = one_line_error(&fx.ctl(&["activate", "2"]));
    assert!(
        err.contains(".env") && err.contains("use_relative_symlink"),
        "{err}"
    );
    assert_eq!(fx.active(), "1");
    assert_eq!(fx.read("index.php"), "<?php echo 'release 1';");
}

#[test]
fn a_private_parent_mount_is_refused_at_start_with_nothing_mounted() {
    // A plain fixture: /tmp is on the host's private root mount here.
    let fx = Fixture::new("bm-private");
    fx.two_releases();
    let args: Vec<std::ffi::OsString> = vec![
        "--mode".into(),
        "bind".into(),
        "--releases".into(),
        fx.releases().into(),
        "--control".into(),
        fx.socket().into(),
        "--state".into(),
        fx.state().into(),
        "--initial".into(),
        "1".into(),
        fx.mnt().into(),
    ];
    let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
    let err = refused_start(&fx, &args);
    assert!(
        err.contains("make-shared") && err.contains("--mode fuse"),
        "{err}"
    );
    assert!(!is_mounted(&fx.mnt()));
    assert!(!fx.state().exists(), "nothing persisted");
}

#[test]
fn a_reader_in_a_slave_mount_namespace_sees_every_switch() {
    let fx = Fixture::bind("bm-slave");
    fx.two_releases();
    let _d = fx.start(&["--initial", "1"]);
    let script = format!(
        "echo ready; while read x; do cat {}/index.php; echo; done",
        fx.mnt().display()
    );
    let mut reader = Command::new("unshare")
        .args(["--mount", "--propagation", "slave", "sh", "-c", &script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("unshare (util-linux) must be installed");
    let mut input = reader.stdin.take().unwrap();
    let mut output = BufReader::new(reader.stdout.take().unwrap());
    let mut line = String::new();
    output.read_line(&mut line).unwrap();
    assert_eq!(line, "ready\n");
    for name in ["2", "1", "2"] {
        fx.activate(name);
        input.write_all(b"x\n").unwrap();
        line.clear();
        output.read_line(&mut line).unwrap();
        assert_eq!(line.trim_end(), format!("<?php echo 'release {name}';"));
    }
    drop(input);
    reader.wait().unwrap();
}

#[test]
fn a_thousand_switches_leave_one_mount_and_no_growth() {
    let fx = Fixture::bind("bm-many");
    fx.two_releases();
    let _d = fx.start(&["--initial", "1"]);
    fx.activate("2");
    fx.activate("1");
    let before = mounts_in(&fx);
    // One switchctl per switch would make this a test of process start-up: a shell loop
    // keeps it to the control round trips.
    let script = format!(
        "for i in $(seq 500); do {c} --control {s} activate 2 >/dev/null && \
         {c} --control {s} activate 1 >/dev/null || exit 1; done",
        c = crate::common::SWITCHCTL,
        s = fx.socket().display()
    );
    let out = Command::new("sh").args(["-c", &script]).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(mounts_at(&fx.mnt()), 1);
    assert!(
        wait_until(10, || mounts_in(&fx) == before),
        "mount table grew from {before} to {} mounts",
        mounts_in(&fx)
    );
    assert_eq!(fx.read("index.php"), "<?php echo 'release 1';");
    // The detached mounts are gone from the kernel once nothing holds them: the daemon's
    // usage scan forgets them, so status lists nothing held.
    let json = stdout(&fx.ctl(&["status", "--json"]));
    assert!(
        json.contains("\"open_files\":0,\"working_dirs\":0,\"maps\":0"),
        "{json}"
    );
}

#[test]
fn a_release_replaced_by_a_symlink_is_refused_and_nobody_cannot_switch() {
    let fx = Fixture::bind("bm-symlink");
    fx.two_releases();
    fx.open_up_for_others();
    let _d = fx.start(&["--initial", "1"]);
    // Only the daemon's own control users may make it mount anything.
    let sock = fx.socket().to_string_lossy().into_owned();
    let out = as_nobody(&[
        crate::common::SWITCHCTL,
        "--control",
        &sock,
        "activate",
        "2",
    ]);
    let err = one_line_error(&out);
    assert!(!err.is_empty());
    assert_eq!(fx.active(), "1");
    // A release directory swapped for a link (to another release, or anywhere) is refused.
    std::fs::rename(fx.releases().join("2"), fx.root.join("two")).unwrap();
    std::os::unix::fs::symlink(fx.root.join("two"), fx.releases().join("2")).unwrap();
    let err = one_line_error(&fx.ctl(&["activate", "2"]));
    assert!(err.contains('2'), "{err}");
    assert_eq!(fx.active(), "1");
    assert_eq!(fx.read("index.php"), "<?php echo 'release 1';");
    assert_eq!(mounts_at(&fx.mnt()), 1);
}

/// `status` in bind mode says what holds each release's mount (files, working dirs, maps)
/// and nothing of FUSE's: no open handles, no kernel inode cache (the daemon has neither).
#[test]
fn status_text_counts_what_holds_each_release_and_no_fuse_fields() {
    let fx = Fixture::bind("bm-status");
    fx.two_releases();
    let _d = fx.start(&["--initial", "1"]);
    let held = std::fs::File::open(fx.m("index.php")).unwrap();
    let parked = ParkedShell::park(&fx.m("app"), "true");
    fx.activate("2");
    let mut text = String::new();
    let counted = wait_until(10, || {
        text = stdout(&fx.ctl(&["status"]));
        text.contains("\n    1: in use: 1 open files, 1 working dirs, 0 maps\n")
    });
    assert!(counted, "{text}");
    let active = text
        .lines()
        .find(|l| l.starts_with("  * 2: "))
        .unwrap_or("");
    assert!(
        active == "  * 2: unused since the daemon started"
            || active.starts_with("  * 2: unused since 20")
            || active.starts_with("  * 2: active: "),
        "{text}"
    );
    assert!(!text.contains("open handles"), "{text}");
    assert!(!text.contains("inodes cached"), "{text}");
    let json = stdout(&fx.ctl(&["status", "--json"]));
    assert!(json.contains("\"open_handles\":"), "{json}");
    assert_eq!(
        json.matches("\"open_handles\":0,").count(),
        json.matches("\"open_handles\":").count(),
        "{json}"
    );
    drop(held);
    parked.resume();
}
