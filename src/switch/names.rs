//! Validation of the two kinds of names switchfs accepts from outside: release names (from
//! the control socket, the state file and the command line) and directory entry names (from
//! the kernel). Both are single path components; anything that could walk elsewhere is refused
//! before any syscall sees it.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

/// Longest name a Linux filesystem accepts for one component.
pub const NAME_MAX: usize = 255;

/// Checks that `name` can name a release directory directly under the releases dir.
///
/// Dots are allowed inside (`1.2.3`), but not a leading dot: `.` and `..` walk out, and hidden
/// entries are where switchfs and deploy tools keep their own files. Control characters are
/// refused because the control protocol and the logs are line based.
///
/// # Errors
/// A one-line description of what is wrong with the name.
pub fn validate_release_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("release name is empty".into());
    }
    if name.len() > NAME_MAX {
        return Err(format!("release name is longer than {NAME_MAX} bytes"));
    }
    if name.contains('/') {
        return Err(format!("release name {name:?} contains '/'"));
    }
    if name.starts_with('.') {
        return Err(format!(
            "release name {name:?} starts with '.' (., .. and hidden entries are not releases)"
        ));
    }
    if name.chars().any(char::is_control) {
        return Err(format!(
            "release name {name:?} contains a control character"
        ));
    }
    Ok(())
}

/// Whether `name` is one plain component the kernel may legitimately look up: not empty, not
/// `.` or `..`, no `/` or NUL, at most `NAME_MAX` bytes.
pub fn is_plain_component(name: &OsStr) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= NAME_MAX
        && bytes != b"."
        && bytes != b".."
        && !bytes.iter().any(|&b| b == b'/' || b == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_names() {
        for good in ["1", "20261123150200", "v1.2.3", "release_7-b"] {
            assert_eq!(validate_release_name(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            ".",
            "..",
            "../x",
            "a/b",
            ".hidden",
            "a\nb",
            &"x".repeat(256),
        ] {
            assert!(validate_release_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn components() {
        assert!(is_plain_component(OsStr::new("index.php")));
        assert!(is_plain_component(OsStr::from_bytes(b"\xff\xfe")));
        for bad in ["", ".", "..", "a/b"] {
            assert!(!is_plain_component(OsStr::new(bad)), "{bad:?}");
        }
        assert!(!is_plain_component(OsStr::from_bytes(b"a\0b")));
        assert!(!is_plain_component(OsStr::new(&"x".repeat(256))));
    }
}
