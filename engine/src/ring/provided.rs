//! The shard's provided-buffer ring for multishot receives (IORING_REGISTER_PBUF_RING).
//!
//! Owns: a ring of buffer descriptors the kernel takes receive buffers from, and the buffers
//! themselves (`count` x `buf_len` bytes, allocated once). Every peer's multishot recv names
//! the same buffer group: one armed op per peer receives for as long as the connection
//! lives, each completion naming the buffer it filled. The shard copies those bytes into the
//! peer's parse buffer and hands the buffer straight back (`recycle`), so a buffer is out of
//! the ring only between a completion and its dispatch in the same loop turn; when a burst
//! of completions takes every buffer first, the kernel ends the multishot recvs that find
//! the ring empty (-ENOBUFS), and the shard counts that and re-arms them.
//!
//! Must never: hand back a buffer the kernel still owns, or the same buffer twice (the ring
//! would then give one buffer to two receives); or free its memory while the kernel may use
//! it: the shard drops the io_uring (which releases the registration) before this, or leaks
//! this when ops are still in flight at exit.

use super::Ring;
use io_uring::types::BufRingEntry;
use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};

/// The kernel caps a buffer ring at 2^15 entries.
pub const RECV_BUFFERS_CEILING: u32 = 1 << 15;
/// Ring memory must be page aligned.
const PAGE_BYTES: usize = 4096;

pub struct RecvBufRing {
    /// `count` descriptors; the first one's `resv` field is the ring's tail.
    entries: NonNull<BufRingEntry>,
    entries_layout: Layout,
    buffers: NonNull<u8>,
    buffers_layout: Layout,
    count: u16,
    buf_len: u32,
    /// Descriptors published so far (wrapping): the next recycled buffer goes at
    /// `tail & (count - 1)`.
    tail: u16,
    bgid: u16,
    /// Debug builds: which buffers the kernel holds (published and not yet completed), so a
    /// double recycle or a completion naming a buffer we hold stops loudly.
    #[cfg(debug_assertions)]
    in_ring: Vec<bool>,
}

impl RecvBufRing {
    /// Allocates `count` buffers of `buf_len` bytes (`count` a power of two, at most
    /// `RECV_BUFFERS_CEILING`), registers them with `ring` as buffer group `bgid`, and
    /// publishes them all.
    pub fn new(ring: &Ring, bgid: u16, count: u32, buf_len: u32) -> io::Result<RecvBufRing> {
        if !count.is_power_of_two() || count > RECV_BUFFERS_CEILING || buf_len == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{count} receive buffers of {buf_len} bytes: need a power of two up to 32768, and a length > 0"),
            ));
        }
        let entries_layout = Layout::from_size_align(
            count as usize * std::mem::size_of::<BufRingEntry>(),
            PAGE_BYTES,
        )
        .map_err(io::Error::other)?;
        let buffers_layout = Layout::from_size_align(count as usize * buf_len as usize, PAGE_BYTES)
            .map_err(io::Error::other)?;
        // SAFETY: both layouts have a non-zero size (count >= 1, buf_len >= 1).
        let entries = NonNull::new(unsafe { alloc_zeroed(entries_layout) }.cast::<BufRingEntry>())
            .ok_or_else(|| io::Error::from(io::ErrorKind::OutOfMemory))?;
        // SAFETY: as above.
        let Some(buffers) = NonNull::new(unsafe { alloc_zeroed(buffers_layout) }) else {
            // SAFETY: allocated just above with this layout, never shared.
            unsafe { dealloc(entries.as_ptr().cast(), entries_layout) };
            return Err(io::ErrorKind::OutOfMemory.into());
        };
        let mut this = RecvBufRing {
            entries,
            entries_layout,
            buffers,
            buffers_layout,
            count: count as u16,
            buf_len,
            tail: 0,
            bgid,
            #[cfg(debug_assertions)]
            in_ring: vec![false; count as usize],
        };
        // Publish every buffer before the kernel sees the ring: it reads the tail at each
        // receive, and an entry it finds must already be filled in.
        for bid in 0..count {
            this.publish(bid as u16);
        }
        this.store_tail();
        ring.register_buf_ring(this.entries.as_ptr() as u64, count as u16, bgid)?;
        Ok(this)
    }

    pub fn bgid(&self) -> u16 {
        self.bgid
    }

    pub fn buf_len(&self) -> u32 {
        self.buf_len
    }

    /// The first `len` bytes of buffer `bid`, which a completion just handed us.
    pub fn buffer(&self, bid: u16, len: usize) -> &[u8] {
        assert!(bid < self.count, "buffer id {bid} out of range");
        assert!(
            len <= self.buf_len as usize,
            "a completion longer than its buffer"
        );
        #[cfg(debug_assertions)]
        debug_assert!(
            !self.in_ring[bid as usize],
            "buffer {bid} is still the kernel's"
        );
        let at = bid as usize * self.buf_len as usize;
        // SAFETY: bid < count, so [at, at + len) lies inside the buffers allocation; the
        // kernel wrote it before posting the completion and will not touch it again until
        // `recycle` publishes it.
        unsafe { std::slice::from_raw_parts(self.buffers.as_ptr().add(at), len) }
    }

    /// Gives buffer `bid` back to the kernel (its completion has been copied out).
    pub fn recycle(&mut self, bid: u16) {
        assert!(bid < self.count, "buffer id {bid} out of range");
        #[cfg(debug_assertions)]
        debug_assert!(!self.in_ring[bid as usize], "buffer {bid} recycled twice");
        self.publish(bid);
        self.store_tail();
    }

    /// Writes buffer `bid`'s descriptor at the tail and advances the local tail.
    fn publish(&mut self, bid: u16) {
        let slot = (self.tail & (self.count - 1)) as usize;
        // SAFETY: slot < count: inside the descriptor array. The kernel reads a descriptor
        // only below the published tail, and this slot is at or past it.
        let entry = unsafe { &mut *self.entries.as_ptr().add(slot) };
        let at = bid as usize * self.buf_len as usize;
        // SAFETY: inside the buffers allocation (bid < count).
        entry.set_addr(unsafe { self.buffers.as_ptr().add(at) } as u64);
        entry.set_len(self.buf_len);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
        #[cfg(debug_assertions)]
        {
            self.in_ring[bid as usize] = true;
        }
    }

    /// Makes every published descriptor visible to the kernel (release: the descriptors'
    /// writes happen before it reads the new tail).
    fn store_tail(&self) {
        // SAFETY: the tail field lives in the first descriptor, which the allocation holds
        // for the ring's whole life; it is a u16 at its natural alignment, and the kernel
        // only reads it.
        let tail =
            unsafe { AtomicU16::from_ptr(BufRingEntry::tail(self.entries.as_ptr()) as *mut u16) };
        tail.store(self.tail, Ordering::Release);
    }

    /// Debug builds: a completion handed buffer `bid` to us.
    pub fn taken(&mut self, bid: u16) {
        #[cfg(debug_assertions)]
        {
            debug_assert!(
                self.in_ring[bid as usize],
                "completion names buffer {bid}, which we hold"
            );
            self.in_ring[bid as usize] = false;
        }
        let _ = bid;
    }
}

impl Drop for RecvBufRing {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with these layouts; the shard drops its ring (which
        // releases the registration) before this, or leaks this instead.
        unsafe {
            dealloc(self.entries.as_ptr().cast(), self.entries_layout);
            dealloc(self.buffers.as_ptr(), self.buffers_layout);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use io_uring::{cqueue, opcode, types};
    use std::io::Write;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;
    use std::time::Duration;

    fn reap_until(ring: &mut Ring, n: usize) -> Vec<super::super::Completion> {
        let mut all = Vec::new();
        let mut out = Vec::new();
        for _ in 0..200 {
            ring.submit_and_wait(Duration::from_millis(10)).unwrap();
            ring.reap(&mut out);
            all.extend_from_slice(&out);
            if all.len() >= n {
                break;
            }
        }
        all
    }

    #[test]
    fn multishot_recv_fills_buffers_until_the_ring_runs_dry() {
        // Proves: one multishot recv delivers several sends, each completion naming a
        // buffer that holds exactly the bytes sent and keeping the op armed (F_MORE); with
        // both buffers out, the next send ends the op with -ENOBUFS and no F_MORE; recycled
        // buffers are taken again by a new recv.
        let Ok(mut ring) = Ring::new(64) else {
            return; // io_uring unavailable here
        };
        let mut bufs = match RecvBufRing::new(&ring, 7, 2, 64) {
            Ok(b) => b,
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return, // kernel < 5.19
            Err(e) => panic!("register: {e}"),
        };
        assert!(
            RecvBufRing::new(&ring, 8, 3, 64).is_err(),
            "3 is not a power of two"
        );
        let (mut tx, rx) = UnixStream::pair().unwrap();
        let arm = |ring: &mut Ring| {
            let sqe = opcode::RecvMulti::new(types::Fd(rx.as_raw_fd()), 7)
                .build()
                .user_data(42);
            ring.push(&sqe).unwrap();
        };
        arm(&mut ring);
        let mut got = Vec::new();
        for msg in [&b"first"[..], b"second"] {
            tx.write_all(msg).unwrap();
            let c = reap_until(&mut ring, 1);
            assert_eq!(c.len(), 1);
            assert_eq!(c[0].result as usize, msg.len());
            assert!(cqueue::more(c[0].flags), "multishot must stay armed");
            let bid = cqueue::buffer_select(c[0].flags).expect("a buffer id");
            bufs.taken(bid);
            assert_eq!(bufs.buffer(bid, msg.len()), msg);
            got.push(bid);
        }
        assert_ne!(got[0], got[1], "two buffers, two ids");
        tx.write_all(b"third").unwrap();
        let c = reap_until(&mut ring, 1);
        assert_eq!(c[0].result, -libc::ENOBUFS);
        assert!(!cqueue::more(c[0].flags), "ENOBUFS ends the multishot recv");
        for bid in got {
            bufs.recycle(bid);
        }
        arm(&mut ring);
        let c = reap_until(&mut ring, 1);
        let bid = cqueue::buffer_select(c[0].flags).expect("a buffer id");
        bufs.taken(bid);
        assert_eq!(bufs.buffer(bid, c[0].result as usize), b"third");
        bufs.recycle(bid);
        drop(tx);
        let c = reap_until(&mut ring, 1);
        assert_eq!(c[0].result, 0, "EOF");
        assert!(!cqueue::more(c[0].flags), "EOF ends the multishot recv");
        drop(ring);
    }
}
