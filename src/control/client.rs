//! `switchctl`'s side: find the daemon, send one request, return its answer.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::control::protocol::{self, Failure, Request};
use crate::life::mounts;
// Kept here for callers that find it beside the other client functions.
pub use crate::life::mounts::query_control_xattr;
pub use crate::life::paths::root_control_path;

/// How long `request` keeps retrying while the daemon answers `busy` (too many clients).
const BUSY_RETRY: Duration = Duration::from_secs(10);

/// Sends `req` to the daemon at `socket` and returns the response body. A `busy` answer
/// (the daemon is at its client limit, e.g. under a flood of slow clients) is retried for a
/// while: the daemon frees slots within seconds, and an operator would retry anyway.
///
/// # Errors
/// The socket cannot be reached, the daemon refused, or it answered with an error or a
/// partial success (its message).
pub fn request(socket: &Path, req: &Request, timeout: Duration) -> Result<String, Failure> {
    let give_up = Instant::now() + BUSY_RETRY.min(timeout);
    loop {
        match request_once(socket, req, timeout) {
            Err(Failure::Error(msg)) if msg.starts_with("busy:") && Instant::now() < give_up => {
                std::thread::sleep(Duration::from_millis(100));
            }
            other => return other,
        }
    }
}

fn request_once(socket: &Path, req: &Request, timeout: Duration) -> Result<String, Failure> {
    let shown = socket.display();
    let mut stream = UnixStream::connect(socket).map_err(|e| {
        Failure::Error(match e.kind() {
            std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
                format!("cannot reach switchfs at {shown}: {e} (is switchfs running?)")
            }
            std::io::ErrorKind::PermissionDenied => format!(
                "permission denied on control socket {shown}: ask root, or start switchfs \
                 with --control-group GROUP (switching) or --status-group GROUP (status/list)"
            ),
            _ => format!("cannot reach switchfs at {shown}: {e}"),
        })
    })?;
    let _ = stream.set_read_timeout(Some(timeout));
    let _ = stream.set_write_timeout(Some(timeout));
    let line = format!("{}\n", req.to_line());
    // A daemon that refuses at once (busy) may have closed before the request is sent; its
    // answer is still waiting to be read, so a failed send is reported only without one.
    let sent = stream.write_all(line.as_bytes());
    let mut raw = Vec::new();
    let received = stream.read_to_end(&mut raw);
    // An error after a complete answer (the daemon closed with bytes of ours unread) does not
    // undo the answer.
    if !raw.is_empty() && raw.ends_with(b"\n") {
        return protocol::parse_response(&raw);
    }
    sent.map_err(|e| Failure::Error(format!("cannot send to switchfs at {shown}: {e}")))?;
    received.map_err(|e| Failure::Error(format!("no answer from switchfs at {shown}: {e}")))?;
    protocol::parse_response(&raw)
}

/// The control socket of the switchfs mounted at `mount`, as the daemon reports it.
///
/// # Errors
/// `mount` is not a live switchfs mount.
pub fn socket_for_mount(mount: &Path) -> Result<PathBuf, String> {
    let shown = mount.display();
    let queried = query_control_xattr(mount);
    if let Err(e) = &queried
        && matches!(e.raw_os_error(), Some(libc::ENODATA) | Some(libc::ENOTSUP))
    {
        // A bind-mode docroot is the release's own filesystem: no xattr to ask. Its daemon
        // listens at root's default socket for the mount point unless --control moved it.
        let by_default = crate::life::paths::root_control_path(mount);
        if std::fs::symlink_metadata(&by_default)
            .is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()))
        {
            return Ok(by_default);
        }
    }
    queried.map_err(|e| match e.raw_os_error() {
        Some(libc::ENOTCONN) => {
            format!("{shown} is a dead switchfs mount (its daemon is gone); restart switchfs")
        }
        Some(libc::ENODATA) | Some(libc::ENOTSUP) => format!(
            "{shown} is not a switchfs mount (a --mode bind docroot with a --control socket of \
             its own needs --control)"
        ),
        _ => format!("cannot query {shown}: {e}"),
    })
}

/// The control socket to use when the operator named neither a mount nor a socket: the one
/// switchfs on this host (a FUSE mount, or a bind-mode docroot found by [`bind_docroots`]),
/// or an error listing the candidates.
///
/// # Errors
/// None or several switchfs mounts, or the one found is dead.
pub fn discover() -> Result<PathBuf, String> {
    let fuse = mounts::switchfs_mounts()?;
    let bind = bind_docroots(&mounts::read_entries()?, &fuse);
    match (fuse.as_slice(), bind.as_slice()) {
        ([], []) => Err("no switchfs is mounted on this host; pass --mount or --control".into()),
        ([one], []) => socket_for_mount(one),
        ([], [(_, socket)]) => Ok(socket.clone()),
        _ => {
            let mut all: Vec<String> = fuse.iter().map(|m| m.display().to_string()).collect();
            all.extend(bind.iter().map(|(m, _)| m.display().to_string()));
            Err(format!(
                "{} switchfs mounts on this host, pass --mount with one of: {}",
                all.len(),
                all.join(", ")
            ))
        }
    }
}

/// How long a candidate bind-mode daemon has to answer `ping` during discovery.
const PING_TIMEOUT: Duration = Duration::from_secs(2);

/// Bind-mode docroots among `entries`, with their control sockets. A bind mount says nothing
/// about who made it, so a mount point counts only when root's default control socket for it
/// (see [`crate::life::paths::root_control_path`]) is a socket owned by root in a directory
/// only root can write, and the daemon behind it runs as root and answers `ping`. A caller
/// that may not connect (not root, no --status-group) still gets the candidate: the request
/// then fails with the socket's own permission message instead of "no switchfs". FUSE
/// switchfs mount points (`fuse`) are left out: they are found by type.
pub fn bind_docroots(entries: &[mounts::MountEntry], fuse: &[PathBuf]) -> Vec<(PathBuf, PathBuf)> {
    let mut found: Vec<(PathBuf, PathBuf)> = Vec::new();
    for e in entries.iter().filter(|e| !e.is_fuse()) {
        let point = &e.mount_point;
        if fuse.contains(point) || found.iter().any(|(m, _)| m == point) {
            continue; // During a swap two mounts are stacked at one docroot.
        }
        let socket = crate::life::paths::root_control_path(point);
        if root_owned_socket(&socket) && answers_ping(&socket) {
            found.push((point.clone(), socket));
        }
    }
    found
}

fn root_owned_socket(socket: &Path) -> bool {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let dir_safe = socket
        .parent()
        .and_then(|d| std::fs::symlink_metadata(d).ok())
        .is_some_and(|m| m.is_dir() && m.uid() == 0 && m.mode() & 0o022 == 0);
    dir_safe
        && std::fs::symlink_metadata(socket)
            .is_ok_and(|m| m.file_type().is_socket() && m.uid() == 0)
}

fn answers_ping(socket: &Path) -> bool {
    use std::os::fd::AsFd;
    let mut stream = match UnixStream::connect(socket) {
        Ok(s) => s,
        Err(e) => return e.kind() == std::io::ErrorKind::PermissionDenied,
    };
    if !crate::sys::peer_cred(stream.as_fd()).is_ok_and(|c| c.uid == 0) {
        return false;
    }
    let _ = stream.set_read_timeout(Some(PING_TIMEOUT));
    let _ = stream.set_write_timeout(Some(PING_TIMEOUT));
    let line = format!("{}\n", Request::Ping.to_line());
    if stream.write_all(line.as_bytes()).is_err() {
        return false;
    }
    let mut raw = Vec::new();
    // The daemon answers one line and closes; the read is bounded by the timeout.
    let _ = stream.take(4096).read_to_end(&mut raw);
    match protocol::parse_response(&raw) {
        Ok(body) => body.trim_end() == "pong",
        // A live daemon refusing this caller (not in --status-group) is still a daemon.
        Err(Failure::Error(msg)) => msg.starts_with("permission denied"),
        Err(_) => false,
    }
}
