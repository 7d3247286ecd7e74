//! The control protocol: one request line, one response, then the server closes.
//!
//! Requests: `activate NAME [drain=SECS]`, `rollback [drain=SECS]`,
//! `rollback to=NAME [drain=SECS]`, `status [json]`, `list [json]`, `prune KEEP [yes]`, `ping`,
//! `check` (one monitoring-plugin line), `metrics` (Prometheus text), `php-sync`; and the two
//! phases: `prepare NAME`, `activate NAME at=SECS.NANOS [nowait]`,
//! `rollback [to=NAME] at=SECS.NANOS [nowait]`, `cancel`.
//! Responses: `ok` and a newline, then the body; one line `error: MESSAGE` (nothing was
//! done); or one line `partial: MESSAGE` (the switch happened, but a hook failed or the
//! previous release did not drain in time).
//!
//! Release names travel percent-encoded (`%20` for a space, `%25` for `%`, control bytes as
//! `%XX`; everything else, UTF-8 included, as is), so a name with spaces can never be read as
//! a name plus arguments: `activate 4%20drain=0` is the directory `4 drain=0`, `activate 4
//! drain=0` is release `4` with a drain wait. A plain name like `43` encodes to itself.

use crate::switch::names::validate_release_name;

/// Longest request line accepted, newline included. Anything longer is refused unread.
pub const MAX_REQUEST: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Switch; with `drain`, then wait up to that many seconds for the previous release
    /// to become unused.
    Activate {
        name: String,
        drain: Option<u32>,
    },
    Rollback {
        drain: Option<u32>,
    },
    Status {
        json: bool,
    },
    List {
        json: bool,
    },
    /// Delete releases older than the newest `keep`; only report unless `apply`.
    Prune {
        keep: usize,
        apply: bool,
    },
    Ping,
    /// Roll back to release `name` of the activation history.
    RollbackTo {
        name: String,
        drain: Option<u32>,
    },
    // Monitoring and retry (issue 19).
    /// One line for a monitoring system (`control::health`).
    Check,
    /// Prometheus' text exposition (`control::metrics`).
    Metrics,
    /// Run the OPcache invalidation for the active release again.
    PhpSync,
    // ---- Two phases (issue 20): `prepare NAME`, `activate NAME at=SECS.NANOS [nowait]`,
    // `cancel`. Older clients never send these; their lines parse as before.
    /// Every check `activate NAME` would do, changing nothing.
    Prepare {
        name: String,
    },
    /// Switch to `name` when the host clock reaches `at`; the answer comes after the switch,
    /// or (`wait` false) once it is scheduled.
    ActivateAt {
        name: String,
        at: std::time::SystemTime,
        wait: bool,
    },
    /// Drop the pending switch.
    Cancel,
    /// `rollback [to=NAME] at=SECS.NANOS [nowait]`: a rollback at an instant.
    RollbackAt {
        to: Option<String>,
        at: std::time::SystemTime,
        wait: bool,
    },
}

/// Longest `drain=` wait accepted, in seconds.
pub const MAX_DRAIN_SECS: u32 = 86_400;

impl Request {
    /// The wire form, without the newline.
    pub fn to_line(&self) -> String {
        match self {
            Request::Activate { name, drain } => {
                format!("activate {}{}", encode_name(name), drain_arg(*drain))
            }
            Request::Rollback { drain } => format!("rollback{}", drain_arg(*drain)),
            Request::Prune { keep, apply } => {
                format!("prune {keep}{}", if *apply { " yes" } else { "" })
            }
            Request::Status { json } => format!("status{}", if *json { " json" } else { "" }),
            Request::List { json } => format!("list{}", if *json { " json" } else { "" }),
            Request::Ping => "ping".into(),
            Request::RollbackTo { name, drain } => {
                format!("rollback to={}{}", encode_name(name), drain_arg(*drain))
            }
            Request::Check => "check".into(),
            Request::Metrics => "metrics".into(),
            Request::PhpSync => "php-sync".into(),
            Request::Prepare { name } => format!("prepare {}", encode_name(name)),
            Request::ActivateAt { name, at, wait } => format!(
                "activate {} at={}{}",
                encode_name(name),
                crate::when::to_wire(*at),
                if *wait { "" } else { " nowait" }
            ),
            Request::Cancel => "cancel".into(),
            Request::RollbackAt { to, at, wait } => format!(
                "rollback{} at={}{}",
                to.as_ref()
                    .map(|n| format!(" to={}", encode_name(n)))
                    .unwrap_or_default(),
                crate::when::to_wire(*at),
                if *wait { "" } else { " nowait" }
            ),
        }
    }
}

/// The wire form of a release name: percent-encodes `%`, space and control bytes, the only
/// bytes that could split or end a request line or be mistaken for an escape.
pub fn encode_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for ch in name.chars() {
        if ch == '%' || ch == ' ' || ch.is_ascii_control() {
            out.push_str(&format!("%{:02X}", ch as u32));
        } else {
            out.push(ch);
        }
    }
    out
}

/// Undoes `encode_name`; strict, so a malformed escape is refused instead of guessed at.
///
/// # Errors
/// A `%` not followed by two hex digits, or escapes that do not form UTF-8.
pub fn decode_name(wire: &str) -> Result<String, String> {
    let bytes = wire.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'%' {
            out.push(bytes[i]);
            i += 1;
            continue;
        }
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .filter(|h| h.bytes().all(|b| b.is_ascii_hexdigit()))
            .and_then(|h| u8::from_str_radix(h, 16).ok())
            .ok_or_else(|| {
                format!(
                    "bad escape in release name {:?} (write % as %25, a space as %20)",
                    truncate(wire, 60)
                )
            })?;
        out.push(hex);
        i += 3;
    }
    String::from_utf8(out).map_err(|_| "release name is not UTF-8".to_string())
}

impl Request {
    /// The command word of a request, for messages (`activate`, `status`, ...).
    pub fn verb(&self) -> &'static str {
        match self {
            Request::Activate { .. } => "activate",
            Request::Rollback { .. } | Request::RollbackTo { .. } => "rollback",
            Request::Status { .. } => "status",
            Request::List { .. } => "list",
            Request::Prune { .. } => "prune",
            Request::Ping => "ping",
            Request::Check => "check",
            Request::Metrics => "metrics",
            Request::PhpSync => "php-sync",
            Request::Prepare { .. } => "prepare",
            Request::ActivateAt { .. } => "activate",
            Request::Cancel => "cancel",
            Request::RollbackAt { .. } => "rollback",
        }
    }

    /// Whether the request can change what is served or delete releases, so needs root or
    /// the control group; the rest only reads.
    pub fn changes_things(&self) -> bool {
        matches!(
            self,
            Request::Activate { .. }
                | Request::Rollback { .. }
                | Request::RollbackTo { .. }
                | Request::Prune { .. }
                | Request::PhpSync
                | Request::Prepare { .. }
                | Request::ActivateAt { .. }
                | Request::Cancel
                | Request::RollbackAt { .. }
        )
    }
}

fn drain_arg(drain: Option<u32>) -> String {
    drain.map(|s| format!(" drain={s}")).unwrap_or_default()
}

fn parse_drain(arg: Option<&str>) -> Result<Option<u32>, String> {
    let Some(arg) = arg else {
        return Ok(None);
    };
    let secs = arg
        .strip_prefix("drain=")
        .and_then(|s| s.parse::<u32>().ok())
        .filter(|s| *s <= MAX_DRAIN_SECS)
        .ok_or_else(|| format!("expected drain=SECS (0 to {MAX_DRAIN_SECS}), got {arg:?}"))?;
    Ok(Some(secs))
}

/// Parses one request line (without its newline).
///
/// # Errors
/// A one-line message naming what is wrong.
pub fn parse_request(line: &[u8]) -> Result<Request, String> {
    let line = std::str::from_utf8(line).map_err(|_| "request is not UTF-8".to_string())?;
    let line = line.strip_suffix('\r').unwrap_or(line);
    let (verb, arg) = match line.split_once(' ') {
        Some((verb, arg)) => (verb, Some(arg)),
        None => (line, None),
    };
    let json_flag = |arg: Option<&str>| match arg {
        None => Ok(false),
        Some("json") => Ok(true),
        Some(other) => Err(format!("unexpected argument {other:?} to {verb}")),
    };
    match verb {
        "activate" => {
            let arg = arg.ok_or("activate needs a release name")?;
            let (name, rest) = match arg.split_once(' ') {
                Some((name, rest)) => (name, Some(rest)),
                None => (arg, None),
            };
            let name = decode_name(name)?;
            validate_release_name(&name)?;
            if let Some(at) = rest.and_then(|r| r.strip_prefix("at=")) {
                return parse_activate_at(name, at);
            }
            Ok(Request::Activate {
                name,
                drain: parse_drain(rest)?,
            })
        }
        "prepare" => {
            let name = decode_name(arg.ok_or("prepare needs a release name")?)?;
            validate_release_name(&name)?;
            Ok(Request::Prepare { name })
        }
        "cancel" if arg.is_none() => Ok(Request::Cancel),
        "rollback" if arg.is_some_and(|a| a.starts_with("at=") || a.contains(" at=")) => {
            parse_rollback_at(arg.unwrap_or_default())
        }
        "rollback" => match arg.and_then(|a| a.strip_prefix("to=")) {
            Some(to) => parse_rollback_to(to),
            None => Ok(Request::Rollback {
                drain: parse_drain(arg)?,
            }),
        },
        "prune" => {
            let arg = arg.ok_or("prune needs the number of releases to keep")?;
            let (keep, apply) = match arg.split_once(' ') {
                Some((keep, "yes")) => (keep, true),
                Some((_, other)) => return Err(format!("unexpected argument {other:?} to prune")),
                None => (arg, false),
            };
            let keep = keep
                .parse::<usize>()
                .ok()
                .filter(|k| *k >= 1)
                .ok_or_else(|| format!("prune keeps at least 1 release, got {keep:?}"))?;
            Ok(Request::Prune { keep, apply })
        }
        "status" => Ok(Request::Status {
            json: json_flag(arg)?,
        }),
        "list" => Ok(Request::List {
            json: json_flag(arg)?,
        }),
        "ping" if arg.is_none() => Ok(Request::Ping),
        "check" if arg.is_none() => Ok(Request::Check),
        "metrics" if arg.is_none() => Ok(Request::Metrics),
        "php-sync" if arg.is_none() => Ok(Request::PhpSync),
        "" => Err("empty request".into()),
        _ => Err(format!(
            "unknown request {:?} (expected activate, prepare, cancel, rollback, status, list, \
             prune, ping, check, metrics or php-sync)",
            truncate(line, 60)
        )),
    }
}

/// The arguments of `rollback to=NAME [drain=SECS]` after `to=`.
fn parse_rollback_to(arg: &str) -> Result<Request, String> {
    let (name, rest) = match arg.split_once(' ') {
        Some((name, rest)) => (name, Some(rest)),
        None => (arg, None),
    };
    let name = decode_name(name)?;
    validate_release_name(&name)?;
    Ok(Request::RollbackTo {
        name,
        drain: parse_drain(rest)?,
    })
}

/// The arguments of `rollback [to=NAME] at=SECS.NANOS [nowait]`.
fn parse_rollback_at(arg: &str) -> Result<Request, String> {
    let (to, rest) = match arg.strip_prefix("to=") {
        Some(tail) => {
            let (name, rest) = tail.split_once(' ').unwrap_or((tail, ""));
            let name = decode_name(name)?;
            validate_release_name(&name)?;
            (Some(name), rest)
        }
        None => (None, arg),
    };
    let at = rest.strip_prefix("at=").ok_or("expected at=SECS.NANOS")?;
    match parse_activate_at(String::new(), at)? {
        Request::ActivateAt { at, wait, .. } => Ok(Request::RollbackAt { to, at, wait }),
        _ => Err("expected at=SECS.NANOS".into()),
    }
}

/// The arguments of `activate NAME at=SECS.NANOS [nowait]` after `at=`.
fn parse_activate_at(name: String, arg: &str) -> Result<Request, String> {
    let (at, wait) = match arg.split_once(' ') {
        Some((at, "nowait")) => (at, false),
        Some((_, other)) => return Err(format!("unexpected argument {other:?} to activate")),
        None => (arg, true),
    };
    Ok(Request::ActivateAt {
        name,
        at: crate::when::from_wire(at)?,
        wait,
    })
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// A successful response with `body`.
pub fn ok_response(body: &str) -> String {
    let mut out = String::from("ok\n");
    out.push_str(body);
    if !body.is_empty() && !body.ends_with('\n') {
        out.push('\n');
    }
    out
}

/// A failure response; newlines in `msg` are flattened so it stays one line.
pub fn error_response(msg: &str) -> String {
    format!("error: {}\n", msg.replace(['\n', '\r'], " "))
}

/// A response for a switch that happened but whose aftermath failed.
pub fn partial_response(msg: &str) -> String {
    format!("partial: {}\n", msg.replace(['\n', '\r'], " "))
}

/// Why a request did not fully succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// Nothing was done.
    Error(String),
    /// The switch happened; something after it failed.
    Partial(String),
}

impl Failure {
    pub fn message(&self) -> &str {
        match self {
            Failure::Error(m) | Failure::Partial(m) => m,
        }
    }
}

/// Splits a response into the body (`Ok`) or what went wrong.
///
/// # Errors
/// The server's message, or a description of a malformed response.
pub fn parse_response(raw: &[u8]) -> Result<String, Failure> {
    let text = String::from_utf8_lossy(raw);
    if let Some(body) = text.strip_prefix("ok\n") {
        return Ok(body.to_string());
    }
    if let Some(msg) = text.strip_prefix("error: ") {
        return Err(Failure::Error(msg.trim_end().to_string()));
    }
    if let Some(msg) = text.strip_prefix("partial: ") {
        return Err(Failure::Partial(msg.trim_end().to_string()));
    }
    if text.is_empty() {
        return Err(Failure::Error(
            "the daemon closed the connection without answering".into(),
        ));
    }
    Err(Failure::Error(format!(
        "malformed response from the daemon: {:?}",
        truncate(&text, 80)
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_request() {
        for req in [
            Request::Activate {
                name: "12".into(),
                drain: None,
            },
            Request::Activate {
                name: "12".into(),
                drain: Some(30),
            },
            Request::Rollback { drain: None },
            Request::Prune {
                keep: 3,
                apply: false,
            },
            Request::Prune {
                keep: 5,
                apply: true,
            },
            Request::Status { json: false },
            Request::Status { json: true },
            Request::List { json: true },
            Request::Ping,
            Request::Check,
            Request::Metrics,
            Request::PhpSync,
            Request::Activate {
                name: "4 drain=0".into(),
                drain: None,
            },
            Request::Activate {
                name: "ünï cödé 100%".into(),
                drain: Some(1),
            },
            Request::RollbackTo {
                name: "7 drain=0".into(),
                drain: None,
            },
            Request::RollbackTo {
                name: "7".into(),
                drain: Some(5),
            },
            Request::Prepare {
                name: "7 drain=0".into(),
            },
            Request::ActivateAt {
                name: "8".into(),
                at: std::time::UNIX_EPOCH + std::time::Duration::new(1_796_166_000, 250_000_001),
                wait: true,
            },
            Request::ActivateAt {
                name: "8 at=1".into(),
                at: std::time::UNIX_EPOCH + std::time::Duration::from_secs(5),
                wait: false,
            },
            Request::Cancel,
            Request::RollbackAt {
                to: None,
                at: std::time::UNIX_EPOCH + std::time::Duration::from_secs(5),
                wait: true,
            },
            Request::RollbackAt {
                to: Some("7 at=1".into()),
                at: std::time::UNIX_EPOCH + std::time::Duration::from_secs(5),
                wait: false,
            },
        ] {
            assert_eq!(parse_request(req.to_line().as_bytes()), Ok(req));
        }
        assert_eq!(parse_request(b"ping\r"), Ok(Request::Ping));
    }

    #[test]
    fn refuses_malformed_requests() {
        for bad in [
            &b""[..],
            b"activate",
            b"activate ",
            b"activate ..",
            b"activate a/b",
            b"activate .",
            b"rollback now",
            b"rollback to=",
            b"rollback to=..",
            b"rollback to=1 now",
            b"activate 1 drain=x",
            b"activate 1 drain=999999999",
            b"activate 1 2",
            b"prune",
            b"prune 0",
            b"prune -1",
            b"prune 3 no",
            b"status yaml",
            b"check now",
            b"metrics json",
            b"php-sync 3",
            b"\xff\xfe",
            b"DROP TABLE",
            b"activate 4%2",
            b"activate 4%zz",
            b"activate %ff",
            b"activate a%0Ab",
            b"activate a%2Fb",
            b"activate %2E%2E",
            b"prepare",
            b"prepare ..",
            b"cancel now",
            b"activate 1 at=",
            b"activate 1 at=soon",
            b"activate 1 at=1.5 later",
            b"activate 1 at=1.5 drain=3",
            b"rollback at=x",
            b"rollback to=.. at=1.0",
            b"rollback at=1.0 drain=3",
            b"rollback drain=3 at=1.0",
        ] {
            assert!(parse_request(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn names_with_spaces_and_escapes_are_carried_exactly() {
        assert_eq!(encode_name("43"), "43");
        assert_eq!(encode_name("4 drain=0"), "4%20drain=0");
        assert_eq!(encode_name("ünï"), "ünï");
        assert_eq!(encode_name("a%b\tc"), "a%25b%09c");
        assert_eq!(
            parse_request(b"activate 4 drain=0"),
            Ok(Request::Activate {
                name: "4".into(),
                drain: Some(0)
            })
        );
        assert_eq!(
            parse_request(b"activate 4%20drain=0"),
            Ok(Request::Activate {
                name: "4 drain=0".into(),
                drain: None
            })
        );
        assert_eq!(decode_name("%c3%BC"), Ok("ü".into()));
    }

    #[test]
    fn responses_round_trip() {
        assert_eq!(
            parse_response(ok_response("a\nb").as_bytes()),
            Ok("a\nb\n".into())
        );
        assert_eq!(
            parse_response(error_response("bad\nthing").as_bytes()),
            Err(Failure::Error("bad thing".into()))
        );
        assert_eq!(
            parse_response(partial_response("hook failed").as_bytes()),
            Err(Failure::Partial("hook failed".into()))
        );
        assert!(parse_response(b"").is_err());
        assert!(parse_response(b"HTTP/1.1 200").is_err());
    }
}
