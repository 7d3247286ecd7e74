//! Which processes still hold each release mount switchfs made: open descriptors
//! (/proc/PID/fd/N), working and root directories (/proc/PID/cwd, root) and memory maps
//! (/proc/PID/map_files/*, readable by root only), each statx'ed for its mount id. Detached
//! mounts have the releases filesystem's device, so the mount id is what tells them apart.
//!
//! Bounded: listing map_files takes each process's mmap lock, which a page fault waiting on
//! a FUSE server can hold for as long as it likes; the maps are read by procscan's deadline
//! reader, and what it has not read by then is left out (logged). Descriptors, cwd and root
//! do not take that lock; their statx uses `AT_STATX_DONT_SYNC`, so no FUSE server is asked.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{BindDocroot, ReleaseMount};
use crate::{procscan, sys};

/// How long one scan may spend listing memory maps.
const MAPS_DEADLINE: Duration = Duration::from_millis(500);

/// What holds one release mount right now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MountUsage {
    pub release: String,
    pub mnt_id: u64,
    /// The mount served at the mount point.
    pub active: bool,
    pub open_files: usize,
    /// Working and root directories.
    pub dirs: usize,
    /// Distinct files mapped, per process.
    pub maps: usize,
    /// The processes holding any of the above, ascending.
    pub pids: Vec<i32>,
}

impl MountUsage {
    /// Active, or held by some process.
    pub fn in_use(&self) -> bool {
        self.active || self.open_files + self.dirs + self.maps > 0
    }
}

/// References to mount ids, per kind, from one /proc pass.
#[derive(Default)]
struct Refs {
    open_files: HashMap<u64, usize>,
    dirs: HashMap<u64, usize>,
    maps: HashMap<u64, usize>,
    pids: HashMap<u64, HashSet<i32>>,
}

fn pids() -> Vec<(i32, PathBuf)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| {
            let pid = e.file_name().to_str()?.parse::<i32>().ok()?;
            Some((pid, e.path()))
        })
        .collect()
}

fn mnt_of(path: &Path, ids: &HashSet<u64>) -> Option<u64> {
    sys::mount_stat_of_proc_link(path)
        .ok()
        .map(|st| st.mnt_id)
        .filter(|id| ids.contains(id))
}

fn scan(ids: &HashSet<u64>) -> Refs {
    let mut refs = Refs::default();
    let procs = pids();
    for (pid, base) in &procs {
        for link in ["cwd", "root"] {
            if let Some(id) = mnt_of(&base.join(link), ids) {
                *refs.dirs.entry(id).or_default() += 1;
                refs.pids.entry(id).or_default().insert(*pid);
            }
        }
        let Ok(fds) = std::fs::read_dir(base.join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Some(id) = mnt_of(&fd.path(), ids) {
                *refs.open_files.entry(id).or_default() += 1;
                refs.pids.entry(id).or_default().insert(*pid);
            }
        }
    }
    let wanted = ids.clone();
    let maps = procscan::read_with_deadline(procs, MAPS_DEADLINE, move |(pid, base)| {
        maps_of(*pid, base, &wanted)
    });
    for (pid, id) in maps {
        *refs.maps.entry(id).or_default() += 1;
        refs.pids.entry(id).or_default().insert(pid);
    }
    refs
}

/// `(pid, mount id)` once per distinct mapped file of ours in process `pid`.
fn maps_of(pid: i32, base: &Path, ids: &HashSet<u64>) -> Vec<(i32, u64)> {
    let Ok(entries) = std::fs::read_dir(base.join("map_files")) else {
        return Vec::new();
    };
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for e in entries.flatten() {
        if let Ok(st) = sys::mount_stat_of_proc_link(&e.path())
            && ids.contains(&st.mnt_id)
            && seen.insert((st.mnt_id, st.dev, st.ino))
        {
            out.push((pid, st.mnt_id));
        }
    }
    out
}

impl BindDocroot {
    /// What holds each release mount switchfs made (the active one first, then the
    /// detached ones, oldest first). Detached mounts nothing holds any more are gone from
    /// the kernel and are forgotten here.
    pub fn usage(&mut self) -> Vec<MountUsage> {
        let ours: Vec<(ReleaseMount, bool)> = self
            .active
            .iter()
            .map(|m| (m.clone(), true))
            .chain(self.detached.iter().map(|m| (m.clone(), false)))
            .collect();
        let ids: HashSet<u64> = ours.iter().map(|(m, _)| m.mnt_id).collect();
        let refs = scan(&ids);
        let usage: Vec<MountUsage> = ours
            .into_iter()
            .map(|(m, active)| {
                let mut pids: Vec<i32> = refs
                    .pids
                    .get(&m.mnt_id)
                    .map(|p| p.iter().copied().collect())
                    .unwrap_or_default();
                pids.sort_unstable();
                MountUsage {
                    release: m.release,
                    mnt_id: m.mnt_id,
                    active,
                    open_files: refs.open_files.get(&m.mnt_id).copied().unwrap_or(0),
                    dirs: refs.dirs.get(&m.mnt_id).copied().unwrap_or(0),
                    maps: refs.maps.get(&m.mnt_id).copied().unwrap_or(0),
                    pids,
                }
            })
            .collect();
        let unused: HashSet<u64> = usage
            .iter()
            .filter(|u| !u.in_use())
            .map(|u| u.mnt_id)
            .collect();
        self.detached.retain(|m| !unused.contains(&m.mnt_id));
        usage
    }

    /// Whether any mount of release `name` is active or held (for prune and drains).
    pub fn release_in_use(&mut self, name: &str) -> bool {
        self.usage().iter().any(|u| u.release == name && u.in_use())
    }
}
