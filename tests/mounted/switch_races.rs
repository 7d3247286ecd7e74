//! What a switch must never do, tried with the race on a real mount: let a release's contents
//! be read under another release's permissions, lose a file a process holds open, keep
//! serving a replaced directory under an "already active" answer, show root-only xattrs,
//! or break the relative symlinks deploy tools make (README, "How it works, and the rules it
//! keeps").

use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;

use crate::common::*;

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// Release 1 has `private/` open to all, release 2 has it 0700 with a world-readable file
/// inside: as on the host, `nobody` must never read release 2's file, whatever the switch is
/// doing. The kernel keeps one inode for `private/` (a portal) across switches, so this is
/// the case where it could check release 1's modes and then read release 2's contents.
#[test]
fn permissions_never_lag_contents_across_switches() {
    assert!(
        is_root(),
        "this test reads as user nobody: run the tests as root"
    );
    let fx = Fixture::new("permlag");
    fx.write("1", "private/secret", "public-one\n");
    fx.write("2", "private/secret", "SECRET-TWO\n");
    fx.write("1", "index.php", "1");
    fx.write("2", "index.php", "2");
    chmod(&fx.releases().join("1/private"), 0o755);
    chmod(&fx.releases().join("2/private"), 0o700);
    for rel in ["1", "2"] {
        chmod(&fx.releases().join(rel).join("private/secret"), 0o644);
        chmod(&fx.releases().join(rel), 0o755);
    }
    fx.open_up_for_others();
    let _d = fx.start(&["--initial", "1"]);

    let stop = fx.root.join("stop");
    let script = format!(
        "while [ ! -e {stop} ]; do cat {file} 2>/dev/null || echo denied; done",
        stop = stop.display(),
        file = fx.m("private/secret").display()
    );
    let reader = nobody_shell(&script)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let switches = 400;
    for i in 0..switches {
        fx.activate(if i % 2 == 0 { "2" } else { "1" });
    }
    fx.activate("1");
    fs::write(&stop, "").unwrap();
    let out = reader.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let leaked = text.matches("SECRET-TWO").count();
    let served = text.matches("public-one").count();
    let denied = text.matches("denied").count();
    assert_eq!(
        leaked, 0,
        "nobody read release 2's 0700 directory {leaked} times in {switches} switches \
         ({served} reads of release 1, {denied} denied)"
    );
    assert!(
        served > 0 && denied > 0,
        "the reader never raced: {served} served, {denied} denied"
    );
}

/// A file a process holds open keeps its release to the end, also after the descriptor
/// budget closed the daemon's own descriptor for it and the release was deleted natively
/// (`rm -rf`, Capistrano's cleanup): the host would keep the file alive for that process.
#[test]
fn a_held_file_survives_eviction_and_deletion_of_its_release() {
    let fx = Fixture::new("heldfile");
    fx.two_releases();
    let big: Vec<u8> = (0..64u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    fs::create_dir_all(fx.releases().join("3")).unwrap();
    fs::write(fx.releases().join("3/big.bin"), &big).unwrap();
    for i in 0..5000 {
        fx.write("3", &format!("many/d{}/f{i}", i % 50), &format!("{i}"));
    }
    // A small open-file limit, so reading 5,000 files must close descriptors.
    fx.nofile.store(1200, Ordering::Relaxed);
    let _d = fx.start(&["--initial", "3"]);

    let mut held = fs::File::open(fx.m("big.bin")).unwrap();
    let mut head = vec![0u8; 2 << 20];
    held.read_exact(&mut head).unwrap();
    assert_eq!(head, big[..2 << 20]);
    // SAFETY: a private read-only map of a file we hold open; unmapped below.
    let map = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            big.len(),
            libc::PROT_READ,
            libc::MAP_PRIVATE,
            std::os::fd::AsRawFd::as_raw_fd(&held),
            0,
        )
    };
    assert_ne!(map, libc::MAP_FAILED);
    for i in 0..5000 {
        assert_eq!(fx.read(&format!("many/d{}/f{i}", i % 50)), format!("{i}"));
    }
    fx.activate("2");
    let st = Command::new("rm")
        .arg("-rf")
        .arg(fx.releases().join("3"))
        .status()
        .unwrap();
    assert!(st.success());
    // Drop what the page cache holds, so every byte below is read through the daemon.
    fs::write("/proc/sys/vm/drop_caches", "1").unwrap();

    let mut rest = Vec::new();
    held.seek(SeekFrom::Start(2 << 20)).unwrap();
    held.read_to_end(&mut rest)
        .unwrap_or_else(|e| panic!("reading the held file: {e}"));
    assert!(
        rest == big[2 << 20..],
        "the held file read back wrong after its release was deleted"
    );
    // SAFETY: `map` covers big.len() readable bytes (a missing page would SIGBUS the test).
    let mapped = unsafe { std::slice::from_raw_parts(map.cast::<u8>(), big.len()) };
    let step = 1 << 16;
    for off in (0..big.len()).step_by(step) {
        assert_eq!(mapped[off], big[off], "mapped byte {off}");
    }
    // SAFETY: unmapping exactly what was mapped.
    unsafe { libc::munmap(map, big.len()) };
    assert_eq!(fx.read("index.php"), "<?php echo 'release 2';");
}

/// `activate N` while N is active checks N again: a directory replaced under the same name
/// is switched to, and a name that no longer is a valid release is refused while the
/// directory already served stays.
#[test]
fn activating_the_active_release_validates_it_again() {
    let fx = Fixture::new("reactivate");
    fx.two_releases();
    let _d = fx.start(&["--initial", "2"]);
    let again = fx.ctl(&["activate", "2"]);
    assert!(again.status.success());
    assert!(
        stdout(&again).contains("already active"),
        "{}",
        stdout(&again)
    );

    let r2 = fx.releases().join("2");
    fs::rename(&r2, fx.releases().join("2.bak")).unwrap();
    fx.write("2", "index.php", "rebuilt 2");
    let out = fx.ctl(&["activate", "2"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout(&out).contains("re-activated"), "{}", stdout(&out));
    assert_eq!(fx.read("index.php"), "rebuilt 2");
    let status = stdout(&fx.ctl(&["status", "--json"]));
    assert!(
        status.contains("\"previous\":null") || status.contains("\"previous\": null"),
        "{status}"
    );

    fs::remove_dir_all(&r2).unwrap();
    std::os::unix::fs::symlink("/etc", &r2).unwrap();
    let out = fx.ctl(&["activate", "2"]);
    let err = one_line_error(&out);
    assert!(err.contains("2"), "{err}");
    assert_eq!(
        fx.read("index.php"),
        "rebuilt 2",
        "the served directory stays"
    );
    assert!(!fx.m("passwd").exists());
}

/// `trusted.*` attributes are listed and read only by root, as on the host.
#[test]
fn trusted_xattrs_stay_hidden_from_unprivileged_users() {
    assert!(
        is_root(),
        "this test reads as user nobody: run the tests as root"
    );
    let fx = Fixture::new("xattr");
    fx.two_releases();
    let file = fx.releases().join("1/index.php");
    for (name, value) in [("trusted.secret", "root-only"), ("user.note", "anyone")] {
        let st = Command::new("setfattr")
            .args(["-n", name, "-v", value])
            .arg(&file)
            .status()
            .expect("setfattr (package attr) is needed");
        assert!(st.success(), "setfattr {name}");
    }
    chmod(&fx.releases().join("1"), 0o755);
    fx.open_up_for_others();
    let _d = fx.start(&["--initial", "1"]);
    let dump = |p: &Path, as_nobody_user: bool| {
        let args = [
            "getfattr",
            "-d",
            "-m",
            "-",
            "--absolute-names",
            p.to_str().unwrap(),
        ];
        let out = if as_nobody_user {
            as_nobody(&args)
        } else {
            Command::new(args[0]).args(&args[1..]).output().unwrap()
        };
        String::from_utf8_lossy(&out.stdout).replace(p.to_str().unwrap(), "F")
    };
    let native = dump(&file, true);
    let mounted = dump(&fx.m("index.php"), true);
    assert!(!native.contains("trusted"), "{native}");
    assert_eq!(native, mounted);
    assert!(mounted.contains("user.note"), "{mounted}");
    // getfattr skips values it cannot read, so ask for the bare list of names too.
    let native_names = list_xattr_names_as_nobody(&file);
    let mounted_names = list_xattr_names_as_nobody(&fx.m("index.php"));
    assert_eq!(mounted_names, native_names);
    assert_eq!(mounted_names, "user.note\\0");
    let as_root = dump(&fx.m("index.php"), false);
    assert!(as_root.contains("trusted.secret"), "{as_root}");
    let get = as_nobody(&[
        "getfattr",
        "-n",
        "trusted.secret",
        fx.m("index.php").to_str().unwrap(),
    ]);
    assert!(!get.status.success());
}

/// Links resolve through the mount as through `current -> releases/N`: absolute ones,
/// relative ones inside the release, relative ones that climb out to `shared/` (Deployer's
/// `ln -nfs --relative`), chains and dangling ones.
#[test]
fn symlinks_resolve_as_through_a_current_symlink() {
    let fx = Fixture::new("links");
    let shared = fx.root.join("shared");
    fs::create_dir_all(shared.join("storage/app")).unwrap();
    fs::write(shared.join(".env"), "APP_KEY=shared\n").unwrap();
    fs::write(shared.join("storage/app/log.txt"), "log line\n").unwrap();
    fx.write("1", "index.php", "<?php");
    fx.write("1", "public/index.php", "<?php front");
    fx.write("1", "config/app.php", "config");
    let r = fx.releases().join("1");
    let link = |target: &str, at: &str| {
        std::os::unix::fs::symlink(target, r.join(at)).unwrap();
    };
    link("../../shared/.env", ".env");
    link("../../shared/storage", "storage");
    link("../storage/app", "public/files");
    link("../../../shared/storage/app/log.txt", "public/log.txt");
    link("../config/app.php", "public/app.php");
    link(shared.join(".env").to_str().unwrap(), "abs-env");
    link(".env", "chain");
    link("../../shared/missing", "dangling");
    link("public/../../../shared/.env", "down-then-out");
    let current = fx.root.join("current");
    std::os::unix::fs::symlink("releases/1", &current).unwrap();
    let _d = fx.start(&["--initial", "1"]);

    for path in [
        ".env",
        "storage/app/log.txt",
        "public/files/log.txt",
        "public/log.txt",
        "public/app.php",
        "abs-env",
        "chain",
        "dangling",
        "down-then-out",
    ] {
        let native = fs::read_to_string(current.join(path)).map_err(|e| e.kind());
        let mounted = fs::read_to_string(fx.m(path)).map_err(|e| e.kind());
        assert_eq!(mounted, native, "{path}");
    }
    assert_eq!(
        fs::read_to_string(fx.m(".env")).unwrap(),
        "APP_KEY=shared\n"
    );
    // Links that stay inside read back verbatim.
    assert_eq!(
        fs::read_link(fx.m("public/app.php")).unwrap(),
        Path::new("../config/app.php")
    );
    assert_eq!(fs::read_link(fx.m("chain")).unwrap(), Path::new(".env"));
    // Listing through a link that leaves the release works like the native one.
    let names = |p: &Path| {
        let mut v: Vec<_> = fs::read_dir(p)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        names(&fx.m("storage/app")),
        names(&current.join("storage/app"))
    );
}

/// listxattr(2) of `path` by a child running as nobody, as text with NULs shown as `\0`.
fn list_xattr_names_as_nobody(path: &Path) -> String {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let mut fds = [0; 2];
    // SAFETY: fds is a writable array of two ints.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: the child only makes raw system calls (async-signal-safe) and exits.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let mut buf = [0u8; 4096];
        // SAFETY: raw system calls on valid buffers, then _exit without unwinding.
        unsafe {
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setresgid(65534, 65534, 65534) != 0
                || libc::setresuid(65534, 65534, 65534) != 0
            {
                libc::_exit(2);
            }
            let n = libc::listxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len());
            if n > 0 {
                libc::write(fds[1], buf.as_ptr().cast(), n as usize);
            }
            libc::_exit(if n < 0 { 1 } else { 0 });
        }
    }
    // SAFETY: closing our copy of the write end, then reading the read end we own.
    unsafe { libc::close(fds[1]) };
    let mut out = Vec::new();
    // SAFETY: fds[0] is the read end of the pipe, owned from here on.
    let mut reader = unsafe { <fs::File as std::os::fd::FromRawFd>::from_raw_fd(fds[0]) };
    reader.read_to_end(&mut out).unwrap();
    let mut status = 0;
    // SAFETY: waiting for our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "listxattr as nobody failed"
    );
    String::from_utf8_lossy(&out).replace('\0', "\\0")
}

/// Files held open by processes are pinned so they survive their release (above), but
/// pinning is bounded: a user holding hundreds of files open under a small open-file limit
/// must not eat the descriptors switches and lookups need.
#[test]
fn holding_many_files_open_cannot_starve_switches_or_lookups() {
    let fx = Fixture::new("pinflood");
    fx.two_releases();
    for i in 0..600 {
        fx.write("1", &format!("d/f{i}"), &format!("{i}"));
    }
    fx.nofile.store(256, Ordering::Relaxed);
    let _d = fx.start(&["--initial", "1"]);
    let held: Vec<fs::File> = (0..500)
        .map(|i| fs::File::open(fx.m(&format!("d/f{i}"))).unwrap())
        .collect();
    let status = fx.ctl(&["status"]);
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    fx.activate("2");
    assert_eq!(fx.read("index.php"), "<?php echo 'release 2';");
    fx.activate("1");
    assert_eq!(fx.read("d/f599"), "599");
    drop(held);
}
