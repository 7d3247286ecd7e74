//! Talking to systemd: `sd_notify` (READY=1, STATUS=, STOPPING=1) when started with
//! `NOTIFY_SOCKET`, and its file descriptor store (`FDSTORE=1` out, `LISTEN_FDS` back in),
//! which keeps the FUSE connection across a keeper restart (what is stored is the keeper's
//! business: `keeper::fd_store`).

use std::os::fd::{BorrowedFd, OwnedFd};
use std::path::Path;

use crate::sys;

/// Where the mount helper waits for `READY=1` (instead of `NOTIFY_SOCKET`, which it
/// removes): only readiness goes there, once per server, and a helper that has gone (it
/// exits once the mount serves, and removes its socket) is no warning. Before, the helper's
/// `NOTIFY_SOCKET` stayed in the daemon, and every later notification (a restarted
/// server's READY=1, STOPPING=1, STATUS=) warned that the socket was gone.
pub const READY_SOCKET_ENV: &str = "SWITCHFS_READY_SOCKET";

/// Whether the mount helper (mount(8), fstab) started this daemon: then `umount` is the
/// documented way to stop it, not an accident to warn about.
pub(crate) fn started_by_mount_helper() -> bool {
    std::env::var_os(READY_SOCKET_ENV).is_some()
}

/// Tells systemd (or a test) how we are doing, when started with `NOTIFY_SOCKET`; and the
/// mount helper that we are ready (`READY_SOCKET_ENV`).
pub(crate) fn notify(state: &str) {
    if let Some(path) = std::env::var_os(READY_SOCKET_ENV)
        && state.lines().any(|l| l == "READY=1")
        && let Err(e) = send(&path, "READY=1")
    {
        log::debug!("readiness to the mount helper: {e} (it has gone)");
    }
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    if let Err(e) = send(&path, state) {
        log::warn!("sd_notify to {}: {e}", path.to_string_lossy());
    }
}

/// One datagram to the socket at `path` (`@NAME`: an abstract one).
fn send(path: &std::ffi::OsStr, state: &str) -> std::io::Result<()> {
    let sock = std::os::unix::net::UnixDatagram::unbound()?;
    let bytes = path.as_encoded_bytes();
    if let Some(abstract_name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(abstract_name)
            .and_then(|addr| sock.send_to_addr(state.as_bytes(), &addr))
    } else {
        sock.send_to(state.as_bytes(), Path::new(path))
    }
    .map(|_| ())
}

/// systemd's `STATUS=` line for what is served (`systemctl status` shows it): sent with
/// READY=1 and after each switch.
pub(crate) fn serving_status(active: Option<&str>) -> String {
    match active {
        Some(name) => format!("STATUS=serving {name}"),
        None => "STATUS=no release active (empty root)".to_string(),
    }
}

/// Whether systemd listens (`NOTIFY_SOCKET` set): outside it, nothing is stored.
pub(crate) fn has_notify_socket() -> bool {
    std::env::var_os("NOTIFY_SOCKET").is_some()
}

/// Hands each of `fds` to systemd's descriptor store under its name (`FDSTORE=1`,
/// `FDNAME=`), one datagram each.
///
/// # Errors
/// `(NAME): reason` for the first that could not be sent; the ones before it are stored.
pub(crate) fn store_fds(fds: &[(&str, BorrowedFd<'_>)]) -> Result<(), String> {
    use std::os::fd::AsFd;
    let Some(addr) = notify_addr() else {
        return Ok(());
    };
    let sock = std::os::unix::net::UnixDatagram::unbound().map_err(|e| format!(": {e}"))?;
    for (name, fd) in fds {
        let msg = format!("FDSTORE=1\nFDNAME={name}");
        sys::send_with_fds(sock.as_fd(), Some(&addr), msg.as_bytes(), &[*fd])
            .map_err(|e| format!("({name}): {e}"))?;
    }
    Ok(())
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

/// `sd_listen_fds` with names: the descriptors from 3 on, when they are meant for us.
/// `take_env` reads a variable and removes it from the environment, so a server started
/// later never takes them for its own.
pub(crate) fn listen_fds(take_env: fn(&str) -> Option<String>) -> Option<Vec<(String, OwnedFd)>> {
    let pid: u32 = take_env("LISTEN_PID")?.parse().ok()?;
    let count: i32 = take_env("LISTEN_FDS")?.parse().ok()?;
    let names = take_env("LISTEN_FDNAMES").unwrap_or_default();
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
