//! README "Monitoring": `status --json`'s version, schema, switch counter and last switch;
//! `switchctl check`'s monitoring-plugin verdicts and exit codes for each rule (docs in
//! `control::health`); `switchctl metrics` read by a real Prometheus parser (Debian's
//! python3-prometheus-client); `STATUS=` to systemd; `--initial` that names no release is
//! never silent.

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

fn check(fx: &Fixture) -> (i32, String) {
    let out = fx.ctl(&["check"]);
    let text = stdout(&out);
    assert_eq!(text.lines().count(), 1, "check prints one line: {text:?}");
    assert!(out.stderr.is_empty(), "{out:?}");
    (out.status.code().unwrap_or(-1), text.trim_end().to_string())
}

/// The number after `"name":` in `json`.
fn json_num(json: &str, name: &str) -> f64 {
    let key = format!("\"{name}\":");
    let at = json
        .find(&key)
        .unwrap_or_else(|| panic!("no {name} in {json}"))
        + key.len();
    json[at..]
        .split([',', '}'])
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{name} is not a number in {json}"))
}

#[test]
fn status_json_says_version_schema_switches_and_the_last_switch() {
    let fx = Fixture::new("mon-json");
    fx.two_releases();
    let _d = fx.start(&["--initial", "1"]);
    let json = stdout(&fx.ctl(&["status", "--json"]));
    assert!(
        json.contains(&format!(
            "\"version\":\"{}\",\"schema\":2,",
            env!("CARGO_PKG_VERSION")
        )),
        "{json}"
    );
    assert!(
        json.contains("\"switches\":0,\"last_switch\":null}"),
        "{json}"
    );
    fx.activate("2");
    fx.activate("2"); // already active: not a switch
    let json = stdout(&fx.ctl(&["status", "--json"]));
    assert_eq!(json_num(&json, "switches"), 1.0, "{json}");
    assert!(
        json.contains("\"last_switch\":{\"at\":\"") && json.contains("\"from\":\"1\",\"to\":\"2\""),
        "{json}"
    );
    let took = json_num(&json, "took_ms");
    let step = json_num(&json, "switch_ms");
    assert!(took > 0.0 && step > 0.0 && step <= took, "{json}");
    // Sub-second times agree with the whole-second ones.
    let ms = json_num(&json, "since_unix_ms");
    let secs = json_num(&json, "since_unix");
    assert_eq!((ms / 1000.0).floor(), secs, "{json}");
    assert!(json_num(&json, "started_unix_ms") > 0.0, "{json}");
}

#[test]
fn check_is_ok_while_serving_and_critical_once_the_active_directory_is_deleted() {
    let fx = Fixture::new("mon-check");
    fx.two_releases();
    let _d = fx.start(&["--initial", "1"]);
    let (code, line) = check(&fx);
    assert_eq!(code, 0, "{line}");
    assert!(line.starts_with("SWITCHFS OK - serving 1 since "), "{line}");
    assert!(line.contains(" | switches=0c "), "{line}");
    std::fs::remove_dir_all(fx.releases().join("1")).unwrap();
    let (code, line) = check(&fx);
    assert_eq!(code, 2, "{line}");
    assert!(
        line.starts_with("SWITCHFS CRITICAL - the directory of release 1 was deleted"),
        "{line}"
    );
    fx.activate("2");
    assert_eq!(check(&fx).0, 0);
}

#[test]
fn check_warns_without_an_active_release_and_after_a_failed_hook() {
    let fx = Fixture::new("mon-warn");
    fx.two_releases();
    let _d = fx.start(&["--on-activate", "test \"$SWITCHFS_NEW_RELEASE\" != 2"]);
    let (code, line) = check(&fx);
    assert_eq!(code, 1, "{line}");
    assert!(
        line.starts_with("SWITCHFS WARNING - no release is active"),
        "{line}"
    );
    fx.activate("1");
    assert_eq!(check(&fx).0, 0);
    let out = fx.ctl(&["activate", "2"]);
    assert_eq!(out.status.code(), Some(3), "the hook fails for release 2");
    let (code, line) = check(&fx);
    assert_eq!(code, 1, "{line}");
    assert!(
        line.starts_with("SWITCHFS WARNING - the last switch's hook failed"),
        "{line}"
    );
}

#[test]
fn check_is_unknown_when_the_daemon_cannot_be_reached() {
    let fx = Fixture::new("mon-unknown");
    let out = fx.ctl(&["check"]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let line = stdout(&out);
    assert!(
        line.starts_with("SWITCHFS UNKNOWN - cannot reach switchfs"),
        "{line}"
    );
    assert_eq!(line.lines().count(), 1);
    let out = fx.ctl(&["metrics"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let families = parse_prometheus(&stdout(&out));
    assert_eq!(families, ["switchfs_up gauge switchfs_up {} 0.0"]);
}

/// Three server crashes within the window: CRITICAL, a restart loop.
#[test]
fn check_calls_repeated_server_crashes_a_restart_loop() {
    let fx = Fixture::new("mon-loop");
    fx.two_releases();
    let d = fx.start(&["--initial", "1"]);
    for n in 1..=3 {
        let pid = d.pid();
        assert!(pid > 0);
        // SAFETY: kill on the server, our keeper's child.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        assert!(
            wait_until(20, || d.pid() != pid
                && d.pid() > 0
                && fx.ctl(&["status"]).status.success()),
            "no new server after crash {n}"
        );
        let (code, line) = check(&fx);
        let want = if n < 3 { 0 } else { 2 };
        assert_eq!(code, want, "after {n} crashes: {line}");
    }
    let (_, line) = check(&fx);
    assert!(
        line.contains("restart loop: the server was restarted 3 times in the last 600 s"),
        "{line}"
    );
    assert_eq!(fx.read("index.php"), "<?php echo 'release 1';");
}

/// Parses Prometheus text with python3-prometheus-client's parser and returns one line per
/// sample: `FAMILY TYPE SAMPLE {LABELS} VALUE`, labels sorted.
fn parse_prometheus(text: &str) -> Vec<String> {
    let script = "import sys\n\
        from prometheus_client.parser import text_string_to_metric_families\n\
        for f in text_string_to_metric_families(sys.stdin.read()):\n\
        \x20   assert f.documentation, f.name\n\
        \x20   for s in f.samples:\n\
        \x20       labels = ','.join(k + '=' + v for k, v in sorted(s.labels.items()))\n\
        \x20       print(f.name, f.type, s.name, '{' + labels + '}', repr(float(s.value)))\n";
    // Debian's python3, where python3-prometheus-client installs (not a pyenv or venv one
    // first on PATH).
    let mut child = Command::new("/usr/bin/python3")
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("/usr/bin/python3 must be installed (bash scripts/install-deps)");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the Prometheus parser refused the exposition (python3-prometheus-client missing? \
         bash scripts/install-deps): {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn metrics_are_prometheus_text_a_real_parser_reads() {
    let fx = Fixture::new("mon-metrics");
    fx.two_releases();
    // A release name with characters label values must escape.
    let odd = "7 \"quoted\" back\\slash";
    fx.write(odd, "index.php", "odd");
    let _d = fx.start(&["--initial", "1"]);
    fx.activate("2");
    let out = fx.ctl(&["metrics"]);
    assert!(out.status.success(), "{out:?}");
    let text = stdout(&out);
    assert!(
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .all(|l| l.starts_with("switchfs_")),
        "{text}"
    );
    let samples = parse_prometheus(&text);
    let has = |want: &str| samples.iter().any(|s| s.starts_with(want));
    let mount = fx.mnt().display().to_string();
    for want in [
        format!("switchfs_up gauge switchfs_up {{mount_point={mount}}} 1.0"),
        format!(
            "switchfs_active_release gauge switchfs_active_release {{mount_point={mount},release=2}} 1.0"
        ),
        format!("switchfs_switches counter switchfs_switches_total {{mount_point={mount}}} 1.0"),
        format!("switchfs_check_status gauge switchfs_check_status {{mount_point={mount}}} 0.0"),
        format!(
            "switchfs_server_restarts counter switchfs_server_restarts_total {{mount_point={mount}}} 0.0"
        ),
        format!(
            "switchfs_last_switch_duration_seconds gauge switchfs_last_switch_duration_seconds {{mount_point={mount},step=total}} "
        ),
        format!(
            "switchfs_release_in_use gauge switchfs_release_in_use {{mount_point={mount},release={odd}}} 0.0"
        ),
        format!(
            "switchfs_info gauge switchfs_info {{mode=fuse,mount_point={mount},version={}}} 1.0",
            env!("CARGO_PKG_VERSION")
        ),
    ] {
        assert!(has(&want), "missing {want:?} in:\n{}", samples.join("\n"));
    }
}

/// `STATUS=` reaches systemd's notify socket after start and after each switch, so
/// `systemctl status` says what is served.
#[test]
fn systemd_hears_what_is_served_after_start_and_each_switch() {
    let fx = Fixture::new("mon-notify");
    fx.two_releases();
    let path = fx.root.join("notify");
    let sock = UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut child = Command::new(SWITCHFS)
        .arg("--releases")
        .arg(fx.releases())
        .arg("--control")
        .arg(fx.socket())
        .arg("--state")
        .arg(fx.state())
        .args(["--initial", "1"])
        .arg(fx.mnt())
        .env("NOTIFY_SOCKET", &path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(fx.root.join("d.log")).unwrap())
        .spawn()
        .unwrap();
    let next = |want: &str| {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut buf = [0u8; 512];
        let mut seen = Vec::new();
        while Instant::now() < deadline {
            if let Ok(n) = sock.recv(&mut buf) {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                if msg.lines().any(|l| l == want) {
                    return msg;
                }
                seen.push(msg);
            }
        }
        panic!("no {want:?} within 20 s; got {seen:?}");
    };
    let ready = next("READY=1");
    assert!(ready.lines().any(|l| l == "STATUS=serving 1"), "{ready:?}");
    fx.activate("2");
    next("STATUS=serving 2");
    // SAFETY: kill on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let _ = child.wait();
}

/// `--initial` naming no release is a warning even when a persisted release is resumed
/// instead (before, it was silently ignored once state existed).
#[test]
fn an_initial_release_that_does_not_exist_is_a_warning_once_state_exists() {
    let fx = Fixture::new("mon-initial");
    fx.two_releases();
    let mut d = fx.start(&["--initial", "1"]);
    fx.activate("2");
    d.stop_with(libc::SIGTERM);
    let d = fx.start(&["--initial", "nope"]);
    assert_eq!(fx.active(), "2");
    let log = d.log_text();
    assert!(
        log.lines().any(|l| l.contains("WARN")
            && l.contains("--initial \"nope\" names no release")
            && l.contains("resuming the persisted release \"2\"")),
        "{log}"
    );
}

/// README `switchctl`: `check` and `metrics` only read, so the monitoring user in
/// `--status-group` may run them; `php-sync` makes the daemon talk to the pools, so it needs
/// switching rights; anyone else gets UNKNOWN from check, with the reason (here the socket's
/// mode already refuses them).
#[test]
fn the_status_group_may_check_and_scrape_but_not_php_sync() {
    assert!(is_root(), "this test acts as nobody: run it as root");
    let fx = Fixture::new("mon-rights");
    fx.two_releases();
    fx.open_up_for_others();
    let _d = fx.start(&["--initial", "1", "--status-group", "64001"]);
    let out = ctl_as_nobody(&fx, &[64001], &["check"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(
        stdout(&out).starts_with("SWITCHFS OK - serving 1"),
        "{out:?}"
    );
    let out = ctl_as_nobody(&fx, &[64001], &["metrics"]);
    assert!(
        out.status.success() && stdout(&out).contains("switchfs_up{"),
        "{out:?}"
    );
    let out = ctl_as_nobody(&fx, &[64001], &["php-sync"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        one_line_error(&out).contains("permission denied: php-sync needs root"),
        "{out:?}"
    );
    let out = ctl_as_nobody(&fx, &[], &["check"]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert!(
        stdout(&out).starts_with("SWITCHFS UNKNOWN - permission denied"),
        "{out:?}"
    );
    // Root without any pool configured: refused with the reason, nothing done.
    let out = fx.ctl(&["php-sync"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        one_line_error(&out).contains("no PHP pool is configured"),
        "{out:?}"
    );
}
