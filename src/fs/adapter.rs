//! The only `impl fuser::Filesystem`: each method is one call into the core, `Ok` replies and
//! `Err` goes through `errno_of`. Everything that would write answers EROFS explicitly (fuser's
//! default would be ENOSYS, which tools report confusingly).

use std::ffi::OsStr;
use std::io;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fuser::{
    AccessFlags, BsdFileFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags,
    Generation, INodeNo, InitFlags, KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr,
    ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen,
    ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};

use crate::errno::errno_of;
use crate::fs::attr::empty_root_attr;
use crate::fs::caller::Caller;
use crate::fs::core::{Core, DirPlusSink, DirSink, Lookup};
use crate::fs::portals::follows_active;
use crate::sys::XattrAnswer;

/// Serves a `Core` to the kernel.
pub(crate) struct FuseAdapter {
    core: Arc<Core>,
    /// Ask the kernel to enforce POSIX ACLs (see `--acl`).
    acl: bool,
}

impl FuseAdapter {
    pub(crate) fn new(core: Arc<Core>, acl: bool) -> Self {
        FuseAdapter { core, acl }
    }
}

fn caller(req: &Request) -> Caller {
    Caller {
        uid: req.uid(),
        gid: req.gid(),
        pid: req.pid(),
    }
}

fn log_err(op: &str, err: &io::Error) -> Errno {
    let errno = errno_of(err);
    match errno.code() {
        libc::ENOENT | libc::ENODATA | libc::EROFS | libc::ENOSYS => log::debug!("{op}: {err}"),
        _ => log::warn!("{op}: {err}"),
    }
    errno
}

struct PlainSink<'a>(&'a mut ReplyDirectory);

impl DirSink for PlainSink<'_> {
    fn add(&mut self, ino: u64, offset: u64, kind: FileType, name: &OsStr) -> bool {
        self.0.add(INodeNo(ino), offset, kind, name)
    }
}

struct PlusSink<'a>(&'a mut ReplyDirectoryPlus);

impl DirPlusSink for PlusSink<'_> {
    fn add(&mut self, offset: u64, name: &OsStr, attr: &FileAttr, ttl: Duration) -> bool {
        self.0
            .add(attr.ino, offset, name, &ttl, attr, Generation(0))
    }
}

/// Writes trait methods that answer EROFS and ignore their arguments: the mount is read-only,
/// and fuser's default (ENOSYS) would make tools report "function not implemented".
macro_rules! erofs {
    ($($name:ident($($arg:ty),* $(,)?) -> $reply:ty;)*) => {
        $(
            fn $name(&self, $(_: $arg),*, reply: $reply) {
                reply.error(Errno::EROFS);
            }
        )*
    };
}

impl Filesystem for FuseAdapter {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        // Each is an optimisation the kernel may lack; without it we are merely slower.
        for flag in [
            InitFlags::FUSE_DO_READDIRPLUS,
            InitFlags::FUSE_READDIRPLUS_AUTO,
            InitFlags::FUSE_CACHE_SYMLINKS,
            InitFlags::FUSE_PARALLEL_DIROPS,
        ] {
            if let Err(missing) = config.add_capabilities(flag) {
                log::info!("kernel lacks {missing:?}; continuing without it");
            }
        }
        // With POSIX ACLs the kernel enforces ACLs as on the host, but for every user who does
        // not own a file it asks the daemon for system.posix_acl_access on every path
        // component of every lookup (the "no ACL" answer is not cached): 40 us per stat for
        // www-data, 13x fewer PHP requests per second. Without it, default_permissions checks
        // the mode bits only. Opt-in for releases that rely on ACLs.
        if self.acl
            && let Err(missing) = config.add_capabilities(InitFlags::FUSE_POSIX_ACL)
        {
            log::warn!("kernel lacks {missing:?}: ACLs cannot be enforced");
        }
        Ok(())
    }

    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        crate::keeper::fault_on_request();
        match self.core.lookup(&caller(req), parent.0, name) {
            Ok(Lookup::Entry(attr, ttl)) => reply.entry(&ttl, &attr, Generation(0)),
            Ok(Lookup::Negative(ttl)) => {
                // Inode 0 tells the kernel to cache a negative entry for `ttl`.
                let attr = empty_root_attr(0, 0, 0, SystemTime::UNIX_EPOCH);
                reply.entry(&ttl, &attr, Generation(0));
            }
            Err(e) => reply.error(log_err("lookup", &e)),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.core.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        crate::keeper::fault_on_request();
        match self.core.getattr(ino.0) {
            Ok((attr, ttl)) => reply.attr(&ttl, &attr),
            Err(e) => reply.error(log_err("getattr", &e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.core.readlink(ino.0) {
            Ok(target) => reply.data(&target),
            Err(e) => reply.error(log_err("readlink", &e)),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        match self.core.open(ino.0, flags.0) {
            // Inodes are per activation and releases are immutable once live, so the page
            // cache of an inode never goes stale: keep it across opens. No flush is needed
            // for a read-only file.
            Ok(fh) => reply.opened(
                FileHandle(fh),
                FopenFlags::FOPEN_KEEP_CACHE | FopenFlags::FOPEN_NOFLUSH,
            ),
            Err(e) => reply.error(log_err("open", &e)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.core.read(ino.0, fh.0, offset, size) {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(log_err("read", &e)),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // Nothing to flush on a read-only file; ENOSYS makes the kernel stop asking, so a
        // close() never waits for the daemon.
        reply.error(Errno::ENOSYS);
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.core.release(fh.0);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn opendir(&self, req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.core.opendir(&caller(req), ino.0) {
            // A directory of a release never changes, so the kernel may keep its listing;
            // the root's and the portals' change with every switch, so they are never cached.
            Ok(fh) if follows_active(ino.0) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Ok(fh) => reply.opened(
                FileHandle(fh),
                FopenFlags::FOPEN_CACHE_DIR | FopenFlags::FOPEN_KEEP_CACHE,
            ),
            Err(e) => reply.error(log_err("opendir", &e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        if let Err(e) = self.core.reopen_dir_handle(ino.0, fh.0) {
            return reply.error(log_err("readdir", &e));
        }
        match self.core.readdir(fh.0, offset, &mut PlainSink(&mut reply)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(log_err("readdir", &e)),
        }
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        if let Err(e) = self.core.reopen_dir_handle(ino.0, fh.0) {
            return reply.error(log_err("readdirplus", &e));
        }
        match self
            .core
            .readdirplus(fh.0, offset, &mut PlusSink(&mut reply))
        {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(log_err("readdirplus", &e)),
        }
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.core.release(fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn statfs(&self, _req: &Request, ino: INodeNo, reply: ReplyStatfs) {
        match self.core.statfs(ino.0) {
            Ok(st) => reply.statfs(
                st.f_blocks,
                st.f_bfree,
                st.f_bavail,
                st.f_files,
                st.f_ffree,
                st.f_bsize as u32,
                st.f_namemax as u32,
                st.f_frsize as u32,
            ),
            Err(e) => reply.error(log_err("statfs", &e)),
        }
    }

    fn getxattr(&self, req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        match self.core.getxattr(&caller(req), ino.0, name, size) {
            Ok(XattrAnswer::Size(n)) => reply.size(n),
            Ok(XattrAnswer::Data(d)) => reply.data(&d),
            Err(e) => reply.error(log_err("getxattr", &e)),
        }
    }

    fn listxattr(&self, req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        match self.core.listxattr(&caller(req), ino.0, size) {
            Ok(XattrAnswer::Size(n)) => reply.size(n),
            Ok(XattrAnswer::Data(d)) => reply.data(&d),
            Err(e) => reply.error(log_err("listxattr", &e)),
        }
    }

    fn access(&self, _req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        match self.core.access(ino.0, mask.bits()) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(log_err("access", &e)),
        }
    }

    // Everything that would write: EROFS, as a read-only host filesystem answers.
    erofs! {
        setattr(
            &Request, INodeNo, Option<u32>, Option<u32>, Option<u32>, Option<u64>,
            Option<TimeOrNow>, Option<TimeOrNow>, Option<SystemTime>, Option<FileHandle>,
            Option<SystemTime>, Option<SystemTime>, Option<SystemTime>, Option<BsdFileFlags>,
        ) -> ReplyAttr;
        mknod(&Request, INodeNo, &OsStr, u32, u32, u32) -> ReplyEntry;
        mkdir(&Request, INodeNo, &OsStr, u32, u32) -> ReplyEntry;
        unlink(&Request, INodeNo, &OsStr) -> ReplyEmpty;
        rmdir(&Request, INodeNo, &OsStr) -> ReplyEmpty;
        symlink(&Request, INodeNo, &OsStr, &std::path::Path) -> ReplyEntry;
        rename(&Request, INodeNo, &OsStr, INodeNo, &OsStr, RenameFlags) -> ReplyEmpty;
        link(&Request, INodeNo, INodeNo, &OsStr) -> ReplyEntry;
        write(
            &Request, INodeNo, FileHandle, u64, &[u8], WriteFlags, OpenFlags, Option<LockOwner>,
        ) -> ReplyWrite;
        setxattr(&Request, INodeNo, &OsStr, &[u8], i32, u32) -> ReplyEmpty;
        removexattr(&Request, INodeNo, &OsStr) -> ReplyEmpty;
        create(&Request, INodeNo, &OsStr, u32, u32, i32) -> ReplyCreate;
        fallocate(&Request, INodeNo, FileHandle, u64, u64, i32) -> ReplyEmpty;
    }
}
