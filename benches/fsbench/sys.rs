//! The few raw syscalls the workloads time, on C paths prepared in advance so that the
//! measurement is the syscall and not Rust's path handling. Every unsafe block is here.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// `lstat(p)`: whether it succeeded (the stat itself is discarded).
pub(crate) fn lstat(p: &CString, st: &mut libc::stat) -> bool {
    // SAFETY: `p` is NUL-terminated and `st` is a valid, writable stat buffer.
    unsafe { libc::lstat(p.as_ptr(), st) == 0 }
}

/// A zeroed stat buffer for `lstat`.
pub(crate) fn stat_buf() -> libc::stat {
    // SAFETY: `libc::stat` is plain data; all-zero bytes are a valid value.
    unsafe { std::mem::zeroed() }
}

/// `open(p, O_RDONLY | O_CLOEXEC)`; the descriptor is closed on drop.
pub(crate) fn open_read(p: &CString) -> io::Result<OwnedFd> {
    // SAFETY: `p` is NUL-terminated; the flags ask for no file creation.
    let fd = unsafe { libc::open(p.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just opened and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// One `read(2)` into `buf`: the byte count, 0 at end of file.
pub(crate) fn read(fd: &OwnedFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes; the descriptor is open.
    let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

/// The size of the open file.
pub(crate) fn fstat_size(fd: &OwnedFd) -> io::Result<usize> {
    let mut st = stat_buf();
    // SAFETY: the descriptor is open and `st` is a valid, writable stat buffer.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st.st_size as usize)
}

/// A private read-only mapping of a whole file, unmapped on drop.
pub(crate) struct Mapping {
    addr: *mut libc::c_void,
    len: usize,
}

impl Mapping {
    pub(crate) fn new(fd: &OwnedFd, len: usize) -> io::Result<Mapping> {
        // SAFETY: a fresh mapping chosen by the kernel (null hint) of an open descriptor;
        // nothing else in the process is affected.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_PRIVATE,
                fd.as_raw_fd(),
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mapping { addr, len })
    }

    /// Loads one byte of every page: page faults and readahead are what differ between
    /// filesystems.
    pub(crate) fn touch_pages(&self) -> u64 {
        let base = self.addr as *const u8;
        let mut sum = 0u64;
        let mut off = 0;
        while off < self.len {
            // SAFETY: `off < len`, inside the mapping, which is readable for its length.
            sum = sum.wrapping_add(u64::from(unsafe { std::ptr::read_volatile(base.add(off)) }));
            off += 4096;
        }
        sum
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `addr`/`len` are exactly the mapping made in `new`, unmapped only here.
        unsafe { libc::munmap(self.addr, self.len) };
    }
}

/// `realpath(p)`: whether it resolved (the result is freed at once).
pub(crate) fn realpath_ok(p: &CString) -> bool {
    // SAFETY: `p` is NUL-terminated; a null buffer makes libc allocate the result.
    let r = unsafe { libc::realpath(p.as_ptr(), std::ptr::null_mut()) };
    if r.is_null() {
        return false;
    }
    // SAFETY: `r` was allocated by libc's realpath and is freed once.
    unsafe { libc::free(r.cast()) };
    true
}

/// `sync(2)`, before dropping the caches.
pub(crate) fn sync() {
    // SAFETY: sync takes no arguments and cannot fail.
    unsafe { libc::sync() };
}
