//! Building new torrents (`squall make`): file listing order, automatic piece length, and
//! the canonical info dictionary. Hashing itself lives in `storage::hasher`.
//!
//! Owns: which files go into a new torrent and in what order, and the exact bytes of the
//! .torrent. Must never: follow a symlink out of the root being shared, write anything (the
//! caller writes the output), or put non-standard keys in `info` (they would change the hash).
//!
//! File order: every regular file below the root, sorted by its path components compared
//! bytewise, component by component (`a/x` sorts before `a-b`, because `a` < `a-b`). The order
//! depends only on the names, never on readdir order, so the same tree always gives the same
//! info-hash.

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::bencode::{DictBuilder, Value};

/// Smallest and largest automatic piece lengths (the range mktorrent and libtorrent use).
pub const AUTO_PIECE_LENGTH_MIN_BYTES: u64 = 16 * 1024;
pub const AUTO_PIECE_LENGTH_MAX_BYTES: u64 = 16 * 1024 * 1024;
/// The automatic piece length is the smallest power of two giving at most this many pieces.
pub const AUTO_PIECES_TARGET_MAX: u64 = 2000;

/// Automatic piece length: the smallest power of two in 16 KiB..=16 MiB that cuts
/// `total_bytes` into at most 2,000 pieces, so large torrents land between 1,000 and 2,000
/// pieces (small .torrent files, fine-grained verification) and tiny ones use 16 KiB.
pub fn auto_piece_length(total_bytes: u64) -> u64 {
    let mut piece_length_bytes = AUTO_PIECE_LENGTH_MIN_BYTES;
    while piece_length_bytes < AUTO_PIECE_LENGTH_MAX_BYTES
        && total_bytes.div_ceil(piece_length_bytes) > AUTO_PIECES_TARGET_MAX
    {
        piece_length_bytes *= 2;
    }
    piece_length_bytes
}

/// Why a tree could not be listed for a new torrent.
#[derive(Debug)]
pub enum CreateError {
    Io {
        path: PathBuf,
        source: io::Error,
    },
    /// A symlink whose target lies outside the root being shared (or is broken).
    SymlinkEscapes {
        path: PathBuf,
        target: String,
    },
    /// A symlink to a directory: following it could loop or duplicate content.
    SymlinkedDirectory {
        path: PathBuf,
    },
    /// A name that is not UTF-8 or not a safe torrent path component.
    BadName {
        path: PathBuf,
        reason: String,
    },
    /// Sockets, FIFOs, devices.
    NotRegularFile {
        path: PathBuf,
    },
}

impl fmt::Display for CreateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CreateError::Io { path, source } => write!(f, "{}: {source}", path.display()),
            CreateError::SymlinkEscapes { path, target } => write!(
                f,
                "{}: symlink points outside the shared directory (to {target}); remove it or copy the file in",
                path.display()
            ),
            CreateError::SymlinkedDirectory { path } => write!(
                f,
                "{}: symlink to a directory is not followed; replace it with the directory itself",
                path.display()
            ),
            CreateError::BadName { path, reason } => write!(f, "{}: {reason}; rename it", path.display()),
            CreateError::NotRegularFile { path } => write!(
                f,
                "{}: not a regular file (socket, FIFO or device); move it out of the shared directory",
                path.display()
            ),
        }
    }
}

impl std::error::Error for CreateError {}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> CreateError + '_ {
    move |source| CreateError::Io {
        path: path.to_owned(),
        source,
    }
}

/// One listed file: (path components below the root, on-disk path, length in bytes).
/// An empty component list means `root` itself is a file (a single-file torrent).
pub type ListedFile = (Vec<String>, PathBuf, u64);

/// Lists every regular file below `root` in the documented order (see module doc).
/// `root` being a file gives one entry with an empty component list. Symlinks to files inside
/// the root are included (read through the link); symlinks leaving the root are refused.
pub fn list_files(root: &Path) -> Result<Vec<ListedFile>, CreateError> {
    let meta = fs::metadata(root).map_err(io_err(root))?;
    if meta.is_file() {
        return Ok(vec![(Vec::new(), root.to_owned(), meta.len())]);
    }
    if !meta.is_dir() {
        return Err(CreateError::NotRegularFile {
            path: root.to_owned(),
        });
    }
    let canonical_root = fs::canonicalize(root).map_err(io_err(root))?;
    let mut out = Vec::new();
    let mut components = Vec::new();
    walk(root, &canonical_root, &mut components, &mut out)?;
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

fn walk(
    dir: &Path,
    canonical_root: &Path,
    components: &mut Vec<String>,
    out: &mut Vec<ListedFile>,
) -> Result<(), CreateError> {
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let path = entry.path();
        let name = entry
            .file_name()
            .into_string()
            .map_err(|_| CreateError::BadName {
                path: path.clone(),
                reason: "name is not UTF-8".into(),
            })?;
        if name.contains('\\') {
            return Err(CreateError::BadName {
                path,
                reason: "name contains a backslash".into(),
            });
        }
        let file_type = entry.file_type().map_err(io_err(&path))?;
        components.push(name);
        if file_type.is_symlink() {
            let target = fs::canonicalize(&path).map_err(|_| CreateError::SymlinkEscapes {
                path: path.clone(),
                target: "a missing file".into(),
            })?;
            if !target.starts_with(canonical_root) {
                return Err(CreateError::SymlinkEscapes {
                    path,
                    target: target.display().to_string(),
                });
            }
            let meta = fs::metadata(&path).map_err(io_err(&path))?;
            if meta.is_dir() {
                return Err(CreateError::SymlinkedDirectory { path });
            }
            if !meta.is_file() {
                return Err(CreateError::NotRegularFile { path });
            }
            out.push((components.clone(), path, meta.len()));
        } else if file_type.is_dir() {
            walk(&path, canonical_root, components, out)?;
        } else if file_type.is_file() {
            let meta = entry.metadata().map_err(io_err(&path))?;
            out.push((components.clone(), path, meta.len()));
        } else {
            return Err(CreateError::NotRegularFile { path });
        }
        components.pop();
    }
    Ok(())
}

/// Everything about a new torrent that is not its content.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CreateOptions {
    /// `None`: `auto_piece_length(total)`.
    pub piece_length: Option<u64>,
    /// BEP 12 tiers, in order. The first URL of the first tier also goes in `announce`.
    pub trackers: Vec<Vec<String>>,
    pub private: bool,
    pub comment: Option<String>,
    /// BEP 19 `url-list`.
    pub web_seeds: Vec<String>,
    pub created_by: String,
    /// Seconds since the Unix epoch; `None` leaves `creation date` out (reproducible bytes).
    pub creation_date: Option<i64>,
}

/// The bytes of a .torrent. `files` are (components below the root, length); a single entry
/// with no components makes a single-file torrent named `name`, anything else a multi-file
/// torrent whose directory is `name`. `info` holds only `length`/`files`, `name`,
/// `piece length`, `pieces` and (when set) `private`, so equal content gives an equal hash.
pub fn build_torrent_bytes(
    name: &str,
    files: &[(Vec<String>, u64)],
    piece_length: u64,
    piece_hashes: &[u8],
    opts: &CreateOptions,
) -> Vec<u8> {
    let mut info = DictBuilder::new()
        .insert("name", Value::str(name))
        .insert("piece length", Value::Int(piece_length as i64))
        .insert("pieces", Value::Bytes(piece_hashes.to_vec()));
    match files {
        [(components, length)] if components.is_empty() => {
            info.insert_mut("length", Value::Int(*length as i64));
        }
        _ => {
            let list = files
                .iter()
                .map(|(components, length)| {
                    DictBuilder::new()
                        .insert("length", Value::Int(*length as i64))
                        .insert(
                            "path",
                            Value::List(components.iter().map(|c| Value::str(c)).collect()),
                        )
                        .build()
                })
                .collect();
            info.insert_mut("files", Value::List(list));
        }
    }
    if opts.private {
        info.insert_mut("private", Value::Int(1));
    }
    let mut root = DictBuilder::new().insert("info", info.build());
    add_outer_keys(&mut root, opts);
    root.build().encode()
}

/// The v2 half of a new torrent, per file in `files` order: its pieces root (`None` for an
/// empty file) and its piece layer (empty for a file of at most one piece).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct V2Hashes {
    pub roots: Vec<Option<[u8; 32]>>,
    pub layers: Vec<Vec<u8>>,
}

/// One entry of a hybrid's v1 file list: (components, length, is a BEP 47 pad).
pub type PaddedFile = (Vec<String>, u64, bool);

/// The v1 file list of a hybrid: a pad (`.pad/<len>`, `attr p`) after every non-empty file
/// that does not end on a piece boundary, the last one included, so v1 pieces line up with
/// v2's per-file pieces. This is libtorrent's layout and the one the parser gives a v2-only
/// torrent. A single-file torrent (`length`, no file list) has nowhere to put a pad: none.
pub fn hybrid_layout(files: &[(Vec<String>, u64)], piece_length: u64) -> Vec<PaddedFile> {
    if let [(components, length)] = files {
        if components.is_empty() {
            return vec![(Vec::new(), *length, false)];
        }
    }
    let mut out = Vec::with_capacity(files.len() * 2);
    let mut offset = 0u64;
    for (components, length) in files {
        out.push((components.clone(), *length, false));
        offset += length;
        let misalign = offset % piece_length;
        if *length > 0 && misalign != 0 {
            let pad_len = piece_length - misalign;
            out.push((vec![".pad".to_string(), pad_len.to_string()], pad_len, true));
            offset += pad_len;
        }
    }
    out
}

/// The bytes of a v2-only (`v1_piece_hashes` = `None`) or hybrid torrent. `files` as for
/// `build_torrent_bytes`; a hybrid's v1 hashes cover `hybrid_layout(files)`.
pub fn build_torrent_bytes_v2(
    name: &str,
    files: &[(Vec<String>, u64)],
    piece_length: u64,
    v1_piece_hashes: Option<&[u8]>,
    v2: &V2Hashes,
    opts: &CreateOptions,
) -> Vec<u8> {
    let single = matches!(files, [(c, _)] if c.is_empty());
    let mut tree: BTreeMap<Vec<u8>, Value> = BTreeMap::new();
    let mut layers: BTreeMap<Vec<u8>, Value> = BTreeMap::new();
    for (i, (components, length)) in files.iter().enumerate() {
        let mut leaf = DictBuilder::new().insert("length", Value::Int(*length as i64));
        if let Some(root) = v2.roots.get(i).copied().flatten() {
            leaf.insert_mut("pieces root", Value::Bytes(root.to_vec()));
            if let Some(layer) = v2.layers.get(i).filter(|l| !l.is_empty()) {
                layers.insert(root.to_vec(), Value::Bytes(layer.clone()));
            }
        }
        let file_node = DictBuilder::new().insert("", leaf.build()).build();
        let path: Vec<&str> = if single {
            vec![name]
        } else {
            components.iter().map(String::as_str).collect()
        };
        insert_tree(&mut tree, &path, file_node);
    }
    let mut info = DictBuilder::new()
        .insert("name", Value::str(name))
        .insert("piece length", Value::Int(piece_length as i64))
        .insert("meta version", Value::Int(2))
        .insert("file tree", Value::Dict(tree));
    if let Some(pieces) = v1_piece_hashes {
        info.insert_mut("pieces", Value::Bytes(pieces.to_vec()));
        if single {
            info.insert_mut("length", Value::Int(files[0].1 as i64));
        } else {
            let list = hybrid_layout(files, piece_length)
                .into_iter()
                .map(|(components, length, pad)| {
                    let mut d = DictBuilder::new()
                        .insert("length", Value::Int(length as i64))
                        .insert(
                            "path",
                            Value::List(components.iter().map(|c| Value::str(c)).collect()),
                        );
                    if pad {
                        d.insert_mut("attr", Value::str("p"));
                    }
                    d.build()
                })
                .collect();
            info.insert_mut("files", Value::List(list));
        }
    }
    if opts.private {
        info.insert_mut("private", Value::Int(1));
    }
    let mut root = DictBuilder::new()
        .insert("info", info.build())
        .insert("piece layers", Value::Dict(layers));
    add_outer_keys(&mut root, opts);
    root.build().encode()
}

fn insert_tree(tree: &mut BTreeMap<Vec<u8>, Value>, path: &[&str], file_node: Value) {
    let Some((first, rest)) = path.split_first() else {
        return;
    };
    if rest.is_empty() {
        tree.insert(first.as_bytes().to_vec(), file_node);
        return;
    }
    let child = tree
        .entry(first.as_bytes().to_vec())
        .or_insert_with(|| Value::Dict(BTreeMap::new()));
    if let Value::Dict(sub) = child {
        insert_tree(sub, rest, file_node);
    }
}

/// Trackers, comment, creator, date and web seeds: the keys outside `info`.
fn add_outer_keys(root: &mut DictBuilder, opts: &CreateOptions) {
    let tiers: Vec<&Vec<String>> = opts.trackers.iter().filter(|t| !t.is_empty()).collect();
    if let Some(first) = tiers.first().and_then(|t| t.first()) {
        root.insert_mut("announce", Value::str(first));
    }
    if tiers.iter().map(|t| t.len()).sum::<usize>() > 1 {
        let list = tiers
            .iter()
            .map(|t| Value::List(t.iter().map(|u| Value::str(u)).collect()))
            .collect();
        root.insert_mut("announce-list", Value::List(list));
    }
    if let Some(c) = &opts.comment {
        root.insert_mut("comment", Value::str(c));
    }
    if !opts.created_by.is_empty() {
        root.insert_mut("created by", Value::str(&opts.created_by));
    }
    if let Some(d) = opts.creation_date {
        root.insert_mut("creation date", Value::Int(d));
    }
    match opts.web_seeds.as_slice() {
        [] => {}
        [one] => root.insert_mut("url-list", Value::str(one)),
        many => root.insert_mut(
            "url-list",
            Value::List(many.iter().map(|u| Value::str(u)).collect()),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metainfo::torrent::parse;

    #[test]
    fn auto_piece_length_targets_1000_to_2000_pieces() {
        // Proves: the automatic piece length is a power of two in range and lands in 1000..=2000
        // pieces whenever the bounds allow.
        assert_eq!(auto_piece_length(0), 16 * 1024);
        assert_eq!(auto_piece_length(1), 16 * 1024);
        assert_eq!(auto_piece_length(1 << 30), 1 << 20);
        assert_eq!(auto_piece_length(1 << 50), 16 << 20);
        for total in [40u64 << 20, 1 << 30, 3 << 30, 7_777_777_777, 20 << 30] {
            let pl = auto_piece_length(total);
            assert!(pl.is_power_of_two());
            let n = total.div_ceil(pl);
            assert!((1000..=2000).contains(&n), "{total}: {pl} -> {n}");
        }
    }

    #[test]
    fn list_files_orders_by_components_and_refuses_escaping_links() {
        // Proves: listing is sorted component-wise, single files have no components, and
        // symlinks out of the root are refused while ones inside are kept.
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("r");
        fs::create_dir_all(root.join("a")).unwrap();
        fs::write(root.join("a-b"), b"12").unwrap();
        fs::write(root.join("a/x"), b"1").unwrap();
        fs::write(root.join("B"), b"").unwrap();
        std::os::unix::fs::symlink("a/x", root.join("link")).unwrap();
        let listed = list_files(&root).unwrap();
        let names: Vec<String> = listed.iter().map(|(c, _, _)| c.join("/")).collect();
        assert_eq!(names, vec!["B", "a/x", "a-b", "link"]);
        assert_eq!(listed[2].2, 2);
        let single = list_files(&root.join("a-b")).unwrap();
        assert!(single[0].0.is_empty());

        fs::write(tmp.path().join("outside"), b"x").unwrap();
        std::os::unix::fs::symlink("../outside", root.join("esc")).unwrap();
        assert!(matches!(
            list_files(&root),
            Err(CreateError::SymlinkEscapes { .. })
        ));
    }

    #[test]
    fn built_bytes_parse_back_with_only_standard_info_keys() {
        // Proves: build_torrent_bytes output parses, trackers/web seeds survive, and the info
        // dict has exactly the standard keys.
        let opts = CreateOptions {
            trackers: vec![
                vec!["http://a/".into(), "http://b/".into()],
                vec!["udp://c:1".into()],
            ],
            private: true,
            comment: Some("c".into()),
            web_seeds: vec!["http://w/".into()],
            created_by: "squall".into(),
            creation_date: Some(5),
            piece_length: None,
        };
        let files = vec![
            (vec!["d".to_string(), "f".to_string()], 3u64),
            (vec!["g".to_string()], 0),
        ];
        let bytes = build_torrent_bytes("n", &files, 16384, &[1; 20], &opts);
        let t = parse(&bytes).unwrap();
        assert!(t.multi_file && t.private);
        assert_eq!(t.trackers, opts.trackers);
        assert_eq!(t.web_seeds, opts.web_seeds);
        let info = crate::metainfo::bencode::decode(&t.info_bytes).unwrap();
        let keys: Vec<&[u8]> = info.as_dict().unwrap().iter().map(|(k, _)| *k).collect();
        assert_eq!(
            keys,
            vec![
                &b"files"[..],
                b"name",
                b"piece length",
                b"pieces",
                b"private"
            ]
        );

        let single = build_torrent_bytes(
            "one",
            &[(vec![], 5)],
            16384,
            &[1; 20],
            &CreateOptions::default(),
        );
        let t = parse(&single).unwrap();
        assert!(!t.multi_file && t.trackers.is_empty());
    }
}
