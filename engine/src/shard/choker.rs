//! The seed choker of one shard: who may download right now.
//!
//! Policy (documented in docs/architecture.md): a shard has `slots` upload slots. Every
//! interested peer is unchoked at once while a slot is free. When more peers want in than
//! there are slots, they wait in FIFO order, and every rotation period the longest-unchoked
//! peers (up to a quarter of the slots, at least one, never more than are waiting) are choked
//! and go to the back of the queue while the same number of waiting peers are unchoked:
//! round-robin, so every interested peer gets a turn and nobody starves.
//!
//! Owns: the unchoked set and the waiting queue, by peer key. Pure: no I/O, no clock (the
//! caller passes a monotonic tick number). Must never: exceed `slots` unchoked peers, or hold
//! more waiting entries than there are peers (each peer is in at most one place).

use std::collections::VecDeque;

/// A peer as the choker knows it: its slab index and generation.
pub type PeerKey = (u32, u16);

#[derive(Debug)]
pub struct Choker {
    slots: usize,
    /// Unchoked peers with the tick they were unchoked at (oldest first).
    unchoked: VecDeque<(PeerKey, u64)>,
    waiting: VecDeque<PeerKey>,
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
        }
    }

    pub fn unchoked_count(&self) -> usize {
        self.unchoked.len()
    }
    pub fn waiting_count(&self) -> usize {
        self.waiting.len()
    }

    /// A peer became interested: unchoke now if a slot is free (returns true), else queue it.
    pub fn interested(&mut self, peer: PeerKey, tick: u64) -> bool {
        if self.is_unchoked(peer) || self.waiting.contains(&peer) {
            return self.is_unchoked(peer);
        }
        if self.unchoked.len() < self.slots {
            self.unchoked.push_back((peer, tick));
            true
        } else {
            self.waiting.push_back(peer);
            false
        }
    }

    /// A peer lost interest or left: free its slot or its place in the queue. Returns the
    /// waiting peer that takes the freed slot, if any.
    pub fn remove(&mut self, peer: PeerKey, tick: u64) -> Option<PeerKey> {
        self.waiting.retain(|p| *p != peer);
        let before = self.unchoked.len();
        self.unchoked.retain(|(p, _)| *p != peer);
        if self.unchoked.len() < before {
            if let Some(next) = self.waiting.pop_front() {
                self.unchoked.push_back((next, tick));
                return Some(next);
            }
        }
        None
    }

    pub fn is_unchoked(&self, peer: PeerKey) -> bool {
        self.unchoked.iter().any(|(p, _)| *p == peer)
    }

    /// Round-robin rotation, called every rotation period.
    pub fn rotate(&mut self, tick: u64) -> Decisions {
        let mut d = Decisions::default();
        if self.waiting.is_empty() {
            return d;
        }
        let n = (self.slots / 4)
            .max(1)
            .min(self.waiting.len())
            .min(self.unchoked.len());
        for _ in 0..n {
            if let Some((peer, _)) = self.unchoked.pop_front() {
                d.choke.push(peer);
            }
        }
        for _ in 0..n {
            if let Some(peer) = self.waiting.pop_front() {
                self.unchoked.push_back((peer, tick));
                d.unchoke.push(peer);
            }
        }
        // Choked peers are still interested: back of the queue.
        self.waiting.extend(d.choke.iter().copied());
        debug_assert!(self.unchoked.len() <= self.slots);
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
