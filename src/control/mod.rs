//! The control plane: a line protocol on a Unix socket, the daemon's server for it and the
//! client `switchctl` uses.

pub mod client;
pub mod health;
pub mod metrics;
pub mod protocol;
pub mod reload;
pub mod render;
pub(crate) mod server;
