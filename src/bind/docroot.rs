//! The bind plane as the switcher's `Docroot` (`--mode bind`): publishing a release swaps
//! the bind mount (see `mount`), usage comes from the mount ids processes hold (see
//! `usage`), and what PHP sees of a file is the file itself, real mtime included.
//!
//! One mutex around the `BindDocroot`: held across a publish (a link check bounded by
//! `BindOptions::link_check_limit`, then a few mount syscalls) and a usage scan (bounded by
//! its maps deadline), never across anything unbounded. No request of the data path ever
//! takes it: nothing serves through the daemon in this mode.

use std::collections::HashMap;
use std::io;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;

use super::BindDocroot;
use crate::switch::docroot::{Active, Docroot, FileView, Use};
use crate::switch::release::Release;
use crate::sys;

/// The bind-mounted docroot the switcher drives.
pub(crate) struct BindPlane {
    inner: Arc<Mutex<BindDocroot>>,
}

impl BindPlane {
    pub(crate) fn new(docroot: BindDocroot) -> BindPlane {
        BindPlane {
            inner: Arc::new(Mutex::new(docroot)),
        }
    }

    /// Whether the mount point still shows our mount. `false` once someone unmounted it
    /// (`umount MOUNTPOINT`, which stops a daemon the mount helper started).
    pub(crate) fn still_mounted(&self) -> bool {
        let inner = self.inner.lock();
        let Some(ours) = inner.active().map(|m| m.mnt_id) else {
            return true; // nothing published yet: nothing to lose
        };
        let Ok(fd) = sys::open_dir_nofollow_at(inner.parent.as_fd(), &inner.name) else {
            return true; // cannot tell; a later look decides
        };
        // A foreign mount stacked on ours still has ours beneath it; only the bare
        // directory means ours is gone.
        sys::mount_stat(fd.as_fd()).map_or(true, |st| st.mnt_id == ours || mounted_at(&st, &inner))
    }

    /// Learns the copies other mount namespaces have of the new mount, off the switch path
    /// (it walks /proc), so their holders count once a later switch detaches it.
    fn learn_copies_later(&self) {
        let inner = self.inner.clone();
        let spawned = std::thread::Builder::new()
            .name("bind-copies".into())
            .spawn(move || {
                // The /proc walk runs without the lock: a switch or a status meanwhile must
                // not wait for it.
                let Some(query) = inner.lock().copies_query() else {
                    return;
                };
                let found = query.scan();
                inner.lock().add_copies(found);
            });
        if let Err(e) = spawned {
            log::warn!("cannot start learning mount copies of other namespaces: {e}");
        }
    }
}

/// Whether the top at the mount point is a mount at all (not the bare parent directory).
fn mounted_at(st: &sys::MountStat, inner: &BindDocroot) -> bool {
    st.mnt_id != inner.parent_mnt_id
}

impl Docroot for BindPlane {
    fn mode(&self) -> &'static str {
        "bind"
    }

    fn publish(&self, active: Arc<Active>) -> Result<(), String> {
        let Some(release) = &active.release else {
            return Ok(());
        };
        let st = sys::fstat(release.root.as_fd())
            .map_err(|e| format!("cannot stat release {:?}: {e}", release.name))?;
        {
            let mut inner = self.inner.lock();
            // The mount a previous daemon left, adopted at open: it already shows this very
            // directory, so a restart swaps nothing.
            let adopted = inner
                .active()
                .is_some_and(|m| m.release == release.name && m.root == (st.st_dev, st.st_ino));
            if adopted {
                return Ok(());
            }
            let done = inner.publish(&release.name, release.root.as_fd())?;
            log::info!(
                "bind mount of release {:?} attached (mount id {}) in {:.2} ms",
                release.name,
                done.mount.mnt_id,
                done.swap.as_secs_f64() * 1000.0
            );
        }
        self.learn_copies_later();
        Ok(())
    }

    fn usage(&self) -> HashMap<String, Use> {
        let scanned = self.inner.lock().usage();
        let mut usage: HashMap<String, Use> = HashMap::new();
        for m in scanned {
            let u = usage.entry(m.release).or_default();
            u.open_files += m.open_files;
            u.dirs += m.dirs;
            u.maps += m.maps;
        }
        usage
    }

    /// Files of detached mounts (releases switched away from) the processes hold open. A
    /// file of a detached mount reads back as a path from that mount's root.
    fn open_paths_outside(&self, except: &Arc<Release>, pids: &[i32]) -> Vec<PathBuf> {
        let except_root = sys::fstat(except.root.as_fd()).map(|st| (st.st_dev, st.st_ino));
        let old: Vec<u64> = {
            let inner = self.inner.lock();
            inner
                .detached()
                .iter()
                .filter(|m| except_root.as_ref().is_ok_and(|r| *r != m.root))
                .map(|m| m.mnt_id)
                .collect()
        };
        if old.is_empty() {
            return Vec::new();
        }
        pids.iter().flat_map(|pid| held_paths(*pid, &old)).collect()
    }

    fn file_view(&self, release: &Arc<Release>, path: &Path) -> io::Result<FileView> {
        let (fd, st) = crate::switch::docroot::open_release_file(release, path)?;
        Ok(FileView {
            dev: st.st_dev,
            ino: st.st_ino,
            size: st.st_size,
            reported_mtime: st.st_mtime,
            fd,
        })
    }

    fn mtimes_tell_content(&self) -> bool {
        false
    }
}

/// Paths (relative to their mount's root) of the files process `pid` holds open on one of
/// the mounts `ids`.
fn held_paths(pid: i32, ids: &[u64]) -> Vec<PathBuf> {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    fds.flatten()
        .map(|fd| fd.path())
        .filter(|p| {
            sys::mount_stat_of_proc_link(p)
                .is_ok_and(|st| ids.contains(&st.mnt_id) && st.mode & libc::S_IFMT == libc::S_IFREG)
        })
        .filter_map(|p| std::fs::read_link(p).ok())
        .filter_map(|target| target.strip_prefix("/").ok().map(Path::to_path_buf))
        .collect()
}
