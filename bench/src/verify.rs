//! Streaming piece verification for one synthetic peer: SHA-1 is fed block by block as
//! blocks arrive, so no peer ever holds a whole piece.
//!
//! Owns: per in-progress piece a running SHA-1 state, the next block offset it expects, and
//! which blocks have arrived; per peer a small reorder buffer for blocks that arrive ahead of
//! their piece's hash cursor.
//! Must never: hold more than `REORDER_BLOCKS_MAX` blocks per peer (a piece whose blocks
//! arrive further out of order than that is not verified, and counted as skipped, rather than
//! buffered), track more than `pieces_max` pieces, allocate on the in-order path, or panic on
//! what a seeder sends.
//!
//! Why it works: a peer requests a piece's blocks in order and a seeder answers in order on
//! one TCP stream, so nearly every block is the next one its piece expects and is hashed
//! straight from the receive buffer. The reorder buffer covers seeders that answer a few
//! blocks out of order (e.g. reads completing out of order); it is allocated only when used.

use sha1::{Digest, Sha1};
use squall_engine::wire::BLOCK_LEN_BYTES;

/// Blocks one peer may hold for reordering (16 KiB each): 64 KiB per peer at most, 320 MiB
/// worst case over 5,000 peers, and nothing at all while the seeder answers in order.
pub const REORDER_BLOCKS_MAX: usize = 4;

/// What a block did to its piece.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The piece is not tracked, or still has blocks to come.
    Pending,
    /// The piece completed and its SHA-1 matches.
    Verified,
    /// The piece completed and its SHA-1 does not match.
    Bad,
    /// The piece completed, but its blocks overflowed the reorder buffer: not verified.
    SkippedOutOfOrder,
}

struct InProgress {
    index: u32,
    len_bytes: u32,
    num_blocks: u32,
    /// Blocks 0..next_block have been fed to `hasher`.
    next_block: u32,
    received_count: u32,
    /// One bit per block: arrived (hashed, held, or arrived after the piece was skipped).
    received: Vec<u64>,
    hasher: Sha1,
    /// The reorder buffer overflowed for this piece: count its blocks, verify nothing.
    skipped: bool,
}

impl InProgress {
    fn has(&self, block: u32) -> bool {
        self.received[(block / 64) as usize] & (1 << (block % 64)) != 0
    }

    fn mark(&mut self, block: u32) {
        self.received[(block / 64) as usize] |= 1 << (block % 64);
        self.received_count += 1;
    }
}

struct Held {
    index: u32,
    block: u32,
    data: Vec<u8>,
}

pub struct StreamVerifier {
    pieces: Vec<InProgress>,
    pieces_max: usize,
    held: Vec<Held>,
    /// Recycled block buffers; `held.len() + spare.len() <= REORDER_BLOCKS_MAX`.
    spare: Vec<Vec<u8>>,
}

impl StreamVerifier {
    /// `pieces_max`: pieces tracked at once. A peer with `depth` requests in flight has at
    /// most `depth + 1` pieces with blocks outstanding (one per request, plus the piece being
    /// requested), so `depth + 1` never refuses one in normal operation.
    pub fn new(pieces_max: usize) -> StreamVerifier {
        StreamVerifier {
            pieces: Vec::with_capacity(pieces_max.min(64)),
            pieces_max,
            held: Vec::new(),
            spare: Vec::new(),
        }
    }

    /// Blocks now in the reorder buffer.
    pub fn held_blocks(&self) -> usize {
        self.held.len()
    }

    /// Pieces being verified.
    pub fn pieces_in_progress(&self) -> usize {
        self.pieces.len()
    }

    pub fn is_tracking(&self, index: u32) -> bool {
        self.pieces.iter().any(|p| p.index == index)
    }

    /// Starts verifying piece `index` of `len_bytes`; false (nothing tracked) when it is
    /// already tracked or `pieces_max` pieces are.
    pub fn start(&mut self, index: u32, len_bytes: u32) -> bool {
        if len_bytes == 0 || self.is_tracking(index) || self.pieces.len() >= self.pieces_max {
            return false;
        }
        let num_blocks = len_bytes.div_ceil(BLOCK_LEN_BYTES);
        self.pieces.push(InProgress {
            index,
            len_bytes,
            num_blocks,
            next_block: 0,
            received_count: 0,
            received: vec![0; num_blocks.div_ceil(64) as usize],
            hasher: Sha1::new(),
            skipped: false,
        });
        true
    }

    /// Feeds the block at `begin` of piece `index`. `expected` is the piece's SHA-1 from the
    /// torrent, looked up only when the piece completes.
    pub fn on_block(
        &mut self,
        index: u32,
        begin: u32,
        data: &[u8],
        expected: impl FnOnce() -> Option<[u8; 20]>,
    ) -> Outcome {
        let Some(pi) = self.pieces.iter().position(|p| p.index == index) else {
            return Outcome::Pending;
        };
        let p = &mut self.pieces[pi];
        // Blocks are whole 16 KiB blocks at aligned offsets (the last may be shorter); the
        // peer checked the length against its request, this checks it against the piece.
        if !begin.is_multiple_of(BLOCK_LEN_BYTES) || begin >= p.len_bytes {
            return Outcome::Pending;
        }
        let block = begin / BLOCK_LEN_BYTES;
        if data.len() as u64 != u64::from(BLOCK_LEN_BYTES.min(p.len_bytes - begin)) || p.has(block)
        {
            return Outcome::Pending; // malformed, or a duplicate (a re-requested zipf piece)
        }
        p.mark(block);
        if !p.skipped {
            if block == p.next_block {
                // In order: hash straight from the receive buffer, then whatever it unblocks.
                p.hasher.update(data);
                p.next_block += 1;
                while let Some(hi) = self
                    .held
                    .iter()
                    .position(|h| h.index == index && h.block == p.next_block)
                {
                    let h = self.held.swap_remove(hi);
                    p.hasher.update(&h.data);
                    p.next_block += 1;
                    self.spare.push(h.data);
                }
            } else if self.held.len() < REORDER_BLOCKS_MAX {
                let mut buf = self
                    .spare
                    .pop()
                    .unwrap_or_else(|| Vec::with_capacity(BLOCK_LEN_BYTES as usize));
                buf.clear();
                buf.extend_from_slice(data);
                self.held.push(Held {
                    index,
                    block,
                    data: buf,
                });
            } else {
                // Too far out of order: give up on this piece, never buffer more.
                p.skipped = true;
                let mut i = 0;
                while i < self.held.len() {
                    if self.held[i].index == index {
                        let h = self.held.swap_remove(i);
                        self.spare.push(h.data);
                    } else {
                        i += 1;
                    }
                }
            }
        }
        debug_assert!(self.held.len() + self.spare.len() <= REORDER_BLOCKS_MAX);
        let p = &self.pieces[pi];
        if p.received_count < p.num_blocks {
            return Outcome::Pending;
        }
        let p = self.pieces.swap_remove(pi);
        if p.skipped {
            return Outcome::SkippedOutOfOrder;
        }
        // Every block arrived and none is held, so the cursor must be at the end.
        debug_assert_eq!(p.next_block, p.num_blocks);
        let digest: [u8; 20] = p.hasher.finalize().into();
        if expected().is_some_and(|h| h == digest) {
            Outcome::Verified
        } else {
            Outcome::Bad
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BLOCK: usize = BLOCK_LEN_BYTES as usize;

    fn piece(blocks: usize, tail_bytes: usize) -> (Vec<u8>, [u8; 20]) {
        let mut s = 7u64;
        let data: Vec<u8> = (0..blocks * BLOCK + tail_bytes)
            .map(|_| crate::peer::xorshift(&mut s) as u8)
            .collect();
        let hash = Sha1::digest(&data).into();
        (data, hash)
    }

    /// Feeds the piece's blocks in `order`; returns the outcome of each.
    fn feed(
        v: &mut StreamVerifier,
        index: u32,
        data: &[u8],
        hash: [u8; 20],
        order: &[usize],
    ) -> Vec<Outcome> {
        order
            .iter()
            .map(|&b| {
                let start = b * BLOCK;
                let end = (start + BLOCK).min(data.len());
                v.on_block(index, start as u32, &data[start..end], || Some(hash))
            })
            .collect()
    }

    #[test]
    fn in_order_blocks_verify_without_holding_any() {
        // Proves: blocks fed in order (last one short) verify, the reorder buffer is never
        // used, and the piece is forgotten once done.
        let (data, hash) = piece(4, 1000);
        let mut v = StreamVerifier::new(4);
        assert!(v.start(3, data.len() as u32));
        let out = feed(&mut v, 3, &data, hash, &[0, 1, 2, 3]);
        assert!(out.iter().all(|o| *o == Outcome::Pending));
        assert_eq!(v.held_blocks(), 0);
        let last = v.on_block(3, (4 * BLOCK) as u32, &data[4 * BLOCK..], || Some(hash));
        assert_eq!(last, Outcome::Verified);
        assert_eq!(v.pieces_in_progress(), 0);
        assert_eq!(
            v.spare.len(),
            0,
            "nothing was ever allocated for reordering"
        );
    }

    #[test]
    fn out_of_order_within_the_limit_still_verifies() {
        // Proves: blocks up to REORDER_BLOCKS_MAX ahead of the cursor are held, hashed when
        // the gap closes, and the piece verifies; the buffer is empty afterwards.
        let (data, hash) = piece(8, 0);
        let mut v = StreamVerifier::new(4);
        v.start(0, data.len() as u32);
        let out = feed(&mut v, 0, &data, hash, &[4, 3, 2, 1, 0, 5, 7, 6]);
        assert_eq!(out[..7], [Outcome::Pending; 7]);
        assert_eq!(out[7], Outcome::Verified);
        assert_eq!(v.held_blocks(), 0);
    }

    #[test]
    fn reorder_overflow_skips_the_piece_without_growing() {
        // Proves: one block more out of order than REORDER_BLOCKS_MAX makes the piece skipped
        // (reported when it completes, never as verified or bad), frees its held blocks at
        // once, and other pieces keep verifying.
        let (data, hash) = piece(8, 0);
        let mut v = StreamVerifier::new(4);
        v.start(0, data.len() as u32);
        v.start(1, data.len() as u32);
        let ahead: Vec<usize> = (1..=REORDER_BLOCKS_MAX + 1).collect();
        let out = feed(&mut v, 0, &data, hash, &ahead);
        assert!(out.iter().all(|o| *o == Outcome::Pending));
        assert_eq!(
            v.held_blocks(),
            0,
            "the overflowing piece's blocks were released"
        );
        let rest: Vec<usize> = (REORDER_BLOCKS_MAX + 2..8).chain([0]).collect();
        let out = feed(&mut v, 0, &data, hash, &rest);
        assert_eq!(*out.last().expect("one"), Outcome::SkippedOutOfOrder);
        let out = feed(&mut v, 1, &data, hash, &[0, 1, 2, 3, 4, 5, 6, 7]);
        assert_eq!(out[7], Outcome::Verified);
        assert!(v.held_blocks() + v.spare.len() <= REORDER_BLOCKS_MAX);
    }

    #[test]
    fn corrupted_block_is_bad_in_order_and_out_of_order() {
        // Proves: one flipped byte makes the piece bad whether the block was hashed straight
        // away or came through the reorder buffer.
        let (mut data, hash) = piece(4, 0);
        data[BLOCK + 5] ^= 0x01;
        for order in [[0, 1, 2, 3], [1, 0, 3, 2]] {
            let mut v = StreamVerifier::new(4);
            v.start(9, data.len() as u32);
            let out = feed(&mut v, 9, &data, hash, &order);
            assert_eq!(out[3], Outcome::Bad, "{order:?}");
        }
    }

    #[test]
    fn duplicates_malformed_and_untracked_blocks_change_nothing() {
        // Proves: a block of an untracked piece, a duplicate, a misaligned offset or a wrong
        // length neither completes a piece early nor corrupts its hash; and tracking is
        // bounded by pieces_max.
        let (data, hash) = piece(2, 0);
        let mut v = StreamVerifier::new(1);
        assert!(v.start(0, data.len() as u32));
        assert!(!v.start(1, data.len() as u32), "pieces_max = 1");
        assert!(!v.start(0, data.len() as u32), "already tracked");
        assert_eq!(
            v.on_block(5, 0, &data[..BLOCK], || Some(hash)),
            Outcome::Pending
        );
        assert_eq!(
            v.on_block(0, 0, &data[..BLOCK], || Some(hash)),
            Outcome::Pending
        );
        assert_eq!(
            v.on_block(0, 0, &data[..BLOCK], || Some(hash)),
            Outcome::Pending
        );
        assert_eq!(
            v.on_block(0, 100, &data[..BLOCK], || Some(hash)),
            Outcome::Pending
        );
        assert_eq!(
            v.on_block(0, BLOCK as u32, &data[..10], || Some(hash)),
            Outcome::Pending
        );
        assert_eq!(
            v.on_block(0, BLOCK as u32, &data[BLOCK..], || Some(hash)),
            Outcome::Verified
        );
    }
}
