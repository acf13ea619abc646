//! Storage: piece/block -> (file, offset) extents, piece hashing on all cores, verification.
//!
//! Owns: the mapping from torrent byte ranges to files, and reading content for hashing.
//! Must never: open content for writing, or follow a path outside the data root.
