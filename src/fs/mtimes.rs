//! The mtime rule: two versions of a path that differ in content are never reported with the
//! same modification time, and a path whose content did not change keeps the mtime it was
//! reported with before.
//!
//! Why: OPcache keys compiled scripts by path and revalidates them only by comparing
//! `st_mtime` (seconds) for equality (php-src `ext/opcache/ZendAccelerator.c`,
//! `do_validate_timestamps`). Under switchfs the path never changes, so two releases whose
//! files carry identical mtimes (reproducible builds, `tar`, `rsync -t`, composer archives)
//! would run the old bytecode forever. nginx's ETag (mtime + size) has the same blind spot.
//!
//! How: for every regular file looked up, the registry remembers, per path relative to the
//! release root, each distinct version seen: its identity (device, inode, size, mtime, ctime),
//! the mtime reported for it and, when it had to be computed, a hash of its content.
//! - Same identity as a known version: same file, same reported mtime (no I/O).
//! - Real mtime not reported yet for this path: report the real mtime (no I/O).
//! - Real mtime already reported for another identity: compare content hashes. Equal content
//!   keeps that mtime (OPcache stays warm); different content gets a fresh stamp, unique
//!   and increasing, never reported before for anything.
//!
//! Cost: nothing on the common path (a known version); one `write` to the log (below) for a
//! version seen for the first time; one read of the file (and of the earlier version, once)
//! only when an mtime collides.
//!
//! # Across restarts
//!
//! OPcache, APCu, nginx's `open_file_cache` and the kernel's own caches outlive the daemon
//! (a restart, an upgrade, a crash), so a registry that started empty again could report the
//! mtime a cached version had for a different content (a worker cached release B at a fresh
//! stamp; the daemon restarts; a rollback to A then collides with B's real mtime and would
//! get that same stamp). So every fact the registry learns is also appended to a log next to
//! the state file, `<state>.mtimes` (see `store`), and read back at start-up: after a restart
//! the registry answers exactly as before it.
//!
//! When the log is written decides what survives. Each new fact is appended with one
//! `write` *before* the lookup that learned it is answered: once written it is in the page
//! cache and survives any death of this process (crash, SIGKILL, OOM kill, upgrade), which is
//! what a surviving OPcache can see. `fdatasync` is not on the lookup path (a deploy's first
//! requests look up thousands of new files); a background thread syncs the log within a
//! second of a write, and `sync` makes it durable at once (clean shutdown; to be called
//! before a switch is acknowledged). What a crash of the *machine* can lose is thus at most
//! the last second of facts, and it costs nothing real: everything that remembers an mtime in
//! memory (OPcache, the kernel, web server caches) died with the machine, and every decision
//! is a function of the path's earlier history, so after the reboot the same active release
//! is looked up again against the same durable history and given the same mtimes (unless two
//! versions of one path first seen in that second come back in the other order). Only
//! persistent caches keyed on mtime, OPcache's `file_cache` or HTTP validators, could tell,
//! for versions first served in the second before the power went. A switch itself adds no
//! fact; the facts it builds on (the versions served before it) are durable a second after
//! they were learned, and calling `sync` before acknowledging a switch would close even that.
//!
//! A damaged log (torn last line, damaged lines, not our format) is read as far as it is
//! intact, logged as a warning and rewritten. It stays bounded: each path keeps at most
//! `MAX_VERSIONS` versions (older ones only raise a floor below which every mtime counts as
//! reported for unknown content), and the log is compacted to what is live when it grew to
//! twice that. If the log cannot be opened the registry runs in memory alone, with an error
//! logged, as before persistence existed.

mod store;

use std::collections::HashMap;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;

use crate::switch::release::Release;
use crate::sys;
use store::{Record, Store};

/// How many recent versions per path keep a way to reread their content. Older ones keep
/// their reported mtime reserved but are treated as different when they cannot be compared,
/// which costs at most one recompilation, never a stale one.
const VERSIONS_WITH_SOURCE: usize = 4;

/// How many versions per path are remembered. A deploy adds one per file (a new inode), so
/// this many recent releases are recognised without I/O; older versions only raise the
/// path's floor.
const MAX_VERSIONS: usize = 16;

/// How soon after a write the background thread makes the log durable.
const SYNC_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Identity {
    dev: u64,
    ino: u64,
    size: i64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Identity {
    fn of(st: &libc::stat) -> Identity {
        Identity {
            dev: st.st_dev,
            ino: st.st_ino,
            size: st.st_size,
            mtime: (st.st_mtime, st.st_mtime_nsec),
            ctime: (st.st_ctime, st.st_ctime_nsec),
        }
    }
}

/// Where a version's content can be reread: the root of its release (the path is the
/// registry's key). Not persisted: after a restart old versions are compared by the hash
/// they had, or not at all.
type Source = Arc<OwnedFd>;

#[derive(Debug)]
struct Version {
    identity: Identity,
    reported: i64,
    hash: Option<u64>,
    /// Where to reread the content if a later collision needs its hash.
    source: Option<Source>,
}

/// Everything remembered about one path.
#[derive(Debug, Default)]
struct History {
    /// Oldest first.
    versions: Vec<Version>,
    /// Every mtime up to this one may have been reported, for content no longer known.
    floor: Option<i64>,
}

impl History {
    fn find(&self, identity: &Identity) -> Option<&Version> {
        self.versions.iter().find(|v| v.identity == *identity)
    }

    fn reported_before(&self, mtime: i64) -> bool {
        self.versions.iter().any(|v| v.reported == mtime) || self.floor.is_some_and(|f| mtime <= f)
    }

    /// A modification time never reported for this path: one second past the latest one
    /// (or past `real`). Per path, so a deploy changing many files stamps each of them just
    /// past its own history, usually still in the past: OPcache refuses to cache a script
    /// whose mtime is less than `file_update_protection` (2 s) old or in the future, so a
    /// global counter running ahead of the clock would make it recompile on every request for
    /// minutes.
    fn fresh_stamp(&self, real: i64) -> i64 {
        self.versions
            .iter()
            .map(|v| v.reported)
            .chain([real, self.floor.unwrap_or(real)])
            .max()
            .unwrap_or(real)
            .saturating_add(1)
    }

    /// Remembers `version`, forgetting the oldest beyond `MAX_VERSIONS` (their mtimes stay
    /// reserved under the floor). The facts to log are added to `learned`.
    fn push(&mut self, path: &Path, version: Version, learned: &mut Vec<Record>) {
        learned.push(version_record(path, &version));
        self.versions.push(version);
        // Keep release descriptors alive only for the most recent versions.
        let keep_from = self.versions.len().saturating_sub(VERSIONS_WITH_SOURCE);
        for v in &mut self.versions[..keep_from] {
            v.source = None;
        }
        if self.versions.len() > MAX_VERSIONS {
            let oldest = self.versions.remove(0);
            let floor = self
                .floor
                .map_or(oldest.reported, |f| f.max(oldest.reported));
            self.floor = Some(floor);
            learned.push(Record::Floor {
                path: path.to_path_buf(),
                floor,
            });
        }
    }

    /// Applies one fact read back from the log.
    fn apply(&mut self, path: &Path, rec: Record) {
        match rec {
            Record::Version {
                identity,
                reported,
                hash,
                ..
            } => {
                if let Some(v) = self.versions.iter_mut().find(|v| v.identity == identity) {
                    v.hash = v.hash.or(hash);
                } else {
                    let version = Version {
                        identity,
                        reported,
                        hash,
                        source: None,
                    };
                    self.push(path, version, &mut Vec::new());
                }
            }
            Record::Floor { floor, .. } => {
                self.floor = Some(self.floor.map_or(floor, |f| f.max(floor)));
            }
        }
    }
}

fn version_record(path: &Path, v: &Version) -> Record {
    Record::Version {
        path: path.to_path_buf(),
        identity: v.identity,
        reported: v.reported,
        hash: v.hash,
    }
}

/// The mtime to report for one file, remembered on its inode so `getattr` agrees with
/// `lookup` for as long as the file is unchanged on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MtimeOverride {
    pub real: (i64, i64),
    pub reported: i64,
}

impl MtimeOverride {
    /// Applies the override to `st` if the file's real mtime is still the one it was
    /// computed for.
    pub(crate) fn apply(&self, st: &mut libc::stat) {
        if (st.st_mtime, st.st_mtime_nsec) == self.real && st.st_mtime != self.reported {
            st.st_mtime = self.reported;
            st.st_mtime_nsec = 0;
        }
    }
}

#[derive(Debug, Default)]
pub(crate) struct MtimeRegistry {
    paths: Mutex<HashMap<PathBuf, History>>,
    /// The log every fact is appended to; `None` keeps the registry in memory only. Lock
    /// order: `store` before `paths`, and `paths` is never held while waiting for `store`.
    store: Option<Arc<Mutex<Store>>>,
}

enum Decision {
    Known(i64),
    NeedsHashes {
        old: Vec<(Identity, Option<Source>)>,
    },
}

/// Where the registry of the daemon whose state file is `state` lives.
pub(crate) fn log_path(state: &Path) -> PathBuf {
    let mut name = state.as_os_str().to_os_string();
    name.push(".mtimes");
    PathBuf::from(name)
}

impl MtimeRegistry {
    /// The registry persisted at `path` (created if missing), answering as it did before.
    /// A damaged log is read as far as it is intact, rewritten, and a warning is logged.
    ///
    /// # Errors
    /// The log cannot be opened or created safely (see `store`).
    pub(crate) fn open(path: &Path) -> io::Result<MtimeRegistry> {
        let (mut store, records, damage) = Store::open(path)?;
        let mut paths: HashMap<PathBuf, History> = HashMap::new();
        for rec in records {
            let key = match &rec {
                Record::Version { path, .. } | Record::Floor { path, .. } => path.clone(),
            };
            paths.entry(key.clone()).or_default().apply(&key, rec);
        }
        let registry = MtimeRegistry {
            paths: Mutex::new(paths),
            store: None,
        };
        if damage.any() || store.wants_compaction() {
            if damage.any() {
                log::warn!(
                    "mtime log {} had {}; keeping what was intact and rewriting it",
                    path.display(),
                    damage.describe()
                );
            }
            if let Err(e) = store.rewrite(&registry.snapshot()) {
                // What was read still counts; new facts go on being appended to the old log.
                log::error!("cannot rewrite the mtime log {}: {e}", path.display());
                if damage.torn_tail {
                    store.end_torn_line();
                }
            }
        }
        let store = Arc::new(Mutex::new(store));
        spawn_syncer(Arc::downgrade(&store));
        Ok(MtimeRegistry {
            store: Some(store),
            ..registry
        })
    }

    /// Makes every fact learned so far durable (`fdatasync` of the log, if it was written).
    pub(crate) fn sync(&self) {
        if let Some(store) = &self.store {
            store::sync_locked(store);
        }
    }

    /// Every live fact, as the compacted log holds them.
    fn snapshot(&self) -> Vec<Record> {
        let paths = self.paths.lock();
        let mut out = Vec::new();
        for (path, history) in paths.iter() {
            if let Some(floor) = history.floor {
                out.push(Record::Floor {
                    path: path.clone(),
                    floor,
                });
            }
            out.extend(history.versions.iter().map(|v| version_record(path, v)));
        }
        out
    }

    /// Appends what was learned to the log before the decision is answered (see the module
    /// doc), compacting the log when it grew to twice what is live.
    fn persist(&self, learned: &[Record]) {
        let Some(store) = &self.store else { return };
        if learned.is_empty() {
            return;
        }
        let mut store = store.lock();
        store.append(learned);
        if store.wants_compaction() {
            let live = self.snapshot();
            if let Err(e) = store.rewrite(&live) {
                log::error!("cannot compact the mtime log: {e}; it keeps growing");
            }
        }
    }

    /// The mtime to report for the regular file `fd` (stat `st`) found at `path` (relative
    /// to the root of `release`). `None` when the real mtime can be reported as it is.
    pub(crate) fn decide(
        &self,
        release: &Arc<Release>,
        path: &Path,
        fd: BorrowedFd<'_>,
        st: &libc::stat,
    ) -> Option<MtimeOverride> {
        let identity = Identity::of(st);
        let real = st.st_mtime;
        let mut learned = Vec::new();
        let decision = {
            let mut paths = self.paths.lock();
            let history = paths.entry(path.to_path_buf()).or_default();
            if let Some(v) = history.find(&identity) {
                Decision::Known(v.reported)
            } else if !history.reported_before(real) {
                let version = Version {
                    identity,
                    reported: real,
                    hash: None,
                    source: Some(release.root.clone()),
                };
                history.push(path, version, &mut learned);
                Decision::Known(real)
            } else {
                let old = history
                    .versions
                    .iter()
                    .filter(|v| v.reported == real && v.hash.is_none())
                    .map(|v| (v.identity, v.source.clone()))
                    .collect();
                Decision::NeedsHashes { old }
            }
        };
        let reported = match decision {
            Decision::Known(reported) => {
                self.persist(&learned);
                reported
            }
            Decision::NeedsHashes { old } => self.decide_by_content(release, path, fd, st, old),
        };
        (reported != real).then_some(MtimeOverride {
            real: (st.st_mtime, st.st_mtime_nsec),
            reported,
        })
    }

    /// The slow path, when the real mtime was already reported for another file at this
    /// path: hash contents (with no lock held) and decide.
    fn decide_by_content(
        &self,
        release: &Arc<Release>,
        path: &Path,
        fd: BorrowedFd<'_>,
        st: &libc::stat,
        old: Vec<(Identity, Option<Source>)>,
    ) -> i64 {
        let identity = Identity::of(st);
        let real = st.st_mtime;
        let new_hash = match sys::reopen(fd, libc::O_RDONLY | libc::O_NONBLOCK)
            .and_then(|mut f| hash_content(&mut f))
        {
            Ok(h) => Some(h),
            Err(e) => {
                log::warn!(
                    "cannot hash {}: {e}; giving it a fresh mtime",
                    path.display()
                );
                None
            }
        };
        let old_hashes: Vec<(Identity, Option<u64>)> = old
            .into_iter()
            .map(|(id, source)| {
                let hash = source.and_then(|root| hash_in_release(&root, path).ok());
                (id, hash)
            })
            .collect();
        let mut learned = Vec::new();
        let reported = {
            let mut paths = self.paths.lock();
            let history = paths.entry(path.to_path_buf()).or_default();
            self.settle(
                history,
                path,
                identity,
                real,
                new_hash,
                old_hashes,
                release,
                &mut learned,
            )
        };
        self.persist(&learned);
        reported
    }

    /// Records the hashes learned and decides, under the lock. Versions are matched by
    /// identity: some may have been forgotten (or added) while the lock was not held.
    #[allow(clippy::too_many_arguments)]
    fn settle(
        &self,
        history: &mut History,
        path: &Path,
        identity: Identity,
        real: i64,
        new_hash: Option<u64>,
        old_hashes: Vec<(Identity, Option<u64>)>,
        release: &Arc<Release>,
        learned: &mut Vec<Record>,
    ) -> i64 {
        for (id, hash) in old_hashes {
            if let Some(v) = history.versions.iter_mut().find(|v| v.identity == id)
                && v.hash.is_none()
                && hash.is_some()
            {
                v.hash = hash;
                learned.push(version_record(path, v));
            }
        }
        if let Some(v) = history.find(&identity) {
            return v.reported; // another lookup settled it meanwhile
        }
        let same_content = new_hash.and_then(|h| {
            history
                .versions
                .iter()
                .find(|v| v.hash == Some(h) && v.identity.size == identity.size)
                .map(|v| v.reported)
        });
        let reported = match same_content {
            Some(reported) => reported,
            None => {
                let stamp = history.fresh_stamp(real);
                log::debug!(
                    "{}: content differs from an earlier version with mtime {real}; reporting {stamp}",
                    path.display()
                );
                stamp
            }
        };
        let version = Version {
            identity,
            reported,
            hash: new_hash,
            source: Some(release.root.clone()),
        };
        history.push(path, version, learned);
        reported
    }

    /// Number of paths tracked (for tests).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.paths.lock().len()
    }
}

/// Syncs the log within `SYNC_EVERY` of a write, off the lookup path, until the registry
/// is dropped.
fn spawn_syncer(store: Weak<Mutex<Store>>) {
    let spawned = std::thread::Builder::new()
        .name("mtimes-sync".into())
        .spawn(move || {
            loop {
                std::thread::sleep(SYNC_EVERY);
                let Some(store) = store.upgrade() else { return };
                store::sync_locked(&store);
            }
        });
    if let Err(e) = spawned {
        log::warn!("cannot start the mtime log's sync thread: {e}; it is synced at shutdown");
    }
}

/// A stable hash of a file's content (it is persisted, so it must mean the same to the next
/// binary).
fn hash_content(file: &mut std::fs::File) -> io::Result<u64> {
    let mut hash = store::FNV_START;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hash = store::fnv1a(hash, &buf[..n]);
    }
    Ok(hash)
}

/// Rereads `path` under a release root, never following symlinks.
fn hash_in_release(root: &OwnedFd, path: &Path) -> io::Result<u64> {
    let fd = sys::open_path_walk(root.as_fd(), path)?;
    let mut file = sys::reopen(fd.as_fd(), libc::O_RDONLY | libc::O_NONBLOCK)?;
    hash_content(&mut file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::TempDir;

    fn release(dir: &Path, generation: u64) -> Arc<Release> {
        Arc::new(Release::new(
            &format!("{generation}"),
            generation,
            sys::open_dir_path(dir, true).unwrap(),
        ))
    }

    fn file(dir: &Path, name: &str, content: &str, mtime: i64) -> (OwnedFd, libc::stat) {
        let path = dir.join(name);
        std::fs::write(&path, content).unwrap();
        let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(mtime as u64);
        let times = std::fs::FileTimes::new().set_accessed(at).set_modified(at);
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_times(times)
            .unwrap();
        let fd = sys::open_dir_path(dir, true).unwrap();
        let fd = sys::open_path_beneath(fd.as_fd(), std::ffi::OsStr::new(name)).unwrap();
        let st = sys::fstat(fd.as_fd()).unwrap();
        (fd, st)
    }

    fn reported(reg: &MtimeRegistry, rel: &Arc<Release>, fd: &OwnedFd, st: &libc::stat) -> i64 {
        reg.decide(rel, Path::new("index.php"), fd.as_fd(), st)
            .map_or(st.st_mtime, |o| o.reported)
    }

    #[test]
    fn identical_mtimes_with_different_content_get_distinct_mtimes() {
        let tmp = TempDir::new("mtimes");
        let (d1, d2, d3) = (
            tmp.path().join("1"),
            tmp.path().join("2"),
            tmp.path().join("3"),
        );
        for d in [&d1, &d2, &d3] {
            std::fs::create_dir_all(d).unwrap();
        }
        let reg = MtimeRegistry::default();
        let (f1, s1) = file(&d1, "index.php", "<?php echo 1;", 1_700_000_000);
        let (f2, s2) = file(&d2, "index.php", "<?php echo 2;", 1_700_000_000);
        let (f3, s3) = file(&d3, "index.php", "<?php echo 1;", 1_700_000_000);
        let (r1, r2, r3) = (release(&d1, 1), release(&d2, 2), release(&d3, 3));
        let m1 = reported(&reg, &r1, &f1, &s1);
        assert_eq!(m1, 1_700_000_000, "first version keeps its real mtime");
        let m2 = reported(&reg, &r2, &f2, &s2);
        assert_ne!(m2, m1, "different content, different mtime");
        assert_eq!(
            reported(&reg, &r3, &f3, &s3),
            m1,
            "same content as 1: same mtime"
        );
        // Re-activating release 2 (a rollback) gives the same answer again, without I/O.
        let r2b = release(&d2, 4);
        assert_eq!(reported(&reg, &r2b, &f2, &s2), m2);
        assert_eq!(reg.len(), 1);
    }

    #[test]
    fn different_real_mtimes_are_reported_as_they_are() {
        let tmp = TempDir::new("mtimes");
        let (d1, d2) = (tmp.path().join("1"), tmp.path().join("2"));
        std::fs::create_dir_all(&d1).unwrap();
        std::fs::create_dir_all(&d2).unwrap();
        let reg = MtimeRegistry::default();
        let (f1, s1) = file(&d1, "index.php", "a", 1_600_000_000);
        let (f2, s2) = file(&d2, "index.php", "b", 1_600_000_100);
        assert!(
            reg.decide(&release(&d1, 1), Path::new("index.php"), f1.as_fd(), &s1)
                .is_none()
        );
        assert!(
            reg.decide(&release(&d2, 2), Path::new("index.php"), f2.as_fd(), &s2)
                .is_none()
        );
    }

    #[test]
    fn stamps_are_per_path_just_past_its_history() {
        let tmp = TempDir::new("mtimes");
        let reg = MtimeRegistry::default();
        let mut seen = Vec::new();
        // Ten releases of one path, all with the same real mtime and different content.
        for n in 0..10 {
            let dir = tmp.path().join(format!("{n}"));
            std::fs::create_dir_all(&dir).unwrap();
            let (fd, st) = file(
                &dir,
                "index.php",
                &format!("<?php echo {n};"),
                1_700_000_000,
            );
            seen.push(reported(&reg, &release(&dir, n), &fd, &st));
        }
        let expected: Vec<i64> = (0..10).map(|n| 1_700_000_000 + n).collect();
        assert_eq!(
            seen, expected,
            "unique, and in the past: OPcache caches them at once"
        );
        // Another path starts from its own history, not from a global counter.
        let dir = tmp.path().join("other");
        std::fs::create_dir_all(&dir).unwrap();
        let (fd, st) = file(&dir, "lib.php", "x", 1_700_000_000);
        assert_eq!(
            reg.decide(&release(&dir, 99), Path::new("lib.php"), fd.as_fd(), &st),
            None
        );
    }

    #[test]
    fn override_applies_only_while_the_file_is_unchanged() {
        let o = MtimeOverride {
            real: (100, 5),
            reported: 200,
        };
        let mut st = sys::zeroed_stat();
        st.st_mtime = 100;
        st.st_mtime_nsec = 5;
        o.apply(&mut st);
        assert_eq!((st.st_mtime, st.st_mtime_nsec), (200, 0));
        st.st_mtime = 150;
        o.apply(&mut st);
        assert_eq!(st.st_mtime, 150);
    }

    /// Releases 1..=n under `tmp`, each with `index.php` holding `contents[i]`, all with one
    /// real mtime: the case the rule exists for.
    fn flat_releases(tmp: &TempDir, contents: &[&str]) -> Vec<(Arc<Release>, OwnedFd, libc::stat)> {
        contents
            .iter()
            .enumerate()
            .map(|(i, content)| {
                let dir = tmp.path().join(format!("r{i}"));
                std::fs::create_dir_all(&dir).unwrap();
                let (fd, st) = file(&dir, "index.php", content, 1_700_000_000);
                (release(&dir, i as u64 + 1), fd, st)
            })
            .collect()
    }

    fn answers(reg: &MtimeRegistry, rels: &[(Arc<Release>, OwnedFd, libc::stat)]) -> Vec<i64> {
        rels.iter()
            .map(|(rel, fd, st)| reported(reg, rel, fd, st))
            .collect()
    }

    fn store_records(reg: &MtimeRegistry) -> usize {
        reg.store.as_ref().unwrap().lock().records()
    }

    #[test]
    fn reload_gives_the_same_decisions() {
        let tmp = TempDir::new("mtimes-reload");
        let log = tmp.path().join("state.mtimes");
        let rels = flat_releases(
            &tmp,
            &["<?php echo 'A';", "<?php echo 'B';", "<?php echo 'A';"],
        );
        let before = {
            let reg = MtimeRegistry::open(&log).unwrap();
            answers(&reg, &rels)
        };
        assert_eq!(before[0], 1_700_000_000);
        assert_ne!(before[1], before[0], "B differs from A");
        assert_eq!(before[2], before[0], "the second A is A");
        let reg = MtimeRegistry::open(&log).unwrap();
        // Asked in another order after the restart (B first, as when B stayed active): the
        // same answers, so a cache that kept B's mtime never sees it on A.
        let after: Vec<i64> = [1, 0, 2]
            .iter()
            .map(|&i| reported(&reg, &rels[i].0, &rels[i].1, &rels[i].2))
            .collect();
        assert_eq!(after, vec![before[1], before[0], before[2]]);
        // A new content after the restart gets a stamp no earlier version had.
        let more = flat_releases(&TempDir::new("mtimes-reload-c"), &["<?php echo 'C';"]);
        let c = reported(&reg, &more[0].0, &more[0].1, &more[0].2);
        assert!(
            !before.contains(&c),
            "C got {c}, already used by {before:?}"
        );
    }

    #[test]
    fn memory_only_registry_forgets_what_the_persisted_one_keeps() {
        // The failure persistence prevents, shown on the in-memory registry: B cached at a
        // fresh stamp, restart, B looked up again, then a rollback hands A that stamp.
        let tmp = TempDir::new("mtimes-forget");
        let rels = flat_releases(&tmp, &["<?php echo 'A';", "<?php echo 'B';"]);
        let b_before = answers(&MtimeRegistry::default(), &rels)[1];
        let restarted = MtimeRegistry::default();
        reported(&restarted, &rels[1].0, &rels[1].1, &rels[1].2);
        let a_after = reported(&restarted, &rels[0].0, &rels[0].1, &rels[0].2);
        assert_eq!(a_after, b_before, "in memory alone, A reuses B's old stamp");
        let log = tmp.path().join("state.mtimes");
        let b_before = answers(&MtimeRegistry::open(&log).unwrap(), &rels)[1];
        let restarted = MtimeRegistry::open(&log).unwrap();
        reported(&restarted, &rels[1].0, &rels[1].1, &rels[1].2);
        let a_after = reported(&restarted, &rels[0].0, &rels[0].1, &rels[0].2);
        assert_ne!(a_after, b_before, "persisted, A never gets B's stamp");
    }

    #[test]
    fn torn_tail_is_dropped_and_the_log_rewritten() {
        let tmp = TempDir::new("mtimes-torn");
        let log = tmp.path().join("state.mtimes");
        let rels = flat_releases(&tmp, &["a", "b"]);
        let before = answers(&MtimeRegistry::open(&log).unwrap(), &rels);
        // A crash in the middle of an append leaves part of a line.
        let mut text = std::fs::read(&log).unwrap();
        text.extend_from_slice(b"v 2049 1234 5 1700000000 0 17");
        std::fs::write(&log, &text).unwrap();
        let reg = MtimeRegistry::open(&log).unwrap();
        assert_eq!(answers(&reg, &rels), before);
        assert_eq!(store_records(&reg), 2);
        drop(reg);
        let text = std::fs::read(&log).unwrap();
        let (records, damage) = store::parse(&text);
        assert_eq!((records.len(), damage), (2, store::Damage::default()));
    }

    #[test]
    fn damaged_lines_are_skipped_and_garbage_is_rebuilt() {
        let tmp = TempDir::new("mtimes-garbage");
        let log = tmp.path().join("state.mtimes");
        let rels = flat_releases(&tmp, &["a", "b"]);
        let before = answers(&MtimeRegistry::open(&log).unwrap(), &rels);
        // Damage the first record (A's): its checksum no longer matches.
        let text = String::from_utf8(std::fs::read(&log).unwrap()).unwrap();
        let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
        lines[1] = lines[1].replacen("1700000000", "1700000009", 1);
        std::fs::write(&log, lines.join("\n") + "\n").unwrap();
        let reg = MtimeRegistry::open(&log).unwrap();
        let intact = lines.len() - 2; // header and the damaged line
        assert_eq!(store_records(&reg), intact, "the other lines still count");
        assert_eq!(
            reported(&reg, &rels[1].0, &rels[1].1, &rels[1].2),
            before[1],
            "B keeps its stamp"
        );
        drop(reg);
        // Not a log at all: ignored and started afresh, with a valid header.
        std::fs::write(&log, b"\x00\xffnot a log\n").unwrap();
        let reg = MtimeRegistry::open(&log).unwrap();
        assert_eq!(reg.len(), 0);
        drop(reg);
        let (records, damage) = store::parse(&std::fs::read(&log).unwrap());
        assert_eq!((records.len(), damage), (0, store::Damage::default()));
    }

    #[test]
    fn registry_and_log_stay_bounded_and_forgotten_mtimes_stay_reserved() {
        let tmp = TempDir::new("mtimes-bound");
        let log = tmp.path().join("state.mtimes");
        let dir = tmp.path().join("r");
        std::fs::create_dir_all(&dir).unwrap();
        let rel = release(&dir, 1);
        let reg = MtimeRegistry::open(&log).unwrap();
        let first = 1_600_000_000;
        // One path rewritten in place 3000 times, each with its own real mtime.
        for n in 0..3000 {
            let (fd, st) = file(&dir, "index.php", &format!("v{n}"), first + n);
            assert_eq!(reported(&reg, &rel, &fd, &st), first + n);
        }
        assert!(
            store_records(&reg) <= store::COMPACT_MIN + 2,
            "log compacted, holds {}",
            store_records(&reg)
        );
        let history_len =
            |reg: &MtimeRegistry| reg.paths.lock()[Path::new("index.php")].versions.len();
        assert_eq!(history_len(&reg), MAX_VERSIONS);
        drop(reg);
        let reg = MtimeRegistry::open(&log).unwrap();
        assert_eq!(history_len(&reg), MAX_VERSIONS);
        // A new content with the real mtime of a forgotten version must not get it back.
        let (fd, st) = file(&dir, "index.php", "new content", first + 5);
        let got = reported(&reg, &rel, &fd, &st);
        assert_eq!(got, first + 3000, "a fresh stamp past the whole history");
    }

    #[test]
    fn refuses_a_log_another_user_could_have_planted() {
        let tmp = TempDir::new("mtimes-planted");
        let target = tmp.path().join("target");
        std::fs::write(&target, "switchfs-mtimes 1\n").unwrap();
        let link = tmp.path().join("symlinked.mtimes");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(MtimeRegistry::open(&link).is_err(), "symlink followed");
        let hard = tmp.path().join("hardlinked.mtimes");
        std::fs::hard_link(&target, &hard).unwrap();
        assert!(MtimeRegistry::open(&hard).is_err(), "second link accepted");
        assert_eq!(std::fs::read(&target).unwrap(), b"switchfs-mtimes 1\n");
        // A symlinked directory is refused too.
        let dir_link = tmp.path().join("dirlink");
        std::os::unix::fs::symlink(tmp.path(), &dir_link).unwrap();
        assert!(MtimeRegistry::open(&dir_link.join("x.mtimes")).is_err());
    }

    #[test]
    fn records_round_trip_with_any_path_bytes() {
        use std::os::unix::ffi::OsStrExt;
        let path = PathBuf::from(std::ffi::OsStr::from_bytes(b"a b/%c\n\xff.php"));
        let rec = Record::Version {
            path: path.clone(),
            identity: Identity {
                dev: 1,
                ino: 2,
                size: 3,
                mtime: (-4, 5),
                ctime: (6, 7),
            },
            reported: -8,
            hash: Some(u64::MAX),
        };
        let line = store::encode(&rec);
        assert_eq!(line.matches('\n').count(), 1);
        assert_eq!(store::decode_line(line.trim_end().as_bytes()), Some(rec));
        let floor = Record::Floor { path, floor: 9 };
        assert_eq!(
            store::decode_line(store::encode(&floor).trim_end().as_bytes()),
            Some(floor)
        );
    }

    #[test]
    fn concurrent_lookups_are_all_remembered() {
        let tmp = TempDir::new("mtimes-concurrent");
        let log = tmp.path().join("state.mtimes");
        // Three releases of 40 paths, identical mtimes; release 2 repeats release 0's content.
        type Files = Vec<(OwnedFd, libc::stat)>;
        let releases: Vec<(Arc<Release>, Files)> = (0..3)
            .map(|r| {
                let dir = tmp.path().join(format!("r{r}"));
                std::fs::create_dir_all(&dir).unwrap();
                let files = (0..40)
                    .map(|i| {
                        file(
                            &dir,
                            &format!("f{i}.php"),
                            &format!("{i}-{}", r % 2),
                            1_700_000_000,
                        )
                    })
                    .collect();
                (release(&dir, r + 1), files)
            })
            .collect();
        let ask = |reg: &MtimeRegistry, r: usize, i: usize| {
            let (rel, files) = &releases[r];
            let (fd, st) = &files[i];
            let path = PathBuf::from(format!("f{i}.php"));
            reg.decide(rel, &path, fd.as_fd(), st)
                .map_or(st.st_mtime, |o| o.reported)
        };
        let before: Vec<Vec<i64>> = {
            let reg = MtimeRegistry::open(&log).unwrap();
            let answers: Vec<Vec<i64>> = std::thread::scope(|scope| {
                let handles: Vec<_> = (0..3)
                    .map(|r| {
                        let reg = &reg;
                        scope.spawn(move || (0..40).map(|i| ask(reg, r, i)).collect())
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap()).collect()
            });
            assert_eq!(answers[0], answers[2], "same content, same mtime");
            for (a, b) in answers[0].iter().zip(&answers[1]) {
                assert_ne!(a, b, "other content, other mtime");
            }
            answers
        };
        let reg = MtimeRegistry::open(&log).unwrap();
        for r in [2, 1, 0] {
            let after: Vec<i64> = (0..40).rev().map(|i| ask(&reg, r, i)).rev().collect();
            assert_eq!(after, before[r], "release {r} after the restart");
        }
    }
}
