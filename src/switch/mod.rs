//! The switch, in one place: validate -> persist -> publish -> invalidate -> OPcache and hooks
//! -> drain -> answer (README "How it works, and the rules it keeps": *Switch = validate,
//! persist, publish, invalidate, acknowledge*).
//!
//! `perform` is the whole sequence as the control socket runs it; `Switcher::activate` and
//! `Switcher::rollback` are its first four steps, under the switch lock, and are what the
//! core's tests drive. Each step's reason is written where it happens:
//! 1. **validate**: the release directory is opened without following links and checked
//!    (`ReleaseSet::open_release`), even when the name is already active;
//! 2. **persist**: the mtime registry is synced and the state file written (with the
//!    history) before anything changes, so an acknowledged switch survives a crash;
//! 3. **publish**: the new release becomes the root's in one critical section that also
//!    takes the set of root names the kernel may cache (`Docroot::publish`);
//! 4. **invalidate**: (the FUSE core) those names and the attributes of the root and the
//!    portals are dropped from the kernel's caches, with no core lock held;
//! 5. **OPcache, then hooks**: the PHP pools are told which scripts changed, then the
//!    `--on-activate` commands run (cache warmers then see the new code); a failure is
//!    reported, never undoes the switch;
//! 6. **drain**: with `drain=SECS`, wait for the previous release to be unused;
//! 7. **answer**: `Outcome` says what the operator reads.

pub(crate) mod docroot;
pub(crate) mod history;
pub(crate) mod hooks;
pub mod names;
pub(crate) mod pending;
pub(crate) mod procscan;
pub(crate) mod prune;
pub(crate) mod record;
pub(crate) mod release;
pub(crate) mod scheduled;
pub mod state;
pub(crate) mod switcher;
pub(crate) mod usage;

use std::time::{Duration, Instant, SystemTime};

use crate::php::opcache::Php;
use crate::switch::hooks::Hooks;
use crate::switch::record::{LastSwitch, Steps};
use crate::switch::switcher::{Switched, Switcher};

/// What to switch to, as the control socket asked.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Target<'a> {
    /// `activate NAME`.
    Release(&'a str),
    /// `rollback`: one step back through the history.
    Back,
    /// `rollback --to NAME`.
    BackTo(&'a str),
}

/// How a whole switch ended, for the control socket to render.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Switched (or already active), and every later step succeeded.
    Done(String),
    /// Switched, but OPcache, a hook or the drain failed: the switch stays.
    Partial(String),
    /// Nothing changed.
    Refused(String),
}

/// The whole switch to `target`, every step in order (see the module doc). `who` names the
/// requester for the log; `drain` is the optional wait in seconds for the previous release
/// to be unused; `hung_up(pause)` waits up to `pause` and says whether the requester has
/// gone (nobody would read the answer, so the drain wait ends early).
pub(crate) fn perform(
    switcher: &Switcher,
    php: Option<&Php>,
    hooks: &Hooks,
    target: Target<'_>,
    who: &str,
    drain: Option<u32>,
    hung_up: &dyn Fn(Duration) -> bool,
) -> Outcome {
    let (at, started) = (SystemTime::now(), Instant::now());
    // Steps 1-4: validate, persist, publish, invalidate.
    let switched = match target {
        Target::Release(name) => switcher.activate(name, who),
        Target::Back => switcher.rollback(None, who),
        Target::BackTo(name) => switcher.rollback(Some(name), who),
    };
    let sw = match switched {
        Ok(sw) => sw,
        Err(msg) => {
            log::warn!("switch refused: {msg}");
            return Outcome::Refused(msg);
        }
    };
    if !sw.changed {
        return retry_php_if_failed(switcher, php, sw.message);
    }
    let mut steps = Steps {
        switch: started.elapsed(),
        ..Steps::default()
    };
    let mut message = sw.message.clone();
    let told = after_publish(switcher, php, hooks, &sw, &mut steps);
    let mut problems = told.problems();
    // Step 6: the drain wait, only when something was switched away from.
    if let (Some(secs), Some(previous)) = (drain, sw.from.as_deref()) {
        let drained = timed(&mut steps.drain, || {
            wait_drained(switcher, previous, secs, hung_up)
        });
        match drained {
            Drain::Drained => {
                message.push_str(&format!("; release {previous} is no longer in use"))
            }
            Drain::StillUsed => {
                problems.push(format!("release {previous} is still in use after {secs} s"));
            }
            Drain::ClientGone => {
                log::info!(
                    "stopped waiting for release {previous} to drain: the client hung up \
                     (the switch to {} stays)",
                    sw.to
                );
                problems.push("the client hung up during the drain wait".into());
            }
        }
    }
    record_switch(switcher, at, started.elapsed(), &sw, steps, told);
    // Step 7: the answer.
    if problems.is_empty() {
        Outcome::Done(message)
    } else {
        Outcome::Partial(format!("{message}, but {}", problems.join("; ")))
    }
}

/// Runs `f`, adding how long it took to `took`.
fn timed<T>(took: &mut Duration, f: impl FnOnce() -> T) -> T {
    let started = Instant::now();
    let out = f();
    *took += started.elapsed();
    out
}

/// `activate` of the release already active: nothing to switch, but when the last
/// OPcache invalidation of a pool failed, it is run again (the retry an operator expects
/// from re-running the deploy's last step); otherwise "already active" as before.
fn retry_php_if_failed(switcher: &Switcher, php: Option<&Php>, message: String) -> Outcome {
    let Some(php) = php.filter(|p| p.any_failed()) else {
        return Outcome::Done(message);
    };
    match php_sync(switcher, php) {
        Ok(()) => Outcome::Done(format!(
            "{message}; the OPcache invalidation that had failed was retried and succeeded"
        )),
        Err(e) => Outcome::Partial(format!(
            "{message}; the OPcache invalidation that had failed was retried, but {e}"
        )),
    }
}

/// `switchctl php-sync`: runs the OPcache step (5a) again for the active release, as a
/// switch to it would. Pools already in step find nothing changed; a pool whose last
/// invalidation failed has everything it caches under the mount invalidated.
///
/// # Errors
/// One line naming each pool that failed and why (as `activate` reports it).
pub(crate) fn php_sync(switcher: &Switcher, php: &Php) -> Result<(), String> {
    php.sync_current(switcher.docroot(), &|| switcher.active().release.clone())
}

/// What step 5 (OPcache, then hooks) reported.
pub(crate) struct Told {
    pub(crate) php_error: Option<String>,
    pub(crate) hook_error: Option<String>,
}

impl Told {
    /// The failures, for the answer.
    pub(crate) fn problems(&self) -> Vec<String> {
        self.php_error
            .iter()
            .chain(&self.hook_error)
            .cloned()
            .collect()
    }
}

/// Step 5, after any switch (now or at an instant, `scheduled`): OPcache first, so hooks
/// (cache warmers) already run the new code; how long each took goes into `steps`.
pub(crate) fn after_publish(
    switcher: &Switcher,
    php: Option<&Php>,
    hooks: &Hooks,
    sw: &Switched,
    steps: &mut Steps,
) -> Told {
    if !sw.changed {
        return Told {
            php_error: None,
            hook_error: None,
        };
    }
    let php_error = timed(&mut steps.php, || tell_php(switcher, php));
    let hook_error = timed(&mut steps.hooks, || run_hooks(hooks, sw));
    Told {
        php_error,
        hook_error,
    }
}

/// Records a switch that changed the release, for `status` and monitoring (`record`).
pub(crate) fn record_switch(
    switcher: &Switcher,
    at: SystemTime,
    took: Duration,
    sw: &Switched,
    steps: Steps,
    told: Told,
) {
    switcher.record().switched(LastSwitch {
        at,
        from: sw.from.clone(),
        to: sw.to.clone(),
        took,
        steps,
        php_failed: told.php_error.is_some(),
        hook_error: told.hook_error,
    });
}

/// `prepare NAME`: every check `activate NAME` would do, changing nothing: the release (see
/// `Switcher::prepare`), then each PHP pool reached, its owner checked and what it caches
/// compared with the release (`Php::prepare`).
///
/// # Errors
/// The first reason an `activate` would fail now (or be partial: a pool unreachable).
pub(crate) fn prepare(
    switcher: &Switcher,
    php: Option<&Php>,
    name: &str,
) -> Result<String, String> {
    let release = switcher.prepare(name)?;
    let active = switcher.active();
    let mut message = if active.name() == Some(name) {
        format!("release {name} is already active; activate would check it again")
    } else {
        format!("release {name} can be activated")
    };
    if let Some(php) = php.filter(|p| !p.is_empty()) {
        let pools = php.prepare(switcher.docroot(), &release)?;
        message.push_str(&format!("; {pools}"));
    }
    Ok(message)
}

/// Step 5a: tells the PHP pools which scripts the switch changed (`--php-fpm`, `--php-http`).
fn tell_php(switcher: &Switcher, php: Option<&Php>) -> Option<String> {
    php?.sync(switcher.docroot(), switcher.active().release.clone())
        .err()
}

/// Step 5b: the `--on-activate` commands.
fn run_hooks(hooks: &Hooks, sw: &Switched) -> Option<String> {
    let e = hooks.run(sw.from.as_deref(), &sw.to).err()?;
    log::warn!("{e}");
    Some(e)
}

/// How a drain wait ended.
enum Drain {
    Drained,
    StillUsed,
    ClientGone,
}

/// Step 6: waits up to `secs` for `previous` to be unused, asking between /proc scans
/// whether the requester is still there: a client that gave up (Ctrl-C on
/// `switchctl --wait-drain=600`) ends the wait instead of leaving the daemon scanning /proc
/// ten times a second for the rest of it. The switch itself stays.
fn wait_drained(
    switcher: &Switcher,
    previous: &str,
    secs: u32,
    hung_up: &dyn Fn(Duration) -> bool,
) -> Drain {
    let deadline = Instant::now() + Duration::from_secs(u64::from(secs));
    loop {
        if switcher.wait_unused(previous, Duration::ZERO) {
            return Drain::Drained;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Drain::StillUsed;
        }
        if hung_up(left.min(Duration::from_millis(100))) {
            return Drain::ClientGone;
        }
    }
}

#[cfg(test)]
mod tests {
    //! The whole sequence of `perform` on a real core over temporary releases (no mount):
    //! README "How it works, and the rules it keeps", *Switch = validate, persist, publish,
    //! invalidate, acknowledge* and *Bad input changes nothing*.

    use std::path::PathBuf;
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;
    use crate::fs::inodes::ROOT_INO;
    use crate::testutil::{Served, TempDir, TestConfig, served};

    struct Setup {
        tmp: TempDir,
        core: Served,
    }

    fn setup() -> Setup {
        let tmp = TempDir::new("switch");
        for rel in ["1", "2"] {
            let dir = tmp.path().join("releases").join(rel);
            std::fs::create_dir_all(&dir).expect("release dir");
            std::fs::write(dir.join("index.php"), rel).expect("index.php");
        }
        let config = TestConfig {
            inode_fds: 1000,
            ..crate::testutil::core_config(&tmp)
        };
        let core = served(config, Some("1")).expect("core");
        Setup { tmp, core }
    }

    impl Setup {
        fn log(&self) -> PathBuf {
            self.tmp.path().join("hooks.log")
        }

        /// A hook that records what it was told, and whether the state file already named
        /// the new release when it ran; then runs `tail` (e.g. `exit 1`).
        fn hooks(&self, tail: &str) -> Hooks {
            let cmd = format!(
                "if grep -q \"^active=$SWITCHFS_NEW_RELEASE$\" {state}; then p=persisted; \
                 else p=not-persisted; fi; \
                 echo \"$SWITCHFS_OLD_RELEASE $SWITCHFS_NEW_RELEASE $p\" >> {log}; {tail}",
                state = self.tmp.path().join("state").display(),
                log = self.log().display(),
            );
            Hooks::new(
                vec![cmd],
                Duration::from_secs(10),
                self.tmp.path().join("mnt"),
                self.tmp.path().join("releases"),
            )
        }

        fn hook_runs(&self) -> Vec<String> {
            std::fs::read_to_string(self.log())
                .unwrap_or_default()
                .lines()
                .map(str::to_string)
                .collect()
        }

        fn active(&self) -> Option<String> {
            self.core.active().name().map(str::to_string)
        }
    }

    fn still_here(_: Duration) -> bool {
        false
    }

    fn run(s: &Setup, hooks: &Hooks, target: Target<'_>, drain: Option<u32>) -> Outcome {
        perform(
            &s.core.switcher,
            None,
            hooks,
            target,
            "test",
            drain,
            &still_here,
        )
    }

    #[test]
    fn hooks_run_after_the_switch_is_persisted_and_only_when_something_changed() {
        let s = setup();
        let hooks = s.hooks("");
        assert_eq!(
            run(&s, &hooks, Target::Release("2"), None),
            Outcome::Done("switched from 1 to 2".into())
        );
        assert_eq!(s.hook_runs(), ["1 2 persisted"]);
        assert_eq!(s.active().as_deref(), Some("2"));
        assert_eq!(
            run(&s, &hooks, Target::Release("2"), None),
            Outcome::Done("release 2 is already active".into())
        );
        assert_eq!(s.hook_runs().len(), 1, "nothing changed, no hook");
        assert_eq!(
            run(&s, &hooks, Target::Back, None),
            Outcome::Done("switched from 2 to 1".into())
        );
        assert_eq!(s.hook_runs(), ["1 2 persisted", "2 1 persisted"]);
    }

    #[test]
    fn a_refused_switch_changes_nothing_and_runs_no_hook() {
        let s = setup();
        let hooks = s.hooks("");
        for target in [Target::Release("9"), Target::Release("../1"), Target::Back] {
            match run(&s, &hooks, target, Some(5)) {
                Outcome::Refused(msg) => assert!(!msg.contains('\n'), "{msg}"),
                other => panic!("{target:?}: {other:?}"),
            }
        }
        assert_eq!(s.active().as_deref(), Some("1"));
        assert!(s.hook_runs().is_empty());
    }

    #[test]
    fn a_failing_hook_makes_the_answer_partial_and_the_switch_stays() {
        let s = setup();
        let hooks = s.hooks("exit 3");
        match run(&s, &hooks, Target::Release("2"), None) {
            Outcome::Partial(msg) => {
                assert!(msg.starts_with("switched from 1 to 2, but "), "{msg}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(s.active().as_deref(), Some("2"));
    }

    /// Opens `index.php` of the active release: a handle that keeps that release in use.
    fn hold_index(s: &Setup) -> u64 {
        let ino = match s
            .core
            .lookup(
                &crate::fs::caller::Caller::ROOT,
                ROOT_INO,
                "index.php".as_ref(),
            )
            .expect("lookup")
        {
            crate::fs::core::Lookup::Entry(attr, _) => attr.ino.0,
            other => panic!("{other:?}"),
        };
        s.core.open(ino, libc::O_RDONLY).expect("open")
    }

    #[test]
    fn the_drain_waits_for_the_previous_release_and_ends_when_the_client_hangs_up() {
        let s = setup();
        let hooks = s.hooks("");
        let in_1 = hold_index(&s);
        assert_eq!(
            run(&s, &hooks, Target::Release("2"), Some(0)),
            Outcome::Partial(
                "switched from 1 to 2, but release 1 is still in use after 0 s".into()
            )
        );
        let in_2 = hold_index(&s);
        let asked = AtomicBool::new(false);
        let hung_up = |_: Duration| {
            asked.store(true, Ordering::Relaxed);
            true
        };
        let started = Instant::now();
        let out = perform(
            &s.core.switcher,
            None,
            &hooks,
            Target::Release("1"),
            "test",
            Some(600),
            &hung_up,
        );
        assert_eq!(
            out,
            Outcome::Partial(
                "switched from 2 to 1, but the client hung up during the drain wait".into()
            )
        );
        assert!(asked.load(Ordering::Relaxed));
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the wait ended early"
        );
        assert_eq!(s.active().as_deref(), Some("1"), "the switch stays");
        s.core.release(in_2);
        s.core.release(in_1);
        assert_eq!(
            run(&s, &hooks, Target::Release("2"), Some(5)),
            Outcome::Done("switched from 1 to 2; release 1 is no longer in use".into())
        );
    }
}
