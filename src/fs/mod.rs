//! The FUSE data plane: what the mount shows of the active release. `adapter` is the only
//! `impl fuser::Filesystem`; `core` answers lookups, attributes, reads and listings from the
//! release the switcher published (`core_docroot`: the core as the switcher's `Docroot`);
//! the rest are its parts.

pub(crate) mod adapter;
pub(crate) mod attr;
pub(crate) mod caller;
pub(crate) mod core;
pub(crate) mod fds;
pub(crate) mod handles;
pub(crate) mod inodes;
pub(crate) mod invalidate;
pub(crate) mod links;
pub(crate) mod mtimes;
pub(crate) mod nodelog;
pub(crate) mod portals;
