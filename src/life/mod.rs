//! The process's life: start-up and shut-down (`daemon`), the keeper that holds the mount
//! across crashes and upgrades (`keeper`), systemd, our mounts and mount(8)'s helper, and
//! default paths.

pub(crate) mod bind_daemon;
pub mod config_file;
pub mod daemon;
pub mod keeper;
pub mod log_format;
pub mod mount_helper;
pub mod mounts;
pub(crate) mod paths;
pub mod strict_modes;
pub mod systemd;
