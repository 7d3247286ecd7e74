//! The two phases of a fleet switch (issue 20): `prepare` (every check an `activate` would do,
//! changing nothing) and a switch at an instant (`activate NAME --at TIME`).
//!
//! A switch at an instant is checked like `prepare` when it is asked for, persisted beside
//! the state file (`switch::pending`), and run by its own timer thread (`run`):
//! 1. an absolute `CLOCK_REALTIME` timer wakes it `LEAD` before the instant, to validate the
//!    release again (the slow part: directory walks, a prune that may hold the lock);
//! 2. `LOCK_LEAD` before the instant it takes the switch lock, then waits on an absolute
//!    timer for the instant;
//! 3. at the instant: validate (cheap, descriptors already warm), persist, publish, as
//!    `activate` does (`Switcher::activate_held`); then the pending file is deleted, the
//!    lock released, and OPcache and the hooks run as after any switch.
//!
//! A `cancel` wakes the timer thread through a pipe; whichever of the two takes the armed
//! switch out of the registry first decides (`Schedule::take`), so it runs at most once.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::php::opcache::Php;
use crate::switch::Target;
use crate::switch::history::History;
use crate::switch::hooks::Hooks;
use crate::switch::pending::{Dropped, Ended, Kind, Pending};
use crate::switch::release::Release;
use crate::switch::switcher::{SwitchGuard, Switched, Switcher};
use crate::when;

/// How long before the instant the timer thread wakes for the slow checks.
const LEAD: Duration = Duration::from_millis(200);
/// How long before the instant it takes the switch lock: just long enough to have it (and
/// the mtime log synced) when the instant comes, short enough not to hold up a prune.
const LOCK_LEAD: Duration = Duration::from_millis(20);
/// How late past its instant a switch may still take the switch lock (behind a prune, say)
/// before it is dropped rather than run late.
const LATE_LIMIT: Duration = Duration::from_secs(1);

impl Switcher {
    /// Every check `activate name` would do now, changing nothing: not shutting down, no
    /// switch pending, the release opened without following links and validated. Returns
    /// the release for the PHP pools' checks.
    ///
    /// # Errors
    /// Why an `activate` would be refused now: one line.
    pub(crate) fn prepare(&self, name: &str) -> Result<Arc<Release>, String> {
        self.refuse_if_stopping()?;
        self.refuse_if_pending()?;
        let fd = self.releases.open_release(name)?;
        Ok(Arc::new(Release::with_new_generation(name, fd)))
    }

    /// The release `target` switches to now: the name, or where a rollback would go.
    ///
    /// # Errors
    /// Nothing to roll back to: one line.
    pub(crate) fn plan(&self, target: Target<'_>) -> Result<String, String> {
        let to = match target {
            Target::Release(name) => return Ok(name.to_string()),
            Target::Back => None,
            Target::BackTo(name) => Some(name),
        };
        self.rollback_plan(to).map(|(target, _)| target)
    }

    /// Where a rollback (`to`: `--to NAME`) from the active release goes, and the history
    /// after it, as `rollback` computes them.
    fn rollback_plan(&self, to: Option<&str>) -> Result<(String, History), String> {
        let current = self.active();
        let current = current
            .name()
            .ok_or("no release is active, so there is nothing to roll back from")?;
        let exists = |name: &str| self.releases.open_release(name).is_ok();
        self.history().rollback(current, to, exists)
    }

    /// At the instant, under the lock: the switch `pending` asked for, a rollback planned
    /// again (the history cannot have changed, but a directory may have gone).
    fn switch_now(&self, guard: &SwitchGuard<'_>, pending: &Pending) -> Result<Switched, String> {
        let who = format!("{}, scheduled", pending.requested_by);
        let to = match pending.kind {
            Kind::Activate => return self.activate_held(guard, &pending.release, &who, None),
            Kind::Rollback => None,
            Kind::RollbackTo => Some(pending.release.as_str()),
        };
        let (target, after) = self.rollback_plan(to)?;
        if target != pending.release {
            return Err(format!(
                "the rollback now goes to release {target}, not {} as when it was scheduled; \
                 nothing changed",
                pending.release
            ));
        }
        self.activate_held(guard, &target, &who, Some(after))
    }

    /// Refuses an immediate switch while one is pending (cancel first).
    pub(super) fn refuse_if_pending(&self) -> Result<(), String> {
        self.schedule.refusal().map_or(Ok(()), Err)
    }

    /// Schedules the switch to `name` at `at`: checked like `prepare`, `at` neither past nor
    /// more than an hour ahead, persisted, armed. Returns its id for `run`.
    ///
    /// # Errors
    /// One line; nothing is scheduled then.
    pub(crate) fn schedule_at(
        &self,
        target: Target<'_>,
        at: SystemTime,
        who: &str,
    ) -> Result<(u64, Pending), String> {
        // Serialised with switches and prune: none is half done while this one is checked.
        let _guard = self.lock();
        self.refuse_if_pending()?;
        let name = self.plan(target)?;
        self.prepare(&name)?;
        when::check_window(at, SystemTime::now())?;
        let pending = Pending {
            kind: match target {
                Target::Release(_) => Kind::Activate,
                Target::Back => Kind::Rollback,
                Target::BackTo(_) => Kind::RollbackTo,
            },
            release: name,
            at,
            requested_by: who.to_string(),
            requested_at: SystemTime::now(),
        };
        let _file = self.schedule.file_lock();
        self.state
            .save_pending(Some(&pending.encode()))
            .map_err(|e| format!("cannot persist the pending switch beside the state file: {e}"))?;
        let id = self.schedule.arm(pending.clone());
        log::info!("scheduled the switch to {}", pending.describe());
        Ok((id, pending))
    }

    /// Drops the pending switch (without the switch lock, which its timer holds in the last
    /// moments before the instant).
    ///
    /// # Errors
    /// None is pending (it may have just run).
    pub(crate) fn cancel_pending(&self, who: &str) -> Result<String, String> {
        let _file = self.schedule.file_lock();
        let (_, pending) = self
            .schedule
            .cancel()
            .ok_or("no switch is pending (see switchctl status)")?;
        if let Err(e) = self.state.save_pending(None) {
            // It stays disarmed here; a successor would find its time passed and drop it.
            log::error!("cannot delete the cancelled pending switch's file: {e}");
        }
        log::info!("cancelled the switch to {} (by {who})", pending.describe());
        Ok(format!("cancelled the switch to {}", pending.describe()))
    }

    /// The pending switch and the last dropped one, for `status`.
    pub(crate) fn pending(&self) -> (Option<Pending>, Option<Dropped>) {
        (
            self.schedule.current().map(|(_, p)| p),
            self.schedule.dropped(),
        )
    }

    /// The id of the switch armed now (a restored one, for the server to start its timer).
    pub(crate) fn armed_id(&self) -> Option<u64> {
        self.schedule.current().map(|(id, _)| id)
    }

    /// Called once at start, after `restore`: re-arms a pending switch a predecessor left,
    /// or, if its time passed while no server ran, drops it and says so (log and status);
    /// the state file tells whether it ran before the predecessor died.
    pub(super) fn restore_pending(&self) {
        let text = match self.state.load_pending() {
            Ok(Some(text)) => text,
            Ok(None) => return,
            Err(e) => {
                log::error!("the pending switch's file is unusable ({e}); removing it");
                let _ = self.state.save_pending(None);
                return;
            }
        };
        let pending = match Pending::decode(&text) {
            Ok(p) => p,
            Err(e) => {
                log::error!("the pending switch's file is unusable ({e}); removing it");
                let _ = self.state.save_pending(None);
                return;
            }
        };
        let now = SystemTime::now();
        if pending.at > now {
            log::info!("re-armed the pending switch to {}", pending.describe());
            self.schedule.arm(pending);
            return;
        }
        if let Err(e) = self.state.save_pending(None) {
            log::error!("cannot delete the pending switch's file: {e}");
        }
        if self.active().name() == Some(pending.release.as_str()) {
            log::info!(
                "the pending switch to {} ran before this server started",
                pending.describe()
            );
            return;
        }
        let why = format!(
            "its time passed {:.3} s before this server started; not run late",
            when::seconds_after(now, pending.at)
        );
        log::warn!(
            "dropped the pending switch to {}: {why}",
            pending.describe()
        );
        self.schedule.drop_pending(
            None,
            Dropped {
                pending,
                why,
                when: now,
            },
        );
    }

    /// Waits for switch `id` to end (the client of `activate --at` without `--no-wait`);
    /// `None` when this server hands over first.
    pub(crate) fn wait_scheduled(&self, id: u64, hung_up: &dyn Fn() -> bool) -> Option<Ended> {
        self.schedule.wait_ended(id, hung_up)
    }

    /// This server hands over to a successor: clients waiting on a switch are answered.
    pub(crate) fn retire_schedule(&self) {
        self.schedule.retire();
    }

    /// Drops switch `id` for `why` (logged, shown by `status`), deleting its file.
    fn drop_scheduled(&self, id: u64, pending: Pending, why: String) {
        let _file = self.schedule.file_lock();
        if self.schedule.take(id).is_none() {
            return; // cancelled meanwhile: its file is gone, or is a newer switch's
        }
        log::warn!(
            "dropped the pending switch to {}: {why}",
            pending.describe()
        );
        if let Err(e) = self.state.save_pending(None) {
            log::error!("cannot delete the pending switch's file: {e}");
        }
        self.schedule.drop_pending(
            Some(id),
            Dropped {
                pending,
                why,
                when: SystemTime::now(),
            },
        );
    }
}

/// The timer thread of switch `id` (see the module doc). Returns when it ran, was
/// cancelled or dropped, or the server stops switching (the file then stays for the
/// successor).
pub(crate) fn run(switcher: &Switcher, php: Option<&Php>, hooks: &Hooks, id: u64) {
    crate::sys::set_thread_timer_slack_min();
    let Some((_, pending)) = switcher.schedule.current().filter(|(i, _)| *i == id) else {
        return;
    };
    // Without a wake-up pipe a cancel is still seen at the instant (`take` fails).
    let wake = match switcher
        .schedule
        .wake_fd(id)
        .map(Ok)
        .unwrap_or_else(|| crate::sys::pipe().map(|(r, _w)| r))
    {
        Ok(fd) => fd,
        Err(e) => {
            switcher.drop_scheduled(id, pending, format!("cannot wait for the instant: {e}"));
            return;
        }
    };
    let Some((guard, woke)) = reach_instant(switcher, id, &pending, &wake) else {
        return;
    };
    // 3. The switch, if it was not cancelled meanwhile.
    let Some(pending) = switcher.schedule.take(id) else {
        return;
    };
    let switched = switcher.switch_now(&guard, &pending);
    let published = SystemTime::now();
    {
        let _file = switcher.schedule.file_lock();
        if let Err(e) = switcher.state.save_pending(None) {
            log::error!("cannot delete the pending switch's file after it ran: {e}");
        }
    }
    drop(guard);
    let ended = match switched {
        Err(msg) => {
            log::warn!("scheduled switch refused at its instant: {msg}");
            Ended::Refused(msg)
        }
        Ok(sw) => {
            log::info!(
                "scheduled switch to {} published at {} ({:.3} ms after its instant; the \
                 timer fired {:.3} ms after it)",
                sw.to,
                when::micros(published),
                when::seconds_after(published, pending.at) * 1000.0,
                when::seconds_after(woke, pending.at) * 1000.0
            );
            let mut message = format!("{} at {}", sw.message, when::micros(published));
            let started = std::time::Instant::now();
            let mut steps = crate::switch::record::Steps::default();
            let told = crate::switch::after_publish(switcher, php, hooks, &sw, &mut steps);
            let problems = told.problems();
            if sw.changed {
                crate::switch::record_switch(
                    switcher,
                    published,
                    started.elapsed(),
                    &sw,
                    steps,
                    told,
                );
            }
            if !problems.is_empty() {
                message = format!("{message}, but {}", problems.join("; "));
            }
            Ended::Ran {
                partial: !problems.is_empty(),
                message,
                at: published,
            }
        }
    };
    switcher.schedule.ended(id, ended);
}

/// Steps 1 and 2: waits for `LEAD` before the instant, checks the release again, takes the
/// switch lock and waits for the instant. Returns the held lock and when the timer fired;
/// `None` when the switch was cancelled, dropped, or the server is stopping.
fn reach_instant<'a>(
    switcher: &'a Switcher,
    id: u64,
    pending: &Pending,
    wake: &std::os::fd::OwnedFd,
) -> Option<(SwitchGuard<'a>, SystemTime)> {
    let drop_it = |why: String| switcher.drop_scheduled(id, pending.clone(), why);
    // True once `before` ahead of the instant; false when cancelled (or dropped).
    let reached = |before: Duration| {
        let until = pending.at.checked_sub(before).unwrap_or(pending.at);
        match crate::sys::wait_until_realtime(until, std::os::fd::AsFd::as_fd(wake)) {
            Ok(reached) => reached,
            Err(e) => {
                drop_it(format!("timer failed: {e}"));
                false
            }
        }
    };
    // 1. Woken early for the slow checks.
    if !reached(LEAD) {
        return None;
    }
    if let Err(msg) = switcher.releases.open_release(&pending.release) {
        drop_it(msg);
        return None;
    }
    // 2. The lock (behind a prune, at most LATE_LIMIT past the instant), then the instant.
    if !reached(LOCK_LEAD) {
        return None;
    }
    let budget = when::seconds_after(pending.at + LATE_LIMIT, SystemTime::now()).max(0.0);
    let Some(guard) = switcher.try_lock_for(Duration::from_secs_f64(budget)) else {
        drop_it("the switch lock was held past its instant; not run late".to_string());
        return None;
    };
    if switcher.refuse_if_stopping().is_err() {
        log::info!("stopping: the pending switch is left to the successor");
        switcher.schedule.retire();
        return None;
    }
    // What the docroot told clients so far is made durable now; at the instant the same
    // step only syncs what was learned since (usually nothing), keeping the publish short.
    switcher.docroot().sync_before_switch();
    reached(Duration::ZERO).then(|| (guard, SystemTime::now()))
}

#[cfg(test)]
mod tests {
    //! The schedule on a real core over temporary releases (no mount): what a successor does
    //! with the pending file a predecessor left, and what is refused while one is pending.

    use super::*;
    use crate::switch::state::StateFile;
    use crate::testutil::{Served, TempDir, core_config, served};

    fn setup(tag: &str) -> (TempDir, Served) {
        let tmp = TempDir::new(tag);
        for rel in ["1", "2"] {
            let dir = tmp.path().join("releases").join(rel);
            std::fs::create_dir_all(&dir).expect("release dir");
            std::fs::write(dir.join("index.php"), rel).expect("index.php");
        }
        let core = served(core_config(&tmp), Some("1")).expect("core");
        (tmp, core)
    }

    fn leave_pending(tmp: &TempDir, release: &str, at: SystemTime) {
        let p = Pending {
            kind: Kind::Activate,
            release: release.into(),
            at,
            requested_by: "uid=0 gid=0 pid=1".into(),
            requested_at: SystemTime::now(),
        };
        let file = StateFile::new(tmp.path().join("state"));
        file.save_pending(Some(&p.encode())).expect("pending file");
    }

    fn successor(tmp: &TempDir, old: Served) -> Served {
        old.stop_switching();
        drop(old);
        served(core_config(tmp), None).expect("successor")
    }

    #[test]
    fn a_successor_re_arms_a_future_switch_and_drops_a_past_one() {
        let (tmp, core) = setup("sched-restore");
        leave_pending(&tmp, "2", SystemTime::now() + Duration::from_secs(600));
        let core = successor(&tmp, core);
        let (pending, dropped) = core.switcher.pending();
        assert_eq!(pending.map(|p| p.release).as_deref(), Some("2"));
        assert!(dropped.is_none());
        assert!(
            core.activate("2", "test")
                .unwrap_err()
                .contains("a switch is pending")
        );

        leave_pending(&tmp, "2", SystemTime::now() - Duration::from_secs(5));
        let core = successor(&tmp, core);
        let (pending, dropped) = core.switcher.pending();
        assert!(pending.is_none(), "never run late");
        let dropped = dropped.expect("the drop is reported");
        assert!(dropped.why.contains("not run late"), "{}", dropped.why);
        assert_eq!(core.active().name(), Some("1"));
        assert!(!tmp.path().join("state.pending").exists());
    }

    #[test]
    fn a_past_switch_the_state_file_shows_ran_is_not_reported_dropped() {
        let (tmp, core) = setup("sched-ran");
        core.activate("2", "test").expect("activate");
        leave_pending(&tmp, "2", SystemTime::now() - Duration::from_secs(5));
        let core = successor(&tmp, core);
        assert_eq!(core.switcher.pending(), (None, None));
        assert_eq!(core.active().name(), Some("2"));
    }

    #[test]
    fn schedule_checks_like_prepare_and_cancel_removes_the_file() {
        let (tmp, core) = setup("sched-cancel");
        let soon = SystemTime::now() + Duration::from_secs(600);
        for (name, at) in [
            ("9", soon),
            ("2", SystemTime::now() - Duration::from_secs(1)),
            ("2", SystemTime::now() + Duration::from_secs(7200)),
        ] {
            let target = Target::Release(name);
            assert!(core.switcher.schedule_at(target, at, "test").is_err());
        }
        assert!(!tmp.path().join("state.pending").exists());
        core.switcher
            .schedule_at(Target::Release("2"), soon, "test")
            .expect("scheduled");
        assert!(tmp.path().join("state.pending").exists());
        assert!(core.switcher.prepare("2").unwrap_err().contains("pending"));
        assert!(core.rollback(None, "test").unwrap_err().contains("pending"));
        assert!(core.switcher.cancel_pending("test").is_ok());
        assert!(!tmp.path().join("state.pending").exists());
        assert!(core.switcher.cancel_pending("test").is_err());
        assert!(core.switcher.prepare("2").is_ok());
    }

    /// A pending file someone else could have planted (another user's file, a symlink) is
    /// never trusted: it is removed (the link itself, not what it points to), nothing armed.
    #[test]
    fn a_planted_pending_file_is_not_trusted() {
        let (tmp, core) = setup("sched-planted");
        let target = tmp.path().join("elsewhere");
        let soon = SystemTime::now() + Duration::from_secs(600);
        leave_pending(&tmp, "2", soon);
        std::fs::rename(tmp.path().join("state.pending"), &target).expect("move");
        std::os::unix::fs::symlink(&target, tmp.path().join("state.pending")).expect("link");
        let core = successor(&tmp, core);
        assert_eq!(core.switcher.pending(), (None, None));
        assert!(target.exists(), "the link's target is left alone");
        assert!(std::fs::symlink_metadata(tmp.path().join("state.pending")).is_err());

        leave_pending(&tmp, "2", soon);
        let planted = tmp.path().join("state.pending");
        std::os::unix::fs::chown(&planted, Some(65534), Some(65534)).expect("chown");
        let core = successor(&tmp, core);
        assert_eq!(core.switcher.pending(), (None, None));
        assert!(!planted.exists());
    }
}
