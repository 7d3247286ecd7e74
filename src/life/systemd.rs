//! Talking to systemd: `sd_notify` (READY=1, STOPPING=1) when started with `NOTIFY_SOCKET`.
//! systemd's descriptor store, which keeps the FUSE connection across a keeper restart, is
//! the keeper's own (`keeper::systemd`) while the upgrade work changes it; it belongs here.

use std::path::Path;

/// Tells systemd (or a test) how we are doing, when started with `NOTIFY_SOCKET`.
pub(crate) fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sock = match std::os::unix::net::UnixDatagram::unbound() {
        Ok(s) => s,
        Err(e) => {
            log::warn!("sd_notify: {e}");
            return;
        }
    };
    let bytes = path.as_encoded_bytes();
    let sent = if let Some(abstract_name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(abstract_name)
            .and_then(|addr| sock.send_to_addr(state.as_bytes(), &addr))
    } else {
        sock.send_to(state.as_bytes(), Path::new(&path))
    };
    if let Err(e) = sent {
        log::warn!("sd_notify to {}: {e}", path.to_string_lossy());
    }
}
