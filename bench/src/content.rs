//! Deterministic benchmark content: the bytes `gen-content` writes and the null seeder serves.
//!
//! Owns: the pattern (a 1 MiB + 12,345-byte block of xorshift bytes, repeated), so content made
//! with `squall-bench gen-content` and torrents made from it with `squall make` verify against
//! the null seeder's replies; and an in-memory torrent builder for tests.
//! Must never: depend on anything but the seed, so every machine makes the same bytes.

use std::io::Write;

use sha1::{Digest, Sha1};
use squall_engine::metainfo::create::{build_torrent_bytes, CreateOptions};
use squall_engine::metainfo::torrent::{parse, Torrent};

/// The pattern period. Not a multiple of any power-of-two piece length, so pieces differ.
pub const PATTERN_PERIOD_BYTES: usize = (1 << 20) + 12_345;
/// Extra copy of the pattern's head after its end, so any block up to this long starting
/// anywhere in the period is one contiguous slice.
pub const PATTERN_TAIL_BYTES: usize = 256 * 1024;
const PATTERN_SEED: u64 = 0x5175_616c_6c21;

/// The pattern plus its tail: content byte at offset `o` is `pattern[o % PERIOD]`.
pub fn pattern() -> Vec<u8> {
    let mut state = PATTERN_SEED;
    let mut out = Vec::with_capacity(PATTERN_PERIOD_BYTES + PATTERN_TAIL_BYTES);
    while out.len() < PATTERN_PERIOD_BYTES {
        let x = crate::peer::xorshift(&mut state);
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(PATTERN_PERIOD_BYTES);
    out.extend_from_within(..PATTERN_TAIL_BYTES);
    out
}

/// The content slice at absolute offset `offset`, `len` bytes (`len <= PATTERN_TAIL_BYTES`).
pub fn slice(pattern: &[u8], offset: u64, len: usize) -> Option<&[u8]> {
    let start = (offset % PATTERN_PERIOD_BYTES as u64) as usize;
    pattern.get(start..start.checked_add(len)?)
}

/// Writes `size_bytes` of pattern content to `out`.
pub fn write_content(out: &mut dyn Write, size_bytes: u64) -> std::io::Result<()> {
    let p = pattern();
    let mut left = size_bytes;
    while left > 0 {
        let n = left.min(PATTERN_PERIOD_BYTES as u64) as usize;
        out.write_all(&p[..n])?;
        left -= n as u64;
    }
    Ok(())
}

/// A single-file torrent for `content`, hashed in memory (tests and the null seeder).
pub fn torrent_for_bytes(name: &str, content: &[u8], piece_len: u64) -> Result<Torrent, String> {
    if piece_len == 0 {
        return Err("piece length must be > 0".into());
    }
    let mut hashes = Vec::new();
    for chunk in content.chunks(piece_len as usize) {
        hashes.extend_from_slice(&Sha1::digest(chunk));
    }
    let bytes = build_torrent_bytes(
        name,
        &[(Vec::new(), content.len() as u64)],
        piece_len,
        &hashes,
        &CreateOptions::default(),
    );
    parse(&bytes).map_err(|e| e.to_string())
}
