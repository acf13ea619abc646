//! Counters and histograms one event-loop thread fills, merged once at the end of a run.
//!
//! Owns: payload byte and block counts, the per-second byte timeline, request latency and
//! connect+handshake latency histograms (microseconds), verified/bad/skipped piece counts,
//! churn's join and session counts, and error counts by kind.
//! Must never: be shared between threads while a run is going (each thread owns one; merging
//! happens after the threads are joined), or record anything before the warm-up ends.

use hdrhistogram::Histogram;

/// Events counted by kind. Chokes and rejects are not failures of the bench, but a seeder
/// that sends many of them is not serving at full speed, so they are reported with errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    Choke = 0,
    Reject,
    Disconnect,
    ConnectFailed,
    Protocol,
    Unexpected,
    Hop,
}

pub const ERROR_KINDS: usize = 7;

impl ErrorKind {
    pub const ALL: [ErrorKind; ERROR_KINDS] = [
        ErrorKind::Choke,
        ErrorKind::Reject,
        ErrorKind::Disconnect,
        ErrorKind::ConnectFailed,
        ErrorKind::Protocol,
        ErrorKind::Unexpected,
        ErrorKind::Hop,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::Choke => "chokes",
            ErrorKind::Reject => "rejects",
            ErrorKind::Disconnect => "disconnects",
            ErrorKind::ConnectFailed => "connect_failed",
            ErrorKind::Protocol => "protocol_errors",
            ErrorKind::Unexpected => "unexpected_blocks",
            ErrorKind::Hop => "torrent_hops",
        }
    }
}

/// Peers still waiting on the seeder when a run ends, by what they wait for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Stalled {
    /// Connected (or connecting) but no handshake from the seeder.
    pub handshake: u64,
    /// Handshake done, choked, never unchoked (or choked again and left so).
    pub unchoke: u64,
    /// Unchoked with a request outstanding that the seeder has not answered.
    pub request: u64,
}

/// The connections the bench holds when a run ends (many-peers: did every peer stay
/// connected, handshaken and served?).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PeersAtEnd {
    /// Connections open (or still connecting) at the end.
    pub connected: u64,
    /// Of those, the seeder's handshake arrived.
    pub handshaken: u64,
    /// Of those, at least one block arrived inside the measured window.
    pub served: u64,
}

impl Stalled {
    pub fn total(&self) -> u64 {
        self.handshake + self.unchoke + self.request
    }
}

/// Latencies above this are clamped (a stalled seeder); 60 s.
const LATENCY_US_MAX: u64 = 60_000_000;

pub struct Stats {
    /// Measurement starts here (end of warm-up), ns since the run's epoch.
    pub record_from_ns: u64,
    pub bytes: u64,
    pub blocks: u64,
    pub pieces_verified: u64,
    pub bad_pieces: u64,
    /// Pieces not verified because blocks arrived further out of order than the peer's
    /// reorder buffer holds (`peer::REORDER_BLOCKS_MAX`).
    pub verify_skipped_out_of_order: u64,
    /// Churn: arrivals that got a slot and dialed.
    pub joins_started: u64,
    /// Churn: arrivals dropped because every slot was busy (the max-concurrent-peers limit).
    pub joins_dropped_at_limit: u64,
    /// Churn: peers that fetched their byte budget and left.
    pub sessions_completed: u64,
    /// Peers that had waited `client::STALLED_AFTER_NS` or more for the seeder when the run
    /// ended, by what they waited for.
    pub stalled_at_end: Stalled,
    pub peers_at_end: PeersAtEnd,
    pub errors: [u64; ERROR_KINDS],
    pub latency_us: Histogram<u64>,
    pub connect_us: Histogram<u64>,
    /// Payload bytes per whole second since `record_from_ns`.
    pub timeline_bytes: Vec<u64>,
    /// CPU seconds the bench's own threads spent inside the measured window (summed over
    /// threads): a bench whose threads are nearly always busy measures its own queueing.
    pub bench_cpu_secs: f64,
    /// Of that, seconds spent polling with nothing to do (`--spin-us`): idle, though on CPU.
    pub bench_spin_secs: f64,
}

impl Stats {
    pub fn new(record_from_ns: u64, duration_secs: u64) -> Stats {
        Stats {
            record_from_ns,
            bytes: 0,
            blocks: 0,
            pieces_verified: 0,
            bad_pieces: 0,
            verify_skipped_out_of_order: 0,
            joins_started: 0,
            joins_dropped_at_limit: 0,
            sessions_completed: 0,
            stalled_at_end: Stalled::default(),
            peers_at_end: PeersAtEnd::default(),
            errors: [0; ERROR_KINDS],
            bench_cpu_secs: 0.0,
            bench_spin_secs: 0.0,
            latency_us: new_histogram(),
            connect_us: new_histogram(),
            timeline_bytes: vec![0; duration_secs as usize + 1],
        }
    }

    pub fn count(&mut self, kind: ErrorKind) {
        self.errors[kind as usize] += 1;
    }

    pub fn on_block(&mut self, len_bytes: u64, latency_ns: u64, now_ns: u64) {
        if now_ns < self.record_from_ns {
            return;
        }
        self.bytes += len_bytes;
        self.blocks += 1;
        self.latency_us
            .saturating_record((latency_ns / 1000).clamp(1, LATENCY_US_MAX));
        let sec = ((now_ns - self.record_from_ns) / 1_000_000_000) as usize;
        if let Some(slot) = self.timeline_bytes.get_mut(sec) {
            *slot += len_bytes;
        }
    }

    pub fn on_connected(&mut self, latency_ns: u64) {
        self.connect_us
            .saturating_record((latency_ns / 1000).clamp(1, LATENCY_US_MAX));
    }

    pub fn merge(&mut self, other: &Stats) {
        self.bytes += other.bytes;
        self.blocks += other.blocks;
        self.pieces_verified += other.pieces_verified;
        self.bad_pieces += other.bad_pieces;
        self.verify_skipped_out_of_order += other.verify_skipped_out_of_order;
        self.joins_started += other.joins_started;
        self.joins_dropped_at_limit += other.joins_dropped_at_limit;
        self.sessions_completed += other.sessions_completed;
        self.bench_cpu_secs += other.bench_cpu_secs;
        self.bench_spin_secs += other.bench_spin_secs;
        self.stalled_at_end.handshake += other.stalled_at_end.handshake;
        self.stalled_at_end.unchoke += other.stalled_at_end.unchoke;
        self.stalled_at_end.request += other.stalled_at_end.request;
        self.peers_at_end.connected += other.peers_at_end.connected;
        self.peers_at_end.handshaken += other.peers_at_end.handshaken;
        self.peers_at_end.served += other.peers_at_end.served;
        for (a, b) in self.errors.iter_mut().zip(other.errors.iter()) {
            *a += b;
        }
        // Both histograms have the same bounds, so add cannot fail; ignore defensively.
        let _ = self.latency_us.add(&other.latency_us);
        let _ = self.connect_us.add(&other.connect_us);
        if self.timeline_bytes.len() < other.timeline_bytes.len() {
            self.timeline_bytes.resize(other.timeline_bytes.len(), 0);
        }
        for (a, b) in self
            .timeline_bytes
            .iter_mut()
            .zip(other.timeline_bytes.iter())
        {
            *a += b;
        }
    }
}

fn new_histogram() -> Histogram<u64> {
    // 1 us .. 60 s at 3 significant digits: fixed bounds, so no growth on the hot path.
    match Histogram::new_with_bounds(1, LATENCY_US_MAX, 3) {
        Ok(h) => h,
        Err(e) => unreachable!("constant histogram bounds are valid: {e}"),
    }
}
