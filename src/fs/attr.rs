//! Conversion from the host's `stat` to the attributes FUSE reports.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{FileAttr, FileType, INodeNo};

/// The FUSE file type of a `st_mode`, `None` for kinds Linux does not have.
pub(crate) fn kind_of_mode(mode: libc::mode_t) -> Option<FileType> {
    Some(match mode & libc::S_IFMT {
        libc::S_IFREG => FileType::RegularFile,
        libc::S_IFDIR => FileType::Directory,
        libc::S_IFLNK => FileType::Symlink,
        libc::S_IFIFO => FileType::NamedPipe,
        libc::S_IFSOCK => FileType::Socket,
        libc::S_IFCHR => FileType::CharDevice,
        libc::S_IFBLK => FileType::BlockDevice,
        _ => return None,
    })
}

/// The FUSE file type for a `DT_*` directory entry type; unknown types read as regular files,
/// which only affects the `d_type` hint a plain readdir gives.
pub(crate) fn kind_of_dtype(d_type: u8) -> FileType {
    match d_type {
        libc::DT_DIR => FileType::Directory,
        libc::DT_LNK => FileType::Symlink,
        libc::DT_FIFO => FileType::NamedPipe,
        libc::DT_SOCK => FileType::Socket,
        libc::DT_CHR => FileType::CharDevice,
        libc::DT_BLK => FileType::BlockDevice,
        _ => FileType::RegularFile,
    }
}

fn time(secs: i64, nsecs: i64) -> SystemTime {
    let nsecs = u32::try_from(nsecs).unwrap_or(0).min(999_999_999);
    if secs >= 0 {
        UNIX_EPOCH + Duration::new(secs as u64, nsecs)
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs()) + Duration::from_nanos(nsecs.into())
    }
}

/// The attributes of `st`, reported under FUSE inode number `ino`.
pub(crate) fn attr_of_stat(ino: u64, st: &libc::stat) -> FileAttr {
    let mtime = time(st.st_mtime, st.st_mtime_nsec);
    FileAttr {
        ino: INodeNo(ino),
        size: st.st_size as u64,
        blocks: st.st_blocks as u64,
        atime: time(st.st_atime, st.st_atime_nsec),
        mtime,
        ctime: time(st.st_ctime, st.st_ctime_nsec),
        crtime: mtime,
        kind: kind_of_mode(st.st_mode).unwrap_or(FileType::RegularFile),
        perm: (st.st_mode & 0o7777) as u16,
        nlink: st.st_nlink as u32,
        uid: st.st_uid,
        gid: st.st_gid,
        rdev: st.st_rdev as u32,
        blksize: st.st_blksize as u32,
        flags: 0,
    }
}

/// The root shown while no release is active: an empty directory nobody can write to.
pub(crate) fn empty_root_attr(ino: u64, uid: u32, gid: u32, since: SystemTime) -> FileAttr {
    FileAttr {
        ino: INodeNo(ino),
        size: 0,
        blocks: 0,
        atime: since,
        mtime: since,
        ctime: since,
        crtime: since,
        kind: FileType::Directory,
        perm: 0o555,
        nlink: 2,
        uid,
        gid,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_carried_over() {
        let mut st = crate::sys::zeroed_stat();
        st.st_mode = libc::S_IFREG | 0o640;
        st.st_size = 1234;
        st.st_mtime = 1_700_000_000;
        st.st_mtime_nsec = 5;
        st.st_uid = 33;
        st.st_nlink = 2;
        let a = attr_of_stat(42, &st);
        assert_eq!(a.ino, INodeNo(42));
        assert_eq!(a.kind, FileType::RegularFile);
        assert_eq!(a.perm, 0o640);
        assert_eq!(a.size, 1234);
        assert_eq!(a.uid, 33);
        assert_eq!(a.nlink, 2);
        assert_eq!(a.mtime, UNIX_EPOCH + Duration::new(1_700_000_000, 5));
    }

    #[test]
    fn negative_times_do_not_panic() {
        assert!(time(-5, 0) < UNIX_EPOCH);
        assert_eq!(time(0, -1), UNIX_EPOCH);
    }
}
