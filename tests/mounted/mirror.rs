//! The mount as a read-only mirror of the active release (README "How it works, and the rules
//! it keeps": *Only the root and the top-level directories follow the pointer*,
//! *Confinement*, *Symlinks resolve as through `current -> releases/N`*, *Read-only*).

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use crate::common::*;

/// Everything a differential walk compares: type, mode, size, owner, link target, content.
fn snapshot(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let path = entry.path();
            let rel = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            let meta = fs::symlink_metadata(&path).unwrap();
            let ft = meta.file_type();
            let detail = if ft.is_symlink() {
                format!("link {}", fs::read_link(&path).unwrap().display())
            } else if ft.is_dir() {
                stack.push(path.clone());
                "dir".to_string()
            } else {
                format!("file {:?}", fs::read(&path).unwrap())
            };
            let mtime = if ft.is_symlink() { 0 } else { meta.mtime() };
            out.insert(
                rel,
                format!(
                    "{detail} mode={:o} size={} uid={} gid={} nlink={} mtime={mtime}",
                    meta.mode(),
                    meta.len(),
                    meta.uid(),
                    meta.gid(),
                    if ft.is_dir() { 0 } else { meta.nlink() },
                ),
            );
        }
    }
    out
}

#[test]
fn mirrors_the_active_release_exactly() {
    let fx = Fixture::new("mirror");
    fx.two_releases();
    let rel = fx.releases().join("1");
    fs::set_permissions(rel.join("index.php"), fs::Permissions::from_mode(0o640)).unwrap();
    // Relative links that climb out of the release read differently through the mount (see
    // README, "Symlinks"); tests/switch_safety.rs compares those with `current -> releases/N`.
    std::os::unix::fs::symlink("static/same-size.txt", rel.join("storage")).unwrap();
    std::os::unix::fs::symlink("/etc/hostname", rel.join("abs-link")).unwrap();
    fs::hard_link(rel.join("index.php"), rel.join("hardlink.php")).unwrap();
    fs::write(rel.join("empty"), "").unwrap();
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    fs::write(rel.join("static/big.bin"), &big).unwrap();
    let _d = fx.start(&["--initial", "1"]);

    assert_eq!(snapshot(&fx.mnt()), snapshot(&rel), "differential walk");
    assert_eq!(fs::read(fx.m("static/big.bin")).unwrap(), big);
    // A hard link inside the release is one inode through the mount too.
    let a = fs::metadata(fx.m("index.php")).unwrap();
    let b = fs::metadata(fx.m("hardlink.php")).unwrap();
    assert_eq!(a.ino(), b.ino());
}

#[test]
fn symlinks_stay_symlinks_and_are_never_followed_by_the_daemon() {
    let fx = Fixture::new("links");
    fx.two_releases();
    let rel = fx.releases().join("1");
    std::os::unix::fs::symlink("../../outside", rel.join("up")).unwrap();
    std::os::unix::fs::symlink("loop", rel.join("loop")).unwrap();
    fs::write(fx.root.join("outside"), "secret").unwrap();
    let _d = fx.start(&["--initial", "1"]);

    let meta = fs::symlink_metadata(fx.m("up")).unwrap();
    assert!(meta.file_type().is_symlink());
    // It climbs out of the release, so it reads as the absolute path it reaches from
    // releases/1 (README, "Symlinks"): what `current -> releases/1` would give too. The
    // kernel resolves it with the caller's rights; the daemon never opened it.
    assert_eq!(fs::read_link(fx.m("up")).unwrap(), fx.root.join("outside"));
    assert_eq!(meta.len(), fx.root.join("outside").as_os_str().len() as u64);
    assert_eq!(
        fs::read(fx.m("up")).unwrap(),
        fs::read(fx.root.join("releases/1/up")).unwrap()
    );
    // A symlink loop is an error for the caller, not a hang or a crash of the daemon.
    let err = fs::read(fx.m("loop")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ELOOP));
    // `..` above the root is the kernel's business: it leaves the mount, it never reaches
    // the releases directory through us.
    let parent = fs::canonicalize(fx.mnt().join("..")).unwrap();
    assert_eq!(parent, fs::canonicalize(&fx.root).unwrap());
    assert!(
        fx.m("../releases").exists(),
        "that is the fixture's own dir, via the kernel"
    );
    assert!(
        !fx.m("releases").exists(),
        "the releases dir is not visible inside the mount"
    );
    // Still serving.
    assert_eq!(fx.read("index.php"), "<?php echo 'release 1';");
}

#[test]
fn every_write_is_refused_with_erofs() {
    let fx = Fixture::new("erofs");
    fx.two_releases();
    let _d = fx.start(&["--initial", "1"]);
    let erofs = |r: std::io::Result<()>, what: &str| {
        let err = r.expect_err(what);
        assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{what}: {err}");
    };
    erofs(fs::write(fx.m("new.txt"), "x"), "create");
    erofs(fs::write(fx.m("index.php"), "x"), "truncate");
    erofs(
        fs::OpenOptions::new()
            .append(true)
            .open(fx.m("index.php"))
            .map(drop),
        "append",
    );
    erofs(fs::create_dir(fx.m("newdir")), "mkdir");
    erofs(fs::remove_file(fx.m("index.php")), "unlink");
    erofs(fs::remove_dir(fx.m("static")), "rmdir");
    erofs(fs::rename(fx.m("index.php"), fx.m("x.php")), "rename");
    erofs(
        fs::set_permissions(fx.m("index.php"), fs::Permissions::from_mode(0o777)),
        "chmod",
    );
    erofs(std::os::unix::fs::symlink("x", fx.m("newlink")), "symlink");
    erofs(fs::hard_link(fx.m("index.php"), fx.m("hl")), "link");
    let path = CString::new(fx.m("index.php").as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: valid C strings and buffer.
    let ret = unsafe {
        libc::setxattr(
            path.as_ptr(),
            c"user.x".as_ptr(),
            b"1".as_ptr().cast(),
            1,
            0,
        )
    };
    assert_eq!(ret, -1);
    assert_eq!(
        std::io::Error::last_os_error().raw_os_error(),
        Some(libc::EROFS)
    );
    assert_eq!(
        fx.read("index.php"),
        "<?php echo 'release 1';",
        "nothing changed"
    );
}

#[test]
fn statfs_xattrs_and_mount_options() {
    let fx = Fixture::new("meta");
    fx.two_releases();
    let file = fx.releases().join("1/index.php");
    let c = CString::new(file.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: valid C strings and buffer.
    let ret = unsafe {
        libc::setxattr(
            c.as_ptr(),
            c"user.build".as_ptr(),
            b"abc123".as_ptr().cast(),
            6,
            0,
        )
    };
    let xattrs_supported = ret == 0;
    let _d = fx.start(&["--initial", "1"]);

    let mnt = CString::new(fx.m("index.php").as_os_str().as_encoded_bytes()).unwrap();
    if xattrs_supported {
        let mut buf = [0u8; 64];
        // SAFETY: valid C strings and buffer.
        let n = unsafe {
            libc::getxattr(
                mnt.as_ptr(),
                c"user.build".as_ptr(),
                buf.as_mut_ptr().cast(),
                64,
            )
        };
        assert_eq!(&buf[..n as usize], b"abc123");
        // SAFETY: as above.
        let n = unsafe { libc::listxattr(mnt.as_ptr(), buf.as_mut_ptr().cast(), 64) };
        assert!(buf[..n as usize].windows(10).any(|w| w == b"user.build"));
    } else {
        let mut buf = [0u8; 64];
        // SAFETY: as above.
        let n = unsafe {
            libc::getxattr(
                mnt.as_ptr(),
                c"user.build".as_ptr(),
                buf.as_mut_ptr().cast(),
                64,
            )
        };
        assert_eq!(n, -1, "no xattr on the host, none through the mount");
    }
    // statfs answers for the host filesystem.
    let out = Command::new("stat")
        .args(["-f", "-c", "%b"])
        .arg(fx.mnt())
        .output()
        .unwrap();
    assert!(out.status.success());
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let line = info
        .lines()
        .find(|l| l.split(' ').nth(4) == Some(fx.mnt().to_str().unwrap()))
        .expect("mount listed in mountinfo");
    assert!(line.contains("default_permissions"), "{line}");
    assert!(line.contains(" ro,") || line.contains(" ro "), "{line}");
    assert_eq!(
        line.contains("allow_other"),
        is_root(),
        "allow_other exactly when root: {line}"
    );
}

#[test]
fn file_modes_are_enforced_for_other_users() {
    let fx = Fixture::new("perm");
    fx.two_releases();
    let rel = fx.releases().join("1");
    fs::write(rel.join("secret.php"), "<?php $password = 'x';").unwrap();
    fs::set_permissions(rel.join("secret.php"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::set_permissions(&rel, fs::Permissions::from_mode(0o755)).unwrap();
    fx.open_up_for_others();
    let _d = fx.start(&["--initial", "1"]);
    if !is_root() {
        // Without root there is no allow_other: other users cannot even see the mount.
        // The mount options test checks that; here the owner can read everything.
        assert!(fs::read(fx.m("secret.php")).is_ok());
        return;
    }
    let cat_as_nobody = |path: &Path| as_nobody(&["cat", path.to_str().unwrap()]);
    let denied = cat_as_nobody(&fx.m("secret.php"));
    assert!(!denied.status.success());
    assert!(
        String::from_utf8_lossy(&denied.stderr).contains("Permission denied"),
        "{}",
        String::from_utf8_lossy(&denied.stderr)
    );
    let native = cat_as_nobody(&rel.join("secret.php"));
    assert!(!native.status.success(), "same as the native directory");
    let allowed = cat_as_nobody(&fx.m("index.php"));
    assert!(
        allowed.status.success(),
        "{}",
        String::from_utf8_lossy(&allowed.stderr)
    );
    assert_eq!(stdout(&allowed), "<?php echo 'release 1';");
}

#[test]
fn empty_root_until_something_is_activated() {
    let fx = Fixture::new("empty");
    fx.two_releases();
    let d = fx.start(&[]);
    assert_eq!(fs::read_dir(fx.mnt()).unwrap().count(), 0);
    let err = fs::metadata(fx.m("index.php")).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
    assert!(
        d.log_text().contains("no release is active"),
        "warns: {}",
        d.log_text()
    );
    fx.activate("1");
    assert_eq!(fx.read("index.php"), "<?php echo 'release 1';");
}

#[test]
fn large_files_are_read_ahead_a_megabyte_at_a_time() {
    let fx = Fixture::new("readahead");
    fx.two_releases();
    let _d = fx.start(&["--initial", "1"]);
    let dev = fs::metadata(fx.mnt()).unwrap().dev();
    let knob = format!(
        "/sys/class/bdi/{}:{}/read_ahead_kb",
        libc::major(dev),
        libc::minor(dev)
    );
    let value: u32 = fs::read_to_string(&knob).unwrap().trim().parse().unwrap();
    if is_root() {
        assert_eq!(value, 1024, "{knob}");
    } else {
        assert!(value > 0, "without root the kernel default stays: {value}");
    }
}
