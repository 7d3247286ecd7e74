//! fsbench: the workload driver behind `scripts/bench` (README "Performance").
//!
//! Run through `cargo bench --bench fsbench -- SUBCOMMAND [OPTIONS]`:
//!
//! - `gen-app --out DIR [--seed N] [--files N] [--dirs N]`: two releases (`DIR/releases/1`,
//!   `DIR/releases/2`) of a PHP-framework-like tree, same layout, slightly different content,
//!   plus a few large static files. Deterministic; reused when already generated.
//! - `gen-many --out DIR [--files N]`: two releases of N empty files (the memory test).
//! - `run --target NAME=DIR ... [--rounds N] [--switches N] [--threads 2,4,8] ...`: every
//!   filesystem workload, cold and warm, on every target; prints a table of medians and the
//!   ratio of each target to the first one (the native directory), writes JSON.
//! - `memory --mount DIR --native DIR --pid PID ...`: RSS and open descriptors of the
//!   switchfs daemon while walking a big tree and switching.
//! - `http-report`, `deploy-report`, `http-trace`: read what wrk (and tracefs) wrote for the
//!   HTTP and deploy-under-load workloads, print their tables, write their JSON (see `wrk`).
//! - `meta`, `results`: the run's description and the assembled `results.json` (see `results`).
//!
//! It measures and reports; it never fails on speed. It fails only when a workload does not
//! see what it must (a missing file, a switch that did not take effect).
//!
//! Modules, by concern: `args` (the command line), `tree` (generated trees and their scan),
//! `workloads` (what is timed), `sys` (the raw syscalls timed), `run` (the workloads on every
//! target), `switch_cost`, `memory`, `trace` (FUSE request counts), `wrk` (HTTP figures from
//! wrk output), `report` (statistics and formatting), `results` (the JSON of the whole run).

#![deny(clippy::undocumented_unsafe_blocks)]

mod args;
mod memory;
mod report;
mod results;
mod run;
mod switch_cost;
mod sys;
mod trace;
mod tree;
mod workloads;
mod wrk;

use std::io;

use args::Args;

fn main() {
    // `cargo bench` appends `--bench` to the arguments of a harness-less bench: ignore it.
    let argv: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let Some((cmd, rest)) = argv.split_first() else {
        // `cargo bench` and `cargo test --all-targets` run this with no subcommand: the
        // benchmark needs root, mounts and minutes, so it only runs through scripts/bench.
        println!("fsbench: no subcommand; the benchmark runs through scripts/bench");
        return;
    };
    let args = Args::parse(rest);
    let result = match cmd.as_str() {
        "gen-app" => tree::gen_app(&args),
        "gen-many" => tree::gen_many(&args),
        "run" => run::run(&args),
        "memory" => memory::memory(&args),
        "http-report" => wrk::http_report(&args),
        "deploy-report" => wrk::deploy_report(&args),
        "http-trace" => wrk::http_trace(&args),
        "meta" => results::meta(&args),
        "results" => results::assemble(&args),
        _ => usage(),
    };
    if let Err(e) = result {
        eprintln!("fsbench: {e}");
        std::process::exit(1);
    }
}

fn usage() -> ! {
    eprintln!(
        "usage: cargo bench --bench fsbench -- \
         gen-app|gen-many|run|memory|http-report|deploy-report|http-trace|meta|results [OPTIONS]\n\
         (see the comment at the top of benches/fsbench/main.rs; scripts/bench runs everything)"
    );
    std::process::exit(2);
}

pub(crate) type Res<T> = Result<T, String>;

pub(crate) fn ctx(what: impl std::fmt::Display) -> impl FnOnce(io::Error) -> String {
    move |e| format!("{what}: {e}")
}
