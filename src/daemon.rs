//! Start-up and shut-down of the `switchfs` daemon: checks, control socket, mount, readiness,
//! signals. The order matters and is explained where it is not obvious.

use std::ffi::CString;
use std::mem::ManuallyDrop;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fuser::{Config, MountOption, SessionACL};

use crate::control::{client, server};
use crate::core::{Core, CoreConfig};
use crate::hooks::Hooks;
use crate::invalidate::KernelInvalidator;
use crate::{mounts, paths, sys};

/// Everything the daemon is started with, already validated by the command line parser.
#[derive(Debug, Clone)]
pub struct DaemonArgs {
    pub releases: PathBuf,
    pub mount_point: PathBuf,
    pub initial: Option<String>,
    pub control: Option<PathBuf>,
    pub control_group: Option<u32>,
    /// May only read status and list over the control socket.
    pub status_group: Option<u32>,
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
/// itself (on a dead mount even a stat can fail), unless it ends in `..`.
fn absolute_mount_point(mount_point: &Path) -> Result<PathBuf, String> {
    let shown = mount_point.display();
    let abs = std::path::absolute(mount_point).map_err(|e| format!("mount point {shown}: {e}"))?;
    match (abs.parent(), abs.file_name()) {
        (Some(parent), Some(name)) => std::fs::canonicalize(parent)
            .map(|p| p.join(name))
            .map_err(|e| format!("mount point {shown}: {e}")),
        _ => std::fs::canonicalize(&abs).map_err(|e| format!("mount point {shown}: {e}")),
    }
}

/// Checks the mount point and returns a descriptor of it, opened from `/` without following
/// any symlink, to mount on: what was checked is what gets mounted over. Refuses a symlink
/// (mounting follows it and would cover its target, e.g. a release), anything that is not a
/// directory, and a mount point where a live switchfs is already on top (compared by mount,
/// not by spelling); detaches a mount point left dead by a killed daemon ("Transport endpoint
/// is not connected") so a restart recovers instead of failing.
fn prepare_mount_point(mount_point: &Path) -> Result<OwnedFd, String> {
    let shown = mount_point.display();
    match std::fs::symlink_metadata(mount_point) {
        Ok(m) if m.file_type().is_symlink() => return Err(symlink_refusal(mount_point)),
        Ok(m) if !m.is_dir() => {
            return Err(format!(
                "mount point {shown} is not a directory; switchfs mounts on a directory"
            ));
        }
        Ok(_) => {}
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => detach_dead(mount_point)?,
        Err(e) => return Err(format!("mount point {shown}: {e}")),
    }
    match mounts::switchfs_on(mount_point) {
        Ok(None) => {}
        Ok(Some(_)) => match client::query_control_xattr(mount_point) {
            Ok(socket) => {
                return Err(format!(
                    "{shown} is already served by another switchfs (control socket {})",
                    socket.display()
                ));
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => detach_dead(mount_point)?,
            Err(e) => return Err(format!("cannot check the switchfs at {shown}: {e}")),
        },
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => detach_dead(mount_point)?,
        Err(e) => return Err(format!("cannot check mount point {shown}: {e}")),
    }
    let fd = paths::open_nofollow(mount_point)
        .map_err(|e| format!("mount point {shown} changed while being checked: {e}"))?;
    match sys::statx_nosync(fd.as_fd()) {
        Ok(st) if st.mode & libc::S_IFMT == libc::S_IFDIR => Ok(fd),
        Ok(_) => Err(format!(
            "mount point {shown} is not a directory; switchfs mounts on a directory"
        )),
        Err(e) => Err(format!("mount point {shown}: {e}")),
    }
}

fn symlink_refusal(mount_point: &Path) -> String {
    let target = std::fs::read_link(mount_point)
        .map(|t| t.display().to_string())
        .unwrap_or_else(|_| "?".into());
    let parent = mount_point.parent().unwrap_or(Path::new("/")).display();
    let name = mount_point
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    format!(
        "mount point {} is a symlink (to {target}); mounting would follow it and cover its \
         target. Mount switchfs on a fixed directory instead, e.g. {parent}/.switchfs, and \
         point the link at it once: ln -sfn .switchfs {parent}/{name}",
        mount_point.display()
    )
}

/// Detaches the dead FUSE mount on top of `mount_point` (its daemon was killed): only that
/// mount, through a descriptor of its root.
fn detach_dead(mount_point: &Path) -> Result<(), String> {
    let shown = mount_point.display();
    log::warn!("{shown} is a dead FUSE mount (its daemon was killed); detaching it");
    let root = paths::open_nofollow(mount_point)
        .map_err(|e| format!("cannot open dead mount {shown}: {e}"))?;
    let (id, dev) =
        sys::mount_id(root.as_fd()).map_err(|e| format!("cannot identify {shown}: {e}"))?;
    let entries = mounts::read_entries()?;
    let is_dead_fuse = entries
        .iter()
        .any(|e| e.id == id && e.dev == dev && e.is_fuse() && e.mount_point == mount_point);
    if !is_dead_fuse {
        return Err(format!(
            "{shown} is not connected, but is not a FUSE mount switchfs could detach"
        ));
    }
    mounts::detach(root, mount_point).map_err(|e| format!("cannot detach dead mount {shown}: {e}"))
}

/// Refuses layouts where the mount would cover what it serves or where it keeps its state:
/// a mount point that is or lies inside the releases directory (a release mounted over itself
/// deadlocks on the first switch back to it), a releases directory below the mount point, and
/// a state file or control socket inside either. Compared by device and inode up each path.
fn check_layout(
    mount_point: &Path,
    mount_dir: (u64, u64),
    releases: &Path,
    state: &Path,
    control: &Path,
) -> Result<(), String> {
    let (mp, rel) = (mount_point.display(), releases.display());
    let releases_dir = paths::file_id(releases)
        .ok_or_else(|| format!("releases directory {rel}: cannot be read"))?;
    if paths::is_within(mount_point, releases_dir) {
        return Err(format!(
            "mount point {mp} is inside the releases directory {rel}; mount switchfs outside \
             it, e.g. next to it"
        ));
    }
    if paths::is_within(releases, mount_dir) {
        return Err(format!(
            "releases directory {rel} is below the mount point {mp}; the mount would hide it"
        ));
    }
    for (what, path) in [("state file", state), ("control socket", control)] {
        let Some(place) = paths::existing_ancestor(path) else {
            continue;
        };
        if paths::is_within(&place, mount_dir) || paths::is_within(&place, releases_dir) {
            return Err(format!(
                "{what} {} is inside the mount point or the releases directory; put it \
                 elsewhere (the defaults are under /var/lib/switchfs and /run/switchfs)",
                path.display()
            ));
        }
    }
    Ok(())
}

/// Raises the soft open-file limit to the hard one and sizes the inode descriptor budget
/// from it (`fds::inode_budget`); returns the limit and the budget.
fn open_file_limit(threads: usize) -> Result<(u64, usize), String> {
    let limit = match sys::raise_nofile_limit() {
        Ok(n) => n,
        Err(e) => {
            log::warn!("cannot raise the open file limit to the hard limit: {e}");
            sys::nofile_hard_limit().map_err(|e| format!("cannot read the open file limit: {e}"))?
        }
    };
    Ok((limit, crate::fds::inode_budget(limit, threads)?))
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

/// Takes down our mount (and nothing else) at shutdown, logging what happened. Returns
/// whether the FUSE session can still end by itself (files open under our detached mount
/// finishing), i.e. whether waiting for it makes sense.
fn unmount(ours: &mounts::OurMount) -> bool {
    let shown = ours.mount_point.display();
    match mounts::unmount(ours) {
        Ok(mounts::Unmounted::Detached(place)) => {
            log::info!("detached our mount at {}", place.display());
            true
        }
        Ok(mounts::Unmounted::Gone) => {
            log::info!("our mount at {shown} is already gone; nothing to unmount");
            true
        }
        Ok(mounts::Unmounted::Covered(top)) => {
            log::warn!(
                "another mount (id {top}) is stacked on ours at {shown}; leaving both alone \
                 (ours goes dead when we exit; a restart detaches it)"
            );
            false
        }
        Err(e) => {
            log::error!("{e}");
            false
        }
    }
}

/// Runs the daemon until SIGTERM or SIGINT.
///
/// # Errors
/// A one-line message for anything that prevents serving; nothing is left mounted then.
pub fn run(args: DaemonArgs) -> Result<(), String> {
    let (fd_limit, inode_fds) = open_file_limit(args.threads)?;
    let mount_point = absolute_mount_point(&args.mount_point)?;
    let target = prepare_mount_point(&mount_point)?;
    let mount_dir = sys::statx_nosync(target.as_fd())
        .map(|st| (st.dev, st.ino))
        .map_err(|e| format!("mount point {}: {e}", mount_point.display()))?;
    let releases = std::fs::canonicalize(&args.releases)
        .map_err(|e| format!("releases directory {}: {e}", args.releases.display()))?;
    let control_path = args
        .control
        .clone()
        .unwrap_or_else(|| paths::default_control_path(&mount_point));
    let state_path = args
        .state
        .clone()
        .unwrap_or_else(|| paths::default_state_path(&mount_point));
    check_layout(
        &mount_point,
        mount_dir,
        &releases,
        &state_path,
        &control_path,
    )?;
    if let Some(dir) = state_path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create state directory {}: {e}", dir.display()))?;
    }
    let signals = block_signals();
    let access = server::Access {
        // SAFETY: geteuid cannot fail.
        owner_uid: unsafe { libc::geteuid() },
        control_group: args.control_group.map(server_group),
        status_group: args.status_group.map(server_group),
    };
    let listener = server::bind(&control_path, &access)?;
    let cleanup_socket = SocketFile(control_path.clone());
    // Checked before anything is persisted or mounted, so a bad --php-* option changes nothing.
    let php = if args.php.fpm.is_empty() && args.php.http.is_empty() {
        None
    } else {
        Some(crate::opcache::Php::new(&args.php, &mount_point)?)
    };
    let config = CoreConfig {
        releases,
        mtimes_path: Some(crate::mtimes::log_path(&state_path)),
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

    let fsname = format!(
        "{}{}",
        mounts::FSNAME_PREFIX,
        core.config().releases.to_string_lossy()
    );
    let mut fuse_config = Config::default();
    fuse_config.mount_options = vec![
        MountOption::FSName(fsname.clone()),
        // fuser passes Subtype only to fusermount3 (not root); as root it calls mount(2)
        // itself with type "fuse", so the kernel option is what makes findmnt and mount(8)
        // say fuse.switchfs there.
        if is_root() {
            MountOption::CUSTOM("subtype=switchfs".into())
        } else {
            MountOption::Subtype("switchfs".into())
        },
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
    // As root the kernel mounts on the directory our descriptor holds, so a symlink swapped
    // in since the checks cannot redirect the mount. The setuid helper (not root) cannot see
    // our descriptors and gets the checked path.
    let mount_target = if is_root() {
        sys::fd_path(target.as_fd())
    } else {
        mount_point.clone()
    };
    let expire_only = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let session = fuser::Session::new(
        crate::fuse_adapter::FuseAdapter::new(core.clone(), expire_only.clone(), args.acl),
        &mount_target,
        &fuse_config,
    )
    .map_err(|e| format!("cannot mount {}: {e}", mount_point.display()))?;
    drop(target);
    let notifier = session.notifier();
    let dev_fuse = std::os::fd::AsFd::as_fd(&session)
        .try_clone_to_owned()
        .map_err(|e| format!("cannot duplicate the FUSE device descriptor: {e}"))?;
    // Never dropped: fuser's unmount-on-drop unmounts the *path*, a second time, taking
    // with it a bind mount below ours or a new daemon's mount that replaced ours while we
    // drained. `unmount` takes down our mount, by identity, instead.
    let background = ManuallyDrop::new(
        session
            .spawn()
            .map_err(|e| format!("cannot start the FUSE session: {e}"))?,
    );
    let ours = match mounts::identify(&mount_point, &fsname, &control_path) {
        Ok(ours) => ours,
        Err(e) => {
            // Without an identity there is no safe unmount at shutdown: do not serve.
            mounts::detach_if_serving(&mount_point, &control_path);
            return Err(e);
        }
    };
    log::debug!(
        "our mount: id {}, device {}:{}",
        ours.id,
        libc::major(ours.dev),
        libc::minor(ours.dev)
    );
    if expire_only.load(std::sync::atomic::Ordering::Relaxed) {
        log::debug!("kernel supports expire-only invalidation");
    }
    core.set_invalidator(Box::new(KernelInvalidator::new(
        notifier,
        dev_fuse,
        expire_only,
    )));
    raise_readahead(ours.dev);
    let mut hooks = Hooks::new(
        args.on_activate.clone(),
        args.hook_timeout,
        mount_point.clone(),
        core.config().releases.clone(),
    );
    if let Some(php) = php {
        hooks = hooks.with_php(php);
    }
    if let Err(e) = server::spawn(listener, core.clone(), Arc::new(hooks), access) {
        unmount(&ours);
        return Err(format!("cannot start the control server: {e}"));
    }
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
            let unmounted = unmount(&ours);
            core.stop_switching();
            if !unmounted {
                return Ok(());
            }
        }
        Stop::SessionEnded => {
            sd_notify("STOPPING=1");
            drop(cleanup_socket);
            log::warn!(
                "{} was unmounted or its connection aborted from outside; exiting",
                mount_point.display()
            );
            // An aborted connection leaves our mount in place, dead: take it down.
            unmount(&ours);
            return Ok(());
        }
    }
    let deadline = Instant::now() + args.stop_timeout;
    while !background.guard.is_finished() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    if background.guard.is_finished() {
        log::info!("unmounted; bye");
    } else {
        log::warn!(
            "files under the detached mount are still open after {:?}; exiting anyway",
            args.stop_timeout
        );
    }
    Ok(())
}

/// The kernel gives a FUSE mount the default 128 KiB readahead, so a cold sequential read
/// costs one round trip to the daemon per 128 KiB. 1 MiB (FUSE's largest request) makes
/// large static files stream at close to the disk's speed. Best effort: needs root.
/// `dev` is our connection's device, not a stat of the path, which another mount could cover.
fn raise_readahead(dev: u64) {
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

/// A group for the control server's messages, named while the daemon is still one thread
/// (`getgrgid` is not thread safe).
fn server_group(gid: u32) -> server::Group {
    // SAFETY: getgrgid returns null or a pointer valid until the next such call.
    let gr = unsafe { libc::getgrgid(gid) };
    let name = if gr.is_null() {
        gid.to_string()
    } else {
        // SAFETY: non-null result; gr_name is a valid C string.
        unsafe { std::ffi::CStr::from_ptr((*gr).gr_name) }
            .to_string_lossy()
            .into_owned()
    };
    server::Group { gid, name }
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
