//! Where switchfs may mount, what it takes down at shutdown, and how it lives with a small
//! open-file limit (README "How it works, and the rules it keeps": "Mount point and
//! shutdown", "Bounded descriptors", "Bad input changes nothing").
//!
//! A refused start must leave nothing mounted; the mounts these tests provoke on the old
//! behaviour (a release mounted over itself) are never switched, so they cannot hang.

use std::ffi::OsStr;
use std::fs;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::thread;

use crate::common::*;

fn os(s: &str) -> &OsStr {
    OsStr::new(s)
}

/// `--releases R --control C --state S --initial 1 MOUNTPOINT` with the fixture's paths.
fn refusal(fx: &Fixture, releases: &Path, mount_point: &Path, extra: &[&str]) -> String {
    let (socket, state) = (fx.socket(), fx.state());
    let mut args: Vec<&OsStr> = vec![
        os("--releases"),
        releases.as_os_str(),
        os("--initial"),
        os("1"),
    ];
    if !extra.contains(&"--control") {
        args.extend([os("--control"), socket.as_os_str()]);
    }
    if !extra.contains(&"--state") {
        args.extend([os("--state"), state.as_os_str()]);
    }
    args.extend(extra.iter().map(|s| os(s)));
    args.push(mount_point.as_os_str());
    refused_start(fx, &args)
}

fn assert_nothing_mounted(fx: &Fixture) {
    assert_eq!(mounts_under(&fx.root), Vec::<String>::new(), "left mounted");
}

#[test]
fn shutdown_leaves_a_bind_mount_below_ours_in_place() {
    let fx = Fixture::new("bindmp");
    fx.two_releases();
    let (src, site) = (fx.root.join("bind-src"), fx.root.join("site"));
    fs::create_dir_all(&src).unwrap();
    fs::create_dir_all(&site).unwrap();
    fs::write(src.join("marker"), "bind").unwrap();
    bind_mount(&src, &site);
    let mut d = Daemon::start_with(&fx, &site, &["--initial", "1"]).unwrap();
    assert_eq!(
        fs::read_to_string(site.join("only-in-1.txt")).unwrap(),
        "gone in 2"
    );
    assert!(d.stop_with(libc::SIGTERM).success());
    assert!(is_mounted(&site), "the bind mount was taken down too");
    assert_eq!(
        fs::read_to_string(site.join("marker")).unwrap(),
        "bind",
        "the bind mount no longer shows its source"
    );
    assert_eq!(mounts_under(&site).len(), 1, "only the bind mount is left");
}

#[test]
fn a_draining_daemon_never_unmounts_its_successor() {
    let fx = Fixture::new("drain");
    fx.two_releases();
    let mut old = fx.start(&["--initial", "1", "--stop-timeout", "60"]);
    // A file still open keeps the old mount alive (detached) while it drains.
    let held = fs::File::open(fx.m("index.php")).unwrap();
    // SAFETY: kill on our own child's pid.
    unsafe { libc::kill(old.pid(), libc::SIGTERM) };
    assert!(
        wait_until(10, || !is_mounted(&fx.mnt())),
        "the old daemon did not detach its mount"
    );
    let new = fx.start(&[]);
    assert_eq!(fx.read("only-in-1.txt"), "gone in 2");
    drop(held);
    assert!(
        old.stop_with(0).success(),
        "the old daemon exits once drained"
    );
    assert!(
        is_mounted(&fx.mnt()),
        "the old daemon unmounted its successor"
    );
    assert_eq!(fx.read("only-in-1.txt"), "gone in 2");
    fx.activate("2");
    assert_eq!(fx.read("only-in-2.txt"), "new in 2");
    assert!(!new.log_text().contains("panicked"));
}

#[test]
fn a_second_daemon_on_a_served_mount_point_is_refused_however_it_is_spelled() {
    let fx = Fixture::new("twice");
    fx.two_releases();
    // A short stop timeout: the bind of our mount made below keeps it in use after we stop.
    let mut first = fx.start(&["--initial", "1", "--stop-timeout", "1"]);
    let other_socket = fx.root.join("other.sock");
    let other_state = fx.root.join("other.state");
    let other = [
        "--control",
        other_socket.to_str().unwrap(),
        "--state",
        other_state.to_str().unwrap(),
    ];
    let err = refusal(&fx, &fx.releases(), &fx.mnt(), &other);
    assert!(err.contains("already served by another switchfs"), "{err}");
    // Another spelling of the same directory, and a bind of the live mount.
    let respelled = fx.releases().join("..").join("mnt");
    let err = refusal(&fx, &fx.releases(), &respelled, &other);
    assert!(err.contains("already served by another switchfs"), "{err}");
    let dotdot = fx.mnt().join("app").join("..");
    let err = refusal(&fx, &fx.releases(), &dotdot, &other);
    assert!(err.contains("already served by another switchfs"), "{err}");
    let alias = fx.root.join("alias");
    fs::create_dir_all(&alias).unwrap();
    bind_mount(&fx.mnt(), &alias);
    let err = refusal(&fx, &fx.releases(), &alias, &other);
    assert!(err.contains("already served by another switchfs"), "{err}");
    // A symlink to the mount point: mounting follows it and would stack on the live mount.
    let link = fx.root.join("link-to-mnt");
    std::os::unix::fs::symlink(fx.mnt(), &link).unwrap();
    let err = refusal(&fx, &fx.releases(), &link, &other);
    assert!(err.contains("is a symlink"), "{err}");

    assert_eq!(
        fx.read("only-in-1.txt"),
        "gone in 2",
        "the first is undisturbed"
    );
    fx.activate("2");
    assert_eq!(fx.read("only-in-2.txt"), "new in 2");
    assert!(!other_state.exists(), "a refused daemon wrote state");
    assert!(first.stop_with(libc::SIGTERM).success());
    assert!(!is_mounted(&fx.mnt()));
    assert!(
        is_mounted(&alias),
        "the bind elsewhere is not ours to take down"
    );
}

#[test]
fn a_symlink_as_mount_point_is_refused_with_what_to_do_instead() {
    // Deploy tools leave `current -> releases/N`; mounting there would cover release N
    // with itself and hang the first switch back to it.
    let fx = Fixture::new("curlink");
    fx.two_releases();
    let current = fx.root.join("current");
    std::os::unix::fs::symlink(fx.releases().join("2"), &current).unwrap();
    let err = refusal(&fx, &fx.releases(), &current, &[]);
    assert!(err.contains("is a symlink"), "{err}");
    assert!(
        err.contains("/srv/switchfs/") && err.contains("ln -sfn /srv/switchfs/"),
        "says what to do instead: {err}"
    );
    assert_nothing_mounted(&fx);
    assert!(!fx.state().exists(), "a refused start wrote state");
}

#[test]
fn a_mount_point_in_the_releases_or_releases_under_the_mount_point_are_refused() {
    let fx = Fixture::new("nested");
    fx.two_releases();
    for mp in [fx.releases().join("2"), fx.releases()] {
        let err = refusal(&fx, &fx.releases(), &mp, &[]);
        assert!(err.contains("inside the releases directory"), "{err}");
    }
    // The same place spelled through a bind mount of the releases directory.
    let alias = fx.root.join("rel-alias");
    fs::create_dir_all(&alias).unwrap();
    bind_mount(&fx.releases(), &alias);
    let err = refusal(&fx, &fx.releases(), &alias.join("2"), &[]);
    assert!(err.contains("inside the releases directory"), "{err}");
    // A nested subdirectory of a release.
    let err = refusal(&fx, &fx.releases(), &fx.releases().join("1/app/a"), &[]);
    assert!(err.contains("inside the releases directory"), "{err}");

    // Releases below the mount point would be hidden by the mount.
    let site = fx.root.join("site");
    fs::create_dir_all(site.join("releases/1")).unwrap();
    let err = refusal(&fx, &site.join("releases"), &site, &[]);
    assert!(err.contains("below the mount point"), "{err}");
    assert_eq!(
        mounts_under(&fx.root),
        vec![alias.to_string_lossy().into_owned()]
    );
    assert!(!fx.state().exists());
}

#[test]
fn a_state_file_or_socket_inside_the_mount_point_or_releases_is_refused() {
    let fx = Fixture::new("statein");
    fx.two_releases();
    for state in [
        fx.mnt().join("x.state"),
        fx.releases().join("x.state"),
        fx.releases().join("1/sub/x.state"),
    ] {
        let err = refusal(
            &fx,
            &fx.releases(),
            &fx.mnt(),
            &["--state", state.to_str().unwrap()],
        );
        assert!(err.contains("state file"), "{err}");
        assert!(!state.exists() && !fx.releases().join("1/sub").exists());
    }
    let socket = fx.mnt().join("ctl.sock");
    let err = refusal(
        &fx,
        &fx.releases(),
        &fx.mnt(),
        &["--control", socket.to_str().unwrap()],
    );
    assert!(err.contains("control socket"), "{err}");
    assert_nothing_mounted(&fx);
}

#[test]
fn a_regular_file_as_mount_point_is_refused() {
    let fx = Fixture::new("filemp");
    fx.two_releases();
    let file = fx.root.join("index.html");
    fs::write(&file, "static").unwrap();
    let err = refusal(&fx, &fx.releases(), &file, &[]);
    assert!(err.contains("not a directory"), "{err}");
    assert_nothing_mounted(&fx);
    assert_eq!(fs::read_to_string(&file).unwrap(), "static");
}

#[test]
fn a_too_small_open_file_limit_refuses_to_start_with_one_line() {
    let fx = Fixture::new("tinylim");
    fx.two_releases();
    fx.nofile.store(100, Ordering::Relaxed);
    let err = refusal(&fx, &fx.releases(), &fx.mnt(), &[]);
    assert!(err.contains("open file limit"), "{err}");
    assert!(err.contains("at least 256"), "{err}");
    assert_nothing_mounted(&fx);
    assert!(!fx.state().exists());
}

#[test]
fn the_smallest_accepted_limit_serves_every_read_and_every_switch() {
    let fx = Fixture::new("smalllim");
    fx.two_releases();
    const FILES: usize = 400;
    for rel in ["1", "2"] {
        for i in 0..FILES {
            fx.write(
                rel,
                &format!("vendor/p{}/f{i}.php", i % 20),
                &format!("{rel}:{i}"),
            );
        }
    }
    fx.nofile.store(256, Ordering::Relaxed);
    let d = fx.start(&["--initial", "1"]);
    let fds = || {
        fs::read_dir(format!("/proc/{}/fd", d.pid()))
            .unwrap()
            .count()
    };
    let mut failures = Vec::new();
    for round in 0..6 {
        let rel = if round % 2 == 0 { "1" } else { "2" };
        // Four readers at once, each over every file: more distinct files than the limit.
        let readers: Vec<_> = (0..4)
            .map(|t| {
                let mnt = fx.mnt();
                let rel = rel.to_string();
                thread::spawn(move || {
                    let mut bad = Vec::new();
                    for k in 0..FILES {
                        let i = (k + t * 97) % FILES;
                        let path = mnt.join(format!("vendor/p{}/f{i}.php", i % 20));
                        match fs::read_to_string(&path) {
                            Ok(s) if s == format!("{rel}:{i}") => {}
                            other => bad.push(format!("{}: {other:?}", path.display())),
                        }
                    }
                    bad
                })
            })
            .collect();
        for r in readers {
            failures.extend(r.join().unwrap());
        }
        assert!(fds() < 256, "round {round}: {} descriptors open", fds());
        let next = if rel == "1" { "2" } else { "1" };
        let out = fx.ctl(&["activate", next]);
        if !out.status.success() {
            failures.push(format!(
                "activate {next}: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures, first: {:?}",
        failures.len(),
        failures.first()
    );
    let log = d.log_text();
    assert!(
        !log.contains("panicked") && !log.contains("Too many open files"),
        "{log}"
    );
}

#[test]
fn a_mount_stacked_on_ours_is_never_taken_down() {
    let fx = Fixture::new("stacked");
    fx.two_releases();
    let mut d = fx.start(&["--initial", "1"]);
    let cover = fx.root.join("cover");
    fs::create_dir_all(&cover).unwrap();
    fs::write(cover.join("marker"), "cover").unwrap();
    bind_mount(&cover, &fx.mnt());
    assert!(d.stop_with(libc::SIGTERM).success());
    assert_eq!(
        fs::read_to_string(fx.m("marker")).unwrap(),
        "cover",
        "the mount stacked on ours was taken down"
    );
    assert!(d.log_text().contains("stacked on ours"), "{}", d.log_text());
}

#[test]
fn a_moved_mount_is_taken_down_where_it_went() {
    let fx = Fixture::new("moved");
    fx.two_releases();
    let mut d = fx.start(&["--initial", "1", "--stop-timeout", "3"]);
    let moved = fx.root.join("moved");
    fs::create_dir_all(&moved).unwrap();
    let (from, to) = (
        std::ffi::CString::new(fx.mnt().into_os_string().into_encoded_bytes()).unwrap(),
        std::ffi::CString::new(moved.clone().into_os_string().into_encoded_bytes()).unwrap(),
    );
    // SAFETY: valid C strings; MS_MOVE takes no type or data.
    let rc = unsafe {
        libc::mount(
            from.as_ptr(),
            to.as_ptr(),
            std::ptr::null(),
            libc::MS_MOVE,
            std::ptr::null(),
        )
    };
    assert_eq!(rc, 0, "mount --move: {}", std::io::Error::last_os_error());
    assert_eq!(
        fs::read_to_string(moved.join("only-in-1.txt")).unwrap(),
        "gone in 2"
    );
    assert!(d.stop_with(libc::SIGTERM).success());
    assert_nothing_mounted(&fx);
    assert!(d.log_text().contains("unmounted; bye"), "{}", d.log_text());
}

#[test]
fn an_aborted_connection_ends_the_daemon_and_its_dead_mount_goes_with_it() {
    let fx = Fixture::new("aborted");
    fx.two_releases();
    let mut d = fx.start(&["--initial", "1"]);
    assert_eq!(fx.read("only-in-1.txt"), "gone in 2");
    abort_fuse_connection(&fx.mnt());
    assert!(d.stop_with(0).success(), "{}", d.log_text());
    assert_nothing_mounted(&fx);
    assert!(
        d.log_text().contains("detached our mount"),
        "{}",
        d.log_text()
    );
}
