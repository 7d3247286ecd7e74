//! The HTTP figures: scripts/bench runs wrk and keeps each run's output in a file; these
//! subcommands read those files, compute the medians and ratios, print the tables and write
//! the JSON, so no statistic is computed in the shell.
//!
//! - `http-report --dir DIR --names A,B,C --runs N ...`: reads `DIR/runR-NAME.txt`, one table
//!   row per docroot (median req/s, its ratio to the first docroot, median p50 and p99).
//! - `deploy-report --dir DIR --names A,B --rounds N ...`: reads `DIR/steadyR-NAME.txt` and
//!   `DIR/deployR-NAME.txt`, one row per method and window (median p50, p99, req/s; the
//!   largest max).
//! - `http-trace --trace FILE --kdev DEV --wrk FILE --name NAME --seconds S`: the FUSE requests
//!   a traced wrk run sent to one mount, by opcode.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use switchfs::json::json_str;

use crate::args::Args;
use crate::report::median;
use crate::trace::parse_trace;
use crate::{Res, ctx};

/// What one `wrk --latency` run reports.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct WrkRun {
    pub(crate) rps: f64,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    /// The largest latency of the run (the "Max" column of the thread stats).
    pub(crate) max_ms: f64,
    /// Non-2xx/3xx responses and socket errors.
    pub(crate) errors: u64,
}

/// A wrk duration ("850.00us", "1.20ms", "2.00s", "1.00m") in milliseconds.
fn wrk_ms(v: &str) -> f64 {
    let num = |s: &str| s.parse::<f64>().unwrap_or(0.0);
    if let Some(x) = v.strip_suffix("us") {
        num(x) / 1000.0
    } else if let Some(x) = v.strip_suffix("ms") {
        num(x)
    } else if let Some(x) = v.strip_suffix('s') {
        num(x) * 1000.0
    } else if let Some(x) = v.strip_suffix('m') {
        num(x) * 60_000.0
    } else {
        num(v)
    }
}

/// Reads the figures of one `wrk --latency` output. A figure wrk did not print counts 0.
pub(crate) fn parse_wrk(text: &str) -> WrkRun {
    let mut run = WrkRun::default();
    let mut seen_latency = false;
    for line in text.lines() {
        let tok: Vec<&str> = line.split_whitespace().collect();
        match tok.as_slice() {
            ["Latency", _, _, max, ..] if !seen_latency => {
                run.max_ms = wrk_ms(max);
                seen_latency = true;
            }
            ["50%", v, ..] => run.p50_ms = wrk_ms(v),
            ["99%", v, ..] => run.p99_ms = wrk_ms(v),
            ["Requests/sec:", v, ..] => run.rps = v.parse().unwrap_or(0.0),
            _ => {}
        }
        if line.contains("Non-2xx or 3xx responses:") {
            run.errors += tok.last().and_then(|v| v.parse().ok()).unwrap_or(0);
        }
        if line.contains("Socket errors:") {
            // "Socket errors: connect 0, read 0, write 0, timeout 0"
            run.errors += tok
                .iter()
                .skip(3)
                .step_by(2)
                .filter_map(|v| v.trim_end_matches(',').parse::<u64>().ok())
                .sum::<u64>();
        }
    }
    run
}

fn read_wrk(path: &Path) -> Res<WrkRun> {
    let text = fs::read_to_string(path).map_err(ctx(path.display()))?;
    Ok(parse_wrk(&text))
}

fn names(args: &Args) -> Res<Vec<String>> {
    let names: Vec<String> = args
        .req("names")?
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    if names.is_empty() {
        return Err("--names: give at least one name".into());
    }
    Ok(names)
}

fn write_json(args: &Args, json: &str) -> Res<()> {
    if let Some(p) = args.get("json").map(PathBuf::from) {
        fs::write(&p, format!("{json}\n")).map_err(ctx(p.display()))?;
    }
    Ok(())
}

fn medians(runs: &[WrkRun], field: fn(&WrkRun) -> f64) -> f64 {
    median(&runs.iter().map(field).collect::<Vec<_>>())
}

/// `http-report`: the HTTP workload's table and JSON.
pub(crate) fn http_report(args: &Args) -> Res<()> {
    let dir = PathBuf::from(args.req("dir")?);
    let names = names(args)?;
    let runs = args.num("runs", 3)?;
    println!(
        "{:<9} {:>12} {:>9} {:>11} {:>11} {:>7}   req/s of each run",
        "docroot", "req/s (med)", "vs native", "p50 ms (med)", "p99 ms (med)", "errors"
    );
    let mut base = 0.0;
    let mut targets = vec![];
    let mut any_errors = false;
    for (i, name) in names.iter().enumerate() {
        let got: Vec<WrkRun> = (1..=runs)
            .map(|r| read_wrk(&dir.join(format!("run{r}-{name}.txt"))))
            .collect::<Res<_>>()?;
        let rps = medians(&got, |w| w.rps);
        if i == 0 {
            base = rps;
        }
        let ratio = if base > 0.0 { rps / base } else { 0.0 };
        let (p50, p99) = (medians(&got, |w| w.p50_ms), medians(&got, |w| w.p99_ms));
        let errors: u64 = got.iter().map(|w| w.errors).sum();
        any_errors |= errors > 0;
        let list: Vec<String> = got.iter().map(|w| format!("{:.1}", w.rps)).collect();
        let list = list.join(",");
        println!("{name:<9} {rps:>12.1} {ratio:>9.3} {p50:>11.3} {p99:>11.3} {errors:>7}   {list}");
        targets.push(format!(
            "{}:{{\"median_rps\":{rps:.1},\"ratio_to_native\":{ratio:.4},\"rps_runs\":[{list}],\
             \"median_p50_ms\":{p50:.3},\"median_p99_ms\":{p99:.3},\"errors\":{errors}}}",
            json_str(name)
        ));
    }
    if any_errors {
        println!(
            "  (some requests failed: see {}/*.txt; those runs count only the successful ones)",
            dir.display()
        );
    }
    let json = format!(
        "{{\"tool\":\"wrk\",\"threads\":1,\"connections\":{},\"seconds\":{},\"warmup_seconds\":{},\
         \"runs\":{runs},\"fpm_workers\":{},\"nginx_workers\":1,\"includes_per_request\":150,\
         \"php\":{{\"opcache.enable\":1,\"opcache.validate_timestamps\":{},\
         \"opcache.revalidate_freq\":0,\"realpath_cache_size\":\"4096K\",\"realpath_cache_ttl\":600}},\
         \"targets\":{{{}}}}}",
        args.num("connections", 8)?,
        args.num("seconds", 8)?,
        args.num("warmup", 2)?,
        args.num("fpm-workers", 4)?,
        args.num("validate-timestamps", 1)?,
        targets.join(",")
    );
    write_json(args, &json)
}

/// How the deploy table names a method and a window.
fn deploy_label(key: &str) -> &str {
    match key {
        "switchfs" => "switchfs --php-fpm",
        "symlink" => "symlink flip + FPM reload",
        "bind" => "switchfs --mode bind",
        "steady" => "steady",
        "deploy" => "after a deploy",
        other => other,
    }
}

/// `deploy-report`: the deploy-under-load table and JSON.
pub(crate) fn deploy_report(args: &Args) -> Res<()> {
    let dir = PathBuf::from(args.req("dir")?);
    let names = names(args)?;
    let rounds = args.num("rounds", 5)?;
    println!(
        "{:<26} {:<15} {:>10} {:>10} {:>10} {:>10} {:>7}",
        "method", "1 s window", "p50 ms", "p99 ms", "max ms", "req/s", "errors"
    );
    let mut results = vec![];
    for name in &names {
        for window in ["steady", "deploy"] {
            let got: Vec<WrkRun> = (1..=rounds)
                .map(|r| read_wrk(&dir.join(format!("{window}{r}-{name}.txt"))))
                .collect::<Res<_>>()?;
            let (p50, p99) = (medians(&got, |w| w.p50_ms), medians(&got, |w| w.p99_ms));
            let rps = medians(&got, |w| w.rps);
            let max = got.iter().map(|w| w.max_ms).fold(0.0, f64::max);
            let errors: u64 = got.iter().map(|w| w.errors).sum();
            println!(
                "{:<26} {:<15} {p50:>10.2} {p99:>10.2} {max:>10.2} {rps:>10.0} {errors:>7}",
                deploy_label(name),
                deploy_label(window)
            );
            results.push(format!(
                "{}:{{\"median_p50_ms\":{p50:.3},\"median_p99_ms\":{p99:.3},\"max_ms\":{max:.3},\
                 \"median_rps\":{rps:.1},\"errors\":{errors}}}",
                json_str(&format!("{name}_{window}"))
            ));
        }
    }
    let json = format!(
        "{{\"tool\":\"wrk\",\"threads\":1,\"connections\":{},\"window_seconds\":1,\"rounds\":{rounds},\
         \"fpm_workers\":{},\"php\":{{\"opcache.validate_timestamps\":0}},\"changed_classes\":10,\
         \"includes_per_request\":150,\"results\":{{{}}}}}",
        args.num("connections", 8)?,
        args.num("fpm-workers", 4)?,
        results.join(",")
    );
    write_json(args, &json)
}

/// `http-trace`: the FUSE requests one traced wrk run sent to the mount with kernel device
/// `--kdev`, by opcode, most frequent first (a warm request should need none).
pub(crate) fn http_trace(args: &Args) -> Res<()> {
    let trace = PathBuf::from(args.req("trace")?);
    let kdev: u32 = args
        .req("kdev")?
        .parse()
        .map_err(|_| "--kdev: not a number")?;
    let wrk = read_wrk(Path::new(args.req("wrk")?))?;
    let text = fs::read_to_string(&trace).map_err(ctx(trace.display()))?;
    let counts = parse_trace(&text).remove(&kdev).unwrap_or_default();
    let mut ops: Vec<(&String, u64)> = counts.iter().map(|(op, c)| (op, c.n)).collect();
    ops.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let mut out = format!(
        "FUSE requests to {} during {} s of wrk ({:.2} req/s, traced):",
        args.req("name")?,
        args.req("seconds")?,
        wrk.rps
    );
    for (op, n) in &ops {
        let _ = write!(out, "\n  {n:>7} (FUSE_{op})");
    }
    if ops.is_empty() {
        out.push_str("\n  none");
    }
    println!("{out}");
    Ok(())
}
