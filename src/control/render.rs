//! How status and release lists read, for people and for machines (JSON, written by hand:
//! a dozen fields do not justify a serialisation framework).

use std::fmt::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::history::History;
use crate::usage::Status;

/// `s` as a JSON string literal.
pub fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn json_opt(s: Option<&str>) -> String {
    s.map_or_else(|| "null".to_string(), json_str)
}

fn unix_secs(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    }
}

/// `t` as `YYYY-MM-DDTHH:MM:SSZ` (UTC).
pub fn iso8601(t: SystemTime) -> String {
    let secs = unix_secs(t);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

pub fn status_text(st: &Status) -> String {
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
    let _ = write!(out, "{}", history_text(&st.history, st.active.as_deref()));
    let _ = writeln!(out, "releases dir: {}", st.releases_dir.display());
    let _ = writeln!(out, "mount point:  {}", st.mount_point.display());
    if let Some(problem) = &st.active_problem {
        let _ = writeln!(out, "PROBLEM:      {problem}; activate another release");
    }
    out.push_str(&life_text());
    let _ = writeln!(out, "releases:");
    for u in &st.usage {
        let mark = if u.active { "*" } else { " " };
        let gone = if u.present { "" } else { " (directory gone)" };
        let state = if u.in_use {
            format!(
                "{}: {} open files, {} working dirs, {} maps, {} open handles",
                if u.active { "active" } else { "in use" },
                u.open_files,
                u.dirs,
                u.maps,
                u.open_handles
            )
        } else {
            match u.unused_since {
                Some(t) => format!("unused since {}", iso8601(t)),
                None => "unused since the daemon started".to_string(),
            }
        };
        let state = format!("{state} ({} inodes cached by the kernel)", u.live_inodes);
        let _ = writeln!(out, "  {mark} {}{gone}: {state}", u.name);
    }
    out
}

/// The `history:`, `rollback to:` and `rolled back:` lines of `status`.
fn history_text(history: &History, active: Option<&str>) -> String {
    let newest_first: Vec<&str> = history.entries().iter().rev().map(String::as_str).collect();
    let target = active.and_then(|a| history.rollback_target(a));
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

fn json_list(names: &[String]) -> String {
    let items: Vec<String> = names.iter().map(|n| json_str(n)).collect();
    format!("[{}]", items.join(","))
}

pub fn status_json(st: &Status) -> String {
    let usage: Vec<String> = st
        .usage
        .iter()
        .map(|u| {
            format!(
                "{{\"name\":{},\"active\":{},\"present\":{},\"in_use\":{},\
                 \"open_files\":{},\"working_dirs\":{},\"maps\":{},\"open_handles\":{},\
                 \"cached_inodes\":{},\"unused_since\":{}}}",
                json_str(&u.name),
                u.active,
                u.present,
                u.in_use,
                u.open_files,
                u.dirs,
                u.maps,
                u.open_handles,
                u.live_inodes,
                u.unused_since
                    .map_or_else(|| "null".to_string(), |t| json_str(&iso8601(t)))
            )
        })
        .collect();
    format!(
        "{{\"active\":{},\"since\":{},\"since_unix\":{},\"previous\":{},\"releases_dir\":{},\
         \"mount_point\":{},\"problem\":{},\"releases\":[{}],\"history\":{},\
         \"rollback_to\":{},\"rolled_back\":{}{}}}\n",
        json_opt(st.active.as_deref()),
        json_str(&iso8601(st.since)),
        unix_secs(st.since),
        json_opt(st.previous.as_deref()),
        json_str(&st.releases_dir.to_string_lossy()),
        json_str(&st.mount_point.to_string_lossy()),
        json_opt(st.active_problem.as_deref()),
        usage.join(","),
        json_list(&newest_first(&st.history)),
        json_opt(
            st.active
                .as_deref()
                .and_then(|a| st.history.rollback_target(a))
                .as_deref()
        ),
        json_list(st.history.rolled_back()),
        life_json(),
    )
}

// The serving process's place in the daemon's life (see `keeper`).

/// `pid:` (the server), `main pid:` (the keeper, to signal for a reload), when the server
/// started, and the mount's restarts and upgrades.
fn life_text() -> String {
    match crate::keeper::life() {
        Some(l) => format!(
            "server pid:   {} (since {}; main pid {}, {} restarts, {} upgrades)\n{}",
            l.pid,
            iso8601(l.started),
            l.main_pid,
            l.restarts,
            l.upgrades,
            last_upgrade_text(l.last_upgrade.as_ref())
        ),
        None => String::new(),
    }
}

/// `last upgrade:` the last SIGHUP's attempt: when, which binary, how it went.
fn last_upgrade_text(a: Option<&crate::keeper::Attempt>) -> String {
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

fn last_upgrade_json(a: Option<&crate::keeper::Attempt>) -> String {
    match a {
        None => "null".to_string(),
        Some(a) => format!(
            "{{\"attempt\":{},\"at\":{},\"at_unix\":{},\"binary\":{},\"outcome\":{},\
             \"cause\":{}}}",
            a.number,
            json_str(&iso8601(a.at)),
            unix_secs(a.at),
            json_str(&a.binary),
            json_str(a.outcome.as_str()),
            json_opt((!a.cause.is_empty()).then_some(a.cause.as_str()))
        ),
    }
}

fn life_json() -> String {
    match crate::keeper::life() {
        Some(l) => format!(
            ",\"pid\":{},\"main_pid\":{},\"started\":{},\"started_unix\":{},\
             \"restarts\":{},\"upgrades\":{},\"last_upgrade\":{}",
            l.pid,
            l.main_pid,
            json_str(&iso8601(l.started)),
            unix_secs(l.started),
            l.restarts,
            l.upgrades,
            last_upgrade_json(l.last_upgrade.as_ref())
        ),
        None => String::new(),
    }
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
    let target = active.and_then(|a| history.rollback_target(a));
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
    let target = active.and_then(|a| history.rollback_target(a));
    let newest = newest_first(history);
    let items: Vec<String> = names
        .iter()
        .map(|n| {
            let position = newest.iter().position(|h| h == n);
            format!(
                "{{\"name\":{},\"active\":{},\"previous\":{},\"history\":{},\
                 \"rollback_target\":{},\"rolled_back\":{}}}",
                json_str(n),
                Some(n.as_str()) == active,
                Some(n.as_str()) == previous,
                position.map_or_else(|| "null".to_string(), |p| p.to_string()),
                target.as_deref() == Some(n.as_str()),
                history.is_rolled_back(n)
            )
        })
        .collect();
    format!("[{}]\n", items.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn dates() {
        assert_eq!(iso8601(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_795_446_000);
        assert_eq!(iso8601(t), "2026-11-23T15:00:00Z");
        assert_eq!(
            iso8601(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00Z"
        );
    }

    #[test]
    fn json_escapes() {
        assert_eq!(json_str("a\"b\\c\nd\u{1}"), "\"a\\\"b\\\\c\\nd\\u0001\"");
    }

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
}
