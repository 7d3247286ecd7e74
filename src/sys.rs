//! Thin, safe wrappers over the few syscalls the core needs that std does not offer on
//! `O_PATH` descriptors. Every function returns `io::Result` with the OS error intact, so the
//! errno the kernel finally sees is the one the host filesystem gave.

use std::ffi::{CStr, CString, OsStr, OsString};
use std::fs::File;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};

fn cstring(bytes: &[u8]) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Opens `name` (one component) relative to `dir` as an `O_PATH` descriptor without following
/// a final symlink, refusing any resolution that would leave `dir` (`openat2` with
/// `RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS`). Falls back to `openat(O_NOFOLLOW)` on kernels
/// before 5.6, which is still confined because callers pass only validated single components.
pub fn open_path_beneath(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<OwnedFd> {
    let c_name = cstring(name.as_bytes())?;
    let flags = libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    // SAFETY: open_how is a plain C struct; zeroed is a valid value and we set the fields used.
    let mut how: libc::open_how = unsafe { MaybeUninit::zeroed().assume_init() };
    how.flags = flags as u64;
    how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: the pointers are valid for the duration of the call and the size matches.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir.as_raw_fd(),
            c_name.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd >= 0 {
        // SAFETY: the kernel just returned this descriptor to us; nobody else owns it.
        return Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) });
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() != Some(libc::ENOSYS) {
        return Err(err);
    }
    // SAFETY: valid C string and directory descriptor.
    let fd = check(unsafe { libc::openat(dir.as_raw_fd(), c_name.as_ptr(), flags) })?;
    // SAFETY: as above, a fresh descriptor owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Opens `path` (relative, plain components only) under `root` one component at a time
/// with `open_path_beneath`, so no symlink is followed anywhere on the way.
pub fn open_path_walk(root: BorrowedFd<'_>, path: &std::path::Path) -> io::Result<OwnedFd> {
    let mut current: Option<OwnedFd> = None;
    for part in path.iter() {
        let dir = match &current {
            None => root,
            Some(fd) => std::os::fd::AsFd::as_fd(fd),
        };
        current = Some(open_path_beneath(dir, part)?);
    }
    current.ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))
}

/// `pread` until `buf` is full or end of file; returns the bytes read.
pub fn pread_full(fd: BorrowedFd<'_>, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        // SAFETY: the pointer and length describe the unfilled tail of buf.
        let n = unsafe {
            libc::pread(
                fd.as_raw_fd(),
                buf[filled..].as_mut_ptr().cast(),
                buf.len() - filled,
                (offset + filled as u64) as libc::off_t,
            )
        };
        match n {
            0 => break,
            n if n > 0 => filled += n as usize,
            _ => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
    Ok(filled)
}

/// Opens a directory by absolute or relative path as an `O_PATH | O_DIRECTORY` descriptor.
/// With `nofollow`, a symlink in the final component is refused (ELOOP/ENOTDIR).
pub fn open_dir_path(path: &std::path::Path, nofollow: bool) -> io::Result<OwnedFd> {
    let c_path = cstring(path.as_os_str().as_bytes())?;
    let mut flags = libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC;
    if nofollow {
        flags |= libc::O_NOFOLLOW;
    }
    // SAFETY: valid C string.
    let fd = check(unsafe { libc::open(c_path.as_ptr(), flags) })?;
    // SAFETY: fresh descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// What makes a host file the same file over time: device, inode number, and its birth
/// time (or, where the filesystem has none, its change time). An inode number alone is not
/// enough once our descriptor is closed: the filesystem may give it to a new file.
pub fn identity(fd: BorrowedFd<'_>) -> io::Result<(u64, u64, i64, u32)> {
    let mut stx = MaybeUninit::<libc::statx>::zeroed();
    // SAFETY: the empty path with AT_EMPTY_PATH refers to fd itself; stx is writable.
    check(unsafe {
        libc::statx(
            fd.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
            libc::STATX_INO | libc::STATX_BTIME | libc::STATX_CTIME,
            stx.as_mut_ptr(),
        )
    })?;
    // SAFETY: filled in by the successful call.
    let stx = unsafe { stx.assume_init() };
    let time = if stx.stx_mask & libc::STATX_BTIME != 0 {
        stx.stx_btime
    } else {
        stx.stx_ctime
    };
    Ok((
        libc::makedev(stx.stx_dev_major, stx.stx_dev_minor),
        stx.stx_ino,
        time.tv_sec,
        time.tv_nsec,
    ))
}

/// `lstat` of what `fd` refers to (works on `O_PATH` descriptors, symlinks included).
pub fn fstat(fd: BorrowedFd<'_>) -> io::Result<libc::stat> {
    let mut st = MaybeUninit::<libc::stat>::zeroed();
    // SAFETY: the empty path with AT_EMPTY_PATH refers to fd itself; st is writable.
    check(unsafe {
        libc::fstatat(
            fd.as_raw_fd(),
            c"".as_ptr(),
            st.as_mut_ptr(),
            libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    // SAFETY: fstatat succeeded, so the struct is filled in.
    Ok(unsafe { st.assume_init() })
}

fn proc_fd_path(fd: BorrowedFd<'_>) -> CString {
    // A decimal number never contains NUL, so this cannot fail.
    CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap_or_default()
}

/// Opens the regular file or directory behind an `O_PATH` descriptor for reading. Callers
/// must only pass descriptors of regular files and directories: a FIFO would block a worker.
pub fn reopen(fd: BorrowedFd<'_>, flags: libc::c_int) -> io::Result<File> {
    let path = proc_fd_path(fd);
    // SAFETY: valid C string; the flags never include O_CREAT, so no mode is needed.
    let raw = check(unsafe { libc::open(path.as_ptr(), flags | libc::O_CLOEXEC) })?;
    // SAFETY: fresh descriptor.
    Ok(unsafe { File::from_raw_fd(raw) })
}

/// The target of the symlink behind an `O_PATH | O_NOFOLLOW` descriptor, verbatim.
pub fn readlink(fd: BorrowedFd<'_>) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; libc::PATH_MAX as usize];
    // SAFETY: buf is writable for its length; the empty path refers to fd itself.
    let n = unsafe {
        libc::readlinkat(
            fd.as_raw_fd(),
            c"".as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(n as usize);
    Ok(buf)
}

/// One entry of a directory as the host filesystem lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawDirEntry {
    pub name: OsString,
    /// `DT_*` type from the host; `DT_UNKNOWN` on filesystems that do not fill it.
    pub d_type: u8,
    pub d_ino: u64,
}

/// Every entry of the directory behind `fd` except `.` and `..`, in the host's order.
pub fn read_dir(fd: BorrowedFd<'_>) -> io::Result<Vec<RawDirEntry>> {
    let file = reopen(fd, libc::O_RDONLY | libc::O_DIRECTORY)?;
    let raw = std::os::fd::IntoRawFd::into_raw_fd(file);
    // SAFETY: raw is an open directory descriptor; fdopendir takes ownership of it on success.
    let dir = unsafe { libc::fdopendir(raw) };
    if dir.is_null() {
        let err = io::Error::last_os_error();
        // SAFETY: fdopendir failed, so we still own raw.
        unsafe { libc::close(raw) };
        return Err(err);
    }
    let mut entries = Vec::new();
    let result = loop {
        // SAFETY: errno is thread local; reset it to tell the end of the stream from an error.
        unsafe { *libc::__errno_location() = 0 };
        // SAFETY: dir is a valid DIR* until closedir below.
        let ent = unsafe { libc::readdir64(dir) };
        if ent.is_null() {
            let err = io::Error::last_os_error();
            break if err.raw_os_error().unwrap_or(0) == 0 {
                Ok(())
            } else {
                Err(err)
            };
        }
        // SAFETY: readdir64 returned a valid entry whose d_name is NUL-terminated.
        let (name, d_type, d_ino) = unsafe {
            let ent = &*ent;
            let name = std::ffi::CStr::from_ptr(ent.d_name.as_ptr()).to_bytes();
            (name.to_vec(), ent.d_type, ent.d_ino)
        };
        if name == b"." || name == b".." {
            continue;
        }
        entries.push(RawDirEntry {
            name: OsString::from_vec(name),
            d_type,
            d_ino,
        });
    };
    // SAFETY: dir came from fdopendir and is closed exactly once.
    unsafe { libc::closedir(dir) };
    result.map(|()| entries)
}

/// `statvfs` of the filesystem holding `fd`.
pub fn statvfs(fd: BorrowedFd<'_>) -> io::Result<libc::statvfs> {
    let mut st = MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: st is writable; fstatvfs accepts O_PATH descriptors since Linux 3.12.
    check(unsafe { libc::fstatvfs(fd.as_raw_fd(), st.as_mut_ptr()) })?;
    // SAFETY: filled in by the successful call.
    Ok(unsafe { st.assume_init() })
}

/// Value of extended attribute `name` of the file or directory behind `fd`. With `size == 0`
/// only the length is asked for, as getxattr(2) does.
pub fn get_xattr(fd: BorrowedFd<'_>, name: &OsStr, size: usize) -> io::Result<XattrAnswer> {
    getxattr_of(&proc_fd_path(fd), name.as_bytes(), size)
}

/// Value (at most `size` bytes) of extended attribute `name` of `path`, as getxattr(2) on a
/// path: for asking a mount's root over its mount point, not for files the daemon serves.
pub fn get_xattr_of_path(path: &std::path::Path, name: &str, size: usize) -> io::Result<Vec<u8>> {
    let c_path = cstring(path.as_os_str().as_bytes())?;
    match getxattr_of(&c_path, name.as_bytes(), size)? {
        XattrAnswer::Data(d) => Ok(d),
        XattrAnswer::Size(_) => Ok(Vec::new()),
    }
}

/// getxattr(2) of `name` on `path` into a buffer of `size` bytes (only the length with 0).
fn getxattr_of(path: &CStr, name: &[u8], size: usize) -> io::Result<XattrAnswer> {
    let c_name = cstring(name)?;
    let mut buf = vec![0u8; size];
    // SAFETY: valid C strings; buf is writable for `size` bytes (null with size 0 is allowed).
    let n = unsafe {
        libc::getxattr(
            path.as_ptr(),
            c_name.as_ptr(),
            buf.as_mut_ptr().cast(),
            size,
        )
    };
    xattr_answer(n, buf, size)
}

/// Names of the extended attributes of the file or directory behind `fd`, NUL separated.
pub fn list_xattr(fd: BorrowedFd<'_>, size: usize) -> io::Result<XattrAnswer> {
    let path = proc_fd_path(fd);
    let mut buf = vec![0u8; size];
    // SAFETY: valid C string; buf is writable for `size` bytes.
    let n = unsafe { libc::listxattr(path.as_ptr(), buf.as_mut_ptr().cast(), size) };
    xattr_answer(n, buf, size)
}

/// Whether the directory or file behind `fd` has a POSIX access ACL.
pub fn has_access_acl(fd: BorrowedFd<'_>) -> bool {
    let path = proc_fd_path(fd);
    // SAFETY: valid C strings; a null buffer with size 0 only asks for the length.
    let n = unsafe {
        libc::getxattr(
            path.as_ptr(),
            c"system.posix_acl_access".as_ptr(),
            std::ptr::null_mut(),
            0,
        )
    };
    n > 0
}

/// What an xattr call answered: the length only (when asked with size 0) or the bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum XattrAnswer {
    Size(u32),
    Data(Vec<u8>),
}

fn xattr_answer(n: isize, mut buf: Vec<u8>, size: usize) -> io::Result<XattrAnswer> {
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    if size == 0 {
        return Ok(XattrAnswer::Size(u32::try_from(n).unwrap_or(u32::MAX)));
    }
    buf.truncate(n as usize);
    Ok(XattrAnswer::Data(buf))
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit: every live inode holds one `O_PATH`
/// descriptor, so a large tree needs many. Returns the new soft limit.
pub fn raise_nofile_limit() -> io::Result<u64> {
    let mut lim = MaybeUninit::<libc::rlimit>::zeroed();
    // SAFETY: lim is writable.
    check(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, lim.as_mut_ptr()) })?;
    // SAFETY: filled by getrlimit.
    let mut lim = unsafe { lim.assume_init() };
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: lim is a valid rlimit.
        check(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) })?;
    }
    Ok(lim.rlim_cur)
}

// ---- Control socket: who is connected, and whether they hung up (control::server) ----

/// The credentials of a Unix socket's peer, as the kernel recorded them at `connect`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerCred {
    pub pid: i32,
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups (`SO_PEERGROUPS`); empty on kernels before 4.13.
    pub groups: Vec<u32>,
}

/// `SO_PEERGROUPS` (Linux 4.13+; the same value on every architecture but mips/sparc/parisc,
/// which the libc crate does not export for Linux yet).
const SO_PEERGROUPS: libc::c_int = 59;

/// Who is on the other end of the Unix stream socket `fd`.
pub fn peer_cred(fd: BorrowedFd<'_>) -> io::Result<PeerCred> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: cred and len are valid for writing and sized for SO_PEERCRED.
    check(unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    })?;
    Ok(PeerCred {
        pid: cred.pid,
        uid: cred.uid,
        gid: cred.gid,
        groups: peer_groups(fd).unwrap_or_default(),
    })
}

fn peer_groups(fd: BorrowedFd<'_>) -> io::Result<Vec<u32>> {
    let mut groups = vec![0 as libc::gid_t; 64];
    loop {
        let mut len = (groups.len() * std::mem::size_of::<libc::gid_t>()) as libc::socklen_t;
        // SAFETY: groups is writable for len bytes.
        let ret = unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        let n = len as usize / std::mem::size_of::<libc::gid_t>();
        if ret == 0 {
            groups.truncate(n);
            return Ok(groups);
        }
        let err = io::Error::last_os_error();
        // ERANGE: the kernel wrote the size it needs into len.
        if err.raw_os_error() != Some(libc::ERANGE) || n <= groups.len() {
            return Err(err);
        }
        groups.resize(n, 0);
    }
}

/// Waits up to `timeout` for the peer of socket `fd` to close its end completely, without
/// reading anything. Polls for no event at all: POLLHUP and POLLERR are always reported,
/// while POLLIN/POLLRDHUP would also fire for a client that merely half-closed after its
/// request (as `socat` does) and still waits for the answer.
pub fn wait_hangup(fd: BorrowedFd<'_>, timeout: std::time::Duration) -> io::Result<bool> {
    let revents = poll_one(fd, 0, timeout)?;
    Ok(revents & (libc::POLLHUP | libc::POLLERR) != 0)
}

/// Waits up to `timeout` for `fd` to become readable (a listener: a client is waiting).
pub fn wait_readable(fd: BorrowedFd<'_>, timeout: std::time::Duration) -> io::Result<bool> {
    Ok(poll_one(fd, libc::POLLIN, timeout)? != 0)
}

/// `poll(2)` of one descriptor for `events`: the events that happened, 0 on timeout or when
/// a signal interrupted the wait.
fn poll_one(
    fd: BorrowedFd<'_>,
    events: libc::c_short,
    timeout: std::time::Duration,
) -> io::Result<libc::c_short> {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events,
        revents: 0,
    };
    let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: one valid pollfd.
    let n = unsafe { libc::poll(&mut pfd, 1, ms) };
    if n < 0 {
        let err = io::Error::last_os_error();
        return if err.kind() == io::ErrorKind::Interrupted {
            Ok(0)
        } else {
            Err(err)
        };
    }
    Ok(if n == 0 { 0 } else { pfd.revents })
}

// Mount identity and detaching one specific mount (src/mounts.rs).

/// `/proc/self/fd/N` for `fd`: a path that resolves to exactly what `fd` refers to (the
/// kernel follows this magic link to the descriptor's mount and dentry, whatever is
/// mounted on the original path since).
pub fn fd_path(fd: BorrowedFd<'_>) -> std::path::PathBuf {
    std::path::PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// What `statx_nosync` reports: enough to tell a mount, a file and its type apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoSyncStat {
    pub mode: u32,
    pub dev: u64,
    pub ino: u64,
    pub mnt_id: u64,
}

/// Type, device, inode and mount id of what `fd` refers to (never following a symlink).
/// `AT_STATX_DONT_SYNC` keeps a FUSE mount from asking its daemon, which may be dead (a
/// killed daemon's mount) or this very process before it serves.
pub fn statx_nosync(fd: BorrowedFd<'_>) -> io::Result<NoSyncStat> {
    let mut stx = MaybeUninit::<libc::statx>::zeroed();
    // SAFETY: the empty path with AT_EMPTY_PATH refers to fd itself; stx is writable.
    check(unsafe {
        libc::statx(
            fd.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW | libc::AT_STATX_DONT_SYNC,
            libc::STATX_TYPE | libc::STATX_INO | libc::STATX_MNT_ID,
            stx.as_mut_ptr(),
        )
    })?;
    // SAFETY: filled in by the successful call.
    let stx = unsafe { stx.assume_init() };
    if stx.stx_mask & libc::STATX_MNT_ID == 0 {
        // Kernels before 5.8: no way to name a mount without trusting a path.
        return Err(io::Error::from_raw_os_error(libc::ENOSYS));
    }
    Ok(NoSyncStat {
        mode: u32::from(stx.stx_mode),
        dev: libc::makedev(stx.stx_dev_major, stx.stx_dev_minor),
        ino: stx.stx_ino,
        mnt_id: stx.stx_mnt_id,
    })
}

/// Mount id and `st_dev` of what `fd` refers to (see `statx_nosync`).
pub fn mount_id(fd: BorrowedFd<'_>) -> io::Result<(u64, u64)> {
    statx_nosync(fd).map(|st| (st.mnt_id, st.dev))
}

/// Lazily detaches the mount whose root `fd` refers to (`umount2(MNT_DETACH)` through
/// `/proc/self/fd/N`, which reaches that mount even if another is stacked on the path).
/// EINVAL: `fd` is not a mount root.
pub fn detach_mount_of(fd: BorrowedFd<'_>) -> io::Result<()> {
    let path = proc_fd_path(fd);
    // SAFETY: valid C string.
    check(unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) }).map(|_| ())
}

/// The hard `RLIMIT_NOFILE`.
pub fn nofile_hard_limit() -> io::Result<u64> {
    let mut lim = MaybeUninit::<libc::rlimit>::zeroed();
    // SAFETY: lim is writable.
    check(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, lim.as_mut_ptr()) })?;
    // SAFETY: filled by getrlimit.
    Ok(unsafe { lim.assume_init() }.rlim_max)
}

// ---- Descriptor-relative creation, deletion and locking, for prune and the state file. ----
// Everything here acts on one name relative to a directory descriptor and never follows a
// symlink in it, so a path another user can swap is never what root acts through.

fn owned(fd: libc::c_int) -> OwnedFd {
    // SAFETY: callers pass a descriptor the kernel just returned to us; nobody else owns it.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Opens directory `name` under `dir` for reading (so it can be listed and fsynced), refusing
/// a symlink (`ELOOP`) or anything that is not a directory (`ENOTDIR`).
pub fn open_subdir(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<OwnedFd> {
    let c_name = cstring(name.as_bytes())?;
    let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    // SAFETY: valid C string and directory descriptor.
    check(unsafe { libc::openat(dir.as_raw_fd(), c_name.as_ptr(), flags) }).map(owned)
}

/// Opens the directory at `path` for reading, refusing a symlink as its last component.
pub fn open_dir_readable(path: &std::path::Path) -> io::Result<OwnedFd> {
    let c_path = cstring(path.as_os_str().as_bytes())?;
    let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    // SAFETY: valid C string.
    check(unsafe { libc::open(c_path.as_ptr(), flags) }).map(owned)
}

/// Opens file `name` under `dir` with `flags` (plus `O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC`:
/// a symlink is refused and a FIFO cannot block us); `O_CREAT` creates it with mode 0600.
pub fn open_file_at(dir: BorrowedFd<'_>, name: &OsStr, flags: libc::c_int) -> io::Result<File> {
    let c_name = cstring(name.as_bytes())?;
    let flags = flags | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC;
    // SAFETY: valid C string and directory descriptor; the mode is only read with O_CREAT.
    let fd = check(unsafe { libc::openat(dir.as_raw_fd(), c_name.as_ptr(), flags, 0o600) })?;
    Ok(File::from(owned(fd)))
}

/// `lstat` of `name` under `dir`.
pub fn stat_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<libc::stat> {
    let c_name = cstring(name.as_bytes())?;
    let mut st = MaybeUninit::<libc::stat>::zeroed();
    // SAFETY: valid C string and directory descriptor; st is writable.
    check(unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            c_name.as_ptr(),
            st.as_mut_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    // SAFETY: fstatat succeeded, so the struct is filled in.
    Ok(unsafe { st.assume_init() })
}

/// Removes the entry `name` of `dir` (`AT_REMOVEDIR` with `dir_entry`). Unlinking a name
/// never follows it: a symlink is removed, not its target.
pub fn unlink_at(dir: BorrowedFd<'_>, name: &OsStr, dir_entry: bool) -> io::Result<()> {
    let c_name = cstring(name.as_bytes())?;
    let flags = if dir_entry { libc::AT_REMOVEDIR } else { 0 };
    // SAFETY: valid C string and directory descriptor.
    check(unsafe { libc::unlinkat(dir.as_raw_fd(), c_name.as_ptr(), flags) }).map(drop)
}

/// Renames `from` to `to`, both in `dir`, replacing `to` (a symlink at `to` is replaced, not
/// followed).
pub fn rename_at(dir: BorrowedFd<'_>, from: &OsStr, to: &OsStr) -> io::Result<()> {
    let (c_from, c_to) = (cstring(from.as_bytes())?, cstring(to.as_bytes())?);
    let d = dir.as_raw_fd();
    // SAFETY: valid C strings and directory descriptor.
    check(unsafe { libc::renameat(d, c_from.as_ptr(), d, c_to.as_ptr()) }).map(drop)
}

/// The device and mount id of what `fd` refers to: two directories on the same device can
/// still be different mounts (a bind mount), which only the mount id tells apart.
pub fn device_and_mount(fd: BorrowedFd<'_>) -> io::Result<(u64, u64)> {
    let mut stx = MaybeUninit::<libc::statx>::zeroed();
    // SAFETY: the empty path with AT_EMPTY_PATH refers to fd itself; stx is writable.
    check(unsafe {
        libc::statx(
            fd.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
            libc::STATX_INO | libc::STATX_MNT_ID,
            stx.as_mut_ptr(),
        )
    })?;
    // SAFETY: filled in by the successful call.
    let stx = unsafe { stx.assume_init() };
    Ok((
        libc::makedev(stx.stx_dev_major, stx.stx_dev_minor),
        stx.stx_mnt_id,
    ))
}

/// Takes an exclusive `flock` on `fd` without waiting: `Ok(false)` when another open file
/// description holds it.
pub fn try_lock_exclusive(fd: BorrowedFd<'_>) -> io::Result<bool> {
    // SAFETY: plain syscall on a descriptor we hold.
    match check(unsafe { libc::flock(fd.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) }) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::EWOULDBLOCK) => Ok(false),
        Err(e) => Err(e),
    }
}

/// 64 unpredictable bits from the kernel, for names another user must not guess.
pub fn random_u64() -> io::Result<u64> {
    let mut buf = [0u8; 8];
    let mut filled = 0;
    while filled < buf.len() {
        // SAFETY: the pointer and length describe the unfilled tail of buf.
        let n =
            unsafe { libc::getrandom(buf[filled..].as_mut_ptr().cast(), buf.len() - filled, 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        } else {
            filled += n as usize;
        }
    }
    Ok(u64::from_ne_bytes(buf))
}

/// `fsync` of a descriptor opened for reading (a directory, after a rename in it).
pub fn fsync(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: plain syscall on a descriptor we hold.
    check(unsafe { libc::fsync(fd.as_raw_fd()) }).map(drop)
}

/// Whether the directory behind `fd` has no entry but `.` and `..`; reads only as far as the
/// first entry, so a huge directory costs no more than a small one.
pub fn dir_is_empty(fd: BorrowedFd<'_>) -> io::Result<bool> {
    let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
    Ok(std::fs::read_dir(path)?.next().transpose()?.is_none())
}

/// The effective user id we run as.
pub fn euid() -> u32 {
    // SAFETY: geteuid cannot fail and touches no memory of ours.
    unsafe { libc::geteuid() }
}

// Process start-up for the mount helper (`mount.fuse.switchfs`).

/// Makes the child of `cmd` call `setsid()` before it runs, so the daemon a mount helper
/// starts has no controlling terminal and no tie to the session of mount(8) or a login shell
/// that ends after the mount.
pub fn new_session_on_spawn(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: only setsid, which is async-signal-safe, runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

// Connecting to a PHP-FPM pool's Unix socket within a deadline (src/fastcgi.rs).

/// A new `AF_UNIX` stream socket, non-blocking and close-on-exec.
pub fn unix_stream_socket_nonblocking() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the descriptor returned is owned by nobody else.
    let fd = check(unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    })?;
    // SAFETY: fd was just returned by socket(2) and is not owned elsewhere.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// One `connect(2)` of the non-blocking socket `fd` to the Unix socket at `path`:
/// `Ok(true)` connected, `Ok(false)` the listener's backlog is full (`EAGAIN`; a Unix
/// socket has no pending connect to poll for, so the caller tries again until its
/// deadline).
pub fn unix_connect_nonblocking(fd: BorrowedFd<'_>, path: &std::path::Path) -> io::Result<bool> {
    // SAFETY: sockaddr_un is plain old data; all zeroes is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_os_str().as_bytes();
    if bytes.is_empty() || bytes.contains(&0) || bytes.len() >= addr.sun_path.len() {
        return Err(io::Error::from_raw_os_error(libc::ENAMETOOLONG));
    }
    for (dst, &src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = src as libc::c_char;
    }
    let len = (std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1) as libc::socklen_t;
    // SAFETY: addr is a valid sockaddr_un of at least len bytes, NUL-terminated path.
    let ret = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_un).cast(),
            len,
        )
    };
    if ret == 0 {
        return Ok(true);
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EAGAIN | libc::EINTR) => Ok(false),
        _ => Err(err),
    }
}

/// The Unix socket at `path` as an `O_PATH` descriptor, the final component not followed:
/// a symlink (or anything but a socket) there is refused. Connecting through
/// [`fd_path`] of it then reaches exactly that socket, whoever renames entries meanwhile.
pub fn open_socket_nofollow(path: &std::path::Path) -> io::Result<OwnedFd> {
    let c_path = cstring(path.as_os_str().as_bytes())?;
    // SAFETY: valid C string.
    let fd = check(unsafe {
        libc::open(
            c_path.as_ptr(),
            libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    })?;
    // SAFETY: fresh descriptor.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    if fstat(std::os::fd::AsFd::as_fd(&fd))?.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a socket (a symbolic link there is refused)",
        ));
    }
    Ok(fd)
}

// The daemon's own life (see `keeper`): descriptors handed between processes.

/// A connected pair of `SOCK_SEQPACKET` Unix sockets (close-on-exec): message boundaries are
/// kept, so one handover is one message.
pub fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: fds has room for the two descriptors socketpair writes.
    check(unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    })?;
    // SAFETY: two fresh descriptors owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Sends `data` with `fds` attached (`SCM_RIGHTS`) on the Unix socket `sock`, or to `to`
/// (an unbound datagram socket sending to systemd's notify socket).
pub fn send_with_fds(
    sock: BorrowedFd<'_>,
    to: Option<&std::os::unix::net::SocketAddr>,
    data: &[u8],
    fds: &[BorrowedFd<'_>],
) -> io::Result<()> {
    let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let fd_bytes = std::mem::size_of_val(raw.as_slice());
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(fd_bytes as u32) } as usize;
    let mut control = vec![0u64; space.div_ceil(8).max(1)];
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    // SAFETY: an all-zero msghdr is valid; the fields set below point at live buffers.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    let addr = to.map(sockaddr_un_of);
    if let Some((sa, len)) = &addr {
        msg.msg_name = (sa as *const libc::sockaddr_un).cast_mut().cast();
        msg.msg_namelen = *len;
    }
    if !raw.is_empty() {
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space;
        // SAFETY: msg_control holds `space` bytes, room for one header and the descriptors.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(fd_bytes as u32) as usize;
            std::ptr::copy_nonoverlapping(
                raw.as_ptr().cast::<u8>(),
                libc::CMSG_DATA(cmsg),
                fd_bytes,
            );
        }
    }
    // SAFETY: msg and everything it points to live until the call returns.
    let n = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The kernel's address structure for a Unix socket address (path or abstract name).
fn sockaddr_un_of(addr: &std::os::unix::net::SocketAddr) -> (libc::sockaddr_un, libc::socklen_t) {
    use std::os::linux::net::SocketAddrExt;
    // SAFETY: an all-zero sockaddr_un is valid.
    let mut sa: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    sa.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let (bytes, skip): (&[u8], usize) = if let Some(name) = addr.as_abstract_name() {
        (name, 1)
    } else if let Some(path) = addr.as_pathname() {
        (path.as_os_str().as_bytes(), 0)
    } else {
        (&[], 0)
    };
    let n = bytes.len().min(sa.sun_path.len() - 1 - skip);
    for (i, b) in bytes[..n].iter().enumerate() {
        sa.sun_path[i + skip] = *b as libc::c_char;
    }
    let base = std::mem::size_of::<libc::sa_family_t>();
    let len = if skip == 1 {
        base + 1 + n
    } else {
        base + n + 1
    };
    (sa, len as libc::socklen_t)
}

/// Receives one message and the descriptors attached to it (at most 8) without waiting;
/// `Ok(None)` when nothing is queued, `Ok(Some((vec![], [])))` at end of stream.
pub fn recv_with_fds(sock: BorrowedFd<'_>) -> io::Result<Option<(Vec<u8>, Vec<OwnedFd>)>> {
    let mut data = vec![0u8; 4096];
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE((8 * std::mem::size_of::<RawFd>()) as u32) } as usize;
    let mut control = vec![0u64; space.div_ceil(8)];
    let mut iov = libc::iovec {
        iov_base: data.as_mut_ptr().cast(),
        iov_len: data.len(),
    };
    // SAFETY: an all-zero msghdr is valid; the fields set below point at live buffers.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space;
    // SAFETY: msg and its buffers live until the call returns.
    let n = unsafe {
        libc::recvmsg(
            sock.as_raw_fd(),
            &mut msg,
            libc::MSG_DONTWAIT | libc::MSG_CMSG_CLOEXEC,
        )
    };
    if n < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::WouldBlock {
            return Ok(None);
        }
        return Err(e);
    }
    data.truncate(n as usize);
    let mut fds = Vec::new();
    // SAFETY: walking the control messages the kernel filled in; SCM_RIGHTS data holds
    // descriptors now ours, each taken into an OwnedFd exactly once.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let header = libc::CMSG_LEN(0) as usize;
                let count = ((*cmsg).cmsg_len as usize - header) / std::mem::size_of::<RawFd>();
                let first = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                for i in 0..count {
                    fds.push(OwnedFd::from_raw_fd(first.add(i).read_unaligned()));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    Ok(Some((data, fds)))
}

/// An anonymous memory file (`memfd_create`, close-on-exec): lives as long as a process
/// holds it, never on disk.
pub fn memfd(name: &str) -> io::Result<OwnedFd> {
    let c = cstring(name.as_bytes())?;
    // SAFETY: valid C string; plain syscall.
    let fd = check(unsafe { libc::memfd_create(c.as_ptr(), libc::MFD_CLOEXEC) })?;
    // SAFETY: a fresh descriptor owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Sets or clears close-on-exec on `fd`: cleared only on descriptors handed to the next
/// process of the daemon, set again by that process at once.
pub fn set_cloexec(fd: BorrowedFd<'_>, on: bool) -> io::Result<()> {
    let flags = if on { libc::FD_CLOEXEC } else { 0 };
    // SAFETY: plain fcntl on a descriptor we hold.
    check(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, flags) }).map(drop)
}

/// Takes ownership of descriptor number `raw` handed to this process across `exec`, after
/// checking it is open; sets close-on-exec on it again so no hook inherits it.
pub fn adopt_inherited_fd(raw: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: F_GETFD only reads the descriptor's flags.
    check(unsafe { libc::fcntl(raw, libc::F_GETFD) })?;
    // SAFETY: the descriptor was handed to this process alone (named in its environment by
    // the process that exec'd it); nothing else in this process owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    set_cloexec(std::os::fd::AsFd::as_fd(&fd), true)?;
    Ok(fd)
}

/// Makes the child of `cmd` receive SIGKILL when the process that started it dies, so a
/// killed keeper never leaves a server behind serving a mount nobody supervises.
pub fn die_with_parent_on_spawn(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: getpid cannot fail and touches no memory of ours.
    let parent = unsafe { libc::getpid() };
    // SAFETY: only prctl and getppid, both async-signal-safe, run between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) < 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::getppid() != parent {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
}

/// Waits for any child without blocking: `Some((pid, status))` for one that ended.
pub fn reap_child() -> Option<(i32, i32)> {
    let mut status = 0;
    // SAFETY: status is a valid out pointer.
    let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
    (pid > 0).then_some((pid, status))
}

/// Sends `sig` to process `pid`.
pub fn signal(pid: i32, sig: i32) -> io::Result<()> {
    // SAFETY: plain syscall; the caller names a process of its own.
    check(unsafe { libc::kill(pid, sig) }).map(drop)
}

/// A pipe (both ends close-on-exec): one thread wakes another that polls the read end.
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: fds has room for the two descriptors pipe2 writes.
    check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: two fresh descriptors owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Waits up to `timeout` for `fd` or `wake` to become readable; returns whether `fd` is.
pub fn wait_readable_or(
    fd: BorrowedFd<'_>,
    wake: BorrowedFd<'_>,
    timeout: std::time::Duration,
) -> io::Result<bool> {
    let mut pfds = [fd, wake].map(|f| libc::pollfd {
        fd: f.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    });
    let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: two valid pollfds.
    let n = unsafe { libc::poll(pfds.as_mut_ptr(), 2, ms) };
    if n < 0 {
        let err = io::Error::last_os_error();
        return if err.kind() == io::ErrorKind::Interrupted {
            Ok(false)
        } else {
            Err(err)
        };
    }
    Ok(pfds[0].revents != 0)
}

/// Returns the allocator's free memory to the kernel (`malloc_trim(0)`), after a burst of
/// large temporary allocations.
pub fn release_free_memory() {
    // SAFETY: malloc_trim only walks glibc's own free lists; it takes no pointer of ours.
    unsafe { libc::malloc_trim(0) };
}

/// Blocks `signals` in the calling thread (and the threads it starts later) and returns the
/// set, for `sigwait`.
pub fn block_signals(signals: &[libc::c_int]) -> libc::sigset_t {
    // SAFETY: sigset manipulation on a local, zero-initialised set; pthread_sigmask only reads
    // it and accepts a null old-mask pointer.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in signals {
            libc::sigaddset(&mut set, *sig);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

// ---- Identity, groups, signals, files and the FUSE device for the rest of the crate ----
// (moved here from attr, caller, control/server, core, daemon, hooks, invalidate, mtimes,
// paths and procscan, so this file is the whole unsafe boundary).

/// Whether we run as root (effective uid 0).
pub fn is_root() -> bool {
    euid() == 0
}

/// The real user and group ids we run as.
pub fn real_ids() -> (u32, u32) {
    // SAFETY: getuid and getgid cannot fail and touch no memory of ours.
    unsafe { (libc::getuid(), libc::getgid()) }
}

/// An all-zero `stat`, for tests that build one by hand.
pub fn zeroed_stat() -> libc::stat {
    // SAFETY: stat is plain data, for which all zeroes is a valid value.
    unsafe { std::mem::zeroed() }
}

/// Runs `f` with the process's file creation mask set to `mask`, then restores it. The mask
/// is process-wide: call it while no other thread creates files (at start-up).
pub fn with_umask<T>(mask: libc::mode_t, f: impl FnOnce() -> T) -> T {
    // SAFETY: umask only changes this process's file creation mask.
    let old = unsafe { libc::umask(mask) };
    let result = f();
    // SAFETY: as above, restoring the previous mask.
    unsafe { libc::umask(old) };
    result
}

/// Gives the file at `path` to group `gid`, leaving its owner (follows a symlink: for a path
/// only we can write, such as the control socket we just bound).
pub fn chown_group(path: &std::path::Path, gid: u32) -> io::Result<()> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: valid C string; uid -1 leaves the owner unchanged.
    check(unsafe { libc::chown(c.as_ptr(), u32::MAX, gid) }).map(drop)
}

/// Waits up to `timeout` for one of the blocked signals in `set`: `Some(signal)`, or `None`
/// on timeout or interruption.
pub fn wait_signal(set: &libc::sigset_t, timeout: std::time::Duration) -> Option<i32> {
    let tick = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: set and tick are initialised; a null info pointer is allowed.
    let sig = unsafe { libc::sigtimedwait(set, std::ptr::null_mut(), &tick) };
    (sig > 0).then_some(sig)
}

/// A `getgr*_r` call into a buffer that grows until the entry fits: the entry, `None` when
/// there is no such group.
fn group_entry(
    call: impl Fn(&mut libc::group, &mut [u8], &mut *mut libc::group) -> libc::c_int,
) -> io::Result<Option<(u32, String)>> {
    let mut buf = vec![0u8; 1024];
    loop {
        // SAFETY: group is plain data, for which all zeroes is a valid value.
        let mut gr: libc::group = unsafe { std::mem::zeroed() };
        let mut found: *mut libc::group = std::ptr::null_mut();
        match call(&mut gr, &mut buf, &mut found) {
            0 if found.is_null() => return Ok(None),
            0 => {
                // SAFETY: on success gr_name points to a NUL-terminated string in `buf`,
                // which outlives this read.
                let name = unsafe { CStr::from_ptr(gr.gr_name) };
                return Ok(Some((gr.gr_gid, name.to_string_lossy().into_owned())));
            }
            libc::ERANGE if buf.len() < 1 << 20 => buf.resize(buf.len() * 2, 0),
            e => return Err(io::Error::from_raw_os_error(e)),
        }
    }
}

/// The name of group `gid`; `None` when it has none.
pub fn group_name(gid: u32) -> io::Result<Option<String>> {
    group_entry(|gr, buf, found| {
        // SAFETY: every pointer is valid for the call; buf's length is passed with it.
        unsafe { libc::getgrgid_r(gid, gr, buf.as_mut_ptr().cast(), buf.len(), found) }
    })
    .map(|e| e.map(|(_, name)| name))
}

/// The id of the group named `name`; `None` when there is none.
pub fn group_id_of(name: &str) -> io::Result<Option<u32>> {
    let c = CString::new(name).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    group_entry(|gr, buf, found| {
        // SAFETY: valid C string; every pointer is valid for the call; buf's length is
        // passed with it.
        unsafe { libc::getgrnam_r(c.as_ptr(), gr, buf.as_mut_ptr().cast(), buf.len(), found) }
    })
    .map(|e| e.map(|(gid, _)| gid))
}

/// `(st_dev, st_ino)` of `path` from cached attributes only: `AT_STATX_DONT_SYNC` keeps a
/// FUSE mount from being asked (a dead or busy mount must not stall a /proc scan).
pub fn dev_ino_nosync(path: &std::path::Path) -> Option<(u64, u64)> {
    let c = CString::new(path.as_os_str().as_bytes()).ok()?;
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

/// Writes one whole message to `fd` in one `write(2)` (a FUSE notification on /dev/fuse,
/// which the kernel takes whole or refuses).
pub fn write_message(fd: BorrowedFd<'_>, msg: &[u8]) -> io::Result<()> {
    // SAFETY: msg is a valid buffer for its length; the descriptor is borrowed for the call.
    let n = unsafe { libc::write(fd.as_raw_fd(), msg.as_ptr().cast(), msg.len()) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

// ==== Bind-mode data plane (src/bind/): the new mount API, mount ids, the namespace probe ====
// libc 0.2 has the syscall numbers but not these flags; each is copied from the kernel header
// named beside it.

/// `OPEN_TREE_CLONE` (include/uapi/linux/mount.h): clone the tree into a detached mount.
const OPEN_TREE_CLONE: libc::c_uint = 1;
/// `MOVE_MOUNT_F_EMPTY_PATH` (include/uapi/linux/mount.h): the source is the descriptor.
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x0000_0004;
/// `MOVE_MOUNT_T_EMPTY_PATH` (include/uapi/linux/mount.h): the target is the descriptor.
const MOVE_MOUNT_T_EMPTY_PATH: libc::c_uint = 0x0000_0040;
/// `MOVE_MOUNT_BENEATH` (include/uapi/linux/mount.h, Linux 6.5): attach under the top mount.
const MOVE_MOUNT_BENEATH: libc::c_uint = 0x0000_0200;
/// `MOUNT_ATTR_RDONLY`, `_NOSUID`, `_NODEV`, `_NOEXEC` (include/uapi/linux/mount.h).
const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_NOSUID: u64 = 0x2;
const MOUNT_ATTR_NODEV: u64 = 0x4;
const MOUNT_ATTR_NOEXEC: u64 = 0x8;

/// `struct mount_attr` (include/uapi/linux/mount.h), `MOUNT_ATTR_SIZE_VER0` = 32 bytes.
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

fn owned_fd(ret: libc::c_long) -> io::Result<OwnedFd> {
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor to us; nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(ret as RawFd) })
}

/// A detached copy of the mount of the directory `dir` refers to, rooted at that directory
/// (`open_tree(dir, "", OPEN_TREE_CLONE | AT_EMPTY_PATH)`), not recursive: mounts below it
/// are not copied (see `bind::mount` for why).
pub fn open_tree_clone(dir: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    let flags =
        OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint | libc::AT_EMPTY_PATH as libc::c_uint;
    // SAFETY: a valid descriptor, a static empty C string, and flags; no pointer is kept.
    owned_fd(unsafe { libc::syscall(libc::SYS_open_tree, dir.as_raw_fd(), c"".as_ptr(), flags) })
}

/// `open_tree_clone` of the directory at `path` (resolved normally): for the namespace probe
/// only, which acts in a private namespace on a tmpfs of its own.
pub fn open_tree_clone_path(path: &std::path::Path) -> io::Result<OwnedFd> {
    let c = cstring(path.as_os_str().as_bytes())?;
    let flags = OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint;
    // SAFETY: a valid C string and flags; no pointer is kept after the call.
    owned_fd(unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, c.as_ptr(), flags) })
}

/// Makes the detached mount `mnt` read-only, nosuid, nodev (and noexec when asked) with
/// `mount_setattr`, before anyone can see it.
pub fn set_mount_read_only(mnt: BorrowedFd<'_>, noexec: bool) -> io::Result<()> {
    let mut set = MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV;
    if noexec {
        set |= MOUNT_ATTR_NOEXEC;
    }
    let attr = MountAttr {
        attr_set: set,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: attr lives across the call and its size is passed; the path is a static "".
    let ret = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            mnt.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH as libc::c_uint,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Attaches the detached mount `mnt` at what `target` refers to (`move_mount` with both
/// empty paths, so no path is resolved). `beneath`: under the top mount there
/// (`MOVE_MOUNT_BENEATH`); `target` must then be a mount's root.
pub fn attach_mount(mnt: BorrowedFd<'_>, target: BorrowedFd<'_>, beneath: bool) -> io::Result<()> {
    let mut flags = MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH;
    if beneath {
        flags |= MOVE_MOUNT_BENEATH;
    }
    // SAFETY: two valid descriptors, static empty C strings, flags.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            mnt.as_raw_fd(),
            c"".as_ptr(),
            target.as_raw_fd(),
            c"".as_ptr(),
            flags,
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// `move_mount(mnt, "", AT_FDCWD, path, MOVE_MOUNT_BENEATH)`: for the namespace probe only.
pub fn attach_mount_beneath_path(mnt: BorrowedFd<'_>, path: &std::path::Path) -> io::Result<()> {
    let c = cstring(path.as_os_str().as_bytes())?;
    let flags = MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_BENEATH;
    // SAFETY: a valid descriptor, valid C strings, flags.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            mnt.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            c.as_ptr(),
            flags,
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Gives the calling thread its own mount namespace (and, as the kernel requires for that,
/// its own cwd/root), with every mount in it private so nothing done there propagates back.
/// The namespace goes away with the thread. For the start-up probe only.
pub fn enter_private_mount_namespace() -> io::Result<()> {
    // SAFETY: plain syscalls without pointers (mount's are null or static C strings).
    check(unsafe { libc::unshare(libc::CLONE_NEWNS | libc::CLONE_FS) })?;
    // SAFETY: as above.
    check(unsafe {
        libc::mount(
            std::ptr::null(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        )
    })
    .map(drop)
}

/// Mounts a small tmpfs at `path` (classic mount(2)): for the probe's private namespace only.
pub fn mount_scratch_tmpfs(path: &std::path::Path) -> io::Result<()> {
    let c = cstring(path.as_os_str().as_bytes())?;
    // SAFETY: valid C strings; the data string is static.
    check(unsafe {
        libc::mount(
            c"switchfs-probe".as_ptr(),
            c.as_ptr(),
            c"tmpfs".as_ptr(),
            0,
            c"size=4k".as_ptr().cast(),
        )
    })
    .map(drop)
}

/// The running kernel's release string (`uname -r`).
pub fn kernel_release() -> String {
    let mut uts = MaybeUninit::<libc::utsname>::zeroed();
    // SAFETY: uts is writable; uname fills NUL-terminated fields.
    if unsafe { libc::uname(uts.as_mut_ptr()) } != 0 {
        return "unknown".to_string();
    }
    // SAFETY: filled by the successful call; release is NUL-terminated within its array.
    let uts = unsafe { uts.assume_init() };
    // SAFETY: as above, a NUL-terminated array of the struct we own.
    let release = unsafe { CStr::from_ptr(uts.release.as_ptr()) };
    release.to_string_lossy().into_owned()
}

/// What a mount-aware statx reports: the mount id (the 64-bit never-reused one where the
/// kernel has `STATX_MNT_ID_UNIQUE`, 6.8+, else the classic one), device, inode, type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MountStat {
    pub mnt_id: u64,
    pub unique: bool,
    pub dev: u64,
    pub ino: u64,
    pub mode: u32,
}

fn statx_mount_raw(dirfd: RawFd, path: &CStr, flags: libc::c_int) -> io::Result<MountStat> {
    let mut stx = MaybeUninit::<libc::statx>::zeroed();
    let mask = libc::STATX_TYPE | libc::STATX_INO | libc::STATX_MNT_ID_UNIQUE;
    // SAFETY: valid descriptor or AT_FDCWD, a valid C string, a writable statx buffer.
    check(unsafe { libc::statx(dirfd, path.as_ptr(), flags, mask, stx.as_mut_ptr()) })?;
    // SAFETY: filled in by the successful call.
    let mut stx = unsafe { stx.assume_init() };
    let unique = stx.stx_mask & libc::STATX_MNT_ID_UNIQUE != 0;
    if !unique {
        if stx.stx_mask & libc::STATX_MNT_ID == 0 {
            // Before 6.8 the kernel answers the classic id to a unique-id request only if
            // asked for it, so ask again for exactly that.
            let mut again = MaybeUninit::<libc::statx>::zeroed();
            let mask = libc::STATX_TYPE | libc::STATX_INO | libc::STATX_MNT_ID;
            // SAFETY: as above.
            check(unsafe { libc::statx(dirfd, path.as_ptr(), flags, mask, again.as_mut_ptr()) })?;
            // SAFETY: filled in by the successful call.
            stx = unsafe { again.assume_init() };
        }
        if stx.stx_mask & libc::STATX_MNT_ID == 0 {
            return Err(io::Error::from_raw_os_error(libc::ENOSYS));
        }
    }
    Ok(MountStat {
        mnt_id: stx.stx_mnt_id,
        unique,
        dev: libc::makedev(stx.stx_dev_major, stx.stx_dev_minor),
        ino: stx.stx_ino,
        mode: u32::from(stx.stx_mode),
    })
}

/// `MountStat` of what `fd` refers to itself (never following a symlink).
pub fn mount_stat(fd: BorrowedFd<'_>) -> io::Result<MountStat> {
    let flags = libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW | libc::AT_STATX_DONT_SYNC;
    statx_mount_raw(fd.as_raw_fd(), c"", flags)
}

/// `MountStat` of what a /proc magic link (`/proc/PID/cwd`, `fd/N`, `map_files/R`) leads to:
/// the link is followed, which for these links is the kernel handing over the object the
/// process holds, not a path anyone can swap. `AT_STATX_DONT_SYNC`: never ask a FUSE server.
pub fn mount_stat_of_proc_link(path: &std::path::Path) -> io::Result<MountStat> {
    let c = cstring(path.as_os_str().as_bytes())?;
    statx_mount_raw(libc::AT_FDCWD, &c, libc::AT_STATX_DONT_SYNC)
}

/// The classic (reusable, 32-bit) mount id of what `fd` refers to: the id
/// /proc/PID/mountinfo lists.
pub fn classic_mount_id(fd: BorrowedFd<'_>) -> io::Result<u64> {
    statx_nosync(fd).map(|st| st.mnt_id)
}

/// Opens the directory `name` (one component) under `dir` as `O_PATH` without following a
/// symlink; the walk crosses into whatever is mounted on it, so the result is the root of
/// the top mount there. ENOTDIR/ELOOP for a symlink.
pub fn open_dir_nofollow_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<OwnedFd> {
    let c = cstring(name.as_bytes())?;
    let flags = libc::O_PATH | libc::O_NOFOLLOW | libc::O_DIRECTORY | libc::O_CLOEXEC;
    // SAFETY: a valid directory descriptor and C string.
    let fd = check(unsafe { libc::openat(dir.as_raw_fd(), c.as_ptr(), flags) })?;
    // SAFETY: a fresh descriptor owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Opens `/` as `O_PATH`, the start of a component-by-component walk.
pub fn open_root_dir() -> io::Result<OwnedFd> {
    // SAFETY: a static C string.
    let fd = check(unsafe {
        libc::open(
            c"/".as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    })?;
    // SAFETY: a fresh descriptor owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The classic mount id (the one /proc/PID/mountinfo lists) of what a /proc magic link leads
/// to, for processes in other mount namespaces, whose mounts we only know from their
/// mountinfo. See `mount_stat_of_proc_link`.
pub fn classic_mount_id_of_proc_link(path: &std::path::Path) -> io::Result<u64> {
    let c = cstring(path.as_os_str().as_bytes())?;
    let mut stx = MaybeUninit::<libc::statx>::zeroed();
    // SAFETY: a valid C string and a writable statx buffer.
    check(unsafe {
        libc::statx(
            libc::AT_FDCWD,
            c.as_ptr(),
            libc::AT_STATX_DONT_SYNC,
            libc::STATX_MNT_ID,
            stx.as_mut_ptr(),
        )
    })?;
    // SAFETY: filled in by the successful call.
    let stx = unsafe { stx.assume_init() };
    if stx.stx_mask & libc::STATX_MNT_ID == 0 {
        return Err(io::Error::from_raw_os_error(libc::ENOSYS));
    }
    Ok(stx.stx_mnt_id)
}
