//! Dialing out to peers that trackers return: which to dial, and how fast.
//!
//! Owns: the filters (our own listen addresses, duplicates, peers dialed recently, the
//! per-torrent outbound bound), a bounded queue of peers waiting for a connect token, and the
//! token bucket (`connect_rate_per_sec`). Must never: block (the connect call is
//! `Seeder::connect`, a `try_send` to a shard), hold more than `dial_queue_max` queued peers or
//! `dial_recent_max` remembered pairs, or dial a peer twice within `redial_after_secs`.
//!
//! "Outbound per torrent" counts distinct peers dialed for the torrent within the redial
//! window: the shards own the connections and the control plane does not see when they
//! close, so this is an upper bound on outbound connections, not an exact count.

use crate::config::TrackerConfig;
use crate::metainfo::InfoHash;
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// The connect hook: `Seeder::connect` (wired by `control`) or a recorder in tests.
pub type ConnectFn = dyn Fn(SocketAddr, InfoHash) -> Result<(), String> + Send + Sync;

pub struct Dialer {
    enabled: bool,
    local: Vec<SocketAddr>,
    per_torrent_max: usize,
    rate_per_sec: f64,
    redial_after: Duration,
    recent_max: usize,
    queue_max: usize,
    recent: HashMap<(InfoHash, SocketAddr), Instant>,
    per_torrent: HashMap<InfoHash, usize>,
    queue: VecDeque<(InfoHash, SocketAddr)>,
    tokens: f64,
    refilled_at: Instant,
    pub dials: u64,
    pub skipped: u64,
}

impl Dialer {
    pub fn new(cfg: &TrackerConfig, local: Vec<SocketAddr>, now: Instant) -> Dialer {
        Dialer {
            enabled: cfg.dial_peers,
            local,
            per_torrent_max: cfg.outbound_per_torrent_max,
            rate_per_sec: cfg.connect_rate_per_sec.max(1) as f64,
            redial_after: Duration::from_secs(cfg.redial_after_secs),
            recent_max: cfg.dial_recent_max,
            queue_max: cfg.dial_queue_max,
            recent: HashMap::new(),
            per_torrent: HashMap::new(),
            queue: VecDeque::new(),
            tokens: cfg.connect_rate_per_sec.max(1) as f64,
            refilled_at: now,
            dials: 0,
            skipped: 0,
        }
    }

    /// True when `peer` is one of our own listen addresses (a tracker returns us to ourselves).
    pub fn is_self(&self, peer: &SocketAddr) -> bool {
        self.local.iter().any(|l| {
            l.port() == peer.port()
                && (l.ip() == peer.ip()
                    || peer.ip().is_unspecified()
                    || (peer.ip().is_loopback()
                        && (l.ip().is_unspecified() || l.ip().is_loopback())))
        })
    }

    fn expire(&mut self, now: Instant) {
        let redial_after = self.redial_after;
        let per_torrent = &mut self.per_torrent;
        self.recent.retain(|(hash, _), at| {
            let keep = now.saturating_duration_since(*at) < redial_after;
            if !keep {
                if let Some(n) = per_torrent.get_mut(hash) {
                    *n = n.saturating_sub(1);
                }
            }
            keep
        });
        self.per_torrent.retain(|_, n| *n > 0);
    }

    /// Queues the peers of one announce answer that pass the filters.
    pub fn offer(&mut self, info_hash: InfoHash, peers: &[SocketAddr], now: Instant) {
        if !self.enabled {
            return;
        }
        for peer in peers {
            if peer.port() == 0 || self.is_self(peer) {
                self.skipped += 1;
                continue;
            }
            let key = (info_hash, *peer);
            if let Some(at) = self.recent.get(&key) {
                if now.saturating_duration_since(*at) < self.redial_after {
                    self.skipped += 1;
                    continue;
                }
            }
            if self.recent.len() >= self.recent_max {
                self.expire(now);
            }
            let dialed = self.per_torrent.get(&info_hash).copied().unwrap_or(0);
            if self.recent.len() >= self.recent_max
                || dialed >= self.per_torrent_max
                || self.queue.len() >= self.queue_max
            {
                self.skipped += 1;
                continue;
            }
            // Remember at queue time, so duplicates in this and later answers are skipped.
            if self.recent.insert(key, now).is_none() {
                *self.per_torrent.entry(info_hash).or_insert(0) += 1;
            }
            self.queue.push_back(key);
        }
    }

    /// Dials queued peers while connect tokens last. Returns when the next token is due, if
    /// peers are still waiting.
    pub fn drain<F>(&mut self, now: Instant, connect: &F) -> Option<Instant>
    where
        F: Fn(SocketAddr, InfoHash) -> Result<(), String> + ?Sized,
    {
        let elapsed = now
            .saturating_duration_since(self.refilled_at)
            .as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate_per_sec).min(self.rate_per_sec);
        self.refilled_at = now;
        while self.tokens >= 1.0 {
            let Some((hash, peer)) = self.queue.pop_front() else {
                break;
            };
            self.tokens -= 1.0;
            match connect(peer, hash) {
                Ok(()) => self.dials += 1,
                Err(e) => {
                    // A full shard queue: forget the pair so a later announce may retry it.
                    tracing::debug!(%peer, "dial refused: {e}");
                    self.skipped += 1;
                    if self.recent.remove(&(hash, peer)).is_some() {
                        if let Some(n) = self.per_torrent.get_mut(&hash) {
                            *n = n.saturating_sub(1);
                        }
                    }
                }
            }
        }
        if self.queue.is_empty() {
            None
        } else {
            Some(now + Duration::from_secs_f64(1.0 / self.rate_per_sec))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn filters_self_duplicates_recent_and_rate() {
        // Own address, duplicates and recently dialed peers are skipped; at most
        // `connect_rate_per_sec` dials happen per second; the per-torrent bound holds.
        let cfg = TrackerConfig {
            connect_rate_per_sec: 2,
            outbound_per_torrent_max: 3,
            ..TrackerConfig::default()
        };
        let me: SocketAddr = "127.0.0.1:6881".parse().unwrap();
        let t0 = Instant::now();
        let mut d = Dialer::new(&cfg, vec![me], t0);
        let h = InfoHash([1; 20]);
        let p = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
        d.offer(h, &[me, p(1), p(1), p(2), p(3), p(4)], t0);
        assert_eq!(d.skipped, 3, "self, duplicate, over the per-torrent bound");
        let dialed = Mutex::new(Vec::new());
        let connect = |a: SocketAddr, _h: InfoHash| -> Result<(), String> {
            dialed.lock().unwrap().push(a);
            Ok(())
        };
        assert!(
            d.drain(t0, &connect).is_some(),
            "one left for the next token"
        );
        assert_eq!(dialed.lock().unwrap().len(), 2);
        d.drain(t0 + Duration::from_secs(1), &connect);
        assert_eq!(*dialed.lock().unwrap(), vec![p(1), p(2), p(3)]);
        d.offer(h, &[p(1)], t0 + Duration::from_secs(2));
        assert!(d.queue.is_empty(), "dialed recently");
        let wild = Dialer::new(&cfg, vec!["0.0.0.0:7000".parse().unwrap()], t0);
        assert!(wild.is_self(&"127.0.0.1:7000".parse().unwrap()));
        assert!(!wild.is_self(&"127.0.0.1:7001".parse().unwrap()));
    }
}
