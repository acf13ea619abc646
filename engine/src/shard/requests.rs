//! The queue of one peer's validated block requests, in arrival order, with O(1) cancel.
//!
//! A Cancel names a request by value. Finding it by scanning the queue costs up to
//! `request_queue_per_peer_max` comparisons per 17-byte message, which lets one peer spend a
//! shard's core on cancels. Here a cancel looks the request up in an index (built at the
//! peer's first Cancel, so peers that never cancel hash nothing) and leaves a tombstone in
//! place; tombstones at the front are dropped at once, and the queue is compacted when they
//! outnumber the live entries, so every operation is amortized O(1) and the memory stays
//! within a constant factor of the live requests.
//!
//! Owns: the queued requests, their index and the tombstones. Pure: no I/O, no clock.
//! Must never: hand out a cancelled request, lose or duplicate a live one, or let tombstones
//! grow the queue past twice its live length (plus a small constant).

use super::session::QueuedRequest;
use crate::keyhash::KeyHashBuilder;
use crate::wire::message::BlockRequest;
use std::collections::{HashMap, VecDeque};

/// Tombstones below this many are never compacted (compaction is O(queue)).
const COMPACT_SLACK_ENTRIES: usize = 16;

#[derive(Debug, Clone, Copy)]
struct Slot {
    queued: QueuedRequest,
    live: bool,
}

/// An empty queue's storage, lent between peers (`shard::spare`): a peer with nothing queued
/// holds none.
pub struct QueueStorage(VecDeque<Slot>);

#[derive(Debug, Default)]
pub struct RequestQueue {
    slots: VecDeque<Slot>,
    /// Sequence number of `slots[0]`; slot `i` has sequence `front_seq + i`.
    front_seq: u64,
    /// The newest live copy of each queued request, by sequence number. An older duplicate
    /// (a peer asking twice for one block) is served but cannot be cancelled. Built at the
    /// peer's first Cancel (most peers never send one, and then no request is hashed at
    /// all), kept up to date from then on, dropped when the queue is cleared. The hot-map
    /// hasher (`keyhash`): the map holds at most `request_queue_per_peer_max` keys, so
    /// crafted collisions could only slow one peer's own cancels to the linear scan this
    /// replaced.
    /// Boxed: most peers never cancel, and an empty map inline costs 40 bytes per peer
    /// (the extra allocation is made once per cancelling peer).
    #[allow(clippy::box_collection)]
    index: Option<Box<HashMap<BlockRequest, u64, KeyHashBuilder>>>,
    live: usize,
}

impl RequestQueue {
    pub fn len(&self) -> usize {
        self.live
    }
    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    pub fn push_back(&mut self, queued: QueuedRequest) {
        let seq = self.front_seq + self.slots.len() as u64;
        self.slots.push_back(Slot { queued, live: true });
        if let Some(index) = self.index.as_mut() {
            index.insert(queued.request, seq);
        }
        self.live += 1;
    }

    /// The oldest live request (the front slot is always live: see `drop_dead_front`).
    pub fn front(&self) -> Option<QueuedRequest> {
        debug_assert!(self.slots.front().is_none_or(|s| s.live));
        self.slots.front().map(|s| s.queued)
    }

    pub fn pop_front(&mut self) -> Option<QueuedRequest> {
        let slot = self.slots.pop_front()?;
        debug_assert!(slot.live);
        let seq = self.front_seq;
        self.front_seq += 1;
        if let Some(index) = self.index.as_mut() {
            if index.get(&slot.queued.request) == Some(&seq) {
                index.remove(&slot.queued.request);
            }
        }
        self.live -= 1;
        self.drop_dead_front();
        Some(slot.queued)
    }

    /// Removes the newest queued copy of `r`; false when none is queued.
    pub fn cancel(&mut self, r: BlockRequest) -> bool {
        let front_seq = self.front_seq;
        let slots = &self.slots;
        let index = self.index.get_or_insert_with(|| {
            // The first Cancel: index every live request, the newest copy last (it wins).
            let mut index = HashMap::with_capacity_and_hasher(slots.len(), KeyHashBuilder::new());
            for (i, s) in slots.iter().enumerate().filter(|(_, s)| s.live) {
                index.insert(s.queued.request, front_seq + i as u64);
            }
            Box::new(index)
        });
        let Some(seq) = index.remove(&r) else {
            return false;
        };
        let at = (seq - self.front_seq) as usize;
        let Some(slot) = self.slots.get_mut(at) else {
            debug_assert!(false, "index names a slot past the queue");
            return false;
        };
        debug_assert!(slot.live && slot.queued.request == r);
        slot.live = false;
        self.live -= 1;
        self.drop_dead_front();
        if self.slots.len() > 2 * self.live + COMPACT_SLACK_ENTRIES {
            self.compact();
        }
        true
    }

    pub fn clear(&mut self) {
        self.front_seq += self.slots.len() as u64;
        self.slots.clear();
        self.index = None;
        self.live = 0;
        // A queue that once held hundreds of requests gives its memory back when idle.
        self.slots.shrink_to(COMPACT_SLACK_ENTRIES);
    }

    /// The storage of a queue that holds nothing (not even tombstones), for another peer.
    pub fn take_storage(&mut self) -> Option<QueueStorage> {
        (self.slots.is_empty() && self.slots.capacity() > 0)
            .then(|| QueueStorage(std::mem::take(&mut self.slots)))
    }

    /// True when the queue has storage (pushing allocates nothing while it has room).
    pub fn has_storage(&self) -> bool {
        self.slots.capacity() > 0
    }

    /// Gives a queue without storage an empty one (kept by the caller otherwise).
    pub fn give_storage(&mut self, storage: QueueStorage) -> Option<QueueStorage> {
        if self.has_storage() {
            return Some(storage);
        }
        self.slots = storage.0;
        self.slots.clear();
        None
    }

    /// Live requests, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &QueuedRequest> {
        self.slots.iter().filter(|s| s.live).map(|s| &s.queued)
    }

    fn drop_dead_front(&mut self) {
        while self.slots.front().is_some_and(|s| !s.live) {
            self.slots.pop_front();
            self.front_seq += 1;
        }
    }

    /// Drops every tombstone and renumbers the live slots (O(queue), amortized over the
    /// at least `live + COMPACT_SLACK_ENTRIES` cancels that made the tombstones).
    fn compact(&mut self) {
        self.slots.retain(|s| s.live);
        debug_assert_eq!(self.slots.len(), self.live);
        let Some(index) = self.index.as_mut() else {
            return;
        };
        for (i, s) in self.slots.iter().enumerate() {
            let seq = self.front_seq + i as u64;
            if let Some(indexed) = index.get_mut(&s.queued.request) {
                // Only the newest copy is indexed; an older duplicate keeps the entry of the
                // newer one, which comes later and overwrites this.
                *indexed = seq;
            }
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::Instant;

    /// A queued 16 KiB request for block 0 of piece `index` (other shard tests use it too).
    pub(in crate::shard) fn q(index: u32) -> QueuedRequest {
        QueuedRequest {
            request: BlockRequest {
                index,
                begin: 0,
                length: 16384,
            },
            received_at: Instant::now(),
        }
    }

    #[test]
    fn cancel_removes_from_the_middle_and_the_front_stays_live() {
        // Proves: a cancelled request is never handed out, the others keep their order.
        let mut rq = RequestQueue::default();
        for i in 0..5 {
            rq.push_back(q(i));
        }
        assert!(rq.cancel(q(2).request));
        assert!(!rq.cancel(q(2).request), "twice");
        assert!(rq.cancel(q(0).request));
        assert_eq!(rq.len(), 3);
        let order: Vec<u32> = std::iter::from_fn(|| rq.pop_front())
            .map(|x| x.request.index)
            .collect();
        assert_eq!(order, vec![1, 3, 4]);
        assert!(rq.is_empty() && rq.front().is_none());
    }

    #[test]
    fn request_cancel_churn_keeps_the_queue_bounded() {
        // Proves: a peer that requests and cancels forever behind one live request that is
        // never served does not grow the queue (tombstones are compacted).
        let mut rq = RequestQueue::default();
        rq.push_back(q(u32::MAX));
        for i in 0..100_000 {
            rq.push_back(q(i % 7));
            assert!(rq.cancel(q(i % 7).request));
            assert!(rq.slots.len() <= 2 * rq.len() + COMPACT_SLACK_ENTRIES + 1);
        }
        assert_eq!(rq.len(), 1);
        assert_eq!(rq.front().map(|x| x.request.index), Some(u32::MAX));
    }

    #[derive(Debug, Clone)]
    enum Op {
        Push(u32),
        Pop,
        Cancel(u32),
        Clear,
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn behaves_like_a_deque_with_newest_copy_cancel(
            ops in proptest::collection::vec(prop_oneof![
                6 => (0u32..12).prop_map(Op::Push),
                3 => Just(Op::Pop),
                4 => (0u32..12).prop_map(Op::Cancel),
                1 => Just(Op::Clear),
            ], 0..300)
        ) {
            // Proves: against a plain VecDeque model (a cancel removes the newest copy of a
            // request; older duplicates are served, not cancelled), the queue hands out the
            // same requests in the same order, its length matches, and its slots never
            // exceed twice the live entries plus the slack.
            let mut rq = RequestQueue::default();
            // (request, cancellable): pushing a copy makes older copies uncancellable.
            let mut model: VecDeque<(u32, bool)> = VecDeque::new();
            for op in ops {
                match op {
                    Op::Push(i) => {
                        model.iter_mut().filter(|m| m.0 == i).for_each(|m| m.1 = false);
                        rq.push_back(q(i));
                        model.push_back((i, true));
                    }
                    Op::Pop => {
                        prop_assert_eq!(rq.pop_front().map(|x| x.request.index), model.pop_front().map(|m| m.0));
                    }
                    Op::Cancel(i) => {
                        let at = model.iter().position(|&m| m == (i, true));
                        prop_assert_eq!(rq.cancel(q(i).request), at.is_some());
                        if let Some(at) = at {
                            model.remove(at);
                        }
                    }
                    Op::Clear => { rq.clear(); model.clear(); }
                }
                prop_assert_eq!(rq.len(), model.len());
                prop_assert_eq!(rq.front().map(|x| x.request.index), model.front().map(|m| m.0));
                let live: Vec<u32> = rq.iter().map(|x| x.request.index).collect();
                prop_assert_eq!(&live, &model.iter().map(|m| m.0).collect::<Vec<_>>());
                prop_assert!(rq.slots.len() <= 2 * rq.len() + COMPACT_SLACK_ENTRIES + 1);
            }
        }
    }
}
