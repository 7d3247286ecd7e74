//! `memory`: the daemon's RSS and descriptors on a big tree, through walks and switches.

use std::ffi::CString;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;
use std::time::Instant;
use switchfs::json::json_str;

use crate::args::Args;
use crate::report::{jnum, median, ms, us, with_commas};
use crate::switch_cost::{check_version, switchctl};
use crate::tree::scan_tree;
use crate::workloads::{cpaths, drop_caches, lstat_tolerant};
use crate::{Res, ctx};

/// The daemon's figures at each stage, printed and kept for the JSON.
struct Stages {
    pid: u32,
    json: Vec<String>,
}

impl Stages {
    fn record(&mut self, name: &str, extra: &str) -> Res<()> {
        let st = proc_stats(self.pid)?;
        println!("  {name:<34} {}{extra}", st.text());
        self.json.push(format!(
            "{{\"stage\":{},\"stats\":{}}}",
            json_str(name),
            st.json()
        ));
        Ok(())
    }
}

/// `memory`: walks the big tree through the mount `walks` times (caches dropped before
/// each), switches `switches` times, drops the caches, switches once more; the daemon's RSS,
/// descriptors and threads after each stage.
pub(crate) fn memory(args: &Args) -> Res<()> {
    let mount = PathBuf::from(args.req("mount")?);
    let native = PathBuf::from(args.req("native")?);
    let (bin, sock) = (args.req("switchctl")?, args.req("control")?);
    let pid = daemon_pid(args, bin, sock)?;
    let walks = args.num("walks", 3)? as usize;
    let switches = args.num("switches", 20)? as usize;

    let tree = scan_tree(&native)?;
    let paths = cpaths(&mount, &tree.files, "");
    // A --mode bind daemon is not in the data path: the walks go to the kernel alone, and
    // what is measured is that the daemon stays small across the same switches.
    let who = if args.flag("bind") {
        "switchfs --mode bind daemon (not in the data path)"
    } else {
        "switchfs daemon"
    };
    println!(
        "{who} memory and descriptors, {} files in {} directories (each walk: drop_caches, then lstat every file)",
        with_commas(paths.len() as u64),
        with_commas(tree.dirs as u64)
    );
    let limit = open_file_limit(pid);
    println!("  daemon's open-file limit (soft / hard): {limit}");
    let mut stages = Stages { pid, json: vec![] };
    stages.record("started", "")?;
    let walk_failures = walk(&paths, walks, &mut stages)?;
    let (sw, switch_failures, active) = switch_many(bin, sock, &mount, switches, &mut stages)?;
    drop_caches()?;
    std::thread::sleep(Duration::from_millis(500));
    stages.record("after drop_caches", "")?;
    let after_drop = switch_after_drop(bin, sock, 3 - active);
    let status = print_status(bin, sock);
    let json = format!(
        "{{\"files\":{},\"dirs\":{},\"walks\":{},\"switches\":{},\"open_file_limit\":{},\"stages\":[{}],\"walk_failures\":[{}],\"activate_median_s\":{},\"activate_failures\":[{}],\"activate_after_drop_error\":{},\"status_text\":{}}}\n",
        paths.len(),
        tree.dirs,
        walks,
        switches,
        json_str(&limit),
        stages.json.join(","),
        walk_failures.join(","),
        jnum(median(&sw)),
        switch_failures
            .iter()
            .map(|e| json_str(e))
            .collect::<Vec<_>>()
            .join(","),
        after_drop,
        json_str(&status)
    );
    if let Some(p) = args.get("json").map(PathBuf::from) {
        fs::write(&p, json).map_err(ctx(p.display()))?;
    }
    Ok(())
}

/// The daemon's "Max open files" (soft / hard), as /proc shows it.
fn open_file_limit(pid: u32) -> String {
    fs::read_to_string(format!("/proc/{pid}/limits"))
        .ok()
        .and_then(|l| {
            l.lines()
                .find(|x| x.starts_with("Max open files"))
                .map(|x| {
                    x.split_whitespace()
                        .skip(3)
                        .take(2)
                        .collect::<Vec<_>>()
                        .join(" / ")
                })
        })
        .unwrap_or_default()
}

/// `walks` walks, each after a cache drop; returns the JSON of the walks that had failures.
fn walk(paths: &[CString], walks: usize, stages: &mut Stages) -> Res<Vec<String>> {
    let mut failures = vec![];
    for w in 1..=walks {
        drop_caches()?;
        let t = Instant::now();
        let (failed, first) = lstat_tolerant(paths);
        let s = t.elapsed().as_secs_f64();
        let mut extra = format!("  (walk took {})", ms(s));
        if let Some(e) = first {
            let _ = write!(extra, "  {} lstat FAILED, first: {e}", with_commas(failed));
            failures.push(format!(
                "{{\"walk\":{w},\"failed\":{failed},\"first_error\":{}}}",
                json_str(&e)
            ));
        }
        stages.record(&format!("after walk {w}"), &extra)?;
    }
    Ok(failures)
}

/// `switches` switches between releases 1 and 2: their times, the failures (reported, not
/// fatal: they are what this workload is meant to find), and the release active after.
fn switch_many(
    bin: &str,
    sock: &str,
    mount: &Path,
    switches: usize,
    stages: &mut Stages,
) -> Res<(Vec<f64>, Vec<String>, u32)> {
    let mut active = 1;
    let mut sw = vec![];
    let mut failures: Vec<String> = vec![];
    for _ in 0..switches {
        let want = (3 - active).to_string();
        match switchctl(bin, sock, &["activate", &want]) {
            Ok((s, _)) => {
                sw.push(s);
                active = 3 - active;
            }
            Err(e) => failures.push(e),
        }
    }
    if failures.is_empty() {
        check_version(mount, &active.to_string())?;
    }
    std::thread::sleep(Duration::from_millis(500));
    let mut extra = format!("  (activate median {})", us(median(&sw)));
    if let Some(e) = failures.first() {
        let _ = write!(
            extra,
            "  {} of {switches} activate FAILED, first: {e}",
            failures.len()
        );
    }
    stages.record(&format!("after {switches} switches"), &extra)?;
    Ok((sw, failures, active))
}

/// One switch once the kernel dropped its caches: JSON `null`, or the error.
fn switch_after_drop(bin: &str, sock: &str, want: u32) -> String {
    match switchctl(bin, sock, &["activate", &want.to_string()]) {
        Ok(_) => {
            println!("  activate {want} after drop_caches: ok");
            "null".to_string()
        }
        Err(e) => {
            println!("  activate {want} after drop_caches: FAILED: {e}");
            json_str(&e)
        }
    }
}

/// `switchctl status`, its lines about inodes printed; empty if it failed.
fn print_status(bin: &str, sock: &str) -> String {
    let Ok((_, status)) = switchctl(bin, sock, &["status"]) else {
        return String::new();
    };
    for l in status.lines().filter(|l| l.contains("inodes")) {
        println!("  switchctl status: {}", l.trim());
    }
    status
}

pub(crate) struct ProcStats {
    pub(crate) rss_kib: u64,
    pub(crate) hwm_kib: u64,
    pub(crate) threads: u64,
    pub(crate) fds: u64,
}

/// The process that serves FUSE requests: since the keeper holds the connection, the pid
/// started (`--pid`) is the keeper, a few MiB and a handful of descriptors whatever the tree;
/// `status --json` names the serving process. Falls back to `--pid` for a daemon that does
/// not report one.
pub(crate) fn daemon_pid(args: &Args, switchctl: &str, control: &str) -> Res<u32> {
    let out = std::process::Command::new(switchctl)
        .args(["--control", control, "status", "--json"])
        .output()
        .map_err(ctx(format!("{switchctl} status --json")))?;
    let json = String::from_utf8_lossy(&out.stdout);
    let serving = json
        .find("\"pid\":")
        .and_then(|i| json[i + 6..].split([',', '}']).next())
        .and_then(|n| n.trim().parse::<u32>().ok());
    match serving {
        Some(pid) => Ok(pid),
        None => args
            .req("pid")?
            .parse()
            .map_err(|_| "--pid: not a number".into()),
    }
}

pub(crate) fn proc_stats(pid: u32) -> Res<ProcStats> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(ctx(format!("/proc/{pid}/status")))?;
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|r| r.split_whitespace().next())
            .and_then(|x| x.parse().ok())
            .unwrap_or(0)
    };
    let fds = fs::read_dir(format!("/proc/{pid}/fd"))
        .map_err(ctx(format!("/proc/{pid}/fd")))?
        .count() as u64;
    Ok(ProcStats {
        rss_kib: field("VmRSS:"),
        hwm_kib: field("VmHWM:"),
        threads: field("Threads:"),
        fds,
    })
}

impl ProcStats {
    pub(crate) fn json(&self) -> String {
        format!(
            "{{\"rss_kib\":{},\"peak_rss_kib\":{},\"threads\":{},\"open_fds\":{}}}",
            self.rss_kib, self.hwm_kib, self.threads, self.fds
        )
    }

    pub(crate) fn text(&self) -> String {
        format!(
            "RSS {:>7.1} MiB  (peak {:>7.1} MiB)  open fds {:>6}  threads {}",
            self.rss_kib as f64 / 1024.0,
            self.hwm_kib as f64 / 1024.0,
            self.fds,
            self.threads
        )
    }
}
