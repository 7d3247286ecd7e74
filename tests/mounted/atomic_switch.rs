//! Atomic switches (README "How it works, and the rules it keeps": *Switch = validate,
//! persist, publish, invalidate, acknowledge* and *Long kernel caches are safe*): after
//! `activate` returns, every new lookup sees the new release whatever the kernel had cached;
//! what was opened before keeps its release.

use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::common::*;

fn listing(fx: &Fixture, dir: &str) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(fx.m(dir))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Fills every kernel cache a switch must invalidate (entries, negative entries, deep paths,
/// attributes, file pages), for release `rel` being active.
fn warm_caches(fx: &Fixture) {
    for _ in 0..3 {
        let _ = fs::metadata(fx.m("index.php"));
        let _ = fs::metadata(fx.m("only-in-2.txt")); // a negative entry in release 1
        let _ = fs::metadata(fx.m("app/a/b/c/only-deep-2.php")); // a deep negative entry
        let _ = fs::read(fx.m("app/a/b/c/deep.php")); // a deep path
        let _ = fs::read(fx.m("static/same-size.txt")); // file pages
        let _ = listing(fx, "");
        let _ = listing(fx, "app/a/b/c");
    }
}

fn assert_serving(fx: &Fixture, rel: &str) {
    assert_eq!(fx.read("index.php"), format!("<?php echo 'release {rel}';"));
    assert_eq!(fx.read("app/a/b/c/deep.php"), format!("deep {rel}"));
    assert_eq!(fx.read("static/same-size.txt"), format!("content-{rel}"));
    let (present, absent) = if rel == "1" {
        ("only-in-1.txt", "only-in-2.txt")
    } else {
        ("only-in-2.txt", "only-in-1.txt")
    };
    assert!(fx.m(present).exists(), "{present} visible in {rel}");
    assert!(!fx.m(absent).exists(), "{absent} gone in {rel}");
    assert_eq!(
        fx.m("app/a/b/c/only-deep-2.php").exists(),
        rel == "2",
        "deep entry in {rel}"
    );
    let root = listing(fx, "");
    assert!(root.contains(&present.to_string()) && !root.contains(&absent.to_string()));
    let deep = listing(fx, "app/a/b/c");
    assert_eq!(deep.contains(&"only-deep-2.php".to_string()), rel == "2");
}

#[test]
fn switch_defeats_every_kernel_cache() {
    let fx = Fixture::new("caches");
    fx.two_releases();
    let _d = fx.start(&["--initial", "1"]);
    warm_caches(&fx);
    assert_serving(&fx, "1");
    let out = fx.ctl(&["activate", "2"]);
    assert!(out.status.success());
    assert_eq!(stdout(&out), "switched from 1 to 2\n");
    assert_serving(&fx, "2");
    warm_caches(&fx);
    let out = fx.ctl(&["rollback"]);
    assert_eq!(stdout(&out), "switched from 2 to 1\n");
    assert_serving(&fx, "1");
}

#[test]
fn files_and_directories_opened_before_a_switch_keep_their_release() {
    let fx = Fixture::new("open");
    fx.two_releases();
    let big1: Vec<u8> = (0..2_000_000u32).map(|i| (i % 253) as u8).collect();
    let big2: Vec<u8> = (0..2_000_000u32).map(|i| (i % 127) as u8).collect();
    fs::write(fx.releases().join("1/static/big.bin"), &big1).unwrap();
    fs::write(fx.releases().join("2/static/big.bin"), &big2).unwrap();
    let _d = fx.start(&["--initial", "1"]);

    let mut reader = fs::File::open(fx.m("static/big.bin")).unwrap();
    let mut head = vec![0u8; 1000];
    reader.read_exact(&mut head).unwrap();
    let dir = fs::File::open(fx.m("app/a/b/c")).unwrap();
    let shell = ParkedShell::park(&fx.m("app/a/b/c"), "cat deep.php && ls");

    fx.activate("2");
    assert_eq!(fx.read("app/a/b/c/deep.php"), "deep 2", "new lookups see 2");

    let mut rest = Vec::new();
    reader.read_to_end(&mut rest).unwrap();
    head.extend(rest);
    assert_eq!(head, big1, "an open file reads its own release to the end");
    reader.seek(SeekFrom::Start(0)).unwrap();
    let mut again = Vec::new();
    reader.read_to_end(&mut again).unwrap();
    assert_eq!(again, big1);

    // Lookups relative to a directory opened before the switch stay in release 1.
    let name = c"deep.php";
    // SAFETY: valid descriptor and C string.
    let fd = unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), libc::O_RDONLY) };
    assert!(fd >= 0);
    // SAFETY: fresh descriptor we own.
    let mut f = unsafe { <fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let mut s = String::new();
    f.read_to_string(&mut s).unwrap();
    assert_eq!(s, "deep 1");

    let text = shell.resume();
    assert!(text.starts_with("deep 1"), "cwd in the old release: {text}");
    assert!(
        !text.contains("only-deep-2.php"),
        "cwd listing is release 1: {text}"
    );
}

#[test]
fn every_activate_is_visible_at_once_under_concurrent_readers() {
    let fx = Arc::new(Fixture::new("race"));
    fx.two_releases();
    let _d = fx.start(&["--initial", "1", "--threads", "4"]);
    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicU64::new(0));
    let mut readers = Vec::new();
    for _ in 0..3 {
        let (fx, stop, reads) = (fx.clone(), stop.clone(), reads.clone());
        readers.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                for path in ["index.php", "app/a/b/c/deep.php", "static/same-size.txt"] {
                    let text = fs::read_to_string(fx.m(path))
                        .unwrap_or_else(|e| panic!("{path} failed mid-switch: {e}"));
                    assert!(
                        text.ends_with("1';")
                            || text.ends_with("2';")
                            || text.ends_with(" 1")
                            || text.ends_with(" 2")
                            || text.ends_with("-1")
                            || text.ends_with("-2"),
                        "{path}: torn content {text:?}"
                    );
                    reads.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for i in 0..40 {
        let rel = if i % 2 == 0 { "2" } else { "1" };
        fx.activate(rel);
        // The promise: the very next lookup after activate returns sees the new release.
        assert_eq!(fx.read("index.php"), format!("<?php echo 'release {rel}';"));
        assert_eq!(fx.read("app/a/b/c/deep.php"), format!("deep {rel}"));
        assert_eq!(fx.m("only-in-2.txt").exists(), rel == "2");
    }
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        r.join().expect("reader saw an error or torn content");
    }
    assert!(reads.load(Ordering::Relaxed) > 0);
}

/// Sets every file of release `rel` to the same mtime, as reproducible builds, `tar` and
/// `rsync -t` do.
fn flatten_mtimes(fx: &Fixture, rel: &str, secs: i64) {
    let status = Command::new("find")
        .arg(fx.releases().join(rel))
        .args(["-type", "f", "-exec", "touch", "-d"])
        .arg(format!("@{secs}"))
        .args(["{}", "+"])
        .status()
        .unwrap();
    assert!(status.success());
}

fn mtime(fx: &Fixture, path: &str) -> i64 {
    std::os::unix::fs::MetadataExt::mtime(&fs::metadata(fx.m(path)).unwrap())
}

#[test]
fn changed_files_never_keep_an_old_mtime_and_unchanged_files_do() {
    let fx = Fixture::new("mtime");
    fx.two_releases();
    fx.write("1", "vendor/unchanged.php", "<?php // same in both");
    fx.write("2", "vendor/unchanged.php", "<?php // same in both");
    flatten_mtimes(&fx, "1", 1_700_000_000);
    flatten_mtimes(&fx, "2", 1_700_000_000);
    let _d = fx.start(&["--initial", "1"]);
    let index1 = mtime(&fx, "index.php");
    let vendor1 = mtime(&fx, "vendor/unchanged.php");
    assert_eq!(
        index1, 1_700_000_000,
        "the first version shows its real mtime"
    );
    fx.activate("2");
    let index2 = mtime(&fx, "index.php");
    assert_ne!(
        index2, index1,
        "changed content, identical real mtime: reported mtime differs"
    );
    assert_eq!(
        mtime(&fx, "vendor/unchanged.php"),
        vendor1,
        "unchanged content keeps its mtime"
    );
    fx.activate("1");
    let back = mtime(&fx, "index.php");
    assert_eq!(
        back, index1,
        "rollback: release 1's index.php is the version reported before"
    );
    fx.activate("2");
    assert_eq!(mtime(&fx, "index.php"), index2, "and release 2's again");
}

#[test]
fn getcwd_keeps_working_in_a_top_level_directory_across_switches() {
    // PHP-FPM and mod_php chdir() into the front controller's directory for each request.
    let fx = Fixture::new("cwd");
    fx.two_releases();
    let _d = fx.start(&["--initial", "1"]);
    let shell = ParkedShell::park(&fx.m("static"), "/bin/pwd -P && cat same-size.txt");
    fx.activate("2");
    // Another process looks the directory up again, as the next request would.
    assert_eq!(fx.read("static/same-size.txt"), "content-2");
    let text = shell.resume();
    assert_eq!(
        text,
        format!("{}\ncontent-2", fx.m("static").display()),
        "a top-level directory follows the active release"
    );
}
