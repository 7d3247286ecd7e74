//! The command line and the control socket: status, list, bad input of every kind
//! (README "How it works, and the rules it keeps": *Bad input changes nothing*), persistence
//! across restarts and kills (*The state file*), the socket's permissions and stale sockets
//! (README "Usage", `--control`).

mod common;

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::Command;
use std::time::Duration;

use common::*;

/// Sends raw bytes on the control socket and returns whatever comes back.
fn raw(fx: &Fixture, bytes: &[u8]) -> String {
    let mut s = UnixStream::connect(fx.socket()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = s.write_all(bytes);
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

#[test]
fn status_and_list_for_people_and_machines() {
    let fx = Fixture::new("status");
    fx.two_releases();
    fs::create_dir_all(fx.releases().join("10")).unwrap();
    fs::write(fx.releases().join(".switchfs-notes"), "x").unwrap();
    let _d = fx.start(&["--initial", "1", "--track-opens"]);
    fx.activate("2");
    let text = stdout(&fx.ctl(&["status"]));
    assert!(text.contains("active:       2 (since 20"), "{text}");
    assert!(text.contains("previous:     1"), "{text}");
    assert!(
        text.contains(&format!("mount point:  {}", fx.mnt().display())),
        "{text}"
    );
    let json = stdout(&fx.ctl(&["status", "--json"]));
    assert!(json.starts_with("{\"active\":\"2\""), "{json}");
    assert!(json.contains("\"previous\":\"1\""), "{json}");
    assert!(json.contains("\"problem\":null"), "{json}");
    let list = stdout(&fx.ctl(&["list"]));
    assert_eq!(
        list,
        "  1 (previous) (rollback target)\n* 2 (active)\n  10\n"
    );
    let json = stdout(&fx.ctl(&["list", "--json"]));
    assert_eq!(
        json,
        "[{\"name\":\"1\",\"active\":false,\"previous\":true,\"history\":1,\
         \"rollback_target\":true,\"rolled_back\":false},\
         {\"name\":\"2\",\"active\":true,\"previous\":false,\"history\":0,\
         \"rollback_target\":false,\"rolled_back\":false},\
         {\"name\":\"10\",\"active\":false,\"previous\":false,\"history\":null,\
         \"rollback_target\":false,\"rolled_back\":false}]\n"
    );
    // With --track-opens, open files are counted per release.
    let held = fs::File::open(fx.m("index.php")).unwrap();
    let text = stdout(&fx.ctl(&["status"]));
    assert!(
        text.contains("* 2: active: 1 open files, 0 working dirs, 0 maps, 1 open handles"),
        "{text}"
    );
    assert!(
        text.contains("    10: unused since the daemon started"),
        "{text}"
    );
    drop(held);
    // --mount finds the socket through the mount itself.
    let out = Command::new(SWITCHCTL)
        .args(["--mount", fx.mnt().to_str().unwrap(), "status"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn bad_release_names_are_refused_and_change_nothing() {
    let fx = Fixture::new("badname");
    fx.two_releases();
    fs::write(fx.releases().join("plainfile"), "x").unwrap();
    std::os::unix::fs::symlink("/etc", fx.releases().join("linked")).unwrap();
    fs::create_dir_all(fx.releases().join("9")).unwrap();
    let _d = fx.start(&["--initial", "1"]);
    fs::remove_dir(fx.releases().join("9")).unwrap(); // deleted since it was uploaded
    let state_before = fs::read_to_string(fx.state()).unwrap();
    let cases: &[(&str, &str)] = &[
        ("3", "unknown release"),
        ("9", "unknown release"),
        ("plainfile", "not a directory"),
        ("linked", "symlink"),
        ("", "empty"),
        (".", "starts with '.'"),
        ("..", "starts with '.'"),
        ("../1", "contains '/'"),
        ("a/b", "contains '/'"),
        ("/etc", "contains '/'"),
    ];
    for (name, expect) in cases {
        let out = fx.ctl(&["activate", name]);
        let err = one_line_error(&out);
        assert!(err.starts_with("switchctl: "), "{err}");
        assert!(err.contains(expect), "{name:?}: {err}");
        assert_eq!(fx.active(), "1", "after {name:?}");
    }
    // The daemon validates too, whatever a client sends.
    for line in [
        "activate ..",
        "activate ../2",
        "activate a/b",
        "activate .x",
        "activate ",
    ] {
        let answer = raw(&fx, format!("{line}\n").as_bytes());
        assert!(answer.starts_with("error: "), "{line:?}: {answer:?}");
        assert_eq!(answer.lines().count(), 1);
    }
    assert_eq!(fx.active(), "1");
    assert_eq!(fs::read_to_string(fx.state()).unwrap(), state_before);
    assert_eq!(fx.read("index.php"), "<?php echo 'release 1';");
    let out = fx.ctl(&["rollback"]);
    assert!(one_line_error(&out).contains("no earlier release"));
}

#[test]
fn malformed_and_hostile_socket_traffic_changes_nothing() {
    let fx = Fixture::new("fuzz");
    fx.two_releases();
    let d = fx.start(&["--initial", "1"]);
    let big = vec![b'a'; 1 << 20];
    let cases: Vec<Vec<u8>> = vec![
        b"garbage\n".to_vec(),
        b"\n".to_vec(),
        b"\xff\xfe\xfd\n".to_vec(),
        b"activate\n".to_vec(),
        b"activate 2 3\n".to_vec(),
        b"status yaml\n".to_vec(),
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        b"activate 2\0\n".to_vec(),
        big,
    ];
    for case in &cases {
        let answer = raw(&fx, case);
        assert!(
            answer.starts_with("error: "),
            "{:?}: {answer:?}",
            &case[..case.len().min(20)]
        );
        assert_eq!(fx.active(), "1");
    }
    // Many clients at once, some silent: the daemon keeps answering and serving.
    let silent: Vec<UnixStream> = (0..100)
        .filter_map(|_| UnixStream::connect(fx.socket()).ok())
        .collect();
    let again = raw(&fx, b"ping\n");
    assert!(
        again == "ok\npong\n" || again.starts_with("error: busy: too many"),
        "{again:?}"
    );
    assert_eq!(fx.read("index.php"), "<?php echo 'release 1';");
    drop(silent);
    // A half-closed client without a newline still gets its answer. The daemon frees the
    // silent clients' slots as it notices each hang-up, so a client may meanwhile read
    // "busy" and retry, as switchctl does.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut answer = raw(&fx, b"ping");
    while answer.starts_with("error: busy:") && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        answer = raw(&fx, b"ping");
    }
    assert_eq!(answer, "ok\npong\n");
    fx.activate("2");
    assert_eq!(fx.active(), "2");
    assert!(!d.log_text().contains("panicked"));
}

#[test]
fn unreachable_daemons_and_wrong_paths_are_one_line_errors() {
    let fx = Fixture::new("dead");
    fx.two_releases();
    let out = fx.ctl(&["status"]);
    let err = one_line_error(&out);
    assert!(
        err.contains("cannot reach switchfs") && err.contains("is switchfs running?"),
        "{err}"
    );
    let out = Command::new(SWITCHCTL)
        .args(["--mount", fx.releases().to_str().unwrap(), "status"])
        .output()
        .unwrap();
    assert!(one_line_error(&out).contains("not a switchfs mount"));
    let out = Command::new(SWITCHFS)
        .args([
            "--releases",
            "/nonexistent-releases",
            fx.mnt().to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(one_line_error(&out).contains("--releases"));
    let out = Command::new(SWITCHFS)
        .args([
            "--releases",
            fx.releases().to_str().unwrap(),
            "--initial",
            "nope",
        ])
        .arg(fx.mnt())
        .arg("--control")
        .arg(fx.socket())
        .arg("--state")
        .arg(fx.state())
        .output()
        .unwrap();
    assert!(one_line_error(&out).contains("unknown release \"nope\""));
    assert!(
        !is_mounted(&fx.mnt()),
        "nothing left mounted after a failed start"
    );
}

#[test]
fn a_second_daemon_is_refused() {
    let fx = Fixture::new("second");
    fx.two_releases();
    let _d = fx.start(&["--initial", "1"]);
    // Same mount point, other socket.
    let out = Command::new(SWITCHFS)
        .args(["--releases", fx.releases().to_str().unwrap()])
        .args(["--control", fx.root.join("other.sock").to_str().unwrap()])
        .args(["--state", fx.root.join("other.state").to_str().unwrap()])
        .arg(fx.mnt())
        .output()
        .unwrap();
    let err = one_line_error(&out);
    assert!(err.contains("already served by another switchfs"), "{err}");
    // Other mount point, same socket.
    let other = fx.root.join("mnt2");
    fs::create_dir_all(&other).unwrap();
    let out = Command::new(SWITCHFS)
        .args(["--releases", fx.releases().to_str().unwrap()])
        .args(["--control", fx.socket().to_str().unwrap()])
        .args(["--state", fx.root.join("other.state").to_str().unwrap()])
        .arg(&other)
        .output()
        .unwrap();
    assert!(one_line_error(&out).contains("already listening"));
    assert!(!is_mounted(&other));
    assert_eq!(fx.active(), "1");
    assert_eq!(fx.read("index.php"), "<?php echo 'release 1';");
}

#[test]
fn control_socket_permissions_and_stale_sockets() {
    let fx = Fixture::new("sock");
    fx.two_releases();
    // A socket left by a killed daemon: a socket file nothing listens on.
    drop(UnixListener::bind(fx.socket()).unwrap());
    assert!(fs::metadata(fx.socket()).unwrap().file_type().is_socket());
    let mut d = fx.start(&["--initial", "1"]);
    let meta = fs::metadata(fx.socket()).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert!(d.log_text().contains("stale control socket"));
    d.stop_with(libc::SIGTERM);
    assert!(!fx.socket().exists(), "socket removed at shutdown");

    let _d = fx.start(&["--control-group", "65534"]);
    let meta = fs::metadata(fx.socket()).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    if is_root() {
        assert_eq!(meta.gid(), 65534);
    }
    // Something that is not a socket is never replaced.
    let fx2 = Fixture::new("sock2");
    fx2.two_releases();
    fs::write(fx2.socket(), "precious").unwrap();
    let err = Daemon::start(&fx2, &[]).err().expect("start must fail");
    assert!(err.contains("not a socket"), "{err}");
    assert_eq!(fs::read_to_string(fx2.socket()).unwrap(), "precious");
}

#[test]
fn the_active_release_survives_restarts_and_kills() {
    let fx = Fixture::new("persist");
    fx.two_releases();
    let mut d = fx.start(&["--initial", "1"]);
    fx.activate("2");
    assert_eq!(persisted(&fx.state()), "active=2 previous=1");
    let status = d.stop_with(libc::SIGTERM);
    assert!(status.success(), "clean exit on SIGTERM: {status}");
    assert!(!is_mounted(&fx.mnt()), "unmounted on SIGTERM");

    let mut d = fx.start(&["--initial", "1"]);
    assert_eq!(fx.active(), "2", "persisted release wins over --initial");
    assert_eq!(fx.read("index.php"), "<?php echo 'release 2';");
    d.stop_with(libc::SIGKILL);
    // Anything the kernel has not cached must ask the daemon, and it is gone. The serving
    // process dies just after the keeper (its parent-death signal): a request that reached
    // it in that moment ends with ECONNABORTED when the connection closes, later ones with
    // ENOTCONN. Either way the mount is dead.
    let err = fs::metadata(fx.m("never-looked-up")).unwrap_err();
    assert!(
        matches!(
            err.raw_os_error(),
            Some(libc::ENOTCONN | libc::ECONNABORTED)
        ),
        "a dead mount is left behind: {err}"
    );

    let d = fx.start(&[]);
    assert!(d.log_text().contains("dead FUSE mount"), "{}", d.log_text());
    assert_eq!(fx.active(), "2");
    assert_eq!(fx.read("index.php"), "<?php echo 'release 2';");
    let out = fx.ctl(&["rollback"]);
    assert_eq!(stdout(&out), "switched from 2 to 1\n");
}

#[test]
fn a_switch_that_cannot_be_persisted_is_refused() {
    let fx = Fixture::new("unpersist");
    fx.two_releases();
    let _d = fx.start(&["--initial", "1"]);
    // Replace the state file with a directory: the atomic rename over it fails.
    fs::remove_file(fx.state()).unwrap();
    fs::create_dir(fx.state()).unwrap();
    let err = one_line_error(&fx.ctl(&["activate", "2"]));
    assert!(err.contains("cannot persist"), "{err}");
    assert_eq!(fx.active(), "1");
    assert_eq!(fx.read("index.php"), "<?php echo 'release 1';");
}

#[test]
fn status_shows_what_still_holds_an_old_release() {
    let fx = Fixture::new("usage");
    fx.two_releases();
    let _d = fx.start(&["--initial", "1"]);
    let held = fs::File::open(fx.m("app/a/b/c/deep.php")).unwrap();
    let mut shell = Command::new("sleep")
        .arg("30")
        .current_dir(fx.m("app/a"))
        .spawn()
        .unwrap();
    fx.activate("2");
    // Eventually, not at once: a process another test thread forks holds a copy of `held`
    // until it execs (close-on-exec), and /proc shows that copy as a second open file.
    let mut text = String::new();
    let counted = wait_until(5, || {
        text = stdout(&fx.ctl(&["status"]));
        text.contains("    1: in use: 1 open files, 1 working dirs, 0 maps, 0 open handles")
    });
    assert!(counted, "{text}");
    let mut json = String::new();
    let counted = wait_until(5, || {
        json = stdout(&fx.ctl(&["status", "--json"]));
        json.contains("\"name\":\"1\",\"active\":false,\"present\":true,\"in_use\":true,\"open_files\":1,\"working_dirs\":1")
    });
    assert!(counted, "{json}");
    drop(held);
    let _ = shell.kill();
    let _ = shell.wait();
    let text = stdout(&fx.ctl(&["status"]));
    assert!(text.contains("    1: unused since 20"), "{text}");
}

#[test]
fn on_activate_hooks_run_after_each_switch_and_report_failures() {
    let fx = Fixture::new("hooks");
    fx.two_releases();
    let log = fx.root.join("hook.log");
    let record = format!(
        "echo \"$SWITCHFS_OLD_RELEASE>$SWITCHFS_NEW_RELEASE\" >> {}; echo hook-output",
        log.display()
    );
    let mut d = fx.start(&["--initial", "1", "--on-activate", &record]);
    fx.activate("2");
    fx.ctl(&["rollback"]);
    assert_eq!(fs::read_to_string(&log).unwrap(), "1>2\n2>1\n");
    assert!(
        d.log_text().contains("hook-output"),
        "hook output is logged"
    );
    d.stop_with(libc::SIGTERM);

    let _d = fx.start(&["--on-activate", "exit 7", "--hook-timeout", "5"]);
    let out = fx.ctl(&["activate", "2"]);
    assert_eq!(out.status.code(), Some(3), "switched, but the hook failed");
    let err = one_line_error(&out);
    assert!(
        err.contains("switched from 1 to 2, but on-activate hook"),
        "{err}"
    );
    assert!(err.contains("exit status: 7"), "{err}");
    assert_eq!(fx.active(), "2", "a failing hook does not undo the switch");
    assert_eq!(fx.read("index.php"), "<?php echo 'release 2';");
}

/// `--config FILE` (README "Usage"): a hook with arguments, which `$SWITCHFS_OPTIONS` in the
/// unit cannot carry, reaches `sh -c` as one command; a bad file is a one-line error and
/// nothing starts.
#[test]
fn a_config_file_carries_hooks_with_arguments() {
    let fx = Fixture::new("config");
    fx.two_releases();
    let out = fx.root.join("hook.out");
    let config = fx.root.join("site.options");
    fs::write(
        &config,
        format!(
            "# hooks keep their arguments\ninitial = 1\n\
             on-activate = printf '%s|%s\\n' \"$SWITCHFS_NEW_RELEASE\" \"two words\" >> {}\n",
            out.display()
        ),
    )
    .unwrap();
    fs::set_permissions(&config, fs::Permissions::from_mode(0o600)).unwrap();
    let mut d = fx.start(&["--config", config.to_str().unwrap()]);
    assert_eq!(fx.active(), "1", "initial = 1 from the file");
    fx.activate("2");
    assert_eq!(fs::read_to_string(&out).unwrap(), "2|two words\n");
    d.stop_with(libc::SIGTERM);

    let run = |text: &str, mode: u32| {
        fs::write(&config, text).unwrap();
        fs::set_permissions(&config, fs::Permissions::from_mode(mode)).unwrap();
        Command::new(SWITCHFS)
            .arg("--config")
            .arg(&config)
            .arg("--releases")
            .arg(fx.releases())
            .arg(fx.mnt())
            .output()
            .unwrap()
    };
    let bad = run("initial = 1\non-activte = true\n", 0o600);
    assert_eq!(bad.status.code(), Some(2));
    let err = one_line_error(&bad);
    assert!(err.contains("line 2: unknown option 'on-activte'"), "{err}");
    let open = run("on-activate = true\n", 0o666);
    let err = one_line_error(&open);
    assert!(err.contains("writable by group or others"), "{err}");
    assert!(!is_mounted(&fx.mnt()), "a refused config starts nothing");
}

/// Runs the daemon until it serves, then stops it, with stderr in `log` and
/// `JOURNAL_STREAM` set to `journal_stream`; returns what it logged.
fn log_of_a_run(
    fx: &Fixture,
    log: &std::path::Path,
    journal_stream: impl Fn(&fs::File) -> String,
) -> String {
    let file = fs::File::create(log).unwrap();
    let mut child = Command::new(SWITCHFS)
        .args(["--initial", "1", "--releases"])
        .arg(fx.releases())
        .arg("--control")
        .arg(fx.socket())
        .arg("--state")
        .arg(fx.state())
        .arg(fx.mnt())
        .env("JOURNAL_STREAM", journal_stream(&file))
        .env_remove("NOTIFY_SOCKET")
        .env_remove("RUST_LOG")
        .stderr(file)
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !fx.ctl(&["status"]).status.success() {
        assert!(
            std::time::Instant::now() < deadline,
            "not serving after 20 s: {}",
            fs::read_to_string(log).unwrap()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // SAFETY: a plain kill(2) of our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());
    fs::read_to_string(log).unwrap()
}

/// README "switchfs options", logging: on the journal's stream every line starts with its
/// priority; a stream that is not stderr (a mount helper's daemon logging to a file with the
/// variable inherited) gets millisecond timestamps.
#[test]
fn log_lines_carry_journal_priorities_or_millisecond_timestamps() {
    let fx = Fixture::new("logfmt");
    fx.two_releases();
    let log = fx.root.join("stderr.log");
    let this_file = |f: &fs::File| {
        let m = f.metadata().unwrap();
        format!("{}:{}", m.dev(), m.ino())
    };
    let text = log_of_a_run(&fx, &log, this_file);
    assert!(
        text.lines()
            .any(|l| l.starts_with("<6>switchfs::life::daemon: serving ")),
        "{text}"
    );
    for line in text.lines() {
        let p = line.get(..3).unwrap_or_default();
        assert!(
            ["<3>", "<4>", "<6>", "<7>"].contains(&p),
            "no priority: {line:?}"
        );
    }

    let another_file = |f: &fs::File| {
        let m = f.metadata().unwrap();
        format!("{}:{}", m.dev(), m.ino() + 1)
    };
    let text = log_of_a_run(&fx, &log, another_file);
    assert!(
        text.contains(" INFO  switchfs::life::daemon] serving "),
        "{text}"
    );
    for line in text.lines() {
        // [2026-12-02T00:14:07.590Z INFO  switchfs::life::daemon] ...
        let b = line.as_bytes();
        let stamp = b.len() > 25
            && b[0] == b'['
            && b[11] == b'T'
            && b[20] == b'.'
            && b[21..24].iter().all(u8::is_ascii_digit)
            && b[24] == b'Z';
        assert!(stamp, "no millisecond timestamp: {line:?}");
    }
}

#[test]
fn prune_deletes_only_old_unused_releases_and_only_when_asked() {
    let fx = Fixture::new("prune");
    fx.two_releases();
    for rel in ["3", "4"] {
        fx.write(rel, "index.php", rel);
    }
    let _d = fx.start(&["--initial", "1"]);
    fx.activate("4");
    let out = fx.ctl(&["prune", "--keep", "1"]);
    assert!(out.status.success());
    assert_eq!(
        stdout(&out),
        "keep 1 (active or previous)\nwould delete 2\nwould delete 3\n\
         keep 4 (one of the newest 1; active or previous)\ndry run: pass --yes to delete\n"
    );
    assert!(fx.releases().join("2").exists());
    let out = fx.ctl(&["prune", "--keep", "1", "--yes"]);
    assert_eq!(
        stdout(&out),
        "keep 1 (active or previous)\ndeleted 2\ndeleted 3\n"
    );
    assert!(!fx.releases().join("2").exists() && !fx.releases().join("3").exists());
    assert_eq!(
        stdout(&fx.ctl(&["list"])),
        "  1 (previous) (rollback target)\n* 4 (active)\n"
    );
    let err = one_line_error(&fx.ctl(&["prune", "--keep", "0"]));
    assert!(err.contains("--keep"), "{err}");
}

#[test]
fn wait_drain_waits_for_the_previous_release_to_be_unused() {
    let fx = Fixture::new("drain");
    fx.two_releases();
    let _d = fx.start(&["--initial", "1"]);
    let held = fs::File::open(fx.m("app/a/b/c/deep.php")).unwrap();
    let out = fx.ctl(&["activate", "2", "--wait-drain=1"]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(one_line_error(&out).contains("release 1 is still in use after 1 s"));
    assert_eq!(fx.active(), "2");
    let text = stdout(&fx.ctl(&["status"]));
    assert!(text.contains("  1: in use"), "{text}");
    drop(held);
    let out = fx.ctl(&["rollback"]);
    assert!(out.status.success());
    let out = fx.ctl(&["activate", "2", "--wait-drain"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout(&out),
        "switched from 1 to 2; release 1 is no longer in use\n"
    );
    let text = stdout(&fx.ctl(&["status"]));
    assert!(text.contains("  1: unused since 20"), "{text}");
}

// README "Usage": a usage error is one line that names what is missing, exit 2.
#[test]
fn usage_errors_name_the_missing_argument() {
    let cases: [(&str, &[&str], &str); 5] = [
        (
            SWITCHCTL,
            &["activate"],
            "switchctl: missing required argument <NAME> for 'activate' (see switchctl activate --help)",
        ),
        (
            SWITCHCTL,
            &["--control", "/nonexistent.sock", "prune"],
            "switchctl: missing required argument --keep <N> for 'prune' (see switchctl prune --help)",
        ),
        (
            SWITCHFS,
            &["/tmp"],
            "switchfs: missing required argument --releases <DIR> (see switchfs --help)",
        ),
        (
            SWITCHFS,
            &["--releases", "/tmp"],
            "switchfs: missing required argument <MOUNTPOINT> (see switchfs --help)",
        ),
        (
            SWITCHCTL,
            &["status", "--bogus"],
            "switchctl: unexpected argument '--bogus' found (see switchctl status --help)",
        ),
    ];
    for (prog, args, want) in cases {
        let out = Command::new(prog).args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert_eq!(one_line_error(&out), want, "{args:?}");
    }
}

// README "Usage", `switchctl` exit codes: activating the active release is success (0), and
// the help says so.
#[test]
fn already_active_exits_zero_as_the_help_says() {
    let help = Command::new(SWITCHCTL)
        .args(["activate", "--help"])
        .output()
        .unwrap();
    let help = stdout(&help);
    assert!(
        help.contains("Exit 0 when switched or NAME was already active"),
        "{help}"
    );
    let fx = Fixture::new("already");
    fx.two_releases();
    let _d = fx.start(&["--initial", "1"]);
    let out = fx.ctl(&["activate", "1"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(stdout(&out), "release 1 is already active\n");
}

/// Issue 19: each binary's `--version` names that binary (it said "switchfs" for all).
#[test]
fn each_binary_names_itself_in_its_version() {
    for (bin, name) in [
        (SWITCHFS, "switchfs"),
        (SWITCHCTL, "switchctl"),
        (
            env!("CARGO_BIN_EXE_mount_fuse_switchfs"),
            "mount.fuse.switchfs",
        ),
    ] {
        let out = Command::new(bin).arg("--version").output().unwrap();
        assert!(out.status.success(), "{bin}: {out:?}");
        assert_eq!(
            stdout(&out),
            format!("{name} {}\n", env!("CARGO_PKG_VERSION")),
            "{bin}"
        );
    }
}
