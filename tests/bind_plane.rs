//! The bind-mode data plane (`switchfs::bind`) on real mounts, through the library API.
//!
//! Each test works in its own temporary directory, bind-mounted on itself and made shared
//! (as the host check requires of the mount point's parent); dropping the fixture detaches
//! that mount and everything in it, so the host's mount table is left as it was. Root only:
//! the tests fail, never skip, without it.

mod common;

use std::ffi::CString;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use switchfs::bind::mount::Persisted;
use switchfs::bind::{BindDocroot, BindOptions};
use switchfs::sys;

static COUNTER: AtomicU64 = AtomicU64::new(0);

fn mount_raw(src: &str, dst: &Path, fstype: Option<&str>, flags: libc::c_ulong) {
    let s = CString::new(src).unwrap();
    let d = CString::new(dst.as_os_str().as_encoded_bytes()).unwrap();
    let t = fstype.map(|t| CString::new(t).unwrap());
    let tp = t.as_ref().map_or(std::ptr::null(), |t| t.as_ptr());
    // SAFETY: valid C strings or null where mount(2) allows it.
    let rc = unsafe { libc::mount(s.as_ptr(), d.as_ptr(), tp, flags, std::ptr::null()) };
    assert_eq!(
        rc,
        0,
        "mount {src} {}: {}",
        dst.display(),
        std::io::Error::last_os_error()
    );
}

fn detach(path: &Path) -> i32 {
    let d = CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: valid C string.
    unsafe { libc::umount2(d.as_ptr(), libc::MNT_DETACH) }
}

/// `<root>/app/{releases,shared}` and the mount point `<root>/app/live/current`, at the same
/// depth under `app` as `releases/N`.
struct Env {
    root: PathBuf,
}

impl Env {
    fn new(tag: &str) -> Env {
        Env::with_propagation(tag, libc::MS_SHARED)
    }

    fn with_propagation(tag: &str, propagation: libc::c_ulong) -> Env {
        assert!(
            common::is_root(),
            "the bind-plane tests mount for real: run them as root"
        );
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let root = std::env::temp_dir().join(format!("sfsb-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        // Built first, so a failing mount below still removes the directory.
        let env = Env { root };
        mount_raw(env.root.to_str().unwrap(), &env.root, None, libc::MS_BIND);
        mount_raw("none", &env.root, None, propagation);
        for d in ["app/releases", "app/shared", "app/live/current"] {
            std::fs::create_dir_all(env.root.join(d)).unwrap();
        }
        env
    }

    fn app(&self) -> PathBuf {
        self.root.join("app")
    }
    fn releases(&self) -> PathBuf {
        self.app().join("releases")
    }
    fn mnt(&self) -> PathBuf {
        self.app().join("live/current")
    }

    fn release(&self, name: &str, version: &str) {
        let dir = self.releases().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("version"), version).unwrap();
    }

    fn releases_fd(&self) -> OwnedFd {
        sys::open_dir_path(&self.releases(), true).unwrap()
    }

    fn release_fd(&self, name: &str) -> OwnedFd {
        sys::open_path_beneath(self.releases_fd().as_fd(), name.as_ref()).unwrap()
    }

    fn open_at(&self, mnt: &Path, persisted: Option<&str>) -> Result<BindDocroot, String> {
        self.open_with(mnt, persisted, BindOptions::default())
    }

    fn open_with(
        &self,
        mnt: &Path,
        persisted: Option<&str>,
        options: BindOptions,
    ) -> Result<BindDocroot, String> {
        let rel = self.releases_fd();
        let dir = persisted.map(|p| (p, self.release_fd(p)));
        let persisted = dir.as_ref().map(|(name, fd)| Persisted {
            name,
            dir: fd.as_fd(),
        });
        BindDocroot::open(mnt, rel.as_fd(), &self.releases(), persisted, options)
    }

    fn open(&self, persisted: Option<&str>) -> Result<BindDocroot, String> {
        self.open_at(&self.mnt(), persisted)
    }

    fn publish(
        &self,
        doc: &mut BindDocroot,
        name: &str,
    ) -> Result<switchfs::bind::Published, String> {
        doc.publish(name, self.release_fd(name).as_fd())
    }

    fn served(&self) -> String {
        std::fs::read_to_string(self.mnt().join("version")).unwrap_or_else(|e| format!("<{e}>"))
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        detach(&self.root);
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// Mounts whose mount point is exactly `path`, from /proc/self/mountinfo.
fn mounts_at(path: &Path) -> usize {
    let want = path.to_string_lossy().replace(' ', "\\040");
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.split(' ').nth(4) == Some(want.as_str()))
        .count()
}

/// The mountinfo lines (ids and all) of mounts at or below the fixture's root: other tests
/// mount elsewhere at the same time.
fn mounts_below(root: &Path) -> Vec<String> {
    let prefix = root.to_string_lossy().replace(' ', "\\040");
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.split(' ').nth(4).is_some_and(|m| m.starts_with(&prefix)))
        .map(str::to_string)
        .collect()
}

/// A shell started with `script`, which prints "ready" once set up, then waits for a line.
struct Held {
    child: Child,
}

impl Held {
    fn start(cmd: &mut Command) -> Held {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready", "helper did not start");
        Held { child }
    }

    fn sh(script: &str) -> Held {
        Held::start(Command::new("sh").arg("-c").arg(script))
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Sends a line and returns everything it prints until it exits.
    fn finish(mut self) -> String {
        use std::io::Read;
        let mut stdin = self.child.stdin.take().unwrap();
        stdin.write_all(b"go\n").unwrap();
        drop(stdin);
        let mut text = String::new();
        self.child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut text)
            .unwrap();
        assert!(
            self.child.wait().unwrap().success(),
            "helper failed: {text}"
        );
        text
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn first_publish_attaches_and_later_ones_swap() {
    let env = Env::new("swap");
    env.release("1", "one");
    env.release("2", "two");
    let mut doc = env.open(None).unwrap();
    assert!(doc.active().is_none());
    let first = env.publish(&mut doc, "1").unwrap();
    assert!(first.previous.is_none());
    assert_eq!(env.served(), "one");
    let second = env.publish(&mut doc, "2").unwrap();
    assert_eq!(
        second.previous.as_ref().map(|m| m.mnt_id),
        Some(first.mount.mnt_id)
    );
    assert_eq!(env.served(), "two");
    assert_eq!(mounts_at(&env.mnt()), 1);
    let err = std::fs::write(env.mnt().join("new"), b"x").unwrap_err();
    assert_eq!(
        err.raw_os_error(),
        Some(libc::EROFS),
        "even root cannot write: {err}"
    );
}

#[test]
fn nobody_sees_permissions_and_read_only_and_a_symlinked_release_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::new("nobody");
    env.release("1", "one");
    std::fs::create_dir(env.releases().join("1/open")).unwrap();
    std::fs::set_permissions(
        env.releases().join("1/open"),
        std::fs::Permissions::from_mode(0o777),
    )
    .unwrap();
    std::fs::write(env.releases().join("1/secret"), "s").unwrap();
    std::fs::set_permissions(
        env.releases().join("1/secret"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let mut doc = env.open(None).unwrap();
    env.publish(&mut doc, "1").unwrap();
    let m = env.mnt();
    let out = common::as_nobody(&["cat", m.join("version").to_str().unwrap()]);
    assert_eq!(common::stdout(&out), "one");
    let out = common::as_nobody(&["cat", m.join("secret").to_str().unwrap()]);
    assert!(
        !out.status.success(),
        "nobody read a root-only file through the bind"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("Permission denied"));
    let out = common::as_nobody(&["touch", m.join("open/x").to_str().unwrap()]);
    assert!(
        !out.status.success(),
        "nobody wrote into a world-writable release dir"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Read-only file system"),
        "{out:?}"
    );

    // The deploy user swaps release 2 for a symlink to /etc: the descriptor opened without
    // following it is the link, and publish refuses it; release 1 stays served.
    std::fs::set_permissions(env.releases(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let link = env.releases().join("2");
    let out = common::as_nobody(&["ln", "-s", "/etc", link.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let fd = sys::open_path_beneath(env.releases_fd().as_fd(), "2".as_ref()).unwrap();
    let err = doc.publish("2", fd.as_fd()).unwrap_err();
    assert!(
        err.contains("not a directory") && !err.contains('\n'),
        "{err}"
    );
    assert_eq!(env.served(), "one");
    assert_eq!(mounts_at(&m), 1);

    // A release only root may enter stays closed to nobody through the bind mount.
    env.release("3", "three");
    std::fs::set_permissions(
        env.releases().join("3"),
        std::fs::Permissions::from_mode(0o700),
    )
    .unwrap();
    env.publish(&mut doc, "3").unwrap();
    assert_eq!(env.served(), "three");
    let out = common::as_nobody(&["cat", m.join("version").to_str().unwrap()]);
    assert!(
        !out.status.success(),
        "nobody read a root-only release through the bind"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
        "{out:?}"
    );
}

/// Maps the file named by its argument, closes it, says "ready", and on a line prints it.
const MMAP_SCRIPT: &str = "import mmap,sys\nf=open(sys.argv[1],'rb')\nm=mmap.mmap(f.fileno(),0,prot=mmap.PROT_READ)\nf.close()\nprint('ready',flush=True)\nsys.stdin.readline()\nsys.stdout.write(m[:].decode())\n";

#[test]
fn held_files_maps_and_working_directories_keep_their_release_and_usage_reports_them() {
    let env = Env::new("held");
    env.release("1", "one");
    env.release("2", "two");
    let mut doc = env.open(None).unwrap();
    let first = env.publish(&mut doc, "1").unwrap();
    let m = env.mnt();
    let file = Held::sh(&format!(
        "exec 3<{}/version; echo ready; read x; cat <&3",
        m.display()
    ));
    let cwd = Held::sh(&format!(
        "cd {} && echo ready && read x && cat version",
        m.display()
    ));
    let map = Held::start(
        Command::new("python3")
            .args(["-c", MMAP_SCRIPT])
            .arg(m.join("version")),
    );
    env.publish(&mut doc, "2").unwrap();
    assert_eq!(env.served(), "two");

    let usage = doc.usage();
    let old = usage
        .iter()
        .find(|u| u.mnt_id == first.mount.mnt_id)
        .expect("old mount reported");
    assert_eq!(old.release, "1");
    assert!(!old.active);
    // Two descriptors: the shell's fd 3, and the one Python's mmap keeps (it dups the fd).
    assert_eq!((old.open_files, old.dirs, old.maps), (2, 1, 1), "{old:?}");
    for held in [&file, &cwd, &map] {
        assert!(
            old.pids.contains(&held.pid()),
            "{old:?} lacks {}",
            held.pid()
        );
    }
    assert!(doc.release_in_use("1"));
    assert_eq!(file.finish(), "one");
    assert_eq!(cwd.finish(), "one");
    assert_eq!(map.finish(), "one");
    assert!(!doc.release_in_use("1"), "nothing holds release 1 any more");
    assert!(doc.detached().is_empty(), "{:?}", doc.detached());
    assert!(doc.release_in_use("2"), "the active release is in use");
}

#[test]
fn a_reader_in_a_slave_mount_namespace_sees_every_switch() {
    let env = Env::new("slave");
    for n in 1..=3 {
        env.release(&n.to_string(), &format!("v{n}"));
    }
    let mut doc = env.open(None).unwrap();
    env.publish(&mut doc, "1").unwrap();
    let script = format!(
        "echo ready; while read x; do cat {}/version; echo; done",
        env.mnt().display()
    );
    let mut reader = Command::new("unshare")
        .args(["-m", "--propagation", "slave", "sh", "-c", &script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(reader.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready");
    let mut input = reader.stdin.take().unwrap();
    for i in 0..30 {
        let name = (i % 3 + 1).to_string();
        env.publish(&mut doc, &name).unwrap();
        input.write_all(b"read\n").unwrap();
        line.clear();
        out.read_line(&mut line).unwrap();
        assert_eq!(
            line.trim(),
            format!("v{name}"),
            "switch {i} not seen in the slave namespace"
        );
    }
    drop(input);
    assert!(reader.wait().unwrap().success());
}

#[test]
fn a_foreign_mount_stacked_on_the_docroot_is_never_detached() {
    let env = Env::new("foreign");
    env.release("1", "one");
    env.release("2", "two");
    let mut doc = env.open(None).unwrap();
    env.publish(&mut doc, "1").unwrap();
    mount_raw("foreign", &env.mnt(), Some("tmpfs"), 0);
    std::fs::write(env.mnt().join("version"), "foreign").unwrap();
    let before = mounts_below(&env.root);
    let err = env.publish(&mut doc, "2").unwrap_err();
    assert!(
        err.contains("did not make") && err.contains("nothing changed") && !err.contains('\n'),
        "{err}"
    );
    assert_eq!(mounts_below(&env.root), before, "the mount table changed");
    assert_eq!(env.served(), "foreign");
    assert_eq!(doc.active().map(|m| m.release.as_str()), Some("1"));
    assert!(doc.unmount().is_err(), "unmount must refuse too");
    assert_eq!(env.served(), "foreign");
    // Once its owner removes it, switches go through again.
    assert_eq!(detach(&env.mnt()), 0);
    assert_eq!(env.served(), "one");
    env.publish(&mut doc, "2").unwrap();
    assert_eq!(env.served(), "two");

    // A starting daemon finds a foreign mount and refuses, one line, mounting nothing.
    let other = env.root.join("app/live/other");
    std::fs::create_dir_all(&other).unwrap();
    mount_raw("foreign", &other, Some("tmpfs"), 0);
    let lines = mounts_below(&env.root);
    let err = env.open_at(&other, Some("1")).unwrap_err();
    assert!(
        err.contains("not release \"1\"") && !err.contains('\n'),
        "{err}"
    );
    let err = env.open_at(&other, None).unwrap_err();
    assert!(err.contains("already has a mount"), "{err}");
    assert_eq!(mounts_below(&env.root), lines);
}

#[test]
fn a_thousand_switches_leave_one_mount_and_no_growth() {
    let env = Env::new("thousand");
    env.release("1", "one");
    env.release("2", "two");
    let mut doc = env.open(None).unwrap();
    env.publish(&mut doc, "1").unwrap();
    let baseline = mounts_below(&env.root);
    let mut total = Vec::with_capacity(1000);
    let mut swap = Vec::with_capacity(1000);
    let fds = [env.release_fd("1"), env.release_fd("2")];
    for i in 0..1000 {
        let (name, fd) = if i % 2 == 0 {
            ("2", &fds[1])
        } else {
            ("1", &fds[0])
        };
        let started = std::time::Instant::now();
        let p = doc.publish(name, fd.as_fd()).unwrap();
        total.push(started.elapsed());
        swap.push(p.swap);
    }
    assert_eq!(env.served(), "one");
    assert_eq!(mounts_at(&env.mnt()), 1);
    assert_eq!(
        mounts_below(&env.root).len(),
        baseline.len(),
        "the mount table grew"
    );
    doc.usage();
    assert!(
        doc.detached().is_empty(),
        "{} detached mounts still recorded",
        doc.detached().len()
    );
    let stats = |v: &mut Vec<Duration>| {
        v.sort();
        (v[v.len() / 2], v[v.len() * 99 / 100])
    };
    let (tm, tp) = stats(&mut total);
    let (sm, sp) = stats(&mut swap);
    println!(
        "bind publish over 1000 switches: median {tm:?}, p99 {tp:?} (swap alone: median {sm:?}, p99 {sp:?})"
    );
}

#[test]
fn relative_links_that_leave_the_release_must_resolve_the_same() {
    let env = Env::new("links");
    env.release("1", "one");
    std::fs::write(env.app().join("shared/.env"), "shared-env").unwrap();
    std::os::unix::fs::symlink("../../shared/.env", env.releases().join("1/.env")).unwrap();
    // Same depth under app as releases/1: the link resolves to app/shared through the mount.
    let mut doc = env.open(None).unwrap();
    env.publish(&mut doc, "1").unwrap();
    assert_eq!(
        std::fs::read_to_string(env.mnt().join(".env")).unwrap(),
        "shared-env"
    );

    // One level up (app/current): `../..` would climb to the fixture root. Refused, naming
    // the link and the fix; nothing mounted.
    let shallow = env.app().join("current");
    std::fs::create_dir_all(&shallow).unwrap();
    let mut doc = env.open_at(&shallow, None).unwrap();
    let err = env.publish(&mut doc, "1").unwrap_err();
    assert!(
        err.contains("link .env -> ../../shared/.env") && err.contains("live/current"),
        "{err}"
    );
    assert!(!err.contains('\n'), "{err}");
    assert_eq!(mounts_at(&shallow), 0);

    // A link into a sibling release can never match.
    env.release("2", "two");
    std::os::unix::fs::symlink("../1/version", env.releases().join("2/prev")).unwrap();
    let err = env.publish(&mut doc, "2").unwrap_err();
    assert!(
        err.contains("link prev -> ../1/version") && err.contains("itself"),
        "{err}"
    );
}

#[test]
fn host_checks_refuse_a_private_parent_and_a_symlinked_path() {
    let env = Env::with_propagation("private", libc::MS_PRIVATE);
    env.release("1", "one");
    let lines = mounts_below(&env.root);
    let err = env.open(None).unwrap_err();
    assert!(
        err.contains("private mount") && err.contains("--make-shared") && !err.contains('\n'),
        "{err}"
    );
    assert_eq!(mounts_below(&env.root), lines);

    let env = Env::new("symlinked");
    std::os::unix::fs::symlink(env.app(), env.root.join("via")).unwrap();
    let err = env
        .open_at(&env.root.join("via/live/current"), None)
        .unwrap_err();
    assert!(
        err.contains("via is a symlink") && !err.contains('\n'),
        "{err}"
    );
    let err = env.open_at(&env.releases().join("1"), None).unwrap_err();
    assert!(err.contains("inside the releases directory"), "{err}");
}

/// Child mode of the test below: publish release 1, say so, then wait to be killed.
const CHILD_ENV: &str = "SWITCHFS_BIND_PLANE_CHILD_ROOT";

#[test]
fn a_killed_publisher_leaves_the_docroot_serving_and_is_adopted() {
    if let Some(root) = std::env::var_os(CHILD_ENV) {
        let env = Env {
            root: PathBuf::from(root),
        };
        let mut doc = env.open(None).unwrap();
        env.publish(&mut doc, "1").unwrap();
        println!("published");
        std::io::stdout().flush().unwrap();
        std::thread::sleep(Duration::from_secs(60));
        std::mem::forget(env); // the parent owns the fixture
        return;
    }
    let env = Env::new("adopt");
    env.release("1", "one");
    env.release("2", "two");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "a_killed_publisher_leaves_the_docroot_serving_and_is_adopted",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, &env.root)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut seen = String::new();
    while !seen.contains("published") {
        let mut line = String::new();
        assert!(
            out.read_line(&mut line).unwrap() > 0,
            "child exited: {seen}"
        );
        seen.push_str(&line);
    }
    sys::signal(child.id() as i32, libc::SIGKILL).unwrap();
    child.wait().unwrap();
    assert_eq!(
        env.served(),
        "one",
        "the killed publisher's mount keeps serving"
    );

    // A new owner that persisted another release refuses; the right one adopts and switches.
    let err = env.open(Some("2")).unwrap_err();
    assert!(err.contains("not release \"2\""), "{err}");
    let mut doc = env.open(Some("1")).unwrap();
    assert_eq!(doc.active().map(|m| m.release.as_str()), Some("1"));
    env.publish(&mut doc, "2").unwrap();
    assert_eq!(env.served(), "two");
    assert_eq!(mounts_at(&env.mnt()), 1);
    doc.unmount().unwrap();
    assert_eq!(mounts_at(&env.mnt()), 0, "unmount removes the mount");
}

#[test]
fn holders_in_another_mount_namespace_are_counted_for_their_release() {
    let env = Env::new("nsheld");
    env.release("1", "one");
    env.release("2", "two");
    let mut doc = env.open(None).unwrap();
    env.publish(&mut doc, "1").unwrap();
    let m = env.mnt().display().to_string();
    let script = format!("exec 3<{m}/version; cd {m}; echo ready; read x; cat <&3; cat version");
    let held = Held::start(Command::new("unshare").args([
        "-m",
        "--propagation",
        "slave",
        "sh",
        "-c",
        &script,
    ]));
    // A second namespace maps the file (Python's mmap keeps a dup of the descriptor too).
    let map = Held::start(
        Command::new("unshare")
            .args(["-m", "--propagation", "slave", "python3", "-c", MMAP_SCRIPT])
            .arg(env.mnt().join("version")),
    );
    // A scan while release 1 is attached there learns each namespace's copy of our mount.
    let now = doc.usage();
    let active = now.iter().find(|u| u.active).unwrap();
    assert!(active.pids.contains(&held.pid()), "{now:?}");
    env.publish(&mut doc, "2").unwrap();
    let after = doc.usage();
    let old = after
        .iter()
        .find(|u| u.release == "1")
        .expect("release 1 still held");
    assert!(!old.active);
    assert_eq!((old.open_files, old.dirs, old.maps), (2, 1, 1), "{old:?}");
    let mut pids = vec![held.pid(), map.pid()];
    pids.sort();
    assert_eq!(old.pids, pids);
    assert_eq!(
        held.finish(),
        "oneone",
        "the slave namespace kept release 1 for its holder"
    );
    assert_eq!(map.finish(), "one");
    assert!(!doc.release_in_use("1"));
}

#[test]
fn adoption_refuses_a_writable_bind_of_the_release_and_publish_recovers_a_removed_mount() {
    let env = Env::new("rwbind");
    env.release("1", "one");
    env.release("2", "two");
    // Someone else's plain (writable) bind of the very release: same root, not ours.
    common::bind_mount(&env.releases().join("1"), &env.mnt());
    let before = mounts_below(&env.root);
    let err = env.open(Some("1")).unwrap_err();
    assert!(
        err.contains("not read-only") && !err.contains('\n'),
        "{err}"
    );
    assert_eq!(mounts_below(&env.root), before);
    assert_eq!(detach(&env.mnt()), 0);

    // The mount point spelled with a trailing slash is the same mount point.
    let spelled = PathBuf::from(format!("{}/", env.mnt().display()));
    let mut doc = env.open_at(&spelled, None).unwrap();
    assert_eq!(doc.mount_point(), env.mnt());
    env.publish(&mut doc, "1").unwrap();
    // An operator unmounts it by hand: the next publish attaches afresh instead of refusing.
    assert_eq!(detach(&env.mnt()), 0);
    assert_eq!(env.served(), "<No such file or directory (os error 2)>");
    let p = env.publish(&mut doc, "2").unwrap();
    assert_eq!(p.previous.map(|m| m.release), Some("1".to_string()));
    assert_eq!(env.served(), "two");
    assert_eq!(mounts_at(&env.mnt()), 1);
}

#[test]
fn a_foreign_mount_inside_the_docroot_is_never_detached_with_ours() {
    let env = Env::new("inside");
    env.release("1", "one");
    env.release("2", "two");
    std::fs::create_dir(env.releases().join("1/sub")).unwrap();
    let mut doc = env.open(None).unwrap();
    env.publish(&mut doc, "1").unwrap();
    let sub = env.mnt().join("sub");
    mount_raw("inside", &sub, Some("tmpfs"), 0);
    std::fs::write(sub.join("theirs"), "x").unwrap();
    let before = mounts_below(&env.root);
    let err = env.publish(&mut doc, "2").unwrap_err();
    assert!(
        err.contains("inside the docroot") && err.contains("nothing changed"),
        "{err}"
    );
    assert!(!err.contains('\n'), "{err}");
    assert!(doc.unmount().is_err());
    assert_eq!(mounts_below(&env.root), before, "the mount table changed");
    assert_eq!(std::fs::read_to_string(sub.join("theirs")).unwrap(), "x");
    assert_eq!(env.served(), "one");
}

#[test]
fn the_link_check_walks_deep_trees_and_refuses_past_its_cap() {
    let env = Env::new("linkcap");
    env.release("1", "one");
    let deep = env.releases().join("1/public/a/b");
    std::fs::create_dir_all(&deep).unwrap();
    std::fs::create_dir_all(env.app().join("shared/storage")).unwrap();
    // Laravel's public/storage, three levels down: climbs to app, as through the mount.
    std::os::unix::fs::symlink("../../../../../shared/storage", deep.join("storage")).unwrap();
    for i in 0..20 {
        std::fs::write(env.releases().join(format!("1/f{i}")), "x").unwrap();
    }
    let mut doc = env.open(None).unwrap();
    env.publish(&mut doc, "1").unwrap();
    assert!(env.mnt().join("public/a/b/storage").is_dir());

    // One link deep in the tree that climbs to the wrong place is found (into the releases
    // directory: through the mount it would climb into live/ instead).
    env.release("2", "two");
    let deep2 = env.releases().join("2/x/y/z");
    std::fs::create_dir_all(&deep2).unwrap();
    std::os::unix::fs::symlink("../../../../1/version", deep2.join("up")).unwrap();
    let err = env.publish(&mut doc, "2").unwrap_err();
    assert!(
        err.contains("link x/y/z/up -> ../../../../1/version"),
        "{err}"
    );

    let options = BindOptions {
        link_check_limit: 10,
        ..BindOptions::default()
    };
    let other = env.app().join("live/other");
    std::fs::create_dir_all(&other).unwrap();
    let capped = env.open_with(&other, None, options);
    let mut capped = capped.unwrap();
    let err = capped
        .publish("1", env.release_fd("1").as_fd())
        .unwrap_err();
    assert!(
        err.contains("more than 10 entries") && !err.contains('\n'),
        "{err}"
    );
    assert_eq!(mounts_at(&other), 0);
}
