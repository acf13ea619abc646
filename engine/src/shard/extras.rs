//! A shard's cache of torrent extras (BEP 9 info dictionaries, BEP 52 trees) and the loads
//! it has asked the control plane for.
//!
//! Sessions hold metadata and hash requests while their torrent's extras are missing; the
//! shard asks the control plane's loader once per torrent (`plane::ExtrasRequest`) and keeps
//! who waits. The answer (`ShardCommand::Extras`) fills the cache and wakes the waiters; a
//! load that is refused (queue full, too many in flight) or not answered within
//! `EXTRAS_LOAD_TIMEOUT_SECS` wakes them with nothing, and they answer with rejects.
//!
//! Owns: the cache (at most `entries_max` torrents, at most `trees_max` of them with v2
//! trees) and the in-flight loads (at most `EXTRAS_LOADS_INFLIGHT_MAX`, each with at most one
//! entry per waiting peer). Must never: read a file (that is the control plane's loader),
//! block on the channel, or keep a waiter past its load's deadline.

use crate::catalog::CatalogTorrent;
use crate::metainfo::InfoHash;
use crate::plane::{
    ExtrasRequest, TorrentExtras, EXTRAS_LOADS_INFLIGHT_MAX, EXTRAS_LOAD_TIMEOUT_SECS,
};
use crate::shard::choker::PeerKey;
use crossbeam_channel::Sender;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What became of a peer's wish for a torrent's extras.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wish {
    /// A load is under way; the peer is woken when it ends.
    Waiting,
    /// No load could be started (too many in flight, or the loader's queue is full): the
    /// caller wakes the peer with nothing now.
    Refused,
}

struct Load {
    deadline: Instant,
    waiters: Vec<PeerKey>,
}

pub struct ExtrasCache {
    shard: usize,
    entries: HashMap<InfoHash, Arc<TorrentExtras>>,
    entries_max: usize,
    trees_max: usize,
    loads: HashMap<InfoHash, Load>,
    requests: Sender<ExtrasRequest>,
    /// Loads refused or timed out (counted in stats).
    pub loads_refused: u64,
}

impl ExtrasCache {
    pub fn new(
        shard: usize,
        entries_max: usize,
        trees_max: usize,
        requests: Sender<ExtrasRequest>,
    ) -> ExtrasCache {
        ExtrasCache {
            shard,
            entries: HashMap::new(),
            entries_max: entries_max.max(1),
            trees_max: trees_max.max(1),
            loads: HashMap::new(),
            requests,
            loads_refused: 0,
        }
    }

    pub fn get(&self, h: &InfoHash) -> Option<&TorrentExtras> {
        self.entries.get(h).map(|e| e.as_ref())
    }

    /// Drops every entry (the catalog changed: a .torrent may have been replaced).
    pub fn clear(&mut self) {
        self.entries.clear();
    }

    /// `peer` waits for `torrent`'s extras: joins a load under way or starts one.
    pub fn want(&mut self, torrent: &Arc<CatalogTorrent>, peer: PeerKey, now: Instant) -> Wish {
        if let Some(load) = self.loads.get_mut(&torrent.info_hash) {
            if !load.waiters.contains(&peer) {
                load.waiters.push(peer);
            }
            return Wish::Waiting;
        }
        if self.loads.len() >= EXTRAS_LOADS_INFLIGHT_MAX {
            self.loads_refused += 1;
            return Wish::Refused;
        }
        let request = ExtrasRequest {
            shard: self.shard,
            torrent: torrent.clone(),
        };
        if self.requests.try_send(request).is_err() {
            self.loads_refused += 1;
            return Wish::Refused;
        }
        self.loads.insert(
            torrent.info_hash,
            Load {
                deadline: now + Duration::from_secs(EXTRAS_LOAD_TIMEOUT_SECS),
                waiters: vec![peer],
            },
        );
        Wish::Waiting
    }

    /// The loader answered: cache the extras (evicting an arbitrary entry when full: loads
    /// are rare and any bounded policy serves) and return who waited for them.
    pub fn on_loaded(&mut self, extras: Arc<TorrentExtras>) -> Vec<PeerKey> {
        let h = extras.info_hash;
        let waiters = self.loads.remove(&h).map(|l| l.waiters).unwrap_or_default();
        self.entries.remove(&h);
        if self.entries.len() >= self.entries_max {
            self.evict(|_| true);
        }
        if !extras.trees.is_empty()
            && self
                .entries
                .values()
                .filter(|e| !e.trees.is_empty())
                .count()
                >= self.trees_max
        {
            self.evict(|e| !e.trees.is_empty());
        }
        self.entries.insert(h, extras);
        debug_assert!(self.entries.len() <= self.entries_max);
        waiters
    }

    fn evict(&mut self, which: impl Fn(&TorrentExtras) -> bool) {
        if let Some(k) = self.entries.iter().find(|(_, e)| which(e)).map(|(k, _)| *k) {
            self.entries.remove(&k);
        }
    }

    /// Loads past their deadline: given up, their waiters returned (to be answered with
    /// rejects).
    pub fn expire(&mut self, now: Instant) -> Vec<(InfoHash, Vec<PeerKey>)> {
        let late: Vec<InfoHash> = self
            .loads
            .iter()
            .filter(|(_, l)| now >= l.deadline)
            .map(|(h, _)| *h)
            .collect();
        late.into_iter()
            .filter_map(|h| {
                self.loads_refused += 1;
                self.loads.remove(&h).map(|l| (h, l.waiters))
            })
            .collect()
    }

    pub fn loads_inflight(&self) -> usize {
        self.loads.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metainfo::hash_tree::TorrentTrees;
    use crossbeam_channel::bounded;

    fn torrent(h: u8) -> Arc<CatalogTorrent> {
        Arc::new(CatalogTorrent {
            total_length: 4,
            info_len_bytes: 10,
            ..CatalogTorrent::fixture(h)
        })
    }

    fn extras(h: u8) -> Arc<TorrentExtras> {
        Arc::new(TorrentExtras {
            info_hash: InfoHash([h; 20]),
            info: Some(vec![1, 2, 3]),
            trees: TorrentTrees::default(),
        })
    }

    #[test]
    fn one_load_per_torrent_wakes_every_waiter_once() {
        // Proves: two peers wanting one torrent cost one request; the answer returns both.
        let (tx, rx) = bounded(4);
        let mut c = ExtrasCache::new(0, 2, 2, tx);
        let now = Instant::now();
        assert_eq!(c.want(&torrent(1), (1, 0), now), Wish::Waiting);
        assert_eq!(c.want(&torrent(1), (2, 0), now), Wish::Waiting);
        assert_eq!(c.want(&torrent(1), (2, 0), now), Wish::Waiting);
        assert_eq!(rx.len(), 1);
        assert_eq!(c.on_loaded(extras(1)), vec![(1, 0), (2, 0)]);
        assert!(c.get(&InfoHash([1; 20])).is_some());
        assert_eq!(c.loads_inflight(), 0);
    }

    #[test]
    fn a_full_queue_refuses_and_a_late_load_expires() {
        // Proves: the loader's queue bound and the load deadline both end a wait.
        let (tx, _rx) = bounded(1);
        let mut c = ExtrasCache::new(0, 2, 2, tx);
        let now = Instant::now();
        assert_eq!(c.want(&torrent(1), (1, 0), now), Wish::Waiting);
        assert_eq!(c.want(&torrent(2), (2, 0), now), Wish::Refused);
        assert!(c.expire(now).is_empty());
        let late = c.expire(now + Duration::from_secs(EXTRAS_LOAD_TIMEOUT_SECS));
        assert_eq!(late, vec![(InfoHash([1; 20]), vec![(1, 0)])]);
        assert_eq!(c.loads_refused, 2);
    }

    #[test]
    fn the_cache_never_holds_more_than_its_bound() {
        let (tx, _rx) = bounded(1);
        let mut c = ExtrasCache::new(0, 2, 1, tx);
        for h in 0..10 {
            c.on_loaded(extras(h));
            assert!(c.entries.len() <= 2);
        }
    }
}
