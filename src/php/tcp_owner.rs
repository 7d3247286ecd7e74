//! Who listens on a TCP port we connected to: the uid the kernel records for the socket
//! (`/proc/net/tcp` and `tcp6`), checked before anything is sent.
//!
//! Why: over TCP there is no `SO_PEERCRED`. Any local user who binds the port while Apache
//! or PHP-FPM restarts would receive `--php-http`'s secret, or answer `list` with a flood.
//! A listening socket belongs to whoever created it (Apache's parent and the PHP-FPM master
//! bind as root before their workers drop privileges), and a connection's server-side socket
//! keeps the listener's uid even before it is accepted. We look up exactly that socket, the
//! one whose local address is our peer and whose remote address is us, so the answer is
//! about the listener we reached, not another one on the same port.

use std::io;
use std::net::{Ipv6Addr, SocketAddr, TcpStream};

/// The uid of the socket serving `stream`'s other end, if the kernel lists it here (the
/// listener lives in our network namespace).
///
/// # Errors
/// Addresses of the stream unknown, or neither `/proc/net/tcp` nor `tcp6` readable.
pub(crate) fn listener_uid(stream: &TcpStream) -> io::Result<Option<u32>> {
    let (ours, theirs) = (stream.local_addr()?, stream.peer_addr()?);
    let want = (mapped(&theirs), mapped(&ours));
    let mut readable = false;
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        readable = true;
        if let Some(uid) = text.lines().skip(1).find_map(|l| uid_of(l, want)) {
            return Ok(Some(uid));
        }
    }
    if readable {
        Ok(None)
    } else {
        Err(io::Error::new(
            io::ErrorKind::NotFound,
            "cannot read /proc/net/tcp or /proc/net/tcp6",
        ))
    }
}

type Endpoint = (Ipv6Addr, u16);

/// IPv4 as IPv4-mapped IPv6, as a dual-stack listener's sockets show it in `tcp6`.
fn mapped(sa: &SocketAddr) -> Endpoint {
    match sa {
        SocketAddr::V4(a) => (a.ip().to_ipv6_mapped(), a.port()),
        SocketAddr::V6(a) => (*a.ip(), a.port()),
    }
}

/// The uid of one `/proc/net/tcp{,6}` line when its local and remote addresses are `want`.
fn uid_of(line: &str, want: (Endpoint, Endpoint)) -> Option<u32> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let local = parse_endpoint(fields.get(1)?)?;
    let remote = parse_endpoint(fields.get(2)?)?;
    ((local, remote) == want).then(|| fields.get(7)?.parse().ok())?
}

/// `0100007F:1F90` (IPv4) or 32 hex digits `:PORT` (IPv6): each 32-bit word printed as the
/// kernel holds it, in host byte order, the port as a plain number.
fn parse_endpoint(field: &str) -> Option<Endpoint> {
    let (addr, port) = field.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| -> Option<[u8; 4]> {
        let hex = addr.get(i * 8..i * 8 + 8)?;
        Some(u32::from_str_radix(hex, 16).ok()?.to_ne_bytes())
    };
    let ip = match addr.len() {
        8 => std::net::Ipv4Addr::from(word(0)?).to_ipv6_mapped(),
        32 => {
            let mut b = [0u8; 16];
            for i in 0..4 {
                b[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            Ipv6Addr::from(b)
        }
        _ => return None,
    };
    Some((ip, port))
}

/// Refuses a TCP listener that does not belong to `owner` (`option` names the uid), before
/// anything is sent: another user on the port would get the secret or answer for the pool.
pub(crate) fn check_tcp_owner(
    found: io::Result<Option<u32>>,
    owner: u32,
    option: &str,
) -> Result<(), String> {
    match found {
        Ok(Some(uid)) if uid == owner => Ok(()),
        Ok(Some(uid)) => Err(format!(
            "the port is listened on by uid {uid}, not uid {owner}: not the server \
             expected, nothing sent (see {option})"
        )),
        Ok(None) => Err(format!(
            "cannot tell who listens on the port (not in /proc/net/tcp); nothing sent \
             (see {option})"
        )),
        Err(e) => Err(format!("cannot tell who listens on the port: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_server_side_of_our_own_connection_is_found() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let s = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        // Not accepted yet: the kernel already lists it, with the listener's uid.
        assert_eq!(listener_uid(&s).unwrap(), Some(crate::sys::euid()));
        let l6 = std::net::TcpListener::bind("[::]:0").unwrap();
        let port = l6.local_addr().unwrap().port();
        let s6 = TcpStream::connect(("127.0.0.1", port)).unwrap();
        assert_eq!(listener_uid(&s6).unwrap(), Some(crate::sys::euid()));
    }

    #[test]
    fn proc_net_tcp_lines() {
        let line = "   0: 0100007F:1F90 0100007F:C350 01 00000000:00000000 00:00000000 \
                    00000000    33        0 12345 1 0000000000000000 20 4 30 10 -1";
        let a = (std::net::Ipv4Addr::LOCALHOST.to_ipv6_mapped(), 8080);
        let b = (std::net::Ipv4Addr::LOCALHOST.to_ipv6_mapped(), 50000);
        if cfg!(target_endian = "little") {
            assert_eq!(uid_of(line, (a, b)), Some(33));
            assert_eq!(uid_of(line, (b, a)), None);
        }
        assert_eq!(
            parse_endpoint("00000000000000000000000001000000:0050").map(|e| e.1),
            Some(80)
        );
        assert_eq!(parse_endpoint("zz:1"), None);
    }
}
