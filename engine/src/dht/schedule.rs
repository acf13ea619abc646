//! When each torrent is announced to the DHT: passes over the catalog, spread and rate-capped.
//!
//! Owns: the order and timing of announces (sans-I/O: time comes in as an argument, info
//! hashes go out; no socket, no clock, no thread), the queue of torrents still to announce
//! in this pass, and the pass duration. Must never: hold a private torrent (the caller
//! filters them, and `set_torrents` asserts it cannot be told about one it was not given),
//! start more than `in_flight_max` announces at once, or start them faster than the rate.
//!
//! A pass announces every torrent once, one every `spacing` = max(reannounce / n, 1 / rate),
//! so n torrents are spread over the re-announce interval, never faster than the rate. A pass
//! that needs longer than the interval (n / rate > reannounce) is followed by the next at
//! once. Torrents a reload adds join the current pass's queue (announced soon); torrents it
//! drops leave it.

use crate::metainfo::InfoHash;
use std::collections::{HashSet, VecDeque};
use std::time::{Duration, Instant};

pub struct AnnounceSchedule {
    reannounce: Duration,
    rate_gap: Duration,
    in_flight_max: usize,
    /// Every torrent announced (the catalog's public torrents).
    members: HashSet<InfoHash>,
    /// This pass's torrents not yet started.
    queue: VecDeque<InfoHash>,
    spacing: Duration,
    next_start_at: Instant,
    pass_started_at: Instant,
    /// The next pass starts then (while `queue` is empty and nothing is in flight).
    next_pass_at: Option<Instant>,
    in_flight: usize,
    last_pass: Option<Duration>,
    passes_done: u64,
}

impl AnnounceSchedule {
    pub fn new(
        reannounce: Duration,
        rate_per_sec: u32,
        in_flight_max: usize,
        now: Instant,
    ) -> AnnounceSchedule {
        assert!(rate_per_sec > 0 && in_flight_max > 0 && !reannounce.is_zero());
        AnnounceSchedule {
            reannounce,
            rate_gap: Duration::from_secs(1) / rate_per_sec,
            in_flight_max,
            members: HashSet::new(),
            queue: VecDeque::new(),
            spacing: Duration::ZERO,
            next_start_at: now,
            pass_started_at: now,
            next_pass_at: Some(now),
            in_flight: 0,
            last_pass: None,
            passes_done: 0,
        }
    }

    /// The catalog changed (or is first known): returns (added, removed).
    pub fn set_torrents(&mut self, torrents: &[InfoHash]) -> (usize, usize) {
        let new: HashSet<InfoHash> = torrents.iter().copied().collect();
        let removed = self.members.difference(&new).count();
        let mut added = 0;
        for h in torrents {
            if !self.members.contains(h) {
                added += 1;
                // A new torrent waits for the next pass only if no pass is under way.
                if self.next_pass_at.is_none() {
                    self.queue.push_back(*h);
                }
            }
        }
        if removed > 0 {
            self.queue.retain(|h| new.contains(h));
        }
        self.members = new;
        debug_assert!(self.queue.iter().all(|h| self.members.contains(h)));
        (added, removed)
    }

    /// The next torrent to announce now, if the spacing, the rate and the in-flight bound
    /// allow one. Call until it returns None; every Some must be followed by `on_done`.
    pub fn next(&mut self, now: Instant) -> Option<InfoHash> {
        if let Some(at) = self.next_pass_at {
            if now < at || self.members.is_empty() {
                return None;
            }
            self.start_pass(now);
        }
        if self.in_flight >= self.in_flight_max || now < self.next_start_at {
            return None;
        }
        let h = self.queue.pop_front()?;
        self.in_flight += 1;
        // Catch up at most one spacing: a stall (in-flight bound) never turns into a burst.
        self.next_start_at = (self.next_start_at + self.spacing).max(now + self.rate_gap);
        Some(h)
    }

    /// An announce `next` handed out has finished (either way).
    pub fn on_done(&mut self, now: Instant) {
        assert!(self.in_flight > 0, "on_done without an announce in flight");
        self.in_flight -= 1;
        if self.in_flight == 0 && self.queue.is_empty() && self.next_pass_at.is_none() {
            self.last_pass = Some(now.saturating_duration_since(self.pass_started_at));
            self.passes_done += 1;
            self.next_pass_at = Some((self.pass_started_at + self.reannounce).max(now));
        }
    }

    fn start_pass(&mut self, now: Instant) {
        self.queue.clear();
        self.queue.extend(self.members.iter().copied());
        let n = self.queue.len().max(1) as u32;
        self.spacing = (self.reannounce / n).max(self.rate_gap);
        self.pass_started_at = now;
        self.next_start_at = now;
        self.next_pass_at = None;
    }

    /// When `next` may next return Some (for the caller's sleep), if anything is pending.
    pub fn wake_at(&self) -> Option<Instant> {
        match self.next_pass_at {
            Some(at) => (!self.members.is_empty()).then_some(at),
            None if self.queue.is_empty() => None,
            None => Some(self.next_start_at),
        }
    }

    /// Torrents of this pass not yet started.
    pub fn queue_len(&self) -> usize {
        self.queue.len()
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// How long the last complete pass took (first start to last finish).
    pub fn last_pass(&self) -> Option<Duration> {
        self.last_pass
    }

    pub fn passes_done(&self) -> u64 {
        self.passes_done
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(i: u32) -> InfoHash {
        let mut b = [0u8; 20];
        b[..4].copy_from_slice(&i.to_be_bytes());
        InfoHash(b)
    }

    /// Drives the schedule with a fake clock in `step` increments; every announce finishes
    /// `latency` after it starts. Returns the start times.
    fn drive(
        s: &mut AnnounceSchedule,
        start: Instant,
        until: Duration,
        step: Duration,
        latency: Duration,
    ) -> Vec<(Instant, InfoHash)> {
        let mut started = Vec::new();
        let mut flying: VecDeque<Instant> = VecDeque::new();
        let mut now = start;
        while now < start + until {
            while flying.front().is_some_and(|t| *t <= now) {
                flying.pop_front();
                s.on_done(now);
            }
            while let Some(h) = s.next(now) {
                started.push((now, h));
                flying.push_back(now + latency);
                assert!(s.in_flight() <= 8);
            }
            now += step;
        }
        started
    }

    #[test]
    fn a_pass_is_spread_over_the_interval() {
        // 100 torrents, 100 s interval, rate 50/s: one start a second, each torrent once.
        let t0 = Instant::now();
        let mut s = AnnounceSchedule::new(Duration::from_secs(100), 50, 8, t0);
        let all: Vec<_> = (0..100).map(hash).collect();
        assert_eq!(s.set_torrents(&all), (100, 0));
        let ms = Duration::from_millis(10);
        let started = drive(&mut s, t0, Duration::from_secs(99), ms, ms);
        assert_eq!(started.len(), 99, "one a second");
        let unique: HashSet<_> = started.iter().map(|(_, h)| *h).collect();
        assert_eq!(unique.len(), 99);
        let started = drive(&mut s, t0 + Duration::from_secs(99), ms * 50, ms, ms);
        assert_eq!(started.len(), 1);
        assert_eq!(s.passes_done(), 1);
        assert!(s.last_pass().unwrap() >= Duration::from_secs(99));
        // The next pass starts 100 s after the first began.
        assert!(s.wake_at().unwrap() >= t0 + Duration::from_secs(100));
    }

    #[test]
    fn the_rate_caps_a_catalog_larger_than_the_interval_allows() {
        // 1,000 torrents in 10 s would be 100/s; the rate says 20/s, so a pass takes 50 s.
        let t0 = Instant::now();
        let mut s = AnnounceSchedule::new(Duration::from_secs(10), 20, 8, t0);
        s.set_torrents(&(0..1000).map(hash).collect::<Vec<_>>());
        let ms = Duration::from_millis(5);
        let started = drive(&mut s, t0, Duration::from_secs(10), ms, ms);
        assert!((195..=201).contains(&started.len()), "{}", started.len());
        assert_eq!(s.queue_len(), 1000 - started.len());
    }

    #[test]
    fn the_in_flight_bound_holds_and_never_bursts() {
        // Slow announces (5 s each) at rate 1000/s: never more than 8 at once, and after a
        // stall starts resume at the rate, not all at once.
        let t0 = Instant::now();
        let mut s = AnnounceSchedule::new(Duration::from_secs(1), 1000, 8, t0);
        s.set_torrents(&(0..100).map(hash).collect::<Vec<_>>());
        let started = drive(
            &mut s,
            t0,
            Duration::from_secs(11),
            Duration::from_millis(1),
            Duration::from_secs(5),
        );
        assert_eq!(started.len(), 24, "8 per 5 s");
    }

    #[test]
    fn reload_adds_to_the_pass_and_drops_removed() {
        let t0 = Instant::now();
        let mut s = AnnounceSchedule::new(Duration::from_secs(100), 1, 8, t0);
        s.set_torrents(&(0..10).map(hash).collect::<Vec<_>>());
        assert!(s.next(t0).is_some());
        s.on_done(t0);
        assert_eq!(s.queue_len(), 9);
        // Drop 0..5, add 10..12.
        let (added, removed) = s.set_torrents(&(5..12).map(hash).collect::<Vec<_>>());
        assert_eq!((added, removed), (2, 5));
        let mut later = Vec::new();
        let mut now = t0;
        for _ in 0..1000 {
            now += Duration::from_secs(1);
            while let Some(h) = s.next(now) {
                later.push(h);
                s.on_done(now);
            }
            if s.passes_done() == 1 {
                break;
            }
        }
        let expect: HashSet<_> = (5..12).map(hash).collect();
        let got: HashSet<_> = later.iter().copied().collect();
        assert!(got.is_subset(&expect), "a dropped torrent was announced");
        assert!(got.contains(&hash(10)) && got.contains(&hash(11)));
        assert_eq!(s.len(), 7);
    }

    #[test]
    fn empty_catalog_sleeps() {
        let t0 = Instant::now();
        let mut s = AnnounceSchedule::new(Duration::from_secs(100), 1, 8, t0);
        assert!(s.next(t0).is_none());
        assert!(s.wake_at().is_none());
    }
}
