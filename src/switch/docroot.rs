//! The seam between the switch and the data plane: what `Switcher` needs from whatever shows
//! the active release at the mount point. The FUSE core (`core`) is the first
//! implementation; a bind mount swapped at each switch can be the second without any change
//! to `Switcher`, `perform`, prune, status or the PHP pools.
//!
//! The switcher owns *which* release is active (the state file, the history, the switch
//! lock, the generation of each activation); a docroot owns *how* it is shown and what the
//! kernel or processes still hold of earlier releases.
//!
//! # Implementing a docroot
//! - Everything here is called by the switcher, never from a FUSE worker, and `publish`,
//!   `sync_before_switch` and `pin_held` only with the switch lock held, so they never
//!   race each other (lookups may run meanwhile).
//! - Never hold a lock of your own while calling into the kernel (a notification, a mount):
//!   an in-flight request may need that lock to finish.
//! - `publish` must make the new release what *new* lookups see and leave nothing cached
//!   from before; a reader that began in the old release may finish in it. Its error
//!   makes the switcher write the earlier state back and refuse the switch, so nothing
//!   changes; a docroot that cannot fail returns `Ok`.
//! - Nothing shown may resolve outside `Active::release`'s directory descriptor: open it
//!   (or what is below it) relative to that descriptor, never by its path.

use std::collections::HashMap;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use crate::switch::release::Release;

/// What the root currently shows: a release (or none yet), the generation it was activated
/// as, the release before it, and since when. Made by the switcher, shared with the docroot.
#[derive(Debug)]
pub(crate) struct Active {
    pub release: Option<Arc<Release>>,
    pub generation: u64,
    pub previous: Option<String>,
    pub since: SystemTime,
}

impl Active {
    /// Nothing is shown yet: before the first activation.
    pub(crate) fn empty() -> Active {
        Active {
            release: None,
            generation: 0,
            previous: None,
            since: SystemTime::now(),
        }
    }

    pub(crate) fn name(&self) -> Option<&str> {
        self.release.as_ref().map(|r| r.name.as_str())
    }
}

/// What uses one release through the docroot right now. A docroot fills every counter but
/// `active`, which the switcher sets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Use {
    pub(crate) active: bool,
    /// Handles the docroot gave out (FUSE: directories; files too with --track-opens).
    pub(crate) open_handles: usize,
    /// Descriptors processes hold on its files.
    pub(crate) open_files: usize,
    /// Processes whose working or root directory is in it.
    pub(crate) dirs: usize,
    /// Memory maps of its files.
    pub(crate) maps: usize,
    /// Inodes the kernel still caches (informational: unused ones linger; 0 where the
    /// docroot has no such notion).
    pub(crate) live_inodes: usize,
}

impl Use {
    /// Cached inodes alone do not count: the kernel keeps unused ones until memory is short.
    pub(crate) fn in_use(&self) -> bool {
        self.active || self.open_handles + self.open_files + self.dirs + self.maps > 0
    }
}

/// What PHP sees of one file of a release through the docroot: its identity on the host and
/// the modification time the docroot reports for it (FUSE: see `mtimes`; a bind mount: the
/// file's own). Used by `opcache` to decide which cached scripts a switch changed.
#[derive(Debug)]
pub(crate) struct FileView {
    pub dev: u64,
    pub ino: u64,
    pub size: i64,
    pub reported_mtime: i64,
    /// The file itself (`O_PATH`), to compare contents without resolving the path again.
    pub fd: OwnedFd,
}

/// A data plane the switcher drives (see the module doc for the rules).
pub(crate) trait Docroot: Send + Sync {
    /// The data plane's name, for `status` ("fuse", "bind").
    fn mode(&self) -> &'static str;

    /// Step 2 of a switch, before the state file is written: makes durable what this
    /// docroot has told clients that must outlive a crash right after the switch (FUSE: the
    /// mtimes served so far). Nothing to do by default.
    fn sync_before_switch(&self) {}

    /// Step 3, just before `publish`: keeps what processes hold of the old release
    /// reachable once it stops being active (FUSE: pins the descriptors of inodes processes
    /// hold, which the descriptor budget could otherwise close). Nothing by default.
    fn pin_held(&self) {}

    /// Steps 3 and 4: shows `active` from now on and drops what the kernel may cache from
    /// before. Also called once at start-up with the restored release.
    ///
    /// # Errors
    /// A one-line reason; the switcher then restores the earlier state and refuses the
    /// switch, so the docroot must still show what it showed before.
    fn publish(&self, active: Arc<Active>) -> Result<(), String>;

    /// What uses each release through the docroot right now, by release name (`active`
    /// left false). May read /proc: never called from a FUSE worker.
    fn usage(&self) -> HashMap<String, Use>;

    /// Paths (relative to their release root) of files of releases other than `except`
    /// that one of `pids` holds open through the docroot, per /proc; a file of `except`'s
    /// own directory (switched away and back since) is not "other". PHP holds a script open
    /// while it compiles it, so this shows compilations still reading an old release.
    fn open_paths_outside(&self, except: &Arc<Release>, pids: &[i32]) -> Vec<PathBuf>;

    /// The file at `path` (relative, plain components) in `release`, as the docroot
    /// reports it. The walk follows no symlink.
    ///
    /// # Errors
    /// Missing, not a regular file (`EINVAL`), or a component that is not a plain name.
    fn file_view(&self, release: &Arc<Release>, path: &Path) -> io::Result<FileView>;

    /// Whether two contents of one path are never reported with one mtime (FUSE: the mtime
    /// rule of `mtimes`). When not (a bind mount reports the files' real mtimes, which a
    /// deploy may keep identical across releases), `opcache` compares bytes instead.
    fn mtimes_tell_content(&self) -> bool {
        true
    }
}

/// The regular file at `path` (relative, plain components only) in `release`, opened without
/// following any link (`O_PATH`), and its `stat`: what both data planes' `file_view` start
/// from.
///
/// # Errors
/// A component that is not a plain name or a file that is not regular (`EINVAL`); missing.
pub(crate) fn open_release_file(
    release: &Release,
    path: &Path,
) -> io::Result<(OwnedFd, libc::stat)> {
    use std::os::fd::AsFd;
    if path
        .components()
        .any(|c| !matches!(c, std::path::Component::Normal(_)))
    {
        return Err(crate::errno::os_error(libc::EINVAL));
    }
    let fd = crate::sys::open_path_walk(release.root.as_fd(), path)?;
    let st = crate::sys::fstat(fd.as_fd())?;
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Err(crate::errno::os_error(libc::EINVAL));
    }
    Ok((fd, st))
}
