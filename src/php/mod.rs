//! PHP: telling PHP pools which cached scripts a switch changed (`--php-fpm`, `--php-http`).
//! `opcache` orchestrates the pools; `wire` is the protocol with the shipped script,
//! `changes` decides which cached scripts a switch changed, `compile_wait` waits for the
//! pool's compilations of old scripts in flight; `fastcgi` and `http` are the clients it
//! talks to PHP-FPM and to Apache + mod_php with, `tcp_owner` who listens on a TCP port.

pub(crate) mod changes;
pub(crate) mod compile_wait;
pub mod fastcgi;
pub(crate) mod http;
pub mod opcache;
pub(crate) mod tcp_owner;
pub(crate) mod wire;
