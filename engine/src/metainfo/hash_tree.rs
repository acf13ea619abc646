//! BEP 52 hash request answers: merkle trees built from a torrent's piece layers.
//!
//! Owns: `FileTree` (one file's tree from its piece layer up to its pieces root), the
//! validation of a hash request against it and the `hashes` answer (requested nodes, then
//! uncle hashes bottom up), and `TorrentTrees`, every tree of one torrent keyed by pieces
//! root, built from a parsed .torrent by the control plane (`control::extras`) and handed to
//! shards, which answer from memory. Pure: no I/O.
//! Must never: answer below the piece layer (that needs 16 KiB leaf hashes from file data,
//! which would mean reading and hashing content on the shard loop: such requests get a hash
//! reject), or panic on any request.
//!
//! Proof convention (libtorrent 2.0, the reference peer): with `length` = 2^k hashes asked
//! at `base_layer`, the first k proof layers are implied by the hashes themselves; the answer
//! carries `max(0, proof_layers + 1 - k)` uncles, starting with the sibling of the requested
//! subtree's root. libtorrent refuses an answer with any other count.

use crate::metainfo::merkle::{self, Hash32};
use crate::metainfo::torrent::Torrent;
use crate::wire::hashes::HashRequest;
use std::collections::HashMap;

/// Most base-layer hashes one answer carries. libtorrent asks for piece hashes in buckets of
/// 512; answers stay a few KiB of control traffic.
pub const HASHES_PER_ANSWER_MAX: u32 = 512;

/// Why a hash request gets a hash reject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashRejectReason {
    /// The pieces root is not a file of this torrent with a piece layer (files of at most
    /// one piece have none: their root is their only piece hash).
    UnknownRoot,
    /// Base layer below the piece layer: would need leaf hashes from file data.
    BelowPieceLayer,
    /// Length not a power of two, above `HASHES_PER_ANSWER_MAX`, or index not aligned to it.
    BadLength,
    /// Base layer, index range or proof layers outside the file's tree.
    OutOfRange,
}

/// One file's merkle tree from its piece layer up: `levels[0]` is the piece layer padded to
/// the tree's full width, the last level is `[pieces root]`.
#[derive(Debug, Clone)]
pub struct FileTree {
    /// Tree level of `levels[0]`, counted from the 16 KiB leaves.
    piece_level: u32,
    levels: Vec<Vec<Hash32>>,
}

impl FileTree {
    /// Builds the tree of a file longer than one piece from its piece layer. `None` when the
    /// layer's size does not match the file (the parser already checks this and the root).
    pub fn from_piece_layer(
        piece_layer: &[Hash32],
        file_len_bytes: u64,
        piece_length_bytes: u64,
    ) -> Option<FileTree> {
        let piece_level = merkle::piece_level(piece_length_bytes);
        if file_len_bytes <= piece_length_bytes
            || piece_layer.len() as u64 != file_len_bytes.div_ceil(piece_length_bytes)
        {
            return None;
        }
        let width_leaves = merkle::leaves_in(file_len_bytes).next_power_of_two();
        let mut level: Vec<Hash32> = piece_layer.to_vec();
        level.resize(
            (width_leaves >> piece_level) as usize,
            merkle::pad_hash(piece_level),
        );
        let mut levels = vec![level];
        // Fold once to the root and keep every level: each answer is then O(length + height)
        // instead of re-hashing the file's whole layer (libtorrent asks in 512-piece buckets).
        while let Some(below) = levels.last().filter(|l| l.len() > 1) {
            let above = below
                .chunks(2)
                .map(|p| merkle::hash_pair(&p[0], &p[1]))
                .collect();
            levels.push(above);
        }
        Some(FileTree {
            piece_level,
            levels,
        })
    }

    /// The file's pieces root.
    pub fn root(&self) -> Hash32 {
        self.levels
            .last()
            .and_then(|l| l.first())
            .copied()
            .unwrap_or_default()
    }

    /// Tree height: the level of the root, counted from the leaves.
    fn height(&self) -> u32 {
        self.piece_level + self.levels.len() as u32 - 1
    }

    /// Nodes held, for sizing the cache in docs and tests.
    pub fn nodes(&self) -> usize {
        self.levels.iter().map(Vec::len).sum()
    }

    /// The `hashes` answer to `r` (its root already matched to this file): `length` nodes of
    /// the base layer from `index`, then the uncles, bottom up.
    pub fn answer(&self, r: &HashRequest) -> Result<Vec<Hash32>, HashRejectReason> {
        if !r.length.is_power_of_two()
            || r.length > HASHES_PER_ANSWER_MAX
            || !r.index.is_multiple_of(r.length)
        {
            return Err(HashRejectReason::BadLength);
        }
        let height = self.height();
        // The root itself is never asked for (the peer has it), as libtorrent validates.
        if r.base_layer >= height {
            return Err(HashRejectReason::OutOfRange);
        }
        if r.base_layer < self.piece_level {
            return Err(HashRejectReason::BelowPieceLayer);
        }
        if r.proof_layers >= height - r.base_layer {
            return Err(HashRejectReason::OutOfRange);
        }
        let base = self
            .levels
            .get((r.base_layer - self.piece_level) as usize)
            .ok_or(HashRejectReason::OutOfRange)?;
        let start = r.index as usize;
        let end = start
            .checked_add(r.length as usize)
            .ok_or(HashRejectReason::OutOfRange)?;
        let nodes = base.get(start..end).ok_or(HashRejectReason::OutOfRange)?;
        let subtree_levels = r.length.trailing_zeros();
        let uncles = (r.proof_layers + 1).saturating_sub(subtree_levels);
        let mut out = Vec::with_capacity(nodes.len() + uncles as usize);
        out.extend_from_slice(nodes);
        // The requested subtree's root sits `subtree_levels` above the base, at index/length.
        let first_level = (r.base_layer - self.piece_level + subtree_levels) as usize;
        let mut pos = start >> subtree_levels;
        for level in first_level..first_level + uncles as usize {
            let sibling = self
                .levels
                .get(level)
                .and_then(|l| l.get(pos ^ 1))
                .ok_or(HashRejectReason::OutOfRange)?;
            out.push(*sibling);
            pos >>= 1;
        }
        Ok(out)
    }
}

/// The trees of one torrent's files, keyed by pieces root. Empty when the .torrent could not
/// be read: that is cached too, so a peer cannot make the control plane re-read it per request.
#[derive(Debug, Default)]
pub struct TorrentTrees {
    files: HashMap<Hash32, FileTree>,
}

impl TorrentTrees {
    /// A tree for every file of `t` that has a piece layer.
    pub fn from_torrent(t: &Torrent) -> TorrentTrees {
        let mut files = HashMap::new();
        for f in t.files.iter().filter(|f| !f.pad) {
            let Some(root) = f.pieces_root else {
                continue;
            };
            if files.contains_key(&root) {
                continue;
            }
            let Some(layer) = t
                .piece_layers
                .get(&root)
                .and_then(|l| merkle::split_hashes(l))
            else {
                continue;
            };
            if let Some(tree) = FileTree::from_piece_layer(&layer, f.length, t.piece_length) {
                files.insert(root, tree);
            }
        }
        TorrentTrees { files }
    }

    /// The answer to `r`, or why it gets a hash reject.
    pub fn answer(&self, r: &HashRequest) -> Result<Vec<Hash32>, HashRejectReason> {
        self.files
            .get(&r.pieces_root)
            .ok_or(HashRejectReason::UnknownRoot)?
            .answer(r)
    }

    /// Files with a tree.
    pub fn len(&self) -> usize {
        self.files.len()
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metainfo::merkle::{hash_pair, leaf_hash, BLOCK_LEN_BYTES};

    /// Every level of the full BEP 52 tree over `data`, leaves first (reference).
    fn reference_levels(data: &[u8]) -> Vec<Vec<Hash32>> {
        let mut leaves: Vec<Hash32> = data
            .chunks(BLOCK_LEN_BYTES as usize)
            .map(leaf_hash)
            .collect();
        leaves.resize(leaves.len().next_power_of_two(), [0; 32]);
        let mut levels = vec![leaves];
        while let Some(l) = levels.last().filter(|l| l.len() > 1) {
            let up = l.chunks(2).map(|p| hash_pair(&p[0], &p[1])).collect();
            levels.push(up);
        }
        levels
    }

    /// What a verifier does with an answer: hash the nodes up to the subtree root, then
    /// combine with each uncle on the side the position says, and compare with the root.
    fn verify(r: &HashRequest, answer: &[Hash32], root: &Hash32, height: u32) -> bool {
        let (nodes, uncles) = answer.split_at(r.length as usize);
        let mut level_nodes = nodes.to_vec();
        while level_nodes.len() > 1 {
            level_nodes = level_nodes
                .chunks(2)
                .map(|p| hash_pair(&p[0], &p[1]))
                .collect();
        }
        let mut node = level_nodes[0];
        let mut level = r.base_layer + r.length.trailing_zeros();
        let mut pos = r.index >> r.length.trailing_zeros();
        for u in uncles {
            node = if pos & 1 == 0 {
                hash_pair(&node, u)
            } else {
                hash_pair(u, &node)
            };
            pos >>= 1;
            level += 1;
        }
        level == height && node == *root
    }

    fn tree_for(data: &[u8], piece_length: u64) -> (FileTree, Vec<Vec<Hash32>>) {
        let levels = reference_levels(data);
        let piece_level = merkle::piece_level(piece_length);
        let pieces = (data.len() as u64).div_ceil(piece_length) as usize;
        let layer = &levels[piece_level as usize][..pieces];
        let tree = FileTree::from_piece_layer(layer, data.len() as u64, piece_length).unwrap();
        (tree, levels)
    }

    fn req(root: Hash32, base_layer: u32, index: u32, length: u32, proof: u32) -> HashRequest {
        HashRequest {
            pieces_root: root,
            base_layer,
            index,
            length,
            proof_layers: proof,
        }
    }

    #[test]
    fn answers_match_a_full_reference_tree_and_verify_to_the_root() {
        // Proves: for every base layer from the piece layer up, every aligned range and every
        // valid proof depth, the answer's nodes equal the reference tree's, the uncle count
        // follows libtorrent's convention, and nodes + uncles recompute the pieces root when
        // the full proof is asked for. Odd file sizes exercise pad nodes.
        let piece_length = 2 * BLOCK_LEN_BYTES;
        for len in [2 * 32768 + 1, 5 * 32768 + 100, 8 * 32768, 13 * 32768 - 7] {
            let data: Vec<u8> = (0..len).map(|i| (i * 7 % 253) as u8).collect();
            let (tree, levels) = tree_for(&data, piece_length);
            let height = levels.len() as u32 - 1;
            let root = levels[height as usize][0];
            assert_eq!(tree.root(), root, "len {len}");
            for base in 1..height {
                let width = levels[base as usize].len() as u32;
                let mut length = 1;
                while length <= width {
                    for index in (0..width).step_by(length as usize) {
                        for proof in 0..height - base {
                            let r = req(root, base, index, length, proof);
                            let a = tree.answer(&r).unwrap();
                            let k = length.trailing_zeros();
                            let uncles = (proof + 1).saturating_sub(k) as usize;
                            assert_eq!(a.len(), length as usize + uncles);
                            assert_eq!(
                                &a[..length as usize],
                                &levels[base as usize][index as usize..(index + length) as usize]
                            );
                            if proof == height - base - 1 {
                                assert!(verify(&r, &a, &root, height), "{r:?}");
                            }
                        }
                    }
                    length *= 2;
                }
            }
        }
    }

    #[test]
    fn invalid_requests_are_rejected_with_a_reason() {
        // Proves: requests below the piece layer, at or above the root, past the layer's end,
        // with too many proof layers, unaligned, not a power of two or too long are refused.
        let piece_length = 2 * BLOCK_LEN_BYTES;
        let data = vec![9u8; 9 * 32768];
        let (tree, levels) = tree_for(&data, piece_length);
        let height = levels.len() as u32 - 1; // 16 pieces wide at level 1: height 5
        let root = tree.root();
        assert_eq!(height, 5);
        use HashRejectReason::*;
        for (r, why) in [
            (req(root, 0, 0, 2, 0), BelowPieceLayer),
            (req(root, 5, 0, 1, 0), OutOfRange),
            (req(root, 1, 16, 2, 0), OutOfRange),
            (req(root, 1, 14, 4, 0), BadLength),
            (req(root, 1, 0, 3, 0), BadLength),
            (req(root, 1, 0, 2, 4), OutOfRange),
            (req(root, 1, u32::MAX - 1, 2, 0), OutOfRange),
            (req(root, 1, 0, 1024, 0), BadLength),
        ] {
            assert_eq!(tree.answer(&r), Err(why), "{r:?}");
        }
        assert!(tree.answer(&req(root, 1, 0, 16, 3)).is_ok());
        assert_eq!(tree.nodes(), 16 + 8 + 4 + 2 + 1);
    }

    #[test]
    fn files_of_one_piece_or_with_a_wrong_layer_have_no_tree() {
        // Proves: a file of at most one piece (no piece layer in BEP 52) and a layer whose
        // length does not match the file build no tree, so their requests are rejected.
        let pl = 2 * BLOCK_LEN_BYTES;
        assert!(FileTree::from_piece_layer(&[[1; 32]], pl, pl).is_none());
        assert!(FileTree::from_piece_layer(&[[1; 32]; 2], 3 * pl, pl).is_none());
        assert!(FileTree::from_piece_layer(&[[1; 32]; 3], 3 * pl, pl).is_some());
    }
}
