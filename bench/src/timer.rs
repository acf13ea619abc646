//! The event loop's timer: which slots (peers) need attention at what time, so a wake-up
//! costs O(due slots x log n) instead of a scan over every peer.
//!
//! Owns: a binary min-heap of `(due_ns, slot, generation)` entries and, per slot, the one
//! entry that is live. A fired entry means "look at this slot now": the caller re-evaluates
//! the slot (its peer's open-loop schedule, a pending dial) and arms it again if it still
//! wants a wake-up. Firing early or spuriously is harmless; never firing is the bug this
//! module exists to prevent.
//! Must never: grow without bound (at most `len_max_entries` entries, sized at start-up from
//! the slot count; stale entries are compacted away when that bound is reached), read a clock
//! (time comes in as an argument), or know what a slot is.
//!
//! Each slot has at most one live entry. `arm(slot, due)` keeps an existing entry that is due
//! no later than `due` (it fires first and the caller re-arms with the real time), and
//! replaces a later one by bumping the slot's generation: the old entry stays in the heap as
//! a stale one and is skipped when it surfaces. `disarm(slot)` (a peer left) does the same.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// Heap capacity per slot: one live entry plus room for stale ones before a compaction.
pub const TIMER_ENTRIES_PER_SLOT_MAX: usize = 2;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Entry {
    due_ns: u64,
    slot: u32,
    generation: u32,
}

#[derive(Clone, Copy, Debug)]
struct Armed {
    /// Due time of the slot's live entry, if it has one.
    due_ns: Option<u64>,
    generation: u32,
}

pub struct TimerHeap {
    heap: BinaryHeap<Reverse<Entry>>,
    slots: Vec<Armed>,
    len_max_entries: usize,
    /// Compactions run so far (a test hook; a steady loop should rarely need one).
    pub compactions: u64,
}

impl TimerHeap {
    /// A timer for `slots` slots, numbered 0..slots, with every slot disarmed.
    pub fn new(slots: usize) -> TimerHeap {
        assert!(slots <= u32::MAX as usize, "slot numbers are u32");
        let len_max_entries = slots * TIMER_ENTRIES_PER_SLOT_MAX + 1;
        TimerHeap {
            heap: BinaryHeap::with_capacity(len_max_entries),
            slots: vec![
                Armed {
                    due_ns: None,
                    generation: 0
                };
                slots
            ],
            len_max_entries,
            compactions: 0,
        }
    }

    /// Entries in the heap, live and stale.
    pub fn len_entries(&self) -> usize {
        self.heap.len()
    }

    /// The due time of `slot`'s live entry.
    pub fn armed_ns(&self, slot: usize) -> Option<u64> {
        self.slots.get(slot).and_then(|a| a.due_ns)
    }

    /// Ask to be woken for `slot` at `due_ns` or earlier.
    pub fn arm(&mut self, slot: usize, due_ns: u64) {
        let Some(armed) = self.slots.get_mut(slot) else {
            debug_assert!(false, "slot {slot} out of range");
            return;
        };
        if armed.due_ns.is_some_and(|d| d <= due_ns) {
            return; // the earlier entry fires first; the caller re-arms then
        }
        armed.generation = armed.generation.wrapping_add(1);
        armed.due_ns = Some(due_ns);
        let entry = Entry {
            due_ns,
            slot: slot as u32,
            generation: armed.generation,
        };
        if self.heap.len() >= self.len_max_entries {
            self.compact();
        }
        self.heap.push(Reverse(entry));
        debug_assert!(self.heap.len() <= self.len_max_entries);
    }

    /// Forget `slot`'s entry (its peer left); a later `arm` starts afresh.
    pub fn disarm(&mut self, slot: usize) {
        if let Some(armed) = self.slots.get_mut(slot) {
            if armed.due_ns.take().is_some() {
                armed.generation = armed.generation.wrapping_add(1);
            }
        }
    }

    /// The earliest live due time, dropping stale entries from the top on the way.
    pub fn next_due_ns(&mut self) -> Option<u64> {
        while let Some(Reverse(top)) = self.heap.peek().copied() {
            if self.is_live(top) {
                return Some(top.due_ns);
            }
            self.heap.pop();
        }
        None
    }

    /// Appends every slot due at or before `now_ns` to `out` (earliest first) and disarms
    /// them; the caller handles each and arms it again if it wants another wake-up.
    pub fn pop_due(&mut self, now_ns: u64, out: &mut Vec<usize>) {
        while let Some(Reverse(top)) = self.heap.peek().copied() {
            if top.due_ns > now_ns {
                break;
            }
            self.heap.pop();
            if self.is_live(top) {
                let slot = top.slot as usize;
                self.slots[slot].due_ns = None;
                out.push(slot);
            }
        }
    }

    fn is_live(&self, e: Entry) -> bool {
        self.slots
            .get(e.slot as usize)
            .is_some_and(|a| a.generation == e.generation && a.due_ns == Some(e.due_ns))
    }

    /// Drops every stale entry: O(n), and needed at most once per `len_max_entries / 2`
    /// re-arms, since live entries are at most one per slot.
    fn compact(&mut self) {
        let slots = &self.slots;
        self.heap.retain(|Reverse(e)| {
            slots
                .get(e.slot as usize)
                .is_some_and(|a| a.generation == e.generation && a.due_ns == Some(e.due_ns))
        });
        self.compactions += 1;
        debug_assert!(self.heap.len() <= self.slots.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn due(t: &mut TimerHeap, now: u64) -> Vec<usize> {
        let mut out = Vec::new();
        t.pop_due(now, &mut out);
        out
    }

    #[test]
    fn fires_in_due_order_and_only_when_due() {
        // Proves: slots fire earliest first, nothing fires before its time, and the next due
        // time is what epoll_wait's timeout is computed from.
        let mut t = TimerHeap::new(4);
        t.arm(2, 300);
        t.arm(0, 100);
        t.arm(3, 200);
        assert_eq!(t.next_due_ns(), Some(100));
        assert!(due(&mut t, 99).is_empty());
        assert_eq!(due(&mut t, 250), vec![0, 3]);
        assert_eq!(t.next_due_ns(), Some(300));
        assert_eq!(due(&mut t, 1_000), vec![2]);
        assert_eq!(t.next_due_ns(), None);
    }

    #[test]
    fn disarmed_slot_never_fires() {
        // Proves: a peer that left (disarm) leaves a stale entry that is skipped, and a slot
        // re-used by a new peer fires only at its new time.
        let mut t = TimerHeap::new(2);
        t.arm(0, 100);
        t.arm(1, 150);
        t.disarm(0);
        assert_eq!(t.next_due_ns(), Some(150), "the stale top is dropped");
        t.arm(0, 500);
        assert_eq!(due(&mut t, 200), vec![1]);
        assert_eq!(due(&mut t, 499), Vec::<usize>::new());
        assert_eq!(due(&mut t, 500), vec![0]);
    }

    #[test]
    fn earlier_arm_replaces_later_and_later_arm_keeps_earlier() {
        // Proves: at most one live entry per slot; re-arming earlier wins, re-arming later
        // keeps the earlier wake-up (the caller re-arms when it fires), and a slot fires once.
        let mut t = TimerHeap::new(1);
        t.arm(0, 500);
        t.arm(0, 100);
        assert_eq!(t.armed_ns(0), Some(100));
        t.arm(0, 900);
        assert_eq!(t.armed_ns(0), Some(100));
        assert_eq!(due(&mut t, 1_000), vec![0], "fires once, not once per arm");
        assert_eq!(t.armed_ns(0), None);
    }

    #[test]
    fn no_event_lost_under_random_rearming_and_heap_stays_bounded() {
        // Proves, against a brute-force model over many random steps: every slot whose wanted
        // time has passed fires exactly then (none lost, none early), and the heap never holds
        // more than its start-up bound however often slots are re-armed or disarmed.
        const SLOTS: usize = 64;
        let mut t = TimerHeap::new(SLOTS);
        let mut want: Vec<Option<u64>> = vec![None; SLOTS];
        let mut rng = 0x1234_5678_9abc_def1u64;
        let mut now = 0u64;
        for _ in 0..50_000 {
            let r = crate::peer::xorshift(&mut rng);
            let slot = (r % SLOTS as u64) as usize;
            match (r >> 8) % 4 {
                0 | 1 => {
                    let at = now + (r >> 16) % 1_000;
                    // The model: the earliest wanted time counts (as in the event loop,
                    // where the caller re-evaluates on every fire).
                    want[slot] = Some(want[slot].map_or(at, |w| w.min(at)));
                    t.arm(slot, at);
                }
                2 => {
                    want[slot] = None;
                    t.disarm(slot);
                }
                _ => {
                    now += (r >> 16) % 300;
                    let mut fired = due(&mut t, now);
                    fired.sort_unstable();
                    let mut expected: Vec<usize> = (0..SLOTS)
                        .filter(|&s| want[s].is_some_and(|w| w <= now))
                        .collect();
                    expected.sort_unstable();
                    assert_eq!(fired, expected, "at {now}");
                    for s in fired {
                        want[s] = None;
                    }
                }
            }
            assert!(t.len_entries() <= SLOTS * TIMER_ENTRIES_PER_SLOT_MAX + 1);
            let model_next = want.iter().flatten().min().copied();
            assert_eq!(t.next_due_ns(), model_next);
        }
    }

    #[test]
    fn rearming_earlier_and_earlier_compacts_instead_of_growing() {
        // Proves: a slot re-armed ever earlier (each re-arm leaves a stale entry deep in the
        // heap) never pushes the heap past its start-up bound: compaction drops the stale
        // entries, and the slot still fires exactly once, at its latest (earliest) time.
        let mut t = TimerHeap::new(4);
        t.arm(1, 5_000_000);
        for k in 0..1_000u64 {
            t.arm(0, 1_000_000 - k);
            assert!(t.len_entries() <= 4 * TIMER_ENTRIES_PER_SLOT_MAX + 1);
        }
        assert!(
            t.compactions > 0,
            "the bound was reached and compaction ran"
        );
        assert!(due(&mut t, 999_000).is_empty());
        assert_eq!(due(&mut t, 999_001), vec![0]);
        assert_eq!(
            due(&mut t, 10_000_000),
            vec![1],
            "the other slot survived compaction"
        );
        assert_eq!(t.next_due_ns(), None);
    }
}
