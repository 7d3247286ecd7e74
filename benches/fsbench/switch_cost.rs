//! The switch cost: `switchctl activate` and in-process socket activations with nothing and
//! with ~10,000 entries cached, the first passes after a switch, and the native symlink flip.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use std::time::Instant;

use crate::report::{jarr, jnum, median, ms, percentile, us, with_commas};
use crate::trace::{Tracer, counts_json, counts_text};
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
    (warm_stat_native, warm_stat_sw, cold_stat_sw): (f64, f64, f64),
) -> Res<String> {
    println!(
        "\nswitch cost ({}; `switchctl activate` alternating 1 and 2)",
        sw.name
    );
    switchctl(bin, sock, &["activate", "1"])?;
    check_version(&sw.root, "1")?;

    // Baseline: the same process spawn and socket round trip without a switch
    // (activating the release that is already active changes nothing).
    let n_base = switches.clamp(10, 50);
    let mut noop = vec![];
    for _ in 0..n_base {
        noop.push(switchctl(bin, sock, &["activate", "1"])?.0);
    }

    let mut noop_socket = vec![];
    for _ in 0..n_base {
        noop_socket.push(socket_activate(sock, "1")?);
    }
    let floor = spawn_floor(n_base)?;

    // Switches with nothing cached under the root (no walk in between).
    let mut empty = vec![];
    let mut empty_socket = vec![];
    let mut active = 1;
    for _ in 0..n_base {
        active = 3 - active;
        empty.push(switchctl(bin, sock, &["activate", &active.to_string()])?.0);
        active = 3 - active;
        empty_socket.push(socket_activate(sock, &active.to_string())?);
    }
    if active != 1 {
        switchctl(bin, sock, &["activate", "1"])?;
        active = 1;
    }
    check_version(&sw.root, "1")?;

    // Switches with ~10,000 entries cached: walk, switch, walk (timed: first pass), ...
    let mut loaded = vec![];
    let mut loaded_socket = vec![];
    let mut first_pass = vec![];
    let mut neg_pass = vec![];
    let mut dentries_added = 0i64;
    let mut trace_switch = None;
    let mut trace_first = None;
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
            trace_first = Some(tr.stop()?.remove(&sw.kdev).unwrap_or_default());
        }
        let t1 = Instant::now();
        lstat_missing(&sw.missing)?;
        let neg_s = t1.elapsed().as_secs_f64();
        if i == 0 {
            dentries_added = nr_dentries() as i64 - d0 as i64;
        } else {
            first_pass.push(stat_s);
            neg_pass.push(neg_s);
        }
        if i == switches {
            break;
        }
        active = 3 - active;
        let trace_this = tracer.filter(|_| i == 0);
        if let Some(tr) = trace_this {
            tr.start()?;
        }
        // Every other switch goes over the socket in process, so both costs are measured
        // under the same cache.
        if i % 2 == 0 {
            loaded.push(switchctl(bin, sock, &["activate", &active.to_string()])?.0);
        } else {
            loaded_socket.push(socket_activate(sock, &active.to_string())?);
        }
        if let Some(tr) = trace_this {
            trace_switch = Some(tr.stop()?.remove(&sw.kdev).unwrap_or_default());
        }
        check_version(&sw.root, &active.to_string())?;
    }
    if active != 1 {
        switchctl(bin, sock, &["activate", "1"])?;
    }

    // The native equivalent: flipping a `current` symlink (in process, no spawn).
    fs::create_dir_all(scratch).map_err(ctx(scratch.display()))?;
    let link = scratch.join("current");
    let tmp = scratch.join("current.tmp");
    let _ = fs::remove_file(&link);
    let mut flips = vec![];
    for i in 0..switches.max(10) {
        let t = Instant::now();
        let _ = fs::remove_file(&tmp);
        std::os::unix::fs::symlink(format!("releases/{}", 1 + i % 2), &tmp)
            .map_err(ctx("symlink"))?;
        fs::rename(&tmp, &link).map_err(ctx("rename"))?;
        flips.push(t.elapsed().as_secs_f64());
    }
    let _ = fs::remove_file(&link);

    let dirs = sw.dirs;
    let entries = sw.files.len() + dirs + sw.missing.len();
    let line = |label: &str, v: &[f64]| {
        println!(
            "  {label:<62} median {:>9}  p99 {:>9}  max {:>9}  (n={})",
            us(median(v)),
            us(percentile(v, 99.0)),
            us(v.iter().cloned().fold(0.0, f64::max)),
            v.len()
        );
    };
    line(
        "switchctl activate of the active release (no-op round trip)",
        &noop,
    );
    line("switchctl activate, nothing cached under the root", &empty);
    line(
        &format!(
            "switchctl activate, {} entries cached under the root",
            with_commas(entries as u64)
        ),
        &loaded,
    );
    line("  of which starting a process (`true`, the floor)", &floor);
    line(
        "socket activate (in process), no-op round trip",
        &noop_socket,
    );
    line(
        "socket activate, nothing cached under the root",
        &empty_socket,
    );
    line(
        &format!(
            "socket activate, {} entries cached under the root",
            with_commas(entries as u64)
        ),
        &loaded_socket,
    );
    line(
        "native reference: symlink + rename of `current` (in process)",
        &flips,
    );
    println!(
        "  entries looked up under the mount before each switch: {} ({} files, {} dirs, {} missing names)",
        with_commas(entries as u64),
        with_commas(sw.files.len() as u64),
        with_commas(dirs as u64),
        with_commas(sw.missing.len() as u64),
    );
    println!(
        "  dentries the whole kernel gained in the first walk: {} (mount + the daemon's own lookups in the release)",
        with_commas(dentries_added.max(0) as u64)
    );
    let fp = median(&first_pass);
    println!(
        "  first stat pass after a switch ({} files): median {}  p99 {}   vs warm {} (native warm {}, switchfs cold {})",
        with_commas(sw.files.len() as u64),
        ms(fp),
        ms(percentile(&first_pass, 99.0)),
        ms(warm_stat_sw),
        ms(warm_stat_native),
        ms(cold_stat_sw)
    );
    println!(
        "  first negative pass after a switch ({} missing names): median {}",
        with_commas(sw.missing.len() as u64),
        ms(median(&neg_pass))
    );
    if let Some(c) = &trace_switch {
        println!(
            "  FUSE requests during one activate:        {}",
            counts_text(c)
        );
    }
    if let Some(c) = &trace_first {
        println!(
            "  FUSE requests in the first stat pass after: {}",
            counts_text(c)
        );
    }
    let stat = |v: &[f64]| {
        format!(
            "{{\"n\":{},\"median_s\":{},\"p99_s\":{},\"max_s\":{},\"runs_s\":{}}}",
            v.len(),
            jnum(median(v)),
            jnum(percentile(v, 99.0)),
            jnum(v.iter().cloned().fold(0.0, f64::max)),
            jarr(v)
        )
    };
    Ok(format!(
        "{{\"cached_entries_walked\":{},\"dentries_added_by_walk\":{},\"noop_roundtrip\":{},\"activate_empty\":{},\"activate_loaded\":{},\"process_spawn_floor\":{},\"socket_noop_roundtrip\":{},\"socket_activate_empty\":{},\"socket_activate_loaded\":{},\
         \"native_symlink_flip\":{},\"first_stat_pass_after_switch\":{},\"first_negative_pass_after_switch\":{},\
         \"warm_stat_pass_s\":{},\"cold_stat_pass_s\":{},\"native_warm_stat_pass_s\":{},\"requests_during_activate\":{},\"requests_first_pass\":{}}}",
        entries,
        dentries_added,
        stat(&noop),
        stat(&empty),
        stat(&loaded),
        stat(&floor),
        stat(&noop_socket),
        stat(&empty_socket),
        stat(&loaded_socket),
        stat(&flips),
        stat(&first_pass),
        stat(&neg_pass),
        jnum(warm_stat_sw),
        jnum(cold_stat_sw),
        jnum(warm_stat_native),
        trace_switch.as_ref().map_or("null".into(), counts_json),
        trace_first.as_ref().map_or("null".into(), counts_json),
    ))
}

pub(crate) fn nr_dentries() -> u64 {
    fs::read_to_string("/proc/sys/fs/dentry-state")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|x| x.parse().ok()))
        .unwrap_or(0)
}
