//! Start-up and shut-down of the `switchfs` daemon: checks, control socket, mount, readiness,
//! signals. The order matters and is explained where it is not obvious.

use std::mem::ManuallyDrop;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fuser::{Config, MountOption, SessionACL};

use crate::control::{client, server};
use crate::fs::core::{Core, CoreConfig};
use crate::fs::invalidate::KernelInvalidator;
use crate::fs::nodelog::NodeLog;
use crate::life::keeper::{self, Keeper, Role, ServerLink};
use crate::life::systemd;
use crate::life::{mounts, paths};
use crate::switch::hooks::Hooks;
use crate::switch::switcher::{SwitchConfig, Switcher};
use crate::sys;

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
    pub php: crate::php::opcache::PhpConfig,
    /// The mount's source in mountinfo (`--source`); `None`: `switchfs:RELEASES`.
    pub source: Option<String>,
    /// What presents the docroot: a FUSE mount, or a bind mount (`bind_daemon`).
    pub mode: Mode,
}

/// The data plane `--mode` chooses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// A FUSE mount served by the daemon (its keeper holds the connection).
    #[default]
    Fuse,
    /// A read-only bind mount of the active release, swapped at each switch.
    Bind,
}

/// The mount point as mountinfo spells it, computed without touching the mount point
/// itself (on a dead mount even a stat can fail), unless it ends in `..`.
///
/// For a new mount the spelling is kept as given (made absolute, never resolved): resolving
/// it would follow a symlink someone else planted before `prepare_mount_point` could refuse
/// it.
fn absolute_mount_point(mount_point: &Path, resumed: bool) -> Result<PathBuf, String> {
    if !resumed {
        let abs = std::path::absolute(mount_point)
            .map_err(|e| format!("mount point {}: {e}", mount_point.display()))?;
        return crate::life::strict_modes::without_dots(&abs, "mount point");
    }
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
    // Every directory above it root's and writable only by root, so nothing on the way can
    // be swapped for a symlink between these checks and the mount (see `strict_modes`).
    crate::life::strict_modes::check_parents(mount_point, "mount point")?;
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
    // A directory root owns, outside the deploy path the deploy user owns (the mount point
    // rule refuses one below it), named after the site.
    let site = mount_point
        .parent()
        .and_then(Path::file_name)
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "SITE".into());
    format!(
        "mount point {} is a symlink (to {target}); mounting would follow it and cover its \
         target. Mount switchfs on a fixed directory root owns instead, e.g. \
         /srv/switchfs/{site}, and point the link at it once: ln -sfn /srv/switchfs/{site} {}",
        mount_point.display(),
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
    Ok((limit, crate::fs::fds::inode_budget(limit, threads)?))
}

fn block_signals() -> libc::sigset_t {
    // Blocked before any thread starts, so every thread inherits the mask and only the main
    // thread's sigwait sees them.
    sys::block_signals(&[libc::SIGTERM, libc::SIGINT, libc::SIGHUP, keeper::RETIRE])
}

/// Why the daemon stops.
enum Stop {
    Signal(i32),
    /// The FUSE session ended on its own: someone unmounted us, or the kernel aborted the
    /// connection.
    SessionEnded,
    /// The keeper starts a new binary in our place (an upgrade): leave the mount to it.
    Retire,
}

fn wait_for_stop(set: &libc::sigset_t, session: &fuser::BackgroundSession) -> Stop {
    loop {
        if session.guard.is_finished() {
            return Stop::SessionEnded;
        }
        let Some(sig) = sys::wait_signal(set, Duration::from_millis(200)) else {
            continue; // timeout or EINTR: look at the session again
        };
        if sig == libc::SIGHUP {
            log::info!("SIGHUP goes to the keeper (main pid), which upgrades; ignored here");
            continue;
        }
        if sig == keeper::RETIRE {
            return Stop::Retire;
        }
        return Stop::Signal(sig);
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

/// Runs the daemon until SIGTERM or SIGINT: as the keeper when started by a user or systemd,
/// as the server when started by the keeper (see `keeper`). Returns the exit code.
///
/// # Errors
/// A one-line message for anything that prevents serving; nothing is left mounted then.
pub fn run(args: DaemonArgs) -> Result<u8, String> {
    if args.mode == Mode::Bind {
        return crate::life::bind_daemon::run(&args);
    }
    match keeper::role()? {
        Role::Keeper(adopted) => Keeper::run(adopted),
        Role::Server(link) => serve(&args, link).map(|()| 0),
    }
}

/// The server: resolve paths, configure, mount (or resume the mount), serve, shut down.
fn serve(args: &DaemonArgs, link: ServerLink) -> Result<(), String> {
    let (fd_limit, inode_fds) = open_file_limit(args.threads)?;
    let paths = resolve_paths(args, link.resume.is_some())?;
    // An upgrade's candidate stops here until the running server has left (see `keeper`).
    link.prove()?;
    let configured = configure(args, &paths, &link, inode_fds)?;
    let serving = mount(args, paths, configured, link)?;
    log::info!(
        "serving {} at {} (control socket {}, {} threads, open file limit {fd_limit}: \
         inodes hold at most {inode_fds} descriptors)",
        args.releases.display(),
        serving.ours.mount_point.display(),
        serving.control_path.display(),
        args.threads
    );
    let stop = wait_for_stop(&serving.signals, &serving.background);
    shut_down(serving, stop, args.stop_timeout);
    Ok(())
}

/// Where everything is. A resumed server's mount is already up and was checked by the
/// server that made it: nothing here may touch it (no server answers yet, so a stat of the
/// mount point would hang).
pub(super) struct Paths {
    pub(super) mount_point: PathBuf,
    /// The checked mount point to mount on (a fresh server only).
    target: Option<OwnedFd>,
    pub(super) releases: PathBuf,
    pub(super) control_path: PathBuf,
    pub(super) state_path: PathBuf,
}

pub(super) fn resolve_paths(args: &DaemonArgs, resumed: bool) -> Result<Paths, String> {
    let mount_point = absolute_mount_point(&args.mount_point, resumed)?;
    let target = if resumed {
        None
    } else {
        Some(prepare_mount_point(&mount_point)?)
    };
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
    if let Some(target) = &target {
        let mount_dir = sys::statx_nosync(target.as_fd())
            .map(|st| (st.dev, st.ino))
            .map_err(|e| format!("mount point {}: {e}", mount_point.display()))?;
        check_layout(
            &mount_point,
            mount_dir,
            &releases,
            &state_path,
            &control_path,
        )?;
    }
    if let Some(dir) = state_path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create state directory {}: {e}", dir.display()))?;
        check_state_dir(dir)?;
    }
    Ok(Paths {
        mount_point,
        target,
        releases,
        control_path,
        state_path,
    })
}

/// Refuses a state directory another user owns or can write: its owner could remove the
/// `.lock` (a second daemon then shares the state) or plant a symlink at `<state>.mtimes`.
fn check_state_dir(dir: &Path) -> Result<(), String> {
    let shown = dir.display();
    let fd = sys::open_dir_readable(dir).map_err(|e| format!("state directory {shown}: {e}"))?;
    let st = sys::fstat(fd.as_fd()).map_err(|e| format!("state directory {shown}: {e}"))?;
    let us = sys::euid();
    let why = if st.st_uid != 0 && st.st_uid != us {
        format!("is owned by uid {}", st.st_uid)
    } else if st.st_mode & 0o022 != 0 {
        format!(
            "is writable by group or others (mode {:o})",
            st.st_mode & 0o7777
        )
    } else {
        return Ok(());
    };
    Err(format!(
        "state directory {shown} {why}, who could remove its lock or plant links in it; \
         chown {us} {shown} && chmod go-w {shown}, or give --state in a directory of your own"
    ))
}

/// The daemon before it serves: control socket, PHP pools, the core with the node ids a
/// predecessor handed out, and the switcher showing the persisted release through it.
struct Configured {
    signals: libc::sigset_t,
    access: server::Access,
    listener: UnixListener,
    cleanup_socket: SocketFile,
    php: Option<crate::php::opcache::Php>,
    core: Arc<Core>,
    switcher: Arc<Switcher>,
}

fn configure(
    args: &DaemonArgs,
    paths: &Paths,
    link: &ServerLink,
    inode_fds: usize,
) -> Result<Configured, String> {
    let signals = block_signals();
    let access = server::Access {
        owner_uid: sys::euid(),
        control_group: args.control_group.map(server_group),
        status_group: args.status_group.map(server_group),
    };
    // A resumed server takes the listener the keeper kept: clients that connected while no
    // server ran are waiting in its backlog.
    let listener = match &link.resume {
        Some(resume) => resume
            .listener
            .try_clone()
            .map(UnixListener::from)
            .map_err(|e| format!("cannot take the control socket from the keeper: {e}"))?,
        None => server::bind(&paths.control_path, &access)?,
    };
    let cleanup_socket = SocketFile(paths.control_path.clone());
    // Checked before anything is persisted or mounted, so a bad --php-* option changes nothing.
    let php = if args.php.fpm.is_empty() && args.php.http.is_empty() {
        None
    } else {
        Some(crate::php::opcache::Php::new(
            &args.php,
            &paths.mount_point,
        )?)
    };
    let releases = Switcher::open_releases(&paths.releases)?;
    let config = CoreConfig {
        releases: releases.path().to_path_buf(),
        mtimes_path: Some(crate::fs::mtimes::log_path(&paths.state_path)),
        mount_point: paths.mount_point.clone(),
        control_path: paths.control_path.clone(),
        ttl: args.cache_timeout,
        track_opens: args.track_opens,
        inode_fds,
    };
    let core = Arc::new(Core::new(config)?);
    let switch_config = SwitchConfig {
        state_path: paths.state_path.clone(),
        mount_point: paths.mount_point.clone(),
    };
    let switcher = Switcher::new(
        switch_config,
        releases,
        core.clone(),
        args.initial.as_deref(),
    )?;
    let nodes = link
        .nodes
        .try_clone()
        .map_err(|e| format!("cannot take the node id log: {e}"))?;
    let restored = core
        .resume_nodes(
            Arc::new(NodeLog::new(nodes)),
            switcher.releases(),
            link.first_handle(),
        )
        .map_err(|e| format!("cannot read the node id log: {e}"))?;
    if link.resume.is_some() {
        log::info!("resuming the mount: {restored} node ids restored");
    }
    if let Some(php) = &php {
        php.assume_in_step_with(&switcher.active());
    }
    Ok(Configured {
        signals,
        access,
        listener,
        cleanup_socket,
        php,
        core,
        switcher: Arc::new(switcher),
    })
}

fn fuse_config(args: &DaemonArgs, fsname: &str) -> Config {
    let mut fuse_config = Config::default();
    fuse_config.mount_options = vec![
        MountOption::FSName(fsname.to_string()),
        // fuser passes Subtype only to fusermount3 (not root); as root it calls mount(2)
        // itself with type "fuse", so the kernel option is what makes findmnt and mount(8)
        // say fuse.switchfs there.
        if sys::is_root() {
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
    fuse_config.acl = if sys::is_root() {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    fuse_config.n_threads = Some(args.threads);
    // No cloned descriptors: a request read through a clone dies with the clone's last
    // descriptor, i.e. with a crashed server, instead of waiting for a successor's resend.
    // The warm path sends no request at all, so one queue costs it nothing.
    fuse_config.clone_fd = false;
    fuse_config
}

/// The daemon serving.
struct Serving {
    signals: libc::sigset_t,
    background: ManuallyDrop<fuser::BackgroundSession>,
    ours: mounts::OurMount,
    switcher: Arc<Switcher>,
    control: server::Control,
    cleanup_socket: SocketFile,
    control_path: PathBuf,
}

/// Mounts and answers `FUSE_INIT` (a fresh server, which then hands the connection to the
/// keeper), or resumes the keeper's connection and has the kernel resend what the dead
/// server had taken; then starts the control server.
fn mount(
    args: &DaemonArgs,
    paths: Paths,
    configured: Configured,
    link: ServerLink,
) -> Result<Serving, String> {
    let Configured {
        signals,
        access,
        listener,
        cleanup_socket,
        php,
        core,
        switcher,
    } = configured;
    let mount_point = paths.mount_point.clone();
    let fsname = args.source.clone().unwrap_or_else(|| {
        format!(
            "{}{}",
            mounts::FSNAME_PREFIX,
            paths.releases.to_string_lossy()
        )
    });
    let fuse_config = fuse_config(args, &fsname);
    let adapter = crate::fs::adapter::FuseAdapter::new(core.clone(), args.acl);
    let resumed = link.resume.is_some();
    let session = open_session(adapter, &fuse_config, &link, paths.target, &mount_point)?;
    let params = session
        .init_params()
        .ok_or("the FUSE session did not initialise")?;
    let notifier = session.notifier();
    let dev_fuse = session
        .as_fd()
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
    if resumed && let Err(e) = notifier.resend() {
        // Before Linux 6.9: requests the dead server took wait until their callers give up.
        log::warn!("cannot ask the kernel to resend requests the dead server took: {e}");
    }
    if resumed {
        keeper::fault_after_resume();
    }
    let known = link.resume.as_ref().and_then(|r| r.mount);
    let ours = match known {
        // Never a look at our own mount from a resumed server (see `Resume::mount`).
        Some((id, dev)) => mounts::OurMount {
            id,
            dev,
            mount_point: mount_point.clone(),
            fsname: fsname.clone(),
        },
        None => identify_ours(&mount_point, &fsname, &paths.control_path, resumed)?,
    };
    log::debug!(
        "our mount: id {}, device {}:{}",
        ours.id,
        libc::major(ours.dev),
        libc::minor(ours.dev)
    );
    if !resumed
        && let Err(e) = link.hand_over(
            dev_fuse.as_fd(),
            listener.as_fd(),
            &params,
            (ours.id, ours.dev),
        )
    {
        unmount(&ours);
        return Err(e);
    }
    core.set_invalidator(Box::new(KernelInvalidator::new(
        notifier, dev_fuse, &params,
    )));
    raise_readahead(ours.dev);
    let control =
        start_control(args, &mount_point, listener, &switcher, php, access).inspect_err(|_| {
            if !resumed {
                unmount(&ours);
            }
        })?;
    link.ready();
    link.follow();
    // Also when resumed: a keeper systemd restarted with its stored connection is not
    // started until a READY=1 comes (a repeated one after a server crash is ignored).
    systemd::notify(&format!(
        "READY=1\n{}",
        systemd::serving_status(switcher.active().name())
    ));
    Ok(Serving {
        signals,
        background,
        ours,
        switcher,
        control,
        cleanup_socket,
        control_path: paths.control_path,
    })
}

/// The FUSE session: the keeper's connection resumed (`link.resume`), or a new mount.
fn open_session(
    adapter: crate::fs::adapter::FuseAdapter,
    fuse_config: &fuser::Config,
    link: &ServerLink,
    target: Option<OwnedFd>,
    mount_point: &Path,
) -> Result<fuser::Session<crate::fs::adapter::FuseAdapter>, String> {
    match (&link.resume, target) {
        (Some(resume), _) => {
            let fd = resume
                .fuse
                .try_clone()
                .map_err(|e| format!("cannot take the FUSE connection from the keeper: {e}"))?;
            fuser::Session::resume(
                adapter,
                fd,
                fuse_config.acl,
                fuse_config.clone(),
                resume.params,
            )
        }
        (None, Some(target)) => {
            // As root the kernel mounts on the directory our descriptor holds, so a symlink
            // swapped in since the checks cannot redirect the mount. The setuid helper (not
            // root) cannot see our descriptors and gets the checked path.
            let mount_target = if sys::is_root() {
                sys::fd_path(target.as_fd())
            } else {
                mount_point.to_path_buf()
            };
            fuser::Session::new(adapter, &mount_target, fuse_config)
        }
        (None, None) => return Err("no mount point to mount on".into()),
    }
    .map_err(|e| format!("cannot mount {}: {e}", mount_point.display()))
}

/// Our mount, by identity. Without one there is no safe unmount at shutdown, so a fresh
/// mount that cannot be identified is detached and not served.
fn identify_ours(
    mount_point: &Path,
    fsname: &str,
    control_path: &Path,
    resumed: bool,
) -> Result<mounts::OurMount, String> {
    mounts::identify(mount_point, fsname, control_path).inspect_err(|_| {
        if !resumed {
            mounts::detach_if_serving(mount_point, control_path);
        }
    })
}

pub(super) fn start_control(
    args: &DaemonArgs,
    mount_point: &Path,
    listener: UnixListener,
    switcher: &Arc<Switcher>,
    php: Option<crate::php::opcache::Php>,
    access: server::Access,
) -> Result<server::Control, String> {
    let hooks = Hooks::new(
        args.on_activate.clone(),
        args.hook_timeout,
        mount_point.to_path_buf(),
        switcher.releases().path().to_path_buf(),
    );
    server::spawn(listener, switcher.clone(), php, hooks, access)
        .map_err(|e| format!("cannot start the control server: {e}"))
}

/// How long a retiring server waits for control clients it accepted to be answered.
pub(super) const RETIRE_CLIENTS: Duration = Duration::from_secs(30);

/// Stops as `stop` says: unmount and drain (a signal), clean up after an unmount from
/// outside, or leave the mount to the successor (an upgrade).
fn shut_down(serving: Serving, stop: Stop, stop_timeout: Duration) {
    let Serving {
        background,
        ours,
        switcher,
        control,
        cleanup_socket,
        ..
    } = serving;
    match stop {
        Stop::Retire => {
            // The successor serves the same mount and control socket: remove neither. A
            // switch in progress finishes first; requests a worker holds are resent.
            control.hand_over(RETIRE_CLIENTS);
            switcher.stop_switching();
            std::mem::forget(cleanup_socket);
            log::info!("retiring: the new binary takes over the mount");
            return;
        }
        Stop::Signal(sig) => {
            log::info!(
                "signal {sig} received: unmounting {}",
                ours.mount_point.display()
            );
            systemd::notify("STOPPING=1");
            drop(cleanup_socket);
            let unmounted = unmount(&ours);
            switcher.stop_switching();
            if !unmounted {
                return;
            }
        }
        Stop::SessionEnded => {
            systemd::notify("STOPPING=1");
            drop(cleanup_socket);
            // For a mount made by the mount helper, `umount` is how it is stopped: no warning.
            let level = if systemd::started_by_mount_helper() {
                log::Level::Info
            } else {
                log::Level::Warn
            };
            log::log!(
                level,
                "{} was unmounted or its connection aborted from outside; exiting",
                ours.mount_point.display()
            );
            // An aborted connection leaves our mount in place, dead: take it down.
            unmount(&ours);
            return;
        }
    }
    let deadline = Instant::now() + stop_timeout;
    while !background.guard.is_finished() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    if background.guard.is_finished() {
        log::info!("unmounted; bye");
    } else {
        log::warn!(
            "files under the detached mount are still open after {stop_timeout:?}; exiting anyway"
        );
    }
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
pub(super) struct SocketFile(pub(super) PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A group for the control server's messages, by name when it has one.
pub(super) fn server_group(gid: u32) -> server::Group {
    let name = match sys::group_name(gid) {
        Ok(Some(name)) => name,
        _ => gid.to_string(),
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
    if name.contains('\0') {
        return Err("group name contains NUL".to_string());
    }
    match sys::group_id_of(name) {
        Ok(Some(gid)) => Ok(gid),
        Ok(None) => Err(format!("no such group {name:?}")),
        Err(e) => Err(format!("cannot look up group {name:?}: {e}")),
    }
}
