//! Start-up checks of the host, each one line, all done before anything is mounted: the
//! mount point is reached without following links and lies outside the releases, the kernel
//! can attach beneath (a real probe), and the mount point's parent propagates mounts to
//! other namespaces.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use crate::sys;

/// The mount point, opened through descriptors: its parent and its last component.
#[derive(Debug)]
pub struct MountPointDirs {
    pub parent: OwnedFd,
    pub name: OsString,
    /// The mount point spelled as walked (no `//`, no trailing `/`), as mountinfo shows it.
    pub path: PathBuf,
}

/// Opens the parent of `mount_point` one component at a time from `/` without following a
/// link, and checks the mount point itself is a real directory. Refuses a path through the
/// releases directory `releases` (`(st_dev, st_ino)`): the docroot would sit inside what it
/// serves.
///
/// # Errors
/// One line: not absolute, a component is a symlink or missing, or inside the releases.
pub fn open_mount_point(
    mount_point: &Path,
    releases: (u64, u64),
) -> Result<MountPointDirs, String> {
    let shown = mount_point.display();
    let mut parts = Vec::new();
    for comp in mount_point.components() {
        match comp {
            Component::RootDir => {}
            Component::Normal(p) => parts.push(p.to_os_string()),
            _ => {
                return Err(format!(
                    "mount point {shown} must be an absolute path without '.' or '..'"
                ));
            }
        }
    }
    if !mount_point.is_absolute() || parts.is_empty() {
        return Err(format!(
            "mount point {shown} must be an absolute path below /"
        ));
    }
    let mut dir = sys::open_root_dir().map_err(|e| format!("cannot open /: {e}"))?;
    let mut walked = PathBuf::from("/");
    let last = parts.len() - 1;
    for (i, part) in parts.iter().enumerate() {
        walked.push(part);
        let next = open_component(dir.as_fd(), part, &walked)?;
        let st = sys::fstat(next.as_fd())
            .map_err(|e| format!("cannot stat {}: {e}", walked.display()))?;
        if (st.st_dev, st.st_ino) == releases {
            return Err(format!(
                "mount point {shown} is inside the releases directory {}; put it outside",
                walked.display()
            ));
        }
        if i < last {
            dir = next;
        }
    }
    Ok(MountPointDirs {
        parent: dir,
        name: parts[last].clone(),
        path: walked,
    })
}

fn open_component(dir: BorrowedFd<'_>, part: &OsStr, walked: &Path) -> Result<OwnedFd, String> {
    sys::open_dir_nofollow_at(dir, part).map_err(|e| {
        let is_link =
            sys::stat_at(dir, part).is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFLNK);
        if is_link {
            format!(
                "{} is a symlink; switchfs runs as root and follows no links to its mount \
                 point: give the real path",
                walked.display()
            )
        } else {
            format!("cannot open {} as a directory: {e}", walked.display())
        }
    })
}

/// Probes `MOVE_MOUNT_BENEATH` for real: a thread enters a private mount namespace of its
/// own, mounts a scratch tmpfs on `scratch` (any existing directory; the host never sees
/// it) and attaches a clone of it beneath. The namespace dies with the thread.
///
/// # Errors
/// One line naming the running kernel and pointing to `--mode fuse`; or why the probe
/// could not run.
pub fn probe_move_mount_beneath(scratch: &Path) -> Result<(), String> {
    let scratch = scratch.to_path_buf();
    let probe = std::thread::Builder::new()
        .name("beneath-probe".into())
        .spawn(move || -> std::io::Result<std::io::Result<()>> {
            sys::enter_private_mount_namespace()?;
            Ok(attach_beneath_scratch(&scratch))
        })
        .map_err(|e| format!("cannot start the kernel probe: {e}"))?;
    let result = match probe
        .join()
        .map_err(|_| "the kernel probe panicked".to_string())?
    {
        Ok(probed) => probed,
        // A sandbox that forbids new namespaces (systemd's RestrictNamespaces=yes): judge by
        // the kernel's version; a kernel without the flag still fails the first switch cleanly.
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => return version_has_beneath(),
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => Ok(()),
        Err(e)
            if e.raw_os_error() == Some(libc::EINVAL) || e.raw_os_error() == Some(libc::ENOSYS) =>
        {
            Err(format!(
                "kernel {} cannot attach a mount beneath another (MOVE_MOUNT_BENEATH needs Linux \
                 6.5 or later; probe: {e}); use --mode fuse",
                sys::kernel_release()
            ))
        }
        Err(e) => Err(format!(
            "cannot probe the kernel for MOVE_MOUNT_BENEATH on kernel {}: {e}",
            sys::kernel_release()
        )),
    }
}

/// In the probe's private namespace: a scratch tmpfs on `scratch`, a clone of it beneath.
fn attach_beneath_scratch(scratch: &Path) -> std::io::Result<()> {
    sys::mount_scratch_tmpfs(scratch)?;
    let clone = sys::open_tree_clone_path(scratch)?;
    sys::attach_mount_beneath_path(clone.as_fd(), scratch)
}

/// Whether the running kernel's version is 6.5 or later (`MOVE_MOUNT_BENEATH`), for when
/// the probe cannot run.
fn version_has_beneath() -> Result<(), String> {
    let release = sys::kernel_release();
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    let minor: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    if (major, minor) >= (6, 5) {
        log::info!(
            "cannot probe for MOVE_MOUNT_BENEATH (new mount namespaces are forbidden here); \
             kernel {release} has it by its version"
        );
        return Ok(());
    }
    Err(format!(
        "kernel {release} cannot attach a mount beneath another (MOVE_MOUNT_BENEATH needs Linux \
         6.5 or later); use --mode fuse"
    ))
}

/// One line of /proc/self/mountinfo, as far as the bind plane needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountInfoLine {
    pub id: u64,
    pub parent: u64,
    /// The directory of its filesystem that is the mount's root (field 4).
    pub root: String,
    pub mount_point: PathBuf,
    /// The optional fields (`shared:N`, `master:N`, ...).
    pub tags: Vec<String>,
}

/// Parses mountinfo text; malformed lines are skipped.
pub fn parse_mountinfo(text: &str) -> Vec<MountInfoLine> {
    text.lines()
        .filter_map(|line| {
            let (left, _) = line.split_once(" - ")?;
            let mut f = left.split(' ');
            let id = f.next()?.parse().ok()?;
            let parent = f.next()?.parse().ok()?;
            let root = crate::mounts::unescape_mountinfo(f.nth(1)?);
            let mount_point = PathBuf::from(crate::mounts::unescape_mountinfo(f.next()?));
            let tags = f.skip(1).map(str::to_string).collect();
            Some(MountInfoLine {
                id,
                parent,
                root,
                mount_point,
                tags,
            })
        })
        .collect()
}

/// Refuses a mount point whose parent's mount is not shared: mounts attached there would not
/// propagate to other mount namespaces (systemd `PrivateTmp=` gives apache2 one), whose
/// web servers would keep serving the first release for ever.
///
/// # Errors
/// One line saying how to make it shared.
pub fn check_parent_shared(parent: BorrowedFd<'_>, mount_point: &Path) -> Result<(), String> {
    let id = sys::classic_mount_id(parent).map_err(|e| {
        format!(
            "cannot identify the mount of {}'s parent: {e}",
            mount_point.display()
        )
    })?;
    let text = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| format!("cannot read /proc/self/mountinfo: {e}"))?;
    let lines = parse_mountinfo(&text);
    let Some(line) = lines.iter().find(|l| l.id == id) else {
        return Err(format!(
            "mount {id} of {}'s parent is not in /proc/self/mountinfo",
            mount_point.display()
        ));
    };
    if line.tags.iter().any(|t| t.starts_with("shared:")) {
        return Ok(());
    }
    let parent_path = mount_point
        .parent()
        .unwrap_or(Path::new("/"))
        .display()
        .to_string();
    Err(format!(
        "the parent of mount point {} is on the private mount {}, so other mount namespaces \
         would not see switches; make it shared (`mount --make-shared {}`, or bind the parent \
         on itself: `mount --bind {p} {p} && mount --make-shared {p}`) and restart the web \
         server, or use --mode fuse",
        mount_point.display(),
        line.mount_point.display(),
        line.mount_point.display(),
        p = parent_path
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_optional_fields() {
        let text = "\
25 1 0:23 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
30 25 0:40 / /srv/a\\040b rw master:3 shared:7 - tmpfs t rw
31 25 0:41 / /p rw - tmpfs t rw
";
        let l = parse_mountinfo(text);
        assert_eq!(l.len(), 3);
        assert_eq!(l[0].tags, vec!["shared:1"]);
        assert_eq!(l[1].mount_point, PathBuf::from("/srv/a b"));
        assert_eq!(l[1].tags, vec!["master:3", "shared:7"]);
        assert!(l[2].tags.is_empty());
        assert_eq!(l[2].parent, 25);
        assert_eq!(l[1].root, "/");
    }
}
