//! The protocol with the shipped script (`dist/opcache-invalidate.php`): what its two steps
//! answer and how those answers read. Both answer a 200 whose body starts with `MAGIC`;
//! `list` then gives the scripts OPcache holds, `invalidate` the counts of what it dropped.
//! Parsing never trusts the pool: a malformed answer is one error line, and `parse_list`
//! takes at most as many entries as asked.

/// Paths per `invalidate` request, so a body stays far below PHP's `post_max_size` (8 MiB).
pub(super) const PATHS_PER_REQUEST: usize = 2_000;

/// The protocol line both steps answer with first.
pub(super) const MAGIC: &[u8] = b"switchfs-opcache 1\n";

/// The `list` answer: `validate_timestamps N`, `scripts`, then `MTIME PATH\0` entries
/// (`-` for no recorded mtime).
/// One cached script: the mtime OPcache recorded for it (if any) and its full path.
pub(super) type Cached<'a> = (Option<i64>, &'a [u8]);

/// At most `cap` entries are taken; the flag tells whether there were more.
pub(super) fn parse_list(body: &[u8], cap: usize) -> Result<(Vec<Cached<'_>>, bool), String> {
    let bad = || "malformed answer to step list".to_string();
    let start = find(body, b"scripts\n").ok_or_else(bad)? + b"scripts\n".len();
    let mut entries = body[start..].split(|&b| b == 0).filter(|e| !e.is_empty());
    let taken = entries
        .by_ref()
        .take(cap)
        .map(|entry| {
            let sp = entry.iter().position(|&b| b == b' ').ok_or_else(bad)?;
            let ts = match &entry[..sp] {
                b"-" => None,
                t => Some(
                    std::str::from_utf8(t)
                        .ok()
                        .and_then(|t| t.parse::<i64>().ok())
                        .ok_or_else(bad)?,
                ),
            };
            Ok((ts, &entry[sp + 1..]))
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok((taken, entries.next().is_some()))
}

/// The `invalidate` answer: `(invalidated, gone)`.
pub(super) fn parse_counts(body: &[u8]) -> Result<(usize, usize), String> {
    let text = String::from_utf8_lossy(body);
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse::<usize>().ok())
            .ok_or_else(|| format!("malformed answer to step invalidate (no {name})"))
    };
    Ok((field("invalidated ")?, field("gone ")?))
}

pub(super) fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

pub(super) fn first_line(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let line = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
    let line: String = line.chars().filter(|c| !c.is_control()).take(200).collect();
    if line.is_empty() {
        "(empty answer)".into()
    } else {
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_answers() {
        let body = b"validate_timestamps 1\nscripts\n17 /m/a.php\0- /m/b c.php\0";
        let got = parse_list(body, 10).unwrap();
        assert_eq!(
            got,
            (
                vec![(Some(17), &b"/m/a.php"[..]), (None, &b"/m/b c.php"[..])],
                false
            )
        );
        assert_eq!(
            parse_list(body, 1).unwrap(),
            (vec![(Some(17), &b"/m/a.php"[..])], true),
            "capped, and said so"
        );
        assert!(parse_list(b"garbage", 10).is_err());
        assert!(parse_list(b"scripts\nx /m/a.php\0", 10).is_err());
        assert_eq!(
            parse_counts(b"invalidated 3\nnot_cached 1\ngone 2\n").unwrap(),
            (3, 2)
        );
        assert!(parse_counts(b"invalidated x\n").is_err());
    }
}
