//! How status and release lists read, for people and for machines: one function per answer,
//! text or JSON from the same `Status` (JSON through `json::Object`, one name per value).

use std::fmt::Write;

use crate::json::{self, Object, iso8601, iso8601_millis, unix_millis, unix_secs};
use crate::life::keeper::{Attempt, Life};
use crate::php::opcache::{LastRun, PoolStatus};
use crate::switch::history::History;
use crate::switch::pending::{Dropped, Pending};
use crate::switch::record::LastSwitch;
use crate::switch::usage::{ReleaseUsage, Status};
use crate::when;

/// `switchctl status`, as text or (`json`) one JSON object and a newline.
pub fn status(st: &Status, json: bool) -> String {
    if json {
        status_json(st)
    } else {
        status_text(st)
    }
}

fn status_text(st: &Status) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "active:       {} (since {})",
        st.active.as_deref().unwrap_or("(none: empty root)"),
        iso8601(st.since)
    );
    let _ = writeln!(
        out,
        "previous:     {}",
        st.previous.as_deref().unwrap_or("(none)")
    );
    let _ = write!(out, "{}", history_text(st));
    out.push_str(&pending_text(st));
    let _ = writeln!(out, "releases dir: {}", st.releases_dir.display());
    let _ = writeln!(out, "mount point:  {}", st.mount_point.display());
    let _ = writeln!(out, "mode:         {}", st.mode);
    if let Some(problem) = &st.active_problem {
        let _ = writeln!(out, "PROBLEM:      {problem}; activate another release");
    }
    if let Some(l) = &st.life {
        out.push_str(&life_text(l));
    }
    let _ = writeln!(out, "releases:");
    for u in &st.usage {
        out.push_str(&usage_text(u, st.mode == "bind"));
    }
    if !st.php_pools.is_empty() {
        out.push_str("php pools:\n");
        for pool in &st.php_pools {
            let _ = writeln!(out, "    {}: {}", pool.endpoint, pool_text(pool));
        }
    }
    out
}

/// One release's line of `status`. A bind-mode docroot (`bind`) has no FUSE handles and no
/// kernel inode cache of ours to count: only what processes hold of each release's mount.
fn usage_text(u: &ReleaseUsage, bind: bool) -> String {
    let mark = if u.active { "*" } else { " " };
    let gone = if u.present { "" } else { " (directory gone)" };
    let state = if u.in_use {
        let held = format!(
            "{}: {} open files, {} working dirs, {} maps",
            if u.active { "active" } else { "in use" },
            u.open_files,
            u.dirs,
            u.maps,
        );
        if bind {
            held
        } else {
            format!("{held}, {} open handles", u.open_handles)
        }
    } else {
        match u.unused_since {
            Some(t) => format!("unused since {}", iso8601(t)),
            None => "unused since the daemon started".to_string(),
        }
    };
    if bind {
        format!("  {mark} {}{gone}: {state}\n", u.name)
    } else {
        format!(
            "  {mark} {}{gone}: {state} ({} inodes cached by the kernel)\n",
            u.name, u.live_inodes
        )
    }
}

/// A pool's last invalidation, after its name in `status`.
fn pool_text(pool: &PoolStatus) -> String {
    match &pool.last {
        None => "no switch since the daemon started".to_string(),
        Some(r) => match &r.error {
            Some(e) => format!("FAILED at {} for release {}: {e}", iso8601(r.at), r.release),
            None => format!(
                "{}: release {}, {} of {} cached scripts invalidated{} in {:.1} ms",
                iso8601(r.at),
                r.release,
                r.invalidated,
                r.cached,
                if r.gone > 0 {
                    format!(" ({} deleted scripts left)", r.gone)
                } else {
                    String::new()
                },
                r.took.as_secs_f64() * 1000.0
            ),
        },
    }
}

/// The `history:`, `rollback to:` and `rolled back:` lines of `status`. Releases whose
/// directory is gone are marked `(gone)` and never named as the rollback target.
fn history_text(st: &Status) -> String {
    let history = &st.history;
    let newest_first: Vec<String> = history
        .entries()
        .iter()
        .rev()
        .map(|n| {
            if st.history_gone.contains(n) {
                format!("{n} (gone)")
            } else {
                n.clone()
            }
        })
        .collect();
    let target = st.rollback_to.clone();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "history:      {} (newest first)",
        if newest_first.is_empty() {
            "(none)".to_string()
        } else {
            newest_first.join(", ")
        }
    );
    let _ = writeln!(
        out,
        "rollback to:  {}",
        target.as_deref().unwrap_or("(none)")
    );
    if !history.rolled_back().is_empty() {
        let _ = writeln!(out, "rolled back:  {}", history.rolled_back().join(", "));
    }
    out
}

fn status_json(st: &Status) -> String {
    let target = st.rollback_to.clone();
    let mut o = Object::new()
        .opt_str("active", st.active.as_deref())
        .str("since", &iso8601(st.since))
        .num("since_unix", unix_secs(st.since))
        .opt_str("previous", st.previous.as_deref())
        .str("releases_dir", &st.releases_dir.to_string_lossy())
        .str("mount_point", &st.mount_point.to_string_lossy())
        .opt_str("problem", st.active_problem.as_deref())
        .raw("releases", &json::array(st.usage.iter().map(usage_json)))
        .raw("history", &json::str_array(&newest_first(&st.history)))
        .opt_str("rollback_to", target.as_deref())
        .raw("rolled_back", &json::str_array(st.history.rolled_back()))
        .str("mode", st.mode)
        .raw("history_gone", &json::str_array(&st.history_gone))
        .raw("pending", &pending_json(st.pending.as_ref()))
        .raw(
            "pending_dropped",
            &dropped_json(st.pending_dropped.as_ref()),
        );
    if let Some(l) = &st.life {
        o = life_json(o, l);
    }
    if !st.php_pools.is_empty() {
        o = o.raw(
            "php_pools",
            &json::array(st.php_pools.iter().map(pool_json)),
        );
    }
    monitoring_json(o, st).finish() + "\n"
}

/// The version of `status --json`'s shape: 2 added the fields of `monitoring_json`
/// (version 1 had no `schema` field). Fields are only ever added.
pub const STATUS_SCHEMA: u32 = 2;

/// Monitoring's fields (issue 19), after every older one so those stay byte for byte: the
/// binary's version, the schema, millisecond times, the switch counter and the last switch.
fn monitoring_json(o: Object, st: &Status) -> Object {
    let mut o = o
        .str("version", env!("CARGO_PKG_VERSION"))
        .num("schema", STATUS_SCHEMA)
        .num("since_unix_ms", unix_millis(st.since));
    if let Some(l) = &st.life {
        let restarted = l.restarted_at.iter().map(|t| unix_millis(*t).to_string());
        o = o
            .num("started_unix_ms", unix_millis(l.started))
            .raw("restarted_at_unix_ms", &json::array(restarted));
    }
    let last = st
        .last_switch
        .as_ref()
        .map_or_else(|| "null".to_string(), last_switch_json);
    o.num("switches", st.switches).raw("last_switch", &last)
}

fn millis(d: std::time::Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1000.0)
}

/// The last switch: when, from what to what, how long in total and per step (`took_ms`
/// covers validate, persist, publish and the kernel's caches, then OPcache, the hooks and
/// the drain wait), and what failed.
fn last_switch_json(l: &LastSwitch) -> String {
    let steps = Object::new()
        .raw("switch_ms", &millis(l.steps.switch))
        .raw("php_ms", &millis(l.steps.php))
        .raw("hooks_ms", &millis(l.steps.hooks))
        .raw("drain_ms", &millis(l.steps.drain))
        .finish();
    Object::new()
        .str("at", &iso8601_millis(l.at))
        .num("at_unix_ms", unix_millis(l.at))
        .opt_str("from", l.from.as_deref())
        .str("to", &l.to)
        .raw("took_ms", &millis(l.took))
        .raw("steps", &steps)
        .num("php_failed", l.php_failed)
        .opt_str("hook_error", l.hook_error.as_deref())
        .finish()
}

fn usage_json(u: &ReleaseUsage) -> String {
    Object::new()
        .str("name", &u.name)
        .num("active", u.active)
        .num("present", u.present)
        .num("in_use", u.in_use)
        .num("open_files", u.open_files)
        .num("working_dirs", u.dirs)
        .num("maps", u.maps)
        .num("open_handles", u.open_handles)
        .num("cached_inodes", u.live_inodes)
        .opt_str("unused_since", u.unused_since.map(iso8601).as_deref())
        .finish()
}

fn pool_json(pool: &PoolStatus) -> String {
    let last = pool
        .last
        .as_ref()
        .map_or_else(|| "null".to_string(), last_run_json);
    Object::new()
        .str("pool", &pool.endpoint)
        .raw("last_invalidation", &last)
        .finish()
}

fn last_run_json(r: &LastRun) -> String {
    Object::new()
        .str("at", &iso8601(r.at))
        .str("release", &r.release)
        .num("cached", r.cached)
        .num("changed", r.changed)
        .num("invalidated", r.invalidated)
        .num("gone", r.gone)
        .raw("took_ms", &format!("{:.3}", r.took.as_secs_f64() * 1000.0))
        .opt_str("error", r.error.as_deref())
        .num("at_unix_ms", unix_millis(r.at))
        .finish()
}

// The serving process's place in the daemon's life (see `keeper`).

/// `pid:` (the server), `main pid:` (the keeper, to signal for a reload), when the server
/// started, and the mount's restarts and upgrades.
fn life_text(l: &Life) -> String {
    format!(
        "server pid:   {} (since {}; main pid {}, {} restarts, {} upgrades)\n{}",
        l.pid,
        iso8601(l.started),
        l.main_pid,
        l.restarts,
        l.upgrades,
        last_upgrade_text(l.last_upgrade.as_ref())
    )
}

/// `last upgrade:` the last SIGHUP's attempt: when, which binary, how it went.
fn last_upgrade_text(a: Option<&Attempt>) -> String {
    let Some(a) = a else {
        return String::new();
    };
    let cause = if a.cause.is_empty() {
        String::new()
    } else {
        format!(": {}", a.cause)
    };
    format!(
        "last upgrade: {} at {} to {}{cause}\n",
        a.outcome.as_str().to_uppercase(),
        iso8601(a.at),
        a.binary
    )
}

fn last_upgrade_json(a: Option<&Attempt>) -> String {
    let Some(a) = a else {
        return "null".to_string();
    };
    Object::new()
        .num("attempt", a.number)
        .str("at", &iso8601(a.at))
        .num("at_unix", unix_secs(a.at))
        .str("binary", &a.binary)
        .str("outcome", a.outcome.as_str())
        .opt_str("cause", (!a.cause.is_empty()).then_some(a.cause.as_str()))
        .finish()
}

fn life_json(o: Object, l: &Life) -> Object {
    o.num("pid", l.pid)
        .num("main_pid", l.main_pid)
        .str("started", &iso8601(l.started))
        .num("started_unix", unix_secs(l.started))
        .num("restarts", l.restarts)
        .num("upgrades", l.upgrades)
        .raw("last_upgrade", &last_upgrade_json(l.last_upgrade.as_ref()))
}

fn newest_first(history: &History) -> Vec<String> {
    history.entries().iter().rev().cloned().collect()
}

/// One line per release, the active one starred, the previous one, the rollback target and
/// releases rolled back from marked.
pub fn list_text(
    names: &[String],
    active: Option<&str>,
    previous: Option<&str>,
    history: &History,
) -> String {
    let target = present_target(names, active, history);
    let mut out = String::new();
    for name in names {
        let mark = if Some(name.as_str()) == active {
            "*"
        } else {
            " "
        };
        let note = if Some(name.as_str()) == active {
            " (active)"
        } else if Some(name.as_str()) == previous {
            " (previous)"
        } else {
            ""
        };
        let extra = if target.as_deref() == Some(name.as_str()) {
            " (rollback target)"
        } else if history.is_rolled_back(name) {
            " (rolled back)"
        } else {
            ""
        };
        let _ = writeln!(out, "{mark} {name}{note}{extra}");
    }
    out
}

/// As `list_text`; `history` is the position of the newest activation of the release in
/// the activation history (0: active, 1: activated before it, ...), or null.
pub fn list_json(
    names: &[String],
    active: Option<&str>,
    previous: Option<&str>,
    history: &History,
) -> String {
    let target = present_target(names, active, history);
    let newest = newest_first(history);
    let items = names.iter().map(|n| {
        let position = newest.iter().position(|h| h == n);
        Object::new()
            .str("name", n)
            .num("active", Some(n.as_str()) == active)
            .num("previous", Some(n.as_str()) == previous)
            .raw(
                "history",
                &position.map_or_else(|| "null".to_string(), |p| p.to_string()),
            )
            .num("rollback_target", target.as_deref() == Some(n.as_str()))
            .num("rolled_back", history.is_rolled_back(n))
            .finish()
    });
    json::array(items) + "\n"
}

/// Where a rollback would go, among the releases present (`names`): a deleted release is
/// never marked as the target (issue 20, finding 3).
fn present_target(names: &[String], active: Option<&str>, history: &History) -> Option<String> {
    let a = active?;
    history
        .rollback(a, None, |n| names.iter().any(|p| p == n))
        .ok()
        .map(|(t, _)| t)
}

// ---- A switch at an instant (issue 20): `pending:` and `dropped:` lines, JSON objects ----

fn pending_text(st: &Status) -> String {
    let mut out = String::new();
    if let Some(p) = &st.pending {
        let _ = writeln!(
            out,
            "pending:      {} (switchctl cancel drops it)",
            p.describe()
        );
    }
    if let Some(d) = &st.pending_dropped {
        let _ = writeln!(
            out,
            "dropped:      the switch to {}: {} (at {})",
            d.pending.describe(),
            d.why,
            iso8601(d.when)
        );
    }
    out
}

fn pending_json(p: Option<&Pending>) -> String {
    let Some(p) = p else {
        return "null".into();
    };
    Object::new()
        .str("release", &p.release)
        .str("kind", p.kind.word())
        .str("at", &when::micros(p.at))
        .raw("at_unix", &when::to_wire(p.at))
        .str("requested_by", &p.requested_by)
        .str("requested_at", &when::micros(p.requested_at))
        .finish()
}

fn dropped_json(d: Option<&Dropped>) -> String {
    let Some(d) = d else {
        return "null".into();
    };
    Object::new()
        .raw("switch", &pending_json(Some(&d.pending)))
        .str("why", &d.why)
        .str("dropped_at", &iso8601(d.when))
        .finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_mark_active_and_previous() {
        let names = vec!["1".to_string(), "2".to_string(), "3".to_string()];
        let history = History::new(names.clone(), Vec::new());
        let text = list_text(&names, Some("3"), Some("2"), &history);
        assert_eq!(
            text,
            "  1\n  2 (previous) (rollback target)\n* 3 (active)\n"
        );
        let json = list_json(&names, Some("3"), Some("2"), &history);
        assert!(json.contains(
            "{\"name\":\"3\",\"active\":true,\"previous\":false,\"history\":0,\
             \"rollback_target\":false,\"rolled_back\":false}"
        ));
    }

    #[test]
    fn lists_mark_the_rollback_target_and_releases_rolled_back_from() {
        let names: Vec<String> = ["1", "2", "3"].iter().map(|s| s.to_string()).collect();
        // Activated 1, 2, 3, then rolled back from 3 to 2.
        let history = History::new(vec!["1".into(), "2".into()], vec!["3".into()]);
        let text = list_text(&names, Some("2"), Some("3"), &history);
        assert_eq!(
            text,
            "  1 (rollback target)\n* 2 (active)\n  3 (previous) (rolled back)\n"
        );
        let json = list_json(&names, Some("2"), Some("3"), &history);
        assert!(
            json.contains(
                "\"name\":\"1\",\"active\":false,\"previous\":false,\"history\":1,\
             \"rollback_target\":true,\"rolled_back\":false"
            ),
            "{json}"
        );
        assert!(
            json.contains(
                "\"name\":\"3\",\"active\":false,\"previous\":true,\"history\":null,\
             \"rollback_target\":false,\"rolled_back\":true"
            ),
            "{json}"
        );
    }

    /// The pools' section reads as `opcache::with_status` wrote it before `Status` carried
    /// the pools (strings taken from that code).
    #[test]
    fn php_pools_read_as_before() {
        use std::time::{Duration, UNIX_EPOCH};
        let at = UNIX_EPOCH + Duration::from_secs(1_795_446_000);
        let pools = [
            PoolStatus {
                endpoint: "php-fpm /run/php/a.sock".into(),
                last: Some(LastRun {
                    at,
                    release: "2".into(),
                    cached: 3,
                    changed: 2,
                    invalidated: 2,
                    gone: 1,
                    took: Duration::from_micros(1500),
                    error: None,
                }),
            },
            PoolStatus {
                endpoint: "php-http http://127.0.0.1/x.php".into(),
                last: None,
            },
        ];
        let text: String = pools
            .iter()
            .map(|p| format!("    {}: {}\n", p.endpoint, pool_text(p)))
            .collect();
        assert_eq!(
            text,
            "    php-fpm /run/php/a.sock: 2026-11-23T15:00:00Z: release 2, 2 of 3 cached \
             scripts invalidated (1 deleted scripts left) in 1.5 ms\n    \
             php-http http://127.0.0.1/x.php: no switch since the daemon started\n"
        );
        assert_eq!(
            json::array(pools.iter().map(pool_json)),
            "[{\"pool\":\"php-fpm /run/php/a.sock\",\"last_invalidation\":{\"at\":\
             \"2026-11-23T15:00:00Z\",\"release\":\"2\",\"cached\":3,\"changed\":2,\
             \"invalidated\":2,\"gone\":1,\"took_ms\":1.500,\"error\":null,\
             \"at_unix_ms\":1795446000000}},\
             {\"pool\":\"php-http http://127.0.0.1/x.php\",\"last_invalidation\":null}]"
        );
    }
}
