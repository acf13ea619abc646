//! Piece hashing on all cores: for `squall make` (compute hashes) and `squall verify` / the
//! catalog (compare with expected hashes).
//!
//! Design: `threads` workers pull piece indexes from one atomic counter, so a slow piece never
//! holds up the rest and consecutive pieces go to whichever core is free. Each worker owns one
//! reused piece-sized buffer and a tiny cache of open files; it reads a whole piece with
//! `pread` (large reads, no seeking state shared between threads), fills pad extents with
//! zeros, and hashes with the `sha1` crate (SHA-NI at run time). Results are kept per worker
//! and merged at the end: no locks on the hot loop.
//!
//! Owns: reading content for hashing. Must never: write content, or panic on a missing,
//! short or unreadable file (verification reports those as bad pieces).

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use sha1::{Digest, Sha1};

use super::extents::{map_range, ContentFile, Extent};
use super::{open_content, StorageError};
use crate::metainfo::merkle;
use crate::metainfo::torrent::piece_len;

/// Open files each worker keeps; enough for pieces that span a few small files.
const OPEN_FILES_PER_WORKER_MAX: usize = 8;

/// What is wrong with one content file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileProblemKind {
    Missing,
    WrongSize {
        expected_bytes: u64,
        actual_bytes: u64,
    },
    Unreadable(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileProblem {
    pub file_index: u32,
    pub path: PathBuf,
    pub kind: FileProblemKind,
}

/// Outcome of verifying every piece.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VerifyReport {
    pub num_pieces: u32,
    /// Indexes of pieces that did not match (or could not be read), ascending.
    pub bad_pieces: Vec<u32>,
    /// Missing, wrongly sized or unreadable files, in torrent order.
    pub file_problems: Vec<FileProblem>,
}

impl VerifyReport {
    pub fn is_complete(&self) -> bool {
        self.bad_pieces.is_empty()
    }

    /// BEP 3 bitfield of good pieces (high bit of byte 0 is piece 0).
    pub fn have_bitfield(&self) -> Vec<u8> {
        let mut have = vec![0u8; (self.num_pieces as usize).div_ceil(8)];
        for i in 0..self.num_pieces as usize {
            have[i / 8] |= 0x80 >> (i % 8);
        }
        for &bad in &self.bad_pieces {
            let i = bad as usize;
            if let Some(b) = have.get_mut(i / 8) {
                *b &= !(0x80 >> (i % 8));
            }
        }
        have
    }

    /// Bad pieces as inclusive ranges, for humans: `[(0, 0), (5, 9)]`.
    pub fn bad_ranges(&self) -> Vec<(u32, u32)> {
        let mut ranges: Vec<(u32, u32)> = Vec::new();
        for &p in &self.bad_pieces {
            match ranges.last_mut() {
                Some((_, end)) if *end + 1 == p => *end = p,
                _ => ranges.push((p, p)),
            }
        }
        ranges
    }
}

/// Hashes every piece. Any missing, short or unreadable file is an error (a new torrent must
/// describe content that exists). Returns 20 x num_pieces bytes.
pub fn hash_pieces(
    files: &[ContentFile],
    piece_length: u64,
    total_length: u64,
    threads: usize,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Vec<u8>, StorageError> {
    let num_pieces = check_geometry(files, piece_length, total_length)?;
    let mut out = vec![0u8; num_pieces as usize * 20];
    let first_error: std::sync::Mutex<Option<StorageError>> = std::sync::Mutex::new(None);
    let stop = AtomicBool::new(false);
    let results = run_workers(
        files,
        piece_length,
        total_length,
        threads,
        progress,
        &stop,
        &|_| false,
        |reader, index, len| match reader.hash_range(u64::from(index) * piece_length, len) {
            Ok(h) => Some((index, h)),
            Err(e) => {
                fail_fast(&stop, &first_error, reader.error(e));
                None
            }
        },
    );
    first_error_of(first_error)?;
    for (index, hash) in results {
        let start = index as usize * 20;
        out[start..start + 20].copy_from_slice(&hash);
    }
    Ok(out)
}

/// Hashes every piece and compares with `expected` (20 x num_pieces bytes). Missing, short or
/// unreadable files make the pieces they touch bad; they are listed, never an error.
pub fn verify_pieces(
    files: &[ContentFile],
    piece_length: u64,
    total_length: u64,
    expected: &[u8],
    threads: usize,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<VerifyReport, StorageError> {
    let expected = Expected {
        v1: Some(expected),
        v2: None,
    };
    verify_pieces_with(
        files,
        piece_length,
        total_length,
        &expected,
        threads,
        progress,
    )
}

/// What each piece must hash to: v1 SHA-1 hashes, v2 nodes (see `merkle::piece_node`), or
/// both for a hybrid (a piece is good only when every half present agrees).
pub struct Expected<'a> {
    /// 20 x num_pieces bytes.
    pub v1: Option<&'a [u8]>,
    /// The v2 node of piece `index`; `None` for a piece with no file data (never in practice).
    pub v2: Option<&'a (dyn Fn(u32) -> Option<[u8; 32]> + Sync)>,
}

/// Verifies `files` against everything `t` records: v1 pieces by SHA-1, v2 pieces by merkle
/// node (piece layer or the file's pieces root), hybrids by both halves.
pub fn verify_torrent_content(
    t: &crate::metainfo::torrent::Torrent,
    files: &[ContentFile],
    threads: usize,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<VerifyReport, StorageError> {
    let v2_hash = |index: u32| t.v2_piece_hash(index);
    let expected = Expected {
        v1: t.has_v1().then_some(&t.piece_hashes[..]),
        v2: t
            .version
            .has_v2()
            .then_some(&v2_hash as &(dyn Fn(u32) -> Option<[u8; 32]> + Sync)),
    };
    verify_pieces_with(
        files,
        t.piece_length,
        t.total_length,
        &expected,
        threads,
        progress,
    )
}

/// `verify_pieces` for any torrent version. v2 pieces must not span files (as the parser lays
/// v2 and hybrid torrents out).
pub fn verify_pieces_with(
    files: &[ContentFile],
    piece_length: u64,
    total_length: u64,
    expected_hashes: &Expected<'_>,
    threads: usize,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<VerifyReport, StorageError> {
    let num_pieces = check_geometry(files, piece_length, total_length)?;
    let expected = expected_hashes.v1.unwrap_or(&[]);
    if expected_hashes.v1.is_some() && expected.len() != num_pieces as usize * 20 {
        return Err(StorageError::Invalid(format!(
            "expected {} bytes of piece hashes, got {}",
            num_pieces as usize * 20,
            expected.len()
        )));
    }
    // Stat every file first: pieces of missing or short files are bad without reading them.
    let mut file_problems = Vec::new();
    let mut doomed = vec![false; num_pieces as usize];
    for (i, f) in files.iter().enumerate() {
        if f.pad || f.length == 0 {
            continue;
        }
        let kind = match std::fs::metadata(&f.path) {
            Ok(m) if m.is_file() && m.len() == f.length => continue,
            Ok(m) if m.is_file() => FileProblemKind::WrongSize {
                expected_bytes: f.length,
                actual_bytes: m.len(),
            },
            Ok(_) => FileProblemKind::Unreadable("not a regular file".into()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => FileProblemKind::Missing,
            Err(e) => FileProblemKind::Unreadable(e.to_string()),
        };
        // A longer file still holds the right bytes where the torrent looks; only mark pieces
        // bad when the file cannot supply them.
        let readable_bytes = match kind {
            FileProblemKind::WrongSize { actual_bytes, .. } => actual_bytes.min(f.length),
            _ => 0,
        };
        if readable_bytes < f.length {
            let first = (f.offset + readable_bytes) / piece_length;
            let last = (f.offset + f.length - 1) / piece_length;
            for p in first..=last {
                doomed[p as usize] = true;
            }
        }
        file_problems.push(FileProblem {
            file_index: i as u32,
            path: f.path.clone(),
            kind,
        });
    }
    let stop = AtomicBool::new(false);
    let unreadable: std::sync::Mutex<BTreeMap<u32, String>> =
        std::sync::Mutex::new(BTreeMap::new());
    let mut bad: Vec<u32> = run_workers(
        files,
        piece_length,
        total_length,
        threads,
        progress,
        &stop,
        &|index| doomed[index as usize],
        |reader, index, len| match reader.check_piece(index, len, piece_length, expected_hashes) {
            Ok(true) => None,
            Ok(false) => Some((index, [0; 20])),
            Err(e) => {
                if let Ok(mut map) = unreadable.lock() {
                    map.entry(e.file_index)
                        .or_insert_with(|| e.source.to_string());
                }
                Some((index, [0; 20]))
            }
        },
    )
    .into_iter()
    .map(|(index, _)| index)
    .collect();
    for (p, d) in doomed.iter().enumerate() {
        if *d {
            bad.push(p as u32);
        }
    }
    bad.sort_unstable();
    bad.dedup();
    for (file_index, message) in unreadable.into_inner().unwrap_or_default() {
        if !file_problems.iter().any(|p| p.file_index == file_index) {
            file_problems.push(FileProblem {
                file_index,
                path: files[file_index as usize].path.clone(),
                kind: FileProblemKind::Unreadable(message),
            });
        }
    }
    file_problems.sort_by_key(|p| p.file_index);
    Ok(VerifyReport {
        num_pieces,
        bad_pieces: bad,
        file_problems,
    })
}

fn check_geometry(
    files: &[ContentFile],
    piece_length: u64,
    total_length: u64,
) -> Result<u32, StorageError> {
    if piece_length == 0 || piece_length > crate::metainfo::torrent::PIECE_LENGTH_MAX_BYTES {
        return Err(StorageError::Invalid(format!(
            "piece length {piece_length} out of range"
        )));
    }
    let files_end = files.last().map_or(0, |f| f.offset + f.length);
    if files_end != total_length {
        return Err(StorageError::Invalid(format!(
            "files cover {files_end} bytes but the torrent is {total_length} bytes"
        )));
    }
    u32::try_from(total_length.div_ceil(piece_length))
        .map_err(|_| StorageError::Invalid("more than 2^32 - 1 pieces".into()))
}

/// A failed read of one file while hashing a piece.
struct ReadFailure {
    file_index: u32,
    source: io::Error,
}

/// One worker's reading state: the reused piece buffer, extents scratch and open files.
struct PieceReader<'a> {
    files: &'a [ContentFile],
    buffer: Vec<u8>,
    extents: Vec<Extent>,
    open: Vec<(u32, File)>,
}

impl PieceReader<'_> {
    fn error(&self, e: ReadFailure) -> StorageError {
        let path = self.files[e.file_index as usize].path.clone();
        if e.source.kind() == io::ErrorKind::UnexpectedEof {
            let actual_bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            return StorageError::ShortFile {
                path,
                expected_bytes: self.files[e.file_index as usize].length,
                actual_bytes,
            };
        }
        StorageError::Io {
            path,
            source: e.source,
        }
    }

    /// Reads `len` bytes at `torrent_offset` into the buffer and returns the SHA-1.
    fn hash_range(&mut self, torrent_offset: u64, len: u64) -> Result<[u8; 20], ReadFailure> {
        let data = self.read_range(torrent_offset, len)?;
        Ok(Sha1::digest(data).into())
    }

    /// Reads piece `index` (`len` bytes) and checks it against every expected half.
    fn check_piece(
        &mut self,
        index: u32,
        len: u64,
        piece_length: u64,
        expected: &Expected<'_>,
    ) -> Result<bool, ReadFailure> {
        let start = u64::from(index) * piece_length;
        let files = self.files;
        let data = self.read_range(start, len)?;
        if let Some(v1) = expected.v1 {
            let at = index as usize * 20;
            let sha1: [u8; 20] = Sha1::digest(data).into();
            if v1.get(at..at + 20) != Some(&sha1[..]) {
                return Ok(false);
            }
        }
        if let Some(v2) = expected.v2 {
            if let (Some(want), Some(node)) =
                (v2(index), v2_piece_node(files, data, start, piece_length))
            {
                if want != node {
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }

    /// Reads `len` bytes at `torrent_offset` into the buffer (pads as zeros).
    fn read_range(&mut self, torrent_offset: u64, len: u64) -> Result<&[u8], ReadFailure> {
        let len_usize = len as usize;
        // len <= piece length <= PIECE_LENGTH_MAX_BYTES, so it fits the u32 of map_range.
        map_range(self.files, torrent_offset, len as u32, &mut self.extents);
        let mut filled = 0usize;
        for extent in &self.extents {
            let end = filled + extent.len() as usize;
            match *extent {
                Extent::Zero { .. } => self.buffer[filled..end].fill(0),
                Extent::File {
                    file_index,
                    file_offset,
                    ..
                } => {
                    let file = open_cached(&mut self.open, self.files, file_index)?;
                    file.read_exact_at(&mut self.buffer[filled..end], file_offset)
                        .map_err(|source| ReadFailure { file_index, source })?;
                }
            }
            filled = end;
        }
        debug_assert_eq!(filled, len_usize);
        Ok(&self.buffer[..len_usize])
    }
}

/// The v2 node of the piece starting at `start` whose bytes (pads included) are `data`:
/// hashes only the bytes of the one file the piece holds. `None` when no file data starts
/// there (a piece of pads only).
fn v2_piece_node(
    files: &[ContentFile],
    data: &[u8],
    start: u64,
    piece_length: u64,
) -> Option<[u8; 32]> {
    let pos = files.partition_point(|f| f.offset + f.length <= start);
    let file = files.get(pos).filter(|f| !f.pad && f.offset <= start)?;
    let data_len = (file.offset + file.length - start).min(data.len() as u64) as usize;
    let leaves: Vec<[u8; 32]> = data[..data_len]
        .chunks(merkle::BLOCK_LEN_BYTES as usize)
        .map(merkle::leaf_hash)
        .collect();
    Some(merkle::piece_node(&leaves, file.length, piece_length))
}

/// `hash_pieces_v2`'s result: the v2 node of every piece, and the v1 SHA-1s when asked for.
pub type V2PieceHashes = (Vec<[u8; 32]>, Option<Vec<u8>>);

/// Hashes every piece of a v2 or hybrid layout (files piece-aligned, pads as `pad` files):
/// returns the v2 node of every piece (zeros for a piece of pads only) and, when `with_v1`,
/// the v1 SHA-1 hashes too, from the same read. Errors as `hash_pieces`.
pub fn hash_pieces_v2(
    files: &[ContentFile],
    piece_length: u64,
    total_length: u64,
    with_v1: bool,
    threads: usize,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<V2PieceHashes, StorageError> {
    let num_pieces = check_geometry(files, piece_length, total_length)?;
    let first_error: std::sync::Mutex<Option<StorageError>> = std::sync::Mutex::new(None);
    let stop = AtomicBool::new(false);
    let results = run_workers(
        files,
        piece_length,
        total_length,
        threads,
        progress,
        &stop,
        &|_| false,
        |reader, index, len| {
            let start = u64::from(index) * piece_length;
            let files = reader.files;
            match reader.read_range(start, len) {
                Ok(data) => {
                    let node = v2_piece_node(files, data, start, piece_length).unwrap_or([0; 32]);
                    let sha1: Option<[u8; 20]> = with_v1.then(|| Sha1::digest(data).into());
                    Some((index, node, sha1))
                }
                Err(e) => {
                    fail_fast(&stop, &first_error, reader.error(e));
                    None
                }
            }
        },
    );
    first_error_of(first_error)?;
    let mut nodes = vec![[0u8; 32]; num_pieces as usize];
    let mut v1 = with_v1.then(|| vec![0u8; num_pieces as usize * 20]);
    for (index, node, sha1) in results {
        nodes[index as usize] = node;
        if let (Some(v1), Some(sha1)) = (v1.as_mut(), sha1) {
            let at = index as usize * 20;
            v1[at..at + 20].copy_from_slice(&sha1);
        }
    }
    Ok((nodes, v1))
}

fn open_cached<'o>(
    open: &'o mut Vec<(u32, File)>,
    files: &[ContentFile],
    file_index: u32,
) -> Result<&'o File, ReadFailure> {
    if let Some(pos) = open.iter().position(|(i, _)| *i == file_index) {
        return Ok(&open[pos].1);
    }
    let file = open_content(&files[file_index as usize].path)
        .map_err(|source| ReadFailure { file_index, source })?;
    if open.len() >= OPEN_FILES_PER_WORKER_MAX {
        open.remove(0);
    }
    open.push((file_index, file));
    Ok(&open[open.len() - 1].1)
}

/// Runs `threads` workers over every piece not `skip`ped; `on_piece(reader, index, len)`
/// reads and hashes the piece and returns an optional result kept by the worker. Returns all
/// kept results.
#[allow(clippy::too_many_arguments)]
fn run_workers<R, F>(
    files: &[ContentFile],
    piece_length: u64,
    total_length: u64,
    threads: usize,
    progress: &(dyn Fn(u64) + Sync),
    stop: &AtomicBool,
    skip: &(dyn Fn(u32) -> bool + Sync),
    on_piece: F,
) -> Vec<R>
where
    R: Send,
    F: Fn(&mut PieceReader<'_>, u32, u64) -> Option<R> + Sync,
{
    let num_pieces = total_length.div_ceil(piece_length) as u32;
    let threads = if threads == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        threads
    }
    .clamp(1, num_pieces.max(1) as usize);
    let next_piece = AtomicU32::new(0);
    let bytes_done = AtomicU64::new(0);
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let mut reader = PieceReader {
                        files,
                        buffer: vec![0u8; piece_length.min(total_length) as usize],
                        extents: Vec::new(),
                        open: Vec::new(),
                    };
                    let mut kept = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        let index = next_piece.fetch_add(1, Ordering::Relaxed);
                        if index >= num_pieces {
                            break;
                        }
                        let len = piece_len(total_length, piece_length, index);
                        if !skip(index) {
                            if let Some(r) = on_piece(&mut reader, index, len) {
                                kept.push(r);
                            }
                        }
                        progress(bytes_done.fetch_add(len, Ordering::Relaxed) + len);
                    }
                    kept
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| {
                w.join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect()
    })
}

/// A worker hit a read error: stop every worker and keep the first error to report.
fn fail_fast(
    stop: &AtomicBool,
    first_error: &std::sync::Mutex<Option<StorageError>>,
    e: StorageError,
) {
    stop.store(true, Ordering::Relaxed);
    if let Ok(mut slot) = first_error.lock() {
        slot.get_or_insert(e);
    }
}

/// The error `fail_fast` kept, if any, once the workers have joined.
fn first_error_of(first_error: std::sync::Mutex<Option<StorageError>>) -> Result<(), StorageError> {
    match first_error.into_inner().ok().flatten() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::extents::layout;

    fn setup(lens: &[(u64, bool)]) -> (tempfile::TempDir, Vec<ContentFile>, Vec<u8>) {
        let dir = tempfile::tempdir().unwrap();
        let mut stream = Vec::new();
        let mut entries = Vec::new();
        for (i, &(len, pad)) in lens.iter().enumerate() {
            let bytes: Vec<u8> = (0..len)
                .map(|b| if pad { 0 } else { (b * 7 + i as u64) as u8 })
                .collect();
            let path = if pad {
                PathBuf::new()
            } else {
                let p = dir.path().join(format!("f{i}"));
                std::fs::write(&p, &bytes).unwrap();
                p
            };
            stream.extend_from_slice(&bytes);
            entries.push((path, len, pad));
        }
        (dir, layout(entries), stream)
    }

    fn reference(stream: &[u8], piece_length: usize) -> Vec<u8> {
        stream
            .chunks(piece_length)
            .flat_map(|c| <[u8; 20]>::from(Sha1::digest(c)))
            .collect()
    }

    #[test]
    fn hashes_match_single_threaded_reference_with_pads_and_empties() {
        // Proves: parallel hashing over files, an empty file and a pad equals hashing the
        // concatenated stream, for several thread counts; progress reaches the total.
        let (_dir, files, stream) = setup(&[
            (1000, false),
            (0, false),
            (24, true),
            (3000, false),
            (1, false),
        ]);
        let expected = reference(&stream, 512);
        for threads in [1, 2, 3, 0] {
            let done = AtomicU64::new(0);
            let got = hash_pieces(&files, 512, stream.len() as u64, threads, &|d| {
                done.fetch_max(d, Ordering::Relaxed);
            })
            .unwrap();
            assert_eq!(got, expected);
            assert_eq!(done.load(Ordering::Relaxed), stream.len() as u64);
        }
        let report =
            verify_pieces(&files, 512, stream.len() as u64, &expected, 2, &|_| {}).unwrap();
        assert!(report.is_complete());
        assert_eq!(report.have_bitfield(), vec![0xff]);
    }

    #[test]
    fn verify_reports_flipped_missing_and_short_files() {
        // Proves: a flipped byte makes one piece bad; a missing or short file makes its pieces
        // bad and is listed, without an error.
        let (_dir, files, stream) = setup(&[(1024, false), (1024, false), (1024, false)]);
        let expected = reference(&stream, 256);
        let total = stream.len() as u64;
        let mut bytes = std::fs::read(&files[0].path).unwrap();
        bytes[300] ^= 1;
        std::fs::write(&files[0].path, &bytes).unwrap();
        std::fs::remove_file(&files[1].path).unwrap();
        std::fs::write(&files[2].path, &stream[2048..2048 + 600]).unwrap();
        let report = verify_pieces(&files, 256, total, &expected, 2, &|_| {}).unwrap();
        assert_eq!(report.bad_pieces, vec![1, 4, 5, 6, 7, 10, 11]);
        assert_eq!(report.bad_ranges(), vec![(1, 1), (4, 7), (10, 11)]);
        assert_eq!(report.file_problems.len(), 2);
        assert_eq!(report.file_problems[0].kind, FileProblemKind::Missing);
        assert_eq!(
            report.file_problems[1].kind,
            FileProblemKind::WrongSize {
                expected_bytes: 1024,
                actual_bytes: 600
            }
        );
        assert_eq!(report.have_bitfield(), vec![0b1011_0000, 0b1100_0000]);
        assert!(matches!(
            hash_pieces(&files, 256, total, 2, &|_| {}),
            Err(StorageError::Io { .. } | StorageError::ShortFile { .. })
        ));
    }
}
