//! The persisted active release: a small text file written atomically (write a temporary
//! file, fsync it, rename it over the old one, fsync the directory), so a crash at any point
//! leaves either the old state or the new one, never a torn file.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;

use crate::names::validate_release_name;

/// What survives a restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PersistedState {
    pub active: String,
    pub previous: Option<String>,
}

/// Reads the state file. `Ok(None)` when there is none yet.
///
/// # Errors
/// The file cannot be read, or its content is not a state switchfs wrote (`InvalidData`,
/// with a message saying what is wrong).
pub fn load(path: &Path) -> io::Result<Option<PersistedState>> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    parse(&text)
        .map(Some)
        .map_err(|msg| io::Error::new(io::ErrorKind::InvalidData, msg))
}

fn parse(text: &str) -> Result<PersistedState, String> {
    let mut active = None;
    let mut previous = None;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let (key, value) = line
            .split_once('=')
            .ok_or_else(|| format!("line {line:?} is not key=value"))?;
        validate_release_name(value)?;
        match key {
            "active" => active = Some(value.to_string()),
            "previous" => previous = Some(value.to_string()),
            _ => return Err(format!("unknown key {key:?}")),
        }
    }
    let active = active.ok_or("no active= line")?;
    Ok(PersistedState { active, previous })
}

/// Writes the state file atomically and durably.
///
/// # Errors
/// Any failure to write, sync or rename; the previous state file is then left as it was.
pub fn save(path: &Path, state: &PersistedState) -> io::Result<()> {
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
    let mut text = format!("active={}\n", state.active);
    if let Some(prev) = &state.previous {
        text.push_str(&format!("previous={prev}\n"));
    }
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
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

    #[test]
    fn round_trip() {
        let tmp = TempDir::new("state");
        let path = tmp.path().join("state");
        assert_eq!(load(&path).unwrap(), None);
        let st = PersistedState {
            active: "3".into(),
            previous: Some("2".into()),
        };
        save(&path, &st).unwrap();
        assert_eq!(load(&path).unwrap(), Some(st));
        let only = PersistedState {
            active: "4".into(),
            previous: None,
        };
        save(&path, &only).unwrap();
        assert_eq!(load(&path).unwrap(), Some(only));
        let leftovers: Vec<_> = fs::read_dir(tmp.path()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temporary file left behind");
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
        ] {
            fs::write(&path, bad).unwrap();
            let err = load(&path).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{bad:?}");
        }
    }

    #[test]
    fn unwritable_location_fails_without_touching_old_state() {
        let tmp = TempDir::new("state");
        let path = tmp.path().join("missing-dir").join("state");
        let st = PersistedState {
            active: "1".into(),
            previous: None,
        };
        assert!(save(&path, &st).is_err());
    }
}
