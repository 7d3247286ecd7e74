//! `Switcher`: which release is active, and the only way to change it. It owns the switch
//! lock, the state file, the activation history and the stopping flag, and drives the data
//! plane through the `Docroot` trait, so the same switch serves the FUSE core and any other
//! docroot. `activate` and `rollback` are steps 1-4 of a switch (validate, persist, publish,
//! invalidate; `switch::perform` runs the rest); `prune`, `status` and the drain wait are
//! here because they must agree with the switch about what is active.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use parking_lot::{Mutex, MutexGuard};

use crate::switch::docroot::{Active, Docroot, Use};
use crate::switch::history::History;
use crate::switch::record::Record;
use crate::switch::release::{Release, ReleaseSet, same_dir};
use crate::switch::state::{PersistedState, StateFile};
use crate::switch::usage::{self, Status};

/// Settings the switch needs from the command line.
#[derive(Debug, Clone)]
pub(crate) struct SwitchConfig {
    /// Where the active release is made durable before a switch is acknowledged.
    pub state_path: PathBuf,
    /// Shown by `status`.
    pub mount_point: PathBuf,
}

/// What a successful `activate` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Switched {
    /// The line shown to the operator.
    pub message: String,
    pub from: Option<String>,
    pub to: String,
    /// False when `to` was already active.
    pub changed: bool,
}

impl Switched {
    /// `name` was already active, from the same directory: nothing to do.
    fn unchanged(name: &str) -> Switched {
        Switched {
            message: format!("release {name} is already active"),
            from: Some(name.to_string()),
            to: name.to_string(),
            changed: false,
        }
    }

    /// The switch to `name` is done; logs it with who asked.
    fn done(name: &str, previous: Option<String>, reactivated: bool, who: &str) -> Switched {
        if reactivated {
            log::info!("re-activated {name} from its replaced directory (requested by {who})");
            return Switched {
                message: format!("release {name} re-activated: its directory was replaced"),
                from: Some(name.to_string()),
                to: name.to_string(),
                changed: true,
            };
        }
        let from = previous.as_deref().unwrap_or("(none)");
        log::info!("switched from {from} to {name} (requested by {who})");
        Switched {
            message: format!("switched from {from} to {name}"),
            from: previous,
            to: name.to_string(),
            changed: true,
        }
    }
}

/// Proof that the switch lock is held, for the steps that need it.
pub(super) struct SwitchGuard<'a> {
    _held: MutexGuard<'a, ()>,
}

pub(crate) struct Switcher {
    docroot: Arc<dyn Docroot>,
    pub(super) releases: ReleaseSet,
    config: SwitchConfig,
    pub(super) state: StateFile,
    /// Serialises switches, prune and shutdown; never taken by FUSE workers, so it may be
    /// held across kernel notifications.
    lock: Mutex<()>,
    /// What the docroot was last told to show.
    active: Mutex<Arc<Active>>,
    /// Activations and rollback marks, as persisted with the state (see `history`).
    history: Mutex<History>,
    /// When each release was last seen in use (or stopped being active).
    last_used: Mutex<HashMap<String, SystemTime>>,
    /// Set once shutdown has begun: no switch or prune after it (see `stop_switching`).
    stopping: AtomicBool,
    /// Monitoring: the switch counter and the last switch (`switch::record`).
    record: Record,
    /// The switch scheduled for an instant, if any (`switch::scheduled`).
    pub(super) schedule: crate::switch::pending::Schedule,
}

impl Switcher {
    /// Opens the releases directory at `path` for a switcher.
    ///
    /// # Errors
    /// It does not exist or is not a directory: a one-line message.
    pub(crate) fn open_releases(path: &Path) -> Result<ReleaseSet, String> {
        ReleaseSet::open(path)
            .map_err(|e| format!("cannot open releases directory {}: {e}", path.display()))
    }

    /// Locks the state file and shows the persisted release of `releases` through
    /// `docroot`, else `initial`.
    ///
    /// A persisted release that cannot be served (deleted, corrupt state file) is logged as
    /// an error and `initial` is used instead; with neither, the root is empty.
    ///
    /// # Errors
    /// The state file is locked by another daemon, or `initial` was asked for and cannot be
    /// served: a one-line message.
    pub(crate) fn new(
        config: SwitchConfig,
        releases: ReleaseSet,
        docroot: Arc<dyn Docroot>,
        initial: Option<&str>,
    ) -> Result<Switcher, String> {
        let switcher = Switcher {
            docroot,
            releases,
            state: StateFile::new(config.state_path.clone()),
            config,
            lock: Mutex::new(()),
            active: Mutex::new(Arc::new(Active::empty())),
            history: Mutex::new(History::default()),
            last_used: Mutex::new(HashMap::new()),
            stopping: AtomicBool::new(false),
            record: Record::default(),
            schedule: Default::default(),
        };
        switcher.restore(initial)?;
        switcher.restore_pending();
        Ok(switcher)
    }

    /// Shows the persisted release, else `initial` (then persisted), else nothing.
    fn restore(&self, initial: Option<&str>) -> Result<(), String> {
        // One daemon per state file: a second one would resume the other's release.
        self.state.lock()?;
        let state_path = &self.config.state_path;
        let persisted = self.state.load().unwrap_or_else(|e| {
            log::error!(
                "state file {} is unusable ({e}); ignoring it",
                state_path.display()
            );
            None
        });
        if let Some(st) = persisted {
            match self.releases.open_release(&st.active) {
                Ok(fd) => {
                    *self.history.lock() = restored_history(&st);
                    self.show(&st.active, fd, st.previous.clone())?;
                    log::info!("resumed persisted release {:?}", st.active);
                    self.note_initial_ignored(initial, &st.active);
                    return Ok(());
                }
                Err(msg) => log::error!("persisted release cannot be served: {msg}"),
            }
        }
        let Some(name) = initial else {
            log::warn!(
                "no release is active: serving an empty read-only root until \
                 `switchctl activate NAME` (pass --initial to choose one at start)"
            );
            return Ok(());
        };
        let fd = self.releases.open_release(name)?;
        let history = History::default().activated(name);
        *self.history.lock() = history.clone();
        let persisted = PersistedState {
            active: name.to_string(),
            previous: None,
            history,
        };
        if let Err(e) = self.state.save(&persisted) {
            log::warn!(
                "cannot persist initial release to {}: {e}",
                state_path.display()
            );
        }
        self.show(name, fd, None)?;
        log::info!("serving initial release {name:?}");
        Ok(())
    }

    /// Says why `--initial` did nothing when a persisted release was resumed instead: a
    /// warning when it names no servable release (a typo in a unit file must not wait for
    /// the day the state file is lost to show), a note when it names another one.
    fn note_initial_ignored(&self, initial: Option<&str>, resumed: &str) {
        let Some(name) = initial.filter(|n| *n != resumed) else {
            return;
        };
        match self.releases.open_release(name) {
            Err(msg) => log::warn!(
                "--initial {name:?} names no release that can be served ({msg}); ignored: \
                 resuming the persisted release {resumed:?}"
            ),
            Ok(_) => log::info!(
                "--initial {name:?} ignored: resuming the persisted release {resumed:?} \
                 (--initial only applies without a state file)"
            ),
        }
    }

    /// The active release as of now.
    pub(crate) fn active(&self) -> Arc<Active> {
        self.active.lock().clone()
    }

    /// The activation history and rollback marks, as of now.
    pub(crate) fn history(&self) -> History {
        self.history.lock().clone()
    }

    /// The data plane this switcher drives.
    pub(crate) fn docroot(&self) -> &dyn Docroot {
        &*self.docroot
    }

    /// The switch counter and the last switch, for monitoring.
    pub(crate) fn record(&self) -> &Record {
        &self.record
    }

    /// The pinned releases directory.
    pub(crate) fn releases(&self) -> &ReleaseSet {
        &self.releases
    }

    /// The release names present, natural order.
    ///
    /// # Errors
    /// The releases directory cannot be read.
    pub(crate) fn list(&self) -> Result<Vec<String>, String> {
        self.releases.list().map_err(|e| {
            format!(
                "cannot list releases in {}: {e}",
                self.releases.path().display()
            )
        })
    }

    pub(super) fn lock(&self) -> SwitchGuard<'_> {
        SwitchGuard {
            _held: self.lock.lock(),
        }
    }

    /// The switch lock, if it can be had within `wait` (a switch at an instant gives up
    /// rather than run late behind a long prune).
    pub(super) fn try_lock_for(&self, wait: Duration) -> Option<SwitchGuard<'_>> {
        self.lock
            .try_lock_for(wait)
            .map(|held| SwitchGuard { _held: held })
    }

    /// Makes release `name` active: validate, persist, publish, invalidate. Returns the line
    /// to show the operator. `who` says who asked, for the log.
    ///
    /// # Errors
    /// A one-line message; the active release is then unchanged.
    pub(crate) fn activate(&self, name: &str, who: &str) -> Result<Switched, String> {
        let guard = self.lock();
        self.refuse_if_pending()?;
        self.activate_held(&guard, name, who, None)
    }

    /// Rolls back like the deploy tools: to the release activated before the active one,
    /// one step further at each call, never to a release rolled back from since it was last
    /// activated (see `history`). With `to`, back to that release of the history.
    ///
    /// # Errors
    /// Nothing to roll back to, or the switch fails; the history is then unchanged.
    pub(crate) fn rollback(&self, to: Option<&str>, who: &str) -> Result<Switched, String> {
        let guard = self.lock();
        self.refuse_if_pending()?;
        let current = self.active();
        let current = current
            .name()
            .ok_or("no release is active, so there is nothing to roll back from")?;
        let exists = |name: &str| self.releases.open_release(name).is_ok();
        let history = self.history();
        let (target, after) = history.rollback(current, to, exists)?;
        let mut sw = self.activate_held(&guard, &target, who, Some(after))?;
        let skipped = skipped_deleted(&history, current, &target, &exists);
        if !skipped.is_empty() {
            sw.message.push_str(&format!(
                " (skipped {}: the directory is gone)",
                skipped.join(", ")
            ));
        }
        Ok(sw)
    }

    /// The switch to `name` under the held lock; `planned` is the history a rollback wants
    /// recorded instead of `name` appended to the current one.
    pub(super) fn activate_held(
        &self,
        _guard: &SwitchGuard<'_>,
        name: &str,
        who: &str,
        planned: Option<History>,
    ) -> Result<Switched, String> {
        self.refuse_if_stopping()?;
        let current = self.active();
        // 1. Validate, even when `name` is already active: its directory may have been
        // replaced (`mv R/7 R/7.bak; mkdir R/7`) or made a symlink since it was activated.
        let fd = self.releases.open_release(name)?;
        let reactivated = current.name() == Some(name);
        if reactivated
            && current
                .release
                .as_ref()
                .is_some_and(|r| same_dir(&r.root, &fd))
        {
            return Ok(Switched::unchanged(name));
        }
        // Re-activating a replaced directory keeps the previous release as it was.
        let previous = if reactivated {
            current.previous.clone()
        } else {
            current.name().map(str::to_string)
        };
        if let Some(prev) = previous.as_ref().filter(|_| !reactivated) {
            self.last_used
                .lock()
                .insert(prev.clone(), SystemTime::now());
        }
        // 2. Persist, before anything changes.
        let history = match planned {
            Some(p) if p.entries().last().map(String::as_str) == Some(name) => p,
            _ => self.history.lock().activated(name),
        };
        let before = self.history();
        let validated = Instant::now();
        self.persist(name, previous.as_deref(), history)?;
        let persisted = Instant::now();
        // 3. Publish, once what processes hold of the old release can no longer be lost;
        // 4. the docroot drops what the kernel may cache from before.
        self.docroot.pin_held();
        if let Err(e) = self.show(name, fd, previous.clone()) {
            self.unpersist(&current, before);
            return Err(format!(
                "cannot show release {name}: {e}; release {} stays active",
                current.name().unwrap_or("(none)")
            ));
        }
        log::debug!(
            "switch to {name}: persisted in {:.3} ms, published in {:.3} ms",
            (persisted - validated).as_secs_f64() * 1000.0,
            persisted.elapsed().as_secs_f64() * 1000.0
        );
        Ok(Switched::done(name, previous, reactivated, who))
    }

    /// Step 2: makes the switch to `name` durable (state file and history), or says why not;
    /// nothing has changed then. Called with the switch lock held.
    fn persist(&self, name: &str, previous: Option<&str>, history: History) -> Result<(), String> {
        let persisted = PersistedState {
            active: name.to_string(),
            previous: previous.map(str::to_string),
            history,
        };
        // What the docroot told clients must outlive a crash right after this switch (FUSE:
        // a rollback after a restart must not hand OPcache an mtime it already saw with
        // other content).
        self.docroot.sync_before_switch();
        self.state.save(&persisted).map_err(|e| {
            format!(
                "cannot persist the switch to {}: {e}; release {} stays active",
                self.config.state_path.display(),
                previous.unwrap_or("(none)")
            )
        })?;
        *self.history.lock() = persisted.history;
        Ok(())
    }

    /// Writes back the state from before a switch the docroot could not publish.
    fn unpersist(&self, current: &Active, history: History) {
        if let Some(name) = current.name() {
            let persisted = PersistedState {
                active: name.to_string(),
                previous: current.previous.clone(),
                history: history.clone(),
            };
            if let Err(e) = self.state.save(&persisted) {
                log::error!("cannot restore the state file after a failed publish: {e}");
            }
        }
        *self.history.lock() = history;
    }

    /// Has the docroot show release `name` (opened as `fd`) and records it as active.
    fn show(
        &self,
        name: &str,
        fd: std::os::fd::OwnedFd,
        previous: Option<String>,
    ) -> Result<(), String> {
        let release = Arc::new(Release::with_new_generation(name, fd));
        let active = Arc::new(Active {
            generation: release.generation,
            release: Some(release),
            previous,
            since: SystemTime::now(),
        });
        self.docroot.publish(active.clone())?;
        *self.active.lock() = active;
        Ok(())
    }

    /// Ends switching for good and gives the state file up: called at shutdown once the mount
    /// is detached, so a successor started while this daemon drains can lock and resume the
    /// state. Waits for a switch in progress to finish.
    pub(crate) fn stop_switching(&self) {
        let _guard = self.lock();
        self.stopping.store(true, Ordering::Relaxed);
        self.state.unlock();
    }

    pub(super) fn refuse_if_stopping(&self) -> Result<(), String> {
        if self.stopping.load(Ordering::Relaxed) {
            return Err("this switchfs is shutting down; nothing was changed".into());
        }
        Ok(())
    }

    /// Deletes the oldest releases beyond the newest `keep`, sparing the active and the
    /// previous release and any release still in use (through the docroot here, through its
    /// real path in `prune`, which also does the deleting without following links). Without
    /// `apply`, only says what it would delete. Serialised with switches, so a release cannot
    /// be activated while it is being deleted.
    ///
    /// # Errors
    /// The releases directory cannot be listed; a deletion failed (the message says which
    /// were deleted before).
    pub(crate) fn prune(&self, keep: usize, apply: bool) -> Result<String, String> {
        let _guard = self.lock();
        self.refuse_if_stopping()?;
        let names = self.list()?;
        let active = self.active();
        let usage = self.usage();
        let spared = [active.name(), active.previous.as_deref()];
        let pending = self.schedule.current().map(|(_, p)| p.release);
        let kept = |name: &str| {
            if spared.contains(&Some(name)) {
                Some("active or previous".to_string())
            } else if pending.as_deref() == Some(name) {
                Some("a switch to it is pending".to_string())
            } else if usage.get(name).is_some_and(Use::in_use) {
                Some("still in use".to_string())
            } else {
                None
            }
        };
        crate::switch::prune::prune(&self.releases, &names, keep, apply, &kept)
    }

    /// What uses each release right now: the active pointer and what the docroot reports.
    /// Also records when each was last seen in use.
    fn usage(&self) -> HashMap<String, Use> {
        let active = self.active();
        let mut usage = self.docroot.usage();
        if let Some(name) = active.name() {
            usage.entry(name.to_string()).or_default().active = true;
        }
        let now = SystemTime::now();
        let mut last_used = self.last_used.lock();
        for (name, u) in &usage {
            if u.in_use() {
                last_used.insert(name.clone(), now);
            }
        }
        usage
    }

    /// Waits until nothing uses release `name` any more (no inode the kernel holds, no open
    /// handle, not active), at most `timeout`. Returns whether it drained.
    pub(crate) fn wait_unused(&self, name: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if !self.usage().get(name).is_some_and(Use::in_use) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Everything `switchctl status` shows of the switch and the releases (the control
    /// server adds the keeper's life and the PHP pools).
    pub(crate) fn status(&self) -> Status {
        let active = self.active();
        let active_problem = active
            .release
            .as_ref()
            .and_then(|rel| usage::active_problem(&self.releases, rel));
        let now_used = self.usage();
        let present: HashSet<String> = self.list().unwrap_or_default().into_iter().collect();
        let last_used = self.last_used.lock().clone();
        let history = self.history();
        let exists = |name: &str| self.releases.open_release(name).is_ok();
        let rollback_to = active.name().and_then(|a| {
            history
                .rollback(a, None, exists)
                .ok()
                .map(|(target, _)| target)
        });
        let mut seen = HashSet::new();
        let history_gone: Vec<String> = history
            .entries()
            .iter()
            .filter(|n| !present.contains(*n) && seen.insert(n.as_str()))
            .cloned()
            .collect();
        let (pending, pending_dropped) = self.pending();
        Status {
            mode: self.docroot.mode(),
            active: active.name().map(str::to_string),
            since: active.since,
            previous: active.previous.clone(),
            history,
            releases_dir: self.releases.path().to_path_buf(),
            mount_point: self.config.mount_point.clone(),
            active_problem,
            usage: usage::per_release(&present, &now_used, &last_used),
            life: None,
            php_pools: Vec::new(),
            switches: self.record.switches(),
            last_switch: self.record.last(),
            rollback_to,
            history_gone,
            pending,
            pending_dropped,
        }
    }
}

/// The releases a rollback from `current` to `target` passed over because their directories
/// are gone (newest first), so the operator knows why it went further back.
fn skipped_deleted(
    history: &History,
    current: &str,
    target: &str,
    exists: &dyn Fn(&str) -> bool,
) -> Vec<String> {
    let mut skipped: Vec<String> = Vec::new();
    for name in history.entries().iter().rev() {
        if name == target {
            break;
        }
        if name != current && !exists(name) && !skipped.contains(name) {
            skipped.push(name.clone());
        }
    }
    skipped
}

/// The history a restarted daemon resumes: as persisted, ending with the active release.
fn restored_history(st: &PersistedState) -> History {
    let history = st.history.clone();
    if history.entries().last() == Some(&st.active) {
        history
    } else {
        history.activated(&st.active)
    }
}
