//! The wait for compilations in flight (step 0 of the module doc of `opcache`): before a
//! pool is asked what it caches, none of its own processes may still hold a script of an
//! earlier release open, since that compilation would store old bytecode after the list.
//! Which processes are the pool's: a PHP-FPM master and its children, or for `--php-http`
//! Apache's parents and their children (read from the process table, `procscan`).

use std::ffi::OsStr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::switch::docroot::Docroot;
use crate::switch::procscan::{ProcessEntry, process_table};
use crate::switch::release::Release;

/// After this long waiting for compilations of old scripts still running, the wait says so
/// in the log once (see `wait_for_compiles`); it goes on up to --php-timeout.
pub(super) const COMPILE_WAIT_NOTICE: Duration = Duration::from_secs(2);
/// File name extensions of what PHP compiles; other open files (static downloads) are not
/// waited for.
const SCRIPT_EXTENSIONS: &[&str] = &[
    "php", "phtml", "inc", "php3", "php4", "php5", "php7", "php8",
];
/// The process names of Apache's parent and children (`/proc/PID/comm`), for `--php-http`.
const APACHE_NAMES: &[&str] = &["apache2", "httpd"];

/// Waits until none of `processes` (the pool's) holds a script of another release than
/// `new` open, at most `limit` (--php-timeout); how long it waited.
///
/// # Errors
/// One still holds one after `limit`: the pool then fails like an unreachable one (exit 3),
/// since answering "invalidated" would leave that compilation's old bytecode cached.
///
/// Why: a request that began compiling a script of the old release before the switch stores
/// its bytecode when the compilation ends, possibly after the pool listed what it caches;
/// with validate_timestamps=0 that old bytecode would then stay. PHP keeps a script open
/// while it compiles it and closes it after storing the result, so once none is open, every
/// such compilation is in the list. Only the pool's own processes count: any other user
/// who can read the docroot could otherwise hold a file open to slow every switch down.
/// Costs one look at each pool process's descriptors when nothing is compiling.
pub(super) fn wait_for_compiles(
    core: &dyn Docroot,
    new: &Arc<Release>,
    processes: &[i32],
    limit: Duration,
) -> Result<Duration, String> {
    let started = Instant::now();
    if processes.is_empty() {
        return Ok(Duration::ZERO);
    }
    let mut noticed = false;
    loop {
        let held = old_scripts_open(core, new, processes);
        if held.is_empty() {
            return Ok(started.elapsed());
        }
        let waited = started.elapsed();
        if waited >= limit {
            // Asking the pool now would be answered before that compilation stores its
            // bytecode, which would then serve the old release under the path for as long
            // as OPcache keeps it (forever with validate_timestamps=0): fail, visibly.
            return Err(format!(
                "{} of an earlier release was still open in the pool after {limit:?} (a \
                 compilation in flight would cache it stale); retry the invalidation once it \
                 has finished",
                held[0].display()
            ));
        }
        if !noticed && waited >= COMPILE_WAIT_NOTICE {
            noticed = true;
            log::info!(
                "scripts of an earlier release are still open in the pool after {waited:?} \
                 ({}); waiting up to {limit:?}",
                held[0].display()
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The PHP scripts of releases other than `new` that `processes` hold open.
pub(super) fn old_scripts_open(
    core: &dyn Docroot,
    new: &Arc<Release>,
    processes: &[i32],
) -> Vec<PathBuf> {
    core.open_paths_outside(new, processes)
        .into_iter()
        .filter(|p| {
            p.extension()
                .and_then(OsStr::to_str)
                .is_some_and(|e| SCRIPT_EXTENSIONS.contains(&e))
        })
        .collect()
}

/// A PHP-FPM master and its workers (its children).
pub(super) fn fpm_processes(master: i32) -> Vec<i32> {
    let mut pids = vec![master];
    pids.extend(
        process_table()
            .into_iter()
            .filter(|p| p.ppid == master)
            .map(|p| p.pid),
    );
    pids
}

/// Apache's processes, for `--php-http` (mod_php compiles in Apache's own processes):
/// those named apache2 or httpd (`/proc/PID/comm`) whose parent is an Apache parent, one so
/// named whose own parent is not, and that parent. A heuristic: the endpoint is a URL,
/// which tells no pid; a process renamed otherwise is not waited for.
pub(super) fn apache_processes() -> Vec<i32> {
    apache_pids(&process_table())
}

/// The Apache parents and their children in `table` (see [`apache_processes`]).
fn apache_pids(table: &[ProcessEntry]) -> Vec<i32> {
    let named = |p: &ProcessEntry| APACHE_NAMES.contains(&p.comm.as_str());
    let is_apache = |pid: i32| table.iter().any(|p| p.pid == pid && named(p));
    let parents: Vec<i32> = table
        .iter()
        .filter(|p| named(p) && !is_apache(p.ppid))
        .map(|p| p.pid)
        .collect();
    let mut pids = parents.clone();
    pids.extend(
        table
            .iter()
            .filter(|p| named(p) && parents.contains(&p.ppid))
            .map(|p| p.pid),
    );
    pids
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apache_parent_and_its_children_only() {
        let p = |pid, ppid, comm: &str| ProcessEntry {
            pid,
            ppid,
            comm: comm.into(),
        };
        let table = [
            p(1, 0, "systemd"),
            p(10, 1, "apache2"),
            p(11, 10, "apache2"),
            p(12, 10, "apache2"),
            p(13, 10, "rotatelogs"),
            p(14, 11, "apache2"), // a grandchild: not a request worker
            p(20, 1, "php-fpm8.2"),
            p(30, 1, "sh"),
            p(31, 30, "httpd"),
            p(32, 31, "httpd"),
        ];
        assert_eq!(apache_pids(&table), vec![10, 31, 11, 12, 32]);
    }
}
