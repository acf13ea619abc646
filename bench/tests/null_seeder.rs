use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use squall_bench::{content, NullSeeder, RunOptions, Verify};

#[test]
fn bench_against_null_seeder_verifies_every_piece() {
    // Proves: the bench and the null seeder speak the protocol to each other end to end, the
    // null seeder's pattern content matches a torrent made from `gen-content` bytes (every
    // completed piece verifies, none is bad), and a run reports bytes, latency and a timeline.
    let mut data = Vec::new();
    content::write_content(&mut data, 4 << 20).expect("content");
    let torrent = Arc::new(content::torrent_for_bytes("t", &data, 256 * 1024).expect("torrent"));
    let seeder = NullSeeder::bind(
        SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0),
        vec![torrent.clone()],
    )
    .expect("bind");
    let addr = seeder.local_addr();
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let server = std::thread::spawn(move || seeder.serve(stop2));
    let mut opts = RunOptions::new(SocketAddr::V4(addr), vec![torrent]);
    opts.peers = 4;
    opts.depth = 16;
    opts.duration_secs = 1;
    opts.verify = Verify::Full;
    opts.threads = 2;
    opts.source_ips = squall_bench::parse_ip_range("127.0.0.2-127.0.0.5").expect("range");
    let r = squall_bench::run(opts).expect("run");
    stop.store(true, Ordering::Relaxed);
    let served = server.join().expect("join").expect("serve");
    assert!(r.bytes > 0, "{r:?}");
    assert!(r.pieces_verified > 0, "{r:?}");
    assert_eq!(r.bad_pieces, 0);
    assert_eq!(r.errors["protocol_errors"], 0);
    assert!(r.latency_us.p50 > 0);
    assert_eq!(r.timeline.len(), 1);
    assert!(served.bytes >= r.bytes);
}

#[test]
fn open_loop_against_null_seeder_sends_about_the_rate() {
    // Proves: open loop sends on schedule (blocks received ~ rate x duration, not the
    // closed-loop maximum) and still verifies.
    let mut data = Vec::new();
    content::write_content(&mut data, 1 << 20).expect("content");
    let torrent = Arc::new(content::torrent_for_bytes("t", &data, 64 * 1024).expect("torrent"));
    let seeder = NullSeeder::bind(
        SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0),
        vec![torrent.clone()],
    )
    .expect("bind");
    let addr = seeder.local_addr();
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let server = std::thread::spawn(move || seeder.serve(stop2));
    let mut opts = RunOptions::new(SocketAddr::V4(addr), vec![torrent]);
    opts.peers = 2;
    opts.depth = 8;
    opts.duration_secs = 1;
    opts.rate_per_sec = Some(2000.0);
    let r = squall_bench::run(opts).expect("run");
    stop.store(true, Ordering::Relaxed);
    server.join().expect("join").expect("serve");
    assert!(r.blocks > 1000 && r.blocks <= 2100, "{} blocks", r.blocks);
    assert_eq!(r.bad_pieces, 0);
}
