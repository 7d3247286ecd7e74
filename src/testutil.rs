//! Helpers for unit tests: a temporary directory removed on drop, and a core's settings in it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::core::CoreConfig;
use std::sync::atomic::{AtomicU64, Ordering};

static COUNTER: AtomicU64 = AtomicU64::new(0);

pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("switchfs-unit-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Settings for a core over `tmp/releases`, with its state file, mount point and socket
/// paths in `tmp` (nothing is mounted), open tracking on and no mtime log.
pub fn core_config(tmp: &TempDir) -> CoreConfig {
    CoreConfig {
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
