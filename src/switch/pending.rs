//! A switch scheduled for an instant (`switchctl activate NAME --at TIME`, issue 20): what is
//! pending, its file beside the state file, and the registry the timer, `cancel`, `status`
//! and the waiting client share.
//!
//! At most one switch is pending. It is persisted (`<state>.pending`, written through the
//! state directory's descriptor like the state file) before `activate --at` answers, so a
//! server crash or upgrade re-arms it; it is deleted once it ran, was cancelled or dropped.
//! A successor that finds it with its time already past never runs it late: it is dropped,
//! and the drop is logged and shown by `status` (unless the state file shows it ran).

use std::collections::VecDeque;
use std::os::fd::OwnedFd;
use std::time::SystemTime;

use parking_lot::{Condvar, Mutex};

use crate::switch::names::validate_release_name;
use crate::when;

const MAGIC: &str = "switchfs-pending 1";

/// What a pending switch does at its instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `activate NAME --at`.
    Activate,
    /// `rollback --at`: one step back through the history, as planned when scheduled.
    Rollback,
    /// `rollback --to NAME --at`.
    RollbackTo,
}

impl Kind {
    pub(crate) fn word(self) -> &'static str {
        match self {
            Kind::Activate => "activate",
            Kind::Rollback => "rollback",
            Kind::RollbackTo => "rollback-to",
        }
    }
}

/// The switch waiting for its instant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    pub kind: Kind,
    /// The release it switches to (for a rollback, the target planned when it was scheduled;
    /// nothing can change the history until the instant, since every switch is refused).
    pub release: String,
    pub at: SystemTime,
    /// The peer that asked (`uid=0 gid=0 pid=42`).
    pub requested_by: String,
    pub requested_at: SystemTime,
}

impl Pending {
    /// The file's text.
    pub(crate) fn encode(&self) -> String {
        format!(
            "{MAGIC}\nkind={}\nrelease={}\nat={}\nrequested_by={}\nrequested_at={}\n",
            self.kind.word(),
            self.release,
            when::to_wire(self.at),
            self.requested_by.replace(['\n', '\r'], " "),
            when::to_wire(self.requested_at)
        )
    }

    /// Reads the file's text back.
    ///
    /// # Errors
    /// Not a pending switch switchfs wrote: one line.
    pub(crate) fn decode(text: &str) -> Result<Pending, String> {
        let mut lines = text.lines();
        if lines.next() != Some(MAGIC) {
            return Err(format!(
                "not a switchfs pending switch (no {MAGIC:?} header)"
            ));
        }
        let (mut release, mut at, mut by, mut asked) = (None, None, None, None);
        let mut kind = Kind::Activate;
        for line in lines.filter(|l| !l.is_empty()) {
            let (key, value) = line
                .split_once('=')
                .ok_or_else(|| format!("line {line:?} is not key=value"))?;
            match key {
                "release" => {
                    validate_release_name(value)?;
                    release = Some(value.to_string());
                }
                "at" => at = Some(when::from_wire(value)?),
                "kind" => {
                    kind = [Kind::Activate, Kind::Rollback, Kind::RollbackTo]
                        .into_iter()
                        .find(|k| k.word() == value)
                        .ok_or_else(|| format!("unknown kind {value:?}"))?;
                }
                "requested_by" => by = Some(value.to_string()),
                "requested_at" => asked = Some(when::from_wire(value)?),
                _ => return Err(format!("unknown key {key:?}")),
            }
        }
        Ok(Pending {
            kind,
            release: release.ok_or("no release= line")?,
            at: at.ok_or("no at= line")?,
            requested_by: by.unwrap_or_default(),
            requested_at: asked.unwrap_or(SystemTime::UNIX_EPOCH),
        })
    }

    /// For messages: `release 3 at 2026-12-01T23:00:00.250000Z (requested by uid=0 ...)`.
    pub(crate) fn describe(&self) -> String {
        format!(
            "{}release {} at {} (requested by {})",
            if self.kind == Kind::Activate {
                ""
            } else {
                "rollback to "
            },
            self.release,
            when::micros(self.at),
            self.requested_by
        )
    }
}

/// A pending switch that will not run, and why (shown by `status` until the next one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dropped {
    pub pending: Pending,
    pub why: String,
    pub when: SystemTime,
}

/// How a scheduled switch ended, for the client waiting on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Ended {
    /// It ran: the answer (an `Outcome`'s kind and line) and when it was published.
    Ran {
        partial: bool,
        message: String,
        at: SystemTime,
    },
    /// Refused at its instant, or dropped: nothing changed.
    Refused(String),
    Cancelled,
}

/// The armed switch: its id (a new one per schedule), what it is, and the pipe that wakes
/// its timer thread when it is cancelled.
struct Armed {
    id: u64,
    pending: Pending,
    wake: Option<(OwnedFd, OwnedFd)>,
}

#[derive(Default)]
struct Slot {
    armed: Option<Armed>,
    dropped: Option<Dropped>,
    ended: VecDeque<(u64, Ended)>,
    next_id: u64,
    /// Set when the server hands over to a successor: waiting clients are answered.
    retiring: bool,
}

/// The one pending switch of a daemon, shared by the timer, `cancel`, `status` and the
/// client that waits for the switch.
#[derive(Default)]
pub(crate) struct Schedule {
    slot: Mutex<Slot>,
    changed: Condvar,
    /// Held while the pending file is written with arming, or deleted with disarming, so a
    /// `cancel` never deletes the file of a switch scheduled right after it.
    file: Mutex<()>,
}

/// How many ended switches are remembered for clients that wait on them.
const ENDED_KEPT: usize = 8;

impl Schedule {
    /// Serialises the pending file with arming and disarming (see the field).
    pub(crate) fn file_lock(&self) -> parking_lot::MutexGuard<'_, ()> {
        self.file.lock()
    }

    /// What is pending now, and its id.
    pub(crate) fn current(&self) -> Option<(u64, Pending)> {
        let slot = self.slot.lock();
        slot.armed.as_ref().map(|a| (a.id, a.pending.clone()))
    }

    /// The last dropped pending switch, for `status`.
    pub(crate) fn dropped(&self) -> Option<Dropped> {
        self.slot.lock().dropped.clone()
    }

    /// Why an immediate switch (or another schedule) is refused now, or `None`.
    pub(crate) fn refusal(&self) -> Option<String> {
        let slot = self.slot.lock();
        slot.armed.as_ref().map(|a| {
            format!(
                "a switch is pending: {}; run switchctl cancel first",
                a.pending.describe()
            )
        })
    }

    /// Arms `pending` (the caller has persisted it and checked nothing else is armed).
    /// Returns its id.
    pub(crate) fn arm(&self, pending: Pending) -> u64 {
        let wake = crate::sys::pipe()
            .inspect_err(|e| log::warn!("pending switch: no wake-up pipe ({e}); cancel waits"))
            .ok();
        let mut slot = self.slot.lock();
        slot.next_id += 1;
        let id = slot.next_id;
        // A new schedule makes an older drop report moot.
        slot.dropped = None;
        slot.armed = Some(Armed { id, pending, wake });
        id
    }

    /// The descriptor that becomes readable when switch `id` is cancelled (a dup, so the
    /// timer thread can poll it without holding the registry's lock).
    pub(crate) fn wake_fd(&self, id: u64) -> Option<OwnedFd> {
        let slot = self.slot.lock();
        let armed = slot.armed.as_ref().filter(|a| a.id == id)?;
        armed.wake.as_ref().and_then(|(r, _)| r.try_clone().ok())
    }

    /// Takes switch `id` out of the registry if it is still armed (the timer, at its
    /// instant); `None` when it was cancelled meanwhile.
    pub(crate) fn take(&self, id: u64) -> Option<Pending> {
        let mut slot = self.slot.lock();
        if slot.armed.as_ref().is_some_and(|a| a.id == id) {
            return slot.armed.take().map(|a| a.pending);
        }
        None
    }

    /// Disarms whatever is pending, waking its timer; returns it.
    pub(crate) fn cancel(&self) -> Option<(u64, Pending)> {
        let mut slot = self.slot.lock();
        let armed = slot.armed.take()?;
        if let Some((_, w)) = &armed.wake {
            let _ = crate::sys::write_message(w.as_fd_ref(), b"x");
        }
        push_ended(&mut slot, armed.id, Ended::Cancelled);
        drop(slot);
        self.changed.notify_all();
        Some((armed.id, armed.pending))
    }

    /// Records that switch `id` ended.
    pub(crate) fn ended(&self, id: u64, how: Ended) {
        let mut slot = self.slot.lock();
        push_ended(&mut slot, id, how);
        drop(slot);
        self.changed.notify_all();
    }

    /// Records a drop (status shows it) and ends `id` with it.
    pub(crate) fn drop_pending(&self, id: Option<u64>, dropped: Dropped) {
        let mut slot = self.slot.lock();
        if let Some(id) = id {
            if slot.armed.as_ref().is_some_and(|a| a.id == id) {
                slot.armed = None;
            }
            push_ended(&mut slot, id, Ended::Refused(dropped.why.clone()));
        }
        slot.dropped = Some(dropped);
        drop(slot);
        self.changed.notify_all();
    }

    /// Waits until switch `id` ended; `None` when the server is handing over or stopping
    /// first, or `hung_up()` says the client has gone (asked every 200 ms; the switch stays
    /// scheduled). Bounded: the instant is at most an hour ahead.
    pub(crate) fn wait_ended(&self, id: u64, hung_up: &dyn Fn() -> bool) -> Option<Ended> {
        let mut slot = self.slot.lock();
        loop {
            if let Some((_, how)) = slot.ended.iter().find(|(i, _)| *i == id) {
                return Some(how.clone());
            }
            if slot.retiring {
                return None;
            }
            self.changed
                .wait_for(&mut slot, std::time::Duration::from_millis(200));
            if parking_lot::MutexGuard::unlocked(&mut slot, hung_up) {
                return None;
            }
        }
    }

    /// The server hands over to a successor: waiting clients stop waiting (the successor
    /// re-arms the switch from its file).
    pub(crate) fn retire(&self) {
        self.slot.lock().retiring = true;
        self.changed.notify_all();
    }
}

fn push_ended(slot: &mut Slot, id: u64, how: Ended) {
    if slot.ended.len() >= ENDED_KEPT {
        slot.ended.pop_front();
    }
    slot.ended.push_back((id, how));
}

/// `OwnedFd` to `BorrowedFd` without importing the trait at each use.
trait AsFdRef {
    fn as_fd_ref(&self) -> std::os::fd::BorrowedFd<'_>;
}

impl AsFdRef for OwnedFd {
    fn as_fd_ref(&self) -> std::os::fd::BorrowedFd<'_> {
        std::os::fd::AsFd::as_fd(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn pending(release: &str) -> Pending {
        Pending {
            kind: Kind::Rollback,
            release: release.into(),
            at: UNIX_EPOCH + Duration::new(1_796_166_000, 250_000_000),
            requested_by: "uid=0 gid=0 pid=7".into(),
            requested_at: UNIX_EPOCH + Duration::from_secs(1_796_165_990),
        }
    }

    #[test]
    fn the_file_round_trips_and_refuses_what_we_did_not_write() {
        let p = pending("4 a");
        assert_eq!(Pending::decode(&p.encode()), Ok(p));
        for bad in [
            "",
            "release=4\nat=1.0\n",
            "switchfs-pending 1\nat=1.0\n",
            "switchfs-pending 1\nrelease=..\nat=1.0\n",
            "switchfs-pending 1\nrelease=4\nat=soon\n",
            "switchfs-pending 1\nrelease=4\nat=1.0\nwho=me\n",
            "switchfs-pending 1\nkind=undo\nrelease=4\nat=1.0\n",
        ] {
            assert!(Pending::decode(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn one_pending_at_a_time_and_cancel_ends_it_for_the_waiter() {
        let s = Schedule::default();
        assert!(s.refusal().is_none());
        let id = s.arm(pending("3"));
        let msg = s.refusal().expect("refused while pending");
        assert!(
            msg.contains("release 3 at 2026-12-01T23:00:00.250000Z"),
            "{msg}"
        );
        let wake = s.wake_fd(id).expect("wake fd");
        assert_eq!(s.cancel().map(|(i, _)| i), Some(id));
        assert!(crate::sys::wait_readable(wake.as_fd_ref(), Duration::ZERO).unwrap_or(false));
        assert_eq!(s.wait_ended(id, &|| false), Some(Ended::Cancelled));
        assert!(s.take(id).is_none(), "a cancelled switch never runs");
        assert!(s.cancel().is_none());
    }
}
