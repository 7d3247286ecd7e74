//! The generated trees (deterministic, the same on every machine) and the scan of a tree
//! every workload runs over.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::fs;
use std::path::Path;
use std::path::PathBuf;
use std::time::Instant;

use crate::args::Args;
use crate::{Res, ctx};

/// SplitMix64: small, fast, and the same on every machine.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    pub(crate) fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub(crate) fn pick<'a>(&mut self, words: &[&'a str]) -> &'a str {
        words[self.below(words.len())]
    }
}

pub(crate) const WORDS: &[&str] = &[
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

pub(crate) const TOP_DIRS: &[&str] = &[
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

pub(crate) const ROOT_FILES: &[&str] = &["index.php", "artisan", "composer.json", "composer.lock"];

/// Large static files: (relative path, size in MiB).
pub(crate) const LARGE_FILES: &[(&str, u64)] = &[
    ("public/media/intro-50m.mp4", 50),
    ("public/media/archive-16m.zip", 16),
    ("public/build/app-4m.js", 4),
    ("public/build/vendor-1m.css", 1),
];

pub(crate) const MAX_DEPTH: usize = 6;

pub(crate) struct AppLayout {
    pub(crate) dirs: Vec<String>,
    pub(crate) files: Vec<(String, usize)>,
}

pub(crate) fn app_layout(seed: u64, n_files: usize, n_dirs: usize) -> AppLayout {
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

pub(crate) fn php_text(seed: u64, size: usize, header: &str) -> Vec<u8> {
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

pub(crate) fn random_bytes(seed: u64, size: usize) -> Vec<u8> {
    let mut rng = Rng(seed);
    let mut v = Vec::with_capacity(size + 8);
    while v.len() < size {
        v.extend_from_slice(&rng.next().to_le_bytes());
    }
    v.truncate(size);
    v
}

/// Generates into `out.tmp`, then renames, so a half-written tree is never reused.
pub(crate) fn generate_once(
    out: &Path,
    stamp: &str,
    fill: impl FnOnce(&Path) -> Res<()>,
) -> Res<()> {
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

pub(crate) fn gen_app(args: &Args) -> Res<()> {
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

pub(crate) fn gen_many(args: &Args) -> Res<()> {
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

pub(crate) struct Tree {
    /// Every regular file, relative, sorted.
    pub(crate) files: Vec<String>,
    /// Files under 1 MiB (the "PHP sources"): the include storm reads these.
    pub(crate) small: Vec<String>,
    /// Files of 1 MiB or more: the throughput and mmap workloads read these.
    pub(crate) large: Vec<String>,
    pub(crate) dirs: usize,
    pub(crate) small_bytes: u64,
    pub(crate) large_bytes: u64,
}

pub(crate) fn scan_tree(root: &Path) -> Res<Tree> {
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
