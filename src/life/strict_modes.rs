//! sshd's StrictModes rule for paths root acts on: every directory on the way to a mount
//! point (or the state directory) must be owned by root (or by us) and writable only by its
//! owner, so nobody else can put a symlink, or another directory, in its place.
//!
//! Why: mount(8) and the mount helper may hand over a path already resolved, so a deploy user
//! who owns the directory holding `current` could point it at `/root/.ssh` and have root mount
//! a release over that. Checking the spelling for symlinks alone cannot see a link resolved
//! before we were called; refusing any directory someone else can change closes it, because
//! then nothing on the path can change between this check and the mount.
//!
//! The walk goes through descriptors from `/`, one component at a time, never following a
//! symlink (`O_PATH | O_NOFOLLOW`) and `fstat`ing what it opened, so what is checked is what
//! is there. A sticky directory owned by root (`/tmp`) is accepted when the entry used in it
//! belongs to root (or us): the sticky bit lets nobody else rename or remove that entry.
//! Another user's entry there (a `current` they created first) is refused.

use std::ffi::OsStr;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Component, Path};

use crate::sys;

/// `check_parents`, and the last component not a symlink either.
///
/// # Errors
/// As `check_parents`, or the last component is a symlink.
pub fn check_path(path: &Path, what: &str) -> Result<OwnedFd, String> {
    check_walk(path, what, true)
}

/// Checks every directory from `/` down to `path`'s parent, and that none is a symlink;
/// returns a descriptor of `path`'s parent. `what` names the path in the one-line error
/// ("mount point"). The last component is the caller's to check.
///
/// # Errors
/// One line naming the directory and why: owned by another user, writable by group or
/// others, a symlink, not a directory, or a relative or `..` spelling.
pub fn check_parents(path: &Path, what: &str) -> Result<OwnedFd, String> {
    check_walk(path, what, false)
}

fn check_walk(path: &Path, what: &str, last_no_link: bool) -> Result<OwnedFd, String> {
    let shown = path.display();
    let names = plain_components(path).map_err(|why| format!("{what} {shown}: {why}"))?;
    let us = sys::euid();
    let mut dir = sys::open_dir_path(Path::new("/"), true)
        .map_err(|e| format!("{what} {shown}: cannot open /: {e}"))?;
    let mut dir_st = sys::fstat(dir.as_fd()).map_err(|e| format!("{what} {shown}: /: {e}"))?;
    let mut walked = std::path::PathBuf::from("/");
    for (i, name) in names.iter().enumerate() {
        let last = i + 1 == names.len();
        let here = walked.join(name);
        // lstat of the entry through the directory we hold: for the last component this does
        // not open it (a dead FUSE mount there fails any open), for the others it is the
        // owner the sticky rule needs.
        let entry = sys::stat_at(dir.as_fd(), name);
        // Who may change the directory is told first: an entry missing just now (the
        // attacker between two renames) is no reason to report less.
        let entry_uid = entry.as_ref().map_or(u32::MAX, |st| st.st_uid);
        if let Some(why) = dir_problem(&dir_st, entry_uid, us) {
            return Err(format!(
                "{what} {shown}: directory {} {why}, so that user can replace {} (with a \
                 symlink to anywhere); make it root's and not writable by others \
                 (chown root: {0}; chmod go-w {0}), or mount outside it in a directory \
                 only root can change (e.g. /srv/switchfs/SITE, with a symlink to it where \
                 the deploy tool wants one)",
                walked.display(),
                here.display()
            ));
        }
        let entry = match entry {
            Ok(st) => Some(st),
            // A dead FUSE mount (its daemon was killed) on the last component: the daemon
            // detaches it; its directory's owner is unknown, which only a sticky parent asks.
            Err(e) if last && e.raw_os_error() == Some(libc::ENOTCONN) => None,
            Err(e) => return Err(format!("{what} {shown}: {}: {e}", here.display())),
        };
        let is_link = entry.is_some_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFLNK);
        if is_link && (last_no_link || !last) {
            let target = std::fs::read_link(&here)
                .map(|t| t.display().to_string())
                .unwrap_or_else(|_| "?".into());
            return Err(format!(
                "{what} {shown}: {} is a symlink (to {target}); give the path without symlinks",
                here.display()
            ));
        }
        if last {
            break;
        }
        let next = sys::open_path_beneath(dir.as_fd(), name)
            .map_err(|e| format!("{what} {shown}: {}: {e}", here.display()))?;
        let st = sys::fstat(next.as_fd())
            .map_err(|e| format!("{what} {shown}: {}: {e}", here.display()))?;
        if st.st_mode & libc::S_IFMT != libc::S_IFDIR {
            return Err(format!(
                "{what} {shown}: {} is not a directory",
                here.display()
            ));
        }
        (dir, dir_st, walked) = (next, st, here);
    }
    Ok(dir)
}

/// `path` (absolute) with `.` and `..` taken out by name: `x/..` is the directory holding
/// `x` when `x` is a directory and not a symlink, which is checked; a `..` after a symlink
/// is refused, since it would name the parent of wherever the link points.
///
/// # Errors
/// One line: a relative path, or `..` after a symlink.
pub fn without_dots(path: &Path, what: &str) -> Result<std::path::PathBuf, String> {
    let shown = path.display();
    if !path.is_absolute() {
        return Err(format!("{what} {shown}: not an absolute path"));
    }
    let mut out = std::path::PathBuf::from("/");
    for c in path.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                let is_link = std::fs::symlink_metadata(&out)
                    .map(|m| m.file_type().is_symlink())
                    .unwrap_or(false);
                if is_link {
                    return Err(format!(
                        "{what} {shown}: {} is a symlink; give the path without symlinks",
                        out.display()
                    ));
                }
                out.pop();
            }
            _ => {}
        }
    }
    Ok(out)
}

/// The names of an absolute path without `.`, `..` or a trailing nothing; `..` is refused
/// because which directory it names depends on links a walk by name could not check.
fn plain_components(path: &Path) -> Result<Vec<&OsStr>, String> {
    if !path.is_absolute() {
        return Err("not an absolute path".into());
    }
    let mut names = Vec::new();
    for c in path.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(n) => names.push(n),
            Component::ParentDir => return Err("spell it without `..`".into()),
            Component::Prefix(_) => return Err("not a Unix path".into()),
        }
    }
    if names.is_empty() {
        return Err("cannot be /".into());
    }
    Ok(names)
}

/// Why the directory `st` lets someone other than root (or `us`) change the entry owned by
/// `entry_uid` in it, if it does.
fn dir_problem(st: &libc::stat, entry_uid: u32, us: u32) -> Option<String> {
    let trusted = |uid: u32| uid == 0 || uid == us;
    if !trusted(st.st_uid) {
        return Some(format!("is owned by uid {} (not root)", st.st_uid));
    }
    if st.st_mode & 0o022 == 0 {
        return None;
    }
    let sticky = st.st_mode & libc::S_ISVTX != 0;
    if sticky && st.st_uid == 0 && trusted(entry_uid) {
        return None;
    }
    Some(if sticky {
        format!("is sticky and writable by others, and the entry in it belongs to uid {entry_uid}")
    } else {
        format!(
            "is writable by group or others (mode {:o})",
            st.st_mode & 0o7777
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stat(uid: u32, mode: u32) -> libc::stat {
        let root = sys::open_dir_path(Path::new("/"), true).unwrap();
        let mut st = sys::fstat(root.as_fd()).unwrap();
        st.st_uid = uid;
        st.st_mode = libc::S_IFDIR | mode;
        st
    }

    #[test]
    fn only_directories_nobody_else_can_change_pass() {
        assert_eq!(dir_problem(&stat(0, 0o755), 1000, 0), None);
        assert!(
            dir_problem(&stat(1000, 0o755), 0, 0)
                .unwrap()
                .contains("uid 1000")
        );
        assert!(
            dir_problem(&stat(0, 0o775), 0, 0)
                .unwrap()
                .contains("mode 775")
        );
        // /tmp: fine for root's own entry, not for one another user created first.
        assert_eq!(dir_problem(&stat(0, 0o1777), 0, 0), None);
        assert!(
            dir_problem(&stat(0, 0o1777), 65534, 0)
                .unwrap()
                .contains("65534")
        );
        // a sticky directory of another user is still theirs.
        assert!(dir_problem(&stat(1000, 0o1777), 0, 0).is_some());
        // a non-root daemon trusts its own directories.
        assert_eq!(dir_problem(&stat(1000, 0o755), 1000, 1000), None);
    }

    #[test]
    fn spellings_that_hide_a_directory_are_refused() {
        assert!(plain_components(Path::new("rel/x")).is_err());
        assert!(plain_components(Path::new("/a/../b")).is_err());
        assert!(plain_components(Path::new("/")).is_err());
        assert_eq!(plain_components(Path::new("/a/./b/")).unwrap(), ["a", "b"]);
    }
}
