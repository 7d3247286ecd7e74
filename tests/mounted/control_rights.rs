//! The control socket under hostile conditions, on a real daemon: who may do what
//! (README "Usage", `switchctl`, and "How it works, and the rules it keeps": bad input changes
//! nothing), slow and abandoned clients, names the wire must carry exactly, and a fuzz storm.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::common::*;

/// Groups that exist only as numbers: the daemon and the kernel need nothing more.
const STATUS_GID: u32 = 64001;
const CONTROL_GID: u32 = 64002;
const NOBODY: u32 = 65534;

fn require_root() {
    assert!(
        is_root(),
        "these tests act as other users (nobody, www-data): run them as root"
    );
}

/// Runs a command as `uid`/`gid` with exactly the supplementary `groups`.
fn as_user(uid: u32, gid: u32, groups: &[u32], args: &[&str]) -> Output {
    let mut cmd = Command::new("setpriv");
    cmd.arg(format!("--reuid={uid}"))
        .arg(format!("--regid={gid}"));
    if groups.is_empty() {
        cmd.arg("--clear-groups");
    } else {
        let list: Vec<String> = groups.iter().map(u32::to_string).collect();
        cmd.arg(format!("--groups={}", list.join(",")));
    }
    cmd.args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run setpriv (util-linux): {e}"))
}

/// The daemon on `fx`, serving release 1, with STATUS_GID as --status-group and CONTROL_GID
/// as --control-group.
fn start_with_both_groups(fx: &Fixture) -> Daemon {
    let (s, c) = (STATUS_GID.to_string(), CONTROL_GID.to_string());
    fx.start(&[
        "--initial",
        "1",
        "--status-group",
        &s,
        "--control-group",
        &c,
    ])
}

fn ctl_as(fx: &Fixture, uid: u32, groups: &[u32], args: &[&str]) -> Output {
    let sock = fx.socket();
    let mut all = vec![SWITCHCTL, "--control", sock.to_str().unwrap()];
    all.extend_from_slice(args);
    as_user(uid, uid, groups, &all)
}

/// Runs `f` on a thread whose credentials are `uid`/`gid`/`groups`, so sockets it connects
/// carry them (the kernel records the connecting thread's credentials). Raw syscalls change
/// only the calling thread, unlike the libc wrappers, which change the whole process.
fn on_thread_as<T: Send + 'static>(
    uid: u32,
    gid: u32,
    groups: Vec<u32>,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    std::thread::spawn(move || {
        let gids: Vec<libc::gid_t> = groups.clone();
        // SAFETY: plain syscalls on this thread's credentials with valid arguments.
        unsafe {
            assert_eq!(
                libc::syscall(libc::SYS_setgroups, gids.len(), gids.as_ptr()),
                0
            );
            assert_eq!(libc::syscall(libc::SYS_setresgid, gid, gid, gid), 0);
            assert_eq!(libc::syscall(libc::SYS_setresuid, uid, uid, uid), 0);
        }
        f()
    })
}

/// Sends `bytes` on a fresh connection without half-closing and reads the whole answer;
/// an error after the answer is reported as such (it is what a client would see).
fn exchange(fx: &Fixture, bytes: &[u8]) -> Result<String, String> {
    let mut s = UnixStream::connect(fx.socket()).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(bytes).map_err(|e| format!("write: {e}"))?;
    let mut out = Vec::new();
    match s.read_to_end(&mut out) {
        Ok(_) => Ok(String::from_utf8_lossy(&out).into_owned()),
        Err(e) => Err(format!(
            "read failed after {:?}: {e}",
            String::from_utf8_lossy(&out)
        )),
    }
}

fn threads_named(pid: i32, name: &str) -> usize {
    fs::read_dir(format!("/proc/{pid}/task"))
        .map(|dir| {
            dir.filter_map(Result::ok)
                .filter(|t| {
                    fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim_end() == name)
                })
                .count()
        })
        .unwrap_or(0)
}

// README "Usage", `switchfs` options: --status-group may read, only --control-group (and
// root) may switch, roll back or prune.
#[test]
fn the_status_group_reads_and_only_the_control_group_switches() {
    require_root();
    let fx = Fixture::new("groups");
    fx.two_releases();
    fx.open_up_for_others();
    let d = start_with_both_groups(&fx);
    // Two groups cannot share one file group: the socket is open and rights are per request.
    let mode = fs::metadata(fx.socket()).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o666);

    let watcher = [STATUS_GID];
    let out = ctl_as(&fx, NOBODY, &watcher, &["status"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout(&out).starts_with("active:       1 "));
    let out = ctl_as(&fx, NOBODY, &watcher, &["list"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for args in [
        &["activate", "2"][..],
        &["rollback"][..],
        &["rollback", "--to", "2"][..],
        &["prune", "--keep", "1", "--yes"][..],
    ] {
        let out = ctl_as(&fx, NOBODY, &watcher, args);
        let err = one_line_error(&out);
        assert!(
            err.contains(&format!(
                "permission denied: {} needs root or a member of --control-group (gid {CONTROL_GID})",
                args[0]
            )),
            "{err}"
        );
        assert_eq!(out.status.code(), Some(1));
    }
    assert_eq!(fx.active(), "1");
    assert!(fx.releases().join("1").exists() && fx.releases().join("2").exists());

    // Someone in neither group reads nothing either.
    let out = ctl_as(&fx, NOBODY, &[], &["status"]);
    let err = one_line_error(&out);
    assert!(
        err.contains("permission denied: status needs root or a member of --control-group")
            && err.contains(&format!("--status-group (gid {STATUS_GID})")),
        "{err}"
    );

    // A supplementary member of the control group may switch, and is logged.
    let out = ctl_as(&fx, NOBODY, &[CONTROL_GID], &["activate", "2"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(fx.read("index.php"), "<?php echo 'release 2';");
    assert!(d.log_text().contains("uid=65534"), "{}", d.log_text());
}

#[test]
fn one_group_keeps_the_socket_closed_to_everyone_else() {
    require_root();
    let fx = Fixture::new("onegroup");
    fx.two_releases();
    fx.open_up_for_others();
    let s = STATUS_GID.to_string();
    let _d = fx.start(&["--initial", "1", "--status-group", &s]);
    let meta = fs::metadata(fx.socket()).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    assert_eq!(meta.gid(), STATUS_GID);
    let out = ctl_as(&fx, NOBODY, &[STATUS_GID], &["status"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = one_line_error(&ctl_as(&fx, NOBODY, &[STATUS_GID], &["activate", "2"]));
    assert!(
        err.contains(
            "permission denied: activate needs root or a member of --control-group (none set)"
        ),
        "{err}"
    );
    assert_eq!(fx.active(), "1");
    // Outside the socket's group the kernel refuses the connect; switchctl says what to do.
    let err = one_line_error(&ctl_as(&fx, NOBODY, &[], &["status"]));
    assert!(
        err.starts_with("switchctl: permission denied on control socket ")
            && err.contains("ask root, or start switchfs with --control-group GROUP (switching) or --status-group GROUP (status/list)"),
        "{err}"
    );
}

// dist/example.conf is what operators copy: the web server's user (PHP code) must not be
// able to change what is served.
#[test]
fn the_shipped_example_conf_gives_the_web_server_nothing_that_switches() {
    require_root();
    let conf =
        fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/dist/example.conf")).unwrap();
    let options = conf
        .lines()
        .find_map(|l| l.strip_prefix("SWITCHFS_OPTIONS="))
        .expect("SWITCHFS_OPTIONS in dist/example.conf");
    let options: Vec<&str> = options.split_whitespace().collect();
    let www = Command::new("id")
        .args(["-u", "www-data"])
        .output()
        .unwrap();
    assert!(
        www.status.success(),
        "user www-data is missing (Debian's base-passwd has it)"
    );
    let uid: u32 = stdout(&www).trim().parse().unwrap();
    let fx = Fixture::new("example");
    fx.two_releases();
    fx.open_up_for_others();
    let mut args = vec!["--initial", "1"];
    args.extend(options.iter().copied());
    let _d = fx.start(&args);
    let sock = fx.socket();
    let run = |cmd: &[&str]| {
        let mut all = vec!["--reuid=www-data", "--regid=www-data", "--init-groups"];
        all.push(SWITCHCTL);
        all.extend(["--control", sock.to_str().unwrap()]);
        all.extend_from_slice(cmd);
        Command::new("setpriv").args(&all).output().unwrap()
    };
    for cmd in [
        &["activate", "2"][..],
        &["rollback"][..],
        &["prune", "--keep", "1", "--yes"][..],
    ] {
        let out = run(cmd);
        let err = one_line_error(&out);
        assert!(
            err.contains("permission denied"),
            "www-data (uid {uid}) {cmd:?}: {err}"
        );
    }
    assert_eq!(fx.active(), "1");
    // What it may do is read the status (monitoring from PHP).
    let out = run(&["status"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

// README "Usage": names travel percent-encoded; a name with a space is that one directory.
#[test]
fn names_with_spaces_and_unicode_are_activated_exactly() {
    let fx = Fixture::new("names");
    fx.two_releases();
    for (dir, tag) in [
        ("4", "four"),
        ("4 drain=0", "spaced"),
        ("ünï cödé", "unicode"),
        ("50%25 off", "percent"),
    ] {
        fx.write(dir, "index.php", tag);
    }
    let _d = fx.start(&["--initial", "1"]);
    let out = fx.ctl(&["activate", "4 drain=0"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(fx.read("index.php"), "spaced", "never release 4");
    assert_eq!(stdout(&out), "switched from 1 to 4 drain=0\n");
    let list = stdout(&fx.ctl(&["list"]));
    assert!(list.contains("* 4 drain=0"), "{list}");
    assert!(stdout(&fx.ctl(&["status"])).starts_with("active:       4 drain=0 "));
    fx.activate("ünï cödé");
    assert_eq!(fx.read("index.php"), "unicode");
    assert!(stdout(&fx.ctl(&["list"])).contains("* ünï cödé"));
    assert_eq!(fx.active(), "ünï cödé");
    fx.activate("50%25 off");
    assert_eq!(fx.read("index.php"), "percent");
    let out = fx.ctl(&["rollback"]);
    assert!(out.status.success());
    assert_eq!(fx.read("index.php"), "unicode");
    // On the wire, a raw space still separates arguments, and a bad escape changes nothing.
    assert!(
        exchange(&fx, b"activate 4%20drain=0\n")
            .unwrap()
            .starts_with("ok\n")
    );
    assert_eq!(fx.read("index.php"), "spaced");
    let answer = exchange(&fx, b"activate 4%2\n").unwrap();
    assert!(answer.starts_with("error: bad escape"), "{answer}");
    assert_eq!(fx.read("index.php"), "spaced");
}

// README "Usage", the socket protocol: one request line; whatever follows it is ignored and
// never costs the client its answer.
#[test]
fn bytes_after_the_request_line_do_not_cost_the_answer() {
    let fx = Fixture::new("trail");
    fx.two_releases();
    let _d = fx.start(&["--initial", "1"]);
    let mut msg = b"activate 2\n".to_vec();
    msg.extend(std::iter::repeat_n(b'x', 16 * 1024));
    let answer = exchange(&fx, &msg).unwrap();
    assert_eq!(answer, "ok\nswitched from 1 to 2\n");
    assert_eq!(fx.read("index.php"), "<?php echo 'release 2';");
    let answer = exchange(&fx, b"ping\nstatus\nstatus\n").unwrap();
    assert_eq!(answer, "ok\npong\n");
}

// README "Usage": the daemon answers every client, slow ones included, and a slow-client
// flood cannot keep the operator from status or a switch.
#[test]
fn slow_clients_cannot_starve_the_control_socket() {
    require_root();
    let fx = Fixture::new("slow");
    fx.two_releases();
    fx.open_up_for_others();
    let _d = start_with_both_groups(&fx);
    let sock = fx.socket();
    // The web server's user (here nobody, in the status group) opens 64 slowloris clients
    // that send one byte every 300 ms, forever.
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let storm = on_thread_as(NOBODY, NOBODY, vec![STATUS_GID], move || {
        let mut conns: Vec<UnixStream> = (0..64)
            .filter_map(|_| UnixStream::connect(&sock).ok())
            .collect();
        for c in &conns {
            c.set_nonblocking(true).unwrap();
        }
        let started = Instant::now();
        let mut answers: Vec<(Duration, String)> = Vec::new();
        let mut bufs = vec![Vec::new(); conns.len()];
        let mut done = vec![false; conns.len()];
        while !stop2.load(Ordering::Relaxed) {
            for (i, c) in conns.iter_mut().enumerate() {
                if done[i] {
                    continue;
                }
                let _ = c.write(b"s");
                let mut buf = [0u8; 256];
                loop {
                    match c.read(&mut buf) {
                        Ok(0) => {
                            done[i] = true;
                            answers.push((
                                started.elapsed(),
                                String::from_utf8_lossy(&bufs[i]).into(),
                            ));
                            break;
                        }
                        Ok(n) => bufs[i].extend_from_slice(&buf[..n]),
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                        Err(e) => {
                            done[i] = true;
                            answers.push((
                                started.elapsed(),
                                format!("{e} after {:?}", String::from_utf8_lossy(&bufs[i])),
                            ));
                            break;
                        }
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        answers
    });
    std::thread::sleep(Duration::from_millis(300));
    // Meanwhile the operator and another status-group user are served at once, every time.
    let until = Instant::now() + Duration::from_secs(5);
    let mut worst = Duration::ZERO;
    while Instant::now() < until {
        let t = Instant::now();
        let out = fx.ctl(&["status"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = ctl_as(&fx, 65533, &[STATUS_GID], &["status"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        worst = worst.max(t.elapsed());
        std::thread::sleep(Duration::from_millis(200));
    }
    fx.activate("2");
    assert_eq!(fx.read("index.php"), "<?php echo 'release 2';");
    stop.store(true, Ordering::Relaxed);
    let answers = storm.join().unwrap();
    eprintln!("slowest status during the storm: {worst:?}");
    assert!(
        worst < Duration::from_secs(1),
        "status took {worst:?} during the storm"
    );
    // One user holds at most a few slots; the others were told so, in words, at once.
    let busy = answers
        .iter()
        .filter(|(_, a)| a.starts_with("error: busy: too many control clients"))
        .count();
    let timed_out: Vec<_> = answers
        .iter()
        .filter(|(_, a)| a.starts_with("error: timed out"))
        .collect();
    assert!(busy >= 50, "{answers:?}");
    assert!(!timed_out.is_empty(), "{answers:?}");
    // Trickling bytes does not extend the deadline for the whole request line.
    assert!(
        timed_out.iter().all(|(t, _)| *t < Duration::from_secs(4)),
        "{answers:?}"
    );
    assert_eq!(
        busy + timed_out.len(),
        64,
        "every slow client got a clear answer: {answers:?}"
    );
}

#[test]
fn a_client_beyond_the_limit_reads_busy_instead_of_a_reset() {
    let fx = Fixture::new("busy");
    fx.two_releases();
    let _d = fx.start(&["--initial", "1"]);
    // Root's silent clients fill every slot.
    let silent: Vec<UnixStream> = (0..64)
        .map(|_| UnixStream::connect(fx.socket()).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    for _ in 0..5 {
        let answer = exchange(&fx, b"ping\n").unwrap();
        assert_eq!(
            answer,
            "error: busy: too many control clients at once; retry\n"
        );
    }
    // switchctl retries a busy daemon: the silent clients are cut off within 2 s.
    let t = Instant::now();
    let out = fx.ctl(&["status"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());
    drop(silent);
}

// README "Usage", `activate ... --wait-drain`: a client that gives up ends the wait; the
// switch stays.
#[test]
fn an_abandoned_drain_wait_is_cancelled_and_the_switch_stays() {
    let fx = Fixture::new("abandon");
    fx.two_releases();
    let d = fx.start(&["--initial", "1"]);
    let held = fs::File::open(fx.m("app/a/b/c/deep.php")).unwrap();
    let mut s = UnixStream::connect(fx.socket()).unwrap();
    s.write_all(b"activate 2 drain=600\n").unwrap();
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(
        threads_named(d.pid(), "control-client"),
        1,
        "waiting for the drain"
    );
    drop(s);
    let t = Instant::now();
    while threads_named(d.pid(), "control-client") > 0 {
        assert!(
            t.elapsed() < Duration::from_secs(3),
            "the daemon still waits for a client that hung up"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        d.log_text()
            .contains("stopped waiting for release 1 to drain: the client hung up")
    );
    assert_eq!(fx.active(), "2");
    // A client that only half-closed after its request (as `socat` does) is still there:
    // the wait goes on and it gets the answer.
    drop(held);
    let held2 = fs::File::open(fx.m("app/a/b/c/only-deep-2.php")).unwrap();
    let mut s = UnixStream::connect(fx.socket()).unwrap();
    s.write_all(b"rollback drain=20\n").unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(threads_named(d.pid(), "control-client"), 1, "still waiting");
    drop(held2);
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert_eq!(
        answer,
        "ok\nswitched from 2 to 1; release 2 is no longer in use\n"
    );
}

/// A small deterministic generator, so a failing run can be replayed from its seed.
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> XorShift {
        XorShift(seed | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// What one fuzz client did and what came back.
struct Exchange {
    kind: &'static str,
    sent: Vec<u8>,
    answer: Vec<u8>,
}

/// One hostile client of a random kind; `None` for one that vanished without reading.
fn fuzz_client(rng: &mut XorShift, sock: &std::path::Path) -> Option<Exchange> {
    const WORDS: [&str; 16] = [
        "activate 2",
        "activate %32",
        "activate 1 drain=1",
        "rollback",
        "rollback drain=0",
        "prune 1 yes",
        "prune 1",
        "status",
        "status json",
        "list",
        "list json",
        "ping",
        "activate ",
        " drain=",
        "%",
        "\r",
    ];
    let mut s = UnixStream::connect(sock).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let (kind, sent) = match rng.below(5) {
        0 => {
            let n = rng.below(200) as usize;
            let mut msg = rng.bytes(n);
            if rng.below(2) == 0 {
                msg.push(b'\n');
            }
            let _ = s.write_all(&msg);
            ("random bytes", msg)
        }
        1 => {
            let mut msg = Vec::new();
            for _ in 0..=rng.below(3) {
                msg.extend_from_slice(WORDS[rng.below(16) as usize].as_bytes());
            }
            if rng.below(4) == 0 {
                let n = rng.below(8) as usize;
                let junk = rng.bytes(n);
                msg.extend_from_slice(&junk);
            }
            msg.push(b'\n');
            // Sometimes more after the line, which the daemon must ignore.
            if rng.below(3) == 0 {
                msg.extend_from_slice(b"status\nactivate 2\n");
            }
            let _ = s.write_all(&msg);
            ("valid-ish line", msg)
        }
        2 => {
            let mut msg = vec![b'a'; 4096 + rng.below(256 * 1024) as usize];
            msg.push(b'\n');
            let _ = s.write_all(&msg);
            ("huge line", msg[..32].to_vec())
        }
        3 => {
            let msg = WORDS[rng.below(16) as usize].as_bytes().to_vec();
            for b in &msg {
                if s.write_all(&[*b]).is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20 + rng.below(400)));
            }
            let _ = s.write_all(b"\n");
            ("slow client", msg)
        }
        _ => {
            let n = rng.below(6) as usize;
            let _ = s.write_all(&b"activate 2\n"[..n]);
            return None;
        }
    };
    let mut answer = Vec::new();
    // A read error after the answer (our own unread bytes) still leaves the answer here.
    let _ = s.read_to_end(&mut answer);
    Some(Exchange { kind, sent, answer })
}

// README "How it works, and the rules it keeps": bad input changes nothing; README "Usage":
// status keeps answering. Hostile clients run as the web server's user would (nobody in the
// status group), concurrently; root switches now and then and checks the release served.
#[test]
fn fuzzing_the_socket_changes_nothing_and_status_keeps_answering() {
    require_root();
    let seed = std::env::var("SWITCHFS_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(0x5eed_c0de_2026_1130);
    eprintln!("fuzz seed {seed} (replay with SWITCHFS_FUZZ_SEED={seed})");
    let fx = Fixture::new("fuzz3");
    fx.two_releases();
    fx.open_up_for_others();
    let mut d = start_with_both_groups(&fx);
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..12u64)
        .map(|i| {
            let stop = stop.clone();
            let sock = fx.socket();
            let mut rng = XorShift::new(seed ^ i.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            on_thread_as(NOBODY, NOBODY, vec![STATUS_GID], move || {
                let mut seen = Vec::new();
                let mut vanished = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    match fuzz_client(&mut rng, &sock) {
                        Some(x) => seen.push(x),
                        None => vanished += 1,
                    }
                }
                (seen, vanished)
            })
        })
        .collect();
    let mut expected = "1";
    let mut worst = Duration::ZERO;
    let started = Instant::now();
    let mut round = 0u32;
    while started.elapsed() < Duration::from_secs(20) {
        let t = Instant::now();
        let out = fx.ctl(&["status"]);
        worst = worst.max(t.elapsed());
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let want = format!("active:       {expected} ");
        assert!(stdout(&out).starts_with(&want), "{}", stdout(&out));
        round += 1;
        if round.is_multiple_of(12) {
            expected = if expected == "1" { "2" } else { "1" };
            fx.activate(expected);
        }
        assert_eq!(
            fx.read("index.php"),
            format!("<?php echo 'release {expected}';")
        );
        std::thread::sleep(Duration::from_millis(150));
    }
    stop.store(true, Ordering::Relaxed);
    let mut by_kind: std::collections::BTreeMap<&str, usize> = Default::default();
    let mut vanished = 0;
    for w in workers {
        let (seen, gone) = w.join().unwrap();
        vanished += gone;
        for x in seen {
            *by_kind.entry(x.kind).or_default() += 1;
            let answer = String::from_utf8_lossy(&x.answer);
            let sent = String::from_utf8_lossy(&x.sent);
            assert!(
                answer.starts_with("ok\n") || answer.starts_with("error: "),
                "{} {sent:?}: {answer:?}",
                x.kind
            );
            assert!(
                !answer.contains("switched") && !answer.contains("delete"),
                "nobody changed something: {sent:?}: {answer:?}"
            );
        }
    }
    eprintln!(
        "fuzz: {by_kind:?}, {vanished} vanished; slowest status {worst:?}, {round} status rounds"
    );
    assert!(
        by_kind.len() == 4 && vanished > 0,
        "every kind of client ran: {by_kind:?}"
    );
    assert!(
        worst < Duration::from_secs(2),
        "status took {worst:?} during the storm"
    );
    let alive = d
        .child
        .as_mut()
        .map(|c| c.try_wait().ok().flatten().is_none());
    assert_eq!(alive, Some(true), "the daemon died:\n{}", d.log_text());
    assert_eq!(fx.active(), expected);
    assert!(!d.log_text().contains("panicked"));
}
