//! As the attacker: the mount point reached through a directory the deploy user
//! (`nobody` here) controls, and the state directory another user owns (README "How it
//! works, and the rules it keeps": "Mount point and shutdown", "State directory").

use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::common::*;

const HELPER: &str = env!("CARGO_BIN_EXE_mount_fuse_switchfs");

fn need_root() {
    assert!(is_root(), "these tests act as root against nobody (65534)");
}

fn chown_nobody(path: &Path) {
    std::os::unix::fs::chown(path, Some(65534), Some(65534)).unwrap();
}

/// `root/secret` (root's, 0700, with a key file) and `root/www` owned by nobody holding
/// `current`, a symlink to `secret`: the deploy path a Capistrano user owns.
fn deploy_layout(fx: &Fixture) -> (PathBuf, PathBuf) {
    fx.two_releases();
    fx.open_up_for_others();
    let secret = fx.root.join("secret");
    fs::create_dir(&secret).unwrap();
    fs::write(secret.join("authorized_keys"), "root's keys").unwrap();
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o700)).unwrap();
    let www = fx.root.join("www");
    fs::create_dir(&www).unwrap();
    chown_nobody(&www);
    let out = as_nobody(&[
        "ln",
        "-sfn",
        secret.to_str().unwrap(),
        www.join("current").to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{out:?}");
    (www, secret)
}

fn refuse_mount_point(fx: &Fixture, mount_point: &Path) -> String {
    let (socket, state) = (fx.socket(), fx.state());
    let releases = fx.releases();
    let args: Vec<&OsStr> = vec![
        OsStr::new("--releases"),
        releases.as_os_str(),
        OsStr::new("--initial"),
        OsStr::new("1"),
        OsStr::new("--control"),
        socket.as_os_str(),
        OsStr::new("--state"),
        state.as_os_str(),
        mount_point.as_os_str(),
    ];
    refused_start(fx, &args)
}

/// `mount.fuse.switchfs switchfs MOUNTPOINT -o ...` run directly, as mount(8) would.
fn helper(fx: &Fixture, mount_point: &Path) -> std::process::Output {
    let opts = format!(
        "releases={},initial=1,state={},control={},log={}",
        fx.releases().display(),
        fx.state().display(),
        fx.socket().display(),
        fx.root.join("helper.log").display()
    );
    Command::new(HELPER)
        .arg("switchfs")
        .arg(mount_point)
        .args(["-o", &opts])
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn assert_untouched(fx: &Fixture, secret: &Path) {
    assert_eq!(
        mounts_under(&fx.root),
        Vec::<String>::new(),
        "something got mounted"
    );
    assert_eq!(
        fs::read_to_string(secret.join("authorized_keys")).unwrap(),
        "root's keys"
    );
}

#[test]
fn a_mount_point_in_a_deploy_users_directory_is_refused_in_every_spelling() {
    need_root();
    let fx = Fixture::new("edge-spell");
    let (www, secret) = deploy_layout(&fx);
    fs::create_dir(www.join("real")).unwrap();
    let spellings = [
        www.join("current"),
        PathBuf::from(format!("{}/", www.join("current").display())),
        www.join(".").join("current"),
        www.join("real").join("..").join("current"),
        // even a real directory there: nobody can swap it for a link before the mount.
        www.join("real"),
    ];
    for spelled in &spellings {
        let err = refuse_mount_point(&fx, spelled);
        assert!(
            err.contains(&format!(
                "directory {} is owned by uid 65534",
                www.display()
            )),
            "{spelled:?}: {err}"
        );
        let out = helper(&fx, spelled);
        let herr = one_line_error(&out);
        assert!(
            herr.contains("owned by uid 65534"),
            "helper, {spelled:?}: {herr}"
        );
        assert_untouched(&fx, &secret);
    }
    // A symlink anywhere on the way in a root-owned path, and `..` after one.
    let hop = fx.root.join("hop");
    symlink(&fx.root, &hop).unwrap();
    for spelled in [
        hop.join("secret"),
        hop.join("mnt"),
        hop.join("mnt").join("..").join("mnt"),
    ] {
        let err = refuse_mount_point(&fx, &spelled);
        assert!(err.contains("is a symlink"), "{spelled:?}: {err}");
        let herr = one_line_error(&helper(&fx, &spelled));
        assert!(herr.contains("is a symlink"), "helper, {spelled:?}: {herr}");
        assert_untouched(&fx, &secret);
    }
}

/// The race: the deploy user flips `current` between a directory and a link to root's
/// directory as fast as it can while root starts switchfs on it, through the daemon and
/// through the helper. No start may mount anything, let alone over `secret`.
#[test]
fn root_never_mounts_over_the_target_while_the_deploy_user_flips_current() {
    need_root();
    let fx = Fixture::new("edge-race");
    let (www, secret) = deploy_layout(&fx);
    // link -> directory and back, each by rename (atomic where the kernel allows it).
    let script = format!(
        "cd {www} || exit 1; while :; do mkdir d; mv -T d current; ln -s {secret} l; \
         mv -T current gone; mv -T l current; rmdir gone; done 2>/dev/null",
        www = www.display(),
        secret = secret.display()
    );
    let _attacker = Attacker(nobody_shell(&script).spawn().unwrap());
    for round in 0..15 {
        let err = refuse_mount_point(&fx, &www.join("current"));
        assert!(err.contains("owned by uid 65534"), "round {round}: {err}");
        let herr = one_line_error(&helper(&fx, &www.join("current")));
        assert!(herr.contains("owned by uid 65534"), "round {round}: {herr}");
        assert_untouched(&fx, &secret);
    }
}

/// Stops the attacker loop however the test ends (before the fixture goes).
struct Attacker(std::process::Child);

impl Drop for Attacker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// /tmp's rule: a sticky root-owned directory is trusted for root's own entry (nobody can
/// rename or remove it), not for an entry the attacker created first.
#[test]
fn a_sticky_directory_is_trusted_only_for_roots_own_entry() {
    need_root();
    let fx = Fixture::new("edge-sticky");
    fx.two_releases();
    fx.open_up_for_others();
    let sticky = fx.root.join("sticky");
    fs::create_dir(&sticky).unwrap();
    fs::set_permissions(&sticky, fs::Permissions::from_mode(0o1777)).unwrap();
    let theirs = sticky.join("theirs");
    let out = as_nobody(&["mkdir", theirs.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let err = refuse_mount_point(&fx, &theirs);
    assert!(
        err.contains("is sticky and writable by others, and the entry in it belongs to uid 65534"),
        "{err}"
    );
    let mine = sticky.join("mine");
    fs::create_dir(&mine).unwrap();
    let d = Daemon::start_with(&fx, &mine, &["--initial", "1"]).unwrap();
    assert!(is_mounted(&mine));
    drop(d);
    // A group-writable, non-sticky directory is refused even if root owns everything.
    let shared = fx.root.join("shared");
    fs::create_dir_all(shared.join("mnt")).unwrap();
    fs::set_permissions(&shared, fs::Permissions::from_mode(0o775)).unwrap();
    let err = refuse_mount_point(&fx, &shared.join("mnt"));
    assert!(
        err.contains("writable by group or others (mode 775)"),
        "{err}"
    );
}

/// The state directory's non-root owner could remove `.lock` under a running daemon (a
/// second one then shares the state) or plant a link at `<state>.mtimes`.
#[test]
fn a_state_directory_another_user_owns_is_refused_at_start() {
    need_root();
    let fx = Fixture::new("edge-statedir");
    fx.two_releases();
    let dir = fx.root.join("state");
    fs::create_dir(&dir).unwrap();
    let state = dir.join("app.state");
    let first = fx.start(&["--initial", "1", "--state", state.to_str().unwrap()]);
    // Handed to nobody later (a chown -R by a deploy script): nobody removes the lock.
    chown_nobody(&dir);
    let lock = dir.join("app.state.lock");
    let out = as_nobody(&["rm", "-f", lock.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let other_mnt = fx.root.join("mnt2");
    fs::create_dir(&other_mnt).unwrap();
    let other_socket = fx.root.join("other.sock");
    let releases = fx.releases();
    let args: Vec<&OsStr> = vec![
        OsStr::new("--releases"),
        releases.as_os_str(),
        OsStr::new("--control"),
        other_socket.as_os_str(),
        OsStr::new("--state"),
        state.as_os_str(),
        other_mnt.as_os_str(),
    ];
    let err = refused_start(&fx, &args);
    assert!(
        err.contains(&format!(
            "state directory {} is owned by uid 65534",
            dir.display()
        )),
        "{err}"
    );
    assert!(err.contains("chown"), "says the fix: {err}");
    assert!(!is_mounted(&other_mnt));
    assert_eq!(fx.active(), "1", "the running daemon goes on");
    drop(first);
}

#[test]
fn a_symlink_planted_at_the_mtime_registry_refuses_the_start() {
    need_root();
    let fx = Fixture::new("edge-mtimes");
    fx.two_releases();
    let elsewhere = fx.root.join("elsewhere");
    fs::write(&elsewhere, "").unwrap();
    let registry = PathBuf::from(format!("{}.mtimes", fx.state().display()));
    symlink(&elsewhere, &registry).unwrap();
    let err = refuse_mount_point(&fx, &fx.mnt());
    assert!(
        err.contains(&format!(
            "mtime registry {} is unusable",
            registry.display()
        )),
        "{err}"
    );
    assert!(!is_mounted(&fx.mnt()));
    // Another user's file there: refused too, never used in memory alone.
    fs::remove_file(&registry).unwrap();
    fs::write(&registry, "").unwrap();
    chown_nobody(&registry);
    let err = refuse_mount_point(&fx, &fx.mnt());
    assert!(err.contains("mtime registry"), "{err}");
    fs::remove_file(&registry).unwrap();
    let d = fx.start(&["--initial", "1"]);
    assert!(fs::symlink_metadata(&registry).unwrap().is_file());
    drop(d);
}
