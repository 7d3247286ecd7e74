//! Mounting from mount(8) and /etc/fstab through `mount.fuse.switchfs` (README "Usage",
//! docs/operations.md "Mount from /etc/fstab"), the `fuse.switchfs` type, and the generated
//! man pages and completions.
//!
//! mount(8) finds helpers only in /sbin, so these tests (as root) point
//! /sbin/mount.fuse.switchfs at the helper just built, for as long as they run, and put back
//! whatever was there.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::*;

const HELPER: &str = env!("CARGO_BIN_EXE_mount_fuse_switchfs");
const INSTALLED: &str = "/sbin/mount.fuse.switchfs";
const SAVED: &str = "/sbin/.mount.fuse.switchfs.saved-by-tests";

/// How many tests use the installed helper right now.
static USERS: Mutex<usize> = Mutex::new(0);

/// /sbin/mount.fuse.switchfs points at the built helper while one of these lives.
struct HelperInstalled;

fn install_helper() -> HelperInstalled {
    assert!(
        is_root(),
        "these tests run mount(8), which needs root, and install its helper in /sbin"
    );
    let mut users = USERS.lock().unwrap_or_else(|e| e.into_inner());
    if *users == 0 {
        let ours = std::fs::read_link(INSTALLED).is_ok_and(|t| t == Path::new(HELPER));
        if !ours && std::fs::symlink_metadata(INSTALLED).is_ok() {
            std::fs::rename(INSTALLED, SAVED).unwrap();
        }
        let tmp = format!("{INSTALLED}.tmp-{}", std::process::id());
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(HELPER, &tmp).unwrap();
        std::fs::rename(&tmp, INSTALLED).unwrap();
    }
    *users += 1;
    HelperInstalled
}

impl Drop for HelperInstalled {
    fn drop(&mut self) {
        let mut users = USERS.lock().unwrap_or_else(|e| e.into_inner());
        *users -= 1;
        if *users == 0 {
            let _ = std::fs::remove_file(INSTALLED);
            let _ = std::fs::rename(SAVED, INSTALLED);
        }
    }
}

/// The switchfs daemon serving `mnt`, found by its command line (the helper passes the
/// mount point last, after `--`).
fn daemon_pid(mnt: &Path) -> Option<i32> {
    let want = mnt.as_os_str().as_encoded_bytes();
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: i32 = e.file_name().to_str()?.parse().ok()?;
        let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
        let args: Vec<&[u8]> = cmdline
            .split(|&b| b == 0)
            .filter(|a| !a.is_empty())
            .collect();
        let is_switchfs = args.first()?.ends_with(b"/switchfs");
        let serves =
            args.len() >= 2 && args[args.len() - 2] == b"--" && args[args.len() - 1] == want;
        (is_switchfs && serves).then_some(pid)
    })
}

fn alive(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Stops a daemon the helper left running when a test fails before `umount`.
struct Detached(PathBuf);

impl Drop for Detached {
    fn drop(&mut self) {
        if let Some(pid) = daemon_pid(&self.0) {
            // SAFETY: kill on a pid we just read; at worst the signal misses.
            unsafe { libc::kill(pid, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while alive(pid) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

fn findmnt(mnt: &Path, column: &str) -> String {
    let out = Command::new("findmnt")
        .args(["-no", column])
        .arg(mnt)
        .output()
        .expect("findmnt (util-linux) must be installed");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn mount_t(opts: &str, source: &str, mnt: &Path) -> Output {
    Command::new("mount")
        .args(["-t", "fuse.switchfs", "-o", opts, source])
        .arg(mnt)
        .output()
        .expect("mount (util-linux) must be installed")
}

fn umount(mnt: &Path) {
    let out = Command::new("umount").arg(mnt).output().unwrap();
    assert!(
        out.status.success(),
        "umount: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Waits for the daemon to end after `umount`: mount(8)'s way of stopping it.
fn assert_ends(pid: i32) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while alive(pid) {
        assert!(
            Instant::now() < deadline,
            "switchfs (pid {pid}) still runs 15 s after umount"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The paths every mount in these tests names, so nothing lands in /run or /var.
fn own_paths(fx: &Fixture) -> String {
    format!(
        "state={},control={},log={}",
        fx.state().display(),
        fx.socket().display(),
        fx.root.join("daemon.log").display()
    )
}

#[test]
fn an_fstab_line_mounts_serves_switches_and_umount_stops_the_daemon() {
    let _helper = install_helper();
    let fx = Fixture::new("mh-fstab");
    fx.two_releases();
    let _cleanup = Detached(fx.mnt());
    let fstab = fx.root.join("fstab");
    std::fs::write(
        &fstab,
        format!(
            "# generic options mount and systemd use must not bother switchfs\n\
             switchfs {} fuse.switchfs defaults,noauto,nofail,_netdev,\
             x-systemd.requires=network.target,releases={},initial=1,cache_timeout=5,\
             threads=2,{} 0 0\n",
            fx.mnt().display(),
            fx.releases().display(),
            own_paths(&fx)
        ),
    )
    .unwrap();

    let out = Command::new("mount")
        .arg("-T")
        .arg(&fstab)
        .arg(fx.mnt())
        .output()
        .unwrap();
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "mount -T: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // mount returned, so the release is served already: no wait, no retry.
    assert_eq!(findmnt(&fx.mnt(), "FSTYPE"), "fuse.switchfs");
    // fstab's own source, so a second `mount -a` finds the line mounted.
    assert_eq!(findmnt(&fx.mnt(), "SOURCE"), "switchfs");
    assert_eq!(fx.read("index.php"), "<?php echo 'release 1';");

    // Detached from mount(8): its own session, not our child.
    let pid = daemon_pid(&fx.mnt()).expect("no switchfs process serves the mount");
    assert_eq!(
        // SAFETY: getsid on a pid only reads.
        unsafe { libc::getsid(pid) },
        pid,
        "daemon not in its own session"
    );

    fx.activate("2");
    assert_eq!(fx.read("index.php"), "<?php echo 'release 2';");
    let status = Command::new(SWITCHCTL)
        .arg("--mount")
        .arg(fx.mnt())
        .arg("status")
        .output()
        .unwrap();
    assert!(stdout(&status).contains("active:       2"), "{status:?}");

    umount(&fx.mnt());
    assert_ends(pid);
    assert!(!is_mounted(&fx.mnt()));
    assert_eq!(persisted(&fx.state()), "active=2 previous=1");
}

#[test]
fn mount_t_takes_the_releases_directory_as_source_and_refuses_a_second_mount() {
    let _helper = install_helper();
    let fx = Fixture::new("mh-source");
    fx.two_releases();
    let _cleanup = Detached(fx.mnt());
    let opts = format!("initial=2,{}", own_paths(&fx));
    let out = mount_t(&opts, &fx.releases().to_string_lossy(), &fx.mnt());
    assert!(
        out.status.success(),
        "mount -t: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(findmnt(&fx.mnt(), "FSTYPE"), "fuse.switchfs");
    assert_eq!(fx.read("only-in-2.txt"), "new in 2");
    let pid = daemon_pid(&fx.mnt()).expect("no switchfs process serves the mount");

    // The same line again (a boot script and an fstab entry, say): one line, and the
    // running mount keeps serving.
    let again = mount_t(&opts, &fx.releases().to_string_lossy(), &fx.mnt());
    let err = one_line_error(&again);
    assert!(err.contains("already served by another switchfs"), "{err}");
    assert!(alive(pid));
    assert_eq!(fx.read("only-in-2.txt"), "new in 2");

    umount(&fx.mnt());
    assert_ends(pid);
}

#[test]
fn bad_options_and_failed_starts_give_one_line_and_change_nothing() {
    let _helper = install_helper();
    let fx = Fixture::new("mh-bad");
    fx.two_releases();
    let _cleanup = Detached(fx.mnt());
    let rel = fx.releases().display().to_string();
    let own = own_paths(&fx);
    // A served history first, which the failures below must leave as it is.
    let out = mount_t(
        &format!("releases={rel},initial=1,{own}"),
        "switchfs",
        &fx.mnt(),
    );
    assert!(out.status.success(), "{out:?}");
    fx.activate("2");
    let pid = daemon_pid(&fx.mnt()).unwrap();
    umount(&fx.mnt());
    assert_ends(pid);

    let cases = [
        (
            format!("releases={rel},bogus=1,{own}"),
            "unknown option \"bogus\"",
        ),
        (format!("releases={rel},noexec,{own}"), "noexec"),
        (format!("initial=1,{own}"), "releases=DIR"),
        (format!("releases={rel},initial=../1,{own}"), "'../1'"),
        (
            format!("releases={rel}/nope,{own}"),
            "No such file or directory",
        ),
        (format!("releases={rel},threads=0,{own}"), "--threads"),
        // Parsed fine, fails while starting: the daemon's own reason comes through.
        (
            format!(
                "releases={rel},state={},control=/proc/nope/ctl.sock,log={}",
                fx.state().display(),
                fx.root.join("daemon.log").display()
            ),
            "/proc/nope",
        ),
    ];
    for (opts, expected) in cases {
        let out = mount_t(&opts, "switchfs", &fx.mnt());
        let err = one_line_error(&out);
        assert!(
            err.starts_with("mount.fuse.switchfs: ") && err.contains(expected),
            "-o {opts}: expected {expected:?} in {err:?}"
        );
        assert!(!is_mounted(&fx.mnt()), "-o {opts} left a mount");
        assert_eq!(daemon_pid(&fx.mnt()), None, "-o {opts} left a daemon");
    }
    assert_eq!(persisted(&fx.state()), "active=2 previous=1");
}

#[test]
fn a_directly_started_daemon_shows_type_fuse_switchfs() {
    let fx = Fixture::new("mh-type");
    fx.two_releases();
    let _d = fx.start(&["--initial", "1"]);
    assert_eq!(findmnt(&fx.mnt(), "FSTYPE"), "fuse.switchfs");
}

#[test]
fn man_pages_and_completions_come_from_the_clap_definitions() {
    let fx = Fixture::new("mh-docs");
    let dir = fx.root.join("docs");
    for bin in [SWITCHFS, SWITCHCTL, HELPER] {
        let out = Command::new(bin)
            .arg("--generate-docs")
            .arg(&dir)
            .output()
            .unwrap();
        assert!(out.status.success(), "{bin}: {out:?}");
    }
    let read =
        |rel: &str| std::fs::read_to_string(dir.join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
    // Options each page must show, straight from the clap definitions.
    assert!(read("man1/switchfs.1").contains("\\-\\-cache\\-timeout"));
    assert!(read("man1/switchctl.1").contains("activate"));
    assert!(read("man1/switchctl-activate.1").contains("\\-\\-wait\\-drain"));
    assert!(read("man1/mount.fuse.switchfs.1").contains("fstab"));
    assert!(read("completions/bash/switchctl.bash").contains("rollback"));
    assert!(read("completions/zsh/_switchfs").contains("--releases"));
    assert!(read("completions/fish/switchctl.fish").contains("prune"));
}

#[test]
fn two_mounts_of_one_line_at_once_leave_exactly_one_serving() {
    let _helper = install_helper();
    let fx = Fixture::new("mh-race");
    fx.two_releases();
    let _cleanup = Detached(fx.mnt());
    let opts = format!("initial=1,{}", own_paths(&fx));
    for round in 0..3 {
        let results: Vec<Output> = std::thread::scope(|s| {
            let racers: Vec<_> = (0..2)
                .map(|_| s.spawn(|| mount_t(&opts, &fx.releases().to_string_lossy(), &fx.mnt())))
                .collect();
            racers.into_iter().map(|r| r.join().unwrap()).collect()
        });
        let won: Vec<&Output> = results.iter().filter(|o| o.status.success()).collect();
        assert_eq!(won.len(), 1, "round {round}: {results:?}");
        let lost = results.iter().find(|o| !o.status.success()).unwrap();
        one_line_error(lost);
        let mounts = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .filter(|l| l.split(' ').nth(4) == Some(&*fx.mnt().to_string_lossy()))
            .count();
        assert_eq!(mounts, 1, "round {round}: stacked mounts");
        assert_eq!(fx.read("index.php"), "<?php echo 'release 1';");
        let pid = daemon_pid(&fx.mnt()).unwrap();
        umount(&fx.mnt());
        assert_ends(pid);
    }
}

#[test]
fn a_log_file_planted_by_another_user_is_refused() {
    let _helper = install_helper();
    let fx = Fixture::new("mh-log");
    fx.two_releases();
    fx.open_up_for_others();
    let _cleanup = Detached(fx.mnt());
    // A sticky world-writable directory, like /tmp, where an operator put log=.
    let public = fx.root.join("public");
    std::fs::create_dir(&public).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&public, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let planted = public.join("planted.log");
    let link = public.join("link.log");
    let out = as_nobody(&["touch", &planted.to_string_lossy()]);
    assert!(out.status.success(), "{out:?}");
    let out = as_nobody(&["ln", "-s", "/etc/passwd", &link.to_string_lossy()]);
    assert!(out.status.success(), "{out:?}");
    let passwd = std::fs::read("/etc/passwd").unwrap();

    for (log, expected) in [
        (&planted, "not a regular file of our own"),
        (&link, "cannot open log"),
    ] {
        let opts = format!(
            "releases={},initial=1,state={},control={},log={}",
            fx.releases().display(),
            fx.state().display(),
            fx.socket().display(),
            log.display()
        );
        let err = one_line_error(&mount_t(&opts, "switchfs", &fx.mnt()));
        assert!(err.contains(expected), "log={}: {err}", log.display());
        assert!(!is_mounted(&fx.mnt()));
    }
    assert_eq!(
        std::fs::metadata(&planted).unwrap().len(),
        0,
        "wrote into the planted file"
    );
    assert_eq!(std::fs::read("/etc/passwd").unwrap(), passwd);
}

/// The helper reports why the daemon failed from this run's lines of its log. Read back by
/// path, a log in a directory another user owns could by then be a symlink to a root-only
/// file, whose first line root would print: it reads through the descriptor it checked.
#[test]
fn the_failure_line_is_read_from_the_log_it_opened_not_from_its_path() {
    assert!(
        is_root(),
        "this test plants links as nobody: run it as root"
    );
    let fx = Fixture::new("mh-lograce");
    let dir = fx.root.join("userdir");
    std::fs::create_dir(&dir).unwrap();
    std::os::unix::fs::chown(&dir, Some(65534), Some(65534)).unwrap();
    fx.open_up_for_others();
    let secret = fx.root.join("secret");
    std::fs::write(&secret, "ROOT-ONLY-LINE\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let log = dir.join("x.log");
    let stop = fx.root.join("stop");
    let swapper = nobody_shell(format!(
        "cd {dir} && while [ ! -e {stop} ]; do mv x.log x.old 2>/dev/null; \
             ln -s {secret} x.log 2>/dev/null; done",
        dir = dir.display(),
        stop = stop.display(),
        secret = secret.display()
    ))
    .spawn()
    .unwrap();
    let mut leaked = 0;
    for _ in 0..40 {
        let out = Command::new(HELPER)
            .arg("switchfs")
            .arg(fx.mnt())
            .arg("-o")
            .arg(format!(
                "releases={},state={},control={},log={}",
                fx.root.join("no-such-releases").display(),
                fx.state().display(),
                fx.socket().display(),
                log.display()
            ))
            .output()
            .unwrap();
        assert!(!out.status.success());
        if String::from_utf8_lossy(&out.stderr).contains("ROOT-ONLY-LINE") {
            leaked += 1;
        }
    }
    std::fs::write(&stop, "").unwrap();
    let mut swapper = swapper;
    let _ = swapper.wait();
    assert_eq!(
        leaked, 0,
        "root printed a line of a root-only file {leaked} times"
    );
    assert!(!is_mounted(&fx.mnt()));
}

// README "Crashes and upgrades": the variables that hand descriptors to switchfs (to a
// server from its keeper, to a keeper from systemd) are not passed on by the mount helper,
// so whoever runs mount cannot make the daemon adopt descriptors of their choosing.
#[test]
fn handoff_variables_of_the_caller_never_reach_the_daemon() {
    let _helper = install_helper();
    let fx = Fixture::new("mh-env");
    fx.two_releases();
    let _cleanup = Detached(fx.mnt());
    let opts = format!("initial=1,{}", own_paths(&fx));
    let out = Command::new("mount")
        .args(["-t", "fuse.switchfs", "-o", &opts])
        .arg(fx.releases())
        .arg(fx.mnt())
        .env("SWITCHFS_SERVER", "0 0 1 0 0 1")
        .env("SWITCHFS_RESUME", "0 0 7 31 0 0 0 0")
        .output()
        .expect("mount (util-linux) must be installed");
    assert!(
        out.status.success(),
        "mount: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(fx.read("index.php"), "<?php echo 'release 1';");
    umount(&fx.mnt());
}

/// Issue 16: mount(8) resolves the mount point before it runs the helper, so `current`
/// pointing at root's directory arrives as that directory. The helper finds the spelling
/// mount(8) was given (its command line, the fstab it read) and refuses; nothing mounts.
#[test]
fn a_mount_point_mount_8_resolved_through_a_symlink_is_refused() {
    let _helper = install_helper();
    let fx = Fixture::new("mh-link");
    fx.two_releases();
    let secret = fx.root.join("secret");
    std::fs::create_dir(&secret).unwrap();
    std::fs::write(secret.join("authorized_keys"), "root's keys").unwrap();
    let www = fx.root.join("www");
    std::fs::create_dir(&www).unwrap();
    let current = www.join("current");
    std::os::unix::fs::symlink(&secret, &current).unwrap();
    let _cleanup = Detached(secret.clone());
    let opts = format!(
        "releases={},initial=1,{}",
        fx.releases().display(),
        own_paths(&fx)
    );
    let out = mount_t(&opts, "switchfs", &current);
    let err = one_line_error(&out);
    assert!(
        err.contains(&format!("it was named {}", current.display()))
            && err.contains("resolves through a symlink"),
        "{err}"
    );
    assert_eq!(
        findmnt(&secret, "FSTYPE"),
        "",
        "mounted over the link's target"
    );
    let fstab = fx.root.join("fstab");
    std::fs::write(
        &fstab,
        format!("switchfs {} fuse.switchfs {opts} 0 0\n", current.display()),
    )
    .unwrap();
    let out = Command::new("mount")
        .arg("-T")
        .arg(&fstab)
        .arg(&current)
        .output()
        .unwrap();
    let err = one_line_error(&out);
    assert!(err.contains("resolves through a symlink"), "{err}");
    assert_eq!(
        findmnt(&secret, "FSTYPE"),
        "",
        "mounted over the link's target"
    );
    assert_eq!(
        std::fs::read_to_string(secret.join("authorized_keys")).unwrap(),
        "root's keys"
    );
}

// Issue 19, "habits ops scripts rely on".

/// A second `mount -a` is a no-op (exit 0, same daemon), for a label source and for the
/// releases directory as source: the mount shows fstab's own source, which is what mount(8)
/// compares (libmount's mnt_table_is_fs_mounted: source, target, root).
#[test]
fn a_second_mount_a_finds_the_lines_mounted_and_exits_0() {
    let _helper = install_helper();
    let fx = Fixture::new("mh-again");
    fx.two_releases();
    let mnt2 = fx.root.join("mnt2");
    std::fs::create_dir(&mnt2).unwrap();
    let _cleanup = (Detached(fx.mnt()), Detached(mnt2.clone()));
    let own2 = format!(
        "state={},control={},log={}",
        fx.root.join("state2").display(),
        fx.root.join("ctl2.sock").display(),
        fx.root.join("daemon2.log").display()
    );
    let fstab = fx.root.join("fstab");
    std::fs::write(
        &fstab,
        format!(
            "switchfs {} fuse.switchfs releases={},initial=1,{} 0 0\n\
             {} {} fuse.switchfs initial=2,{own2} 0 0\n",
            fx.mnt().display(),
            fx.releases().display(),
            own_paths(&fx),
            fx.releases().display(),
            mnt2.display(),
        ),
    )
    .unwrap();
    let mount_a = || {
        Command::new("mount")
            .arg("-a")
            .arg("-T")
            .arg(&fstab)
            .output()
            .unwrap()
    };
    let first = mount_a();
    assert!(first.status.success(), "first mount -a: {first:?}");
    assert_eq!(findmnt(&fx.mnt(), "SOURCE"), "switchfs");
    assert_eq!(
        findmnt(&mnt2, "SOURCE"),
        fx.releases().display().to_string()
    );
    let pids = (daemon_pid(&fx.mnt()).unwrap(), daemon_pid(&mnt2).unwrap());
    let second = mount_a();
    assert!(
        second.status.success() && second.stderr.is_empty(),
        "second mount -a: {second:?}"
    );
    assert_eq!(
        (daemon_pid(&fx.mnt()).unwrap(), daemon_pid(&mnt2).unwrap()),
        pids
    );
    // Still found as switchfs mounts without the `switchfs:` prefix in the source.
    let status = Command::new(SWITCHCTL)
        .arg("--mount")
        .arg(&mnt2)
        .arg("status")
        .output()
        .unwrap();
    assert!(stdout(&status).contains("active:       2"), "{status:?}");
    umount(&fx.mnt());
    umount(&mnt2);
    assert_ends(pids.0);
    assert_ends(pids.1);
}

/// `-f` (fake, as `mount -f` passes it) has switchfs check every option and value: a bogus
/// one exits non-zero with one line, good ones exit 0; nothing is mounted either way.
#[test]
fn the_fake_mount_checks_the_options() {
    let _helper = install_helper();
    let fx = Fixture::new("mh-fake");
    fx.two_releases();
    let rel = fx.releases().display().to_string();
    let own = own_paths(&fx);
    let fake = |opts: &str| {
        Command::new("mount")
            .args(["-f", "-t", "fuse.switchfs", "-o", opts, "switchfs"])
            .arg(fx.mnt())
            .output()
            .unwrap()
    };
    let good = fake(&format!("releases={rel},initial=1,{own}"));
    assert!(good.status.success(), "{good:?}");
    for (opts, expected) in [
        (
            format!("releases={rel},bogus=1,{own}"),
            "unknown option \"bogus\"",
        ),
        (format!("releases={rel},threads=0,{own}"), "--threads"),
        (
            format!("releases={rel}/nope,{own}"),
            "No such file or directory",
        ),
    ] {
        let out = fake(&opts);
        assert!(!out.status.success(), "-f -o {opts} passed: {out:?}");
        let err = one_line_error(&out);
        assert!(err.contains(expected), "-o {opts}: {err}");
    }
    // The helper's own -f, as mount(8) runs it.
    let out = Command::new(HELPER)
        .args(["-f", "switchfs"])
        .arg(fx.mnt())
        .args(["-o", &format!("releases={rel},bogus,{own}")])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(!is_mounted(&fx.mnt()));
    assert!(!fx.state().exists(), "a fake mount persisted a release");
}

/// The helper's readiness socket does not stay in the daemon: after the helper exits, a
/// switch (STATUS=) and the stop (STOPPING=1) no longer warn that the socket is gone.
#[test]
fn a_helper_mount_logs_no_false_warnings() {
    let _helper = install_helper();
    let fx = Fixture::new("mh-quiet");
    fx.two_releases();
    let _cleanup = Detached(fx.mnt());
    let out = mount_t(
        &format!("initial=1,{}", own_paths(&fx)),
        &fx.releases().to_string_lossy(),
        &fx.mnt(),
    );
    assert!(out.status.success(), "{out:?}");
    let pid = daemon_pid(&fx.mnt()).unwrap();
    fx.activate("2");
    umount(&fx.mnt());
    assert_ends(pid);
    let log = std::fs::read_to_string(fx.root.join("daemon.log")).unwrap();
    assert!(log.contains("switched from 1 to 2"), "{log}");
    let warns: Vec<&str> = log.lines().filter(|l| l.contains("WARN")).collect();
    assert!(warns.is_empty(), "false warnings: {warns:?}\n{log}");
}

#[test]
fn mode_bind_mounts_a_read_only_bind_mount_and_umount_stops_the_daemon() {
    let _helper = install_helper();
    let fx = Fixture::bind("mh-bind");
    fx.two_releases();
    let _cleanup = Detached(fx.mnt());
    let opts = format!("mode=bind,initial=1,{}", own_paths(&fx));
    let out = mount_t(&opts, &fx.releases().to_string_lossy(), &fx.mnt());
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "mount -t -o mode=bind: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The release's own filesystem, read-only, nosuid, nodev: no FUSE in the data path.
    assert_ne!(findmnt(&fx.mnt(), "FSTYPE"), "fuse.switchfs");
    let options = findmnt(&fx.mnt(), "OPTIONS");
    for want in ["ro", "nosuid", "nodev"] {
        assert!(options.split(',').any(|o| o == want), "{options}");
    }
    assert_eq!(fx.read("index.php"), "<?php echo 'release 1';");
    let pid = daemon_pid(&fx.mnt()).expect("no switchfs process serves the mount");
    fx.activate("2");
    assert_eq!(fx.read("index.php"), "<?php echo 'release 2';");

    umount(&fx.mnt());
    assert_ends(pid);
    assert!(!is_mounted(&fx.mnt()));
    assert_eq!(persisted(&fx.state()), "active=2 previous=1");
}
