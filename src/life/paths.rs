//! Default locations of the control socket and the state file, derived from the mount point
//! so that several switchfs mounts on one host never collide.

use std::path::{Path, PathBuf};

/// A short, stable, filesystem-safe key for a mount point: its last component (sanitised)
/// and a hash of the whole path. A hash keeps socket paths under the 108-byte limit of
/// `sockaddr_un` however deep the mount point is.
pub(crate) fn mount_key(mount_point: &Path) -> String {
    let bytes = mount_point.as_os_str().as_encoded_bytes();
    // FNV-1a, 64 bit: stable across builds, unlike std's DefaultHasher.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    let base: String = mount_point
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "root".into())
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(32)
        .collect();
    format!("{base}-{hash:016x}")
}

fn user_dir(var: &str, fallback: &str) -> PathBuf {
    if let Some(dir) = std::env::var_os(var).filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("switchfs");
    }
    match std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        Some(home) => PathBuf::from(home).join(fallback).join("switchfs"),
        None => std::env::temp_dir().join(format!("switchfs-{}", crate::sys::real_ids().0)),
    }
}

/// `/run/switchfs/KEY.sock` for root, else under `$XDG_RUNTIME_DIR`.
pub(crate) fn default_control_path(mount_point: &Path) -> PathBuf {
    let dir = if crate::sys::is_root() {
        PathBuf::from("/run/switchfs")
    } else {
        user_dir("XDG_RUNTIME_DIR", ".cache")
    };
    dir.join(format!("{}.sock", mount_key(mount_point)))
}

/// Root's default control socket for `mount_point`, whoever asks: where `switchctl --mount`
/// looks for a bind-mode daemon, whose docroot (a plain bind mount) cannot say its socket.
pub fn root_control_path(mount_point: &Path) -> PathBuf {
    PathBuf::from("/run/switchfs").join(format!("{}.sock", mount_key(mount_point)))
}

/// `/var/lib/switchfs/KEY.state` for root, else under `$XDG_STATE_HOME`.
pub(crate) fn default_state_path(mount_point: &Path) -> PathBuf {
    let dir = if crate::sys::is_root() {
        PathBuf::from("/var/lib/switchfs")
    } else {
        user_dir("XDG_STATE_HOME", ".local/state")
    };
    dir.join(format!("{}.state", mount_key(mount_point)))
}

// Where things are relative to each other, by identity rather than spelling (the daemon's
// mount point, releases directory and state file must not contain one another).

/// Device and inode of `path` (following links), or None if it cannot be stat'ed.
pub(crate) fn file_id(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// Whether `path` is the directory `dir` (device and inode) or lies below it: each of
/// `path`'s ancestors is compared by identity, so another spelling (a symlinked parent, a
/// bind mount of the directory) is caught too. `path` should be absolute and canonical.
pub(crate) fn is_within(path: &Path, dir: (u64, u64)) -> bool {
    path.ancestors()
        .filter(|p| !p.as_os_str().is_empty())
        .any(|p| file_id(p) == Some(dir))
}

/// The nearest ancestor of `path` (itself included) that exists, canonicalized: where a file
/// that does not exist yet would end up.
pub(crate) fn existing_ancestor(path: &Path) -> Option<PathBuf> {
    let abs = std::path::absolute(path).ok()?;
    abs.ancestors().find_map(|p| std::fs::canonicalize(p).ok())
}

/// Opens the absolute, canonical `path` from `/` one component at a time with
/// `O_PATH | O_NOFOLLOW` (`sys::open_path_walk`), so a symlink swapped in anywhere on the way
/// fails the open instead of redirecting it.
///
/// # Errors
/// Any component is missing, not searchable or a symlink.
pub(crate) fn open_nofollow(path: &Path) -> std::io::Result<std::os::fd::OwnedFd> {
    let root = crate::sys::open_dir_path(Path::new("/"), true)?;
    match path.strip_prefix("/") {
        Ok(rel) if !rel.as_os_str().is_empty() => {
            crate::sys::open_path_walk(std::os::fd::AsFd::as_fd(&root), rel)
        }
        Ok(_) => Ok(root),
        Err(_) => Err(std::io::Error::from_raw_os_error(libc::EINVAL)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_stable_short_and_distinct() {
        let a = mount_key(Path::new("/var/www/current"));
        assert_eq!(a, mount_key(Path::new("/var/www/current")));
        assert!(a.starts_with("current-"));
        assert_ne!(a, mount_key(Path::new("/srv/www/current")));
        let deep = PathBuf::from(format!("/{}", "very-long-directory/".repeat(20)));
        assert!(default_control_path(&deep).as_os_str().len() < 108);
        assert_eq!(
            mount_key(Path::new("/weird dir/a b")),
            format!("a_b-{}", &mount_key(Path::new("/weird dir/a b"))[4..])
        );
    }

    #[test]
    fn containment_is_by_identity_not_spelling() {
        let dir = std::env::temp_dir().join(format!("sfs-paths-{}", std::process::id()));
        let inner = dir.join("a/b");
        std::fs::create_dir_all(&inner).unwrap();
        let link = dir.join("link");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(dir.join("a"), &link).unwrap();
        let a = file_id(&dir.join("a")).unwrap();
        assert!(is_within(&inner, a));
        assert!(is_within(&dir.join("a"), a));
        assert!(!is_within(&dir, a));
        assert!(is_within(&link.join("b"), a), "a symlinked spelling");
        assert_eq!(
            existing_ancestor(&inner.join("x/y.state")),
            Some(std::fs::canonicalize(&inner).unwrap())
        );
        assert!(open_nofollow(&inner).is_ok());
        assert!(
            open_nofollow(&link.join("b")).is_err(),
            "a symlink on the way"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
