//! The JSON and time formats of `status --json` and `list --json`, written by hand (a dozen
//! fields do not justify a serialisation framework): string literals, UTC times, and an
//! object writer that pairs each name with its value, in the order written. A bottom-level
//! module: it uses nothing of the crate.

use std::fmt::{Display, Write};
use std::time::{SystemTime, UNIX_EPOCH};

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

/// Seconds since the Unix epoch (negative before it).
pub fn unix_secs(t: SystemTime) -> i64 {
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

/// Milliseconds since the Unix epoch (negative before it): sub-second times for monitoring.
pub fn unix_millis(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_millis() as i64,
        Err(e) => -(e.duration().as_millis() as i64),
    }
}

/// `t` as `YYYY-MM-DDTHH:MM:SS.mmmZ` (UTC, milliseconds).
pub fn iso8601_millis(t: SystemTime) -> String {
    let ms = unix_millis(t);
    let whole = UNIX_EPOCH + std::time::Duration::from_secs(ms.div_euclid(1000).max(0) as u64);
    let base = iso8601(whole);
    format!("{}.{:03}Z", &base[..base.len() - 1], ms.rem_euclid(1000))
}

/// A JSON array of already-written values.
pub fn array<I: IntoIterator<Item = String>>(items: I) -> String {
    let items: Vec<String> = items.into_iter().collect();
    format!("[{}]", items.join(","))
}

/// A JSON array of strings.
pub fn str_array(items: &[String]) -> String {
    array(items.iter().map(|s| json_str(s)))
}

/// A JSON object, one `"name":value` pair per call, in call order.
#[derive(Debug)]
pub struct Object(String);

impl Object {
    pub fn new() -> Object {
        Object(String::from("{"))
    }

    /// `name` with an already-written JSON value (an array, an object, `null`).
    pub fn raw(mut self, name: &str, value: &str) -> Object {
        if self.0.len() > 1 {
            self.0.push(',');
        }
        self.0.push_str(&json_str(name));
        self.0.push(':');
        self.0.push_str(value);
        self
    }

    /// A number or a boolean.
    pub fn num(self, name: &str, value: impl Display) -> Object {
        let value = value.to_string();
        self.raw(name, &value)
    }

    pub fn str(self, name: &str, value: &str) -> Object {
        self.raw(name, &json_str(value))
    }

    /// A string, or `null`.
    pub fn opt_str(self, name: &str, value: Option<&str>) -> Object {
        match value {
            Some(v) => self.str(name, v),
            None => self.raw(name, "null"),
        }
    }

    pub fn finish(mut self) -> String {
        self.0.push('}');
        self.0
    }
}

impl Default for Object {
    fn default() -> Object {
        Object::new()
    }
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
    fn sub_second_times() {
        let t = UNIX_EPOCH + Duration::from_millis(1_795_446_000_042);
        assert_eq!(unix_millis(t), 1_795_446_000_042);
        assert_eq!(iso8601_millis(t), "2026-11-23T15:00:00.042Z");
    }

    #[test]
    fn json_escapes() {
        assert_eq!(json_str("a\"b\\c\nd\u{1}"), "\"a\\\"b\\\\c\\nd\\u0001\"");
    }

    #[test]
    fn objects_pair_names_with_values_in_order() {
        let o = Object::new()
            .str("a", "x")
            .num("n", 3)
            .num("b", true)
            .opt_str("none", None)
            .raw("list", &str_array(&["1".into()]))
            .finish();
        assert_eq!(
            o,
            "{\"a\":\"x\",\"n\":3,\"b\":true,\"none\":null,\"list\":[\"1\"]}"
        );
        assert_eq!(Object::new().finish(), "{}");
    }
}
