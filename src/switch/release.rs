//! The releases directory and the releases in it.
//!
//! A `Release` pins its directory with an `O_PATH` descriptor taken when it was activated, so
//! a release renamed or deleted while it is served keeps answering from the same directory
//! (or cleanly with ENOENT) instead of silently following a new directory of the same name.

use std::cmp::Ordering;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};

use crate::switch::names::validate_release_name;
use crate::sys;

/// One release as served: its name, the generation it was activated as, and its directory.
#[derive(Debug)]
pub(crate) struct Release {
    pub name: String,
    /// Unique per activation; keys the inode table so no inode is shared between two
    /// activations, even of the same directory.
    pub generation: u64,
    /// Shared so the mtime registry can reread old content without keeping the release
    /// itself alive.
    pub root: Arc<OwnedFd>,
}

/// The next activation's generation: one counter for the whole process, so releases the
/// switcher activates and those a resumed server reopens for its restored nodes never share
/// one.
static NEXT_GENERATION: AtomicU64 = AtomicU64::new(1);

impl Release {
    pub(crate) fn new(name: &str, generation: u64, root: OwnedFd) -> Release {
        Release {
            name: name.to_string(),
            generation,
            root: Arc::new(root),
        }
    }

    /// Release `name` served from `root` under a generation no other `Release` has.
    pub(crate) fn with_new_generation(name: &str, root: OwnedFd) -> Release {
        Release::new(
            name,
            NEXT_GENERATION.fetch_add(1, AtomicOrdering::Relaxed),
            root,
        )
    }
}

/// Whether two descriptors are the same directory (device and inode).
pub(crate) fn same_dir(a: &OwnedFd, b: &OwnedFd) -> bool {
    match (sys::fstat(a.as_fd()), sys::fstat(b.as_fd())) {
        (Ok(x), Ok(y)) => x.st_dev == y.st_dev && x.st_ino == y.st_ino,
        _ => false,
    }
}

/// The directory holding one subdirectory per release.
#[derive(Debug)]
pub(crate) struct ReleaseSet {
    path: PathBuf,
    fd: OwnedFd,
}

impl ReleaseSet {
    /// Opens the releases directory.
    ///
    /// # Errors
    /// The path does not exist or is not a directory.
    pub(crate) fn open(path: &Path) -> io::Result<Self> {
        let fd = sys::open_dir_path(path, false)?;
        let path = std::fs::canonicalize(path)?;
        Ok(ReleaseSet { path, fd })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The pinned releases directory: prune lists and deletes through it, never through the
    /// path, which the owner of its parent could turn into a symlink to anywhere.
    pub(crate) fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Opens release `name` for serving: a real directory (see [`Self::open_dir`]) that is
    /// still linked, not empty, and still the directory the name resolves to after those
    /// checks. That refuses a release `rm -rf` is deleting (emptied, or removed after we
    /// opened it) or that is being renamed or replaced, instead of serving an empty root.
    ///
    /// The remaining window: a deletion that empties the directory after these checks and
    /// before the switch is published still ends with the active release deleted while served,
    /// which `status` reports as a problem (as for any release deleted while active).
    ///
    /// # Errors
    /// A one-line message naming the release and what is wrong with it.
    pub(crate) fn open_release(&self, name: &str) -> Result<OwnedFd, String> {
        let fd = self.open_dir(name)?;
        let st =
            sys::fstat(fd.as_fd()).map_err(|e| format!("cannot stat release {name:?}: {e}"))?;
        if st.st_nlink == 0 {
            return Err(format!("release {name:?} was deleted while being opened"));
        }
        let empty = sys::dir_is_empty(fd.as_fd())
            .map_err(|e| format!("cannot list release {name:?}: {e}"))?;
        if empty {
            return Err(format!(
                "release {name:?} is empty (being deleted, or not uploaded yet); refusing to serve it"
            ));
        }
        let again = self.open_dir(name)?;
        let now =
            sys::fstat(again.as_fd()).map_err(|e| format!("cannot stat release {name:?}: {e}"))?;
        if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino) || now.st_nlink == 0 {
            return Err(format!(
                "release {name:?} was renamed, replaced or deleted while being opened"
            ));
        }
        Ok(fd)
    }

    /// Opens the directory of release `name`.
    ///
    /// # Errors
    /// A one-line message: invalid name, no such release, or not a directory (a symlinked
    /// release is refused: it could point anywhere, and deploy tools upload real directories).
    pub(crate) fn open_dir(&self, name: &str) -> Result<OwnedFd, String> {
        validate_release_name(name)?;
        let here = self.path.display();
        let fd = sys::open_path_beneath(self.fd.as_fd(), std::ffi::OsStr::new(name)).map_err(
            |e| match e.raw_os_error() {
                Some(libc::ENOENT) => {
                    format!("unknown release {name:?}: no such directory in {here}")
                }
                _ => format!("cannot open release {name:?} in {here}: {e}"),
            },
        )?;
        let st =
            sys::fstat(fd.as_fd()).map_err(|e| format!("cannot stat release {name:?}: {e}"))?;
        match st.st_mode & libc::S_IFMT {
            libc::S_IFDIR => Ok(fd),
            libc::S_IFLNK => Err(format!(
                "release {name:?} is a symlink, not a directory; refusing to follow it"
            )),
            _ => Err(format!("release {name:?} is not a directory")),
        }
    }

    /// The names of the releases present, oldest first by natural order (numbers compare as
    /// numbers, so `10` sorts after `9`). Entries that are not directories or whose names
    /// are not valid release names (hidden files, for instance) are left out.
    ///
    /// # Errors
    /// The releases directory cannot be read.
    pub(crate) fn list(&self) -> io::Result<Vec<String>> {
        let mut names: Vec<String> = sys::read_dir(self.fd.as_fd())?
            .into_iter()
            .filter(|e| e.d_type == libc::DT_DIR || e.d_type == libc::DT_UNKNOWN)
            .filter_map(|e| e.name.into_string().ok())
            .filter(|n| validate_release_name(n).is_ok())
            .filter(|n| self.open_dir(n).is_ok())
            .collect();
        names.sort_by(|a, b| natural_cmp(a, b));
        Ok(names)
    }
}

/// A total order for release names: all-digit names first, by value (so `10` follows `9`,
/// as Capistrano timestamps and Deployer counters expect), then every other name byte-wise.
pub(crate) fn natural_cmp(a: &str, b: &str) -> Ordering {
    let key = |s: &str| s.parse::<u128>().ok();
    match (key(a), key(b)) {
        (Some(x), Some(y)) => x.cmp(&y).then_with(|| a.cmp(b)),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => a.cmp(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::TempDir;

    #[test]
    fn opens_only_real_release_directories() {
        let tmp = TempDir::new("release");
        let rel = tmp.path().join("releases");
        std::fs::create_dir_all(rel.join("1")).unwrap();
        std::fs::write(rel.join("1/index.php"), b"x").unwrap();
        std::fs::create_dir_all(rel.join("empty")).unwrap();
        std::fs::write(rel.join("file"), b"x").unwrap();
        std::os::unix::fs::symlink("/etc", rel.join("evil")).unwrap();
        let set = ReleaseSet::open(&rel).unwrap();
        assert!(set.open_release("1").is_ok());
        assert!(
            set.open_release("2")
                .unwrap_err()
                .contains("unknown release")
        );
        assert!(
            set.open_release("file")
                .unwrap_err()
                .contains("not a directory")
        );
        assert!(set.open_release("evil").unwrap_err().contains("symlink"));
        assert!(set.open_release("..").is_err());
        assert!(set.open_release("../releases").is_err());
        assert!(set.open_release("empty").unwrap_err().contains("is empty"));
        assert_eq!(
            set.list().unwrap(),
            vec!["1", "empty"],
            "listed, not servable"
        );
    }

    #[test]
    fn natural_order() {
        let mut v = vec!["10", "9", "b", "a", "100"];
        v.sort_by(|a, b| natural_cmp(a, b));
        assert_eq!(v, vec!["9", "10", "100", "a", "b"]);
    }
}
