//! Hostile and stuck pools (a FastCGI server written here stands in for them): every wait is
//! bounded, nothing is trusted before its owner is checked, nothing is followed.

use super::*;

/// README "PHP, nginx and Apache settings": --php-timeout bounds the connect too. A pool
/// whose every worker is busy and whose listen backlog is full never accepts; `activate`
/// still answers in time, exit 3 naming the pool, the switch stays, and the next
/// `activate` is not stuck behind the first.
#[test]
fn full_backlog_is_bounded_by_php_timeout() {
    use std::os::fd::{AsFd, AsRawFd};
    let fx = Fixture::new("opc-backlog");
    fx.two_releases();
    let sock = fx.root.join("full.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    // SAFETY: listen(2) again on our own listening socket only lowers its backlog to 0.
    assert_eq!(unsafe { libc::listen(listener.as_raw_fd(), 0) }, 0);
    // Fill the backlog: connects succeed until the kernel refuses one with EAGAIN.
    let mut queued = Vec::new();
    loop {
        let fd = switchfs::sys::unix_stream_socket_nonblocking().unwrap();
        if !switchfs::sys::unix_connect_nonblocking(fd.as_fd(), &sock).unwrap() {
            break;
        }
        queued.push(fd);
        assert!(queued.len() < 64, "the backlog never filled");
    }
    assert!(!queued.is_empty());
    let _d = start_with_pool(&fx, &sock, &["--php-timeout", "2"]);
    let (out, took) = ctl_within(&fx, 20, &["activate", "2"]);
    assert_eq!(out.status.code(), Some(3), "took {took:?}: {out:?}");
    let err = one_line_error(&out);
    assert!(
        err.contains(&sock.display().to_string()) && err.contains("timed out"),
        "{err}"
    );
    assert!(took < Duration::from_secs(5), "activate took {took:?}");
    assert_eq!(persisted(&fx.state()), "active=2 previous=1");
    let (out, took) = ctl_within(&fx, 20, &["activate", "1"]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "second activate, took {took:?}: {out:?}"
    );
    assert!(
        took < Duration::from_secs(5),
        "second activate took {took:?}"
    );
    assert_eq!(persisted(&fx.state()), "active=1 previous=2");
    drop(listener);
}

/// README "PHP, nginx and Apache settings": --php-timeout bounds a pool's whole
/// invalidation, not each request: a pool answering every request just within the limit
/// cannot multiply it by the number of requests.
#[test]
fn php_timeout_bounds_the_whole_invalidation_of_a_pool() {
    let fx = Fixture::new("opc-slow");
    fx.two_releases();
    let sock = run_dir(&fx).join("slow.sock");
    // 6,000 changed scripts: three invalidate requests, each answered after 0.9 s.
    let pool = FakePool::start(
        &sock,
        0,
        listed(&fx.mnt(), 6_000),
        Duration::from_millis(900),
    );
    let _d = start_with_pool(&fx, &sock, &["--php-timeout", "2"]);
    let (out, took) = ctl_within(&fx, 20, &["activate", "2"]);
    assert_eq!(out.status.code(), Some(3), "took {took:?}: {out:?}");
    assert!(one_line_error(&out).contains("timed out"), "{out:?}");
    assert!(took < Duration::from_secs(3), "activate took {took:?}");
    assert_eq!(persisted(&fx.state()), "active=2 previous=1");
    assert!(
        pool.steps().starts_with(&["list".to_string()]),
        "{:?}",
        pool.steps()
    );
}

/// README "PHP, nginx and Apache settings": the daemon (root) talks only to a pool whose
/// socket the PHP-FPM master (root) listens on. A www-data user who replaced the socket
/// in a www-data-owned /run/php, and answers that nothing is cached, is refused: exit 3
/// naming the pool and the uid, status shows the pool FAILED, the switch stays.
#[test]
fn impostor_socket_of_another_user_is_refused() {
    let fx = Fixture::new("opc-impostor");
    fx.two_releases();
    let sock = run_dir(&fx).join("php-fpm.sock");
    let pool = FakePool::start(&sock, 65534, Vec::new(), Duration::ZERO);
    let _d = start_with_pool(&fx, &sock, &[]);
    let (out, took) = ctl_within(&fx, 20, &["activate", "2"]);
    assert_eq!(out.status.code(), Some(3), "took {took:?}: {out:?}");
    let err = one_line_error(&out);
    assert!(
        err.contains(&sock.display().to_string()) && err.contains("uid 65534"),
        "{err}"
    );
    assert!(
        pool.steps().is_empty(),
        "asked the impostor: {:?}",
        pool.steps()
    );
    assert_eq!(persisted(&fx.state()), "active=2 previous=1");
    let status = stdout(&fx.ctl(&["status"]));
    assert!(
        status.contains("FAILED at ") && status.contains("uid 65534"),
        "{status}"
    );
}

/// --php-fpm-owner names the uid of an unusual master (one not run as root); the same
/// listener is then accepted.
#[test]
fn php_fpm_owner_accepts_that_uid() {
    let fx = Fixture::new("opc-owner");
    fx.two_releases();
    let sock = run_dir(&fx).join("php-fpm.sock");
    let pool = FakePool::start(&sock, 65534, Vec::new(), Duration::ZERO);
    let _d = start_with_pool(&fx, &sock, &["--php-fpm-owner", "65534"]);
    let (out, took) = ctl_within(&fx, 20, &["activate", "2"]);
    assert!(out.status.success(), "took {took:?}: {out:?}");
    assert_eq!(pool.steps(), vec!["list".to_string()]);
}

/// README "PHP, nginx and Apache settings": a list naming scripts outside the mount (here
/// 10,000 of them) is none of the daemon's business: nothing is sent back, nothing counted.
#[test]
fn listed_scripts_outside_the_mount_are_ignored() {
    let fx = Fixture::new("opc-outside");
    fx.two_releases();
    let sock = run_dir(&fx).join("php-fpm.sock");
    let elsewhere = fx.root.join("elsewhere");
    let mut list = listed(&elsewhere, 10_000);
    list.extend_from_slice(format!("- {}/../x.php\0", fx.mnt().display()).as_bytes());
    let pool = FakePool::start(&sock, 0, list, Duration::ZERO);
    let _d = start_with_pool(&fx, &sock, &[]);
    let (out, took) = ctl_within(&fx, 20, &["activate", "2"]);
    assert!(out.status.success(), "took {took:?}: {out:?}");
    assert_eq!(pool.steps(), vec!["list".to_string()]);
    let json = stdout(&fx.ctl(&["status", "--json"]));
    assert!(
        json.contains("\"cached\":0,\"changed\":0,\"invalidated\":0"),
        "{json}"
    );
}

/// README "PHP, nginx and Apache settings": the pool's user owns the socket's directory, so
/// it could put a symlink there pointing at another root service's socket (which would pass
/// the uid check). The daemon does not follow it: exit 3, "not a socket", nothing sent.
#[test]
fn symlink_in_place_of_the_socket_is_refused() {
    let fx = Fixture::new("opc-symlink");
    fx.two_releases();
    let dir = run_dir(&fx);
    let elsewhere = fx.root.join("root-service.sock");
    let pool = FakePool::start(&elsewhere, 0, Vec::new(), Duration::ZERO);
    let sock = dir.join("php-fpm.sock");
    std::os::unix::fs::symlink(&elsewhere, &sock).unwrap();
    let _d = start_with_pool(&fx, &sock, &[]);
    let (out, took) = ctl_within(&fx, 20, &["activate", "2"]);
    assert_eq!(out.status.code(), Some(3), "took {took:?}: {out:?}");
    let err = one_line_error(&out);
    assert!(
        err.contains(&sock.display().to_string()) && err.contains("not a socket"),
        "{err}"
    );
    assert!(
        pool.steps().is_empty(),
        "followed the symlink: {:?}",
        pool.steps()
    );
    assert_eq!(persisted(&fx.state()), "active=2 previous=1");
}
