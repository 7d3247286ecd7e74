//! The fail-safe upgrade (SIGHUP to the keeper). nginx's USR2 is the model: the new binary
//! starts beside the old one and takes over only once it proved itself.
//!
//! 1. **Prepare**, beside the running server (which serves on, alone): the keeper opens the
//!    binary installed at the daemon's path now (a flipped `current -> v2` symlink gives v2)
//!    and starts a candidate server from that descriptor. The candidate starts, parses its
//!    arguments, raises its limits and checks its paths, says PREPARED and waits. It reads
//!    neither the connection nor the control listener yet, nor anything the running server
//!    may still change (state file and lock, node and mtime logs): two servers never answer
//!    requests of one connection at once. A candidate that exits, or is not prepared within
//!    `PREPARE_DEADLINE` (killed), fails the upgrade; nothing else happened.
//! 2. **Hand over**: the running server retires (SIGUSR2: it answers the control clients it
//!    accepted, finishes a switch in progress and exits; it serves requests until it exits).
//!    Requests it had read and not answered are resent to the candidate (RESEND); new ones
//!    wait in the kernel, control clients in the listener's backlog.
//! 3. **Take over**: the keeper says GO; the candidate loads the state, restores node ids,
//!    resumes the session, serves and says READY; the keeper then pings it on the control
//!    socket. A candidate that dies, is not READY within `TAKEOVER_DEADLINE` (killed), or
//!    does not answer the ping fails the upgrade: the keeper starts a server of the binary it
//!    runs at once (from its descriptor), which resumes the connection like after a crash.
//! 4. **Probation**: a new server that dies within `PROBATION` of its READY (e.g. on its
//!    first request) fails the upgrade the same way. After it, the upgrade counts, and the
//!    keeper `exec`s the new binary itself (same pid, same descriptors), so the next crash
//!    restart runs the new version and no process runs a deleted file.
//!
//! A failure is one log line with the cause, `last_upgrade` in `status`, and a non-zero exit
//! of `switchctl upgrade` (the unit's `ExecReload`). The binary that failed is not retried:
//! the next SIGHUP tries what is installed then.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use super::serving::{self, Attempt, Outcome};
use super::{
    ATTEMPT_ENV, Held, INSTALL_ENV, KEEPER_ENV, Keeper, RETIRE, Server, describe, exe_path, fd_of,
    num, take_env, take_env_os, with_inheritable,
};
use crate::control::client;
use crate::control::protocol::Request;
use crate::sys;

/// How long a candidate may take to start and say PREPARED (the running server serves on).
const PREPARE_DEADLINE: Duration = Duration::from_secs(10);
/// How long a candidate may take from GO to READY (requests wait meanwhile).
const TAKEOVER_DEADLINE: Duration = Duration::from_secs(5);
/// How long the new server has to answer the keeper's ping on the control socket.
const PING_TIMEOUT: Duration = Duration::from_secs(2);
/// A new server that dies this soon after READY fails the upgrade instead of being
/// restarted from its own (broken) binary.
const PROBATION: Duration = Duration::from_secs(1);

/// The version of the state one keeper hands the next across its `exec`.
const KEEPER_STATE_VERSION: &str = "2";

/// An upgrade in progress.
pub(super) struct Upgrade {
    /// The new binary, opened at the SIGHUP.
    exe: OwnedFd,
    /// Its path as resolved then, for messages.
    binary: String,
    /// The candidate, until the old server left and it became the server.
    pub(super) candidate: Option<Server>,
    stage: Stage,
    since: Instant,
    /// Why the keeper killed the candidate (or the new server), for the record.
    killed: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// The candidate starts beside the running server.
    Preparing,
    /// The running server retires; the candidate waits for GO.
    Retiring,
    /// The candidate is the server and has not said READY yet.
    TakingOver,
    /// It serves; it fails the upgrade if it dies before `PROBATION` is over.
    Probation,
}

impl Upgrade {
    /// The new binary's server holds the connection (the old one left).
    pub(super) fn took_over(&self) -> bool {
        matches!(self.stage, Stage::TakingOver | Stage::Probation)
    }
}

/// Opens the binary at `path` (following symlinks: a version symlink is the point) to run
/// it, refusing one another user could have replaced: as root it must be root's and
/// writable by nobody else.
pub(super) fn open_binary(path: &Path) -> Result<OwnedFd, String> {
    use std::os::unix::fs::MetadataExt;
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let meta = file.metadata().map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    let me = sys::euid();
    if me == 0 && meta.uid() != 0 {
        return Err(format!("owned by uid {}, not root", meta.uid()));
    }
    if me == 0 && meta.mode() & 0o022 != 0 {
        return Err(format!(
            "writable by others (mode {:o})",
            meta.mode() & 0o7777
        ));
    }
    if meta.mode() & 0o111 == 0 {
        return Err("not executable".into());
    }
    Ok(file.into())
}

impl Keeper {
    /// SIGHUP: starts the binary installed now beside the running server.
    pub(super) fn begin_upgrade(&mut self) {
        let Some(server) = &self.server else {
            log::warn!("SIGHUP while no server is up: ignored");
            return;
        };
        if self.held.is_none() || self.upgrade.is_some() || self.stopping {
            log::warn!("SIGHUP while a server starts, during an upgrade or a stop: ignored");
            return;
        }
        let old = server.pid;
        self.attempts += 1;
        let install = self.install.display().to_string();
        let exe = match open_binary(&self.install) {
            Ok(fd) => fd,
            Err(e) => return self.record_failure(install.clone(), format!("cannot open it: {e}")),
        };
        let binary = match std::fs::read_link(exe_path(exe.as_fd())) {
            Ok(target) if target.to_string_lossy() != install => {
                format!("{install} ({})", target.display())
            }
            _ => install,
        };
        log::info!(
            "SIGHUP: starting {binary} beside server {old} (upgrade {})",
            self.attempts
        );
        let candidate = match self.spawn_server(Some(exe.as_fd()), true) {
            Ok(c) => c,
            Err(e) => return self.record_failure(binary, e),
        };
        self.last_upgrade = Some(self.attempt(&binary, Outcome::Proving, String::new()));
        self.send_life();
        self.upgrade = Some(Upgrade {
            exe,
            binary,
            candidate: Some(candidate),
            stage: Stage::Preparing,
            since: Instant::now(),
            killed: None,
        });
    }

    fn attempt(&self, binary: &str, outcome: Outcome, cause: String) -> Attempt {
        Attempt {
            number: self.attempts,
            at: SystemTime::now(),
            binary: binary.to_string(),
            outcome,
            cause,
        }
    }

    /// The one log line and the record of a failed attempt; the running version serves on.
    fn record_failure(&mut self, binary: String, cause: String) {
        log::error!(
            "upgrade {} to {binary} failed: {cause}; the running version goes on serving",
            self.attempts
        );
        self.last_upgrade = Some(self.attempt(&binary, Outcome::Failed, cause));
        self.send_life();
    }

    /// Ends the upgrade in progress as failed (the caller restarts ours if needed): `cause`,
    /// or why the keeper killed it, with how it ended if not by that kill (`status`).
    pub(super) fn upgrade_failed(&mut self, cause: String, status: Option<i32>) {
        let Some(up) = self.upgrade.take() else {
            return;
        };
        let cause = match (up.killed, status) {
            (Some(killed), Some(st))
                if !(libc::WIFSIGNALED(st) && libc::WTERMSIG(st) == libc::SIGKILL) =>
            {
                format!("{killed}; it ended with {}", describe(st))
            }
            (Some(killed), _) => killed,
            (None, _) => cause,
        };
        self.record_failure(up.binary, cause);
    }

    /// The candidate started and checked its arguments: the running server retires.
    pub(super) fn candidate_prepared(&mut self) {
        let Some(up) = self
            .upgrade
            .as_mut()
            .filter(|u| u.stage == Stage::Preparing)
        else {
            return;
        };
        let Some(server) = &self.server else {
            return;
        };
        log::info!(
            "upgrade: the new binary is prepared; server {} retires",
            server.pid
        );
        up.stage = Stage::Retiring;
        up.since = Instant::now();
        if let Err(e) = sys::signal(server.pid, RETIRE) {
            log::warn!("cannot retire server {}: {e}", server.pid);
        }
        self.retired = Some(server.pid);
    }

    /// The retired server exited: the candidate takes the connection (or, if it died
    /// meanwhile, a server of our own binary does).
    pub(super) fn retired_server_left(&mut self) -> Option<u8> {
        let Some(up) = self.upgrade.as_mut() else {
            return self.respawn();
        };
        let Some(cand) = up.candidate.take() else {
            return self.respawn();
        };
        up.stage = Stage::TakingOver;
        up.since = Instant::now();
        if let Err(e) = sys::send_with_fds(cand.link.as_fd(), None, serving::GO, &[]) {
            log::warn!("cannot tell the new server to take over: {e}");
        }
        self.server = Some(cand);
        None
    }

    /// The candidate died before it took the connection.
    pub(super) fn candidate_ended(&mut self, status: i32) {
        let cause = format!("it exited ({}) before it was ready", describe(status));
        self.upgrade_failed(cause, Some(status));
    }

    /// The server that took over said READY: ping it on the control socket.
    pub(super) fn new_server_ready(&mut self) {
        let (Some(up), Some(server), Some(held)) = (&mut self.upgrade, &self.server, &self.held)
        else {
            return;
        };
        if up.stage != Stage::TakingOver {
            return;
        }
        match ping(held) {
            Ok(()) => {
                up.stage = Stage::Probation;
                up.since = Instant::now();
            }
            Err(e) => {
                up.killed = Some(format!(
                    "it did not answer a ping on the control socket: {e}"
                ));
                let _ = sys::signal(server.pid, libc::SIGKILL);
            }
        }
    }

    /// Deadlines and the end of probation.
    pub(super) fn advance_upgrade(&mut self) {
        let Some(up) = &mut self.upgrade else {
            return;
        };
        let late = |limit: Duration| up.since.elapsed() > limit;
        let victim = match up.stage {
            Stage::Preparing if late(PREPARE_DEADLINE) => up.candidate.as_ref(),
            Stage::TakingOver if late(TAKEOVER_DEADLINE) => self.server.as_ref(),
            Stage::Probation if late(PROBATION) => return self.complete_upgrade(),
            _ => None,
        };
        if let Some(victim) = victim
            && up.killed.is_none()
        {
            let limit = match up.stage {
                Stage::Preparing => PREPARE_DEADLINE,
                _ => TAKEOVER_DEADLINE,
            };
            up.killed = Some(format!(
                "it was not ready within {} s (killed)",
                limit.as_secs()
            ));
            let _ = sys::signal(victim.pid, libc::SIGKILL);
        }
    }

    /// A stop during an upgrade: a candidate that has not got the connection is killed; one
    /// that has is stopped once it serves.
    pub(super) fn stop_upgrade(&mut self) {
        let Some(up) = &mut self.upgrade else {
            return;
        };
        if up.stage == Stage::Preparing
            && let Some(cand) = &up.candidate
        {
            up.killed = Some("the daemon was stopped".into());
            let _ = sys::signal(cand.pid, libc::SIGKILL);
        }
    }

    /// The new binary served through its probation: the upgrade counts, and this keeper
    /// becomes the new binary too.
    fn complete_upgrade(&mut self) {
        let Some(up) = self.upgrade.take() else {
            return;
        };
        self.upgrades += 1;
        log::info!(
            "upgrade {}: {} serves (server {})",
            self.attempts,
            up.binary,
            self.server.as_ref().map_or(0, |s| s.pid)
        );
        self.last_upgrade = Some(self.attempt(&up.binary, Outcome::Ok, String::new()));
        self.exe = up.exe;
        self.send_life();
        self.exec_keeper();
    }

    /// Continues as the binary now in `self.exe`, keeping pid and descriptors. If that
    /// cannot run, this keeper goes on (its servers run the new binary already).
    fn exec_keeper(&mut self) {
        let (Some(held), Some(server)) = (&self.held, &self.server) else {
            return;
        };
        let state = format!(
            "{KEEPER_STATE_VERSION} {} {} {} {} {} {} {} {} {} {} {}",
            server.link.as_raw_fd(),
            self.nodes.as_raw_fd(),
            held.fuse.as_raw_fd(),
            held.listener.as_raw_fd(),
            self.exe.as_raw_fd(),
            server.pid,
            self.restarts,
            self.upgrades,
            self.serial,
            self.attempts,
            held.describe()
        );
        let fds = [
            server.link.as_fd(),
            self.nodes.as_fd(),
            held.fuse.as_fd(),
            held.listener.as_fd(),
            self.exe.as_fd(),
        ];
        let last = self
            .last_upgrade
            .as_ref()
            .map(Attempt::encode)
            .unwrap_or_default();
        let err = with_inheritable(&fds, || {
            use std::os::unix::process::CommandExt;
            Command::new(exe_path(self.exe.as_fd()))
                .arg0(&self.install)
                .args(&self.args)
                .env(KEEPER_ENV, state)
                .env(INSTALL_ENV, &self.install)
                .env(ATTEMPT_ENV, last)
                .exec()
        });
        log::error!("upgrade: the keeper cannot run the new binary: {err}; it goes on as it is");
    }

    /// The keeper an earlier binary was, continued after its `exec` (an upgrade that
    /// completed): same descriptors, same server.
    pub(super) fn adopt(text: &str) -> Result<Keeper, String> {
        let mut w = text.splitn(12, ' ');
        if w.next() != Some(KEEPER_STATE_VERSION) {
            return Err(
                "the previous keeper's state is in a format this binary cannot read".into(),
            );
        }
        let link = fd_of(w.next())?;
        let nodes = fd_of(w.next())?;
        let fuse = fd_of(w.next())?;
        let listener = fd_of(w.next())?;
        let exe = fd_of(w.next())?;
        let pid = num(w.next())? as i32;
        let (restarts, upgrades, serial) = (num(w.next())?, num(w.next())?, num(w.next())?);
        let attempts = num(w.next())?;
        let (mount, params) = super::split_mount(w.next().unwrap_or(""));
        let params = params
            .parse()
            .map_err(|_| "malformed FUSE_INIT parameters from the previous keeper")?;
        let install = take_env_os(INSTALL_ENV)
            .map(std::path::PathBuf::from)
            .ok_or("the previous keeper did not say where switchfs is installed")?;
        let last_upgrade = take_env(ATTEMPT_ENV).and_then(|t| Attempt::decode(&t));
        Ok(Keeper {
            install,
            exe,
            args: std::env::args_os().skip(1).collect(),
            nodes,
            held: Some(Held {
                fuse,
                listener,
                params,
                mount,
            }),
            server: Some(Server {
                pid,
                link,
                ready: true,
            }),
            restarts,
            upgrades,
            serial,
            attempts,
            last_upgrade,
            upgrade: None,
            retired: None,
            stopping: false,
            stop_when_ready: false,
            quick_deaths: 0,
            // Crash restart times are not carried across the keeper's own exec: monitoring's
            // restart-loop rule starts afresh after an upgrade that succeeded.
            restarted_at: Vec::new(),
        })
    }
}

/// Asks the server on the control listener `held` keeps for a `pong`.
fn ping(held: &Held) -> Result<(), String> {
    let listener = held
        .listener
        .try_clone()
        .map(std::os::unix::net::UnixListener::from)
        .map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let path = addr.as_pathname().ok_or("the control socket has no path")?;
    match client::request(path, &Request::Ping, PING_TIMEOUT) {
        Ok(body) if body.trim() == "pong" => Ok(()),
        Ok(body) => Err(format!("it answered {:?}", body.trim())),
        Err(e) => Err(e.message().to_string()),
    }
}
