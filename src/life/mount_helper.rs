//! What `mount.fuse.switchfs` does with the arguments mount(8) hands a helper: turn
//! `SOURCE MOUNTPOINT -o OPTIONS` (from `mount -t fuse.switchfs` or an `/etc/fstab` line)
//! into a `switchfs` command line.
//!
//! Every `name[=value]` option that is not mount(8)'s own becomes `--name[=value]` for
//! `switchfs` (with `_` read as `-`), so each `switchfs` flag is a mount option without a
//! second list to keep in step; `switchfs` itself refuses what it does not know and the
//! helper reports that line.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// Options mount(8) and fstab use for themselves (or that say what switchfs always does:
/// it is always read-only, `nosuid`, `nodev`). mount passes them to the helper too, e.g.
/// `rw` for every mount without `ro`; they are ignored.
const MOUNT_OWN: &[&str] = &[
    "defaults",
    "rw",
    "ro",
    "auto",
    "noauto",
    "nofail",
    "_netdev",
    "user",
    "users",
    "owner",
    "group",
    "nouser",
    "dev",
    "nodev",
    "suid",
    "nosuid",
    "exec",
    "atime",
    "noatime",
    "relatime",
    "norelatime",
    "strictatime",
    "nostrictatime",
    "diratime",
    "nodiratime",
    "lazytime",
    "nolazytime",
    "sync",
    "async",
    "dirsync",
    "silent",
    "loud",
];

/// Prefixes of options meant for other programs (systemd's fstab generator, comments).
const MOUNT_OWN_PREFIXES: &[&str] = &["x-", "comment="];

/// Options switchfs cannot honour and that would be unsafe to ignore.
fn refused(name: &str) -> Option<&'static str> {
    match name {
        "noexec" => Some(
            "switchfs cannot mount noexec; remove it (with `user` or `users`, add `exec` after it)",
        ),
        "remount" => Some("a switchfs mount cannot be remounted; umount and mount it again"),
        _ => None,
    }
}

/// Set in `switchfs`'s environment by the helper's `-f` (fake): parse and check the
/// command line (every option, every value) and exit, 0 or 2 with clap's one line, without
/// starting anything.
pub const CHECK_ONLY_ENV: &str = "SWITCHFS_CHECK_ONLY";

/// The `switchfs` arguments (without the program name) and where its log goes.
#[derive(Debug, PartialEq, Eq)]
pub struct Plan {
    pub args: Vec<OsString>,
    /// `log=FILE`, a helper option: where the daemon's stderr goes.
    pub log: Option<PathBuf>,
}

/// Translates mount(8)'s helper arguments into a `switchfs` command line.
///
/// `source` is fstab's first field: an absolute path names the releases directory (like
/// bindfs' source), anything else (`switchfs`) is only a label. `options` are the `-o`
/// lists as given, comma-separated.
///
/// # Errors
/// One line naming the offending option.
pub fn translate(source: &str, mount_point: &Path, options: &[String]) -> Result<Plan, String> {
    let mut args: Vec<OsString> = Vec::new();
    let mut log = None;
    let mut releases = false;
    for opt in options.iter().flat_map(|o| o.split(',')) {
        let (name, value) = match opt.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (opt, None),
        };
        if opt.is_empty() || is_mount_own(opt, name) {
            continue;
        }
        if let Some(why) = refused(name) {
            return Err(format!("option {name}: {why}"));
        }
        if !is_option_name(name) {
            return Err(format!("invalid option {opt:?}"));
        }
        let flag = name.replace('_', "-");
        if flag == "log" {
            let file = value.filter(|v| !v.is_empty());
            log = Some(PathBuf::from(
                file.ok_or("option log needs a file: log=FILE")?,
            ));
            continue;
        }
        releases |= flag == "releases";
        args.push(match value {
            Some(v) => format!("--{flag}={v}").into(),
            None => format!("--{flag}").into(),
        });
    }
    if source.starts_with('/') {
        if releases {
            return Err(format!(
                "the source {source} and option releases= both name a releases directory; \
                 give one"
            ));
        }
        let mut arg = OsString::from("--releases=");
        arg.push(source);
        args.push(arg);
    } else if !releases {
        return Err(
            "no releases directory: add the option releases=DIR, or give the \
                    directory as the source (first fstab field)"
                .into(),
        );
    }
    // The mount shows fstab's own source, which is how mount(8) tells a line is mounted
    // (libmount's mnt_table_is_fs_mounted compares source, target and root): a second
    // `mount -a` then skips it instead of failing with 32 "already mounted". A source
    // FUSE could not carry keeps the daemon's default.
    if crate::life::mounts::check_source(source).is_ok() {
        args.push(format!("--source={source}").into());
    }
    // After `--` a mount point is never read as an option, whatever its name.
    args.push("--".into());
    args.push(mount_point.as_os_str().to_owned());
    Ok(Plan { args, log })
}

/// The first of `spellings` (how the mount point was named before mount(8) resolved it)
/// that is not `mount_point` itself but `resolve` (canonicalize) turns into it: a symlink
/// on its way was resolved before the helper ran, which hides the link from every later
/// check. `None` when no spelling does.
///
/// Why: the deploy user who owns `current` could point it at `/root/.ssh`; mount(8) would
/// hand the helper `/root/.ssh`, a root-owned path that passes every other check.
pub fn spelled_through_link(
    spellings: &[PathBuf],
    mount_point: &Path,
    resolve: impl Fn(&Path) -> Option<PathBuf>,
) -> Option<PathBuf> {
    spellings
        .iter()
        .find(|s| s.as_path() != mount_point && resolve(s).is_some_and(|r| r == mount_point))
        .cloned()
}

/// The targets of an fstab's `fuse.switchfs` lines, unescaped.
pub fn fstab_targets(fstab: &str) -> Vec<PathBuf> {
    fstab
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let mut fields = l.split_whitespace();
            let (_, target, kind) = (fields.next()?, fields.next()?, fields.next()?);
            (kind == "fuse.switchfs").then(|| PathBuf::from(unescape_fstab(target)))
        })
        .collect()
}

/// From mount(8)'s own command line (NUL-separated, as in /proc/PID/cmdline): its
/// arguments that may name the mount point, and the fstab files it reads (`-T FILE`,
/// `--fstab FILE`).
pub fn mount_cmdline_spellings(cmdline: &[u8]) -> (Vec<PathBuf>, Vec<PathBuf>) {
    use std::os::unix::ffi::OsStrExt;
    let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).skip(1).collect();
    let (mut plain, mut fstabs) = (Vec::new(), Vec::new());
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        let path = |a: &[u8]| PathBuf::from(std::ffi::OsStr::from_bytes(a));
        match *arg {
            b"-T" | b"--fstab" => fstabs.extend(iter.next().map(|a| path(a))),
            a if a.starts_with(b"--fstab=") => fstabs.push(path(&a[8..])),
            a if !a.is_empty() && !a.starts_with(b"-") => plain.push(path(a)),
            _ => {}
        }
    }
    (plain, fstabs)
}

/// fstab's octal escapes (`\040` for a space, `\011` tab, `\134` backslash).
fn unescape_fstab(field: &str) -> String {
    let mut out = String::new();
    let mut rest = field;
    while let Some(i) = rest.find('\\') {
        out.push_str(&rest[..i]);
        let code = rest
            .get(i + 1..i + 4)
            .and_then(|o| u8::from_str_radix(o, 8).ok());
        match code {
            Some(b) => {
                out.push(char::from(b));
                rest = &rest[i + 4..];
            }
            None => {
                out.push('\\');
                rest = &rest[i + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// A switchfs long option name: a lowercase letter, then letters, digits, `_` or `-`.
fn is_option_name(name: &str) -> bool {
    name.bytes().next().is_some_and(|b| b.is_ascii_lowercase())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

fn is_mount_own(opt: &str, name: &str) -> bool {
    MOUNT_OWN.contains(&opt) || MOUNT_OWN_PREFIXES.iter().any(|p| opt.starts_with(p)) || {
        // `user=NAME` is how mount(8) records who mounted a `user` entry.
        name == "user" && opt.len() > 4
    }
}

/// The last thing `switchfs` said in `log_tail` (its log since it was started), as the
/// helper's one-line error: `switchfs: MESSAGE` is how it reports why it stops. A clap
/// usage error about an option the helper passed on becomes "unknown option NAME".
pub fn failure_line(log_tail: &str) -> Option<String> {
    let last = log_tail
        .lines()
        .rev()
        .find(|l| l.starts_with("switchfs: "))
        .or_else(|| log_tail.lines().rev().find(|l| !l.trim().is_empty()))?;
    let msg = last.strip_prefix("switchfs: ").unwrap_or(last).trim();
    if let Some(rest) = msg.strip_prefix("unexpected argument '--")
        && let Some((name, _)) = rest.split_once('\'')
    {
        let name = name.split('=').next().unwrap_or(name);
        return Some(format!(
            "unknown option {name:?} (see man mount.fuse.switchfs)"
        ));
    }
    let msg = msg.strip_suffix(" (see switchfs --help)").unwrap_or(msg);
    Some(msg.to_string())
}

/// Where the daemon logs when `log=` is not given: `/var/log/switchfs/KEY.log` for root
/// (KEY as for the control socket and state file, from the mount point), next to the
/// state file otherwise.
pub fn default_log_path(mount_point: &Path, root: bool) -> PathBuf {
    if root {
        PathBuf::from("/var/log/switchfs").join(format!(
            "{}.log",
            crate::life::paths::mount_key(mount_point)
        ))
    } else {
        crate::life::paths::default_state_path(mount_point).with_extension("log")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(source: &str, opts: &str) -> Result<Vec<String>, String> {
        translate(source, Path::new("/var/www/current"), &[opts.to_string()]).map(|p| {
            p.args
                .iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect()
        })
    }

    #[test]
    fn options_become_switchfs_flags_and_mount_own_ones_are_dropped() {
        let got = args(
            "switchfs",
            "rw,defaults,noauto,nofail,_netdev,x-systemd.requires=a.service,nosuid,\
             releases=/srv/rel,initial=42,control_group=www-data,cache_timeout=60,\
             track_opens,on_activate=echo hi,user=alice",
        )
        .unwrap();
        assert_eq!(
            got,
            [
                "--releases=/srv/rel",
                "--initial=42",
                "--control-group=www-data",
                "--cache-timeout=60",
                "--track-opens",
                "--on-activate=echo hi",
                "--source=switchfs",
                "--",
                "/var/www/current"
            ]
        );
    }

    #[test]
    fn an_absolute_source_is_the_releases_directory() {
        assert_eq!(
            args("/srv/rel", "ro").unwrap(),
            [
                "--releases=/srv/rel",
                "--source=/srv/rel",
                "--",
                "/var/www/current"
            ]
        );
        assert!(args("/srv/rel", "releases=/srv/other").is_err());
        assert!(
            args("switchfs", "initial=1")
                .unwrap_err()
                .contains("releases=DIR")
        );
    }

    #[test]
    fn unsafe_or_malformed_options_are_refused() {
        for bad in [
            "noexec",
            "remount",
            "Releases=/x",
            "--releases=/x",
            "a b",
            "=x",
        ] {
            let err = args("/srv/rel", bad).unwrap_err();
            assert!(!err.contains('\n'), "{err}");
        }
        assert!(args("/srv/rel", "log=").is_err());
        let plan = translate("/r", Path::new("/m"), &["log=/tmp/x.log".into()]).unwrap();
        assert_eq!(plan.log, Some(PathBuf::from("/tmp/x.log")));
    }

    #[test]
    fn a_spelling_resolved_through_a_link_is_found() {
        let fstab = "# comment\n/dev/sda1 / ext4 defaults 0 1\n\
                     switchfs /var/www/my\\040app/current fuse.switchfs releases=/r 0 0\n\
                     switchfs /srv/plain fuse.switchfs releases=/s 0 0\n";
        let targets = fstab_targets(fstab);
        assert_eq!(
            targets,
            [
                PathBuf::from("/var/www/my app/current"),
                PathBuf::from("/srv/plain")
            ]
        );
        let resolve = |p: &Path| match p.to_str() {
            Some("/var/www/my app/current") => Some(PathBuf::from("/root/.ssh")),
            other => other.map(PathBuf::from),
        };
        assert_eq!(
            spelled_through_link(&targets, Path::new("/root/.ssh"), resolve),
            Some(PathBuf::from("/var/www/my app/current"))
        );
        assert_eq!(
            spelled_through_link(&targets, Path::new("/srv/plain"), resolve),
            None
        );
        let (plain, fstabs) = mount_cmdline_spellings(
            b"mount\0-t\0fuse.switchfs\0-o\0a=b\0switchfs\0/var/www/current\0-T\0/etc/x\0",
        );
        assert!(
            plain.contains(&PathBuf::from("/var/www/current")),
            "{plain:?}"
        );
        assert_eq!(fstabs, [PathBuf::from("/etc/x")]);
    }

    #[test]
    fn the_daemons_last_word_is_the_error() {
        let log = "[2026 INFO x] starting\nswitchfs: releases directory /x: No such file\n";
        assert_eq!(
            failure_line(log).unwrap(),
            "releases directory /x: No such file"
        );
        let clap = "switchfs: unexpected argument '--bogus=1' found (see switchfs --help)\n";
        assert_eq!(
            failure_line(clap).unwrap(),
            "unknown option \"bogus\" (see man mount.fuse.switchfs)"
        );
        let value = "switchfs: invalid value 'x' for '--threads <N>': bad (see switchfs --help)";
        assert_eq!(
            failure_line(value).unwrap(),
            "invalid value 'x' for '--threads <N>': bad"
        );
        assert_eq!(failure_line(""), None);
    }
}
