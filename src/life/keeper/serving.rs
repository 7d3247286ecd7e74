//! The server's side of the keeper: its link to the keeper, what `status` shows of the
//! daemon's life, and the faults the upgrade tests inject.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use fuser::InitParams;
use parking_lot::Mutex;

use crate::sys;

/// What a server sends once it serves.
pub(super) const READY: &[u8] = b"ready";
/// What an upgrade's candidate sends once it started and checked its arguments, beside the
/// running server; it then waits for `GO`.
pub(super) const PREPARED: &[u8] = b"prepared";
/// What the keeper sends a candidate once the old server has left the connection to it.
pub(super) const GO: &[u8] = b"go";
/// The start of the keeper's message with the counters and the last upgrade attempt.
pub(super) const LIFE: &str = "life\n";

/// Handle numbers of the n-th server start at n << 40, so no two servers give out the same.
const HANDLE_SHIFT: u32 = 40;

/// Where a server process stands in the daemon's life, for `status`.
#[derive(Debug, Clone)]
pub struct Life {
    /// This process, which serves FUSE requests.
    pub pid: u32,
    /// The keeper: the process to signal for a reload, the one systemd tracks.
    pub main_pid: u32,
    /// When this process started serving.
    pub started: SystemTime,
    /// Servers restarted after a crash, and upgrades that succeeded, since the mount was made.
    pub restarts: u64,
    pub upgrades: u64,
    /// The last upgrade attempt (SIGHUP), whatever its outcome.
    pub last_upgrade: Option<Attempt>,
    /// When the latest crash restarts happened (at most `RESTART_TIMES_KEPT`, oldest
    /// first; since the keeper last started or was upgraded), for monitoring's restart-loop
    /// rule.
    pub restarted_at: Vec<SystemTime>,
}

/// One upgrade attempt, as the keeper saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    /// Attempts since the keeper started (1 for the first SIGHUP).
    pub number: u64,
    pub at: SystemTime,
    /// The binary it tried: the install path as resolved at the SIGHUP.
    pub binary: String,
    pub outcome: Outcome,
    /// Why it failed; empty otherwise.
    pub cause: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The new binary is still proving itself.
    Proving,
    Ok,
    /// The running version goes on serving.
    Failed,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Proving => "proving",
            Outcome::Ok => "ok",
            Outcome::Failed => "failed",
        }
    }
}

impl Attempt {
    /// One line per field; newlines in the texts become spaces.
    pub(super) fn encode(&self) -> String {
        let ms = self
            .at
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let clean = |s: &str| s.replace(['\n', '\r'], " ");
        format!(
            "{}\n{ms}\n{}\n{}\n{}",
            self.number,
            self.outcome.as_str(),
            clean(&self.binary),
            clean(&self.cause)
        )
    }

    pub(super) fn decode(text: &str) -> Option<Attempt> {
        let mut w = text.splitn(5, '\n');
        let number = w.next()?.parse().ok()?;
        let ms: u64 = w.next()?.parse().ok()?;
        let outcome = match w.next()? {
            "proving" => Outcome::Proving,
            "ok" => Outcome::Ok,
            "failed" => Outcome::Failed,
            _ => return None,
        };
        Some(Attempt {
            number,
            at: SystemTime::UNIX_EPOCH + Duration::from_millis(ms),
            outcome,
            binary: w.next()?.to_string(),
            cause: w.next().unwrap_or("").to_string(),
        })
    }
}

/// The keeper's message carrying the counters and the last attempt.
pub(super) fn life_message(restarts: u64, upgrades: u64, last: Option<&Attempt>) -> String {
    let last = last.map(Attempt::encode).unwrap_or_default();
    format!("{LIFE}{restarts}\n{upgrades}\n{last}")
}

static LIFE_NOW: Mutex<Option<Life>> = Mutex::new(None);

/// The serving process's place in the daemon's life, once it runs under a keeper.
pub fn life() -> Option<Life> {
    LIFE_NOW.lock().clone()
}

pub(super) fn set_life(life: Life) {
    *LIFE_NOW.lock() = Some(life);
}

/// Applies a `life` message from the keeper; other messages are ignored.
fn apply_life(msg: &[u8]) {
    let Some(text) = std::str::from_utf8(msg)
        .ok()
        .and_then(|t| t.strip_prefix(LIFE))
    else {
        return;
    };
    let mut w = text.splitn(3, '\n');
    let (Some(Ok(restarts)), Some(Ok(upgrades))) = (
        w.next().map(str::parse::<u64>),
        w.next().map(str::parse::<u64>),
    ) else {
        log::warn!("keeper: ignored a malformed life message");
        return;
    };
    let last = w.next().and_then(Attempt::decode);
    if let Some(life) = LIFE_NOW.lock().as_mut() {
        life.restarts = restarts;
        life.upgrades = upgrades;
        life.last_upgrade = last;
    }
}

/// A resumed server's inherited connection.
pub struct Resume {
    pub fuse: OwnedFd,
    pub listener: OwnedFd,
    pub params: InitParams,
    /// The mount's id and device, as the server that made it identified them: a resumed
    /// server must not look at its own mount (a request to itself, taken by a worker that
    /// then crashes, would never be answered, and the process could never exit).
    pub mount: Option<(u64, u64)>,
}

/// A server's ties to its keeper.
pub struct ServerLink {
    pub(super) keeper: OwnedFd,
    /// The node id log (see `nodelog`).
    pub nodes: OwnedFd,
    /// Set when the connection is already mounted and initialised: resume it.
    pub resume: Option<Resume>,
    pub(super) serial: u64,
    /// Started by an upgrade beside the running server: prepare, then wait for `GO`.
    pub(super) candidate: bool,
}

impl ServerLink {
    /// The first handle number this server may give out.
    pub fn first_handle(&self) -> u64 {
        (self.serial << HANDLE_SHIFT) + 1
    }

    /// Gives the keeper the connection and the control listener, so they outlive this
    /// process.
    ///
    /// # Errors
    /// The keeper is gone.
    pub fn hand_over(
        &self,
        fuse: BorrowedFd<'_>,
        listener: BorrowedFd<'_>,
        params: &InitParams,
        mount: (u64, u64),
    ) -> Result<(), String> {
        let text = format!("mount={}:{} {params}", mount.0, mount.1);
        sys::send_with_fds(
            self.keeper.as_fd(),
            None,
            text.as_bytes(),
            &[fuse, listener],
        )
        .map_err(|e| format!("cannot hand the connection to the keeper: {e}"))
    }

    /// An upgrade's candidate: tells the keeper it started and checked its arguments
    /// (beside the running server, which still serves), then waits until the keeper says
    /// the old server left the connection. Nothing that server may still change (the state
    /// file and its lock, the node and mtime logs) is read before. Others return at once.
    /// The wait is bounded by the keeper, which kills a candidate it gave up on.
    ///
    /// # Errors
    /// The keeper is gone.
    pub fn prove(&self) -> Result<(), String> {
        if !self.candidate {
            return Ok(());
        }
        sys::send_with_fds(self.keeper.as_fd(), None, PREPARED, &[])
            .map_err(|e| format!("cannot tell the keeper we are prepared: {e}"))?;
        loop {
            match next_message(self.keeper.as_fd(), Duration::from_secs(1))? {
                Some(msg) if msg == GO => return Ok(()),
                Some(msg) => apply_life(&msg),
                None => {}
            }
        }
    }

    /// Tells the keeper this server serves: a death from now on is restarted at once.
    pub fn ready(&self) {
        if let Err(e) = sys::send_with_fds(self.keeper.as_fd(), None, READY, &[]) {
            log::warn!("cannot tell the keeper we serve: {e}");
        }
    }

    /// Keeps reading the keeper's messages (its counters and upgrade attempts, for
    /// `status`) for the rest of this process's life.
    pub fn follow(self) {
        let spawned = std::thread::Builder::new()
            .name("keeper-link".into())
            .spawn(move || {
                while let Ok(msg) = next_message(self.keeper.as_fd(), Duration::from_secs(3600)) {
                    if let Some(msg) = msg {
                        apply_life(&msg);
                    }
                }
            });
        if let Err(e) = spawned {
            log::warn!("cannot follow the keeper's messages: {e}");
        }
    }
}

/// The next message on `fd` within `wait`, `None` if none came.
///
/// # Errors
/// The other end is gone.
pub(super) fn next_message(fd: BorrowedFd<'_>, wait: Duration) -> Result<Option<Vec<u8>>, String> {
    if !sys::wait_readable(fd, wait).unwrap_or(true) {
        return Ok(None);
    }
    match sys::recv_with_fds(fd) {
        Ok(Some((data, _))) if data.is_empty() => Err("the keeper went away".into()),
        Ok(Some((data, _))) => Ok(Some(data)),
        Ok(None) => Ok(None),
        Err(e) => Err(format!("keeper link: {e}")),
    }
}

// Faults the upgrade tests inject into a copy of the real binary (`SWITCHFS_TEST_FAULT`,
// set by a wrapper script for the new binary only): a binary that resumes the connection
// and exits, and one that crashes on its first request. Nothing else reads the variable.

pub(super) const FAULT_ENV: &str = "SWITCHFS_TEST_FAULT";
static EXIT_AFTER_RESUME: AtomicBool = AtomicBool::new(false);
static CRASH_ON_REQUEST: AtomicBool = AtomicBool::new(false);

pub(super) fn arm_fault(name: &str) {
    match name {
        "exit-after-resume" => EXIT_AFTER_RESUME.store(true, Ordering::Relaxed),
        "crash-on-first-request" => CRASH_ON_REQUEST.store(true, Ordering::Relaxed),
        _ => log::warn!("{FAULT_ENV}={name:?} is not a fault this binary knows; ignored"),
    }
}

/// The test fault `exit-after-resume`: called once the session is resumed.
pub fn fault_after_resume() {
    if EXIT_AFTER_RESUME.load(Ordering::Relaxed) {
        log::error!("{FAULT_ENV}: exiting after resuming the connection");
        std::process::exit(1);
    }
}

/// The test fault `crash-on-first-request`: called by lookup and getattr.
pub fn fault_on_request() {
    if CRASH_ON_REQUEST.load(Ordering::Relaxed) {
        log::error!("{FAULT_ENV}: crashing on the first request");
        std::process::abort();
    }
}
