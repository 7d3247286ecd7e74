//! Relative symlinks that climb out of the release, checked before a release is bind-mounted.
//!
//! Deployer links shared files relative to the release (`releases/5/.env ->
//! ../../shared/.env`). The kernel resolves that from the link's real directory. Through a
//! bind mount at `/srv/app/current` the same link sits at `current/.env`, and its `../..`
//! climbs from `/srv/app/current`: to `/srv`, not `/srv/app`. A bind mount cannot rewrite
//! link text (FUSE mode can), so such a release is refused unless both views climb to the
//! same directory.
//!
//! Exactness: a link's target is split where it leaves the release root. From there it
//! climbs `k` levels (1 = the directory holding the release, `releases/`), then the rest is
//! one and the same string resolved from the directory it climbed to. So the link resolves
//! the same through the mount point exactly when the `k`-th ancestor of `releases/N` and
//! the `k`-th ancestor of the mount point are the same directory (both paths are free of
//! links: the releases path is canonical, the mount point was walked without following any).
//! `k = 1` can never match (the mount point is not inside the releases directory). The fix
//! for `k >= 2` is a mount point at the same depth under that ancestor as `releases/N`, e.g.
//! `<deploy_path>/live/current` for Deployer's `../../shared`.
//!
//! The walk goes through descriptors (no link followed), stays on the release's own mount
//! (the bind mount does not carry submounts either), and stops after `limit` entries: past
//! the cap the release is refused, because an unchecked link could silently point elsewhere.

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use crate::sys;

/// Entries walked per release before the check gives up (and refuses the release).
pub const DEFAULT_LIMIT: usize = 200_000;

/// How far a relative `target` of a link in directory depth `depth` (0 = the release root)
/// climbs above the release root: `None` if it stays inside, else `Some(k)`.
pub fn climb_above_root(depth: usize, target: &[u8]) -> Option<usize> {
    if target.first() == Some(&b'/') {
        return None;
    }
    let mut depth = depth as i64;
    let mut above: Option<usize> = None;
    for comp in Path::new(OsStr::from_bytes(target)).components() {
        match (comp, above) {
            (Component::ParentDir, None) => {
                depth -= 1;
                if depth < 0 {
                    above = Some(1);
                }
            }
            (Component::ParentDir, Some(k)) => above = Some(k + 1),
            (Component::Normal(_), None) => depth += 1,
            (Component::Normal(_), Some(_)) => break,
            _ => {}
        }
    }
    above
}

/// The `k`-th ancestor of `path` (1 = its parent), clamped at `/` as the kernel's `..` is.
fn ancestor(path: &Path, k: usize) -> PathBuf {
    let mut p = path;
    for _ in 0..k {
        p = p.parent().unwrap_or(Path::new("/"));
    }
    p.to_path_buf()
}

/// One directory being walked: its descriptor, its path in the release, its entries and how
/// many of them were visited. Depth-first with one frame per level, so the walk holds as many
/// descriptors as the tree is deep, not as wide.
struct Frame {
    fd: OwnedFd,
    rel: PathBuf,
    entries: Vec<sys::RawDirEntry>,
    next: usize,
}

/// The walk of one release for the link check.
struct Walk<'a> {
    name: &'a str,
    release_path: PathBuf,
    mount_point: &'a Path,
    dev: u64,
    limit: usize,
    walked: usize,
    bad: Vec<String>,
}

impl Walk<'_> {
    fn frame(&self, fd: OwnedFd, rel: PathBuf) -> Result<Frame, String> {
        let entries = sys::read_dir(fd.as_fd()).map_err(|e| {
            let at = self.release_path.join(&rel);
            format!("cannot list {} for the link check: {e}", at.display())
        })?;
        Ok(Frame {
            fd,
            rel,
            entries,
            next: 0,
        })
    }

    /// Visits one entry of `dir`: a directory on the release's own filesystem becomes the
    /// next frame, a symlink is checked.
    fn visit(&mut self, dir: &Frame, entry: &OsStr, d_type: u8) -> Result<Option<Frame>, String> {
        self.walked += 1;
        if self.walked > self.limit {
            return Err(format!(
                "release {:?} has more than {} entries; the link check for --mode bind stopped \
                 there and refuses what it could not check (raise the link check limit, or use \
                 --mode fuse)",
                self.name, self.limit
            ));
        }
        let rel = dir.rel.join(entry);
        let at = || self.release_path.join(&rel).display().to_string();
        // The directory entry's type spares a stat per file: only directories and links
        // need more (`DT_UNKNOWN` on filesystems that do not fill it).
        let kind = match d_type {
            libc::DT_DIR => libc::S_IFDIR,
            libc::DT_LNK => libc::S_IFLNK,
            libc::DT_UNKNOWN => {
                sys::stat_at(dir.fd.as_fd(), entry)
                    .map_err(|e| format!("cannot stat {}: {e}", at()))?
                    .st_mode
                    & libc::S_IFMT
            }
            _ => return Ok(None),
        };
        match kind {
            libc::S_IFDIR => {
                let fd = sys::open_path_beneath(dir.fd.as_fd(), entry)
                    .map_err(|e| format!("cannot open {}: {e}", at()))?;
                let st =
                    sys::fstat(fd.as_fd()).map_err(|e| format!("cannot stat {}: {e}", at()))?;
                // Another filesystem mounted inside: the bind mount does not carry it.
                if st.st_dev == self.dev && st.st_mode & libc::S_IFMT == libc::S_IFDIR {
                    return self.frame(fd, rel).map(Some);
                }
            }
            libc::S_IFLNK => {
                let depth = dir.rel.components().count();
                let found = link_problem(
                    dir.fd.as_fd(),
                    entry,
                    depth,
                    &rel,
                    &self.release_path,
                    self.mount_point,
                );
                self.bad.extend(found);
            }
            _ => {}
        }
        Ok(None)
    }
}

/// Checks that every relative link of release `name` (directory `root`) that climbs out of
/// it resolves to the same place through `mount_point` as from `releases_path/name`.
///
/// # Errors
/// One line naming the first mismatching link (and how many more) and the fix, or saying
/// the walk hit `limit` entries.
pub fn check(
    name: &str,
    root: BorrowedFd<'_>,
    releases_path: &Path,
    mount_point: &Path,
    limit: usize,
) -> Result<(), String> {
    let opened = |e: std::io::Error| format!("cannot open release {name:?}: {e}");
    let dev = sys::fstat(root).map_err(opened)?.st_dev;
    let mut walk = Walk {
        name,
        release_path: releases_path.join(name),
        mount_point,
        dev,
        limit,
        walked: 0,
        bad: Vec::new(),
    };
    let mut stack = vec![walk.frame(root.try_clone_to_owned().map_err(opened)?, PathBuf::new())?];
    while let Some(top) = stack.last_mut() {
        let Some((entry, d_type)) = top
            .entries
            .get(top.next)
            .map(|e| (e.name.clone(), e.d_type))
        else {
            stack.pop();
            continue;
        };
        top.next += 1;
        let dir = stack.last().ok_or("link check: empty stack")?;
        if let Some(child) = walk.visit(dir, &entry, d_type)? {
            stack.push(child);
        }
    }
    match walk.bad.as_slice() {
        [] => Ok(()),
        [one] => Err(format!("release {name:?}: {one}")),
        [first, rest @ ..] => Err(format!(
            "release {name:?}: {first} (and {} more such links)",
            rest.len()
        )),
    }
}

/// Why the link `entry` (at `rel` in the release, directory depth `depth`) would resolve
/// elsewhere through the mount point, or `None` if it resolves the same.
fn link_problem(
    dir: BorrowedFd<'_>,
    entry: &OsStr,
    depth: usize,
    rel: &Path,
    release_path: &Path,
    mount_point: &Path,
) -> Option<String> {
    let fd = sys::open_path_beneath(dir, entry).ok()?;
    let target = sys::readlink(fd.as_fd()).ok()?;
    let k = climb_above_root(depth, &target)?;
    let from_release = ancestor(release_path, k);
    let from_mount = ancestor(mount_point, k);
    if from_release == from_mount {
        return None;
    }
    let shown = String::from_utf8_lossy(&target);
    let served = mount_point.join(rel);
    if k == 1 {
        return Some(format!(
            "link {} -> {shown} climbs into {} itself, which no mount point outside it reproduces \
             ({} would climb to {}); make the link absolute (Deployer: \
             set('use_relative_symlink', false)) or keep it inside the release, or use --mode fuse",
            rel.display(),
            from_release.display(),
            served.display(),
            from_mount.display()
        ));
    }
    let example = from_release
        .join("live")
        .join(mount_point.file_name().unwrap_or(OsStr::new("current")));
    let fix = if k == 2 {
        format!("e.g. {}", example.display())
    } else {
        format!("{k} levels below {}", from_release.display())
    };
    Some(format!(
        "link {} -> {shown} climbs to {} from {} but to {} through {}; make the link absolute \
         (Deployer: set('use_relative_symlink', false); Capistrano's are absolute), or put the \
         mount point at the same depth under {} as the release ({fix}; every directory above it \
         root's and not writable by others), or use --mode fuse",
        rel.display(),
        from_release.display(),
        release_path.display(),
        from_mount.display(),
        served.display(),
        from_release.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn climbs() {
        assert_eq!(climb_above_root(0, b"../../shared/.env"), Some(2));
        assert_eq!(climb_above_root(0, b"../4/x"), Some(1));
        assert_eq!(climb_above_root(1, b"../../../shared/x"), Some(2));
        assert_eq!(climb_above_root(1, b"../x"), None);
        assert_eq!(climb_above_root(0, b"/etc/passwd"), None);
        assert_eq!(climb_above_root(0, b"a/../../x/../../y"), Some(1));
        assert_eq!(climb_above_root(0, b"./.././../s"), Some(2));
        assert_eq!(climb_above_root(0, b".."), Some(1));
    }

    #[test]
    fn ancestors_clamp_at_root() {
        assert_eq!(
            ancestor(Path::new("/srv/app/releases/5"), 2),
            PathBuf::from("/srv/app")
        );
        assert_eq!(ancestor(Path::new("/a"), 4), PathBuf::from("/"));
    }
}
