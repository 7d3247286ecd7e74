//! switchfs: a FUSE docroot that shows one release directory and switches between releases
//! atomically, so web servers and PHP caches that key on paths never see a stale release.
//!
//! Layout: `core` holds the logic (release pointer, lookups, switch) and is tested without a
//! mount; `fuse_adapter` is the thin fuser binding; `control` is the socket protocol;
//! `daemon` wires them together.

pub mod attr;
pub mod control;
pub mod core;
pub mod daemon;
pub mod errno;
pub mod fuse_adapter;
pub mod handles;
pub mod inodes;
pub mod names;
pub mod paths;
pub mod release;
pub mod state;
pub mod sys;

#[cfg(test)]
mod core_tests;
#[cfg(test)]
mod testutil;
