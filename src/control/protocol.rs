//! The control protocol: one request line, one response, then the server closes.
//!
//! Requests: `activate NAME`, `rollback`, `status [json]`, `list [json]`, `ping`.
//! Responses: `ok` and a newline, then the body; or one line `error: MESSAGE`.

use crate::names::validate_release_name;

/// Longest request line accepted, newline included. Anything longer is refused unread.
pub const MAX_REQUEST: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Activate(String),
    Rollback,
    Status { json: bool },
    List { json: bool },
    Ping,
}

impl Request {
    /// The wire form, without the newline.
    pub fn to_line(&self) -> String {
        match self {
            Request::Activate(name) => format!("activate {name}"),
            Request::Rollback => "rollback".into(),
            Request::Status { json } => format!("status{}", if *json { " json" } else { "" }),
            Request::List { json } => format!("list{}", if *json { " json" } else { "" }),
            Request::Ping => "ping".into(),
        }
    }
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
            let name = arg.ok_or("activate needs a release name")?;
            validate_release_name(name)?;
            Ok(Request::Activate(name.to_string()))
        }
        "rollback" if arg.is_none() => Ok(Request::Rollback),
        "status" => Ok(Request::Status {
            json: json_flag(arg)?,
        }),
        "list" => Ok(Request::List {
            json: json_flag(arg)?,
        }),
        "ping" if arg.is_none() => Ok(Request::Ping),
        "" => Err("empty request".into()),
        _ => Err(format!(
            "unknown request {:?} (expected activate, rollback, status, list or ping)",
            truncate(line, 60)
        )),
    }
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

/// Splits a response into the body (`Ok`) or the error message (`Err`).
///
/// # Errors
/// The server's error message, or a description of a malformed response.
pub fn parse_response(raw: &[u8]) -> Result<String, String> {
    let text = String::from_utf8_lossy(raw);
    if let Some(body) = text.strip_prefix("ok\n") {
        return Ok(body.to_string());
    }
    if let Some(msg) = text.strip_prefix("error: ") {
        return Err(msg.trim_end().to_string());
    }
    if text.is_empty() {
        return Err("the daemon closed the connection without answering".into());
    }
    Err(format!(
        "malformed response from the daemon: {:?}",
        truncate(&text, 80)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_request() {
        for req in [
            Request::Activate("12".into()),
            Request::Rollback,
            Request::Status { json: false },
            Request::Status { json: true },
            Request::List { json: true },
            Request::Ping,
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
            b"status yaml",
            b"\xff\xfe",
            b"DROP TABLE",
        ] {
            assert!(parse_request(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn responses_round_trip() {
        assert_eq!(
            parse_response(ok_response("a\nb").as_bytes()),
            Ok("a\nb\n".into())
        );
        assert_eq!(
            parse_response(error_response("bad\nthing").as_bytes()),
            Err("bad thing".into())
        );
        assert!(parse_response(b"").is_err());
        assert!(parse_response(b"HTTP/1.1 200").is_err());
    }
}
