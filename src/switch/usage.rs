//! What `status` shows of the releases: per release, whether it is active, what the docroot
//! reports still uses it (handles, descriptors, working directories, maps; see `procscan`),
//! when it stopped being used, and a problem with the active one. The counting itself is the
//! docroot's (`Docroot::usage`); prune spares releases in use and a drain waits for the
//! previous one to be unused, both through `Switcher`. The control server adds the keeper's
//! life and the PHP pools to the `Status`, and `control/render` writes it.

use std::collections::{HashMap, HashSet};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::time::SystemTime;

use crate::life::keeper::Life;
use crate::php::opcache::PoolStatus;
use crate::switch::docroot::Use;
use crate::switch::history::History;
use crate::switch::record::LastSwitch;
use crate::switch::release::{Release, ReleaseSet};
use crate::sys;

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
    /// The docroot's kind (`Docroot::mode`).
    pub mode: &'static str,
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
    /// The serving process's place in the daemon's life (see `keeper`); `None` outside a
    /// keeper (unit tests).
    pub life: Option<Life>,
    /// The PHP pools and their last invalidations (`--php-fpm`, `--php-http`); empty
    /// without pools.
    pub php_pools: Vec<PoolStatus>,
    /// Switches that changed the active release since this server started.
    pub switches: u64,
    /// The last of them (`switch::record`).
    pub last_switch: Option<LastSwitch>,
    // ---- issue 20 ----
    /// Where `rollback` would go now: deleted releases skipped, as `rollback` skips them.
    pub rollback_to: Option<String>,
    /// History entries whose directory is gone (pruned, or deleted by a deploy tool).
    pub history_gone: Vec<String>,
    /// The switch scheduled for an instant (`activate --at`), and the last one dropped.
    pub pending: Option<crate::switch::pending::Pending>,
    pub pending_dropped: Option<crate::switch::pending::Dropped>,
}

/// What is wrong with the active release `rel`, if its directory was deleted, or renamed or
/// replaced in the releases directory since it was activated.
pub(crate) fn active_problem(releases: &ReleaseSet, rel: &Release) -> Option<String> {
    let missing = match sys::fstat(rel.root.as_fd()) {
        Ok(st) => st.st_nlink == 0,
        Err(_) => true,
    };
    let renamed = releases
        .open_dir(&rel.name)
        .ok()
        .and_then(|fd| sys::fstat(fd.as_fd()).ok())
        .zip(sys::fstat(rel.root.as_fd()).ok())
        .is_none_or(|(now, served)| now.st_ino != served.st_ino || now.st_dev != served.st_dev);
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
}

/// One `ReleaseUsage` per release `present` in the releases directory or in use, natural
/// order, from what uses each now and when each was last used.
pub(crate) fn per_release(
    present: &HashSet<String>,
    now_used: &HashMap<String, Use>,
    last_used: &HashMap<String, SystemTime>,
) -> Vec<ReleaseUsage> {
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
    usage.sort_by(|a, b| crate::switch::release::natural_cmp(&a.name, &b.name));
    usage
}
