//! BEP 52 SHA-256 merkle trees: 16 KiB leaves, zero padding, piece layers and file roots.
//!
//! Owns: the arithmetic of v2 hash trees, shared by parsing (layer checks), making, verifying
//! and answering hash requests. Must never: touch files or sockets (callers feed it leaf or
//! piece hashes), allocate more than the layer it is asked to build, or panic on any input.
//!
//! Conventions (BEP 52): a leaf is SHA-256 of one 16 KiB block (the last block of a file may be
//! short and is hashed as it is); a tree over a file has a power-of-two number of leaves, those
//! past the end of the file being 32 zero bytes (not the hash of zeros); an inner node is
//! SHA-256(left || right). Levels are counted from the leaves: level 0 is leaves, level k nodes
//! cover 2^k leaves. The pad node at level k is the root of a subtree of 2^k zero leaves.

use sha2::{Digest, Sha256};

/// Size of one merkle leaf block (BEP 52).
pub const BLOCK_LEN_BYTES: u64 = crate::BLOCK_LEN_BYTES as u64;

/// One SHA-256 node.
pub type Hash32 = [u8; 32];

/// SHA-256 of one leaf block's bytes.
pub fn leaf_hash(block: &[u8]) -> Hash32 {
    Sha256::digest(block).into()
}

/// SHA-256(left || right): one inner node.
pub fn hash_pair(left: &Hash32, right: &Hash32) -> Hash32 {
    let mut h = Sha256::new();
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The node at `level` of a subtree made only of zero leaves.
pub fn pad_hash(level: u32) -> Hash32 {
    let mut node = [0u8; 32];
    for _ in 0..level {
        node = hash_pair(&node, &node);
    }
    node
}

/// Root of a subtree whose bottom nodes (at `base_level`) are `nodes`, padded on the right
/// with pad nodes of that level up to `width` nodes. `width` is rounded up to a power of two
/// and to at least `nodes.len()`. An empty `nodes` gives the pad node of the whole subtree.
pub fn root_of(nodes: &[Hash32], width: usize, base_level: u32) -> Hash32 {
    let width = width.max(nodes.len()).max(1).next_power_of_two();
    let mut level_nodes: Vec<Hash32> = nodes.to_vec();
    let mut level = base_level;
    let mut level_width = width;
    while level_width > 1 {
        let pad = pad_hash(level);
        let next_len = level_nodes.len().div_ceil(2);
        let mut next = Vec::with_capacity(next_len);
        for pair in level_nodes.chunks(2) {
            let right = pair.get(1).unwrap_or(&pad);
            next.push(hash_pair(&pair[0], right));
        }
        level_nodes = next;
        level_width /= 2;
        level += 1;
    }
    level_nodes
        .first()
        .copied()
        .unwrap_or_else(|| pad_hash(level))
}

/// Number of 16 KiB leaves in a file of `file_len_bytes` (0 for an empty file).
pub fn leaves_in(file_len_bytes: u64) -> u64 {
    file_len_bytes.div_ceil(BLOCK_LEN_BYTES)
}

/// log2 of the number of leaves one piece covers (`piece_length` is a power of two >= 16 KiB).
pub fn piece_level(piece_length: u64) -> u32 {
    (piece_length / BLOCK_LEN_BYTES).trailing_zeros()
}

/// The hash a v2 piece is checked against, from the leaf hashes of its blocks: for a file
/// longer than one piece, the piece-layer node (a subtree of piece_length/16 KiB leaves, zero
/// padded); for a file of at most one piece, the file's pieces root (leaves padded only to the
/// next power of two, as BEP 52 sizes the tree by the file, not the piece).
pub fn piece_node(leaves: &[Hash32], file_len_bytes: u64, piece_length: u64) -> Hash32 {
    let piece_leaves = (piece_length / BLOCK_LEN_BYTES) as usize;
    if file_len_bytes > piece_length {
        root_of(leaves, piece_leaves, 0)
    } else {
        root_of(leaves, leaves.len(), 0)
    }
}

/// A file's pieces root from its piece layer (files longer than one piece).
pub fn root_from_piece_layer(layer: &[Hash32], file_len_bytes: u64, piece_length: u64) -> Hash32 {
    let level = piece_level(piece_length);
    let width_leaves = leaves_in(file_len_bytes).next_power_of_two();
    let width_pieces = (width_leaves >> level).max(1) as usize;
    root_of(layer, width_pieces, level)
}

/// The layer `level` (>= the piece level) of a file's tree, folded up from its piece layer
/// and padded to the tree's full width at that level. Bounded: at most the piece layer's size.
pub fn layer_from_piece_layer(
    layer: &[Hash32],
    file_len_bytes: u64,
    piece_length: u64,
    level: u32,
) -> Option<Vec<Hash32>> {
    let base = piece_level(piece_length);
    let width_leaves = leaves_in(file_len_bytes).next_power_of_two();
    if level < base || (1u64 << level.min(63)) > width_leaves {
        return None;
    }
    let mut nodes = layer.to_vec();
    nodes.resize(((width_leaves >> base) as usize).max(1), pad_hash(base));
    for _ in base..level {
        nodes = nodes.chunks(2).map(|p| hash_pair(&p[0], &p[1])).collect();
    }
    Some(nodes)
}

/// A BEP 52 `hashes` answer from a full layer of the tree: `length` nodes from `index`, then
/// one uncle per level for `proof_layers` levels above the requested subtree, stopping below
/// the root (which the peer has). `None` when the range is outside the layer.
pub fn hashes_with_proof(
    layer_nodes: &[Hash32],
    index: usize,
    length: usize,
    proof_layers: u32,
) -> Option<Vec<Hash32>> {
    let mut out: Vec<Hash32> = layer_nodes.get(index..index.checked_add(length)?)?.to_vec();
    let mut level_nodes = layer_nodes.to_vec();
    let mut pos = index;
    // Fold up to the requested subtree's root level.
    let mut span = length.max(1);
    while span > 1 && level_nodes.len() > 1 {
        level_nodes = level_nodes
            .chunks(2)
            .map(|p| hash_pair(&p[0], &p[1]))
            .collect();
        pos /= 2;
        span /= 2;
    }
    for _ in 0..proof_layers {
        if level_nodes.len() <= 1 {
            break;
        }
        out.push(level_nodes[pos ^ 1]);
        level_nodes = level_nodes
            .chunks(2)
            .map(|p| hash_pair(&p[0], &p[1]))
            .collect();
        pos /= 2;
    }
    Some(out)
}

/// Splits concatenated 32-byte hashes; `None` when the length is not a multiple of 32.
pub fn split_hashes(bytes: &[u8]) -> Option<Vec<Hash32>> {
    if !bytes.len().is_multiple_of(32) {
        return None;
    }
    Some(
        bytes
            .chunks_exact(32)
            .map(|c| {
                let mut h = [0u8; 32];
                h.copy_from_slice(c);
                h
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reference: build the full tree over a file's bytes the way BEP 52 describes it.
    fn reference_root(data: &[u8]) -> Hash32 {
        let mut leaves: Vec<Hash32> = data
            .chunks(BLOCK_LEN_BYTES as usize)
            .map(leaf_hash)
            .collect();
        let width = leaves.len().next_power_of_two();
        leaves.resize(width, [0; 32]);
        while leaves.len() > 1 {
            leaves = leaves.chunks(2).map(|p| hash_pair(&p[0], &p[1])).collect();
        }
        leaves[0]
    }

    #[test]
    fn pieces_and_layers_agree_with_a_full_tree() {
        // Proves: piece nodes built piecewise, folded through root_from_piece_layer, give the
        // same root as one full tree over the file, for files shorter than, equal to and
        // longer than a piece, including a short last block.
        let piece_length = 4 * BLOCK_LEN_BYTES;
        for len in [1u64, 16384, 16385, 65536, 65537, 200_000, 5 * 65536 + 7] {
            let data: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            let expected = reference_root(&data);
            let nodes: Vec<Hash32> = data
                .chunks(piece_length as usize)
                .map(|p| {
                    let leaves: Vec<Hash32> =
                        p.chunks(BLOCK_LEN_BYTES as usize).map(leaf_hash).collect();
                    piece_node(&leaves, len, piece_length)
                })
                .collect();
            let root = if len > piece_length {
                root_from_piece_layer(&nodes, len, piece_length)
            } else {
                nodes[0]
            };
            assert_eq!(root, expected, "len {len}");
        }
    }

    #[test]
    fn proofs_verify_up_to_the_root() {
        // Proves: a hashes answer's base nodes plus uncles recompute the pieces root, for a
        // layer folded up from a piece layer.
        let piece_length = 2 * BLOCK_LEN_BYTES;
        let len = 7 * piece_length + 5;
        let layer: Vec<Hash32> = (0..8u8).map(|i| [i; 32]).collect();
        let root = root_from_piece_layer(&layer, len, piece_length);
        let nodes = layer_from_piece_layer(&layer, len, piece_length, 1).unwrap();
        assert_eq!(nodes.len(), 8);
        let answer = hashes_with_proof(&nodes, 4, 2, 8).unwrap();
        assert_eq!(answer.len(), 2 + 2);
        let mut node = hash_pair(&answer[0], &answer[1]);
        node = hash_pair(&node, &answer[2]); // nodes 4..6 form a left child at level 2
        node = hash_pair(&answer[3], &node); // which sits in the right half at level 3
        assert_eq!(node, root);
        assert!(hashes_with_proof(&nodes, 8, 2, 0).is_none());
        assert!(layer_from_piece_layer(&layer, len, piece_length, 0).is_none());
    }

    #[test]
    fn pad_nodes_and_split() {
        // Proves: pad_hash(0) is the zero leaf, level 1 is SHA-256 of 64 zero bytes, and
        // split_hashes refuses lengths that are not multiples of 32.
        assert_eq!(pad_hash(0), [0; 32]);
        assert_eq!(pad_hash(1), leaf_hash(&[0u8; 64]));
        assert_eq!(root_of(&[], 4, 0), pad_hash(2));
        assert!(split_hashes(&[0; 33]).is_none());
        assert_eq!(split_hashes(&[1; 64]).map(|v| v.len()), Some(2));
    }
}
