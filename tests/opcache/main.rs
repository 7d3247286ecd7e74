//! `--php-fpm` / `--php-http` against real PHP: PHP-FPM masters (pm=static, 2 workers each,
//! as www-data) and PHP's built-in web server, running scripts from a real switchfs mount.
//! README "PHP, nginx and Apache settings": once `activate` returns, the next request runs
//! the new code on every worker, whatever `validate_timestamps` / `revalidate_freq`, and
//! unchanged scripts keep their bytecode.
//!
//! PHP-FPM missing is a failure with the package to install, never a skip.
//!
//! This file is the harness (PHP-FPM masters, the fake pool, helpers); the tests are in the
//! modules below, one per concern.

#[path = "../common/mod.rs"]
mod common;

mod bind_mode;
mod compile_in_flight;
mod endpoints;
mod failing_pools;
mod flooding_pools;
mod hostile_pools;
mod next_request;
mod two_phase;

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
            // A harness bound, not a measure: a 4 MB compile on a loaded 2-core machine
            // has taken over 10 s.
            Duration::from_secs(30),
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
    next_request_on(Fixture::new(tag), tag, settings, mtime, same_own_mtimes);
}

/// The same on `fx`, e.g. a `Fixture::bind` (`--mode bind`, real mtimes).
fn next_request_on(
    fx: Fixture,
    tag: &str,
    settings: &[&str],
    mtime: Option<i64>,
    same_own_mtimes: bool,
) {
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
