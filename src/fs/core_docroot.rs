//! The FUSE core as the switcher's `Docroot`: publishing a release (the pointer swap, then
//! the kernel's caches dropped), what uses each release through the mount (handles the core
//! gave out, inodes the kernel caches, and what processes hold, per `procscan`), pinning, and
//! what PHP sees of a file (the mtime rule). A child of `core`, so `Core`'s fields stay
//! private to the filesystem.
//!
//! Never run from a FUSE worker: reading /proc/PID/maps can wait on a process that is itself
//! waiting for a FUSE reply.

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::io;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::Core;
use crate::fs::inodes::ROOT_INO;
use crate::switch::docroot::{Active, Docroot, FileView, Use};
use crate::switch::procscan;
use crate::switch::release::{Release, same_dir};

/// Selects one counter of a `Use`.
type UseField = fn(&mut Use) -> &mut usize;

impl Docroot for Core {
    fn mode(&self) -> &'static str {
        "fuse"
    }

    fn sync_before_switch(&self) {
        self.mtimes.sync();
    }

    /// Pins the descriptor of every inode a process holds (see `FdSlot::set_pinned`), once
    /// the descriptor budget has ever had to close one; before that nothing can be lost.
    /// Run at each switch, before the old release can be deleted, and with every usage scan.
    fn pin_held(&self) {
        if self.inodes.evicted_any()
            && let Some(refs) = self.scan_mount()
        {
            self.pin(&refs);
        }
    }

    fn publish(&self, active: Arc<Active>) -> Result<(), String> {
        let stale = self.swap_active(active);
        self.invalidate_root(stale);
        Ok(())
    }

    fn usage(&self) -> HashMap<String, Use> {
        let active = self.active();
        let mut usage: HashMap<String, Use> = HashMap::new();
        for (name, n) in self.handles.count_by_release() {
            usage.entry(name).or_default().open_handles = n;
        }
        for (name, n) in self.inodes.count_by_release() {
            usage.entry(name).or_default().live_inodes = n;
        }
        let Some(refs) = self.scan_mount() else {
            return usage;
        };
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
        usage
    }

    fn open_paths_outside(&self, except: &Arc<Release>, pids: &[i32]) -> Vec<PathBuf> {
        let Some((dev, _)) = procscan::dev_ino(&self.config.mount_point) else {
            return Vec::new();
        };
        pids.iter()
            .flat_map(|pid| open_inodes_of(*pid, dev))
            .filter_map(|ino| self.inodes.get(ino))
            .filter(|inode| {
                inode.release.generation != except.generation
                    && !same_dir(&inode.release.root, &except.root)
            })
            .map(|inode| inode.path.clone())
            .collect()
    }

    fn file_view(&self, release: &Arc<Release>, path: &Path) -> io::Result<FileView> {
        let (fd, st) = crate::switch::docroot::open_release_file(release, path)?;
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
    /// What processes hold under the mount right now (see `procscan`).
    fn scan_mount(&self) -> Option<procscan::ProcRefs> {
        let (dev, _) = procscan::dev_ino(&self.config.mount_point)?;
        Some(procscan::scan(dev))
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
        let portals: Vec<u64> = self.portals.inos();
        for ino in std::iter::once(ROOT_INO).chain(portals) {
            if let Err(e) = inv.inval_inode(ino) {
                log::warn!("invalidating the attributes of inode {ino} failed: {e}");
            }
        }
        log::debug!("invalidated {} names", names.len());
    }
}

/// The inode numbers on device `dev` (the mount) of the files process `pid` holds open; none
/// when it has gone or cannot be inspected.
fn open_inodes_of(pid: i32, dev: u64) -> Vec<u64> {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    fds.flatten()
        .filter_map(|fd| procscan::dev_ino(&fd.path()))
        .filter(|&(d, _)| d == dev)
        .map(|(_, ino)| ino)
        .collect()
}
