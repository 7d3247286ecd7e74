//! `memory`: the daemon's RSS and descriptors on a big tree, through walks and switches.

use std::fmt::Write as _;
use std::fs;
use std::path::PathBuf;
use std::time::Duration;
use std::time::Instant;
use switchfs::control::render::json_str;

use crate::args::Args;
use crate::report::{jnum, median, ms, us, with_commas};
use crate::switch_cost::{check_version, switchctl};
use crate::tree::scan_tree;
use crate::workloads::{cpaths, drop_caches, lstat_tolerant};
use crate::{Res, ctx};

pub(crate) fn memory(args: &Args) -> Res<()> {
    let mount = PathBuf::from(args.req("mount")?);
    let native = PathBuf::from(args.req("native")?);
    let bin = args.req("switchctl")?;
    let sock = args.req("control")?;
    let pid: u32 = args
        .req("pid")?
        .parse()
        .map_err(|_| "--pid: not a number")?;
    let walks = args.num("walks", 3)? as usize;
    let switches = args.num("switches", 20)? as usize;
    let json_path = args.get("json").map(PathBuf::from);

    let tree = scan_tree(&native)?;
    let paths = cpaths(&mount, &tree.files, "");
    println!(
        "switchfs daemon memory and descriptors, {} files in {} directories (each walk: drop_caches, then lstat every file)",
        with_commas(paths.len() as u64),
        with_commas(tree.dirs as u64)
    );
    let mut stages: Vec<String> = vec![];
    let mut stage = |name: &str, extra: &str| -> Res<()> {
        let st = proc_stats(pid)?;
        println!("  {name:<34} {}{extra}", st.text());
        stages.push(format!(
            "{{\"stage\":{},\"stats\":{}}}",
            json_str(name),
            st.json()
        ));
        Ok(())
    };
    let limit = fs::read_to_string(format!("/proc/{pid}/limits"))
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
        .unwrap_or_default();
    println!("  daemon's open-file limit (soft / hard): {limit}");
    stage("started", "")?;
    let mut failures: Vec<String> = vec![];
    for w in 1..=walks {
        drop_caches()?;
        let t = Instant::now();
        let (failed, first) = lstat_tolerant(&paths);
        let s = t.elapsed().as_secs_f64();
        let mut extra = format!("  (walk took {})", ms(s));
        if let Some(e) = first {
            let _ = write!(extra, "  {} lstat FAILED, first: {e}", with_commas(failed));
            failures.push(format!(
                "{{\"walk\":{w},\"failed\":{failed},\"first_error\":{}}}",
                json_str(&e)
            ));
        }
        stage(&format!("after walk {w}"), &extra)?;
    }
    // A failed switch is reported, not fatal: it is what this workload is meant to find.
    let mut active = 1;
    let mut sw = vec![];
    let mut switch_failures: Vec<String> = vec![];
    for _ in 0..switches {
        let want = (3 - active).to_string();
        match switchctl(bin, sock, &["activate", &want]) {
            Ok((s, _)) => {
                sw.push(s);
                active = 3 - active;
            }
            Err(e) => switch_failures.push(e),
        }
    }
    if switch_failures.is_empty() {
        check_version(&mount, &active.to_string())?;
    }
    std::thread::sleep(Duration::from_millis(500));
    let mut extra = format!("  (activate median {})", us(median(&sw)));
    if let Some(e) = switch_failures.first() {
        let _ = write!(
            extra,
            "  {} of {switches} activate FAILED, first: {e}",
            switch_failures.len()
        );
    }
    stage(&format!("after {switches} switches"), &extra)?;
    drop_caches()?;
    std::thread::sleep(Duration::from_millis(500));
    stage("after drop_caches", "")?;
    let want = (3 - active).to_string();
    let after_drop = match switchctl(bin, sock, &["activate", &want]) {
        Ok(_) => {
            println!("  activate {want} after drop_caches: ok");
            "null".to_string()
        }
        Err(e) => {
            println!("  activate {want} after drop_caches: FAILED: {e}");
            json_str(&e)
        }
    };
    let mut status = String::new();
    if let Ok((_, s)) = switchctl(bin, sock, &["status"]) {
        status = s;
        let held: Vec<&str> = status.lines().filter(|l| l.contains("inodes")).collect();
        for l in held {
            println!("  switchctl status: {}", l.trim());
        }
    }
    let json = format!(
        "{{\"files\":{},\"dirs\":{},\"walks\":{},\"switches\":{},\"open_file_limit\":{},\"stages\":[{}],\"walk_failures\":[{}],\"activate_median_s\":{},\"activate_failures\":[{}],\"activate_after_drop_error\":{},\"status_text\":{}}}\n",
        paths.len(),
        tree.dirs,
        walks,
        switches,
        json_str(&limit),
        stages.join(","),
        failures.join(","),
        jnum(median(&sw)),
        switch_failures
            .iter()
            .map(|e| json_str(e))
            .collect::<Vec<_>>()
            .join(","),
        after_drop,
        json_str(&status)
    );
    if let Some(p) = json_path {
        fs::write(&p, json).map_err(ctx(p.display()))?;
    }
    Ok(())
}

pub(crate) struct ProcStats {
    pub(crate) rss_kib: u64,
    pub(crate) hwm_kib: u64,
    pub(crate) threads: u64,
    pub(crate) fds: u64,
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
