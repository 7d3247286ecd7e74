//! `--on-activate` hooks: commands run after each switch, for what no filesystem can do
//! (resetting OPcache on sites with `opcache.validate_timestamps=0`, warming caches,
//! notifying monitoring). A failing hook is reported, never undoes the switch.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

#[derive(Debug)]
pub(crate) struct Hooks {
    pub commands: Vec<String>,
    pub timeout: Duration,
    pub mount_point: PathBuf,
    pub releases_dir: PathBuf,
    /// Hooks of two switches never run interleaved.
    serial: Mutex<()>,
}

impl Hooks {
    pub(crate) fn new(
        commands: Vec<String>,
        timeout: Duration,
        mount_point: PathBuf,
        releases_dir: PathBuf,
    ) -> Hooks {
        Hooks {
            commands,
            timeout,
            mount_point,
            releases_dir,
            serial: Mutex::new(()),
        }
    }

    /// Runs every hook, in order, with `SWITCHFS_OLD_RELEASE`, `SWITCHFS_NEW_RELEASE`,
    /// `SWITCHFS_MOUNT` and `SWITCHFS_RELEASES` set. Their output goes to the log.
    ///
    /// # Errors
    /// One line naming every hook that failed, timed out or could not start.
    pub(crate) fn run(&self, from: Option<&str>, to: &str) -> Result<(), String> {
        let _serial = self.serial.lock();
        let failures: Vec<String> = self
            .commands
            .iter()
            .filter_map(|cmd| self.run_one(cmd, from, to).err())
            .collect();
        if failures.is_empty() {
            Ok(())
        } else {
            Err(failures.join("; "))
        }
    }

    fn run_one(&self, cmd: &str, from: Option<&str>, to: &str) -> Result<(), String> {
        let started = Instant::now();
        let mut child = Command::new("/bin/sh")
            .arg("-c")
            .arg(cmd)
            .env("SWITCHFS_OLD_RELEASE", from.unwrap_or(""))
            .env("SWITCHFS_NEW_RELEASE", to)
            .env("SWITCHFS_MOUNT", &self.mount_point)
            .env("SWITCHFS_RELEASES", &self.releases_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group, so a timeout kills whatever the hook started too
            // (a child left holding the output pipes would keep us waiting).
            .process_group(0)
            .spawn()
            .map_err(|e| format!("on-activate hook {cmd:?} cannot start: {e}"))?;
        // Drain both pipes on threads so a chatty hook cannot block on a full pipe.
        let readers: Vec<_> = [
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        ]
        .into_iter()
        .flatten()
        .map(|mut pipe| {
            std::thread::spawn(move || {
                let mut out = Vec::new();
                let _ = pipe.read_to_end(&mut out);
                out
            })
        })
        .collect();
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if started.elapsed() >= self.timeout => {
                    // The whole process group we created for this hook.
                    let _ = crate::sys::signal(-(child.id() as i32), libc::SIGKILL);
                    let _ = child.kill();
                    let _ = child.wait();
                    break None;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(10)),
                Err(e) => return Err(format!("on-activate hook {cmd:?}: {e}")),
            }
        };
        for reader in readers {
            let output = reader.join().unwrap_or_default();
            for line in String::from_utf8_lossy(&output).lines() {
                log::info!("hook {cmd:?}: {line}");
            }
        }
        match status {
            Some(s) if s.success() => {
                log::info!("hook {cmd:?} done in {:?}", started.elapsed());
                Ok(())
            }
            Some(s) => Err(format!("on-activate hook {cmd:?} failed: {s}")),
            None => Err(format!(
                "on-activate hook {cmd:?} timed out after {:?} and was killed",
                self.timeout
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hooks(commands: &[&str], timeout_ms: u64) -> Hooks {
        Hooks::new(
            commands.iter().map(|s| s.to_string()).collect(),
            Duration::from_millis(timeout_ms),
            "/mnt".into(),
            "/releases".into(),
        )
    }

    #[test]
    fn hooks_see_the_switch_in_their_environment() {
        let dir = crate::testutil::TempDir::new("hooks");
        let out = dir.path().join("out");
        let cmd = format!(
            "echo \"$SWITCHFS_OLD_RELEASE>$SWITCHFS_NEW_RELEASE $SWITCHFS_MOUNT\" > {}",
            out.display()
        );
        hooks(&[&cmd], 5000).run(Some("1"), "2").unwrap();
        assert_eq!(std::fs::read_to_string(out).unwrap(), "1>2 /mnt\n");
    }

    #[test]
    fn failures_and_timeouts_are_reported_and_later_hooks_still_run() {
        let dir = crate::testutil::TempDir::new("hooks");
        let marker = dir.path().join("ran");
        let last = format!("touch {}", marker.display());
        let err = hooks(&["exit 3", "sleep 5", &last], 300)
            .run(None, "1")
            .unwrap_err();
        assert!(err.contains("\"exit 3\" failed"), "{err}");
        assert!(err.contains("timed out"), "{err}");
        assert!(marker.exists(), "later hooks still run");
    }
}
