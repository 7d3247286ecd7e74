//! FUSE request counting through the kernel's fuse tracepoints (optional, `--trace`).

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs;
use std::path::Path;
use std::path::PathBuf;
use switchfs::json::json_str;

use crate::report::{jnum, ms};
use crate::{Res, ctx};

pub(crate) struct Tracer {
    pub(crate) dir: PathBuf,
}

#[derive(Default, Clone)]
pub(crate) struct OpCount {
    pub(crate) n: u64,
    pub(crate) replied: u64,
    pub(crate) latency_s: f64,
}

impl Tracer {
    pub(crate) fn new() -> Res<Tracer> {
        let base = Path::new("/sys/kernel/tracing");
        if !base.join("events/fuse/fuse_request_send").exists() {
            return Err("no fuse tracepoints under /sys/kernel/tracing (tracefs not mounted, or kernel older than 6.13)".into());
        }
        let dir = base.join("instances/fsbench");
        if dir.exists() {
            let _ = fs::remove_dir(&dir);
        }
        fs::create_dir(&dir).map_err(ctx("create tracefs instance"))?;
        let t = Tracer { dir };
        t.write("buffer_size_kb", "65536")?;
        Ok(t)
    }

    pub(crate) fn write(&self, file: &str, v: &str) -> Res<()> {
        fs::write(self.dir.join(file), v).map_err(ctx(format!("tracefs {file}")))
    }

    pub(crate) fn start(&self) -> Res<()> {
        self.write("trace", "")?;
        self.write("events/fuse/enable", "1")
    }

    /// Stops and returns per-connection, per-opcode counts and in-flight time.
    pub(crate) fn stop(&self) -> Res<HashMap<u32, BTreeMap<String, OpCount>>> {
        self.write("events/fuse/enable", "0")?;
        let text = fs::read_to_string(self.dir.join("trace")).map_err(ctx("read trace"))?;
        Ok(parse_trace(&text))
    }
}

/// Per-connection (kernel dev_t), per-opcode counts and in-flight time of the requests in the
/// text of a tracefs `trace` file with fuse_request_send/end events.
pub(crate) fn parse_trace(text: &str) -> HashMap<u32, BTreeMap<String, OpCount>> {
    let mut pending: HashMap<(u32, u64), (f64, String)> = HashMap::new();
    let mut out: HashMap<u32, BTreeMap<String, OpCount>> = HashMap::new();
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let (head, send, body) = if let Some(i) = line.find(": fuse_request_send: ") {
            (&line[..i], true, &line[i + 21..])
        } else if let Some(i) = line.find(": fuse_request_end: ") {
            (&line[..i], false, &line[i + 20..])
        } else {
            continue;
        };
        let ts: f64 = head
            .rsplit(' ')
            .next()
            .and_then(|x| x.parse().ok())
            .unwrap_or(0.0);
        let tok: Vec<&str> = body.split_whitespace().collect();
        let val = |key: &str| -> Option<u64> {
            let i = tok.iter().position(|t| *t == key)?;
            tok.get(i + 1)?.parse().ok()
        };
        let (Some(conn), Some(uniq)) = (val("connection"), val("req")) else {
            continue;
        };
        let conn = conn as u32;
        if send {
            let op = tok
                .iter()
                .find(|t| t.starts_with("(FUSE_"))
                .map(|t| {
                    t.trim_matches(|c| c == '(' || c == ')')
                        .trim_start_matches("FUSE_")
                })
                .unwrap_or("?")
                .to_string();
            out.entry(conn)
                .or_default()
                .entry(op.clone())
                .or_default()
                .n += 1;
            pending.insert((conn, uniq), (ts, op));
        } else if let Some((t0, op)) = pending.remove(&(conn, uniq)) {
            let c = out.entry(conn).or_default().entry(op).or_default();
            c.replied += 1;
            c.latency_s += ts - t0;
        }
    }
    out
}

impl Drop for Tracer {
    fn drop(&mut self) {
        let _ = fs::write(self.dir.join("events/fuse/enable"), "0");
        let _ = fs::remove_dir(&self.dir);
    }
}

pub(crate) fn counts_text(c: &BTreeMap<String, OpCount>) -> String {
    let mut v: Vec<_> = c.iter().collect();
    v.sort_by(|a, b| b.1.n.cmp(&a.1.n).then(a.0.cmp(b.0)));
    let total: u64 = v.iter().map(|x| x.1.n).sum();
    let busy: f64 = v.iter().map(|x| x.1.latency_s).sum();
    let mut s = format!("{:>6} req, {:>7} in flight:", total, ms(busy));
    for (op, k) in v {
        let _ = write!(s, " {op} {}", k.n);
        if k.replied > 0 {
            let _ = write!(s, " ({:.0} µs)", k.latency_s / k.replied as f64 * 1e6);
        }
    }
    s
}

pub(crate) fn counts_json(c: &BTreeMap<String, OpCount>) -> String {
    let items: Vec<String> = c
        .iter()
        .map(|(op, k)| {
            format!(
                "{}:{{\"count\":{},\"replied\":{},\"in_flight_s\":{}}}",
                json_str(op),
                k.n,
                k.replied,
                jnum(k.latency_s)
            )
        })
        .collect();
    format!("{{{}}}", items.join(","))
}
