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
//! missing, in the older one-copy format, or no longer the file we hold open (replaced or
//! deleted under us), so the path always ends up holding what we acknowledged. Each slot is
//! text padded with NULs, so `cat` shows it.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use parking_lot::Mutex;

use crate::history::History;
use crate::names::validate_release_name;

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

/// A state file's content: the state, and the sequence number of its newest slot when the file
/// is in the slot format (`None` for the one-copy format of switchfs before slots, which is
/// rewritten in slots at the next switch).
fn decode(bytes: Vec<u8>) -> io::Result<(PersistedState, Option<u64>)> {
    let invalid = |msg: String| io::Error::new(io::ErrorKind::InvalidData, msg);
    if bytes.starts_with(MAGIC.as_bytes()) {
        let (seq, state) = newest_slot(&bytes).map_err(invalid)?;
        return Ok((state, Some(seq)));
    }
    let text = String::from_utf8(bytes).map_err(|_| invalid("not UTF-8 text".into()))?;
    parse(&text).map(|state| (state, None)).map_err(invalid)
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
pub struct StateFile {
    path: PathBuf,
    open: Mutex<Option<Slots>>,
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
            open: Mutex::new(None),
        }
    }

    /// Reads the state like [`load`] and, when the file is in the slot format, keeps it open
    /// so the next save is in place.
    ///
    /// # Errors
    /// As [`load`].
    pub fn load(&self) -> io::Result<Option<PersistedState>> {
        let mut open = self.open.lock();
        *open = None;
        let Ok(file) = OpenOptions::new().read(true).write(true).open(&self.path) else {
            return load(&self.path); // missing, or not writable: reported at the first save
        };
        let mut bytes = Vec::new();
        io::Read::read_to_end(&mut &file, &mut bytes)?;
        let (state, seq) = decode(bytes)?;
        if let Some(seq) = seq {
            *open = Some(Slots::new(file, seq)?);
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
        if let Some(slots) = open.as_mut().filter(|s| s.still_at(&self.path)) {
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
                    *open = None;
                    return Err(e);
                }
            }
        }
        // The old descriptor is closed only after the new file exists: a deleted state file
        // we still hold keeps its blocks, and a full disk must not get them back this way.
        match create(&self.path, state) {
            Ok(fresh) => {
                *open = Some(fresh);
                Ok(())
            }
            Err(e) => {
                *open = None;
                Err(e)
            }
        }
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

    /// Whether the path still names the file we hold: if it was replaced or deleted, writing
    /// into our descriptor would persist nothing anyone reads.
    fn still_at(&self, path: &Path) -> bool {
        fs::symlink_metadata(path).is_ok_and(|m| m.dev() == self.dev && m.ino() == self.ino)
    }
}

/// Writes a new slot file atomically and durably (temporary file, fsync, rename, fsync of the
/// directory) and keeps it open for in-place saves. Both slots hold `state`.
fn create(path: &Path, state: &PersistedState) -> io::Result<Slots> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let file_name = path.file_name().ok_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidInput, "state path has no file name")
    })?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(file_name);
    tmp_name.push(format!(".tmp.{}", std::process::id()));
    let tmp = dir.join(tmp_name);
    let seq = 1;
    let mut bytes = encode_slot(seq - 1, state)?;
    bytes.extend(encode_slot(seq, state)?);
    let result = (|| {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        file.write_all(&bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()?;
        Slots::new(file, seq)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
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
    fn the_older_one_copy_format_is_read_and_then_replaced() {
        let tmp = TempDir::new("state");
        let path = tmp.path().join("state");
        fs::write(&path, "active=1\nprevious=2\n").unwrap();
        let file = StateFile::new(path.clone());
        assert_eq!(file.load().unwrap(), Some(st("1", Some("2"))));
        file.save(&st("2", Some("1"))).unwrap();
        assert!(fs::read(&path).unwrap().starts_with(MAGIC.as_bytes()));
        assert_eq!(load(&path).unwrap(), Some(st("2", Some("1"))));
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
        // Written before histories existed: previous, then active.
        fs::write(&path, "active=2\nprevious=1\n").unwrap();
        let old = load(&path).unwrap().unwrap();
        assert_eq!(old.history.entries(), names(&["1", "2"]));
        // A name in the history is validated like any other.
        fs::write(&path, "active=2\nhistory=1/../x\n").unwrap();
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
