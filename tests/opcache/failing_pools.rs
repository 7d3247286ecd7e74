//! A pool that is down, silent or misconfigured: the answer is partial (exit 3) or the start
//! refused with one line, and the switch stays (README "Bad input changes nothing").

use super::*;

/// README "PHP, nginx and Apache settings": a pool that cannot be reached is reported like a
/// failing hook: `activate` exits 3 with one line, the switch stays, the log names the pool;
/// the next switch with the pool back brings it fully up to date.
#[test]
fn pool_down_is_partial_and_the_switch_stays() {
    require_php();
    let fx = Fixture::new("opc-down");
    let now = unix_now();
    for (rel, t) in [("1", now - 7200), ("2", now - 3600), ("3", now - 1800)] {
        write_app(&fx, rel, Some(t));
    }
    open_up(&fx);
    let dir = fx.root.join("fpm");
    let sock = dir.join("fpm.sock").display().to_string();
    let script = script();
    let d = fx.start(&[
        "--initial",
        "1",
        "--php-script",
        &script,
        "--php-fpm",
        &sock,
    ]);
    let out = fx.ctl(&["activate", "2"]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let err = one_line_error(&out);
    assert!(
        err.contains("switched from 1 to 2, but OPcache of php-fpm")
            && err.contains(&sock)
            && err.contains("cannot connect"),
        "{err}"
    );
    assert_eq!(persisted(&fx.state()), "active=2 previous=1");
    assert!(fx.read("public/index.php").contains("entry=2"));
    assert!(
        d.log_text()
            .lines()
            .any(|l| l.contains("WARN") && l.contains(&sock)),
        "the daemon log names the pool:\n{}",
        d.log_text()
    );
    let status = stdout(&fx.ctl(&["status"]));
    assert!(
        status.contains(&format!("php-fpm {sock}: FAILED at ")),
        "{status}"
    );

    // The pool comes up having cached release 2 under the mount (from requests meanwhile).
    let fpm = Fpm::start(&dir, &["opcache.validate_timestamps=0"]);
    warm(&fpm, &fx, "2");
    let out = fx.ctl(&["activate", "3"]);
    assert!(out.status.success(), "{out:?}");
    let lines = front(&fpm, &fx, 10);
    assert!(all_release(&lines, "3"), "{lines:?}");
    let json = stdout(&fx.ctl(&["status", "--json"]));
    assert!(
        json.contains("\"php_pools\":[{\"pool\":")
            && json.contains("\"release\":\"3\",\"cached\":3,\"changed\":3,\"invalidated\":3")
            && json.contains("\"error\":null"),
        "after a failure everything cached is invalidated once: {json}"
    );
}

/// A pool that accepts and never answers cannot hold `activate` beyond --php-timeout.
#[test]
fn silent_pool_times_out() {
    let fx = Fixture::new("opc-silent");
    fx.two_releases();
    let sock = fx.root.join("silent.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let held = std::thread::spawn(move || {
        let conn = listener.accept();
        std::thread::sleep(Duration::from_secs(4));
        drop(conn);
    });
    let script = script();
    let sock_arg = sock.display().to_string();
    let _d = fx.start(&[
        "--initial",
        "1",
        "--php-script",
        &script,
        "--php-fpm",
        &sock_arg,
        "--php-timeout",
        "1",
    ]);
    let t0 = Instant::now();
    let out = fx.ctl(&["activate", "2"]);
    let took = t0.elapsed();
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let err = one_line_error(&out);
    assert!(err.contains("timed out"), "{err}");
    assert!(took < Duration::from_secs(3), "activate took {took:?}");
    assert_eq!(persisted(&fx.state()), "active=2 previous=1");
    held.join().unwrap();
}

/// Bad `--php-*` options: one line, non-zero exit, nothing mounted.
#[test]
fn bad_php_options_are_refused_before_mounting() {
    let fx = Fixture::new("opc-args");
    fx.two_releases();
    let loose = fx.root.join("loose-secret");
    std::fs::write(&loose, "0123456789abcdefghij\n").unwrap();
    std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o644)).unwrap();
    let loose = loose.display().to_string();
    let missing = fx.root.join("no-such-script.php").display().to_string();
    let script = script();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["--php-fpm", "fpm", "--php-script", &script],
            "neither a Unix socket path nor HOST:PORT",
        ),
        (
            vec!["--php-fpm", "/run/x.sock", "--php-script", &missing],
            "no such file",
        ),
        (
            vec!["--php-http", "http://127.0.0.1/x"],
            "needs --php-http-secret",
        ),
        (
            vec![
                "--php-http",
                "http://192.0.2.1/x",
                "--php-http-secret",
                &loose,
            ],
            "must be loopback",
        ),
        (
            vec![
                "--php-http",
                "https://127.0.0.1/x",
                "--php-http-secret",
                &loose,
            ],
            "only http://",
        ),
        (
            vec![
                "--php-http",
                "http://127.0.0.1/x",
                "--php-http-secret",
                &loose,
            ],
            "readable by every user",
        ),
    ];
    for (extra, want) in cases {
        let out = Command::new(SWITCHFS)
            .arg("--releases")
            .arg(fx.releases())
            .arg("--control")
            .arg(fx.socket())
            .arg("--state")
            .arg(fx.state())
            .args(["--initial", "1"])
            .args(&extra)
            .arg(fx.mnt())
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let err = one_line_error(&out);
        assert!(err.contains(want), "{extra:?}: {err}");
        assert!(!is_mounted(&fx.mnt()), "{extra:?} left a mount");
        assert!(!fx.state().exists(), "{extra:?} persisted a release");
    }
}

/// Issue 19: a pool that missed a switch while alive keeps the old bytecode (here its socket
/// was renamed away during the switch, as the pool's user could). `switchctl check` is
/// CRITICAL until it is retried: `activate` of the active release retries (instead of
/// "already active" with nothing done), and so does `switchctl php-sync`; then the next
/// request runs the new code and check is OK again.
#[test]
fn a_missed_pool_is_critical_until_activate_or_php_sync_retries() {
    require_php();
    let fx = Fixture::new("opc-retry");
    two_apps(&fx);
    open_up(&fx);
    let fpm = Fpm::start(&fx.root.join("fpm"), &["opcache.validate_timestamps=0"]);
    let _d = start_daemon(&fx, &[&fpm]);
    warm(&fpm, &fx, "1");
    let check = |want: i32, starts: &str| {
        let out = fx.ctl(&["check"]);
        let line = stdout(&out);
        assert_eq!(out.status.code(), Some(want), "{line}");
        assert!(line.starts_with(starts), "{line}");
    };
    check(0, "SWITCHFS OK - serving 1");
    let aside = fpm.sock.with_extension("aside");
    let missed = |target: &str| {
        std::fs::rename(&fpm.sock, &aside).unwrap();
        let out = fx.ctl(&["activate", target]);
        std::fs::rename(&aside, &fpm.sock).unwrap();
        assert_eq!(out.status.code(), Some(3), "{out:?}");
    };

    missed("2");
    let lines = front(&fpm, &fx, 10);
    assert!(
        !all_release(&lines, "2"),
        "the pool should still run release 1: {lines:?}"
    );
    check(2, "SWITCHFS CRITICAL - php-fpm ");
    let out = fx.ctl(&["activate", "2"]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        stdout(&out).contains("release 2 is already active; the OPcache invalidation that had failed was retried and succeeded"),
        "{out:?}"
    );
    assert!(all_release(&front(&fpm, &fx, 10), "2"));
    check(0, "SWITCHFS OK - serving 2");
    let out = fx.ctl(&["activate", "2"]);
    assert_eq!(
        stdout(&out),
        "release 2 is already active\n",
        "nothing failed: nothing retried"
    );

    missed("1");
    check(2, "SWITCHFS CRITICAL - php-fpm ");
    let out = fx.ctl(&["php-sync"]);
    assert!(out.status.success(), "{out:?}");
    assert!(all_release(&front(&fpm, &fx, 10), "1"));
    check(0, "SWITCHFS OK - serving 1");
    // With the pool unreachable, php-sync reports it like activate: exit 3, one line.
    std::fs::rename(&fpm.sock, &aside).unwrap();
    let out = fx.ctl(&["php-sync"]);
    std::fs::rename(&aside, &fpm.sock).unwrap();
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert!(one_line_error(&out).contains("cannot connect"), "{out:?}");
}
