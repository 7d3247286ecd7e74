//! Opening the docroot (adoption), publishing a release, and the explicit unmount. See the
//! module doc of `bind` for the switch's order of steps and why.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

use super::{BindDocroot, BindOptions, ReleaseMount, host, links};
use crate::sys;

/// What one publish did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// The mount now served.
    pub mount: ReleaseMount,
    /// The mount it replaced, now detached (processes may still hold it).
    pub previous: Option<ReleaseMount>,
    /// From the attach to the mount point showing the new release (the switch itself).
    pub swap: Duration,
}

/// The release the state file names as active, for adoption.
#[derive(Debug, Clone, Copy)]
pub struct Persisted<'a> {
    pub name: &'a str,
    /// Its directory, opened without following links from the releases directory.
    pub dir: BorrowedFd<'a>,
}

fn identity(fd: BorrowedFd<'_>) -> Result<(u64, u64), String> {
    let st = sys::fstat(fd).map_err(|e| format!("cannot stat a release directory: {e}"))?;
    Ok((st.st_dev, st.st_ino))
}

impl BindDocroot {
    /// Checks the host and opens the docroot at `mount_point`, adopting the mount a previous
    /// daemon left there when its root is `persisted`'s directory. `releases_dir` is the
    /// releases directory's descriptor and `releases_path` its canonical path.
    ///
    /// # Errors
    /// One line, with nothing mounted: a symlink on the way to the mount point or a mount
    /// point inside the releases, a kernel without `MOVE_MOUNT_BENEATH`, a private parent
    /// mount, or a mount at the mount point that is not the persisted release's.
    pub fn open(
        mount_point: &Path,
        releases_dir: BorrowedFd<'_>,
        releases_path: &Path,
        persisted: Option<Persisted<'_>>,
        options: BindOptions,
    ) -> Result<BindDocroot, String> {
        let dirs = host::open_mount_point(mount_point, identity(releases_dir)?)?;
        let mount_point = dirs.path.as_path();
        let parent_path = mount_point.parent().unwrap_or(Path::new("/"));
        host::probe_move_mount_beneath(parent_path)?;
        host::check_parent_shared(dirs.parent.as_fd(), mount_point)?;
        let parent_mnt_id = sys::mount_stat(dirs.parent.as_fd())
            .map_err(|e| {
                format!(
                    "cannot identify the mount of {}: {e}",
                    parent_path.display()
                )
            })?
            .mnt_id;
        let mut docroot = BindDocroot {
            mount_point: mount_point.to_path_buf(),
            parent: dirs.parent,
            name: dirs.name,
            parent_mnt_id,
            releases_path: releases_path.to_path_buf(),
            options,
            active: None,
            detached: Vec::new(),
            copies: Default::default(),
            links_checked: Default::default(),
        };
        docroot.adopt(persisted)?;
        Ok(docroot)
    }

    /// The root of the top mount at the mount point, and its mount id.
    fn top(&self) -> Result<(OwnedFd, sys::MountStat), String> {
        let shown = self.mount_point.display();
        let fd = sys::open_dir_nofollow_at(self.parent.as_fd(), &self.name)
            .map_err(|e| format!("cannot open mount point {shown} without following links: {e}"))?;
        let st = sys::mount_stat(fd.as_fd())
            .map_err(|e| format!("cannot identify the mount at {shown}: {e}"))?;
        Ok((fd, st))
    }

    /// The classic id (mountinfo's) of the top mount at the mount point.
    pub(crate) fn top_classic_id(&self) -> Option<u64> {
        let (fd, _) = self.top().ok()?;
        sys::classic_mount_id(fd.as_fd()).ok()
    }

    fn adopt(&mut self, persisted: Option<Persisted<'_>>) -> Result<(), String> {
        let shown = self.mount_point.display();
        let (top, st) = self.top()?;
        if st.mnt_id == self.parent_mnt_id {
            return Ok(()); // nothing mounted: the first publish attaches plainly
        }
        let Some(p) = persisted else {
            return Err(format!(
                "{shown} already has a mount (id {}) and no release is recorded as active; \
                 switchfs does not take over mounts it cannot identify: unmount it first",
                st.mnt_id
            ));
        };
        let want = identity(p.dir)?;
        if (st.dev, st.ino) != want {
            return Err(format!(
                "{shown} has a mount (id {}) whose root is not release {:?}, the recorded active \
                 release; switchfs never takes over or removes a mount it did not make: unmount it \
                 first",
                st.mnt_id, p.name
            ));
        }
        let vfs = sys::statvfs(top.as_fd()).map_err(|e| format!("cannot statvfs {shown}: {e}"))?;
        let need = libc::ST_RDONLY | libc::ST_NOSUID | libc::ST_NODEV;
        if vfs.f_flag & need != need {
            return Err(format!(
                "{shown} has a mount of release {:?} that is not read-only, nosuid and nodev, so \
                 switchfs did not make it; unmount it first",
                p.name
            ));
        }
        log::info!(
            "adopted the bind mount of release {:?} at {shown} (mount id {})",
            p.name,
            st.mnt_id
        );
        self.active = Some(ReleaseMount {
            release: p.name.to_string(),
            mnt_id: st.mnt_id,
            root: want,
        });
        Ok(())
    }

    /// Publishes release `name`, whose directory `dir` was opened without following links
    /// from the releases directory: link check, clone, read-only, attach (beneath the
    /// current top after checking that top is ours), detach the old top by descriptor.
    ///
    /// # Errors
    /// One line, with what is served unchanged: an escaping link that would resolve
    /// elsewhere, a foreign mount at the mount point, or a failed syscall. (A foreign mount
    /// stacked during the switch itself is reported after the fact; see the module doc.)
    pub fn publish(&mut self, name: &str, dir: BorrowedFd<'_>) -> Result<Published, String> {
        let st = sys::fstat(dir).map_err(|e| format!("cannot stat release {name:?}: {e}"))?;
        if st.st_mode & libc::S_IFMT != libc::S_IFDIR {
            return Err(format!(
                "release {name:?} is not a directory; refusing to mount it"
            ));
        }
        let root = (st.st_dev, st.st_ino);
        if !self.links_checked.contains(&root) {
            links::check(
                name,
                dir,
                &self.releases_path,
                &self.mount_point,
                self.options.link_check_limit,
            )?;
            self.links_checked.insert(root);
        }
        let clone = sys::open_tree_clone(dir)
            .map_err(|e| format!("cannot clone release {name:?} for a bind mount: {e}"))?;
        sys::set_mount_read_only(clone.as_fd(), self.options.noexec).map_err(|e| {
            format!("cannot make the bind mount of release {name:?} read-only: {e}")
        })?;
        let new = ReleaseMount {
            release: name.to_string(),
            mnt_id: sys::mount_stat(clone.as_fd())
                .map_err(|e| format!("cannot identify the new mount: {e}"))?
                .mnt_id,
            root: (st.st_dev, st.st_ino),
        };
        let (top, top_st) = self.top()?;
        let beneath = self.may_attach(top.as_fd(), top_st.mnt_id, name)?;
        let previous = self.active.clone();
        let started = Instant::now();
        sys::attach_mount(clone.as_fd(), top.as_fd(), beneath)
            .map_err(|e| self.attach_failed(name, &e))?;
        drop(top);
        if let (true, Some(old)) = (beneath, &previous) {
            self.detach_old_top(old, &new)?;
        }
        let swap = started.elapsed();
        let (_, now) = self.top()?;
        if now.mnt_id != new.mnt_id {
            return Err(format!(
                "after attaching release {name:?}, {} shows mount {}, not ours ({}): another mount \
                 was made there during the switch",
                self.mount_point.display(),
                now.mnt_id,
                new.mnt_id
            ));
        }
        self.detached.extend(previous.clone());
        self.active = Some(new.clone());
        Ok(Published {
            mount: new,
            previous,
            swap,
        })
    }

    /// Whether the new mount goes beneath the top (`true`) or on the bare mount point, after
    /// checking that nothing foreign is on or inside what we would detach.
    fn may_attach(&self, top: BorrowedFd<'_>, top_id: u64, name: &str) -> Result<bool, String> {
        let Some(old) = &self.active else {
            self.refuse_foreign(top_id, self.parent_mnt_id)?;
            return Ok(false);
        };
        if top_id == self.parent_mnt_id {
            // Someone unmounted ours: the docroot is empty. Attaching plainly touches nothing
            // of theirs and ends the outage.
            log::warn!(
                "the bind mount of release {:?} at {} was removed by someone else; attaching \
                 release {name:?} afresh",
                old.release,
                self.mount_point.display()
            );
            return Ok(false);
        }
        self.refuse_foreign(top_id, old.mnt_id)?;
        self.refuse_children(top)?;
        Ok(true)
    }

    /// Refuses, before anything is attached, when the top mount is not `expected`.
    fn refuse_foreign(&self, top: u64, expected: u64) -> Result<(), String> {
        if top == expected {
            return Ok(());
        }
        Err(format!(
            "{} has a mount (id {top}) that switchfs did not make stacked on it; refusing to \
             switch, nothing changed (unmount it to let switches through)",
            self.mount_point.display()
        ))
    }

    /// Refuses when a mount switchfs did not make sits inside our mount `top` (on one of its
    /// directories, or stacked on its root): detaching ours would take it along.
    fn refuse_children(&self, top: BorrowedFd<'_>) -> Result<(), String> {
        let shown = self.mount_point.display();
        let id = sys::classic_mount_id(top)
            .map_err(|e| format!("cannot identify the mount at {shown}: {e}"))?;
        let text = std::fs::read_to_string("/proc/self/mountinfo")
            .map_err(|e| format!("cannot read /proc/self/mountinfo: {e}"))?;
        match host::parse_mountinfo(&text)
            .into_iter()
            .find(|l| l.parent == id)
        {
            None => Ok(()),
            Some(child) => Err(format!(
                "{} (mount id {}) is mounted inside the docroot {shown} by someone else; \
                 switching would detach it with ours, so nothing changed (unmount it first)",
                child.mount_point.display(),
                child.id
            )),
        }
    }

    fn attach_failed(&self, name: &str, e: &std::io::Error) -> String {
        format!(
            "cannot attach release {name:?} at {}: {e}",
            self.mount_point.display()
        )
    }

    /// After `new` went beneath `old`: re-checks the top is still `old` and detaches it
    /// through a descriptor of its root. If something was stacked on `old` meanwhile,
    /// nothing is detached (ours or theirs) and `new` stays recorded as detached-to-be.
    fn detach_old_top(&mut self, old: &ReleaseMount, new: &ReleaseMount) -> Result<(), String> {
        let (top, st) = self.top()?;
        if st.mnt_id != old.mnt_id {
            // `new` sits beneath whatever is on top now and cannot be taken out without it.
            self.detached.push(new.clone());
            return Err(format!(
                "a mount (id {}) that switchfs did not make appeared on {} during the switch; \
                 release {:?} was left beneath it and nothing was detached",
                st.mnt_id,
                self.mount_point.display(),
                new.release
            ));
        }
        sys::detach_mount_of(top.as_fd()).map_err(|e| {
            format!(
                "cannot detach the previous release's mount at {}: {e}",
                self.mount_point.display()
            )
        })
    }

    /// Detaches the mount switchfs made at the mount point (only that one): for an explicit
    /// `umount`, never for a plain stop (see the module doc).
    ///
    /// # Errors
    /// One line: nothing of ours is mounted, or a foreign mount is stacked on ours.
    pub fn unmount(&mut self) -> Result<(), String> {
        let Some(active) = self.active.clone() else {
            return Err(format!(
                "switchfs has no mount at {}",
                self.mount_point.display()
            ));
        };
        let (top, st) = self.top()?;
        self.refuse_foreign(st.mnt_id, active.mnt_id)?;
        self.refuse_children(top.as_fd())?;
        sys::detach_mount_of(top.as_fd())
            .map_err(|e| format!("cannot unmount {}: {e}", self.mount_point.display()))?;
        self.detached.push(active);
        self.active = None;
        Ok(())
    }
}
