//! Pools that list too much, and TCP listeners of another user: the comparison of a huge list
//! is bounded by --php-timeout and never queues a later switch; nothing is sent to a listener
//! before its owner is checked.

use super::*;

/// `n` list entries `- MNT/a/a/.../sI.php`, `depth` components under the mount (the
/// directories exist in both releases, so every lookup walks all the way down).
fn deep_list(mnt: &Path, n: usize, depth: usize) -> Vec<u8> {
    let dirs = "a/".repeat(depth - 1);
    let mut out = Vec::with_capacity(n * (mnt.as_os_str().len() + 2 * depth + 16));
    for i in 0..n {
        out.extend_from_slice(format!("- {}/{dirs}s{i}.php\0", mnt.display()).as_bytes());
    }
    out
}

/// The flood test below keeps both cores busy for seconds (hundreds of MB of list built,
/// sent and compared); the compilation-in-flight test, whose compile must finish within the
/// daemon's 2 s wait, does not run beside it.
pub(crate) fn not_beside_the_flood() -> std::sync::MutexGuard<'static, ()> {
    static HEAVY: std::sync::Mutex<()> = std::sync::Mutex::new(());
    HEAVY.lock().unwrap_or_else(|e| e.into_inner())
}

/// Removes the mount point made outside the fixture.
struct RemoveDir(PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// The answer that held `activate` 105.8 s with `--php-timeout 3`: 800,000 paths 60
/// directories deep. Now capped (count and depth, one warning line), the comparison is
/// under the deadline, and a later switch takes over from an earlier one still comparing
/// instead of queueing behind it.
#[test]
fn a_flood_of_deep_paths_is_capped_and_a_later_switch_is_not_queued_behind_it() {
    let _alone = not_beside_the_flood();
    let fx = Fixture::new("opc-flood");
    fx.two_releases();
    // A short mount point, so 800,000 paths 60 deep fit in one answer (at most 128 MiB).
    let mnt = PathBuf::from(format!("/tmp/sfl{}", std::process::id()));
    std::fs::create_dir_all(&mnt).unwrap();
    let _rm = RemoveDir(mnt.clone());
    for r in ["1", "2"] {
        std::fs::create_dir_all(fx.releases().join(r).join("a/".repeat(60))).unwrap();
    }
    let sock = run_dir(&fx).join("flood.sock");
    let lists = vec![
        deep_list(&mnt, 800_000, 60),
        deep_list(&mnt, 800_000, 39),
        Vec::new(),
        deep_list(&mnt, 800_000, 39),
    ];
    let pool = FakePool::start_lists(&sock, 0, lists, Duration::ZERO);
    let (script, sock_arg) = (script(), sock.display().to_string());
    let d = Daemon::start_with(
        &fx,
        &mnt,
        &[
            "--initial",
            "1",
            "--php-script",
            &script,
            "--php-fpm",
            &sock_arg,
            "--php-timeout",
            "10",
        ],
    )
    .unwrap();
    // 1. 60 deep: the first 200,000 taken, all deeper than the cap: one warning, ignored.
    let (out, took) = ctl_within(&fx, 60, &["activate", "2"]);
    eprintln!("800,000 paths 60 deep: activate took {took:?}");
    assert!(out.status.success(), "took {took:?}: {out:?}");
    assert!(took < Duration::from_secs(12), "activate took {took:?}");
    let log = d.log_text();
    let warned: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("deeper than 40"))
        .collect();
    assert_eq!(warned.len(), 1, "{log}");
    assert!(
        warned[0].contains("more than 200000 entries"),
        "{}",
        warned[0]
    );
    // 2. 39 deep, within the caps: 200,000 walks take longer than the deadline. A rollback
    //    started while the first is comparing takes over at once.
    let socket = fx.socket();
    let first = std::thread::spawn(move || {
        let t0 = Instant::now();
        let out = Command::new("timeout")
            .args(["60", SWITCHCTL, "--control"])
            .arg(&socket)
            .args(["activate", "1"])
            .output()
            .unwrap();
        (out, t0.elapsed())
    });
    let lists_asked = || pool.steps().iter().filter(|s| *s == "list").count();
    assert!(wait_until(20, || lists_asked() == 2), "{:?}", pool.steps());
    std::thread::sleep(Duration::from_millis(1500));
    let (second, took2) = ctl_within(&fx, 60, &["rollback"]);
    let (first_out, took1) = first.join().unwrap();
    eprintln!("first activate (taken over) took {took1:?}, the rollback took {took2:?}");
    assert!(second.status.success(), "took {took2:?}: {second:?}");
    // Queued behind the first, the rollback would end after the first's own 10 s deadline,
    // more than 8.5 s from now (it started 1.5 s ago); taking over ends it at its next look,
    // after the one request it has in flight.
    assert!(took2 < Duration::from_secs(8), "rollback queued: {took2:?}");
    assert_eq!(first_out.status.code(), Some(3), "{first_out:?}");
    assert!(
        one_line_error(&first_out).contains("a later switch took over"),
        "{first_out:?}"
    );
    assert_eq!(persisted(&fx.state()), "active=2 previous=1");
    // 3. The same alone: the deadline ends the comparison.
    let (out, took) = ctl_within(&fx, 60, &["activate", "1"]);
    eprintln!("200,000 paths 39 deep alone: activate took {took:?}");
    assert_eq!(out.status.code(), Some(3), "took {took:?}: {out:?}");
    assert!(
        one_line_error(&out).contains("timed out comparing"),
        "{out:?}"
    );
    assert!(took < Duration::from_secs(14), "activate took {took:?}");
    drop(d);
}

/// A TCP listener bound by `uid` on 127.0.0.1 (only its thread changes uid, as in
/// `FakePool`), recording what each connection sent before it closed, answering nothing.
struct FakeTcp {
    port: u16,
    received: std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
}

impl FakeTcp {
    fn start(uid: u32) -> FakeTcp {
        let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let rec = received.clone();
        std::thread::spawn(move || {
            // SAFETY: the raw syscall changes the effective uid of this thread only.
            let r = unsafe {
                libc::syscall(
                    libc::SYS_setresuid,
                    -1 as libc::c_long,
                    libc::c_long::from(uid),
                    -1 as libc::c_long,
                )
            };
            assert_eq!(r, 0, "setresuid: {}", std::io::Error::last_os_error());
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            tx.send(listener.local_addr().unwrap().port()).unwrap();
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                conn.set_read_timeout(Some(Duration::from_millis(500)))
                    .unwrap();
                let mut got = Vec::new();
                let _ = std::io::Read::read_to_end(&mut conn, &mut got);
                rec.lock().unwrap().push(got);
            }
        });
        FakeTcp {
            port: rx.recv().unwrap(),
            received,
        }
    }

    fn received(&self) -> Vec<Vec<u8>> {
        self.received.lock().unwrap().clone()
    }
}

/// Finding 3: `nobody` bound the port (Apache restarting). The daemon connects, sees the
/// listener is not root's, and sends nothing: not the secret, not a FastCGI request.
#[test]
fn a_tcp_listener_of_another_user_is_sent_nothing() {
    let fx = Fixture::new("opc-tcp");
    fx.two_releases();
    let secret = fx.root.join("secret");
    std::fs::write(&secret, "s3cr3t-0123456789abcdef\n").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let secret_arg = secret.display().to_string();
    let fake = FakeTcp::start(65534);
    let url = format!("http://127.0.0.1:{}/switchfs-opcache", fake.port);
    let fpm = format!("127.0.0.1:{}", fake.port);
    let script = script();
    let cases: [(&[&str], &str); 2] = [
        (
            &["--php-http", &url, "--php-http-secret", &secret_arg],
            "--php-http-owner",
        ),
        (
            &["--php-fpm", &fpm, "--php-script", &script],
            "--php-fpm-owner",
        ),
    ];
    for (i, (args, option)) in cases.iter().enumerate() {
        let mut all = vec!["--initial", "1", "--php-timeout", "3"];
        all.extend_from_slice(args);
        let d = fx.start(&all);
        // Each case switches away from what the one before left active.
        let (to, from) = [("2", "1"), ("1", "2")][i];
        let (out, took) = ctl_within(&fx, 20, &["activate", to]);
        assert_eq!(out.status.code(), Some(3), "took {took:?}: {out:?}");
        let err = one_line_error(&out);
        assert!(
            err.contains("listened on by uid 65534, not uid 0") && err.contains(option),
            "{err}"
        );
        assert!(
            wait_until(10, || fake.received().len() > i),
            "never connected"
        );
        assert_eq!(fake.received()[i], b"", "sent to the impostor");
        assert_eq!(
            persisted(&fx.state()),
            format!("active={to} previous={from}"),
            "the switch stays"
        );
        drop(d);
    }
    // Named as the expected owner, the same listener is talked to.
    let d = fx.start(&[
        "--initial",
        "1",
        "--php-timeout",
        "2",
        "--php-http",
        &url,
        "--php-http-secret",
        &secret_arg,
        "--php-http-owner",
        "65534",
    ]);
    let (out, _) = ctl_within(&fx, 20, &["activate", "2"]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "the fake answers nothing: {out:?}"
    );
    assert!(wait_until(10, || fake.received().len() > 2));
    let sent = String::from_utf8_lossy(&fake.received()[2]).to_string();
    assert!(sent.contains("X-Switchfs-Step: list"), "{sent}");
    drop(d);
}
