//! The daemon's own life never reaches the site (README, "Crashes and upgrades"): the keeper
//! holds the FUSE connection, so a server killed in any way is replaced and requests made
//! meanwhile complete; SIGHUP to the main pid hands the mount to the binary now installed.
//! Node ids the kernel holds (an open file, a working directory deep in a release) keep
//! working across each, and a switch after a restart still expires what the kernel cached
//! before it.

use std::fs;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::common::*;

fn status_json(fx: &Fixture) -> String {
    let out = fx.ctl(&["status", "--json"]);
    assert!(out.status.success(), "{}", one_line_error(&out));
    stdout(&out)
}

/// The number after `"key":` in a JSON object of plain fields.
fn field(json: &str, key: &str) -> u64 {
    let pat = format!("\"{key}\":");
    let at = json
        .find(&pat)
        .unwrap_or_else(|| panic!("no {key} in {json}"))
        + pat.len();
    json[at..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect::<String>()
        .parse()
        .unwrap_or_else(|_| panic!("{key} is not a number in {json}"))
}

fn serving_pid(fx: &Fixture) -> i32 {
    field(&status_json(fx), "pid") as i32
}

/// Waits until a server other than `old` answers; returns the status it gave.
fn wait_for_successor(fx: &Fixture, old: i32) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let json = status_json(fx);
        if field(&json, "pid") as i32 != old {
            return json;
        }
        assert!(
            Instant::now() < deadline,
            "no new server after 10 s: {json}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn signal(pid: i32, sig: i32) {
    // SAFETY: kill on a process of the daemon this test started.
    assert_eq!(unsafe { libc::kill(pid, sig) }, 0, "kill {pid} {sig}");
}

/// Waits until every thread of `pid` is stopped: SIGSTOP takes effect per thread, and one
/// still running could answer a request the test means to leave waiting.
fn wait_stopped(pid: i32) {
    let all_stopped = || {
        let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
            return false;
        };
        tasks.flatten().all(|t| {
            fs::read_to_string(t.path().join("stat"))
                .ok()
                .and_then(|s| {
                    s.rsplit(')')
                        .next()
                        .map(|r| r.trim_start().starts_with('T'))
                })
                .unwrap_or(false)
        })
    };
    assert!(wait_until(5, all_stopped), "server {pid} did not stop");
}

/// Release 1 with a deep directory, release 2 with other content.
fn releases(fx: &Fixture) {
    fx.write("1", "index.php", "<?php echo 'release 1';");
    fx.write("1", "app/deep/dir/held.txt", "held in release 1\n");
    fx.write("1", "app/deep/dir/later.txt", "looked up only later\n");
    fx.write(
        "1",
        "app/deep/dir/waiting.txt",
        "asked while no server ran\n",
    );
    fx.write("1", "top.txt", "top of release 1\n");
    fx.write("2", "index.php", "<?php echo 'release 2';");
    fx.write("2", "top.txt", "top of release 2\n");
}

/// Reads `file` from the daemon, not the page cache: its pages are dropped first, so the
/// read must resolve the node id the kernel holds.
fn read_uncached(file: &fs::File) -> String {
    // SAFETY: posix_fadvise on a descriptor we hold; it only drops cached pages.
    let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    assert_eq!(rc, 0, "posix_fadvise");
    let mut buf = vec![0u8; 4096];
    let n = file.read_at(&mut buf, 0).expect("read the held file");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[test]
fn requests_made_while_the_server_is_down_complete_once_it_is_replaced() {
    let fx = Fixture::new("life-crash");
    releases(&fx);
    let d = fx.start(&["--initial", "1"]);
    let held = fs::File::open(fx.m("app/deep/dir/held.txt")).expect("open the held file");
    assert_eq!(read_uncached(&held), "held in release 1\n");
    let cwd = ParkedShell::park(&fx.m("app/deep/dir"), "cat later.txt && ls");
    assert_eq!(fx.read("top.txt"), "top of release 1\n");
    let json = status_json(&fx);
    let (server, main) = (field(&json, "pid") as i32, field(&json, "main_pid") as i32);
    assert_eq!(
        main,
        d.main_pid(),
        "the main pid is the process the user started"
    );
    assert_eq!(server, d.pid(), "the keeper's child serves");
    assert_ne!(server, main, "a separate process serves");
    assert_eq!(field(&json, "restarts"), 0);

    // The server hangs, then dies: requests made meanwhile wait in the kernel.
    signal(server, libc::SIGSTOP);
    wait_stopped(server);
    let (tx, rx) = mpsc::channel();
    for path in [
        fx.m("app/deep/dir/waiting.txt"),
        fx.m("app/deep/dir/later.txt"),
        fx.m("never-looked-up"),
    ] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            let result = match fs::read_to_string(&path) {
                Ok(text) => Ok(text),
                Err(e) => Err(e.raw_os_error()),
            };
            let _ = tx.send((path, result));
        });
    }
    std::thread::sleep(Duration::from_millis(300));
    assert!(rx.try_recv().is_err(), "answered while no server ran");
    let killed_at = Instant::now();
    signal(server, libc::SIGKILL);
    let mut answers = Vec::new();
    for _ in 0..3 {
        let (path, result) = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("a request made while the server was down never completed");
        answers.push((
            path.file_name().unwrap().to_string_lossy().into_owned(),
            result,
        ));
    }
    let waited = killed_at.elapsed();
    answers.sort();
    assert_eq!(
        answers,
        vec![
            ("later.txt".into(), Ok("looked up only later\n".into())),
            ("never-looked-up".into(), Err(Some(libc::ENOENT))),
            (
                "waiting.txt".into(),
                Ok("asked while no server ran\n".into())
            ),
        ]
    );
    assert!(waited < Duration::from_secs(1), "resumed after {waited:?}");
    println!("requests made while the server was down completed {waited:?} after its kill");
    let json = wait_for_successor(&fx, server);
    assert_eq!(field(&json, "restarts"), 1, "{json}");
    assert_eq!(field(&json, "main_pid") as i32, main, "{json}");

    // Node ids the kernel held before the crash resolve in the new server.
    assert_eq!(read_uncached(&held), "held in release 1\n");
    assert_eq!(
        cwd.resume(),
        "looked up only later\nheld.txt\nlater.txt\nwaiting.txt\n"
    );
    // A switch by the new server expires what the kernel cached from the old one.
    fx.activate("2");
    assert_eq!(fx.read("top.txt"), "top of release 2\n");
    assert_eq!(fx.read("index.php"), "<?php echo 'release 2';");
    assert_eq!(read_uncached(&held), "held in release 1\n");
    assert!(!d.log_text().contains("panicked"), "{}", d.log_text());
}

/// Reads a few paths through the mount in a loop until told to stop, counting reads and
/// failures (with the first error kept). `--cache-timeout 0` makes each one a request.
struct Load {
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
    thread: std::thread::JoinHandle<Vec<String>>,
}

impl Load {
    fn start(paths: Vec<(PathBuf, String)>) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicU64::new(0));
        let (s, n) = (stop.clone(), done.clone());
        let thread = std::thread::spawn(move || {
            let mut failures = Vec::new();
            while !s.load(Ordering::Relaxed) {
                for (path, want) in &paths {
                    match fs::read_to_string(path) {
                        Ok(text) if &text == want => {}
                        Ok(text) => failures.push(format!("{}: read {text:?}", path.display())),
                        Err(e) => failures.push(format!("{}: {e}", path.display())),
                    }
                    n.fetch_add(1, Ordering::Relaxed);
                }
            }
            failures
        });
        Load { stop, done, thread }
    }

    fn finish(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let failures = self.thread.join().expect("load thread");
        (self.done.load(Ordering::Relaxed), failures)
    }
}

fn load_on(fx: &Fixture) -> Load {
    Load::start(vec![
        (fx.m("index.php"), "<?php echo 'release 1';".into()),
        (
            fx.m("app/deep/dir/later.txt"),
            "looked up only later\n".into(),
        ),
        (fx.m("top.txt"), "top of release 1\n".into()),
    ])
}

#[test]
fn servers_killed_under_load_fail_no_request() {
    let fx = Fixture::new("life-kill");
    releases(&fx);
    let d = fx.start(&["--initial", "1", "--cache-timeout", "0"]);
    let held = fs::File::open(fx.m("app/deep/dir/held.txt")).expect("open the held file");
    let load = load_on(&fx);
    for round in 1..=5 {
        let server = serving_pid(&fx);
        std::thread::sleep(Duration::from_millis(150));
        signal(server, libc::SIGKILL);
        let json = wait_for_successor(&fx, server);
        assert_eq!(field(&json, "restarts"), round, "{json}");
        assert_eq!(read_uncached(&held), "held in release 1\n");
    }
    std::thread::sleep(Duration::from_millis(150));
    let (reads, failures) = load.finish();
    assert!(
        failures.is_empty(),
        "{} failed reads: {failures:?}",
        failures.len()
    );
    assert!(reads > 100, "only {reads} reads under load");
    assert!(!d.log_text().contains("panicked"), "{}", d.log_text());
}

/// The inode of the binary process `pid` runs.
fn exe_ino(pid: i32) -> u64 {
    fs::metadata(format!("/proc/{pid}/exe")).map_or(0, |m| m.ino())
}

/// Waits until upgrade attempt `number` has an outcome; returns the status then.
fn wait_for_outcome(fx: &Fixture, number: u64) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let json = status_json(fx);
        if json.contains(&format!("\"last_upgrade\":{{\"attempt\":{number},"))
            && !json.contains("\"outcome\":\"proving\"")
        {
            return json;
        }
        assert!(
            Instant::now() < deadline,
            "no outcome of upgrade {number}: {json}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Puts a fresh copy of the built binary at `path`: a new inode, as an install does.
fn install_copy(path: &Path) -> u64 {
    let tmp = path.with_extension("new");
    fs::copy(SWITCHFS, &tmp).expect("copy switchfs");
    fs::rename(&tmp, path).expect("install switchfs");
    fs::metadata(path).unwrap().ino()
}

#[test]
fn sighup_hands_the_mount_to_the_binary_now_installed() {
    let fx = Fixture::new("life-up");
    releases(&fx);
    let bin = fx.root.join("bin/switchfs");
    fs::create_dir_all(bin.parent().unwrap()).unwrap();
    install_copy(&bin);
    let mut d = Daemon::start_exe(
        &fx,
        &bin,
        &fx.mnt(),
        &["--initial", "1", "--cache-timeout", "0"],
    )
    .expect("start switchfs");
    let held = fs::File::open(fx.m("app/deep/dir/held.txt")).expect("open the held file");
    let cwd = ParkedShell::park(&fx.m("app/deep/dir"), "cat later.txt");
    let main = d.main_pid();
    let load = load_on(&fx);
    for round in 1..=3 {
        let server = serving_pid(&fx);
        let ino = install_copy(&bin);
        std::thread::sleep(Duration::from_millis(100));
        signal(main, libc::SIGHUP);
        wait_for_successor(&fx, server);
        let json = wait_for_outcome(&fx, round);
        assert!(json.contains("\"outcome\":\"ok\""), "{json}");
        assert_eq!(field(&json, "upgrades"), round, "{json}");
        assert_eq!(field(&json, "restarts"), 0, "{json}");
        assert_eq!(
            field(&json, "main_pid") as i32,
            main,
            "the main pid stays: {json}"
        );
        // The keeper becomes the new binary once the upgrade counts.
        assert!(
            wait_until(5, || exe_ino(main) == ino),
            "the keeper runs the binary installed"
        );
        assert_eq!(
            exe_ino(field(&json, "pid") as i32),
            ino,
            "so does the server"
        );
        assert!(is_mounted(&fx.mnt()));
        assert_eq!(read_uncached(&held), "held in release 1\n");
    }
    std::thread::sleep(Duration::from_millis(150));
    let (reads, failures) = load.finish();
    assert!(
        failures.is_empty(),
        "{} failed reads: {failures:?}",
        failures.len()
    );
    assert!(reads > 100, "only {reads} reads under load");
    assert_eq!(cwd.resume(), "looked up only later\n");
    // The upgraded daemon switches and stops like any other.
    fx.activate("2");
    let mut text = String::new();
    fs::File::open(fx.m("top.txt"))
        .unwrap()
        .read_to_string(&mut text)
        .unwrap();
    assert_eq!(text, "top of release 2\n");
    drop(held);
    assert!(d.stop_with(libc::SIGTERM).success(), "{}", d.log_text());
    assert!(!is_mounted(&fx.mnt()), "unmounted on SIGTERM");
}

#[test]
fn a_file_opened_with_track_opens_reads_on_after_a_crash() {
    let fx = Fixture::new("life-fh");
    releases(&fx);
    let _d = fx.start(&["--initial", "1", "--track-opens"]);
    let held = fs::File::open(fx.m("app/deep/dir/held.txt")).expect("open the held file");
    assert_eq!(read_uncached(&held), "held in release 1\n");
    let server = serving_pid(&fx);
    signal(server, libc::SIGKILL);
    wait_for_successor(&fx, server);
    // The kernel reads with the handle the dead server gave out.
    assert_eq!(read_uncached(&held), "held in release 1\n");
    let again = fs::File::open(fx.m("app/deep/dir/held.txt")).expect("open again");
    assert_eq!(read_uncached(&again), "held in release 1\n");
}

/// Waits for systemd's messages from the daemon on `notify`: returns once READY=1 came and
/// the descriptors stored with FDSTORE=1 are those of `names`, by name.
fn stored_fds(
    notify: &std::os::unix::net::UnixDatagram,
    names: &[&str],
) -> std::collections::HashMap<String, std::os::fd::OwnedFd> {
    use std::os::fd::AsFd;
    let mut stored = std::collections::HashMap::new();
    let mut ready = false;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !(ready && names.iter().all(|n| stored.contains_key(*n))) {
        assert!(Instant::now() < deadline, "stored only {:?}", stored.keys());
        let Some((data, fds)) = switchfs::sys::recv_with_fds(notify.as_fd()).unwrap() else {
            std::thread::sleep(Duration::from_millis(10));
            continue;
        };
        let text = String::from_utf8_lossy(&data).into_owned();
        ready |= text.lines().any(|l| l == "READY=1");
        if text.lines().any(|l| l == "FDSTORE=1") {
            let name = text
                .lines()
                .find_map(|l| l.strip_prefix("FDNAME="))
                .expect("FDSTORE without FDNAME");
            let mut fds = fds.into_iter();
            stored.insert(
                name.to_string(),
                fds.next().expect("FDSTORE without a descriptor"),
            );
        }
    }
    stored
}

/// systemd's part is played by the test: it receives READY=1 and the descriptors the
/// keeper stores (FDSTORE=1), and after the keeper is killed starts the daemon again with
/// them in LISTEN_FDS, as `Restart=always` with `FileDescriptorStoreMax=` does.
#[test]
fn the_fd_store_keeps_the_mount_while_the_keeper_is_restarted() {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Stdio};
    let fx = Fixture::new("life-sd");
    releases(&fx);
    let notify_path = fx.root.join("sd-notify");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    let log = fx.root.join("sd-daemon.log");
    let args: Vec<std::ffi::OsString> = vec![
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
    let logfile = || {
        fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap()
    };
    let first = Command::new(SWITCHFS)
        .args(&args)
        .env("NOTIFY_SOCKET", &notify_path)
        .stdin(Stdio::null())
        .stderr(logfile())
        .spawn()
        .expect("start switchfs");
    let mut d = Daemon {
        child: Some(first),
        mnt: fx.mnt(),
        log: log.clone(),
    };
    let names = ["fuse", "control", "nodes", "init"];
    let stored = stored_fds(&notify, &names);
    assert_eq!(fx.read("top.txt"), "top of release 1\n");
    let held = fs::File::open(fx.m("app/deep/dir/held.txt")).expect("open the held file");

    // The keeper dies, and its server with it; only "systemd" holds the connection now.
    let mut keeper = d.child.take().unwrap();
    signal(keeper.id() as i32, libc::SIGKILL);
    keeper.wait().unwrap();
    let (tx, rx) = mpsc::channel();
    let waiting = fx.m("app/deep/dir/waiting.txt");
    std::thread::spawn(move || {
        let _ = tx.send(fs::read_to_string(&waiting).map_err(|e| e.to_string()));
    });
    std::thread::sleep(Duration::from_millis(300));
    assert!(rx.try_recv().is_err(), "answered while nothing served");
    assert!(is_mounted(&fx.mnt()), "the mount outlives its keeper");

    // The restart: the stored descriptors from 3 on, LISTEN_PID the new main process.
    let raw: Vec<i32> = names.iter().map(|n| stored[*n].as_raw_fd()).collect();
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "export LISTEN_PID=$$; exec \"$0\" \"$@\""])
        .arg(SWITCHFS)
        .args(&args)
        .env("LISTEN_FDS", names.len().to_string())
        .env("LISTEN_FDNAMES", names.join(":"))
        .env("NOTIFY_SOCKET", &notify_path)
        .stdin(Stdio::null())
        .stderr(logfile());
    // SAFETY: only fcntl and dup2, both async-signal-safe, run between fork and exec; they
    // move the stored descriptors to 3.. without clobbering one another (high copies first).
    unsafe {
        cmd.pre_exec(move || {
            let mut high = Vec::with_capacity(raw.len());
            for fd in &raw {
                let h = libc::fcntl(*fd, libc::F_DUPFD, 100);
                if h < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                high.push(h);
            }
            for (i, h) in high.iter().enumerate() {
                if libc::dup2(*h, 3 + i as i32) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    d.child = Some(cmd.spawn().expect("restart switchfs"));
    // systemd counts the restart as started only once READY=1 comes.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        use std::os::fd::AsFd;
        assert!(Instant::now() < deadline, "no READY=1 after the restart");
        match switchfs::sys::recv_with_fds(notify.as_fd()).unwrap() {
            Some((data, _))
                if String::from_utf8_lossy(&data)
                    .lines()
                    .any(|l| l == "READY=1") =>
            {
                break;
            }
            Some(_) => {}
            None => std::thread::sleep(Duration::from_millis(10)),
        }
    }
    let answer = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the waiting read never completed after the restart");
    assert_eq!(answer.as_deref(), Ok("asked while no server ran\n"));
    assert_eq!(read_uncached(&held), "held in release 1\n");
    let json = status_json(&fx);
    assert_eq!(field(&json, "main_pid") as i32, d.main_pid(), "{json}");
    drop((stored, held));
    fx.activate("2");
    assert_eq!(fx.read("top.txt"), "top of release 2\n");
    assert!(d.stop_with(libc::SIGTERM).success(), "{}", d.log_text());
    assert!(!is_mounted(&fx.mnt()), "unmounted on SIGTERM");
    assert!(d.log_text().contains("systemd's file descriptor store"));
}

#[test]
fn a_directory_listing_in_progress_goes_on_after_a_crash() {
    let fx = Fixture::new("life-dir");
    releases(&fx);
    for i in 0..600 {
        fx.write(
            "1",
            &format!("app/many/file-with-a-longish-name-{i:04}.txt"),
            "x",
        );
    }
    let _d = fx.start(&["--initial", "1"]);
    let mut listing = fs::read_dir(fx.m("app/many")).expect("open the directory");
    let mut names: Vec<String> = Vec::new();
    for entry in listing.by_ref().take(10) {
        names.push(
            entry
                .expect("entry")
                .file_name()
                .to_string_lossy()
                .into_owned(),
        );
    }
    let server = serving_pid(&fx);
    signal(server, libc::SIGKILL);
    wait_for_successor(&fx, server);
    // The rest is read with the directory handle the dead server gave out.
    for entry in listing {
        names.push(
            entry
                .expect("entry after the crash")
                .file_name()
                .to_string_lossy()
                .into_owned(),
        );
    }
    names.sort();
    names.dedup();
    assert_eq!(names.len(), 600, "every entry listed once");
}

/// `systemctl stop` right after `systemctl reload`: the stop lands while the old server
/// retires, and must still unmount (not leave the mount dead behind an exited keeper).
#[test]
fn a_stop_during_an_upgrade_still_unmounts() {
    let fx = Fixture::new("life-upstop");
    releases(&fx);
    let mut d = fx.start(&["--initial", "1"]);
    assert_eq!(fx.read("top.txt"), "top of release 1\n");
    signal(d.main_pid(), libc::SIGHUP);
    let status = d.stop_with(libc::SIGTERM);
    assert!(status.success(), "{status}: {}", d.log_text());
    assert!(!is_mounted(&fx.mnt()), "left mounted: {}", d.log_text());
}

/// An installed layout with version directories: `opt/<version>/switchfs` and the symlink
/// `opt/current` to one of them, the daemon started as `opt/current/switchfs`.
struct Versions {
    opt: PathBuf,
}

impl Versions {
    fn new(fx: &Fixture) -> Versions {
        let opt = fx.root.join("opt");
        fs::create_dir_all(&opt).unwrap();
        Versions { opt }
    }

    fn started_as(&self) -> PathBuf {
        self.opt.join("current/switchfs")
    }

    /// A copy of the built binary as `version`; returns its inode.
    fn real(&self, version: &str) -> u64 {
        let dir = self.opt.join(version);
        fs::create_dir_all(&dir).unwrap();
        install_copy(&dir.join("switchfs"))
    }

    /// `version`'s switchfs is a script with `body`.
    fn script(&self, version: &str, body: &str) {
        use std::os::unix::fs::PermissionsExt;
        let dir = self.opt.join(version);
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("switchfs");
        fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    }

    /// Points `current` at `version`, atomically, as a package flipping versions does.
    fn flip(&self, version: &str) {
        let tmp = self.opt.join("current.new");
        let _ = fs::remove_file(&tmp);
        std::os::unix::fs::symlink(version, &tmp).unwrap();
        fs::rename(&tmp, self.opt.join("current")).unwrap();
    }
}

/// `switchctl upgrade`, the unit's ExecReload: its exit status and its one line.
fn reload(fx: &Fixture) -> (bool, String) {
    let out = fx.ctl(&["--timeout", "40", "upgrade"]);
    let text = format!("{}{}", stdout(&out), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text.trim().to_string())
}

/// Broken new binaries never take the docroot down: one that exits at once, one that
/// resumes the connection and exits, one that hangs, one that crashes on its first request.
/// Under a reader loop not one read fails, the running version goes on serving, the
/// keeper logs the cause, `status` shows the failed attempt and the reload client exits
/// non-zero. Then a good version behind the flipped symlink takes over, and a crash after
/// every version's files are deleted still restarts the server.
#[test]
fn a_broken_new_binary_never_takes_over() {
    let fx = Fixture::new("life-bad-up");
    releases(&fx);
    let v = Versions::new(&fx);
    let v1 = v.real("v1");
    v.flip("v1");
    let d = Daemon::start_exe(
        &fx,
        &v.started_as(),
        &fx.mnt(),
        &["--initial", "1", "--cache-timeout", "0"],
    )
    .expect("start switchfs");
    let main = d.main_pid();
    let real = v.opt.join("v1/switchfs");
    let real = real.display();
    let load = load_on(&fx);
    let cases = [
        (
            "exits",
            "echo 'broken build' >&2; exit 1".to_string(),
            "exit code 1",
        ),
        (
            "resumes-and-exits",
            format!("SWITCHFS_TEST_FAULT=exit-after-resume exec {real} \"$@\""),
            "exit code 1",
        ),
        (
            "hangs",
            "exec sleep 600".to_string(),
            "not ready within 10 s",
        ),
        (
            "crashes",
            format!("SWITCHFS_TEST_FAULT=crash-on-first-request exec {real} \"$@\""),
            "signal 6",
        ),
    ];
    for (n, (name, body, cause)) in cases.iter().enumerate() {
        let before = serving_pid(&fx);
        v.script(name, body);
        v.flip(name);
        let started = Instant::now();
        let (ok, line) = reload(&fx);
        assert!(!ok, "{name}: the reload client succeeded: {line}");
        assert!(
            line.contains("failed") && line.contains(cause),
            "{name}: {line}"
        );
        println!(
            "{name}: reload failed after {:?}: {line}",
            started.elapsed()
        );
        let json = status_json(&fx);
        assert!(
            json.contains(&format!("\"attempt\":{},", n + 1))
                && json.contains("\"outcome\":\"failed\"")
                && json.contains(&format!("/opt/{name}/switchfs")),
            "{name}: {json}"
        );
        assert_eq!(field(&json, "upgrades"), 0, "{name}: {json}");
        assert_eq!(field(&json, "main_pid") as i32, main, "{name}: {json}");
        let now = field(&json, "pid") as i32;
        assert_eq!(exe_ino(now), v1, "{name}: the running version serves");
        assert_eq!(
            exe_ino(main),
            v1,
            "{name}: the keeper stays the running version"
        );
        if n < 1 || *name == "hangs" {
            assert_eq!(now, before, "{name}: the old server never retired");
        }
        let text = stdout(&fx.ctl(&["status"]));
        assert!(text.contains("last upgrade: FAILED"), "{name}: {text}");
        assert!(fx.read("top.txt") == "top of release 1\n");
    }
    let (reads, failures) = load.finish();
    assert!(
        failures.is_empty(),
        "{} failed reads: {failures:?}",
        failures.len()
    );
    assert!(reads > 100, "only {reads} reads under load");
    let log = d.log_text();
    for (name, _, _) in &cases {
        let lines = log
            .lines()
            .filter(|l| l.contains("failed:") && l.contains(&format!("/opt/{name}/")))
            .count();
        assert_eq!(lines, 1, "one line for {name}:\n{log}");
    }
    assert!(log.contains("broken build"), "{log}");

    // A good version through the flipped symlink takes over.
    let v2 = v.real("v2");
    v.flip("v2");
    let load = load_on(&fx);
    let started = Instant::now();
    let (ok, line) = reload(&fx);
    assert!(ok, "{line}");
    println!(
        "good upgrade: the reload client returned after {:?}",
        started.elapsed()
    );
    assert!(line.contains("/opt/v2/switchfs"), "{line}");
    let json = status_json(&fx);
    assert_eq!(field(&json, "upgrades"), 1, "{json}");
    assert!(json.contains("\"outcome\":\"ok\""), "{json}");
    assert!(wait_until(5, || exe_ino(main) == v2), "the keeper runs v2");
    assert_eq!(exe_ino(field(&json, "pid") as i32), v2, "v2 serves");

    // Every version's files go away; a crash restart still finds the binary it runs.
    fs::remove_dir_all(&v.opt).unwrap();
    let server = serving_pid(&fx);
    signal(server, libc::SIGKILL);
    let json = wait_for_successor(&fx, server);
    assert_eq!(field(&json, "restarts"), 1, "{json}");
    let exe = fs::read_link(format!("/proc/{}/exe", field(&json, "pid"))).unwrap();
    assert!(
        exe.to_string_lossy().ends_with("(deleted)"),
        "{}",
        exe.display()
    );
    let (reads, failures) = load.finish();
    assert!(failures.is_empty(), "{failures:?}");
    assert!(reads > 10, "only {reads} reads");
    assert!(!d.log_text().contains("panicked"), "{}", d.log_text());
}

/// `switchctl upgrade --pid` (systemd's $MAINPID) refuses a pid that is not the daemon's
/// main pid, with one line, and nothing is attempted.
#[test]
fn the_reload_client_refuses_a_wrong_main_pid() {
    let fx = Fixture::new("life-wrongpid");
    releases(&fx);
    let d = fx.start(&["--initial", "1"]);
    let out = fx.ctl(&["upgrade", "--pid", &d.pid().to_string()]);
    assert!(!out.status.success());
    let err = one_line_error(&out);
    assert!(err.contains("is not the main pid"), "{err}");
    let json = status_json(&fx);
    assert!(json.contains("\"last_upgrade\":null"), "{json}");
    assert_eq!(serving_pid(&fx), d.pid(), "nothing was upgraded");
}

/// README "Upgrades and crashes": a server killed right after it mounted (its hand-over of the
/// connection may still be unread in the keeper's link when the keeper reaps it) is restarted,
/// never taken for one that never mounted. Twenty starts, each killed as soon as it answers.
#[test]
fn a_server_killed_right_after_it_mounted_is_restarted() {
    let fx = Fixture::new("killearly");
    fx.two_releases();
    for round in 0..20 {
        let d = fx.start(&["--initial", "1"]);
        let first = d.pid();
        assert!(first > 0, "round {round}: no server");
        signal(first, libc::SIGKILL);
        let replaced = wait_until(10, || {
            let now = d.pid();
            now > 0 && now != first && fx.ctl(&["status"]).status.success()
        });
        assert!(
            replaced,
            "round {round}: no server after the first was killed: {}",
            d.log_text()
        );
        assert_eq!(fx.read("index.php"), "<?php echo 'release 1';");
        drop(d);
    }
}
