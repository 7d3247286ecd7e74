//! `switchfs --config FILE`: options from a file, one `key = value` a line, for what a
//! command line in a systemd unit cannot carry. systemd splits `$SWITCHFS_OPTIONS` at
//! spaces, so `--on-activate "purge-cdn --site example"` arrives as three words; a line
//! `on-activate = purge-cdn --site example` arrives as one value, verbatim.
//!
//! Format: blank lines and lines starting with `#` are skipped; `key = value` is `--key
//! value` (the value is the rest of the line, trimmed, no quoting: it may hold `=`, quotes
//! and `#`); a lone `key` is the flag `--key`. Keys are the daemon's long options; each
//! line becomes arguments at the place `--config FILE` stood, so repeatable options
//! (`on-activate`, `php-fpm`) keep their order and the rest cannot be given twice.

use std::ffi::OsString;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// The longest config file read: a few options, never a log someone pointed it at.
const MAX_BYTES: u64 = 64 * 1024;

/// Replaces each `--config FILE` / `--config=FILE` before a `--` in `args` by the options
/// FILE holds. `known` are the long option names a key may be (without `--`).
pub fn expand(args: Vec<OsString>, known: &[&str]) -> Result<Vec<OsString>, String> {
    let mut out = Vec::with_capacity(args.len());
    let mut it = args.into_iter();
    while let Some(arg) = it.next() {
        if arg == "--" {
            out.push(arg);
            out.extend(it);
            break;
        }
        let file = if arg == "--config" {
            it.next()
                .ok_or("--config: a value is required (a FILE of key = value lines)")?
        } else if let Some(v) = arg.to_str().and_then(|a| a.strip_prefix("--config=")) {
            OsString::from(v)
        } else {
            out.push(arg);
            continue;
        };
        let path = Path::new(&file);
        let text = read_trusted(path).map_err(|e| format!("--config {}: {e}", path.display()))?;
        let parsed =
            parse(&text, known).map_err(|e| format!("--config {}: {e}", path.display()))?;
        out.extend(parsed.into_iter().map(OsString::from));
    }
    Ok(out)
}

/// Reads the file, refusing one that someone other than us (or root) owns or may write:
/// its `on-activate` lines run as the daemon's user, root in production.
fn read_trusted(path: &Path) -> Result<String, String> {
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let meta = file.metadata().map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    let me = crate::sys::euid();
    if meta.uid() != me && meta.uid() != 0 {
        return Err(format!(
            "owned by uid {}, not by root or us: its commands would run as us",
            meta.uid()
        ));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(format!(
            "writable by group or others (mode {:o}): its commands would run as us",
            meta.mode() & 0o7777
        ));
    }
    let mut text = String::new();
    file.take(MAX_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| e.to_string())?;
    if text.len() as u64 > MAX_BYTES {
        return Err(format!("longer than {MAX_BYTES} bytes"));
    }
    Ok(text)
}

/// The arguments `text` stands for; an error names the line.
fn parse(text: &str, known: &[&str]) -> Result<Vec<String>, String> {
    let mut args = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (key, value) = match line.split_once('=') {
            Some((k, v)) => (k.trim(), Some(v.trim())),
            None => (line, None),
        };
        let n = n + 1;
        if key == "config" {
            return Err(format!("line {n}: a config file cannot name another one"));
        }
        if !known.contains(&key) {
            return Err(format!(
                "line {n}: unknown option '{key}' (see switchfs --help)"
            ));
        }
        args.push(format!("--{key}"));
        match value {
            Some("") => return Err(format!("line {n}: '{key} =' has no value")),
            Some(v) => args.push(v.to_string()),
            None => {}
        }
    }
    Ok(args)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KNOWN: &[&str] = &["on-activate", "track-opens", "initial", "releases"];

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn a_value_is_the_rest_of_the_line_verbatim() {
        let text = "# hooks\n\non-activate = purge-cdn --site \"ex ample\" # not a comment\n\
                    on-activate=printf '%s\\n' a=b\n  track-opens  \n";
        assert_eq!(
            parse(text, KNOWN).unwrap(),
            [
                "--on-activate",
                "purge-cdn --site \"ex ample\" # not a comment",
                "--on-activate",
                "printf '%s\\n' a=b",
                "--track-opens",
            ]
        );
    }

    #[test]
    fn bad_lines_are_refused_with_their_number() {
        assert_eq!(
            parse("initial = 1\nbogus = 2\n", KNOWN).unwrap_err(),
            "line 2: unknown option 'bogus' (see switchfs --help)"
        );
        assert_eq!(
            parse("initial =\n", KNOWN).unwrap_err(),
            "line 1: 'initial =' has no value"
        );
        assert!(
            parse("config = /x\n", KNOWN)
                .unwrap_err()
                .contains("cannot name another")
        );
        assert!(
            parse("--initial = 1\n", KNOWN)
                .unwrap_err()
                .contains("unknown option '--initial'")
        );
    }

    fn config_file(dir: &Path, text: &str, mode: u32) -> OsString {
        use std::os::unix::fs::PermissionsExt;
        let p = dir.join("site.options");
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p.into_os_string()
    }

    #[test]
    fn the_file_takes_the_place_of_config_and_stops_at_double_dash() {
        let dir = crate::testutil::TempDir::new("config-expand");
        let f = config_file(dir.path(), "initial = 2\non-activate = a b c\n", 0o600);
        let mut eq = OsString::from("--config=");
        eq.push(&f);
        let args = os(&["switchfs", "--releases", "/r"]);
        let args = [
            args,
            vec!["--config".into(), f.clone()],
            vec![eq],
            os(&["--", "--config", "x"]),
        ]
        .concat();
        let want = os(&[
            "switchfs",
            "--releases",
            "/r",
            "--initial",
            "2",
            "--on-activate",
            "a b c",
            "--initial",
            "2",
            "--on-activate",
            "a b c",
            "--",
            "--config",
            "x",
        ]);
        assert_eq!(expand(args, KNOWN).unwrap(), want);
    }

    #[test]
    fn a_file_others_may_write_or_a_missing_one_is_refused() {
        let dir = crate::testutil::TempDir::new("config-trust");
        let f = config_file(dir.path(), "initial = 2\n", 0o666);
        let err = expand(
            os(&["switchfs", "--config"])
                .into_iter()
                .chain([f])
                .collect(),
            KNOWN,
        )
        .unwrap_err();
        assert!(
            err.contains("writable by group or others (mode 666)"),
            "{err}"
        );
        let err = expand(os(&["switchfs", "--config", "/nonexistent/x"]), KNOWN).unwrap_err();
        assert_eq!(
            err,
            "--config /nonexistent/x: No such file or directory (os error 2)"
        );
        let err = expand(os(&["switchfs", "--config"]), KNOWN).unwrap_err();
        assert!(err.starts_with("--config: a value is required"), "{err}");
    }
}
