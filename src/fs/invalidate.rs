//! Telling the kernel what to forget after a switch.
//!
//! Dropping a root entry (`FUSE_NOTIFY_INVAL_ENTRY`) makes the kernel tear down the whole
//! cached subtree under it inside the notification, which took milliseconds per large
//! directory and made `activate` cost ~15 ms with 10,000 cached entries. Where the kernel
//! offers it (`FUSE_HAS_EXPIRE_ONLY`, Linux 6.2+), we only mark the entry expired instead:
//! the next path walk through it must ask us again, gets an inode of the new release, and
//! the kernel then drops the stale subtree itself, on that first request. New lookups see
//! the new release either way; the teardown just moves off the switch.
//!
//! fuser's `Notifier` cannot set that flag, so the message is written here, on a duplicate
//! of the session's /dev/fuse descriptor (writes are atomic; the kernel parses each).
//!
//! Whether the kernel offers it is read from what `FUSE_INIT` settled (`InitParams`), which a
//! resumed session has too: the one constructor takes them, nothing else carries it.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use fuser::{InitFlags, InitParams, Notifier};

use crate::fs::core::Invalidator;

const FUSE_NOTIFY_INVAL_ENTRY: i32 = 3;
const FUSE_EXPIRE_ONLY: u32 = 1;

pub(crate) struct KernelInvalidator {
    notifier: Notifier,
    dev_fuse: OwnedFd,
    /// The kernel offered `FUSE_HAS_EXPIRE_ONLY` at INIT.
    expire_only: bool,
}

impl KernelInvalidator {
    /// The invalidator for the connection on `dev_fuse`, initialised with `init`.
    pub(crate) fn new(notifier: Notifier, dev_fuse: OwnedFd, init: &InitParams) -> Self {
        let expire_only = init.offered.contains(InitFlags::FUSE_HAS_EXPIRE_ONLY);
        if expire_only {
            log::debug!("kernel supports expire-only invalidation");
        }
        KernelInvalidator {
            notifier,
            dev_fuse,
            expire_only,
        }
    }

    fn expire_entry(&self, parent: u64, name: &OsStr) -> io::Result<()> {
        let msg = expire_message(parent, name)?;
        match crate::sys::write_message(self.dev_fuse.as_fd(), &msg) {
            // Not cached: nothing to expire.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            other => other,
        }
    }
}

/// The `FUSE_NOTIFY_INVAL_ENTRY` message with `FUSE_EXPIRE_ONLY`: an out header (length,
/// notify code as error, unique 0), then parent, name length, flags, and the name with NUL.
fn expire_message(parent: u64, name: &OsStr) -> io::Result<Vec<u8>> {
    let name = name.as_bytes();
    let namelen =
        u32::try_from(name.len()).map_err(|_| io::Error::from_raw_os_error(libc::ENAMETOOLONG))?;
    let len = 16 + 16 + name.len() + 1;
    let mut msg = Vec::with_capacity(len);
    msg.extend_from_slice(&(len as u32).to_ne_bytes());
    msg.extend_from_slice(&FUSE_NOTIFY_INVAL_ENTRY.to_ne_bytes());
    msg.extend_from_slice(&0u64.to_ne_bytes());
    msg.extend_from_slice(&parent.to_ne_bytes());
    msg.extend_from_slice(&namelen.to_ne_bytes());
    msg.extend_from_slice(&FUSE_EXPIRE_ONLY.to_ne_bytes());
    msg.extend_from_slice(name);
    msg.push(0);
    Ok(msg)
}

impl Invalidator for KernelInvalidator {
    fn inval_entry(&self, parent: u64, name: &OsStr) -> io::Result<()> {
        if self.expire_only {
            self.expire_entry(parent, name)
        } else {
            self.notifier.inval_entry(fuser::INodeNo(parent), name)
        }
    }

    fn inval_inode(&self, ino: u64) -> io::Result<()> {
        self.notifier.inval_inode(fuser::INodeNo(ino), 0, 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_layout_matches_the_kernel_abi() {
        let msg = expire_message(0x42, OsStr::new("abc")).unwrap();
        let mut expected = vec![36, 0, 0, 0, 3, 0, 0, 0];
        expected.extend([0; 8]);
        expected.extend([0x42, 0, 0, 0, 0, 0, 0, 0]);
        expected.extend([3, 0, 0, 0, 1, 0, 0, 0]);
        expected.extend(b"abc\0");
        if cfg!(target_endian = "little") {
            assert_eq!(msg, expected);
        }
        assert_eq!(msg.len(), 36);
    }
}
