//! `switchctl` without --mount or --control finds the one switchfs on the host, and with
//! several lists them and fails. In its own test binary: cargo runs test binaries one after
//! another, so the other mounted tests do not add mounts meanwhile.

mod common;

use std::process::Command;

use common::*;
use switchfs::mounts::switchfs_mounts;

fn bare_switchctl(args: &[&str]) -> std::process::Output {
    Command::new(SWITCHCTL).args(args).output().unwrap()
}

#[test]
fn finds_the_only_switchfs_and_refuses_to_guess_among_several() {
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
