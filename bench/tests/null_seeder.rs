use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use squall_bench::{content, NullSeeder, RunOptions, Verify};

#[test]
fn bench_against_null_seeder_verifies_every_piece() {
    // Proves: the bench and the null seeder speak the protocol to each other end to end, the
    // null seeder's pattern content matches a torrent made from `gen-content` bytes (every
    // completed piece verifies, none is bad), and a run reports bytes, latency and a timeline.
    let seeder = null_seeder(4 << 20, 256 * 1024);
    let mut opts = RunOptions::new(seeder.addr, vec![seeder.torrent.clone()]);
    opts.peers = 4;
    opts.depth = 16;
    opts.duration_secs = 1;
    opts.verify = Verify::Full;
    opts.threads = 2;
    opts.source_ips = squall_bench::parse_ip_range("127.0.0.2-127.0.0.5").expect("range");
    let r = squall_bench::run(opts).expect("run");
    let served = seeder.finish();
    assert!(r.bytes > 0, "{r:?}");
    assert!(r.pieces_verified > 0, "{r:?}");
    assert_eq!(r.bad_pieces, 0);
    assert_eq!(
        r.verify_skipped_out_of_order, 0,
        "the null seeder answers in order: streaming verification skips nothing"
    );
    assert_eq!(r.errors["protocol_errors"], 0);
    assert!(r.latency_us.p50 > 0);
    assert_eq!(r.timeline.len(), 1);
    assert!(served.bytes >= r.bytes);
    // The bench's own CPU is measured per thread over the window: busy, but never more than
    // the time its two threads had (plus the slop of where each thread's window opens).
    assert!(r.bench_cpu_secs > 0.0, "{r:?}");
    assert!(
        r.bench_busy > 0.0 && r.bench_busy <= 1.05,
        "{}",
        r.bench_busy
    );
    assert!(r.human().contains("bench cpu"), "{}", r.human());
    assert_eq!(
        r.stalled_at_end.total(),
        0,
        "a healthy seeder leaves nobody waiting"
    );
}

#[test]
fn open_loop_against_null_seeder_sends_about_the_rate() {
    // Proves: open loop sends on schedule (blocks received ~ rate x duration, not the
    // closed-loop maximum) and still verifies.
    let r = open_loop_2000_per_sec(0);
    // 2,000 small requests a second leave the bench's thread mostly asleep: CPU time, not
    // wall time, is what bench_busy counts.
    assert!(r.bench_busy < 0.5, "bench busy {}", r.bench_busy);
    assert!(!r.human().contains("warning"), "{}", r.human());
}

#[test]
fn open_loop_with_spin_keeps_the_schedule_and_counts_polling_as_idle() {
    // Proves: --spin-us (poll instead of sleep near a due request) sends the same schedule
    // as sleeping, and the polling is accounted as idle: the thread is on CPU nearly the
    // whole second, yet bench_busy counts only the work.
    let r = open_loop_2000_per_sec(1000);
    assert_eq!(r.spin_us, 1000);
    assert!(r.bench_spin_secs > 0.0, "{r:?}");
    assert!(r.bench_busy < 0.5, "bench busy {}", r.bench_busy);
    assert!(r.human().contains("polling idle"), "{}", r.human());
}

/// One second of 2 peers asking 2,000 blocks/s in all from a fresh null seeder; checks that
/// the schedule was kept (not the closed-loop maximum) and every piece verified.
fn open_loop_2000_per_sec(spin_us: u64) -> squall_bench::RunReport {
    let seeder = null_seeder(1 << 20, 64 * 1024);
    let mut opts = RunOptions::new(seeder.addr, vec![seeder.torrent.clone()]);
    opts.peers = 2;
    opts.depth = 8;
    opts.duration_secs = 1;
    opts.rate_per_sec = Some(2000.0);
    opts.spin_us = spin_us;
    let r = squall_bench::run(opts).expect("run");
    seeder.finish();
    assert!(r.blocks > 1000 && r.blocks <= 2100, "{} blocks", r.blocks);
    assert_eq!(r.bad_pieces, 0);
    r
}

/// A null seeder on a thread; `finish` stops it and returns its counters.
struct Running {
    addr: SocketAddr,
    torrent: Arc<squall_engine::metainfo::torrent::Torrent>,
    stop: Arc<AtomicBool>,
    server: std::thread::JoinHandle<Result<squall_bench::NullSeederStats, String>>,
}

impl Running {
    fn finish(self) -> squall_bench::NullSeederStats {
        self.stop.store(true, Ordering::Relaxed);
        self.server.join().expect("join").expect("serve")
    }
}

/// Starts a null seeder for a `size_bytes` torrent with `piece_len` pieces.
fn null_seeder(size_bytes: u64, piece_len: u64) -> Running {
    let mut data = Vec::new();
    content::write_content(&mut data, size_bytes).expect("content");
    let torrent = Arc::new(content::torrent_for_bytes("t", &data, piece_len).expect("torrent"));
    let seeder = NullSeeder::bind(
        SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0),
        vec![torrent.clone()],
    )
    .expect("bind");
    let addr = SocketAddr::V4(seeder.local_addr());
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let server = std::thread::spawn(move || seeder.serve(stop2));
    Running {
        addr,
        torrent,
        stop,
        server,
    }
}

#[test]
fn churn_arrivals_follow_the_schedule_not_the_seeder() {
    // Proves: churn is open loop. At 50 joins/s for 2 s exactly 100 arrivals are due; every
    // one gets a slot and dials (counted, not timed: a loaded machine may run late, but a
    // late loop admits the overdue arrivals rather than skipping them), peers fetch their
    // 1 MiB and leave, and the report carries joins/s, sessions and connect latency.
    let seeder = null_seeder(8 << 20, 256 * 1024);
    let mut opts = RunOptions::new(seeder.addr, vec![seeder.torrent.clone()]);
    opts.peers = 200; // the max-concurrent-peers limit, far above what 50/s needs
    opts.depth = 16;
    opts.duration_secs = 2;
    opts.verify = Verify::Full;
    opts.leave_after_bytes = Some(1 << 20);
    opts.join_rate_per_sec = Some(50.0);
    opts.threads = 2;
    opts.source_ips = squall_bench::parse_ip_range("127.0.0.2-127.0.0.9").expect("range");
    let r = squall_bench::run(opts).expect("run");
    seeder.finish();
    let c = r.churn.clone().expect("a churn run reports churn");
    assert!(
        (95..=100).contains(&c.joins_started),
        "50/s x 2 s = 100 arrivals: {c:?}"
    );
    assert!((c.joins_per_sec - 50.0).abs() <= 2.5, "{c:?}");
    assert_eq!(c.joins_dropped_at_limit, 0, "{c:?}");
    assert!(c.sessions_completed > 0, "{c:?}");
    assert!(c.sessions_completed <= c.joins_started, "{c:?}");
    assert!(r.connect_us.p50 > 0, "{r:?}");
    assert_eq!(r.bad_pieces, 0);
    assert!(r.pieces_verified > 0);
    // The HTML report carries the churn table too, with these counts.
    let page = squall_bench::report::html("churn", &[("null".to_string(), r.clone())]);
    assert!(page.contains("Churn (open-loop arrivals)"), "{page}");
    assert!(
        page.contains(&format!("<td>{}</td>", c.joins_started)),
        "{page}"
    );
}

#[test]
fn churn_counts_arrivals_dropped_at_the_concurrency_limit() {
    // Proves: when the max-concurrent-peers limit is reached, further arrivals are dropped
    // and counted, never silently lost: 2 slots held by peers that never finish (budget
    // larger than the run can fetch), 50/s for 1 s -> 2 started, the other 48 dropped.
    let seeder = null_seeder(1 << 20, 64 * 1024);
    let mut opts = RunOptions::new(seeder.addr, vec![seeder.torrent.clone()]);
    opts.peers = 2;
    opts.depth = 4;
    opts.duration_secs = 1;
    opts.verify = Verify::Off;
    opts.leave_after_bytes = Some(1 << 50);
    opts.join_rate_per_sec = Some(50.0);
    let r = squall_bench::run(opts).expect("run");
    seeder.finish();
    let c = r.churn.expect("churn");
    assert_eq!(c.joins_started, 2, "{c:?}");
    assert_eq!(c.joins_dropped_at_limit, 48, "{c:?}");
    assert_eq!(c.peers_concurrent_max, 2);
    assert_eq!(c.sessions_completed, 0);
}

#[test]
fn a_seeder_that_never_answers_is_reported_as_stalled() {
    // Proves: peers left waiting on a silent seeder (TCP accepted by the kernel, no handshake
    // ever) are counted in stalled_at_end instead of passing as a quiet 0 Gb/s run.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let mut data = Vec::new();
    content::write_content(&mut data, 1 << 20).expect("content");
    let torrent = Arc::new(content::torrent_for_bytes("t", &data, 64 * 1024).expect("torrent"));
    let mut opts = RunOptions::new(addr, vec![torrent]);
    opts.peers = 3;
    opts.depth = 4;
    opts.duration_secs = 2;
    let r = squall_bench::run(opts).expect("run");
    drop(listener);
    assert_eq!(r.bytes, 0);
    assert_eq!(r.stalled_at_end.handshake, 3, "{r:?}");
    assert_eq!(r.stalled_at_end.total(), 3, "{r:?}");
    assert!(r.human().contains("stalled_at_end 3"));
}
