//! Faults production throws at a docroot: releases deleted or renamed under us, signals under
//! load, a corrupt state file, a full disk. Nothing panics, nothing is lost.

use std::fs;
use std::io::Read;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::common::*;

fn status(fx: &Fixture) -> String {
    stdout(&fx.ctl(&["status"]))
}

#[test]
fn active_release_deleted_or_renamed_while_serving() {
    let fx = Fixture::new("gone");
    fx.two_releases();
    let d = fx.start(&["--initial", "1"]);
    assert_eq!(fx.read("index.php"), "<?php echo 'release 1';");
    fs::remove_dir_all(fx.releases().join("1")).unwrap();
    // Names never looked up fail cleanly; nothing crashes.
    let err = fs::metadata(fx.m("only-in-1.txt")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOENT));
    let text = status(&fx);
    assert!(
        text.contains("PROBLEM:      the directory of release 1 was deleted"),
        "{text}"
    );
    let json = stdout(&fx.ctl(&["status", "--json"]));
    assert!(
        json.contains("\"problem\":\"the directory of release 1 was deleted\""),
        "{json}"
    );
    fx.activate("2");
    assert_eq!(fx.read("index.php"), "<?php echo 'release 2';");
    assert!(!status(&fx).contains("PROBLEM"));

    fs::rename(fx.releases().join("2"), fx.releases().join("2-moved")).unwrap();
    assert!(status(&fx).contains("was renamed or replaced"));
    // The pinned directory keeps serving the release it was.
    assert_eq!(fx.read("index.php"), "<?php echo 'release 2';");
    assert!(!d.log_text().contains("panicked"));
}

#[test]
fn an_old_release_deleted_while_a_reader_is_in_it() {
    let fx = Fixture::new("oldgone");
    fx.two_releases();
    let big: Vec<u8> = (0..4_000_000u32).map(|i| (i % 241) as u8).collect();
    fs::write(fx.releases().join("1/static/big.bin"), &big).unwrap();
    let _d = fx.start(&["--initial", "1"]);
    let mut reader = fs::File::open(fx.m("static/big.bin")).unwrap();
    let mut first = vec![0u8; 4096];
    reader.read_exact(&mut first).unwrap();
    fx.activate("2");
    fs::remove_dir_all(fx.releases().join("1")).unwrap();
    let mut rest = Vec::new();
    reader.read_to_end(&mut rest).unwrap();
    first.extend(rest);
    assert_eq!(
        first, big,
        "the read completes with the deleted release's bytes"
    );
    assert_eq!(fx.read("index.php"), "<?php echo 'release 2';");
}

#[test]
fn sigterm_under_load_unmounts_cleanly_and_leaves_no_client_hanging() {
    let fx = Arc::new(Fixture::new("term"));
    fx.two_releases();
    let mut d = fx.start(&["--initial", "1", "--stop-timeout", "5"]);
    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicU64::new(0));
    let readers: Vec<_> = (0..4)
        .map(|_| {
            let (fx, stop, reads) = (fx.clone(), stop.clone(), reads.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    // Errors are expected once the mount is gone; hanging is not.
                    let _ = fs::read(fx.m("app/a/b/c/deep.php"));
                    let _ = fs::read_dir(fx.m("app")).map(|d| d.count());
                    reads.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    while reads.load(Ordering::Relaxed) < 200 {
        std::thread::yield_now();
    }
    let started = Instant::now();
    let status = d.stop_with(libc::SIGTERM);
    assert!(status.success(), "exit 0 on SIGTERM under load: {status}");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(!is_mounted(&fx.mnt()));
    stop.store(true, Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(10);
    for r in readers {
        while !r.is_finished() {
            assert!(Instant::now() < deadline, "a client was left hanging");
            std::thread::sleep(Duration::from_millis(10));
        }
        r.join().unwrap();
    }
}

#[test]
fn a_corrupt_state_file_is_reported_and_serving_goes_on() {
    let fx = Fixture::new("corrupt");
    fx.two_releases();
    fs::write(fx.state(), "active=../../etc\x00garbage").unwrap();
    let d = fx.start(&["--initial", "2"]);
    assert!(
        d.log_text().contains("is unusable"),
        "clear error in the log: {}",
        d.log_text()
    );
    assert_eq!(fx.read("index.php"), "<?php echo 'release 2';");
    fx.activate("1");
    assert_eq!(persisted(&fx.state()), "active=1 previous=2");
}

#[test]
fn a_full_disk_refuses_a_switch_it_cannot_persist_and_changes_nothing() {
    assert!(
        is_root(),
        "this test mounts a small tmpfs: run the tests as root"
    );
    let fx = Fixture::new("full");
    fx.two_releases();
    let small = fx.root.join("small");
    fs::create_dir_all(&small).unwrap();
    let ok = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64k,mode=0755", "tmpfs"])
        .arg(&small)
        .status()
        .unwrap();
    assert!(ok.success(), "mount tmpfs");
    let state = small.join("state");
    let _d = fx.start(&["--initial", "1", "--state", state.to_str().unwrap()]);
    let fill = || {
        let mut filler = fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(small.join("filler"))
            .unwrap();
        let block = vec![0u8; 4096];
        while std::io::Write::write_all(&mut filler, &block).is_ok() {}
    };
    fill();
    // The state file exists, and a switch overwrites it in place: no new block needed, so a
    // full disk does not stop deploys (or rollbacks) once the daemon has started.
    fx.activate("2");
    assert_eq!(persisted(&state), "active=2 previous=1");

    // Without a state file to overwrite, the switch needs space: refused, nothing changes.
    fs::remove_file(&state).unwrap();
    fill();
    let out = fx.ctl(&["activate", "1"]);
    let err = one_line_error(&out);
    assert!(
        err.contains("cannot persist") && err.contains("No space left"),
        "{err}"
    );
    assert_eq!(fx.read("index.php"), "<?php echo 'release 2';");
    assert_eq!(persisted(&state), "no state file");
    let left: Vec<_> = fs::read_dir(&small)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n != "filler" && n != "state.lock" && n != "state.mtimes")
        .collect();
    assert!(left.is_empty(), "no temporary file left: {left:?}");
    fs::remove_file(small.join("filler")).unwrap();
    fx.activate("1");
    assert_eq!(persisted(&state), "active=1 previous=2");
    drop(_d);
    force_unmount(&small);
}

#[test]
fn a_tree_larger_than_the_descriptor_limit_is_served_and_switches_keep_working() {
    let fx = Fixture::new("fdlimit");
    fx.two_releases();
    for i in 0..3000 {
        fx.write(
            "1",
            &format!("vendor/p{}/f{i}.php", i % 50),
            &format!("{i}"),
        );
    }
    // 1,200 descriptors: the daemon keeps a quarter in reserve, so inodes get 900.
    fx.nofile.store(1200, Ordering::Relaxed);
    let d = fx.start(&["--initial", "1"]);
    let fds = || {
        fs::read_dir(format!("/proc/{}/fd", d.pid()))
            .unwrap()
            .count()
    };
    for round in 0..2 {
        for i in 0..3000 {
            let path = format!("vendor/p{}/f{i}.php", i % 50);
            assert_eq!(fx.read(&path), format!("{i}"), "round {round}: {path}");
        }
        assert!(fds() < 1200, "round {round}: {} descriptors open", fds());
    }
    for _ in 0..5 {
        fx.activate("2");
        fx.activate("1");
    }
    assert_eq!(fx.read("vendor/p7/f7.php"), "7");
    assert!(fds() < 1200);
    assert!(!d.log_text().contains("panicked"));
}
