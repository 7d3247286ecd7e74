//! Security with the real thing: other users, ACLs, crafted names, hostile control clients.

use std::ffi::OsStr;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::*;

#[test]
fn acls_and_modes_are_enforced_exactly_as_on_the_native_directory() {
    assert!(
        is_root(),
        "this test switches to user nobody: run the tests as root"
    );
    let fx = Fixture::new("acl");
    fx.two_releases();
    let rel = fx.releases().join("1");
    fs::write(rel.join("granted.php"), "granted").unwrap();
    fs::write(rel.join("denied.php"), "denied").unwrap();
    fs::set_permissions(rel.join("granted.php"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::set_permissions(rel.join("denied.php"), fs::Permissions::from_mode(0o644)).unwrap();
    let acl = |spec: &str, file: &str| {
        let st = Command::new("setfacl")
            .args(["-m", spec])
            .arg(rel.join(file))
            .status()
            .expect("setfacl (package acl) is needed");
        assert!(st.success(), "setfacl {spec} {file}");
    };
    acl("u:nobody:r", "granted.php");
    acl("u:nobody:---", "denied.php");
    fx.open_up_for_others();
    let _d = fx.start(&["--initial", "1", "--acl"]);
    for (file, expect_ok) in [
        ("granted.php", true),
        ("denied.php", false),
        ("index.php", true),
    ] {
        let native = as_nobody(&["cat", rel.join(file).to_str().unwrap()]);
        let mounted = as_nobody(&["cat", fx.m(file).to_str().unwrap()]);
        assert_eq!(native.status.success(), expect_ok, "native {file}");
        assert_eq!(
            mounted.status.success(),
            expect_ok,
            "mounted {file}: {mounted:?}"
        );
        assert_eq!(native.stdout, mounted.stdout, "{file}");
    }
    let getfacl = |p: &std::path::Path| {
        let out = Command::new("getfacl")
            .args(["-c", "-p"])
            .arg(p)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(
        getfacl(&rel.join("granted.php")),
        getfacl(&fx.m("granted.php"))
    );
}

#[test]
fn the_control_socket_refuses_other_users() {
    assert!(
        is_root(),
        "this test switches to user nobody: run the tests as root"
    );
    let fx = Fixture::new("sockperm");
    fx.two_releases();
    fx.open_up_for_others();
    let d = fx.start(&["--initial", "1"]);
    let out = as_nobody(&[
        SWITCHCTL,
        "--control",
        fx.socket().to_str().unwrap(),
        "activate",
        "2",
    ]);
    let err = one_line_error(&out);
    assert!(err.contains("permission denied on control socket"), "{err}");
    assert_eq!(fx.read("index.php"), "<?php echo 'release 1';");
    // The owner (root here) is logged with every change.
    fx.activate("2");
    assert!(
        d.log_text().contains("requested by uid=0"),
        "{}",
        d.log_text()
    );
}

#[test]
fn crafted_names_neither_escape_nor_crash() {
    let fx = Fixture::new("names");
    fx.two_releases();
    let rel = fx.releases().join("1");
    let weird: Vec<&[u8]> = vec![
        b"new\nline.php",
        b"\xff\xfe-not-utf8.php",
        b" leading space",
        b"-dash",
        b"quote\"and'apostrophe",
        b"..hidden-looking",
    ];
    for name in &weird {
        fs::write(rel.join(OsStr::from_bytes(name)), *name).unwrap();
    }
    let long = "x".repeat(255);
    fs::write(rel.join(&long), "long").unwrap();
    std::os::unix::fs::symlink("a/../../../../etc/passwd", rel.join("traversal")).unwrap();
    let d = fx.start(&["--initial", "1"]);
    for name in &weird {
        let path = fx.mnt().join(OsStr::from_bytes(name));
        assert_eq!(
            fs::read(&path).unwrap(),
            *name,
            "{:?}",
            OsStr::from_bytes(name)
        );
    }
    assert_eq!(fs::read_to_string(fx.m(&long)).unwrap(), "long");
    let too_long = fx.m(&"y".repeat(256));
    let err = fs::metadata(too_long).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENAMETOOLONG));
    // A symlink whose target climbs out is answered as what it reaches from releases/1
    // (README, "Symlinks"), never followed by the daemon: here a path through a missing
    // `a`, so it fails exactly as the native link does.
    assert_eq!(
        fs::read_link(fx.m("traversal")).unwrap(),
        rel.join("a/../../../../etc/passwd")
    );
    assert_eq!(
        fs::read(fx.m("traversal")).unwrap_err().kind(),
        fs::read(rel.join("traversal")).unwrap_err().kind()
    );
    for path in ["..", "../..", "app/../..", "app/a/../../.."] {
        let resolved = fs::canonicalize(fx.mnt().join(path)).unwrap();
        assert!(
            !resolved.starts_with(fx.releases()),
            "{path} resolved into the releases dir: {}",
            resolved.display()
        );
    }
    let listed: Vec<_> = fs::read_dir(fx.mnt())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(listed.iter().any(|n| n.as_bytes() == b"new\nline.php"));
    assert!(!d.log_text().contains("panicked"));
    assert_eq!(fx.read("index.php"), "<?php echo 'release 1';");
}

/// A small deterministic generator, so a failing case can be replayed.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn the_control_protocol_survives_fuzzing_and_slow_clients() {
    let fx = Fixture::new("fuzz2");
    fx.two_releases();
    let d = fx.start(&["--initial", "1"]);
    let mut rng = XorShift(0x5eed_1234_abcd_ef01);
    let words: [&[u8]; 8] = [
        b"activate ",
        b"rollback",
        b"status",
        b"list",
        b"prune ",
        b"json",
        b" drain=",
        b"ping",
    ];
    let cases = 1500;
    for i in 0..cases {
        let mut msg = Vec::new();
        for _ in 0..(rng.next() % 6) {
            if rng.next().is_multiple_of(2) {
                msg.extend_from_slice(words[(rng.next() % 8) as usize]);
            } else {
                for _ in 0..(rng.next() % 12) {
                    msg.push((rng.next() % 256) as u8);
                }
            }
        }
        // Never ask for the two real releases by name: the active one must stay 1.
        if msg.windows(10).any(|w| w == b"activate 2") || msg.starts_with(b"rollback") {
            continue;
        }
        msg.push(b'\n');
        let mut s = UnixStream::connect(fx.socket()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let _ = s.write_all(&msg);
        let mut answer = Vec::new();
        let _ = s.read_to_end(&mut answer);
        assert!(
            answer.starts_with(b"ok\n") || answer.starts_with(b"error: "),
            "case {i} {msg:?}: {answer:?}"
        );
    }
    // A client that sends nothing is cut off after the timeout without holding others up.
    let mut silent = UnixStream::connect(fx.socket()).unwrap();
    let started = Instant::now();
    let out = fx.ctl(&["status"]);
    assert!(out.status.success());
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "others are served meanwhile"
    );
    silent
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let mut answer = String::new();
    let _ = silent.read_to_string(&mut answer);
    assert!(answer.contains("timed out"), "{answer:?}");
    // A slow but steady client gets its answer.
    let mut slow = UnixStream::connect(fx.socket()).unwrap();
    for b in b"ping\n" {
        slow.write_all(&[*b]).unwrap();
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut answer = String::new();
    slow.read_to_string(&mut answer).unwrap();
    assert_eq!(answer, "ok\npong\n");
    assert!(stdout(&fx.ctl(&["status"])).starts_with("active:       1 "));
    assert!(!d.log_text().contains("panicked"));
}
