//! The HTTP client of `--php-http` (Apache + mod_php, where there is no FastCGI socket to
//! talk to): a loopback `http://` URL and one HTTP/1.0 POST of one step, sent only after the
//! listener's owner is checked, bounded by the same deadline and size cap as the FastCGI
//! client beside it (`fastcgi`).

use std::io::{self, Read, Write};
use std::time::Instant;

use crate::php::fastcgi::{self, describe_io};
use crate::php::tcp_owner::check_tcp_owner;
use crate::php::wire::find;

/// `http://HOST[:PORT]/PATH`, the only form accepted: the request carries a secret, which
/// must not cross a network, so this is meant for loopback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUrl {
    pub host_port: String,
    pub host: String,
    pub path: String,
    pub original: String,
}

impl HttpUrl {
    /// # Errors
    /// Not `http://`, no host, or a host other than loopback.
    pub fn parse(s: &str) -> Result<HttpUrl, String> {
        let rest = s
            .strip_prefix("http://")
            .ok_or_else(|| format!("{s:?}: only http:// URLs on loopback are supported"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => match p.parse::<u16>() {
                Ok(port) => (h, port),
                Err(_) => return Err(format!("{s:?}: bad port {p:?}")),
            },
            _ => (authority, 80),
        };
        let loopback = host == "localhost"
            || host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        if !loopback {
            return Err(format!(
                "{s:?}: the host must be loopback (127.0.0.1, [::1] or localhost): \
                 the request carries the secret in clear"
            ));
        }
        if path.contains(|c: char| c.is_ascii_whitespace() || c.is_ascii_control()) {
            return Err(format!(
                "{s:?}: the path contains spaces or control characters"
            ));
        }
        Ok(HttpUrl {
            host_port: format!("{host}:{port}"),
            host: host.to_string(),
            path: path.to_string(),
            original: s.to_string(),
        })
    }
}

/// One HTTP/1.0 POST (the answer then ends with the connection: no chunking to decode),
/// after checking the listener belongs to `owner`.
#[allow(clippy::too_many_arguments)] // one request: where, who must listen, what to send
pub(super) fn http_post(
    url: &HttpUrl,
    owner: u32,
    secret: &str,
    step: &str,
    mount: &str,
    body: &[u8],
    deadline: Instant,
) -> Result<(u16, Vec<u8>), String> {
    let s = fastcgi::connect_tcp(&url.host_port, deadline).map_err(|e| describe_io(&e))?;
    check_tcp_owner(
        crate::php::tcp_owner::listener_uid(&s),
        owner,
        "--php-http-owner",
    )?;
    http_exchange(s, url, secret, step, mount, body, deadline).map_err(|e| describe_io(&e))
}

fn http_exchange(
    mut s: std::net::TcpStream,
    url: &HttpUrl,
    secret: &str,
    step: &str,
    mount: &str,
    body: &[u8],
    deadline: Instant,
) -> io::Result<(u16, Vec<u8>)> {
    let head = format!(
        "POST {} HTTP/1.0\r\nHost: {}\r\nUser-Agent: switchfs\r\nX-Switchfs-Secret: {secret}\r\n\
         X-Switchfs-Step: {step}\r\nX-Switchfs-Mount: {mount}\r\n\
         Content-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
        url.path,
        url.host,
        body.len()
    );
    s.set_write_timeout(Some(fastcgi::remaining(deadline)?))?;
    s.write_all(head.as_bytes())?;
    s.write_all(body)?;
    let mut answer = Vec::new();
    let mut buf = [0u8; 64 * 1024];
    loop {
        s.set_read_timeout(Some(fastcgi::remaining(deadline)?))?;
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "timed out"));
            }
            Err(e) => return Err(e),
        }
        if answer.len() > fastcgi::MAX_RESPONSE {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "answer larger than 128 MiB",
            ));
        }
    }
    let status = answer
        .strip_prefix(b"HTTP/1.")
        .and_then(|r| r.get(2..5))
        .and_then(|c| std::str::from_utf8(c).ok()?.parse::<u16>().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "not an HTTP answer"))?;
    let body = match find(&answer, b"\r\n\r\n") {
        Some(i) => answer[i + 4..].to_vec(),
        None => Vec::new(),
    };
    Ok((status, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_must_be_loopback_http() {
        let u = HttpUrl::parse("http://127.0.0.1:8080/switchfs/opcache.php").unwrap();
        assert_eq!(u.host_port, "127.0.0.1:8080");
        assert_eq!(u.path, "/switchfs/opcache.php");
        assert_eq!(
            HttpUrl::parse("http://localhost/x.php").unwrap().host_port,
            "localhost:80"
        );
        assert!(HttpUrl::parse("http://[::1]:81/x").is_ok());
        assert!(HttpUrl::parse("https://127.0.0.1/x").is_err());
        assert!(HttpUrl::parse("http://10.0.0.1/x").is_err());
        assert!(HttpUrl::parse("http://example.com/x").is_err());
        assert!(HttpUrl::parse("http://127.0.0.1/a b").is_err());
    }
}
