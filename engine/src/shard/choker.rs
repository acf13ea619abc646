//! The seed choker of one shard: who may download right now.
//!
//! Policy (documented in docs/architecture.md): a shard has `slots` upload slots. Every
//! interested peer is unchoked at once while a slot is free. When more peers want in than
//! there are slots, they wait in FIFO order, and every rotation period the longest-unchoked
//! peers (up to a quarter of the slots, at least one, never more than are waiting) are choked
//! and go to the back of the queue while the same number of waiting peers are unchoked:
//! round-robin, so every interested peer gets a turn and nobody starves.
//!
//! Every operation is amortized O(1): where each peer is lives in an index, and a peer that
//! leaves a queue leaves a tombstone there (dropped when it reaches the front, or by a
//! compaction once tombstones outnumber the live entries), so an Interested/NotInterested
//! flood costs no scan of the choker.
//!
//! Owns: the unchoked set and the waiting queue, by peer key. Pure: no I/O, no clock (the
//! caller passes a monotonic tick number). Must never: exceed `slots` unchoked peers, hold a
//! peer in two places, or let tombstones grow a queue past twice its live entries (plus a
//! small constant).

use crate::keyhash::KeyHashBuilder;
use std::collections::{HashMap, VecDeque};

/// A peer as the choker knows it: its slab index and generation.
pub type PeerKey = (u32, u16);

/// Tombstones below this many are never compacted (compaction is O(queue)).
const COMPACT_SLACK_ENTRIES: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    Unchoked,
    Waiting,
}

#[derive(Debug)]
pub struct Choker {
    slots: usize,
    /// Unchoked peers, oldest first, with the entry's stamp; stale stamps are tombstones.
    unchoked: VecDeque<(PeerKey, u64)>,
    waiting: VecDeque<(PeerKey, u64)>,
    /// Where each known peer is, and the stamp of its live queue entry.
    places: HashMap<PeerKey, (Place, u64), KeyHashBuilder>,
    unchoked_live: usize,
    waiting_live: usize,
    next_stamp: u64,
}

/// What the shard must tell peers after a choker decision.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Decisions {
    pub unchoke: Vec<PeerKey>,
    pub choke: Vec<PeerKey>,
}

impl Choker {
    pub fn new(slots: usize) -> Choker {
        assert!(slots > 0);
        Choker {
            slots,
            unchoked: VecDeque::new(),
            waiting: VecDeque::new(),
            places: HashMap::default(),
            unchoked_live: 0,
            waiting_live: 0,
            next_stamp: 0,
        }
    }

    pub fn unchoked_count(&self) -> usize {
        self.unchoked_live
    }
    pub fn waiting_count(&self) -> usize {
        self.waiting_live
    }

    /// A peer became interested: unchoke now if a slot is free (returns true), else queue it.
    /// The tick is when it happened (kept for rotation order only through queue position).
    pub fn interested(&mut self, peer: PeerKey, _tick: u64) -> bool {
        if let Some((place, _)) = self.places.get(&peer) {
            return *place == Place::Unchoked;
        }
        if self.unchoked_live < self.slots {
            self.place(peer, Place::Unchoked);
            true
        } else {
            self.place(peer, Place::Waiting);
            false
        }
    }

    /// A peer lost interest or left: free its slot or its place in the queue. Returns the
    /// waiting peer that takes the freed slot, if any.
    pub fn remove(&mut self, peer: PeerKey, _tick: u64) -> Option<PeerKey> {
        let (place, _) = self.places.remove(&peer)?;
        let next = match place {
            Place::Waiting => {
                self.waiting_live -= 1;
                None
            }
            Place::Unchoked => {
                self.unchoked_live -= 1;
                let next = self.pop_live(Place::Waiting);
                if let Some(next) = next {
                    self.place(next, Place::Unchoked);
                }
                next
            }
        };
        self.tidy();
        next
    }

    pub fn is_unchoked(&self, peer: PeerKey) -> bool {
        matches!(self.places.get(&peer), Some((Place::Unchoked, _)))
    }

    /// Round-robin rotation, called every rotation period.
    pub fn rotate(&mut self, _tick: u64) -> Decisions {
        let mut d = Decisions::default();
        let n = (self.slots / 4)
            .max(1)
            .min(self.waiting_live)
            .min(self.unchoked_live);
        for _ in 0..n {
            if let Some(peer) = self.pop_live(Place::Unchoked) {
                d.choke.push(peer);
            }
        }
        for _ in 0..n {
            if let Some(peer) = self.pop_live(Place::Waiting) {
                self.place(peer, Place::Unchoked);
                d.unchoke.push(peer);
            }
        }
        // Choked peers are still interested: back of the queue.
        for &peer in &d.choke {
            self.place(peer, Place::Waiting);
        }
        self.tidy();
        debug_assert!(self.unchoked_live <= self.slots);
        d
    }

    /// Puts a peer that is in no place at the back of `place`'s queue.
    fn place(&mut self, peer: PeerKey, place: Place) {
        let stamp = self.next_stamp;
        self.next_stamp += 1;
        let previous = self.places.insert(peer, (place, stamp));
        debug_assert!(previous.is_none(), "a peer in two places");
        match place {
            Place::Unchoked => {
                self.unchoked.push_back((peer, stamp));
                self.unchoked_live += 1;
            }
            Place::Waiting => {
                self.waiting.push_back((peer, stamp));
                self.waiting_live += 1;
            }
        }
    }

    /// Takes the oldest live peer out of `place` (it is then in no place).
    fn pop_live(&mut self, place: Place) -> Option<PeerKey> {
        let queue = match place {
            Place::Unchoked => &mut self.unchoked,
            Place::Waiting => &mut self.waiting,
        };
        while let Some((peer, stamp)) = queue.pop_front() {
            if self.places.get(&peer) == Some(&(place, stamp)) {
                self.places.remove(&peer);
                match place {
                    Place::Unchoked => self.unchoked_live -= 1,
                    Place::Waiting => self.waiting_live -= 1,
                }
                return Some(peer);
            }
        }
        None
    }

    /// Compacts a queue whose tombstones outnumber its live entries (amortized O(1): at
    /// least `live + COMPACT_SLACK_ENTRIES` removals made them).
    fn tidy(&mut self) {
        let places = &self.places;
        for (queue, live, place) in [
            (&mut self.unchoked, self.unchoked_live, Place::Unchoked),
            (&mut self.waiting, self.waiting_live, Place::Waiting),
        ] {
            if queue.len() > 2 * live + COMPACT_SLACK_ENTRIES {
                queue.retain(|(peer, stamp)| places.get(peer) == Some(&(place, *stamp)));
                debug_assert_eq!(queue.len(), live);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The choker as first written (linear scans): the reference the indexed one must match.
    struct Naive {
        slots: usize,
        unchoked: VecDeque<PeerKey>,
        waiting: VecDeque<PeerKey>,
    }

    impl Naive {
        fn interested(&mut self, peer: PeerKey) -> bool {
            if self.unchoked.contains(&peer) || self.waiting.contains(&peer) {
                return self.unchoked.contains(&peer);
            }
            if self.unchoked.len() < self.slots {
                self.unchoked.push_back(peer);
                true
            } else {
                self.waiting.push_back(peer);
                false
            }
        }
        fn remove(&mut self, peer: PeerKey) -> Option<PeerKey> {
            self.waiting.retain(|p| *p != peer);
            let before = self.unchoked.len();
            self.unchoked.retain(|p| *p != peer);
            if self.unchoked.len() < before {
                if let Some(next) = self.waiting.pop_front() {
                    self.unchoked.push_back(next);
                    return Some(next);
                }
            }
            None
        }
        fn rotate(&mut self) -> Decisions {
            let mut d = Decisions::default();
            let n = (self.slots / 4)
                .max(1)
                .min(self.waiting.len())
                .min(self.unchoked.len());
            for _ in 0..n {
                d.choke.extend(self.unchoked.pop_front());
            }
            for _ in 0..n {
                if let Some(peer) = self.waiting.pop_front() {
                    self.unchoked.push_back(peer);
                    d.unchoke.push(peer);
                }
            }
            self.waiting.extend(d.choke.iter().copied());
            d
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(1000))]
        #[test]
        fn matches_the_linear_choker(
            slots in 1usize..9,
            ops in proptest::collection::vec((0u8..3, 0u32..24), 0..400)
        ) {
            // Proves: the indexed choker makes exactly the decisions of the linear one for
            // any sequence of interest, removal and rotation, with counts that match and
            // queues bounded by twice the live entries plus the slack.
            let mut c = Choker::new(slots);
            let mut m = Naive { slots, unchoked: VecDeque::new(), waiting: VecDeque::new() };
            for (tick, (op, p)) in ops.into_iter().enumerate() {
                let peer = (p, 0);
                let tick = tick as u64;
                match op {
                    0 => proptest::prop_assert_eq!(c.interested(peer, tick), m.interested(peer)),
                    1 => proptest::prop_assert_eq!(c.remove(peer, tick), m.remove(peer)),
                    _ => proptest::prop_assert_eq!(c.rotate(tick), m.rotate()),
                }
                proptest::prop_assert_eq!(c.unchoked_count(), m.unchoked.len());
                proptest::prop_assert_eq!(c.waiting_count(), m.waiting.len());
                proptest::prop_assert!(c.unchoked_count() <= slots);
                for q in m.unchoked.iter() {
                    proptest::prop_assert!(c.is_unchoked(*q));
                }
                proptest::prop_assert!(c.unchoked.len() <= 2 * c.unchoked_live + COMPACT_SLACK_ENTRIES);
                proptest::prop_assert!(c.waiting.len() <= 2 * c.waiting_live + COMPACT_SLACK_ENTRIES);
            }
        }
    }

    #[test]
    fn interest_churn_does_not_grow_the_queues() {
        // Proves: a peer toggling interest behind a full set of slots leaves no trail.
        let mut c = Choker::new(2);
        c.interested((1, 0), 0);
        c.interested((2, 0), 0);
        for tick in 0..100_000 {
            assert!(!c.interested((3, 0), tick));
            assert_eq!(c.remove((3, 0), tick), None);
        }
        assert!(c.waiting.len() <= COMPACT_SLACK_ENTRIES + 1);
        assert_eq!((c.unchoked_count(), c.waiting_count()), (2, 0));
    }

    #[test]
    fn unchokes_while_slots_allow_then_queues() {
        // With 2 slots, the first two interested peers are unchoked and the third waits.
        let mut c = Choker::new(2);
        assert!(c.interested((1, 0), 0));
        assert!(c.interested((2, 0), 0));
        assert!(!c.interested((3, 0), 0));
        assert_eq!(c.unchoked_count(), 2);
        assert_eq!(c.waiting_count(), 1);
        // Interested twice changes nothing.
        assert!(c.interested((1, 0), 0));
        assert_eq!(c.unchoked_count(), 2);
    }

    #[test]
    fn a_freed_slot_goes_to_the_first_waiter() {
        // When an unchoked peer leaves, the longest-waiting peer gets its slot.
        let mut c = Choker::new(1);
        c.interested((1, 0), 0);
        c.interested((2, 0), 0);
        c.interested((3, 0), 0);
        assert_eq!(c.remove((1, 0), 5), Some((2, 0)));
        assert!(c.is_unchoked((2, 0)));
        assert_eq!(c.remove((3, 0), 6), None);
        assert_eq!(c.waiting_count(), 0);
    }

    #[test]
    fn rotation_gives_every_waiter_a_turn() {
        // 4 slots, 8 peers: after enough rotations every peer has been unchoked at least once.
        let mut c = Choker::new(4);
        for p in 0..8 {
            c.interested((p, 0), 0);
        }
        let mut seen: std::collections::HashSet<u32> = (0..4).collect();
        for tick in 1..=8 {
            let d = c.rotate(tick);
            assert_eq!(d.choke.len(), d.unchoke.len());
            assert!(c.unchoked_count() <= 4);
            seen.extend(d.unchoke.iter().map(|(p, _)| *p));
        }
        assert_eq!(seen.len(), 8);
    }

    #[test]
    fn no_rotation_without_waiters() {
        // Nobody is choked for nothing.
        let mut c = Choker::new(4);
        c.interested((1, 0), 0);
        assert_eq!(c.rotate(1), Decisions::default());
    }
}
