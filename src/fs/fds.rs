//! The descriptor budget. Every live inode may hold one descriptor (an `O_PATH` one, or a
//! readable one once the file has been read), but the kernel keeps unused inodes cached until
//! memory is short, so on a large tree their number is unbounded while `RLIMIT_NOFILE` is not
//! (20,000 on some hosts, and not always raisable). Past the budget, the least recently used
//! descriptors are closed (second-chance CLOCK) and reopened on demand from the release root
//! and the inode's path, checking that it is still the same file. Descriptors outside the
//! budget (the release roots, the control socket, transient opens) fit in the reserve.

use std::collections::VecDeque;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::Mutex;

/// Descriptors kept free for everything that is not an inode, whatever the limit: 64
/// control clients (the server serves at most that many at once, one socket each), 32 for
/// the rest that does not scale (standard streams, the listening socket, the state file and
/// the release roots during a switch, an `--on-activate` hook's pipes, /proc scans), and
/// per FUSE worker its cloned /dev/fuse descriptor plus up to three transient opens (a path
/// walk holds two, a read reopens one).
pub(crate) fn reserve_floor(threads: usize) -> usize {
    64 + 32 + 4 * threads
}

/// Descriptors kept free for everything that is not an inode: a quarter of the limit, at
/// most 1,024 (plenty for bursts), never below `reserve_floor`.
pub(crate) fn reserve(limit: usize, threads: usize) -> usize {
    let floor = reserve_floor(threads);
    (limit / 4).clamp(floor, 1024.max(floor))
}

/// The smallest open-file limit switchfs starts with. Below it the inode budget could not
/// hold the working set of one PHP framework request (100-150 included files and their
/// directories) and every request would reopen files; with more threads, the reserve grows.
pub(crate) fn min_limit(threads: usize) -> usize {
    256.max(reserve_floor(threads) + 128)
}

/// The inode descriptor budget for an open-file limit of `limit`.
///
/// # Errors
/// The limit is below `min_limit`: a one-line message saying what to raise.
pub(crate) fn inode_budget(limit: u64, threads: usize) -> Result<usize, String> {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let min = min_limit(threads);
    if limit < min {
        let fewer = if min > min_limit(1) {
            " or use fewer --threads"
        } else {
            ""
        };
        return Err(format!(
            "the open file limit (RLIMIT_NOFILE) is {limit}, too small: switchfs with \
             {threads} threads needs at least {min}; raise the hard limit (LimitNOFILE= in the \
             unit, ulimit -Hn){fewer}"
        ));
    }
    Ok(limit - reserve(limit, threads))
}

#[derive(Debug)]
pub(crate) struct FdBudget {
    cap: usize,
    open: AtomicUsize,
    ring: Mutex<VecDeque<Weak<FdSlot>>>,
    /// Set at the first eviction: until then every inode still has its descriptor and
    /// nothing needs pinning (see `FdSlot::set_pinned`).
    evicted: AtomicBool,
}

impl FdBudget {
    /// A budget of `cap` descriptors (at least 16).
    pub(crate) fn new(cap: usize) -> Arc<FdBudget> {
        Arc::new(FdBudget {
            cap: cap.max(16),
            open: AtomicUsize::new(0),
            ring: Mutex::new(VecDeque::new()),
            evicted: AtomicBool::new(false),
        })
    }

    /// Descriptors currently held by inodes.
    pub(crate) fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    pub(crate) fn cap(&self) -> usize {
        self.cap
    }

    /// Whether any descriptor was ever closed to stay within the budget.
    pub(crate) fn has_evicted(&self) -> bool {
        self.evicted.load(Ordering::Relaxed)
    }

    /// Closes least recently used descriptors until one more fits.
    fn make_room(&self) {
        if self.open.load(Ordering::Relaxed) < self.cap {
            return;
        }
        let mut ring = self.ring.lock();
        // Each slot gets at most one second chance per pass.
        let mut budget = ring.len() * 2 + 1;
        while self.open.load(Ordering::Relaxed) >= self.cap && budget > 0 {
            budget -= 1;
            let Some(weak) = ring.pop_front() else {
                break;
            };
            let Some(slot) = weak.upgrade() else {
                continue;
            };
            // Pinned: held open by a process, and perhaps not reopenable by path any more.
            if slot.pinned.load(Ordering::Relaxed) || slot.referenced.swap(false, Ordering::Relaxed)
            {
                ring.push_back(weak);
                continue;
            }
            slot.evict(self);
            self.evicted.store(true, Ordering::Relaxed);
        }
    }
}

/// One inode's descriptor, present or closed for now.
#[derive(Debug)]
pub(crate) struct FdSlot {
    /// The descriptor and whether it is readable (not just `O_PATH`).
    fd: Mutex<Option<(Arc<OwnedFd>, bool)>>,
    referenced: AtomicBool,
    /// Never evicted while set (see `set_pinned`).
    pinned: AtomicBool,
    budget: Arc<FdBudget>,
}

impl FdSlot {
    pub(crate) fn new(budget: &Arc<FdBudget>) -> Arc<FdSlot> {
        Arc::new(FdSlot {
            fd: Mutex::new(None),
            referenced: AtomicBool::new(false),
            pinned: AtomicBool::new(false),
            budget: budget.clone(),
        })
    }

    /// The descriptor and whether it is readable, if it is open; marks it recently used.
    pub(crate) fn get(&self) -> Option<(Arc<OwnedFd>, bool)> {
        let fd = self.fd.lock().clone();
        if fd.is_some() {
            self.referenced.store(true, Ordering::Relaxed);
        }
        fd
    }

    /// Holds `fd` for this inode (replacing any other), within the budget.
    pub(crate) fn install(self: &Arc<Self>, fd: OwnedFd, readable: bool) -> Arc<OwnedFd> {
        self.budget.make_room();
        let fd = Arc::new(fd);
        let previous = self.fd.lock().replace((fd.clone(), readable));
        // Not marked referenced: a descriptor only earns its second chance by being used
        // again, so a one-off scan does not push out the hot set.
        self.referenced.store(false, Ordering::Relaxed);
        if previous.is_none() {
            let open = self.budget.open.fetch_add(1, Ordering::Relaxed) + 1;
            let mut ring = self.budget.ring.lock();
            ring.push_back(Arc::downgrade(self));
            // Under budget nothing pops the ring, and a Weak keeps its slot's memory: drop
            // entries of forgotten inodes and of closed descriptors once it grows past twice
            // what is open.
            if ring.len() > 2 * open + 64 {
                ring.retain(|w| w.upgrade().is_some_and(|s| s.fd.lock().is_some()));
            }
        }
        fd
    }

    /// Keeps this descriptor out of eviction while `on`. For files a process holds open (or
    /// mapped, or as its working directory): reopening by path fails once their release is
    /// deleted (`rm -rf` after a switch), and the kernel would then fail the process's reads
    /// (or SIGBUS its map) although the file still exists for it, as it would on the host.
    pub(crate) fn set_pinned(&self, on: bool) {
        self.pinned.store(on, Ordering::Relaxed);
    }

    fn evict(&self, budget: &FdBudget) {
        // A request still using the descriptor keeps its Arc; it closes when that ends.
        if self.fd.lock().take().is_some() {
            budget.open.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Drop for FdSlot {
    fn drop(&mut self) {
        if self.fd.get_mut().take().is_some() {
            self.budget.open.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn devnull() -> OwnedFd {
        std::fs::File::open("/dev/null").unwrap().into()
    }

    #[test]
    fn stays_within_budget_and_prefers_recently_used() {
        let budget = FdBudget::new(16);
        let slots: Vec<_> = (0..40).map(|_| FdSlot::new(&budget)).collect();
        for (i, slot) in slots.iter().enumerate() {
            slot.install(devnull(), false);
            // Keep slot 0 hot.
            assert!(
                slots[0].get().is_some() || i == 0,
                "hot slot evicted at {i}"
            );
            assert!(budget.open() <= 16);
        }
        assert!(slots[0].get().is_some());
        let open = slots.iter().filter(|s| s.get().is_some()).count();
        assert_eq!(open, budget.open());
        drop(slots);
        assert_eq!(
            budget.open(),
            0,
            "dropping inodes returns their descriptors"
        );
    }

    #[test]
    fn the_ring_does_not_grow_with_inodes_that_are_gone() {
        let budget = FdBudget::new(1000);
        for _ in 0..10_000 {
            let slot = FdSlot::new(&budget);
            slot.install(devnull(), false);
        }
        assert_eq!(budget.open(), 0);
        assert!(
            budget.ring.lock().len() <= 200,
            "{}",
            budget.ring.lock().len()
        );
    }

    #[test]
    fn the_reserve_scales_with_the_limit_and_small_limits_are_refused() {
        assert_eq!(inode_budget(256, 4), Ok(256 - reserve_floor(4)));
        assert_eq!(inode_budget(4000, 4), Ok(3000));
        assert_eq!(inode_budget(1_048_576, 4), Ok(1_048_576 - 1024));
        assert_eq!(reserve(100_000, 256), 1024.max(reserve_floor(256)));
        assert!(inode_budget(255, 4).unwrap_err().contains("at least 256"));
        assert!(!inode_budget(255, 4).unwrap_err().contains("--threads"));
        let many = inode_budget(256, 256).unwrap_err();
        assert!(
            many.contains("fewer --threads"),
            "more threads need more: {many}"
        );
        for limit in [256u64, 300, 1000, 5000, 1 << 20] {
            let budget = inode_budget(limit, 4).unwrap();
            assert!(budget >= 128 && budget + reserve_floor(4) <= limit as usize);
        }
    }

    #[test]
    fn replacing_a_descriptor_does_not_count_twice() {
        let budget = FdBudget::new(16);
        let slot = FdSlot::new(&budget);
        slot.install(devnull(), false);
        slot.install(devnull(), true);
        assert_eq!(budget.open(), 1);
        assert!(slot.get().unwrap().1, "readable now");
    }
}
