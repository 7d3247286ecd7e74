//! `switchfs`: serve the active release of a releases directory at a fixed mount point.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use switchfs::daemon::{self, DaemonArgs};
use switchfs::names::validate_release_name;

/// Serve the active release of RELEASES at MOUNTPOINT, read-only, and switch releases
/// atomically with `switchctl activate NAME`. Runs in the foreground until SIGTERM or SIGINT,
/// then unmounts and exits 0. SIGHUP hands the live mount to the binary now installed at
/// this path (an upgrade without a failed request); a crashed server process is replaced at
/// once by the process you started, which keeps the mount.
#[derive(Parser, Debug)]
#[command(version, about, long_about)]
struct Cli {
    /// Read more options from FILE, one `key = value` a line (a long option without `--`;
    /// a lone `key` for a flag; `#` starts a comment line): a value is the rest of its line,
    /// verbatim, so `on-activate = purge-cdn --site example` keeps its arguments, which
    /// $SWITCHFS_OPTIONS in the unit cannot. Must be owned by root (or us) and writable by
    /// no one else; re-read when the daemon restarts or upgrades.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,

    /// Directory holding one subdirectory per release (e.g. /var/www/app/releases).
    #[arg(long, value_name = "DIR", value_parser = existing_dir)]
    releases: PathBuf,

    /// Where to serve the active release (e.g. /var/www/current): an existing directory,
    /// reached without symlinks, every directory above it root's and not writable by others.
    #[arg(value_name = "MOUNTPOINT")]
    mount_point: PathBuf,

    /// Release to serve when no active release was persisted yet. Without it and without
    /// persisted state, the root stays empty until `switchctl activate`: switchfs never
    /// guesses, since the newest directory may be a half-finished upload.
    #[arg(long, value_name = "NAME", value_parser = release_name)]
    initial: Option<String>,

    /// Control socket path [default: /run/switchfs/<mount>-<hash>.sock as root,
    /// $XDG_RUNTIME_DIR/switchfs/... otherwise].
    #[arg(long, value_name = "SOCKET")]
    control: Option<PathBuf>,

    /// Let members of this group switch, roll back and prune over the control socket, as
    /// root can (the deploy user's group; never the web server's).
    #[arg(long, value_name = "GROUP", value_parser = group)]
    control_group: Option<u32>,

    /// Let members of this group read `switchctl status`, `list`, `check` and `metrics` (and
    /// nothing else), e.g. for monitoring or the web server's user.
    #[arg(long, value_name = "GROUP", value_parser = group)]
    status_group: Option<u32>,

    /// File recording the active release, written atomically before each switch is
    /// acknowledged [default: /var/lib/switchfs/<mount>-<hash>.state as root,
    /// $XDG_STATE_HOME/switchfs/... otherwise].
    #[arg(long, value_name = "FILE")]
    state: Option<PathBuf>,

    /// FUSE worker threads.
    #[arg(long, value_name = "N", default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=256))]
    threads: u16,

    /// Seconds the kernel may cache names and attributes. Each switch invalidates them, so
    /// long is safe as long as files inside a live release are not edited in place.
    #[arg(long, value_name = "SECS", default_value_t = 3600, value_parser = clap::value_parser!(u32).range(0..=31_536_000))]
    cache_timeout: u32,

    /// Let the daemon see every file open and close, so `switchctl status` counts open files
    /// per release. Slower: without it the kernel opens files by itself (no round trip to
    /// the daemon) and status counts the inodes the kernel still holds instead.
    #[arg(long)]
    track_opens: bool,

    /// Enforce POSIX ACLs of the releases as the host does. Off by default: the kernel then
    /// asks the daemon for each path component's ACL on every lookup by a user who does not
    /// own the file (the web server's user), which cost 13x in PHP requests per second.
    /// Without it, file modes are enforced (default_permissions) and ACLs are not.
    #[arg(long)]
    acl: bool,

    /// Command to run (with /bin/sh -c) after each switch, with SWITCHFS_OLD_RELEASE,
    /// SWITCHFS_NEW_RELEASE, SWITCHFS_MOUNT and SWITCHFS_RELEASES set; repeatable, run in
    /// order. Its output is logged; a failure is reported by `switchctl activate` (exit 3)
    /// without undoing the switch. (OPcache needs no hook: see --php-fpm.)
    #[arg(long, value_name = "CMD")]
    on_activate: Vec<String>,

    /// Seconds an --on-activate command may run before it is killed.
    #[arg(long, value_name = "SECS", default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..=3600))]
    hook_timeout: u32,

    /// Seconds to wait at shutdown for files still open under the mount.
    #[arg(long, value_name = "SECS", default_value_t = 10, value_parser = clap::value_parser!(u32).range(0..=3600))]
    stop_timeout: u32,

    /// PHP-FPM pool to tell, after each switch and before `activate` returns, which cached
    /// scripts the switch changed, so its OPcache drops exactly those (any
    /// validate_timestamps / revalidate_freq); a Unix socket path or HOST:PORT, repeatable.
    /// A failure makes `activate` exit 3; the switch stays.
    #[arg(long, value_name = "SOCKET")]
    php_fpm: Vec<String>,

    /// The same for PHP without FastCGI (Apache + mod_php): an http:// URL on loopback
    /// that runs the shipped script (see docs/web-servers.md); repeatable.
    #[arg(long, value_name = "URL")]
    php_http: Vec<String>,

    /// File holding the secret --php-http sends (X-Switchfs-Secret); the endpoint's
    /// `SetEnv SWITCHFS_SECRET` holds the same. Must not be readable by others.
    #[arg(long, value_name = "FILE")]
    php_http_secret: Option<PathBuf>,

    /// The script --php-fpm runs in the pool, installed outside every docroot.
    #[arg(long, value_name = "FILE", default_value = switchfs::opcache::DEFAULT_SCRIPT)]
    php_script: PathBuf,

    /// Seconds each PHP pool's whole invalidation may take (connect, list, invalidate).
    #[arg(long, value_name = "SECS", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=600))]
    php_timeout: u32,

    /// The uid that must be listening on a --php-fpm socket (SO_PEERCRED for a Unix socket,
    /// /proc/net/tcp for HOST:PORT): the PHP-FPM master creates its sockets as root;
    /// anything else is refused as an impostor before anything is sent.
    #[arg(long, value_name = "UID", default_value_t = 0)]
    php_fpm_owner: u32,

    /// The uid that must own the --php-http TCP listener (/proc/net/tcp), checked before
    /// the secret is sent: Apache binds its ports as root.
    #[arg(long, value_name = "UID", default_value_t = 0)]
    php_http_owner: u32,

    /// The mount's source as mountinfo, mount(8) and df show it [default:
    /// switchfs:RELEASES]. The mount helper passes fstab's first field, so a second `mount
    /// -a` finds the line mounted. Letters, digits and `/._:@+=-` only.
    #[arg(long, value_name = "NAME", value_parser = mount_source)]
    source: Option<String>,
    /// How the docroot is presented: `fuse` (a FUSE mount; any kernel; working directories
    /// follow the switch) or `bind` (a read-only bind mount of the active release swapped
    /// with MOVE_MOUNT_BENEATH: native speed, Linux 6.5+, the daemon is not in the data
    /// path and stopping it leaves the mount serving; `umount` removes it).
    #[arg(long, value_name = "MODE", default_value = "fuse", value_parser = mode)]
    mode: daemon::Mode,
}

fn mount_source(s: &str) -> Result<String, String> {
    switchfs::mounts::check_source(s).map(|()| s.to_string())
}

fn mode(s: &str) -> Result<daemon::Mode, String> {
    match s {
        "fuse" => Ok(daemon::Mode::Fuse),
        "bind" => Ok(daemon::Mode::Bind),
        _ => Err("must be fuse or bind".into()),
    }
}

fn existing_dir(s: &str) -> Result<PathBuf, String> {
    let p = PathBuf::from(s);
    match std::fs::metadata(&p) {
        Ok(m) if m.is_dir() => Ok(p),
        Ok(_) => Err("not a directory".into()),
        Err(e) => Err(e.to_string()),
    }
}

fn release_name(s: &str) -> Result<String, String> {
    validate_release_name(s).map(|()| s.to_string())
}

fn group(s: &str) -> Result<u32, String> {
    daemon::group_id(s)
}

/// The command line with each `--config FILE` replaced by the options in FILE.
fn expand_config() -> Result<Vec<std::ffi::OsString>, String> {
    use clap::CommandFactory;
    let cmd = Cli::command();
    let known: Vec<&str> = cmd.get_arguments().filter_map(|a| a.get_long()).collect();
    switchfs::config_file::expand(std::env::args_os().collect(), &known)
}

fn main() -> ExitCode {
    // fuser's info lines ("Mounting /proc/self/fd/N": we mount through a descriptor) say
    // less than ours; keep its warnings and errors.
    switchfs::log_format::init("info,fuser=warn");
    switchfs::docs::generate_if_asked::<Cli>("switchfs");
    let args = match expand_config() {
        Ok(args) => args,
        Err(msg) => {
            eprintln!("switchfs: {msg}");
            return ExitCode::from(2);
        }
    };
    let cli: Cli = switchfs::parse_from_or_exit("switchfs", args);
    if std::env::var_os(switchfs::mount_helper::CHECK_ONLY_ENV).is_some() {
        // The mount helper's `-f`: the options parsed and every value passed its check.
        return ExitCode::SUCCESS;
    }
    let args = DaemonArgs {
        releases: cli.releases,
        mount_point: cli.mount_point,
        initial: cli.initial,
        control: cli.control,
        control_group: cli.control_group,
        status_group: cli.status_group,
        state: cli.state,
        threads: usize::from(cli.threads),
        cache_timeout: Duration::from_secs(u64::from(cli.cache_timeout)),
        track_opens: cli.track_opens,
        acl: cli.acl,
        on_activate: cli.on_activate,
        hook_timeout: Duration::from_secs(u64::from(cli.hook_timeout)),
        stop_timeout: Duration::from_secs(u64::from(cli.stop_timeout)),
        php: switchfs::opcache::PhpConfig {
            fpm: cli.php_fpm,
            http: cli.php_http,
            secret_file: cli.php_http_secret,
            script: cli.php_script,
            timeout: Duration::from_secs(u64::from(cli.php_timeout)),
            fpm_owner: cli.php_fpm_owner,
            http_owner: cli.php_http_owner,
        },
        source: cli.source,
        mode: cli.mode,
    };
    match daemon::run(args) {
        Ok(code) => ExitCode::from(code),
        Err(msg) => {
            eprintln!("switchfs: {msg}");
            ExitCode::FAILURE
        }
    }
}
