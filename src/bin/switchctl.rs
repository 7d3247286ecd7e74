//! `switchctl`: tell a running switchfs which release to serve, and ask what it serves.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use switchfs::control::client;
use switchfs::control::protocol::Request;
use switchfs::names::validate_release_name;

/// Control a running switchfs. Without --mount or --control, talks to the one switchfs
/// mounted on this host.
#[derive(Parser, Debug)]
#[command(version, about)]
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
    Activate {
        #[arg(value_name = "NAME", value_parser = release_name)]
        name: String,
    },
    /// Serve the previous release again.
    Rollback,
    /// Show the active release, since when, the previous one and what uses each release.
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
}

fn release_name(s: &str) -> Result<String, String> {
    validate_release_name(s).map(|()| s.to_string())
}

fn run(cli: Cli) -> Result<String, String> {
    let socket = match (&cli.control, &cli.mount) {
        (Some(socket), _) => socket.clone(),
        (None, Some(mount)) => client::socket_for_mount(mount)?,
        (None, None) => client::discover()?,
    };
    let request = match cli.command {
        Command::Activate { name } => Request::Activate(name),
        Command::Rollback => Request::Rollback,
        Command::Status { json } => Request::Status { json },
        Command::List { json } => Request::List { json },
    };
    client::request(&socket, &request, Duration::from_secs(cli.timeout))
}

fn main() -> ExitCode {
    let cli: Cli = switchfs::parse_args_or_exit("switchctl");
    match run(cli) {
        Ok(body) => {
            print!("{body}");
            ExitCode::SUCCESS
        }
        Err(msg) => {
            eprintln!("switchctl: {msg}");
            ExitCode::FAILURE
        }
    }
}
