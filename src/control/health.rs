//! `switchctl check`: one verdict for a monitoring system (Nagios, Icinga, Sensu, Zabbix
//! agents running plugins), from the same `Status` as `switchctl status`. The rules, worst
//! first, each for a failure switchfs exists to prevent:
//!
//! - **CRITICAL** the active release's directory was deleted, renamed or replaced while it
//!   is served (new requests may fail, and a restart cannot resume it);
//! - **CRITICAL** the last OPcache invalidation of a PHP pool failed: with
//!   `validate_timestamps=0` that pool runs the old bytecode until it is brought up to date
//!   (`switchctl php-sync`, or `activate` of the active release, retries). A pool that was
//!   not running (its socket missing or refusing) counts as failed too: a stopped pool holds
//!   no cache, but the daemon cannot tell it from a wrong `--php-fpm` address or from a
//!   socket its owner (the pool's user owns `/run/php`) renamed away for the moment, and a
//!   missing answer cannot be owner-checked; `php-sync` clears it once the pool is up;
//! - **CRITICAL** a server restart loop: `LOOP_RESTARTS` crash restarts within
//!   `LOOP_WINDOW` (the keeper's restart times); each restart resumes the mount, but a
//!   server that keeps dying means requests stall while it does;
//! - **WARNING** no release is active (the mount shows an empty root);
//! - **WARNING** the last switch's `--on-activate` hook failed (cache warmers, notifiers:
//!   the switch itself stands).
//!
//! Otherwise OK. The line reads `SWITCHFS OK - serving 44 since ...`, then
//! `| perfdata` (monitoring-plugin style). `UNKNOWN` (exit 3) is `switchctl`'s own answer
//! when the daemon cannot be reached.

use std::time::{Duration, SystemTime};

use crate::json::iso8601;
use crate::switch::usage::Status;

/// Crash restarts within `LOOP_WINDOW` that make a restart loop.
pub const LOOP_RESTARTS: usize = 3;
/// The window of the restart-loop rule.
pub const LOOP_WINDOW: Duration = Duration::from_secs(600);

/// A monitoring plugin's states, in the order of their exit codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Ok = 0,
    Warning = 1,
    Critical = 2,
    Unknown = 3,
}

impl Level {
    pub fn word(self) -> &'static str {
        match self {
            Level::Ok => "OK",
            Level::Warning => "WARNING",
            Level::Critical => "CRITICAL",
            Level::Unknown => "UNKNOWN",
        }
    }

    /// The level a `check` line starts with (`SWITCHFS WORD - ...`).
    pub fn of_line(line: &str) -> Option<Level> {
        let word = line.strip_prefix("SWITCHFS ")?.split(' ').next()?;
        [Level::Ok, Level::Warning, Level::Critical, Level::Unknown]
            .into_iter()
            .find(|l| l.word() == word)
    }
}

/// What is wrong, worst first; empty when all is well.
pub fn problems(st: &Status, now: SystemTime) -> Vec<(Level, String)> {
    let mut found = Vec::new();
    if let Some(problem) = &st.active_problem {
        found.push((Level::Critical, problem.clone()));
    }
    for pool in &st.php_pools {
        if let Some(run) = &pool.last
            && let Some(e) = &run.error
        {
            found.push((
                Level::Critical,
                format!(
                    "{}: OPcache not invalidated for release {} at {} ({e}); retry with \
                     switchctl php-sync",
                    pool.endpoint,
                    run.release,
                    iso8601(run.at)
                ),
            ));
        }
    }
    let recent = recent_restarts(st, now);
    if recent >= LOOP_RESTARTS {
        found.push((
            Level::Critical,
            format!(
                "restart loop: the server was restarted {recent} times in the last {} s",
                LOOP_WINDOW.as_secs()
            ),
        ));
    }
    if st.active.is_none() {
        found.push((
            Level::Warning,
            "no release is active (the mount shows an empty root)".to_string(),
        ));
    }
    if let Some(e) = st.last_switch.as_ref().and_then(|l| l.hook_error.as_ref()) {
        found.push((
            Level::Warning,
            format!("the last switch's hook failed: {e}"),
        ));
    }
    found.sort_by_key(|(level, _)| std::cmp::Reverse(*level));
    found
}

/// Crash restarts within `LOOP_WINDOW` before `now`.
pub fn recent_restarts(st: &Status, now: SystemTime) -> usize {
    st.life.as_ref().map_or(0, |l| {
        l.restarted_at
            .iter()
            .filter(|t| now.duration_since(**t).is_ok_and(|d| d <= LOOP_WINDOW))
            .count()
    })
}

/// The one line of `switchctl check` and its level.
pub fn check(st: &Status, now: SystemTime) -> (Level, String) {
    let problems = problems(st, now);
    let level = problems.first().map_or(Level::Ok, |(l, _)| *l);
    let summary = if problems.is_empty() {
        match &st.active {
            Some(name) => format!("serving {name} since {}", iso8601(st.since)),
            None => "no release is active".to_string(),
        }
    } else {
        problems
            .iter()
            .map(|(_, msg)| msg.as_str())
            .collect::<Vec<_>>()
            .join("; ")
    };
    let summary = summary.replace(['\n', '\r', '|'], " ");
    (
        level,
        format!("SWITCHFS {} - {summary} | {}", level.word(), perfdata(st)),
    )
}

/// Monitoring-plugin performance data: the switch counter, the last switch's duration and
/// the server's restarts.
fn perfdata(st: &Status) -> String {
    let last_ms = st
        .last_switch
        .as_ref()
        .map_or(0.0, |l| l.took.as_secs_f64() * 1000.0);
    let (restarts, upgrades) = st
        .life
        .as_ref()
        .map_or((0, 0), |l| (l.restarts, l.upgrades));
    format!(
        "switches={}c last_switch_ms={last_ms:.3}ms restarts={restarts}c upgrades={upgrades}c",
        st.switches
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::life::keeper::Life;
    use crate::php::opcache::{LastRun, PoolStatus};
    use crate::switch::history::History;
    use crate::switch::record::LastSwitch;

    fn status() -> Status {
        Status {
            mode: "fuse",
            active: Some("44".into()),
            since: SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_446_000),
            previous: None,
            history: History::default(),
            releases_dir: "/r".into(),
            mount_point: "/m".into(),
            active_problem: None,
            usage: Vec::new(),
            life: None,
            php_pools: Vec::new(),
            switches: 2,
            last_switch: None,
            rollback_to: None,
            history_gone: Vec::new(),
            pending: None,
            pending_dropped: None,
        }
    }

    fn failed_pool() -> PoolStatus {
        PoolStatus {
            endpoint: "php-fpm /run/php/a.sock".into(),
            last: Some(LastRun {
                at: SystemTime::UNIX_EPOCH,
                release: "44".into(),
                cached: 0,
                changed: 0,
                invalidated: 0,
                gone: 0,
                took: Duration::ZERO,
                error: Some("timed out".into()),
            }),
        }
    }

    #[test]
    fn all_well_is_ok_and_names_the_release() {
        let (level, line) = check(&status(), SystemTime::now());
        assert_eq!(level, Level::Ok);
        assert_eq!(
            line,
            "SWITCHFS OK - serving 44 since 2026-11-23T15:00:00Z | switches=2c \
             last_switch_ms=0.000ms restarts=0c upgrades=0c"
        );
        assert_eq!(Level::of_line(&line), Some(Level::Ok));
    }

    #[test]
    fn each_rule_gives_its_level_and_the_worst_wins() {
        let now = SystemTime::now();
        let mut st = status();
        st.active = None;
        assert_eq!(check(&st, now).0, Level::Warning);
        let mut st = status();
        st.last_switch = Some(LastSwitch {
            at: now,
            from: None,
            to: "44".into(),
            took: Duration::from_millis(3),
            steps: Default::default(),
            php_failed: false,
            hook_error: Some("hook `x` exited with 1".into()),
        });
        assert_eq!(check(&st, now).0, Level::Warning);
        st.php_pools.push(failed_pool());
        let (level, line) = check(&st, now);
        assert_eq!(level, Level::Critical);
        assert!(
            line.starts_with("SWITCHFS CRITICAL - php-fpm /run/php/a.sock: OPcache not"),
            "{line}"
        );
        assert!(line.contains("; the last switch's hook failed"), "{line}");
        let mut st = status();
        st.active_problem = Some("the directory of release 44 was deleted".into());
        assert_eq!(check(&st, now).0, Level::Critical);
    }

    #[test]
    fn a_restart_loop_is_restarts_within_the_window() {
        let now = SystemTime::now();
        let ago = |s: u64| now - Duration::from_secs(s);
        let life = |times: Vec<SystemTime>| -> Life {
            Life {
                pid: 2,
                main_pid: 1,
                started: now,
                restarts: times.len() as u64,
                upgrades: 0,
                last_upgrade: None,
                restarted_at: times,
            }
        };
        let mut st = status();
        st.life = Some(life(vec![ago(5000), ago(4000), ago(3000), ago(10)]));
        assert_eq!(check(&st, now).0, Level::Ok, "old restarts are no loop");
        st.life = Some(life(vec![ago(500), ago(100), ago(10)]));
        let (level, line) = check(&st, now);
        assert_eq!(level, Level::Critical);
        assert!(
            line.contains("restarted 3 times in the last 600 s"),
            "{line}"
        );
    }
}
