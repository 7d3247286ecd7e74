//! A minimal FastCGI client (responder role, one request per connection), enough to run one
//! PHP script in a PHP-FPM pool the way a web server would.
//!
//! Why our own: the protocol part we need is five record types (BEGIN_REQUEST, PARAMS,
//! STDIN out; STDOUT, STDERR, END_REQUEST in), about 200 lines, and the maintained crates
//! bring an async runtime or a server framework the daemon has no use for. Every read and
//! write is bounded by one deadline, and the answer by a size cap, so a hung or hostile
//! pool cannot hold a switch forever or grow the daemon's memory.

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::sys;

const VERSION: u8 = 1;
const BEGIN_REQUEST: u8 = 1;
const END_REQUEST: u8 = 3;
const PARAMS: u8 = 4;
const STDIN: u8 = 5;
const STDOUT: u8 = 6;
const STDERR: u8 = 7;
const RESPONDER: u16 = 1;
const REQUEST_ID: u16 = 1;
/// Largest content of one record.
const MAX_CONTENT: usize = 65_535;
/// Largest answer accepted (a list of every cached script of a big pool fits many times).
pub const MAX_RESPONSE: usize = 128 << 20;

/// Where a FastCGI server listens: a Unix socket path or `HOST:PORT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    Unix(PathBuf),
    Tcp(String),
}

impl Address {
    /// `unix:/path`, `/path` (or any path with a `/`) is a Unix socket; `HOST:PORT` is TCP.
    ///
    /// # Errors
    /// Neither form.
    pub fn parse(s: &str) -> Result<Address, String> {
        let s = s.strip_prefix("unix:").unwrap_or(s);
        if s.contains('/') {
            return Ok(Address::Unix(PathBuf::from(s)));
        }
        match s.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
                Ok(Address::Tcp(s.to_string()))
            }
            _ => Err(format!("{s:?} is neither a Unix socket path nor HOST:PORT")),
        }
    }
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Address::Unix(p) => write!(f, "{}", p.display()),
            Address::Tcp(s) => f.write_str(s),
        }
    }
}

/// What the application answered.
#[derive(Debug, Default)]
pub struct Response {
    /// The CGI response: headers, a blank line, the body.
    pub stdout: Vec<u8>,
    /// What the script wrote to its error stream (PHP warnings with FPM's defaults).
    pub stderr: Vec<u8>,
    pub app_status: u32,
}

impl Response {
    /// The HTTP status (`Status:` header, 200 without one) and the body.
    pub fn status_and_body(&self) -> (u16, &[u8]) {
        split_cgi(&self.stdout)
    }
}

/// Splits a CGI response into its status and body.
pub fn split_cgi(out: &[u8]) -> (u16, &[u8]) {
    let (head, body) = match find(out, b"\r\n\r\n") {
        Some(i) => (&out[..i], &out[i + 4..]),
        None => match find(out, b"\n\n") {
            Some(i) => (&out[..i], &out[i + 2..]),
            None => (&out[..0], out),
        },
    };
    let status = String::from_utf8_lossy(head)
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.trim()
                .eq_ignore_ascii_case("status")
                .then(|| value.trim().split(' ').next()?.parse::<u16>().ok())?
        })
        .unwrap_or(200);
    (status, body)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

trait Stream: Read + Write {
    fn set_timeouts(&self, left: Duration) -> io::Result<()>;
}

impl Stream for UnixStream {
    fn set_timeouts(&self, left: Duration) -> io::Result<()> {
        self.set_read_timeout(Some(left))?;
        self.set_write_timeout(Some(left))
    }
}

impl Stream for TcpStream {
    fn set_timeouts(&self, left: Duration) -> io::Result<()> {
        self.set_read_timeout(Some(left))?;
        self.set_write_timeout(Some(left))
    }
}

/// Connects to `addr` before `deadline`: `connect_timeout` connects without blocking and
/// polls, so a SYN the listener drops (its accept queue is full) costs at most the time left.
pub(crate) fn connect_tcp(addr: &str, deadline: Instant) -> io::Result<TcpStream> {
    let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
    for sa in addr.to_socket_addrs()? {
        let left = remaining(deadline)?;
        match TcpStream::connect_timeout(&sa, left) {
            Ok(s) => return Ok(s),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Connects to the Unix socket at `path` before `deadline`.
///
/// Why not `UnixStream::connect`: it blocks in the kernel, with no time limit, while the
/// listener's backlog is full (a pool whose every worker is busy and whose queue is full),
/// and `activate` would hang with it. A non-blocking connect fails at once instead
/// (`EAGAIN`), and is tried again every few milliseconds until the deadline.
///
/// The socket is opened first without following a final symlink, and connected through
/// that descriptor: the directory may belong to the pool's user (Debian's `/run/php`), who
/// could otherwise point the path at any other root service's socket.
pub(crate) fn connect_unix(path: &Path, deadline: Instant) -> io::Result<UnixStream> {
    let target = sys::open_socket_nofollow(path)?;
    let via = sys::fd_path(target.as_fd());
    let fd = sys::unix_stream_socket_nonblocking()?;
    let mut pause = Duration::from_millis(1);
    while !sys::unix_connect_nonblocking(fd.as_fd(), &via)? {
        std::thread::sleep(pause.min(remaining(deadline)?));
        remaining(deadline)?;
        pause = (pause * 2).min(Duration::from_millis(50));
    }
    let s = UnixStream::from(fd);
    // Reads and writes block again, each bounded by the deadline (`set_timeouts`).
    s.set_nonblocking(false)?;
    Ok(s)
}

/// Time left before `deadline`, or a timeout error.
pub(crate) fn remaining(deadline: Instant) -> io::Result<Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        Err(io::Error::new(io::ErrorKind::TimedOut, "timed out"))
    } else {
        Ok(left)
    }
}

/// Runs one request: `params` (CGI variables) and `stdin` (the request body), and waits for
/// the end of the answer, all within `timeout`.
///
/// # Errors
/// Connection refused or missing socket, timeout, a malformed or oversized answer, or a
/// server that refused the request (overloaded, unknown role).
pub fn request(
    addr: &Address,
    params: &[(&str, &str)],
    stdin: &[u8],
    timeout: Duration,
) -> io::Result<Response> {
    let deadline = Instant::now() + timeout;
    connect(addr, deadline)?.request(params, stdin, deadline)
}

/// Connects to `addr` before `deadline` (the connect included: a full backlog counts).
///
/// # Errors
/// Missing socket, refused, or the deadline passed.
pub fn connect(addr: &Address, deadline: Instant) -> io::Result<Connection> {
    match addr {
        Address::Unix(path) => {
            let s = connect_unix(path, deadline)?;
            let peer = sys::peer_cred(s.as_fd())?;
            Ok(Connection {
                stream: Conn::Unix(s),
                peer: Some(peer),
            })
        }
        Address::Tcp(a) => Ok(Connection {
            stream: Conn::Tcp(connect_tcp(a, deadline)?),
            peer: None,
        }),
    }
}

/// A connection to a FastCGI server, for one request.
#[derive(Debug)]
pub struct Connection {
    stream: Conn,
    /// Who listens on a Unix socket (`SO_PEERCRED`: the process that called `listen()`,
    /// as it was then); `None` over TCP, where `tcp_listener_uid` tells the listener's uid.
    pub peer: Option<sys::PeerCred>,
}

#[derive(Debug)]
enum Conn {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Connection {
    /// Over TCP, the uid of the socket serving this connection (see `tcp_owner`): `None`
    /// for a Unix socket (see `peer`), `Some(Ok(None))` when the kernel does not list it.
    pub fn tcp_listener_uid(&self) -> Option<io::Result<Option<u32>>> {
        match &self.stream {
            Conn::Tcp(s) => Some(crate::php::tcp_owner::listener_uid(s)),
            Conn::Unix(_) => None,
        }
    }

    /// Runs one request on this connection; see [`request`].
    ///
    /// # Errors
    /// As [`request`].
    pub fn request(
        self,
        params: &[(&str, &str)],
        stdin: &[u8],
        deadline: Instant,
    ) -> io::Result<Response> {
        match self.stream {
            Conn::Unix(s) => exchange(s, params, stdin, deadline),
            Conn::Tcp(s) => exchange(s, params, stdin, deadline),
        }
    }
}

fn exchange<S: Stream>(
    mut s: S,
    params: &[(&str, &str)],
    stdin: &[u8],
    deadline: Instant,
) -> io::Result<Response> {
    let mut out = Vec::with_capacity(1024 + stdin.len());
    let mut begin = [0u8; 8];
    begin[..2].copy_from_slice(&RESPONDER.to_be_bytes());
    record(&mut out, BEGIN_REQUEST, &begin);
    let mut pairs = Vec::new();
    for (name, value) in params {
        name_value(&mut pairs, name.as_bytes(), value.as_bytes())?;
    }
    stream(&mut out, PARAMS, &pairs);
    stream(&mut out, STDIN, stdin);
    s.set_timeouts(remaining(deadline)?)?;
    s.write_all(&out)?;
    s.flush()?;
    read_response(&mut s, deadline)
}

/// Appends one record.
fn record(out: &mut Vec<u8>, kind: u8, content: &[u8]) {
    let len = content.len();
    let padding = (8 - len % 8) % 8;
    out.extend_from_slice(&[VERSION, kind]);
    out.extend_from_slice(&REQUEST_ID.to_be_bytes());
    out.extend_from_slice(&(len as u16).to_be_bytes());
    out.extend_from_slice(&[padding as u8, 0]);
    out.extend_from_slice(content);
    out.extend(std::iter::repeat_n(0, padding));
}

/// Appends a stream (PARAMS, STDIN) as records of at most 64 KiB, ended by an empty one.
fn stream(out: &mut Vec<u8>, kind: u8, data: &[u8]) {
    for chunk in data.chunks(MAX_CONTENT) {
        record(out, kind, chunk);
    }
    record(out, kind, &[]);
}

fn name_value(out: &mut Vec<u8>, name: &[u8], value: &[u8]) -> io::Result<()> {
    for len in [name.len(), value.len()] {
        if len < 128 {
            out.push(len as u8);
        } else {
            let len = u32::try_from(len)
                .ok()
                .filter(|&l| l < 1 << 31)
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "param too long"))?;
            out.extend_from_slice(&(len | 1 << 31).to_be_bytes());
        }
    }
    out.extend_from_slice(name);
    out.extend_from_slice(value);
    Ok(())
}

fn read_response<S: Stream>(s: &mut S, deadline: Instant) -> io::Result<Response> {
    let mut resp = Response::default();
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_string());
    loop {
        let mut header = [0u8; 8];
        read_exact_by(s, &mut header, deadline)?;
        let kind = header[1];
        let len = usize::from(u16::from_be_bytes([header[4], header[5]]));
        let padding = usize::from(header[6]);
        let mut content = vec![0u8; len + padding];
        read_exact_by(s, &mut content, deadline)?;
        content.truncate(len);
        if header[0] != VERSION {
            return Err(bad("not a FastCGI answer (wrong version)"));
        }
        match kind {
            STDOUT => resp.stdout.extend_from_slice(&content),
            STDERR => resp.stderr.extend_from_slice(&content),
            END_REQUEST => {
                if content.len() < 5 {
                    return Err(bad("short END_REQUEST record"));
                }
                resp.app_status =
                    u32::from_be_bytes([content[0], content[1], content[2], content[3]]);
                return match content[4] {
                    0 => Ok(resp),
                    1 => Err(bad("the server cannot multiplex connections")),
                    2 => Err(bad("the server is overloaded")),
                    3 => Err(bad("the server does not know the responder role")),
                    _ => Err(bad("unknown protocol status")),
                };
            }
            _ => {} // management records: ignored
        }
        if resp.stdout.len() + resp.stderr.len() > MAX_RESPONSE {
            return Err(bad("answer larger than 128 MiB"));
        }
    }
}

fn read_exact_by<S: Stream>(s: &mut S, buf: &mut [u8], deadline: Instant) -> io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        s.set_timeouts(remaining(deadline)?)?;
        match s.read(&mut buf[filled..]) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed before the end of the answer",
                ));
            }
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "timed out"));
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

pub(crate) fn describe_io(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => "timed out".into(),
        io::ErrorKind::NotFound => format!("cannot connect: {e} (is PHP running?)"),
        io::ErrorKind::ConnectionRefused => format!("cannot connect: {e} (is PHP running?)"),
        _ => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(
            Address::parse("/run/php/fpm.sock").unwrap(),
            Address::Unix("/run/php/fpm.sock".into())
        );
        assert_eq!(
            Address::parse("unix:/run/x.sock").unwrap(),
            Address::Unix("/run/x.sock".into())
        );
        assert_eq!(
            Address::parse("127.0.0.1:9000").unwrap(),
            Address::Tcp("127.0.0.1:9000".into())
        );
        assert!(Address::parse("fpm").is_err());
        assert!(Address::parse("host:notaport").is_err());
    }

    #[test]
    fn records_are_padded_and_streams_ended() {
        let mut out = Vec::new();
        stream(&mut out, STDIN, b"abc");
        // header + 3 bytes + 5 padding, then an empty record
        assert_eq!(out.len(), 8 + 8 + 8);
        assert_eq!(&out[..8], &[1, STDIN, 0, 1, 0, 3, 5, 0]);
        assert_eq!(&out[16..], &[1, STDIN, 0, 1, 0, 0, 0, 0]);
        let mut nv = Vec::new();
        name_value(&mut nv, b"A", &[b'x'; 200]).unwrap();
        assert_eq!(&nv[..5], &[1, 0x80, 0, 0, 200]);
    }

    #[test]
    fn cgi_status() {
        assert_eq!(
            split_cgi(b"Status: 404 Not Found\r\nX: y\r\n\r\nbody"),
            (404, &b"body"[..])
        );
        assert_eq!(
            split_cgi(b"Content-type: text/plain\r\n\r\nok"),
            (200, &b"ok"[..])
        );
    }
}
