//! A hostile host: the deploy user (or any user who can write where switchfs works) tries to
//! make the root daemon delete or overwrite what it should not, or to make it serve a release
//! that is being deleted. README "How it works, and the rules it keeps" (Bad input changes
//! nothing; The state file) and docs/operations.md (Deploy, roll back, clean up).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

fn need_root() {
    assert!(
        is_root(),
        "these tests act as user nobody against a root daemon: run them as root"
    );
}

/// Gives `path` and everything in it to user nobody, as a deploy user would own it.
fn give_to_nobody(path: &Path) {
    let st = Command::new("chown")
        .args(["-R", "65534:65534"])
        .arg(path)
        .status()
        .unwrap();
    assert!(st.success(), "chown -R nobody {}", path.display());
}

/// A root-only directory with `names` as subdirectories each holding a file `precious`: what
/// an attacker would like root to delete.
fn root_only_dir(path: &Path, names: &[&str]) {
    for name in names {
        fs::create_dir_all(path.join(name)).unwrap();
        fs::write(path.join(name).join("precious"), "keep me").unwrap();
    }
    fs::set_permissions(path, fs::Permissions::from_mode(0o700)).unwrap();
}

fn all_precious_present(path: &Path, names: &[&str]) {
    for name in names {
        let file = path.join(name).join("precious");
        assert_eq!(
            fs::read_to_string(&file).ok().as_deref(),
            Some("keep me"),
            "{} was deleted by root",
            file.display()
        );
    }
}

/// Prune deletes through the releases directory the daemon pinned at start; its path turned
/// into a symlink (by the deploy user who owns its parent) must not redirect the deletion.
#[test]
fn prune_deletes_in_the_pinned_releases_dir_not_where_its_path_now_points() {
    need_root();
    let fx = Fixture::new("hprune");
    fx.two_releases();
    for rel in ["3", "4"] {
        fx.write(rel, "index.php", rel);
    }
    let victim = fx.root.join("root-only");
    root_only_dir(&victim, &["2", "3"]);
    let _d = fx.start(&["--initial", "1"]);
    fx.activate("4");
    // The deploy user owns the parent of `releases`: swap it for a symlink.
    let st = Command::new("chown")
        .arg("65534:65534")
        .arg(&fx.root)
        .status();
    assert!(st.is_ok_and(|s| s.success()), "chown nobody");
    fs::set_permissions(&fx.root, fs::Permissions::from_mode(0o755)).unwrap();
    let swap = format!(
        "cd {} && mv releases releases.real && ln -s root-only releases",
        fx.root.display()
    );
    let out = as_nobody(&["sh", "-c", &swap]);
    assert!(out.status.success(), "swap: {out:?}");
    assert_eq!(fx.read("index.php"), "4", "the site keeps serving");
    let out = fx.ctl(&["prune", "--keep", "1", "--yes"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        stdout(&out),
        "keep 1 (active or previous)\ndeleted 2\ndeleted 3\n"
    );
    all_precious_present(&victim, &["2", "3"]);
    let real = fx.root.join("releases.real");
    assert!(!real.join("2").exists() && !real.join("3").exists());
    assert!(real.join("1").exists() && real.join("4").exists());
}

/// Inside a release the deploy user owns, subdirectories are swapped for symlinks to a
/// root-owned directory while prune walks the tree: nothing outside may be deleted.
#[test]
fn prune_never_follows_a_directory_swapped_for_a_symlink_mid_walk() {
    need_root();
    let fx = Fixture::new("hrace");
    fx.two_releases();
    let victim = fx.root.join("root-only");
    let dirs: Vec<String> = (0..40).map(|i| format!("d{i}")).collect();
    let names: Vec<&str> = dirs.iter().map(String::as_str).collect();
    root_only_dir(&victim, &names);
    fs::set_permissions(&victim, fs::Permissions::from_mode(0o755)).unwrap();
    fx.write("999", "index.php", "999"); // active, and newest: every other release may go
    let _d = fx.start(&["--initial", "999"]);
    for round in 0..6 {
        let rel = format!("{}", 10 + round);
        for d in &dirs {
            for f in 0..25 {
                fx.write(&rel, &format!("{d}/sub/f{f}"), "x");
            }
        }
        give_to_nobody(&fx.releases().join(&rel));
        // The attacker keeps renaming each subdirectory away and planting a symlink to the
        // root-owned directory of the same name in its place (from outside the release: a
        // working directory inside would rightly keep it from being pruned at all).
        let script = format!(
            "R={rel}; while :; do for d in {all}; do \
             mv -T $R/$d $R/.$d 2>/dev/null && ln -sfn {victim}/$d $R/$d; \
             rm -f $R/$d 2>/dev/null; mv -T $R/.$d $R/$d 2>/dev/null; done; done",
            rel = fx.releases().join(&rel).display(),
            all = names.join(" "),
            victim = victim.display()
        );
        let mut attacker = nobody_shell(&script)
            .current_dir("/")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(20));
        let out = fx.ctl(&["prune", "--keep", "1", "--yes"]);
        let _ = attacker.kill();
        let _ = attacker.wait();
        all_precious_present(&victim, &names);
        // Deleted, or refused with one line when the attacker's moves got in the way; either
        // way the next prune (attacker gone) finishes the job.
        if out.status.success() {
            eprintln!("round {round}: {}", stdout(&out).trim().replace('\n', "; "));
        } else {
            eprintln!("round {round}: {}", one_line_error(&out));
        }
        let out = fx.ctl(&["prune", "--keep", "1", "--yes"]);
        assert!(out.status.success(), "{out:?}");
        assert!(!fx.releases().join(&rel).exists(), "round {round}");
        all_precious_present(&victim, &names);
    }
}

/// A mount inside a release (a tmpfs, a bind mount) belongs to someone else: prune refuses to
/// delete into it, with one line, and leaves its content alone.
#[test]
fn prune_refuses_to_delete_into_a_mount_inside_a_release() {
    need_root();
    let fx = Fixture::new("hmnt");
    fx.two_releases();
    fx.write("3", "index.php", "3");
    fs::create_dir_all(fx.releases().join("2/uploads")).unwrap();
    let inner = fx.releases().join("2/uploads");
    let st = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(&inner)
        .status()
        .unwrap();
    assert!(st.success(), "mount tmpfs (needs root)");
    fs::write(inner.join("customer.jpg"), "data").unwrap();
    let _d = fx.start(&["--initial", "3"]);
    let out = fx.ctl(&["prune", "--keep", "1", "--yes"]);
    let survived = fs::read_to_string(inner.join("customer.jpg")).ok();
    let unmounted = Command::new("umount").arg(&inner).status();
    let err = one_line_error(&out);
    assert!(err.contains("uploads is a mount point"), "{err}");
    assert!(unmounted.is_ok_and(|s| s.success()), "tmpfs still mounted?");
    assert_eq!(
        survived.as_deref(),
        Some("data"),
        "deleted inside the mount"
    );
}

/// docs/operations.md: prune never deletes a release a process still uses, also when the
/// process uses it through its real path rather than the mount.
#[test]
fn prune_keeps_releases_used_through_their_real_path() {
    let fx = Fixture::new("hreal");
    fx.two_releases();
    for rel in ["1", "2", "3", "4", "5", "6"] {
        fx.write(rel, "index.php", rel);
        fx.write(rel, "public/app.php", rel);
    }
    let _d = fx.start(&["--initial", "1"]);
    fx.activate("6");
    let parked = ParkedShell::park(&fx.releases().join("2/public"), "true");
    let held = fs::File::open(fx.releases().join("3/public/app.php")).unwrap();
    let mapper = MappedFile::map(&fx.releases().join("4/public/app.php"));
    let out = fx.ctl(&["prune", "--keep", "1", "--yes"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        stdout(&out),
        "keep 1 (active or previous)\n\
         keep 2 (in use: 1 working dir outside the mount)\n\
         keep 3 (in use: 1 open file outside the mount)\n\
         keep 4 (in use: 1 open file, 1 memory map outside the mount)\n\
         deleted 5\n"
    );
    assert!(fx.releases().join("2/public").exists() && fx.releases().join("3").exists());
    parked.resume();
    drop(held);
    drop(mapper);
    let out = fx.ctl(&["prune", "--keep", "1", "--yes"]);
    assert_eq!(
        stdout(&out),
        "keep 1 (active or previous)\ndeleted 2\ndeleted 3\ndeleted 4\n"
    );
}

/// A process (python3) that maps `path` read-only until dropped. It closes its own descriptor,
/// but Python's mmap keeps a duplicate, so the process shows one open file and one map.
struct MappedFile(std::process::Child);

impl MappedFile {
    fn map(path: &Path) -> MappedFile {
        use std::io::BufRead;
        let script = "import mmap, os, sys\n\
            fd = os.open(sys.argv[1], os.O_RDONLY)\n\
            m = mmap.mmap(fd, 0, prot=mmap.PROT_READ)\n\
            os.close(fd)\n\
            print('ready', flush=True)\n\
            sys.stdin.readline()\n";
        let mut child = Command::new("python3")
            .args(["-c", script])
            .arg(path)
            .current_dir("/")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 is needed to map a file (apt-get install python3)");
        let mut line = String::new();
        let out = child.stdout.take().unwrap();
        std::io::BufReader::new(out).read_line(&mut line).unwrap();
        assert_eq!(line, "ready\n", "python3 could not map {}", path.display());
        MappedFile(child)
    }
}

impl Drop for MappedFile {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// README "The state file": with `--state` in a directory other users can write, a symlink
/// planted at any name the daemon uses (the state file, its temporary as it was named before,
/// the lock file) never makes root write through it.
#[test]
fn the_state_file_never_follows_a_symlink_planted_in_its_directory() {
    need_root();
    let fx = Fixture::new("hstate");
    fx.two_releases();
    fx.open_up_for_others();
    let dir = fx.root.join("statedir");
    fs::create_dir(&dir).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
    let important = fx.root.join("important");
    fs::write(&important, "root's data").unwrap();
    fs::set_permissions(&important, fs::Permissions::from_mode(0o600)).unwrap();
    let state = dir.join("app.state");
    // A state directory others can write is refused outright (issue 16): nobody could
    // otherwise remove the lock or plant the links below.
    let (releases, socket, mnt) = (fx.releases(), fx.socket(), fx.mnt());
    let args = [
        "--releases".as_ref(),
        releases.as_os_str(),
        "--control".as_ref(),
        socket.as_os_str(),
        "--state".as_ref(),
        state.as_os_str(),
        mnt.as_os_str(),
    ];
    let err = refused_start(&fx, &args);
    assert!(
        err.contains("state directory") && err.contains("writable by group or others"),
        "{err}"
    );
    assert!(
        fs::read_dir(&dir).unwrap().next().is_none(),
        "nothing written"
    );
    // The links such a directory let others plant (planted here by root, who alone can
    // now): never followed.
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
    let plant = |name: &str| {
        let _ = fs::remove_file(dir.join(name));
        std::os::unix::fs::symlink(&important, dir.join(name)).unwrap();
    };
    // A symlinked state file: not read, and replaced (not followed) by the first save.
    plant("app.state");
    let d = fx.start(&["--initial", "1", "--state", state.to_str().unwrap()]);
    assert!(
        fs::read(&important).unwrap() == b"root's data",
        "root's file overwritten"
    );
    assert!(fs::symlink_metadata(&state).unwrap().is_file());
    // The state file deleted under the daemon, and the temporary name earlier versions used
    // (".<state>.tmp.<pid>") planted, so the next switch writes the file anew.
    fs::remove_file(&state).unwrap();
    plant(&format!(".app.state.tmp.{}", d.pid()));
    fx.activate("2");
    assert!(
        fs::read(&important).unwrap() == b"root's data",
        "root's file overwritten"
    );
    assert_eq!(persisted(&state), "active=2 previous=1");
    // And the state file replaced by a symlink while the daemon holds it open.
    fs::remove_file(&state).unwrap();
    plant("app.state");
    fx.activate("1");
    assert!(
        fs::read(&important).unwrap() == b"root's data",
        "root's file overwritten"
    );
    assert!(fs::symlink_metadata(&state).unwrap().is_file());
    assert_eq!(persisted(&state), "active=1 previous=2");
    drop(d);
    // A symlinked lock file: the daemon refuses to start, and writes nothing through it.
    fs::remove_file(dir.join("app.state.lock")).unwrap();
    plant("app.state.lock");
    let err = Daemon::start(&fx, &["--initial", "1", "--state", state.to_str().unwrap()])
        .err()
        .expect("a symlinked lock file must be refused");
    assert!(err.contains("app.state.lock"), "{err}");
    assert!(
        fs::read(&important).unwrap() == b"root's data",
        "root's file overwritten"
    );
}

/// README "Bad input changes nothing": a second daemon given the same `--state` (another
/// mount point, another socket) is refused with one line naming the state file and the pid
/// of the daemon holding it, exits non-zero and mounts nothing.
#[test]
fn a_second_daemon_on_the_same_state_file_is_refused() {
    let fx = Fixture::new("hlock");
    fx.two_releases();
    let first = fx.start(&["--initial", "1"]);
    fx.activate("2");
    let mnt2 = fx.root.join("mnt2");
    fs::create_dir(&mnt2).unwrap();
    let mut second = Command::new(SWITCHFS)
        .arg("--releases")
        .arg(fx.releases())
        .arg("--control")
        .arg(fx.root.join("ctl2.sock"))
        .arg("--state")
        .arg(fx.state())
        .args(["--initial", "1"])
        .arg(&mnt2)
        .env("RUST_LOG", "off")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = second.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline || is_mounted(&mnt2) {
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    if status.is_none() {
        let _ = second.kill();
        let _ = second.wait();
        force_unmount(&mnt2);
        panic!("the second daemon started on a state file another daemon uses");
    }
    let out = second.wait_with_output().unwrap();
    let err = one_line_error(&out);
    let state = fx.state().display().to_string();
    assert!(err.contains(&state), "{err}");
    assert!(err.contains(&format!("pid {}", first.pid())), "{err}");
    assert!(!is_mounted(&mnt2));
    assert_eq!(persisted(&fx.state()), "active=2 previous=1");
    assert_eq!(fx.read("index.php"), "<?php echo 'release 2';");
}

/// README "Bad input changes nothing": an empty release directory (an upload that has not
/// started, or a deletion that has removed everything in it) is refused.
#[test]
fn an_empty_release_is_refused() {
    let fx = Fixture::new("hempty");
    fx.two_releases();
    fs::create_dir(fx.releases().join("3")).unwrap();
    let _d = fx.start(&["--initial", "1"]);
    let err = one_line_error(&fx.ctl(&["activate", "3"]));
    assert!(err.contains("release \"3\" is empty"), "{err}");
    assert_eq!(fx.read("index.php"), "<?php echo 'release 1';");
}

/// A release deleted while it is activated, the way `rm -rf` does it (its files first, then,
/// a moment later, the directory): `activate` either switches to it while it still had its
/// files, or is refused with one line and the active release stays. It never answers 0 for a
/// directory that was already empty when the request was sent.
#[test]
fn activating_a_release_while_it_is_deleted_never_serves_an_emptied_root() {
    let fx = Fixture::new("hrmrf");
    fx.two_releases();
    let _d = fx.start(&["--initial", "1"]);
    let (mut switched, mut refused) = (0, 0);
    for i in 0..40u64 {
        let rel = format!("x{i}");
        for f in 0..30 {
            fx.write(&rel, &format!("d{}/f{f}.php", f % 3), "x");
        }
        let dir = fx.releases().join(&rel);
        let deleter = std::thread::spawn(move || {
            for f in 0..30 {
                fs::remove_file(dir.join(format!("d{}/f{f}.php", f % 3))).unwrap();
                std::thread::sleep(Duration::from_millis(1));
            }
            for d in 0..3 {
                fs::remove_dir(dir.join(format!("d{d}"))).unwrap();
            }
            let emptied = Instant::now();
            std::thread::sleep(Duration::from_millis(30)); // rm's last step comes a bit later
            fs::remove_dir(&dir).unwrap();
            emptied
        });
        // Land anywhere from during the deletion to after the directory is gone.
        std::thread::sleep(Duration::from_micros((i * 1_997) % 75_000));
        let sent = Instant::now();
        let out = fx.ctl(&["activate", &rel]);
        let emptied = deleter.join().unwrap();
        if out.status.success() {
            assert!(
                sent < emptied,
                "round {i}: activate answered 0 for a release emptied before it was asked"
            );
            switched += 1;
            fx.activate("1");
        } else {
            let err = one_line_error(&out);
            assert!(
                err.contains("is empty")
                    || err.contains("unknown release")
                    || err.contains("while being opened"),
                "{err}"
            );
            refused += 1;
        }
        assert_eq!(fx.read("index.php"), "<?php echo 'release 1';");
    }
    eprintln!("{switched} switched while files remained, {refused} refused");
    assert!(refused > 0, "no round landed after the deletion started");
}
