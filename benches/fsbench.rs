//! fsbench: the workload driver behind `scripts/bench` (issue 4, measurement part).
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
//!
//! It measures and reports; it never fails on speed. It fails only when a workload does not
//! see what it must (a missing file, a switch that did not take effect).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::CString;
use std::fmt::Write as _;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use switchfs::control::render::json_str;

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
        "gen-app" => gen_app(&args),
        "gen-many" => gen_many(&args),
        "run" => run(&args),
        "memory" => memory(&args),
        _ => usage(),
    };
    if let Err(e) = result {
        eprintln!("fsbench: {e}");
        std::process::exit(1);
    }
}

fn usage() -> ! {
    eprintln!(
        "usage: cargo bench --bench fsbench -- gen-app|gen-many|run|memory [OPTIONS]\n\
         (see the comment at the top of benches/fsbench.rs; scripts/bench runs everything)"
    );
    std::process::exit(2);
}

type Res<T> = Result<T, String>;

fn ctx(what: impl std::fmt::Display) -> impl FnOnce(io::Error) -> String {
    move |e| format!("{what}: {e}")
}

// ---------------------------------------------------------------------------------------------
// Arguments: `--key value` (repeatable) and bare `--flag`.

struct Args {
    values: BTreeMap<String, Vec<String>>,
    flags: BTreeSet<String>,
}

impl Args {
    fn parse(raw: &[String]) -> Args {
        let mut values: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut flags = BTreeSet::new();
        let mut i = 0;
        while i < raw.len() {
            let Some(key) = raw[i].strip_prefix("--") else {
                eprintln!("fsbench: unexpected argument {:?}", raw[i]);
                std::process::exit(2);
            };
            match raw.get(i + 1) {
                Some(v) if !v.starts_with("--") => {
                    values.entry(key.to_string()).or_default().push(v.clone());
                    i += 2;
                }
                _ => {
                    flags.insert(key.to_string());
                    i += 1;
                }
            }
        }
        Args { values, flags }
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.values
            .get(key)
            .and_then(|v| v.last())
            .map(String::as_str)
    }

    fn req(&self, key: &str) -> Res<&str> {
        self.get(key).ok_or_else(|| format!("missing --{key}"))
    }

    fn all(&self, key: &str) -> Vec<String> {
        self.values.get(key).cloned().unwrap_or_default()
    }

    fn num(&self, key: &str, default: u64) -> Res<u64> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|_| format!("--{key}: not a number: {v}")),
        }
    }

    fn flag(&self, key: &str) -> bool {
        self.flags.contains(key)
    }
}

// ---------------------------------------------------------------------------------------------
// Deterministic generation.

/// SplitMix64: small, fast, and the same on every machine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn pick<'a>(&mut self, words: &[&'a str]) -> &'a str {
        words[self.below(words.len())]
    }
}

const WORDS: &[&str] = &[
    "Http",
    "Controller",
    "Middleware",
    "Model",
    "Service",
    "Provider",
    "Event",
    "Listener",
    "Console",
    "Command",
    "Support",
    "Facade",
    "Contract",
    "Cache",
    "Queue",
    "Database",
    "Query",
    "Builder",
    "Schema",
    "Migration",
    "Validation",
    "Rule",
    "View",
    "Component",
    "Routing",
    "Route",
    "Auth",
    "Guard",
    "Policy",
    "Mail",
    "Notification",
    "Channel",
    "Log",
    "Config",
    "Repository",
    "Container",
    "Pipeline",
    "Session",
    "Cookie",
    "Filesystem",
    "Storage",
    "Collection",
    "Finder",
    "Process",
    "Translation",
    "Encryption",
    "Hashing",
    "Exception",
    "Handler",
    "Factory",
    "Seeder",
    "Resource",
    "Request",
    "Response",
    "Kernel",
    "Attribute",
    "Concern",
    "Adapter",
    "Driver",
    "Manager",
    "Client",
    "Stream",
    "Parser",
    "Lexer",
    "Token",
    "Node",
    "Visitor",
    "Compiler",
    "Loader",
    "Dumper",
    "Yaml",
    "Serializer",
    "Normalizer",
    "Encoder",
    "Uuid",
    "Date",
    "Money",
    "Psr",
    "Promise",
    "Dotenv",
    "Inflector",
];

const TOP_DIRS: &[&str] = &[
    "app",
    "bootstrap",
    "config",
    "database",
    "public",
    "resources",
    "routes",
    "storage",
    "tests",
    "vendor",
];

const ROOT_FILES: &[&str] = &["index.php", "artisan", "composer.json", "composer.lock"];

/// Large static files: (relative path, size in MiB).
const LARGE_FILES: &[(&str, u64)] = &[
    ("public/media/intro-50m.mp4", 50),
    ("public/media/archive-16m.zip", 16),
    ("public/build/app-4m.js", 4),
    ("public/build/vendor-1m.css", 1),
];

const MAX_DEPTH: usize = 6;

struct AppLayout {
    dirs: Vec<String>,
    files: Vec<(String, usize)>,
}

fn app_layout(seed: u64, n_files: usize, n_dirs: usize) -> AppLayout {
    let mut rng = Rng(seed);
    let mut dirs: Vec<(String, usize)> = TOP_DIRS.iter().map(|d| (d.to_string(), 1)).collect();
    dirs.push(("public/media".into(), 2));
    dirs.push(("public/build".into(), 2));
    let mut seen: BTreeSet<String> = dirs.iter().map(|d| d.0.clone()).collect();
    while dirs.len() < n_dirs {
        let (parent, depth) = dirs[rng.below(dirs.len())].clone();
        if depth >= MAX_DEPTH {
            continue;
        }
        let mut name = rng.pick(WORDS).to_string();
        if rng.below(2) == 0 {
            name.push_str(rng.pick(WORDS));
        }
        let rel = format!("{parent}/{name}");
        if seen.insert(rel.clone()) {
            dirs.push((rel, depth + 1));
        }
    }
    let mut files = Vec::with_capacity(n_files);
    let mut names: BTreeSet<String> = BTreeSet::new();
    for f in ROOT_FILES {
        names.insert(f.to_string());
        files.push((f.to_string(), 200 + rng.below(4000)));
    }
    while files.len() < n_files {
        let (dir, _) = &dirs[rng.below(dirs.len())];
        let mut stem = String::new();
        for _ in 0..=rng.below(3) {
            stem.push_str(rng.pick(WORDS));
        }
        let ext = match rng.below(100) {
            0..=87 => "php",
            88..=91 => "json",
            92..=94 => "yml",
            95..=96 => "twig",
            97..=98 => "js",
            _ => "md",
        };
        let rel = format!("{dir}/{stem}.{ext}");
        if !names.insert(rel.clone()) {
            continue;
        }
        // Log-uniform between 200 B and 20 KB: median about 2 KB, like real PHP sources.
        let size = (200.0 * 100f64.powf(rng.unit())) as usize;
        files.push((rel, size));
    }
    AppLayout {
        dirs: dirs.into_iter().map(|d| d.0).collect(),
        files,
    }
}

fn php_text(seed: u64, size: usize, header: &str) -> Vec<u8> {
    let mut rng = Rng(seed);
    let mut s = String::with_capacity(size + 200);
    s.push_str(header);
    while s.len() < size {
        let a = rng.pick(WORDS);
        let b = rng.pick(WORDS);
        let c = rng.pick(WORDS).to_lowercase();
        let d = rng.pick(WORDS).to_lowercase();
        let _ = writeln!(
            s,
            "    public function {}{a}{b}(${c}) {{ return $this->{d}[${c}] ?? null; }}",
            if rng.below(2) == 0 { "get" } else { "set" }
        );
    }
    s.truncate(size);
    s.into_bytes()
}

fn random_bytes(seed: u64, size: usize) -> Vec<u8> {
    let mut rng = Rng(seed);
    let mut v = Vec::with_capacity(size + 8);
    while v.len() < size {
        v.extend_from_slice(&rng.next().to_le_bytes());
    }
    v.truncate(size);
    v
}

/// Generates into `out.tmp`, then renames, so a half-written tree is never reused.
fn generate_once(out: &Path, stamp: &str, fill: impl FnOnce(&Path) -> Res<()>) -> Res<()> {
    let stamp_file = out.join(".fsbench-stamp");
    if fs::read_to_string(&stamp_file).is_ok_and(|s| s == stamp) {
        println!("reusing {} ({stamp})", out.display());
        return Ok(());
    }
    let tmp = out.with_extension("tmp");
    for d in [out, tmp.as_path()] {
        if d.exists() {
            fs::remove_dir_all(d).map_err(ctx(format!("remove {}", d.display())))?;
        }
    }
    let t = Instant::now();
    fill(&tmp)?;
    fs::write(tmp.join(".fsbench-stamp"), stamp).map_err(ctx("write stamp"))?;
    fs::rename(&tmp, out).map_err(ctx(format!("rename to {}", out.display())))?;
    println!(
        "generated {} ({stamp}) in {:.1} s",
        out.display(),
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

fn gen_app(args: &Args) -> Res<()> {
    let out = PathBuf::from(args.req("out")?);
    let seed = args.num("seed", 20_240_604)?;
    let n_files = args.num("files", 6000)? as usize;
    let n_dirs = args.num("dirs", 400)? as usize;
    let stamp = format!("app v1 seed={seed} files={n_files} dirs={n_dirs}");
    generate_once(&out, &stamp, |tmp| {
        let layout = app_layout(seed, n_files, n_dirs);
        for release in [1u64, 2] {
            let root = tmp.join("releases").join(release.to_string());
            for d in &layout.dirs {
                fs::create_dir_all(root.join(d)).map_err(ctx(format!("mkdir {d}")))?;
            }
            for (i, (rel, size)) in layout.files.iter().enumerate() {
                // Release 2 differs from release 1 in every tenth file (same size).
                let variant = if i % 10 == 0 { release } else { 1 };
                let header = if rel.ends_with(".php") || !rel.contains('.') {
                    format!("<?php\n// fsbench file {i} variant {variant}\nnamespace App;\n\n")
                } else {
                    format!("# fsbench file {i} variant {variant}\n")
                };
                let seed = seed ^ (i as u64 + 1).wrapping_mul(0x2545_F491_4F6C_DD1D) ^ variant;
                fs::write(root.join(rel), php_text(seed, *size, &header))
                    .map_err(ctx(format!("write {rel}")))?;
            }
            fs::write(root.join("VERSION"), format!("{release}\n")).map_err(ctx("VERSION"))?;
            for (i, (rel, mib)) in LARGE_FILES.iter().enumerate() {
                let data = random_bytes(
                    seed ^ (1000 + i as u64) ^ (release << 32),
                    (mib << 20) as usize,
                );
                fs::write(root.join(rel), data).map_err(ctx(format!("write {rel}")))?;
            }
        }
        Ok(())
    })
}

fn gen_many(args: &Args) -> Res<()> {
    let out = PathBuf::from(args.req("out")?);
    let n_files = args.num("files", 100_000)? as usize;
    let stamp = format!("many v1 files={n_files}");
    generate_once(&out, &stamp, |tmp| {
        for release in [1u64, 2] {
            let root = tmp.join("releases").join(release.to_string());
            let mut made = 0;
            'outer: for a in 0.. {
                for b in 0..10 {
                    let dir = root.join(format!("d{a:03}")).join(format!("e{b}"));
                    fs::create_dir_all(&dir).map_err(ctx(format!("mkdir {}", dir.display())))?;
                    for c in 0..100 {
                        if made == n_files {
                            break 'outer;
                        }
                        fs::File::create(dir.join(format!("f{c:02}.php")))
                            .map_err(ctx("create file"))?;
                        made += 1;
                    }
                }
            }
            fs::write(root.join("VERSION"), format!("{release}\n")).map_err(ctx("VERSION"))?;
        }
        Ok(())
    })
}

// ---------------------------------------------------------------------------------------------
// Targets and workloads.

struct Tree {
    /// Every regular file, relative, sorted.
    files: Vec<String>,
    /// Files under 1 MiB (the "PHP sources"): the include storm reads these.
    small: Vec<String>,
    /// Files of 1 MiB or more: the throughput and mmap workloads read these.
    large: Vec<String>,
    dirs: usize,
    small_bytes: u64,
    large_bytes: u64,
}

fn scan_tree(root: &Path) -> Res<Tree> {
    let mut tree = Tree {
        files: vec![],
        small: vec![],
        large: vec![],
        dirs: 0,
        small_bytes: 0,
        large_bytes: 0,
    };
    fn walk(root: &Path, rel: &str, tree: &mut Tree) -> Res<()> {
        let dir = root.join(rel);
        let mut entries: Vec<_> = fs::read_dir(&dir)
            .map_err(ctx(format!("read {}", dir.display())))?
            .collect::<Result<_, _>>()
            .map_err(ctx("readdir"))?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            let child = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            let md = e.metadata().map_err(ctx(&child))?;
            if md.is_dir() {
                tree.dirs += 1;
                walk(root, &child, tree)?;
            } else if md.is_file() {
                if md.len() >= 1 << 20 {
                    tree.large_bytes += md.len();
                    tree.large.push(child.clone());
                } else {
                    tree.small_bytes += md.len();
                    tree.small.push(child.clone());
                }
                tree.files.push(child);
            }
        }
        Ok(())
    }
    walk(root, "", &mut tree)?;
    Ok(tree)
}

struct Target {
    name: String,
    root: PathBuf,
    files: Vec<CString>,
    small: Vec<CString>,
    large: Vec<CString>,
    /// Files that do not exist, for negative lookups (the switch workload).
    missing: Vec<CString>,
    /// The kernel's dev_t of the mount, as FUSE trace events name the connection.
    kdev: u32,
    /// Directories under the root.
    dirs: usize,
}

fn cpaths(root: &Path, rels: &[String], suffix: &str) -> Vec<CString> {
    rels.iter()
        .map(|r| {
            let mut p = root.join(r).into_os_string().into_vec();
            p.extend_from_slice(suffix.as_bytes());
            CString::new(p).expect("no NUL in paths")
        })
        .collect()
}

impl Target {
    fn new(name: &str, root: &Path, tree: &Tree, n_missing: usize) -> Res<Target> {
        let md = fs::metadata(root).map_err(ctx(root.display()))?;
        let dev = md.dev();
        let kdev = (libc::major(dev) << 20) | libc::minor(dev);
        let missing_rels: Vec<String> =
            tree.files.iter().cycle().take(n_missing).cloned().collect();
        Ok(Target {
            name: name.to_string(),
            root: root.to_path_buf(),
            files: cpaths(root, &tree.files, ""),
            small: cpaths(root, &tree.small, ""),
            large: cpaths(root, &tree.large, ""),
            missing: cpaths(root, &missing_rels, ".missing"),
            kdev,
            dirs: tree.dirs,
        })
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Work {
    Stat,
    Include,
    Realpath,
    List,
    LargeRead,
    Mmap,
    Concurrent(usize),
}

impl Work {
    fn key(self) -> String {
        match self {
            Work::Stat => "stat".into(),
            Work::Include => "include".into(),
            Work::Realpath => "realpath".into(),
            Work::List => "list".into(),
            Work::LargeRead => "large_read".into(),
            Work::Mmap => "mmap_read".into(),
            Work::Concurrent(n) => format!("include_{n}_threads"),
        }
    }

    fn label(self, tree: &Tree) -> String {
        let n = tree.files.len();
        let s = tree.small.len();
        let l = tree.large.len();
        let lm = tree.large_bytes >> 20;
        match self {
            Work::Stat => format!("stat storm: lstat {n} files"),
            Work::Include => format!("include storm: open+read+close {s} files"),
            Work::Realpath => format!("realpath of {n} files"),
            Work::List => format!("recursive listing ({} dirs)", tree.dirs),
            Work::LargeRead => format!("large read: {l} files, {lm} MiB"),
            Work::Mmap => format!("mmap read: {l} files, {lm} MiB"),
            Work::Concurrent(t) => format!("include storm, {t} threads"),
        }
    }

    fn throughput(self) -> bool {
        matches!(self, Work::LargeRead | Work::Mmap)
    }
}

fn errno_at(what: &str, p: &CString) -> String {
    format!(
        "{what} {}: {}",
        p.to_string_lossy(),
        io::Error::last_os_error()
    )
}

fn lstat_all(paths: &[CString]) -> Res<u64> {
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    for p in paths {
        if unsafe { libc::lstat(p.as_ptr(), &mut st) } != 0 {
            return Err(errno_at("lstat", p));
        }
    }
    Ok(paths.len() as u64)
}

/// Like `lstat_all`, but counts failures instead of stopping: (failed, first error).
fn lstat_tolerant(paths: &[CString]) -> (u64, Option<String>) {
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    let mut failed = 0;
    let mut first = None;
    for p in paths {
        if unsafe { libc::lstat(p.as_ptr(), &mut st) } != 0 {
            failed += 1;
            if first.is_none() {
                first = Some(errno_at("lstat", p));
            }
        }
    }
    (failed, first)
}

fn lstat_missing(paths: &[CString]) -> Res<u64> {
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    for p in paths {
        if unsafe { libc::lstat(p.as_ptr(), &mut st) } == 0 {
            return Err(format!("{} exists", p.to_string_lossy()));
        }
    }
    Ok(paths.len() as u64)
}

fn read_whole(p: &CString, buf: &mut [u8]) -> Res<u64> {
    let fd = unsafe { libc::open(p.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(errno_at("open", p));
    }
    let mut total = 0u64;
    loop {
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            let e = errno_at("read", p);
            unsafe { libc::close(fd) };
            return Err(e);
        }
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    unsafe { libc::close(fd) };
    Ok(total)
}

fn include_storm(paths: &[CString], stride: usize, first: usize) -> Res<u64> {
    let mut buf = vec![0u8; 64 << 10];
    let mut bytes = 0;
    for p in paths.iter().skip(first).step_by(stride) {
        bytes += read_whole(p, &mut buf)?;
    }
    Ok(bytes)
}

fn mmap_read(p: &CString) -> Res<u64> {
    let fd = unsafe { libc::open(p.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(errno_at("open", p));
    }
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        let e = errno_at("fstat", p);
        unsafe { libc::close(fd) };
        return Err(e);
    }
    let len = st.st_size as usize;
    let addr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_PRIVATE,
            fd,
            0,
        )
    };
    if addr == libc::MAP_FAILED {
        let e = errno_at("mmap", p);
        unsafe { libc::close(fd) };
        return Err(e);
    }
    // One load per page: page faults and readahead are what differ between filesystems.
    let base = addr as *const u8;
    let mut sum = 0u64;
    let mut off = 0;
    while off < len {
        sum = sum.wrapping_add(unsafe { std::ptr::read_volatile(base.add(off)) } as u64);
        off += 4096;
    }
    std::hint::black_box(sum);
    unsafe {
        libc::munmap(addr, len);
        libc::close(fd);
    }
    Ok(len as u64)
}

fn list_tree(dir: &Path) -> Res<u64> {
    let mut n = 0;
    for e in fs::read_dir(dir).map_err(ctx(dir.display()))? {
        let e = e.map_err(ctx(dir.display()))?;
        n += 1;
        // d_type from getdents: no stat, like `find -type f`.
        if e.file_type().map_err(ctx("file_type"))?.is_dir() {
            n += list_tree(&e.path())?;
        }
    }
    Ok(n)
}

/// Runs `w` once on `t`; returns (operations, bytes).
fn run_work(w: Work, t: &Target) -> Res<(u64, u64)> {
    match w {
        Work::Stat => Ok((lstat_all(&t.files)?, 0)),
        Work::Include => {
            let bytes = include_storm(&t.small, 1, 0)?;
            Ok((t.small.len() as u64, bytes))
        }
        Work::Realpath => {
            for p in &t.files {
                let r = unsafe { libc::realpath(p.as_ptr(), std::ptr::null_mut()) };
                if r.is_null() {
                    return Err(errno_at("realpath", p));
                }
                unsafe { libc::free(r.cast()) };
            }
            Ok((t.files.len() as u64, 0))
        }
        Work::List => Ok((list_tree(&t.root)?, 0)),
        Work::LargeRead => {
            let mut buf = vec![0u8; 1 << 20];
            let mut bytes = 0;
            for p in &t.large {
                bytes += read_whole(p, &mut buf)?;
            }
            Ok((t.large.len() as u64, bytes))
        }
        Work::Mmap => {
            let mut bytes = 0;
            for p in &t.large {
                bytes += mmap_read(p)?;
            }
            Ok((t.large.len() as u64, bytes))
        }
        Work::Concurrent(n) => {
            let results: Vec<Res<u64>> = std::thread::scope(|s| {
                let handles: Vec<_> = (0..n)
                    .map(|k| s.spawn(move || include_storm(&t.small, n, k)))
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().expect("reader thread panicked"))
                    .collect()
            });
            let mut bytes = 0;
            for r in results {
                bytes += r?;
            }
            Ok((t.small.len() as u64, bytes))
        }
    }
}

fn drop_caches() -> Res<()> {
    unsafe { libc::sync() };
    fs::write("/proc/sys/vm/drop_caches", "3").map_err(ctx("drop_caches (run as root)"))
}

// ---------------------------------------------------------------------------------------------
// Statistics and output helpers.

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

/// Nearest-rank percentile.
fn percentile(v: &[f64], p: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    if s.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * s.len() as f64).ceil() as usize;
    s[rank.clamp(1, s.len()) - 1]
}

fn jnum(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.6e}")
    } else {
        "null".into()
    }
}

fn jarr(v: &[f64]) -> String {
    let items: Vec<String> = v.iter().map(|x| jnum(*x)).collect();
    format!("[{}]", items.join(","))
}

fn ms(s: f64) -> String {
    if s.is_nan() {
        return "n/a".into();
    }
    let m = s.max(0.0) * 1e3;
    if m >= 100.0 {
        format!("{m:.0} ms")
    } else if m >= 10.0 {
        format!("{m:.1} ms")
    } else {
        format!("{m:.2} ms")
    }
}

fn us(s: f64) -> String {
    if s.is_nan() {
        return "n/a".into();
    }
    format!("{:.0} µs", s * 1e6)
}

fn with_commas(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn nr_dentries() -> u64 {
    fs::read_to_string("/proc/sys/fs/dentry-state")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|x| x.parse().ok()))
        .unwrap_or(0)
}

struct ProcStats {
    rss_kib: u64,
    hwm_kib: u64,
    threads: u64,
    fds: u64,
}

fn proc_stats(pid: u32) -> Res<ProcStats> {
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
    fn json(&self) -> String {
        format!(
            "{{\"rss_kib\":{},\"peak_rss_kib\":{},\"threads\":{},\"open_fds\":{}}}",
            self.rss_kib, self.hwm_kib, self.threads, self.fds
        )
    }

    fn text(&self) -> String {
        format!(
            "RSS {:>7.1} MiB  (peak {:>7.1} MiB)  open fds {:>6}  threads {}",
            self.rss_kib as f64 / 1024.0,
            self.hwm_kib as f64 / 1024.0,
            self.fds,
            self.threads
        )
    }
}

// ---------------------------------------------------------------------------------------------
// FUSE request counting through the kernel's fuse tracepoints (optional, `--trace`).

struct Tracer {
    dir: PathBuf,
}

#[derive(Default, Clone)]
struct OpCount {
    n: u64,
    replied: u64,
    latency_s: f64,
}

impl Tracer {
    fn new() -> Res<Tracer> {
        let base = Path::new("/sys/kernel/tracing");
        if !base.join("events/fuse/fuse_request_send").exists() {
            return Err("no fuse tracepoints under /sys/kernel/tracing (tracefs not mounted, or kernel older than 6.13)".into());
        }
        let dir = base.join("instances/fsbench");
        if dir.exists() {
            let _ = fs::remove_dir(&dir);
        }
        fs::create_dir(&dir).map_err(ctx("create tracefs instance"))?;
        let t = Tracer { dir };
        t.write("buffer_size_kb", "65536")?;
        Ok(t)
    }

    fn write(&self, file: &str, v: &str) -> Res<()> {
        fs::write(self.dir.join(file), v).map_err(ctx(format!("tracefs {file}")))
    }

    fn start(&self) -> Res<()> {
        self.write("trace", "")?;
        self.write("events/fuse/enable", "1")
    }

    /// Stops and returns per-connection, per-opcode counts and in-flight time.
    fn stop(&self) -> Res<HashMap<u32, BTreeMap<String, OpCount>>> {
        self.write("events/fuse/enable", "0")?;
        let text = fs::read_to_string(self.dir.join("trace")).map_err(ctx("read trace"))?;
        let mut pending: HashMap<(u32, u64), (f64, String)> = HashMap::new();
        let mut out: HashMap<u32, BTreeMap<String, OpCount>> = HashMap::new();
        for line in text.lines() {
            if line.starts_with('#') {
                continue;
            }
            let (head, send, body) = if let Some(i) = line.find(": fuse_request_send: ") {
                (&line[..i], true, &line[i + 21..])
            } else if let Some(i) = line.find(": fuse_request_end: ") {
                (&line[..i], false, &line[i + 20..])
            } else {
                continue;
            };
            let ts: f64 = head
                .rsplit(' ')
                .next()
                .and_then(|x| x.parse().ok())
                .unwrap_or(0.0);
            let tok: Vec<&str> = body.split_whitespace().collect();
            let val = |key: &str| -> Option<u64> {
                let i = tok.iter().position(|t| *t == key)?;
                tok.get(i + 1)?.parse().ok()
            };
            let (Some(conn), Some(uniq)) = (val("connection"), val("req")) else {
                continue;
            };
            let conn = conn as u32;
            if send {
                let op = tok
                    .iter()
                    .find(|t| t.starts_with("(FUSE_"))
                    .map(|t| {
                        t.trim_matches(|c| c == '(' || c == ')')
                            .trim_start_matches("FUSE_")
                    })
                    .unwrap_or("?")
                    .to_string();
                out.entry(conn)
                    .or_default()
                    .entry(op.clone())
                    .or_default()
                    .n += 1;
                pending.insert((conn, uniq), (ts, op));
            } else if let Some((t0, op)) = pending.remove(&(conn, uniq)) {
                let c = out.entry(conn).or_default().entry(op).or_default();
                c.replied += 1;
                c.latency_s += ts - t0;
            }
        }
        Ok(out)
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        let _ = fs::write(self.dir.join("events/fuse/enable"), "0");
        let _ = fs::remove_dir(&self.dir);
    }
}

fn counts_text(c: &BTreeMap<String, OpCount>) -> String {
    let mut v: Vec<_> = c.iter().collect();
    v.sort_by(|a, b| b.1.n.cmp(&a.1.n).then(a.0.cmp(b.0)));
    let total: u64 = v.iter().map(|x| x.1.n).sum();
    let busy: f64 = v.iter().map(|x| x.1.latency_s).sum();
    let mut s = format!("{:>6} req, {:>7} in flight:", total, ms(busy));
    for (op, k) in v {
        let _ = write!(s, " {op} {}", k.n);
        if k.replied > 0 {
            let _ = write!(s, " ({:.0} µs)", k.latency_s / k.replied as f64 * 1e6);
        }
    }
    s
}

fn counts_json(c: &BTreeMap<String, OpCount>) -> String {
    let items: Vec<String> = c
        .iter()
        .map(|(op, k)| {
            format!(
                "{}:{{\"count\":{},\"replied\":{},\"in_flight_s\":{}}}",
                json_str(op),
                k.n,
                k.replied,
                jnum(k.latency_s)
            )
        })
        .collect();
    format!("{{{}}}", items.join(","))
}

// ---------------------------------------------------------------------------------------------
// `run`: the workloads on every target.

struct Row {
    work: Work,
    cold: bool,
    ops: u64,
    bytes: u64,
    /// Per target, the seconds of each round.
    runs: Vec<Vec<f64>>,
}

fn switchctl(bin: &str, sock: &str, args: &[&str]) -> Res<(f64, String)> {
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
fn socket_activate(sock: &str, name: &str) -> Res<f64> {
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
fn spawn_floor(n: usize) -> Res<Vec<f64>> {
    (0..n)
        .map(|_| {
            let t = Instant::now();
            Command::new("true").status().map_err(ctx("run true"))?;
            Ok(t.elapsed().as_secs_f64())
        })
        .collect()
}

fn check_version(mount: &Path, want: &str) -> Res<()> {
    let got = fs::read_to_string(mount.join("VERSION")).map_err(ctx("read VERSION"))?;
    if got.trim() != want {
        return Err(format!(
            "after activate {want}, the mount serves release {}",
            got.trim()
        ));
    }
    Ok(())
}

fn run(args: &Args) -> Res<()> {
    let specs = args.all("target");
    if specs.is_empty() {
        return Err("give at least one --target NAME=DIR (the first is the reference)".into());
    }
    let rounds = args.num("rounds", 5)? as usize;
    let switches = args.num("switches", 200)? as usize;
    let threads: Vec<usize> = args
        .get("threads")
        .unwrap_or("2,4,8")
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().map_err(|_| format!("--threads: {s}")))
        .collect::<Res<_>>()?;
    let json_path = args.get("json").map(PathBuf::from);
    let chart_path = args.get("chart-data").map(PathBuf::from);

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

    let mut works = vec![
        Work::Stat,
        Work::Include,
        Work::Realpath,
        Work::List,
        Work::LargeRead,
        Work::Mmap,
    ];
    works.extend(threads.iter().map(|&n| Work::Concurrent(n)));

    // The table, printed row by row as results come in.
    let colw = 22;
    let mut header = format!("{:<44} {:<5}", "workload", "cache");
    for (i, t) in targets.iter().enumerate() {
        let h = if i == 0 {
            t.name.clone()
        } else {
            format!("{} (x {})", t.name, targets[0].name)
        };
        let _ = write!(header, " {h:>colw$}");
    }
    println!("\n{header}");
    println!("{}", "-".repeat(header.chars().count()));

    let mut rows: Vec<Row> = vec![];
    for &w in &works {
        for cold in [true, false] {
            let mut runs = vec![vec![]; targets.len()];
            let (mut ops, mut bytes) = (0, 0);
            if !cold {
                for t in &targets {
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
            let row = Row {
                work: w,
                cold,
                ops,
                bytes,
                runs,
            };
            print_row(&row, &tree, colw);
            rows.push(row);
        }
    }

    // FUSE requests per workload (not timed: tracing costs time).
    let mut trace_json: Vec<String> = vec![];
    let tracer = if args.flag("trace") {
        Some(Tracer::new()?)
    } else {
        None
    };
    if let Some(tracer) = &tracer {
        println!(
            "\nFUSE requests per workload run (kernel tracepoints fuse_request_send/end; 'in flight' = sum of send-to-reply times)"
        );
        for &w in &works {
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
                    println!(
                        "  {:<10} {:<5} {:<10} {}",
                        w.key(),
                        if cold { "cold" } else { "warm" },
                        t.name,
                        counts_text(&mine)
                    );
                    trace_json.push(format!(
                        "{{\"workload\":{},\"cache\":{},\"target\":{},\"requests\":{}}}",
                        json_str(&w.key()),
                        json_str(if cold { "cold" } else { "warm" }),
                        json_str(&t.name),
                        counts_json(&mine)
                    ));
                }
            }
        }
    }

    // Switch cost, on the switchfs target.
    let mut switch_json = "null".to_string();
    let mut daemon_json = "null".to_string();
    if let (Some(bin), Some(sock)) = (args.get("switchctl"), args.get("control")) {
        let sw_name = args.get("switch-target").unwrap_or("switchfs");
        let sw = targets
            .iter()
            .find(|t| t.name == sw_name)
            .ok_or_else(|| format!("no target named {sw_name}"))?;
        let scratch = PathBuf::from(args.req("scratch")?);
        let warm_stat_native = median(&rows_for(&rows, Work::Stat, false)[0]);
        let warm_stat_sw = median(&rows_for(&rows, Work::Stat, false)[index_of(&targets, sw_name)]);
        let cold_stat_sw = median(&rows_for(&rows, Work::Stat, true)[index_of(&targets, sw_name)]);
        switch_json = switch_cost(
            bin,
            sock,
            sw,
            switches,
            &scratch,
            tracer.as_ref(),
            (warm_stat_native, warm_stat_sw, cold_stat_sw),
        )?;
        if let Some(pid) = args.get("pid") {
            let pid: u32 = pid.parse().map_err(|_| "--pid: not a number")?;
            let st = proc_stats(pid)?;
            println!("\nswitchfs daemon after this run: {}", st.text());
            daemon_json = st.json();
        }
    }
    drop(tracer);

    // JSON and chart data.
    let mut wl = vec![];
    let mut chart = String::from("# workload native");
    for t in &targets[1..] {
        let _ = write!(chart, " {}", t.name);
    }
    chart.push('\n');
    for row in &rows {
        let base = median(&row.runs[0]);
        let mut res = vec![];
        let cache = if row.cold { "cold" } else { "warm" };
        let _ = write!(chart, "\"{} {}\"", row.work.key().replace('_', "-"), cache);
        for (i, t) in targets.iter().enumerate() {
            let m = median(&row.runs[i]);
            let mbps = if row.work.throughput() {
                jnum(row.bytes as f64 / m / 1e6)
            } else {
                "null".into()
            };
            let _ = write!(chart, " {:.4}", m / base);
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
        chart.push('\n');
        wl.push(format!(
            "{{\"workload\":{},\"label\":{},\"cache\":{},\"ops\":{},\"bytes\":{},\"results\":{{{}}}}}",
            json_str(&row.work.key()),
            json_str(&row.work.label(&tree)),
            json_str(cache),
            row.ops,
            row.bytes,
            res.join(",")
        ));
    }
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
    let json = format!(
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
        if args.flag("trace") {
            format!("[{}]", trace_json.join(","))
        } else {
            "null".into()
        }
    );
    if let Some(p) = json_path {
        fs::write(&p, json).map_err(ctx(p.display()))?;
    }
    if let Some(p) = chart_path {
        fs::write(&p, chart).map_err(ctx(p.display()))?;
    }
    Ok(())
}

fn index_of(targets: &[Target], name: &str) -> usize {
    targets.iter().position(|t| t.name == name).unwrap_or(0)
}

fn rows_for(rows: &[Row], w: Work, cold: bool) -> Vec<Vec<f64>> {
    rows.iter()
        .find(|r| r.work == w && r.cold == cold)
        .map(|r| r.runs.clone())
        .unwrap_or_default()
}

fn print_row(row: &Row, tree: &Tree, colw: usize) {
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

/// Alternates releases 1 and 2 with `switchctl activate`, each time with the tree walked
/// first (every file stat'ed plus negative lookups, about 10,000 kernel entries), and times
/// the round trip and the first stat pass after each switch.
fn switch_cost(
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

// ---------------------------------------------------------------------------------------------
// `memory`: the daemon's RSS and descriptors on a big tree.

fn memory(args: &Args) -> Res<()> {
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
