//! `squall-bench http`: a pipelining HTTP/1.1 range-request load generator, for comparing
//! Squall's HTTP front-end with nginx on the same file.
//!
//! Owns: one epoll thread driving `connections` keep-alive connections, each keeping `depth`
//! GET requests for random `range_bytes` ranges of one file in flight (pipelined), parsing
//! the answers' heads and skipping their bodies (counted, not checked: correctness is the
//! job of tests/http.rs), and the report: requests/s, Gb/s, its own CPU seconds and the
//! target's (from /proc). Must never: keep body bytes, or count an answer other than 206.
//! One thread on purpose: its CPU time is one core's, so a run says whether the generator
//! itself was the limit (`bench_cpu_secs` close to `secs`).

use crate::sys;
use std::net::{SocketAddrV4, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

/// Receive buffer of the generator (one, shared by every connection).
const RECV_BUFFER_BYTES: usize = 1 << 20;
/// Longest answer head accepted.
const HEAD_BYTES_MAX: usize = 16 * 1024;

#[derive(Debug, Clone)]
pub struct HttpOptions {
    pub target: SocketAddrV4,
    /// URL path of the file, e.g. `/data.bin`.
    pub path: String,
    pub file_len_bytes: u64,
    pub connections: usize,
    /// Requests in flight per connection.
    pub depth: usize,
    pub range_bytes: u64,
    pub duration_secs: u64,
    pub target_pid: Option<u32>,
    pub seed: u64,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct HttpReport {
    pub requests: u64,
    pub body_bytes: u64,
    pub secs: f64,
    pub requests_per_sec: f64,
    pub gbps: f64,
    /// This generator's CPU seconds (one thread).
    pub bench_cpu_secs: f64,
    /// The target's CPU seconds over the run (None without `target_pid`).
    pub target_cpu_secs: Option<f64>,
    /// Target CPU seconds per GB (1e9 bytes) of body served.
    pub target_cpu_secs_per_gb: Option<f64>,
    /// Answers other than 206, and connections lost.
    pub errors: u64,
}

struct Conn {
    stream: TcpStream,
    /// Requests written (or queued in `out`) and not yet answered.
    owed: usize,
    out: Vec<u8>,
    out_sent: usize,
    head: Vec<u8>,
    /// Body bytes of the current answer still to skip; None while reading a head.
    body_left: Option<u64>,
    want_write: bool,
}

/// xorshift64: deterministic random offsets.
fn next_random(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

fn queue_requests(c: &mut Conn, o: &HttpOptions, rng: &mut u64) {
    if c.out_sent == c.out.len() {
        c.out.clear();
        c.out_sent = 0;
    }
    let span = o.file_len_bytes.saturating_sub(o.range_bytes).max(1);
    while c.owed < o.depth {
        let start = next_random(rng) % span;
        let end = (start + o.range_bytes).min(o.file_len_bytes) - 1;
        let req = format!(
            "GET {} HTTP/1.1\r\nHost: bench\r\nRange: bytes={start}-{end}\r\n\r\n",
            o.path
        );
        c.out.extend_from_slice(req.as_bytes());
        c.owed += 1;
    }
}

/// Parses one answer head: (status, Content-Length).
fn parse_head(head: &[u8]) -> Option<(u16, u64)> {
    let text = std::str::from_utf8(head).ok()?;
    let status = text.split(' ').nth(1)?.parse().ok()?;
    let len = text.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("content-length")
            .then(|| v.trim().parse().ok())?
    })?;
    Some((status, len))
}

/// Runs the load for `duration_secs` and reports.
pub fn run(o: &HttpOptions) -> Result<HttpReport, String> {
    if o.connections == 0 || o.depth == 0 || o.range_bytes == 0 || o.file_len_bytes == 0 {
        return Err("connections, depth, range and file length must be at least 1".into());
    }
    let epoll = sys::Epoll::new().map_err(|e| e.to_string())?;
    let mut conns = Vec::with_capacity(o.connections);
    let mut rng = o.seed | 1;
    for i in 0..o.connections {
        let stream =
            TcpStream::connect(o.target).map_err(|e| format!("connect {}: {e}", o.target))?;
        let _ = stream.set_nodelay(true);
        stream.set_nonblocking(true).map_err(|e| e.to_string())?;
        epoll
            .add(
                stream.as_raw_fd(),
                (libc::EPOLLIN | libc::EPOLLOUT) as u32,
                i as u64,
            )
            .map_err(|e| e.to_string())?;
        conns.push(Conn {
            stream,
            owed: 0,
            out: Vec::new(),
            out_sent: 0,
            head: Vec::with_capacity(512),
            body_left: None,
            want_write: true,
        });
    }
    let mut report = HttpReport::default();
    let mut buf = vec![0u8; RECV_BUFFER_BYTES];
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
    let target_cpu_start = o.target_pid.and_then(|p| sys::process_cpu_secs(p).ok());
    let cpu_start = sys::thread_cpu_secs();
    let started = Instant::now();
    let deadline = started + Duration::from_secs(o.duration_secs);
    for c in conns.iter_mut() {
        queue_requests(c, o, &mut rng);
    }
    while Instant::now() < deadline {
        let n = epoll
            .wait(&mut events, 100_000_000)
            .map_err(|e| e.to_string())?;
        for ev in &events[..n] {
            let i = ev.u64 as usize;
            let Some(c) = conns.get_mut(i) else { continue };
            let fd = c.stream.as_raw_fd();
            if ev.events & libc::EPOLLIN as u32 != 0 {
                loop {
                    let got = match sys::recv(fd, &mut buf) {
                        Ok(Some(0)) | Err(_) => {
                            return Err(format!("connection {i} closed by the target"));
                        }
                        Ok(Some(n)) => n,
                        Ok(None) => break,
                    };
                    let mut at = 0;
                    while at < got {
                        match c.body_left {
                            Some(left) => {
                                let take = left.min((got - at) as u64);
                                at += take as usize;
                                report.body_bytes += take;
                                if take == left {
                                    c.body_left = None;
                                    c.owed -= 1;
                                    report.requests += 1;
                                } else {
                                    c.body_left = Some(left - take);
                                }
                            }
                            None => {
                                c.head.push(buf[at]);
                                at += 1;
                                if c.head.ends_with(b"\r\n\r\n") {
                                    let (status, len) = parse_head(&c.head)
                                        .ok_or_else(|| "unparseable answer head".to_string())?;
                                    if status != 206 {
                                        report.errors += 1;
                                    }
                                    c.head.clear();
                                    if len == 0 {
                                        c.owed -= 1;
                                        report.requests += 1;
                                    } else {
                                        c.body_left = Some(len);
                                    }
                                } else if c.head.len() > HEAD_BYTES_MAX {
                                    return Err("answer head too long".into());
                                }
                            }
                        }
                    }
                }
                if c.owed < o.depth / 2 + 1 {
                    queue_requests(c, o, &mut rng);
                    c.want_write = true;
                }
            }
            if c.want_write || ev.events & libc::EPOLLOUT as u32 != 0 {
                while c.out_sent < c.out.len() {
                    match sys::send(fd, &c.out[c.out_sent..]) {
                        Ok(0) => break,
                        Ok(n) => c.out_sent += n,
                        Err(e) => return Err(format!("send: {e}")),
                    }
                }
                let blocked = c.out_sent < c.out.len();
                let events = if blocked {
                    libc::EPOLLIN | libc::EPOLLOUT
                } else {
                    libc::EPOLLIN
                };
                epoll
                    .modify(fd, events as u32, i as u64)
                    .map_err(|e| e.to_string())?;
                c.want_write = false;
            }
        }
    }
    report.secs = started.elapsed().as_secs_f64();
    report.bench_cpu_secs = sys::thread_cpu_secs() - cpu_start;
    report.requests_per_sec = report.requests as f64 / report.secs;
    report.gbps = report.body_bytes as f64 * 8.0 / report.secs / 1e9;
    if let (Some(pid), Some(start)) = (o.target_pid, target_cpu_start) {
        if let Ok(end) = sys::process_cpu_secs(pid) {
            let cpu = end - start;
            report.target_cpu_secs = Some(cpu);
            if report.body_bytes > 0 {
                report.target_cpu_secs_per_gb = Some(cpu / (report.body_bytes as f64 / 1e9));
            }
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_parse_status_and_length() {
        // Proves: the answer head parser finds the status and Content-Length in any case.
        let h = b"HTTP/1.1 206 Partial Content\r\ncontent-length: 16384\r\n\r\n";
        assert_eq!(parse_head(h), Some((206, 16384)));
        assert_eq!(parse_head(b"HTTP/1.1 200 OK\r\n\r\n"), None);
    }
}
