//! Everything switchfs knows about mounts: reading `/proc/self/mountinfo`, telling switchfs
//! mounts apart from others, identifying the one mount this daemon made, and taking exactly
//! that mount down again.
//!
//! A path is not a mount: another mount can be stacked on the same path, ours can be moved,
//! detached or replaced by a new daemon's while we drain. So the daemon remembers its mount by
//! mount id and FUSE connection (each connection has its own anonymous device, the `st_dev`
//! of the mount root), and at shutdown acts on that mount only, through a descriptor of its
//! root, never by unmounting whatever a path leads to at the time.

use std::io;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use crate::sys;

/// The prefix of the source (fsname) of every switchfs mount, followed by the releases dir.
/// It is how a switchfs mount is told apart from other FUSE mounts: fuser mounts with type
/// `fuse`, without the subtype.
pub const FSNAME_PREFIX: &str = "switchfs:";

/// The type of a switchfs mount in mountinfo (`fuse.` and the subtype the daemon sets).
pub const FSTYPE: &str = "fuse.switchfs";

/// Refuses a `--source` that would not survive as the `fsname=` of FUSE's mount options
/// (a comma would start another option) or in mountinfo, fstab and df's columns.
///
/// # Errors
/// Empty, longer than 255 bytes, or a byte outside letters, digits and `/._:@+=-`.
pub fn check_source(s: &str) -> Result<(), String> {
    let ok = |b: u8| b.is_ascii_alphanumeric() || b"/._:@+=-".contains(&b);
    if s.is_empty() || s.len() > 255 || !s.bytes().all(ok) {
        return Err("a mount source is 1 to 255 letters, digits or /._:@+=-".into());
    }
    Ok(())
}

/// The extended attribute of a switchfs mount's root that names its control socket. The
/// daemon answers it only on the root and never lists it.
pub const CONTROL_XATTR: &str = "user.switchfs.control";

/// Asks the mount's root for the control socket path. The kernel never caches xattrs, so
/// this always reaches the daemon: ENOTCONN means the daemon is dead.
///
/// # Errors
/// The OS error of getxattr (ENODATA/ENOTSUP: not a switchfs; ENOTCONN: dead).
pub fn query_control_xattr(mount: &Path) -> io::Result<PathBuf> {
    let value = sys::get_xattr_of_path(mount, CONTROL_XATTR, 4096)?;
    Ok(PathBuf::from(std::ffi::OsString::from(
        String::from_utf8_lossy(&value).into_owned(),
    )))
}

/// One line of `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// Mount id (field 1): what `statx(STATX_MNT_ID)` reports for a path on this mount.
    pub id: u64,
    /// Id of the mount this one is mounted on (field 2); a mount stacked on top of another at
    /// the same mount point has that one as parent.
    pub parent: u64,
    /// `st_dev` of files on this mount (field 3, `major:minor`).
    pub dev: u64,
    /// Where it is mounted, unescaped.
    pub mount_point: PathBuf,
    pub fstype: String,
    /// The source (for FUSE, the fsname), unescaped.
    pub source: String,
}

impl MountEntry {
    pub fn is_fuse(&self) -> bool {
        self.fstype == "fuse" || self.fstype.starts_with("fuse.")
    }

    /// A switchfs mount: FUSE, with our fsname prefix or (a `--source` given, as the mount
    /// helper does) our subtype.
    pub fn is_switchfs(&self) -> bool {
        self.is_fuse() && (self.source.starts_with(FSNAME_PREFIX) || self.fstype == FSTYPE)
    }
}

/// Every mount in `text` (mountinfo format); malformed lines are skipped.
pub fn parse_entries(text: &str) -> Vec<MountEntry> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<MountEntry> {
    let (left, right) = line.split_once(" - ")?;
    let mut left = left.split(' ');
    let id = left.next()?.parse().ok()?;
    let parent = left.next()?.parse().ok()?;
    let (major, minor) = left.next()?.split_once(':')?;
    let dev = libc::makedev(major.parse().ok()?, minor.parse().ok()?);
    let mount_point = PathBuf::from(unescape_mountinfo(left.nth(1)?));
    let mut right = right.split(' ');
    let fstype = right.next()?.to_string();
    let source = unescape_mountinfo(right.next()?);
    Some(MountEntry {
        id,
        parent,
        dev,
        mount_point,
        fstype,
        source,
    })
}

/// Every mount this process sees.
///
/// # Errors
/// mountinfo cannot be read.
pub fn read_entries() -> Result<Vec<MountEntry>, String> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| format!("cannot read /proc/self/mountinfo: {e}"))?;
    Ok(parse_entries(&text))
}

/// Mount points of every switchfs on this host, from `/proc/self/mountinfo`.
///
/// # Errors
/// mountinfo cannot be read.
pub fn switchfs_mounts() -> Result<Vec<PathBuf>, String> {
    Ok(read_entries()?
        .into_iter()
        .filter(MountEntry::is_switchfs)
        .map(|m| m.mount_point)
        .collect())
}

/// Mount points of FUSE mounts whose source starts with `FSNAME_PREFIX`.
pub fn parse_mountinfo(text: &str) -> Vec<PathBuf> {
    parse_entries(text)
        .into_iter()
        .filter(MountEntry::is_switchfs)
        .map(|m| m.mount_point)
        .collect()
}

/// Undoes mountinfo's octal escapes (`\040` for a space and so on).
pub fn unescape_mountinfo(s: &str) -> String {
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

/// The mount on top at `mount_point`: of the mounts there, the one nothing else at the same
/// place is stacked on.
pub fn top_at<'a>(entries: &'a [MountEntry], mount_point: &Path) -> Option<&'a MountEntry> {
    let here: Vec<&MountEntry> = entries
        .iter()
        .filter(|m| m.mount_point == mount_point)
        .collect();
    here.iter()
        .find(|m| !here.iter().any(|other| other.parent == m.id))
        .copied()
}

/// The mount this daemon made, as identified right after mounting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OurMount {
    pub id: u64,
    /// `st_dev` of the mount root: the FUSE connection's own anonymous device.
    pub dev: u64,
    pub mount_point: PathBuf,
    pub fsname: String,
}

impl OurMount {
    /// Whether `entry` is this mount (ids are reused once a mount is gone, so the device
    /// and fsname must match too).
    fn is(&self, entry: &MountEntry) -> bool {
        entry.id == self.id && entry.dev == self.dev && entry.source == self.fsname
    }
}

/// Finds the mount just made at `mount_point`: the top mount there, a FUSE mount with our
/// fsname, whose root answers the control xattr with our own control socket (so it is our
/// connection, not another daemon's that raced us to the same place).
///
/// # Errors
/// The mount on top is not ours.
pub fn identify(mount_point: &Path, fsname: &str, control: &Path) -> Result<OurMount, String> {
    let shown = mount_point.display();
    let root = sys::open_dir_path(mount_point, true)
        .map_err(|e| format!("cannot open the new mount at {shown}: {e}"))?;
    let (id, dev) = sys::mount_id(root.as_fd())
        .map_err(|e| format!("cannot identify the new mount at {shown}: {e}"))?;
    let ours = OurMount {
        id,
        dev,
        mount_point: mount_point.to_path_buf(),
        fsname: fsname.to_string(),
    };
    let entries = read_entries()?;
    let listed = entries
        .iter()
        .any(|e| ours.is(e) && e.is_fuse() && e.mount_point == mount_point);
    let answers =
        query_control_xattr(&sys::fd_path(root.as_fd())).is_ok_and(|socket| socket == control);
    if listed && answers {
        Ok(ours)
    } else {
        Err(format!(
            "the mount on top of {shown} right after mounting is not this daemon's \
             (mount id {id}); another mount raced it"
        ))
    }
}

/// Detaches the mount on top at `mount_point` if its root answers the control xattr with
/// `control` (so it is this daemon's): the cleanup when `identify` failed after mounting.
/// Returns whether it did.
pub fn detach_if_serving(mount_point: &Path, control: &Path) -> bool {
    let Ok(root) = sys::open_dir_path(mount_point, true) else {
        return false;
    };
    let answers =
        query_control_xattr(&sys::fd_path(root.as_fd())).is_ok_and(|socket| socket == control);
    answers && detach(root, mount_point).is_ok()
}

/// What `unmount` did.
#[derive(Debug, PartialEq, Eq)]
pub enum Unmounted {
    /// Our mount was detached (from where it was then); open files under it finish
    /// undisturbed.
    Detached(PathBuf),
    /// Our mount was no longer there (unmounted or detached from outside): nothing done.
    Gone,
    /// Another mount is stacked on ours, so ours cannot be reached by any path: left alone,
    /// with the id of the mount on top.
    Covered(u64),
}

/// Takes down exactly the mount `ours`, once, and only if it is still there: never the path,
/// which may by now hold a bind mount below ours or another daemon's mount.
///
/// # Errors
/// Our mount is there and on top but could not be detached.
pub fn unmount(ours: &OurMount) -> Result<Unmounted, String> {
    let entries = read_entries()?;
    let Some(entry) = entries.iter().find(|e| ours.is(e)) else {
        return Ok(Unmounted::Gone);
    };
    // It may have been moved: look where it is now.
    let place = entry.mount_point.clone();
    if let Some(top) = top_at(&entries, &place).filter(|top| top.id != entry.id) {
        return Ok(Unmounted::Covered(top.id));
    }
    let shown = place.display();
    // The descriptor pins what we act on: only if it is our mount's root do we detach, and
    // the detach goes through it, so a mount stacked meanwhile is never touched.
    let root = match sys::open_dir_path(&place, true) {
        Ok(fd) => fd,
        // A dead connection still opens (no FUSE request is made), so this is rare.
        Err(e) => return Err(format!("cannot open our mount at {shown}: {e}")),
    };
    match sys::mount_id(root.as_fd()) {
        Ok((id, dev)) if id == ours.id && dev == ours.dev => {}
        Ok((id, _)) => return Ok(Unmounted::Covered(id)),
        Err(e) => return Err(format!("cannot identify the mount at {shown}: {e}")),
    }
    detach(root, &place).map(|()| Unmounted::Detached(place))
}

/// Detaches the mount whose root `root` is (lazily: open files finish, new lookups no longer
/// reach it). `place` is where it is mounted, for the unprivileged fallback only.
///
/// # Errors
/// Neither `umount2` nor `fusermount3` could detach it.
pub fn detach(root: std::os::fd::OwnedFd, place: &Path) -> Result<(), String> {
    let err = match sys::detach_mount_of(root.as_fd()) {
        Ok(()) => return Ok(()),
        Err(e) => e,
    };
    drop(root);
    if err.raw_os_error() != Some(libc::EPERM) {
        return Err(format!("cannot detach {}: {err}", place.display()));
    }
    // Without root only the setuid helper can unmount; it takes a path, which was checked
    // to have our mount on top just now.
    let status = std::process::Command::new("fusermount3")
        .arg("-uz")
        .arg("--")
        .arg(place)
        .status();
    match status {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => Err(format!("fusermount3 -uz {} failed: {s}", place.display())),
        Err(e) => Err(format!("cannot run fusermount3: {e}")),
    }
}

/// Whether the mount on top at `path` (resolved now, following no final symlink) is a
/// switchfs, and if so which one (its mountinfo entry). Compares mounts, not spellings: a
/// bind of a switchfs mount or a path with another spelling is found too.
///
/// # Errors
/// `path` cannot be opened or identified (ENOTCONN: a dead FUSE mount).
pub fn switchfs_on(path: &Path) -> io::Result<Option<MountEntry>> {
    let fd = sys::open_dir_path(path, true)?;
    let (id, dev) = sys::mount_id(fd.as_fd())?;
    let entries = read_entries().map_err(io::Error::other)?;
    Ok(entries
        .into_iter()
        .find(|e| e.id == id && e.dev == dev && e.is_switchfs()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
36 35 98:0 / /mnt1 rw,noatime master:1 - ext3 /dev/root rw,errors=continue
90 25 0:52 / /var/www/cur\\040rent rw,nosuid,nodev - fuse switchfs:/srv/rel\\040eases rw,user_id=0
91 25 0:53 / /other rw - fuse.bindfs x rw
92 25 0:54 / /fake rw - ext4 switchfs:/x rw
93 90 0:55 / /var/www/cur\\040rent rw - fuse switchfs:/srv/other rw,user_id=0
broken line
";

    #[test]
    fn finds_switchfs_mounts_in_mountinfo() {
        assert_eq!(
            parse_mountinfo(SAMPLE),
            vec![
                PathBuf::from("/var/www/cur rent"),
                PathBuf::from("/var/www/cur rent")
            ]
        );
        assert_eq!(unescape_mountinfo("a\\134b"), "a\\b");
        assert_eq!(unescape_mountinfo("trailing\\"), "trailing\\");
    }

    #[test]
    fn parses_mount_ids_parents_and_devices() {
        let entries = parse_entries(SAMPLE);
        assert_eq!(entries.len(), 5, "the broken line is skipped");
        let m = &entries[1];
        assert_eq!((m.id, m.parent), (90, 25));
        assert_eq!(m.dev, libc::makedev(0, 52));
        assert_eq!(m.source, "switchfs:/srv/rel eases");
        assert!(m.is_switchfs());
        assert!(!entries[2].is_switchfs(), "another FUSE filesystem");
        assert!(!entries[3].is_switchfs(), "not FUSE, whatever its source");
        assert_eq!(entries[0].dev, libc::makedev(98, 0));
    }

    #[test]
    fn the_top_of_a_stack_is_the_mount_nothing_is_stacked_on() {
        let entries = parse_entries(SAMPLE);
        let top = top_at(&entries, Path::new("/var/www/cur rent")).map(|m| m.id);
        assert_eq!(top, Some(93));
        assert_eq!(top_at(&entries, Path::new("/nowhere")), None);
        let ours = OurMount {
            id: 90,
            dev: libc::makedev(0, 52),
            mount_point: PathBuf::from("/var/www/cur rent"),
            fsname: "switchfs:/srv/rel eases".into(),
        };
        assert!(ours.is(&entries[1]));
        let reused = OurMount {
            dev: libc::makedev(0, 99),
            ..ours
        };
        assert!(!reused.is(&entries[1]), "a reused id on another connection");
    }
}
