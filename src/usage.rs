//! What uses each release right now, and `status`: the active pointer, handles the daemon
//! gave out, and what processes hold under the mount (descriptors, working directories,
//! maps; see `procscan`). Prune spares releases in use, a drain waits for the previous one to
//! be unused, and the usage scan pins the descriptors of inodes processes hold.
//!
//! Never run from a FUSE worker: reading /proc/PID/maps can wait on a process that is itself
//! waiting for a FUSE reply.

use std::collections::{HashMap, HashSet};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::core::Core;
use crate::history::History;
use crate::inodes::ROOT_INO;
use crate::procscan;
use crate::release::Release;
use crate::sys;

/// Selects one counter of a `Use`.
type UseField = fn(&mut Use) -> &mut usize;

/// What uses one release right now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Use {
    active: bool,
    open_handles: usize,
    open_files: usize,
    dirs: usize,
    maps: usize,
    live_inodes: usize,
}

impl Use {
    /// Cached inodes alone do not count: the kernel keeps unused ones until memory is short.
    pub(crate) fn in_use(&self) -> bool {
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

impl Core {
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
    pub(crate) fn usage(&self) -> HashMap<String, Use> {
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
    pub(crate) fn pin_held_inodes(&self) {
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

    /// Paths (relative to their release root) of the files of releases other than `except`
    /// that one of `pids` holds open right now, per /proc. PHP holds a script open while it
    /// compiles it, so this shows compilations of the pool's processes still reading an old
    /// release. A file of `except`'s own directory (switched away and back since it was
    /// opened) is not "other": its bytecode is the active release's.
    pub fn open_paths_outside(&self, except: &Arc<Release>, pids: &[i32]) -> Vec<PathBuf> {
        let Some((dev, _)) = procscan::dev_ino(&self.config.mount_point) else {
            return Vec::new();
        };
        pids.iter()
            .flat_map(|pid| open_inodes_of(*pid, dev))
            .filter_map(|ino| self.inodes.get(ino))
            .filter(|inode| {
                inode.release.generation != except.generation
                    && !crate::switch::same_dir(&inode.release.root, &except.root)
            })
            .map(|inode| inode.path.clone())
            .collect()
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
