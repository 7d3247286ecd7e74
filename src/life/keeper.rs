//! The daemon's own life: a keeper process holds the mount's `/dev/fuse` connection, and the
//! process that serves it can die or be upgraded without a request failing.
//!
//! The process started as `switchfs ...` (systemd's main pid) is the **keeper**. It never
//! serves a request and never touches the mount (a stat of its own mount while no server runs
//! would hang it). It starts the **server**, the same binary with the same arguments, which
//! does everything switchfs does: checks, mount, control socket, requests. Once mounted, the
//! server hands the keeper the `/dev/fuse` descriptor, the control socket's listener and what
//! `FUSE_INIT` settled (one `SCM_RIGHTS` message). From then on:
//!
//! - **Crash** (SIGKILL, panic, abort, OOM): the connection stays open in the keeper, so the
//!   kernel keeps the requests instead of failing them. The keeper starts a new server at
//!   once with the descriptors inherited; it resumes the session (`Session::resume`), sends
//!   `FUSE_NOTIFY_RESEND` for the requests the dead one had read, and restores the node ids
//!   the kernel holds (`nodelog`, a memfd the keeper also holds). Control clients wait in the
//!   listener's backlog meanwhile.
//! - **Upgrade** (SIGHUP to the keeper, `systemctl reload`): the keeper `exec`s the binary now
//!   installed at its path, keeping its pid (systemd's main pid does not change) and its
//!   descriptors; the new keeper asks the old server to retire (SIGUSR2: finish a switch in
//!   progress, exit without unmounting) and starts a server of the new binary, which resumes
//!   as after a crash.
//! - **Stop** (SIGTERM/SIGINT): forwarded to the server, which unmounts and exits; the keeper
//!   exits with its status. A server still starting is stopped once it says it serves (a
//!   `ready` message); a stop during an upgrade starts the successor anyway, so that one
//!   unmounts.
//! - A server that dies before it serves is restarted with a growing pause (given up after
//!   10 in a row); one that served is restarted at once.
//! - **Keeper killed**: the server gets SIGKILL too (`PR_SET_PDEATHSIG`): a server nobody
//!   supervises would leave a mount that dies for good at its next crash. The mount goes dead
//!   and the next start detaches it, as before keepers existed.
//!
//! Descriptors cross `exec` with close-on-exec cleared, named in the environment
//! (`SWITCHFS_SERVER`, `SWITCHFS_RESUME`, `SWITCHFS_KEEPER`); each process takes them and
//! sets close-on-exec again at once, so no hook ever inherits them.

use std::ffi::OsString;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use fuser::InitParams;

use crate::sys;

const SERVER_ENV: &str = "SWITCHFS_SERVER";
const RESUME_ENV: &str = "SWITCHFS_RESUME";
const KEEPER_ENV: &str = "SWITCHFS_KEEPER";
/// When the latest crash restarts happened (Unix milliseconds, oldest first), for monitoring's
/// restart-loop rule (`control::health`). Always set by the keeper for its servers, so a
/// value from outside never reaches one.
const RESTARTED_ENV: &str = "SWITCHFS_RESTARTED_AT";
/// How many restart times the keeper remembers.
const RESTART_TIMES_KEPT: usize = 16;

/// Variables that hand descriptors to a switchfs process. Whoever starts switchfs for
/// someone else (the mount helper) removes them, so no caller can make the daemon adopt
/// descriptors of its choosing.
pub const HANDOFF_ENV: [&str; 6] = [
    SERVER_ENV,
    RESUME_ENV,
    KEEPER_ENV,
    "LISTEN_PID",
    "LISTEN_FDS",
    "LISTEN_FDNAMES",
];

/// The signal the keeper sends a server to retire for an upgrade.
pub const RETIRE: i32 = libc::SIGUSR2;

/// Handle numbers of the n-th server start at n << 40, so no two servers give out the same.
const HANDLE_SHIFT: u32 = 40;

/// A server that died this many times in a row before it served is given up on.
const MAX_QUICK_DEATHS: u32 = 10;

/// Where a server process stands in the daemon's life, for `status`.
#[derive(Debug, Clone)]
pub struct Life {
    /// This process, which serves FUSE requests.
    pub pid: u32,
    /// The keeper: the process to signal for a reload, the one systemd tracks.
    pub main_pid: u32,
    /// When this process started serving.
    pub started: SystemTime,
    /// Servers restarted after a crash, and upgrades, since the mount was made.
    pub restarts: u64,
    pub upgrades: u64,
    /// When the latest crash restarts happened (at most `RESTART_TIMES_KEPT`, oldest
    /// first; since the keeper last started or was upgraded).
    pub restarted_at: Vec<SystemTime>,
}

static LIFE: OnceLock<Life> = OnceLock::new();

/// The serving process's place in the daemon's life, once it runs under a keeper.
pub fn life() -> Option<&'static Life> {
    LIFE.get()
}

/// What this process is, from its environment.
pub enum Role {
    /// Started by the user or systemd: become the keeper (or, after an upgrade's `exec`,
    /// carry on as the keeper the earlier binary was).
    Keeper(Option<Box<Keeper>>),
    /// Started by the keeper to serve.
    Server(ServerLink),
}

/// A resumed server's inherited connection.
pub struct Resume {
    pub fuse: OwnedFd,
    pub listener: OwnedFd,
    pub params: InitParams,
}

/// A server's ties to its keeper.
pub struct ServerLink {
    keeper: OwnedFd,
    /// The node id log (see `nodelog`).
    pub nodes: OwnedFd,
    /// Set when the connection is already mounted and initialised: resume it.
    pub resume: Option<Resume>,
    serial: u64,
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
    ) -> Result<(), String> {
        let text = params.to_string();
        sys::send_with_fds(
            self.keeper.as_fd(),
            None,
            text.as_bytes(),
            &[fuse, listener],
        )
        .map_err(|e| format!("cannot hand the connection to the keeper: {e}"))
    }

    /// Tells the keeper this server serves: a death from now on is restarted at once.
    pub fn ready(&self) {
        if let Err(e) = sys::send_with_fds(self.keeper.as_fd(), None, READY, &[]) {
            log::warn!("cannot tell the keeper we serve: {e}");
        }
    }
}

/// Reads this process's role from the environment and removes the variables, so nothing
/// this process starts sees them. Call while the process has one thread.
///
/// # Errors
/// A variable names descriptors this process does not have.
pub fn role() -> Result<Role, String> {
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
    // SAFETY: called from `role`, while the process still has one thread, so no other
    // thread reads the environment concurrently.
    unsafe { std::env::remove_var(name) };
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
    let main_pid = num(w.next())? as u32;
    let (restarts, upgrades, serial) = (num(w.next())?, num(w.next())?, num(w.next())?);
    let resume = match resume {
        Some(text) => {
            let mut w = text.splitn(3, ' ');
            let fuse = fd_of(w.next())?;
            let listener = fd_of(w.next())?;
            let params = w
                .next()
                .and_then(|p| p.parse().ok())
                .ok_or("malformed FUSE_INIT parameters from the keeper")?;
            Some(Resume {
                fuse,
                listener,
                params,
            })
        }
        None => None,
    };
    let _ = LIFE.set(Life {
        pid: std::process::id(),
        main_pid,
        started: SystemTime::now(),
        restarts,
        upgrades,
        restarted_at: restart_times(std::env::var(RESTARTED_ENV).ok().as_deref()),
    });
    Ok(ServerLink {
        keeper,
        nodes,
        resume,
        serial,
    })
}

/// What the keeper holds once the first server handed the connection over.
struct Held {
    fuse: OwnedFd,
    listener: OwnedFd,
    params: InitParams,
}

/// The server process now running.
struct Server {
    pid: i32,
    /// It said it serves (`READY`): a death after that is restarted at once.
    ready: bool,
}

/// What a server sends once it serves.
const READY: &[u8] = b"ready";

/// The keeper process (see the module doc).
pub struct Keeper {
    binary: PathBuf,
    args: Vec<OsString>,
    /// Our end of the handover socket, and the end every server inherits.
    sock: OwnedFd,
    server_sock: OwnedFd,
    nodes: OwnedFd,
    held: Option<Held>,
    server: Option<Server>,
    restarts: u64,
    upgrades: u64,
    serial: u64,
    stopping: bool,
    retiring: bool,
    /// A stop came while a server retired for an upgrade: its successor must be started
    /// to unmount, then stopped as soon as it serves.
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
        let binary =
            std::env::current_exe().map_err(|e| format!("cannot find our own binary: {e}"))?;
        let (sock, server_sock) =
            sys::seqpacket_pair().map_err(|e| format!("cannot create the keeper socket: {e}"))?;
        let nodes = sys::memfd("switchfs-nodes")
            .map_err(|e| format!("cannot create the node id log: {e}"))?;
        Ok(Keeper {
            binary,
            args: std::env::args_os().skip(1).collect(),
            sock,
            server_sock,
            nodes,
            held: None,
            server: None,
            restarts: 0,
            upgrades: 0,
            serial: 0,
            stopping: false,
            retiring: false,
            stop_when_ready: false,
            quick_deaths: 0,
            restarted_at: Vec::new(),
        })
    }

    /// The keeper an earlier binary was, continued after its `exec` (an upgrade): same
    /// descriptors, same server, which it now retires.
    fn adopt(text: &str) -> Result<Keeper, String> {
        let mut w = text.splitn(10, ' ');
        // The binary we were exec'd from: the one installed at the daemon's path now.
        let binary =
            std::env::current_exe().map_err(|e| format!("cannot find our own binary: {e}"))?;
        let sock = fd_of(w.next())?;
        let server_sock = fd_of(w.next())?;
        let nodes = fd_of(w.next())?;
        let fuse = fd_of(w.next())?;
        let listener = fd_of(w.next())?;
        let pid = num(w.next())? as i32;
        let (restarts, upgrades, serial) = (num(w.next())?, num(w.next())?, num(w.next())?);
        let params = w
            .next()
            .and_then(|p| p.parse().ok())
            .ok_or("malformed FUSE_INIT parameters from the previous keeper")?;
        Ok(Keeper {
            binary,
            args: std::env::args_os().skip(1).collect(),
            sock,
            server_sock,
            nodes,
            held: Some(Held {
                fuse,
                listener,
                params,
            }),
            server: Some(Server { pid, ready: true }),
            restarts,
            upgrades: upgrades + 1,
            serial,
            stopping: false,
            retiring: false,
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
                let mut k = *k;
                k.retire_server();
                k
            }
            None => {
                let mut k = Keeper::new()?;
                if let Some((held, nodes)) = systemd::stored()? {
                    log::info!("resuming the mount from systemd's file descriptor store");
                    k.held = Some(held);
                    k.nodes = nodes;
                }
                k.spawn_server()?;
                k
            }
        };
        loop {
            let signal = wait_signal(&signals, Duration::from_millis(100));
            // First what the server sent before the signal came: a SIGHUP right after
            // READY=1 must find the connection handed over.
            keeper.take_handover();
            match signal {
                Some(libc::SIGTERM | libc::SIGINT) => keeper.stop(),
                Some(libc::SIGHUP) => keeper.upgrade(),
                _ => {}
            }
            while let Some((pid, status)) = sys::reap_child() {
                if keeper.server.as_ref().is_some_and(|s| s.pid == pid)
                    && let Some(code) = keeper.server_ended(status)
                {
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

    fn spawn_server(&mut self) -> Result<(), String> {
        self.serial += 1;
        let mut cmd = Command::new(&self.binary);
        cmd.args(&self.args);
        let mut inherit = vec![self.server_sock.as_fd(), self.nodes.as_fd()];
        let times: Vec<String> = self.restarted_at.iter().map(u64::to_string).collect();
        cmd.env(RESTARTED_ENV, times.join(" "));
        cmd.env(
            SERVER_ENV,
            format!(
                "{} {} {} {} {} {}",
                self.server_sock.as_raw_fd(),
                self.nodes.as_raw_fd(),
                std::process::id(),
                self.restarts,
                self.upgrades,
                self.serial
            ),
        );
        if let Some(held) = &self.held {
            cmd.env(
                RESUME_ENV,
                format!(
                    "{} {} {}",
                    held.fuse.as_raw_fd(),
                    held.listener.as_raw_fd(),
                    held.params
                ),
            );
            inherit.extend([held.fuse.as_fd(), held.listener.as_fd()]);
        }
        sys::die_with_parent_on_spawn(&mut cmd);
        let spawned = with_inheritable(&inherit, || cmd.spawn());
        let child = spawned.map_err(|e| format!("cannot start {}: {e}", self.binary.display()))?;
        self.server = Some(Server {
            pid: child.id() as i32,
            ready: false,
        });
        Ok(())
    }

    /// Takes the connection a freshly mounted server hands over.
    fn take_handover(&mut self) {
        loop {
            match sys::recv_with_fds(self.sock.as_fd()) {
                Ok(Some((data, fds))) => self.accept_handover(&data, fds),
                Ok(None) => return,
                Err(e) => {
                    log::warn!("keeper socket: {e}");
                    return;
                }
            }
        }
    }

    fn accept_handover(&mut self, data: &[u8], fds: Vec<OwnedFd>) {
        if data == READY {
            if let Some(server) = &mut self.server {
                server.ready = true;
                if self.stop_when_ready
                    && let Err(e) = sys::signal(server.pid, libc::SIGTERM)
                {
                    log::warn!("cannot stop server {}: {e}", server.pid);
                }
            }
            self.quick_deaths = 0;
            return;
        }
        let params = std::str::from_utf8(data)
            .ok()
            .and_then(|t| t.parse::<InitParams>().ok());
        let mut fds = fds.into_iter();
        match (params, fds.next(), fds.next()) {
            (Some(params), Some(fuse), Some(listener)) => {
                let held = Held {
                    fuse,
                    listener,
                    params,
                };
                systemd::store(&held, self.nodes.as_fd());
                self.held = Some(held);
            }
            _ => log::warn!("keeper: ignored a malformed handover message"),
        }
    }

    /// The server ended with wait status `status`: restart it, or end with the code to
    /// exit with.
    fn server_ended(&mut self, status: i32) -> Option<u8> {
        let server = self.server.take()?;
        let code = exit_code(status);
        if self.retiring && self.stopping {
            // It left the mount to a successor: one must come to take it down.
            log::info!("stopped during an upgrade: starting a server to unmount");
            self.retiring = false;
            self.stop_when_ready = true;
        } else if self.stopping || self.held.is_none() {
            // Stopping, or it never got to mount: its own message said why.
            return Some(code);
        } else if self.retiring {
            self.retiring = false;
            log::info!(
                "upgrade: server {} retired; starting {}",
                server.pid,
                self.binary.display()
            );
        } else if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
            // It unmounted (someone ran umount) or the connection was aborted: done.
            return Some(0);
        } else {
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
        }
        match self.spawn_server() {
            Ok(()) => None,
            Err(e) => {
                log::error!("{e}");
                Some(1)
            }
        }
    }

    fn stop(&mut self) {
        self.stopping = true;
        match &self.server {
            // One still starting is stopped once it serves (its signals are handled from
            // then on, and it then unmounts what it mounted or resumed).
            Some(server) if !server.ready => self.stop_when_ready = true,
            Some(server) => {
                if let Err(e) = sys::signal(server.pid, libc::SIGTERM) {
                    log::warn!("cannot stop server {}: {e}", server.pid);
                }
            }
            None => std::process::exit(0),
        }
    }

    fn retire_server(&mut self) {
        if let Some(server) = &self.server {
            self.retiring = true;
            if let Err(e) = sys::signal(server.pid, RETIRE) {
                log::warn!("cannot retire server {}: {e}", server.pid);
            }
        }
    }

    /// Continues as the binary now installed at our path, keeping pid and descriptors.
    fn upgrade(&mut self) {
        let (Some(held), Some(server)) = (&self.held, &self.server) else {
            log::warn!("SIGHUP while no server is up: ignored");
            return;
        };
        if self.retiring || self.stopping {
            log::warn!("SIGHUP during an upgrade or a stop: ignored");
            return;
        }
        let state = format!(
            "{} {} {} {} {} {} {} {} {} {}",
            self.sock.as_raw_fd(),
            self.server_sock.as_raw_fd(),
            self.nodes.as_raw_fd(),
            held.fuse.as_raw_fd(),
            held.listener.as_raw_fd(),
            server.pid,
            self.restarts,
            self.upgrades,
            self.serial,
            held.params
        );
        log::info!("SIGHUP: upgrading to {}", self.binary.display());
        let fds = [
            self.sock.as_fd(),
            self.server_sock.as_fd(),
            self.nodes.as_fd(),
            held.fuse.as_fd(),
            held.listener.as_fd(),
        ];
        let err = with_inheritable(&fds, || {
            use std::os::unix::process::CommandExt;
            Command::new(&self.binary)
                .args(&self.args)
                .env(KEEPER_ENV, state)
                .exec()
        });
        log::error!(
            "upgrade: cannot run {}: {err}; the running version goes on serving",
            self.binary.display()
        );
    }
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

fn wait_signal(set: &libc::sigset_t, timeout: Duration) -> Option<i32> {
    let tick = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: set and tick are initialised; a null info pointer is allowed.
    let sig = unsafe { libc::sigtimedwait(set, std::ptr::null_mut(), &tick) };
    (sig > 0).then_some(sig)
}

/// systemd's file descriptor store (`FDSTORE=1`, `FileDescriptorStoreMax=` in the unit):
/// systemd keeps the connection while the keeper itself is restarted after a crash, and
/// hands it back in `LISTEN_FDS`. Outside systemd (no `NOTIFY_SOCKET`) nothing is stored.
mod systemd {
    use std::io::Write;
    use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

    use super::Held;
    use crate::sys;

    /// Names of the stored descriptors (`FDNAME=`).
    const FUSE: &str = "fuse";
    const CONTROL: &str = "control";
    const NODES: &str = "nodes";
    const INIT: &str = "init";

    /// Stores the connection, the control listener, the node log and (in a memfd) the
    /// `FUSE_INIT` parameters. Best effort: without it, only the keeper's own death loses
    /// the mount.
    pub(super) fn store(held: &Held, nodes: BorrowedFd<'_>) {
        let Some(addr) = notify_addr() else {
            return;
        };
        let init = match params_memfd(held) {
            Ok(fd) => fd,
            Err(e) => {
                log::warn!("cannot store the FUSE parameters with systemd: {e}");
                return;
            }
        };
        let sock = match std::os::unix::net::UnixDatagram::unbound() {
            Ok(s) => s,
            Err(e) => {
                log::warn!("sd_notify: {e}");
                return;
            }
        };
        for (name, fd) in [
            (FUSE, held.fuse.as_fd()),
            (CONTROL, held.listener.as_fd()),
            (NODES, nodes),
            (INIT, init.as_fd()),
        ] {
            let msg = format!("FDSTORE=1\nFDNAME={name}");
            if let Err(e) = sys::send_with_fds(sock.as_fd(), Some(&addr), msg.as_bytes(), &[fd]) {
                log::warn!("cannot store the FUSE connection with systemd ({name}): {e}");
                return;
            }
        }
    }

    fn params_memfd(held: &Held) -> std::io::Result<OwnedFd> {
        let fd = sys::memfd("switchfs-init")?;
        let mut file = std::fs::File::from(fd);
        file.write_all(held.params.to_string().as_bytes())?;
        Ok(file.into())
    }

    fn notify_addr() -> Option<std::os::unix::net::SocketAddr> {
        use std::os::linux::net::SocketAddrExt;
        let path = std::env::var_os("NOTIFY_SOCKET")?;
        let bytes = path.as_encoded_bytes();
        match bytes.strip_prefix(b"@") {
            Some(name) => std::os::unix::net::SocketAddr::from_abstract_name(name).ok(),
            None => std::os::unix::net::SocketAddr::from_pathname(path).ok(),
        }
    }

    /// The connection systemd kept for us (`LISTEN_FDS` with the names above), and the
    /// node log; `None` when started afresh.
    ///
    /// # Errors
    /// systemd passed a connection without the rest of it.
    pub(super) fn stored() -> Result<Option<(Held, OwnedFd)>, String> {
        let Some(fds) = listen_fds() else {
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
        let params = text
            .parse()
            .map_err(|_| "malformed FUSE parameters in systemd's store".to_string())?;
        Ok(Some((
            Held {
                fuse,
                listener,
                params,
            },
            nodes,
        )))
    }

    /// `sd_listen_fds` with names: the descriptors from 3 on, when they are meant for us.
    fn listen_fds() -> Option<Vec<(String, OwnedFd)>> {
        let pid: u32 = super::take_env("LISTEN_PID")?.parse().ok()?;
        let count: i32 = super::take_env("LISTEN_FDS")?.parse().ok()?;
        let names = super::take_env("LISTEN_FDNAMES").unwrap_or_default();
        if pid != std::process::id() {
            return None;
        }
        let mut names = names.split(':');
        let mut fds = Vec::new();
        for raw in 3..3 + count {
            let name = names.next().unwrap_or("").to_string();
            match sys::adopt_inherited_fd(raw) {
                Ok(fd) => fds.push((name, fd)),
                Err(e) => log::warn!("descriptor {raw} from systemd: {e}"),
            }
        }
        Some(fds)
    }
}
