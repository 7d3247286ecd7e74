//! Thin, safe wrappers over the few syscalls the core needs that std does not offer on
//! `O_PATH` descriptors. Every function returns `io::Result` with the OS error intact, so the
//! errno the kernel finally sees is the one the host filesystem gave.

use std::ffi::{CString, OsStr, OsString};
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
    let path = proc_fd_path(fd);
    let c_name = cstring(name.as_bytes())?;
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

// --- Files the daemon keeps next to its state file (the mtime registry's log) --------------
// Created and replaced relative to a directory descriptor, never following a symlink, so a
// path another user could swap is never written through.

/// Opens directory `path` for `*at` calls and `fsync`, refusing a symlink as its last
/// component (`O_NOFOLLOW`).
pub fn open_dir_nofollow(path: &std::path::Path) -> io::Result<OwnedFd> {
    let c_path = cstring(path.as_os_str().as_bytes())?;
    let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    // SAFETY: valid C string; no O_CREAT, so no mode.
    let fd = check(unsafe { libc::open(c_path.as_ptr(), flags) })?;
    // SAFETY: fresh descriptor owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Opens `name` (one component) in `dir` with `flags | O_NOFOLLOW | O_CLOEXEC`; `mode` is
/// used only with `O_CREAT`. Pass `O_CREAT | O_EXCL` to create a file that did not exist.
pub fn open_file_at(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    flags: libc::c_int,
    mode: libc::mode_t,
) -> io::Result<File> {
    let c_name = cstring(name.as_bytes())?;
    let flags = flags | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    // SAFETY: valid C string and directory descriptor; the mode is a plain integer.
    let fd = check(unsafe {
        libc::openat(
            dir.as_raw_fd(),
            c_name.as_ptr(),
            flags,
            libc::c_uint::from(mode),
        )
    })?;
    // SAFETY: fresh descriptor owned by nobody else.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// Renames `from` to `to`, both single components in `dir` (a rename never follows links).
pub fn rename_at(dir: BorrowedFd<'_>, from: &OsStr, to: &OsStr) -> io::Result<()> {
    let (c_from, c_to) = (cstring(from.as_bytes())?, cstring(to.as_bytes())?);
    // SAFETY: valid C strings and directory descriptor.
    check(unsafe {
        libc::renameat(
            dir.as_raw_fd(),
            c_from.as_ptr(),
            dir.as_raw_fd(),
            c_to.as_ptr(),
        )
    })?;
    Ok(())
}

/// Removes the file `name` (one component) from `dir` (an unlink never follows links).
pub fn unlink_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    let c_name = cstring(name.as_bytes())?;
    // SAFETY: valid C string and directory descriptor.
    check(unsafe { libc::unlinkat(dir.as_raw_fd(), c_name.as_ptr(), 0) })?;
    Ok(())
}
