//! `run`: every filesystem workload, cold and warm, on every target, then the switch cost;
//! the table of medians, the JSON and the chart data.

use std::fmt::Write as _;
use std::fs;
use std::path::PathBuf;
use std::time::Instant;
use switchfs::json::json_str;

use crate::args::Args;
use crate::memory::proc_stats;
use crate::report::{jarr, jnum, median, ms, with_commas};
use crate::switch_cost::switch_cost;
use crate::trace::{Tracer, counts_json, counts_text};
use crate::tree::{Tree, scan_tree};
use crate::workloads::{Target, Work, drop_caches, run_work};
use crate::{Res, ctx};

pub(crate) struct Row {
    pub(crate) work: Work,
    pub(crate) cold: bool,
    pub(crate) ops: u64,
    pub(crate) bytes: u64,
    /// Per target, the seconds of each round.
    pub(crate) runs: Vec<Vec<f64>>,
}

/// `run`: the table of every workload on every target, then the FUSE request counts
/// (`--trace`) and the switch cost; writes the JSON and the chart data.
pub(crate) fn run(args: &Args) -> Res<()> {
    let rounds = args.num("rounds", 5)? as usize;
    let (tree, targets) = targets(args)?;
    print_tree(&tree, rounds);
    let works = works(args)?;
    let rows = time_workloads(&works, &targets, &tree, rounds)?;
    let tracer = if args.flag("trace") {
        Some(Tracer::new()?)
    } else {
        None
    };
    let trace_json = match &tracer {
        Some(tracer) => Some(trace_workloads(tracer, &works, &targets)?),
        None => None,
    };
    let (mut switch_json, daemon_json) = switch_part(args, &targets, &rows, tracer.as_ref())?;
    let bind_json = bind_switch_part(args, &targets, &rows)?;
    drop(tracer);
    if switch_json != "null" && bind_json != "null" {
        // One more key in the switchfs target's object: the bind-mode daemon's switch cost.
        switch_json.pop();
        switch_json.push_str(&format!(",\"bind_mode\":{bind_json}}}"));
    }
    let (json, chart) = (
        run_json(
            &tree,
            &targets,
            &rows,
            rounds,
            &switch_json,
            &daemon_json,
            trace_json,
        ),
        chart_data(&targets, &rows),
    );
    for (key, text) in [("json", json), ("chart-data", chart)] {
        if let Some(p) = args.get(key).map(PathBuf::from) {
            fs::write(&p, text).map_err(ctx(p.display()))?;
        }
    }
    Ok(())
}

/// The tree of the first `--target NAME=DIR` (the reference), and every target, each
/// checked to show the same files.
fn targets(args: &Args) -> Res<(Tree, Vec<Target>)> {
    let specs = args.all("target");
    if specs.is_empty() {
        return Err("give at least one --target NAME=DIR (the first is the reference)".into());
    }
    let mut named: Vec<(String, PathBuf)> = vec![];
    for s in &specs {
        let (n, p) = s
            .split_once('=')
            .ok_or_else(|| format!("--target {s}: want NAME=DIR"))?;
        named.push((n.to_string(), PathBuf::from(p)));
    }
    let tree = scan_tree(&named[0].1)?;
    let entries = (tree.files.len() + tree.dirs) as u64;
    let n_missing = 10_000usize.saturating_sub(entries as usize);
    let targets: Vec<Target> = named
        .iter()
        .map(|(n, p)| Target::new(n, p, &tree, n_missing))
        .collect::<Res<_>>()?;
    for t in &targets[1..] {
        let other = scan_tree(&t.root)?;
        if other.files != tree.files {
            return Err(format!(
                "{} does not show the same files as {}",
                t.root.display(),
                targets[0].root.display()
            ));
        }
    }
    Ok((tree, targets))
}

fn print_tree(tree: &Tree, rounds: usize) {
    println!(
        "tree: {} files ({} small, {:.1} MiB; {} large, {} MiB) in {} directories; {} rounds, medians",
        with_commas(tree.files.len() as u64),
        with_commas(tree.small.len() as u64),
        tree.small_bytes as f64 / (1 << 20) as f64,
        tree.large.len(),
        tree.large_bytes >> 20,
        tree.dirs,
        rounds
    );
}

/// The workloads, in table order: the single-threaded ones, then the include storm with
/// each `--threads` count.
fn works(args: &Args) -> Res<Vec<Work>> {
    let threads: Vec<usize> = args
        .get("threads")
        .unwrap_or("2,4,8")
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().map_err(|_| format!("--threads: {s}")))
        .collect::<Res<_>>()?;
    let mut works = vec![
        Work::Stat,
        Work::Include,
        Work::Realpath,
        Work::List,
        Work::LargeRead,
        Work::Mmap,
    ];
    works.extend(threads.iter().map(|&n| Work::Concurrent(n)));
    Ok(works)
}

/// Column width of the table's target columns.
const COLW: usize = 22;

/// Times every workload, cold then warm, `rounds` times on every target, printing each row
/// of the table as it comes in.
fn time_workloads(works: &[Work], targets: &[Target], tree: &Tree, rounds: usize) -> Res<Vec<Row>> {
    let mut header = format!("{:<44} {:<5}", "workload", "cache");
    for (i, t) in targets.iter().enumerate() {
        let h = if i == 0 {
            t.name.clone()
        } else {
            format!("{} (x {})", t.name, targets[0].name)
        };
        let _ = write!(header, " {h:>COLW$}");
    }
    println!("\n{header}");
    println!("{}", "-".repeat(header.chars().count()));
    let mut rows: Vec<Row> = vec![];
    for &w in works {
        for cold in [true, false] {
            let row = time_one(w, cold, targets, rounds)?;
            print_row(&row, tree, COLW);
            rows.push(row);
        }
    }
    Ok(rows)
}

/// One row: workload `w` with the caches dropped before each run (`cold`) or warmed once.
fn time_one(w: Work, cold: bool, targets: &[Target], rounds: usize) -> Res<Row> {
    let mut runs = vec![vec![]; targets.len()];
    let (mut ops, mut bytes) = (0, 0);
    if !cold {
        for t in targets {
            run_work(w, t)?;
        }
    }
    for r in 0..rounds {
        // Rotate the order so no target always runs first after a cache drop.
        for k in 0..targets.len() {
            let i = (k + r) % targets.len();
            if cold {
                drop_caches()?;
            }
            let t0 = Instant::now();
            let (o, b) = run_work(w, &targets[i])?;
            runs[i].push(t0.elapsed().as_secs_f64());
            (ops, bytes) = (o, b);
        }
    }
    Ok(Row {
        work: w,
        cold,
        ops,
        bytes,
        runs,
    })
}

/// FUSE requests per workload run on every mounted target (not timed: tracing costs time).
fn trace_workloads(tracer: &Tracer, works: &[Work], targets: &[Target]) -> Res<Vec<String>> {
    println!(
        "\nFUSE requests per workload run (kernel tracepoints fuse_request_send/end; 'in flight' = sum of send-to-reply times)"
    );
    let mut trace_json = vec![];
    for &w in works {
        if matches!(w, Work::Concurrent(_)) {
            continue;
        }
        for cold in [true, false] {
            for t in &targets[1..] {
                if cold {
                    drop_caches()?;
                } else {
                    run_work(w, t)?;
                }
                tracer.start()?;
                run_work(w, t)?;
                let counts = tracer.stop()?;
                let mine = counts.get(&t.kdev).cloned().unwrap_or_default();
                let cache = if cold { "cold" } else { "warm" };
                println!(
                    "  {:<10} {:<5} {:<10} {}",
                    w.key(),
                    cache,
                    t.name,
                    counts_text(&mine)
                );
                trace_json.push(format!(
                    "{{\"workload\":{},\"cache\":{},\"target\":{},\"requests\":{}}}",
                    json_str(&w.key()),
                    json_str(cache),
                    json_str(&t.name),
                    counts_json(&mine)
                ));
            }
        }
    }
    Ok(trace_json)
}

/// The switch cost on the switchfs target (with `--switchctl` and `--control`), and the
/// daemon's memory after the run (with `--pid`); JSON `null` for what was not asked.
fn switch_part(
    args: &Args,
    targets: &[Target],
    rows: &[Row],
    tracer: Option<&Tracer>,
) -> Res<(String, String)> {
    let (Some(bin), Some(sock)) = (args.get("switchctl"), args.get("control")) else {
        return Ok(("null".into(), "null".into()));
    };
    let switches = args.num("switches", 200)? as usize;
    let sw_name = args.get("switch-target").unwrap_or("switchfs");
    let sw = targets
        .iter()
        .find(|t| t.name == sw_name)
        .ok_or_else(|| format!("no target named {sw_name}"))?;
    let scratch = PathBuf::from(args.req("scratch")?);
    let warm_stat_native = median(&rows_for(rows, Work::Stat, false)[0]);
    let warm_stat_sw = median(&rows_for(rows, Work::Stat, false)[index_of(targets, sw_name)]);
    let cold_stat_sw = median(&rows_for(rows, Work::Stat, true)[index_of(targets, sw_name)]);
    let switch_json = switch_cost(
        bin,
        sock,
        sw,
        switches,
        &scratch,
        tracer,
        (warm_stat_native, warm_stat_sw, cold_stat_sw),
    )?;
    let mut daemon_json = "null".to_string();
    if args.get("pid").is_some() {
        let pid = crate::memory::daemon_pid(args, bin, sock)?;
        let st = proc_stats(pid)?;
        println!("\nswitchfs daemon after this run: {}", st.text());
        daemon_json = st.json();
    }
    Ok((switch_json, daemon_json))
}

/// The switch cost of a second daemon, the `--mode bind` one (`--bind-target NAME` and
/// `--bind-control SOCK`, with `--switchctl`): the same series as for the FUSE target.
fn bind_switch_part(args: &Args, targets: &[Target], rows: &[Row]) -> Res<String> {
    let (Some(bin), Some(name), Some(sock)) = (
        args.get("switchctl"),
        args.get("bind-target"),
        args.get("bind-control"),
    ) else {
        return Ok("null".into());
    };
    let sw = targets
        .iter()
        .find(|t| t.name == name)
        .ok_or_else(|| format!("no target named {name}"))?;
    let scratch = PathBuf::from(args.req("scratch")?);
    let switches = args.num("switches", 200)? as usize;
    let native = median(&rows_for(rows, Work::Stat, false)[0]);
    let warm = median(&rows_for(rows, Work::Stat, false)[index_of(targets, name)]);
    let cold = median(&rows_for(rows, Work::Stat, true)[index_of(targets, name)]);
    switch_cost(
        bin,
        sock,
        sw,
        switches,
        &scratch,
        None,
        (native, warm, cold),
    )
}

/// The chart data gnuplot draws: per workload and cache state, each target's median
/// relative to the reference.
fn chart_data(targets: &[Target], rows: &[Row]) -> String {
    let mut chart = String::from("# workload native");
    for t in &targets[1..] {
        let _ = write!(chart, " {}", t.name);
    }
    chart.push('\n');
    for row in rows {
        let base = median(&row.runs[0]);
        let cache = if row.cold { "cold" } else { "warm" };
        let _ = write!(chart, "\"{} {}\"", row.work.key().replace('_', "-"), cache);
        for runs in &row.runs {
            let _ = write!(chart, " {:.4}", median(runs) / base);
        }
        chart.push('\n');
    }
    chart
}

/// One workload row of the JSON: every target's median, spread, runs and ratio.
fn row_json(row: &Row, tree: &Tree, targets: &[Target]) -> String {
    let base = median(&row.runs[0]);
    let mut res = vec![];
    for (i, t) in targets.iter().enumerate() {
        let m = median(&row.runs[i]);
        let mbps = if row.work.throughput() {
            jnum(row.bytes as f64 / m / 1e6)
        } else {
            "null".into()
        };
        res.push(format!(
            "{}:{{\"median_s\":{},\"min_s\":{},\"max_s\":{},\"runs_s\":{},\"ratio_to_{}\":{},\"mb_per_s\":{},\"per_op_us\":{}}}",
            json_str(&t.name),
            jnum(m),
            jnum(row.runs[i].iter().cloned().fold(f64::INFINITY, f64::min)),
            jnum(row.runs[i].iter().cloned().fold(0.0, f64::max)),
            jarr(&row.runs[i]),
            targets[0].name,
            jnum(m / base),
            mbps,
            jnum(m / row.ops.max(1) as f64 * 1e6)
        ));
    }
    format!(
        "{{\"workload\":{},\"label\":{},\"cache\":{},\"ops\":{},\"bytes\":{},\"results\":{{{}}}}}",
        json_str(&row.work.key()),
        json_str(&row.work.label(tree)),
        json_str(if row.cold { "cold" } else { "warm" }),
        row.ops,
        row.bytes,
        res.join(",")
    )
}

/// The JSON of the whole `run`.
fn run_json(
    tree: &Tree,
    targets: &[Target],
    rows: &[Row],
    rounds: usize,
    switch_json: &str,
    daemon_json: &str,
    trace_json: Option<Vec<String>>,
) -> String {
    let wl: Vec<String> = rows.iter().map(|r| row_json(r, tree, targets)).collect();
    let tnames: Vec<String> = targets
        .iter()
        .map(|t| {
            format!(
                "{}:{}",
                json_str(&t.name),
                json_str(&t.root.to_string_lossy())
            )
        })
        .collect();
    format!(
        "{{\"tree\":{{\"files\":{},\"small_files\":{},\"large_files\":{},\"dirs\":{},\"small_bytes\":{},\"large_bytes\":{}}},\
         \"rounds\":{},\"reference\":{},\"targets\":{{{}}},\"workloads\":[{}],\"switch\":{},\"daemon_after_run\":{},\"fuse_requests\":{}}}\n",
        tree.files.len(),
        tree.small.len(),
        tree.large.len(),
        tree.dirs,
        tree.small_bytes,
        tree.large_bytes,
        rounds,
        json_str(&targets[0].name),
        tnames.join(","),
        wl.join(","),
        switch_json,
        daemon_json,
        trace_json.map_or("null".into(), |t| format!("[{}]", t.join(",")))
    )
}

pub(crate) fn index_of(targets: &[Target], name: &str) -> usize {
    targets.iter().position(|t| t.name == name).unwrap_or(0)
}

pub(crate) fn rows_for(rows: &[Row], w: Work, cold: bool) -> Vec<Vec<f64>> {
    rows.iter()
        .find(|r| r.work == w && r.cold == cold)
        .map(|r| r.runs.clone())
        .unwrap_or_default()
}

pub(crate) fn print_row(row: &Row, tree: &Tree, colw: usize) {
    let base = median(&row.runs[0]);
    let mut line = format!(
        "{:<44} {:<5}",
        row.work.label(tree),
        if row.cold { "cold" } else { "warm" }
    );
    for (i, runs) in row.runs.iter().enumerate() {
        let m = median(runs);
        let cell = if row.work.throughput() {
            format!("{:.0} MB/s", row.bytes as f64 / m / 1e6)
        } else {
            ms(m)
        };
        let cell = if i == 0 {
            cell
        } else {
            format!("{cell} ({:.2}x)", m / base)
        };
        let _ = write!(line, " {cell:>colw$}");
    }
    println!("{line}");
}
