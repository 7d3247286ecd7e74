//! Which processes still hold each release mount switchfs made: open descriptors
//! (/proc/PID/fd/N), working and root directories (/proc/PID/cwd, root) and memory maps
//! (/proc/PID/map_files/*, readable by root only), each statx'ed for its mount id. Detached
//! mounts have the releases filesystem's device, so the mount id is what tells them apart.
//! Processes in other mount namespaces hold propagated copies of our mounts instead, known by
//! the classic ids their namespace's mountinfo lists (see [`BindDocroot::learn_copies`]);
//! they are counted under the release whose copy they hold.
//!
//! Bounded: listing map_files takes each process's mmap lock, which a page fault waiting on
//! a FUSE server can hold for as long as it likes; the maps are read by procscan's deadline
//! reader, and what it has not read by then is left out (logged). Descriptors, cwd and root
//! do not take that lock; their statx uses `AT_STATX_DONT_SYNC`, so no FUSE server is asked.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{BindDocroot, ReleaseMount, host};
use crate::switch::procscan;
use crate::sys;

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

/// Copies of our release mounts in other mount namespaces: namespace inode -> classic
/// mount id -> release name.
#[derive(Debug, Default)]
pub struct Copies {
    by_ns: HashMap<u64, HashMap<u64, String>>,
}

fn ns_of(base: &Path) -> Option<u64> {
    std::fs::metadata(base.join("ns/mnt"))
        .ok()
        .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
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

/// One process whose maps the deadline reader lists: in our namespace (`foreign: None`, our
/// ids) or in another whose copies of our mounts we know (their classic ids).
struct MapsJob {
    pid: i32,
    base: PathBuf,
    foreign: Option<HashSet<u64>>,
}

fn scan(ids: &HashSet<u64>, copies: &Copies, own_ns: Option<u64>) -> (Refs, Refs) {
    let mut refs = Refs::default();
    let mut foreign = Refs::default();
    let mut jobs = Vec::new();
    for (pid, base) in pids() {
        let ns = ns_of(&base);
        if ns == own_ns {
            count_dirs_and_fds(pid, &base, &mut refs, |p| mnt_of(p, ids));
            jobs.push(MapsJob {
                pid,
                base,
                foreign: None,
            });
        } else if let Some(known) = ns.and_then(|ns| copies.by_ns.get(&ns)) {
            let hit = |p: &Path| {
                sys::classic_mount_id_of_proc_link(p)
                    .ok()
                    .filter(|id| known.contains_key(id))
            };
            count_dirs_and_fds(pid, &base, &mut foreign, hit);
            let known = Some(known.keys().copied().collect());
            jobs.push(MapsJob {
                pid,
                base,
                foreign: known,
            });
        }
    }
    let wanted = ids.clone();
    let maps = procscan::read_with_deadline(jobs, MAPS_DEADLINE, move |job| maps_of(job, &wanted));
    for (pid, id, theirs) in maps {
        let into = if theirs { &mut foreign } else { &mut refs };
        *into.maps.entry(id).or_default() += 1;
        into.pids.entry(id).or_default().insert(pid);
    }
    (refs, foreign)
}

/// Counts the working and root directories and descriptors of process `pid` (at `base`)
/// whose mount `id_of` recognises.
fn count_dirs_and_fds(
    pid: i32,
    base: &Path,
    refs: &mut Refs,
    id_of: impl Fn(&Path) -> Option<u64>,
) {
    for link in ["cwd", "root"] {
        if let Some(id) = id_of(&base.join(link)) {
            *refs.dirs.entry(id).or_default() += 1;
            refs.pids.entry(id).or_default().insert(pid);
        }
    }
    let Ok(fds) = std::fs::read_dir(base.join("fd")) else {
        return;
    };
    for fd in fds.flatten() {
        if let Some(id) = id_of(&fd.path()) {
            *refs.open_files.entry(id).or_default() += 1;
            refs.pids.entry(id).or_default().insert(pid);
        }
    }
}

/// `(pid, mount id, in another namespace)` once per distinct mapped file of ours.
fn maps_of(job: &MapsJob, ours: &HashSet<u64>) -> Vec<(i32, u64, bool)> {
    let Ok(entries) = std::fs::read_dir(job.base.join("map_files")) else {
        return Vec::new();
    };
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for e in entries.flatten() {
        let path = e.path();
        let found = match &job.foreign {
            None => sys::mount_stat_of_proc_link(&path)
                .ok()
                .filter(|st| ours.contains(&st.mnt_id))
                .map(|st| (st.mnt_id, st.dev, st.ino)),
            Some(known) => sys::classic_mount_id_of_proc_link(&path)
                .ok()
                .filter(|id| known.contains(id))
                .and_then(|id| {
                    let md = std::fs::metadata(&path).ok()?;
                    Some((
                        id,
                        std::os::unix::fs::MetadataExt::dev(&md),
                        std::os::unix::fs::MetadataExt::ino(&md),
                    ))
                }),
        };
        if let Some(key) = found
            && seen.insert(key)
        {
            out.push((job.pid, key.0, job.foreign.is_some()));
        }
    }
    out
}

impl BindDocroot {
    /// What holds each release mount switchfs made (the active one first, then the
    /// detached ones, oldest first). Detached mounts nothing holds any more are gone from
    /// the kernel and are forgotten here.
    pub fn usage(&mut self) -> Vec<MountUsage> {
        self.learn_copies();
        let ours: Vec<(ReleaseMount, bool)> = self
            .active
            .iter()
            .map(|m| (m.clone(), true))
            .chain(self.detached.iter().map(|m| (m.clone(), false)))
            .collect();
        let ids: HashSet<u64> = ours.iter().map(|(m, _)| m.mnt_id).collect();
        let (refs, foreign) = scan(&ids, &self.copies, ns_of(Path::new("/proc/self")));
        let mut usage: Vec<MountUsage> = ours
            .into_iter()
            .map(|(m, active)| usage_of(&refs, m.mnt_id, m.release, active))
            .collect();
        self.add_foreign(&mut usage, &foreign);
        let unused: HashSet<u64> = usage
            .iter()
            .filter(|u| !u.in_use())
            .map(|u| u.mnt_id)
            .collect();
        self.detached.retain(|m| !unused.contains(&m.mnt_id));
        usage
    }

    /// Adds what processes in other namespaces hold to the entry of the same release (the
    /// active one first), and forgets copies nothing holds and no namespace shows any more.
    fn add_foreign(&mut self, usage: &mut [MountUsage], foreign: &Refs) {
        // Copies of the active release stay known even unused: they are attached, and a
        // process may start holding one before the next switch detaches it.
        let active = self.active.as_ref().map(|m| m.release.clone());
        for known in self.copies.by_ns.values_mut() {
            known.retain(|id, release| {
                let used = foreign.pids.contains_key(id);
                if let Some(u) = usage.iter_mut().find(|u| u.release == *release) {
                    let theirs = usage_of(foreign, *id, release.clone(), false);
                    u.open_files += theirs.open_files;
                    u.dirs += theirs.dirs;
                    u.maps += theirs.maps;
                    u.pids.extend(theirs.pids);
                    u.pids.sort_unstable();
                    u.pids.dedup();
                }
                used || active.as_deref() == Some(release.as_str())
            });
        }
        self.copies.by_ns.retain(|_, known| !known.is_empty());
    }

    /// Learns the ids of copies of our mounts that other namespaces show at the mount point
    /// now (one process's mountinfo per namespace). [`Self::usage`] calls it first; the
    /// integrator should also call it after each publish has been acknowledged (it walks
    /// /proc, ~1 ms per hundred processes, so it is kept out of `publish`), so that holders of
    /// the new release in other namespaces are counted once a later switch detaches it. The copy's root is the same directory of
    /// the releases filesystem as ours, which mountinfo names relative to that filesystem.
    pub fn learn_copies(&mut self) {
        if let Some(query) = self.copies_query() {
            let found = query.scan();
            self.add_copies(found);
        }
    }

    /// What [`Self::learn_copies`] looks for, taken under the caller's lock so the /proc walk
    /// ([`CopiesQuery::scan`]) can run without it; `None` with nothing published.
    pub(crate) fn copies_query(&self) -> Option<CopiesQuery> {
        let active = self.active.clone()?;
        let prefix = self
            .top_classic_id()
            .and_then(|id| releases_root_in_fs(id, &active.release))?;
        Some(CopiesQuery {
            mount_point: self.mount_point.clone(),
            prefix,
        })
    }

    /// Remembers copies a [`CopiesQuery::scan`] found.
    pub(crate) fn add_copies(&mut self, found: Vec<(u64, u64, String)>) {
        for (ns, id, name) in found {
            self.copies.by_ns.entry(ns).or_default().insert(id, name);
        }
    }

    /// Whether any mount of release `name` is active or held (for prune and drains).
    pub fn release_in_use(&mut self, name: &str) -> bool {
        self.usage().iter().any(|u| u.release == name && u.in_use())
    }
}

/// Where to look for copies of our mounts in other namespaces (see
/// [`BindDocroot::copies_query`]).
pub(crate) struct CopiesQuery {
    mount_point: PathBuf,
    /// The releases directory as mountinfo's root field spells it.
    prefix: String,
}

impl CopiesQuery {
    /// `(namespace, classic mount id, release)` of each copy another mount namespace shows
    /// at the mount point now (one process's mountinfo per namespace).
    pub(crate) fn scan(&self) -> Vec<(u64, u64, String)> {
        let own = ns_of(Path::new("/proc/self"));
        let mut seen = HashSet::new();
        let mut found = Vec::new();
        for (_, base) in pids() {
            let Some(ns) = ns_of(&base).filter(|ns| Some(*ns) != own && seen.insert(*ns)) else {
                continue;
            };
            let Ok(text) = std::fs::read_to_string(base.join("mountinfo")) else {
                continue;
            };
            for line in host::parse_mountinfo(&text) {
                if line.mount_point != self.mount_point {
                    continue;
                }
                if let Some(name) = line
                    .root
                    .strip_prefix(&self.prefix)
                    .filter(|n| !n.contains('/'))
                {
                    found.push((ns, line.id, name.to_string()));
                }
            }
        }
        found
    }
}

fn usage_of(refs: &Refs, id: u64, release: String, active: bool) -> MountUsage {
    let mut pids: Vec<i32> = refs
        .pids
        .get(&id)
        .map(|p| p.iter().copied().collect())
        .unwrap_or_default();
    pids.sort_unstable();
    MountUsage {
        release,
        mnt_id: id,
        active,
        open_files: refs.open_files.get(&id).copied().unwrap_or(0),
        dirs: refs.dirs.get(&id).copied().unwrap_or(0),
        maps: refs.maps.get(&id).copied().unwrap_or(0),
        pids,
    }
}

/// The releases directory as mountinfo's root field spells it (`/srv/app/releases/` when the
/// releases filesystem is `/`), from our own active mount's line (classic id `id`): its root
/// minus the release's name.
fn releases_root_in_fs(id: u64, active: &str) -> Option<String> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let line = host::parse_mountinfo(&text)
        .into_iter()
        .find(|l| l.id == id)?;
    let dir = line.root.strip_suffix(active)?;
    dir.ends_with('/').then(|| dir.to_string())
}
