//! Open file and directory handles. A handle carries the release it was opened in, so a
//! reader that opened a file before a switch keeps reading that release to the end. Handle
//! numbers are never reused.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::File;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use fuser::FileType;
use parking_lot::Mutex;

use crate::fs::inodes::Inode;
use crate::switch::release::Release;

/// One entry of a directory snapshot.
#[derive(Debug, Clone)]
pub(crate) struct DirItem {
    pub name: OsString,
    pub kind: FileType,
    /// The host inode number, used as the `d_ino` hint of a plain readdir.
    pub host_ino: u64,
}

/// The directory a directory handle lists, kept alive for readdirplus lookups.
#[derive(Debug)]
pub(crate) enum DirSource {
    /// The root or a top-level directory of the release that was active when opened.
    Active {
        release: Arc<Release>,
        fd: Arc<OwnedFd>,
        path: PathBuf,
    },
    /// Any other directory.
    Inode(Arc<Inode>),
    /// The mount root while no release is active.
    Empty,
}

#[derive(Debug)]
pub(crate) enum HandleKind {
    File(File),
    /// The entries as they were at opendir, so offsets stay stable for the whole listing.
    Dir {
        source: DirSource,
        items: Vec<DirItem>,
    },
}

#[derive(Debug)]
pub(crate) struct Handle {
    pub ino: u64,
    /// The release this handle reads from; `None` for the empty root.
    pub release: Option<Arc<Release>>,
    pub kind: HandleKind,
}

#[derive(Debug)]
pub(crate) struct HandleTable {
    map: Mutex<HashMap<u64, Arc<Handle>>>,
    next: AtomicU64,
    /// Handles below this were given out by a predecessor process (see `start_at`).
    first: AtomicU64,
}

impl Default for HandleTable {
    fn default() -> Self {
        HandleTable {
            map: Mutex::new(HashMap::new()),
            next: AtomicU64::new(1),
            first: AtomicU64::new(1),
        }
    }
}

impl HandleTable {
    pub(crate) fn insert(&self, handle: Handle) -> u64 {
        let fh = self.next.fetch_add(1, Ordering::Relaxed);
        self.map.lock().insert(fh, Arc::new(handle));
        fh
    }

    /// Numbers new handles from `first` on (if higher): a successor process must not give
    /// out a number the kernel still holds from its predecessor.
    pub(crate) fn start_at(&self, first: u64) {
        self.next.fetch_max(first, Ordering::Relaxed);
        self.first.fetch_max(first, Ordering::Relaxed);
    }

    /// Whether `fh` was given out by a predecessor process: the kernel may still use it.
    pub(crate) fn is_from_predecessor(&self, fh: u64) -> bool {
        fh != 0 && fh < self.first.load(Ordering::Relaxed) && self.get(fh).is_none()
    }

    /// Gives handle `from` the number `fh` (a predecessor's handle, opened again).
    pub(crate) fn renumber(&self, from: u64, fh: u64) {
        let mut map = self.map.lock();
        if let Some(handle) = map.remove(&from) {
            map.insert(fh, handle);
        }
    }

    pub(crate) fn get(&self, fh: u64) -> Option<Arc<Handle>> {
        self.map.lock().get(&fh).cloned()
    }

    pub(crate) fn remove(&self, fh: u64) -> Option<Arc<Handle>> {
        self.map.lock().remove(&fh)
    }

    /// Open handles per release name (the empty root is not counted).
    pub(crate) fn count_by_release(&self) -> HashMap<String, usize> {
        let mut counts = HashMap::new();
        for handle in self.map.lock().values() {
            if let Some(rel) = &handle.release {
                *counts.entry(rel.name.clone()).or_insert(0) += 1;
            }
        }
        counts
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.map.lock().len()
    }
}
