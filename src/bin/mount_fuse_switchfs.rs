//! `mount.fuse.switchfs`: the helper mount(8) runs for `mount -t fuse.switchfs` and for
//! `/etc/fstab` lines of type `fuse.switchfs`. It starts `switchfs` in the background, waits
//! until the mount is up (the daemon's `READY=1`) and exits 0, or exits 1 with the daemon's
//! own one-line reason when it does not come up.
//!
//! Cargo builds it as `mount_fuse_switchfs` (a crate name cannot hold dots);
//! `scripts/install` installs it as `/sbin/mount.fuse.switchfs`, where mount(8) looks.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use switchfs::mount_helper::{self, Plan};

/// How long the daemon may take to mount before the helper gives up and stops it.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Mount a switchfs docroot from mount(8) or /etc/fstab.
///
/// `mount -t fuse.switchfs -o releases=/var/www/app/releases,initial=42 switchfs /var/www/current`
/// or the fstab line
/// `switchfs /var/www/current fuse.switchfs releases=/var/www/app/releases,nofail 0 0`.
///
/// Each option NAME[=VALUE] is switchfs' --NAME[=VALUE] (`_` and `-` alike): releases,
/// initial, state, control, control_group, threads, cache_timeout, track_opens, acl,
/// on_activate, hook_timeout, stop_timeout, and any option `switchfs --help` lists. Values
/// cannot contain commas; write a space in fstab as \040. mount(8)'s own options (defaults,
/// rw, ro, auto, noauto, nofail, _netdev, user, dev, suid, exec, atime options, x-*, ...) are
/// ignored: switchfs is always read-only, nosuid and nodev. noexec is refused. An absolute
/// SOURCE is the releases directory; any other SOURCE (switchfs) is a label. `mode=bind`
/// serves a read-only bind mount of the active release instead of a FUSE mount (Linux 6.5+;
/// findmnt then shows the releases' own filesystem type); `umount` removes it and stops the
/// daemon there too.
///
/// The daemon runs in its own session, in the background, and logs to
/// /var/log/switchfs/<mount>-<hash>.log (root) or the file given with log=FILE. The helper
/// returns once the mount serves; `umount MOUNTPOINT` stops the daemon. For restart after
/// a crash and logs in the journal, prefer the systemd unit switchfs@.service.
#[derive(Parser, Debug)]
#[command(name = "mount.fuse.switchfs", version, about, long_about)]
struct Cli {
    /// `switchfs`, or the releases directory as an absolute path.
    #[arg(value_name = "SOURCE")]
    source: String,

    /// Existing directory to serve the active release at, reached without symlinks, every
    /// directory above it root's and not writable by others.
    #[arg(value_name = "MOUNTPOINT")]
    mount_point: PathBuf,

    /// Comma-separated options (see above); may be repeated.
    #[arg(short = 'o', value_name = "OPTIONS")]
    options: Vec<String>,

    /// Do not write /etc/mtab (accepted for mount(8); switchfs never writes it).
    #[arg(short = 'n')]
    no_mtab: bool,

    /// Sloppy mode (accepted for mount(8); unknown options are still refused).
    #[arg(short = 's')]
    sloppy: bool,

    /// Fake: check the options and say what would run, without mounting.
    #[arg(short = 'f')]
    fake: bool,

    /// Say which command runs and where it logs.
    #[arg(short = 'v')]
    verbose: bool,
}

fn is_root() -> bool {
    switchfs::sys::euid() == 0
}

/// The `switchfs` binary: next to this helper (a build tree, a package putting both in one
/// directory), else the install locations. Never `$PATH`: mount(8) runs helpers with a
/// sanitised environment.
fn switchfs_binary() -> Result<PathBuf, String> {
    let sibling = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join("switchfs")));
    sibling
        .into_iter()
        .chain(["/usr/local/bin/switchfs", "/usr/bin/switchfs"].map(PathBuf::from))
        .find(|p| p.is_file())
        .ok_or_else(|| "cannot find the switchfs binary (looked next to this helper, in /usr/local/bin and /usr/bin)".to_string())
}

/// Opens (creating) the daemon's log for appending, and returns it with its current length,
/// where this run's lines start.
fn open_log(path: &Path) -> Result<(File, u64), String> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o750)
            .create(dir)
            .map_err(|e| format!("cannot create log directory {}: {e}", dir.display()))?;
    }
    let file = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .mode(0o640)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| format!("cannot open log {}: {e}", path.display()))?;
    let meta = file
        .metadata()
        .map_err(|e| format!("log {}: {e}", path.display()))?;
    // A log in a directory others can write (log=/tmp/...) may be a file they planted or a
    // hard link to something else: write only into our own, singly linked, regular file.
    let euid = switchfs::sys::euid();
    if !meta.is_file() || meta.uid() != euid || meta.nlink() != 1 {
        return Err(format!(
            "log {} is not a regular file of our own with one link; remove it or choose \
             another log=FILE",
            path.display()
        ));
    }
    Ok((file, meta.len()))
}

/// A datagram socket in a fresh 0700 directory for the daemon's `READY=1`, so no other user
/// can send it and make the helper report a mount that is not there. Removed on drop.
struct NotifySocket {
    dir: PathBuf,
    sock: UnixDatagram,
}

impl NotifySocket {
    fn new() -> Result<NotifySocket, String> {
        let base = if is_root() {
            PathBuf::from("/run")
        } else {
            std::env::temp_dir()
        };
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let dir = base.join(format!(
            "mount.fuse.switchfs-{}-{nanos}",
            std::process::id()
        ));
        // create, never reuse: mkdir does not follow a planted symlink.
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        match UnixDatagram::bind(dir.join("notify")) {
            Ok(sock) => Ok(NotifySocket { dir, sock }),
            Err(e) => {
                let _ = std::fs::remove_dir(&dir);
                Err(format!("cannot create the readiness socket: {e}"))
            }
        }
    }

    fn path(&self) -> PathBuf {
        self.dir.join("notify")
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.path());
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// Starts `switchfs ARGS` detached: own session, stdin and stdout on /dev/null, stderr
/// appended to the log, and a usable `PATH` for its `--on-activate` hooks.
fn spawn_daemon(
    bin: &Path,
    plan: &Plan,
    log: File,
    notify: &NotifySocket,
) -> Result<Child, String> {
    let mut cmd = Command::new(bin);
    cmd.args(&plan.args)
        // Not NOTIFY_SOCKET: that would stay in the daemon after we exit (and one mount(8)
        // inherited from a unit of its own would be told about our daemon).
        .env(switchfs::systemd::READY_SOCKET_ENV, notify.path())
        .env_remove("NOTIFY_SOCKET")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .current_dir("/");
    for name in switchfs::keeper::HANDOFF_ENV {
        cmd.env_remove(name);
    }
    // A caller's check-only switch would make the real start exit at once.
    cmd.env_remove(mount_helper::CHECK_ONLY_ENV);
    if std::env::var_os("PATH").is_none_or(|p| p.is_empty()) {
        cmd.env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        );
    }
    switchfs::sys::new_session_on_spawn(&mut cmd);
    cmd.spawn()
        .map_err(|e| format!("cannot run {}: {e}", bin.display()))
}

/// This run's lines of the log, for the error when the daemon does not come up. Read
/// through the descriptor `open_log` checked, never the path again: in a directory others can
/// write, the name may meanwhile be a symlink to a root-only file.
fn log_since(log: &File, start: u64) -> String {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; 1 << 20];
    let n = log.read_at(&mut buf, start).unwrap_or(0);
    buf.truncate(n);
    String::from_utf8_lossy(&buf).into_owned()
}

/// Waits for `READY=1` from the daemon; on exit or timeout, the one-line reason.
fn await_ready(
    child: &mut Child,
    notify: &NotifySocket,
    log: &Path,
    log_file: &File,
    start: u64,
) -> Result<(), String> {
    notify
        .sock
        .set_read_timeout(Some(Duration::from_millis(100)))
        .map_err(|e| format!("readiness socket: {e}"))?;
    let deadline = Instant::now() + READY_TIMEOUT;
    let mut buf = [0u8; 512];
    loop {
        if let Ok(n) = notify.sock.recv(&mut buf)
            && buf[..n].split(|&b| b == b'\n').any(|l| l == b"READY=1")
        {
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            let reason = mount_helper::failure_line(&log_since(log_file, start))
                .unwrap_or_else(|| format!("switchfs exited ({status}) before serving"));
            return Err(reason);
        }
        if Instant::now() > deadline {
            stop(child);
            return Err(format!(
                "switchfs did not come up within {} s; stopped it (log: {})",
                READY_TIMEOUT.as_secs(),
                log.display()
            ));
        }
    }
}

/// SIGTERM (the daemon unmounts if it got that far), then SIGKILL after 10 s.
fn stop(child: &mut Child) {
    if let Ok(pid) = i32::try_from(child.id()) {
        // Our own child, not yet reaped: the pid cannot name another process.
        let _ = switchfs::sys::signal(pid, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// The mount point as given (made absolute, never resolved), after checking that no
/// component is a symlink, every directory above it is root's and writable only by root
/// (`strict_modes`), and that it is not what an fstab line's spelling resolves to through
/// a symlink (mount(8) resolves before calling us, which would hide the link).
fn checked_mount_point(given: &Path) -> Result<PathBuf, String> {
    let shown = given.display();
    let abs = std::path::absolute(given).map_err(|e| format!("mount point {shown}: {e}"))?;
    let mount_point = switchfs::strict_modes::without_dots(&abs, "mount point")?;
    switchfs::strict_modes::check_path(&mount_point, "mount point")?;
    if let Some(spelled) = link_spelling(&mount_point) {
        return Err(format!(
            "mount point {shown}: it was named {}, which resolves through a symlink to it; \
             mount switchfs on a path without symlinks",
            spelled.display()
        ));
    }
    Ok(mount_point)
}

/// How the mount point was named before mount(8) resolved it, when that went through a
/// symlink: from /etc/fstab and, when mount(8) started us, its command line and the fstab it
/// was given (`-T`). Root's own files and process, so they can be trusted as spellings.
fn link_spelling(mount_point: &Path) -> Option<PathBuf> {
    let mut fstabs = vec![PathBuf::from("/etc/fstab")];
    let mut spellings = Vec::new();
    let parent = PathBuf::from(format!("/proc/{}", std::os::unix::process::parent_id()));
    let comm = std::fs::read_to_string(parent.join("comm")).unwrap_or_default();
    if comm.trim_end() == "mount" {
        let cmdline = std::fs::read(parent.join("cmdline")).unwrap_or_default();
        let (plain, files) = mount_helper::mount_cmdline_spellings(&cmdline);
        // A relative spelling is relative to mount(8)'s working directory.
        let cwd = parent.join("cwd");
        spellings.extend(plain.into_iter().map(|p| cwd.join(p)));
        fstabs.extend(files.into_iter().map(|p| cwd.join(p)));
    }
    for file in fstabs {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        spellings.extend(mount_helper::fstab_targets(&text));
    }
    let resolve = |p: &Path| std::fs::canonicalize(p).ok();
    mount_helper::spelled_through_link(&spellings, mount_point, resolve)
}

/// `-f`: has `switchfs` parse and check the command line the mount would run (every option
/// name and value, as the real start would), without starting it.
fn check_only(bin: &Path, plan: &Plan) -> Result<(), String> {
    let out = Command::new(bin)
        .args(&plan.args)
        .env(mount_helper::CHECK_ONLY_ENV, "1")
        .env_remove("NOTIFY_SOCKET")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", bin.display()))?;
    if out.status.success() {
        return Ok(());
    }
    let text = String::from_utf8_lossy(&out.stderr);
    Err(mount_helper::failure_line(&text)
        .unwrap_or_else(|| format!("switchfs refused the options ({})", out.status)))
}

fn run(cli: Cli) -> Result<(), String> {
    let mount_point = checked_mount_point(&cli.mount_point)?;
    let plan = mount_helper::translate(&cli.source, &mount_point, &cli.options)?;
    let log = plan
        .log
        .clone()
        .unwrap_or_else(|| mount_helper::default_log_path(&mount_point, is_root()));
    let bin = switchfs_binary()?;
    if cli.verbose || cli.fake {
        let shown: Vec<String> = plan
            .args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        println!(
            "{} {} (log: {})",
            bin.display(),
            shown.join(" "),
            log.display()
        );
    }
    if cli.fake {
        return check_only(&bin, &plan);
    }
    let (log_file, start) = open_log(&log)?;
    let reader = log_file
        .try_clone()
        .map_err(|e| format!("log {}: {e}", log.display()))?;
    let notify = NotifySocket::new()?;
    let mut child = spawn_daemon(&bin, &plan, log_file, &notify)?;
    await_ready(&mut child, &notify, &log, &reader, start)
}

fn main() -> ExitCode {
    switchfs::docs::generate_if_asked::<Cli>("mount.fuse.switchfs");
    let cli: Cli = switchfs::parse_args_or_exit("mount.fuse.switchfs");
    // -n and -s change nothing here: there is no mtab to write, and unknown options stay
    // refused because ignoring one could hide a typo in a security-relevant option.
    let _ = (cli.no_mtab, cli.sloppy);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("mount.fuse.switchfs: {msg}");
            ExitCode::FAILURE
        }
    }
}
