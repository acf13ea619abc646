//! The one HTTP/1.1 client of the admin endpoint that `squall stats` and `squall torrents`
//! share: connect with a deadline, send one request, read a bounded answer.
//!
//! Owns: the request line and headers, the timeouts, the response size bound and the
//! "cannot reach" / "not an HTTP response" errors. Must never: read an unbounded response or
//! wait without a deadline; what a status means is the caller's.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Largest response read (a /stats document is a few KiB per shard; an API page of at most
/// 1000 rows is well below it).
pub const RESPONSE_MAX_BYTES: u64 = 16 << 20;

/// One request to the admin endpoint at `addr`: `(status, body)`. `body` Some sends it as a
/// .torrent upload (with its length); `unreachable_hint` ends the "cannot reach" error.
pub fn request(
    addr: SocketAddr,
    token: Option<&str>,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
    timeout: Duration,
    unreachable_hint: &str,
) -> Result<(u16, String), String> {
    let unreachable = |e: std::io::Error| {
        format!("cannot reach the admin endpoint at {addr}: {e} ({unreachable_hint})")
    };
    let mut stream = TcpStream::connect_timeout(&addr, timeout).map_err(unreachable)?;
    let _ = stream.set_read_timeout(Some(timeout));
    let _ = stream.set_write_timeout(Some(timeout));
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let content = body
        .map(|b| {
            format!(
                "Content-Type: application/x-bittorrent\r\nContent-Length: {}\r\n",
                b.len()
            )
        })
        .unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}{content}Connection: close\r\n\r\n"
    );
    stream
        .write_all(head.as_bytes())
        .and_then(|_| stream.write_all(body.unwrap_or(&[])))
        .map_err(unreachable)?;
    let mut raw = Vec::new();
    stream
        .take(RESPONSE_MAX_BYTES)
        .read_to_end(&mut raw)
        .map_err(unreachable)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("{addr}: not an HTTP response (is it a squall admin endpoint?)"))?;
    let status: u16 = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok((status, body.to_string()))
}
