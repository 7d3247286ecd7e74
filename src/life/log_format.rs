//! How the daemon's log lines look. Under systemd, stderr is the journal: each line then
//! starts with its syslog priority (`<3>` error, `<4>` warning, `<6>` info, `<7>` debug, as
//! sd-daemon(3) describes), so `journalctl -p warning` finds warnings, and carries no
//! timestamp of its own (the journal keeps one). Anywhere else (the mount helper's log file, a
//! terminal) each line starts with an RFC 3339 time in milliseconds, so two events within a
//! second (a switch and the invalidation it caused) keep their order and distance.

use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;

/// Sets up the `log` crate for the daemon; `default_filter` applies when `RUST_LOG` is unset.
pub fn init(default_filter: &str) {
    let mut builder =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default_filter));
    if stderr_is_journal() {
        builder.format(|out, record| {
            let line = journal_line(record.level(), record.target(), &record.args().to_string());
            writeln!(out, "{line}")
        });
    } else {
        builder.format_timestamp_millis();
    }
    builder.init();
}

/// Whether stderr is the stream systemd connected to the journal: `JOURNAL_STREAM` names it
/// (`DEV:INODE`), and it must still be our stderr. A daemon the mount helper started may
/// inherit the variable while its stderr is a log file, which wants timestamps instead.
fn stderr_is_journal() -> bool {
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    // fstat of a duplicate of fd 2: no path, nothing to follow.
    let stat = std::io::stderr()
        .as_fd()
        .try_clone_to_owned()
        .map(std::fs::File::from)
        .and_then(|f| f.metadata());
    match (stream.to_str(), stat) {
        (Some(stream), Ok(m)) => names_stream(stream, m.dev(), m.ino()),
        _ => false,
    }
}

/// Whether a `JOURNAL_STREAM` value (`DEV:INODE`, both decimal) names the file `dev`/`ino`.
fn names_stream(journal_stream: &str, dev: u64, ino: u64) -> bool {
    let Some((d, i)) = journal_stream.split_once(':') else {
        return false;
    };
    d.parse::<u64>() == Ok(dev) && i.parse::<u64>() == Ok(ino)
}

/// The syslog priority prefix for a level, as journald reads it at the start of a line.
fn priority(level: log::Level) -> &'static str {
    match level {
        log::Level::Error => "<3>",
        log::Level::Warn => "<4>",
        log::Level::Info => "<6>",
        log::Level::Debug | log::Level::Trace => "<7>",
    }
}

/// One record for the journal: every line gets the prefix, since journald makes an entry of
/// each line (a hook's multi-line output must not turn into info entries after line one).
fn journal_line(level: log::Level, target: &str, message: &str) -> String {
    let prefix = priority(level);
    let body = format!("{target}: {message}");
    body.lines()
        .map(|l| format!("{prefix}{l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use log::Level;

    #[test]
    fn journal_stream_must_name_this_file() {
        assert!(names_stream("64768:1234", 64768, 1234));
        assert!(!names_stream("64768:1234", 64768, 1235));
        assert!(!names_stream("64769:1234", 64768, 1234));
        assert!(!names_stream("64768", 64768, 1234));
        assert!(!names_stream("x:1234", 64768, 1234));
        assert!(!names_stream("", 0, 0));
    }

    #[test]
    fn priorities_are_sd_daemon_levels() {
        assert_eq!(priority(Level::Error), "<3>");
        assert_eq!(priority(Level::Warn), "<4>");
        assert_eq!(priority(Level::Info), "<6>");
        assert_eq!(priority(Level::Debug), "<7>");
        assert_eq!(priority(Level::Trace), "<7>");
    }

    #[test]
    fn every_line_of_a_record_carries_its_priority() {
        assert_eq!(
            journal_line(Level::Warn, "switchfs::hooks", "hook failed:\nline two"),
            "<4>switchfs::hooks: hook failed:\n<4>line two"
        );
        assert_eq!(journal_line(Level::Info, "fuser", "x"), "<6>fuser: x");
    }
}
