//! `switchctl upgrade`: the client side of the fail-safe upgrade (see `keeper::upgrade`),
//! for the unit's `ExecReload`. SIGHUP to the daemon's main pid, then the outcome of that
//! attempt, read from `status`, within a bounded wait: `systemctl reload` fails visibly
//! when the new binary did not take over.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::control::client;
use crate::control::protocol::{Failure, Request};
use crate::sys;

/// How often the outcome is asked for.
const POLL: Duration = Duration::from_millis(100);

/// The last upgrade attempt as `status --json` shows it.
#[derive(Debug, Default)]
struct Attempt {
    number: u64,
    outcome: String,
    binary: String,
    cause: String,
}

fn status(socket: &Path, timeout: Duration) -> Result<String, Failure> {
    client::request(socket, &Request::Status { json: true }, timeout)
}

/// Sends SIGHUP to the main pid of the switchfs at `socket` (which must be `expect_pid`
/// when given, e.g. systemd's `$MAINPID`) and waits at most `timeout` for the attempt's
/// outcome. Returns one line saying what serves now.
///
/// # Errors
/// The attempt failed (its cause; the running version serves on), no outcome came in
/// time, or the daemon cannot be reached or signalled.
pub fn upgrade(
    socket: &Path,
    expect_pid: Option<i32>,
    timeout: Duration,
) -> Result<String, Failure> {
    let give_up = Instant::now() + timeout;
    let before = status(socket, timeout)?;
    let main = json_raw(&before, "main_pid")
        .and_then(|v| v.parse::<i32>().ok())
        .ok_or_else(|| Failure::Error("this switchfs reports no main pid to upgrade".into()))?;
    if let Some(pid) = expect_pid.filter(|p| *p != main) {
        return Err(Failure::Error(format!(
            "pid {pid} is not the main pid of the switchfs at {} ({main})",
            socket.display()
        )));
    }
    let last = last_attempt(&before).unwrap_or_default();
    if last.outcome == "proving" {
        return Err(Failure::Error(format!(
            "upgrade {} is still in progress; retry once it ended",
            last.number
        )));
    }
    sys::signal(main, libc::SIGHUP)
        .map_err(|e| Failure::Error(format!("cannot signal switchfs (pid {main}): {e}")))?;
    loop {
        std::thread::sleep(POLL);
        let left = give_up.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Failure::Error(format!(
                "no outcome of the upgrade after {} s",
                timeout.as_secs()
            )));
        }
        // While the connection moves, the answer waits in the listener's backlog.
        let Ok(now) = status(socket, left) else {
            continue;
        };
        match last_attempt(&now) {
            Some(a) if a.number > last.number && a.outcome == "ok" => {
                let pid = json_raw(&now, "pid").unwrap_or("?");
                return Ok(format!(
                    "upgraded: {} serves (server pid {pid})\n",
                    a.binary
                ));
            }
            Some(a) if a.number > last.number && a.outcome == "failed" => {
                return Err(Failure::Error(format!(
                    "upgrade to {} failed: {}; the running version goes on serving",
                    a.binary, a.cause
                )));
            }
            _ => {}
        }
    }
}

fn last_attempt(json: &str) -> Option<Attempt> {
    let obj = json_raw(json, "last_upgrade").filter(|v| v.starts_with('{'))?;
    Some(Attempt {
        number: json_raw(obj, "attempt")?.parse().ok()?,
        outcome: json_raw(obj, "outcome").map(unquote)?,
        binary: json_raw(obj, "binary").map(unquote)?,
        cause: json_raw(obj, "cause").map(unquote).unwrap_or_default(),
    })
}

/// The raw value after the first `"key":` in `json` (a number, a string with its quotes,
/// `null`, or an object of plain values), as the daemon renders it. Strings the daemon
/// escapes cannot contain `"key":`, so the first match is the field.
fn json_raw<'a>(json: &'a str, key: &str) -> Option<&'a str> {
    let pat = format!("\"{key}\":");
    let rest = &json[json.find(&pat)? + pat.len()..];
    let (mut in_str, mut escaped, mut depth) = (false, false, 0u32);
    for (i, c) in rest.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if in_str => escaped = true,
            '"' => in_str = !in_str,
            '{' if !in_str => depth += 1,
            '}' if !in_str && depth == 1 => return Some(&rest[..=i]),
            '}' | ',' if !in_str && depth == 0 => return Some(&rest[..i]),
            _ => {}
        }
    }
    Some(rest.trim_end())
}

/// A JSON string's text (escapes of quote, backslash, newline, tab and \u undone).
fn unquote(raw: &str) -> String {
    let inner = raw.trim().trim_start_matches('"');
    let inner = inner.strip_suffix('"').unwrap_or(inner);
    let mut out = String::new();
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some('u') => {
                let hex: String = chars.by_ref().take(4).collect();
                out.extend(u32::from_str_radix(&hex, 16).ok().and_then(char::from_u32));
            }
            Some(other) => out.push(other),
            None => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_attempt_from_status_json() {
        let json = "{\"active\":\"a \\\"q\\\"\",\"pid\":12,\"main_pid\":10,\"upgrades\":1,\
                    \"last_upgrade\":{\"attempt\":3,\"at\":\"x\",\"at_unix\":1,\
                    \"binary\":\"/opt/v2/switchfs\",\"outcome\":\"failed\",\
                    \"cause\":\"it exited (exit code 1) before it was ready, \\\"x\\\"\"}}\n";
        assert_eq!(json_raw(json, "main_pid"), Some("10"));
        assert_eq!(json_raw(json, "pid"), Some("12"));
        let a = last_attempt(json).unwrap();
        assert_eq!(a.number, 3);
        assert_eq!(a.outcome, "failed");
        assert_eq!(a.binary, "/opt/v2/switchfs");
        assert_eq!(
            a.cause,
            "it exited (exit code 1) before it was ready, \"x\""
        );
        assert!(last_attempt("{\"pid\":1,\"last_upgrade\":null}").is_none());
    }
}
