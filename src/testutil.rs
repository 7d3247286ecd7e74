//! Helpers for unit tests: a temporary directory removed on drop, and a core served by a
//! switcher over it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::fs::core::{Core, CoreConfig};
use crate::switch::docroot::Active;
use crate::switch::history::History;
use crate::switch::switcher::{SwitchConfig, Switched, Switcher};
use crate::switch::usage::Status;

static COUNTER: AtomicU64 = AtomicU64::new(0);

pub(crate) struct TempDir(PathBuf);

impl TempDir {
    pub(crate) fn new(tag: &str) -> Self {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("switchfs-unit-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The settings of a core and its switcher, in one struct so a test changes one field.
#[derive(Debug, Clone)]
pub(crate) struct TestConfig {
    pub(crate) releases: PathBuf,
    pub(crate) state_path: PathBuf,
    pub(crate) mount_point: PathBuf,
    pub(crate) control_path: PathBuf,
    pub(crate) ttl: Duration,
    pub(crate) track_opens: bool,
    pub(crate) inode_fds: usize,
    pub(crate) mtimes_path: Option<PathBuf>,
}

/// Settings for a core over `tmp/releases`, with its state file, mount point and socket
/// paths in `tmp` (nothing is mounted), open tracking on and no mtime log.
pub(crate) fn core_config(tmp: &TempDir) -> TestConfig {
    TestConfig {
        releases: tmp.path().join("releases"),
        state_path: tmp.path().join("state"),
        mount_point: tmp.path().join("mnt"),
        control_path: tmp.path().join("ctl.sock"),
        ttl: Duration::from_secs(3600),
        track_opens: true,
        inode_fds: 100_000,
        mtimes_path: None,
    }
}

/// A core and the switcher driving it, as the daemon wires them. Derefs to the core for
/// filesystem calls; the switch's calls go to the switcher.
pub(crate) struct Served {
    pub(crate) core: Arc<Core>,
    pub(crate) switcher: Switcher,
}

/// The core of `config`, showing what its switcher restores (else `initial`).
pub(crate) fn served(config: TestConfig, initial: Option<&str>) -> Result<Served, String> {
    let releases = Switcher::open_releases(&config.releases)?;
    let core = Arc::new(Core::new(CoreConfig {
        releases: releases.path().to_path_buf(),
        mount_point: config.mount_point.clone(),
        control_path: config.control_path,
        ttl: config.ttl,
        track_opens: config.track_opens,
        inode_fds: config.inode_fds,
        mtimes_path: config.mtimes_path,
    })?);
    let switch = SwitchConfig {
        state_path: config.state_path,
        mount_point: config.mount_point,
    };
    let switcher = Switcher::new(switch, releases, core.clone(), initial)?;
    Ok(Served { core, switcher })
}

impl std::ops::Deref for Served {
    type Target = Core;
    fn deref(&self) -> &Core {
        &self.core
    }
}

impl Served {
    pub(crate) fn activate(&self, name: &str, who: &str) -> Result<Switched, String> {
        self.switcher.activate(name, who)
    }
    pub(crate) fn rollback(&self, to: Option<&str>, who: &str) -> Result<Switched, String> {
        self.switcher.rollback(to, who)
    }
    pub(crate) fn active(&self) -> Arc<Active> {
        self.switcher.active()
    }
    pub(crate) fn history(&self) -> History {
        self.switcher.history()
    }
    pub(crate) fn status(&self) -> Status {
        self.switcher.status()
    }
    pub(crate) fn prune(&self, keep: usize, apply: bool) -> Result<String, String> {
        self.switcher.prune(keep, apply)
    }
    pub(crate) fn list(&self) -> Result<Vec<String>, String> {
        self.switcher.list()
    }
    pub(crate) fn stop_switching(&self) {
        self.switcher.stop_switching();
    }
    pub(crate) fn wait_unused(&self, name: &str, timeout: Duration) -> bool {
        self.switcher.wait_unused(name, timeout)
    }
}
