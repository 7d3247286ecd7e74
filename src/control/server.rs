//! The daemon's side of the control socket.
//!
//! The socket is created mode 0600 (0660 with a control group) before any client can connect,
//! a live socket at the same path means another daemon and is refused, a stale one (nothing
//! listening) is replaced. Each client gets its own thread with read and write timeouts, so a
//! slow or silent client cannot hold up others; the number of clients at once is capped.

use std::io::{self, Read, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::control::protocol::{self, MAX_REQUEST, Request};
use crate::control::render;
use crate::core::{Core, Switched};
use crate::hooks::Hooks;

const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_CLIENTS: usize = 64;

/// Who may use the socket beyond root and the daemon's own user.
#[derive(Debug, Clone, Copy)]
pub struct Access {
    pub owner_uid: u32,
    pub group: Option<u32>,
}

/// Creates the control socket at `path`.
///
/// Must run before the daemon starts other threads: the umask is process wide and is
/// narrowed around `bind` so the socket never exists with looser permissions.
///
/// # Errors
/// A one-line message: another daemon is listening, the path is something else, or the
/// socket cannot be created.
pub fn bind(path: &Path, access: Access) -> Result<UnixListener, String> {
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
    // SAFETY: umask only changes this process's file creation mask.
    let old = unsafe { libc::umask(0o177) };
    let bound = UnixListener::bind(path);
    // SAFETY: as above, restoring the previous mask.
    unsafe { libc::umask(old) };
    let listener = bound.map_err(|e| format!("cannot create control socket {shown}: {e}"))?;
    if let Some(gid) = access.group {
        let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
            .map_err(|_| format!("control socket path {shown} contains NUL"))?;
        // SAFETY: valid C string; uid -1 leaves the owner unchanged.
        if unsafe { libc::chown(c_path.as_ptr(), u32::MAX, gid) } != 0 {
            let e = io::Error::last_os_error();
            let _ = std::fs::remove_file(path);
            return Err(format!(
                "cannot give control socket {shown} to group {gid}: {e}"
            ));
        }
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
            .map_err(|e| format!("cannot chmod control socket {shown}: {e}"))?;
    }
    Ok(listener)
}

/// Serves control requests on `listener` until the process exits.
pub fn spawn(
    listener: UnixListener,
    core: Arc<Core>,
    hooks: Arc<Hooks>,
    access: Access,
) -> io::Result<()> {
    let clients = Arc::new(AtomicUsize::new(0));
    std::thread::Builder::new()
        .name("control".into())
        .spawn(move || {
            for stream in listener.incoming() {
                let stream = match stream {
                    Ok(s) => s,
                    Err(e) => {
                        log::warn!("control socket accept failed: {e}");
                        std::thread::sleep(Duration::from_millis(50));
                        continue;
                    }
                };
                if clients.fetch_add(1, Ordering::SeqCst) >= MAX_CLIENTS {
                    clients.fetch_sub(1, Ordering::SeqCst);
                    let mut stream = stream;
                    let _ = stream.set_write_timeout(Some(CLIENT_TIMEOUT));
                    let _ = stream.write_all(
                        protocol::error_response("too many control clients at once; retry")
                            .as_bytes(),
                    );
                    continue;
                }
                let core = core.clone();
                let hooks = hooks.clone();
                let clients = clients.clone();
                let spawned = std::thread::Builder::new()
                    .name("control-client".into())
                    .spawn(move || {
                        serve_client(stream, &core, &hooks, access);
                        clients.fetch_sub(1, Ordering::SeqCst);
                    });
                if let Err(e) = spawned {
                    log::warn!("cannot start a control client thread: {e}");
                }
            }
        })?;
    Ok(())
}

/// The connecting process's credentials.
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    pub pid: i32,
    pub uid: u32,
    pub gid: u32,
}

fn peer_of(stream: &UnixStream) -> io::Result<Peer> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: cred and len are valid for writing and sized for SO_PEERCRED.
    let ret = unsafe {
        libc::getsockopt(
            std::os::fd::AsRawFd::as_raw_fd(stream),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if ret != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(Peer {
        pid: cred.pid,
        uid: cred.uid,
        gid: cred.gid,
    })
}

fn allowed(peer: Peer, access: Access) -> bool {
    // Group members other than by primary group are admitted by the socket's file mode;
    // this check is the second lock for the common case.
    peer.uid == 0 || peer.uid == access.owner_uid || access.group.is_some()
}

fn serve_client(mut stream: UnixStream, core: &Core, hooks: &Hooks, access: Access) {
    let _ = stream.set_read_timeout(Some(CLIENT_TIMEOUT));
    let _ = stream.set_write_timeout(Some(CLIENT_TIMEOUT));
    let response = match peer_of(&stream) {
        Err(e) => protocol::error_response(&format!("cannot identify the client: {e}")),
        Ok(peer) if !allowed(peer, access) => {
            log::warn!("refused control client uid={} pid={}", peer.uid, peer.pid);
            protocol::error_response("permission denied")
        }
        Ok(peer) => match read_request(&mut stream) {
            // A bare connect and close: another daemon probing whether we are alive.
            Ok(None) => return,
            Ok(Some(line)) => respond(core, hooks, &line, peer),
            Err(msg) => {
                log::info!(
                    "bad control request from uid={} pid={}: {msg}",
                    peer.uid,
                    peer.pid
                );
                protocol::error_response(&msg)
            }
        },
    };
    if let Err(e) = stream.write_all(response.as_bytes()) {
        log::debug!("control client went away before the answer: {e}");
    }
}

/// Reads one request line; EOF ends it too (for clients that half-close). `None` when the
/// client closed without sending a byte.
fn read_request(stream: &mut UnixStream) -> Result<Option<Vec<u8>>, String> {
    let mut line = Vec::with_capacity(128);
    let mut buf = [0u8; 512];
    loop {
        let n = match stream.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err("timed out waiting for the request line".into());
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

/// Runs the hooks and the optional drain wait after a switch, and words the answer.
fn after_switch(
    core: &Core,
    hooks: &Hooks,
    switched: Result<Switched, String>,
    drain: Option<u32>,
) -> String {
    let sw = match switched {
        Ok(sw) => sw,
        Err(msg) => {
            log::warn!("switch refused: {msg}");
            return protocol::error_response(&msg);
        }
    };
    let mut message = sw.message.clone();
    let mut problems = Vec::new();
    // OPcache first, so hooks (cache warmers) already run the new code.
    if sw.changed
        && let Some(php) = &hooks.php
        && let Err(e) = php.sync(core)
    {
        problems.push(e);
    }
    if sw.changed
        && let Err(e) = hooks.run(sw.from.as_deref(), &sw.to)
    {
        log::warn!("{e}");
        problems.push(e);
    }
    if let (Some(secs), Some(previous), true) = (drain, sw.from.as_deref(), sw.changed) {
        if core.wait_unused(previous, Duration::from_secs(u64::from(secs))) {
            message.push_str(&format!("; release {previous} is no longer in use"));
        } else {
            problems.push(format!("release {previous} is still in use after {secs} s"));
        }
    }
    if problems.is_empty() {
        protocol::ok_response(&message)
    } else {
        protocol::partial_response(&format!("{message}, but {}", problems.join("; ")))
    }
}

fn respond(core: &Core, hooks: &Hooks, line: &[u8], peer: Peer) -> String {
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
    let who = format!("uid={} gid={} pid={}", peer.uid, peer.gid, peer.pid);
    let result = match request {
        Request::Activate { name, drain } => {
            return after_switch(core, hooks, core.activate(&name, &who), drain);
        }
        Request::Rollback { drain } => {
            return after_switch(core, hooks, core.rollback(&who), drain);
        }
        Request::Prune { keep, apply } => core.prune(keep, apply),
        Request::Status { json } => {
            let st = core.status();
            let body = if json {
                render::status_json(&st)
            } else {
                render::status_text(&st)
            };
            Ok(crate::opcache::with_status(hooks.php.as_ref(), body, json))
        }
        Request::List { json } => core.list().map(|names| {
            let active = core.active();
            let (a, p) = (active.name(), active.previous.as_deref());
            if json {
                render::list_json(&names, a, p)
            } else {
                render::list_text(&names, a, p)
            }
        }),
        Request::Ping => Ok("pong".into()),
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
