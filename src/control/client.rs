//! `switchctl`'s side: find the daemon, send one request, return its answer.

use std::ffi::CString;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::control::protocol::{self, Failure, Request};
use crate::core::CONTROL_XATTR;

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
    query_control_xattr(mount).map_err(|e| match e.raw_os_error() {
        Some(libc::ENOTCONN) => {
            format!("{shown} is a dead switchfs mount (its daemon is gone); restart switchfs")
        }
        Some(libc::ENODATA) | Some(libc::ENOTSUP) => format!("{shown} is not a switchfs mount"),
        _ => format!("cannot query {shown}: {e}"),
    })
}

/// Asks the mount's root for the control socket path. The kernel never caches xattrs, so
/// this always reaches the daemon: ENOTCONN means the daemon is dead.
///
/// # Errors
/// The OS error of getxattr (ENODATA/ENOTSUP: not a switchfs; ENOTCONN: dead).
pub fn query_control_xattr(mount: &Path) -> std::io::Result<PathBuf> {
    let c_path = CString::new(mount.as_os_str().as_encoded_bytes())
        .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    let c_name = CString::new(CONTROL_XATTR).unwrap_or_default();
    let mut buf = vec![0u8; 4096];
    // SAFETY: valid C strings; buf is writable for its length.
    let n = unsafe {
        libc::getxattr(
            c_path.as_ptr(),
            c_name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    buf.truncate(n as usize);
    Ok(PathBuf::from(std::ffi::OsString::from(
        String::from_utf8_lossy(&buf).into_owned(),
    )))
}

/// The prefix of the source (fsname) of every switchfs mount, followed by the releases dir.
/// It is how a switchfs mount is told apart from other FUSE mounts: fuser mounts with type
/// `fuse`, without the subtype.
pub const FSNAME_PREFIX: &str = "switchfs:";

/// Mount points of every switchfs on this host, from `/proc/self/mountinfo`.
///
/// # Errors
/// mountinfo cannot be read.
pub fn switchfs_mounts() -> Result<Vec<PathBuf>, String> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| format!("cannot read /proc/self/mountinfo: {e}"))?;
    Ok(parse_mountinfo(&text))
}

/// Mount points of FUSE mounts whose source starts with `FSNAME_PREFIX`.
pub fn parse_mountinfo(text: &str) -> Vec<PathBuf> {
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mut fields = right.split(' ');
            let ty = fields.next()?;
            let source = unescape_mountinfo(fields.next()?);
            let mount = left.split(' ').nth(4)?;
            let is_fuse = ty == "fuse" || ty.starts_with("fuse.");
            (is_fuse && source.starts_with(FSNAME_PREFIX))
                .then(|| PathBuf::from(unescape_mountinfo(mount)))
        })
        .collect()
}

/// Undoes mountinfo's octal escapes (`\040` for a space and so on).
fn unescape_mountinfo(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            let digits = std::str::from_utf8(&bytes[i + 1..i + 4]).ok();
            if let Some(v) = digits.and_then(|d| u8::from_str_radix(d, 8).ok()) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The control socket to use when the operator named neither a mount nor a socket: the one
/// switchfs on this host, or an error listing the candidates.
///
/// # Errors
/// None or several switchfs mounts, or the one found is dead.
pub fn discover() -> Result<PathBuf, String> {
    let mounts = switchfs_mounts()?;
    match mounts.as_slice() {
        [] => Err("no switchfs is mounted on this host; pass --mount or --control".into()),
        [one] => socket_for_mount(one),
        many => Err(format!(
            "{} switchfs mounts on this host, pass --mount with one of: {}",
            many.len(),
            many.iter()
                .map(|m| m.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_switchfs_mounts_in_mountinfo() {
        let text = "\
36 35 98:0 / /mnt1 rw,noatime master:1 - ext3 /dev/root rw,errors=continue
90 25 0:52 / /var/www/cur\\040rent rw,nosuid,nodev - fuse switchfs:/srv/rel\\040eases rw,user_id=0
91 25 0:53 / /other rw - fuse.bindfs x rw
92 25 0:54 / /fake rw - ext4 switchfs:/x rw
";
        assert_eq!(
            parse_mountinfo(text),
            vec![PathBuf::from("/var/www/cur rent")]
        );
        assert_eq!(unescape_mountinfo("a\\134b"), "a\\b");
        assert_eq!(unescape_mountinfo("trailing\\"), "trailing\\");
    }
}
