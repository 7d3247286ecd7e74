//! Change detection: whether a script a pool cached under the mount differs between the
//! release the pool was last brought up to date with and the new one (step 2 of the
//! module doc of `opcache`), and which listed paths are under the mount at all.
//!
//! The rule is the mtime registry's (it never reports two contents with one mtime): with the
//! mtime OPcache cached, another reported mtime means changed; without one, a script is
//! changed only when its identity and its reported mtime both differ between the releases,
//! and so do its bytes. Every look goes through the releases' descriptors
//! (`Docroot::file_view`), never through a path.

use std::ffi::OsStr;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;

use crate::switch::docroot::Docroot;
use crate::switch::release::Release;

/// Whether the script OPcache cached at `rel` (under the mount) differs in `new`.
pub(super) fn script_changed(
    core: &dyn Docroot,
    old: Option<&Arc<Release>>,
    new: &Arc<Release>,
    rel: &Path,
    cached_mtime: Option<i64>,
) -> bool {
    let Ok(now) = core.file_view(new, rel) else {
        return true; // deleted, or no longer a plain file
    };
    let mtime_rule = core.mtimes_tell_content();
    if let Some(ts) = cached_mtime {
        // What validate_timestamps would find, without waiting for revalidate_freq. Where
        // equal mtimes do not mean equal content (bind mode), an equal one is only a hint.
        if ts != now.reported_mtime || mtime_rule {
            return ts != now.reported_mtime;
        }
    }
    let Some(old) = old else {
        return true; // what the pool cached since its last failure is unknown
    };
    if Arc::ptr_eq(old, new) {
        return false;
    }
    match core.file_view(old, rel) {
        // Same inode (hard-linked releases): unchanged. Another inode with the same reported
        // mtime: same content, by the registry's rule. Otherwise compare the bytes: with
        // validate_timestamps=0 OPcache never looks at mtimes, so a file rewritten with the
        // same content (a fresh checkout) keeps its bytecode.
        // Without the registry's rule (bind mode: real mtimes), an equal mtime proves
        // nothing and the bytes decide.
        Ok(before) => {
            (before.dev, before.ino) != (now.dev, now.ino)
                && (before.reported_mtime != now.reported_mtime || !mtime_rule)
                && (before.size != now.size || !same_content(&before.fd, &now.fd))
        }
        Err(_) => true,
    }
}

/// Whether two files hold the same bytes; any read error counts as different (one
/// recompilation, never a stale script).
fn same_content(a: &std::os::fd::OwnedFd, b: &std::os::fd::OwnedFd) -> bool {
    use std::os::fd::AsFd;
    let open = |fd: &std::os::fd::OwnedFd| {
        crate::sys::reopen(fd.as_fd(), libc::O_RDONLY | libc::O_NONBLOCK)
    };
    let (Ok(mut fa), Ok(mut fb)) = (open(a), open(b)) else {
        return false;
    };
    let (mut ba, mut bb) = (vec![0u8; 64 * 1024], vec![0u8; 64 * 1024]);
    loop {
        let na = match read_full(&mut fa, &mut ba) {
            Ok(n) => n,
            Err(_) => return false,
        };
        let nb = match read_full(&mut fb, &mut bb) {
            Ok(n) => n,
            Err(_) => return false,
        };
        if na != nb || ba[..na] != bb[..nb] {
            return false;
        }
        if na == 0 {
            return true;
        }
    }
}

/// Reads until `buf` is full or the end of the file.
fn read_full(f: &mut std::fs::File, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match f.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// The part of an OPcache key `path` under the mount point `prefix`, when it is made of
/// plain names only (OPcache keys are real paths: anything else did not come from it).
pub(super) fn under_mount<'a>(path: &'a [u8], prefix: &[u8]) -> Option<&'a Path> {
    let rel = path.strip_prefix(prefix)?.strip_prefix(b"/")?;
    rel.split(|&b| b == b'/')
        .all(|name| !name.is_empty() && name != b"." && name != b"..")
        .then(|| Path::new(OsStr::from_bytes(rel)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_paths_under_the_mount_count() {
        let m = b"/var/www/current";
        assert_eq!(
            under_mount(b"/var/www/current/public/index.php", m),
            Some(Path::new("public/index.php"))
        );
        for outside in [
            &b"/etc/passwd"[..],
            b"/var/www/current",
            b"/var/www/current/",
            b"/var/www/currentx/a.php",
            b"/var/www/current/../x.php",
            b"/var/www/current/a/./b.php",
        ] {
            assert_eq!(under_mount(outside, m), None, "{outside:?}");
        }
    }
}
