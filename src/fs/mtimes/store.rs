//! The mtime registry on disk: `<state file>.mtimes`, an append-only log of text lines.
//!
//! Line format (one fact per line, each with its own checksum, so a torn or damaged line is
//! dropped alone and the lines around it still count):
//!
//! ```text
//! switchfs-mtimes 1
//! v DEV INO SIZE MTIME_S MTIME_NS CTIME_S CTIME_NS REPORTED HASH|- PATH SUM
//! f FLOOR PATH SUM
//! ```
//!
//! `v` is a version of PATH and the mtime reported for it (a later line for the same version
//! fills in its content hash); `f` says every mtime up to FLOOR may have been reported for
//! PATH (versions forgotten to keep the registry bounded). PATH is percent-escaped (bytes
//! outside `!`..`~`, and `%`), so it holds no space or newline. SUM is FNV-1a over the rest of
//! the line: it detects torn and damaged lines, not attacks (only root writes the file).
//!
//! The file is opened relative to a descriptor of its directory opened with `O_NOFOLLOW`,
//! created with `O_CREAT | O_EXCL | O_NOFOLLOW` (mode 0600), and refused unless it is a
//! regular file owned by us with one link, so no other user can point it somewhere else. It
//! is rewritten (compacted) through a new file renamed over it when it grew to twice what is
//! live, and when it was found damaged.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::Identity;
use crate::sys;

const HEADER: &str = "switchfs-mtimes 1";

/// Below this many lines the log is never compacted: rewriting a small file buys nothing.
pub(super) const COMPACT_MIN: usize = 4096;

/// One fact the registry learned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Record {
    /// A version of `path` and the mtime reported for it (and its content hash, once known).
    Version {
        path: PathBuf,
        identity: Identity,
        reported: i64,
        hash: Option<u64>,
    },
    /// Every mtime up to `floor` may have been reported for `path`.
    Floor { path: PathBuf, floor: i64 },
}

/// What was wrong with a log that was read.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Damage {
    pub bad_header: bool,
    pub bad_lines: usize,
    pub torn_tail: bool,
}

impl Damage {
    pub(super) fn any(&self) -> bool {
        self.bad_header || self.bad_lines > 0 || self.torn_tail
    }

    pub(super) fn describe(&self) -> String {
        if self.bad_header {
            return "it is not a switchfs mtime log".into();
        }
        let mut parts = Vec::new();
        if self.bad_lines > 0 {
            parts.push(format!("{} damaged lines", self.bad_lines));
        }
        if self.torn_tail {
            parts.push("a torn last line".into());
        }
        parts.join(" and ")
    }
}

/// FNV-1a: stable across builds and Rust versions (the log and its content hashes outlive
/// the binary that wrote them, which `std`'s hasher does not promise).
pub(super) fn fnv1a(state: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(state, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

pub(super) const FNV_START: u64 = 0xcbf2_9ce4_8422_2325;

fn escape(path: &Path) -> String {
    let mut out = String::new();
    for &b in path.as_os_str().as_bytes() {
        if b.is_ascii_graphic() && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn unescape(text: &str) -> Option<PathBuf> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    (!out.is_empty()).then(|| PathBuf::from(OsString::from_vec(out)))
}

/// The line for `rec`, newline included.
pub(super) fn encode(rec: &Record) -> String {
    let payload = match rec {
        Record::Version {
            path,
            identity: id,
            reported,
            hash,
        } => {
            let hash = hash.map_or_else(|| "-".to_string(), |h| format!("{h:016x}"));
            format!(
                "v {} {} {} {} {} {} {} {reported} {hash} {}",
                id.dev,
                id.ino,
                id.size,
                id.mtime.0,
                id.mtime.1,
                id.ctime.0,
                id.ctime.1,
                escape(path)
            )
        }
        Record::Floor { path, floor } => format!("f {floor} {}", escape(path)),
    };
    let sum = fnv1a(FNV_START, payload.as_bytes());
    format!("{payload} {sum:016x}\n")
}

/// The record on one line (without its newline); `None` if damaged.
pub(super) fn decode_line(line: &[u8]) -> Option<Record> {
    let line = std::str::from_utf8(line).ok()?;
    let (payload, sum) = line.rsplit_once(' ')?;
    if u64::from_str_radix(sum, 16).ok()? != fnv1a(FNV_START, payload.as_bytes()) {
        return None;
    }
    let fields: Vec<&str> = payload.split(' ').collect();
    let num = |i: usize| fields.get(i)?.parse::<i64>().ok();
    let unsigned = |i: usize| fields.get(i)?.parse::<u64>().ok();
    match (fields.first(), fields.len()) {
        (Some(&"v"), 11) => Some(Record::Version {
            identity: Identity {
                dev: unsigned(1)?,
                ino: unsigned(2)?,
                size: num(3)?,
                mtime: (num(4)?, num(5)?),
                ctime: (num(6)?, num(7)?),
            },
            reported: num(8)?,
            hash: match fields[9] {
                "-" => None,
                h => Some(u64::from_str_radix(h, 16).ok()?),
            },
            path: unescape(fields[10])?,
        }),
        (Some(&"f"), 3) => Some(Record::Floor {
            floor: num(1)?,
            path: unescape(fields[2])?,
        }),
        _ => None,
    }
}

/// Every intact record of a log's content, and what was wrong with the rest.
pub(super) fn parse(bytes: &[u8]) -> (Vec<Record>, Damage) {
    let mut damage = Damage::default();
    let mut lines: Vec<&[u8]> = bytes.split(|&b| b == b'\n').collect();
    // Content ending with a newline splits into a last empty piece; anything else there is a
    // line whose write was cut short.
    if lines.pop().is_some_and(|tail| !tail.is_empty()) {
        damage.torn_tail = true;
    }
    let mut lines = lines.into_iter();
    if lines.next() != Some(HEADER.as_bytes()) {
        damage.bad_header = true;
        damage.torn_tail = false;
        return (Vec::new(), damage);
    }
    let mut records = Vec::new();
    for line in lines {
        match decode_line(line) {
            Some(rec) => records.push(rec),
            None => damage.bad_lines += 1,
        }
    }
    (records, damage)
}

/// The open log of one registry.
#[derive(Debug)]
pub(super) struct Store {
    dir: OwnedFd,
    name: OsString,
    file: File,
    /// Lines in the file (header excluded).
    records: usize,
    /// Past this many lines the log is compacted.
    compact_at: usize,
    /// Lines written since the last `fdatasync`.
    dirty: bool,
    /// The last write failed (logged once, until one succeeds again).
    failing: bool,
}

impl Store {
    /// Opens the log at `path`, creating it if missing, and returns its intact records and
    /// what was damaged. The caller rewrites a damaged log (`rewrite`).
    ///
    /// # Errors
    /// Its directory cannot be opened, or the file cannot be read or created, or it is not a
    /// regular file owned by us with one link.
    pub(super) fn open(path: &Path) -> io::Result<(Store, Vec<Record>, Damage)> {
        let (dir_path, name) = split(path)?;
        let dir = sys::open_dir_readable(dir_path)?;
        let (mut file, created) = open_or_create(dir.as_fd(), &name)?;
        check_ours(&file)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        let (records, damage) = if created {
            (Vec::new(), Damage::default())
        } else {
            parse(&bytes)
        };
        let store = Store {
            dir,
            name,
            file,
            records: records.len(),
            compact_at: COMPACT_MIN.max(2 * records.len()),
            dirty: false,
            failing: false,
        };
        Ok((store, records, damage))
    }

    /// Appends `recs` with one `write` (durable against a crash of this process at once, and
    /// against a crash of the machine after the next `sync`). A failure is logged, not
    /// returned: the decision was made and must be answered either way.
    pub(super) fn append(&mut self, recs: &[Record]) {
        let text: String = recs.iter().map(encode).collect();
        match self.file.write_all(text.as_bytes()) {
            Ok(()) => {
                self.records += recs.len();
                self.dirty = true;
                if self.failing {
                    log::info!("mtime log {:?} is written again", self.name);
                }
                self.failing = false;
            }
            Err(e) => {
                if !self.failing {
                    log::error!(
                        "cannot append to the mtime log {:?}: {e}; mtimes reported until this \
                         clears are not remembered across a restart",
                        self.name
                    );
                }
                self.failing = true;
            }
        }
    }

    /// Whether the log holds enough superseded lines to be worth rewriting.
    pub(super) fn wants_compaction(&self) -> bool {
        self.records > self.compact_at
    }

    /// Replaces the log with exactly `recs`: a new file written and synced, renamed over the
    /// old one, the directory synced. On failure the old log stays in use.
    pub(super) fn rewrite(&mut self, recs: &[Record]) -> io::Result<()> {
        let mut tmp_name = self.name.clone();
        tmp_name.push(".new");
        match sys::unlink_at(self.dir.as_fd(), &tmp_name, false) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let file = sys::open_file_at(
            self.dir.as_fd(),
            &tmp_name,
            libc::O_WRONLY | libc::O_APPEND | libc::O_CREAT | libc::O_EXCL,
        )?;
        let mut out = BufWriter::new(file);
        writeln!(out, "{HEADER}")?;
        for rec in recs {
            out.write_all(encode(rec).as_bytes())?;
        }
        let file = out.into_inner().map_err(|e| e.into_error())?;
        file.sync_data()?;
        sys::rename_at(self.dir.as_fd(), &tmp_name, &self.name)?;
        File::from(self.dir.try_clone()?).sync_all()?;
        self.file = file;
        self.records = recs.len();
        self.compact_at = COMPACT_MIN.max(2 * recs.len());
        self.dirty = false;
        Ok(())
    }

    /// Makes every appended line durable (`fdatasync`), if any is not yet.
    pub(super) fn sync(&mut self) {
        if let Some(file) = self.take_dirty() {
            sync_file(&file, &self.name);
        }
    }

    /// A handle to sync if lines were written since the last sync, marking them synced:
    /// `sync_locked` syncs it without holding the store, so appends never wait for the disk.
    fn take_dirty(&mut self) -> Option<File> {
        if !self.dirty {
            return None;
        }
        match self.file.try_clone() {
            Ok(file) => {
                self.dirty = false;
                Some(file)
            }
            Err(e) => {
                log::error!("cannot sync the mtime log {:?}: {e}", self.name);
                None
            }
        }
    }

    /// Ends a line cut short by a crash, so the next append starts a line of its own (for a
    /// log that could not be rewritten).
    pub(super) fn end_torn_line(&mut self) {
        if let Err(e) = self.file.write_all(b"\n") {
            log::error!("cannot append to the mtime log {:?}: {e}", self.name);
        }
    }

    #[cfg(test)]
    pub(super) fn records(&self) -> usize {
        self.records
    }
}

/// Syncs the log of `store` (locked only to take a handle), if it was written since.
pub(super) fn sync_locked(store: &parking_lot::Mutex<Store>) {
    let (file, name) = {
        let mut store = store.lock();
        (store.take_dirty(), store.name.clone())
    };
    if let Some(file) = file {
        sync_file(&file, &name);
    }
}

fn sync_file(file: &File, name: &OsStr) {
    // A failed sync leaves lines that may be lost with the machine; the next write marks the
    // log dirty again, so it is retried within a second of it.
    if let Err(e) = file.sync_data() {
        log::error!("cannot sync the mtime log {name:?}: {e}");
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.sync();
    }
}

fn split(path: &Path) -> io::Result<(&Path, OsString)> {
    let invalid = || io::Error::new(io::ErrorKind::InvalidInput, "mtime log path has no name");
    let name = path.file_name().ok_or_else(invalid)?.to_os_string();
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    Ok((dir, name))
}

/// The log, opened for reading and appending; created (with its header) if it did not exist.
fn open_or_create(dir: std::os::fd::BorrowedFd<'_>, name: &OsStr) -> io::Result<(File, bool)> {
    match sys::open_file_at(dir, name, libc::O_RDWR | libc::O_APPEND) {
        Ok(file) => return Ok((file, false)),
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        Err(_) => {}
    }
    let flags = libc::O_RDWR | libc::O_APPEND | libc::O_CREAT | libc::O_EXCL;
    let mut file = sys::open_file_at(dir, name, flags)?;
    writeln!(file, "{HEADER}")?;
    file.sync_data()?;
    File::from(dir.try_clone_to_owned()?).sync_all()?;
    Ok((file, true))
}

/// Refuses a log that another user could have planted or that is linked elsewhere.
fn check_ours(file: &File) -> io::Result<()> {
    let meta = file.metadata()?;
    let euid = sys::euid();
    if !meta.file_type().is_file() || meta.uid() != euid || meta.nlink() != 1 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "not a regular file owned by the daemon's user with one link",
        ));
    }
    Ok(())
}
