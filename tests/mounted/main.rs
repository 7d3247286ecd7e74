//! The mounted tests: each module starts real daemons on real FUSE mounts (through
//! `tests/common`) and is named after the README rule it checks, so a failing test says which
//! promise broke. One binary, so the tests share one build and run in parallel; the suites
//! that must have a process of their own stay apart (`cli`, `discovery`, `fuse_resume`,
//! `mount_helper`, `opcache`).

#[path = "../common/mod.rs"]
mod common;

mod atomic_switch;
mod bind_mode;
mod control_rights;
mod crashes_and_upgrades;
mod faults;
mod hostile_host;
mod mirror;
mod monitoring;
mod mount_point_and_shutdown;
mod mtimes_never_lie;
mod paths_others_control;
mod permissions;
mod rollback;
mod status_output;
mod switch_races;
mod two_phase;
