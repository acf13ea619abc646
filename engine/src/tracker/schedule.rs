//! Announce scheduling at catalog scale: who announces to which tracker when, within bounds.
//!
//! Owns: one `Entry` per (torrent, announce list) with its BEP 12 tiers, the shared per-tracker
//! state (in-flight count, consecutive failures, backoff), the due-time heap, the global and
//! per-tracker in-flight bounds, start-up spreading, interval jitter and exponential backoff.
//! It is sans-I/O: time comes in as `now`, jobs go out, results come back in `on_result`,
//! so it is tested with simulated time. Must never: hand out more than
//! `announce_concurrency_max` jobs in flight (or `announce_per_tracker_max` to one tracker),
//! schedule a retry sooner than the backoff allows (no hot loop), or touch a socket.

use super::response::{Announced, TrackerError};
use super::udp::Event;
use crate::config::TrackerConfig;
use crate::metainfo::InfoHash;
use rand::Rng;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::time::{Duration, Instant};

pub type TrackerId = usize;
pub type EntryId = usize;

/// Due entries examined per `poll`; bounds one scheduler step however many are due.
pub const POLL_SCAN_MAX: usize = 4_096;
/// An entry whose tracker is at its in-flight bound looks again this much later.
pub const BUSY_RETRY: Duration = Duration::from_millis(50);

/// One torrent as the tracker manager sees it.
#[derive(Debug, Clone)]
pub struct TorrentAnnounce {
    pub info_hash: InfoHash,
    /// BEP 27: only the torrent's own trackers, never `extra`.
    pub private: bool,
    /// BEP 12 tiers from the .torrent (`announce-list`, or `[[announce]]`).
    pub trackers: Vec<Vec<String>>,
}

/// What the last announce of one torrent to one tracker did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LastResult {
    Never,
    Ok {
        peers: usize,
        seeders: Option<u64>,
        leechers: Option<u64>,
        warning: Option<String>,
    },
    Failed(String),
}

/// Snapshot of one (torrent, tracker) pair, for logs and `/stats`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackerStatus {
    pub info_hash: InfoHash,
    pub url: String,
    /// Tier index in its announce list (0 first).
    pub tier: usize,
    pub last_result: LastResult,
    pub last_announce_secs_ago: Option<u64>,
    /// When this torrent's announce list is next worked on (None while in flight).
    pub next_announce_in_secs: Option<u64>,
    /// Consecutive failures of the tracker (all torrents) and its backoff left.
    pub tracker_failures: u32,
    pub tracker_backoff_secs_left: Option<u64>,
    /// Interval in force after the last success, after clamping.
    pub interval_secs: Option<u64>,
}

/// Process-wide counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TrackerCounters {
    pub announces_ok: u64,
    pub announces_failed: u64,
    pub in_flight: usize,
    /// Highest number of announces ever in flight at once (must stay <= the bound).
    pub in_flight_max: usize,
    /// Highest number in flight to a single tracker.
    pub per_tracker_in_flight_max: usize,
    pub stopped_sent: u64,
    pub dials: u64,
    pub dials_skipped: u64,
}

/// One announce to perform.
#[derive(Debug, Clone)]
pub struct Job {
    pub entry: EntryId,
    pub tracker: TrackerId,
    pub url: String,
    pub info_hash: InfoHash,
    pub event: Event,
}

struct TrackerState {
    url: String,
    in_flight: usize,
    failures: u32,
    backoff_until: Option<Instant>,
}

struct Slot {
    tracker: TrackerId,
    last: LastResult,
    last_at: Option<Instant>,
}

struct Entry {
    info_hash: InfoHash,
    tiers: Vec<Vec<Slot>>,
    next_at: Option<Instant>,
    generation: u64,
    in_flight: bool,
    /// Consecutive rounds in which every tracker of the list failed.
    failures: u32,
    tried_this_round: Vec<TrackerId>,
    /// The tracker that last accepted us (it has had `started`); `stopped` goes there.
    announced_to: Option<TrackerId>,
    interval_secs: Option<u64>,
    /// The torrent left the catalog (SIGHUP): never scheduled again. Entry ids index the
    /// heap, so the slot stays; its generation bump makes queued heap items stale.
    removed: bool,
}

enum Pick {
    Ready(TrackerId),
    Busy,
    AllBackoff(Instant),
    Exhausted,
}

pub struct Scheduler {
    cfg: TrackerConfig,
    trackers: Vec<TrackerState>,
    entries: Vec<Entry>,
    heap: BinaryHeap<Reverse<(Instant, EntryId, u64)>>,
    stop_queue: VecDeque<Job>,
    stopping: bool,
    pub counters: TrackerCounters,
    /// Tracker URL -> id, so torrents added later share a tracker's state and backoff.
    tracker_index: HashMap<String, TrackerId>,
}

impl Scheduler {
    /// Builds every entry and spreads first announces over
    /// `min(entries / startup_announces_per_sec, startup_spread_secs_max)` seconds.
    pub fn new(cfg: &TrackerConfig, torrents: &[TorrentAnnounce], now: Instant) -> Scheduler {
        let mut s = Scheduler {
            cfg: cfg.clone(),
            trackers: Vec::new(),
            entries: Vec::new(),
            heap: BinaryHeap::new(),
            stop_queue: VecDeque::new(),
            stopping: false,
            counters: TrackerCounters::default(),
            tracker_index: HashMap::new(),
        };
        s.add(torrents, now);
        s
    }

    /// Catalog reload: torrents no longer present stop being announced (no `stopped` is
    /// sent; trackers expire them); new ones are added with the same start-up spread.
    /// Returns (added, removed) torrents.
    pub fn reload(&mut self, torrents: &[TorrentAnnounce], now: Instant) -> (usize, usize) {
        let wanted: std::collections::HashSet<InfoHash> =
            torrents.iter().map(|t| t.info_hash).collect();
        let present: std::collections::HashSet<InfoHash> = self
            .entries
            .iter()
            .filter(|e| !e.removed)
            .map(|e| e.info_hash)
            .collect();
        let mut removed = std::collections::HashSet::new();
        for e in self
            .entries
            .iter_mut()
            .filter(|e| !e.removed && !wanted.contains(&e.info_hash))
        {
            e.removed = true;
            e.generation += 1;
            e.next_at = None;
            removed.insert(e.info_hash);
        }
        let new: Vec<TorrentAnnounce> = torrents
            .iter()
            .filter(|t| !present.contains(&t.info_hash))
            .cloned()
            .collect();
        self.add(&new, now);
        (new.len(), removed.len())
    }

    /// Builds entries for `torrents` and spreads their first announces over
    /// `min(entries / startup_announces_per_sec, startup_spread_secs_max)` seconds.
    fn add(&mut self, torrents: &[TorrentAnnounce], now: Instant) {
        let cfg = self.cfg.clone();
        let first_new = self.entries.len();
        let mut rng = rand::thread_rng();
        for t in torrents {
            let mut lists: Vec<Vec<Vec<String>>> = Vec::new();
            let mut own: Vec<Vec<String>> = t
                .trackers
                .iter()
                .map(|tier| tier.iter().filter(|u| supported(u)).cloned().collect())
                .filter(|tier: &Vec<String>| !tier.is_empty())
                .collect();
            // BEP 12: shuffle each tier once; the order then only changes by promotion.
            for tier in own.iter_mut() {
                shuffle(tier, &mut rng);
            }
            let own_urls: Vec<&String> = own.iter().flatten().collect();
            if !t.private {
                let extra: Vec<Vec<String>> = cfg
                    .extra
                    .iter()
                    .filter(|u| supported(u) && !own_urls.contains(u))
                    .map(|u| vec![u.clone()])
                    .collect();
                if !extra.is_empty() {
                    lists.push(extra);
                }
            }
            if !own.is_empty() {
                lists.insert(0, own);
            }
            for list in lists {
                let tiers = list
                    .into_iter()
                    .map(|tier| {
                        tier.into_iter()
                            .map(|url| Slot {
                                tracker: self.tracker_id(url),
                                last: LastResult::Never,
                                last_at: None,
                            })
                            .collect()
                    })
                    .collect();
                self.entries.push(Entry {
                    info_hash: t.info_hash,
                    tiers,
                    next_at: None,
                    generation: 0,
                    in_flight: false,
                    failures: 0,
                    tried_this_round: Vec::new(),
                    announced_to: None,
                    interval_secs: None,
                    removed: false,
                });
            }
        }
        let added = self.entries.len() - first_new;
        let spread_secs = (added as f64 / cfg.startup_announces_per_sec.max(1) as f64)
            .min(cfg.startup_spread_secs_max as f64);
        for id in first_new..self.entries.len() {
            let delay = if spread_secs > 0.0 {
                Duration::from_secs_f64(rng.gen_range(0.0..=spread_secs))
            } else {
                Duration::ZERO
            };
            self.schedule(id, now + delay);
        }
    }

    fn tracker_id(&mut self, url: String) -> TrackerId {
        if let Some(id) = self.tracker_index.get(&url) {
            return *id;
        }
        let id = self.trackers.len();
        self.tracker_index.insert(url.clone(), id);
        self.trackers.push(TrackerState {
            url,
            in_flight: 0,
            failures: 0,
            backoff_until: None,
        });
        id
    }

    pub fn entry_count(&self) -> usize {
        self.entries.len()
    }

    pub fn tracker_count(&self) -> usize {
        self.trackers.len()
    }

    fn schedule(&mut self, id: EntryId, at: Instant) {
        let e = &mut self.entries[id];
        if e.removed {
            return;
        }
        e.generation += 1;
        e.next_at = Some(at);
        self.heap.push(Reverse((at, id, e.generation)));
    }

    /// The earliest time `poll` may have work (None: nothing scheduled).
    pub fn next_wake(&self) -> Option<Instant> {
        if self.stopping {
            return None;
        }
        self.heap.peek().map(|Reverse((at, _, _))| *at)
    }

    fn pick(&self, id: EntryId, now: Instant) -> Pick {
        let e = &self.entries[id];
        let mut earliest: Option<Instant> = None;
        for tier in &e.tiers {
            for slot in tier {
                if e.tried_this_round.contains(&slot.tracker) {
                    continue;
                }
                let t = &self.trackers[slot.tracker];
                if let Some(until) = t.backoff_until.filter(|u| *u > now) {
                    earliest = Some(earliest.map_or(until, |e| e.min(until)));
                    continue;
                }
                if t.in_flight >= self.cfg.announce_per_tracker_max {
                    // Wait for the preferred tracker rather than fall to a worse one.
                    return Pick::Busy;
                }
                return Pick::Ready(slot.tracker);
            }
        }
        match earliest {
            Some(at) => Pick::AllBackoff(at),
            None => Pick::Exhausted,
        }
    }

    fn dispatch(&mut self, id: EntryId, tracker: TrackerId, event: Event) -> Job {
        let e = &mut self.entries[id];
        e.in_flight = true;
        e.next_at = None;
        let t = &mut self.trackers[tracker];
        t.in_flight += 1;
        self.counters.in_flight += 1;
        self.counters.in_flight_max = self.counters.in_flight_max.max(self.counters.in_flight);
        self.counters.per_tracker_in_flight_max =
            self.counters.per_tracker_in_flight_max.max(t.in_flight);
        debug_assert!(self.counters.in_flight <= self.cfg.announce_concurrency_max);
        debug_assert!(t.in_flight <= self.cfg.announce_per_tracker_max);
        Job {
            entry: id,
            tracker,
            url: t.url.clone(),
            info_hash: e.info_hash,
            event,
        }
    }

    /// Jobs that may start now, within the global and per-tracker bounds.
    pub fn poll(&mut self, now: Instant) -> Vec<Job> {
        let mut jobs = Vec::new();
        if self.stopping {
            let mut deferred = Vec::new();
            while self.counters.in_flight < self.cfg.announce_concurrency_max {
                let Some(job) = self.stop_queue.pop_front() else {
                    break;
                };
                if self.trackers[job.tracker].in_flight >= self.cfg.announce_per_tracker_max {
                    deferred.push(job);
                    continue;
                }
                let j = self.dispatch(job.entry, job.tracker, Event::Stopped);
                jobs.push(j);
            }
            for j in deferred.into_iter().rev() {
                self.stop_queue.push_front(j);
            }
            return jobs;
        }
        let mut busy = Vec::new();
        let mut scanned = 0;
        while self.counters.in_flight < self.cfg.announce_concurrency_max && scanned < POLL_SCAN_MAX
        {
            let Some(Reverse((at, id, generation))) = self.heap.peek().copied() else {
                break;
            };
            if at > now {
                break;
            }
            self.heap.pop();
            scanned += 1;
            let e = &self.entries[id];
            if e.generation != generation || e.in_flight {
                continue; // superseded by a later schedule
            }
            match self.pick(id, now) {
                Pick::Ready(t) => {
                    let event = if self.entries[id].announced_to == Some(t) {
                        Event::None
                    } else {
                        Event::Started
                    };
                    let job = self.dispatch(id, t, event);
                    jobs.push(job);
                }
                Pick::Busy => busy.push(id),
                Pick::AllBackoff(until) => self.schedule(id, until),
                Pick::Exhausted => self.round_failed(id, now),
            }
        }
        for id in busy {
            self.schedule(id, now + BUSY_RETRY);
        }
        jobs
    }

    fn backoff(&self, failures: u32) -> Duration {
        let shift = failures.saturating_sub(1).min(20);
        let secs = self
            .cfg
            .backoff_secs_min
            .saturating_mul(1 << shift)
            .min(self.cfg.backoff_secs_max);
        // Up to 10% jitter so torrents that failed together do not retry together.
        let jitter = rand::thread_rng().gen_range(0.0..=0.1);
        Duration::from_secs_f64(secs as f64 * (1.0 + jitter))
    }

    fn round_failed(&mut self, id: EntryId, now: Instant) {
        let e = &mut self.entries[id];
        e.failures = e.failures.saturating_add(1);
        e.tried_this_round.clear();
        let delay = self.backoff(self.entries[id].failures);
        self.schedule(id, now + delay);
    }

    fn slot_mut(&mut self, id: EntryId, tracker: TrackerId) -> Option<(usize, usize)> {
        let e = &self.entries[id];
        for (ti, tier) in e.tiers.iter().enumerate() {
            for (si, slot) in tier.iter().enumerate() {
                if slot.tracker == tracker {
                    return Some((ti, si));
                }
            }
        }
        None
    }

    /// Takes the result of `job` and schedules what comes next for its entry.
    pub fn on_result(&mut self, job: &Job, result: &Result<Announced, TrackerError>, now: Instant) {
        let t = &mut self.trackers[job.tracker];
        t.in_flight = t.in_flight.saturating_sub(1);
        self.counters.in_flight = self.counters.in_flight.saturating_sub(1);
        let entry = job.entry;
        self.entries[entry].in_flight = false;
        let pos = self.slot_mut(entry, job.tracker);
        if let Some((ti, si)) = pos {
            let slot = &mut self.entries[entry].tiers[ti][si];
            slot.last_at = Some(now);
            slot.last = match result {
                Ok(a) => LastResult::Ok {
                    peers: a.peers.len(),
                    seeders: a.complete,
                    leechers: a.incomplete,
                    warning: a.warning.clone(),
                },
                Err(e) => LastResult::Failed(e.to_string()),
            };
        }
        match result {
            Ok(_) => self.counters.announces_ok += 1,
            Err(_) => self.counters.announces_failed += 1,
        }
        if job.event == Event::Stopped || self.stopping {
            if job.event == Event::Stopped && result.is_ok() {
                self.counters.stopped_sent += 1;
            }
            return;
        }
        match result {
            Ok(a) => {
                let t = &mut self.trackers[job.tracker];
                t.failures = 0;
                t.backoff_until = None;
                // BEP 12: a tracker that works moves to the front of its tier.
                if let Some((ti, si)) = pos {
                    let tier = &mut self.entries[entry].tiers[ti];
                    let slot = tier.remove(si);
                    tier.insert(0, slot);
                }
                let floor = self
                    .cfg
                    .interval_secs_min
                    .max(a.min_interval_secs.unwrap_or(0));
                let interval = a
                    .interval_secs
                    .unwrap_or(self.cfg.interval_secs_default)
                    .clamp(
                        floor.min(self.cfg.interval_secs_max),
                        self.cfg.interval_secs_max,
                    );
                let jitter_secs = interval as f64 * self.cfg.interval_jitter_percent as f64 / 100.0;
                let delay = interval as f64 + rand::thread_rng().gen_range(0.0..=jitter_secs);
                let e = &mut self.entries[entry];
                e.failures = 0;
                e.tried_this_round.clear();
                e.announced_to = Some(job.tracker);
                e.interval_secs = Some(interval);
                self.schedule(entry, now + Duration::from_secs_f64(delay));
            }
            Err(err) => {
                if err.is_tracker_fault() {
                    // Shared by every torrent on this tracker: one dead tracker costs one
                    // attempt per backoff period, not one per torrent per second.
                    let failures = self.trackers[job.tracker].failures.saturating_add(1);
                    let until = now + self.backoff(failures);
                    let t = &mut self.trackers[job.tracker];
                    t.failures = failures;
                    if t.backoff_until.is_none_or(|u| u < until) {
                        t.backoff_until = Some(until);
                    }
                }
                self.entries[entry].tried_this_round.push(job.tracker);
                match self.pick(entry, now) {
                    // BEP 12: on to the next tracker in the list at once.
                    Pick::Ready(_) | Pick::Busy => self.schedule(entry, now),
                    Pick::AllBackoff(until) => {
                        self.entries[entry].tried_this_round.clear();
                        self.entries[entry].failures =
                            self.entries[entry].failures.saturating_add(1);
                        self.schedule(entry, until);
                    }
                    Pick::Exhausted => self.round_failed(entry, now),
                }
            }
        }
    }

    /// Switches to shutdown: no more regular announces; `stopped` for every entry that a
    /// tracker accepted. Returns how many stop announces are queued.
    pub fn begin_stop(&mut self) -> usize {
        self.stopping = true;
        self.heap.clear();
        for (id, e) in self.entries.iter().enumerate() {
            if let Some(t) = e.announced_to {
                self.stop_queue.push_back(Job {
                    entry: id,
                    tracker: t,
                    url: self.trackers[t].url.clone(),
                    info_hash: e.info_hash,
                    event: Event::Stopped,
                });
            }
        }
        self.stop_queue.len()
    }

    /// True when shutdown has nothing queued and nothing in flight.
    pub fn stop_done(&self) -> bool {
        self.stopping && self.stop_queue.is_empty() && self.counters.in_flight == 0
    }

    pub fn status(&self, now: Instant) -> Vec<TrackerStatus> {
        let mut out = Vec::new();
        for e in self.entries.iter().filter(|e| !e.removed) {
            for (ti, tier) in e.tiers.iter().enumerate() {
                for slot in tier {
                    let t = &self.trackers[slot.tracker];
                    out.push(TrackerStatus {
                        info_hash: e.info_hash,
                        url: t.url.clone(),
                        tier: ti,
                        last_result: slot.last.clone(),
                        last_announce_secs_ago: slot
                            .last_at
                            .map(|at| now.saturating_duration_since(at).as_secs()),
                        next_announce_in_secs: e
                            .next_at
                            .map(|at| at.saturating_duration_since(now).as_secs()),
                        tracker_failures: t.failures,
                        tracker_backoff_secs_left: t
                            .backoff_until
                            .filter(|u| *u > now)
                            .map(|u| u.saturating_duration_since(now).as_secs()),
                        interval_secs: e.interval_secs,
                    });
                }
            }
        }
        out
    }
}

fn supported(url: &str) -> bool {
    url.starts_with("http://") || url.starts_with("https://") || url.starts_with("udp://")
}

fn shuffle<T>(v: &mut [T], rng: &mut impl Rng) {
    for i in (1..v.len()).rev() {
        let j = rng.gen_range(0..=i);
        v.swap(i, j);
    }
}

#[cfg(test)]
mod reload_tests {
    use super::*;

    fn torrent(b: u8, url: &str) -> TorrentAnnounce {
        TorrentAnnounce {
            info_hash: InfoHash([b; 20]),
            private: false,
            trackers: vec![vec![url.to_string()]],
        }
    }

    #[test]
    fn reload_adds_new_torrents_and_drops_removed_ones() {
        // After a reload only the new catalog's torrents are announced; a tracker seen
        // before keeps its identity (shared state and backoff).
        let cfg = TrackerConfig {
            startup_announces_per_sec: 1000,
            ..TrackerConfig::default()
        };
        let now = Instant::now();
        let mut s = Scheduler::new(
            &cfg,
            &[
                torrent(1, "http://127.0.0.1:1/a"),
                torrent(2, "http://127.0.0.1:1/a"),
            ],
            now,
        );
        assert_eq!(s.tracker_count(), 1);
        let (added, removed) = s.reload(
            &[
                torrent(2, "http://127.0.0.1:1/a"),
                torrent(3, "udp://127.0.0.1:2"),
            ],
            now,
        );
        assert_eq!((added, removed), (1, 1));
        assert_eq!(s.tracker_count(), 2);
        let later = now + Duration::from_secs(5);
        let mut announced: Vec<u8> = s.poll(later).iter().map(|j| j.info_hash.0[0]).collect();
        announced.sort();
        assert_eq!(announced, vec![2, 3]);
        let listed: std::collections::HashSet<u8> =
            s.status(later).iter().map(|r| r.info_hash.0[0]).collect();
        assert!(!listed.contains(&1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> TrackerConfig {
        TrackerConfig {
            announce_concurrency_max: 4,
            announce_per_tracker_max: 2,
            startup_announces_per_sec: 100,
            backoff_secs_min: 10,
            backoff_secs_max: 40,
            interval_secs_min: 60,
            ..TrackerConfig::default()
        }
    }

    fn torrent(n: u8, trackers: &[&[&str]], private: bool) -> TorrentAnnounce {
        TorrentAnnounce {
            info_hash: InfoHash([n; 20]),
            private,
            trackers: trackers
                .iter()
                .map(|t| t.iter().map(|s| s.to_string()).collect())
                .collect(),
        }
    }

    fn ok(interval: u64) -> Result<Announced, TrackerError> {
        Ok(Announced {
            interval_secs: Some(interval),
            ..Announced::default()
        })
    }

    #[test]
    fn bounds_hold_and_startup_is_spread() {
        // 1,000 torrents on 3 trackers: never more than 4 in flight (2 per tracker), and the
        // first announces are spread over ~10 s, not all due at once.
        let urls = [
            "http://a/announce",
            "http://b/announce",
            "udp://c:1/announce",
        ];
        let torrents: Vec<_> = (0..1000u32)
            .map(|i| TorrentAnnounce {
                info_hash: InfoHash([(i % 251) as u8; 20]),
                private: false,
                trackers: vec![vec![urls[i as usize % 3].to_string()]],
            })
            .collect();
        let t0 = Instant::now();
        let mut s = Scheduler::new(&cfg(), &torrents, t0);
        assert_eq!(s.entry_count(), 1000);
        let mut due_at_start = 0;
        let mut done = 0;
        let mut now = t0;
        while done < 1000 {
            let jobs = s.poll(now);
            if now == t0 {
                due_at_start = jobs.len();
            }
            assert!(s.counters.in_flight <= 4);
            for j in &jobs {
                s.on_result(j, &ok(1800), now);
                done += 1;
            }
            now += Duration::from_millis(10);
            assert!(now < t0 + Duration::from_secs(20), "stalled at {done}");
        }
        assert!(due_at_start <= 4);
        assert!(
            now > t0 + Duration::from_secs(8),
            "spread over ~10 s: {:?}",
            now - t0
        );
        assert_eq!(s.counters.in_flight_max, 4);
        assert!(s.counters.per_tracker_in_flight_max <= 2);
        // Everyone is next due after the interval, not before.
        assert!(s.poll(now + Duration::from_secs(100)).is_empty());
    }

    #[test]
    fn dead_tracker_backs_off_for_every_torrent() {
        // Two torrents on one dead tracker: after the first failure the shared backoff
        // (10 s, then 20, capped at 40) keeps both quiet; attempts stay few over 5 minutes.
        let torrents = [
            torrent(1, &[&["http://dead/a"]], false),
            torrent(2, &[&["http://dead/a"]], false),
        ];
        let t0 = Instant::now();
        let mut s = Scheduler::new(&cfg(), &torrents, t0);
        let mut attempts = 0;
        let mut now = t0;
        while now < t0 + Duration::from_secs(300) {
            for j in s.poll(now) {
                attempts += 1;
                s.on_result(&j, &Err(TrackerError::Network("refused".into())), now);
            }
            now += Duration::from_millis(100);
        }
        // 300 s with backoff 10, 20, 40, 40, ... per tracker: about 9 rounds of 2 torrents.
        assert!((4..=24).contains(&attempts), "attempts = {attempts}");
        let st = s.status(now);
        assert!(matches!(&st[0].last_result, LastResult::Failed(r) if r.contains("refused")));
        assert!(st[0].tracker_failures >= 3);
    }

    #[test]
    fn tiers_fail_over_and_promote() {
        // Tier [x, y]: whichever is tried first fails, the other works and moves to the
        // front; the next announce goes to it, without `started` again.
        let torrents = [torrent(1, &[&["http://x/a", "http://y/a"]], false)];
        let start = Instant::now();
        let mut s = Scheduler::new(&cfg(), &torrents, start);
        // One torrent at 100 per second: due within 10 ms of start.
        let t0 = start + Duration::from_millis(10);
        let first = s.poll(t0).pop().unwrap();
        assert_eq!(first.event, Event::Started);
        s.on_result(&first, &Err(TrackerError::Timeout), t0);
        let second = s.poll(t0).pop().unwrap();
        assert_ne!(second.url, first.url);
        s.on_result(&second, &ok(100), t0);
        assert_eq!(s.status(t0)[0].url, second.url, "promoted to the front");
        let later = t0 + Duration::from_secs(200);
        let third = s.poll(later).pop().unwrap();
        assert_eq!(
            (third.url.as_str(), third.event),
            (second.url.as_str(), Event::None)
        );
        // Shutdown sends `stopped` to the tracker that accepted us.
        s.on_result(&third, &ok(100), later);
        assert_eq!(s.begin_stop(), 1);
        let stop = s.poll(later).pop().unwrap();
        assert_eq!(
            (stop.url.as_str(), stop.event),
            (second.url.as_str(), Event::Stopped)
        );
        s.on_result(&stop, &ok(100), later);
        assert!(s.stop_done());
    }

    #[test]
    fn private_torrents_skip_extra_trackers_and_refusals_back_off_per_torrent() {
        // BEP 27: extra trackers are added to public torrents only. A `failure reason`
        // backs off that torrent, not the tracker.
        let c = TrackerConfig {
            extra: vec!["udp://extra:1/announce".into()],
            ..cfg()
        };
        let torrents = [
            torrent(1, &[&["http://own/a"]], true),
            torrent(2, &[&["http://own/a"]], false),
        ];
        let t0 = Instant::now();
        let mut s = Scheduler::new(&c, &torrents, t0);
        assert_eq!(s.entry_count(), 3);
        let urls: Vec<String> = s.status(t0).into_iter().map(|x| x.url).collect();
        assert_eq!(urls.iter().filter(|u| u.contains("extra")).count(), 1);
        let jobs = s.poll(t0 + Duration::from_secs(1));
        assert_eq!(jobs.len(), 3);
        for j in &jobs {
            s.on_result(j, &Err(TrackerError::Refused("not registered".into())), t0);
        }
        let st = s.status(t0);
        assert!(st.iter().all(|x| x.tracker_failures == 0));
        assert!(st.iter().all(|x| x.next_announce_in_secs >= Some(9)));
        assert!(s.poll(t0 + Duration::from_secs(5)).is_empty());
    }
}
