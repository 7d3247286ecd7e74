//! The switch cost: `switchctl activate` and in-process socket activations with nothing and
//! with ~10,000 entries cached, the first passes after a switch, and the native symlink flip.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use std::time::Instant;

use crate::report::{jarr, jnum, median, ms, percentile, us, with_commas};
use crate::trace::{OpCount, Tracer, counts_json, counts_text};
use crate::workloads::{Target, lstat_all, lstat_missing};
use crate::{Res, ctx};

pub(crate) fn switchctl(bin: &str, sock: &str, args: &[&str]) -> Res<(f64, String)> {
    let t = Instant::now();
    let out = Command::new(bin)
        .arg("--control")
        .arg(sock)
        .args(args)
        .output()
        .map_err(ctx(format!("run {bin}")))?;
    let secs = t.elapsed().as_secs_f64();
    if !out.status.success() {
        return Err(format!(
            "switchctl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok((secs, String::from_utf8_lossy(&out.stdout).into_owned()))
}

/// `activate NAME` over the control socket in this process, through the same client code
/// `switchctl` uses: what a switch costs without starting the `switchctl` process.
pub(crate) fn socket_activate(sock: &str, name: &str) -> Res<f64> {
    use switchfs::control::{client, protocol::Request};
    let req = Request::Activate {
        name: name.to_string(),
        drain: None,
    };
    let t = Instant::now();
    client::request(Path::new(sock), &req, Duration::from_secs(30))
        .map_err(|f| format!("activate {name} over the socket: {}", f.message()))?;
    Ok(t.elapsed().as_secs_f64())
}

/// Starting a process that does nothing (`true`): the floor under any `switchctl` timing.
pub(crate) fn spawn_floor(n: usize) -> Res<Vec<f64>> {
    (0..n)
        .map(|_| {
            let t = Instant::now();
            Command::new("true").status().map_err(ctx("run true"))?;
            Ok(t.elapsed().as_secs_f64())
        })
        .collect()
}

pub(crate) fn check_version(mount: &Path, want: &str) -> Res<()> {
    let got = fs::read_to_string(mount.join("VERSION")).map_err(ctx("read VERSION"))?;
    if got.trim() != want {
        return Err(format!(
            "after activate {want}, the mount serves release {}",
            got.trim()
        ));
    }
    Ok(())
}

/// The switch's control endpoint: `switchctl` and the socket it talks to.
#[derive(Clone, Copy)]
struct Ctl<'a> {
    bin: &'a str,
    sock: &'a str,
}

impl Ctl<'_> {
    /// `switchctl activate N`, timed.
    fn activate(self, n: u32) -> Res<f64> {
        Ok(switchctl(self.bin, self.sock, &["activate", &n.to_string()])?.0)
    }

    /// `activate N` over the socket in process, timed.
    fn socket(self, n: u32) -> Res<f64> {
        socket_activate(self.sock, &n.to_string())
    }
}

/// Every series the switch cost measures, in seconds.
#[derive(Default)]
struct Series {
    noop: Vec<f64>,
    noop_socket: Vec<f64>,
    floor: Vec<f64>,
    empty: Vec<f64>,
    empty_socket: Vec<f64>,
    loaded: Vec<f64>,
    loaded_socket: Vec<f64>,
    first_pass: Vec<f64>,
    neg_pass: Vec<f64>,
    flips: Vec<f64>,
    dentries_added: i64,
    trace_switch: Option<BTreeMap<String, OpCount>>,
    trace_first: Option<BTreeMap<String, OpCount>>,
}

/// Alternates releases 1 and 2 with `switchctl activate`, each time with the tree walked
/// first (every file stat'ed plus negative lookups, about 10,000 kernel entries), and times
/// the round trip and the first stat pass after each switch.
pub(crate) fn switch_cost(
    bin: &str,
    sock: &str,
    sw: &Target,
    switches: usize,
    scratch: &Path,
    tracer: Option<&Tracer>,
    stat_passes: (f64, f64, f64),
) -> Res<String> {
    println!(
        "\nswitch cost ({}; `switchctl activate` alternating 1 and 2)",
        sw.name
    );
    let ctl = Ctl { bin, sock };
    ctl.activate(1)?;
    check_version(&sw.root, "1")?;
    let mut series = Series::default();
    let n_base = switches.clamp(10, 50);
    baselines(ctl, n_base, &mut series)?;
    switches_empty(ctl, sw, n_base, &mut series)?;
    switches_loaded(ctl, sw, switches, tracer, &mut series)?;
    series.flips = symlink_flips(scratch, switches.max(10))?;
    print_series(sw, &series, stat_passes);
    Ok(series_json(sw, &series, stat_passes))
}

/// The same process spawn and socket round trip without a switch (activating the release
/// that is already active changes nothing), and the cost of starting any process.
fn baselines(ctl: Ctl<'_>, n: usize, series: &mut Series) -> Res<()> {
    for _ in 0..n {
        series.noop.push(ctl.activate(1)?);
    }
    for _ in 0..n {
        series.noop_socket.push(ctl.socket(1)?);
    }
    series.floor = spawn_floor(n)?;
    Ok(())
}

/// Switches with nothing cached under the root (no walk in between); ends on release 1.
fn switches_empty(ctl: Ctl<'_>, sw: &Target, n: usize, series: &mut Series) -> Res<()> {
    for _ in 0..n {
        series.empty.push(ctl.activate(2)?);
        series.empty_socket.push(ctl.socket(1)?);
    }
    check_version(&sw.root, "1")
}

/// Switches with ~10,000 entries cached: walk, switch, walk (timed: the first pass), ...
/// Every other switch goes over the socket in process, so both costs are measured under the
/// same cache. The second walk and the first switch are traced when `tracer` is given.
fn switches_loaded(
    ctl: Ctl<'_>,
    sw: &Target,
    switches: usize,
    tracer: Option<&Tracer>,
    series: &mut Series,
) -> Res<()> {
    let mut active = 1;
    for i in 0..=switches {
        let d0 = nr_dentries();
        let trace_this = tracer.filter(|_| i == 1);
        if let Some(tr) = trace_this {
            tr.start()?;
        }
        let t0 = Instant::now();
        lstat_all(&sw.files)?;
        let stat_s = t0.elapsed().as_secs_f64();
        if let Some(tr) = trace_this {
            series.trace_first = Some(tr.stop()?.remove(&sw.kdev).unwrap_or_default());
        }
        let t1 = Instant::now();
        lstat_missing(&sw.missing)?;
        let neg_s = t1.elapsed().as_secs_f64();
        if i == 0 {
            series.dentries_added = nr_dentries() as i64 - d0 as i64;
        } else {
            series.first_pass.push(stat_s);
            series.neg_pass.push(neg_s);
        }
        if i == switches {
            break;
        }
        active = 3 - active;
        let trace_this = tracer.filter(|_| i == 0);
        if let Some(tr) = trace_this {
            tr.start()?;
        }
        if i % 2 == 0 {
            series.loaded.push(ctl.activate(active)?);
        } else {
            series.loaded_socket.push(ctl.socket(active)?);
        }
        if let Some(tr) = trace_this {
            series.trace_switch = Some(tr.stop()?.remove(&sw.kdev).unwrap_or_default());
        }
        check_version(&sw.root, &active.to_string())?;
    }
    if active != 1 {
        ctl.activate(1)?;
    }
    Ok(())
}

/// The native equivalent of a switch: flipping a `current` symlink (in process, no spawn).
fn symlink_flips(scratch: &Path, n: usize) -> Res<Vec<f64>> {
    fs::create_dir_all(scratch).map_err(ctx(scratch.display()))?;
    let link = scratch.join("current");
    let tmp = scratch.join("current.tmp");
    let _ = fs::remove_file(&link);
    let mut flips = vec![];
    for i in 0..n {
        let t = Instant::now();
        let _ = fs::remove_file(&tmp);
        std::os::unix::fs::symlink(format!("releases/{}", 1 + i % 2), &tmp)
            .map_err(ctx("symlink"))?;
        fs::rename(&tmp, &link).map_err(ctx("rename"))?;
        flips.push(t.elapsed().as_secs_f64());
    }
    let _ = fs::remove_file(&link);
    Ok(flips)
}

fn print_line(label: &str, v: &[f64]) {
    println!(
        "  {label:<62} median {:>9}  p99 {:>9}  max {:>9}  (n={})",
        us(median(v)),
        us(percentile(v, 99.0)),
        us(v.iter().cloned().fold(0.0, f64::max)),
        v.len()
    );
}

/// Entries looked up under the mount before each switch: files, directories, missing names.
fn entries(sw: &Target) -> usize {
    sw.files.len() + sw.dirs + sw.missing.len()
}

fn print_series(
    sw: &Target,
    s: &Series,
    (warm_stat_native, warm_stat_sw, cold_stat_sw): (f64, f64, f64),
) {
    let entries = with_commas(entries(sw) as u64);
    print_line(
        "switchctl activate of the active release (no-op round trip)",
        &s.noop,
    );
    print_line(
        "switchctl activate, nothing cached under the root",
        &s.empty,
    );
    print_line(
        &format!("switchctl activate, {entries} entries cached under the root"),
        &s.loaded,
    );
    print_line(
        "  of which starting a process (`true`, the floor)",
        &s.floor,
    );
    print_line(
        "socket activate (in process), no-op round trip",
        &s.noop_socket,
    );
    print_line(
        "socket activate, nothing cached under the root",
        &s.empty_socket,
    );
    print_line(
        &format!("socket activate, {entries} entries cached under the root"),
        &s.loaded_socket,
    );
    print_line(
        "native reference: symlink + rename of `current` (in process)",
        &s.flips,
    );
    println!(
        "  entries looked up under the mount before each switch: {entries} ({} files, {} dirs, {} missing names)",
        with_commas(sw.files.len() as u64),
        with_commas(sw.dirs as u64),
        with_commas(sw.missing.len() as u64),
    );
    println!(
        "  dentries the whole kernel gained in the first walk: {} (mount + the daemon's own lookups in the release)",
        with_commas(s.dentries_added.max(0) as u64)
    );
    println!(
        "  first stat pass after a switch ({} files): median {}  p99 {}   vs warm {} (native warm {}, switchfs cold {})",
        with_commas(sw.files.len() as u64),
        ms(median(&s.first_pass)),
        ms(percentile(&s.first_pass, 99.0)),
        ms(warm_stat_sw),
        ms(warm_stat_native),
        ms(cold_stat_sw)
    );
    println!(
        "  first negative pass after a switch ({} missing names): median {}",
        with_commas(sw.missing.len() as u64),
        ms(median(&s.neg_pass))
    );
    if let Some(c) = &s.trace_switch {
        println!(
            "  FUSE requests during one activate:        {}",
            counts_text(c)
        );
    }
    if let Some(c) = &s.trace_first {
        println!(
            "  FUSE requests in the first stat pass after: {}",
            counts_text(c)
        );
    }
}

fn stat_json(v: &[f64]) -> String {
    format!(
        "{{\"n\":{},\"median_s\":{},\"p99_s\":{},\"max_s\":{},\"runs_s\":{}}}",
        v.len(),
        jnum(median(v)),
        jnum(percentile(v, 99.0)),
        jnum(v.iter().cloned().fold(0.0, f64::max)),
        jarr(v)
    )
}

fn series_json(
    sw: &Target,
    s: &Series,
    (warm_stat_native, warm_stat_sw, cold_stat_sw): (f64, f64, f64),
) -> String {
    format!(
        "{{\"cached_entries_walked\":{},\"dentries_added_by_walk\":{},\"noop_roundtrip\":{},\"activate_empty\":{},\"activate_loaded\":{},\"process_spawn_floor\":{},\"socket_noop_roundtrip\":{},\"socket_activate_empty\":{},\"socket_activate_loaded\":{},\
         \"native_symlink_flip\":{},\"first_stat_pass_after_switch\":{},\"first_negative_pass_after_switch\":{},\
         \"warm_stat_pass_s\":{},\"cold_stat_pass_s\":{},\"native_warm_stat_pass_s\":{},\"requests_during_activate\":{},\"requests_first_pass\":{}}}",
        entries(sw),
        s.dentries_added,
        stat_json(&s.noop),
        stat_json(&s.empty),
        stat_json(&s.loaded),
        stat_json(&s.floor),
        stat_json(&s.noop_socket),
        stat_json(&s.empty_socket),
        stat_json(&s.loaded_socket),
        stat_json(&s.flips),
        stat_json(&s.first_pass),
        stat_json(&s.neg_pass),
        jnum(warm_stat_sw),
        jnum(cold_stat_sw),
        jnum(warm_stat_native),
        s.trace_switch.as_ref().map_or("null".into(), counts_json),
        s.trace_first.as_ref().map_or("null".into(), counts_json),
    )
}

pub(crate) fn nr_dentries() -> u64 {
    fs::read_to_string("/proc/sys/fs/dentry-state")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|x| x.parse().ok()))
        .unwrap_or(0)
}
