//! Symlinks that climb out of their release.
//!
//! Deploy tools link shared files relative to the release: Deployer runs `ln -nfs --relative`,
//! so `releases/1/.env -> ../../shared/.env`. Through `current -> releases/1` the kernel
//! resolves that from `releases/1/`, reaching `<deploy_path>/shared/.env`. Under the mount the
//! same link sits one level higher (`current/.env`), so resolved verbatim it would climb to
//! the mount's parent's parent: ENOENT, or worse, another file. So a relative target that
//! leaves the release root is answered as the absolute path it reaches from the release's
//! real directory; every other target (absolute, or relative and staying inside) is answered
//! verbatim and resolves inside the mount exactly as in `releases/N`.
//!
//! The daemon still never follows a link: this is text handed to the kernel, which resolves
//! it in the caller's view with the caller's permissions, as it would the native link.

use std::ffi::OsStr;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Component, Path, PathBuf};

/// The target to answer for a symlink at `link` (relative to the release root) whose
/// stored target is `target`, in a release whose real directory is `release_dir`.
pub(crate) fn target_seen_through_mount(release_dir: &Path, link: &Path, target: &[u8]) -> Vec<u8> {
    if target.first() == Some(&b'/') || !leaves_release(link, target) {
        return target.to_vec();
    }
    // Collapse the leading `..` against the link's own directory: those components are
    // real directories of the release (lookups never follow links), so dropping one is what
    // the kernel's `..` does. The rest is kept verbatim, so a symlink further along still
    // resolves as on the host.
    let mut base: PathBuf = release_dir.join(link.parent().unwrap_or(Path::new("")));
    let mut rest: &[u8] = target;
    loop {
        let (head, tail) = split_first_component(rest);
        match head {
            b"." | b"" if !tail.is_empty() => rest = tail,
            b".." => {
                base.pop();
                rest = tail;
                if tail.is_empty() {
                    break;
                }
            }
            _ => break,
        }
    }
    let mut out = base.into_os_string().into_vec();
    if !rest.is_empty() {
        if out.last() != Some(&b'/') {
            out.push(b'/');
        }
        out.extend_from_slice(rest);
    }
    out
}

/// Whether a relative `target` of a link at `link` climbs above the release root, counting
/// depth component by component.
fn leaves_release(link: &Path, target: &[u8]) -> bool {
    let mut depth: i64 = link
        .parent()
        .map(|p| {
            p.components()
                .filter(|c| matches!(c, Component::Normal(_)))
                .count() as i64
        })
        .unwrap_or(0);
    for comp in Path::new(OsStr::from_bytes(target)).components() {
        match comp {
            Component::ParentDir => {
                depth -= 1;
                if depth < 0 {
                    return true;
                }
            }
            Component::Normal(_) => depth += 1,
            _ => {}
        }
    }
    false
}

fn split_first_component(s: &[u8]) -> (&[u8], &[u8]) {
    match s.iter().position(|b| *b == b'/') {
        Some(i) => {
            let mut tail = &s[i + 1..];
            while tail.first() == Some(&b'/') {
                tail = &tail[1..];
            }
            (&s[..i], tail)
        }
        None => (s, &[]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(link: &str, target: &str) -> String {
        let out = target_seen_through_mount(
            Path::new("/srv/app/releases/7"),
            Path::new(link),
            target.as_bytes(),
        );
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn links_that_stay_inside_are_verbatim() {
        assert_eq!(seen("a", "b"), "b");
        assert_eq!(seen("public/storage", "../storage/app"), "../storage/app");
        assert_eq!(seen("x/y/z", "../../q"), "../../q");
        assert_eq!(seen("a", "/etc/passwd"), "/etc/passwd");
        assert_eq!(seen("a", "./b/../c"), "./b/../c");
    }

    #[test]
    fn links_that_climb_out_become_absolute() {
        assert_eq!(seen(".env", "../../shared/.env"), "/srv/app/shared/.env");
        assert_eq!(
            seen("storage", "../../shared/storage"),
            "/srv/app/shared/storage"
        );
        assert_eq!(
            seen("public/storage", "../../../shared/storage/app/public"),
            "/srv/app/shared/storage/app/public"
        );
        assert_eq!(seen("up", ".."), "/srv/app/releases");
        assert_eq!(seen("up", "../"), "/srv/app/releases");
        assert_eq!(seen("sib", "../6/x"), "/srv/app/releases/6/x");
        assert_eq!(seen("a", "./../../shared//x"), "/srv/app/shared//x");
        // Climbing out after going down: kept verbatim past the first normal component.
        assert_eq!(seen("a", "b/../../x"), "/srv/app/releases/7/b/../../x");
    }
}
