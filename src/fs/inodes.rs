//! The inode table: FUSE inode numbers for the files of each activated release.
//!
//! Invariants:
//! - An inode is keyed by (release generation, st_dev, st_ino), so an inode never belongs to
//!   two activations: a path looked up after a switch can never reuse a cached inode, page
//!   or attribute of the release before it.
//! - Inode numbers come from a counter and are never reused (1 is the root, never stored here).
//! - The lookup count is the reference count: +1 per entry handed to the kernel, FORGET
//!   subtracts; at 0 the entry, its `O_PATH` descriptor and its hold on the release go away.
//! - Every entry holds an `O_PATH` descriptor, so its host inode number cannot be reused while
//!   the kernel may still ask about it.

use std::collections::{HashMap, HashSet};
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use fuser::FileType;
use parking_lot::RwLock;

use crate::fs::mtimes::MtimeOverride;
use crate::fs::nodelog::{NodeLog, NodeRecord};
use crate::switch::release::Release;
use std::io;
use std::os::fd::AsFd;
use std::path::PathBuf;

use crate::fs::fds::{FdBudget, FdSlot};
use crate::sys;

/// The FUSE inode number of the mount's root.
pub(crate) const ROOT_INO: u64 = 1;

/// One file, directory or symlink of one activated release.
#[derive(Debug)]
pub(crate) struct Inode {
    pub ino: u64,
    pub release: Arc<Release>,
    pub kind: FileType,
    /// Path relative to the release root, as first looked up.
    pub path: PathBuf,
    /// The mtime to report instead of the real one (see `mtimes`).
    pub mtime: Option<MtimeOverride>,
    /// The host file's identity (`sys::identity`), to check a reopened descriptor is still
    /// the same file.
    host: (u64, u64, i64, u32),
    /// Its descriptor, within the budget (see `fds`).
    slot: Arc<FdSlot>,
}

impl Inode {
    /// A descriptor of the host file (`O_PATH` or readable), reopened from the release root
    /// by path if the budget had closed it.
    ///
    /// # Errors
    /// ESTALE when the path now leads to another file (or nowhere); the host's error.
    pub(crate) fn fd(&self) -> io::Result<Arc<OwnedFd>> {
        if let Some((fd, _)) = self.slot.get() {
            return Ok(fd);
        }
        Ok(self.slot.install(self.reopen_by_path()?, false))
    }

    /// A readable descriptor of this regular file.
    ///
    /// # Errors
    /// As for `fd`, or the host refuses to open it for reading.
    pub(crate) fn read_fd(&self) -> io::Result<Arc<OwnedFd>> {
        if let Some((fd, true)) = self.slot.get() {
            return Ok(fd);
        }
        let path_fd = self.fd()?;
        let file = sys::reopen(path_fd.as_fd(), libc::O_RDONLY | libc::O_NONBLOCK)?;
        Ok(self.slot.install(file.into(), true))
    }

    fn reopen_by_path(&self) -> io::Result<OwnedFd> {
        let fd = sys::open_path_walk(self.release.root.as_fd(), &self.path)?;
        if sys::identity(fd.as_fd())? != self.host {
            // Replaced or moved inside a release: never serve another file under this inode.
            return Err(io::Error::from_raw_os_error(libc::ESTALE));
        }
        Ok(fd)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    generation: u64,
    dev: u64,
    host_ino: u64,
}

#[derive(Debug)]
struct Slot {
    inode: Arc<Inode>,
    key: Key,
    nlookup: AtomicU64,
}

#[derive(Debug, Default)]
struct Maps {
    by_ino: HashMap<u64, Slot>,
    by_key: HashMap<Key, u64>,
}

#[derive(Debug)]
pub(crate) struct InodeTable {
    maps: RwLock<Maps>,
    next_ino: AtomicU64,
    budget: Arc<FdBudget>,
    /// Inodes whose descriptors are pinned (see `pin_only`).
    pinned: parking_lot::Mutex<HashSet<u64>>,
    /// Where new and forgotten inodes are recorded for a successor (see `nodelog`).
    log: std::sync::OnceLock<Arc<NodeLog>>,
}

impl Default for InodeTable {
    fn default() -> Self {
        InodeTable::new(FdBudget::new(usize::MAX / 2))
    }
}

impl InodeTable {
    pub(crate) fn new(budget: Arc<FdBudget>) -> InodeTable {
        InodeTable {
            maps: RwLock::new(Maps::default()),
            next_ino: AtomicU64::new(ROOT_INO + 1),
            budget,
            pinned: parking_lot::Mutex::new(HashSet::new()),
            log: std::sync::OnceLock::new(),
        }
    }

    /// Descriptors the inodes hold now, and the most they may (for tests).
    #[cfg(test)]
    pub(crate) fn fds(&self) -> (usize, usize) {
        (self.budget.open(), self.budget.cap())
    }

    /// Whether the budget ever closed a descriptor; until it has, pinning is not needed.
    pub(crate) fn evicted_any(&self) -> bool {
        self.budget.has_evicted()
    }

    /// Pins the descriptors of the inodes in `held` (those processes hold open, mapped or as
    /// working directory), reopening any the budget had closed while that is still possible,
    /// and unpins the rest. Returns how many are pinned.
    ///
    /// Bounded: at most half the budget is pinned, and a closed descriptor is reopened only
    /// while the budget has room. Any user who can read files under the mount can hold many
    /// open, and unbounded pins would eat the reserve that switches and lookups need (EMFILE
    /// for everyone). Those already open are pinned first: that costs nothing.
    pub(crate) fn pin_only(&self, held: &HashSet<u64>) -> usize {
        let max_pins = self.budget.cap() / 2;
        let mut pinned = self.pinned.lock();
        for ino in pinned.difference(held) {
            if let Some(inode) = self.get(*ino) {
                inode.slot.set_pinned(false);
            }
        }
        pinned.clear();
        let inodes: Vec<Arc<Inode>> = held.iter().filter_map(|ino| self.get(*ino)).collect();
        let (open, closed): (Vec<_>, Vec<_>) =
            inodes.into_iter().partition(|i| i.slot.get().is_some());
        let mut skipped = 0;
        for inode in open {
            if pinned.len() >= max_pins {
                skipped += 1;
                continue;
            }
            inode.slot.set_pinned(true);
            pinned.insert(inode.ino);
        }
        for inode in closed {
            if pinned.len() >= max_pins || self.budget.open() >= self.budget.cap() {
                skipped += 1;
                continue;
            }
            inode.slot.set_pinned(true);
            if let Err(e) = inode.fd() {
                log::warn!(
                    "a process holds {} of release {} but it cannot be reopened: {e}",
                    inode.path.display(),
                    inode.release.name
                );
                inode.slot.set_pinned(false);
                continue;
            }
            pinned.insert(inode.ino);
        }
        if skipped > 0 {
            log::warn!(
                "{skipped} files held by processes are not pinned (at most {max_pins} are): \
                 they read on only while their release exists"
            );
        }
        pinned.len()
    }

    /// The live inode `ino`, if the kernel still holds it.
    pub(crate) fn get(&self, ino: u64) -> Option<Arc<Inode>> {
        self.maps.read().by_ino.get(&ino).map(|s| s.inode.clone())
    }

    /// Records one more kernel reference to the host file behind `fd` (stat `st`) in
    /// `release`, creating the entry if needed, and returns its inode. A descriptor that
    /// duplicates an existing entry is simply dropped.
    pub(crate) fn remember(
        &self,
        release: &Arc<Release>,
        fd: OwnedFd,
        st: &libc::stat,
        path: PathBuf,
        mtime: Option<MtimeOverride>,
    ) -> Arc<Inode> {
        let key = Key {
            generation: release.generation,
            dev: st.st_dev,
            host_ino: st.st_ino,
        };
        {
            let maps = self.maps.read();
            if let Some(slot) = maps.by_key.get(&key).and_then(|ino| maps.by_ino.get(ino)) {
                // FORGET takes the write lock, so the slot cannot vanish while we count.
                slot.nlookup.fetch_add(1, Ordering::Relaxed);
                return reuse(&slot.inode, fd);
            }
        }
        let mut maps = self.maps.write();
        // Re-check under the write lock: another lookup may have inserted it meanwhile.
        if let Some(slot) = maps.by_key.get(&key).and_then(|ino| maps.by_ino.get(ino)) {
            slot.nlookup.fetch_add(1, Ordering::Relaxed);
            return reuse(&slot.inode, fd);
        }
        // Without an identity, fall back to one that never matches: once its descriptor is
        // closed the inode answers ESTALE rather than risk serving another file.
        let host = match sys::identity(fd.as_fd()) {
            Ok(id) => id,
            Err(e) => {
                log::warn!("cannot identify {}: {e}", path.display());
                (st.st_dev, st.st_ino, i64::MIN, 0)
            }
        };
        let ino = self.next_ino.fetch_add(1, Ordering::Relaxed);
        let inode = Arc::new(Inode {
            ino,
            release: release.clone(),
            kind: crate::fs::attr::kind_of_mode(st.st_mode).unwrap_or(FileType::RegularFile),
            path,
            mtime,
            host,
            slot: FdSlot::new(&self.budget),
        });
        inode.slot.install(fd, false);
        maps.by_key.insert(key, ino);
        maps.by_ino.insert(
            ino,
            Slot {
                inode: inode.clone(),
                key,
                nlookup: AtomicU64::new(1),
            },
        );
        // Before the lookup is answered, so the kernel never holds an id a successor lacks.
        if let Some(log) = self.log.get() {
            log.node(&inode.record());
        }
        inode
    }

    /// Drops `n` kernel references to `ino`. Unknown inodes are logged, never a panic: the
    /// kernel and we must agree, and a disagreement is a bug to see, not a reason to die.
    pub(crate) fn forget(&self, ino: u64, n: u64) {
        let mut maps = self.maps.write();
        let Some(slot) = maps.by_ino.get(&ino) else {
            if ino != ROOT_INO {
                log::warn!("forget of unknown inode {ino} (n={n})");
            }
            return;
        };
        let left = slot.nlookup.load(Ordering::Relaxed).saturating_sub(n);
        slot.nlookup.store(left, Ordering::Relaxed);
        if left == 0 {
            let key = slot.key;
            maps.by_ino.remove(&ino);
            maps.by_key.remove(&key);
            if let Some(log) = self.log.get() {
                log.forget(ino);
            }
        }
    }

    /// Number of live inodes.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.maps.read().by_ino.len()
    }

    /// Number of live inodes per release name.
    pub(crate) fn count_by_release(&self) -> HashMap<String, usize> {
        let mut counts = HashMap::new();
        for slot in self.maps.read().by_ino.values() {
            *counts.entry(slot.inode.release.name.clone()).or_insert(0) += 1;
        }
        counts
    }
}

// Node ids across a restart or an upgrade (see `nodelog`).

/// A restored inode stays until the daemon stops: its true lookup count died with the
/// process that counted it, and freeing an id the kernel still uses would make it ESTALE.
const RESTORED_LOOKUPS: u64 = u64::MAX / 2;

impl Inode {
    fn record(&self) -> NodeRecord {
        NodeRecord {
            ino: self.ino,
            generation: self.release.generation,
            release: self.release.name.clone(),
            kind: self.kind,
            host: self.host,
            mtime: self.mtime,
            path: self.path.clone(),
        }
    }
}

impl InodeTable {
    /// Records every inode created from now on in `log`.
    pub(crate) fn set_log(&self, log: Arc<NodeLog>) {
        let _ = self.log.set(log);
    }

    /// Puts back an inode a predecessor handed to the kernel, bound to `release` (opened
    /// again by name), without a descriptor: the first use reopens its path and checks the
    /// host identity, so a file replaced meanwhile answers ESTALE, never another file.
    pub(crate) fn restore(&self, n: &NodeRecord, release: &Arc<Release>) {
        let key = Key {
            generation: release.generation,
            dev: n.host.0,
            host_ino: n.host.1,
        };
        let inode = Arc::new(Inode {
            ino: n.ino,
            release: release.clone(),
            kind: n.kind,
            path: n.path.clone(),
            mtime: n.mtime,
            host: n.host,
            slot: FdSlot::new(&self.budget),
        });
        let mut maps = self.maps.write();
        maps.by_key.insert(key, n.ino);
        maps.by_ino.insert(
            n.ino,
            Slot {
                inode,
                key,
                nlookup: AtomicU64::new(RESTORED_LOOKUPS),
            },
        );
        self.next_ino.fetch_max(n.ino + 1, Ordering::Relaxed);
    }
}

/// A known inode found again: keep the fresh descriptor if the budget had closed its own.
fn reuse(inode: &Arc<Inode>, fd: OwnedFd) -> Arc<Inode> {
    if inode.slot.get().is_none() {
        inode.slot.install(fd, false);
    }
    inode.clone()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys;
    use crate::testutil::TempDir;
    use std::os::fd::AsFd;

    fn release(dir: &std::path::Path, generation: u64) -> Arc<Release> {
        Arc::new(Release::new(
            &format!("r{generation}"),
            generation,
            sys::open_dir_path(dir, true).unwrap(),
        ))
    }

    #[test]
    fn counts_lookups_and_forgets() {
        let tmp = TempDir::new("inodes");
        std::fs::write(tmp.path().join("f"), b"x").unwrap();
        let rel = release(tmp.path(), 7);
        let table = InodeTable::default();
        let open = || sys::open_path_beneath(rel.root.as_fd(), "f".as_ref()).unwrap();
        let fd = open();
        let st = sys::fstat(fd.as_fd()).unwrap();
        let a = table.remember(&rel, fd, &st, "f".into(), None);
        let b = table.remember(&rel, open(), &st, "f".into(), None);
        assert_eq!(a.ino, b.ino, "same host file, same release: same inode");
        assert!(a.ino > ROOT_INO);
        assert_eq!(table.len(), 1);
        table.forget(a.ino, 1);
        assert_eq!(table.len(), 1, "still one reference");
        table.forget(a.ino, 1);
        assert_eq!(table.len(), 0);
        table.forget(a.ino, 1); // unknown now: logged, no panic
        drop((a, b));
        assert_eq!(
            Arc::strong_count(&rel),
            1,
            "no inode keeps the release alive"
        );
    }

    #[test]
    fn generations_never_share_inodes() {
        let tmp = TempDir::new("inodes");
        std::fs::write(tmp.path().join("f"), b"x").unwrap();
        let (r1, r2) = (release(tmp.path(), 1), release(tmp.path(), 2));
        let table = InodeTable::default();
        let fd = sys::open_path_beneath(r1.root.as_fd(), "f".as_ref()).unwrap();
        let st = sys::fstat(fd.as_fd()).unwrap();
        let a = table.remember(&r1, fd, &st, "f".into(), None);
        let fd = sys::open_path_beneath(r2.root.as_fd(), "f".as_ref()).unwrap();
        let b = table.remember(&r2, fd, &st, "f".into(), None);
        assert_ne!(a.ino, b.ino);
        let counts = table.count_by_release();
        assert_eq!((counts["r1"], counts["r2"]), (1, 1));
    }

    #[test]
    fn pins_stay_within_half_the_budget_and_never_overrun_it() {
        let tmp = TempDir::new("inodes");
        let rel = release(tmp.path(), 1);
        let table = InodeTable::new(FdBudget::new(16));
        let mut held = HashSet::new();
        for i in 0..40 {
            let name = format!("f{i}");
            std::fs::write(tmp.path().join(&name), b"x").unwrap();
            let fd = sys::open_path_beneath(rel.root.as_fd(), name.as_ref()).unwrap();
            let st = sys::fstat(fd.as_fd()).unwrap();
            held.insert(table.remember(&rel, fd, &st, name.into(), None).ino);
        }
        assert!(table.evicted_any(), "40 inodes in a budget of 16");
        // Every inode is held by "a process": only half the budget is pinned, and reopening
        // closed descriptors stops at the budget.
        let pinned = table.pin_only(&held);
        assert_eq!(pinned, 8);
        let (open, cap) = table.fds();
        assert!(open <= cap, "{open} descriptors open for a budget of {cap}");
        // Unpinned again when nothing is held any more.
        assert_eq!(table.pin_only(&HashSet::new()), 0);
    }
}
