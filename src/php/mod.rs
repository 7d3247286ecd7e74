//! PHP: telling PHP pools which cached scripts a switch changed (`--php-fpm`, `--php-http`).
//! `opcache` orchestrates the pools; `fastcgi` is the client it talks to PHP-FPM with.

pub mod fastcgi;
pub mod opcache;
pub(crate) mod tcp_owner;
