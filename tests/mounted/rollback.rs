//! Rollback as the deploy tools mean it (README "Rollback"): each `switchctl rollback` steps
//! one release further back through the activation history, never returns to the release it
//! just left, survives restarts, and `--to NAME` goes back to a named release.

use std::process::Command;

use crate::common::*;

/// Releases 1 to 4, each `index.php` saying which it is; 1 served, then 2, 3, 4 deployed.
fn four_deploys(fx: &Fixture) -> Daemon {
    for rel in ["1", "2", "3", "4"] {
        fx.write(rel, "index.php", &format!("release {rel}"));
    }
    let d = fx.start(&["--initial", "1"]);
    for rel in ["2", "3", "4"] {
        fx.activate(rel);
    }
    d
}

fn rollback(fx: &Fixture, args: &[&str]) -> std::process::Output {
    let mut all = vec!["rollback"];
    all.extend_from_slice(args);
    fx.ctl(&all)
}

#[test]
fn each_rollback_steps_further_back_and_never_returns_to_the_bad_release() {
    let fx = Fixture::new("rollback-steps");
    let mut d = four_deploys(&fx);
    assert_eq!(stdout(&rollback(&fx, &[])), "switched from 4 to 3\n");
    assert_eq!(fx.read("index.php"), "release 3");
    // The old behaviour toggled back to 4 here.
    assert_eq!(stdout(&rollback(&fx, &[])), "switched from 3 to 2\n");
    assert_eq!(fx.read("index.php"), "release 2");

    let text = stdout(&fx.ctl(&["status"]));
    assert!(text.contains("history:      2, 1 (newest first)"), "{text}");
    assert!(text.contains("rollback to:  1"), "{text}");
    assert!(text.contains("rolled back:  4, 3"), "{text}");
    let json = stdout(&fx.ctl(&["status", "--json"]));
    assert!(
        json.contains(
            "\"history\":[\"2\",\"1\"],\"rollback_to\":\"1\",\"rolled_back\":[\"4\",\"3\"]"
        ),
        "{json}"
    );
    assert_eq!(
        stdout(&fx.ctl(&["list"])),
        "  1 (rollback target)\n* 2 (active)\n  3 (previous) (rolled back)\n  4 (rolled back)\n"
    );

    // The history is persisted with the state: a restarted daemon goes on stepping back.
    d.stop_with(libc::SIGTERM);
    let _d = fx.start(&[]);
    assert_eq!(stdout(&rollback(&fx, &[])), "switched from 2 to 1\n");
    let out = rollback(&fx, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        one_line_error(&out).contains("no earlier release to roll back to"),
        "{}",
        one_line_error(&out)
    );
    assert_eq!(
        fx.read("index.php"),
        "release 1",
        "a refused rollback changes nothing"
    );

    // A deploy of a release rolled back from lifts its mark.
    fx.activate("4");
    assert_eq!(stdout(&rollback(&fx, &[])), "switched from 4 to 1\n");
}

#[test]
fn rollback_to_a_named_release_and_bad_names() {
    let fx = Fixture::new("rollback-to");
    let _d = four_deploys(&fx);
    let state_before = std::fs::read(fx.state()).unwrap();
    for (args, code, says) in [
        (
            &["--to", "9"][..],
            1,
            "release 9 is not in the activation history",
        ),
        (&["--to", "4"][..], 1, "release 4 is already active"),
        (&["--to", "../1"][..], 2, "contains '/'"),
        (&["--to"][..], 2, "--to"),
    ] {
        let out = rollback(&fx, args);
        assert_eq!(out.status.code(), Some(code), "{args:?}");
        let err = one_line_error(&out);
        assert!(err.contains(says), "{args:?}: {err}");
    }
    assert_eq!(fx.read("index.php"), "release 4");
    assert_eq!(
        std::fs::read(fx.state()).unwrap(),
        state_before,
        "nothing persisted"
    );

    let out = rollback(&fx, &["--to", "2", "--wait-drain=5"]);
    assert!(out.status.success(), "{}", one_line_error(&out));
    assert!(stdout(&out).starts_with("switched from 4 to 2"));
    assert_eq!(fx.read("index.php"), "release 2");
    // 3 was skipped over and 4 rolled back from: the next step back is 1.
    assert_eq!(stdout(&rollback(&fx, &[])), "switched from 2 to 1\n");
}

/// Two deploy hosts (or an impatient operator) roll back at the same moment: the rollbacks
/// are serialised, so together they step back exactly twice and never land on a release one
/// of them rolled back from.
#[test]
fn concurrent_rollbacks_step_back_once_each() {
    let fx = Fixture::new("rollback-race");
    let _d = four_deploys(&fx);
    let socket = fx.socket();
    let children: Vec<_> = (0..2)
        .map(|_| {
            Command::new(SWITCHCTL)
                .arg("--control")
                .arg(&socket)
                .arg("rollback")
                .stdout(std::process::Stdio::piped())
                .spawn()
                .expect("spawn switchctl")
        })
        .collect();
    let mut lines: Vec<String> = children
        .into_iter()
        .map(|c| stdout(&c.wait_with_output().expect("switchctl ran")))
        .collect();
    lines.sort();
    assert_eq!(lines, ["switched from 3 to 2\n", "switched from 4 to 3\n"]);
    assert_eq!(fx.read("index.php"), "release 2");
}
