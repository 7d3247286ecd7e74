//! The daemon in `--mode bind`: the same checks, control socket, state, history, hooks and
//! PHP pools as in FUSE mode, with the docroot a read-only bind mount of the active release
//! (`bind`). No FUSE session and no keeper: nothing serves through the daemon, so there is
//! no connection to keep alive across a crash.
//!
//! - **Crash or SIGKILL**: the bind mount stays and serves; only switching waits until the
//!   daemon is started again (systemd's `Restart=`), which adopts the mount (its root must be
//!   the persisted active release, or the previous one when the daemon died between
//!   persisting a switch and publishing it; the restore then finishes that switch).
//! - **Stop** (SIGTERM/SIGINT): the daemon exits and **leaves the mount serving** the active
//!   release, so a restart or an upgrade has no moment with an empty docroot. `umount
//!   MOUNTPOINT` removes it (which also stops a daemon still running: it exits once its
//!   mount is gone, as a FUSE daemon does, so the mount helper's `umount` works the same).
//! - **Upgrade** (SIGHUP, `systemctl reload`): a switch in progress finishes, control clients
//!   already accepted are answered, then the process `exec`s the binary installed at its
//!   path with the same arguments, keeping its pid; the new binary adopts the mount. During
//!   the few milliseconds of the `exec` the control socket refuses connections; the docroot
//!   serves throughout.

use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::daemon::{DaemonArgs, Paths, RETIRE_CLIENTS, SocketFile, resolve_paths, server_group};
use crate::bind::docroot::BindPlane;
use crate::bind::mount::Persisted;
use crate::bind::{BindDocroot, BindOptions};
use crate::control::server;
use crate::life::systemd;
use crate::switch::release::ReleaseSet;
use crate::switch::switcher::{SwitchConfig, Switcher};
use crate::sys;

/// Runs the bind-mode daemon until SIGTERM or SIGINT, or until its mount is removed.
///
/// # Errors
/// A one-line message for anything that prevents serving; nothing was mounted then.
pub(super) fn run(args: &DaemonArgs) -> Result<u8, String> {
    let binary = std::env::current_exe().ok();
    let signals = sys::block_signals(&[libc::SIGTERM, libc::SIGINT, libc::SIGHUP]);
    let paths = resolve_paths(args, false)?;
    let releases = Switcher::open_releases(&paths.releases)?;
    let docroot = open_docroot(&paths, &releases)?;
    let plane = Arc::new(BindPlane::new(docroot));
    let access = server::Access {
        owner_uid: sys::euid(),
        control_group: args.control_group.map(server_group),
        status_group: args.status_group.map(server_group),
    };
    let listener = server::bind(&paths.control_path, &access)?;
    let cleanup_socket = SocketFile(paths.control_path.clone());
    let php = php_pools(args, &paths)?;
    let switch_config = SwitchConfig {
        state_path: paths.state_path.clone(),
        mount_point: paths.mount_point.clone(),
    };
    let switcher = Arc::new(Switcher::new(
        switch_config,
        releases,
        plane.clone(),
        args.initial.as_deref(),
    )?);
    if let Some(php) = &php {
        php.assume_in_step_with(&switcher.active());
    }
    let control =
        super::daemon::start_control(args, &paths.mount_point, listener, &switcher, php, access)?;
    systemd::notify("READY=1");
    log::info!(
        "serving {} at {} as a bind mount (control socket {}); stopping leaves the mount \
         serving, `umount {}` removes it",
        paths.releases.display(),
        paths.mount_point.display(),
        paths.control_path.display(),
        paths.mount_point.display()
    );
    let stop = wait_for_stop(&signals, &plane);
    systemd::notify("STOPPING=1");
    match stop {
        BindStop::Signal(sig) => {
            log::info!("signal {sig} received: exiting; the bind mount stays and serves");
            control.hand_over(RETIRE_CLIENTS);
            switcher.stop_switching();
        }
        BindStop::Unmounted => {
            log::warn!(
                "{} was unmounted from outside; exiting",
                paths.mount_point.display()
            );
            switcher.stop_switching();
        }
        BindStop::Upgrade => {
            control.hand_over(RETIRE_CLIENTS);
            switcher.stop_switching();
            drop(cleanup_socket);
            return Err(reexec(binary));
        }
    }
    drop(cleanup_socket);
    Ok(0)
}

/// Opens the docroot (host checks, then adoption of the mount a previous daemon left).
fn open_docroot(paths: &Paths, releases: &ReleaseSet) -> Result<BindDocroot, String> {
    let persisted = crate::switch::state::load(&paths.state_path).ok().flatten();
    let open = |name: Option<&str>| -> Result<BindDocroot, String> {
        let dir = name.and_then(|n| releases.open_release(n).ok().map(|fd| (n, fd)));
        let persisted = dir.as_ref().map(|(name, fd)| Persisted {
            name,
            dir: fd.as_fd(),
        });
        BindDocroot::open(
            &paths.mount_point,
            releases.fd(),
            releases.path(),
            persisted,
            BindOptions::default(),
        )
    };
    let active = persisted.as_ref().map(|p| p.active.as_str());
    match open(active) {
        Ok(d) => Ok(d),
        // Killed after persisting a switch and before publishing it: the mount still shows
        // the previous release, which the restore's publish now replaces.
        Err(e) => match persisted.as_ref().and_then(|p| p.previous.as_deref()) {
            Some(previous) => open(Some(previous)).map_err(|_| e),
            None => Err(e),
        },
    }
}

/// The PHP pools, checked before anything is switched; one warning without any.
fn php_pools(args: &DaemonArgs, paths: &Paths) -> Result<Option<crate::php::opcache::Php>, String> {
    if args.php.fpm.is_empty() && args.php.http.is_empty() {
        log::warn!(
            "bind mode without --php-fpm or --php-http: PHP sees the files' real mtimes, so \
             releases with identical mtimes (e.g. from a build artifact) need PHP's own reload \
             after each switch (or give --php-fpm/--php-http)"
        );
        return Ok(None);
    }
    crate::php::opcache::Php::new(&args.php, &paths.mount_point).map(Some)
}

enum BindStop {
    Signal(i32),
    Unmounted,
    Upgrade,
}

fn wait_for_stop(set: &libc::sigset_t, plane: &BindPlane) -> BindStop {
    loop {
        if !plane.still_mounted() {
            return BindStop::Unmounted;
        }
        match sys::wait_signal(set, Duration::from_millis(200)) {
            None => {}
            Some(libc::SIGHUP) => return BindStop::Upgrade,
            Some(sig) => return BindStop::Signal(sig),
        }
    }
}

/// Replaces this process by the binary now installed at its path (an upgrade). Returns
/// only when that fails, with the reason.
fn reexec(binary: Option<PathBuf>) -> String {
    use std::os::unix::process::CommandExt;
    let Some(binary) = binary else {
        return "SIGHUP: cannot tell which binary runs; restart the service to upgrade".into();
    };
    log::info!("SIGHUP: upgrading to {}", binary.display());
    // The signal mask survives exec; the new process blocks the same signals anyway.
    let err = std::process::Command::new(&binary)
        .args(std::env::args_os().skip(1))
        .exec();
    format!(
        "upgrade: cannot run {}: {err}; the bind mount goes on serving, restart the service",
        binary.display()
    )
}
