//! `--php-fpm` / `--php-http` against real PHP: PHP-FPM masters (pm=static, 2 workers each,
//! as www-data) and PHP's built-in web server, running scripts from a real switchfs mount.
//! README "PHP, nginx and Apache settings": once `activate` returns, the next request runs
//! the new code on every worker, whatever `validate_timestamps` / `revalidate_freq`, and
//! unchanged scripts keep their bytecode.
//!
//! PHP-FPM missing is a failure with the package to install, never a skip.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use switchfs::fastcgi::{self, Address};

const PHP_FPM: &str = "php-fpm8.2";

/// The repository copy of the script switchfs runs in the pools.
fn script() -> String {
    format!("{}/dist/opcache-invalidate.php", env!("CARGO_MANIFEST_DIR"))
}

fn require_php() {
    for tool in [PHP_FPM, "php"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(
            found,
            "{tool} is missing: these tests run real PHP. Install it: \
             bash scripts/install-deps web (php8.2-fpm php8.2-cli php8.2-opcache)"
        );
    }
}

/// A private PHP-FPM master, stopped by its pid when dropped.
struct Fpm {
    child: Child,
    sock: PathBuf,
    dir: PathBuf,
}

impl Fpm {
    /// Starts a pool listening on `dir/fpm.sock` with the given OPcache settings.
    fn start(dir: &Path, settings: &[&str]) -> Fpm {
        Fpm::start_with(dir, settings, "pm.max_children = 2\n")
    }

    /// The same with `pool` (pool settings: at least pm.max_children) in its [app] section.
    fn start_with(dir: &Path, settings: &[&str], pool: &str) -> Fpm {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let sock = dir.join("fpm.sock");
        let _ = std::fs::remove_file(&sock);
        let conf = dir.join("fpm.conf");
        std::fs::write(
            &conf,
            format!(
                "[global]\nerror_log = {d}/error.log\ndaemonize = no\n\
                 [app]\nuser = www-data\ngroup = www-data\nlisten = {s}\n\
                 listen.mode = 0600\npm = static\n{pool}\
                 catch_workers_output = yes\nclear_env = yes\n",
                d = dir.display(),
                s = sock.display()
            ),
        )
        .unwrap();
        let mut ini = String::from(
            "zend_extension=opcache.so\nopcache.enable=1\nopcache.memory_consumption=32\n\
             display_errors=Off\nlog_errors=On\n",
        );
        for s in settings {
            ini.push_str(s);
            ini.push('\n');
        }
        std::fs::write(dir.join("php.ini"), ini).unwrap();
        let child = Command::new(PHP_FPM)
            .arg("--nodaemonize")
            .arg("--fpm-config")
            .arg(&conf)
            .arg("-c")
            .arg(dir.join("php.ini"))
            .env("PHP_INI_SCAN_DIR", "")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("fpm.out")).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {PHP_FPM}: {e}"));
        let mut fpm = Fpm {
            child,
            sock,
            dir: dir.to_path_buf(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !fpm.sock.exists() {
            if let Ok(Some(st)) = fpm.child.try_wait() {
                panic!(
                    "php-fpm exited with {st}: {}",
                    std::fs::read_to_string(dir.join("fpm.out")).unwrap_or_default()
                );
            }
            assert!(Instant::now() < deadline, "php-fpm did not listen in 20 s");
            std::thread::sleep(Duration::from_millis(50));
        }
        fpm
    }

    fn arg(&self) -> String {
        self.sock.display().to_string()
    }

    /// Runs `script` in the pool as a GET request; the body.
    fn get(&self, script: &Path) -> String {
        let s = script.to_string_lossy();
        let params = [
            ("GATEWAY_INTERFACE", "CGI/1.1"),
            ("SERVER_PROTOCOL", "HTTP/1.1"),
            ("REQUEST_METHOD", "GET"),
            ("SCRIPT_FILENAME", &s),
            ("SCRIPT_NAME", "/x.php"),
            ("REQUEST_URI", "/x.php"),
            ("REMOTE_ADDR", "127.0.0.1"),
        ];
        self.request(&params)
    }

    fn request(&self, params: &[(&str, &str)]) -> String {
        let resp = fastcgi::request(
            &Address::Unix(self.sock.clone()),
            params,
            b"",
            Duration::from_secs(10),
        )
        .unwrap_or_else(|e| panic!("FastCGI request to {}: {e}", self.sock.display()));
        let (status, body) = resp.status_and_body();
        format!(
            "{}{}",
            if status == 200 {
                String::new()
            } else {
                format!("HTTP {status}: ")
            },
            String::from_utf8_lossy(body)
        )
    }

    /// `misses` and `hits of PATH` from opcache_get_status, read through `probe`.
    fn opcache(&self, probe: &Path) -> OpcacheView {
        let text = self.get(probe);
        let mut view = OpcacheView::default();
        for line in text.lines() {
            if let Some(m) = line.strip_prefix("misses=") {
                view.misses = m.parse().unwrap();
            } else if let Some(rest) = line.strip_prefix("script ") {
                let (path, hits) = rest.rsplit_once(' ').unwrap();
                view.scripts.push((path.to_string(), hits.parse().unwrap()));
            }
        }
        view
    }
}

impl Drop for Fpm {
    fn drop(&mut self) {
        // SAFETY: kill on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = &self.dir;
    }
}

#[derive(Debug, Default)]
struct OpcacheView {
    misses: u64,
    scripts: Vec<(String, u64)>,
}

impl OpcacheView {
    fn hits(&self, path: &Path) -> Option<u64> {
        let p = path.to_string_lossy();
        self.scripts.iter().find(|(s, _)| *s == p).map(|(_, h)| *h)
    }
}

/// A front controller that includes a changed file, an unchanged one and one that exists
/// only in release 1's layout, and reports the release each came from and its worker.
/// Now, in seconds since the epoch.
fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Releases 1 and 2 of the test app, 2 h and 1 h old (past OPcache's file_update_protection);
/// returns now.
fn two_apps(fx: &Fixture) -> i64 {
    let now = unix_now();
    write_app(fx, "1", Some(now - 7200));
    write_app(fx, "2", Some(now - 3600));
    now
}

fn write_app(fx: &Fixture, rel: &str, mtime: Option<i64>) {
    fx.write(
        rel,
        "public/index.php",
        &format!(
            "<?php require __DIR__ . '/../lib/changed.php'; require __DIR__ . '/../lib/same.php';\n\
             echo 'entry={rel} lib=' . changed_release() . ' same=' . same() . ' pid=' . getmypid();\n"
        ),
    );
    fx.write(
        rel,
        "lib/changed.php",
        &format!("<?php function changed_release() {{ return '{rel}'; }}\n"),
    );
    // Same bytes in every release (same size too), a different inode in each.
    fx.write(
        rel,
        "lib/same.php",
        "<?php function same() { return 'ok'; }\n",
    );
    if let Some(t) = mtime {
        set_all_mtimes(&fx.releases().join(rel), t);
    }
}

fn set_all_mtimes(dir: &Path, t: i64) {
    let out = Command::new("find")
        .arg(dir)
        .args(["-exec", "touch", "-h", "-d", &format!("@{t}"), "{}", "+"])
        .output()
        .unwrap();
    assert!(out.status.success());
}

/// A status page outside the mount (and outside every release): misses and hits per script.
fn write_probe(fx: &Fixture) -> PathBuf {
    let probe = fx.root.join("probe/opcache.php");
    std::fs::create_dir_all(probe.parent().unwrap()).unwrap();
    std::fs::write(
        &probe,
        "<?php $s = opcache_get_status(true);\n\
         echo 'misses=', $s['opcache_statistics']['misses'], \"\\n\";\n\
         foreach ($s['scripts'] as $p => $i) { echo 'script ', $p, ' ', $i['hits'], \"\\n\"; }\n",
    )
    .unwrap();
    probe
}

/// Makes everything under the fixture readable by the pool's www-data workers.
fn open_up(fx: &Fixture) {
    fx.open_up_for_others();
    let out = Command::new("chmod")
        .args(["-R", "a+rX"])
        .arg(&fx.root)
        .output()
        .unwrap();
    assert!(out.status.success());
}

/// `n` front-controller requests; each line as the workers answered it.
fn front(fpm: &Fpm, fx: &Fixture, n: usize) -> Vec<String> {
    (0..n)
        .map(|_| fpm.get(&fx.m("public/index.php")))
        .map(|l| l.split(" pid=").next().unwrap_or("").to_string())
        .collect()
}

fn all_release(lines: &[String], rel: &str) -> bool {
    let want = format!("entry={rel} lib={rel} same=ok");
    lines.iter().all(|l| *l == want)
}

/// Warms both workers on release `rel` (each request takes whichever worker is free, 40
/// requests from two threads reach both).
fn warm(fpm: &Fpm, fx: &Fixture, rel: &str) {
    let lines: Vec<String> = std::thread::scope(|s| {
        let a = s.spawn(|| front(fpm, fx, 20));
        let b = s.spawn(|| front(fpm, fx, 20));
        let mut v = a.join().unwrap();
        v.extend(b.join().unwrap());
        v
    });
    assert!(
        all_release(&lines, rel),
        "warming on release {rel}: {lines:?}"
    );
}

fn start_daemon(fx: &Fixture, pools: &[&Fpm]) -> Daemon {
    let script = script();
    let mut args = vec!["--initial", "1", "--php-script", &script];
    let socks: Vec<String> = pools.iter().map(|p| p.arg()).collect();
    for s in &socks {
        args.push("--php-fpm");
        args.push(s);
    }
    fx.start(&args)
}

/// The scenario every setting must pass: warm on 1, activate 2, and the very next requests
/// (from both workers) run release 2 throughout, with only the changed scripts compiled
/// again and the unchanged one still warm.
/// `mtime`: every file of both releases gets it (else each release its own, and
/// lib/same.php the same in both, as `rsync -t` or hard-linked releases keep it).
/// `same_own_mtimes`: lib/same.php gets each release's own mtime too (a fresh checkout).
fn next_request_is_new_and_unchanged_stays_warm(
    tag: &str,
    settings: &[&str],
    mtime: Option<i64>,
    same_own_mtimes: bool,
) {
    require_php();
    let fx = Fixture::new(tag);
    // In the past, so OPcache's file_update_protection (2 s) lets it cache them at once.
    let now = unix_now();
    write_app(&fx, "1", Some(mtime.unwrap_or(now - 7200)));
    write_app(&fx, "2", Some(mtime.unwrap_or(now - 3600)));
    if mtime.is_none() && !same_own_mtimes {
        for rel in ["1", "2"] {
            set_all_mtimes(&fx.releases().join(rel).join("lib/same.php"), now - 9000);
        }
    }
    let probe = write_probe(&fx);
    open_up(&fx);
    let fpm = Fpm::start(&fx.root.join("fpm"), settings);
    let _d = start_daemon(&fx, &[&fpm]);
    warm(&fpm, &fx, "1");
    let same = fx.m("lib/same.php");
    let before = fpm.opcache(&probe);
    let same_hits = before
        .hits(&same)
        .expect("lib/same.php cached while warming");

    let out = fx.ctl(&["activate", "2"]);
    assert!(
        out.status.success(),
        "activate: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Nothing between activate returning and the requests.
    let lines: Vec<String> = std::thread::scope(|s| {
        let a = s.spawn(|| front(&fpm, &fx, 10));
        let b = s.spawn(|| front(&fpm, &fx, 10));
        let mut v = a.join().unwrap();
        v.extend(b.join().unwrap());
        v
    });
    assert!(
        all_release(&lines, "2"),
        "{tag}: requests right after activate returned: {lines:?}"
    );
    let after = fpm.opcache(&probe);
    // A script compiled again starts counting hits from 0: the two changed ones were, the
    // unchanged one kept its bytecode and counts on.
    for changed in ["public/index.php", "lib/changed.php"] {
        let (b, a) = (before.hits(&fx.m(changed)), after.hits(&fx.m(changed)));
        assert!(
            matches!((b, a), (Some(b), Some(a)) if a <= 20 && b >= 30),
            "{tag}: {changed} compiled again (hits {b:?} -> {a:?})"
        );
    }
    let hits = after.hits(&same).expect("lib/same.php still cached");
    assert!(
        hits >= same_hits + 20,
        "{tag}: lib/same.php kept its bytecode (hits {same_hits} -> {hits}); daemon log:\n{}",
        _d.log_text()
    );
}

#[test]
fn validate_timestamps_0_next_request_runs_the_new_release() {
    next_request_is_new_and_unchanged_stays_warm(
        "opc-noval",
        &["opcache.validate_timestamps=0"],
        None,
        false,
    );
}

#[test]
fn revalidate_freq_2_next_request_runs_the_new_release() {
    next_request_is_new_and_unchanged_stays_warm(
        "opc-freq",
        &["opcache.validate_timestamps=1", "opcache.revalidate_freq=2"],
        None,
        false,
    );
}

#[test]
fn identical_mtimes_with_validate_timestamps_0() {
    next_request_is_new_and_unchanged_stays_warm(
        "opc-same",
        &["opcache.validate_timestamps=0"],
        Some(1_700_000_000),
        false,
    );
}

#[test]
fn identical_mtimes_with_revalidate_freq_60() {
    next_request_is_new_and_unchanged_stays_warm(
        "opc-same60",
        &[
            "opcache.validate_timestamps=1",
            "opcache.revalidate_freq=60",
        ],
        Some(1_700_000_000),
        false,
    );
}

#[test]
fn revalidate_freq_0_keeps_working() {
    next_request_is_new_and_unchanged_stays_warm(
        "opc-freq0",
        &["opcache.validate_timestamps=1", "opcache.revalidate_freq=0"],
        None,
        false,
    );
}

/// With validate_timestamps=0 a file rewritten with the same bytes (a fresh checkout gives
/// it a new mtime) keeps its bytecode: the daemon compares contents.
#[test]
fn validate_timestamps_0_same_bytes_new_mtime_stays_warm() {
    next_request_is_new_and_unchanged_stays_warm(
        "opc-bytes",
        &["opcache.validate_timestamps=0"],
        None,
        true,
    );
}

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

/// The shipped script answers only switchfs: a request a web server could forward (no
/// SWITCHFS_OPCACHE parameter, or it sent as a client header) gets a 404 and changes
/// nothing.
#[test]
fn shipped_script_refuses_what_a_web_server_forwards() {
    require_php();
    let fx = Fixture::new("opc-refuse");
    let now = unix_now();
    write_app(&fx, "1", Some(now - 7200));
    let probe = write_probe(&fx);
    open_up(&fx);
    let fpm = Fpm::start(&fx.root.join("fpm"), &["opcache.validate_timestamps=0"]);
    let _d = fx.start(&["--initial", "1"]);
    warm(&fpm, &fx, "1");
    let before = fpm.opcache(&probe);
    let script = script();
    let mount = fx.mnt().display().to_string();
    let base = [
        ("GATEWAY_INTERFACE", "CGI/1.1"),
        ("REQUEST_METHOD", "POST"),
        ("SCRIPT_FILENAME", script.as_str()),
        ("HTTP_X_SWITCHFS_MOUNT", mount.as_str()),
        ("HTTP_X_SWITCHFS_STEP", "list"),
        ("REMOTE_ADDR", "127.0.0.1"),
    ];
    for extra in [
        None,
        Some(("HTTP_SWITCHFS_OPCACHE", "1")),
        Some(("HTTP_X_SWITCHFS_SECRET", "guess")),
        Some(("SWITCHFS_OPCACHE", "yes")),
    ] {
        let mut params = base.to_vec();
        params.extend(extra);
        let answer = fpm.request(&params);
        assert!(answer.starts_with("HTTP 404: "), "{extra:?}: {answer}");
    }
    let after = fpm.opcache(&probe);
    assert_eq!(
        after.hits(&fx.m("public/index.php")),
        before.hits(&fx.m("public/index.php")),
        "still cached, untouched"
    );
}

/// `--php-http`: the same through an HTTP endpoint (how Apache + mod_php is served), here
/// PHP's built-in server with OPcache on and validate_timestamps=0, the endpoint routed to
/// the shipped script and everything else served from the mount. A wrong secret is a 404.
#[test]
fn php_http_endpoint_with_secret() {
    require_php();
    let fx = Fixture::new("opc-http");
    let now = two_apps(&fx);
    write_app(&fx, "3", Some(now - 1800));
    open_up(&fx);
    let router = fx.root.join("router.php");
    std::fs::write(
        &router,
        format!(
            "<?php if ($_SERVER['REQUEST_URI'] === '/switchfs-opcache') {{ require '{}'; }}\n\
             return false;\n",
            script()
        ),
    )
    .unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let secret = "s3cr3t-0123456789abcdef";
    let url = format!("http://127.0.0.1:{port}/switchfs-opcache");
    let good = fx.root.join("secret");
    let bad = fx.root.join("bad-secret");
    for (file, text) in [(&good, secret), (&bad, "not-the-secret-at-all")] {
        std::fs::write(file, format!("{text}\n")).unwrap();
        std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let bad_arg = bad.display().to_string();
    let d = fx.start(&[
        "--initial",
        "1",
        "--php-http",
        &url,
        "--php-http-secret",
        &bad_arg,
    ]);
    let mut server = Command::new("php")
        .args([
            "-d",
            "zend_extension=opcache.so",
            "-d",
            "opcache.enable=1",
            "-d",
            "opcache.enable_cli=1",
            "-d",
            "opcache.validate_timestamps=0",
            "-S",
            &format!("127.0.0.1:{port}"),
            "-t",
        ])
        .arg(fx.m("public"))
        .arg(&router)
        .env("PHP_INI_SCAN_DIR", "")
        .env("SWITCHFS_SECRET", secret)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    struct Kill<'a>(&'a mut Child);
    impl Drop for Kill<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let server = Kill(&mut server);
    let get = || -> String {
        let out = Command::new("curl")
            .args(["-s", "-m", "10"])
            .arg(format!("http://127.0.0.1:{port}/index.php"))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .split(" pid=")
            .next()
            .unwrap_or("")
            .to_string()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while get().is_empty() {
        assert!(Instant::now() < deadline, "php -S did not answer");
        std::thread::sleep(Duration::from_millis(50));
    }

    assert_eq!(get(), "entry=1 lib=1 same=ok");
    let out = fx.ctl(&["activate", "2"]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert!(one_line_error(&out).contains("HTTP 404"), "{out:?}");
    assert_eq!(get(), "entry=1 lib=1 same=ok", "stale: nothing invalidated");
    drop(d);

    let good_arg = good.display().to_string();
    let _d = fx.start(&["--php-http", &url, "--php-http-secret", &good_arg]);
    let out = fx.ctl(&["activate", "3"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(get(), "entry=3 lib=3 same=ok");
    let status = stdout(&fx.ctl(&["status"]));
    assert!(
        status.contains(&format!("php-http {url}: ")) && status.contains("release 3, 2 of 3"),
        "{status}"
    );
    drop(server);
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

/// A script the new release no longer has is dropped from OPcache too: under
/// validate_timestamps=0 an `include` of that path would otherwise still run it.
#[test]
fn deleted_script_is_dropped() {
    require_php();
    let fx = Fixture::new("opc-deleted");
    let now = two_apps(&fx);
    fx.write(
        "1",
        "public/old.php",
        "<?php echo 'old script of release 1';\n",
    );
    set_all_mtimes(&fx.releases().join("1/public/old.php"), now - 7200);
    let probe = fx.root.join("probe/cached.php");
    std::fs::create_dir_all(probe.parent().unwrap()).unwrap();
    std::fs::write(
        &probe,
        format!(
            "<?php echo opcache_is_script_cached('{}') ? 'cached' : 'not cached';\n",
            fx.m("public/old.php").display()
        ),
    )
    .unwrap();
    open_up(&fx);
    let fpm = Fpm::start(&fx.root.join("fpm"), &["opcache.validate_timestamps=0"]);
    let _d = start_daemon(&fx, &[&fpm]);
    warm(&fpm, &fx, "1");
    assert_eq!(fpm.get(&fx.m("public/old.php")), "old script of release 1");
    assert_eq!(fpm.get(&probe), "cached");
    let out = fx.ctl(&["activate", "2"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        fpm.get(&probe),
        "not cached",
        "status: {}",
        stdout(&fx.ctl(&["status", "--json"]))
    );
    let json = stdout(&fx.ctl(&["status", "--json"]));
    assert!(json.contains("\"gone\":0"), "{json}");
}

/// The race of a compilation in flight: a request that started compiling a (large) script of
/// the old release before the switch finishes after the pool was asked, and would store the
/// old bytecode under the path. Under validate_timestamps=0 nothing would ever look again.
#[test]
fn compile_in_flight_across_the_switch_is_not_left_stale() {
    let _alone = not_beside_the_flood();
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

// ---- Hostile and stuck pools: a FastCGI server written here stands in for them ----

/// `switchctl ARGS` under `timeout SECS` (a hang must fail the test, not stall it), and how
/// long it took.
fn ctl_within(fx: &Fixture, secs: u32, args: &[&str]) -> (std::process::Output, Duration) {
    let t0 = Instant::now();
    let out = Command::new("timeout")
        .arg(secs.to_string())
        .arg(SWITCHCTL)
        .arg("--control")
        .arg(fx.socket())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (out, t0.elapsed())
}

/// A directory any user may create sockets in (an impostor's `/run/php`).
fn run_dir(fx: &Fixture) -> PathBuf {
    fx.open_up_for_others();
    let dir = fx.root.join("run");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o1777)).unwrap();
    dir
}

/// A FastCGI server answering the two steps of the shipped script the way the test says,
/// recording the steps it was asked.
struct FakePool {
    steps: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakePool {
    /// Listens on `sock` as `uid`: only the listening thread changes its effective uid, so
    /// the kernel records that uid for the socket's peers (SO_PEERCRED), exactly as for a
    /// listener another user runs. `list` is what follows `scripts\n` in the list answer;
    /// each `invalidate` is answered after `delay`.
    fn start(sock: &Path, uid: u32, list: Vec<u8>, delay: Duration) -> FakePool {
        FakePool::start_lists(sock, uid, vec![list], delay)
    }

    /// As `start`, answering the n-th `list` with `lists[n]` (the last one from then on).
    fn start_lists(sock: &Path, uid: u32, lists: Vec<Vec<u8>>, delay: Duration) -> FakePool {
        let steps = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let sock = sock.to_path_buf();
        let (st, sp) = (steps.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            // SAFETY: the raw syscall changes the effective uid of this thread only (glibc's
            // setresuid would change every thread of the test process).
            let r = unsafe {
                libc::syscall(
                    libc::SYS_setresuid,
                    -1 as libc::c_long,
                    libc::c_long::from(uid),
                    -1 as libc::c_long,
                )
            };
            assert_eq!(r, 0, "setresuid: {}", std::io::Error::last_os_error());
            let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
            listener.set_nonblocking(true).unwrap();
            ready_tx.send(()).unwrap();
            while !sp.load(std::sync::atomic::Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let asked = st.lock().unwrap().iter().filter(|s| *s == "list").count();
                        let list = &lists[asked.min(lists.len() - 1)];
                        // One connection at a time would queue a later switch's request
                        // behind a long answer: serve each on its own thread.
                        let (list, st) = (list.clone(), st.clone());
                        std::thread::spawn(move || serve_fake(conn, &list, delay, &st));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        ready_rx.recv().expect("fake pool listening");
        FakePool {
            steps,
            stop,
            thread: Some(thread),
        }
    }

    fn steps(&self) -> Vec<String> {
        self.steps.lock().unwrap().clone()
    }
}

impl Drop for FakePool {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Reads one FastCGI request from `conn` and answers it like the shipped script would.
fn serve_fake(
    mut conn: std::os::unix::net::UnixStream,
    list: &[u8],
    delay: Duration,
    steps: &std::sync::Mutex<Vec<String>>,
) {
    use std::io::{Read, Write};
    conn.set_nonblocking(false).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut params = Vec::new();
    loop {
        let mut head = [0u8; 8];
        if conn.read_exact(&mut head).is_err() {
            return;
        }
        let len = usize::from(u16::from_be_bytes([head[4], head[5]]));
        let mut content = vec![0u8; len + usize::from(head[6])];
        if conn.read_exact(&mut content).is_err() {
            return;
        }
        match head[1] {
            4 => params.extend_from_slice(&content[..len]),
            5 if len == 0 => break,
            _ => {}
        }
    }
    let key = b"HTTP_X_SWITCHFS_STEP";
    let at = params.windows(key.len()).position(|w| w == key);
    let rest = at.map_or(&b""[..], |i| &params[i + key.len()..]);
    let mut body = b"Status: 200\r\nContent-Type: text/plain\r\n\r\nswitchfs-opcache 1\n".to_vec();
    if rest.starts_with(b"list") {
        steps.lock().unwrap().push("list".into());
        body.extend_from_slice(b"validate_timestamps 0\nscripts\n");
        body.extend_from_slice(list);
    } else {
        steps.lock().unwrap().push("invalidate".into());
        std::thread::sleep(delay);
        body.extend_from_slice(b"invalidated 0\nnot_cached 0\ngone 0\n");
    }
    let mut out = Vec::new();
    for chunk in body.chunks(65_535) {
        out.extend_from_slice(&[1, 6, 0, 1]);
        out.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(chunk);
    }
    out.extend_from_slice(&[1, 3, 0, 1, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    let _ = conn.write_all(&out);
}

/// `n` list entries for scripts under `dir`, none of which exists in any release.
fn listed(dir: &Path, n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for i in 0..n {
        out.extend_from_slice(format!("- {}/gone/s{i}.php\0", dir.display()).as_bytes());
    }
    out
}

fn start_with_pool(fx: &Fixture, sock: &Path, extra: &[&str]) -> Daemon {
    let script = script();
    let sock = sock.display().to_string();
    let mut args = vec![
        "--initial",
        "1",
        "--php-script",
        &script,
        "--php-fpm",
        &sock,
    ];
    args.extend_from_slice(extra);
    fx.start(&args)
}

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

// ---- Waiting for compilations in flight: only the pools' own processes count ----

/// Whether one of the children of `parent` holds `path` open (per /proc/PID/fd).
fn child_holds(parent: u32, path: &Path) -> bool {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return false;
    };
    procs.flatten().any(|p| {
        let stat = std::fs::read_to_string(p.path().join("stat")).unwrap_or_default();
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok());
        ppid == Some(parent)
            && std::fs::read_dir(p.path().join("fd")).is_ok_and(|fds| {
                fds.flatten()
                    .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|l| l == path))
            })
    })
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

/// README "PHP, nginx and Apache settings": a pool worker holding a script of release 1 open
/// is waited for when switching to 2 (it may be compiling it), but not once release 1 is
/// active again: its bytecode is then the active release's.
#[test]
fn switching_back_to_the_held_scripts_release_does_not_wait() {
    require_php();
    let fx = Fixture::new("opc-back");
    two_apps(&fx);
    fx.write(
        "1",
        "public/hold.php",
        "<?php $f = fopen(__DIR__ . '/../lib/changed.php', 'r'); sleep(8); echo 'held';\n",
    );
    open_up(&fx);
    let fpm = Fpm::start(&fx.root.join("fpm"), &["opcache.validate_timestamps=0"]);
    let _d = start_daemon(&fx, &[&fpm]);
    warm(&fpm, &fx, "1");
    let changed = fx.m("lib/changed.php");
    std::thread::scope(|s| {
        let held = s.spawn(|| fpm.get(&fx.m("public/hold.php")));
        assert!(
            wait_until(5, || child_holds(fpm.child.id(), &changed)),
            "no worker opened {}",
            changed.display()
        );
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

// ---- Issue 16: floods of listed paths, and TCP listeners of other users ----

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
fn not_beside_the_flood() -> std::sync::MutexGuard<'static, ()> {
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
    assert!(took2 < Duration::from_secs(5), "rollback queued: {took2:?}");
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
