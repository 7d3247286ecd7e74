//! Deleting old releases, as root, in a directory the deploy user owns.
//!
//! The releases directory is the one the daemon pinned at start; its path may since have been
//! turned into a symlink to anywhere by whoever owns its parent. So a release is deleted by
//! walking it from that descriptor: each directory is opened relative to its parent with
//! `O_NOFOLLOW` (a symlink, planted before or during the walk, is unlinked, never followed),
//! each entry is removed with `unlinkat` relative to the directory holding it, and the walk
//! never enters another mount. Nothing outside the release can be reached this way: every step
//! is one name inside a directory we hold open.
//!
//! A release is also kept while a process uses it through its real path rather than the mount
//! (a shell `cd`-ed into it, a worker holding one of its files): those are found in /proc by
//! device and inode, and the release tree is walked to see whether it holds any of them.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use crate::switch::procscan::{self, HostUse};
use crate::switch::release::ReleaseSet;
use crate::sys;

/// What keeps a release from being pruned, decided by the caller (active, previous, in use
/// through the mount), as the text shown after "keep NAME".
pub(crate) type KeepReason<'a> = &'a dyn Fn(&str) -> Option<String>;

/// Deletes (with `apply`) or lists the releases beyond the newest `keep` of `names` (oldest
/// first), sparing those `kept` gives a reason for and those processes use through their real
/// path. Returns one line per release considered; a dry run (without `apply`) also lists the
/// newest `keep`, so every release has its line.
///
/// # Errors
/// A deletion failed: the message says which release, why, and how many were deleted before.
pub(crate) fn prune(
    releases: &ReleaseSet,
    names: &[String],
    keep: usize,
    apply: bool,
    kept: KeepReason<'_>,
) -> Result<String, String> {
    let old = &names[..names.len().saturating_sub(keep)];
    let mut host_refs: Option<HashMap<(u64, u64), HostUse>> = None;
    let mut lines = Vec::new();
    for name in old {
        if let Some(reason) = kept(name) {
            lines.push(format!("keep {name} ({reason})"));
            continue;
        }
        // Scanned once, and only when some release may go: the scan reads all of /proc.
        let refs = match &host_refs {
            Some(r) => r,
            None => host_refs.insert(scan_releases_fs(releases)),
        };
        let used = used_through_real_path(releases.fd(), name, refs)
            .map_err(|e| format!("cannot check whether release {name} is in use: {e}"))?;
        if used.any() {
            lines.push(format!(
                "keep {name} (in use: {} outside the mount)",
                describe(used)
            ));
        } else if !apply {
            lines.push(format!("would delete {name}"));
        } else {
            remove_release(releases.fd(), name).map_err(|e| {
                let done = lines.iter().filter(|l| l.starts_with("deleted")).count();
                format!("cannot delete release {name}: {e} ({done} deleted before)")
            })?;
            log::info!("pruned release {name}");
            lines.push(format!("deleted {name}"));
        }
    }
    let considered = lines.len();
    if !apply {
        // A dry run says what happens to every release, the newest ones too, so the
        // operator sees each one accounted for.
        for name in &names[old.len()..] {
            let also = kept(name).map(|r| format!("; {r}")).unwrap_or_default();
            lines.push(format!("keep {name} (one of the newest {keep}{also})"));
        }
    }
    if considered == 0 {
        lines.push(format!(
            "nothing to prune: {} releases, keeping {keep}",
            names.len()
        ));
    } else if !apply {
        lines.push("dry run: pass --yes to delete".into());
    }
    Ok(lines.join("\n") + "\n")
}

/// What processes hold on the releases directory's filesystem.
fn scan_releases_fs(releases: &ReleaseSet) -> HashMap<(u64, u64), HostUse> {
    match sys::fstat(releases.fd()) {
        Ok(st) => procscan::scan_host(st.st_dev),
        Err(e) => {
            log::warn!("cannot stat the releases directory ({e}); not scanning /proc");
            HashMap::new()
        }
    }
}

/// "1 working dir, 2 open files" for the non-zero counts.
fn describe(used: HostUse) -> String {
    let part = |n: usize, what: &str| match n {
        0 => None,
        1 => Some(format!("1 {what}")),
        n => Some(format!("{n} {what}s")),
    };
    [
        part(used.dirs, "working dir"),
        part(used.open_files, "open file"),
        part(used.maps, "memory map"),
    ]
    .into_iter()
    .flatten()
    .collect::<Vec<_>>()
    .join(", ")
}

/// How processes use release `name` through its real path: the references in `refs` to the
/// release directory or anything in it (not crossing into other mounts).
fn used_through_real_path(
    releases: BorrowedFd<'_>,
    name: &str,
    refs: &HashMap<(u64, u64), HostUse>,
) -> io::Result<HostUse> {
    let mut used = HostUse::default();
    if refs.is_empty() {
        return Ok(used);
    }
    let root = sys::open_subdir(releases, OsStr::new(name))?;
    let st = sys::fstat(root.as_fd())?;
    if let Some(u) = refs.get(&(st.st_dev, st.st_ino)) {
        used.add(*u);
    }
    tally_tree(root.as_fd(), st.st_dev, refs, &mut used)?;
    Ok(used)
}

fn tally_tree(
    dir: BorrowedFd<'_>,
    dev: u64,
    refs: &HashMap<(u64, u64), HostUse>,
    used: &mut HostUse,
) -> io::Result<()> {
    for entry in sys::read_dir(dir)? {
        let Ok(st) = sys::stat_at(dir, &entry.name) else {
            continue; // deleted meanwhile
        };
        if let Some(u) = refs.get(&(st.st_dev, st.st_ino)) {
            used.add(*u);
        }
        if st.st_mode & libc::S_IFMT == libc::S_IFDIR && st.st_dev == dev {
            match sys::open_subdir(dir, &entry.name) {
                Ok(sub) => tally_tree(sub.as_fd(), dev, refs, used)?,
                Err(e) if gone_or_swapped(&e) => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

/// Deletes release `name` from the pinned releases directory: its tree is removed relative to
/// descriptors opened without following links, then its entry.
///
/// # Errors
/// Why it could not be deleted, naming the path inside the release where it stopped (a mount
/// point inside it, for instance, is left alone and refused).
pub(crate) fn remove_release(releases: BorrowedFd<'_>, name: &str) -> Result<(), String> {
    let name = OsStr::new(name);
    let root = sys::open_subdir(releases, name).map_err(|e| match e.raw_os_error() {
        Some(libc::ELOOP) | Some(libc::ENOTDIR) => "not a directory (a symlink?)".to_string(),
        _ => e.to_string(),
    })?;
    let top = sys::device_and_mount(releases).map_err(|e| e.to_string())?;
    let here = sys::device_and_mount(root.as_fd()).map_err(|e| e.to_string())?;
    if here != top {
        return Err("it is a mount point (another filesystem); left in place".into());
    }
    remove_tree(root.as_fd(), top, Path::new(""))?;
    sys::unlink_at(releases, name, true).map_err(|e| e.to_string())
}

/// Empties the directory behind `dir` (at `at` inside the release, for messages), which is on
/// device and mount `fs`.
fn remove_tree(dir: BorrowedFd<'_>, fs: (u64, u64), at: &Path) -> Result<(), String> {
    let entries = sys::read_dir(dir).map_err(|e| format!("{}: {e}", shown(at)))?;
    for entry in entries {
        remove_entry(dir, &entry.name, entry.d_type, fs, &at.join(&entry.name))?;
    }
    Ok(())
}

/// Removes one entry of `dir`. A directory is opened with `O_NOFOLLOW` before anything in it
/// is touched; if the entry turned into a symlink or file meanwhile (an attacker swapping it),
/// that open fails and the entry is unlinked as what it now is, never followed.
fn remove_entry(
    dir: BorrowedFd<'_>,
    name: &OsString,
    d_type: u8,
    fs: (u64, u64),
    at: &Path,
) -> Result<(), String> {
    let err = |e: io::Error| format!("{}: {e}", shown(at));
    if d_type != libc::DT_DIR && d_type != libc::DT_UNKNOWN {
        match sys::unlink_at(dir, name, false) {
            Ok(()) => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EISDIR) => {} // swapped for a directory
            Err(e) if gone_or_swapped(&e) => return Ok(()),
            Err(e) => return Err(err(e)),
        }
    }
    let sub: OwnedFd = match sys::open_subdir(dir, name) {
        Ok(fd) => fd,
        Err(e) if matches!(e.raw_os_error(), Some(libc::ELOOP) | Some(libc::ENOTDIR)) => {
            // Not a directory (any more): remove the name itself.
            return match sys::unlink_at(dir, name, false) {
                Err(e) if !gone_or_swapped(&e) => Err(err(e)),
                _ => Ok(()),
            };
        }
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
        Err(e) => return Err(err(e)),
    };
    if sys::device_and_mount(sub.as_fd()).map_err(err)? != fs {
        return Err(format!(
            "{} is a mount point (another filesystem or a bind mount); not deleting into it",
            shown(at)
        ));
    }
    remove_tree(sub.as_fd(), fs, at)?;
    drop(sub);
    match sys::unlink_at(dir, name, true) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        // The directory we emptied was moved and a symlink or file put at its name: that
        // name is part of the release too, so it goes (unlinked, not followed).
        Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => match sys::unlink_at(dir, name, false)
        {
            Err(e) if !gone_or_swapped(&e) => Err(err(e)),
            _ => Ok(()),
        },
        Err(e) => Err(err(e)),
    }
}

/// The entry vanished, or is no longer what we looked at: nothing of ours to remove there.
fn gone_or_swapped(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENOENT) | Some(libc::ENOTDIR) | Some(libc::ELOOP)
    )
}

fn shown(at: &Path) -> String {
    if at.as_os_str().is_empty() {
        "release directory".into()
    } else {
        at.display().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::TempDir;
    use std::os::unix::fs::symlink;

    #[test]
    fn removes_a_tree_without_following_links_out_of_it() {
        let tmp = TempDir::new("prune");
        let outside = tmp.path().join("outside");
        std::fs::create_dir_all(outside.join("keep")).unwrap();
        std::fs::write(outside.join("keep/file"), b"x").unwrap();
        let rel = tmp.path().join("releases");
        std::fs::create_dir_all(rel.join("1/a/b")).unwrap();
        std::fs::write(rel.join("1/a/b/f"), b"x").unwrap();
        symlink(&outside, rel.join("1/a/link-dir")).unwrap();
        symlink(outside.join("keep/file"), rel.join("1/link-file")).unwrap();
        let set = ReleaseSet::open(&rel).unwrap();
        remove_release(set.fd(), "1").unwrap();
        assert!(!rel.join("1").exists());
        assert!(outside.join("keep/file").exists(), "link target untouched");
    }

    #[test]
    fn describes_counts() {
        let used = HostUse {
            dirs: 1,
            open_files: 2,
            maps: 0,
        };
        assert_eq!(describe(used), "1 working dir, 2 open files");
    }
}
