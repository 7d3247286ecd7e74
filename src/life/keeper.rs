//! The daemon's own life: a keeper process holds the mount's `/dev/fuse` connection, and the
//! process that serves it can die or be upgraded without a request failing.
//!
//! The process started as `switchfs ...` (systemd's main pid) is the **keeper**. It never
//! serves a request and never touches the mount (a stat of its own mount while no server runs
//! would hang it). It starts the **server**, the same binary with the same arguments, which
//! does everything switchfs does: checks, mount, control socket, requests. Once mounted, the
//! server hands the keeper the `/dev/fuse` descriptor, the control socket's listener and what
//! `FUSE_INIT` settled (one `SCM_RIGHTS` message on its own link, a socket pair per server).
//! From then on:
//!
//! - **Crash** (SIGKILL, panic, abort, OOM): the connection stays open in the keeper, so the
//!   kernel keeps the requests instead of failing them. The keeper starts a new server at
//!   once with the descriptors inherited; it resumes the session (`Session::resume`), sends
//!   `FUSE_NOTIFY_RESEND` for the requests the dead one had read, and restores the node ids
//!   the kernel holds (`nodelog`, a memfd the keeper also holds). Control clients wait in the
//!   listener's backlog meanwhile. The server is started from a descriptor of the binary the
//!   keeper runs (`/proc/self/fd/N`, what `fexecve` does), so it is found even after a
//!   package removed that version's files.
//! - **Upgrade** (SIGHUP to the keeper; `switchctl upgrade`, the unit's `ExecReload`, sends
//!   it and waits for the outcome): fail-safe, see `upgrade`. The binary installed at the
//!   path the daemon was started with, resolved now, is started beside the running server
//!   and must prove itself before that one retires, then take over and keep serving for a
//!   probation; if it fails anywhere, the running version goes on serving (or is started
//!   again at once from the descriptor the keeper kept), the keeper logs one line with the
//!   cause and `status` shows the failed attempt. Only then does the keeper `exec` the new
//!   binary itself, keeping its pid (systemd's main pid) and descriptors.
//! - **Stop** (SIGTERM/SIGINT): forwarded to the server, which unmounts and exits; the keeper
//!   exits with its status. A server still starting is stopped once it says it serves (a
//!   `ready` message); a stop during an upgrade lets the server that holds the connection
//!   unmount.
//! - A server that dies before it serves is restarted with a growing pause (given up after
//!   10 in a row); one that served is restarted at once.
//! - **Keeper killed**: the server gets SIGKILL too (`PR_SET_PDEATHSIG`): a server nobody
//!   supervises would leave a mount that dies for good at its next crash. The mount goes dead
//!   and the next start detaches it, as before keepers existed.
//!
//! Descriptors cross `exec` with close-on-exec cleared, named in the environment
//! (`SWITCHFS_SERVER`, `SWITCHFS_RESUME`, `SWITCHFS_KEEPER`); each process takes them and
//! sets close-on-exec again at once, so no hook ever inherits them.

mod serving;
mod upgrade;

use std::ffi::OsString;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, SystemTime};

use fuser::InitParams;

pub use serving::{
    Attempt, Life, Outcome, Resume, ServerLink, fault_after_resume, fault_on_request, life,
};

use crate::sys;

const SERVER_ENV: &str = "SWITCHFS_SERVER";
const RESUME_ENV: &str = "SWITCHFS_RESUME";
const KEEPER_ENV: &str = "SWITCHFS_KEEPER";
/// The path the daemon was started with, carried across the keeper's own `exec`.
const INSTALL_ENV: &str = "SWITCHFS_INSTALL_PATH";
/// The last upgrade attempt, carried across the keeper's own `exec`.
const ATTEMPT_ENV: &str = "SWITCHFS_LAST_UPGRADE";
/// When the latest crash restarts happened (Unix milliseconds, oldest first), for monitoring's
/// restart-loop rule (`control::health`). Always set by the keeper for its servers, so a
/// value from outside never reaches one.
const RESTARTED_ENV: &str = "SWITCHFS_RESTARTED_AT";
/// How many restart times the keeper remembers.
const RESTART_TIMES_KEPT: usize = 16;

/// Variables that hand descriptors to a switchfs process. Whoever starts switchfs for
/// someone else (the mount helper) removes them, so no caller can make the daemon adopt
/// descriptors of its choosing.
pub const HANDOFF_ENV: [&str; 9] = [
    SERVER_ENV,
    RESUME_ENV,
    KEEPER_ENV,
    INSTALL_ENV,
    ATTEMPT_ENV,
    serving::FAULT_ENV,
    "LISTEN_PID",
    "LISTEN_FDS",
    "LISTEN_FDNAMES",
];

/// The signal the keeper sends a server to retire for an upgrade.
pub const RETIRE: i32 = libc::SIGUSR2;

/// A server that died this many times in a row before it served is given up on.
const MAX_QUICK_DEATHS: u32 = 10;

/// What this process is, from its environment.
pub enum Role {
    /// Started by the user or systemd: become the keeper (or, after an upgrade's `exec`,
    /// carry on as the keeper the earlier binary was).
    Keeper(Option<Box<Keeper>>),
    /// Started by the keeper to serve.
    Server(ServerLink),
}

/// Reads this process's role from the environment and removes the variables, so nothing
/// this process starts sees them. Call while the process has one thread.
///
/// # Errors
/// A variable names descriptors this process does not have.
pub fn role() -> Result<Role, String> {
    if let Some(fault) = take_env(serving::FAULT_ENV) {
        serving::arm_fault(&fault);
    }
    if let Some(server) = take_env(SERVER_ENV) {
        let resume = take_env(RESUME_ENV);
        return server_role(&server, resume.as_deref()).map(Role::Server);
    }
    match take_env(KEEPER_ENV) {
        Some(text) => Keeper::adopt(&text).map(|k| Role::Keeper(Some(Box::new(k)))),
        None => Ok(Role::Keeper(None)),
    }
}

fn take_env(name: &str) -> Option<String> {
    let value = std::env::var(name).ok()?;
    sys::remove_env_single_threaded(name);
    Some(value)
}

fn take_env_os(name: &str) -> Option<OsString> {
    let value = std::env::var_os(name)?;
    sys::remove_env_single_threaded(name);
    Some(value)
}

/// Descriptor numbers this process took from its environment: each is owned once, and
/// standard input, output and error are never handed over.
static ADOPTED: parking_lot::Mutex<Vec<RawFd>> = parking_lot::Mutex::new(Vec::new());

fn fd_of(word: Option<&str>) -> Result<OwnedFd, String> {
    let raw: RawFd = word
        .and_then(|w| w.parse().ok())
        .filter(|raw| *raw > 2)
        .ok_or("malformed descriptor list from the keeper")?;
    let mut adopted = ADOPTED.lock();
    if adopted.contains(&raw) {
        return Err(format!("descriptor {raw} handed over twice"));
    }
    let fd =
        sys::adopt_inherited_fd(raw).map_err(|e| format!("inherited descriptor {raw}: {e}"))?;
    adopted.push(raw);
    Ok(fd)
}

fn num(word: Option<&str>) -> Result<u64, String> {
    word.and_then(|w| w.parse().ok())
        .ok_or_else(|| "malformed state from the keeper".to_string())
}

fn server_role(server: &str, resume: Option<&str>) -> Result<ServerLink, String> {
    let mut w = server.split(' ');
    let keeper = fd_of(w.next())?;
    let nodes = fd_of(w.next())?;
    // The binary we were started from, open in the keeper: not ours to keep.
    drop(fd_of(w.next())?);
    let main_pid = num(w.next())? as u32;
    let (restarts, upgrades, serial) = (num(w.next())?, num(w.next())?, num(w.next())?);
    let candidate = num(w.next())? == 1;
    let resume = match resume {
        Some(text) => {
            let mut w = text.splitn(3, ' ');
            let fuse = fd_of(w.next())?;
            let listener = fd_of(w.next())?;
            let (mount, params) = split_mount(w.next().unwrap_or(""));
            let params = params
                .parse()
                .map_err(|_| "malformed FUSE_INIT parameters from the keeper")?;
            Some(Resume {
                fuse,
                listener,
                params,
                mount,
            })
        }
        None => None,
    };
    serving::set_life(Life {
        pid: std::process::id(),
        main_pid,
        started: SystemTime::now(),
        restarts,
        upgrades,
        last_upgrade: None,
        restarted_at: restart_times(std::env::var(RESTARTED_ENV).ok().as_deref()),
    });
    Ok(ServerLink {
        keeper,
        nodes,
        resume,
        serial,
        candidate,
    })
}

/// `mount=ID:DEV PARAMS` (the mount's id and device, then the `FUSE_INIT` parameters), or
/// the parameters alone, as an earlier version stored them in systemd's store.
fn split_mount(text: &str) -> (Option<(u64, u64)>, &str) {
    let Some((mount, params)) = text
        .strip_prefix("mount=")
        .and_then(|rest| rest.split_once(' '))
    else {
        return (None, text);
    };
    let parsed = mount
        .split_once(':')
        .and_then(|(id, dev)| Some((id.parse().ok()?, dev.parse().ok()?)));
    (parsed, params)
}

/// What the keeper holds once the first server handed the connection over.
struct Held {
    fuse: OwnedFd,
    listener: OwnedFd,
    params: InitParams,
    /// The mount's id and device (see `Resume::mount`).
    mount: Option<(u64, u64)>,
}

impl Held {
    /// `mount=ID:DEV PARAMS`, as `split_mount` reads it.
    fn describe(&self) -> String {
        match self.mount {
            Some((id, dev)) => format!("mount={id}:{dev} {}", self.params),
            None => self.params.to_string(),
        }
    }
}

/// A server process the keeper started.
struct Server {
    pid: i32,
    /// The keeper's end of this server's link.
    link: OwnedFd,
    /// It said it serves (`READY`): a death after that is restarted at once.
    ready: bool,
}

/// The keeper process (see the module doc).
pub struct Keeper {
    /// The path the daemon was started with; an upgrade runs what is installed there then.
    install: PathBuf,
    /// The binary this keeper runs, kept open: servers are started from it.
    exe: OwnedFd,
    args: Vec<OsString>,
    nodes: OwnedFd,
    held: Option<Held>,
    server: Option<Server>,
    restarts: u64,
    upgrades: u64,
    serial: u64,
    /// SIGHUPs since the keeper started, and the last one's outcome.
    attempts: u64,
    last_upgrade: Option<Attempt>,
    upgrade: Option<upgrade::Upgrade>,
    /// The server asked to retire for an upgrade, until it exits.
    retired: Option<i32>,
    stopping: bool,
    /// A stop came while a server could not take it (still starting, or an upgrade moving
    /// the connection): the server holding the connection is stopped once it serves.
    stop_when_ready: bool,
    quick_deaths: u32,
    /// When the latest crash restarts happened, for monitoring (`Life::restarted_at`).
    restarted_at: Vec<u64>,
}

/// `RESTARTED_ENV`'s value: Unix milliseconds separated by spaces; anything else is skipped.
fn restart_times(text: Option<&str>) -> Vec<SystemTime> {
    text.unwrap_or("")
        .split(' ')
        .filter_map(|w| w.parse::<u64>().ok())
        .map(|ms| SystemTime::UNIX_EPOCH + Duration::from_millis(ms))
        .collect()
}

impl Keeper {
    fn new() -> Result<Keeper, String> {
        let running =
            std::env::current_exe().map_err(|e| format!("cannot find our own binary: {e}"))?;
        let exe = upgrade::open_binary(std::path::Path::new("/proc/self/exe"))
            .map_err(|e| format!("cannot open our own binary {}: {e}", running.display()))?;
        // The path as given (a symlink such as /opt/switchfs/current/switchfs stays one), made
        // absolute now: the upgrade resolves it at each SIGHUP.
        let install = sys::exec_filename()
            .and_then(|p| std::path::absolute(p).ok())
            .unwrap_or(running);
        let nodes = sys::memfd("switchfs-nodes")
            .map_err(|e| format!("cannot create the node id log: {e}"))?;
        Ok(Keeper {
            install,
            exe,
            args: std::env::args_os().skip(1).collect(),
            nodes,
            held: None,
            server: None,
            restarts: 0,
            upgrades: 0,
            serial: 0,
            attempts: 0,
            last_upgrade: None,
            upgrade: None,
            retired: None,
            stopping: false,
            stop_when_ready: false,
            quick_deaths: 0,
            restarted_at: Vec::new(),
        })
    }

    /// Runs the keeper until the daemon stops; returns the exit code.
    ///
    /// # Errors
    /// The first server cannot be started.
    pub fn run(keeper: Option<Box<Keeper>>) -> Result<u8, String> {
        let signals = block_keeper_signals();
        let mut keeper = match keeper {
            Some(k) => {
                let k = *k;
                k.send_life();
                k
            }
            None => {
                let mut k = Keeper::new()?;
                if let Some((held, nodes)) = fd_store::stored()? {
                    log::info!("resuming the mount from systemd's file descriptor store");
                    k.held = Some(held);
                    k.nodes = nodes;
                }
                let server = k.spawn_server(None, false)?;
                k.server = Some(server);
                k
            }
        };
        loop {
            // An upgrade is a few steps, each a message away: look more often meanwhile.
            let tick = if keeper.upgrade.is_some() { 10 } else { 100 };
            let signal = sys::wait_signal(&signals, Duration::from_millis(tick));
            // First what the servers sent before the signal came: a SIGHUP right after
            // READY=1 must find the connection handed over.
            keeper.read_links();
            match signal {
                Some(libc::SIGTERM | libc::SIGINT) => keeper.stop(),
                Some(libc::SIGHUP) => keeper.begin_upgrade(),
                _ => {}
            }
            keeper.advance_upgrade();
            while let Some((pid, status)) = sys::reap_child() {
                // What the dead server sent before it died is still in its link: read it
                // first. Its hand-over of the connection above all: a server killed just
                // after it mounted would otherwise look like one that never mounted, and
                // the keeper would give the live mount up instead of restarting it.
                keeper.read_links();
                if let Some(code) = keeper.child_ended(pid, status) {
                    return Ok(code);
                }
            }
        }
    }

    /// Remembers now as a crash restart, keeping the latest `RESTART_TIMES_KEPT`.
    fn note_restart(&mut self) {
        let now = crate::json::unix_millis(SystemTime::now()).max(0) as u64;
        self.restarted_at.push(now);
        let excess = self.restarted_at.len().saturating_sub(RESTART_TIMES_KEPT);
        self.restarted_at.drain(..excess);
    }

    /// Starts a server of the binary `exe` (`None`: the one this keeper runs; a candidate:
    /// beside the running server, for an upgrade) and tells it the daemon's counters.
    fn spawn_server(
        &mut self,
        exe: Option<BorrowedFd<'_>>,
        candidate: bool,
    ) -> Result<Server, String> {
        self.serial += 1;
        let exe = exe.unwrap_or(self.exe.as_fd());
        let (link, server_end) =
            sys::seqpacket_pair().map_err(|e| format!("cannot create the keeper socket: {e}"))?;
        let mut cmd = Command::new(exe_path(exe));
        {
            use std::os::unix::process::CommandExt;
            cmd.arg0(&self.install);
        }
        cmd.args(&self.args);
        // The binary's descriptor is inherited too: a script (#!) is run through it.
        let mut inherit = vec![server_end.as_fd(), self.nodes.as_fd(), exe];
        let times: Vec<String> = self.restarted_at.iter().map(u64::to_string).collect();
        cmd.env(RESTARTED_ENV, times.join(" "));
        cmd.env(
            SERVER_ENV,
            format!(
                "{} {} {} {} {} {} {} {}",
                server_end.as_raw_fd(),
                self.nodes.as_raw_fd(),
                exe.as_raw_fd(),
                std::process::id(),
                self.restarts,
                self.upgrades,
                self.serial,
                u8::from(candidate)
            ),
        );
        if let Some(held) = &self.held {
            cmd.env(
                RESUME_ENV,
                format!(
                    "{} {} {}",
                    held.fuse.as_raw_fd(),
                    held.listener.as_raw_fd(),
                    held.describe()
                ),
            );
            inherit.extend([held.fuse.as_fd(), held.listener.as_fd()]);
        }
        sys::die_with_parent_on_spawn(&mut cmd);
        let spawned = with_inheritable(&inherit, || cmd.spawn());
        let child = spawned.map_err(|e| format!("cannot start {}: {e}", self.install.display()))?;
        let server = Server {
            pid: child.id() as i32,
            link,
            ready: false,
        };
        self.tell_life(&server);
        Ok(server)
    }

    fn tell_life(&self, server: &Server) {
        let msg = serving::life_message(self.restarts, self.upgrades, self.last_upgrade.as_ref());
        if let Err(e) = sys::send_with_fds(server.link.as_fd(), None, msg.as_bytes(), &[]) {
            log::debug!("cannot tell server {} the counters: {e}", server.pid);
        }
    }

    /// Tells the serving process the counters and the last attempt, for `status`.
    fn send_life(&self) {
        if let Some(server) = &self.server {
            self.tell_life(server);
        }
    }

    /// Reads what the servers sent: the connection a freshly mounted one hands over, READY,
    /// and an upgrade candidate's PREPARED.
    fn read_links(&mut self) {
        if let Some(server) = &self.server {
            for (data, fds) in messages(server.link.as_fd()) {
                self.on_server_message(&data, fds);
            }
        }
        if let Some(cand) = self.upgrade.as_ref().and_then(|u| u.candidate.as_ref()) {
            let got = messages(cand.link.as_fd());
            if got.iter().any(|(data, _)| data == serving::PREPARED) {
                self.candidate_prepared();
            }
        }
    }

    fn on_server_message(&mut self, data: &[u8], fds: Vec<OwnedFd>) {
        if data == serving::READY {
            self.quick_deaths = 0;
            let Some(server) = &mut self.server else {
                return;
            };
            server.ready = true;
            if self.stop_when_ready {
                if let Err(e) = sys::signal(server.pid, libc::SIGTERM) {
                    log::warn!("cannot stop server {}: {e}", server.pid);
                }
            } else {
                self.new_server_ready();
            }
            return;
        }
        let text = std::str::from_utf8(data).unwrap_or("");
        let (mount, params) = split_mount(text);
        let mut fds = fds.into_iter();
        match (params.parse::<InitParams>().ok(), fds.next(), fds.next()) {
            (Some(params), Some(fuse), Some(listener)) => {
                let held = Held {
                    fuse,
                    listener,
                    params,
                    mount,
                };
                fd_store::store(&held, self.nodes.as_fd());
                self.held = Some(held);
            }
            _ => log::warn!("keeper: ignored a malformed handover message"),
        }
    }

    fn child_ended(&mut self, pid: i32, status: i32) -> Option<u8> {
        if self
            .upgrade
            .as_ref()
            .and_then(|u| u.candidate.as_ref())
            .is_some_and(|c| c.pid == pid)
        {
            self.candidate_ended(status);
            return None;
        }
        let server = self.server.take_if(|s| s.pid == pid)?;
        self.server_ended(server, status)
    }

    /// The server ended with wait status `status`: restart it, or end with the code to
    /// exit with.
    fn server_ended(&mut self, server: Server, status: i32) -> Option<u8> {
        if self.retired == Some(server.pid) {
            self.retired = None;
            return self.retired_server_left();
        }
        let took_over = self
            .upgrade
            .as_ref()
            .is_some_and(upgrade::Upgrade::took_over);
        if took_over && self.stopping {
            // Stopped while it took over: it unmounted, as asked.
            self.upgrade_failed("the daemon was stopped during the upgrade".into(), None);
            return Some(exit_code(status));
        }
        if took_over {
            // The new binary's server took the connection and died: back to ours.
            let cause = format!(
                "its server {} died ({}) after taking over",
                server.pid,
                describe(status)
            );
            self.upgrade_failed(cause, Some(status));
            return self.respawn();
        }
        let code = exit_code(status);
        if self.stopping || self.held.is_none() {
            // Stopping, or it never got to mount: its own message said why.
            return Some(code);
        }
        if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
            // It unmounted (someone ran umount) or the connection was aborted: done.
            return Some(0);
        }
        self.restarts += 1;
        self.note_restart();
        log::error!(
            "server {} died ({}); resuming the mount in a new server",
            server.pid,
            describe(status)
        );
        // A server that dies before it serves would die again at once: back off.
        if !server.ready {
            self.quick_deaths += 1;
            if self.quick_deaths > MAX_QUICK_DEATHS {
                log::error!("the server keeps dying before it serves; giving up");
                return Some(1);
            }
            std::thread::sleep(Duration::from_millis(100) * self.quick_deaths);
        }
        self.respawn()
    }

    /// Starts a server of the binary this keeper runs, which resumes the connection.
    fn respawn(&mut self) -> Option<u8> {
        match self.spawn_server(None, false) {
            Ok(server) => {
                self.server = Some(server);
                None
            }
            Err(e) => {
                log::error!("{e}");
                Some(1)
            }
        }
    }

    fn stop(&mut self) {
        self.stopping = true;
        self.stop_upgrade();
        match &self.server {
            // One still starting is stopped once it serves (its signals are handled from
            // then on, and it then unmounts what it mounted or resumed); so is the one an
            // upgrade hands the connection to.
            Some(server) if !server.ready || self.retired.is_some() => {
                self.stop_when_ready = true;
            }
            Some(server) => {
                if let Err(e) = sys::signal(server.pid, libc::SIGTERM) {
                    log::warn!("cannot stop server {}: {e}", server.pid);
                }
            }
            None => std::process::exit(0),
        }
    }
}

/// Every message queued on a server's link, without waiting; none once it hung up.
fn messages(link: BorrowedFd<'_>) -> Vec<(Vec<u8>, Vec<OwnedFd>)> {
    let mut got = Vec::new();
    loop {
        match sys::recv_with_fds(link) {
            // End of stream: the server is gone (its death is reaped separately).
            Ok(Some((data, _))) if data.is_empty() => return got,
            Ok(Some(message)) => got.push(message),
            Ok(None) => return got,
            // A server that exited with our messages unread resets its link: gone too.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return got,
            Err(e) => {
                log::warn!("keeper socket: {e}");
                return got;
            }
        }
    }
}

/// The path that runs the binary open at `exe`: what `fexecve` does, usable by `Command`.
fn exe_path(exe: BorrowedFd<'_>) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", exe.as_raw_fd()))
}

/// Runs `f` with close-on-exec cleared on `fds`, then sets it again. The keeper has one
/// thread, so nothing else can start a process meanwhile.
fn with_inheritable<T>(fds: &[BorrowedFd<'_>], f: impl FnOnce() -> T) -> T {
    for fd in fds {
        if let Err(e) = sys::set_cloexec(*fd, false) {
            log::warn!("cannot pass descriptor {} on: {e}", fd.as_raw_fd());
        }
    }
    let result = f();
    for fd in fds {
        let _ = sys::set_cloexec(*fd, true);
    }
    result
}

fn exit_code(status: i32) -> u8 {
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status) as u8
    } else {
        128u8.wrapping_add(libc::WTERMSIG(status) as u8)
    }
}

fn describe(status: i32) -> String {
    if libc::WIFSIGNALED(status) {
        format!("signal {}", libc::WTERMSIG(status))
    } else {
        format!("exit code {}", libc::WEXITSTATUS(status))
    }
}

fn block_keeper_signals() -> libc::sigset_t {
    // The keeper has one thread, and the servers it starts get a clean mask (std resets it
    // before exec).
    sys::block_signals(&[libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGCHLD])
}

/// What the keeper keeps in systemd's file descriptor store (`FDSTORE=1`,
/// `FileDescriptorStoreMax=` in the unit): the connection, the control listener, the node log
/// and (in a memfd) the `FUSE_INIT` parameters, so systemd keeps the mount while the keeper
/// itself is restarted after a crash. The store itself is `life::systemd`'s.
mod fd_store {
    use std::io::Write;
    use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

    use super::Held;
    use crate::life::systemd;
    use crate::sys;

    /// Names of the stored descriptors (`FDNAME=`).
    const FUSE: &str = "fuse";
    const CONTROL: &str = "control";
    const NODES: &str = "nodes";
    const INIT: &str = "init";

    /// Stores what a restarted keeper needs. Best effort: without it, only the keeper's own
    /// death loses the mount.
    pub(super) fn store(held: &Held, nodes: BorrowedFd<'_>) {
        if !systemd::has_notify_socket() {
            return;
        }
        let init = match params_memfd(held) {
            Ok(fd) => fd,
            Err(e) => {
                log::warn!("cannot store the FUSE parameters with systemd: {e}");
                return;
            }
        };
        let fds = [
            (FUSE, held.fuse.as_fd()),
            (CONTROL, held.listener.as_fd()),
            (NODES, nodes),
            (INIT, init.as_fd()),
        ];
        if let Err(e) = systemd::store_fds(&fds) {
            log::warn!("cannot store the FUSE connection with systemd {e}");
        }
    }

    fn params_memfd(held: &Held) -> std::io::Result<OwnedFd> {
        let fd = sys::memfd("switchfs-init")?;
        let mut file = std::fs::File::from(fd);
        file.write_all(held.describe().as_bytes())?;
        Ok(file.into())
    }

    /// The connection systemd kept for us (the names above), and the node log; `None` when
    /// started afresh.
    ///
    /// # Errors
    /// systemd passed a connection without the rest of it.
    pub(super) fn stored() -> Result<Option<(Held, OwnedFd)>, String> {
        let Some(fds) = systemd::listen_fds(super::take_env) else {
            return Ok(None);
        };
        let take = |name: &str| fds.iter().position(|(n, _)| n == name);
        let (Some(fuse), Some(control), Some(nodes), Some(init)) =
            (take(FUSE), take(CONTROL), take(NODES), take(INIT))
        else {
            return Ok(None);
        };
        let mut fds: Vec<Option<OwnedFd>> = fds.into_iter().map(|(_, fd)| Some(fd)).collect();
        let mut get = |i: usize| fds[i].take().ok_or("systemd passed a descriptor twice");
        let (fuse, listener, nodes, init) = (get(fuse)?, get(control)?, get(nodes)?, get(init)?);
        let mut text = String::new();
        let mut file = std::fs::File::from(init);
        std::io::Seek::rewind(&mut file)
            .and_then(|_| std::io::Read::read_to_string(&mut file, &mut text))
            .map_err(|e| format!("cannot read the stored FUSE parameters: {e}"))?;
        let (mount, params) = super::split_mount(&text);
        let params = params
            .parse()
            .map_err(|_| "malformed FUSE parameters in systemd's store".to_string())?;
        Ok(Some((
            Held {
                fuse,
                listener,
                params,
                mount,
            },
            nodes,
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::split_mount;

    #[test]
    fn the_mount_travels_with_the_fuse_parameters_and_old_texts_still_read() {
        assert_eq!(
            split_mount("mount=27:49 7 45 ff 131072 f 1048576"),
            (Some((27, 49)), "7 45 ff 131072 f 1048576")
        );
        // What an earlier version put in systemd's store: the parameters alone.
        assert_eq!(
            split_mount("7 45 ff 131072 f 1048576"),
            (None, "7 45 ff 131072 f 1048576")
        );
    }
}
