//! The filesystem workloads: a target (a directory or mount showing the tree) and what is
//! timed on it (stat, include, realpath, listing, large reads, mmap, concurrent includes).

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::path::PathBuf;

use crate::sys;
use crate::tree::Tree;
use crate::{Res, ctx};

pub(crate) struct Target {
    pub(crate) name: String,
    pub(crate) root: PathBuf,
    pub(crate) files: Vec<CString>,
    pub(crate) small: Vec<CString>,
    pub(crate) large: Vec<CString>,
    /// Files that do not exist, for negative lookups (the switch workload).
    pub(crate) missing: Vec<CString>,
    /// The kernel's dev_t of the mount, as FUSE trace events name the connection.
    pub(crate) kdev: u32,
    /// Directories under the root.
    pub(crate) dirs: usize,
}

pub(crate) fn cpaths(root: &Path, rels: &[String], suffix: &str) -> Vec<CString> {
    rels.iter()
        .map(|r| {
            let mut p = root.join(r).into_os_string().into_vec();
            p.extend_from_slice(suffix.as_bytes());
            CString::new(p).expect("no NUL in paths")
        })
        .collect()
}

impl Target {
    pub(crate) fn new(name: &str, root: &Path, tree: &Tree, n_missing: usize) -> Res<Target> {
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
pub(crate) enum Work {
    Stat,
    Include,
    Realpath,
    List,
    LargeRead,
    Mmap,
    Concurrent(usize),
}

impl Work {
    pub(crate) fn key(self) -> String {
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

    pub(crate) fn label(self, tree: &Tree) -> String {
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

    pub(crate) fn throughput(self) -> bool {
        matches!(self, Work::LargeRead | Work::Mmap)
    }
}

pub(crate) fn errno_at(what: &str, p: &CString) -> String {
    format!(
        "{what} {}: {}",
        p.to_string_lossy(),
        io::Error::last_os_error()
    )
}

pub(crate) fn lstat_all(paths: &[CString]) -> Res<u64> {
    let mut st = sys::stat_buf();
    for p in paths {
        if !sys::lstat(p, &mut st) {
            return Err(errno_at("lstat", p));
        }
    }
    Ok(paths.len() as u64)
}

/// Like `lstat_all`, but counts failures instead of stopping: (failed, first error).
pub(crate) fn lstat_tolerant(paths: &[CString]) -> (u64, Option<String>) {
    let mut st = sys::stat_buf();
    let mut failed = 0;
    let mut first = None;
    for p in paths {
        if !sys::lstat(p, &mut st) {
            failed += 1;
            if first.is_none() {
                first = Some(errno_at("lstat", p));
            }
        }
    }
    (failed, first)
}

pub(crate) fn lstat_missing(paths: &[CString]) -> Res<u64> {
    let mut st = sys::stat_buf();
    for p in paths {
        if sys::lstat(p, &mut st) {
            return Err(format!("{} exists", p.to_string_lossy()));
        }
    }
    Ok(paths.len() as u64)
}

fn at<'a>(what: &'static str, p: &'a CString) -> impl FnOnce(io::Error) -> String + 'a {
    move |e| format!("{what} {}: {e}", p.to_string_lossy())
}

pub(crate) fn read_whole(p: &CString, buf: &mut [u8]) -> Res<u64> {
    let fd = sys::open_read(p).map_err(at("open", p))?;
    let mut total = 0u64;
    loop {
        let n = sys::read(&fd, buf).map_err(at("read", p))?;
        if n == 0 {
            return Ok(total);
        }
        total += n as u64;
    }
}

pub(crate) fn include_storm(paths: &[CString], stride: usize, first: usize) -> Res<u64> {
    let mut buf = vec![0u8; 64 << 10];
    let mut bytes = 0;
    for p in paths.iter().skip(first).step_by(stride) {
        bytes += read_whole(p, &mut buf)?;
    }
    Ok(bytes)
}

pub(crate) fn mmap_read(p: &CString) -> Res<u64> {
    let fd = sys::open_read(p).map_err(at("open", p))?;
    let len = sys::fstat_size(&fd).map_err(at("fstat", p))?;
    let map = sys::Mapping::new(&fd, len).map_err(at("mmap", p))?;
    std::hint::black_box(map.touch_pages());
    Ok(len as u64)
}

pub(crate) fn list_tree(dir: &Path) -> Res<u64> {
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
pub(crate) fn run_work(w: Work, t: &Target) -> Res<(u64, u64)> {
    match w {
        Work::Stat => Ok((lstat_all(&t.files)?, 0)),
        Work::Include => {
            let bytes = include_storm(&t.small, 1, 0)?;
            Ok((t.small.len() as u64, bytes))
        }
        Work::Realpath => {
            for p in &t.files {
                if !sys::realpath_ok(p) {
                    return Err(errno_at("realpath", p));
                }
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

pub(crate) fn drop_caches() -> Res<()> {
    sys::sync();
    fs::write("/proc/sys/vm/drop_caches", "3").map_err(ctx("drop_caches (run as root)"))
}
