//! `switchctl`: tell a running switchfs which release to serve, and ask what it serves.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use clap::{Parser, Subcommand};
use switchfs::control::client;
use switchfs::control::health::Level;
use switchfs::control::protocol::{Failure, Request};
use switchfs::names::validate_release_name;
use switchfs::when;

/// Control a running switchfs. Without --mount or --control, talks to the one switchfs
/// mounted on this host.
#[derive(Parser, Debug)]
#[command(name = "switchctl", version, about)]
struct Cli {
    /// The switchfs mount point to control.
    #[arg(
        long,
        value_name = "MOUNTPOINT",
        global = true,
        conflicts_with = "control"
    )]
    mount: Option<PathBuf>,

    /// The control socket of the switchfs to control.
    #[arg(long, value_name = "SOCKET", global = true)]
    control: Option<PathBuf>,

    /// Seconds to wait for the daemon's answer.
    #[arg(long, value_name = "SECS", default_value_t = 60, global = true)]
    timeout: u64,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve release NAME. Returns once every new lookup under the mount sees it.
    /// Exit 0 when switched or NAME was already active, 1 when refused (nothing changed,
    /// with the reason), 3 when switched but an --on-activate hook failed, OPcache could not
    /// be told or the previous release did not drain in time.
    Activate {
        #[arg(value_name = "NAME", value_parser = release_name)]
        name: String,
        /// Then wait until the previous release is no longer used (no open file, working
        /// directory or cached inode), at most SECS seconds [default: 60].
        #[arg(long, value_name = "SECS", num_args = 0..=1, default_missing_value = "60",
              value_parser = clap::value_parser!(u32).range(0..=86_400), conflicts_with = "at")]
        wait_drain: Option<u32>,
        /// Switch when the host clock reaches TIME: RFC 3339 UTC (2026-12-01T23:00:00.250Z)
        /// or +SECS from now (fractions allowed; switchctl turns it into an instant, so every
        /// host of a fleet can be given the same one). Checked at once like prepare; at most
        /// an hour ahead. Waits and prints when it switched, to the microsecond; a pending
        /// switch survives a daemon restart or upgrade (status shows it, cancel drops it).
        #[arg(long, value_name = "TIME")]
        at: Option<String>,
        /// With --at: return once the switch is scheduled instead of when it happened.
        #[arg(long, requires = "at")]
        no_wait: bool,
    },
    /// Check that `activate NAME` would succeed now, changing nothing: the release (opened
    /// without following links), no switch pending, each PHP pool reachable and served by
    /// its owner (and how many of its cached scripts the switch would invalidate).
    /// Exit 0 if it would, 1 with the reason if not.
    Prepare {
        #[arg(value_name = "NAME", value_parser = release_name)]
        name: String,
    },
    /// Drop the pending switch (activate --at). Exit 1 when none is pending.
    Cancel,
    /// Serve the release activated before this one; each rollback steps one further back
    /// and never returns to a release rolled back from (until it is activated again).
    Rollback {
        /// Roll back to NAME (a release of the activation history) instead.
        #[arg(long, value_name = "NAME", value_parser = release_name)]
        to: Option<String>,
        /// As for activate.
        #[arg(long, value_name = "SECS", num_args = 0..=1, default_missing_value = "60",
              value_parser = clap::value_parser!(u32).range(0..=86_400), conflicts_with = "at")]
        wait_drain: Option<u32>,
        /// Roll back when the host clock reaches TIME, as activate --at (a fleet rolls back
        /// at one instant); the target is checked now and again at TIME.
        #[arg(long, value_name = "TIME")]
        at: Option<String>,
        /// With --at: return once the rollback is scheduled.
        #[arg(long, requires = "at")]
        no_wait: bool,
    },
    /// Delete the oldest releases beyond the newest KEEP, never the active or previous one
    /// nor one still in use. A dry run unless --yes.
    Prune {
        /// How many of the newest releases to keep.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
        keep: u32,
        /// Really delete.
        #[arg(long)]
        yes: bool,
    },
    /// Show the active release, since when, the previous one, the activation history and
    /// what uses each release.
    Status {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// List the releases, marking the active and previous ones.
    List {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Upgrade the daemon to the binary now installed at the path it was started with
    /// (SIGHUP to its main pid) and wait, at most --timeout seconds, for the outcome. The
    /// new binary takes over only once it proved itself. Exit 0 when it serves, 1 when it
    /// failed (the running version goes on serving; the cause is printed). For the unit's
    /// ExecReload.
    Upgrade {
        /// Refuse unless this is the daemon's main pid (systemd's $MAINPID).
        #[arg(long, value_name = "PID")]
        pid: Option<i32>,
    },
    /// One line for a monitoring system (Nagios, Icinga: a monitoring plugin), e.g.
    /// `SWITCHFS OK - serving 44 since ...`. Exit 0 OK, 1 WARNING (no release active, the
    /// last switch's hook failed), 2 CRITICAL (a PHP pool's OPcache invalidation failed,
    /// the active release's directory was deleted, a server restart loop), 3 UNKNOWN (the
    /// daemon cannot be reached).
    Check,
    /// Prometheus text exposition of the status (for node_exporter's textfile collector).
    /// When the daemon cannot be reached, prints `switchfs_up 0` and exits 1.
    Metrics,
    /// Run the OPcache invalidation of every PHP pool again for the active release (after
    /// a pool failed: `check` says CRITICAL). Exit 0 when every pool is in step, 3 when one
    /// still fails (as `activate`), 1 when refused.
    PhpSync,
}

fn release_name(s: &str) -> Result<String, String> {
    validate_release_name(s).map(|()| s.to_string())
}

/// `check`'s exit code and line: the daemon's verdict, or UNKNOWN when it cannot answer.
fn check(cli: Cli) -> ExitCode {
    match run(cli) {
        Ok(body) => {
            let line = body.lines().next().unwrap_or("");
            let level = Level::of_line(line).unwrap_or(Level::Unknown);
            if level == Level::Unknown {
                println!("SWITCHFS UNKNOWN - unexpected answer from the daemon: {line}");
            } else {
                println!("{line}");
            }
            ExitCode::from(level as u8)
        }
        Err(f) => {
            println!("SWITCHFS UNKNOWN - {}", f.message());
            ExitCode::from(Level::Unknown as u8)
        }
    }
}

/// `metrics`: the exposition, or `switchfs_up 0` (a scrape must still say the daemon is
/// down) and exit 1.
fn metrics(cli: Cli) -> ExitCode {
    match run(cli) {
        Ok(body) => {
            print!("{body}");
            ExitCode::SUCCESS
        }
        Err(f) => {
            eprintln!("switchctl: {}", f.message());
            print!(
                "# HELP switchfs_up 1: the daemon answered.\n# TYPE switchfs_up gauge\n\
                 switchfs_up 0\n"
            );
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<String, Failure> {
    let socket = match (&cli.control, &cli.mount) {
        (Some(socket), _) => Ok(socket.clone()),
        (None, Some(mount)) => client::socket_for_mount(mount),
        (None, None) => client::discover(),
    }
    .map_err(Failure::Error)?;
    // A drain wait may legitimately take longer than the usual answer timeout.
    let drain = match &cli.command {
        Command::Activate { wait_drain, .. } | Command::Rollback { wait_drain, .. } => *wait_drain,
        _ => None,
    };
    let mut timeout = cli.timeout.max(u64::from(drain.unwrap_or(0)) + 30);
    if let Command::Upgrade { pid } = cli.command {
        let wait = Duration::from_secs(cli.timeout);
        return switchfs::control::reload::upgrade(&socket, pid, wait);
    }
    let request = match cli.command {
        Command::Activate {
            name,
            at: Some(at),
            no_wait,
            ..
        } => {
            let at = instant(&at, &mut timeout)?;
            Request::ActivateAt {
                name,
                at,
                wait: !no_wait,
            }
        }
        Command::Rollback {
            to,
            at: Some(at),
            no_wait,
            ..
        } => {
            let at = instant(&at, &mut timeout)?;
            Request::RollbackAt {
                to,
                at,
                wait: !no_wait,
            }
        }
        Command::Activate {
            name, wait_drain, ..
        } => Request::Activate {
            name,
            drain: wait_drain,
        },
        Command::Prepare { name } => Request::Prepare { name },
        Command::Cancel => Request::Cancel,
        Command::Rollback {
            wait_drain,
            to: None,
            ..
        } => Request::Rollback { drain: wait_drain },
        Command::Rollback {
            wait_drain,
            to: Some(name),
            ..
        } => Request::RollbackTo {
            name,
            drain: wait_drain,
        },
        Command::Prune { keep, yes } => Request::Prune {
            keep: keep as usize,
            apply: yes,
        },
        Command::Status { json } => Request::Status { json },
        Command::List { json } => Request::List { json },
        Command::Check => Request::Check,
        Command::Metrics => Request::Metrics,
        Command::PhpSync => Request::PhpSync,
        Command::Upgrade { .. } => unreachable!("handled above"),
    };
    client::request(&socket, &request, Duration::from_secs(timeout))
}

/// `--at TIME` as an instant, checked here too (the daemon checks it again against its own
/// clock); raises `timeout` so the answer, which comes after the instant, is waited for.
fn instant(arg: &str, timeout: &mut u64) -> Result<SystemTime, Failure> {
    let now = SystemTime::now();
    let at = when::parse_at(arg, now).map_err(Failure::Error)?;
    when::check_window(at, now).map_err(|e| Failure::Error(format!("refused: {e}")))?;
    let ahead = at.duration_since(now).unwrap_or_default().as_secs();
    *timeout = (*timeout).max(ahead + 60);
    Ok(at)
}

fn main() -> ExitCode {
    switchfs::docs::generate_if_asked::<Cli>("switchctl");
    let cli: Cli = switchfs::parse_args_or_exit("switchctl");
    match cli.command {
        Command::Check => return check(cli),
        Command::Metrics => return metrics(cli),
        _ => {}
    }
    match run(cli) {
        Ok(body) => {
            print!("{body}");
            ExitCode::SUCCESS
        }
        Err(Failure::Error(msg)) => {
            eprintln!("switchctl: {msg}");
            ExitCode::FAILURE
        }
        Err(Failure::Partial(msg)) => {
            eprintln!("switchctl: {msg}");
            ExitCode::from(3)
        }
    }
}
