//! squall-bench: a capacity benchmark that drives any BitTorrent seeder with a synthetic swarm.
//!
//! Owns: `run` (spread peers over threads, run their event loops, merge their counters into a
//! `RunReport`), the null seeder (the bench's own ceiling), deterministic content, reports.
//! Must never: become the bottleneck it measures (raw epoll, 1 MiB receives, no payload
//! copies), or send traffic anywhere but the one target it is given.

pub mod client;
pub mod content;
pub mod http;
pub mod mse;
pub mod null;
pub mod peer;
pub mod report;
pub mod scenario;
pub mod stats;
pub mod sys;
pub mod timer;
pub mod verify;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use squall_engine::metainfo::torrent::Torrent;

pub use null::{NullSeeder, NullSeederStats};
pub use peer::{Pattern, Verify};
pub use report::RunReport;

#[derive(Clone, Debug)]
pub struct RunOptions {
    pub target: SocketAddr,
    pub torrents: Vec<Arc<Torrent>>,
    pub peers: usize,
    pub depth: usize,
    pub duration_secs: u64,
    pub warmup_secs: u64,
    /// Open loop: total requests per second over all peers; `None` is closed loop.
    pub rate_per_sec: Option<f64>,
    pub pattern: Pattern,
    pub verify: Verify,
    pub source_ips: Vec<Ipv4Addr>,
    pub threads: usize,
    pub target_pid: Option<u32>,
    /// After walking every piece of its torrent once, a peer reconnects to another torrent.
    pub hop: bool,
    /// A peer leaves after this many payload bytes. Without `join_rate_per_sec` it comes
    /// back at once as a new connection; with it, it is gone and its slot is freed.
    pub leave_after_bytes: Option<u64>,
    /// Churn (open loop): new peers arrive at exactly this rate (per second, whole run),
    /// whatever the seeder does; `peers` is then the max-concurrent-peers limit, and an
    /// arrival that finds it reached is dropped and counted (`joins_dropped_at_limit`).
    pub join_rate_per_sec: Option<f64>,
    /// Poll instead of sleeping when the next timer is due within this many us (0: always
    /// sleep). A timed sleep this short costs a timer reprogram and a wake-up per request,
    /// and the wake-up's delay lands in the measured latency; polling keeps both out, at
    /// the price of a core that stays busy (needs one of its own).
    pub spin_us: u64,
    /// Peers speak MSE/PE with RC4 (`--encrypt`).
    pub encrypt: bool,
}

impl RunOptions {
    /// Defaults for everything but target and torrents.
    pub fn new(target: SocketAddr, torrents: Vec<Arc<Torrent>>) -> RunOptions {
        RunOptions {
            target,
            torrents,
            peers: 32,
            depth: 64,
            duration_secs: 8,
            warmup_secs: 0,
            rate_per_sec: None,
            pattern: Pattern::Random,
            verify: Verify::Full,
            source_ips: Vec::new(),
            threads: 1,
            target_pid: None,
            hop: false,
            leave_after_bytes: None,
            join_rate_per_sec: None,
            spin_us: 0,
            encrypt: false,
        }
    }
}

/// Reads a .torrent file.
pub fn load_torrent(path: &Path) -> Result<Arc<Torrent>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    squall_engine::metainfo::torrent::parse(&bytes)
        .map(Arc::new)
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// Every `*.torrent` in `dir`, sorted by name so runs are repeatable.
pub fn load_torrent_dir(dir: &Path) -> Result<Vec<Arc<Torrent>>, String> {
    let mut paths: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "torrent"))
        .collect();
    paths.sort();
    paths.iter().map(|p| load_torrent(p)).collect()
}

/// Parses `A-B` (an inclusive IPv4 range) or a single address.
pub fn parse_ip_range(s: &str) -> Result<Vec<Ipv4Addr>, String> {
    let (a, b) = s.split_once('-').unwrap_or((s, s));
    let a: Ipv4Addr = a
        .trim()
        .parse()
        .map_err(|_| format!("bad address {a:?} in {s:?}"))?;
    let b: Ipv4Addr = b
        .trim()
        .parse()
        .map_err(|_| format!("bad address {b:?} in {s:?}"))?;
    let (a, b) = (u32::from(a), u32::from(b));
    if b < a || b - a > 1 << 20 {
        return Err(format!("bad address range {s:?}"));
    }
    Ok((a..=b).map(Ipv4Addr::from).collect())
}

/// Runs the swarm against `opts.target` and returns the merged measurements.
pub fn run(opts: RunOptions) -> Result<RunReport, String> {
    let target = match opts.target {
        SocketAddr::V4(a) => a,
        SocketAddr::V6(_) => return Err("only IPv4 targets are supported".into()),
    };
    if opts.torrents.is_empty() {
        return Err("no torrents: give --torrent FILE or --torrents DIR".into());
    }
    if opts.peers == 0 || opts.depth == 0 || opts.duration_secs == 0 {
        return Err("--peers, --depth and --duration must be > 0".into());
    }
    let threads = opts.threads.clamp(1, opts.peers);
    // Fail before starting anything if the pid is unreadable.
    if let Some(pid) = opts.target_pid {
        sys::process_cpu_secs(pid)?;
    }
    if let Some(rate) = opts.join_rate_per_sec {
        if !(rate > 0.0 && rate.is_finite()) {
            return Err("the join rate must be > 0".into());
        }
    }
    let interval_ns = match opts.rate_per_sec {
        Some(rate) if rate > 0.0 => Some(((opts.peers as f64 / rate) * 1e9).max(1.0) as u64),
        Some(_) => return Err("--rate must be > 0".into()),
        None => None,
    };
    let peer_cfg = peer::PeerConfig {
        depth: opts.depth,
        verify: opts.verify,
        pattern: opts.pattern,
        interval_ns,
        stop_after_walk: opts.hop,
        stop_after_bytes: opts.leave_after_bytes,
    };
    let epoch = Instant::now();
    let record_from_ns = opts.warmup_secs * 1_000_000_000;
    let end_ns = record_from_ns + opts.duration_secs * 1_000_000_000;
    let mut handles = Vec::new();
    for t in 0..threads {
        let plan = client::ThreadPlan {
            target,
            torrents: opts.torrents.clone(),
            peer_numbers: (0..opts.peers).filter(|p| p % threads == t).collect(),
            peers_total: opts.peers,
            source_ips: opts.source_ips.clone(),
            peer_cfg: peer_cfg.clone(),
            hop: opts.hop,
            arrivals: opts.join_rate_per_sec.map(|rate| client::ArrivalPlan {
                join_rate_per_sec: rate,
                thread_index: t,
                threads,
            }),
            epoch,
            spin_ns: opts.spin_us.saturating_mul(1_000),
            encrypt: opts.encrypt,
            record_from_ns,
            end_ns,
            duration_secs: opts.duration_secs,
        };
        let h = std::thread::Builder::new()
            .name(format!("bench-{t}"))
            .spawn(move || client::run_thread(plan))
            .map_err(|e| format!("spawning a bench thread: {e}"))?;
        handles.push(h);
    }
    // The target's CPU is sampled over the measured window only, not the warm-up.
    std::thread::sleep(std::time::Duration::from_nanos(
        record_from_ns.saturating_sub(epoch.elapsed().as_nanos() as u64),
    ));
    let cpu_before = match opts.target_pid {
        Some(pid) => sys::process_cpu_secs(pid).ok(),
        None => None,
    };
    let mut merged = stats::Stats::new(record_from_ns, opts.duration_secs);
    for h in handles {
        let s = h
            .join()
            .map_err(|_| "a bench thread panicked".to_string())??;
        merged.merge(&s);
    }
    let target_cpu_secs = match (opts.target_pid, cpu_before) {
        (Some(pid), Some(before)) => Some(sys::process_cpu_secs(pid)? - before),
        _ => None,
    };
    Ok(RunReport::build(&opts, threads, &merged, target_cpu_secs))
}
