//! Node ids that outlive the process serving them.
//!
//! The kernel keeps the node ids it was given (dentries, open files, working directories)
//! across the death or upgrade of the serving process: the connection stays open in the
//! keeper (see `keeper`). A successor must resolve each of them to the same file, or answer
//! ESTALE when that file is truly gone; EIO or ESTALE for a file that still exists would reach
//! the web server. So every fact that gives a node id its meaning is appended here when it is
//! made, on the cold path only (a new inode, a new portal, a name under the root or a portal
//! the next switch must expire), never on a warm request:
//!
//! - `Node`: inode number, the release (name and generation) it is bound to, its path
//!   relative to the release, kind, host identity (device, inode, birth time) and mtime
//!   override. A successor restores it without a descriptor; the first use reopens the path
//!   from the release and checks the identity (`Inode::fd`), so a replaced file is ESTALE.
//! - `Forget`: the kernel dropped the node.
//! - `Portal`: a top-level directory's stable inode number.
//! - `RootName` / `Switch`: the names under the root and the portals the kernel may cache,
//!   which the next switch must expire; a successor that forgot them would leave the old
//!   release visible under those names after the next switch, for up to `--cache-timeout`.
//!
//! The log is a memfd that the keeper holds and hands to each server (never on disk: node ids
//! mean nothing to another mount). Each record is length-prefixed and checksummed; a record
//! torn by a SIGKILL in the middle of a write ends the log there. A successor reads it, keeps
//! what is live, and rewrites it compacted.
//!
//! Lookup counts are not logged (they change on every lookup): a restored node is treated as
//! referenced until the daemon stops, which can keep an entry the kernel forgot (bounded by
//! what the kernel held at the crash), never drop one in use.

use std::collections::{HashMap, HashSet};

use crate::sys;
use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::PathBuf;

use fuser::FileType;
use parking_lot::Mutex;

use crate::fs::mtimes::MtimeOverride;

/// One node as a successor needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NodeRecord {
    pub ino: u64,
    pub generation: u64,
    pub release: String,
    pub kind: FileType,
    pub host: (u64, u64, i64, u32),
    pub mtime: Option<MtimeOverride>,
    pub path: PathBuf,
}

/// What a successor restores.
#[derive(Debug, Default)]
pub(crate) struct Restored {
    pub nodes: Vec<NodeRecord>,
    pub portals: Vec<(u64, OsString)>,
    pub root_names: HashSet<(u64, OsString)>,
}

const NODE: u8 = b'N';
const FORGET: u8 = b'F';
const PORTAL: u8 = b'P';
const ROOT_NAME: u8 = b'R';
const SWITCH: u8 = b'S';

/// The append-only log of node facts (see the module doc).
#[derive(Debug)]
pub(crate) struct NodeLog {
    file: Mutex<Appender>,
}

/// The memfd and the size past which it is compacted next.
#[derive(Debug)]
struct Appender {
    file: File,
    compact_at: u64,
}

/// The log is compacted once it is this large and twice what was live at the last
/// compaction: forgotten nodes and names of old switches go, at a cost proportional to the
/// log, paid on a cold lookup once per doubling.
const MIN_COMPACT: u64 = 1 << 20;

impl NodeLog {
    pub(crate) fn new(fd: OwnedFd) -> NodeLog {
        NodeLog {
            file: Mutex::new(Appender {
                file: File::from(fd),
                compact_at: MIN_COMPACT,
            }),
        }
    }

    pub(crate) fn node(&self, n: &NodeRecord) {
        self.append(NODE, &node_payload(n));
    }

    pub(crate) fn forget(&self, ino: u64) {
        self.append(FORGET, &ino.to_le_bytes());
    }

    pub(crate) fn portal(&self, ino: u64, name: &std::ffi::OsStr) {
        self.append(PORTAL, &name_payload(ino, name));
    }

    pub(crate) fn root_name(&self, parent: u64, name: &std::ffi::OsStr) {
        self.append(ROOT_NAME, &name_payload(parent, name));
    }

    /// A switch published a new release: the names recorded before it were handed to the
    /// switch to expire.
    pub(crate) fn switch(&self) {
        self.append(SWITCH, &[]);
    }

    fn append(&self, tag: u8, payload: &[u8]) {
        let rec = encode(tag, payload);
        let mut log = self.file.lock();
        // One write per record: a reader sees it whole or, torn by a kill, not at all.
        let written = log
            .file
            .seek(SeekFrom::End(0))
            .and_then(|at| log.file.write_all(&rec).map(|()| at + rec.len() as u64));
        match written {
            Ok(end) if end > log.compact_at => {
                if let Err(e) = compact(&mut log) {
                    log::warn!("cannot compact the node id log: {e}");
                }
            }
            Ok(_) => {}
            Err(e) => log::warn!("cannot record a node id for a successor: {e}"),
        }
    }

    /// Reads what the log holds, keeps what is live and rewrites the log with only that.
    ///
    /// # Errors
    /// The memfd cannot be read or rewritten.
    pub(crate) fn load_and_compact(&self) -> io::Result<Restored> {
        compact(&mut self.file.lock())
    }
}

/// Reads the log, rewrites it with only what is live, and returns that.
fn compact(log: &mut Appender) -> io::Result<Restored> {
    let mut bytes = Vec::new();
    log.file.seek(SeekFrom::Start(0))?;
    log.file.read_to_end(&mut bytes)?;
    let (restored, torn) = parse(&bytes);
    if torn {
        log::warn!("the node id log ends in a torn record (a kill mid-write); ignored it");
    }
    let mut out = Vec::new();
    for (ino, name) in &restored.portals {
        out.extend(encode(PORTAL, &name_payload(*ino, name)));
    }
    for (parent, name) in &restored.root_names {
        out.extend(encode(ROOT_NAME, &name_payload(*parent, name)));
    }
    for n in &restored.nodes {
        out.extend(encode(NODE, &node_payload(n)));
    }
    log.file.set_len(0)?;
    log.file.seek(SeekFrom::Start(0))?;
    log.file.write_all(&out)?;
    log.compact_at = MIN_COMPACT.max(2 * out.len() as u64);
    drop((bytes, out));
    // The log's bytes, its parse and the rewrite were tens of MiB for a large tree, freed
    // now between long-lived inodes: without a trim the allocator keeps them, and the
    // daemon's memory grew by that much at every compaction (measured 100 -> 189 MiB over
    // three walks of 100,000 files).
    sys::release_free_memory();
    Ok(restored)
}

fn name_payload(ino: u64, name: &std::ffi::OsStr) -> Vec<u8> {
    let mut p = ino.to_le_bytes().to_vec();
    put_bytes(&mut p, name.as_bytes());
    p
}

fn node_payload(n: &NodeRecord) -> Vec<u8> {
    let mut p = Vec::with_capacity(64 + n.path.as_os_str().len());
    p.extend_from_slice(&n.ino.to_le_bytes());
    p.extend_from_slice(&n.generation.to_le_bytes());
    p.push(kind_code(n.kind));
    p.extend_from_slice(&n.host.0.to_le_bytes());
    p.extend_from_slice(&n.host.1.to_le_bytes());
    p.extend_from_slice(&n.host.2.to_le_bytes());
    p.extend_from_slice(&n.host.3.to_le_bytes());
    match n.mtime {
        Some(m) => {
            p.push(1);
            p.extend_from_slice(&m.real.0.to_le_bytes());
            p.extend_from_slice(&m.real.1.to_le_bytes());
            p.extend_from_slice(&m.reported.to_le_bytes());
        }
        None => p.push(0),
    }
    put_bytes(&mut p, n.release.as_bytes());
    put_bytes(&mut p, n.path.as_os_str().as_bytes());
    p
}

fn put_bytes(p: &mut Vec<u8>, b: &[u8]) {
    p.extend_from_slice(&(b.len() as u32).to_le_bytes());
    p.extend_from_slice(b);
}

/// `[len u32][tag][payload][fnv1a32 of tag and payload]`.
fn encode(tag: u8, payload: &[u8]) -> Vec<u8> {
    let mut rec = Vec::with_capacity(payload.len() + 9);
    rec.extend_from_slice(&(payload.len() as u32 + 1).to_le_bytes());
    rec.push(tag);
    rec.extend_from_slice(payload);
    let sum = fnv1a(&rec[4..]);
    rec.extend_from_slice(&sum.to_le_bytes());
    rec
}

fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(*b)).wrapping_mul(0x0100_0193)
    })
}

/// The live facts in `bytes`, and whether it ended in a damaged record.
fn parse(bytes: &[u8]) -> (Restored, bool) {
    let mut nodes: HashMap<u64, NodeRecord> = HashMap::new();
    let mut portals: Vec<(u64, OsString)> = Vec::new();
    // Names since the last switch, and those between the two last: a switch killed between
    // publishing and expiring must still have its names expired by the next one.
    let (mut since_last, mut before_last) = (Vec::new(), Vec::new());
    let mut at = 0;
    let torn = loop {
        let Some((tag, payload, next)) = next_record(bytes, at) else {
            break at != bytes.len();
        };
        at = next;
        let mut r = Reader(payload);
        let ok = match tag {
            NODE => read_node(&mut r).map(|n| {
                nodes.insert(n.ino, n);
            }),
            FORGET => r.u64().map(|ino| {
                nodes.remove(&ino);
            }),
            PORTAL => r.u64().zip(r.bytes()).map(|(ino, name)| {
                portals.push((ino, OsString::from_vec(name.to_vec())));
            }),
            ROOT_NAME => r.u64().zip(r.bytes()).map(|(parent, name)| {
                since_last.push((parent, OsString::from_vec(name.to_vec())));
            }),
            SWITCH => {
                before_last = std::mem::take(&mut since_last);
                Some(())
            }
            _ => None,
        };
        if ok.is_none() {
            break true;
        }
    };
    let mut nodes: Vec<NodeRecord> = nodes.into_values().collect();
    nodes.sort_by_key(|n| n.ino);
    let root_names = before_last.into_iter().chain(since_last).collect();
    (
        Restored {
            nodes,
            portals,
            root_names,
        },
        torn,
    )
}

fn next_record(bytes: &[u8], at: usize) -> Option<(u8, &[u8], usize)> {
    let len = u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?) as usize;
    let body = bytes.get(at + 4..at + 4 + len)?;
    let sum = bytes.get(at + 4 + len..at + 8 + len)?;
    if len == 0 || fnv1a(body).to_le_bytes() != sum {
        return None;
    }
    Some((body[0], &body[1..], at + 8 + len))
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, tail) = (self.0.get(..n)?, self.0.get(n..)?);
        self.0 = tail;
        Some(head)
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn i64(&mut self) -> Option<i64> {
        Some(i64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }
}

fn read_node(r: &mut Reader<'_>) -> Option<NodeRecord> {
    let ino = r.u64()?;
    let generation = r.u64()?;
    let kind = kind_of_code(r.u8()?)?;
    let host = (r.u64()?, r.u64()?, r.i64()?, r.u32()?);
    let mtime = match r.u8()? {
        0 => None,
        _ => Some(MtimeOverride {
            real: (r.i64()?, r.i64()?),
            reported: r.i64()?,
        }),
    };
    let release = String::from_utf8(r.bytes()?.to_vec()).ok()?;
    let path = PathBuf::from(OsString::from_vec(r.bytes()?.to_vec()));
    Some(NodeRecord {
        ino,
        generation,
        release,
        kind,
        host,
        mtime,
        path,
    })
}

const KINDS: [FileType; 7] = [
    FileType::RegularFile,
    FileType::Directory,
    FileType::Symlink,
    FileType::NamedPipe,
    FileType::Socket,
    FileType::CharDevice,
    FileType::BlockDevice,
];

fn kind_code(kind: FileType) -> u8 {
    KINDS.iter().position(|k| *k == kind).unwrap_or(0) as u8
}

fn kind_of_code(code: u8) -> Option<FileType> {
    KINDS.get(usize::from(code)).copied()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    fn log() -> NodeLog {
        NodeLog::new(crate::sys::memfd("test-nodes").unwrap())
    }

    fn node(ino: u64, path: &str) -> NodeRecord {
        NodeRecord {
            ino,
            generation: 3,
            release: "42".into(),
            kind: FileType::Directory,
            host: (2049, 77 + ino, -5, 9),
            mtime: Some(MtimeOverride {
                real: (1_700_000_000, 12),
                reported: 1_700_000_001,
            }),
            path: path.into(),
        }
    }

    #[test]
    fn nodes_portals_and_names_come_back_and_forgotten_ones_do_not() {
        let log = log();
        log.portal(1 << 62 | 1, OsStr::new("public"));
        log.node(&node(2, "public/a"));
        log.node(&node(3, "vendor/x\ny"));
        log.root_name(1, OsStr::new("old"));
        log.switch();
        log.root_name(1, OsStr::new("between"));
        log.switch();
        log.root_name(1 << 62 | 1, OsStr::new("index.php"));
        log.forget(2);
        let r = log.load_and_compact().unwrap();
        assert_eq!(r.nodes, vec![node(3, "vendor/x\ny")]);
        assert_eq!(r.portals, vec![(1 << 62 | 1, OsString::from("public"))]);
        let names: HashSet<_> = [
            (1, OsString::from("between")),
            (1 << 62 | 1, OsString::from("index.php")),
        ]
        .into();
        assert_eq!(r.root_names, names, "names of the last two switches only");
        // Compacted, and read the same again.
        let again = log.load_and_compact().unwrap();
        assert_eq!(again.nodes, r.nodes);
        assert_eq!(again.portals, r.portals);
        assert_eq!(again.root_names, r.root_names);
    }

    #[test]
    fn the_log_is_compacted_as_it_grows() {
        let log = log();
        for round in 0..20_000u64 {
            log.node(&node(2 + round, "some/deeper/path/of/a/file.php"));
            log.forget(2 + round);
        }
        log.node(&node(1_000_000, "kept"));
        let size = log.file.lock().file.metadata().unwrap().len();
        assert!(size < 2 * MIN_COMPACT, "the log grew to {size} bytes");
        assert_eq!(
            log.load_and_compact().unwrap().nodes,
            vec![node(1_000_000, "kept")]
        );
    }

    #[test]
    fn a_torn_tail_ends_the_log_there() {
        let log = log();
        log.node(&node(2, "a"));
        log.node(&node(3, "b"));
        {
            let f = log.file.lock();
            let len = f.file.metadata().unwrap().len();
            f.file.set_len(len - 3).unwrap();
        }
        let r = log.load_and_compact().unwrap();
        assert_eq!(r.nodes, vec![node(2, "a")]);
    }
}
