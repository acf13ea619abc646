//! .torrent parsing and validation (BEP 3 v1, BEP 12 announce-list, BEP 19 url-list,
//! BEP 27 private, BEP 47 pad files). v2-only torrents are refused for now; hybrids parse as v1.
//!
//! Owns: the `Torrent` type and every validation rule on untrusted metainfo.
//! Must never: panic on any input, or return a `Torrent` whose file paths could escape a data
//! root (empty, `.`, `..`, `/`, NUL components, absolute paths are refused).

use std::fmt;

/// A v1 info-hash: SHA-1 of the raw `info` dictionary bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InfoHash(pub [u8; 20]);

impl InfoHash {
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
    pub fn from_hex(s: &str) -> Option<InfoHash> {
        let bytes = hex::decode(s).ok()?;
        Some(InfoHash(bytes.try_into().ok()?))
    }
}

impl fmt::Debug for InfoHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "InfoHash({})", self.to_hex())
    }
}

impl fmt::Display for InfoHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// One file of a torrent, in torrent order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileEntry {
    /// Path components below the torrent's root directory (multi-file), or `[name]` for a
    /// single-file torrent. Every component is validated (see module doc).
    pub path: Vec<String>,
    pub length: u64,
    /// Offset of the file's first byte in the torrent's concatenated byte stream.
    pub offset: u64,
    /// BEP 47 pad file (`attr` contains `p`): never looked for on disk, served as zeros.
    pub pad: bool,
}

/// A validated v1 torrent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Torrent {
    pub info_hash: InfoHash,
    pub name: String,
    pub piece_length: u64,
    /// Concatenated 20-byte SHA-1 piece hashes (length = 20 x num_pieces).
    pub piece_hashes: Vec<u8>,
    pub files: Vec<FileEntry>,
    pub total_length: u64,
    /// true for a multi-file torrent (`files` key): content lives in `<data>/<name>/...`;
    /// false for single-file: content is `<data>/<name>`.
    pub multi_file: bool,
    pub private: bool,
    /// BEP 12 tiers; a lone `announce` becomes one tier of one tracker.
    pub trackers: Vec<Vec<String>>,
    pub web_seeds: Vec<String>,
    pub comment: Option<String>,
    pub created_by: Option<String>,
    pub creation_date: Option<i64>,
    /// The raw bytes of the info dictionary as they appear in the file (for BEP 9).
    pub info_bytes: Vec<u8>,
}

impl Torrent {
    pub fn num_pieces(&self) -> u32 {
        (self.piece_hashes.len() / 20) as u32
    }

    pub fn piece_hash(&self, index: u32) -> Option<[u8; 20]> {
        let start = index as usize * 20;
        self.piece_hashes
            .get(start..start + 20)
            .map(|s| s.try_into().unwrap_or([0; 20]))
    }

    /// Length of piece `index` (the last piece may be short).
    pub fn piece_len(&self, index: u32) -> u64 {
        piece_len(self.total_length, self.piece_length, index)
    }
}

/// Length of piece `index` of a torrent of `total_length` bytes cut in `piece_length` pieces.
pub fn piece_len(total_length: u64, piece_length: u64, index: u32) -> u64 {
    let start = u64::from(index) * piece_length;
    total_length.saturating_sub(start).min(piece_length)
}

/// Why a .torrent was refused. Display messages name the offending field or path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetainfoError {
    Bencode(super::bencode::BencodeError),
    /// The top level is not a dictionary, or a required key is missing / has the wrong type.
    Field {
        field: String,
        problem: String,
    },
    /// A file path that is empty, `.`, `..`, contains `/` or NUL, or is absolute.
    UnsafePath {
        path: String,
        reason: String,
    },
    V2NotSupported,
    Invalid(String),
}

impl fmt::Display for MetainfoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MetainfoError::Bencode(e) => write!(f, "{e}"),
            MetainfoError::Field { field, problem } => write!(f, "field `{field}`: {problem}"),
            MetainfoError::UnsafePath { path, reason } => {
                write!(f, "unsafe file path {path:?}: {reason} (refused: it could escape the data directory)")
            }
            MetainfoError::V2NotSupported => {
                write!(f, "BitTorrent v2-only torrents are not supported yet (v1 and hybrid torrents are)")
            }
            MetainfoError::Invalid(s) => f.write_str(s),
        }
    }
}

impl std::error::Error for MetainfoError {}

impl From<super::bencode::BencodeError> for MetainfoError {
    fn from(e: super::bencode::BencodeError) -> Self {
        MetainfoError::Bencode(e)
    }
}

/// Parses and validates a .torrent file's bytes.
pub fn parse(bytes: &[u8]) -> Result<Torrent, MetainfoError> {
    let _ = bytes;
    Err(MetainfoError::Invalid(
        "metainfo parsing not implemented yet".into(),
    ))
}
