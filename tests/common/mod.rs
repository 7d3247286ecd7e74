//! Shared harness for the mounted tests: temporary release trees, a real `switchfs` daemon
//! started through an RAII guard (readiness by `NOTIFY_SOCKET`, no sleeps) and `switchctl`.
//!
//! Missing FUSE is a failure with instructions, never a skip.

#![allow(dead_code)]

use std::ffi::CString;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub(crate) const SWITCHFS: &str = env!("CARGO_BIN_EXE_switchfs");
pub(crate) const SWITCHCTL: &str = env!("CARGO_BIN_EXE_switchctl");

static COUNTER: AtomicU64 = AtomicU64::new(0);

pub(crate) fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Fails the test, loudly and with the fix, when this machine cannot mount FUSE.
pub(crate) fn require_fuse() {
    assert!(
        Path::new("/dev/fuse").exists(),
        "/dev/fuse is missing: these tests mount a real FUSE filesystem. \
         Install fuse3 (apt-get install fuse3) and load the module (modprobe fuse)."
    );
    if !is_root() {
        let found = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join("fusermount3").exists()))
            .unwrap_or(false);
        assert!(
            found,
            "fusermount3 is missing: install fuse3 (apt-get install fuse3) or run as root"
        );
    }
}

/// A temporary directory with `releases/`, `mnt/`, a state file and a control socket path.
pub(crate) struct Fixture {
    pub root: PathBuf,
    /// When not 0, daemons start with this `RLIMIT_NOFILE` (soft and hard).
    pub nofile: std::sync::atomic::AtomicU64,
    /// Daemons start with `--mode bind` (see [`Fixture::bind`]).
    pub bind: bool,
}

impl Fixture {
    pub(crate) fn new(tag: &str) -> Fixture {
        require_fuse();
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        // Short paths: the control socket must fit in sockaddr_un.
        let root = std::env::temp_dir().join(format!("sfs-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("releases")).unwrap();
        std::fs::create_dir_all(root.join("mnt")).unwrap();
        Fixture {
            root,
            nofile: std::sync::atomic::AtomicU64::new(0),
            bind: false,
        }
    }

    /// A fixture whose daemons run in `--mode bind`: its directory is bind-mounted on itself
    /// and made shared, as bind mode requires of the mount point's parent (`/tmp` is on the
    /// host's private root here). Dropping the fixture detaches that mount and the docroot's
    /// bind mount in it, which a stopped bind-mode daemon leaves in place.
    pub(crate) fn bind(tag: &str) -> Fixture {
        assert!(
            is_root(),
            "bind mode mounts for real: run the tests as root"
        );
        let mut fx = Fixture::new(tag);
        fx.bind = true;
        let root = CString::new(fx.root.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: valid C strings and null data, as mount(2) allows for a bind and a
        // propagation change.
        unsafe {
            let bound = libc::mount(
                root.as_ptr(),
                root.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND,
                std::ptr::null(),
            );
            assert_eq!(
                bound,
                0,
                "bind {}: {}",
                fx.root.display(),
                std::io::Error::last_os_error()
            );
            let shared = libc::mount(
                std::ptr::null(),
                root.as_ptr(),
                std::ptr::null(),
                libc::MS_SHARED,
                std::ptr::null(),
            );
            assert_eq!(
                shared,
                0,
                "make-shared: {}",
                std::io::Error::last_os_error()
            );
        }
        fx
    }

    pub(crate) fn releases(&self) -> PathBuf {
        self.root.join("releases")
    }
    pub(crate) fn mnt(&self) -> PathBuf {
        self.root.join("mnt")
    }
    pub(crate) fn state(&self) -> PathBuf {
        self.root.join("state")
    }
    pub(crate) fn socket(&self) -> PathBuf {
        self.root.join("ctl.sock")
    }
    pub(crate) fn m(&self, rel: &str) -> PathBuf {
        self.mnt().join(rel)
    }

    /// Writes `content` at `path` inside release `rel`, creating directories.
    pub(crate) fn write(&self, rel: &str, path: &str, content: &str) {
        let full = self.releases().join(rel).join(path);
        std::fs::create_dir_all(full.parent().unwrap()).unwrap();
        std::fs::write(full, content).unwrap();
    }

    /// Two releases with the same layout and release-specific contents, plus a few entries
    /// that exist in only one of them.
    pub(crate) fn two_releases(&self) {
        for rel in ["1", "2"] {
            self.write(rel, "index.php", &format!("<?php echo 'release {rel}';"));
            self.write(rel, "app/a/b/c/deep.php", &format!("deep {rel}"));
            self.write(rel, "static/same-size.txt", &format!("content-{rel}"));
        }
        self.write("1", "only-in-1.txt", "gone in 2");
        self.write("2", "only-in-2.txt", "new in 2");
        self.write("2", "app/a/b/c/only-deep-2.php", "deep new");
    }

    /// Starts the daemon with the standard paths plus `extra` arguments.
    pub(crate) fn start(&self, extra: &[&str]) -> Daemon {
        Daemon::start(self, extra).unwrap_or_else(|e| panic!("{e}"))
    }

    pub(crate) fn ctl(&self, args: &[&str]) -> Output {
        Command::new(SWITCHCTL)
            .arg("--control")
            .arg(self.socket())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// Runs `switchctl activate NAME` and asserts it succeeded.
    pub(crate) fn activate(&self, name: &str) {
        let out = self.ctl(&["activate", name]);
        assert!(
            out.status.success(),
            "activate {name} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Makes the fixture's directories traversable for other users (tests that run a
    /// command as `nobody`).
    pub(crate) fn open_up_for_others(&self) {
        use std::os::unix::fs::PermissionsExt;
        for dir in [self.root.clone(), self.releases(), self.mnt()] {
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
    }

    /// The active release, as `switchctl status --json` reports it.
    pub(crate) fn active(&self) -> String {
        let out = self.ctl(&["status", "--json"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let json = stdout(&out);
        let start = json.find("\"active\":").expect("active field") + 9;
        json[start..]
            .split([',', '}'])
            .next()
            .unwrap_or_default()
            .trim_matches('"')
            .to_string()
    }

    pub(crate) fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.m(rel))
            .unwrap_or_else(|e| panic!("reading {rel} through the mount: {e}"))
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        // Everything a test mounted under its directory, even when it failed half-way.
        let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let prefix = self.root.to_string_lossy().replace(' ', "\\040");
        let mut mounts: Vec<&str> = text
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|m| m.starts_with(&prefix))
            .collect();
        // Deepest first: the docroot's bind mount before the fixture's own bind (a mount
        // point may show several stacked mounts; detach until none is left).
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for mount in mounts {
            for _ in 0..8 {
                if !is_mounted(Path::new(mount)) {
                    break;
                }
                force_unmount(Path::new(mount));
            }
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// A running `switchfs`. Dropping it stops it (SIGTERM, then SIGKILL) and makes sure nothing
/// stays mounted, even when the test failed.
pub(crate) struct Daemon {
    pub child: Option<Child>,
    pub mnt: PathBuf,
    pub log: PathBuf,
}

impl Daemon {
    pub(crate) fn start(fx: &Fixture, extra: &[&str]) -> Result<Daemon, String> {
        Self::start_with(fx, &fx.mnt(), extra)
    }

    pub(crate) fn start_with(fx: &Fixture, mnt: &Path, extra: &[&str]) -> Result<Daemon, String> {
        Self::start_exe(fx, Path::new(SWITCHFS), mnt, extra)
    }

    /// Starts the `switchfs` binary at `exe` (a copy, for upgrades) instead of the built one.
    pub(crate) fn start_exe(
        fx: &Fixture,
        exe: &Path,
        mnt: &Path,
        extra: &[&str],
    ) -> Result<Daemon, String> {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let notify_path = fx.root.join(format!("notify-{n}"));
        let notify = UnixDatagram::bind(&notify_path).unwrap();
        notify
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let log = fx.root.join(format!("daemon-{n}.log"));
        let mut cmd = Command::new(exe);
        cmd.arg("--releases").arg(fx.releases());
        if !extra.contains(&"--control") {
            cmd.arg("--control").arg(fx.socket());
        }
        if !extra.contains(&"--state") {
            cmd.arg("--state").arg(fx.state());
        }
        if fx.bind && !extra.contains(&"--mode") {
            cmd.arg("--mode").arg("bind");
        }
        cmd.args(extra)
            .arg(mnt)
            .env("NOTIFY_SOCKET", &notify_path)
            .env("RUST_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        let n = fx.nofile.load(Ordering::Relaxed);
        if n != 0 {
            use std::os::unix::process::CommandExt;
            // SAFETY: only setrlimit, which is async-signal-safe, runs in the child.
            unsafe {
                cmd.pre_exec(move || {
                    let lim = libc::rlimit {
                        rlim_cur: n,
                        rlim_max: n,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot run switchfs: {e}"))?;
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut buf = [0u8; 256];
        loop {
            if let Ok(n) = notify.recv(&mut buf)
                && buf[..n].windows(7).any(|w| w == b"READY=1")
            {
                break;
            }
            if let Ok(Some(status)) = child.try_wait() {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                return Err(format!(
                    "switchfs exited with {status} before ready:\n{text}"
                ));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                return Err(format!("switchfs not ready after 20 s:\n{text}"));
            }
        }
        let _ = std::fs::remove_file(&notify_path);
        Ok(Daemon {
            child: Some(child),
            mnt: mnt.to_path_buf(),
            log,
        })
    }

    /// The process serving the mount: the keeper's child (README, "Crashes and upgrades").
    pub(crate) fn pid(&self) -> i32 {
        let main = self.main_pid();
        let children = format!("/proc/{main}/task/{main}/children");
        std::fs::read_to_string(children)
            .ok()
            .and_then(|text| text.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    }

    /// The process the test started: the keeper, which systemd would track.
    pub(crate) fn main_pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).unwrap_or(0)
    }

    /// Sends `sig` and waits for the daemon to exit; returns its exit status.
    pub(crate) fn stop_with(&mut self, sig: i32) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("daemon already stopped");
        // SAFETY: kill on our own child's pid.
        unsafe { libc::kill(child.id() as i32, sig) };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("switchfs did not exit within 30 s of signal {sig}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub(crate) fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill on our own child's pid.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        force_unmount(&self.mnt);
    }
}

/// Whether `path` is a mount point right now (per /proc/self/mountinfo).
pub(crate) fn is_mounted(path: &Path) -> bool {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let want = path.to_string_lossy().replace(' ', "\\040");
    text.lines()
        .any(|l| l.split(' ').nth(4).is_some_and(|m| m == want))
}

/// Detaches whatever is mounted at `path`, as a last resort after a failed test.
pub(crate) fn force_unmount(path: &Path) {
    if !is_mounted(path) {
        return;
    }
    let c = CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: valid C string.
    if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0 {
        let _ = Command::new("fusermount3").arg("-uz").arg(path).status();
    }
}

/// A shell parked with its working directory in `dir` (it has done `cd` when `park`
/// returns), that runs `then` once resumed: how a request or a worker sits in a directory
/// across a switch.
pub(crate) struct ParkedShell {
    child: Child,
    out: std::io::BufReader<std::process::ChildStdout>,
}

impl ParkedShell {
    pub(crate) fn park(dir: &Path, then: &str) -> ParkedShell {
        use std::io::BufRead;
        let script = format!("cd \"$1\" && echo ready && read go && {then}");
        let mut child = Command::new("sh")
            .args(["-c", &script, "sh"])
            .arg(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        assert_eq!(
            line,
            "ready\n",
            "the shell could not enter {}",
            dir.display()
        );
        ParkedShell { child, out }
    }

    /// Lets the shell go on and returns its output, asserting it succeeded.
    pub(crate) fn resume(mut self) -> String {
        use std::io::{Read, Write};
        self.child.stdin.take().unwrap().write_all(b"go\n").unwrap();
        let mut text = String::new();
        self.out.read_to_string(&mut text).unwrap();
        let status = self.child.wait().unwrap();
        assert!(status.success(), "parked shell failed: {text}");
        text
    }
}

/// Runs a command as user and group nobody (65534), without supplementary groups.
pub(crate) fn as_nobody(args: &[&str]) -> Output {
    Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .args(args)
        .output()
        .unwrap()
}

/// `sh -c SCRIPT` as user and group nobody (65534), without supplementary groups, not yet
/// started: for attackers and readers that run alongside the test.
pub(crate) fn nobody_shell(script: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = Command::new("setpriv");
    cmd.args([
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "sh",
        "-c",
    ])
    .arg(script);
    cmd
}

/// Stderr of `out`, asserting it is exactly one line.
pub(crate) fn one_line_error(out: &Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        !out.status.success(),
        "expected failure, got success: {err}"
    );
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "expected a one-line error, got: {err:?}"
    );
    err.trim_end().to_string()
}

pub(crate) fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// The state the daemon persisted at `path`, as "active=A previous=P" (previous "-" if none).
pub(crate) fn persisted(path: &Path) -> String {
    match switchfs::state::load(path) {
        Ok(Some(st)) => format!(
            "active={} previous={}",
            st.active,
            st.previous.as_deref().unwrap_or("-")
        ),
        Ok(None) => "no state file".into(),
        Err(e) => format!("unreadable state file: {e}"),
    }
}

// Helpers for the mount point and shutdown tests (tests/mounting.rs).

/// Runs `switchfs ARGS` (nothing added but `NOTIFY_SOCKET`, and the fixture's `nofile`
/// limit) expecting it to refuse to start, and returns its error, asserted to be one line
/// with a non-zero exit. If it starts serving instead, it is stopped and the test fails.
pub(crate) fn refused_start(fx: &Fixture, args: &[&std::ffi::OsStr]) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let notify_path = fx.root.join(format!("notify-r{n}"));
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let err_path = fx.root.join(format!("refused-{n}.err"));
    let mut cmd = Command::new(SWITCHFS);
    cmd.args(args)
        .env("NOTIFY_SOCKET", &notify_path)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&err_path).unwrap());
    let limit = fx.nofile.load(Ordering::Relaxed);
    if limit != 0 {
        use std::os::unix::process::CommandExt;
        // SAFETY: only setrlimit, which is async-signal-safe, runs in the child.
        unsafe {
            cmd.pre_exec(move || {
                let lim = libc::rlimit {
                    rlim_cur: limit,
                    rlim_max: limit,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let mut child = cmd.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut buf = [0u8; 256];
    let status = loop {
        if let Ok(Some(status)) = child.try_wait() {
            break status;
        }
        let ready = notify
            .recv(&mut buf)
            .is_ok_and(|n| buf[..n].windows(7).any(|w| w == b"READY=1"));
        if ready || Instant::now() > deadline {
            // SAFETY: kill on our own child's pid.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            std::thread::sleep(Duration::from_millis(500));
            let _ = child.kill();
            let _ = child.wait();
            let err = std::fs::read_to_string(&err_path).unwrap_or_default();
            panic!(
                "switchfs {args:?} {} instead of refusing:\n{err}",
                if ready { "started serving" } else { "hung" }
            );
        }
    };
    let _ = std::fs::remove_file(&notify_path);
    let err = std::fs::read_to_string(&err_path).unwrap_or_default();
    assert!(!status.success(), "expected a refusal, got {status}: {err}");
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "expected a one-line error, got: {err:?}"
    );
    err.trim_end().to_string()
}

/// Every mount point at or below `dir`, from /proc/self/mountinfo (as spelled there).
pub(crate) fn mounts_under(dir: &Path) -> Vec<String> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let prefix = dir.to_string_lossy().replace(' ', "\\040");
    text.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| m.starts_with(&prefix))
        .map(str::to_string)
        .collect()
}

/// `mount --bind src dst` (root only).
pub(crate) fn bind_mount(src: &Path, dst: &Path) {
    let s = CString::new(src.as_os_str().as_encoded_bytes()).unwrap();
    let d = CString::new(dst.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: valid C strings; the other arguments may be null for MS_BIND.
    let rc = unsafe {
        libc::mount(
            s.as_ptr(),
            d.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND,
            std::ptr::null(),
        )
    };
    assert_eq!(
        rc,
        0,
        "mount --bind {} {}: {}",
        src.display(),
        dst.display(),
        std::io::Error::last_os_error()
    );
}

/// Waits up to `secs` for `cond`; whether it became true.
pub(crate) fn wait_until(secs: u64, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    cond()
}

/// Aborts the FUSE connection of the mount on top at `path` (through fusectl, mounted on
/// /sys/fs/fuse/connections if it is not yet): what an operator does to free a hung mount.
pub(crate) fn abort_fuse_connection(path: &Path) {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()))
        .dev();
    let conns = Path::new("/sys/fs/fuse/connections");
    if std::fs::read_dir(conns).map(|d| d.count()).unwrap_or(0) == 0 {
        let status = Command::new("mount")
            .args(["-t", "fusectl", "fusectl"])
            .arg(conns)
            .status()
            .expect("cannot run mount");
        assert!(
            status.success(),
            "cannot mount fusectl on {}",
            conns.display()
        );
    }
    let abort = conns.join(libc::minor(dev).to_string()).join("abort");
    std::fs::write(&abort, "1").unwrap_or_else(|e| panic!("{}: {e}", abort.display()));
}

/// `switchctl ARGS` as nobody with exactly the supplementary `groups` (setpriv).
pub(crate) fn ctl_as_nobody(fx: &Fixture, groups: &[u32], args: &[&str]) -> Output {
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534"]);
    if groups.is_empty() {
        cmd.arg("--clear-groups");
    } else {
        let list: Vec<String> = groups.iter().map(u32::to_string).collect();
        cmd.arg(format!("--groups={}", list.join(",")));
    }
    cmd.arg(SWITCHCTL)
        .arg("--control")
        .arg(fx.socket())
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run setpriv (util-linux): {e}"))
}
