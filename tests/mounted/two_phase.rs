//! Issue 20: the two phases of a fleet switch. `prepare NAME` checks everything `activate`
//! would and changes nothing; `activate NAME --at TIME` switches when the host clock reaches
//! TIME (an absolute CLOCK_REALTIME timer), survives a crash or an upgrade of the server,
//! runs once, is never run late, and `cancel` drops it. Also finding 3: `status` never names
//! a deleted release as the rollback target.

use std::fs;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use switchfs::when;

use crate::common::*;

fn releases(fx: &Fixture) {
    for rel in ["1", "2", "3"] {
        fx.write(rel, "index.php", &format!("release {rel}"));
    }
}

fn status(fx: &Fixture, json: bool) -> String {
    let args: &[&str] = if json {
        &["status", "--json"]
    } else {
        &["status"]
    };
    let out = fx.ctl(args);
    assert!(out.status.success(), "{}", one_line_error(&out));
    stdout(&out)
}

fn ok(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout(out)
}

/// The instant after " at " in `switched from 1 to 2 at 2026-...Z`.
fn switched_at(text: &str) -> SystemTime {
    let word = text
        .split_whitespace()
        .find(|w| w.ends_with('Z') && w.contains('T'))
        .unwrap_or_else(|| panic!("no instant in {text:?}"));
    when::parse_at(word, SystemTime::now()).unwrap_or_else(|e| panic!("{e}"))
}

fn signal(pid: i32, sig: i32) {
    // SAFETY: kill on a process of the daemon this test started.
    assert_eq!(unsafe { libc::kill(pid, sig) }, 0, "kill {pid} {sig}");
}

/// The number after `"pid":` in status --json.
fn server_pid(fx: &Fixture) -> i32 {
    let json = status(fx, true);
    let at = json.find("\"pid\":").expect("pid") + 6;
    json[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .unwrap()
}

fn wait_for_successor(fx: &Fixture, old: i32) {
    assert!(
        wait_until(10, || {
            let out = fx.ctl(&["status", "--json"]);
            out.status.success() && server_pid(fx) != old
        }),
        "no new server after 10 s"
    );
}

#[test]
fn prepare_says_whether_activate_would_succeed_and_changes_nothing() {
    let fx = Fixture::new("tp-prep");
    releases(&fx);
    std::os::unix::fs::symlink("2", fx.releases().join("link")).unwrap();
    let _d = fx.start(&["--initial", "1"]);
    let out = ok(&fx.ctl(&["prepare", "2"]));
    assert!(out.contains("release 2 can be activated"), "{out}");
    for bad in ["9", "link"] {
        let out = fx.ctl(&["prepare", bad]);
        assert_eq!(out.status.code(), Some(1), "prepare {bad}");
        let err = one_line_error(&out);
        assert!(err.contains(bad), "{err}");
    }
    assert_eq!(fx.active(), "1");
    assert_eq!(fx.read("index.php"), "release 1");
    let st = status(&fx, false);
    assert!(st.contains("history:      1 (newest first)"), "{st}");
}

#[test]
fn prepare_refuses_an_unreachable_php_pool_and_changes_nothing() {
    let fx = Fixture::new("tp-pool");
    releases(&fx);
    let script = fx.root.join("opcache-invalidate.php");
    fs::write(&script, "<?php").unwrap();
    let sock = fx.root.join("no-fpm.sock");
    let _d = fx.start(&[
        "--initial",
        "1",
        "--php-script",
        script.to_str().unwrap(),
        "--php-fpm",
        sock.to_str().unwrap(),
    ]);
    let out = fx.ctl(&["prepare", "2"]);
    assert_eq!(out.status.code(), Some(1));
    let err = one_line_error(&out);
    assert!(
        err.contains("OPcache of php-fpm") && err.contains(sock.to_str().unwrap()),
        "{err}"
    );
    // The same check runs before an --at switch is scheduled.
    let out = fx.ctl(&["activate", "2", "--at", "+5", "--no-wait"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(one_line_error(&out).contains("OPcache of php-fpm"));
    assert_eq!(fx.active(), "1");
    assert!(status(&fx, true).contains("\"pending\":null"));
}

/// The switch is published at the instant: a reader never sees the new release before it,
/// always after the reported switch. Prints how late the publish was (median, max).
#[test]
fn activate_at_switches_at_the_instant() {
    let fx = Fixture::new("tp-at");
    releases(&fx);
    let d = fx.start(&["--initial", "1", "--cache-timeout", "0"]);
    let mut late_us = Vec::new();
    for round in 0..20 {
        let (from, to) = if round % 2 == 0 {
            ("1", "2")
        } else {
            ("2", "1")
        };
        let at = SystemTime::now() + Duration::from_millis(400);
        let seen: Arc<Mutex<Vec<(SystemTime, SystemTime, String)>>> = Default::default();
        let stop = Arc::new(AtomicBool::new(false));
        let probe = {
            let (seen, stop, path) = (seen.clone(), stop.clone(), fx.m("index.php"));
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let before = SystemTime::now();
                    let text = fs::read_to_string(&path).unwrap();
                    seen.lock().unwrap().push((before, SystemTime::now(), text));
                }
            })
        };
        let out = ok(&fx.ctl(&["activate", to, "--at", &when::micros(at)]));
        let published = switched_at(&out);
        assert!(
            out.contains(&format!("switched from {from} to {to} at ")),
            "{out}"
        );
        std::thread::sleep(Duration::from_millis(20));
        stop.store(true, Ordering::Relaxed);
        probe.join().unwrap();
        for (before, after, text) in seen.lock().unwrap().iter() {
            if *after < at {
                assert_eq!(
                    text,
                    &format!("release {from}"),
                    "served before the instant"
                );
            }
            if *before > published {
                assert_eq!(
                    text,
                    &format!("release {to}"),
                    "not served after the switch"
                );
            }
        }
        assert!(published >= at, "published before the instant");
        late_us.push(published.duration_since(at).unwrap().as_micros());
    }
    late_us.sort_unstable();
    // The daemon logs when its timer fired, before the switch's own work.
    let mut fired_us: Vec<u128> = d
        .log_text()
        .lines()
        .filter_map(|l| l.split("the timer fired ").nth(1))
        .filter_map(|t| t.split(" ms").next()?.parse::<f64>().ok())
        .map(|ms| (ms * 1000.0) as u128)
        .collect();
    fired_us.sort_unstable();
    assert_eq!(fired_us.len(), 20, "{}", d.log_text());
    println!(
        "activate --at timer wake-up over 20 runs (after the instant): median {} us, max {} us",
        fired_us[10], fired_us[19]
    );
    // And what the switch itself cost (debug lines of `activate_held`).
    let cost = |key: &str| {
        let mut us: Vec<u128> = d
            .log_text()
            .lines()
            .filter_map(|l| l.split(key).nth(1))
            .filter_map(|t| t.split(" ms").next()?.parse::<f64>().ok())
            .map(|ms| (ms * 1000.0) as u128)
            .collect();
        us.sort_unstable();
        (us[us.len() / 2], us[us.len() - 1])
    };
    let (persist, publish) = (cost("persisted in "), cost("published in "));
    println!(
        "activate --at: persisting the state median {} us (max {}), publishing median {} us \
         (max {})",
        persist.0, persist.1, publish.0, publish.1
    );
    println!(
        "activate --at lateness over {} runs (publish done, after the instant): median {} us, \
         max {} us",
        late_us.len(),
        late_us[late_us.len() / 2],
        late_us[late_us.len() - 1]
    );
}

#[test]
fn no_wait_cancel_and_a_second_switch_refused_while_pending() {
    let fx = Fixture::new("tp-cancel");
    releases(&fx);
    let d = fx.start(&["--initial", "1"]);
    let out = ok(&fx.ctl(&["activate", "2", "--at", "+30", "--no-wait"]));
    assert!(
        out.contains("scheduled the switch to release 2 at "),
        "{out}"
    );
    let st = status(&fx, false);
    assert!(st.contains("pending:      release 2 at "), "{st}");
    let json = status(&fx, true);
    assert!(
        json.contains("\"pending\":{\"release\":\"2\",\"kind\":\"activate\",\"at\":\""),
        "{json}"
    );
    assert!(json.contains("\"requested_by\":\"uid=0"), "{json}");
    for args in [
        &["activate", "3"][..],
        &["rollback"],
        &["activate", "3", "--at", "+20"],
        &["prepare", "3"],
    ] {
        let out = fx.ctl(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = one_line_error(&out);
        assert!(
            err.contains("a switch is pending: release 2 at ") && err.contains("cancel"),
            "{args:?}: {err}"
        );
    }
    let out = ok(&fx.ctl(&["cancel"]));
    assert!(out.contains("cancelled the switch to release 2"), "{out}");
    let out = fx.ctl(&["cancel"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(one_line_error(&out).contains("no switch is pending"));
    assert!(status(&fx, true).contains("\"pending\":null"));
    assert!(!fx.root.join("state.pending").exists(), "the file is gone");
    // A cancelled switch never runs; a waiting client hears it was cancelled.
    let waiter = {
        let (ctl, sock) = (SWITCHCTL, fx.socket());
        std::thread::spawn(move || {
            std::process::Command::new(ctl)
                .arg("--control")
                .arg(sock)
                .args(["activate", "3", "--at", "+1"])
                .output()
                .unwrap()
        })
    };
    assert!(wait_until(5, || status(&fx, false).contains("pending:")));
    ok(&fx.ctl(&["cancel"]));
    let out = waiter.join().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(one_line_error(&out).contains("cancelled"));
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(fx.active(), "1");
    assert!(
        !d.log_text().contains("scheduled switch to"),
        "{}",
        d.log_text()
    );
}

#[test]
fn bad_times_are_refused_with_one_line_and_change_nothing() {
    let fx = Fixture::new("tp-bad");
    releases(&fx);
    let _d = fx.start(&["--initial", "1"]);
    for at in [
        "tomorrow",
        "+-1",
        "+1e3",
        "2026-12-01T23:00:00",
        "2026-12-01T23:00:00+01:00",
        "2026-02-30T23:00:00Z",
        "2020-01-01T00:00:00Z",
        "+3601",
    ] {
        let out = fx.ctl(&["activate", "2", "--at", at]);
        assert_eq!(out.status.code(), Some(1), "--at {at}");
        let err = one_line_error(&out);
        assert!(
            err.contains("--at") || err.contains("in the past") || err.contains("ahead"),
            "{at}: {err}"
        );
    }
    for args in [
        &["activate", "2", "--no-wait"][..],
        &["activate", "2", "--at", "+5", "--wait-drain", "5"],
        &["cancel", "now"],
    ] {
        let out = fx.ctl(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        one_line_error(&out);
    }
    assert_eq!(fx.active(), "1");
    assert!(status(&fx, true).contains("\"pending\":null"));
}

/// A pending switch lives in a file beside the state file: the server the keeper starts
/// after a SIGKILL, and the one a SIGHUP upgrade execs, re-arm it; it runs once.
#[test]
fn a_pending_switch_survives_a_crash_and_an_upgrade_and_runs_once() {
    let fx = Fixture::new("tp-life");
    releases(&fx);
    let d = fx.start(&["--initial", "1"]);
    let at = SystemTime::now() + Duration::from_secs(6);
    ok(&fx.ctl(&["activate", "2", "--at", &when::micros(at), "--no-wait"]));
    let first = server_pid(&fx);
    signal(first, libc::SIGKILL);
    wait_for_successor(&fx, first);
    assert!(status(&fx, false).contains("pending:      release 2 at "));
    let second = server_pid(&fx);
    signal(d.main_pid(), libc::SIGHUP);
    wait_for_successor(&fx, second);
    assert!(status(&fx, false).contains("pending:      release 2 at "));
    assert_eq!(fx.active(), "1");
    let deadline = at + Duration::from_secs(5);
    assert!(
        wait_until(15, || fx.active() == "2" || SystemTime::now() > deadline),
        "timed out"
    );
    assert_eq!(fx.active(), "2", "{}", d.log_text());
    std::thread::sleep(Duration::from_millis(300));
    let st = status(&fx, false);
    assert!(st.contains("history:      2, 1 (newest first)"), "{st}");
    assert!(!st.contains("pending:"), "{st}");
    let log = d.log_text();
    assert_eq!(
        log.matches("scheduled switch to 2 published").count(),
        1,
        "{log}"
    );
    assert_eq!(
        log.matches("re-armed the pending switch").count(),
        2,
        "{log}"
    );
}

/// A pending switch whose time passed while no server ran is dropped, and the drop shown.
#[test]
fn a_pending_switch_whose_time_passed_during_downtime_is_dropped_and_reported() {
    let fx = Fixture::new("tp-drop");
    releases(&fx);
    let mut d = fx.start(&["--initial", "1"]);
    ok(&fx.ctl(&["activate", "2", "--at", "+2", "--no-wait"]));
    d.stop_with(libc::SIGTERM);
    drop(d);
    let started = Instant::now();
    assert!(fx.root.join("state.pending").exists());
    std::thread::sleep(Duration::from_secs(3).saturating_sub(started.elapsed()));
    let d = fx.start(&[]);
    assert_eq!(fx.active(), "1", "not run late");
    let st = status(&fx, false);
    assert!(
        st.contains("dropped:      the switch to release 2 at ")
            && st.contains("before this server started; not run late"),
        "{st}"
    );
    assert!(
        status(&fx, true).contains("\"pending_dropped\":{\"switch\":{\"release\":\"2\""),
        "{}",
        status(&fx, true)
    );
    assert!(
        d.log_text()
            .contains("dropped the pending switch to release 2")
    );
    assert!(!fx.root.join("state.pending").exists());
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(fx.active(), "1");
}

/// Finding 3 of issue 20: after a deploy tool deleted release directories (or a prune),
/// status never names one as the rollback target, the history marks them, rollback skips
/// them and says so.
#[test]
fn deleted_releases_are_never_the_rollback_target() {
    let fx = Fixture::new("tp-gone");
    for rel in ["1", "2", "3", "4"] {
        fx.write(rel, "index.php", rel);
    }
    let _d = fx.start(&["--initial", "1"]);
    for rel in ["2", "3", "4"] {
        fx.activate(rel);
    }
    for gone in ["2", "3"] {
        fs::remove_dir_all(fx.releases().join(gone)).unwrap();
    }
    let st = status(&fx, false);
    assert!(
        st.contains("history:      4, 3 (gone), 2 (gone), 1 (newest first)\nrollback to:  1\n"),
        "{st}"
    );
    let json = status(&fx, true);
    assert!(
        json.contains("\"rollback_to\":\"1\"") && json.contains("\"history_gone\":[\"2\",\"3\"]"),
        "{json}"
    );
    let list = ok(&fx.ctl(&["list"]));
    assert_eq!(list, "  1 (rollback target)\n* 4 (active)\n");
    let out = ok(&fx.ctl(&["rollback"]));
    assert_eq!(
        out.trim_end(),
        "switched from 4 to 1 (skipped 3, 2: the directory is gone)"
    );
    let st = status(&fx, false);
    assert!(st.contains("rollback to:  (none)"), "{st}");
}

/// prepare, cancel and activate --at need the rights activate needs: the status group is
/// refused all three, a member of the control group (a deploy user) may, and is named.
#[test]
fn only_the_control_group_prepares_schedules_and_cancels() {
    assert!(is_root(), "this test acts as nobody: run it as root");
    let fx = Fixture::new("tp-rights");
    releases(&fx);
    fx.open_up_for_others();
    let (status_gid, control_gid) = (64011u32, 64012u32);
    let _d = fx.start(&[
        "--initial",
        "1",
        "--status-group",
        &status_gid.to_string(),
        "--control-group",
        &control_gid.to_string(),
    ]);
    for args in [
        &["prepare", "2"][..],
        &["activate", "2", "--at", "+5"],
        &["cancel"],
    ] {
        let out = ctl_as_nobody(&fx, &[status_gid], args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = one_line_error(&out);
        assert!(
            err.contains(&format!("permission denied: {} needs root", args[0])),
            "{err}"
        );
    }
    let out = ctl_as_nobody(&fx, &[control_gid], &["prepare", "2"]);
    assert!(ok(&out).contains("release 2 can be activated"));
    let out = ctl_as_nobody(
        &fx,
        &[control_gid],
        &["activate", "2", "--at", "+5", "--no-wait"],
    );
    ok(&out);
    let json = status(&fx, true);
    assert!(json.contains("\"requested_by\":\"uid=65534"), "{json}");
    let out = ctl_as_nobody(&fx, &[control_gid], &["cancel"]);
    ok(&out);
    assert_eq!(fx.active(), "1");
}

/// A client that gives up waiting (Ctrl-C) leaves the switch scheduled: it runs at its
/// instant all the same.
#[test]
fn a_waiting_client_that_hangs_up_leaves_the_switch_scheduled() {
    let fx = Fixture::new("tp-hup");
    releases(&fx);
    let _d = fx.start(&["--initial", "1"]);
    let mut waiting = std::process::Command::new(SWITCHCTL)
        .arg("--control")
        .arg(fx.socket())
        .args(["activate", "2", "--at", "+2"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    assert!(wait_until(5, || status(&fx, false).contains("pending:")));
    waiting.kill().unwrap();
    waiting.wait().unwrap();
    assert_eq!(fx.active(), "1");
    assert!(
        wait_until(10, || fx.active() == "2"),
        "it ran at its instant"
    );
}

/// Finding 3 after `prune`: the releases it deleted are marked in the history and never the
/// rollback target, so a second rollback is refused instead of aimed at a deleted release.
#[test]
fn after_a_prune_status_and_rollback_agree_on_what_is_left() {
    let fx = Fixture::new("tp-prune");
    for rel in ["1", "2", "3", "4"] {
        fx.write(rel, "index.php", rel);
    }
    let _d = fx.start(&["--initial", "1"]);
    for rel in ["2", "3", "4"] {
        fx.activate(rel);
    }
    ok(&fx.ctl(&["prune", "--keep", "2", "--yes"]));
    assert!(!fx.releases().join("2").exists() && !fx.releases().join("1").exists());
    let st = status(&fx, false);
    assert!(
        st.contains("history:      4, 3, 2 (gone), 1 (gone) (newest first)\nrollback to:  3\n"),
        "{st}"
    );
    assert_eq!(
        ok(&fx.ctl(&["rollback"])).trim_end(),
        "switched from 4 to 3"
    );
    let st = status(&fx, false);
    assert!(st.contains("rollback to:  (none)\n"), "{st}");
    let out = fx.ctl(&["rollback"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(one_line_error(&out).contains("no earlier release"));
    assert_eq!(fx.active(), "3");
}

/// A fleet rolls back at one instant too: `rollback --at` plans the target when asked, and
/// at the instant rolls back as `rollback` does (the release left is marked rolled back, so
/// the next rollback goes further back, never to it).
#[test]
fn rollback_at_rolls_back_at_the_instant_with_the_history_of_a_rollback() {
    let fx = Fixture::new("tp-back");
    releases(&fx);
    let _d = fx.start(&["--initial", "1", "--cache-timeout", "0"]);
    fx.activate("2");
    fx.activate("3");
    let out = ok(&fx.ctl(&["rollback", "--at", "+1", "--no-wait"]));
    assert!(
        out.contains("scheduled the switch to rollback to release 2 at "),
        "{out}"
    );
    assert!(status(&fx, true).contains("\"kind\":\"rollback\""));
    let out = ok(&fx.ctl(&["cancel"]));
    assert!(out.contains("rollback to release 2"), "{out}");
    let at = SystemTime::now() + Duration::from_millis(500);
    let out = ok(&fx.ctl(&["rollback", "--at", &when::micros(at)]));
    assert!(out.starts_with("switched from 3 to 2 at "), "{out}");
    assert!(switched_at(&out) >= at);
    assert_eq!(fx.read("index.php"), "release 2");
    let st = status(&fx, false);
    assert!(
        st.contains("history:      2, 1 (newest first)\nrollback to:  1\nrolled back:  3\n"),
        "{st}"
    );
    let out = fx.ctl(&["rollback", "--to", "9", "--at", "+1"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(one_line_error(&out).contains("9"));
}
