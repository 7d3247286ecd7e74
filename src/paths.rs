//! Default locations of the control socket and the state file, derived from the mount point
//! so that several switchfs mounts on one host never collide.

use std::path::{Path, PathBuf};

/// A short, stable, filesystem-safe key for a mount point: its last component (sanitised)
/// and a hash of the whole path. A hash keeps socket paths under the 108-byte limit of
/// `sockaddr_un` however deep the mount point is.
pub fn mount_key(mount_point: &Path) -> String {
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

fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn user_dir(var: &str, fallback: &str) -> PathBuf {
    if let Some(dir) = std::env::var_os(var).filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("switchfs");
    }
    match std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        Some(home) => PathBuf::from(home).join(fallback).join("switchfs"),
        // SAFETY: getuid cannot fail.
        None => std::env::temp_dir().join(format!("switchfs-{}", unsafe { libc::getuid() })),
    }
}

/// `/run/switchfs/KEY.sock` for root, else under `$XDG_RUNTIME_DIR`.
pub fn default_control_path(mount_point: &Path) -> PathBuf {
    let dir = if is_root() {
        PathBuf::from("/run/switchfs")
    } else {
        user_dir("XDG_RUNTIME_DIR", ".cache")
    };
    dir.join(format!("{}.sock", mount_key(mount_point)))
}

/// `/var/lib/switchfs/KEY.state` for root, else under `$XDG_STATE_HOME`.
pub fn default_state_path(mount_point: &Path) -> PathBuf {
    let dir = if is_root() {
        PathBuf::from("/var/lib/switchfs")
    } else {
        user_dir("XDG_STATE_HOME", ".local/state")
    };
    dir.join(format!("{}.state", mount_key(mount_point)))
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
}
