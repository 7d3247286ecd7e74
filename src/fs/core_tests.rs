//! Core tests on temporary release trees, without a mount.

use std::ffi::{OsStr, OsString};
use std::io;
use std::sync::Arc;
use std::time::Duration;

use fuser::{FileAttr, FileType};
use parking_lot::Mutex;

use crate::fs::caller::Caller;
use crate::fs::core::{Core, DirPlusSink, DirSink, Invalidator, Lookup};
use crate::fs::inodes::ROOT_INO;
use crate::life::mounts::CONTROL_XATTR;
use crate::switch::state;
use crate::sys::XattrAnswer;
use crate::testutil::{Served, served};
use crate::testutil::{TempDir, core_config};

#[derive(Default)]
struct Recorder {
    calls: Mutex<Vec<String>>,
}

impl Recorder {
    fn sorted(&self) -> Vec<String> {
        let mut calls = self.calls.lock().clone();
        calls.sort();
        calls
    }
}

/// The invalidations a switch sends after the walk in the switch test: every root name
/// looked up (`only-in-2` as a negative entry), `b` under the portal of the top-level
/// directory `a` (inode `portal`), then the attributes of the root and of the portal.
fn root_names_looked_up(portal: u64) -> Vec<String> {
    let mut calls = vec![
        "entry 1 a".to_string(),
        "entry 1 index.php".to_string(),
        "entry 1 only-in-2".to_string(),
        format!("entry {portal} b"),
        "inode 1".to_string(),
        format!("inode {portal}"),
    ];
    calls.sort();
    calls
}

struct SharedRecorder(Arc<Recorder>);

impl Invalidator for SharedRecorder {
    fn inval_entry(&self, parent: u64, name: &OsStr) -> io::Result<()> {
        self.0
            .calls
            .lock()
            .push(format!("entry {parent} {}", name.to_string_lossy()));
        Ok(())
    }
    fn inval_inode(&self, ino: u64) -> io::Result<()> {
        self.0.calls.lock().push(format!("inode {ino}"));
        Ok(())
    }
}

struct Fixture {
    tmp: TempDir,
    core: Served,
    recorder: Arc<Recorder>,
}

fn write(tmp: &TempDir, rel: &str, path: &str, content: &str) {
    let full = tmp.path().join("releases").join(rel).join(path);
    std::fs::create_dir_all(full.parent().unwrap()).unwrap();
    std::fs::write(full, content).unwrap();
}

fn fixture(initial: Option<&str>) -> Fixture {
    let tmp = TempDir::new("core");
    for rel in ["1", "2"] {
        write(&tmp, rel, "index.php", &format!("release {rel}"));
        write(&tmp, rel, "a/b/c/deep.txt", &format!("deep {rel}"));
    }
    write(&tmp, "2", "only-in-2", "new");
    std::os::unix::fs::symlink("../../shared/log", tmp.path().join("releases/1/log")).unwrap();
    let core = served(core_config(&tmp), initial).unwrap();
    let recorder = Arc::new(Recorder::default());
    core.set_invalidator(Box::new(SharedRecorder(recorder.clone())));
    Fixture {
        tmp,
        core,
        recorder,
    }
}

fn entry(core: &Core, parent: u64, name: &str) -> FileAttr {
    match core
        .lookup(&Caller::ROOT, parent, OsStr::new(name))
        .unwrap()
    {
        Lookup::Entry(attr, _) => attr,
        Lookup::Negative(_) => panic!("{name} not found"),
    }
}

fn walk(core: &Core, path: &str) -> FileAttr {
    let mut ino = ROOT_INO;
    let mut attr = core.getattr(ROOT_INO).unwrap().0;
    for part in path.split('/') {
        attr = entry(core, ino, part);
        ino = attr.ino.0;
    }
    attr
}

fn read_all(core: &Core, path: &str) -> String {
    let ino = walk(core, path).ino.0;
    let fh = core.open(ino, libc::O_RDONLY).unwrap();
    let data = core.read(ino, fh, 0, 1 << 20).unwrap();
    core.release(fh);
    String::from_utf8(data).unwrap()
}

#[test]
fn serves_the_initial_release_and_persists_it() {
    let f = fixture(Some("1"));
    assert_eq!(read_all(&f.core, "index.php"), "release 1");
    assert_eq!(read_all(&f.core, "a/b/c/deep.txt"), "deep 1");
    let st = state::load(&f.tmp.path().join("state")).unwrap().unwrap();
    assert_eq!(st.active, "1");
}

#[test]
fn empty_root_without_state_or_initial() {
    let f = fixture(None);
    assert_eq!(f.core.active().name(), None);
    let (attr, _) = f.core.getattr(ROOT_INO).unwrap();
    assert_eq!(attr.kind, FileType::Directory);
    assert_eq!(attr.perm, 0o555);
    assert!(matches!(
        f.core
            .lookup(&Caller::ROOT, ROOT_INO, OsStr::new("index.php"))
            .unwrap(),
        Lookup::Negative(_)
    ));
    let fh = f.core.opendir(&Caller::ROOT, ROOT_INO).unwrap();
    let mut names = Names::default();
    f.core.readdir(fh, 0, &mut names).unwrap();
    assert_eq!(names.0, vec![".", ".."]);
}

#[test]
fn switch_changes_what_new_lookups_see_and_invalidates_root_names() {
    let f = fixture(Some("1"));
    let old_index = walk(&f.core, "index.php");
    let portal = walk(&f.core, "a").ino.0;
    walk(&f.core, "a/b/c/deep.txt");
    assert!(matches!(
        f.core.lookup(&Caller::ROOT, ROOT_INO, OsStr::new("only-in-2")).unwrap(),
        Lookup::Negative(ttl) if ttl > Duration::ZERO
    ));
    assert_eq!(
        f.core.activate("2", "test").unwrap().message,
        "switched from 1 to 2"
    );
    assert_eq!(f.recorder.sorted(), root_names_looked_up(portal));
    let new_index = walk(&f.core, "index.php");
    assert_ne!(
        old_index.ino, new_index.ino,
        "a new release never reuses an inode"
    );
    assert_eq!(read_all(&f.core, "index.php"), "release 2");
    assert_eq!(read_all(&f.core, "a/b/c/deep.txt"), "deep 2");
    assert_eq!(read_all(&f.core, "only-in-2"), "new");
    // The next switch only invalidates what was looked up since.
    f.recorder.calls.lock().clear();
    f.core.activate("1", "test").unwrap();
    assert_eq!(f.recorder.sorted(), root_names_looked_up(portal));
}

#[test]
fn open_handles_and_old_directories_keep_their_release() {
    let f = fixture(Some("1"));
    let file = walk(&f.core, "index.php").ino.0;
    let fh = f.core.open(file, libc::O_RDONLY).unwrap();
    let dir_c = walk(&f.core, "a/b/c").ino.0;
    f.core.activate("2", "test").unwrap();
    assert_eq!(f.core.read(file, fh, 0, 100).unwrap(), b"release 1");
    // A working directory inside the old release resolves in the old release.
    let deep = entry(&f.core, dir_c, "deep.txt").ino.0;
    let fh2 = f.core.open(deep, libc::O_RDONLY).unwrap();
    assert_eq!(f.core.read(deep, fh2, 0, 100).unwrap(), b"deep 1");
    let usage = f.core.status().usage;
    let old = usage.iter().find(|u| u.name == "1").unwrap();
    assert_eq!(old.open_handles, 2);
    assert!(old.live_inodes >= 4);
    f.core.release(fh);
    f.core.release(fh2);
    assert_eq!(f.core.open_handles(), 0);
}

#[test]
fn bad_names_change_nothing() {
    let f = fixture(Some("1"));
    std::fs::write(f.tmp.path().join("releases/file"), "x").unwrap();
    std::os::unix::fs::symlink("/etc", f.tmp.path().join("releases/evil")).unwrap();
    for bad in ["", ".", "..", "../1", "a/b", "3", "file", "evil", ".hidden"] {
        let err = f.core.activate(bad, "test").unwrap_err();
        assert!(!err.contains('\n'), "one line: {err}");
        assert_eq!(f.core.active().name(), Some("1"), "after {bad:?}");
    }
    assert!(
        f.recorder.calls.lock().is_empty(),
        "no invalidation for a refused switch"
    );
    assert_eq!(
        state::load(&f.tmp.path().join("state"))
            .unwrap()
            .unwrap()
            .active,
        "1"
    );
}

#[test]
fn unpersistable_switch_is_refused() {
    let tmp = TempDir::new("core");
    write(&tmp, "1", "index.php", "1");
    write(&tmp, "2", "index.php", "2");
    let mut cfg = core_config(&tmp);
    cfg.state_path = tmp.path().join("no-such-dir/state");
    let core = served(cfg, Some("1")).unwrap();
    let err = core.activate("2", "test").unwrap_err();
    assert!(err.contains("cannot persist"), "{err}");
    assert_eq!(core.active().name(), Some("1"));
}

#[test]
fn restart_resumes_persisted_release_and_previous() {
    let f = fixture(Some("1"));
    f.core.activate("2", "test").unwrap();
    drop(f.core); // one daemon per state file
    let again = served(core_config(&f.tmp), Some("1")).unwrap();
    assert_eq!(
        again.active().name(),
        Some("2"),
        "state wins over --initial"
    );
    assert_eq!(again.active().previous.as_deref(), Some("1"));
    assert_eq!(
        again.rollback(None, "test").unwrap().message,
        "switched from 2 to 1"
    );
}

#[test]
fn corrupt_state_falls_back_to_initial() {
    let f = fixture(Some("1"));
    std::fs::write(f.tmp.path().join("state"), "active=../../etc\n").unwrap();
    drop(f.core); // one daemon per state file
    let again = served(core_config(&f.tmp), Some("2")).unwrap();
    assert_eq!(again.active().name(), Some("2"));
    drop(again);
    // A state switchfs wrote, naming a release that has gone since.
    let gone = state::PersistedState {
        active: "gone".into(),
        previous: None,
        history: crate::switch::history::History::default().activated("gone"),
    };
    state::StateFile::new(f.tmp.path().join("state"))
        .save(&gone)
        .unwrap();
    let again = served(core_config(&f.tmp), None).unwrap();
    assert_eq!(
        again.active().name(),
        None,
        "a vanished release is not guessed"
    );
}

#[test]
fn lookups_never_leave_the_release() {
    let f = fixture(Some("1"));
    for bad in ["..", ".", "", "a/b", "../releases"] {
        assert!(
            f.core
                .lookup(&Caller::ROOT, ROOT_INO, OsStr::new(bad))
                .is_err(),
            "{bad:?}"
        );
    }
    let link = walk(&f.core, "log");
    assert_eq!(link.kind, FileType::Symlink, "symlinks stay symlinks");
    // It climbs out of the release, so it is answered as what it reaches from releases/1
    // (see README, "Symlinks"): the deploy path's shared/log.
    let shared = f
        .core
        .switcher
        .releases()
        .path()
        .parent()
        .unwrap()
        .join("shared/log");
    assert_eq!(
        f.core.readlink(link.ino.0).unwrap(),
        shared.as_os_str().as_encoded_bytes()
    );
    // Looking up through a symlink as if it were a directory fails: nothing is followed.
    assert!(
        f.core
            .lookup(&Caller::ROOT, link.ino.0, OsStr::new("x"))
            .is_err()
    );
    assert!(f.core.open(link.ino.0, libc::O_RDONLY).is_err());
}

#[test]
fn writes_are_refused() {
    let f = fixture(Some("1"));
    let ino = walk(&f.core, "index.php").ino.0;
    for flags in [
        libc::O_WRONLY,
        libc::O_RDWR,
        libc::O_RDONLY | libc::O_TRUNC,
        libc::O_RDONLY | libc::O_CREAT,
    ] {
        let err = f.core.open(ino, flags).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EROFS));
    }
    assert_eq!(
        f.core.access(ino, libc::W_OK).unwrap_err().raw_os_error(),
        Some(libc::EROFS)
    );
    assert!(f.core.access(ino, libc::R_OK).is_ok());
}

#[derive(Default)]
struct Names(Vec<String>);

impl DirSink for Names {
    fn add(&mut self, _ino: u64, _offset: u64, _kind: FileType, name: &OsStr) -> bool {
        self.0.push(name.to_string_lossy().into_owned());
        false
    }
}

struct PlusNames {
    names: Vec<(String, Duration)>,
    room: usize,
}

impl DirPlusSink for PlusNames {
    fn add(&mut self, _offset: u64, name: &OsStr, _attr: &FileAttr, ttl: Duration) -> bool {
        if self.names.len() == self.room {
            return true;
        }
        self.names.push((name.to_string_lossy().into_owned(), ttl));
        false
    }
}

#[test]
fn listings_are_snapshots_of_their_release() {
    let f = fixture(Some("1"));
    let fh = f.core.opendir(&Caller::ROOT, ROOT_INO).unwrap();
    f.core.activate("2", "test").unwrap();
    let mut names = Names::default();
    f.core.readdir(fh, 0, &mut names).unwrap();
    names.0.sort();
    assert_eq!(names.0, vec![".", "..", "a", "index.php", "log"]);
    f.core.release(fh);
    let fh = f.core.opendir(&Caller::ROOT, ROOT_INO).unwrap();
    let mut names = Names::default();
    f.core.readdir(fh, 0, &mut names).unwrap();
    names.0.sort();
    assert_eq!(names.0, vec![".", "..", "a", "index.php", "only-in-2"]);
}

#[test]
fn readdirplus_counts_only_what_was_sent() {
    let f = fixture(Some("1"));
    let dir = walk(&f.core, "a/b/c").ino.0;
    for i in 0..5 {
        write(&f.tmp, "1", &format!("a/b/c/f{i}"), "x");
    }
    let before = f.core.live_inodes();
    let fh = f.core.opendir(&Caller::ROOT, dir).unwrap();
    // Room for the two dots and three files: the fourth file does not fit.
    let mut sink = PlusNames {
        names: Vec::new(),
        room: 5,
    };
    f.core.readdirplus(fh, 0, &mut sink).unwrap();
    assert_eq!(sink.names.len(), 5);
    assert_eq!(
        f.core.live_inodes(),
        before + 3,
        "dots and the unsent entry not counted"
    );
    // Root entries come with a zero timeout, so the kernel revalidates them by lookup.
    let root = f.core.opendir(&Caller::ROOT, ROOT_INO).unwrap();
    let mut sink = PlusNames {
        names: Vec::new(),
        room: 100,
    };
    f.core.readdirplus(root, 0, &mut sink).unwrap();
    assert!(sink.names.iter().all(|(_, ttl)| *ttl == Duration::ZERO));
}

#[test]
fn forget_releases_everything() {
    let f = fixture(Some("1"));
    let attr = walk(&f.core, "a/b/c/deep.txt");
    assert_eq!(
        f.core.live_inodes(),
        3,
        "the top-level directory is a portal"
    );
    f.core.activate("2", "test").unwrap();
    // The kernel forgets the old release's inodes once nothing uses them; inode numbers
    // come from a counter, so b, c and deep.txt are the three numbers up to deep.txt's.
    let deep = attr.ino.0;
    f.core.forget(deep, 1);
    f.core.forget(deep - 1, 1);
    f.core.forget(deep - 2, 1);
    assert_eq!(f.core.live_inodes(), 0);
    let usage = f.core.status().usage;
    let one = usage.iter().find(|u| u.name == "1").unwrap();
    assert!(!one.in_use, "release 1 is no longer in use");
    assert!(one.unused_since.is_some());
    assert!(f.core.wait_unused("1", Duration::ZERO));
}

#[test]
fn root_answers_the_control_xattr_only_there() {
    let f = fixture(Some("1"));
    let name = OsStr::new(CONTROL_XATTR);
    let expected = f.tmp.path().join("ctl.sock");
    assert_eq!(
        f.core
            .getxattr(&Caller::ROOT, ROOT_INO, name, 4096)
            .unwrap(),
        XattrAnswer::Data(expected.as_os_str().as_encoded_bytes().to_vec())
    );
    assert!(matches!(
        f.core.getxattr(&Caller::ROOT, ROOT_INO, name, 0).unwrap(),
        XattrAnswer::Size(n) if n as usize == expected.as_os_str().len()
    ));
    assert_eq!(
        f.core
            .getxattr(&Caller::ROOT, ROOT_INO, name, 2)
            .unwrap_err()
            .raw_os_error(),
        Some(libc::ERANGE)
    );
    let file = walk(&f.core, "index.php").ino.0;
    assert!(f.core.getxattr(&Caller::ROOT, file, name, 4096).is_err());
}

#[test]
fn deleted_active_release_is_reported_and_recoverable() {
    let f = fixture(Some("1"));
    walk(&f.core, "index.php");
    std::fs::remove_dir_all(f.tmp.path().join("releases/1")).unwrap();
    let st = f.core.status();
    assert!(st.active_problem.unwrap().contains("deleted"));
    assert!(matches!(
        f.core.lookup(&Caller::ROOT, ROOT_INO, OsStr::new("a")),
        Ok(Lookup::Negative(_)) | Err(_)
    ));
    f.core.activate("2", "test").unwrap();
    assert!(f.core.status().active_problem.is_none());
    assert_eq!(read_all(&f.core, "index.php"), "release 2");
}

#[test]
fn negative_root_names_are_bounded() {
    let f = fixture(Some("1"));
    let mut zero = 0;
    for i in 0..100_010 {
        let name = OsString::from(format!("missing-{i}"));
        if let Lookup::Negative(ttl) = f.core.lookup(&Caller::ROOT, ROOT_INO, &name).unwrap()
            && ttl == Duration::ZERO
        {
            zero += 1;
        }
    }
    assert_eq!(zero, 10, "past the cap, negatives are not cached");
}

#[test]
fn without_open_tracking_reads_go_by_inode_and_keep_their_release() {
    let tmp = TempDir::new("core");
    for rel in ["1", "2"] {
        write(&tmp, rel, "index.php", &format!("release {rel}"));
    }
    let mut cfg = core_config(&tmp);
    cfg.track_opens = false;
    let core = served(cfg, Some("1")).unwrap();
    let ino = walk(&core, "index.php").ino.0;
    let err = core.open(ino, libc::O_RDONLY).unwrap_err();
    assert_eq!(
        err.raw_os_error(),
        Some(libc::ENOSYS),
        "kernel opens files itself"
    );
    let err = core.open(ino, libc::O_RDWR).unwrap_err();
    assert_eq!(
        err.raw_os_error(),
        Some(libc::EROFS),
        "write intent still refused"
    );
    core.activate("2", "test").unwrap();
    assert_eq!(core.read(ino, 0, 0, 100).unwrap(), b"release 1");
    let new = walk(&core, "index.php").ino.0;
    assert_eq!(core.read(new, 0, 0, 100).unwrap(), b"release 2");
    assert_eq!(core.read(new, 0, 8, 100).unwrap(), b"2", "offsets honoured");
    assert!(core.read(new, 12345, 0, 10).is_err(), "unknown handle");
}

#[test]
fn prune_spares_active_previous_and_in_use_releases() {
    let f = fixture(Some("1"));
    for rel in ["3", "4", "5"] {
        write(&f.tmp, rel, "index.php", rel);
    }
    f.core.activate("2", "test").unwrap();
    let held = walk(&f.core, "index.php").ino.0; // release 2 in use by the kernel
    f.core.activate("5", "test").unwrap();
    // Releases: 1 2 3 4 5; active 5, previous 2 (in use too), keep the newest 1.
    let dry = f.core.prune(1, false).unwrap();
    assert_eq!(
        dry,
        "would delete 1\nkeep 2 (active or previous)\nwould delete 3\nwould delete 4\n\
         keep 5 (one of the newest 1; active or previous)\ndry run: pass --yes to delete\n"
    );
    assert_eq!(f.core.list().unwrap().len(), 5, "a dry run deletes nothing");
    let done = f.core.prune(1, true).unwrap();
    assert_eq!(
        done,
        "deleted 1\nkeep 2 (active or previous)\ndeleted 3\ndeleted 4\n"
    );
    assert_eq!(f.core.list().unwrap(), vec!["2", "5"]);
    f.core.forget(held, 1);
    assert_eq!(
        f.core.prune(5, true).unwrap(),
        "nothing to prune: 2 releases, keeping 5\n"
    );
    assert_eq!(
        f.core.prune(5, false).unwrap(),
        "keep 2 (one of the newest 5; active or previous)\n\
         keep 5 (one of the newest 5; active or previous)\n\
         nothing to prune: 2 releases, keeping 5\n",
        "a dry run accounts for every release"
    );
}

#[test]
fn in_use_old_release_is_kept_by_prune_and_drains_when_released() {
    let f = fixture(Some("1"));
    write(&f.tmp, "3", "index.php", "3");
    let ino = walk(&f.core, "a/b/c/deep.txt").ino.0;
    let fh = f.core.open(ino, libc::O_RDONLY).unwrap();
    f.core.activate("2", "test").unwrap();
    f.core.activate("3", "test").unwrap();
    // Release 1 is neither active nor previous, but a handle still reads from it.
    assert!(
        f.core
            .prune(1, true)
            .unwrap()
            .contains("keep 1 (still in use)")
    );
    assert!(!f.core.wait_unused("1", Duration::from_millis(50)));
    let st = f.core.status();
    let one = st.usage.iter().find(|u| u.name == "1").unwrap();
    assert!(one.in_use && one.open_handles == 1 && one.unused_since.is_none());
    let core = Arc::new(f.core);
    let waiter = {
        let core = core.clone();
        std::thread::spawn(move || core.wait_unused("1", Duration::from_secs(10)))
    };
    core.release(fh);
    assert!(waiter.join().unwrap(), "drains once the handle is closed");
    let st = core.status();
    let one = st.usage.iter().find(|u| u.name == "1").unwrap();
    assert!(!one.in_use && one.unused_since.is_some());
    assert!(
        one.live_inodes >= 3,
        "cached inodes alone do not make it in use"
    );
}

#[test]
fn a_tight_descriptor_budget_is_respected_and_everything_still_works() {
    let tmp = TempDir::new("core");
    for i in 0..200 {
        write(
            &tmp,
            "1",
            &format!("d{}/f{i}.php", i % 7),
            &format!("file {i}"),
        );
    }
    write(&tmp, "2", "index.php", "two");
    let mut cfg = core_config(&tmp);
    cfg.inode_fds = 16;
    cfg.track_opens = false;
    let core = served(cfg, Some("1")).unwrap();
    let mut inos = Vec::new();
    for i in 0..200 {
        inos.push(walk(&core, &format!("d{}/f{i}.php", i % 7)).ino.0);
        assert!(core.inodes.fds().0 <= 16, "budget exceeded at {i}");
    }
    assert_eq!(
        core.live_inodes(),
        200,
        "inodes stay, only descriptors are closed (d0..d6 are portals)"
    );
    // Evicted inodes reopen by path, and still read their own content.
    for (i, ino) in inos.iter().enumerate() {
        assert_eq!(
            core.read(*ino, 0, 0, 100).unwrap(),
            format!("file {i}").as_bytes()
        );
        assert!(core.getattr(*ino).is_ok());
    }
    // Switching needs descriptors of its own: never starved by the inodes.
    core.activate("2", "test").unwrap();
    let two = walk(&core, "index.php").ino.0;
    assert_eq!(core.read(two, 0, 0, 10).unwrap(), b"two");
    // A file replaced under its path is never served under the old inode.
    std::fs::remove_file(tmp.path().join("releases/1/d0/f0.php")).unwrap();
    write(&tmp, "1", "d0/f0.php", "impostor");
    for ino in &inos[1..40] {
        let _ = core.read(*ino, 0, 0, 10); // push f0's descriptor out of the budget
    }
    match core.read(inos[0], 0, 0, 100) {
        Ok(data) => assert_eq!(
            data, b"file 0",
            "still the original, via its open descriptor"
        ),
        Err(e) => assert_eq!(e.raw_os_error(), Some(libc::ESTALE)),
    }
}

#[test]
fn top_level_directories_are_portals_that_follow_the_active_release() {
    let f = fixture(Some("1"));
    let a1 = walk(&f.core, "a");
    let deep1 = walk(&f.core, "a/b/c/deep.txt");
    f.core.activate("2", "test").unwrap();
    let a2 = walk(&f.core, "a");
    assert_eq!(
        a1.ino, a2.ino,
        "same inode across switches: its dentry (a cwd) survives"
    );
    assert!(crate::fs::portals::follows_active(a1.ino.0));
    // Below the portal, entries are bound to their release as usual.
    let deep2 = walk(&f.core, "a/b/c/deep.txt");
    assert_ne!(deep1.ino, deep2.ino);
    assert_eq!(f.core.read(deep2.ino.0, 0, 0, 100).unwrap(), b"deep 2");
    assert_eq!(f.core.read(deep1.ino.0, 0, 0, 100).unwrap(), b"deep 1");
    // A lookup under the portal answers from the active release, and is recorded.
    f.recorder.calls.lock().clear();
    assert!(matches!(
        f.core
            .lookup(&Caller::ROOT, a2.ino.0, OsStr::new("nope"))
            .unwrap(),
        Lookup::Negative(_)
    ));
    f.core.activate("1", "test").unwrap();
    assert!(
        f.recorder
            .sorted()
            .contains(&format!("entry {} nope", a2.ino.0))
    );
    // Listing and attributes come from the active release; forgetting a portal is a no-op.
    let fh = f.core.opendir(&Caller::ROOT, a2.ino.0).unwrap();
    let mut names = Names::default();
    f.core.readdir(fh, 0, &mut names).unwrap();
    assert_eq!(names.0, vec![".", "..", "b"]);
    f.core.forget(a2.ino.0, 5);
    assert!(f.core.getattr(a2.ino.0).is_ok());
}

/// README "Rollback": each rollback steps one release further back, never returns to the
/// release it just left, and the history survives a restart.
#[test]
fn rollback_steps_back_through_the_history_and_survives_restarts() {
    let f = fixture(Some("1"));
    for rel in ["3", "4"] {
        write(&f.tmp, rel, "index.php", &format!("release {rel}"));
    }
    for rel in ["2", "3", "4"] {
        f.core.activate(rel, "test").unwrap();
    }
    let back = |core: &Served| core.rollback(None, "test").map(|s| s.to);
    assert_eq!(back(&f.core).as_deref(), Ok("3"));
    assert_eq!(back(&f.core).as_deref(), Ok("2"), "not back to 4");
    let st = f.core.status();
    assert_eq!(st.history.entries(), ["1", "2"]);
    assert_eq!(st.history.rolled_back(), ["4", "3"]);
    // A restart resumes the history and the marks (the old daemon gives the state up first,
    // as at shutdown).
    f.core.stop_switching();
    let again = served(core_config(&f.tmp), None).unwrap();
    assert_eq!(again.active().name(), Some("2"));
    assert_eq!(back(&again).as_deref(), Ok("1"));
    let err = back(&again).unwrap_err();
    assert!(err.contains("no earlier release"), "{err}");
    assert_eq!(
        again.active().name(),
        Some("1"),
        "a refused rollback changes nothing"
    );
    // Activating a release rolled back from lifts its mark; --to picks from the history.
    again.activate("4", "test").unwrap();
    again.activate("3", "test").unwrap();
    assert_eq!(back(&again).as_deref(), Ok("4"));
    again.activate("2", "test").unwrap();
    let to = again.rollback(Some("1"), "test").unwrap();
    assert_eq!((to.from.as_deref(), to.to.as_str()), (Some("2"), "1"));
    let err = again.rollback(Some("9"), "test").unwrap_err();
    assert!(err.contains("not in the activation history"), "{err}");
}

#[test]
fn a_refused_rollback_keeps_the_history_and_deleted_releases_are_skipped() {
    let f = fixture(Some("1"));
    write(&f.tmp, "3", "index.php", "release 3");
    f.core.activate("2", "test").unwrap();
    f.core.activate("3", "test").unwrap();
    // The state file cannot be written: the rollback is refused and nothing changes.
    let before = f.core.history();
    let state = f.tmp.path().join("state");
    std::fs::remove_file(&state).unwrap();
    std::fs::create_dir(&state).unwrap();
    let err = f.core.rollback(None, "test").unwrap_err();
    assert!(err.contains("cannot persist"), "{err}");
    assert_eq!(f.core.history(), before);
    assert_eq!(f.core.active().name(), Some("3"));
    std::fs::remove_dir(&state).unwrap();
    // Release 2 was deleted meanwhile: the rollback goes past it.
    std::fs::remove_dir_all(f.tmp.path().join("releases/2")).unwrap();
    assert_eq!(f.core.rollback(None, "test").unwrap().to, "1");
}
