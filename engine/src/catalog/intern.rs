//! Tracker-list interning: a catalog of a million torrents typically names a handful of
//! tracker lists, so each distinct list is stored once and shared by `Arc` (saves ~110 bytes
//! per torrent against one `Vec<Vec<String>>` each).
//!
//! Owns: the interning table of one load. Must never: outlive the load (the table is dropped
//! with it; the lists live on in the torrents that share them), or change a list.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

/// BEP 12 tiers of tracker URLs, shared between torrents that name the same list.
pub type Trackers = Arc<Vec<Vec<String>>>;

/// Distinct tracker lists seen by one load (shared by its worker threads).
#[derive(Default)]
pub struct Interner {
    lists: Mutex<HashSet<Trackers>>,
}

impl Interner {
    /// The shared copy of `tiers`.
    pub fn trackers(&self, tiers: &[Vec<String>]) -> Trackers {
        let mut lists = self.lists.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(t) = lists.iter().next().filter(|t| t.as_slice() == tiers) {
            // The common case of one list for the whole catalog: no hashing.
            return t.clone();
        }
        let key = tiers.to_vec();
        if let Some(t) = lists.get(&key) {
            return t.clone();
        }
        let t = Arc::new(key);
        lists.insert(t.clone());
        t
    }
}
