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
//! Cost: nothing on the common path; one read of the file (and of the earlier version, once)
//! only when an mtime collides. The registry lives in memory: after a daemon restart a path
//! starts from its real mtime again (see README).

use std::collections::HashMap;
use std::hash::Hasher;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::release::Release;
use crate::sys;

/// How many recent versions per path keep a way to reread their content. Older ones keep
/// their reported mtime reserved but are treated as different when they cannot be compared,
/// which costs at most one recompilation, never a stale one.
const VERSIONS_WITH_SOURCE: usize = 4;

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
/// registry's key).
type Source = Arc<OwnedFd>;

#[derive(Debug)]
struct Version {
    identity: Identity,
    reported: i64,
    hash: Option<u64>,
    /// Where to reread the content if a later collision needs its hash.
    source: Option<Source>,
}

/// The mtime to report for one file, remembered on its inode so `getattr` agrees with
/// `lookup` for as long as the file is unchanged on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MtimeOverride {
    pub real: (i64, i64),
    pub reported: i64,
}

impl MtimeOverride {
    /// Applies the override to `st` if the file's real mtime is still the one it was
    /// computed for.
    pub fn apply(&self, st: &mut libc::stat) {
        if (st.st_mtime, st.st_mtime_nsec) == self.real && st.st_mtime != self.reported {
            st.st_mtime = self.reported;
            st.st_mtime_nsec = 0;
        }
    }
}

#[derive(Debug, Default)]
pub struct MtimeRegistry {
    paths: Mutex<HashMap<PathBuf, Vec<Version>>>,
}

enum Decision {
    Known(i64),
    NeedsHashes { old: Vec<(usize, Option<Source>)> },
}

impl MtimeRegistry {
    /// The mtime to report for the regular file `fd` (stat `st`) found at `path` (relative
    /// to the root of `release`). `None` when the real mtime can be reported as it is.
    pub fn decide(
        &self,
        release: &Arc<Release>,
        path: &Path,
        fd: BorrowedFd<'_>,
        st: &libc::stat,
    ) -> Option<MtimeOverride> {
        let identity = Identity::of(st);
        let real = st.st_mtime;
        let decision = {
            let mut paths = self.paths.lock();
            let versions = paths.entry(path.to_path_buf()).or_default();
            if let Some(v) = versions.iter().find(|v| v.identity == identity) {
                Decision::Known(v.reported)
            } else if !versions.iter().any(|v| v.reported == real) {
                push(versions, identity, real, None, Some(release.root.clone()));
                Decision::Known(real)
            } else {
                let old = versions
                    .iter()
                    .enumerate()
                    .filter(|(_, v)| v.reported == real && v.hash.is_none())
                    .map(|(i, v)| (i, v.source.clone()))
                    .collect();
                Decision::NeedsHashes { old }
            }
        };
        let reported = match decision {
            Decision::Known(reported) => reported,
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
        old: Vec<(usize, Option<Source>)>,
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
        let old_hashes: Vec<(usize, Option<u64>)> = old
            .into_iter()
            .map(|(i, source)| {
                let hash = source.and_then(|root| hash_in_release(&root, path).ok());
                (i, hash)
            })
            .collect();
        let mut paths = self.paths.lock();
        let versions = paths.entry(path.to_path_buf()).or_default();
        for (i, hash) in old_hashes {
            if let Some(v) = versions.get_mut(i)
                && v.hash.is_none()
            {
                v.hash = hash;
            }
        }
        if let Some(v) = versions.iter().find(|v| v.identity == identity) {
            return v.reported; // another lookup settled it meanwhile
        }
        let same_content = new_hash.and_then(|h| {
            versions
                .iter()
                .find(|v| v.hash == Some(h) && v.identity.size == identity.size)
                .map(|v| v.reported)
        });
        let reported = match same_content {
            Some(reported) => reported,
            None => {
                let stamp = fresh_stamp(versions, real);
                log::debug!(
                    "{}: content differs from an earlier version with mtime {real}; reporting {stamp}",
                    path.display()
                );
                stamp
            }
        };
        push(
            versions,
            identity,
            reported,
            new_hash,
            Some(release.root.clone()),
        );
        reported
    }

    /// Number of paths tracked (for tests and status).
    pub fn len(&self) -> usize {
        self.paths.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A modification time never reported for this path: one second past the latest one (or
/// past `real`). Per path, so a deploy changing many files stamps each of them just past its
/// own history, usually still in the past: OPcache refuses to cache a script whose mtime is
/// less than `file_update_protection` (2 s) old or in the future, so a global counter running
/// ahead of the clock would make it recompile on every request for minutes.
fn fresh_stamp(versions: &[Version], real: i64) -> i64 {
    versions
        .iter()
        .map(|v| v.reported)
        .chain(std::iter::once(real))
        .max()
        .unwrap_or(real)
        .saturating_add(1)
}

fn push(
    versions: &mut Vec<Version>,
    identity: Identity,
    reported: i64,
    hash: Option<u64>,
    source: Option<Source>,
) {
    versions.push(Version {
        identity,
        reported,
        hash,
        source,
    });
    // Keep release descriptors alive only for the most recent versions.
    let keep_from = versions.len().saturating_sub(VERSIONS_WITH_SOURCE);
    for v in &mut versions[..keep_from] {
        v.source = None;
    }
}

fn hash_content(file: &mut std::fs::File) -> io::Result<u64> {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.write(&buf[..n]);
    }
    Ok(hasher.finish())
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
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        let times = [
            libc::timespec {
                tv_sec: mtime,
                tv_nsec: 0,
            },
            libc::timespec {
                tv_sec: mtime,
                tv_nsec: 0,
            },
        ];
        // SAFETY: valid path and times array.
        assert_eq!(
            unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), times.as_ptr(), 0) },
            0
        );
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
        // SAFETY: plain data.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        st.st_mtime = 100;
        st.st_mtime_nsec = 5;
        o.apply(&mut st);
        assert_eq!((st.st_mtime, st.st_mtime_nsec), (200, 0));
        st.st_mtime = 150;
        o.apply(&mut st);
        assert_eq!(st.st_mtime, 150);
    }
}
