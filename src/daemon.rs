//! Start-up and shut-down of the `switchfs` daemon: checks, control socket, mount, readiness,
//! signals. The order matters and is explained where it is not obvious.

use std::ffi::CString;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fuser::{Config, MountOption, SessionACL};

use crate::control::{client, server};
use crate::core::{Core, CoreConfig};
use crate::hooks::Hooks;
use crate::invalidate::KernelInvalidator;
use crate::{paths, sys};

/// Everything the daemon is started with, already validated by the command line parser.
#[derive(Debug, Clone)]
pub struct DaemonArgs {
    pub releases: PathBuf,
    pub mount_point: PathBuf,
    pub initial: Option<String>,
    pub control: Option<PathBuf>,
    pub control_group: Option<u32>,
    pub state: Option<PathBuf>,
    pub threads: usize,
    pub cache_timeout: Duration,
    pub track_opens: bool,
    pub acl: bool,
    pub on_activate: Vec<String>,
    pub hook_timeout: Duration,
    pub stop_timeout: Duration,
    /// PHP pools to tell which scripts each switch changed (see `opcache`).
    pub php: crate::opcache::PhpConfig,
}

fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The mount point as mountinfo spells it, computed without touching the mount point
/// itself (on a dead mount even a stat can fail).
fn absolute_mount_point(mount_point: &Path) -> Result<PathBuf, String> {
    let shown = mount_point.display();
    let abs = std::path::absolute(mount_point).map_err(|e| format!("mount point {shown}: {e}"))?;
    match (abs.parent(), abs.file_name()) {
        (Some(parent), Some(name)) => std::fs::canonicalize(parent)
            .map(|p| p.join(name))
            .map_err(|e| format!("mount point {shown}: {e}")),
        _ => Ok(abs),
    }
}

/// Refuses to mount over a live switchfs, and detaches a mount point left dead by a killed
/// daemon ("Transport endpoint is not connected") so a restart recovers instead of failing.
fn prepare_mount_point(mount_point: &Path) -> Result<(), String> {
    let shown = mount_point.display();
    let dead = if client::switchfs_mounts()?.iter().any(|m| m == mount_point) {
        match client::query_control_xattr(mount_point) {
            Ok(socket) => {
                return Err(format!(
                    "{shown} is already served by another switchfs (control socket {})",
                    socket.display()
                ));
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => true,
            Err(e) => return Err(format!("cannot check the switchfs at {shown}: {e}")),
        }
    } else {
        matches!(std::fs::metadata(mount_point), Err(e) if e.raw_os_error() == Some(libc::ENOTCONN))
    };
    if !dead {
        return Ok(());
    }
    log::warn!("{shown} is a dead FUSE mount (its daemon was killed); detaching it");
    let c = CString::new(mount_point.as_os_str().as_encoded_bytes())
        .map_err(|_| "mount point contains NUL".to_string())?;
    // SAFETY: valid C string.
    if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    // Without root the setuid helper can do it.
    let status = std::process::Command::new("fusermount3")
        .arg("-uz")
        .arg(mount_point)
        .status();
    if matches!(status, Ok(s) if s.success()) {
        Ok(())
    } else {
        Err(format!("cannot detach dead mount {shown}: {e}"))
    }
}

fn block_signals() -> libc::sigset_t {
    // SAFETY: sigset manipulation on a local set; blocking here before any thread starts
    // makes every thread inherit the mask, so only the main thread's sigwait sees them.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            libc::sigaddset(&mut set, sig);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

/// Why the daemon stops.
enum Stop {
    Signal(i32),
    /// The FUSE session ended on its own: someone unmounted us, or the kernel aborted the
    /// connection.
    SessionEnded,
}

fn wait_for_stop(set: &libc::sigset_t, session: &fuser::BackgroundSession) -> Stop {
    let tick = libc::timespec {
        tv_sec: 0,
        tv_nsec: 200_000_000,
    };
    loop {
        if session.guard.is_finished() {
            return Stop::SessionEnded;
        }
        // SAFETY: set and tick are initialised; a null info pointer is allowed.
        let sig = unsafe { libc::sigtimedwait(set, std::ptr::null_mut(), &tick) };
        if sig < 0 {
            continue; // timeout or EINTR: look at the session again
        }
        if sig == libc::SIGHUP {
            log::info!("SIGHUP ignored: switchfs has no configuration to reload");
            continue;
        }
        return Stop::Signal(sig);
    }
}

/// Tells systemd (or a test) how we are doing, when started with `NOTIFY_SOCKET`.
pub fn sd_notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sock = match std::os::unix::net::UnixDatagram::unbound() {
        Ok(s) => s,
        Err(e) => {
            log::warn!("sd_notify: {e}");
            return;
        }
    };
    let bytes = path.as_encoded_bytes();
    let sent = if let Some(abstract_name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(abstract_name)
            .and_then(|addr| sock.send_to_addr(state.as_bytes(), &addr))
    } else {
        sock.send_to(state.as_bytes(), Path::new(&path))
    };
    if let Err(e) = sent {
        log::warn!("sd_notify to {}: {e}", path.to_string_lossy());
    }
}

fn unmount(mount_point: &Path) {
    let Ok(c) = CString::new(mount_point.as_os_str().as_encoded_bytes()) else {
        return;
    };
    // SAFETY: valid C string.
    if unsafe { libc::umount2(c.as_ptr(), 0) } == 0 {
        return;
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EBUSY) {
        log::info!("mount is busy; detaching it so open files can finish");
        // SAFETY: valid C string.
        if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } == 0 {
            return;
        }
    }
    let status = std::process::Command::new("fusermount3")
        .arg("-uz")
        .arg(mount_point)
        .status();
    if !matches!(status, Ok(s) if s.success()) {
        log::error!("cannot unmount {}: {e}", mount_point.display());
    }
}

/// Runs the daemon until SIGTERM or SIGINT.
///
/// # Errors
/// A one-line message for anything that prevents serving; nothing is left mounted then.
pub fn run(args: DaemonArgs) -> Result<(), String> {
    let mount_point = absolute_mount_point(&args.mount_point)?;
    prepare_mount_point(&mount_point)?;
    let mount_point = std::fs::canonicalize(&mount_point)
        .map_err(|e| format!("mount point {}: {e}", mount_point.display()))?;
    let control_path = args
        .control
        .clone()
        .unwrap_or_else(|| paths::default_control_path(&mount_point));
    let state_path = args
        .state
        .clone()
        .unwrap_or_else(|| paths::default_state_path(&mount_point));
    if let Some(dir) = state_path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create state directory {}: {e}", dir.display()))?;
    }
    let fd_limit = match sys::raise_nofile_limit() {
        Ok(n) => n,
        Err(e) => {
            log::warn!("cannot read or raise the open file limit ({e}); assuming 1024");
            1024
        }
    };
    let inode_fds = usize::try_from(fd_limit)
        .unwrap_or(usize::MAX)
        .saturating_sub(crate::fds::RESERVE)
        .max(64);
    let signals = block_signals();
    // SAFETY: geteuid cannot fail.
    let access = server::Access {
        owner_uid: unsafe { libc::geteuid() },
        group: args.control_group,
    };
    let listener = server::bind(&control_path, access)?;
    let cleanup_socket = SocketFile(control_path.clone());
    let releases = std::fs::canonicalize(&args.releases)
        .map_err(|e| format!("releases directory {}: {e}", args.releases.display()))?;
    // Checked before anything is persisted or mounted, so a bad --php-* option changes nothing.
    let php = if args.php.fpm.is_empty() && args.php.http.is_empty() {
        None
    } else {
        Some(crate::opcache::Php::new(&args.php, &mount_point)?)
    };
    let config = CoreConfig {
        releases,
        state_path,
        mount_point: mount_point.clone(),
        control_path: control_path.clone(),
        ttl: args.cache_timeout,
        track_opens: args.track_opens,
        inode_fds,
    };
    let core = Arc::new(Core::new(config, args.initial.as_deref())?);
    if let Some(php) = &php {
        php.assume_in_step_with(&core);
    }

    let mut fuse_config = Config::default();
    fuse_config.mount_options = vec![
        MountOption::FSName(format!(
            "{}{}",
            client::FSNAME_PREFIX,
            core.config().releases.to_string_lossy()
        )),
        MountOption::Subtype("switchfs".into()),
        MountOption::DefaultPermissions,
        MountOption::RO,
        MountOption::NoDev,
        MountOption::NoSuid,
    ];
    // As root, serve the web server's user too; the kernel checks modes (default_permissions).
    fuse_config.acl = if is_root() {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    fuse_config.n_threads = Some(args.threads);
    fuse_config.clone_fd = true;
    let expire_only = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let session = fuser::Session::new(
        crate::fuse_adapter::FuseAdapter::new(core.clone(), expire_only.clone(), args.acl),
        &mount_point,
        &fuse_config,
    )
    .map_err(|e| format!("cannot mount {}: {e}", mount_point.display()))?;
    let notifier = session.notifier();
    let dev_fuse = std::os::fd::AsFd::as_fd(&session)
        .try_clone_to_owned()
        .map_err(|e| format!("cannot duplicate the FUSE device descriptor: {e}"))?;
    let background = session
        .spawn()
        .map_err(|e| format!("cannot start the FUSE session: {e}"))?;
    if expire_only.load(std::sync::atomic::Ordering::Relaxed) {
        log::debug!("kernel supports expire-only invalidation");
    }
    core.set_invalidator(Box::new(KernelInvalidator::new(
        notifier,
        dev_fuse,
        expire_only,
    )));
    raise_readahead(&mount_point);
    let mut hooks = Hooks::new(
        args.on_activate.clone(),
        args.hook_timeout,
        mount_point.clone(),
        core.config().releases.clone(),
    );
    if let Some(php) = php {
        hooks = hooks.with_php(php);
    }
    let hooks = Arc::new(hooks);
    server::spawn(listener, core.clone(), hooks, access)
        .map_err(|e| format!("cannot start the control server: {e}"))?;
    log::info!(
        "serving {} at {} (control socket {}, {} threads, open file limit {fd_limit}: \
         inodes hold at most {inode_fds} descriptors)",
        args.releases.display(),
        mount_point.display(),
        control_path.display(),
        args.threads
    );
    sd_notify("READY=1");

    match wait_for_stop(&signals, &background) {
        Stop::Signal(sig) => {
            log::info!(
                "signal {sig} received: unmounting {}",
                mount_point.display()
            );
            sd_notify("STOPPING=1");
            drop(cleanup_socket);
            unmount(&mount_point);
        }
        Stop::SessionEnded => {
            sd_notify("STOPPING=1");
            drop(cleanup_socket);
            let result = background.join();
            log::warn!(
                "{} was unmounted from outside; exiting ({result:?})",
                mount_point.display()
            );
            return Ok(());
        }
    }
    let deadline = Instant::now() + args.stop_timeout;
    while !background.guard.is_finished() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    if background.guard.is_finished() {
        if let Err(e) = background.join() {
            log::warn!("FUSE session ended with: {e}");
        }
        log::info!("unmounted; bye");
    } else {
        log::warn!(
            "files under the detached mount are still open after {:?}; exiting anyway",
            args.stop_timeout
        );
        // Leaving without dropping the session: its destructor would try to unmount a path
        // that may already hold a new mount.
        std::process::exit(0);
    }
    Ok(())
}

/// The kernel gives a FUSE mount the default 128 KiB readahead, so a cold sequential read
/// costs one round trip to the daemon per 128 KiB. 1 MiB (FUSE's largest request) makes
/// large static files stream at close to the disk's speed. Best effort: needs root.
fn raise_readahead(mount_point: &Path) {
    let Some((dev, _)) = crate::procscan::dev_ino(mount_point) else {
        return;
    };
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    let knob = format!("/sys/class/bdi/{major}:{minor}/read_ahead_kb");
    match std::fs::write(&knob, "1024") {
        Ok(()) => log::debug!("readahead raised to 1 MiB ({knob})"),
        Err(e) => log::debug!("cannot raise readahead ({knob}): {e}"),
    }
}

/// Removes the control socket when the daemon stops, whichever way `run` returns.
struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The group id of `name` (a group name or a number).
///
/// # Errors
/// No such group.
pub fn group_id(name: &str) -> Result<u32, String> {
    if let Ok(gid) = name.parse::<u32>() {
        return Ok(gid);
    }
    let c = CString::new(name).map_err(|_| "group name contains NUL".to_string())?;
    // SAFETY: valid C string; the returned pointer is only read before the next call.
    let gr = unsafe { libc::getgrnam(c.as_ptr()) };
    if gr.is_null() {
        return Err(format!("no such group {name:?}"));
    }
    // SAFETY: non-null result of getgrnam.
    Ok(unsafe { (*gr).gr_gid })
}
