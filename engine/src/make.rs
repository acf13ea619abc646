//! Making a torrent from a path on disk: list, hash on all cores, build the bytes, parse back.
//!
//! Owns: the library entry point behind `squall make` and `squall seed <DIR>`.
//! Must never: write anything (the caller decides where the .torrent goes), or open content
//! for writing.

use std::fmt;
use std::path::Path;

use crate::metainfo::create::{self, CreateError, CreateOptions, V2Hashes};
use crate::metainfo::merkle;
use crate::metainfo::torrent::{self, MetaVersion, MetainfoError, Torrent};
use crate::storage::extents::layout;
use crate::storage::{hash_pieces, hash_pieces_v2, StorageError};

#[derive(Debug)]
pub enum MakeError {
    List(CreateError),
    Hash(StorageError),
    /// Nothing to share: no files, or only empty ones.
    Empty {
        path: String,
    },
    BadName {
        path: String,
        reason: String,
    },
    BadPieceLength {
        piece_length: u64,
    },
    /// The bytes we built did not parse back: a bug, reported rather than written.
    Build(MetainfoError),
}

impl fmt::Display for MakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MakeError::List(e) => write!(f, "{e}"),
            MakeError::Hash(e) => write!(f, "reading content: {e}"),
            MakeError::Empty { path } => {
                write!(
                    f,
                    "{path}: nothing to share (no files, or only empty files); add content first"
                )
            }
            MakeError::BadName { path, reason } => write!(f, "{path}: {reason}; rename it"),
            MakeError::BadPieceLength { piece_length } => write!(
                f,
                "piece length {piece_length} is not a power of two between 16 KiB and {} MiB",
                torrent::PIECE_LENGTH_MAX_BYTES >> 20
            ),
            MakeError::Build(e) => write!(
                f,
                "internal error: the torrent built does not parse back: {e}"
            ),
        }
    }
}

impl std::error::Error for MakeError {}

/// Lists `path` (a file: single-file torrent; a directory: multi-file), hashes it on
/// `threads` cores (0 = all), and returns the parsed torrent with its .torrent bytes.
/// `progress` gets the number of bytes hashed so far and the total.
pub fn make_torrent(
    path: &Path,
    opts: &CreateOptions,
    threads: usize,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<(Torrent, Vec<u8>), MakeError> {
    make_torrent_version(path, opts, MetaVersion::V1, threads, progress)
}

/// `make_torrent` for a chosen format: v1 (SHA-1 pieces), v2 (BEP 52 SHA-256 merkle trees
/// with 16 KiB leaves and piece layers) or hybrid (both, BEP 47 pads aligning files to pieces;
/// one read of the content feeds both hashes).
pub fn make_torrent_version(
    path: &Path,
    opts: &CreateOptions,
    version: MetaVersion,
    threads: usize,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<(Torrent, Vec<u8>), MakeError> {
    let display = path.display().to_string();
    // `squall make .` names the torrent after the directory, not ".".
    let named = if path.file_name().is_some() {
        path.to_owned()
    } else {
        std::fs::canonicalize(path).map_err(|e| {
            MakeError::List(CreateError::Io {
                path: path.to_owned(),
                source: e,
            })
        })?
    };
    let name = named
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| MakeError::BadName {
            path: display.clone(),
            reason: "has no UTF-8 file name".into(),
        })?
        .to_owned();
    let listed = create::list_files(path).map_err(MakeError::List)?;
    let total_length: u64 = listed.iter().map(|(_, _, len)| len).sum();
    if total_length == 0 {
        return Err(MakeError::Empty { path: display });
    }
    let piece_length = match opts.piece_length {
        Some(pl)
            if pl.is_power_of_two()
                && (16 * 1024..=torrent::PIECE_LENGTH_MAX_BYTES).contains(&pl) =>
        {
            pl
        }
        Some(pl) => return Err(MakeError::BadPieceLength { piece_length: pl }),
        None => create::auto_piece_length(total_length),
    };
    let files: Vec<(Vec<String>, u64)> =
        listed.iter().map(|(c, _, len)| (c.clone(), *len)).collect();
    let bytes = if version == MetaVersion::V1 {
        let content = layout(
            listed
                .iter()
                .map(|(_, disk, len)| (resolved(disk), *len, false)),
        );
        let hashes = hash_pieces(&content, piece_length, total_length, threads, &|done| {
            progress(done, total_length)
        })
        .map_err(MakeError::Hash)?;
        create::build_torrent_bytes(&name, &files, piece_length, &hashes, opts)
    } else {
        // v2 pieces never span files: hash over the padded layout (the hybrid's v1 layout).
        let padded = create::hybrid_layout(&files, piece_length);
        let mut disk_paths = listed.iter().map(|(_, disk, _)| resolved(disk));
        let content = layout(padded.iter().map(|(_, len, pad)| {
            let disk = if *pad {
                std::path::PathBuf::new()
            } else {
                disk_paths.next().unwrap_or_default()
            };
            (disk, *len, *pad)
        }));
        let stream_length = content.last().map_or(0, |f| f.offset + f.length);
        let (nodes, v1) = hash_pieces_v2(
            &content,
            piece_length,
            stream_length,
            version == MetaVersion::Hybrid,
            threads,
            &|done| progress(done, stream_length),
        )
        .map_err(MakeError::Hash)?;
        let mut v2 = V2Hashes::default();
        for f in content.iter().filter(|f| !f.pad) {
            if f.length == 0 {
                v2.roots.push(None);
                v2.layers.push(Vec::new());
                continue;
            }
            let first = (f.offset / piece_length) as usize;
            let count = f.length.div_ceil(piece_length) as usize;
            let layer = nodes.get(first..first + count).unwrap_or(&[]);
            if f.length <= piece_length {
                v2.roots.push(layer.first().copied());
                v2.layers.push(Vec::new());
            } else {
                v2.roots.push(Some(merkle::root_from_piece_layer(
                    layer,
                    f.length,
                    piece_length,
                )));
                v2.layers.push(layer.concat());
            }
        }
        create::build_torrent_bytes_v2(&name, &files, piece_length, v1.as_deref(), &v2, opts)
    };
    // Parsing back applies every validation rule (unsafe names, etc.) to what we made.
    let parsed = torrent::parse(&bytes).map_err(|e| match e {
        MetainfoError::UnsafePath { path, reason } => MakeError::BadName { path, reason },
        other => MakeError::Build(other),
    })?;
    Ok((parsed, bytes))
}

/// `disk` with its symlinks resolved: content is opened without following symlinks
/// (`storage::open_content`), while making a torrent follows them as the user expects. On
/// error the path is kept and the open reports the problem.
fn resolved(disk: &std::path::Path) -> std::path::PathBuf {
    std::fs::canonicalize(disk).unwrap_or_else(|_| disk.to_path_buf())
}
