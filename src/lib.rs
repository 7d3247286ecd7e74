//! switchfs: a FUSE docroot that shows one release directory and switches between releases
//! atomically, so web servers and PHP caches that key on paths never see a stale release.
//!
//! Layout (docs/architecture.md draws it), one folder per concern: `switch` is the switch
//! (`Switcher`, the `Docroot` trait, state, history, releases, prune, hooks); `fs` is the FUSE
//! data plane (`core` and its parts, `adapter` the thin fuser binding); `php` tells PHP pools
//! what changed; `control` is the socket protocol; `life` is the process's life (`daemon`
//! wires everything together, `keeper` holds the mount). Modules are `pub` only where a
//! binary, a test or the bench uses them.
//!
//! Every `unsafe` block is in `sys` and says why it is sound (`// SAFETY:`); the `[lints]`
//! table of Cargo.toml makes clippy enforce it for every target.

pub mod bind;
pub mod control;
pub mod docs;
pub(crate) mod errno;
pub(crate) mod fs;
pub mod json;
pub(crate) mod life;
pub(crate) mod php;
pub(crate) mod switch;
pub mod sys;
pub mod when;

// The public paths binaries, tests and the bench use, whatever folder a module lives in.
pub use life::{
    config_file, daemon, keeper, log_format, mount_helper, mounts, strict_modes, systemd,
};
pub use php::{fastcgi, opcache};
pub use switch::{names, state};

#[cfg(test)]
mod testutil;

/// Parses the command line like `P::parse`, but reports a usage error as one line on stderr
/// (`PROG: error text`) with exit code 2, so scripts and logs get one clear line. Help and
/// version requests print as usual.
pub fn parse_args_or_exit<P: clap::Parser>(prog: &str) -> P {
    parse_from_or_exit(prog, std::env::args_os())
}

/// [`parse_args_or_exit`] for arguments that are not (only) the process's own, e.g. after
/// `--config FILE` was expanded.
pub fn parse_from_or_exit<P: clap::Parser>(
    prog: &str,
    args: impl IntoIterator<Item = std::ffi::OsString>,
) -> P {
    match P::try_parse_from(args) {
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
