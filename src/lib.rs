//! switchfs: a FUSE docroot that shows one release directory and switches between releases
//! atomically, so web servers and PHP caches that key on paths never see a stale release.
//!
//! Layout (docs/architecture.md draws it): `core` holds the filesystem logic (release pointer,
//! lookups, reads) and is tested without a mount; `switch` is the switch, step by step;
//! `fuse_adapter` is the thin fuser binding; `control` is the socket protocol; `daemon` wires
//! them together. Modules are `pub` only where a binary, a test or the bench uses them.
//!
//! Every `unsafe` block is in `sys` and says why it is sound (`// SAFETY:`); the `[lints]`
//! table of Cargo.toml makes clippy enforce it for every target.

pub(crate) mod attr;
pub(crate) mod caller;
pub mod control;
pub(crate) mod core;
pub mod daemon;
pub(crate) mod docroot;
pub mod docs;
pub(crate) mod errno;
pub mod fastcgi;
pub(crate) mod fds;
pub(crate) mod fuse_adapter;
pub(crate) mod handles;
pub(crate) mod history;
pub(crate) mod hooks;
pub(crate) mod inodes;
pub(crate) mod invalidate;
pub mod json;
pub mod keeper;
pub(crate) mod links;
pub mod mount_helper;
pub mod mounts;
pub(crate) mod mtimes;
pub mod names;
pub(crate) mod nodelog;
pub mod opcache;
pub(crate) mod paths;
pub(crate) mod portals;
pub(crate) mod procscan;
pub(crate) mod prune;
pub(crate) mod release;
pub mod state;
pub(crate) mod switch;
pub(crate) mod switcher;
pub mod sys;
pub(crate) mod systemd;
pub(crate) mod usage;

#[cfg(test)]
mod testutil;

/// Parses the command line like `P::parse`, but reports a usage error as one line on stderr
/// (`PROG: error text`) with exit code 2, so scripts and logs get one clear line. Help and
/// version requests print as usual.
pub fn parse_args_or_exit<P: clap::Parser>(prog: &str) -> P {
    match P::try_parse() {
        Ok(parsed) => parsed,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(
                e.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) {
                e.exit();
            }
            eprintln!("{prog}: {}", usage_error_line(prog, &e));
            std::process::exit(2);
        }
    }
}

/// One line for a clap usage error. Clap's first line alone would say "the following
/// required arguments were not provided:" and name nothing, so a missing argument is named
/// here, with the subcommand it belongs to.
fn usage_error_line(prog: &str, e: &clap::Error) -> String {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    // Usage reads "Usage: PROG [SUBCOMMAND] [OPTIONS] <ARG>...": the subcommand is the word
    // after PROG when it is neither an option nor an argument placeholder.
    let usage = match e.get(ContextKind::Usage) {
        Some(ContextValue::StyledStr(s)) => s.to_string(),
        _ => String::new(),
    };
    let sub = usage
        .split_whitespace()
        .skip_while(|w| !w.ends_with(prog))
        .nth(1)
        .filter(|w| !w.starts_with(['[', '<', '-']));
    let help = match sub {
        Some(sub) => format!("{prog} {sub} --help"),
        None => format!("{prog} --help"),
    };
    if e.kind() == ErrorKind::MissingRequiredArgument
        && let Some(ContextValue::Strings(missing)) = e.get(ContextKind::InvalidArg)
    {
        let noun = if missing.len() == 1 {
            "argument"
        } else {
            "arguments"
        };
        let whom = sub.map(|s| format!(" for '{s}'")).unwrap_or_default();
        return format!(
            "missing required {noun} {}{whom} (see {help})",
            missing.join(", ")
        );
    }
    let text = e.to_string();
    let first = text.lines().next().unwrap_or("invalid arguments");
    let first = first.strip_prefix("error: ").unwrap_or(first);
    format!("{first} (see {help})")
}
