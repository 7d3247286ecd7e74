//! fuser's resumed session (vendor/fuser/SWITCHFS.md), on a real mount: the first process
//! mounts and answers FUSE_INIT, hands its /dev/fuse descriptor to a child across `exec`, and
//! stops reading (it is SIGKILLed while idle); requests made then wait in the kernel, and
//! complete once the child serves the same connection with `Session::resume`.
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

fn main() {
    match std::env::var(ROLE).as_deref() {
        Ok("fresh") => fresh_server(),
        Ok("resumed") => resumed_server(),
        _ => {
            requests_wait_for_the_resumed_session_and_complete();
            println!("test requests_wait_for_the_resumed_session_and_complete ... ok");
        }
    }
}

/// One file, `who`, whose content names the server that answered: no cache may hide which
/// process served a request (every reply has a zero timeout).
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
        if parent.0 == 1 && name == "who" {
            reply.entry(&Duration::ZERO, &self.attr(2), Generation(0));
        } else {
            reply.error(Errno::ENOENT);
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match ino.0 {
            1 | 2 => reply.attr(&Duration::ZERO, &self.attr(ino.0)),
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
        if ino.0 != 2 {
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
    let go = PathBuf::from(env(GO));
    let deadline = Instant::now() + Duration::from_secs(60);
    while !go.exists() {
        assert!(Instant::now() < deadline, "never told to go");
        std::thread::sleep(Duration::from_millis(5));
    }
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
    session.run().expect("resumed session");
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

fn requests_wait_for_the_resumed_session_and_complete() {
    assert!(
        Path::new("/dev/fuse").exists(),
        "/dev/fuse is missing: install fuse3 and load the module (modprobe fuse)"
    );
    // SAFETY: geteuid cannot fail.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "run as root: the probe mounts with mount(2)"
    );
    // Adopt the resumed server when the fresh one dies, so it can be reaped.
    // SAFETY: prctl with plain integer arguments.
    assert_eq!(
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) },
        0
    );
    let dir = std::env::temp_dir().join(format!("sfs-resume-{}", std::process::id()));
    let mnt = dir.join("mnt");
    std::fs::create_dir_all(&mnt).expect("mount point");
    let go = dir.join("go");
    let mut cleanup = Cleanup {
        mnt: mnt.clone(),
        pids: Vec::new(),
    };
    let mut fresh = Command::new(std::env::current_exe().expect("own path"))
        .env(ROLE, "fresh")
        .env(MNT, &mnt)
        .env(GO, &go)
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

    // The fresh server stops reading: killed while idle, so it took no request with it.
    // SAFETY: our own child.
    unsafe { libc::kill(fresh.id() as i32, libc::SIGKILL) };
    fresh.wait().expect("reap the fresh server");

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
    let resumed_at = Instant::now();
    std::fs::write(&go, "").expect("go file");
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
    drop(cleanup);
}
