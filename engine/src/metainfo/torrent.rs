//! .torrent parsing and validation (BEP 3 v1, BEP 52 v2 and hybrid, BEP 12 announce-list,
//! BEP 19 url-list, BEP 27 private, BEP 47 pad files).
//!
//! v2 model: every torrent is one piece-index space over a byte stream of files. A v2 piece
//! never spans two files, so a v2-only torrent gets implicit pad files (`pad: true`, path
//! `.pad/<len>`) after each file, exactly where a hybrid carries explicit BEP 47 pads; the rest
//! of the engine (extents, serving) then needs no v2 special case. `info_hash` is the 20-byte
//! hash peers use in handshakes: SHA-1 for v1 and hybrid, the first 20 bytes of the SHA-256
//! info-hash for v2-only.
//!
//! Owns: the `Torrent` type and every validation rule on untrusted metainfo.
//! Must never: panic on any input, or return a `Torrent` whose file paths could escape a data
//! root (empty, `.`, `..`, `/`, NUL components, absolute paths are refused).

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use std::collections::BTreeMap;

use sha1::{Digest, Sha1};
use sha2::Sha256;

use super::bencode::{self, Node};
use super::merkle;

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
    /// v2-only torrents get implicit pads between files (see module doc).
    pub pad: bool,
    /// BEP 52 `pieces root` (v2 and hybrid, files with at least one byte).
    pub pieces_root: Option<[u8; 32]>,
}

/// Which halves of BEP 52 a torrent carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetaVersion {
    /// BEP 3 only: `pieces`, SHA-1.
    V1,
    /// BEP 52 only: `file tree`, `piece layers`, SHA-256.
    V2,
    /// Both, describing the same bytes (v1 with BEP 47 pads aligning files to pieces).
    Hybrid,
}

impl MetaVersion {
    pub fn has_v1(self) -> bool {
        self != MetaVersion::V2
    }
    pub fn has_v2(self) -> bool {
        self != MetaVersion::V1
    }
    pub fn as_str(self) -> &'static str {
        match self {
            MetaVersion::V1 => "v1",
            MetaVersion::V2 => "v2",
            MetaVersion::Hybrid => "hybrid",
        }
    }
}

/// A validated torrent (v1, v2 or hybrid).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Torrent {
    /// The 20-byte hash of handshakes and trackers: SHA-1 of `info` for v1 and hybrid, the
    /// SHA-256 v2 info-hash cut to 20 bytes for v2-only.
    pub info_hash: InfoHash,
    /// SHA-256 of the raw `info` bytes (v2 and hybrid).
    pub info_hash_v2: Option<[u8; 32]>,
    pub version: MetaVersion,
    pub name: String,
    pub piece_length: u64,
    /// Concatenated 20-byte SHA-1 piece hashes (length = 20 x num_pieces); empty for v2-only.
    pub piece_hashes: Vec<u8>,
    /// BEP 52 `piece layers`: pieces root -> concatenated 32-byte piece hashes, for every
    /// file longer than one piece (checked against its pieces root at parse time).
    pub piece_layers: BTreeMap<[u8; 32], Vec<u8>>,
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
    /// Pieces in the torrent's piece-index space (parse guarantees this fits in u32).
    pub fn num_pieces(&self) -> u32 {
        self.total_length.div_ceil(self.piece_length) as u32
    }

    /// Whether the torrent has a v1 half (SHA-1 piece hashes).
    pub fn has_v1(&self) -> bool {
        self.version.has_v1()
    }

    /// The v2 info-hash cut to 20 bytes: what a v2 peer sends in its handshake.
    pub fn info_hash_v2_truncated(&self) -> Option<InfoHash> {
        self.info_hash_v2.map(|h| {
            let mut t = [0u8; 20];
            t.copy_from_slice(&h[..20]);
            InfoHash(t)
        })
    }

    /// Index of the file (never a pad) whose data piece `index` holds, for v2 torrents where a
    /// piece never spans files. `None` for a piece of pads only or out of range.
    pub fn v2_piece_file(&self, index: u32) -> Option<usize> {
        let start = u64::from(index) * self.piece_length;
        let pos = self.files.partition_point(|f| f.offset + f.length <= start);
        let f = self.files.get(pos)?;
        (!f.pad && f.length > 0 && f.offset <= start).then_some(pos)
    }

    /// The SHA-256 node a v2 piece is checked against: its piece-layer entry for a file longer
    /// than a piece, else the file's pieces root. `None` for v1 torrents and pad pieces.
    pub fn v2_piece_hash(&self, index: u32) -> Option<[u8; 32]> {
        let file = &self.files[self.v2_piece_file(index)?];
        let root = file.pieces_root?;
        if file.length <= self.piece_length {
            return Some(root);
        }
        let layer = self.piece_layers.get(&root)?;
        let local =
            ((u64::from(index) * self.piece_length - file.offset) / self.piece_length) as usize;
        let mut h = [0u8; 32];
        h.copy_from_slice(layer.get(local * 32..local * 32 + 32)?);
        Some(h)
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
            MetainfoError::Invalid(s) => f.write_str(s),
        }
    }
}

impl std::error::Error for MetainfoError {}

impl MetainfoError {
    /// The message a user sees, naming the torrent it is about: `bad.torrent: unsafe file path ...`.
    /// Callers (catalog, CLI) pass the .torrent's file name or another label they know it by.
    pub fn describe(&self, torrent_label: &str) -> String {
        format!("{torrent_label}: {self}")
    }
}

impl From<super::bencode::BencodeError> for MetainfoError {
    fn from(e: super::bencode::BencodeError) -> Self {
        MetainfoError::Bencode(e)
    }
}

/// Largest accepted piece length. Real torrents use <= 16 MiB (libtorrent refuses > 128 MiB);
/// the bound keeps a hostile file from making a hasher allocate gigabytes per thread.
pub const PIECE_LENGTH_MAX_BYTES: u64 = 256 * 1024 * 1024;

/// Deepest directory nesting accepted in a v2 `file tree` (real trees are a handful deep; the
/// bound keeps recursion and path strings small on hostile input).
pub const FILE_TREE_DEPTH_MAX: usize = 48;
/// Most files accepted in a v2 `file tree`.
pub const FILE_TREE_FILES_MAX: usize = 1 << 20;

/// Parses and validates a .torrent file's bytes (v1, v2 or hybrid).
pub fn parse(bytes: &[u8]) -> Result<Torrent, MetainfoError> {
    let root = bencode::decode(bytes)?;
    if root.as_dict().is_none() {
        return Err(field("(top level)", "is not a dictionary"));
    }
    let info = root
        .get("info")
        .ok_or_else(|| field("info", "is missing"))?;
    if info.as_dict().is_none() {
        return Err(field(
            "info",
            &format!("is a {}, not a dictionary", info.type_name()),
        ));
    }
    let has_v2 = match info.get("meta version") {
        None => false,
        Some(v) => match v.as_int() {
            Some(1) => false,
            Some(2) => true,
            _ => {
                return Err(field(
                    "info.meta version",
                    "must be 1 or 2 (this torrent format is newer than Squall)",
                ))
            }
        },
    };
    let has_v1 = !has_v2 || info.get("pieces").is_some();
    let version = match (has_v1, has_v2) {
        (true, true) => MetaVersion::Hybrid,
        (false, true) => MetaVersion::V2,
        _ => MetaVersion::V1,
    };

    let info_bytes = bytes
        .get(info.span.clone())
        .ok_or_else(|| MetainfoError::Invalid("info span out of range".into()))?
        .to_vec();
    let info_hash_v2: Option<[u8; 32]> = has_v2.then(|| Sha256::digest(&info_bytes).into());

    let name = utf8_preferring(info, "name.utf-8", "name")?
        .ok_or_else(|| field("info.name", "is missing"))?;
    check_component(&name, &name)?;

    let piece_length_raw = info
        .get("piece length")
        .ok_or_else(|| field("info.piece length", "is missing"))?
        .as_int()
        .ok_or_else(|| field("info.piece length", "is not an integer"))?;
    if piece_length_raw <= 0 {
        return Err(field(
            "info.piece length",
            &format!("must be positive, is {piece_length_raw}"),
        ));
    }
    let piece_length = piece_length_raw as u64;
    if piece_length > PIECE_LENGTH_MAX_BYTES {
        return Err(field(
            "info.piece length",
            &format!("{piece_length} bytes exceeds the limit of {PIECE_LENGTH_MAX_BYTES}"),
        ));
    }
    if has_v2 && (!piece_length.is_power_of_two() || piece_length < merkle::BLOCK_LEN_BYTES) {
        return Err(field(
            "info.piece length",
            &format!("{piece_length} is not a power of two of at least 16 KiB (BEP 52)"),
        ));
    }

    let v2_files = if has_v2 {
        let tree = info
            .get("file tree")
            .ok_or_else(|| field("info.file tree", "is missing (meta version 2)"))?;
        Some(parse_file_tree(tree)?)
    } else {
        None
    };

    let (mut files, multi_file) = if has_v1 {
        match (info.get("length"), info.get("files")) {
            (Some(_), Some(_)) => {
                return Err(MetainfoError::Invalid(
                    "info has both `length` (single-file) and `files` (multi-file)".into(),
                ))
            }
            (Some(len), None) => {
                let length = non_negative(len, "info.length")?;
                let entry = FileEntry {
                    path: vec![name.clone()],
                    length,
                    offset: 0,
                    pad: false,
                    pieces_root: None,
                };
                (vec![entry], false)
            }
            (None, Some(list)) => (parse_files(list)?, true),
            (None, None) => return Err(field("info.length / info.files", "both are missing")),
        }
    } else {
        let v2 = v2_files.as_deref().unwrap_or(&[]);
        // A tree holding one file named like the torrent is a single-file torrent (the v2
        // counterpart of `length`); anything else lives in a directory named `name`.
        let single = matches!(v2, [(path, _, _)] if path.len() == 1 && path[0] == name);
        (align_v2_files(v2, piece_length)?, !single)
    };
    if let (MetaVersion::Hybrid, Some(v2)) = (version, &v2_files) {
        match_hybrid_halves(&mut files, v2, piece_length)?;
    } else if let Some(v2) = &v2_files {
        // v2-only: align_v2_files put the roots in file order, pads skipped.
        let mut roots = v2.iter().map(|(_, _, root)| *root);
        for f in files.iter_mut().filter(|f| !f.pad) {
            f.pieces_root = roots.next().flatten();
        }
    }
    let total_length = files.last().map(|f| f.offset + f.length).unwrap_or(0);
    if total_length == 0 {
        return Err(MetainfoError::Invalid(
            "torrent has no content (total length is 0)".into(),
        ));
    }
    let num_pieces = total_length.div_ceil(piece_length);
    if num_pieces > u64::from(u32::MAX) {
        return Err(MetainfoError::Invalid(format!(
            "{num_pieces} pieces is more than 2^32 - 1"
        )));
    }

    let (info_hash, piece_hashes) = if has_v1 {
        let pieces = info
            .get("pieces")
            .ok_or_else(|| field("info.pieces", "is missing"))?
            .as_bytes()
            .ok_or_else(|| field("info.pieces", "is not a string"))?;
        if pieces.len() as u64 != num_pieces * 20 {
            return Err(field(
                "info.pieces",
                &format!(
                    "is {} bytes; {} pieces of {} bytes covering {} bytes need 20 x {} = {} bytes",
                    pieces.len(),
                    num_pieces,
                    piece_length,
                    total_length,
                    num_pieces,
                    num_pieces * 20
                ),
            ));
        }
        (InfoHash(Sha1::digest(&info_bytes).into()), pieces.to_vec())
    } else {
        let mut truncated = [0u8; 20];
        truncated.copy_from_slice(&info_hash_v2.unwrap_or([0; 32])[..20]);
        (InfoHash(truncated), Vec::new())
    };
    let piece_layers = if has_v2 {
        parse_piece_layers(&root, &files, piece_length)?
    } else {
        BTreeMap::new()
    };
    let private = info.get("private").and_then(Node::as_int) == Some(1);

    Ok(Torrent {
        info_hash,
        info_hash_v2,
        version,
        name,
        piece_length,
        piece_hashes,
        piece_layers,
        files,
        total_length,
        multi_file,
        private,
        trackers: parse_trackers(&root),
        web_seeds: parse_web_seeds(&root),
        comment: utf8_preferring(&root, "comment.utf-8", "comment")
            .ok()
            .flatten(),
        created_by: root
            .get("created by")
            .and_then(Node::as_str)
            .map(str::to_owned),
        creation_date: root.get("creation date").and_then(Node::as_int),
        info_bytes,
    })
}

/// One file of a v2 `file tree`: (path components, length, pieces root).
type TreeFile = (Vec<String>, u64, Option<[u8; 32]>);

/// Walks a BEP 52 `file tree` in the order it is written (bencode keeps dict keys sorted, so
/// this is also libtorrent's order). Path components get the v1 rules.
fn parse_file_tree(tree: &Node<'_>) -> Result<Vec<TreeFile>, MetainfoError> {
    if tree.as_dict().is_none() {
        return Err(field("info.file tree", "is not a dictionary"));
    }
    let mut out = Vec::new();
    let mut path = Vec::new();
    walk_file_tree(tree, &mut path, &mut out)?;
    if out.is_empty() {
        return Err(field(
            "info.file tree",
            "is empty (a torrent needs at least one file)",
        ));
    }
    Ok(out)
}

fn walk_file_tree(
    node: &Node<'_>,
    path: &mut Vec<String>,
    out: &mut Vec<TreeFile>,
) -> Result<(), MetainfoError> {
    let entries = node.as_dict().unwrap_or(&[]);
    for (key, child) in entries {
        let component = std::str::from_utf8(key)
            .map_err(|_| field("info.file tree", "has a path element that is not UTF-8"))?;
        path.push(component.to_owned());
        let joined = path.join("/");
        check_component(component, &joined)?;
        if path.len() > FILE_TREE_DEPTH_MAX {
            return Err(field(
                "info.file tree",
                &format!("{joined:?} is nested deeper than {FILE_TREE_DEPTH_MAX} directories"),
            ));
        }
        let children = child
            .as_dict()
            .ok_or_else(|| field("info.file tree", &format!("{joined:?} is not a dictionary")))?;
        match child.get("") {
            Some(leaf) => {
                if children.len() != 1 {
                    return Err(field(
                        "info.file tree",
                        &format!("{joined:?} is both a file and a directory"),
                    ));
                }
                let where_ = format!("info.file tree {joined:?}");
                let length = non_negative(
                    leaf.get("length")
                        .ok_or_else(|| field(&where_, "has no length"))?,
                    &format!("{where_}.length"),
                )?;
                let pieces_root = match leaf.get("pieces root") {
                    None if length == 0 => None,
                    None => return Err(field(&where_, "has no pieces root")),
                    Some(r) => {
                        let r = r
                            .as_bytes()
                            .filter(|r| r.len() == 32)
                            .ok_or_else(|| field(&where_, "pieces root is not 32 bytes"))?;
                        let mut h = [0u8; 32];
                        h.copy_from_slice(r);
                        Some(h)
                    }
                };
                if out.len() >= FILE_TREE_FILES_MAX {
                    return Err(field(
                        "info.file tree",
                        &format!("has more than {FILE_TREE_FILES_MAX} files"),
                    ));
                }
                out.push((path.clone(), length, pieces_root));
            }
            None => walk_file_tree(child, path, out)?,
        }
        path.pop();
    }
    Ok(())
}

/// Lays v2 files out in one piece-index space: after every non-empty file that does not end
/// on a piece boundary comes an implicit pad (`.pad/<len>`), the last file included. This is
/// libtorrent's layout (its total size of a v2 torrent is a whole number of pieces), so piece
/// indexes and the last piece's length agree with it on the wire.
fn align_v2_files(v2: &[TreeFile], piece_length: u64) -> Result<Vec<FileEntry>, MetainfoError> {
    let mut files = Vec::with_capacity(v2.len() * 2);
    let mut offset: u64 = 0;
    for (path, length, _) in v2 {
        files.push(FileEntry {
            path: path.clone(),
            length: *length,
            offset,
            pad: false,
            pieces_root: None,
        });
        offset = offset
            .checked_add(*length)
            .filter(|t| *t <= i64::MAX as u64)
            .ok_or_else(|| MetainfoError::Invalid("total length overflows 2^63 bytes".into()))?;
        let misalign = offset % piece_length;
        if *length > 0 && misalign != 0 {
            let pad_len = piece_length - misalign;
            files.push(FileEntry {
                path: vec![".pad".into(), pad_len.to_string()],
                length: pad_len,
                offset,
                pad: true,
                pieces_root: None,
            });
            offset += pad_len;
        }
    }
    Ok(files)
}

/// A hybrid's two halves must describe the same files in the same order, each non-empty file
/// starting on a piece boundary (BEP 47 pads between them); then v1 files get their roots.
fn match_hybrid_halves(
    files: &mut [FileEntry],
    v2: &[TreeFile],
    piece_length: u64,
) -> Result<(), MetainfoError> {
    let mut v2_iter = v2.iter();
    for f in files.iter_mut().filter(|f| !f.pad) {
        let joined = f.path.join("/");
        let Some((path, length, root)) = v2_iter.next() else {
            return Err(MetainfoError::Invalid(format!(
                "hybrid torrent: v1 file {joined:?} is not in the v2 file tree"
            )));
        };
        if *path != f.path || *length != f.length {
            return Err(MetainfoError::Invalid(format!(
                "hybrid torrent: v1 file {joined:?} ({} bytes) does not match v2 file {:?} ({length} bytes)",
                f.length,
                path.join("/")
            )));
        }
        if f.length > 0 && !f.offset.is_multiple_of(piece_length) {
            return Err(MetainfoError::Invalid(format!(
                "hybrid torrent: v1 file {joined:?} does not start on a piece boundary (missing pad file)"
            )));
        }
        f.pieces_root = *root;
    }
    if let Some((path, _, _)) = v2_iter.next() {
        return Err(MetainfoError::Invalid(format!(
            "hybrid torrent: v2 file {:?} is not in the v1 file list",
            path.join("/")
        )));
    }
    Ok(())
}

/// Reads `piece layers` and checks, for every file longer than one piece, that its layer
/// has 32 x ceil(length / piece length) bytes and hashes up to its pieces root.
fn parse_piece_layers(
    root: &Node<'_>,
    files: &[FileEntry],
    piece_length: u64,
) -> Result<BTreeMap<[u8; 32], Vec<u8>>, MetainfoError> {
    let layers_node = root.get("piece layers");
    if let Some(n) = layers_node {
        if n.as_dict().is_none() {
            return Err(field("piece layers", "is not a dictionary"));
        }
    }
    let mut layers = BTreeMap::new();
    for f in files.iter().filter(|f| !f.pad && f.length > piece_length) {
        let Some(pieces_root) = f.pieces_root else {
            continue;
        };
        if layers.contains_key(&pieces_root) {
            continue;
        }
        let joined = f.path.join("/");
        let layer = layers_node
            .and_then(|n| n.as_dict())
            .and_then(|d| d.iter().find(|(k, _)| *k == &pieces_root[..]))
            .ok_or_else(|| {
                field(
                    "piece layers",
                    &format!("has no layer for {joined:?} ({} bytes)", f.length),
                )
            })?
            .1
            .as_bytes()
            .ok_or_else(|| {
                field(
                    "piece layers",
                    &format!("layer of {joined:?} is not a string"),
                )
            })?;
        let pieces = f.length.div_ceil(piece_length);
        if layer.len() as u64 != pieces * 32 {
            return Err(field(
                "piece layers",
                &format!(
                    "layer of {joined:?} is {} bytes; {pieces} pieces need {} bytes",
                    layer.len(),
                    pieces * 32
                ),
            ));
        }
        let nodes = merkle::split_hashes(layer).unwrap_or_default();
        if merkle::root_from_piece_layer(&nodes, f.length, piece_length) != pieces_root {
            return Err(field(
                "piece layers",
                &format!("layer of {joined:?} does not hash to its pieces root"),
            ));
        }
        layers.insert(pieces_root, layer.to_vec());
    }
    Ok(layers)
}

fn field(field: &str, problem: &str) -> MetainfoError {
    MetainfoError::Field {
        field: field.to_owned(),
        problem: problem.to_owned(),
    }
}

fn non_negative(node: &Node<'_>, name: &str) -> Result<u64, MetainfoError> {
    let v = node
        .as_int()
        .ok_or_else(|| field(name, &format!("is a {}, not an integer", node.type_name())))?;
    u64::try_from(v).map_err(|_| field(name, &format!("must not be negative, is {v}")))
}

/// Reads `preferred` when it is present and valid UTF-8 (BEP 3's `.utf-8` variants written by
/// clients whose native encoding was not UTF-8), else `key`. `Ok(None)` when both are absent.
fn utf8_preferring(
    dict: &Node<'_>,
    preferred: &str,
    key: &str,
) -> Result<Option<String>, MetainfoError> {
    if let Some(s) = dict.get(preferred).and_then(Node::as_str) {
        return Ok(Some(s.to_owned()));
    }
    match dict.get(key) {
        None => Ok(None),
        Some(node) => node
            .as_str()
            .map(|s| Some(s.to_owned()))
            .ok_or_else(|| field(key, "is not a UTF-8 string")),
    }
}

/// Refuses a path component that could name something other than a plain entry below the root.
fn check_component(component: &str, whole_path: &str) -> Result<(), MetainfoError> {
    let reason = if component.is_empty() {
        Some("an empty component".to_owned())
    } else if component == "." || component == ".." {
        Some(format!("component {component:?} is a directory reference"))
    } else if component.contains('/') || component.contains('\\') {
        Some(format!("component {component:?} contains a path separator"))
    } else if component.contains('\0') {
        Some(format!("component {component:?} contains a NUL byte"))
    } else {
        None
    };
    match reason {
        Some(reason) => Err(MetainfoError::UnsafePath {
            path: whole_path.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

/// Largest accepted number of entries in `info.files` (pad files included). Real torrents
/// rarely exceed tens of thousands; the bound keeps one hostile .torrent from costing the
/// catalog hundreds of megabytes of `FileEntry`s and file handles-to-be.
pub const FILES_PER_TORRENT_MAX: usize = 262_144;
/// Longest accepted file path below the torrent root, in bytes with `/` separators: Linux's
/// PATH_MAX. A longer path could never be opened, and the bound caps per-file work.
pub const PATH_BYTES_MAX: usize = 4096;

/// What a path already seen names: a directory (some file lies below it) or a file.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Seen {
    Dir(u32),
    File,
}

fn parse_files(list: &Node<'_>) -> Result<Vec<FileEntry>, MetainfoError> {
    let items = list
        .as_list()
        .ok_or_else(|| field("info.files", "is not a list"))?;
    if items.is_empty() {
        return Err(field(
            "info.files",
            "is empty (a torrent needs at least one file)",
        ));
    }
    if items.len() > FILES_PER_TORRENT_MAX {
        return Err(field(
            "info.files",
            &format!(
                "has {} entries, more than the limit of {FILES_PER_TORRENT_MAX} files per torrent",
                items.len()
            ),
        ));
    }
    let mut files = Vec::with_capacity(items.len());
    let mut offset: u64 = 0;
    // The directory tree of non-pad files, keyed by (parent directory id, component); root is
    // 0. Each component is looked up once, so checking duplicates costs time linear in the
    // input (a set of joined prefixes costs components x path length, which a hostile file
    // with deep paths turns into gigabytes).
    let mut tree: HashMap<(u32, &str), Seen> = HashMap::with_capacity(items.len());
    let mut dirs_next_id: u32 = 1;
    for (index, item) in items.iter().enumerate() {
        let where_ = format!("info.files[{index}]");
        if item.as_dict().is_none() {
            return Err(field(&where_, "is not a dictionary"));
        }
        let length = non_negative(
            item.get("length")
                .ok_or_else(|| field(&format!("{where_}.length"), "is missing"))?,
            &format!("{where_}.length"),
        )?;
        let path_node = item
            .get("path.utf-8")
            .filter(|p| {
                p.as_list()
                    .is_some_and(|l| l.iter().all(|c| c.as_str().is_some()))
            })
            .or_else(|| item.get("path"))
            .ok_or_else(|| field(&format!("{where_}.path"), "is missing"))?;
        let raw = path_node
            .as_list()
            .ok_or_else(|| field(&format!("{where_}.path"), "is not a list"))?;
        let mut components: Vec<&str> = Vec::with_capacity(raw.len());
        let mut path_bytes = 0usize;
        for c in raw {
            let s = c.as_str().ok_or_else(|| {
                field(
                    &format!("{where_}.path"),
                    "has a component that is not a UTF-8 string",
                )
            })?;
            path_bytes = path_bytes.saturating_add(s.len() + 1);
            if path_bytes > PATH_BYTES_MAX + 1 {
                return Err(field(
                    &format!("{where_}.path"),
                    &format!("is longer than {PATH_BYTES_MAX} bytes (PATH_MAX)"),
                ));
            }
            components.push(s);
        }
        let joined = components.join("/");
        let Some((&last, parents)) = components.split_last() else {
            return Err(MetainfoError::UnsafePath {
                path: joined,
                reason: "the path has no components".into(),
            });
        };
        for c in &components {
            check_component(c, &joined)?;
        }
        let pad = item
            .get("attr")
            .and_then(Node::as_bytes)
            .is_some_and(|a| a.contains(&b'p'));
        // Two entries with one path, or a file that is also another's directory, would make two
        // files share bytes on disk: refuse rather than serve one file's data for the other.
        if !pad {
            let mut parent = 0u32;
            for (depth, &c) in parents.iter().enumerate() {
                parent = match tree.get(&(parent, c)) {
                    Some(Seen::Dir(id)) => *id,
                    Some(Seen::File) => {
                        let prefix = components[..=depth].join("/");
                        return Err(MetainfoError::Invalid(format!(
                            "file path {joined:?} runs through {prefix:?}, which is also a file"
                        )));
                    }
                    None => {
                        let id = dirs_next_id;
                        // At most PATH_BYTES_MAX / 2 directories per file and
                        // FILES_PER_TORRENT_MAX files: well below u32::MAX.
                        dirs_next_id += 1;
                        tree.insert((parent, c), Seen::Dir(id));
                        id
                    }
                };
            }
            if tree.insert((parent, last), Seen::File).is_some() {
                return Err(MetainfoError::Invalid(format!(
                    "duplicate file path {joined:?} in info.files (or it is also a directory)"
                )));
            }
        }
        files.push(FileEntry {
            path: components.iter().map(|c| (*c).to_owned()).collect(),
            length,
            offset,
            pad,
            pieces_root: None,
        });
        offset = offset
            .checked_add(length)
            .filter(|t| *t <= i64::MAX as u64)
            .ok_or_else(|| MetainfoError::Invalid("total length overflows 2^63 bytes".into()))?;
    }
    Ok(files)
}

fn parse_trackers(root: &Node<'_>) -> Vec<Vec<String>> {
    // BEP 12: when `announce-list` is present and usable it replaces `announce`.
    let mut tiers: Vec<Vec<String>> = Vec::new();
    if let Some(list) = root.get("announce-list").and_then(Node::as_list) {
        for tier in list {
            let urls: Vec<String> = tier
                .as_list()
                .unwrap_or(&[])
                .iter()
                .filter_map(Node::as_str)
                .filter(|u| !u.is_empty())
                .map(str::to_owned)
                .collect();
            if !urls.is_empty() {
                tiers.push(urls);
            }
        }
    }
    if tiers.is_empty() {
        if let Some(url) = root
            .get("announce")
            .and_then(Node::as_str)
            .filter(|u| !u.is_empty())
        {
            tiers.push(vec![url.to_owned()]);
        }
    }
    tiers
}

fn parse_web_seeds(root: &Node<'_>) -> Vec<String> {
    // BEP 19: `url-list` is a single string or a list of strings.
    match root.get("url-list") {
        Some(node) => match node.as_str() {
            Some(url) if !url.is_empty() => vec![url.to_owned()],
            Some(_) => Vec::new(),
            None => node
                .as_list()
                .unwrap_or(&[])
                .iter()
                .filter_map(Node::as_str)
                .filter(|u| !u.is_empty())
                .map(str::to_owned)
                .collect(),
        },
        None => Vec::new(),
    }
}

impl Torrent {
    /// Where file `file` lives below `data_dir` (libtorrent's save_path convention):
    /// `<data_dir>/<name>` for a single-file torrent, `<data_dir>/<name>/<path...>` otherwise.
    pub fn file_path_in(&self, data_dir: &Path, file: &FileEntry) -> PathBuf {
        let mut p = data_dir.join(&self.name);
        if self.multi_file {
            for c in &file.path {
                p.push(c);
            }
        }
        p
    }

    /// A magnet link for this torrent with its trackers (first of each tier first).
    pub fn magnet(&self) -> String {
        super::magnet::magnet_for(self, &[])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metainfo::bencode::{DictBuilder, Value};

    fn s(x: &str) -> Value {
        Value::str(x)
    }

    fn file(len: i64, path: &[&str]) -> Value {
        DictBuilder::new()
            .insert("length", Value::Int(len))
            .insert("path", Value::List(path.iter().map(|c| s(c)).collect()))
            .build()
    }

    fn multi(files: Vec<Value>, piece_length: i64, pieces: usize) -> DictBuilder {
        DictBuilder::new()
            .insert("name", s("root"))
            .insert("piece length", Value::Int(piece_length))
            .insert("pieces", Value::Bytes(vec![7; 20 * pieces]))
            .insert("files", Value::List(files))
    }

    fn single(len: i64, piece_length: i64, pieces: usize) -> DictBuilder {
        DictBuilder::new()
            .insert("name", s("a.bin"))
            .insert("piece length", Value::Int(piece_length))
            .insert("pieces", Value::Bytes(vec![7; 20 * pieces]))
            .insert("length", Value::Int(len))
    }

    fn wrap(info: DictBuilder) -> Vec<u8> {
        DictBuilder::new()
            .insert("info", info.build())
            .build()
            .encode()
    }

    #[test]
    fn single_file_parses_and_hashes_raw_info_span() {
        // Proves: a single-file torrent parses and its info-hash is SHA-1 of the info bytes.
        let info = single(100, 64, 2);
        let info_bytes = info.clone().build().encode();
        let t = parse(&wrap(info)).unwrap();
        assert_eq!(t.info_hash.0, <[u8; 20]>::from(Sha1::digest(&info_bytes)));
        assert_eq!(t.info_bytes, info_bytes);
        assert_eq!(
            t.files,
            vec![FileEntry {
                path: vec!["a.bin".into()],
                length: 100,
                offset: 0,
                pad: false,
                pieces_root: None,
            }]
        );
        assert_eq!(
            (t.total_length, t.num_pieces(), t.piece_len(1), t.multi_file),
            (100, 2, 36, false)
        );
    }

    #[test]
    fn info_hash_uses_non_canonical_bytes_as_written() {
        // Proves: a non-sorted info dict is hashed as written, not re-encoded.
        let raw =
            b"d4:infod6:lengthi5e4:name1:x12:piece lengthi16e6:pieces20:aaaaaaaaaaaaaaaaaaaaee";
        let t = parse(raw).unwrap();
        let start = 7;
        let end = raw.len() - 1;
        assert_eq!(
            t.info_hash.0,
            <[u8; 20]>::from(Sha1::digest(&raw[start..end]))
        );
    }

    #[test]
    fn multi_file_offsets_pads_and_utf8_variants() {
        // Proves: offsets accumulate, BEP 47 pads are flagged, `path.utf-8`/`name.utf-8` win.
        let pad = DictBuilder::new()
            .insert("length", Value::Int(6))
            .insert("path", Value::List(vec![s(".pad"), s("6")]))
            .insert("attr", s("p"))
            .build();
        let utf = DictBuilder::new()
            .insert("length", Value::Int(4))
            .insert("path", Value::List(vec![Value::Bytes(vec![0xff])]))
            .insert("path.utf-8", Value::List(vec![s("dir"), s("é")]))
            .build();
        let info = multi(vec![file(10, &["a"]), pad, utf], 8, 3).insert("name.utf-8", s("racine"));
        let t = parse(&wrap(info)).unwrap();
        assert_eq!(t.name, "racine");
        assert!(t.multi_file);
        assert_eq!(t.files[1].offset, 10);
        assert!(t.files[1].pad && !t.files[0].pad);
        assert_eq!(t.files[2].path, vec!["dir".to_string(), "é".to_string()]);
        assert_eq!((t.files[2].offset, t.total_length), (16, 20));
    }

    #[test]
    fn trackers_web_seeds_and_optional_fields() {
        // Proves: announce-list tiers win over announce, url-list string or list, private, comment.
        let info = single(1, 16, 1).insert("private", Value::Int(1));
        let tiers = Value::List(vec![
            Value::List(vec![s("http://a/ann"), s("http://b/ann")]),
            Value::List(vec![]),
            Value::List(vec![s("udp://c:1")]),
        ]);
        let bytes = DictBuilder::new()
            .insert("info", info.build())
            .insert("announce", s("http://ignored/ann"))
            .insert("announce-list", tiers)
            .insert("url-list", s("http://ws/"))
            .insert("comment", s("hi"))
            .insert("created by", s("me"))
            .insert("creation date", Value::Int(1_700_000_000))
            .build()
            .encode();
        let t = parse(&bytes).unwrap();
        assert_eq!(
            t.trackers,
            vec![
                vec!["http://a/ann".to_string(), "http://b/ann".into()],
                vec!["udp://c:1".into()]
            ]
        );
        assert_eq!(t.web_seeds, vec!["http://ws/".to_string()]);
        assert!(t.private);
        assert_eq!(t.comment.as_deref(), Some("hi"));
        assert_eq!(t.created_by.as_deref(), Some("me"));
        assert_eq!(t.creation_date, Some(1_700_000_000));

        let bytes = DictBuilder::new()
            .insert("info", single(1, 16, 1).build())
            .insert("announce", s("http://only/ann"))
            .insert(
                "url-list",
                Value::List(vec![s("http://w1/"), s("http://w2/")]),
            )
            .build()
            .encode();
        let t = parse(&bytes).unwrap();
        assert_eq!(t.trackers, vec![vec!["http://only/ann".to_string()]]);
        assert_eq!(t.web_seeds.len(), 2);
        assert!(!t.private);
    }

    #[test]
    fn refuses_bad_piece_length_and_pieces() {
        // Proves: zero/negative/huge piece length and a wrong `pieces` size are refused.
        for pl in [0, -16, (PIECE_LENGTH_MAX_BYTES as i64) * 2] {
            let err = parse(&wrap(single(10, pl, 1))).unwrap_err();
            assert!(
                matches!(err, MetainfoError::Field { ref field, .. } if field == "info.piece length"),
                "{err}"
            );
        }
        let err = parse(&wrap(single(100, 64, 1))).unwrap_err();
        assert!(err.to_string().contains("need 20 x 2 = 40 bytes"), "{err}");
        let err = parse(&wrap(single(100, 64, 3))).unwrap_err();
        assert!(matches!(err, MetainfoError::Field { .. }));
    }

    #[test]
    fn refuses_negative_lengths_overflow_and_empty() {
        // Proves: negative lengths, totals past 2^63, zero files and zero bytes are refused.
        assert!(parse(&wrap(single(-1, 16, 1)))
            .unwrap_err()
            .to_string()
            .contains("negative"));
        let big = i64::MAX;
        assert!(parse(&wrap(multi(
            vec![file(big, &["a"]), file(big, &["b"])],
            16,
            1
        )))
        .unwrap_err()
        .to_string()
        .contains("overflows"));
        assert!(parse(&wrap(multi(vec![], 16, 0)))
            .unwrap_err()
            .to_string()
            .contains("empty"));
        assert!(parse(&wrap(single(0, 16, 0)))
            .unwrap_err()
            .to_string()
            .contains("no content"));
        assert!(parse(&wrap(DictBuilder::new().insert("name", s("x")))).is_err());
    }

    #[test]
    fn refuses_unsafe_paths_naming_them() {
        // Proves: every escaping path form is refused with an UnsafePath error naming the path.
        let cases: &[&[&str]] = &[
            &["..", "etc", "passwd"],
            &["a", ""],
            &["."],
            &["a/b"],
            &["a\\b"],
            &["a\0b"],
            &[],
        ];
        for path in cases {
            let err = parse(&wrap(multi(vec![file(4, path)], 16, 1))).unwrap_err();
            assert!(
                matches!(err, MetainfoError::UnsafePath { .. }),
                "{path:?}: {err}"
            );
        }
        let err = parse(&wrap(multi(vec![file(4, &["..", "etc", "passwd"])], 16, 1))).unwrap_err();
        let msg = err.describe("bad.torrent");
        assert!(
            msg.starts_with("bad.torrent: unsafe file path \"../etc/passwd\""),
            "{msg}"
        );
        assert!(msg.contains("refused"), "{msg}");
        for name in ["..", "/etc", "", "a/b", "."] {
            let info = single(4, 16, 1).insert("name", s(name));
            assert!(
                matches!(parse(&wrap(info)), Err(MetainfoError::UnsafePath { .. })),
                "name {name:?}"
            );
        }
    }

    #[test]
    fn refuses_duplicate_and_overlapping_paths() {
        // Proves: two entries for one path, or a file that is also a directory, are refused.
        let err = parse(&wrap(multi(
            vec![file(4, &["a", "b"]), file(4, &["a", "b"])],
            16,
            1,
        )))
        .unwrap_err();
        assert!(err.to_string().contains("duplicate"), "{err}");
        assert!(parse(&wrap(multi(
            vec![file(4, &["a"]), file(4, &["a", "b"])],
            16,
            1
        )))
        .is_err());
        assert!(parse(&wrap(multi(
            vec![file(4, &["a", "b"]), file(4, &["a"])],
            16,
            1
        )))
        .is_err());
    }

    fn v2_bytes(files: &[(Vec<String>, u64)], piece_length: u64, hybrid: bool) -> Vec<u8> {
        use crate::metainfo::create::{build_torrent_bytes_v2, hybrid_layout, V2Hashes};
        let mut v2 = V2Hashes::default();
        for (i, (_, len)) in files.iter().enumerate() {
            if *len == 0 {
                v2.roots.push(None);
                v2.layers.push(Vec::new());
            } else if *len <= piece_length {
                v2.roots.push(Some([i as u8 + 1; 32]));
                v2.layers.push(Vec::new());
            } else {
                let n = len.div_ceil(piece_length) as usize;
                let layer: Vec<[u8; 32]> = (0..n).map(|p| [p as u8 + 9; 32]).collect();
                v2.roots.push(Some(merkle::root_from_piece_layer(
                    &layer,
                    *len,
                    piece_length,
                )));
                v2.layers.push(layer.concat());
            }
        }
        let padded_len: u64 = hybrid_layout(files, piece_length).iter().map(|f| f.1).sum();
        let v1 = vec![3u8; 20 * padded_len.div_ceil(piece_length) as usize];
        build_torrent_bytes_v2(
            "root",
            files,
            piece_length,
            hybrid.then_some(&v1[..]),
            &v2,
            &Default::default(),
        )
    }

    /// A multi-file torrent of `count` one-byte files named `f<i>`, bencoded by hand (fast
    /// enough for hundreds of thousands of entries).
    fn many_files(count: usize) -> Vec<u8> {
        let mut files = Vec::with_capacity(count * 24);
        for i in 0..count {
            let name = format!("f{i}");
            files.extend_from_slice(
                format!("d6:lengthi1e4:pathl{}:{name}ee", name.len()).as_bytes(),
            );
        }
        let pieces = count.div_ceil(16);
        let mut info = Vec::new();
        info.extend_from_slice(b"d5:filesl");
        info.extend_from_slice(&files);
        info.extend_from_slice(b"e4:name4:root12:piece lengthi16e6:pieces");
        info.extend_from_slice(format!("{}:", pieces * 20).as_bytes());
        info.extend(std::iter::repeat_n(7u8, pieces * 20));
        info.push(b'e');
        let mut out = b"d4:info".to_vec();
        out.extend_from_slice(&info);
        out.push(b'e');
        out
    }

    #[test]
    fn file_count_is_bounded_with_a_clear_message() {
        // Proves: a torrent at the file-count limit parses; one more file is refused, and the
        // message names the field and the limit.
        let at_limit = parse(&many_files(FILES_PER_TORRENT_MAX)).unwrap();
        assert_eq!(at_limit.files.len(), FILES_PER_TORRENT_MAX);
        let err = parse(&many_files(FILES_PER_TORRENT_MAX + 1)).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("info.files") && text.contains(&FILES_PER_TORRENT_MAX.to_string()),
            "{text}"
        );
    }

    #[test]
    fn paths_longer_than_path_max_are_refused() {
        // Proves: a path that could never be opened (over PATH_MAX) is refused by name, and one
        // just under the limit is accepted.
        let long = "x".repeat(200);
        let ok: Vec<&str> = std::iter::repeat_n(long.as_str(), 20).collect();
        assert!(parse(&wrap(multi(vec![file(4, &ok)], 16, 1))).is_ok());
        let too_long: Vec<&str> = std::iter::repeat_n(long.as_str(), 21).collect();
        let err = parse(&wrap(multi(vec![file(4, &too_long)], 16, 1))).unwrap_err();
        assert!(err.to_string().contains("PATH_MAX"), "{err}");
    }

    #[test]
    fn deep_distinct_directories_cost_linear_memory() {
        // Proves: many files with deep, distinct directory chains parse (duplicate detection
        // is a tree walk, not a set of joined prefixes whose size grows with depth squared).
        let comps: Vec<String> = (0..700).map(|i| format!("d{i}")).collect();
        let files: Vec<Value> = (0..200)
            .map(|f| {
                let mut path: Vec<&str> = vec![];
                let top = format!("top{f}");
                path.push(&top);
                path.extend(comps.iter().map(String::as_str));
                file(1, &path)
            })
            .collect();
        let t = parse(&wrap(multi(files, 16, 13))).unwrap();
        assert_eq!(t.files.len(), 200);
        // Same chain twice: refused as a duplicate; a file where a directory was: refused.
        let dup = vec![file(1, &["a", "b", "c"]), file(1, &["a", "b", "c"])];
        assert!(parse(&wrap(multi(dup, 16, 1)))
            .unwrap_err()
            .to_string()
            .contains("duplicate"));
        let through = vec![file(1, &["a", "b"]), file(1, &["a", "b", "c"])];
        assert!(parse(&wrap(multi(through, 16, 1)))
            .unwrap_err()
            .to_string()
            .contains("runs through"));
    }

    #[test]
    fn v2_only_parses_with_implicit_pads_and_sha256_hash() {
        // Proves: a v2-only torrent parses; info_hash_v2 is SHA-256 of the info bytes and
        // info_hash its first 20 bytes; files are piece-aligned with implicit pads; piece
        // hashes come from the piece layer or the pieces root.
        let pl = 16384;
        let files = vec![
            (vec!["a".to_string()], 40000u64),
            (vec!["d".to_string(), "e".to_string()], 0),
            (vec!["d".to_string(), "f".to_string()], 10),
        ];
        let bytes = v2_bytes(&files, pl, false);
        let t = parse(&bytes).unwrap();
        let v2: [u8; 32] = Sha256::digest(&t.info_bytes).into();
        assert_eq!(t.version, MetaVersion::V2);
        assert_eq!(t.info_hash_v2, Some(v2));
        assert_eq!(t.info_hash.0[..], v2[..20]);
        assert!(t.piece_hashes.is_empty() && t.multi_file);
        let layout: Vec<(String, u64, u64, bool)> = t
            .files
            .iter()
            .map(|f| (f.path.join("/"), f.length, f.offset, f.pad))
            .collect();
        assert_eq!(
            layout,
            vec![
                ("a".into(), 40000, 0, false),
                (".pad/9152".into(), 9152, 40000, true),
                ("d/e".into(), 0, 49152, false),
                ("d/f".into(), 10, 49152, false),
                (".pad/16374".into(), 16374, 49162, true),
            ]
        );
        assert_eq!((t.num_pieces(), t.total_length), (4, 65536));
        assert_eq!(t.v2_piece_hash(1), Some([10; 32]));
        assert_eq!(t.v2_piece_hash(3), Some([3; 32]));
        assert_eq!(t.v2_piece_file(3), Some(3));
        assert_eq!(t.v2_piece_file(2), Some(0));

        let single = parse(&v2_bytes(&[(vec![], 5)], pl, false)).unwrap();
        assert!(!single.multi_file);
        assert_eq!(single.files[0].path, vec!["root".to_string()]);
    }

    #[test]
    fn hybrid_parses_both_halves_and_matches_them() {
        // Proves: a hybrid keeps the SHA-1 info_hash, adds info_hash_v2, and its v1 files
        // (with BEP 47 pads) get the v2 pieces roots.
        let files = vec![
            (vec!["a".to_string()], 20000u64),
            (vec!["b".to_string()], 30000),
        ];
        let t = parse(&v2_bytes(&files, 16384, true)).unwrap();
        assert_eq!(t.version, MetaVersion::Hybrid);
        assert_eq!(t.info_hash.0, <[u8; 20]>::from(Sha1::digest(&t.info_bytes)));
        assert!(t.info_hash_v2.is_some());
        assert!(t.files[1].pad && t.files[2].pieces_root.is_some());
        assert_eq!(t.files[2].offset, 32768);
        assert_eq!((t.num_pieces(), t.total_length), (4, 65536));
    }

    #[test]
    fn v2_refuses_bad_trees_layers_and_piece_lengths() {
        // Proves: unsafe tree components, wrong-size roots and layers, a layer that does not
        // hash to its root, non-power-of-two piece lengths and unknown meta versions are
        // refused with typed errors.
        let info = |tree: Value, pl: i64| {
            DictBuilder::new()
                .insert("name", s("x"))
                .insert("piece length", Value::Int(pl))
                .insert("meta version", Value::Int(2))
                .insert("file tree", tree)
        };
        let leaf = |len: i64, root: Vec<u8>| {
            DictBuilder::new()
                .insert(
                    "",
                    DictBuilder::new()
                        .insert("length", Value::Int(len))
                        .insert("pieces root", Value::Bytes(root))
                        .build(),
                )
                .build()
        };
        for bad in ["..", ".", "a/b", "a\0b"] {
            let tree = DictBuilder::new().insert(bad, leaf(5, vec![1; 32])).build();
            assert!(
                matches!(
                    parse(&wrap(info(tree, 16384))),
                    Err(MetainfoError::UnsafePath { .. })
                ),
                "{bad:?}"
            );
        }
        let tree = DictBuilder::new().insert("f", leaf(5, vec![1; 31])).build();
        assert!(parse(&wrap(info(tree, 16384))).is_err());
        let tree = DictBuilder::new().insert("f", leaf(5, vec![1; 32])).build();
        assert!(parse(&wrap(info(tree.clone(), 16384))).is_ok());
        assert!(parse(&wrap(info(tree.clone(), 16385))).is_err());
        assert!(parse(&wrap(info(tree.clone(), 8192))).is_err());
        assert!(parse(&wrap(info(DictBuilder::new().build(), 16384))).is_err());
        let v3 = info(tree, 16384).insert("meta version", Value::Int(3));
        assert!(parse(&wrap(v3)).is_err());

        // A 40000-byte file needs a 3-piece layer that hashes to its root.
        let big = DictBuilder::new()
            .insert("f", leaf(40000, vec![1; 32]))
            .build();
        let missing = wrap(info(big.clone(), 16384));
        assert!(parse(&missing)
            .unwrap_err()
            .to_string()
            .contains("no layer"));
        let with_layer = |layer: Vec<u8>| {
            let mut layers = std::collections::BTreeMap::new();
            layers.insert(vec![1u8; 32], Value::Bytes(layer));
            DictBuilder::new()
                .insert("info", info(big.clone(), 16384).build())
                .insert("piece layers", Value::Dict(layers))
                .build()
                .encode()
        };
        assert!(parse(&with_layer(vec![0; 64]))
            .unwrap_err()
            .to_string()
            .contains("need 96"));
        assert!(parse(&with_layer(vec![0; 96]))
            .unwrap_err()
            .to_string()
            .contains("does not hash"));
    }

    #[test]
    fn hybrid_with_mismatched_halves_is_refused() {
        // Proves: a hybrid whose v1 file list disagrees with its file tree is refused.
        let tree = DictBuilder::new()
            .insert(
                "other",
                DictBuilder::new()
                    .insert(
                        "",
                        DictBuilder::new()
                            .insert("length", Value::Int(10))
                            .insert("pieces root", Value::Bytes(vec![1; 32]))
                            .build(),
                    )
                    .build(),
            )
            .build();
        let hybrid = single(10, 16384, 1)
            .insert("meta version", Value::Int(2))
            .insert("file tree", tree);
        assert!(parse(&wrap(hybrid))
            .unwrap_err()
            .to_string()
            .contains("hybrid"));
    }

    #[test]
    fn refuses_garbage_top_levels() {
        // Proves: non-dict roots, missing info, non-dict info and bencode errors are typed errors.
        assert!(matches!(parse(b"le"), Err(MetainfoError::Field { .. })));
        assert!(matches!(parse(b"de"), Err(MetainfoError::Field { .. })));
        assert!(matches!(
            parse(b"d4:infoi1ee"),
            Err(MetainfoError::Field { .. })
        ));
        assert!(matches!(parse(b"d4:info"), Err(MetainfoError::Bencode(_))));
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            // Proves: parse is total over arbitrary input.
            let _ = parse(&bytes);
        }
    }
}
