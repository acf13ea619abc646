//! The per-shard send buffer pool: one contiguous, page-aligned region cut into slots.
//!
//! Owns: the memory the kernel reads piece data into and sends from, and each slot's
//! lifecycle: `Free -> Filling (reads and the send in flight) -> (AwaitingNotif ->) Free`,
//! asserted on every transition. The region is registered with io_uring as ONE fixed buffer
//! (index 0) so ReadFixed/SendZc can target any address inside it; if RLIMIT_MEMLOCK forbids
//! that, the shard falls back to plain Read/Send on the same memory.
//!
//! Buffer lifetimes: the region lives as long as the shard (it is dropped after the ring, so
//! no in-flight op can outlive it). A slot leaves `Free` when a batch is built and returns to
//! `Free` only when the kernel is done with it: after the send completion in copy/splice mode,
//! after the zero-copy notification in zerocopy mode. A closing peer's slot follows the same
//! rule: it is never reused while an op that names it is in flight.
//!
//! Must never: hand out a slot that is not `Free`, or free one twice.

use std::alloc::{alloc_zeroed, dealloc, Layout};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotState {
    Free,
    /// Being filled: reads (and the send linked after them) are in flight.
    Filling,
    /// The send completed in zerocopy mode; waiting for the kernel's notification.
    AwaitingNotif,
}

pub struct BufferPool {
    base: *mut u8,
    layout: Layout,
    slot_len_bytes: usize,
    states: Vec<SlotState>,
    free: Vec<u16>,
}

// SAFETY: the pool is created and used by exactly one shard thread; the raw pointer is only
// shared with that thread's io_uring. `Send` lets the shard be constructed before its thread
// starts (it is moved into the thread, never shared).
unsafe impl Send for BufferPool {}

const PAGE_BYTES: usize = 4096;

impl BufferPool {
    pub fn new(slots: usize, slot_len_bytes: usize) -> Result<BufferPool, String> {
        assert!(
            slots > 0 && slots < u16::MAX as usize,
            "slot count out of range"
        );
        let slot_len_bytes = slot_len_bytes.div_ceil(PAGE_BYTES) * PAGE_BYTES;
        let total = slots
            .checked_mul(slot_len_bytes)
            .ok_or_else(|| "buffer pool size overflows".to_string())?;
        let layout = Layout::from_size_align(total, PAGE_BYTES).map_err(|e| e.to_string())?;
        // SAFETY: layout has non-zero size (slots > 0, slot_len_bytes >= one page).
        let base = unsafe { alloc_zeroed(layout) };
        if base.is_null() {
            return Err(format!("cannot allocate a {total}-byte buffer pool"));
        }
        Ok(BufferPool {
            base,
            layout,
            slot_len_bytes,
            states: vec![SlotState::Free; slots],
            free: (0..slots as u16).rev().collect(),
        })
    }

    /// The whole region, for `register_buffers`.
    pub fn iovec(&self) -> libc::iovec {
        libc::iovec {
            iov_base: self.base.cast(),
            iov_len: self.layout.size(),
        }
    }

    pub fn slot_len_bytes(&self) -> usize {
        self.slot_len_bytes
    }

    pub fn free_slots(&self) -> usize {
        self.free.len()
    }

    pub fn slots(&self) -> usize {
        self.states.len()
    }

    pub fn acquire(&mut self) -> Option<u16> {
        let slot = self.free.pop()?;
        assert_eq!(
            self.states[slot as usize],
            SlotState::Free,
            "free list held a busy slot"
        );
        self.states[slot as usize] = SlotState::Filling;
        Some(slot)
    }

    pub fn state(&self, slot: u16) -> SlotState {
        self.states[slot as usize]
    }

    /// The send completed but the kernel may still read the memory (zerocopy).
    pub fn await_notif(&mut self, slot: u16) {
        assert_eq!(
            self.states[slot as usize],
            SlotState::Filling,
            "notif wait on a slot not sending"
        );
        self.states[slot as usize] = SlotState::AwaitingNotif;
    }

    pub fn release(&mut self, slot: u16) {
        let state = self.states[slot as usize];
        assert_ne!(state, SlotState::Free, "slot {slot} freed twice");
        self.states[slot as usize] = SlotState::Free;
        self.free.push(slot);
    }

    /// Start of a slot's memory. The pointer stays valid for the pool's life.
    pub fn slot_ptr(&self, slot: u16) -> *mut u8 {
        assert!((slot as usize) < self.states.len());
        // SAFETY: slot < slots, so the offset is inside the allocation.
        unsafe { self.base.add(slot as usize * self.slot_len_bytes) }
    }

    /// Mutable view of a slot being filled (headers, zero extents). Only valid while the
    /// slot is `Filling` and before its ops are submitted: the kernel does not touch it yet.
    pub fn slot_mut(&mut self, slot: u16) -> &mut [u8] {
        assert_eq!(self.states[slot as usize], SlotState::Filling);
        // SAFETY: the slot lies inside the allocation; `&mut self` guarantees no other Rust
        // reference to it; the caller writes before submitting any op that names the slot.
        unsafe { std::slice::from_raw_parts_mut(self.slot_ptr(slot), self.slot_len_bytes) }
    }
}

impl Drop for BufferPool {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout; the ring that used it is dropped first
        // (the shard owns both and drops the ring before the pool).
        unsafe { dealloc(self.base, self.layout) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_cycle_through_their_lifecycle() {
        // Acquire/release hand out each slot once; page-rounded slots don't overlap.
        let mut pool = BufferPool::new(3, 5000).unwrap();
        assert_eq!(pool.slot_len_bytes(), 8192);
        let a = pool.acquire().unwrap();
        let b = pool.acquire().unwrap();
        let c = pool.acquire().unwrap();
        assert!(pool.acquire().is_none());
        assert_ne!(a, b);
        assert_eq!(pool.slot_ptr(b) as usize - pool.slot_ptr(a) as usize, 8192);
        pool.await_notif(c);
        pool.release(c);
        pool.release(a);
        assert_eq!(pool.free_slots(), 2);
        pool.slot_mut(b)[0] = 7;
        pool.release(b);
    }

    #[test]
    #[should_panic(expected = "freed twice")]
    fn double_free_stops_loudly() {
        // Freeing a slot twice would let two batches share memory: it must panic in tests.
        let mut pool = BufferPool::new(1, 4096).unwrap();
        let a = pool.acquire().unwrap();
        pool.release(a);
        pool.release(a);
    }
}
