//! What monitoring reads of the switches this server made: how many, and what the last one
//! took and how it ended (`status --json`'s `switches` and `last_switch`, `switchctl check`,
//! `switchctl metrics`). Written by `switch::perform` once a switch has answered; in memory
//! only, so it starts again at zero in a new server (a Prometheus counter may reset; the
//! server's `started` says when it did).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;

/// How long each step of a switch took (see `switch::perform`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Steps {
    /// Steps 1-4: validate, persist, publish, invalidate the kernel's caches.
    pub switch: Duration,
    /// Step 5a: the PHP pools' OPcache.
    pub php: Duration,
    /// Step 5b: the `--on-activate` hooks.
    pub hooks: Duration,
    /// Step 6: the drain wait.
    pub drain: Duration,
}

/// The last switch that changed the active release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastSwitch {
    /// When it began.
    pub at: SystemTime,
    pub from: Option<String>,
    pub to: String,
    /// From the request to the answer: every step below.
    pub took: Duration,
    pub steps: Steps,
    /// The OPcache step failed (the pools' own status says which and why).
    pub php_failed: bool,
    /// Why the hooks failed, if they did.
    pub hook_error: Option<String>,
}

/// The counter and the last switch, shared by the control threads.
#[derive(Debug, Default)]
pub(crate) struct Record {
    switches: AtomicU64,
    last: Mutex<Option<LastSwitch>>,
}

impl Record {
    /// Counts a switch that changed the active release and keeps it as the last one.
    pub(crate) fn switched(&self, last: LastSwitch) {
        self.switches.fetch_add(1, Ordering::Relaxed);
        *self.last.lock() = Some(last);
    }

    /// Switches that changed the active release since this server started.
    pub(crate) fn switches(&self) -> u64 {
        self.switches.load(Ordering::Relaxed)
    }

    pub(crate) fn last(&self) -> Option<LastSwitch> {
        self.last.lock().clone()
    }
}
