//! Resource limits the operator's machine imposes: squall degrades gracefully and recovers.

mod common;

use common::*;
use std::process::Command;
use std::time::{Duration, Instant};

/// GET /metrics, or None while the endpoint cannot answer (e.g. no fd left to accept with).
fn try_metrics(admin: std::net::SocketAddr) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&admin, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.contains(" 200 ").then_some(out)
}

fn prlimit_available() -> bool {
    tool_available("prlimit", Command::new("prlimit").arg("--version"))
}

/// With only 64 file descriptors, a burst of connections exhausts them: accepts fail and are
/// counted, squall stays up, and once the burst is gone a fresh download completes.
#[test]
fn fd_exhaustion_is_counted_and_recovers() {
    if !prlimit_available() || !libtorrent_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let content = dir.path().join("content");
    let state = dir.path().join("state");
    write_file(&content.join("f.bin"), &pattern_bytes(2 << 20, 22));
    let mut squall = SquallProcess::start_under(
        &["prlimit", "--nofile=64:64"],
        &[
            content.to_str().unwrap(),
            "--state",
            state.to_str().unwrap(),
            "--admin",
            "127.0.0.1:0",
            "--shards",
            "1",
        ],
    );
    let admin = squall.admin.expect("admin address");
    let burst: Vec<_> = (0..120)
        .filter_map(|_| std::net::TcpStream::connect(squall.addr).ok())
        .collect();
    // While the burst holds every fd, even the admin endpoint cannot accept; let the shard
    // hit EMFILE for a few ticks, then release the burst and read the counters.
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        squall.child.try_wait().unwrap().is_none(),
        "squall died under fd exhaustion"
    );
    drop(burst);
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut accept_errors = 0.0;
    while Instant::now() < deadline {
        if let Some(page) = try_metrics(admin) {
            accept_errors = metric_sum(&page, "squall_accept_errors_total");
            if accept_errors > 0.0 {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(
        accept_errors > 0.0,
        "accept failures under fd exhaustion were not counted"
    );
    // Accepted burst connections send nothing: the handshake timeout frees them; accepts are
    // re-armed on the next tick. A fresh download then works.
    let save = dir.path().join("dl");
    let r = lt_download(
        Source::Torrent(&made_torrent(&state, "f.bin")),
        &save,
        &squall.peer(),
        &[],
    );
    assert!(r.ok, "{}", r.json);
    assert_same_tree(&content.join("f.bin"), &save.join("f.bin"));
}
