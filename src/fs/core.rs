//! The filesystem core: the active release pointer, lookups, attributes, reads and listings.
//! It knows nothing of fuser's reply types, so tests drive it without a mount. It does not
//! choose the active release: `Switcher` does, and drives the core through the `Docroot`
//! trait (implemented in `core_docroot.rs`, a child module, so the fields stay private here).
//!
//! Invariants:
//! - Only the root (inode 1) looks at the active pointer. Every other inode is bound to the
//!   release it was looked up in (see `inodes`), so one path resolution never mixes releases
//!   and a working directory inside an old release stays consistent.
//! - Every root entry the kernel may cache with a non-zero timeout (positive or negative) is
//!   recorded in `RootState::names` under the generation it was answered for. A switch
//!   publishes the new release and takes that set in one critical section, then invalidates
//!   each name with no lock held. A lookup that raced the switch sees the generation change
//!   and answers again from the new release, so nothing stale is left cached afterwards.
//! - Nothing is resolved outside the release directory: lookups take one validated component
//!   at a time with `openat2(RESOLVE_BENEATH)`, never follow symlinks, and never see `..`.
//! - The mount is read-only: every operation that would write answers EROFS.

use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use fuser::{FileAttr, FileType};
use parking_lot::Mutex;

use crate::errno::os_error;
use crate::fs::attr::{attr_of_stat, empty_root_attr, kind_of_dtype};
use crate::fs::caller::Caller;
use crate::fs::fds::FdBudget;
use crate::fs::handles::{DirItem, DirSource, Handle, HandleKind, HandleTable};
use crate::fs::inodes::{Inode, InodeTable, ROOT_INO};
use crate::fs::links;
use crate::fs::mtimes::MtimeRegistry;
use crate::fs::portals::{Portals, is_portal};
use crate::life::mounts::CONTROL_XATTR;
use crate::switch::docroot::Active;
use crate::switch::names::is_plain_component;
use crate::switch::release::{Release, ReleaseSet};
use crate::sys;

#[path = "core_docroot.rs"]
mod docroot;
#[cfg(test)]
#[path = "core_tests.rs"]
mod tests;

/// How many root names (mostly negative entries) are remembered for invalidation between two
/// switches. Past it, negative answers under the root are given with no cache timeout, so a
/// client probing random names cannot grow the daemon's memory without bound.
const MAX_ROOT_NAMES: usize = 100_000;

/// Sends cache invalidations to the kernel. The daemon's implementation wraps fuser's
/// `Notifier`; tests record the calls.
pub(crate) trait Invalidator: Send + Sync {
    /// Drops the kernel's dentry `name` under directory `parent` (and everything below it).
    fn inval_entry(&self, parent: u64, name: &OsStr) -> io::Result<()>;
    /// Drops the kernel's cached attributes and data of inode `ino`.
    fn inval_inode(&self, ino: u64) -> io::Result<()>;
}

/// Settings the core needs from the command line.
#[derive(Debug, Clone)]
pub(crate) struct CoreConfig {
    /// The releases directory's path, for symlink targets seen through the mount (see
    /// `links`); the directory itself is the switcher's.
    pub releases: PathBuf,
    pub mount_point: PathBuf,
    pub control_path: PathBuf,
    /// How long the kernel may cache entries and attributes. Safe to make long: releases
    /// are immutable once live, and a switch invalidates explicitly.
    pub ttl: Duration,
    /// Answer file opens with handles (so `status` counts open files) instead of letting
    /// the kernel open files by itself, which is faster.
    pub track_opens: bool,
    /// How many descriptors inodes may hold at once (see `fds`).
    pub inode_fds: usize,
    /// Where the mtime registry persists what it reported (`mtimes::log_path` of the state
    /// file); `None` keeps it in memory only.
    pub mtimes_path: Option<PathBuf>,
}

#[derive(Debug)]
struct RootState {
    active: Arc<Active>,
    /// (parent, name) of every entry under the root or a portal handed to the kernel with a
    /// timeout since the last switch.
    names: HashSet<(u64, OsString)>,
}

/// The answer to a lookup: an entry, or a negative entry the kernel may cache for `ttl`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lookup {
    Entry(FileAttr, Duration),
    Negative(Duration),
}

/// Receives plain directory entries. Returns `true` when the buffer is full and the entry
/// was not added.
pub(crate) trait DirSink {
    fn add(&mut self, ino: u64, offset: u64, kind: FileType, name: &OsStr) -> bool;
}

/// Receives directory entries with attributes (readdirplus). Returns `true` when the buffer
/// is full and the entry was not added.
pub(crate) trait DirPlusSink {
    fn add(&mut self, offset: u64, name: &OsStr, attr: &FileAttr, ttl: Duration) -> bool;
}

enum Node {
    Root(Arc<Active>),
    /// A top-level directory of the active release (see `Portals`).
    Portal(OsString, Arc<Active>),
    Inode(Arc<Inode>),
}

/// A directory of the active release reached through the root or a portal.
struct ActiveDir {
    release: Arc<Release>,
    fd: Arc<OwnedFd>,
    /// Relative to the release root ("" for the root).
    path: PathBuf,
}

/// The FUSE data plane: what the mount shows, answered from the release the switcher last
/// published (see `core_docroot.rs`).
pub(crate) struct Core {
    config: CoreConfig,
    root: Mutex<RootState>,
    portals: Portals,
    inodes: InodeTable,
    handles: HandleTable,
    mtimes: MtimeRegistry,
    invalidator: OnceLock<Box<dyn Invalidator>>,
    /// Where node ids are recorded for a successor process (see `nodelog`).
    nodelog: OnceLock<Arc<crate::fs::nodelog::NodeLog>>,
    uid: u32,
    gid: u32,
}

impl Core {
    /// A core showing an empty root until the switcher publishes a release.
    ///
    /// # Errors
    /// The mtime registry beside the state file cannot be opened (a symlink planted there, a
    /// file of another user): one line. It never silently falls back to memory only.
    pub(crate) fn new(config: CoreConfig) -> Result<Core, String> {
        let inode_fds = config.inode_fds;
        let (uid, gid) = sys::real_ids();
        let mtimes = open_mtimes(config.mtimes_path.as_deref())?;
        Ok(Core {
            config,
            portals: Portals::default(),
            root: Mutex::new(RootState {
                active: Arc::new(Active::empty()),
                names: HashSet::new(),
            }),
            inodes: InodeTable::new(FdBudget::new(inode_fds)),
            handles: HandleTable::default(),
            mtimes,
            invalidator: OnceLock::new(),
            nodelog: OnceLock::new(),
            uid,
            gid,
        })
    }

    /// Installs the notifier. Called once, after the mount is up.
    pub(crate) fn set_invalidator(&self, invalidator: Box<dyn Invalidator>) {
        if self.invalidator.set(invalidator).is_err() {
            log::warn!("invalidator installed twice; keeping the first");
        }
    }

    /// The release the root shows as of now.
    fn active(&self) -> Arc<Active> {
        self.root.lock().active.clone()
    }

    /// Makes `active` what the root shows and returns the root names the kernel may still
    /// cache from before, which the caller must invalidate (with this lock released).
    fn swap_active(&self, active: Arc<Active>) -> HashSet<(u64, OsString)> {
        let mut root = self.root.lock();
        root.active = active;
        if let Some(log) = self.nodelog.get() {
            log.switch();
        }
        std::mem::take(&mut root.names)
    }

    fn node(&self, ino: u64) -> io::Result<Node> {
        if ino == ROOT_INO {
            return Ok(Node::Root(self.active()));
        }
        if is_portal(ino) {
            let name = self.portals.name(ino);
            return name
                .map(|n| Node::Portal(n, self.active()))
                .ok_or_else(|| os_error(libc::ESTALE));
        }
        self.inodes
            .get(ino)
            .map(Node::Inode)
            .ok_or_else(|| os_error(libc::ESTALE))
    }

    /// The directory of the active release that the root or a portal shows; `None` for
    /// the root while no release is active.
    fn active_dir(&self, node: &Node) -> io::Result<Option<ActiveDir>> {
        match node {
            Node::Root(active) => Ok(active.release.as_ref().map(|rel| ActiveDir {
                release: rel.clone(),
                fd: rel.root.clone(),
                path: PathBuf::new(),
            })),
            Node::Portal(name, active) => {
                let rel = active
                    .release
                    .clone()
                    .ok_or_else(|| os_error(libc::ENOENT))?;
                let fd = sys::open_path_beneath(rel.root.as_fd(), name)?;
                if sys::fstat(fd.as_fd())?.st_mode & libc::S_IFMT != libc::S_IFDIR {
                    return Err(os_error(libc::ENOTDIR));
                }
                Ok(Some(ActiveDir {
                    release: rel,
                    fd: Arc::new(fd),
                    path: PathBuf::from(name),
                }))
            }
            Node::Inode(_) => Err(os_error(libc::EINVAL)),
        }
    }

    /// The stable inode number of the portal for top-level directory `name`, recorded for a
    /// successor process when it is new.
    pub(crate) fn portal_ino(&self, name: &OsStr) -> u64 {
        let (ino, new) = self.portals.ino_or_new(name);
        if new && let Some(log) = self.nodelog.get() {
            log.portal(ino, name);
        }
        ino
    }

    /// Looks up `name` in directory `parent`.
    ///
    /// # Errors
    /// The host's error; ENOENT becomes a `Lookup::Negative` instead.
    pub(crate) fn lookup(&self, caller: &Caller, parent: u64, name: &OsStr) -> io::Result<Lookup> {
        if name.len() > crate::switch::names::NAME_MAX {
            return Err(os_error(libc::ENAMETOOLONG)); // as the host would answer
        }
        if !is_plain_component(name) {
            return Err(os_error(libc::ENOENT));
        }
        let dir = match self.node(parent)? {
            Node::Inode(dir) => dir,
            _ => return self.lookup_in_active(caller, parent, name),
        };
        if dir.kind != FileType::Directory {
            return Err(os_error(libc::ENOTDIR));
        }
        match self.lookup_in(&dir.release, dir.fd()?.as_fd(), &dir.path, name) {
            Ok((_, attr)) => Ok(Lookup::Entry(attr, self.config.ttl)),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                Ok(Lookup::Negative(self.config.ttl))
            }
            Err(e) => Err(e),
        }
    }

    /// Looks up `name` under the root or a portal, in the active release, and records it
    /// for expiry at the next switch. A switch landing meanwhile makes it answer again from
    /// the new release. The caller's search permission is checked against the directory
    /// the answer comes from (see `caller`).
    fn lookup_in_active(&self, caller: &Caller, parent: u64, name: &OsStr) -> io::Result<Lookup> {
        loop {
            let node = self.node(parent)?;
            let generation = match &node {
                Node::Root(a) | Node::Portal(_, a) => a.generation,
                Node::Inode(_) => return Err(os_error(libc::EINVAL)),
            };
            let found = match self.active_dir(&node)? {
                Some(dir) => {
                    check_active_dir(caller, &dir, libc::X_OK)?;
                    self.entry_in_active(parent, &dir, name)
                }
                None => Err(os_error(libc::ENOENT)),
            };
            let mut root = self.root.lock();
            if root.active.generation != generation {
                drop(root);
                if let Ok((Some(inode), _)) = found {
                    self.inodes.forget(inode.ino, 1);
                }
                continue;
            }
            return match found {
                Ok((_, attr)) => {
                    self.remember_root_name(&mut root, parent, name);
                    Ok(Lookup::Entry(attr, self.config.ttl))
                }
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                    if root.names.len() < MAX_ROOT_NAMES {
                        self.remember_root_name(&mut root, parent, name);
                        Ok(Lookup::Negative(self.config.ttl))
                    } else {
                        Ok(Lookup::Negative(Duration::ZERO))
                    }
                }
                Err(e) => Err(e),
            };
        }
    }

    /// One entry of an active directory: a portal for a top-level directory, else an inode
    /// bound to the release (returned so a caller can undo its count).
    fn entry_in_active(
        &self,
        parent: u64,
        dir: &ActiveDir,
        name: &OsStr,
    ) -> io::Result<(Option<Arc<Inode>>, FileAttr)> {
        if parent == ROOT_INO {
            let fd = sys::open_path_beneath(dir.fd.as_fd(), name)?;
            let st = sys::fstat(fd.as_fd())?;
            if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
                return Ok((None, attr_of_stat(self.portal_ino(name), &st)));
            }
        }
        let (inode, attr) = self.lookup_in(&dir.release, dir.fd.as_fd(), &dir.path, name)?;
        Ok((Some(inode), attr))
    }

    /// Resolves one component under `dir` in `release` and counts one kernel reference.
    fn lookup_in(
        &self,
        release: &Arc<Release>,
        dir: BorrowedFd<'_>,
        dir_path: &Path,
        name: &OsStr,
    ) -> io::Result<(Arc<Inode>, FileAttr)> {
        let fd = sys::open_path_beneath(dir, name)?;
        let mut st = sys::fstat(fd.as_fd())?;
        let path = dir_path.join(name);
        let mtime = if st.st_mode & libc::S_IFMT == libc::S_IFREG {
            self.mtimes.decide(release, &path, fd.as_fd(), &st)
        } else {
            None
        };
        self.report_link_size(release, &path, fd.as_fd(), &mut st)?;
        let inode = self.inodes.remember(release, fd, &st, path, mtime);
        if let Some(o) = inode.mtime {
            o.apply(&mut st);
        }
        Ok((inode.clone(), attr_of_stat(inode.ino, &st)))
    }

    /// The host's stat of `inode`, with the reported mtime and link size.
    fn stat_inode(&self, inode: &Inode) -> io::Result<libc::stat> {
        let fd = inode.fd()?;
        let mut st = sys::fstat(fd.as_fd())?;
        self.report_link_size(&inode.release, &inode.path, fd.as_fd(), &mut st)?;
        if let Some(o) = inode.mtime {
            o.apply(&mut st);
        }
        Ok(st)
    }

    /// The target `readlink` answers for the symlink at `path` of `release` (see `links`).
    fn link_target(
        &self,
        release: &Release,
        path: &Path,
        fd: BorrowedFd<'_>,
    ) -> io::Result<Vec<u8>> {
        let target = sys::readlink(fd)?;
        let release_dir = self.config.releases.join(&release.name);
        Ok(links::target_seen_through_mount(
            &release_dir,
            path,
            &target,
        ))
    }

    /// A symlink's size is the length of its target; keep it equal to what `readlink`
    /// answers, which differs from the host's for links that climb out of the release.
    fn report_link_size(
        &self,
        release: &Release,
        path: &Path,
        fd: BorrowedFd<'_>,
        st: &mut libc::stat,
    ) -> io::Result<()> {
        if st.st_mode & libc::S_IFMT == libc::S_IFLNK {
            st.st_size = self.link_target(release, path, fd)?.len() as libc::off_t;
        }
        Ok(())
    }

    /// Drops `n` kernel references to `ino`.
    pub(crate) fn forget(&self, ino: u64, n: u64) {
        // Portals live as long as the daemon: nothing to count.
        if !is_portal(ino) {
            self.inodes.forget(ino, n);
        }
    }

    /// Attributes of `ino` and how long the kernel may cache them.
    ///
    /// # Errors
    /// Unknown inode (ESTALE) or the host's error.
    pub(crate) fn getattr(&self, ino: u64) -> io::Result<(FileAttr, Duration)> {
        let attr = match self.node(ino)? {
            Node::Root(active) => self.root_attr(&active)?,
            Node::Inode(inode) => attr_of_stat(ino, &self.stat_inode(&inode)?),
            portal @ Node::Portal(..) => match self.active_dir(&portal)? {
                Some(dir) => attr_of_stat(ino, &sys::fstat(dir.fd.as_fd())?),
                None => return Err(os_error(libc::ENOENT)),
            },
        };
        Ok((attr, self.config.ttl))
    }

    fn root_attr(&self, active: &Active) -> io::Result<FileAttr> {
        match &active.release {
            Some(rel) => Ok(attr_of_stat(ROOT_INO, &sys::fstat(rel.root.as_fd())?)),
            None => Ok(empty_root_attr(ROOT_INO, self.uid, self.gid, active.since)),
        }
    }

    /// The target of symlink `ino`: verbatim, except that a relative target climbing out of
    /// the release is answered as the absolute path it reaches from the release's directory
    /// (see `links`). The daemon never follows it.
    ///
    /// # Errors
    /// EINVAL when `ino` is not a symlink.
    pub(crate) fn readlink(&self, ino: u64) -> io::Result<Vec<u8>> {
        match self.node(ino)? {
            Node::Inode(inode) if inode.kind == FileType::Symlink => {
                self.link_target(&inode.release, &inode.path, inode.fd()?.as_fd())
            }
            _ => Err(os_error(libc::EINVAL)),
        }
    }

    /// Opens regular file `ino` for reading and returns the handle.
    ///
    /// # Errors
    /// EROFS for any write intent; EISDIR/EINVAL for other kinds; the host's error.
    pub(crate) fn open(&self, ino: u64, flags: i32) -> io::Result<u64> {
        refuse_write_intent(flags)?;
        let inode = self.regular_file(ino)?;
        if !self.config.track_opens {
            // ENOSYS tells the kernel to stop sending OPEN and RELEASE for files: warm opens
            // then never leave the kernel, reads come by inode, and the page cache is kept
            // (the kernel's default for no-open is FOPEN_KEEP_CACHE).
            return Err(os_error(libc::ENOSYS));
        }
        let file = sys::reopen(inode.fd()?.as_fd(), libc::O_RDONLY | libc::O_NONBLOCK)?;
        Ok(self.handles.insert(Handle {
            ino,
            release: Some(inode.release.clone()),
            kind: HandleKind::File(file),
        }))
    }

    /// Reads up to `size` bytes at `offset` from handle `fh` (short only at end of file).
    ///
    /// # Errors
    /// EBADF for an unknown or directory handle; the host's error.
    pub(crate) fn read(&self, ino: u64, fh: u64, offset: u64, size: u32) -> io::Result<Vec<u8>> {
        // Without open tracking the kernel sends no handle (fh 0): read through the inode,
        // which is bound to its release like a handle would be.
        let mut buf = vec![0u8; size as usize];
        let filled = match self.handles.get(fh) {
            Some(handle) => match &handle.kind {
                HandleKind::File(file) => sys::pread_full(file.as_fd(), &mut buf, offset)?,
                HandleKind::Dir { .. } => return Err(os_error(libc::EISDIR)),
            },
            // A predecessor's file handle was bound to the inode's release, as the inode is.
            None if fh == 0 || self.handles.is_from_predecessor(fh) => {
                let fd = self.regular_file(ino)?.read_fd()?;
                sys::pread_full(fd.as_fd(), &mut buf, offset)?
            }
            None => return Err(os_error(libc::EBADF)),
        };
        buf.truncate(filled);
        Ok(buf)
    }

    fn regular_file(&self, ino: u64) -> io::Result<Arc<Inode>> {
        let Node::Inode(inode) = self.node(ino)? else {
            return Err(os_error(libc::EISDIR));
        };
        match inode.kind {
            FileType::RegularFile => Ok(inode),
            FileType::Directory => Err(os_error(libc::EISDIR)),
            _ => Err(os_error(libc::EINVAL)),
        }
    }

    /// Closes handle `fh` (file or directory).
    pub(crate) fn release(&self, fh: u64) {
        if self.handles.remove(fh).is_none() && !self.handles.is_from_predecessor(fh) {
            log::warn!("release of unknown handle {fh}");
        }
    }

    /// Opens directory `ino`, snapshotting its entries so offsets stay stable.
    ///
    /// # Errors
    /// ENOTDIR for other kinds; the host's error.
    pub(crate) fn opendir(&self, caller: &Caller, ino: u64) -> io::Result<u64> {
        let (source, release, raw) = match self.node(ino)? {
            active @ (Node::Root(_) | Node::Portal(..)) => match self.active_dir(&active)? {
                Some(dir) => {
                    check_active_dir(caller, &dir, libc::R_OK)?;
                    let raw = sys::read_dir(dir.fd.as_fd())?;
                    (
                        DirSource::Active {
                            release: dir.release.clone(),
                            fd: dir.fd,
                            path: dir.path,
                        },
                        Some(dir.release),
                        raw,
                    )
                }
                None => (DirSource::Empty, None, Vec::new()),
            },
            Node::Inode(inode) => {
                if inode.kind != FileType::Directory {
                    return Err(os_error(libc::ENOTDIR));
                }
                let raw = sys::read_dir(inode.fd()?.as_fd())?;
                (
                    DirSource::Inode(inode.clone()),
                    Some(inode.release.clone()),
                    raw,
                )
            }
        };
        let mut items = Vec::with_capacity(raw.len() + 2);
        for dot in [".", ".."] {
            items.push(DirItem {
                name: dot.into(),
                kind: FileType::Directory,
                host_ino: ino,
            });
        }
        items.extend(raw.into_iter().map(|e| DirItem {
            kind: kind_of_dtype(e.d_type),
            host_ino: e.d_ino,
            name: e.name,
        }));
        Ok(self.handles.insert(Handle {
            ino,
            release,
            kind: HandleKind::Dir { source, items },
        }))
    }

    fn dir_items(&self, fh: u64) -> io::Result<Arc<Handle>> {
        let handle = self.handles.get(fh).ok_or_else(|| os_error(libc::EBADF))?;
        match handle.kind {
            HandleKind::Dir { .. } => Ok(handle),
            HandleKind::File(_) => Err(os_error(libc::ENOTDIR)),
        }
    }

    /// Lists directory handle `fh` from `offset` into `sink`.
    ///
    /// # Errors
    /// EBADF for an unknown handle.
    pub(crate) fn readdir(&self, fh: u64, offset: u64, sink: &mut dyn DirSink) -> io::Result<()> {
        let handle = self.dir_items(fh)?;
        let HandleKind::Dir { items, .. } = &handle.kind else {
            return Err(os_error(libc::ENOTDIR));
        };
        for (i, item) in items.iter().enumerate().skip(offset as usize) {
            if sink.add(item.host_ino, i as u64 + 1, item.kind, &item.name) {
                break;
            }
        }
        Ok(())
    }

    /// Lists directory handle `fh` from `offset` with attributes; every entry added counts
    /// one kernel reference (never `.` and `..`, which the kernel does not link).
    ///
    /// Entries of the root are given a zero timeout: the kernel then revalidates them with a
    /// lookup before use, which records them for invalidation at the next switch.
    ///
    /// # Errors
    /// EBADF for an unknown handle.
    pub(crate) fn readdirplus(
        &self,
        fh: u64,
        offset: u64,
        sink: &mut dyn DirPlusSink,
    ) -> io::Result<()> {
        let handle = self.dir_items(fh)?;
        let HandleKind::Dir { items, source } = &handle.kind else {
            return Err(os_error(libc::ENOTDIR));
        };
        let dir = match source {
            DirSource::Active { release, fd, path } => ActiveDir {
                release: release.clone(),
                fd: fd.clone(),
                path: path.clone(),
            },
            DirSource::Inode(inode) => ActiveDir {
                release: inode.release.clone(),
                fd: inode.fd()?,
                path: inode.path.clone(),
            },
            DirSource::Empty => {
                return self.add_dots(handle.ino, items, offset, Duration::ZERO, sink);
            }
        };
        // Entries of the root and of portals follow the active release: handed out with a
        // zero timeout, so the kernel revalidates them by a lookup that records them.
        let is_active = matches!(source, DirSource::Active { .. });
        let ttl = if is_active {
            Duration::ZERO
        } else {
            self.config.ttl
        };
        let dir_attr = attr_of_stat(handle.ino, &sys::fstat(dir.fd.as_fd())?);
        for (i, item) in items.iter().enumerate().skip(offset as usize) {
            let next = i as u64 + 1;
            if item.name == "." || item.name == ".." {
                if sink.add(next, &item.name, &dir_attr, ttl) {
                    break;
                }
                continue;
            }
            let found = if is_active {
                self.entry_in_active(handle.ino, &dir, &item.name)
            } else {
                self.lookup_in(&dir.release, dir.fd.as_fd(), &dir.path, &item.name)
                    .map(|(inode, attr)| (Some(inode), attr))
            };
            let (inode, attr) = match found {
                Ok(found) => found,
                Err(e) => {
                    log::debug!("readdirplus: skipping {:?}: {e}", item.name);
                    continue;
                }
            };
            if sink.add(next, &item.name, &attr, ttl) {
                // Not sent, so the kernel will not count it: undo our count.
                if let Some(inode) = inode {
                    self.inodes.forget(inode.ino, 1);
                }
                break;
            }
        }
        Ok(())
    }

    fn add_dots(
        &self,
        ino: u64,
        items: &[DirItem],
        offset: u64,
        ttl: Duration,
        sink: &mut dyn DirPlusSink,
    ) -> io::Result<()> {
        let (attr, _) = self.getattr(ino)?;
        for (i, item) in items.iter().enumerate().skip(offset as usize) {
            if sink.add(i as u64 + 1, &item.name, &attr, ttl) {
                break;
            }
        }
        Ok(())
    }

    /// `statvfs` of the filesystem behind `ino`.
    ///
    /// # Errors
    /// The host's error.
    pub(crate) fn statfs(&self, ino: u64) -> io::Result<libc::statvfs> {
        match self.node(ino)? {
            Node::Root(active) => match &active.release {
                Some(rel) => sys::statvfs(rel.root.as_fd()),
                None => Err(os_error(libc::ENOENT)),
            },
            Node::Inode(inode) => sys::statvfs(inode.fd()?.as_fd()),
            portal @ Node::Portal(..) => match self.active_dir(&portal)? {
                Some(dir) => sys::statvfs(dir.fd.as_fd()),
                None => Err(os_error(libc::ENOENT)),
            },
        }
    }

    /// Extended attribute `name` of `ino`; the root also answers `CONTROL_XATTR`.
    ///
    /// # Errors
    /// ENODATA when absent; the host's error.
    pub(crate) fn getxattr(
        &self,
        caller: &Caller,
        ino: u64,
        name: &OsStr,
        size: u32,
    ) -> io::Result<sys::XattrAnswer> {
        if ino == ROOT_INO && name == CONTROL_XATTR {
            let value = self.config.control_path.as_os_str().as_bytes().to_vec();
            return xattr_value(value, size);
        }
        if !caller.is_root() && is_trusted_xattr(name.as_bytes()) {
            // The host answers ENODATA to a reader without CAP_SYS_ADMIN; the daemon reads
            // as root, so it must refuse for them.
            return Err(os_error(libc::ENODATA));
        }
        match self.xattr_fd(ino)? {
            Some(fd) => sys::get_xattr(fd.as_fd(), name, size as usize),
            None => Err(os_error(libc::ENODATA)),
        }
    }

    /// Extended attribute names of `ino`.
    ///
    /// # Errors
    /// The host's error.
    pub(crate) fn listxattr(
        &self,
        caller: &Caller,
        ino: u64,
        size: u32,
    ) -> io::Result<sys::XattrAnswer> {
        let Some(fd) = self.xattr_fd(ino)? else {
            return xattr_value(Vec::new(), size);
        };
        if caller.is_root() {
            return sys::list_xattr(fd.as_fd(), size as usize);
        }
        // As on the host, `trusted.*` names are listed only to CAP_SYS_ADMIN: read the whole
        // list (the daemon sees them as root), drop those, answer for what is left.
        let names = match sys::list_xattr(fd.as_fd(), 0)? {
            sys::XattrAnswer::Size(0) => Vec::new(),
            sys::XattrAnswer::Size(n) => match sys::list_xattr(fd.as_fd(), n as usize)? {
                sys::XattrAnswer::Data(d) => d,
                sys::XattrAnswer::Size(_) => Vec::new(),
            },
            sys::XattrAnswer::Data(d) => d,
        };
        let visible: Vec<u8> = names
            .split_inclusive(|b| *b == 0)
            .filter(|n| !is_trusted_xattr(n))
            .flatten()
            .copied()
            .collect();
        xattr_value(visible, size)
    }

    /// The descriptor to read xattrs from; `None` for symlinks (xattrs are read through
    /// /proc/self/fd, which would follow them) and the empty root.
    fn xattr_fd(&self, ino: u64) -> io::Result<Option<Arc<OwnedFd>>> {
        Ok(match self.node(ino)? {
            Node::Root(active) => active.release.as_ref().map(|r| r.root.clone()),
            Node::Inode(inode) if inode.kind == FileType::Symlink => None,
            Node::Inode(inode) => Some(inode.fd()?),
            portal @ Node::Portal(..) => self.active_dir(&portal)?.map(|d| d.fd),
        })
    }

    /// `access(2)`: write access is always refused, the rest is the kernel's to check
    /// (the mount uses `default_permissions`).
    ///
    /// # Errors
    /// EROFS for W_OK; ESTALE for an unknown inode.
    pub(crate) fn access(&self, ino: u64, mask: i32) -> io::Result<()> {
        self.node(ino)?;
        if mask & libc::W_OK != 0 {
            return Err(os_error(libc::EROFS));
        }
        Ok(())
    }

    /// Live inode count (for leak checks in tests).
    #[cfg(test)]
    pub(crate) fn live_inodes(&self) -> usize {
        self.inodes.len()
    }

    /// Open handle count (for leak checks in tests).
    #[cfg(test)]
    pub(crate) fn open_handles(&self) -> usize {
        self.handles.len()
    }
}

/// The mtime registry persisted at `path`. One that cannot be opened safely (a symlink or
/// another user's file planted there, an unreadable directory) refuses the start: a registry
/// in memory alone would forget after a restart which mtimes OPcache already saw, and bring
/// back stale bytecode without anyone noticing.
fn open_mtimes(path: Option<&Path>) -> Result<MtimeRegistry, String> {
    let Some(path) = path else {
        return Ok(MtimeRegistry::default());
    };
    MtimeRegistry::open(path).map_err(|e| {
        format!(
            "mtime registry {} is unusable ({e}); remove what is there (the daemon creates \
             it) or fix its directory",
            path.display()
        )
    })
}

fn is_trusted_xattr(name: &[u8]) -> bool {
    name.starts_with(b"trusted.")
}

fn xattr_value(value: Vec<u8>, size: u32) -> io::Result<sys::XattrAnswer> {
    if size == 0 {
        return Ok(sys::XattrAnswer::Size(value.len() as u32));
    }
    if value.len() > size as usize {
        return Err(os_error(libc::ERANGE));
    }
    Ok(sys::XattrAnswer::Data(value))
}

/// Checks `caller` may access `dir` for `mask` by the modes of the directory actually
/// answered from, not the attributes the kernel cached for the root or portal inode.
fn check_active_dir(caller: &Caller, dir: &ActiveDir, mask: i32) -> io::Result<()> {
    if caller.is_root() {
        return Ok(());
    }
    caller.check_dir(dir.fd.as_fd(), &sys::fstat(dir.fd.as_fd())?, mask)
}

/// Refuses an open that could modify the file: write access, truncation or creation.
fn refuse_write_intent(flags: i32) -> io::Result<()> {
    let acc = flags & libc::O_ACCMODE;
    if acc == libc::O_WRONLY || acc == libc::O_RDWR || flags & (libc::O_TRUNC | libc::O_CREAT) != 0
    {
        return Err(os_error(libc::EROFS));
    }
    Ok(())
}

// Node ids across a restart or an upgrade of the serving process (see `nodelog`, `keeper`).
impl Core {
    /// Records `(parent, name)` for expiry at the next switch, and for a successor.
    fn remember_root_name(&self, root: &mut RootState, parent: u64, name: &OsStr) {
        if root.names.insert((parent, name.to_os_string()))
            && let Some(log) = self.nodelog.get()
        {
            log.root_name(parent, name);
        }
    }

    /// Restores the node ids, portals and names to expire that the previous serving
    /// process recorded in `log`, then records in it from now on. Called before serving.
    /// Each release a node belongs to is opened again by name; nodes of a release that is
    /// gone are left out (the kernel gets ESTALE for them, which is the truth). Handle
    /// numbers start at `first_handle`, so a handle the kernel kept from a predecessor
    /// is never mistaken for a new one.
    ///
    /// # Errors
    /// The log cannot be read.
    pub(crate) fn resume_nodes(
        &self,
        log: Arc<crate::fs::nodelog::NodeLog>,
        releases: &ReleaseSet,
        first_handle: u64,
    ) -> io::Result<usize> {
        let restored = log.load_and_compact()?;
        let mut opened: HashMap<u64, Option<Arc<Release>>> = HashMap::new();
        let mut count = 0;
        for n in &restored.nodes {
            let release = opened.entry(n.generation).or_insert_with(|| {
                match releases.open_release(&n.release) {
                    Ok(fd) => Some(Arc::new(Release::with_new_generation(&n.release, fd))),
                    Err(e) => {
                        log::warn!(
                            "node ids of release {:?} cannot be restored: {e}",
                            n.release
                        );
                        None
                    }
                }
            });
            if let Some(release) = release {
                self.inodes.restore(n, release);
                count += 1;
            }
        }
        for (ino, name) in restored.portals {
            self.portals.restore(ino, name);
        }
        self.root.lock().names.extend(restored.root_names);
        self.handles.start_at(first_handle);
        self.inodes.set_log(log.clone());
        let _ = self.nodelog.set(log);
        Ok(count)
    }

    /// Opens again, under its number, a directory handle a predecessor gave out and the
    /// kernel still lists with: a release's directory lists the same (releases are
    /// immutable), the root and the portals the active release, as a new opendir would. The
    /// caller's permission was checked when the predecessor opened it.
    ///
    /// # Errors
    /// As for `opendir`.
    pub(crate) fn reopen_dir_handle(&self, ino: u64, fh: u64) -> io::Result<()> {
        if !self.handles.is_from_predecessor(fh) {
            return Ok(());
        }
        let new = self.opendir(&Caller::ROOT, ino)?;
        self.handles.renumber(new, fh);
        Ok(())
    }
}
