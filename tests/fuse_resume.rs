//! fuser's resumed session (vendor/fuser/SWITCHFS.md), on a real mount: the first process
//! mounts and answers FUSE_INIT, hands its /dev/fuse descriptor to a child across `exec`, and
//! stops reading (SIGKILL); the child serves the same connection with `Session::resume`.
//! - Killed while idle: requests made meanwhile wait in the kernel and complete once the
//!   child serves.
//! - Killed in the middle of a request: that request is answered once the child sends
//!   `FUSE_NOTIFY_RESEND` (Linux 6.9+), and never without it.
//!
//! One binary plays three parts (no test harness, so `main` can pick): the test itself, the
//! fresh server and the resumed server, chosen by `FUSE_RESUME_ROLE`.

use std::ffi::{CString, OsStr};
use std::io::{BufRead, BufReader};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use fuser::{
    Config, Errno, FileAttr, FileHandle, FileType, Filesystem, Generation, INodeNo, InitParams,
    LockOwner, MountOption, OpenFlags, ReplyAttr, ReplyData, ReplyEntry, Request, Session,
    SessionACL,
};

const ROLE: &str = "FUSE_RESUME_ROLE";
const MNT: &str = "FUSE_RESUME_MNT";
const GO: &str = "FUSE_RESUME_GO";
const FD: &str = "FUSE_RESUME_FD";
const INIT: &str = "FUSE_RESUME_INIT";
/// Where the fresh server says it took a read of `slow` (which it never answers).
const TAKEN: &str = "FUSE_RESUME_TAKEN";
/// The resumed server sends FUSE_NOTIFY_RESEND once this file exists.
const RESEND: &str = "FUSE_RESUME_RESEND";

fn main() {
    match std::env::var(ROLE).as_deref() {
        Ok("fresh") => fresh_server(),
        Ok("resumed") => resumed_server(),
        _ => {
            requests_wait_for_the_resumed_session_and_complete();
            println!("test requests_wait_for_the_resumed_session_and_complete ... ok");
            a_request_the_dead_server_took_is_answered_after_resend();
            println!("test a_request_the_dead_server_took_is_answered_after_resend ... ok");
        }
    }
}

/// Two files, `who` (inode 2) and `slow` (inode 3), whose content names the server that
/// answered: no cache may hide which process served a request (every reply has a zero
/// timeout). The fresh server never answers a read of `slow`: it dies holding it.
struct Probe {
    role: &'static str,
}

impl Probe {
    fn content(&self) -> String {
        format!("served by the {} session\n", self.role)
    }

    fn attr(&self, ino: u64) -> FileAttr {
        let (kind, perm, size) = if ino == 1 {
            (FileType::Directory, 0o755, 0)
        } else {
            (FileType::RegularFile, 0o444, self.content().len() as u64)
        };
        FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: 1,
            atime: UNIX_EPOCH,
            mtime: UNIX_EPOCH,
            ctime: UNIX_EPOCH,
            crtime: UNIX_EPOCH,
            kind,
            perm,
            nlink: 1,
            uid: 0,
            gid: 0,
            rdev: 0,
            flags: 0,
            blksize: 4096,
        }
    }
}

impl Filesystem for Probe {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let ino = match name.to_str() {
            Some("who") => 2,
            Some("slow") => 3,
            _ => 0,
        };
        if parent.0 == 1 && ino != 0 {
            reply.entry(&Duration::ZERO, &self.attr(ino), Generation(0));
        } else {
            reply.error(Errno::ENOENT);
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match ino.0 {
            1..=3 => reply.attr(&Duration::ZERO, &self.attr(ino.0)),
            _ => reply.error(Errno::ENOENT),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        if ino.0 == 3 && self.role == "fresh" {
            // Say so, then hold the request until this process is killed.
            std::fs::write(env(TAKEN), "").expect("taken file");
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
        if ino.0 != 2 && ino.0 != 3 {
            return reply.error(Errno::ENOENT);
        }
        let content = self.content().into_bytes();
        let start = (offset as usize).min(content.len());
        let end = (start + size as usize).min(content.len());
        reply.data(&content[start..end]);
    }
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set"))
}

fn config() -> Config {
    let mut config = Config::default();
    config.mount_options = vec![MountOption::FSName("resume-probe".into()), MountOption::RO];
    config.acl = SessionACL::Owner;
    config
}

/// Mounts, answers FUSE_INIT, starts the resumed server with the descriptor and what INIT
/// settled, says "ready PID" and serves until it is killed.
fn fresh_server() {
    let session = Session::new(Probe { role: "fresh" }, env(MNT), &config())
        .unwrap_or_else(|e| panic!("mount failed: {e}"));
    let params = session
        .init_params()
        .expect("a fresh session knows what FUSE_INIT settled");
    let inherited = inheritable_dup(session.as_fd());
    // Never waited for here: this process is killed while serving, and the test, its
    // subreaper, reaps the child.
    #[allow(clippy::zombie_processes)]
    let child = Command::new(std::env::current_exe().expect("own path"))
        .env(ROLE, "resumed")
        .env(FD, inherited.as_raw_fd().to_string())
        .env(INIT, params.to_string())
        .spawn()
        .expect("start the resumed server");
    drop(inherited);
    println!("ready {}", child.id());
    session.run().expect("fresh session");
}

/// A duplicate of `fd` without close-on-exec, so a child started with `exec` inherits it.
fn inheritable_dup(fd: std::os::fd::BorrowedFd<'_>) -> OwnedFd {
    // SAFETY: dup of a descriptor we hold; the new one has no FD_CLOEXEC.
    let raw = unsafe { libc::dup(fd.as_raw_fd()) };
    assert!(raw >= 0, "dup: {}", std::io::Error::last_os_error());
    // SAFETY: a fresh descriptor owned by nobody else.
    unsafe { OwnedFd::from_raw_fd(raw) }
}

/// Waits for the go file, then serves the inherited connection without a handshake.
fn resumed_server() {
    wait_for(Path::new(&env(GO)), "go");
    let raw: i32 = env(FD).parse().expect("descriptor number");
    // SAFETY: the descriptor was inherited across exec for us alone; nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let params: InitParams = env(INIT).parse().expect("init parameters");
    let session = Session::resume(
        Probe { role: "resumed" },
        fd,
        SessionACL::Owner,
        config(),
        params,
    )
    .unwrap_or_else(|e| panic!("resume failed: {e}"));
    if let Ok(resend) = std::env::var(RESEND) {
        let notifier = session.notifier();
        std::thread::spawn(move || {
            wait_for(Path::new(&resend), "resend");
            if let Err(e) = notifier.resend() {
                eprintln!("FUSE_NOTIFY_RESEND failed: {e}");
                std::process::exit(1);
            }
        });
    }
    session.run().expect("resumed session");
}

fn wait_for(path: &Path, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !path.exists() {
        assert!(Instant::now() < deadline, "never told to {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Kills what the test started and detaches the mount, also when an assertion failed.
struct Cleanup {
    mnt: PathBuf,
    pids: Vec<i32>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Ok(c) = CString::new(self.mnt.as_os_str().as_encoded_bytes()) {
            // SAFETY: valid C string.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
        for &pid in &self.pids {
            // SAFETY: signals and reaps processes this test started (children or, being
            // their subreaper, grandchildren).
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, std::ptr::null_mut(), 0);
            }
        }
        let _ = std::fs::remove_dir_all(self.mnt.parent().unwrap_or(&self.mnt));
    }
}

fn who(mnt: &Path) -> std::io::Result<String> {
    let path = mnt.join("who");
    let size = std::fs::metadata(&path)?.size();
    let text = std::fs::read_to_string(&path)?;
    assert_eq!(size, text.len() as u64, "stat and read agree");
    Ok(text)
}

/// The fresh server (mounted, serving) and the pid of the resumed one (waiting for `go`).
struct Servers {
    dir: PathBuf,
    mnt: PathBuf,
    fresh: std::process::Child,
    cleanup: Cleanup,
}

impl Servers {
    fn start(tag: &str) -> Servers {
        assert!(
            Path::new("/dev/fuse").exists(),
            "/dev/fuse is missing: install fuse3 and load the module (modprobe fuse)"
        );
        // SAFETY: geteuid cannot fail.
        let euid = unsafe { libc::geteuid() };
        assert_eq!(euid, 0, "run as root: the probe mounts with mount(2)");
        // Adopt the resumed server when the fresh one dies, so it can be reaped.
        // SAFETY: prctl with plain integer arguments.
        let subreaper = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
        assert_eq!(subreaper, 0);
        let dir = std::env::temp_dir().join(format!("sfs-{tag}-{}", std::process::id()));
        let mnt = dir.join("mnt");
        std::fs::create_dir_all(&mnt).expect("mount point");
        let mut cleanup = Cleanup {
            mnt: mnt.clone(),
            pids: Vec::new(),
        };
        let mut fresh = Command::new(std::env::current_exe().expect("own path"))
            .env(ROLE, "fresh")
            .env(MNT, &mnt)
            .env(GO, dir.join("go"))
            .env(TAKEN, dir.join("taken"))
            .env(RESEND, dir.join("resend"))
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the fresh server");
        cleanup.pids.push(fresh.id() as i32);
        let mut line = String::new();
        BufReader::new(fresh.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("fresh server output");
        let resumed_pid: i32 = line
            .strip_prefix("ready ")
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("fresh server did not get ready: {line:?}"));
        cleanup.pids.push(resumed_pid);
        assert_eq!(who(&mnt).expect("fresh"), "served by the fresh session\n");
        Servers {
            dir,
            mnt,
            fresh,
            cleanup,
        }
    }

    /// SIGKILLs the fresh server: it stops reading, and answers nothing it took.
    fn kill_fresh(&mut self) {
        // SAFETY: our own child.
        unsafe { libc::kill(self.fresh.id() as i32, libc::SIGKILL) };
        self.fresh.wait().expect("reap the fresh server");
    }

    /// Lets the resumed server start serving.
    fn go(&self, what: &str) -> Instant {
        let at = Instant::now();
        std::fs::write(self.dir.join(what), "").expect("signal file");
        at
    }
}

fn requests_wait_for_the_resumed_session_and_complete() {
    let mut servers = Servers::start("resume");
    let mnt = servers.mnt.clone();
    // Killed while idle, so it took no request with it.
    servers.kill_fresh();

    let (tx, rx) = mpsc::channel();
    for _ in 0..4 {
        let (tx, mnt) = (tx.clone(), mnt.clone());
        std::thread::spawn(move || {
            let result = who(&mnt).map_err(|e| e.to_string());
            let _ = tx.send((result, Instant::now()));
        });
    }
    // Nobody reads the connection now: the requests wait instead of failing.
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        rx.try_recv().is_err(),
        "a request was answered while no process served the connection"
    );
    let resumed_at = servers.go("go");
    for _ in 0..4 {
        let (result, done) = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("a waiting request never completed");
        assert_eq!(result.as_deref(), Ok("served by the resumed session\n"));
        assert!(done >= resumed_at);
    }
    let waited = resumed_at.elapsed();
    assert_eq!(
        who(&mnt).expect("new request"),
        "served by the resumed session\n"
    );
    println!("4 waiting requests completed {waited:?} after the resumed session started");
    drop(servers.cleanup);
}

/// The running kernel's (major, minor) version.
fn kernel_version() -> (u32, u32) {
    let text = std::fs::read_to_string("/proc/sys/kernel/osrelease").expect("kernel version");
    let mut parts = text
        .trim()
        .split(['.', '-'])
        .map(|p| p.parse::<u32>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

fn a_request_the_dead_server_took_is_answered_after_resend() {
    assert!(
        kernel_version() >= (6, 9),
        "FUSE_NOTIFY_RESEND needs Linux 6.9 or later; this kernel is {:?}",
        kernel_version()
    );
    let mut servers = Servers::start("resend");
    let mnt = servers.mnt.clone();
    let (tx, rx) = mpsc::channel();
    let slow = mnt.join("slow");
    std::thread::spawn(move || {
        let _ = tx.send(std::fs::read_to_string(&slow).map_err(|e| e.to_string()));
    });
    // The fresh server dies with the read in its hands.
    wait_for(&servers.dir.join("taken"), "see the read taken");
    servers.kill_fresh();
    servers.go("go");
    assert_eq!(
        who(&mnt).expect("the resumed server serves"),
        "served by the resumed session\n"
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        rx.try_recv().is_err(),
        "the read the dead server took was answered without FUSE_NOTIFY_RESEND"
    );
    let resent_at = servers.go("resend");
    let result = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("the read the dead server took never completed after FUSE_NOTIFY_RESEND");
    assert_eq!(result.as_deref(), Ok("served by the resumed session\n"));
    println!(
        "the read the dead server took completed {:?} after FUSE_NOTIFY_RESEND",
        resent_at.elapsed()
    );
    drop(servers.cleanup);
}
