//! Issue 18, aggregate bounds: the receive memory of a whole shard is bounded.
//!
//! Proves: 64 peers each sending most of a 60 KiB extension message (under every per-message
//! bound) and then stalling cannot make a shard hold more than
//! `recv_buffer_bytes_per_shard_max` (1 MiB here) of partial messages: the peers past it
//! are closed as `recv_memory_limit`, the `squall_recv_buffer_bytes` gauge stays within the
//! budget, and a fresh peer is still served a block, byte-identical; with multishot recvs
//! (copied from the ring) and with single recvs (the kernel writes into the peer's buffer).
//! Needs no external tools.

mod common;

use common::*;
use squall_engine::wire::{
    decode_frame, encode, parse_handshake, BlockRequest, Handshake, Message,
};
use std::io::{Read, Write};
use std::net::TcpStream;

const BUDGET_BYTES: usize = 1 << 20;
const STALLERS: usize = 64;
/// Declared length of each staller's extension message, and how much of it is sent.
const MESSAGE_BYTES: usize = 60 * 1024;
const SENT_BYTES: usize = 50 * 1024;

fn handshake(s: &mut TcpStream, info_hash: [u8; 20]) -> Vec<u8> {
    s.write_all(&Handshake::new(info_hash, *b"-TT0001-recvbudget01", true, true).to_bytes())
        .unwrap();
    let mut buf = Vec::new();
    loop {
        if let Ok(Some(_)) = parse_handshake(&buf) {
            buf.drain(..68);
            return buf;
        }
        let mut tmp = [0u8; 4096];
        let n = s.read(&mut tmp).expect("read the handshake");
        assert!(n > 0, "closed before the handshake");
        buf.extend_from_slice(&tmp[..n]);
    }
}

fn run(multishot: bool) {
    let dir = tempfile::tempdir().unwrap();
    let (data, info_hash) = one_file_catalog(dir.path(), 1 << 20, 5);
    let squall = seed_catalog_with_engine(
        dir.path(),
        &dir.path().join("torrents"),
        &dir.path().join("data"),
        &format!(
            "multishot_recv = {multishot}\nmessage_len_max_bytes = 65536\n\
             recv_buffer_bytes_per_shard_max = {BUDGET_BYTES}\npeers_per_ip_max = 1000\n\
             peers_per_prefix_max = 1000\nidle_timeout_secs = 600\nhandshake_timeout_secs = 60\n"
        ),
    );
    let admin = squall.admin.expect("admin");
    let mut stallers = Vec::new();
    for _ in 0..STALLERS {
        let mut s = raw_connect(squall.addr);
        handshake(&mut s, info_hash);
        let mut msg = ((MESSAGE_BYTES + 1) as u32).to_be_bytes().to_vec();
        msg.push(20); // BEP 10 extended
        msg.resize(4 + SENT_BYTES, b'x');
        // A peer closed for the budget may reset before all of it is written.
        let _ = s.write_all(&msg);
        stallers.push(s);
    }
    let closed = wait_metric_with_reason(
        admin,
        "squall_peers_closed_total",
        "recv_memory_limit",
        (STALLERS - BUDGET_BYTES / SENT_BYTES) as f64,
    );
    assert!(
        closed >= (STALLERS - BUDGET_BYTES / SENT_BYTES) as f64,
        "multishot {multishot}: closed for the budget: {closed}"
    );
    let held = metric_sum(&http_get(admin, "/metrics").1, "squall_recv_buffer_bytes");
    assert!(
        held > 0.0 && held <= BUDGET_BYTES as f64,
        "multishot {multishot}: held {held}"
    );
    // A peer with small messages is still served.
    let mut honest = raw_connect(squall.addr);
    let mut buf = handshake(&mut honest, info_hash);
    let mut out = Vec::new();
    encode(&Message::Interested, &mut out);
    let want = BlockRequest {
        index: 2,
        begin: 16384,
        length: 16384,
    };
    encode(&Message::Request(want), &mut out);
    honest.write_all(&out).unwrap();
    loop {
        if let Ok(Some((m, used))) = decode_frame(&buf, 1 << 20) {
            if let Message::Piece {
                index,
                begin,
                data: block,
            } = m
            {
                assert_eq!((index, begin), (want.index, want.begin));
                let at = (index * 262_144 + begin) as usize;
                assert_eq!(block, &data[at..at + 16384]);
                break;
            }
            buf.drain(..used);
            continue;
        }
        let mut tmp = [0u8; 65536];
        let n = honest.read(&mut tmp).expect("honest read");
        assert!(n > 0, "multishot {multishot}: honest peer closed");
        buf.extend_from_slice(&tmp[..n]);
    }
    drop(stallers);
    let (code, _) = squall.terminate();
    assert_eq!(code, Some(0));
}

#[test]
fn partial_large_messages_cannot_grow_a_shard_past_its_receive_budget() {
    run(true);
    run(false);
}

#[test]
fn the_budget_must_hold_one_largest_message() {
    // Proves: config check refuses a receive budget smaller than one message, with the fix.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("squall.toml");
    std::fs::write(
        &config,
        "[engine]\nmessage_len_max_bytes = 65536\nrecv_buffer_bytes_per_shard_max = 65536\n",
    )
    .unwrap();
    let out = std::process::Command::new(squall_bin())
        .args(["config", "check", "--syntax-only"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("recv_buffer_bytes_per_shard_max = 65536") && err.contains("at least 65540"),
        "{err}"
    );
}
