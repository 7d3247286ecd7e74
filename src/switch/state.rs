//! The persisted active release, durable before `activate` answers.
//!
//! The file holds two copies ("slots") of the state, each with a sequence number and a
//! checksum. A switch overwrites the older slot in place and `fdatasync`s it: one block
//! written, no new block allocated and no directory entry changed, so no journal commit and no
//! second sync. That took persisting from ~0.5-0.9 ms (temporary file, fsync, rename, fsync of
//! the directory) to ~0.1 ms, most of what `activate` cost. A write torn by a crash fails its
//! checksum and the other slot, the state before that switch, is used: the switch was not yet
//! acknowledged, so nothing acknowledged is lost.
//!
//! The file itself is (re)created the old way, a temporary file renamed over it, when it is
//! missing, unreadable, or no longer the file we hold open (replaced or deleted under us), so the path always ends up holding what we acknowledged. Each slot is
//! text padded with NULs, so `cat` shows it.

use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::switch::history::History;
use crate::switch::names::validate_release_name;
use crate::sys;

/// What survives a restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PersistedState {
    pub active: String,
    pub previous: Option<String>,
    /// Activations and rollback marks (body lines `history=` and `rolled_back=`, names joined
    /// by `/`, the one character a release name cannot hold). Files without them, written
    /// before histories existed, read as "previous, then active".
    pub history: History,
}

const MAGIC: &str = "switchfs-state 2";
/// Two names of at most 255 bytes and the header fit with room to spare.
const SLOT: usize = 1024;

/// Reads the state file. `Ok(None)` when there is none yet.
///
/// # Errors
/// The file cannot be read, or its content is not a state switchfs wrote (`InvalidData`,
/// with a message saying what is wrong).
pub fn load(path: &Path) -> io::Result<Option<PersistedState>> {
    match fs::read(path) {
        Ok(bytes) => decode(bytes).map(|(state, _)| Some(state)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// A state file's content: the state, and the sequence number of its newest slot.
fn decode(bytes: Vec<u8>) -> io::Result<(PersistedState, u64)> {
    let invalid = |msg: String| io::Error::new(io::ErrorKind::InvalidData, msg);
    if !bytes.starts_with(MAGIC.as_bytes()) {
        return Err(invalid(format!(
            "not a switchfs state file (no {MAGIC:?} header)"
        )));
    }
    let (seq, state) = newest_slot(&bytes).map_err(invalid)?;
    Ok((state, seq))
}

/// The intact slot with the highest sequence number.
fn newest_slot(bytes: &[u8]) -> Result<(u64, PersistedState), String> {
    let mut best: Option<(u64, PersistedState)> = None;
    let mut why = String::from("no slot");
    for chunk in bytes.chunks(SLOT) {
        match decode_slot(chunk) {
            Ok((seq, st)) if best.as_ref().is_none_or(|(b, _)| seq > *b) => best = Some((seq, st)),
            Ok(_) => {}
            Err(e) => why = e,
        }
    }
    best.ok_or_else(|| format!("neither copy of the state is intact ({why})"))
}

fn decode_slot(chunk: &[u8]) -> Result<(u64, PersistedState), String> {
    let used = chunk.iter().position(|&b| b == 0).unwrap_or(chunk.len());
    let text = std::str::from_utf8(&chunk[..used]).map_err(|_| "slot is not UTF-8 text")?;
    let (header, body) = text.split_once('\n').ok_or("slot has no header line")?;
    let mut fields = header
        .strip_prefix(MAGIC)
        .ok_or("slot header is not switchfs's")?
        .split_whitespace();
    let seq = fields
        .next()
        .and_then(|f| f.strip_prefix("seq="))
        .and_then(|v| v.parse::<u64>().ok())
        .ok_or("slot header has no seq=")?;
    let sum = fields
        .next()
        .and_then(|f| f.strip_prefix("sum="))
        .ok_or("slot header has no sum=")?;
    if sum != format!("{:016x}", checksum(seq, body)) {
        return Err("slot checksum does not match (torn write?)".into());
    }
    Ok((seq, parse(body)?))
}

fn encode_slot(seq: u64, state: &PersistedState) -> io::Result<Vec<u8>> {
    let body = encode_body(state);
    let text = format!(
        "{MAGIC} seq={seq} sum={:016x}\n{body}",
        checksum(seq, &body)
    );
    let mut slot = text.into_bytes();
    if slot.len() > SLOT {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "release names too long for the state file",
        ));
    }
    slot.resize(SLOT, 0);
    Ok(slot)
}

/// The slot body. The oldest history entries and marks are left out when the names are too
/// long for all of them to fit the slot (with room for the header): the history is a
/// convenience, the active release is what must persist.
fn encode_body(state: &PersistedState) -> String {
    const ROOM: usize = SLOT - 64;
    let mut head = format!("active={}\n", state.active);
    if let Some(prev) = &state.previous {
        head.push_str(&format!("previous={prev}\n"));
    }
    let (entries, marks) = (state.history.entries(), state.history.rolled_back());
    let (mut from_entry, mut from_mark) = (0, 0);
    loop {
        let mut body = head.clone();
        for (key, names) in [
            ("history", &entries[from_entry..]),
            ("rolled_back", &marks[from_mark..]),
        ] {
            if !names.is_empty() {
                body.push_str(&format!("{key}={}\n", names.join("/")));
            }
        }
        if body.len() <= ROOM || (from_entry == entries.len() && from_mark == marks.len()) {
            return body;
        }
        if from_mark < marks.len() && marks.len() - from_mark >= entries.len() - from_entry {
            from_mark += 1;
        } else {
            from_entry += 1;
        }
    }
}

/// FNV-1a over the sequence number and the body: detects a torn or stale slot (not an attack).
fn checksum(seq: u64, body: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in seq.to_le_bytes().iter().chain(body.as_bytes()) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn parse(text: &str) -> Result<PersistedState, String> {
    let mut active = None;
    let mut previous = None;
    let mut history = None;
    let mut rolled_back = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let (key, value) = line
            .split_once('=')
            .ok_or_else(|| format!("line {line:?} is not key=value"))?;
        match key {
            "active" => active = Some(one_name(value)?),
            "previous" => previous = Some(one_name(value)?),
            "history" => history = Some(name_list(value)?),
            "rolled_back" => rolled_back = name_list(value)?,
            _ => return Err(format!("unknown key {key:?}")),
        }
    }
    let active: String = active.ok_or("no active= line")?;
    let history = match history {
        Some(entries) => History::new(entries, rolled_back),
        None => History::from_previous(&active, previous.as_deref()),
    };
    Ok(PersistedState {
        active,
        previous,
        history,
    })
}

fn one_name(value: &str) -> Result<String, String> {
    validate_release_name(value)?;
    Ok(value.to_string())
}

fn name_list(value: &str) -> Result<Vec<String>, String> {
    value.split('/').map(one_name).collect()
}

/// The state file of one daemon: saves are serialised and, once the file exists in the slot
/// format, done in place.
///
/// Everything goes through the state directory, opened once without following a symlink as
/// its last component: the file and its temporary are opened relative to it with
/// `O_NOFOLLOW`, the temporary is created `O_EXCL` under an unpredictable name, and renamed
/// relative to it. So a directory other users can write (where they could plant a symlink at
/// any name we would use) never makes root write through a link.
pub struct StateFile {
    path: PathBuf,
    open: Mutex<Held>,
    /// The lock file held for the daemon's life (see [`StateFile::lock`]).
    lock: Mutex<Option<File>>,
}

#[derive(Default)]
struct Held {
    /// The state directory, opened for reading so it can be fsynced.
    dir: Option<Arc<OwnedFd>>,
    slots: Option<Slots>,
}

/// The state file as we hold it open, and the sequence number of its newest slot.
struct Slots {
    file: File,
    dev: u64,
    ino: u64,
    seq: u64,
}

impl StateFile {
    pub fn new(path: PathBuf) -> StateFile {
        StateFile {
            path,
            open: Mutex::new(Held::default()),
            lock: Mutex::new(None),
        }
    }

    /// Makes this daemon the only one using this state file, for as long as it runs: an
    /// exclusive `flock` on `<state>.lock` beside it (the state file itself is replaced by
    /// rename now and then, so its lock would not be stable). Two daemons sharing a state file
    /// would each resume the other's release after a restart.
    ///
    /// # Errors
    /// One line: another daemon holds the lock (with its pid when it wrote one), or the lock
    /// file cannot be used safely (a symlink, a hard link, someone else's file).
    pub fn lock(&self) -> Result<(), String> {
        let Some(dir) = self.dir_to_lock_in()? else {
            return Ok(());
        };
        let mut name = file_name(&self.path)
            .map_err(|e| format!("state file {}: {e}", self.path.display()))?
            .to_os_string();
        name.push(".lock");
        let lock_path = self.path.with_file_name(&name);
        let Some(file) = open_lock_file(dir.as_fd(), &name, &lock_path)? else {
            return Ok(());
        };
        let locked = sys::try_lock_exclusive(file.as_fd())
            .map_err(|e| format!("cannot lock {}: {e}", lock_path.display()))?;
        if !locked {
            return Err(format!(
                "state file {} is in use by another switchfs ({}); one daemon per state file",
                self.path.display(),
                holder(&file)
            ));
        }
        // Only informational, for the message above: the lock is what counts.
        let pid = format!("{}\n", std::process::id());
        let _ = file
            .set_len(0)
            .and_then(|()| file.write_all_at(pid.as_bytes(), 0));
        *self.lock.lock() = Some(file);
        remove_stale_temporaries(dir.as_fd(), &name);
        Ok(())
    }

    /// Gives the state file up to a successor: once a stopping daemon no longer switches,
    /// the daemon replacing it (started while this one drains open files) may take it.
    pub fn unlock(&self) {
        self.lock.lock().take();
    }

    /// The state directory, or `None` when it is missing: then no other daemon's state is
    /// there either, and saves will fail and say so.
    fn dir_to_lock_in(&self) -> Result<Option<Arc<OwnedFd>>, String> {
        match self.dir() {
            Ok(dir) => Ok(Some(dir)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                log::warn!(
                    "state directory of {} is missing ({e}); not locking",
                    self.path.display()
                );
                Ok(None)
            }
            Err(e) => Err(format!(
                "cannot open the directory of state file {}: {e}",
                self.path.display()
            )),
        }
    }

    /// The state directory, opened on first use and kept.
    fn dir(&self) -> io::Result<Arc<OwnedFd>> {
        let mut open = self.open.lock();
        Self::dir_in(&mut open, &self.path)
    }

    fn dir_in(held: &mut Held, path: &Path) -> io::Result<Arc<OwnedFd>> {
        if let Some(dir) = &held.dir {
            return Ok(dir.clone());
        }
        let dir = Arc::new(open_state_dir(path)?);
        held.dir = Some(dir.clone());
        Ok(dir)
    }

    /// Reads the state like [`load`] and keeps the file open so the next save is in place.
    ///
    /// # Errors
    /// As [`load`]; also a state file that is a symlink or not a regular file (refused, never
    /// followed: the next save replaces it).
    pub fn load(&self) -> io::Result<Option<PersistedState>> {
        let mut open = self.open.lock();
        open.slots = None;
        let dir = match Self::dir_in(&mut open, &self.path) {
            Ok(dir) => dir,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let name = file_name(&self.path)?;
        let (file, writable) = match open_existing(dir.as_fd(), name) {
            Ok(found) => found,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let owner = file.metadata()?.uid();
        if owner != sys::euid() {
            // Whoever wrote it could choose the release served after a restart.
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "owned by uid {owner}, not by us: not trusted (the next switch replaces it)"
                ),
            ));
        }
        let mut bytes = Vec::new();
        io::Read::read_to_end(&mut &file, &mut bytes)?;
        let (state, seq) = decode(bytes)?;
        // In place only into a plain file of our own: a hard link planted to another file
        // must be replaced by rename, not written through.
        if writable && check_own_plain_file(&file).is_ok() {
            open.slots = Some(Slots::new(file, seq)?);
        }
        Ok(Some(state))
    }

    /// Makes `state` durable at the path.
    ///
    /// # Errors
    /// Any failure to write or sync; the state the file held before is then still what a
    /// restart reads (the older slot or the old file is untouched).
    pub fn save(&self, state: &PersistedState) -> io::Result<()> {
        let mut open = self.open.lock();
        let dir = Self::dir_in(&mut open, &self.path)?;
        let name = file_name(&self.path)?;
        if let Some(slots) = open
            .slots
            .as_mut()
            .filter(|s| s.still_at(dir.as_fd(), name))
        {
            let seq = slots.seq + 1;
            let slot = encode_slot(seq, state)?;
            let offset = (seq % 2) * SLOT as u64;
            let written = slots
                .file
                .write_all_at(&slot, offset)
                .and_then(|()| slots.file.sync_data());
            match written {
                Ok(()) => {
                    slots.seq = seq;
                    return Ok(());
                }
                Err(e) => {
                    // The slot may be half written: start over from a fresh file next time.
                    open.slots = None;
                    return Err(e);
                }
            }
        }
        // The old descriptor is closed only after the new file exists: a deleted state file
        // we still hold keeps its blocks, and a full disk must not get them back this way.
        match create(dir.as_fd(), name, state) {
            Ok(fresh) => {
                open.slots = Some(fresh);
                Ok(())
            }
            Err(e) => {
                open.slots = None;
                Err(e)
            }
        }
    }
}

// ---- The pending switch's file beside the state file (issue 20, `switch::pending`) ----

impl StateFile {
    /// `<state>.pending`.
    fn pending_name(&self) -> io::Result<OsString> {
        let mut name = file_name(&self.path)?.to_os_string();
        name.push(".pending");
        Ok(name)
    }

    /// Makes `text` the pending switch's file, durably (temporary file, fsync, rename, fsync
    /// of the directory, all through the state directory's descriptor, as `create`); `None`
    /// deletes it (and syncs the directory), so a restart never finds a switch that ended.
    ///
    /// # Errors
    /// Any failure to write, rename, delete or sync.
    pub fn save_pending(&self, text: Option<&str>) -> io::Result<()> {
        let dir = self.dir()?;
        let name = self.pending_name()?;
        let Some(text) = text else {
            return match sys::unlink_at(dir.as_fd(), &name, false) {
                Ok(()) => sys::fsync(dir.as_fd()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(e),
            };
        };
        let (mut file, tmp) = create_temporary(dir.as_fd(), &self.path_name_for_tmp()?)?;
        let result = (|| {
            file.write_all(text.as_bytes())?;
            file.sync_all()?;
            sys::rename_at(dir.as_fd(), &tmp, &name)?;
            sys::fsync(dir.as_fd())
        })();
        if result.is_err() {
            let _ = sys::unlink_at(dir.as_fd(), &tmp, false);
        }
        result
    }

    /// The temporaries of the pending file are named like the state file's (`.<state>.tmp.`),
    /// so `remove_stale_temporaries` clears those a crash left too.
    fn path_name_for_tmp(&self) -> io::Result<OsString> {
        Ok(file_name(&self.path)?.to_os_string())
    }

    /// The pending switch's file, opened without following links; `None` when there is none.
    ///
    /// # Errors
    /// It cannot be read, or is not a plain file of ours (not trusted: whoever wrote it
    /// could choose what is served).
    pub fn load_pending(&self) -> io::Result<Option<String>> {
        let dir = match self.dir() {
            Ok(dir) => dir,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let name = self.pending_name()?;
        let file = match open_existing(dir.as_fd(), &name) {
            Ok((file, _)) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        check_own_plain_file(&file).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        let mut text = String::new();
        io::Read::take(&file, 4096).read_to_string(&mut text)?;
        Ok(Some(text))
    }
}

impl Slots {
    fn new(file: File, seq: u64) -> io::Result<Slots> {
        let meta = file.metadata()?;
        Ok(Slots {
            file,
            dev: meta.dev(),
            ino: meta.ino(),
            seq,
        })
    }

    /// Whether the name still names the file we hold: if it was replaced or deleted, writing
    /// into our descriptor would persist nothing anyone reads.
    fn still_at(&self, dir: BorrowedFd<'_>, name: &OsStr) -> bool {
        sys::stat_at(dir, name).is_ok_and(|st| st.st_dev == self.dev && st.st_ino == self.ino)
    }
}

fn file_name(path: &Path) -> io::Result<&OsStr> {
    path.file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "state path has no file name"))
}

/// Opens the directory holding the state file, refusing a symlink as its last component, and
/// warns when other users can write it: they cannot make us write through a link there, but
/// they can delete or replace the state file.
fn open_state_dir(path: &Path) -> io::Result<OwnedFd> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let fd = sys::open_dir_readable(dir)?;
    let st = sys::fstat(fd.as_fd())?;
    if st.st_mode & 0o022 != 0 {
        log::warn!(
            "state directory {} is writable by other users (mode {:o}): they can replace the \
             state file; keep it in a directory only this daemon's user can write",
            dir.display(),
            st.st_mode & 0o7777
        );
    }
    Ok(fd)
}

/// Opens the existing state file without following a symlink: read-write when we may, else
/// read-only (reported at the first save). Returns the file and whether it is writable.
fn open_existing(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<(File, bool)> {
    let (file, writable) = match sys::open_file_at(dir, name, libc::O_RDWR) {
        Ok(f) => (f, true),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "it is a symlink; not following it (the next switch replaces it)",
            ));
        }
        Err(e) if matches!(e.raw_os_error(), Some(libc::EACCES) | Some(libc::EROFS)) => {
            (sys::open_file_at(dir, name, libc::O_RDONLY)?, false)
        }
        Err(e) => return Err(e),
    };
    if !file.metadata()?.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not a regular file (the next switch replaces it)",
        ));
    }
    Ok((file, writable))
}

/// A regular file with one link, owned by the user we run as.
fn check_own_plain_file(file: &File) -> Result<(), String> {
    let meta = file.metadata().map_err(|e| e.to_string())?;
    let me = sys::euid();
    if !meta.is_file() || meta.nlink() != 1 || meta.uid() != me {
        return Err(format!(
            "not a plain file of ours (uid {}, {} links); refusing to use it",
            meta.uid(),
            meta.nlink()
        ));
    }
    Ok(())
}

/// Writes a new slot file atomically and durably (temporary file, fsync, rename, fsync of the
/// directory), all relative to the state directory, and keeps it open for in-place saves.
/// Both slots hold `state`.
fn create(dir: BorrowedFd<'_>, name: &OsStr, state: &PersistedState) -> io::Result<Slots> {
    let seq = 1;
    let mut bytes = encode_slot(seq - 1, state)?;
    bytes.extend(encode_slot(seq, state)?);
    let (mut file, tmp) = create_temporary(dir, name)?;
    let result = (|| {
        file.write_all(&bytes)?;
        file.sync_all()?;
        sys::rename_at(dir, &tmp, name)?;
        sys::fsync(dir)?;
        Slots::new(file, seq)
    })();
    if result.is_err() {
        let _ = sys::unlink_at(dir, &tmp, false);
    }
    result
}

/// Opens (creating it) the lock file `name` in `dir`, refusing a symlink, a hard link or a
/// file someone else owns. `None` where we may not write: saves fail there too and say so, and
/// refusing to start would turn a read-only state directory into an outage.
fn open_lock_file(dir: BorrowedFd<'_>, name: &OsStr, shown: &Path) -> Result<Option<File>, String> {
    let file = match sys::open_file_at(dir, name, libc::O_RDWR | libc::O_CREAT) {
        Ok(file) => file,
        Err(e) if matches!(e.raw_os_error(), Some(libc::EACCES) | Some(libc::EROFS)) => {
            log::warn!(
                "cannot lock {}: {e}; a second daemon would not be refused",
                shown.display()
            );
            return Ok(None);
        }
        Err(e) => return Err(format!("cannot open lock file {}: {e}", shown.display())),
    };
    check_own_plain_file(&file).map_err(|e| format!("lock file {}: {e}", shown.display()))?;
    Ok(Some(file))
}

/// "pid N" of the daemon holding the lock, from what it wrote into the lock file.
fn holder(file: &File) -> String {
    let mut text = String::new();
    let _ = io::Read::read_to_string(&mut &*file, &mut text);
    match text.trim().parse::<u32>() {
        Ok(pid) => format!("pid {pid}"),
        Err(_) => "pid unknown".to_string(),
    }
}

/// Removes temporaries a crashed daemon left (the lock, held now, says no save is under way):
/// only regular files of ours, named like ours. `lock_name` is `<state>.lock`.
fn remove_stale_temporaries(dir: BorrowedFd<'_>, lock_name: &OsStr) {
    let Some(state) = lock_name.as_encoded_bytes().strip_suffix(b".lock") else {
        return;
    };
    let mut prefix = b".".to_vec();
    prefix.extend_from_slice(state);
    prefix.extend_from_slice(b".tmp.");
    let Ok(entries) = sys::read_dir(dir) else {
        return;
    };
    for entry in entries {
        if !entry.name.as_encoded_bytes().starts_with(&prefix) {
            continue;
        }
        let ours = sys::stat_at(dir, &entry.name)
            .is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFREG && st.st_uid == sys::euid());
        if ours && sys::unlink_at(dir, &entry.name, false).is_ok() {
            log::info!("removed {:?}, left by an earlier run", entry.name);
        }
    }
}

/// A new, empty temporary file beside the state file: `O_CREAT | O_EXCL | O_NOFOLLOW` under a
/// name with 64 random bits, so nothing planted in advance (a symlink, a file) is ever opened.
fn create_temporary(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<(File, OsString)> {
    let mut last = io::Error::from_raw_os_error(libc::EEXIST);
    for _ in 0..8 {
        let mut tmp = OsString::from(".");
        tmp.push(name);
        tmp.push(format!(".tmp.{:016x}", sys::random_u64()?));
        let flags = libc::O_RDWR | libc::O_CREAT | libc::O_EXCL;
        match sys::open_file_at(dir, &tmp, flags) {
            Ok(file) => return Ok((file, tmp)),
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => last = e,
            Err(e) => return Err(e),
        }
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::TempDir;

    fn st(active: &str, previous: Option<&str>) -> PersistedState {
        PersistedState {
            active: active.into(),
            previous: previous.map(Into::into),
            history: History::from_previous(active, previous),
        }
    }

    #[test]
    fn round_trip_in_place_after_the_first_save() {
        let tmp = TempDir::new("state");
        let path = tmp.path().join("state");
        assert_eq!(load(&path).unwrap(), None);
        let file = StateFile::new(path.clone());
        assert_eq!(file.load().unwrap(), None);
        file.save(&st("3", Some("2"))).unwrap();
        assert_eq!(load(&path).unwrap(), Some(st("3", Some("2"))));
        let ino = fs::metadata(&path).unwrap().ino();
        for i in 4..10 {
            file.save(&st(&i.to_string(), Some(&(i - 1).to_string())))
                .unwrap();
            assert_eq!(
                load(&path).unwrap(),
                Some(st(&i.to_string(), Some(&(i - 1).to_string())))
            );
        }
        file.save(&st("only", None)).unwrap();
        assert_eq!(load(&path).unwrap(), Some(st("only", None)));
        assert_eq!(fs::metadata(&path).unwrap().ino(), ino, "saved in place");
        assert_eq!(fs::metadata(&path).unwrap().len(), 2 * SLOT as u64);
        let leftovers: Vec<_> = fs::read_dir(tmp.path()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temporary file left behind");
        // A restarted daemon picks the file up and goes on saving in place.
        let again = StateFile::new(path.clone());
        assert_eq!(again.load().unwrap(), Some(st("only", None)));
        again.save(&st("next", Some("only"))).unwrap();
        assert_eq!(load(&path).unwrap(), Some(st("next", Some("only"))));
        assert_eq!(fs::metadata(&path).unwrap().ino(), ino);
    }

    #[test]
    fn a_torn_slot_falls_back_to_the_state_before_it() {
        let tmp = TempDir::new("state");
        let path = tmp.path().join("state");
        let file = StateFile::new(path.clone());
        file.save(&st("1", None)).unwrap();
        file.save(&st("2", Some("1"))).unwrap(); // seq 2, slot 0
        file.save(&st("3", Some("2"))).unwrap(); // seq 3, slot 1
        // A crash halfway through writing slot 1: its checksum no longer matches.
        let mut bytes = fs::read(&path).unwrap();
        bytes[SLOT + 40..SLOT + 60].fill(b'x');
        fs::write(&path, &bytes).unwrap();
        assert_eq!(load(&path).unwrap(), Some(st("2", Some("1"))));
        // Both torn: an error, not a guess.
        bytes[40..60].fill(b'x');
        fs::write(&path, &bytes).unwrap();
        let err = load(&path).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("neither copy"), "{err}");
    }

    #[test]
    fn a_state_file_replaced_or_deleted_under_us_is_written_anew() {
        let tmp = TempDir::new("state");
        let path = tmp.path().join("state");
        let file = StateFile::new(path.clone());
        file.save(&st("1", None)).unwrap();
        fs::remove_file(&path).unwrap();
        file.save(&st("2", Some("1"))).unwrap();
        assert_eq!(load(&path).unwrap(), Some(st("2", Some("1"))));
        // Replaced by a directory: the rename over it fails, and the save says so.
        fs::remove_file(&path).unwrap();
        fs::create_dir(&path).unwrap();
        assert!(file.save(&st("3", Some("2"))).is_err());
    }

    #[test]
    fn corrupt_files_are_errors() {
        let tmp = TempDir::new("state");
        let path = tmp.path().join("state");
        for bad in [
            "garbage",
            "active=../x\n",
            "previous=1\n",
            "active=1\nfoo=2\n",
            "\0\0",
            "switchfs-state 2 seq=1 sum=0000000000000000\nactive=1\n",
            "switchfs-state 2\nactive=1\n",
        ] {
            fs::write(&path, bad).unwrap();
            let err = load(&path).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{bad:?}");
        }
        // A slot that checks out but names an unsafe release is refused too.
        let mut slot = format!(
            "{MAGIC} seq=1 sum={:016x}\nactive=../x\n",
            checksum(1, "active=../x\n")
        );
        slot.push('\0');
        fs::write(&path, slot).unwrap();
        assert_eq!(load(&path).unwrap_err().kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn a_symlinked_state_file_is_replaced_not_followed() {
        let tmp = TempDir::new("state");
        let path = tmp.path().join("state");
        let target = tmp.path().join("important");
        fs::write(&target, "precious").unwrap();
        std::os::unix::fs::symlink(&target, &path).unwrap();
        let file = StateFile::new(path.clone());
        assert_eq!(file.load().unwrap_err().kind(), io::ErrorKind::InvalidData);
        file.save(&st("1", None)).unwrap();
        assert!(fs::symlink_metadata(&path).unwrap().is_file(), "replaced");
        assert_eq!(fs::read_to_string(&target).unwrap(), "precious");
        assert_eq!(load(&path).unwrap(), Some(st("1", None)));
    }

    #[test]
    fn a_state_file_another_user_owns_is_not_trusted_and_is_replaced() {
        assert_eq!(
            sys::euid(),
            0,
            "this test hands a file to nobody: run it as root"
        );
        let tmp = TempDir::new("state");
        let path = tmp.path().join("state");
        StateFile::new(path.clone())
            .save(&st("evil", None))
            .unwrap();
        std::os::unix::fs::chown(&path, Some(65534), Some(65534)).unwrap();
        let file = StateFile::new(path.clone());
        let err = file.load().unwrap_err();
        assert!(err.to_string().contains("owned by uid 65534"), "{err}");
        file.save(&st("1", None)).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().uid(), 0);
        assert_eq!(load(&path).unwrap(), Some(st("1", None)));
    }

    #[test]
    fn a_second_holder_of_the_state_file_is_refused_with_the_first_ones_pid() {
        let tmp = TempDir::new("state");
        let path = tmp.path().join("state");
        let first = StateFile::new(path.clone());
        first.lock().unwrap();
        let err = StateFile::new(path.clone()).lock().unwrap_err();
        let pid = format!("pid {}", std::process::id());
        assert!(
            err.contains("in use by another switchfs") && err.contains(&pid),
            "{err}"
        );
        drop(first);
        fs::write(tmp.path().join(".state.tmp.0123456789abcdef"), "crashed").unwrap();
        StateFile::new(path).lock().unwrap();
        assert!(
            !tmp.path().join(".state.tmp.0123456789abcdef").exists(),
            "a crashed run's temporary is cleaned up once locked"
        );
    }

    #[test]
    fn the_history_and_rollback_marks_round_trip() {
        let tmp = TempDir::new("state");
        let path = tmp.path().join("state");
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let state = PersistedState {
            active: "2".into(),
            previous: Some("3".into()),
            history: History::new(names(&["1", "3", "2"]), names(&["3"])),
        };
        let file = StateFile::new(path.clone());
        file.save(&state).unwrap();
        assert_eq!(load(&path).unwrap(), Some(state.clone()));
        let text = String::from_utf8_lossy(&fs::read(&path).unwrap()).into_owned();
        assert!(
            text.contains("history=1/3/2\nrolled_back=3\n"),
            "readable with cat: {text:?}"
        );
        // A slot written before histories existed: previous, then active.
        let slot = |body: &str| format!("{MAGIC} seq=1 sum={:016x}\n{body}", checksum(1, body));
        fs::write(&path, slot("active=2\nprevious=1\n")).unwrap();
        let old = load(&path).unwrap().unwrap();
        assert_eq!(old.history.entries(), names(&["1", "2"]));
        // A name in the history is validated like any other.
        fs::write(&path, slot("active=2\nhistory=1/../x\n")).unwrap();
        assert_eq!(load(&path).unwrap_err().kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn a_long_history_is_trimmed_oldest_first_to_fit_the_slot() {
        let tmp = TempDir::new("state");
        let path = tmp.path().join("state");
        let long = |i: usize| format!("{i:0>200}");
        let mut history = History::default();
        for i in 0..10 {
            history = history.activated(&long(i));
        }
        let state = PersistedState {
            active: long(9),
            previous: Some(long(8)),
            history,
        };
        StateFile::new(path.clone()).save(&state).unwrap();
        let back = load(&path).unwrap().unwrap();
        assert_eq!(back.active, long(9));
        let kept = back.history.entries();
        assert!(!kept.is_empty() && kept.len() < 10, "{}", kept.len());
        assert_eq!(kept.last(), Some(&long(9)), "the newest entries are kept");
    }

    #[test]
    fn unwritable_location_fails_without_touching_old_state() {
        let tmp = TempDir::new("state");
        let path = tmp.path().join("missing-dir").join("state");
        assert!(StateFile::new(path).save(&st("1", None)).is_err());
    }
}
