//! Issue 18, deadlines: peers that never read cannot hold the send slots forever.
//!
//! Proves: with every send slot held by peers that requested hundreds of blocks through a
//! 4 KiB receive buffer and then stopped reading, an honest peer is still served: each stuck
//! send makes no progress for `send_stall_secs`, its peer is closed (`send_stalled`), and the
//! slot, files and cache references its batch held go back, so the honest peer's blocks
//! arrive byte-identical within a bound. Before the deadline, the honest peer waited forever.
//! Needs no external tools.

mod common;

use common::*;
use squall_engine::wire::{decode_frame, encode, BlockRequest, Message};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

const BLOCK: u32 = 16384;
const SLOTS: usize = 4;
const STALL_SECS: u64 = 2;
const PIECE_LEN: u32 = 256 * 1024;
const STUCK_SOURCE: std::net::Ipv4Addr = std::net::Ipv4Addr::new(127, 0, 0, 1);

fn request(index: u32, begin: u32) -> BlockRequest {
    BlockRequest {
        index,
        begin,
        length: BLOCK,
    }
}

/// Twice as many peers as send slots, peer `p` from `source(p)`, each asking for 512 blocks
/// through a 4 KiB window and then never reading; returned open (their sends stay stuck).
fn stuck_peers(
    addr: SocketAddr,
    info_hash: [u8; 20],
    source: fn(u32) -> std::net::Ipv4Addr,
) -> Vec<TcpStream> {
    let mut stuck = Vec::new();
    for p in 0..2 * SLOTS as u32 {
        let mut s = connect_from(source(p), addr, Some(4096)).expect("connect");
        join_unchoked(&mut s, info_hash, *b"-TT0001-stallstallst", false);
        let mut out = Vec::new();
        for b in 0..512u32 {
            let at = (p * 512 + b) * BLOCK % (16 << 20);
            encode(
                &Message::Request(request(at / PIECE_LEN, at % PIECE_LEN)),
                &mut out,
            );
        }
        s.write_all(&out).expect("requests");
        stuck.push(s);
    }
    std::thread::sleep(Duration::from_millis(500));
    stuck
}

/// Seeds a 16 MiB torrent under `engine_config` (one shard, `SLOTS` send slots), has twice
/// as many peers from `STUCK_SOURCE` as slots ask for 512 blocks each through a 4 KiB window
/// and stop reading, then times how long an honest peer from `honest_source` waits for 4
/// blocks (checked byte for byte). Returns the wait, and squall for its metrics.
fn honest_wait_beside_stuck_peers(
    engine_config: &str,
    stuck_source: fn(u32) -> std::net::Ipv4Addr,
    honest_source: std::net::Ipv4Addr,
) -> (Duration, SquallProcess, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let (data, info_hash) = one_file_catalog(dir.path(), 16 << 20, 9);
    let squall = seed_catalog_with_engine(
        dir.path(),
        &dir.path().join("torrents"),
        &dir.path().join("data"),
        &format!("buffer_pool_slots_per_shard = {SLOTS}\nidle_timeout_secs = 600\n{engine_config}"),
    );
    let stuck = stuck_peers(squall.addr, info_hash, stuck_source);
    // The honest peer reads everything it is sent.
    let started = Instant::now();
    let mut honest = connect_from(honest_source, squall.addr, Some(1 << 20)).expect("connect");
    let mut buf = join_unchoked(&mut honest, info_hash, *b"-TT0001-stallstallst", false);
    let wanted: Vec<BlockRequest> = (0..4).map(|b| request(3, b * BLOCK)).collect();
    for r in &wanted {
        send_message(&mut honest, &Message::Request(*r));
    }
    let mut got = 0;
    while got < wanted.len() {
        if let Ok(Some((m, used))) = decode_frame(&buf, 1 << 20) {
            if let Message::Piece {
                index,
                begin,
                data: block,
            } = m
            {
                let at = (index * PIECE_LEN + begin) as usize;
                assert_eq!(block, &data[at..at + block.len()], "block {index}/{begin}");
                got += 1;
            }
            buf.drain(..used);
            continue;
        }
        let mut tmp = [0u8; 65536];
        let n = honest.read(&mut tmp).expect("honest read");
        assert!(n > 0, "honest peer closed");
        buf.extend_from_slice(&tmp[..n]);
    }
    let waited = started.elapsed();
    drop(stuck);
    (waited, squall, dir)
}

/// Proves the deadline: every slot is held by stuck peers of the honest peer's own source
/// (so no per-source bound helps); the honest peer is served once they are closed as
/// `send_stalled`.
#[test]
fn peers_that_never_read_release_their_slots_at_the_send_deadline() {
    let (waited, squall, _dir) = honest_wait_beside_stuck_peers(
        &format!("send_stall_secs = {STALL_SECS}\nsend_slots_per_ip_max = {SLOTS}\n"),
        |_| STUCK_SOURCE,
        STUCK_SOURCE,
    );
    assert!(
        waited < Duration::from_secs(STALL_SECS + 8),
        "honest blocks took {waited:?}"
    );
    let admin = squall.admin.expect("admin");
    let stalled = wait_metric_with_reason(
        admin,
        "squall_peers_closed_total",
        "send_stalled",
        SLOTS as f64,
    );
    assert!(stalled >= SLOTS as f64, "send_stalled closes: {stalled}");
}

/// Proves the per-source bound: with a deadline far away (60 s), stuck peers of one source
/// hold at most `send_slots_per_ip_max` (2 of 4) slots, so a peer from another source is
/// served at once, and the waits are counted.
#[test]
fn one_source_cannot_take_every_send_slot() {
    let (waited, squall, _dir) = honest_wait_beside_stuck_peers(
        "send_stall_secs = 60\nsend_slots_per_ip_max = 2\n",
        |_| STUCK_SOURCE,
        std::net::Ipv4Addr::new(127, 0, 0, 2),
    );
    assert!(
        waited < Duration::from_secs(5),
        "honest blocks took {waited:?}"
    );
    let page = http_get(squall.admin.expect("admin"), "/metrics").1;
    let closed = metric_sum_with_reason(&page, "squall_peers_closed_total", "send_stalled");
    assert_eq!(closed, 0.0, "served without the deadline");
    let mut limited = 0.0;
    for _ in 0..40 {
        let page = http_get(squall.admin.expect("admin"), "/metrics").1;
        limited = metric_sum(&page, "squall_send_slots_per_ip_limited_total");
        if limited >= 1.0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(limited >= 1.0, "limited waits: {limited}");
}

/// Proves the per-network bound: stuck peers from eight addresses of one /24 (one peer
/// each, so the per-source bound never bites) hold at most `send_slots_per_prefix_max` (2
/// of 4) slots, so a peer from another /24 is served at once, and the waits are counted.
#[test]
fn one_network_cannot_take_every_send_slot() {
    let (waited, squall, _dir) = honest_wait_beside_stuck_peers(
        "send_stall_secs = 60\nsend_slots_per_ip_max = 2\nsend_slots_per_prefix_max = 2\n",
        |p| std::net::Ipv4Addr::new(127, 0, 0, 1 + p as u8),
        std::net::Ipv4Addr::new(127, 0, 1, 1),
    );
    assert!(
        waited < Duration::from_secs(5),
        "honest blocks took {waited:?}"
    );
    let admin = squall.admin.expect("admin");
    let page = http_get(admin, "/metrics").1;
    let closed = metric_sum_with_reason(&page, "squall_peers_closed_total", "send_stalled");
    assert_eq!(closed, 0.0, "served without the deadline");
    let mut limited = 0.0;
    for _ in 0..40 {
        let page = http_get(admin, "/metrics").1;
        limited = metric_sum(&page, "squall_send_slots_per_prefix_limited_total");
        if limited >= 1.0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(limited >= 1.0, "limited waits: {limited}");
    let per_ip = metric_sum(&page, "squall_send_slots_per_ip_limited_total");
    assert_eq!(per_ip, 0.0, "no source reached its own bound");
}

/// Proves the shutdown reap: with every send slot held by peers that never read (sends in
/// flight, the deadline far away), SIGTERM ends squall with status 0 after the drain, and
/// no shard exits with io_uring ops in flight (every op was cancelled or finished and
/// reaped before the memory it names was freed).
#[test]
fn shutdown_with_stuck_sends_reaps_every_op_before_freeing() {
    let dir = tempfile::tempdir().unwrap();
    let (_, info_hash) = one_file_catalog(dir.path(), 16 << 20, 9);
    let mut squall = seed_catalog_with_engine(
        dir.path(),
        &dir.path().join("torrents"),
        &dir.path().join("data"),
        &format!(
            "buffer_pool_slots_per_shard = {SLOTS}\nidle_timeout_secs = 600\n\
             send_stall_secs = 600\nsend_slots_per_ip_max = {SLOTS}\n"
        ),
    );
    let stuck = stuck_peers(squall.addr, info_hash, |_| STUCK_SOURCE);
    // SAFETY: plain kill(2) on our child's pid.
    unsafe { libc::kill(squall.child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Ok(Some(status)) = squall.child.try_wait() {
            break status;
        }
        assert!(Instant::now() < deadline, "squall did not exit");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0));
    // The reader thread forwards stderr until EOF, then hangs up.
    let mut stderr = Vec::new();
    while let Ok(line) = squall.stderr_lines.recv_timeout(Duration::from_secs(5)) {
        stderr.push(line);
    }
    assert!(
        !stderr.iter().any(|l| l.contains("ops in flight")),
        "{stderr:#?}"
    );
    drop(stuck);
}
