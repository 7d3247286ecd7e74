//! The top-level directories of the mount, as "portals": one stable inode per name that
//! always shows that directory of the active release.
//!
//! Why: PHP-FPM and mod_php chdir() into the front controller's directory (`public/`) for
//! each request. Were `public` bound to a release like every other inode, the next lookup of
//! `public` after a switch would make the kernel unhash the old dentry, and `getcwd()` in a
//! request still running there fails (ENOENT); PHP then caches includes under relative keys
//! that serve the wrong release until an OPcache reset. A portal's dentry survives switches,
//! so `getcwd()` always works; entries under it are bound to their release as usual and are
//! expired at each switch like the root's.
//!
//! Portals live as long as the daemon: the kernel's references to them are not counted.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};

use parking_lot::RwLock;

use crate::fs::inodes::ROOT_INO;

/// Inode numbers of portals carry this bit; table inodes count up from 2 and never reach it.
const PORTAL_BIT: u64 = 1 << 62;

/// Whether `ino` is a portal's inode number (whether or not it was handed out).
pub(crate) fn is_portal(ino: u64) -> bool {
    ino & PORTAL_BIT != 0
}

/// Whether `ino` shows whatever release is active (the root and the portals), so its
/// attributes and listing change at each switch.
pub(crate) fn follows_active(ino: u64) -> bool {
    ino == ROOT_INO || is_portal(ino)
}

/// The portals handed out so far, by name and by inode number.
#[derive(Debug, Default)]
pub(crate) struct Portals {
    inner: RwLock<Table>,
}

#[derive(Debug, Default)]
struct Table {
    by_name: HashMap<OsString, u64>,
    by_ino: HashMap<u64, OsString>,
}

impl Portals {
    /// The stable inode number of the portal for top-level directory `name`, given out on
    /// first use and the same for the life of the daemon.
    #[cfg(test)]
    pub(crate) fn ino(&self, name: &OsStr) -> u64 {
        self.ino_or_new(name).0
    }

    /// As `ino`, and whether this call gave the number out (a successor process must learn
    /// it, see `nodelog`).
    pub(crate) fn ino_or_new(&self, name: &OsStr) -> (u64, bool) {
        if let Some(ino) = self.inner.read().by_name.get(name) {
            return (*ino, false);
        }
        let mut table = self.inner.write();
        if let Some(ino) = table.by_name.get(name) {
            return (*ino, false);
        }
        // Past the highest number in use, not the count: restored portals may leave gaps.
        let ino = PORTAL_BIT
            | (table
                .by_ino
                .keys()
                .map(|i| i & !PORTAL_BIT)
                .max()
                .unwrap_or(0)
                + 1);
        table.by_name.insert(name.to_os_string(), ino);
        table.by_ino.insert(ino, name.to_os_string());
        (ino, true)
    }

    /// Takes over portal `ino` for `name` as a predecessor process gave it out.
    pub(crate) fn restore(&self, ino: u64, name: OsString) {
        let mut table = self.inner.write();
        table.by_name.insert(name.clone(), ino);
        table.by_ino.insert(ino, name);
    }

    /// The name of portal `ino`; `None` if no such portal was handed out.
    pub(crate) fn name(&self, ino: u64) -> Option<OsString> {
        self.inner.read().by_ino.get(&ino).cloned()
    }

    /// Every portal's inode number, for invalidating their attributes at a switch.
    pub(crate) fn inos(&self) -> Vec<u64> {
        self.inner.read().by_ino.keys().copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_stable_inode_per_name_never_a_table_inode_or_the_root() {
        let p = Portals::default();
        let public = p.ino(OsStr::new("public"));
        let vendor = p.ino(OsStr::new("vendor"));
        assert_ne!(public, vendor);
        assert_eq!(p.ino(OsStr::new("public")), public, "same name, same inode");
        for ino in [public, vendor] {
            assert!(is_portal(ino) && follows_active(ino));
            assert_ne!(ino, ROOT_INO);
        }
        assert_eq!(p.name(public).as_deref(), Some(OsStr::new("public")));
        let mut inos = p.inos();
        inos.sort_unstable();
        let mut want = vec![public, vendor];
        want.sort_unstable();
        assert_eq!(inos, want);
    }

    #[test]
    fn table_inodes_and_unknown_portals_are_not_portals() {
        let p = Portals::default();
        assert!(follows_active(ROOT_INO) && !is_portal(ROOT_INO));
        // Table inodes count up from 2; any realistic count stays far below the portal range.
        for ino in [2, 3, 1 << 40] {
            assert!(!is_portal(ino) && !follows_active(ino));
        }
        let never_given = p.ino(OsStr::new("a")) + 1;
        assert!(is_portal(never_given));
        assert_eq!(p.name(never_given), None, "answered ESTALE by the core");
    }

    #[test]
    fn concurrent_first_lookups_of_one_name_agree() {
        let p = std::sync::Arc::new(Portals::default());
        let inos: Vec<u64> = (0..8)
            .map(|_| {
                let p = p.clone();
                std::thread::spawn(move || p.ino(OsStr::new("public")))
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| t.join().expect("thread"))
            .collect();
        assert!(inos.windows(2).all(|w| w[0] == w[1]), "{inos:?}");
        assert_eq!(p.inos().len(), 1);
    }
}
