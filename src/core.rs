//! The filesystem core: the active release pointer, lookups, attributes, reads, listings and
//! the switch. It knows nothing of fuser's reply types, so tests drive it without a mount.
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
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use fuser::{FileAttr, FileType};
use parking_lot::Mutex;

use crate::attr::{attr_of_stat, empty_root_attr, kind_of_dtype};
use crate::caller::Caller;
use crate::errno::os_error;
use crate::fds::FdBudget;
use crate::handles::{DirItem, DirSource, Handle, HandleKind, HandleTable};
use crate::history::History;
use crate::inodes::{Inode, InodeTable, ROOT_INO};
use crate::links;
use crate::mtimes::MtimeRegistry;
use crate::names::is_plain_component;
use crate::procscan;
use crate::release::{Release, ReleaseSet};
use crate::state::{PersistedState, StateFile};
use crate::sys;

/// The extended attribute of the mount root that tells `switchctl` where the control socket
/// is. It is answered only on the root and never listed.
pub const CONTROL_XATTR: &str = "user.switchfs.control";

/// How many root names (mostly negative entries) are remembered for invalidation between two
/// switches. Past it, negative answers under the root are given with no cache timeout, so a
/// client probing random names cannot grow the daemon's memory without bound.
const MAX_ROOT_NAMES: usize = 100_000;

/// Sends cache invalidations to the kernel. The daemon's implementation wraps fuser's
/// `Notifier`; tests record the calls.
pub trait Invalidator: Send + Sync {
    /// Drops the kernel's dentry `name` under directory `parent` (and everything below it).
    fn inval_entry(&self, parent: u64, name: &OsStr) -> io::Result<()>;
    /// Drops the kernel's cached attributes and data of inode `ino`.
    fn inval_inode(&self, ino: u64) -> io::Result<()>;
}

/// Settings the core needs from the command line.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    pub releases: PathBuf,
    pub state_path: PathBuf,
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

/// What the root currently shows.
#[derive(Debug)]
pub struct Active {
    pub release: Option<Arc<Release>>,
    pub generation: u64,
    pub previous: Option<String>,
    pub since: SystemTime,
}

impl Active {
    pub fn name(&self) -> Option<&str> {
        self.release.as_ref().map(|r| r.name.as_str())
    }
}

#[derive(Debug)]
struct RootState {
    active: Arc<Active>,
    /// (parent, name) of every entry under the root or a portal handed to the kernel with a
    /// timeout since the last switch.
    names: HashSet<(u64, OsString)>,
}

/// Inode numbers of portals carry this bit; table inodes count up from 2 and never reach it.
const PORTAL_BIT: u64 = 1 << 62;

/// Whether `ino` shows whatever release is active (the root and the portals), so its
/// attributes and listing change at each switch.
pub fn follows_active(ino: u64) -> bool {
    ino == ROOT_INO || ino & PORTAL_BIT != 0
}

/// The top-level directories of the mount, as "portals": one stable inode per name that
/// always shows that directory of the active release.
///
/// Why: PHP-FPM and mod_php chdir() into the front controller's directory (`public/`) for
/// each request. Were `public` bound to a release like every other inode, the next lookup of
/// `public` after a switch would make the kernel unhash the old dentry, and `getcwd()` in a
/// request still running there fails (ENOENT); PHP then caches includes under relative keys
/// that serve the wrong release until an OPcache reset. A portal's dentry survives switches,
/// so `getcwd()` always works; entries under it are bound to their release as usual and are
/// expired at each switch like the root's.
#[derive(Debug, Default)]
struct Portals {
    by_name: HashMap<OsString, u64>,
    by_ino: HashMap<u64, OsString>,
}

/// The answer to a lookup: an entry, or a negative entry the kernel may cache for `ttl`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    Entry(FileAttr, Duration),
    Negative(Duration),
}

/// Receives plain directory entries. Returns `true` when the buffer is full and the entry
/// was not added.
pub trait DirSink {
    fn add(&mut self, ino: u64, offset: u64, kind: FileType, name: &OsStr) -> bool;
}

/// Receives directory entries with attributes (readdirplus). Returns `true` when the buffer
/// is full and the entry was not added.
pub trait DirPlusSink {
    fn add(&mut self, offset: u64, name: &OsStr, attr: &FileAttr, ttl: Duration) -> bool;
}

/// What a successful `activate` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Switched {
    /// The line shown to the operator.
    pub message: String,
    pub from: Option<String>,
    pub to: String,
    /// False when `to` was already active.
    pub changed: bool,
}

/// Selects one counter of a `Use`.
type UseField = fn(&mut Use) -> &mut usize;

/// What uses one release right now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Use {
    active: bool,
    open_handles: usize,
    open_files: usize,
    dirs: usize,
    maps: usize,
    live_inodes: usize,
}

impl Use {
    /// Cached inodes alone do not count: the kernel keeps unused ones until memory is short.
    fn in_use(&self) -> bool {
        self.active || self.open_handles + self.open_files + self.dirs + self.maps > 0
    }
}

/// Per-release usage, for `status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleaseUsage {
    pub name: String,
    pub active: bool,
    /// Active, or held by a handle or a process.
    pub in_use: bool,
    /// Handles the daemon gave out (directories; files too with --track-opens).
    pub open_handles: usize,
    /// Descriptors processes hold on its files.
    pub open_files: usize,
    /// Processes whose working or root directory is in it.
    pub dirs: usize,
    /// Memory maps of its files.
    pub maps: usize,
    /// Inodes the kernel still caches (informational: unused ones linger).
    pub live_inodes: usize,
    /// When it stopped being used; `None` if in use or not used since the daemon started.
    pub unused_since: Option<SystemTime>,
    /// Whether its directory is still in the releases directory.
    pub present: bool,
}

/// A snapshot of the daemon's state, for `status`.
#[derive(Debug, Clone)]
pub struct Status {
    pub active: Option<String>,
    pub since: SystemTime,
    pub previous: Option<String>,
    /// Activations (oldest first) and rollback marks.
    pub history: History,
    pub releases_dir: PathBuf,
    pub mount_point: PathBuf,
    /// Set when the active release's directory was deleted or renamed away while served.
    pub active_problem: Option<String>,
    pub usage: Vec<ReleaseUsage>,
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

pub struct Core {
    releases: ReleaseSet,
    config: CoreConfig,
    root: Mutex<RootState>,
    portals: parking_lot::RwLock<Portals>,
    /// Serialises switches; never taken by FUSE workers, so it may be held across kernel
    /// notifications. Reentrant so that `rollback` can choose its target and switch to it
    /// under one hold (it calls `activate`).
    switch_lock: parking_lot::ReentrantMutex<()>,
    /// Activations and rollback marks, as persisted with the state (see `history`).
    history: Mutex<History>,
    /// The history a rollback in progress wants recorded instead of a plain activation;
    /// set and consumed under the switch lock.
    planned_history: Mutex<Option<History>>,
    /// Set once shutdown has begun: no switch or prune after it (see `stop_switching`).
    stopping: std::sync::atomic::AtomicBool,
    /// Where the active release is made durable before a switch is acknowledged.
    state: StateFile,
    pub(crate) inodes: InodeTable,
    handles: HandleTable,
    mtimes: MtimeRegistry,
    /// When each release was last seen in use (or stopped being active).
    last_used: Mutex<HashMap<String, SystemTime>>,
    invalidator: OnceLock<Box<dyn Invalidator>>,
    /// Where node ids are recorded for a successor process (see `nodelog`).
    nodelog: OnceLock<Arc<crate::nodelog::NodeLog>>,
    next_generation: AtomicU64,
    uid: u32,
    gid: u32,
}

impl Core {
    /// Opens the releases directory and restores the persisted release, else `initial`.
    ///
    /// A persisted release that cannot be served (deleted, corrupt state file) is logged as
    /// an error and `initial` is used instead; with neither, the root is empty.
    ///
    /// # Errors
    /// The releases directory cannot be opened, or `initial` was asked for and cannot be
    /// served: a one-line message.
    pub fn new(config: CoreConfig, initial: Option<&str>) -> Result<Core, String> {
        let inode_fds = config.inode_fds;
        let releases = ReleaseSet::open(&config.releases).map_err(|e| {
            format!(
                "cannot open releases directory {}: {e}",
                config.releases.display()
            )
        })?;
        // SAFETY: getuid/getgid cannot fail.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        let empty = Arc::new(Active {
            release: None,
            generation: 0,
            previous: None,
            since: SystemTime::now(),
        });
        let mtimes = open_mtimes(config.mtimes_path.as_deref());
        let core = Core {
            releases,
            state: StateFile::new(config.state_path.clone()),
            config,
            portals: parking_lot::RwLock::new(Portals::default()),
            root: Mutex::new(RootState {
                active: empty,
                names: HashSet::new(),
            }),
            switch_lock: parking_lot::ReentrantMutex::new(()),
            history: Mutex::new(History::default()),
            planned_history: Mutex::new(None),
            stopping: std::sync::atomic::AtomicBool::new(false),
            inodes: InodeTable::new(FdBudget::new(inode_fds)),
            handles: HandleTable::default(),
            mtimes,
            last_used: Mutex::new(HashMap::new()),
            invalidator: OnceLock::new(),
            nodelog: OnceLock::new(),
            next_generation: AtomicU64::new(1),
            uid,
            gid,
        };
        core.restore(initial)?;
        Ok(core)
    }

    fn restore(&self, initial: Option<&str>) -> Result<(), String> {
        // One daemon per state file: a second one would resume the other's release.
        self.state.lock()?;
        let state_path = &self.config.state_path;
        let persisted = match self.state.load() {
            Ok(p) => p,
            Err(e) => {
                log::error!(
                    "state file {} is unusable ({e}); ignoring it",
                    state_path.display()
                );
                None
            }
        };
        if let Some(st) = persisted {
            match self.releases.open_release(&st.active) {
                Ok(fd) => {
                    *self.history.lock() = restored_history(&st);
                    self.publish(&st.active, fd, st.previous.clone());
                    log::info!("resumed persisted release {:?}", st.active);
                    return Ok(());
                }
                Err(msg) => log::error!("persisted release cannot be served: {msg}"),
            }
        }
        match initial {
            Some(name) => {
                let fd = self.releases.open_release(name)?;
                let previous = None;
                let history = History::default().activated(name);
                *self.history.lock() = history.clone();
                if let Err(e) = self.state.save(&PersistedState {
                    active: name.to_string(),
                    previous: previous.clone(),
                    history,
                }) {
                    log::warn!(
                        "cannot persist initial release to {}: {e}",
                        state_path.display()
                    );
                }
                self.publish(name, fd, previous);
                log::info!("serving initial release {name:?}");
            }
            None => log::warn!(
                "no release is active: serving an empty read-only root until \
                 `switchctl activate NAME` (pass --initial to choose one at start)"
            ),
        }
        Ok(())
    }

    /// Ends switching for good and gives the state file up: called at shutdown once the mount
    /// is detached, so a successor started while this daemon drains can lock and resume the
    /// state. Waits for a switch in progress to finish.
    pub fn stop_switching(&self) {
        let _serial = self.switch_lock.lock();
        self.stopping.store(true, Ordering::Relaxed);
        self.state.unlock();
    }

    fn refuse_if_stopping(&self) -> Result<(), String> {
        if self.stopping.load(Ordering::Relaxed) {
            return Err("this switchfs is shutting down; nothing was changed".into());
        }
        Ok(())
    }

    /// Installs the notifier. Called once, after the mount is up.
    pub fn set_invalidator(&self, invalidator: Box<dyn Invalidator>) {
        if self.invalidator.set(invalidator).is_err() {
            log::warn!("invalidator installed twice; keeping the first");
        }
    }

    pub fn config(&self) -> &CoreConfig {
        &self.config
    }

    /// The active release as of now.
    pub fn active(&self) -> Arc<Active> {
        self.root.lock().active.clone()
    }

    /// Publishes release `name` as active and returns the root names the kernel may still
    /// cache from before, which the caller must invalidate.
    fn publish(
        &self,
        name: &str,
        fd: std::os::fd::OwnedFd,
        previous: Option<String>,
    ) -> HashSet<(u64, OsString)> {
        let generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
        let now = SystemTime::now();
        let release = Arc::new(Release::new(name, generation, fd));
        let active = Arc::new(Active {
            release: Some(release),
            generation,
            previous,
            since: now,
        });
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
        if ino & PORTAL_BIT != 0 {
            let name = self.portals.read().by_ino.get(&ino).cloned();
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

    /// The stable inode number of the portal for top-level directory `name`.
    fn portal_ino(&self, name: &OsStr) -> u64 {
        if let Some(ino) = self.portals.read().by_name.get(name) {
            return *ino;
        }
        let mut portals = self.portals.write();
        if let Some(ino) = portals.by_name.get(name) {
            return *ino;
        }
        let ino = PORTAL_BIT | (portals.by_name.len() as u64 + 1);
        portals.by_name.insert(name.to_os_string(), ino);
        portals.by_ino.insert(ino, name.to_os_string());
        if let Some(log) = self.nodelog.get() {
            log.portal(ino, name);
        }
        ino
    }

    /// Looks up `name` in directory `parent`.
    ///
    /// # Errors
    /// The host's error; ENOENT becomes a `Lookup::Negative` instead.
    pub fn lookup(&self, caller: &Caller, parent: u64, name: &OsStr) -> io::Result<Lookup> {
        if name.len() > crate::names::NAME_MAX {
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
        let release_dir = self.releases.path().join(&release.name);
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
    pub fn forget(&self, ino: u64, n: u64) {
        // Portals live as long as the daemon: nothing to count.
        if ino & PORTAL_BIT == 0 {
            self.inodes.forget(ino, n);
        }
    }

    /// Attributes of `ino` and how long the kernel may cache them.
    ///
    /// # Errors
    /// Unknown inode (ESTALE) or the host's error.
    pub fn getattr(&self, ino: u64) -> io::Result<(FileAttr, Duration)> {
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
    pub fn readlink(&self, ino: u64) -> io::Result<Vec<u8>> {
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
    pub fn open(&self, ino: u64, flags: i32) -> io::Result<u64> {
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
    pub fn read(&self, ino: u64, fh: u64, offset: u64, size: u32) -> io::Result<Vec<u8>> {
        // Without open tracking the kernel sends no handle (fh 0): read through the inode,
        // which is bound to its release like a handle would be.
        let mut buf = vec![0u8; size as usize];
        let filled = match self.handles.get(fh) {
            Some(handle) => match &handle.kind {
                HandleKind::File(file) => sys::pread_full(file.as_fd(), &mut buf, offset)?,
                HandleKind::Dir { .. } => return Err(os_error(libc::EISDIR)),
            },
            // A predecessor's file handle was bound to the inode's release, as the inode is.
            None if fh == 0 || self.handles.from_predecessor(fh) => {
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
    pub fn release(&self, fh: u64) {
        if self.handles.remove(fh).is_none() && !self.handles.from_predecessor(fh) {
            log::warn!("release of unknown handle {fh}");
        }
    }

    /// Opens directory `ino`, snapshotting its entries so offsets stay stable.
    ///
    /// # Errors
    /// ENOTDIR for other kinds; the host's error.
    pub fn opendir(&self, caller: &Caller, ino: u64) -> io::Result<u64> {
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
    pub fn readdir(&self, fh: u64, offset: u64, sink: &mut dyn DirSink) -> io::Result<()> {
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
    pub fn readdirplus(&self, fh: u64, offset: u64, sink: &mut dyn DirPlusSink) -> io::Result<()> {
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
    pub fn statfs(&self, ino: u64) -> io::Result<libc::statvfs> {
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
    pub fn getxattr(
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
    pub fn listxattr(&self, caller: &Caller, ino: u64, size: u32) -> io::Result<sys::XattrAnswer> {
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
    pub fn access(&self, ino: u64, mask: i32) -> io::Result<()> {
        self.node(ino)?;
        if mask & libc::W_OK != 0 {
            return Err(os_error(libc::EROFS));
        }
        Ok(())
    }

    /// Makes release `name` active: validate, persist, publish, invalidate. Returns the line
    /// to show the operator. `who` says who asked, for the log.
    ///
    /// # Errors
    /// A one-line message; the active release is then unchanged.
    pub fn activate(&self, name: &str, who: &str) -> Result<Switched, String> {
        let _serial = self.switch_lock.lock();
        self.refuse_if_stopping()?;
        let current = self.active();
        // Validated even when `name` is already active: its directory may have been replaced
        // (`mv R/7 R/7.bak; mkdir R/7`) or made a symlink since it was activated.
        let fd = self.releases.open_release(name)?;
        let reactivated = current.name() == Some(name);
        if reactivated
            && current
                .release
                .as_ref()
                .is_some_and(|r| same_dir(&r.root, &fd))
        {
            return Ok(Switched {
                message: format!("release {name} is already active"),
                from: Some(name.to_string()),
                to: name.to_string(),
                changed: false,
            });
        }
        // Re-activating a replaced directory keeps the previous release as it was.
        let previous = if reactivated {
            current.previous.clone()
        } else {
            current.name().map(str::to_string)
        };
        if let Some(prev) = previous.as_ref().filter(|_| !reactivated) {
            self.last_used
                .lock()
                .insert(prev.clone(), SystemTime::now());
        }
        let persisted = PersistedState {
            active: name.to_string(),
            previous: previous.clone(),
            history: self.next_history(name),
        };
        // The mtimes served so far must outlive a crash right after this switch: a rollback
        // after a restart must not hand OPcache an mtime it already saw with other content.
        self.mtimes.sync();
        self.state.save(&persisted).map_err(|e| {
            format!(
                "cannot persist the switch to {}: {e}; release {} stays active",
                self.config.state_path.display(),
                previous.as_deref().unwrap_or("(none)")
            )
        })?;
        *self.history.lock() = persisted.history;
        self.pin_held_inodes();
        let stale = self.publish(name, fd, previous.clone());
        self.invalidate_root(stale);
        if reactivated {
            log::info!("re-activated {name} from its replaced directory (requested by {who})");
            return Ok(Switched {
                message: format!("release {name} re-activated: its directory was replaced"),
                from: Some(name.to_string()),
                to: name.to_string(),
                changed: true,
            });
        }
        let from = previous.as_deref().unwrap_or("(none)");
        log::info!("switched from {from} to {name} (requested by {who})");
        Ok(Switched {
            message: format!("switched from {from} to {name}"),
            from: previous.clone(),
            to: name.to_string(),
            changed: true,
        })
    }

    /// Waits until nothing uses release `name` any more (no inode the kernel holds, no open
    /// handle, not active), at most `timeout`. Returns whether it drained.
    pub fn wait_unused(&self, name: &str, timeout: Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if !self.usage().get(name).is_some_and(Use::in_use) {
                return true;
            }
            if std::time::Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// What uses each release right now: the active pointer, open handles, and what
    /// processes hold under the mount (descriptors, working directories, maps). Also
    /// records when each was last seen in use.
    fn usage(&self) -> HashMap<String, Use> {
        let active = self.active();
        let mut usage: HashMap<String, Use> = HashMap::new();
        if let Some(name) = active.name() {
            usage.entry(name.to_string()).or_default().active = true;
        }
        for (name, n) in self.handles.count_by_release() {
            usage.entry(name).or_default().open_handles = n;
        }
        for (name, n) in self.inodes.count_by_release() {
            usage.entry(name).or_default().live_inodes = n;
        }
        if let Some(refs) = self.scan_mount() {
            self.pin(&refs);
            let owner = |ino: &u64| -> Option<String> {
                if *ino == ROOT_INO {
                    active.name().map(str::to_string)
                } else {
                    self.inodes.get(*ino).map(|i| i.release.name.clone())
                }
            };
            let tallies: [(&HashMap<u64, usize>, UseField); 3] = [
                (&refs.open_files, |u| &mut u.open_files),
                (&refs.dirs, |u| &mut u.dirs),
                (&refs.maps, |u| &mut u.maps),
            ];
            for (counts, field) in tallies {
                for (ino, n) in counts {
                    if let Some(name) = owner(ino) {
                        *field(usage.entry(name).or_default()) += n;
                    }
                }
            }
        }
        let now = SystemTime::now();
        let mut last_used = self.last_used.lock();
        for (name, u) in &usage {
            if u.in_use() {
                last_used.insert(name.clone(), now);
            }
        }
        usage
    }

    /// What processes hold under the mount right now (see `procscan`).
    fn scan_mount(&self) -> Option<procscan::ProcRefs> {
        let (dev, _) = procscan::dev_ino(&self.config.mount_point)?;
        Some(procscan::scan(dev))
    }

    /// Pins the descriptor of every inode a process holds (see `FdSlot::set_pinned`), once
    /// the descriptor budget has ever had to close one; before that nothing can be lost.
    /// Run at each switch, before the old release can be deleted, and with every usage
    /// scan. Never from a FUSE worker: reading /proc/PID/maps can wait on a process that
    /// is itself waiting for a FUSE reply.
    fn pin_held_inodes(&self) {
        if self.inodes.evicted_any()
            && let Some(refs) = self.scan_mount()
        {
            self.pin(&refs);
        }
    }

    fn pin(&self, refs: &procscan::ProcRefs) {
        if !self.inodes.evicted_any() {
            return;
        }
        let held: HashSet<u64> = [&refs.open_files, &refs.dirs, &refs.maps]
            .into_iter()
            .flat_map(|m| m.keys().copied())
            .collect();
        let n = self.inodes.pin_only(&held);
        log::debug!("{n} inodes held by processes are pinned");
    }

    /// Deletes the oldest releases beyond the newest `keep`, sparing the active and the
    /// previous release and any release still in use (through the mount here, through its
    /// real path in `prune`, which also does the deleting without following links). Without
    /// `apply`, only says what it would delete. Serialised with switches, so a release cannot
    /// be activated while it is being deleted.
    ///
    /// # Errors
    /// The releases directory cannot be listed; a deletion failed (the message says which
    /// were deleted before).
    pub fn prune(&self, keep: usize, apply: bool) -> Result<String, String> {
        let _serial = self.switch_lock.lock();
        self.refuse_if_stopping()?;
        let names = self.list()?;
        let active = self.active();
        let usage = self.usage();
        let spared = [active.name(), active.previous.as_deref()];
        let kept = |name: &str| {
            if spared.contains(&Some(name)) {
                Some("active or previous".to_string())
            } else if usage.get(name).is_some_and(Use::in_use) {
                Some("still in use".to_string())
            } else {
                None
            }
        };
        crate::prune::prune(&self.releases, &names, keep, apply, &kept)
    }

    /// Rolls back like the deploy tools: to the release activated before the active one,
    /// one step further at each call, never to a release rolled back from since it was last
    /// activated (see `history`). With `to`, back to that release of the history.
    ///
    /// # Errors
    /// Nothing to roll back to, or the switch fails; the history is then unchanged.
    pub fn rollback(&self, to: Option<&str>, who: &str) -> Result<Switched, String> {
        let _serial = self.switch_lock.lock();
        let current = self.active();
        let current = current
            .name()
            .ok_or("no release is active, so there is nothing to roll back from")?;
        let exists = |name: &str| self.releases.open_release(name).is_ok();
        let (target, after) = self.history.lock().rollback(current, to, exists)?;
        *self.planned_history.lock() = Some(after);
        let switched = self.activate(&target, who);
        self.planned_history.lock().take();
        switched
    }

    /// The history to persist with a switch to `name`: what a rollback in progress planned,
    /// else `name` appended. Called with the switch lock held.
    fn next_history(&self, name: &str) -> History {
        let planned = self.planned_history.lock().take();
        match planned {
            Some(planned) if planned.entries().last().map(String::as_str) == Some(name) => planned,
            _ => self.history.lock().activated(name),
        }
    }

    /// The activation history and rollback marks, as of now.
    pub fn history(&self) -> History {
        self.history.lock().clone()
    }

    /// Tells the kernel to forget every root name it may cache from before a switch, then
    /// the root's own attributes and listing. Runs with no core lock held: a notification can
    /// wait for an in-flight lookup, which may need those locks to finish.
    fn invalidate_root(&self, names: HashSet<(u64, OsString)>) {
        let Some(inv) = self.invalidator.get() else {
            return;
        };
        for (parent, name) in &names {
            if let Err(e) = inv.inval_entry(*parent, name) {
                log::warn!("invalidating {name:?} failed: {e}");
            }
        }
        let portals: Vec<u64> = self.portals.read().by_ino.keys().copied().collect();
        for ino in std::iter::once(ROOT_INO).chain(portals) {
            if let Err(e) = inv.inval_inode(ino) {
                log::warn!("invalidating the attributes of inode {ino} failed: {e}");
            }
        }
        log::debug!("invalidated {} names", names.len());
    }

    /// The release names present, natural order.
    ///
    /// # Errors
    /// The releases directory cannot be read.
    pub fn list(&self) -> Result<Vec<String>, String> {
        self.releases.list().map_err(|e| {
            format!(
                "cannot list releases in {}: {e}",
                self.releases.path().display()
            )
        })
    }

    /// Everything `switchctl status` shows.
    pub fn status(&self) -> Status {
        let active = self.active();
        let active_problem = active.release.as_ref().and_then(|rel| {
            let missing = match sys::fstat(rel.root.as_fd()) {
                Ok(st) => st.st_nlink == 0,
                Err(_) => true,
            };
            let renamed = self
                .releases
                .open_dir(&rel.name)
                .ok()
                .and_then(|fd| sys::fstat(fd.as_fd()).ok())
                .zip(sys::fstat(rel.root.as_fd()).ok())
                .is_none_or(|(now, served)| {
                    now.st_ino != served.st_ino || now.st_dev != served.st_dev
                });
            if missing {
                Some(format!("the directory of release {} was deleted", rel.name))
            } else if renamed {
                Some(format!(
                    "the directory of release {} was renamed or replaced",
                    rel.name
                ))
            } else {
                None
            }
        });
        let now_used = self.usage();
        let present: HashSet<String> = self.list().unwrap_or_default().into_iter().collect();
        let last_used = self.last_used.lock().clone();
        let mut usage: Vec<ReleaseUsage> = present
            .iter()
            .chain(now_used.keys())
            .cloned()
            .collect::<HashSet<_>>()
            .into_iter()
            .map(|name| {
                let u = now_used.get(&name).cloned().unwrap_or_default();
                ReleaseUsage {
                    active: u.active,
                    in_use: u.in_use(),
                    unused_since: (!u.in_use())
                        .then(|| last_used.get(&name).copied())
                        .flatten(),
                    present: present.contains(&name),
                    name,
                    open_handles: u.open_handles,
                    open_files: u.open_files,
                    dirs: u.dirs,
                    maps: u.maps,
                    live_inodes: u.live_inodes,
                }
            })
            .collect();
        usage.sort_by(|a, b| crate::release::natural_cmp(&a.name, &b.name));
        Status {
            active: active.name().map(str::to_string),
            since: active.since,
            previous: active.previous.clone(),
            history: self.history(),
            releases_dir: self.releases.path().to_path_buf(),
            mount_point: self.config.mount_point.clone(),
            active_problem,
            usage,
        }
    }

    /// Live inode count (for leak checks in tests).
    pub fn live_inodes(&self) -> usize {
        self.inodes.len()
    }

    /// Open handle count (for leak checks in tests).
    pub fn open_handles(&self) -> usize {
        self.handles.len()
    }
}

/// The mtime registry persisted at `path`. One that cannot be opened safely is logged and
/// replaced by one in memory: serving goes on, the rule then holds only until a restart.
fn open_mtimes(path: Option<&Path>) -> MtimeRegistry {
    let Some(path) = path else {
        return MtimeRegistry::default();
    };
    MtimeRegistry::open(path).unwrap_or_else(|e| {
        log::error!(
            "mtime registry {} is unusable ({e}); keeping it in memory only",
            path.display()
        );
        MtimeRegistry::default()
    })
}

fn is_trusted_xattr(name: &[u8]) -> bool {
    name.starts_with(b"trusted.")
}

/// The history a restarted daemon resumes: as persisted, ending with the active release.
fn restored_history(st: &PersistedState) -> History {
    let history = st.history.clone();
    if history.entries().last() == Some(&st.active) {
        history
    } else {
        history.activated(&st.active)
    }
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

/// Whether two descriptors are the same directory (device and inode).
fn same_dir(a: &OwnedFd, b: &OwnedFd) -> bool {
    match (sys::fstat(a.as_fd()), sys::fstat(b.as_fd())) {
        (Ok(x), Ok(y)) => x.st_dev == y.st_dev && x.st_ino == y.st_ino,
        _ => false,
    }
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

/// What PHP sees of one file of a release through the mount: its identity on the host and
/// the modification time the mount reports for it (see `mtimes`). Used by `opcache` to
/// decide which cached scripts a switch changed.
#[derive(Debug)]
pub struct FileView {
    pub dev: u64,
    pub ino: u64,
    pub size: i64,
    pub reported_mtime: i64,
    /// The file itself (`O_PATH`), to compare contents without resolving the path again.
    pub fd: OwnedFd,
}

impl Core {
    /// The file at `path` (relative, plain components) in `release`, as the mount reports
    /// it. The walk follows no symlink, so only regular files reached by plain names count.
    ///
    /// # Errors
    /// Missing, not a regular file (`EINVAL`), or a component that is not a plain name.
    pub fn file_view(&self, release: &Arc<Release>, path: &Path) -> io::Result<FileView> {
        if path
            .components()
            .any(|c| !matches!(c, std::path::Component::Normal(_)))
        {
            return Err(os_error(libc::EINVAL));
        }
        let fd = sys::open_path_walk(release.root.as_fd(), path)?;
        let st = sys::fstat(fd.as_fd())?;
        if st.st_mode & libc::S_IFMT != libc::S_IFREG {
            return Err(os_error(libc::EINVAL));
        }
        let reported_mtime = self
            .mtimes
            .decide(release, path, fd.as_fd(), &st)
            .map_or(st.st_mtime, |o| o.reported);
        Ok(FileView {
            dev: st.st_dev,
            ino: st.st_ino,
            size: st.st_size,
            reported_mtime,
            fd,
        })
    }
}

impl Core {
    /// Paths (relative to their release root) of the files of releases other than `except`
    /// that some process holds open right now, per /proc (see `procscan`). PHP holds a script
    /// open while it compiles it, so this shows compilations still reading an old release.
    pub fn open_paths_outside(&self, except: &Arc<Release>) -> Vec<PathBuf> {
        let Some(refs) = self.scan_mount() else {
            return Vec::new();
        };
        refs.open_files
            .keys()
            .filter_map(|&ino| self.inodes.get(ino))
            .filter(|inode| inode.release.generation != except.generation)
            .map(|inode| inode.path.clone())
            .collect()
    }
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
    pub fn resume_nodes(
        &self,
        log: Arc<crate::nodelog::NodeLog>,
        first_handle: u64,
    ) -> io::Result<usize> {
        let restored = log.load_and_compact()?;
        let mut releases: HashMap<u64, Option<Arc<Release>>> = HashMap::new();
        let mut count = 0;
        for n in &restored.nodes {
            let release = releases.entry(n.generation).or_insert_with(|| {
                match self.releases.open_release(&n.release) {
                    Ok(fd) => {
                        let generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
                        Some(Arc::new(Release::new(&n.release, generation, fd)))
                    }
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
        {
            let mut portals = self.portals.write();
            for (ino, name) in restored.portals {
                portals.by_name.insert(name.clone(), ino);
                portals.by_ino.insert(ino, name);
            }
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
    pub fn reopen_dir_handle(&self, ino: u64, fh: u64) -> io::Result<()> {
        if !self.handles.from_predecessor(fh) {
            return Ok(());
        }
        let new = self.opendir(&Caller::ROOT, ino)?;
        self.handles.renumber(new, fh);
        Ok(())
    }
}
