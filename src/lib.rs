//! switchfs: a FUSE docroot that shows one release directory and switches between releases
//! atomically, so web servers and PHP caches that key on paths never see a stale release.
//!
//! Layout: `core` holds the logic (release pointer, lookups, switch) and is tested without a
//! mount; `fuse_adapter` is the thin fuser binding; `control` is the socket protocol;
//! `daemon` wires them together.

pub mod attr;
pub mod caller;
pub mod control;
pub mod core;
pub mod daemon;
pub mod errno;
pub mod fastcgi;
pub mod fds;
pub mod fuse_adapter;
pub mod handles;
pub mod hooks;
pub mod inodes;
pub mod invalidate;
pub mod links;
pub mod mtimes;
pub mod names;
pub mod opcache;
pub mod paths;
pub mod procscan;
pub mod release;
pub mod state;
pub mod sys;

#[cfg(test)]
mod core_tests;
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
            let text = e.to_string();
            let first = text.lines().next().unwrap_or("invalid arguments");
            let first = first.strip_prefix("error: ").unwrap_or(first);
            eprintln!("{prog}: {first} (see {prog} --help)");
            std::process::exit(2);
        }
    }
}
