//! Hostile HTTP clients against `squall seed --http`: path traversal in every encoding, huge
//! heads, slowloris, half-closed sockets and pipelined floods, each on raw TCP, while an
//! honest download finishes byte-identical. Loopback only; no external tool needed.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

/// Squall with HTTP on a free port and short deadlines (`[http]` in a config file).
fn start(dir: &Path) -> (SquallProcess, SocketAddr) {
    let content = dir.join("content");
    standard_content(&content);
    let config = write_config(
        dir,
        "[http]\nrequest_timeout_secs = 1\nidle_timeout_secs = 3\n",
    );
    let squall = SeedArgs::content(&content)
        .state(&dir.join("state"))
        .config(&config)
        .args(&["--http", "127.0.0.1:0", "--admin", "off"])
        .start();
    let http = squall.http.expect("an `http on` line");
    (squall, http)
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// Everything the server sends until it closes (or the read timeout).
fn read_to_close(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
}

/// The status code of the first response in `raw`.
fn status_of(raw: &[u8]) -> u16 {
    let text = String::from_utf8_lossy(raw);
    text.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"))
}

/// One request on a fresh connection; returns what came back before the close.
fn one_shot(addr: SocketAddr, request: &[u8]) -> Vec<u8> {
    let mut s = connect(addr);
    s.write_all(request).unwrap();
    let _ = s.shutdown(Shutdown::Write);
    read_to_close(&mut s)
}

/// Path traversal, one case per encoding: each is refused with 400 and no body, before any
/// lookup (a URL never becomes a filesystem path).
#[test]
fn traversal_in_every_encoding_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (_squall, http) = start(dir.path());
    for (what, target) in [
        ("dot-dot", &b"/multi/../single.bin"[..]),
        ("percent-encoded dot-dot", b"/multi/%2e%2e/single.bin"),
        ("upper-case percent dot-dot", b"/multi/%2E%2E/single.bin"),
        ("encoded slash", b"/multi%2fsub%2fb.bin"),
        ("backslash", b"/multi\\..\\single.bin"),
        ("encoded backslash", b"/multi%5c..%5csingle.bin"),
        ("encoded NUL", b"/single.bin%00"),
        ("raw NUL", b"/single.bin\0"),
        ("overlong UTF-8 dots", b"/multi/%c0%ae%c0%ae/single.bin"),
        ("empty segment", b"//etc/passwd"),
        ("bad percent", b"/single.bin%zz"),
    ] {
        let mut req = b"GET ".to_vec();
        req.extend_from_slice(target);
        req.extend_from_slice(b" HTTP/1.1\r\nHost: x\r\n\r\n");
        let raw = one_shot(http, &req);
        assert_eq!(status_of(&raw), 400, "{what}");
        assert!(
            String::from_utf8_lossy(&raw).contains("Content-Length: 0"),
            "{what}"
        );
    }
    // Absolute paths outside the catalog are simply not URLs.
    let raw = one_shot(http, b"GET /etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status_of(&raw), 404);
}

/// Oversized request lines and heads, too many fields, a body, a bad version: each gets its
/// status and the connection closes.
#[test]
fn oversized_and_malformed_heads_get_their_status_and_close() {
    let dir = tempfile::tempdir().unwrap();
    let (_squall, http) = start(dir.path());
    let long_line = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(10_000));
    assert_eq!(status_of(&one_shot(http, long_line.as_bytes())), 414);
    let huge = format!(
        "GET /single.bin HTTP/1.1\r\nHost: x\r\nX: {}\r\n\r\n",
        "b".repeat(20_000)
    );
    assert_eq!(status_of(&one_shot(http, huge.as_bytes())), 431);
    let many: String = (0..100).map(|i| format!("X-{i}: y\r\n")).collect();
    let many = format!("GET /single.bin HTTP/1.1\r\nHost: x\r\n{many}\r\n");
    assert_eq!(status_of(&one_shot(http, many.as_bytes())), 431);
    let body =
        b"GET /single.bin HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
    assert_eq!(status_of(&one_shot(http, body)), 400);
    assert_eq!(
        status_of(&one_shot(http, b"GET / HTTP/3.0\r\nHost: x\r\n\r\n")),
        400
    );
    // A 431 without a half-close: the server closes on its own, after answering.
    let mut s = connect(http);
    s.write_all(huge.as_bytes()).unwrap();
    let raw = read_to_close(&mut s);
    assert_eq!(status_of(&raw), 431);
}

/// Slowloris (a head trickled byte by byte) is answered 408 and cut at
/// `request_timeout_secs`; an idle connection is closed at `idle_timeout_secs`; a
/// half-closed client still gets its whole answer.
#[test]
fn slowloris_idle_and_half_closed_connections() {
    let dir = tempfile::tempdir().unwrap();
    let (_squall, http) = start(dir.path());
    let started = Instant::now();
    let mut slow = connect(http);
    // Trickle for 2.5 s (past the 1 s deadline and a tick), then stop writing and read:
    // the 408 must be there, then the close.
    for b in b"GET /single.bin HTTP/1.1\r\nHost: x\r\nX-Slow: "
        .iter()
        .cycle()
        .take(50)
    {
        if slow.write_all(&[*b]).is_err() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let rest = read_to_close(&mut slow);
    assert_eq!(status_of(&rest), 408, "slowloris answer: {rest:?}");
    let text = String::from_utf8_lossy(&rest);
    assert!(text.contains("Connection: close\r\n"), "{text}");
    assert!(
        started.elapsed() < Duration::from_secs(9),
        "slowloris was not cut"
    );

    let started = Instant::now();
    let mut idle = connect(http);
    assert!(read_to_close(&mut idle).is_empty());
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(8),
        "idle close after {took:?}"
    );

    let raw = one_shot(http, b"GET /multi/z-small.txt HTTP/1.1\r\nHost: x\r\n\r\n");
    let want = std::fs::read(dir.path().join("content/multi/z-small.txt")).unwrap();
    assert_eq!(status_of(&raw), 200);
    assert!(raw.ends_with(&want), "half-closed client got a cut answer");
}

/// A pipelined flood (thousands of range requests written at once, read slowly) on several
/// connections is answered in order and in full, while curl's honest download of the whole
/// file finishes byte-identical.
#[test]
fn pipelined_flood_with_an_honest_download_beside_it() {
    let dir = tempfile::tempdir().unwrap();
    let (_squall, http) = start(dir.path());
    let single = std::fs::read(dir.path().join("content/single.bin")).unwrap();
    const REQUESTS: usize = 2000;
    let floods: Vec<_> = (0..4)
        .map(|f| {
            std::thread::spawn(move || {
                let mut s = connect(http);
                let mut reader = s.try_clone().unwrap();
                let reading = std::thread::spawn(move || {
                    std::thread::sleep(Duration::from_millis(300)); // let the server back up
                    read_to_close(&mut reader)
                });
                let mut all = Vec::new();
                for i in 0..REQUESTS {
                    let start = (i * 997 + f * 13) % 2_000_000;
                    all.extend_from_slice(
                        format!(
                            "GET /single.bin HTTP/1.1\r\nHost: x\r\nRange: bytes={start}-{}\r\n\r\n",
                            start + 99
                        )
                        .as_bytes(),
                    );
                }
                all.extend_from_slice(b"GET /single.bin HTTP/1.1\r\nHost: x\r\nConnection: close\r\nRange: bytes=0-0\r\n\r\n");
                s.write_all(&all).unwrap();
                reading.join().unwrap()
            })
        })
        .collect();
    let honest = if tool_available("curl", std::process::Command::new("curl").arg("--version")) {
        let out = std::process::Command::new("curl")
            .args(["-sS", "--max-time", "60"])
            .arg(format!("http://{http}/single.bin"))
            .output()
            .unwrap();
        Some(out.stdout)
    } else {
        None
    };
    for (f, flood) in floods.into_iter().enumerate() {
        let raw = flood.join().unwrap();
        let text = String::from_utf8_lossy(&raw);
        let answers = text.matches("HTTP/1.1 206 Partial Content").count();
        assert_eq!(
            answers,
            REQUESTS + 1,
            "flood {f}: every pipelined request answered"
        );
    }
    if let Some(body) = honest {
        assert!(body == single, "the honest download is byte-identical");
    }
}
