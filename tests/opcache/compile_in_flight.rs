//! Compilations in flight across a switch: waited for, only the pools' own processes count,
//! and the wait is bounded by --php-timeout.

use super::*;

/// The race of a compilation in flight: a request that started compiling a (large) script of
/// the old release before the switch finishes after the pool was asked, and would store the
/// old bytecode under the path. Under validate_timestamps=0 nothing would ever look again.
#[test]
fn compile_in_flight_across_the_switch_is_not_left_stale() {
    let _alone = super::flooding_pools::not_beside_the_flood();
    require_php();
    let fx = Fixture::new("opc-inflight");
    let now = unix_now();
    for (rel, t) in [("1", now - 7200), ("2", now - 3600)] {
        write_app(&fx, rel, Some(t));
        // ~4 MB of code: compiling it takes well over 100 ms.
        let mut big = String::from("<?php\n");
        for i in 0..40_000 {
            big.push_str(&format!(
                "function f{i}($a) {{ $b = $a + {i}; if ($b > 3) {{ return [$b, '{i}']; }} return null; }}\n"
            ));
        }
        big.push_str(&format!("return 'big={rel}';\n"));
        fx.write(rel, "lib/big.php", &big);
        fx.write(
            rel,
            "public/big.php",
            "<?php echo require __DIR__ . '/../lib/big.php';\n",
        );
        set_all_mtimes(&fx.releases().join(rel), t);
    }
    open_up(&fx);
    let fpm = Fpm::start(
        &fx.root.join("fpm"),
        &[
            "opcache.validate_timestamps=0",
            "opcache.memory_consumption=128",
        ],
    );
    let _d = start_daemon(&fx, &[&fpm]);
    warm(&fpm, &fx, "1");
    let big = fx.m("public/big.php");
    let (in_flight, switched) = std::thread::scope(|s| {
        let req = s.spawn(|| fpm.get(&big));
        std::thread::sleep(Duration::from_millis(40));
        let out = fx.ctl(&["activate", "2"]);
        (req.join().unwrap(), out)
    });
    assert!(switched.status.success(), "{switched:?}");
    // The request in flight may answer either release; every one after activate returned must
    // be release 2.
    let after: Vec<String> = (0..6).map(|_| fpm.get(&big)).collect();
    assert!(
        after.iter().all(|b| b == "big=2"),
        "in flight: {in_flight}; after activate returned: {after:?}; daemon log:\n{}",
        _d.log_text()
    );
}

/// README "PHP, nginx and Apache settings": the wait for compilations in flight looks only
/// at the pool's processes. Any user who can read the docroot holding an old release's
/// script open (`exec 3<index.php; sleep 30`, here as nobody) does not slow `activate`.
#[test]
fn outsider_holding_an_old_script_does_not_delay_activate() {
    use std::io::BufRead;
    require_php();
    let fx = Fixture::new("opc-outsider");
    two_apps(&fx);
    open_up(&fx);
    let fpm = Fpm::start(&fx.root.join("fpm"), &["opcache.validate_timestamps=0"]);
    let _d = start_daemon(&fx, &[&fpm]);
    warm(&fpm, &fx, "1");
    let index = fx.m("public/index.php").display().to_string();
    let mut holder = nobody_shell(format!("exec 3<'{index}' && echo held && exec sleep 30"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(holder.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line, "held\n", "nobody opened {index}");
    let (out, took) = ctl_within(&fx, 20, &["activate", "2"]);
    let _ = holder.kill();
    let _ = holder.wait();
    assert!(out.status.success(), "{out:?}");
    assert!(
        took < Duration::from_millis(1500),
        "activate waited {took:?} for a process outside the pool"
    );
    assert!(all_release(&front(&fpm, &fx, 4), "2"));
}

/// Release 1's `public/hold.php`: a request to it holds `lib/changed.php` open for `secs`, as
/// a long compilation of it would.
fn write_holder(fx: &Fixture, secs: u32) {
    fx.write(
        "1",
        "public/hold.php",
        &format!(
            "<?php $f = fopen(__DIR__ . '/../lib/changed.php', 'r'); sleep({secs}); echo 'held';\n"
        ),
    );
}

/// Waits until a worker of `fpm` holds `changed` open (the request to hold.php began).
fn wait_for_holder(fpm: &Fpm, changed: &Path) {
    assert!(
        wait_until(5, || child_holds(fpm.child.id(), changed)),
        "no worker opened {}",
        changed.display()
    );
}

/// README "PHP, nginx and Apache settings": a pool worker holding a script of release 1 open
/// is waited for when switching to 2 (it may be compiling it), but not once release 1 is
/// active again: its bytecode is then the active release's.
#[test]
fn switching_back_to_the_held_scripts_release_does_not_wait() {
    require_php();
    let fx = Fixture::new("opc-back");
    two_apps(&fx);
    write_holder(&fx, 8);
    open_up(&fx);
    let fpm = Fpm::start(&fx.root.join("fpm"), &["opcache.validate_timestamps=0"]);
    let _d = start_daemon(&fx, &[&fpm]);
    warm(&fpm, &fx, "1");
    let changed = fx.m("lib/changed.php");
    std::thread::scope(|s| {
        let held = s.spawn(|| fpm.get(&fx.m("public/hold.php")));
        wait_for_holder(&fpm, &changed);
        let (out, to_2) = ctl_within(&fx, 20, &["activate", "2"]);
        assert!(out.status.success(), "{out:?}");
        assert!(
            to_2 >= Duration::from_millis(1500),
            "a pool worker holding an old script was not waited for ({to_2:?})"
        );
        let (out, back) = ctl_within(&fx, 20, &["activate", "1"]);
        assert!(out.status.success(), "{out:?}");
        assert!(
            back < Duration::from_millis(1000),
            "activate 1 waited {back:?} for a script of release 1 itself"
        );
        assert_eq!(held.join().unwrap(), "held");
    });
}

/// README "PHP, nginx and Apache settings": a pool worker that still holds an old script
/// open when --php-timeout runs out (a compilation in flight would store old bytecode after
/// the pool was asked) fails the pool, exit 3 naming the script: never a silent "invalidated".
#[test]
fn a_compilation_outlasting_php_timeout_fails_the_pool_visibly() {
    require_php();
    let fx = Fixture::new("opc-outlast");
    two_apps(&fx);
    write_holder(&fx, 6);
    open_up(&fx);
    let fpm = Fpm::start(&fx.root.join("fpm"), &["opcache.validate_timestamps=0"]);
    let _d = start_with_pool(&fx, &fpm.sock, &["--php-timeout", "1"]);
    warm(&fpm, &fx, "1");
    let changed = fx.m("lib/changed.php");
    std::thread::scope(|s| {
        let held = s.spawn(|| fpm.get(&fx.m("public/hold.php")));
        wait_for_holder(&fpm, &changed);
        let (out, took) = ctl_within(&fx, 20, &["activate", "2"]);
        assert_eq!(out.status.code(), Some(3), "{out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("switched from 1 to 2") && err.contains("still open in the pool after 1s"),
            "{err}"
        );
        assert!(took < Duration::from_secs(5), "activate took {took:?}");
        assert_eq!(fx.active(), "2");
        assert_eq!(held.join().unwrap(), "held");
    });
}

/// The same hang with real PHP-FPM: one worker (`pm.max_children = 1`) busy in a long
/// request, `listen.backlog = 1` filled by waiting clients. `activate` answers within
/// --php-timeout, exit 3 naming the pool, and the switch stays.
#[test]
fn busy_fpm_with_full_backlog_is_bounded_by_php_timeout() {
    use std::os::fd::AsFd;
    require_php();
    let fx = Fixture::new("opc-busy");
    two_apps(&fx);
    fx.write("1", "public/sleep.php", "<?php sleep(30); echo 'slept';\n");
    open_up(&fx);
    let fpm = Fpm::start_with(
        &fx.root.join("fpm"),
        &["opcache.validate_timestamps=0"],
        "pm.max_children = 1\nlisten.backlog = 1\n",
    );
    let _d = start_with_pool(&fx, &fpm.sock, &["--php-timeout", "2"]);
    let sleeper = fx.m("public/sleep.php").display().to_string();
    let sock = fpm.sock.clone();
    // The busy request (it fails when the pool is stopped at the end: not waited for).
    std::thread::spawn(move || {
        let params = [
            ("GATEWAY_INTERFACE", "CGI/1.1"),
            ("REQUEST_METHOD", "GET"),
            ("SCRIPT_FILENAME", sleeper.as_str()),
        ];
        let _ = fastcgi::request(&Address::Unix(sock), &params, b"", Duration::from_secs(40));
    });
    // Clients queue until the kernel refuses one: the worker is busy, the backlog full.
    let mut queued = Vec::new();
    let full = wait_until(10, || {
        let fd = switchfs::sys::unix_stream_socket_nonblocking().unwrap();
        match switchfs::sys::unix_connect_nonblocking(fd.as_fd(), &fpm.sock) {
            Ok(true) => {
                queued.push(fd);
                false
            }
            Ok(false) => true,
            Err(e) => panic!("connect to {}: {e}", fpm.sock.display()),
        }
    });
    assert!(full, "the backlog never filled ({} queued)", queued.len());
    let (out, took) = ctl_within(&fx, 20, &["activate", "2"]);
    assert_eq!(out.status.code(), Some(3), "took {took:?}: {out:?}");
    let err = one_line_error(&out);
    assert!(
        err.contains(&fpm.arg()) && err.contains("timed out"),
        "{err}"
    );
    assert!(took < Duration::from_secs(5), "activate took {took:?}");
    assert_eq!(persisted(&fx.state()), "active=2 previous=1");
}
