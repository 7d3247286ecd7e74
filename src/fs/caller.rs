//! Who sent a FUSE request, and the daemon's own permission check on the directories that
//! follow the active release (the root and the portals).
//!
//! Why the daemon checks at all when the mount uses `default_permissions`: the kernel checks
//! a lookup against the attributes it has cached for the *parent* inode. The root and the
//! portals keep one inode across switches, so for a moment after a switch the kernel may
//! check search permission against the old release's directory (say `private/` 0755) and
//! then send a lookup that the daemon answers from the new release's `private/` (0700). No
//! invalidation order closes that window: the check and the lookup are two steps. So a lookup
//! or listing under the root or a portal is checked again here, against the very directory
//! it is answered from. Every other inode is bound to one release, so the kernel's check is
//! always made against the directory that is read, as on the host.

use std::os::fd::BorrowedFd;

use crate::errno::os_error;
use crate::sys;

/// The credentials of the process that sent a request (its filesystem uid and gid).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Caller {
    pub uid: u32,
    pub gid: u32,
    /// 0 when the kernel sent the request on its own behalf.
    pub pid: u32,
}

impl Caller {
    /// Root, for requests the daemon makes for itself and for tests.
    pub(crate) const ROOT: Caller = Caller {
        uid: 0,
        gid: 0,
        pid: 0,
    };

    pub(crate) fn is_root(&self) -> bool {
        self.uid == 0
    }

    /// Whether this caller may access a directory with `st` for `mask` (`libc::R_OK`,
    /// `libc::X_OK`), by its mode bits as the kernel checks them.
    ///
    /// # Errors
    /// EACCES when not allowed.
    pub(crate) fn check_dir(
        &self,
        dir: BorrowedFd<'_>,
        st: &libc::stat,
        mask: i32,
    ) -> std::io::Result<()> {
        // Root may read and search any directory (CAP_DAC_READ_SEARCH).
        if self.is_root() {
            return Ok(());
        }
        let bits = if self.uid == st.st_uid {
            (st.st_mode >> 6) & 7
        } else if self.in_group(st.st_gid, || other_bits(st) != group_bits(st)) {
            group_bits(st)
        } else {
            other_bits(st)
        };
        let want = mask as u32 & 7;
        if bits & want == want {
            return Ok(());
        }
        // A directory with a POSIX ACL may grant what the mode bits do not (the group bits
        // are then the ACL's mask); its ACL is the kernel's to check (`--acl`), so defer.
        if sys::has_access_acl(dir) {
            return Ok(());
        }
        Err(os_error(libc::EACCES))
    }

    /// Whether `gid` is this caller's group or one of its supplementary groups. The latter
    /// are only read from /proc (a few microseconds) when `matters()` says the answer changes
    /// the outcome.
    fn in_group(&self, gid: u32, matters: impl FnOnce() -> bool) -> bool {
        if self.gid == gid {
            return true;
        }
        if !matters() || self.pid == 0 {
            return false;
        }
        supplementary_groups(self.pid).contains(&gid)
    }
}

fn group_bits(st: &libc::stat) -> u32 {
    (st.st_mode >> 3) & 7
}

fn other_bits(st: &libc::stat) -> u32 {
    st.st_mode & 7
}

/// The supplementary groups of process `pid` ("Groups:" in /proc/PID/status); empty when the
/// process is gone, which can only make the check stricter.
fn supplementary_groups(pid: u32) -> Vec<u32> {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return Vec::new();
    };
    parse_groups(&status)
}

fn parse_groups(status: &str) -> Vec<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .map(|rest| {
            rest.split_whitespace()
                .filter_map(|g| g.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    fn stat_with(mode: u32, uid: u32, gid: u32) -> libc::stat {
        let mut st = crate::sys::zeroed_stat();
        st.st_mode = libc::S_IFDIR | mode;
        st.st_uid = uid;
        st.st_gid = gid;
        st
    }

    #[test]
    fn checks_owner_group_and_other_bits() {
        let dir = std::fs::File::open("/").unwrap();
        let fd = dir.as_fd();
        let user = Caller {
            uid: 1000,
            gid: 1000,
            pid: 0,
        };
        let x = libc::X_OK;
        assert!(user.check_dir(fd, &stat_with(0o700, 1000, 0), x).is_ok());
        assert!(user.check_dir(fd, &stat_with(0o700, 0, 0), x).is_err());
        assert!(user.check_dir(fd, &stat_with(0o750, 0, 1000), x).is_ok());
        assert!(user.check_dir(fd, &stat_with(0o705, 0, 1000), x).is_err());
        assert!(user.check_dir(fd, &stat_with(0o701, 0, 0), x).is_ok());
        assert!(
            user.check_dir(fd, &stat_with(0o701, 0, 0), libc::R_OK)
                .is_err()
        );
        assert!(
            Caller::ROOT
                .check_dir(fd, &stat_with(0o000, 5, 5), x)
                .is_ok()
        );
    }

    #[test]
    fn reads_supplementary_groups() {
        let status = "Name:\tx\nGroups:\t4 24 1000 \nNSpid:\t1\n";
        assert_eq!(parse_groups(status), vec![4, 24, 1000]);
        assert_eq!(parse_groups("Groups:\n"), Vec::<u32>::new());
        assert!(supplementary_groups(std::process::id()).len() < 65_536);
    }
}
