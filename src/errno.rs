//! The one place where an `io::Error` becomes the errno a FUSE reply carries.
//!
//! fuser's own conversion collapses every error without an OS code into EIO; ours keeps the
//! raw code when there is one, then maps the `ErrorKind`s the core produces itself, and only
//! then falls back to EIO.

use std::io;

use fuser::Errno;

/// The errno to send to the kernel for `err`.
pub(crate) fn errno_of(err: &io::Error) -> Errno {
    if let Some(code) = err.raw_os_error()
        && code > 0
    {
        return Errno::from_i32(code);
    }
    Errno::from_i32(code_of_kind(err.kind()))
}

fn code_of_kind(kind: io::ErrorKind) -> i32 {
    use io::ErrorKind::*;
    match kind {
        NotFound => libc::ENOENT,
        PermissionDenied => libc::EACCES,
        AlreadyExists => libc::EEXIST,
        InvalidInput => libc::EINVAL,
        InvalidFilename => libc::ENAMETOOLONG,
        ReadOnlyFilesystem => libc::EROFS,
        NotADirectory => libc::ENOTDIR,
        IsADirectory => libc::EISDIR,
        OutOfMemory => libc::ENOMEM,
        Unsupported => libc::ENOSYS,
        TimedOut => libc::ETIMEDOUT,
        WouldBlock => libc::EAGAIN,
        Interrupted => libc::EINTR,
        _ => libc::EIO,
    }
}

/// An `io::Error` carrying the OS error `code`, for the core to return.
pub(crate) fn os_error(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_os_codes_pass_through() {
        let err = io::Error::from_raw_os_error(libc::ELOOP);
        assert_eq!(errno_of(&err).code(), libc::ELOOP);
    }

    #[test]
    fn kinds_without_os_code_are_mapped() {
        let err = io::Error::new(io::ErrorKind::NotFound, "gone");
        assert_eq!(errno_of(&err).code(), libc::ENOENT);
        let err = io::Error::new(io::ErrorKind::ReadOnlyFilesystem, "ro");
        assert_eq!(errno_of(&err).code(), libc::EROFS);
    }

    #[test]
    fn unknown_kinds_become_eio() {
        let err = io::Error::other("strange");
        assert_eq!(errno_of(&err).code(), libc::EIO);
    }
}
