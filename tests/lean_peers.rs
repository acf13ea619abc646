//! Issue 24, lean peers: the seeder's own memory per connected peer stays bounded.
//!
//! Proves: 2,000 peers connect to a real `squall seed` (configs/bench.toml: per-IP limits off),
//! all handshaken, each requesting once a second (open loop) and every one served, every
//! piece verified; the seeder's own memory (RssAnon + RssShmem of /proc/PID/status) with them
//! connected, less its idle baseline, is at most `OWN_BYTES_PER_PEER_MAX` per peer. Before the
//! peers were made lean (each held its send, receive and batch buffers and ~950 bytes of
//! struct for its whole life) this measured ~1,900 bytes per peer and fails the bound;
//! scripts/bench-peers.sh measures the same at 19,000 peers with churn. Needs no external tools.

mod common;

use common::*;
use squall_bench::{RunOptions, Verify};
use std::time::Duration;

const PEERS: usize = 2000;
/// The bound: 837-1,026 bytes measured after the change over 5 runs (test build; 1,894 with
/// e539da5's binary), with room for allocator noise at 2,000 peers (the idle baseline itself
/// moves by up to ~300 KiB, ~150 bytes per peer).
const OWN_BYTES_PER_PEER_MAX: u64 = 1400;
/// Small pieces (2 blocks), so a peer at one request per second completes pieces in the run.
const PIECE_BYTES: &str = "32768";

/// Own memory of `pid`: RssAnon + RssShmem, in KiB.
fn own_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .filter(|l| l.starts_with("RssAnon:") || l.starts_with("RssShmem:"))
        .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum()
}

/// Raises this process's soft RLIMIT_NOFILE to its hard limit (the seeder it starts
/// inherits it); the bench and the seeder each hold one fd per peer.
fn raise_nofile() -> u64 {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit on a valid, owned struct.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl), 0);
        rl.rlim_cur = rl.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &rl), 0);
    }
    rl.rlim_cur
}

#[test]
fn connected_peers_cost_a_bounded_own_memory() {
    let nofile = raise_nofile();
    assert!(
        nofile as usize > PEERS + 200,
        "RLIMIT_NOFILE hard limit {nofile} is below {PEERS} peers"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let (data, torrents) = (dir.path().join("data"), dir.path().join("torrents"));
    std::fs::create_dir_all(&data).expect("mkdir");
    std::fs::create_dir_all(&torrents).expect("mkdir");
    let mut bytes = Vec::new();
    squall_bench::content::write_content(&mut bytes, 16 << 20).expect("content");
    std::fs::write(data.join("lean.bin"), &bytes).expect("write");
    let torrent_path = torrents.join("lean.bin.torrent");
    squall_make(
        &data.join("lean.bin"),
        &torrent_path,
        &["--piece-length", PIECE_BYTES],
    );
    let config = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/bench.toml");
    let squall = SeedArgs::catalog(&torrents, &data)
        .config(&config)
        .state(&dir.path().join("state"))
        .shards(1)
        .args(&["--admin", "off", "--summary-secs", "0"])
        .start();
    let pid = squall.child.id();
    std::thread::sleep(Duration::from_secs(1));
    let base_kib = own_kib(pid);

    let torrent = squall_bench::load_torrent(&torrent_path).expect("torrent");
    let mut opts = RunOptions::new(squall.addr, vec![torrent]);
    opts.peers = PEERS;
    opts.depth = 4;
    opts.rate_per_sec = Some(PEERS as f64); // one request per peer per second
    opts.warmup_secs = 4;
    opts.duration_secs = 4;
    opts.verify = Verify::Full;
    opts.source_ips = squall_bench::parse_ip_range("127.0.0.2-127.0.0.250").expect("range");
    // The seeder's memory is read halfway through the measured window, every peer connected.
    let sampler = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(6));
        own_kib(pid)
    });
    let result = squall_bench::run(opts).expect("run");
    let with_peers_kib = sampler.join().expect("sampler");
    drop(squall);

    let pe = result.peers_at_end;
    assert_eq!(pe.connected, PEERS as u64, "{result:?}");
    assert_eq!(pe.handshaken, PEERS as u64, "{result:?}");
    assert_eq!(pe.served, PEERS as u64, "every peer served: {result:?}");
    assert!(result.pieces_verified > 0, "{result:?}");
    assert_eq!(result.bad_pieces, 0, "{result:?}");
    for kind in ["protocol_errors", "disconnects", "connect_failed"] {
        assert_eq!(
            result.errors.get(kind).copied(),
            Some(0),
            "{kind}: {result:?}"
        );
    }
    let per_peer = with_peers_kib.saturating_sub(base_kib) * 1024 / PEERS as u64;
    eprintln!(
        "own memory: idle {base_kib} KiB, with {PEERS} peers {with_peers_kib} KiB: \
         {per_peer} bytes per peer (bound {OWN_BYTES_PER_PEER_MAX})"
    );
    assert!(
        per_peer <= OWN_BYTES_PER_PEER_MAX,
        "{per_peer} bytes of own memory per connected peer (idle {base_kib} KiB, with \
         {PEERS} peers {with_peers_kib} KiB), bound {OWN_BYTES_PER_PEER_MAX}"
    );
}
