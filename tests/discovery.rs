//! `switchctl` without --mount or --control finds the one switchfs on the host, and with
//! several lists them and fails. In its own test binary: cargo runs test binaries one after
//! another, so the other mounted tests do not add mounts meanwhile.

mod common;

use std::process::Command;

use common::*;
use switchfs::mounts::switchfs_mounts;

/// Both tests count every switchfs on the host: they must not run at the same time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn bare_switchctl(args: &[&str]) -> std::process::Output {
    Command::new(SWITCHCTL).args(args).output().unwrap()
}

#[test]
fn finds_the_only_switchfs_and_refuses_to_guess_among_several() {
    let _one_at_a_time = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let fx = Fixture::new("disc");
    fx.two_releases();
    let others = switchfs_mounts().unwrap().len();
    let _d = fx.start(&["--initial", "1"]);
    let out = bare_switchctl(&["status"]);
    if others == 0 {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout(&out).contains("active:       1"));
    } else {
        // Someone else's switchfs is mounted on this machine: the guess must be refused.
        assert!(one_line_error(&out).contains("switchfs mounts on this host"));
    }

    let fx2 = Fixture::new("disc2");
    fx2.two_releases();
    let _d2 = fx2.start(&["--initial", "2"]);
    let err = one_line_error(&bare_switchctl(&["activate", "2"]));
    assert!(
        err.contains("switchfs mounts on this host, pass --mount"),
        "{err}"
    );
    assert!(err.contains(fx.mnt().to_str().unwrap()), "{err}");
    assert!(err.contains(fx2.mnt().to_str().unwrap()), "{err}");
    let out = bare_switchctl(&["--mount", fx2.mnt().to_str().unwrap(), "status"]);
    assert!(stdout(&out).contains("active:       2"));
}

/// A bind-mode docroot has no xattr to say whose it is: it is found by root's default
/// control socket for its mount point, alive and owned by root, never by a socket someone
/// else could have put there. Serialised with the FUSE test: cargo runs a binary's tests on
/// parallel threads, and both count every switchfs on the host.
#[test]
fn finds_a_bind_docroot_by_roots_live_socket_and_never_by_someone_elses() {
    use switchfs::control::client::{bind_docroots, root_control_path};
    let _one_at_a_time = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let fuse_now = switchfs_mounts().unwrap();
    let entries = switchfs::mounts::read_entries().unwrap();
    // Other helpers' switchfs on this machine: then every bare call must refuse to guess.
    let others = fuse_now.len() + bind_docroots(&entries, &fuse_now).len();

    // A plain bind mount with a pong-answering socket owned by nobody at root's path.
    let decoy = Fixture::bind("disc-decoy");
    let fake = root_control_path(&decoy.root);
    std::fs::create_dir_all(fake.parent().unwrap()).unwrap();
    let _ = std::fs::remove_file(&fake);
    let listener = std::os::unix::net::UnixListener::bind(&fake).unwrap();
    std::os::unix::fs::chown(&fake, Some(65534), Some(65534)).unwrap();
    std::thread::spawn(move || {
        for mut s in listener.incoming().flatten() {
            use std::io::Write;
            let _ = s.write_all(b"ok\npong\n");
        }
    });
    let err = one_line_error(&bare_switchctl(&["status"]));
    if others == 0 {
        assert!(err.contains("no switchfs is mounted"), "{err}");
    }
    assert!(!err.contains(decoy.root.to_str().unwrap()), "{err}");

    let fx = Fixture::bind("disc-bind");
    fx.two_releases();
    let socket = root_control_path(&fx.mnt());
    let _d = fx.start(&["--initial", "1", "--control", socket.to_str().unwrap()]);
    let out = bare_switchctl(&["status"]);
    if others == 0 {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = stdout(&out);
        assert!(
            text.contains("active:       1") && text.contains("mode:         bind"),
            "{text}"
        );
        let out = bare_switchctl(&["activate", "2"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(fx.read("index.php"), "<?php echo 'release 2';");
    } else {
        let err = one_line_error(&out);
        assert!(err.contains(fx.mnt().to_str().unwrap()), "{err}");
    }

    // One bind and one FUSE switchfs: several, both named, the decoy not.
    let fuse = Fixture::new("disc-fuse");
    fuse.two_releases();
    let _d2 = fuse.start(&["--initial", "1"]);
    let err = one_line_error(&bare_switchctl(&["status"]));
    assert!(
        err.contains(&format!("{} switchfs mounts on this host", others + 2)),
        "{err}"
    );
    assert!(err.contains(fx.mnt().to_str().unwrap()), "{err}");
    assert!(err.contains(fuse.mnt().to_str().unwrap()), "{err}");
    assert!(!err.contains(decoy.root.to_str().unwrap()), "{err}");
    let _ = std::fs::remove_file(&fake);
}
