//! Which processes use files of the mount, found the way `fuser -m` and `lsof` do: open
//! descriptors, working and root directories, and memory maps in /proc.
//!
//! Why not FUSE's own bookkeeping: when the kernel opens files by itself (no-open mode) the
//! daemon never sees opens, and the kernel keeps unused inodes cached (and so unforgotten)
//! until memory runs short, so "inodes not yet forgotten" would call a long-finished release
//! in use for days. /proc tells what processes actually hold, right now.

use std::collections::HashMap;
use std::ffi::CString;
use std::fs;
use std::mem::MaybeUninit;
use std::path::Path;

/// Counts of references per FUSE inode number of one mount.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ProcRefs {
    /// Open file descriptors.
    pub open_files: HashMap<u64, usize>,
    /// Working and root directories.
    pub dirs: HashMap<u64, usize>,
    /// Memory-mapped files.
    pub maps: HashMap<u64, usize>,
}

/// `(st_dev, st_ino)` of `path` from cached attributes only: `AT_STATX_DONT_SYNC` keeps a
/// FUSE mount from being asked (a dead or busy mount must not stall the scan).
pub fn dev_ino(path: &Path) -> Option<(u64, u64)> {
    let c = CString::new(path.as_os_str().as_encoded_bytes()).ok()?;
    let mut stx = MaybeUninit::<libc::statx>::zeroed();
    // SAFETY: valid C string and writable statx buffer.
    let ret = unsafe {
        libc::statx(
            libc::AT_FDCWD,
            c.as_ptr(),
            libc::AT_STATX_DONT_SYNC,
            libc::STATX_INO,
            stx.as_mut_ptr(),
        )
    };
    if ret != 0 {
        return None;
    }
    // SAFETY: filled in by the successful call.
    let stx = unsafe { stx.assume_init() };
    Some((
        libc::makedev(stx.stx_dev_major, stx.stx_dev_minor),
        stx.stx_ino,
    ))
}

/// Scans every process this user may inspect for references to device `dev`.
pub fn scan(dev: u64) -> ProcRefs {
    let mut refs = ProcRefs::default();
    let Ok(procs) = fs::read_dir("/proc") else {
        return refs;
    };
    let me = std::process::id().to_string();
    for entry in procs.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|s| s.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        if pid == me {
            continue; // the daemon's own descriptors point at the host, never the mount
        }
        let base = entry.path();
        for link in ["cwd", "root"] {
            if let Some((d, ino)) = dev_ino(&base.join(link))
                && d == dev
            {
                *refs.dirs.entry(ino).or_insert(0) += 1;
            }
        }
        if let Ok(fds) = fs::read_dir(base.join("fd")) {
            for fd in fds.flatten() {
                if let Some((d, ino)) = dev_ino(&fd.path())
                    && d == dev
                {
                    *refs.open_files.entry(ino).or_insert(0) += 1;
                }
            }
        }
        if let Ok(maps) = fs::read_to_string(base.join("maps")) {
            for (ino, _) in parse_maps(&maps).into_iter().filter(|(_, d)| *d == dev) {
                *refs.maps.entry(ino).or_insert(0) += 1;
            }
        }
    }
    refs
}

/// How processes reference one host file or directory (see [`scan_host`]).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct HostUse {
    /// Working and root directories.
    pub dirs: usize,
    /// Open file descriptors.
    pub open_files: usize,
    /// Memory-mapped files.
    pub maps: usize,
}

impl HostUse {
    pub fn add(&mut self, other: HostUse) {
        self.dirs += other.dirs;
        self.open_files += other.open_files;
        self.maps += other.maps;
    }

    pub fn any(&self) -> bool {
        self.dirs + self.open_files + self.maps > 0
    }
}

/// Every file and directory on host device `dev` that a process (other than us) holds, by
/// `(st_dev, st_ino)`: what uses a release through its real path rather than the mount
/// (`cd releases/1/public`, a file of it held open, a library of it mapped). Identities, not
/// the paths /proc shows: a path in /proc is informational (it may be stale or ambiguous),
/// while the device and inode are what the descriptor really holds. The caller walks the
/// release to find which of them are in it.
pub fn scan_host(dev: u64) -> HashMap<(u64, u64), HostUse> {
    let mut refs: HashMap<(u64, u64), HostUse> = HashMap::new();
    let Ok(procs) = fs::read_dir("/proc") else {
        return refs;
    };
    let me = std::process::id().to_string();
    let mut note = |id: Option<(u64, u64)>, add: HostUse| {
        if let Some(id) = id.filter(|(d, _)| *d == dev) {
            refs.entry(id).or_default().add(add);
        }
    };
    for entry in procs.flatten() {
        let name = entry.file_name();
        if name
            .to_str()
            .is_none_or(|s| !s.bytes().all(|b| b.is_ascii_digit()) || s == me)
        {
            continue; // not a process, or the daemon itself (it pins every release it serves)
        }
        let base = entry.path();
        let dir = HostUse {
            dirs: 1,
            ..HostUse::default()
        };
        note(dev_ino(&base.join("cwd")), dir);
        note(dev_ino(&base.join("root")), dir);
        if let Ok(fds) = fs::read_dir(base.join("fd")) {
            for fd in fds.flatten() {
                let file = HostUse {
                    open_files: 1,
                    ..HostUse::default()
                };
                note(dev_ino(&fd.path()), file);
            }
        }
        if let Ok(maps) = fs::read_to_string(base.join("maps")) {
            for (ino, d) in parse_maps(&maps) {
                note(
                    Some((d, ino)),
                    HostUse {
                        maps: 1,
                        ..HostUse::default()
                    },
                );
            }
        }
    }
    refs
}

/// `(inode, device)` of every file-backed mapping in a /proc/PID/maps text, one per file.
fn parse_maps(text: &str) -> Vec<(u64, u64)> {
    let mut seen = Vec::new();
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        let (Some(_), Some(_), Some(_), Some(dev), Some(ino)) = (
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
        ) else {
            continue;
        };
        let Some((major, minor)) = dev.split_once(':') else {
            continue;
        };
        let (Ok(major), Ok(minor), Ok(ino)) = (
            u32::from_str_radix(major, 16),
            u32::from_str_radix(minor, 16),
            ino.parse::<u64>(),
        ) else {
            continue;
        };
        let entry = (ino, libc::makedev(major, minor));
        if ino != 0 && !seen.contains(&entry) {
            seen.push(entry);
        }
    }
    seen
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_file_backed_mappings_once_each() {
        let text = "\
55d0c0a00000-55d0c0a02000 r--p 00000000 00:2a 17     /mnt/app/lib.so
55d0c0a02000-55d0c0a04000 r-xp 00002000 00:2a 17     /mnt/app/lib.so
7ffd1c5e1000-7ffd1c602000 rw-p 00000000 00:00 0      [stack]
7f00 r--p 0 fd:01 99 /usr/lib/libc.so.6
garbage
";
        assert_eq!(
            parse_maps(text),
            vec![(17, libc::makedev(0, 0x2a)), (99, libc::makedev(0xfd, 1))]
        );
    }

    #[test]
    fn finds_our_own_working_directory_from_a_child() {
        let dir = crate::testutil::TempDir::new("procscan");
        let (dev, ino) = dev_ino(dir.path()).unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .current_dir(dir.path())
            .spawn()
            .unwrap();
        let refs = scan(dev);
        let _ = child.kill();
        let _ = child.wait();
        assert!(refs.dirs.get(&ino).copied().unwrap_or(0) >= 1, "{refs:?}");
    }
}
