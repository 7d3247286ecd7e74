//! Which processes use files of the mount, found the way `fuser -m` and `lsof` do: open
//! descriptors, working and root directories, and memory maps in /proc.
//!
//! Why not FUSE's own bookkeeping: when the kernel opens files by itself (no-open mode) the
//! daemon never sees opens, and the kernel keeps unused inodes cached (and so unforgotten)
//! until memory runs short, so "inodes not yet forgotten" would call a long-finished release
//! in use for days. /proc tells what processes actually hold, right now.
//!
//! The process table (`process_table`: each pid with its parent and name) is read here too,
//! for the PHP pools' wait for compilations in flight (`php::compile_wait`).

use std::collections::HashMap;
use std::fs;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Counts of references per FUSE inode number of one mount.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct ProcRefs {
    /// Open file descriptors.
    pub open_files: HashMap<u64, usize>,
    /// Working and root directories.
    pub dirs: HashMap<u64, usize>,
    /// Memory-mapped files.
    pub maps: HashMap<u64, usize>,
}

/// `(st_dev, st_ino)` of `path` from cached attributes only: `AT_STATX_DONT_SYNC` keeps a
/// FUSE mount from being asked (a dead or busy mount must not stall the scan).
pub(crate) fn dev_ino(path: &Path) -> Option<(u64, u64)> {
    crate::sys::dev_ino_nosync(path)
}

/// Scans every process this user may inspect for references to device `dev`.
pub(crate) fn scan(dev: u64) -> ProcRefs {
    let mut refs = ProcRefs::default();
    let Ok(procs) = fs::read_dir("/proc") else {
        return refs;
    };
    let me = std::process::id().to_string();
    let mut bases = Vec::new();
    for entry in procs.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|s| s.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        if pid == me {
            continue; // the daemon's own descriptors point at the host, never the mount
        }
        let base = entry.path();
        for link in ["cwd", "root"] {
            if let Some((d, ino)) = dev_ino(&base.join(link))
                && d == dev
            {
                *refs.dirs.entry(ino).or_insert(0) += 1;
            }
        }
        if let Ok(fds) = fs::read_dir(base.join("fd")) {
            for fd in fds.flatten() {
                if let Some((d, ino)) = dev_ino(&fd.path())
                    && d == dev
                {
                    *refs.open_files.entry(ino).or_insert(0) += 1;
                }
            }
        }
        bases.push(base);
    }
    for (ino, _) in maps_of(bases).into_iter().filter(|(_, d)| *d == dev) {
        *refs.maps.entry(ino).or_insert(0) += 1;
    }
    refs
}

/// How processes reference one host file or directory (see [`scan_host`]).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HostUse {
    /// Working and root directories.
    pub dirs: usize,
    /// Open file descriptors.
    pub open_files: usize,
    /// Memory-mapped files.
    pub maps: usize,
}

impl HostUse {
    pub(crate) fn add(&mut self, other: HostUse) {
        self.dirs += other.dirs;
        self.open_files += other.open_files;
        self.maps += other.maps;
    }

    pub(crate) fn any(&self) -> bool {
        self.dirs + self.open_files + self.maps > 0
    }
}

/// Every file and directory on host device `dev` that a process (other than us) holds, by
/// `(st_dev, st_ino)`: what uses a release through its real path rather than the mount
/// (`cd releases/1/public`, a file of it held open, a library of it mapped). Identities, not
/// the paths /proc shows: a path in /proc is informational (it may be stale or ambiguous),
/// while the device and inode are what the descriptor really holds. The caller walks the
/// release to find which of them are in it.
pub(crate) fn scan_host(dev: u64) -> HashMap<(u64, u64), HostUse> {
    let mut refs: HashMap<(u64, u64), HostUse> = HashMap::new();
    let Ok(procs) = fs::read_dir("/proc") else {
        return refs;
    };
    let me = std::process::id().to_string();
    let mut bases = Vec::new();
    let mut note = |id: Option<(u64, u64)>, add: HostUse| {
        if let Some(id) = id.filter(|(d, _)| *d == dev) {
            refs.entry(id).or_default().add(add);
        }
    };
    for entry in procs.flatten() {
        let name = entry.file_name();
        if name
            .to_str()
            .is_none_or(|s| !s.bytes().all(|b| b.is_ascii_digit()) || s == me)
        {
            continue; // not a process, or the daemon itself (it pins every release it serves)
        }
        let base = entry.path();
        let dir = HostUse {
            dirs: 1,
            ..HostUse::default()
        };
        note(dev_ino(&base.join("cwd")), dir);
        note(dev_ino(&base.join("root")), dir);
        if let Ok(fds) = fs::read_dir(base.join("fd")) {
            for fd in fds.flatten() {
                let file = HostUse {
                    open_files: 1,
                    ..HostUse::default()
                };
                note(dev_ino(&fd.path()), file);
            }
        }
        bases.push(base);
    }
    for (ino, d) in maps_of(bases) {
        note(
            Some((d, ino)),
            HostUse {
                maps: 1,
                ..HostUse::default()
            },
        );
    }
    refs
}

/// How long one scan may spend reading the memory maps of all processes.
const MAPS_DEADLINE: Duration = Duration::from_millis(500);

/// How many maps readers are stuck past their deadline right now. A count, not a flag: with
/// two scans at once (a `status` during an `activate`), the one that finishes must not clear
/// what the stuck one set.
static MAPS_READERS_STUCK: AtomicUsize = AtomicUsize::new(0);

/// One reader's progress, shared by the reader and the scan that waits for it.
#[derive(Default)]
struct ReaderState {
    done: bool,
    /// Counted in `MAPS_READERS_STUCK`.
    stuck: bool,
}

/// `(inode, device)` of the file-backed mappings of the processes at `bases` (/proc/PID),
/// once per file per process, as far as they can be read within `MAPS_DEADLINE`.
///
/// Why a thread and a deadline: before Linux 6.17, reading /proc/PID/maps takes that
/// process's mmap lock, which can be held for as long as a page fault of it waits on a FUSE
/// server (a hostile user's, or ours). A scan run from `activate`, `prune` or `status` must
/// not wait on that, so the maps are read by a thread, and whatever it has not read by the
/// deadline is left out (those maps then neither pin a descriptor nor keep a release; logged).
/// While a reader is still stuck, no other is started.
fn maps_of(bases: Vec<std::path::PathBuf>) -> Vec<(u64, u64)> {
    read_with_deadline(bases, MAPS_DEADLINE, |base| {
        fs::read_to_string(base.join("maps"))
            .map(|text| parse_maps(&text))
            .unwrap_or_default()
    })
}

/// Runs `read` on each of `items` in a thread and collects its results until `deadline`.
pub(crate) fn read_with_deadline<T, R>(
    items: Vec<T>,
    deadline: Duration,
    read: impl Fn(&T) -> Vec<R> + Send + 'static,
) -> Vec<R>
where
    T: Send + 'static,
    R: Send + 'static,
{
    if MAPS_READERS_STUCK.load(Ordering::SeqCst) > 0 {
        log::warn!("an earlier /proc/PID/maps reader is still blocked; memory maps not scanned");
        return Vec::new();
    }
    let (tx, rx) = mpsc::channel();
    let state = Arc::new(Mutex::new(ReaderState::default()));
    let reader_state = state.clone();
    let spawned = std::thread::Builder::new()
        .name("maps-reader".into())
        .spawn(move || {
            for item in &items {
                if tx.send(read(item)).is_err() {
                    break; // the scan gave up on us
                }
            }
            // Under the state's lock, so a scan that times out just as we finish either sees
            // `done` or has already counted us as stuck, and we uncount ourselves.
            let mut st = reader_state.lock();
            st.done = true;
            if st.stuck {
                MAPS_READERS_STUCK.fetch_sub(1, Ordering::SeqCst);
            }
        });
    if let Err(e) = spawned {
        log::warn!("cannot start a maps reader ({e}); memory maps not scanned");
        return Vec::new();
    }
    let end = Instant::now() + deadline;
    let mut out = Vec::new();
    loop {
        match rx.recv_timeout(end.saturating_duration_since(Instant::now())) {
            Ok(found) => out.extend(found),
            Err(mpsc::RecvTimeoutError::Disconnected) => return out,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let mut st = state.lock();
                if !st.done {
                    st.stuck = true;
                    MAPS_READERS_STUCK.fetch_add(1, Ordering::SeqCst);
                }
                drop(st);
                log::warn!(
                    "reading /proc/PID/maps blocked for {deadline:?} (a process's memory lock \
                     is held); the rest of the memory maps are left out of this scan"
                );
                return out;
            }
        }
    }
}

/// `(inode, device)` of every file-backed mapping in a /proc/PID/maps text, one per file.
fn parse_maps(text: &str) -> Vec<(u64, u64)> {
    let mut seen = Vec::new();
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        let (Some(_), Some(_), Some(_), Some(dev), Some(ino)) = (
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
        ) else {
            continue;
        };
        let Some((major, minor)) = dev.split_once(':') else {
            continue;
        };
        let (Ok(major), Ok(minor), Ok(ino)) = (
            u32::from_str_radix(major, 16),
            u32::from_str_radix(minor, 16),
            ino.parse::<u64>(),
        ) else {
            continue;
        };
        let entry = (ino, libc::makedev(major, minor));
        if ino != 0 && !seen.contains(&entry) {
            seen.push(entry);
        }
    }
    seen
}

/// One process as `/proc/PID/stat` shows it.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct ProcessEntry {
    pub(crate) pid: i32,
    pub(crate) ppid: i32,
    pub(crate) comm: String,
}

/// Every process of /proc (those that vanish while read are left out).
pub(crate) fn process_table() -> Vec<ProcessEntry> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| {
            let stat = std::fs::read(format!("/proc/{pid}/stat")).ok()?;
            parse_stat(pid, &stat)
        })
        .collect()
}

/// `PID (COMM) STATE PPID ...`; COMM may hold spaces and parentheses, so it ends at the
/// last `)`.
fn parse_stat(pid: i32, stat: &[u8]) -> Option<ProcessEntry> {
    let open = stat.iter().position(|&b| b == b'(')?;
    let close = stat.iter().rposition(|&b| b == b')')?;
    let comm = String::from_utf8_lossy(stat.get(open + 1..close)?).into_owned();
    let rest = std::str::from_utf8(stat.get(close + 1..)?).ok()?;
    let ppid = rest.split_ascii_whitespace().nth(1)?.parse().ok()?;
    Some(ProcessEntry { pid, ppid, comm })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_file_backed_mappings_once_each() {
        let text = "\
55d0c0a00000-55d0c0a02000 r--p 00000000 00:2a 17     /mnt/app/lib.so
55d0c0a02000-55d0c0a04000 r-xp 00002000 00:2a 17     /mnt/app/lib.so
7ffd1c5e1000-7ffd1c602000 rw-p 00000000 00:00 0      [stack]
7f00 r--p 0 fd:01 99 /usr/lib/libc.so.6
garbage
";
        assert_eq!(
            parse_maps(text),
            vec![(17, libc::makedev(0, 0x2a)), (99, libc::makedev(0xfd, 1))]
        );
    }

    #[test]
    fn finds_our_own_working_directory_from_a_child() {
        let dir = crate::testutil::TempDir::new("procscan");
        let (dev, ino) = dev_ino(dir.path()).unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .current_dir(dir.path())
            .spawn()
            .unwrap();
        let refs = scan(dev);
        let _ = child.kill();
        let _ = child.wait();
        assert!(refs.dirs.get(&ino).copied().unwrap_or(0) >= 1, "{refs:?}");
    }

    /// The two tests below share `MAPS_READERS_STUCK`: one at a time.
    static STUCK_TESTS: Mutex<()> = Mutex::new(());

    #[test]
    fn a_blocked_maps_reader_is_left_behind_and_not_started_twice() {
        let _one = STUCK_TESTS.lock();
        let items = vec![1u32, 2, 3];
        let read = |i: &u32| {
            if *i == 2 {
                std::thread::sleep(Duration::from_millis(800));
            }
            vec![*i]
        };
        let start = Instant::now();
        let got = read_with_deadline(items.clone(), Duration::from_millis(200), read);
        assert!(
            start.elapsed() < Duration::from_millis(600),
            "the scan waited"
        );
        assert_eq!(got, vec![1], "what was read before the deadline is kept");
        // While that reader is blocked, no second one is started.
        let again = read_with_deadline(items.clone(), Duration::from_secs(5), |i: &u32| vec![*i]);
        assert!(again.is_empty());
        std::thread::sleep(Duration::from_millis(900));
        let later = read_with_deadline(items, Duration::from_secs(5), |i: &u32| vec![*i]);
        assert_eq!(later, vec![1, 2, 3], "scans resume once it finished");
    }

    #[test]
    fn a_scan_finishing_beside_a_stuck_reader_does_not_unblock_it() {
        let _one = STUCK_TESTS.lock();
        // A slow but healthy scan runs while another's reader gets stuck; when the healthy one
        // finishes, the stuck one must still keep new readers from starting.
        let healthy = std::thread::spawn(|| {
            read_with_deadline(vec![1u32], Duration::from_secs(5), |i: &u32| {
                std::thread::sleep(Duration::from_millis(300));
                vec![*i]
            })
        });
        std::thread::sleep(Duration::from_millis(50));
        let stuck = read_with_deadline(vec![1u32], Duration::from_millis(100), |i: &u32| {
            std::thread::sleep(Duration::from_millis(1500));
            vec![*i]
        });
        assert!(stuck.is_empty());
        assert_eq!(healthy.join().unwrap(), vec![1]);
        let again = read_with_deadline(vec![7u32], Duration::from_secs(5), |i: &u32| vec![*i]);
        assert!(again.is_empty(), "a reader started while another is stuck");
        std::thread::sleep(Duration::from_millis(1600));
    }

    #[test]
    fn stat_lines() {
        assert_eq!(
            parse_stat(7, b"7 (php-fpm: pool (www)) S 1 7 7 0 -1"),
            Some(ProcessEntry {
                pid: 7,
                ppid: 1,
                comm: "php-fpm: pool (www)".into()
            })
        );
        assert_eq!(parse_stat(7, b"7 apache2 S 1"), None);
    }
}
