//! Tracker announces for the whole catalog, on control-plane threads.
//!
//! Owns: the `TrackerManager`: one scheduler thread (runs `schedule::Scheduler`, feeds
//! `dial::Dialer`, logs failures rate-limited) and `announce_concurrency_max` worker threads
//! that do the blocking HTTP(S) (`http`) and UDP (`udp`) announces. See
//! docs/architecture.md, section Trackers.
//!
//! Must never: run on or block a shard (its only contact with the data plane is the
//! non-blocking connect hook, `Seeder::connect`, wired by `control`), exceed its configured
//! bounds, or wait at shutdown longer than `stop_timeout_secs` (plus one request timeout
//! for the scheduler's final wake-up).

pub mod config;
pub mod dial;
pub mod http;
pub mod response;
pub mod schedule;
pub mod udp;

pub use dial::ConnectFn;
pub use response::{Announced, TrackerError};
pub use schedule::{LastResult, TorrentAnnounce, TrackerCounters, TrackerStatus};

use crate::config::TrackerConfig;
use crate::metainfo::InfoHash;
use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender};
use schedule::{Job, Scheduler};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use udp::{AnnounceParams, Event};

/// Bytes uploaded so far for a torrent (BEP 3 `uploaded`); the binary wires it to stats.
pub type UploadedFn = dyn Fn(&InfoHash) -> u64 + Send + Sync;

/// Longest the scheduler sleeps without checking for work (it also wakes on every result).
const SCHEDULER_TICK: Duration = Duration::from_millis(250);
/// Failure warnings logged per `LOG_WINDOW`; more are counted and summarised.
const LOG_WARNINGS_PER_WINDOW: u32 = 20;
const LOG_WINDOW: Duration = Duration::from_secs(60);

/// Everything the manager needs to start.
pub struct TrackerSetup {
    pub config: TrackerConfig,
    pub torrents: Vec<TorrentAnnounce>,
    /// Where Squall listens (port announced; these are never dialed).
    pub listen: Vec<SocketAddr>,
    pub connect: Arc<ConnectFn>,
    pub uploaded: Arc<UploadedFn>,
}

enum Message {
    Done(Job, Result<Announced, TrackerError>),
    Stop,
}

struct Shared {
    scheduler: Mutex<Scheduler>,
}

pub struct TrackerManager {
    shared: Arc<Shared>,
    messages: Sender<Message>,
    scheduler_thread: Option<JoinHandle<()>>,
}

impl TrackerManager {
    /// Starts the scheduler and worker threads. Torrents without trackers (and no `extra`)
    /// cost nothing.
    pub fn start(setup: TrackerSetup) -> Result<TrackerManager, String> {
        setup.config.validate()?;
        let cfg = setup.config.clone();
        let now = Instant::now();
        let scheduler = Scheduler::new(&cfg, &setup.torrents, now);
        tracing::info!(
            torrents = setup.torrents.len(),
            announce_lists = scheduler.entry_count(),
            trackers = scheduler.tracker_count(),
            "tracker announces starting"
        );
        let shared = Arc::new(Shared {
            scheduler: Mutex::new(scheduler),
        });
        let (msg_tx, msg_rx) = bounded::<Message>(cfg.announce_concurrency_max + 1);
        let (job_tx, job_rx) = bounded::<Job>(cfg.announce_concurrency_max);
        let port = setup.listen.first().map(|a| a.port()).unwrap_or(0);
        let mut id_tail = [0u8; 12];
        for b in id_tail.iter_mut() {
            *b = b"0123456789abcdefghijklmnopqrstuvwxyz"[rand::random::<usize>() % 36];
        }
        let peer_id = crate::wire::handshake::peer_id(b"-SQ0100-", id_tail);
        let key: u32 = rand::random();
        let http = Arc::new(http::HttpClient::new(
            cfg.http_timeout_secs,
            cfg.http_response_bytes_max,
        ));
        let udp = Arc::new(udp::UdpClient::new(cfg.udp_timeout_ms, cfg.udp_retries_max));
        for i in 0..cfg.announce_concurrency_max {
            let jobs = job_rx.clone();
            let results = msg_tx.clone();
            let (http, udp, uploaded) = (http.clone(), udp.clone(), setup.uploaded.clone());
            let numwant = cfg.numwant;
            std::thread::Builder::new()
                .name(format!("squall-announce-{i}"))
                .spawn(move || {
                    // Ends when the scheduler drops the job sender.
                    for job in jobs.iter() {
                        let params = AnnounceParams {
                            info_hash: job.info_hash,
                            peer_id,
                            uploaded_bytes: uploaded(&job.info_hash),
                            event: job.event,
                            key,
                            numwant: if job.event == Event::Stopped {
                                0
                            } else {
                                numwant
                            },
                            port,
                        };
                        let result = if job.url.starts_with("udp://") {
                            udp.announce(&job.url, &params)
                        } else {
                            http.announce(&job.url, &params)
                        };
                        if results.send(Message::Done(job, result)).is_err() {
                            break;
                        }
                    }
                })
                .map_err(|e| format!("cannot start announce thread: {e}"))?;
        }
        let dialer = dial::Dialer::new(&cfg, setup.listen.clone(), now);
        let thread_shared = shared.clone();
        let connect = setup.connect.clone();
        let scheduler_thread = std::thread::Builder::new()
            .name("squall-trackers".into())
            .spawn(move || {
                scheduler_loop(thread_shared, cfg, msg_rx, job_tx, dialer, connect);
            })
            .map_err(|e| format!("cannot start tracker thread: {e}"))?;
        Ok(TrackerManager {
            shared,
            messages: msg_tx,
            scheduler_thread: Some(scheduler_thread),
        })
    }

    /// One row per (torrent, tracker): last result, failure reason, next announce.
    pub fn status(&self) -> Vec<TrackerStatus> {
        match self.shared.scheduler.lock() {
            Ok(s) => s.status(Instant::now()),
            Err(_) => Vec::new(),
        }
    }

    /// The catalog changed (SIGHUP): announce new torrents, stop re-announcing removed ones.
    /// Returns (added, removed) torrents.
    pub fn reload(&self, torrents: &[TorrentAnnounce]) -> (usize, usize) {
        match self.shared.scheduler.lock() {
            Ok(mut s) => s.reload(torrents, Instant::now()),
            Err(_) => (0, 0),
        }
    }

    pub fn counters(&self) -> TrackerCounters {
        match self.shared.scheduler.lock() {
            Ok(s) => s.counters,
            Err(_) => TrackerCounters::default(),
        }
    }

    /// Sends `event=stopped` to every tracker that accepted a torrent, waiting at most
    /// `stop_timeout_secs`, then ends the scheduler. Returns the final counters.
    pub fn stop(mut self) -> TrackerCounters {
        let _ = self.messages.send(Message::Stop);
        if let Some(t) = self.scheduler_thread.take() {
            let _ = t.join();
        }
        let c = self.counters();
        tracing::info!(
            "trackers stopped: announces ok {} failed {}, stopped sent {}, in-flight max {}, per-tracker in-flight max {}, dials {} skipped {}",
            c.announces_ok,
            c.announces_failed,
            c.stopped_sent,
            c.in_flight_max,
            c.per_tracker_in_flight_max,
            c.dials,
            c.dials_skipped
        );
        c
    }
}

impl Drop for TrackerManager {
    fn drop(&mut self) {
        if let Some(t) = self.scheduler_thread.take() {
            let _ = self.messages.send(Message::Stop);
            let _ = t.join();
        }
    }
}

/// Rate-limited failure logging: a tracker outage over 100,000 torrents is a few lines.
struct LogLimiter {
    window_start: Instant,
    logged: u32,
    suppressed: u64,
}

impl LogLimiter {
    fn allow(&mut self, now: Instant) -> bool {
        if now.saturating_duration_since(self.window_start) >= LOG_WINDOW {
            if self.suppressed > 0 {
                tracing::warn!(
                    "{} more tracker failures not logged in the last {} s",
                    self.suppressed,
                    LOG_WINDOW.as_secs()
                );
            }
            self.window_start = now;
            self.logged = 0;
            self.suppressed = 0;
        }
        if self.logged < LOG_WARNINGS_PER_WINDOW {
            self.logged += 1;
            true
        } else {
            self.suppressed += 1;
            false
        }
    }
}

fn scheduler_loop(
    shared: Arc<Shared>,
    cfg: TrackerConfig,
    messages: Receiver<Message>,
    jobs: Sender<Job>,
    mut dialer: dial::Dialer,
    connect: Arc<ConnectFn>,
) {
    let mut log = LogLimiter {
        window_start: Instant::now(),
        logged: 0,
        suppressed: 0,
    };
    let mut stop_deadline: Option<Instant> = None;
    let mut dial_wake: Option<Instant> = None;
    loop {
        let now = Instant::now();
        let (to_send, wake) = {
            let Ok(mut s) = shared.scheduler.lock() else {
                return;
            };
            if stop_deadline.is_some() && s.stop_done() {
                return;
            }
            let to_send = s.poll(now);
            s.counters.dials = dialer.dials;
            s.counters.dials_skipped = dialer.skipped;
            (to_send, s.next_wake())
        };
        for job in to_send {
            // Never blocks: the scheduler keeps at most `announce_concurrency_max` jobs out,
            // which is the channel's capacity.
            if jobs.try_send(job).is_err() {
                tracing::error!("announce job queue full: scheduler bound broken");
            }
        }
        if stop_deadline.is_none() {
            dial_wake = dialer.drain(now, &*connect);
        }
        let mut until = now + SCHEDULER_TICK;
        for w in [wake, dial_wake, stop_deadline].into_iter().flatten() {
            until = until.min(w);
        }
        if let Some(deadline) = stop_deadline {
            if now >= deadline {
                tracing::warn!("tracker stop announces did not all finish in time");
                return;
            }
        }
        let first = match messages.recv_timeout(until.saturating_duration_since(now)) {
            Ok(m) => Some(m),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        // Take every message already queued, then handle them under one lock.
        let batch: Vec<Message> = first.into_iter().chain(messages.try_iter()).collect();
        if batch.is_empty() {
            continue;
        }
        let now = Instant::now();
        let Ok(mut s) = shared.scheduler.lock() else {
            return;
        };
        for m in batch {
            match m {
                Message::Stop => {
                    if stop_deadline.is_none() {
                        let queued = s.begin_stop();
                        tracing::info!(queued, "sending event=stopped to trackers");
                        stop_deadline = Some(now + Duration::from_secs(cfg.stop_timeout_secs));
                    }
                }
                Message::Done(job, result) => {
                    match &result {
                        Ok(a) => {
                            if let Some(w) = &a.warning {
                                if log.allow(now) {
                                    tracing::warn!(info_hash = %job.info_hash, tracker = %job.url, "tracker warning: {w}");
                                }
                            }
                            if job.event != Event::Stopped && stop_deadline.is_none() {
                                dialer.offer(job.info_hash, &a.peers, now);
                            }
                        }
                        Err(e) => {
                            if log.allow(now) {
                                tracing::warn!(info_hash = %job.info_hash, tracker = %job.url, "announce failed: {e}");
                            }
                        }
                    }
                    s.on_result(&job, &result, now);
                }
            }
        }
    }
}
