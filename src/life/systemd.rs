//! Talking to systemd: `sd_notify` (READY=1, STOPPING=1) when started with `NOTIFY_SOCKET`.
//! systemd's descriptor store, which keeps the FUSE connection across a keeper restart, is
//! the keeper's own (`keeper::systemd`) while the upgrade work changes it; it belongs here.

use std::path::Path;

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
