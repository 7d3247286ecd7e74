//! `switchctl metrics`: the `Status` in Prometheus' text exposition format (version
//! 0.0.4), for node_exporter's textfile collector (`switchctl metrics > DIR/switchfs.prom`,
//! see docs/operations.md). Every name starts with `switchfs_`, every family has its
//! `# HELP` and `# TYPE` line, label values are escaped as the format says (backslash,
//! double quote, newline). No timestamps on samples: the textfile collector refuses them.

use std::fmt::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::control::health;
use crate::php::opcache::LastRun;
use crate::switch::usage::Status;

/// One metric family being written.
struct Family<'a> {
    out: &'a mut String,
    name: &'static str,
}

/// Starts the family `name`: its HELP and TYPE lines.
fn family<'a>(out: &'a mut String, name: &'static str, kind: &str, help: &str) -> Family<'a> {
    let _ = writeln!(out, "# HELP {name} {}", escape_help(help));
    let _ = writeln!(out, "# TYPE {name} {kind}");
    Family { out, name }
}

impl Family<'_> {
    /// One sample with `labels` (name, value pairs).
    fn sample(&mut self, labels: &[(&str, &str)], value: f64) -> &mut Self {
        let _ = write!(self.out, "{}", self.name);
        if !labels.is_empty() {
            let pairs: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", escape_label(v)))
                .collect();
            let _ = write!(self.out, "{{{}}}", pairs.join(","));
        }
        let _ = writeln!(self.out, " {}", number(value));
        self
    }
}

/// A label value as the format wants it: `\\`, `\"` and `\n` escaped.
pub fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// HELP text: `\\` and `\n` escaped.
fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

fn number(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

fn secs(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn flag(b: bool) -> f64 {
    if b { 1.0 } else { 0.0 }
}

/// The whole exposition for `st`, as of `now`.
pub fn render(st: &Status, now: SystemTime) -> String {
    let mut out = String::new();
    let mount = st.mount_point.to_string_lossy().into_owned();
    let m = [("mount_point", mount.as_str())];
    family(&mut out, "switchfs_up", "gauge", "1: the daemon answered.").sample(&m, 1.0);
    family(
        &mut out,
        "switchfs_info",
        "gauge",
        "The daemon's version and data plane.",
    )
    .sample(
        &[
            ("mount_point", &mount),
            ("version", env!("CARGO_PKG_VERSION")),
            ("mode", st.mode),
        ],
        1.0,
    );
    let (level, _) = health::check(st, now);
    family(
        &mut out,
        "switchfs_check_status",
        "gauge",
        "switchctl check's verdict: 0 OK, 1 WARNING, 2 CRITICAL.",
    )
    .sample(&m, level as u8 as f64);
    active(&mut out, st, &m);
    switches(&mut out, st, &m);
    life(&mut out, st, &m, now);
    pools(&mut out, st, &mount);
    releases(&mut out, st, &mount);
    out
}

fn active(out: &mut String, st: &Status, m: &[(&str, &str)]) {
    let mut f = family(
        out,
        "switchfs_active_release",
        "gauge",
        "1 for the release served (absent when none is).",
    );
    if let Some(name) = &st.active {
        f.sample(&[m[0], ("release", name)], 1.0);
    }
    family(
        out,
        "switchfs_active_since_seconds",
        "gauge",
        "When the active release became active (Unix time).",
    )
    .sample(m, secs(st.since));
    family(
        out,
        "switchfs_active_problem",
        "gauge",
        "1 when the active release's directory was deleted, renamed or replaced.",
    )
    .sample(m, flag(st.active_problem.is_some()));
}

fn switches(out: &mut String, st: &Status, m: &[(&str, &str)]) {
    family(
        out,
        "switchfs_switches_total",
        "counter",
        "Switches that changed the active release since this server started.",
    )
    .sample(m, st.switches as f64);
    let last = st.last_switch.as_ref();
    family(
        out,
        "switchfs_last_switch_timestamp_seconds",
        "gauge",
        "When the last switch began (Unix time; 0 before the first).",
    )
    .sample(m, last.map_or(0.0, |l| secs(l.at)));
    let mut f = family(
        out,
        "switchfs_last_switch_duration_seconds",
        "gauge",
        "How long the last switch took, by step: switch (validate, persist, publish, \
         kernel caches), php (OPcache), hooks, drain, total.",
    );
    if let Some(l) = last {
        for (step, d) in [
            ("switch", l.steps.switch),
            ("php", l.steps.php),
            ("hooks", l.steps.hooks),
            ("drain", l.steps.drain),
            ("total", l.took),
        ] {
            f.sample(&[m[0], ("step", step)], d.as_secs_f64());
        }
    }
    family(
        out,
        "switchfs_last_switch_hook_failed",
        "gauge",
        "1 when an --on-activate hook of the last switch failed.",
    )
    .sample(m, flag(last.is_some_and(|l| l.hook_error.is_some())));
}

fn life(out: &mut String, st: &Status, m: &[(&str, &str)], now: SystemTime) {
    let Some(l) = &st.life else {
        return;
    };
    family(
        out,
        "switchfs_server_start_time_seconds",
        "gauge",
        "When the serving process started (Unix time).",
    )
    .sample(m, secs(l.started));
    family(
        out,
        "switchfs_server_restarts_total",
        "counter",
        "Servers restarted after a crash since the mount was made.",
    )
    .sample(m, l.restarts as f64);
    family(
        out,
        "switchfs_server_upgrades_total",
        "counter",
        "Upgrades (SIGHUP, systemctl reload) since the mount was made.",
    )
    .sample(m, l.upgrades as f64);
    family(
        out,
        "switchfs_server_recent_restarts",
        "gauge",
        "Crash restarts within the restart-loop window of switchctl check.",
    )
    .sample(m, health::recent_restarts(st, now) as f64);
}

/// A pool metric: name, help, the value from a last run, and whether a pool without one
/// (no switch since the daemon started) still gets a sample (0).
type PoolMetric = (&'static str, &'static str, fn(&LastRun) -> f64, bool);

const POOL_METRICS: [PoolMetric; 4] = [
    (
        "switchfs_php_pool_failed",
        "1 when the pool's last OPcache invalidation failed (retry: switchctl php-sync).",
        |r| flag(r.error.is_some()),
        true,
    ),
    (
        "switchfs_php_pool_last_invalidation_timestamp_seconds",
        "When the pool's last OPcache invalidation ran (Unix time).",
        |r| secs(r.at),
        false,
    ),
    (
        "switchfs_php_pool_last_invalidation_duration_seconds",
        "How long the pool's last OPcache invalidation took.",
        |r| r.took.as_secs_f64(),
        false,
    ),
    (
        "switchfs_php_pool_invalidated_scripts",
        "Scripts the pool's last OPcache invalidation invalidated.",
        |r| r.invalidated as f64,
        false,
    ),
];

fn pools(out: &mut String, st: &Status, mount: &str) {
    if st.php_pools.is_empty() {
        return;
    }
    for (name, help, get, always) in POOL_METRICS {
        let mut f = family(out, name, "gauge", help);
        for p in &st.php_pools {
            let labels = [("mount_point", mount), ("pool", p.endpoint.as_str())];
            match &p.last {
                Some(r) => {
                    f.sample(&labels, get(r));
                }
                None if always => {
                    f.sample(&labels, 0.0);
                }
                None => {}
            }
        }
    }
}

fn releases(out: &mut String, st: &Status, mount: &str) {
    let mut f = family(
        out,
        "switchfs_release_in_use",
        "gauge",
        "1 when the release is active or still used (open files, working directories, maps).",
    );
    for u in &st.usage {
        f.sample(
            &[("mount_point", mount), ("release", &u.name)],
            flag(u.in_use),
        );
    }
    let mut f = family(
        out,
        "switchfs_release_open_files",
        "gauge",
        "Descriptors processes hold on files of the release.",
    );
    for u in &st.usage {
        f.sample(
            &[("mount_point", mount), ("release", &u.name)],
            u.open_files as f64,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label("a\\b\"c\nd"), "a\\\\b\\\"c\\nd");
        assert_eq!(number(3.0), "3");
        assert_eq!(number(0.25), "0.25");
    }
}
