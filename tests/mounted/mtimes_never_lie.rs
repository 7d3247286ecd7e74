//! The daemon's own life (README "How it works, and the rules it keeps": *Modification times
//! never lie to OPcache*): what it promised before a restart or a crash still holds after it.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::process::Command;

use crate::common::*;

/// Sets every file of release `rel` to the same mtime, as reproducible builds, `tar` and
/// `rsync -t` do.
fn flatten_mtimes(fx: &Fixture, rel: &str, secs: i64) {
    let status = Command::new("find")
        .arg(fx.releases().join(rel))
        .args(["-type", "f", "-exec", "touch", "-d"])
        .arg(format!("@{secs}"))
        .args(["{}", "+"])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Every (mtime, content) of one path seen through the mount, by any daemon process: what an
/// OPcache that outlives the daemon remembers.
#[derive(Default)]
struct Seen(HashMap<i64, String>);

impl Seen {
    /// Stats and reads `path` through the mount, and fails if its mtime was seen before with
    /// another content.
    fn observe(&mut self, fx: &Fixture, path: &str, when: &str) -> i64 {
        let mtime = std::fs::metadata(fx.m(path))
            .unwrap_or_else(|e| panic!("stat {path} {when}: {e}"))
            .mtime();
        let content = fx.read(path);
        if let Some(earlier) = self.0.get(&mtime) {
            assert_eq!(
                earlier, &content,
                "{when}: {path} shows mtime {mtime}, which was reported before for other content"
            );
        }
        self.0.insert(mtime, content);
        mtime
    }
}

/// A worker caches release 2 at its fresh stamp, the daemon goes away (stopped, or killed
/// without a chance to save anything) and comes back on the same state file; release 2 is
/// looked up again, then a rollback to 1: no mtime may ever stand for two contents.
fn mtimes_survive(sig: i32, tag: &str) {
    let fx = Fixture::new(tag);
    fx.write("1", "index.php", "<?php echo 'A';");
    fx.write("2", "index.php", "<?php echo 'B';");
    flatten_mtimes(&fx, "1", 1_700_000_000);
    flatten_mtimes(&fx, "2", 1_700_000_000);
    let mut seen = Seen::default();
    let mut d = fx.start(&["--initial", "1"]);
    let a = seen.observe(&fx, "index.php", "release 1");
    fx.activate("2");
    let b = seen.observe(&fx, "index.php", "release 2");
    assert_ne!(a, b, "identical real mtimes, different content");
    d.stop_with(sig);
    drop(d);
    let _d = fx.start(&[]);
    assert_eq!(persisted(&fx.state()), "active=2 previous=1");
    let b_again = seen.observe(&fx, "index.php", "release 2 after the restart");
    assert_eq!(b_again, b, "the same file keeps the mtime it had");
    fx.activate("1");
    seen.observe(&fx, "index.php", "rollback to 1 after the restart");
    fx.activate("2");
    seen.observe(&fx, "index.php", "release 2 again");
}

#[test]
fn mtime_rule_holds_across_a_restart() {
    mtimes_survive(libc::SIGTERM, "mt-restart");
}

#[test]
fn mtime_rule_holds_across_a_crash() {
    mtimes_survive(libc::SIGKILL, "mt-crash");
}
