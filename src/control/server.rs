//! The daemon's side of the control socket.
//!
//! The socket is created mode 0600 (wider with groups, see `set_socket_mode`) before any
//! client can connect, a live socket at the same path means another daemon and is refused, a
//! stale one (nothing listening) is replaced.
//!
//! Rights come from the peer's credentials, per request kind: root, the daemon's own user and
//! members of `--control-group` may do everything; members of `--status-group` may only read
//! (`status`, `list`, `ping`, `check`, `metrics`); anyone else gets a one-line refusal.
//!
//! Each client gets its own thread and the whole request line must arrive within
//! `REQUEST_DEADLINE`, however slowly it trickles in. Clients at once are capped, per user and
//! in total, with slots kept back for peers that may switch, so a flood of slow clients from
//! the web server's user cannot lock the operator out. A client refused for being one too
//! many still reads `error: busy: ...`: every answer is followed by a half-close and a short
//! wait for the client to close first, because closing a Unix socket with unread bytes in it
//! resets the connection and the client would lose the answer.
use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use parking_lot::Mutex;

use crate::control::protocol::{self, MAX_REQUEST, Request};
use crate::control::{health, metrics, render};
use crate::php::opcache::Php;
use crate::switch::hooks::Hooks;
use crate::switch::switcher::Switcher;
use crate::switch::{self, Outcome, Target};
use crate::sys::{self, PeerCred};

/// The whole request line must arrive within this, from `accept` on.
const REQUEST_DEADLINE: Duration = Duration::from_secs(2);
/// Longest a write of the answer may block (a client that does not read).
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// After answering, how long to wait for the client to close before closing anyway.
const LINGER: Duration = Duration::from_secs(1);
/// Clients served at once, in total.
const MAX_CLIENTS: usize = 64;
/// Of those, slots only peers that may switch can take.
const ADMIN_RESERVE: usize = 16;
/// Slots one user without switching rights can hold at once.
const MAX_PER_USER: usize = 8;
/// Refused clients kept open at once for their answer to be read.
const MAX_LINGERING: usize = 256;

/// A group given on the command line, with its name for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Group {
    pub gid: u32,
    pub name: String,
}

impl std::fmt::Display for Group {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.name == self.gid.to_string() {
            write!(f, "gid {}", self.gid)
        } else {
            write!(f, "{}, gid {}", self.name, self.gid)
        }
    }
}

/// Who may do what beyond root and the daemon's own user.
#[derive(Debug, Clone)]
pub(crate) struct Access {
    pub owner_uid: u32,
    /// May switch, roll back and prune (and read).
    pub control_group: Option<Group>,
    /// May only read: status, list, ping.
    pub status_group: Option<Group>,
}

/// What a peer may ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rights {
    All,
    ReadOnly,
    Nothing,
}

impl Access {
    /// The rights of `peer`, from the credentials the kernel recorded at connect (its uid,
    /// primary group and supplementary groups), never from anything the peer says.
    pub(crate) fn rights(&self, peer: &PeerCred) -> Rights {
        let member = |g: &Option<Group>| {
            g.as_ref()
                .is_some_and(|g| peer.gid == g.gid || peer.groups.contains(&g.gid))
        };
        if peer.uid == 0 || peer.uid == self.owner_uid || member(&self.control_group) {
            Rights::All
        } else if member(&self.status_group) {
            Rights::ReadOnly
        } else {
            Rights::Nothing
        }
    }

    /// Why `request` is refused to a peer with `rights`, or `None` when it is allowed.
    fn refusal(&self, request: &Request, rights: Rights) -> Option<String> {
        let control = match &self.control_group {
            Some(g) => format!("--control-group ({g})"),
            None => "--control-group (none set)".to_string(),
        };
        let verb = request.verb();
        match rights {
            Rights::All => None,
            Rights::ReadOnly if !request.changes_things() => None,
            Rights::ReadOnly => Some(format!(
                "permission denied: {verb} needs root or a member of {control}"
            )),
            Rights::Nothing if request.changes_things() => Some(format!(
                "permission denied: {verb} needs root or a member of {control}"
            )),
            Rights::Nothing => Some(format!(
                "permission denied: {verb} needs root or a member of {control} or of \
                 --status-group ({})",
                self.status_group
                    .as_ref()
                    .map_or("none set".to_string(), |g| g.to_string())
            )),
        }
    }
}

/// Creates the control socket at `path`.
///
/// Must run before the daemon starts other threads: the umask is process wide and is
/// narrowed around `bind` so the socket never exists with looser permissions.
///
/// # Errors
/// A one-line message: another daemon is listening, the path is something else, or the
/// socket cannot be created.
pub(crate) fn bind(path: &Path, access: &Access) -> Result<UnixListener, String> {
    let shown = path.display();
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
        && !dir.exists()
    {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755));
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => match UnixStream::connect(path) {
            Ok(_) => {
                return Err(format!(
                    "another switchfs is already listening on control socket {shown}"
                ));
            }
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                log::info!("removing stale control socket {shown} (nothing listens on it)");
                std::fs::remove_file(path)
                    .map_err(|e| format!("cannot remove stale socket {shown}: {e}"))?;
            }
            Err(e) => return Err(format!("cannot check control socket {shown}: {e}")),
        },
        Ok(_) => {
            return Err(format!(
                "{shown} exists and is not a socket; refusing to replace it"
            ));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("cannot check control socket {shown}: {e}")),
    }
    let bound = sys::with_umask(0o177, || UnixListener::bind(path));
    let listener = bound.map_err(|e| format!("cannot create control socket {shown}: {e}"))?;
    set_socket_mode(path, access).inspect_err(|_| {
        let _ = std::fs::remove_file(path);
    })?;
    Ok(listener)
}

/// Opens the socket file to exactly the peers that have some right, as far as a file mode
/// can say it: nobody else (0600) without groups; the one group (0660) when one is given, or
/// both are the same; everyone (0666) for two different groups, since a file has one group.
/// The mode only decides who may connect: every request is authorized again by the peer's
/// credentials (`SO_PEERCRED`/`SO_PEERGROUPS`) for its kind, see `Access::rights`. An ACL or a
/// group-owned directory per group would depend on the filesystem under /run supporting ACLs
/// and on the path layout the operator chose, for no extra safety.
fn set_socket_mode(path: &Path, access: &Access) -> Result<(), String> {
    let shown = path.display();
    let gids: Vec<u32> = [&access.control_group, &access.status_group]
        .into_iter()
        .flatten()
        .map(|g| g.gid)
        .collect();
    let mode = match gids.as_slice() {
        [] => return Ok(()),
        [gid] | [gid, _] if gids.iter().all(|g| g == gid) => {
            sys::chown_group(path, *gid)
                .map_err(|e| format!("cannot give control socket {shown} to group {gid}: {e}"))?;
            0o660
        }
        _ => 0o666,
    };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| format!("cannot chmod control socket {shown}: {e}"))
}

/// Serves control requests on `listener` until the process exits: switches through
/// `switcher`, then brings the PHP pools `php` up to date and runs `hooks`.
pub(crate) fn spawn(
    listener: UnixListener,
    switcher: Arc<Switcher>,
    php: Option<Php>,
    hooks: Hooks,
    access: Access,
) -> io::Result<Control> {
    let server = Arc::new_cyclic(|me| Server {
        switcher,
        php,
        hooks,
        access,
        slots: Mutex::new(Slots::default()),
        handover: Handover::default(),
        me: me.clone(),
    });
    // A switch a predecessor scheduled and this server re-armed (`Switcher::restore_pending`).
    if let Some(id) = server.switcher.armed_id() {
        server.start_timer(id);
    }
    let accepting = server.clone();
    std::thread::Builder::new()
        .name("control".into())
        .spawn(move || accepting.accept_loop(&listener))?;
    Ok(Control(server))
}

struct Server {
    switcher: Arc<Switcher>,
    /// PHP pools whose OPcache is told what each switch changed (`--php-fpm`, `--php-http`).
    php: Option<Php>,
    hooks: Hooks,
    access: Access,
    slots: Mutex<Slots>,
    handover: Handover,
    /// This server, for the timer threads of switches at an instant (`activate --at`).
    me: std::sync::Weak<Server>,
}

/// Clients being served: in total and per user without switching rights.
#[derive(Default)]
struct Slots {
    total: usize,
    per_user: HashMap<u32, usize>,
}

/// A client refused at accept, kept open until it has read its answer and closed.
struct Lingering {
    stream: UnixStream,
    since: Instant,
}

impl Server {
    fn accept_loop(self: Arc<Self>, listener: &UnixListener) {
        let mut lingering: Vec<Lingering> = Vec::new();
        loop {
            if self.handover.stopped_accepting() {
                return;
            }
            // Wake up now and then while refused clients wait to be closed.
            let wait = if lingering.is_empty() {
                Duration::from_secs(3600)
            } else {
                Duration::from_millis(100)
            };
            let ready = self.handover.wait(listener, wait);
            if self.handover.stopped_accepting() {
                return;
            }
            lingering.retain_mut(still_lingering);
            if !ready {
                continue;
            }
            let stream = match listener.accept() {
                Ok((s, _)) => s,
                Err(e) => {
                    log::warn!("control socket accept failed: {e}");
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                }
            };
            if let Some(refused) = self.admit(stream) {
                if lingering.len() >= MAX_LINGERING {
                    lingering.remove(0);
                }
                lingering.push(refused);
            }
        }
    }

    /// Starts a thread for the client, or answers it at once and returns it to linger.
    fn admit(self: &Arc<Self>, stream: UnixStream) -> Option<Lingering> {
        let peer = match sys::peer_cred(stream.as_fd()) {
            Ok(p) => p,
            Err(e) => {
                return Some(refuse(stream, &format!("cannot identify the client: {e}")));
            }
        };
        let rights = self.access.rights(&peer);
        if !self.take_slot(&peer, rights) {
            log::warn!(
                "control client uid={} pid={} refused: too many clients at once",
                peer.uid,
                peer.pid
            );
            return Some(refuse(
                stream,
                "busy: too many control clients at once; retry",
            ));
        }
        let server = self.clone();
        let uid = peer.uid;
        let spawned = std::thread::Builder::new()
            .name("control-client".into())
            .spawn(move || {
                server.serve_client(stream, &peer, rights);
                server.give_slot(peer.uid, rights);
            });
        if let Err(e) = spawned {
            log::warn!("cannot start a control client thread: {e}");
            self.give_slot(uid, rights);
        }
        None
    }

    /// Takes a slot if `peer` may have one: switchers may use all of them, others leave
    /// `ADMIN_RESERVE` free and hold at most `MAX_PER_USER` each.
    fn take_slot(&self, peer: &PeerCred, rights: Rights) -> bool {
        let mut slots = self.slots.lock();
        if rights == Rights::All {
            if slots.total >= MAX_CLIENTS {
                return false;
            }
        } else {
            let mine = slots.per_user.get(&peer.uid).copied().unwrap_or(0);
            if slots.total >= MAX_CLIENTS - ADMIN_RESERVE || mine >= MAX_PER_USER {
                return false;
            }
            slots.per_user.insert(peer.uid, mine + 1);
        }
        slots.total += 1;
        true
    }

    fn give_slot(&self, uid: u32, rights: Rights) {
        let mut slots = self.slots.lock();
        slots.total = slots.total.saturating_sub(1);
        if rights != Rights::All
            && let Some(n) = slots.per_user.get_mut(&uid)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                slots.per_user.remove(&uid);
            }
        }
    }

    fn serve_client(&self, mut stream: UnixStream, peer: &PeerCred, rights: Rights) {
        let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
        let deadline = Instant::now() + REQUEST_DEADLINE;
        let response = match read_request(&mut stream, deadline) {
            // A bare connect and close: another daemon probing whether we are alive.
            Ok(None) => return,
            Ok(Some(line)) => self.respond(&line, peer, rights, &stream),
            Err(msg) => {
                log::info!(
                    "bad control request from uid={} pid={}: {msg}",
                    peer.uid,
                    peer.pid
                );
                protocol::error_response(&msg)
            }
        };
        if let Err(e) = stream.write_all(response.as_bytes()) {
            log::debug!("control client went away before the answer: {e}");
            return;
        }
        linger(&mut stream);
    }

    fn respond(&self, line: &[u8], peer: &PeerCred, rights: Rights, client: &UnixStream) -> String {
        let switcher = &*self.switcher;
        let request = match protocol::parse_request(line) {
            Ok(r) => r,
            Err(msg) => {
                log::info!(
                    "malformed control request from uid={} pid={}: {msg}",
                    peer.uid,
                    peer.pid
                );
                return protocol::error_response(&msg);
            }
        };
        if let Some(msg) = self.access.refusal(&request, rights) {
            log::warn!(
                "refused {} from uid={} gid={} pid={}: {msg}",
                request.verb(),
                peer.uid,
                peer.gid,
                peer.pid
            );
            return protocol::error_response(&msg);
        }
        let who = format!("uid={} gid={} pid={}", peer.uid, peer.gid, peer.pid);
        let result = match request {
            Request::Activate { name, drain } => {
                return self.switch(Target::Release(&name), drain, &who, client);
            }
            Request::Rollback { drain } => return self.switch(Target::Back, drain, &who, client),
            Request::RollbackTo { name, drain } => {
                return self.switch(Target::BackTo(&name), drain, &who, client);
            }
            Request::Prune { keep, apply } => switcher.prune(keep, apply),
            Request::Status { json } => Ok(render::status(&self.status(), json)),
            Request::List { json } => switcher.list().map(|names| {
                let active = switcher.active();
                let (a, p) = (active.name(), active.previous.as_deref());
                let history = switcher.history();
                if json {
                    render::list_json(&names, a, p, &history)
                } else {
                    render::list_text(&names, a, p, &history)
                }
            }),
            Request::Ping => Ok("pong".into()),
            // Monitoring and retry (issue 19).
            Request::Check => Ok(health::check(&self.status(), SystemTime::now()).1),
            Request::Metrics => Ok(metrics::render(&self.status(), SystemTime::now())),
            Request::PhpSync => return self.php_sync(&who),
            Request::Prepare { name } => switch::prepare(switcher, self.php.as_ref(), &name),
            Request::ActivateAt { name, at, wait } => {
                return self.activate_at(Target::Release(&name), at, wait, &who, client);
            }
            Request::RollbackAt { to, at, wait } => {
                let target = to.as_deref().map_or(Target::Back, Target::BackTo);
                return self.activate_at(target, at, wait, &who, client);
            }
            Request::Cancel => switcher.cancel_pending(&who),
        };
        match result {
            Ok(body) => protocol::ok_response(&body),
            Err(msg) => {
                log::warn!(
                    "control request {:?} from {who} failed: {msg}",
                    String::from_utf8_lossy(line)
                );
                protocol::error_response(&msg)
            }
        }
    }

    /// Everything `status`, `check` and `metrics` show: the switcher's, the keeper's life,
    /// the PHP pools.
    fn status(&self) -> crate::switch::usage::Status {
        let mut st = self.switcher.status();
        st.life = crate::life::keeper::life();
        st.php_pools = self.php.as_ref().map(Php::pools_status).unwrap_or_default();
        st
    }

    /// `php-sync`: the OPcache step again for the active release; `partial` (exit 3, as
    /// `activate` reports a failed pool) when a pool still fails.
    fn php_sync(&self, who: &str) -> String {
        let Some(php) = self.php.as_ref().filter(|p| !p.is_empty()) else {
            return protocol::error_response(
                "no PHP pool is configured (--php-fpm, --php-http): nothing to invalidate",
            );
        };
        let Some(active) = self.switcher.active().name().map(str::to_string) else {
            return protocol::error_response("no release is active: nothing to invalidate");
        };
        log::info!("php-sync for release {active} (requested by {who})");
        match switch::php_sync(&self.switcher, php) {
            Ok(()) => protocol::ok_response(&format!(
                "OPcache of every PHP pool is in step with release {active}"
            )),
            Err(e) => protocol::partial_response(&e),
        }
    }

    /// Runs the whole switch (see `switch::perform`) and renders its outcome. A client that
    /// hangs up ends a drain wait early.
    fn switch(
        &self,
        target: Target<'_>,
        drain: Option<u32>,
        who: &str,
        client: &UnixStream,
    ) -> String {
        let hung_up = |pause| !matches!(sys::wait_hangup(client.as_fd(), pause), Ok(false));
        let php = self.php.as_ref();
        let outcome = switch::perform(
            &self.switcher,
            php,
            &self.hooks,
            target,
            who,
            drain,
            &hung_up,
        );
        if !matches!(outcome, Outcome::Refused(_)) {
            let active = self.switcher.active();
            crate::life::systemd::notify(&crate::life::systemd::serving_status(active.name()));
        }
        match outcome {
            Outcome::Done(msg) => protocol::ok_response(&msg),
            Outcome::Partial(msg) => protocol::partial_response(&msg),
            Outcome::Refused(msg) => protocol::error_response(&msg),
        }
    }
}

/// Answers a client at once without a thread, and hands it back to linger in the accept
/// loop until it has read the answer.
fn refuse(stream: UnixStream, msg: &str) -> Lingering {
    let mut stream = stream;
    // The socket buffer is empty, so a one-line answer never blocks; non-blocking keeps the
    // accept loop safe from a client that does not read anyway.
    let _ = stream.set_nonblocking(true);
    let _ = stream.write_all(protocol::error_response(msg).as_bytes());
    let _ = stream.shutdown(std::net::Shutdown::Write);
    Lingering {
        stream,
        since: Instant::now(),
    }
}

/// Discards what a refused client sent; false once it closed or `LINGER` passed.
fn still_lingering(l: &mut Lingering) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        match l.stream.read(&mut buf) {
            Ok(0) => return false,
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                return l.since.elapsed() < LINGER;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return false,
        }
    }
}

/// After the answer: half-close, then read and discard whatever the client still sends
/// (bytes after its request line) until it closes or `LINGER` passes. Closing with unread
/// bytes would reset the connection and could cost the client the answer it has not read.
fn linger(stream: &mut UnixStream) {
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let deadline = Instant::now() + LINGER;
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            return;
        }
        match stream.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

/// Reads one request line, all of it before `deadline` (a client trickling one byte at a
/// time cannot hold its slot longer); EOF ends it too (for clients that half-close). `None`
/// when the client closed without sending a byte.
fn read_request(stream: &mut UnixStream, deadline: Instant) -> Result<Option<Vec<u8>>, String> {
    let mut line = Vec::with_capacity(128);
    let mut buf = [0u8; 512];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(timed_out());
        }
        stream
            .set_read_timeout(Some(left))
            .map_err(|e| format!("cannot read the request: {e}"))?;
        let n = match stream.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(timed_out());
            }
            Err(e) => return Err(format!("cannot read the request: {e}")),
        };
        if n == 0 {
            return Ok((!line.is_empty()).then_some(line));
        }
        let newline = buf[..n].iter().position(|&b| b == b'\n');
        line.extend_from_slice(&buf[..newline.unwrap_or(n)]);
        if line.len() >= MAX_REQUEST {
            return Err(format!("request longer than {MAX_REQUEST} bytes"));
        }
        if newline.is_some() {
            return Ok(Some(line));
        }
    }
}

fn timed_out() -> String {
    format!(
        "timed out waiting for the request line (send it within {} s)",
        REQUEST_DEADLINE.as_secs()
    )
}

// Handing the control socket to a successor server (an upgrade, see `keeper`).

struct Handover {
    requested: std::sync::atomic::AtomicBool,
    stopped: std::sync::atomic::AtomicBool,
    /// Written to wake the accept loop for a handover; `None` if no pipe could be made
    /// (the loop then looks every 200 ms).
    wake: Option<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)>,
}

impl Default for Handover {
    fn default() -> Self {
        Handover {
            requested: Default::default(),
            stopped: Default::default(),
            wake: sys::pipe()
                .inspect_err(|e| log::warn!("control socket: no wake-up pipe: {e}"))
                .ok(),
        }
    }
}

impl Handover {
    /// Waits for a client on `listener` (true) or a handover request.
    fn wait(&self, listener: &UnixListener, wait: Duration) -> bool {
        match &self.wake {
            Some((read, _)) => {
                sys::wait_readable_or(listener.as_fd(), read.as_fd(), wait).unwrap_or(true)
            }
            None => sys::wait_readable(listener.as_fd(), wait.min(Duration::from_millis(200)))
                .unwrap_or(true),
        }
    }

    /// Whether the accept loop must stop now (and says so).
    fn stopped_accepting(&self) -> bool {
        use std::sync::atomic::Ordering;
        if self.requested.load(Ordering::SeqCst) {
            self.stopped.store(true, Ordering::SeqCst);
            return true;
        }
        false
    }
}

/// The running control server.
pub(crate) struct Control(Arc<Server>);

impl Control {
    /// Stops accepting clients and waits (at most `timeout`) until every accepted one is
    /// answered. The listener itself stays open in the keeper: clients arriving now wait in
    /// its backlog for the successor, none is accepted here and then dropped.
    pub(crate) fn hand_over(&self, timeout: Duration) {
        use std::sync::atomic::Ordering;
        let deadline = Instant::now() + timeout;
        self.0.handover.requested.store(true, Ordering::SeqCst);
        // Clients waiting for a switch at an instant are answered; the successor re-arms it.
        self.0.switcher.retire_schedule();
        if let Some((_, write)) = &self.0.handover.wake
            && let Ok(fd) = write.try_clone()
        {
            use std::io::Write;
            let _ = std::fs::File::from(fd).write_all(b"x");
        }
        while Instant::now() < deadline
            && (!self.0.handover.stopped.load(Ordering::SeqCst) || self.0.slots.lock().total > 0)
        {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

// ---- A switch at an instant (issue 20): `activate NAME at=... [nowait]` ----

impl Server {
    /// Schedules the switch or rollback (checked now, like `prepare`), starts its timer thread, and
    /// answers once it is scheduled (`nowait`) or once it ran, with the instant it was
    /// published.
    fn activate_at(
        &self,
        target: Target<'_>,
        at: std::time::SystemTime,
        wait: bool,
        who: &str,
        client: &UnixStream,
    ) -> String {
        // The PHP pools are checked before the switch lock is taken: they may be slow.
        let checked = self
            .switcher
            .plan(target)
            .and_then(|name| switch::prepare(&self.switcher, self.php.as_ref(), &name))
            .and_then(|_| self.switcher.schedule_at(target, at, who));
        let (id, pending) = match checked {
            Ok(armed) => armed,
            Err(msg) => {
                log::warn!("scheduled switch refused: {msg}");
                return protocol::error_response(&msg);
            }
        };
        self.start_timer(id);
        if !wait {
            return protocol::ok_response(&format!(
                "scheduled the switch to {} (switchctl cancel drops it)",
                pending.describe()
            ));
        }
        use crate::switch::pending::Ended;
        let hung_up = || matches!(sys::wait_hangup(client.as_fd(), Duration::ZERO), Ok(true));
        match self.switcher.wait_scheduled(id, &hung_up) {
            Some(Ended::Ran {
                partial: false,
                message,
                ..
            }) => protocol::ok_response(&message),
            Some(Ended::Ran { message, .. }) => protocol::partial_response(&message),
            Some(Ended::Refused(msg)) => protocol::error_response(&msg),
            Some(Ended::Cancelled) => protocol::error_response(&format!(
                "the switch to {} was cancelled",
                pending.describe()
            )),
            None => protocol::error_response(&format!(
                "this server stopped or is being replaced (upgrade) before the instant; the \
                 switch to {} stays scheduled for its successor: see switchctl status",
                pending.describe()
            )),
        }
    }

    /// Starts the timer thread of switch `id` (`switch::scheduled::run`).
    fn start_timer(&self, id: u64) {
        let Some(server) = self.me.upgrade() else {
            return;
        };
        let spawned = std::thread::Builder::new()
            .name("switch-at".into())
            .spawn(move || {
                switch::scheduled::run(&server.switcher, server.php.as_ref(), &server.hooks, id)
            });
        if let Err(e) = spawned {
            log::error!("cannot start the timer of a scheduled switch: {e}");
            let _ = self.switcher.cancel_pending("the server (no timer thread)");
        }
    }
}
