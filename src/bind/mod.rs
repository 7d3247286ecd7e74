//! The bind-mode data plane: the docroot is a read-only, nosuid, nodev bind mount of the
//! active release, swapped atomically with `MOVE_MOUNT_BENEATH`. Nothing sits in the data
//! path: requests go straight to the releases filesystem, at the native directory's speed.
//!
//! The daemon drives it through [`docroot::BindPlane`] (`--mode bind`), which calls, in
//! this order:
//! - [`BindDocroot::open`] at start: host checks ([`host`]), each a one-line error with
//!   nothing mounted, then adoption of the mount a previous daemon left.
//! - [`BindDocroot::publish`] for each activation (it runs [`links::check`] first), then,
//!   after acknowledging it, [`BindDocroot::learn_copies`].
//! - [`BindDocroot::usage`] for `status`, `--wait-drain` and prune's in-use check.
//! - [`BindDocroot::unmount`] only on an explicit request (see "Stop" below).
//!
//! # The switch ([`mount`])
//! The release directory's descriptor (opened without following links from the releases
//! directory's descriptor) is cloned with `open_tree(OPEN_TREE_CLONE)`, **not recursively**:
//! a mount someone made inside a release (or inside the releases filesystem) is not ours to
//! publish, and the FUSE docroot does not show it either. The clone is made read-only,
//! nosuid and nodev with `mount_setattr` while it is still detached, so it is never visible
//! writable. Not noexec by default: FUSE mode is not either, and CGI scripts or
//! `vendor/bin` tools run through the docroot need exec ([`BindOptions::noexec`] adds it).
//! The first activation attaches plainly; later ones attach beneath the current top, after
//! checking that top is the mount we attached (its mount id, the never-reused 64-bit one on
//! 6.8+). Then the old top is detached with `MNT_DETACH` through a descriptor of its root,
//! never by path, and the mount point must show the new mount. A foreign mount on top, or
//! one inside our mount (on one of its directories: `MNT_DETACH` would take it along), is
//! refused before anything is attached: nothing changes.
//!
//! The one race the kernel gives no primitive for: another root process mounting on the
//! docroot in the microseconds between our check and `move_mount`/`umount2`. It is detected
//! afterwards (the top is not ours) and reported; a foreign mount is still never detached by
//! us, though a detach that lost that race takes a mount stacked on ours with it.
//!
//! # Adoption and crashes
//! The daemon is not in the data path: killing it changes nothing served. A starting daemon
//! adopts the mount it finds at the mount point when that mount's root is the persisted
//! active release (device and inode) and the mount is read-only, nosuid, nodev; any other
//! mount there is refused with one line. A daemon killed between attach-beneath and detach
//! leaves the new release beneath the old top; the top is still the release the state file
//! names if the state is persisted after a successful publish, so persist after publishing.
//!
//! # Stop
//! Stopping the service leaves the bind mount in place, serving the active release: a
//! restart or upgrade then has no window with an empty docroot, and the next daemon adopts
//! it. Removing it is an explicit act ([`BindDocroot::unmount`], for `umount` or a
//! `--unmount-on-stop`-style flag), which detaches only the mount we made.
//!
//! # Usage ([`usage`])
//! Detached mounts live until their last user is gone and have the releases filesystem's
//! device, so the mount id is what tells releases apart: /proc/PID/fd/N, cwd, root and
//! map_files/* are statx'ed for their mount id. A process in another mount namespace
//! (systemd `PrivateTmp=`) holds the propagated copy of our mount instead, with its own id:
//! those ids are learned from that namespace's mountinfo while the copy is attached there
//! ([`BindDocroot::learn_copies`]: on every usage scan, and the integrator calls it after
//! acknowledging each publish), and remembered until nothing holds them.
//! Gap: a namespace created after a publish whose copy is detached again before any usage
//! scan ran is never learned, so its holders are not counted.
//!
//! # Relative links ([`links`])
//! Deployer's `.env -> ../../shared/.env` resolves from `releases/N`; through a bind mount at a
//! different depth it resolves elsewhere. Activation is refused, naming the link and the fix,
//! unless the mount point climbs to the same directory.

pub(crate) mod docroot;
pub mod host;
pub mod links;
pub mod mount;
pub mod usage;

use std::ffi::OsString;
use std::os::fd::OwnedFd;
use std::path::PathBuf;

pub use mount::Published;
pub use usage::MountUsage;

/// Options of the bind data plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BindOptions {
    /// Also mount noexec (off by default, as in FUSE mode: CGI needs exec).
    pub noexec: bool,
    /// How many directory entries the link check walks per release before it refuses.
    pub link_check_limit: usize,
}

impl Default for BindOptions {
    fn default() -> Self {
        BindOptions {
            noexec: false,
            link_check_limit: links::DEFAULT_LIMIT,
        }
    }
}

/// One release mount switchfs made: the active one, or a detached one processes may hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleaseMount {
    pub release: String,
    /// Mount id (`STATX_MNT_ID_UNIQUE` where the kernel has it, else `STATX_MNT_ID`).
    pub mnt_id: u64,
    /// `(st_dev, st_ino)` of the release directory, its root.
    pub root: (u64, u64),
}

/// The bind-mounted docroot at one mount point.
#[derive(Debug)]
pub struct BindDocroot {
    mount_point: PathBuf,
    /// The mount point's parent, opened component by component without following links.
    parent: OwnedFd,
    /// The mount point's last component.
    name: OsString,
    /// Mount id of the parent's mount: what the mount point shows when nothing is mounted.
    parent_mnt_id: u64,
    /// Canonical path of the releases directory, for the link check.
    releases_path: PathBuf,
    options: BindOptions,
    active: Option<ReleaseMount>,
    /// Detached by a switch; kept until a usage scan finds nothing holding them.
    detached: Vec<ReleaseMount>,
    /// Copies of our mounts in other mount namespaces, learned from their mountinfo.
    copies: usage::Copies,
    /// Release directories (`(st_dev, st_ino)`) whose links passed the check: a switch back
    /// (a rollback) does not walk the whole release again. A release is not changed once
    /// published; a link added to one afterwards is not checked again.
    links_checked: std::collections::HashSet<(u64, u64)>,
}

impl BindDocroot {
    pub fn mount_point(&self) -> &std::path::Path {
        &self.mount_point
    }

    /// The mount now served, if any.
    pub fn active(&self) -> Option<&ReleaseMount> {
        self.active.as_ref()
    }

    /// Release mounts detached by a switch that a usage scan has not yet found unused.
    pub fn detached(&self) -> &[ReleaseMount] {
        &self.detached
    }
}
