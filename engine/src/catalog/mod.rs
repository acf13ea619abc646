//! Catalog: the set of torrents being seeded, indexed by info-hash, with resume state.
//!
//! Owns: loading `*.torrent` from a directory, checking content files, resume state in the
//! state directory (written atomically). Must never: write inside the content directory, keep
//! piece hashes or info bytes in memory (they are re-read from the .torrent on demand, so a
//! 100,000-torrent catalog stays small), or fail a whole load because one torrent is bad.
//!
//! Memory: one `Arc<CatalogTorrent>` per torrent (name, trackers, one `ContentFile` per file
//! with its absolute path, the have-bitfield) plus one index entry. See
//! docs/architecture.md, section Foundation (Catalog), for measured bytes per torrent.
//!
//! Load pipeline: (1) on `hash_threads` workers, each .torrent is read, parsed, its files
//! resolved under the data directory (symlinks must stay inside it), stat'ed, and compared with
//! its resume file; (2) torrents whose files changed (or all, with `VerifyPolicy::Always`) are
//! hashed one after another, each on all hash threads; (3) new resume files are written in one
//! batch.

mod index;
pub mod intern;
pub mod resume;
pub mod store;

use std::collections::HashSet;
use std::fmt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::metainfo::torrent::{self, InfoHash, Torrent};
use crate::storage::extents::layout;
use crate::storage::{verify_torrent_content, ContentFile, VerifyReport};
use intern::{Interner, Trackers};
use resume::{FileStamp, ResumeState};
use store::{Stamp, Store, StoreInfo};

/// One torrent as the shards see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogTorrent {
    /// The 20-byte wire hash (SHA-1 for v1/hybrid, truncated SHA-256 for v2-only).
    pub info_hash: InfoHash,
    /// BEP 52 SHA-256 info-hash (v2 and hybrid); a hybrid is also indexed by its first 20
    /// bytes, which v2 peers send in their handshakes.
    pub info_hash_v2: Option<[u8; 32]>,
    pub name: String,
    pub piece_length: u64,
    pub total_length: u64,
    pub num_pieces: u32,
    pub files: Vec<ContentFile>,
    pub private: bool,
    /// BEP 12 tiers, shared by every torrent of a load that names the same list.
    pub trackers: Trackers,
    pub torrent_path: PathBuf,
    /// BEP 3 bitfield of verified pieces, high bit first.
    pub have: Vec<u8>,
    pub complete: bool,
    /// Length of the raw info dictionary (BEP 9 `metadata_size`), known from the load so
    /// a shard can advertise it without reading the .torrent.
    pub info_len_bytes: u64,
    /// Per file of a multi-file torrent, its BEP 19 URL path segments below the server root,
    /// `[name, dir.., file]`; empty for pad files (never URLs). Empty for a single-file
    /// torrent, whose one URL path is `[name]` (not stored twice): read them through
    /// `url_segments`. The HTTP front-end indexes these; it never builds a path from a URL.
    pub url_paths: Vec<Vec<String>>,
    /// Newest content-file modification time, in seconds since the epoch (HTTP
    /// `Last-Modified`); 0 when unknown.
    pub mtime_secs: i64,
}

impl CatalogTorrent {
    /// BEP 52 v2-only (not hybrid): the wire hash is the truncated SHA-256 one.
    pub fn is_v2_only(&self) -> bool {
        self.info_hash_v2
            .is_some_and(|v2| v2[..20] == self.info_hash.0[..])
    }

    /// Re-reads the .torrent and returns the raw info dictionary (BEP 9 metadata), after
    /// checking it still has this info-hash.
    pub fn read_info_bytes(&self) -> Result<Vec<u8>, CatalogError> {
        Ok(self.read_torrent()?.info_bytes)
    }

    /// Re-reads the .torrent (for piece hashes or info bytes), checking the info-hash.
    pub fn read_torrent(&self) -> Result<Torrent, CatalogError> {
        let bytes = std::fs::read(&self.torrent_path).map_err(|e| CatalogError::Io {
            path: self.torrent_path.clone(),
            message: e.to_string(),
        })?;
        let t = torrent::parse(&bytes).map_err(|e| CatalogError::Torrent {
            path: self.torrent_path.clone(),
            message: e.to_string(),
        })?;
        if t.info_hash != self.info_hash {
            return Err(CatalogError::Torrent {
                path: self.torrent_path.clone(),
                message: format!(
                    "changed on disk: info-hash is now {}, was {}",
                    t.info_hash, self.info_hash
                ),
            });
        }
        Ok(t)
    }

    /// Hashes every piece of the content on `threads` threads against the .torrent (re-read
    /// from disk): v1 pieces by SHA-1, v2 pieces by merkle node, hybrids by both. Used at load
    /// and by the errored-torrent recheck (`control::health`).
    pub fn verify_content(&self, threads: usize) -> Result<VerifyReport, String> {
        let t = self.read_torrent().map_err(|err| err.to_string())?;
        verify_torrent_content(&t, &self.files, threads, &|_| {}).map_err(|err| err.to_string())
    }

    /// Hashes the content again (files stat'ed first, then every piece) and writes the
    /// result to its resume file in `state_dir`, as a load does: a restart or a reload then
    /// keeps what this recheck found instead of the resume state it had before. Used by the
    /// API's recheck of a catalog (directory or zero-config) torrent, off the control thread.
    pub fn recheck(
        &self,
        state_dir: &Path,
        threads: usize,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<CatalogTorrent, String> {
        let t = self.read_torrent().map_err(|e| e.to_string())?;
        let stamps = self
            .files
            .iter()
            .map(|f| {
                if f.pad {
                    return Ok(FileStamp {
                        size_bytes: f.length,
                        mtime_ns: 0,
                    });
                }
                match std::fs::metadata(&f.path) {
                    Ok(m) => Ok(FileStamp {
                        size_bytes: m.len(),
                        mtime_ns: m.mtime() * 1_000_000_000 + m.mtime_nsec(),
                    }),
                    // As at load: an empty file that was never created is fine.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound && f.length == 0 => {
                        Ok(FileStamp {
                            size_bytes: 0,
                            mtime_ns: 0,
                        })
                    }
                    Err(e) => Err(format!("content file {}: {e}", f.path.display())),
                }
            })
            .collect::<Result<Vec<_>, String>>()?;
        let report = verify_torrent_content(&t, &self.files, threads.max(1), progress)
            .map_err(|e| e.to_string())?;
        let mut new = self.clone();
        new.have = report.have_bitfield();
        new.complete = report.is_complete();
        let state = ResumeState {
            num_pieces: new.num_pieces,
            have: new.have.clone(),
            stamps,
        };
        if let Err(e) = resume::write_all(state_dir, &[(new.info_hash, state)]) {
            tracing::warn!("cannot write resume state of {}: {e}", new.info_hash);
        }
        Ok(new)
    }

    /// File `i`'s URL path segments (see `url_paths`); empty for pad files.
    pub fn url_segments(&self, i: usize) -> Vec<&str> {
        if self.url_paths.is_empty() {
            return match self.files.get(i) {
                Some(f) if !f.pad && i == 0 => vec![self.name.as_str()],
                _ => Vec::new(),
            };
        }
        self.url_paths
            .get(i)
            .map_or_else(Vec::new, |p| p.iter().map(String::as_str).collect())
    }

    pub fn has_piece(&self, index: u32) -> bool {
        self.have
            .get(index as usize / 8)
            .is_some_and(|b| b & (0x80 >> (index % 8)) != 0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CatalogError {
    Io { path: PathBuf, message: String },
    Torrent { path: PathBuf, message: String },
}

impl fmt::Display for CatalogError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CatalogError::Io { path, message } => write!(f, "{}: {message}", path.display()),
            CatalogError::Torrent { path, message } => write!(f, "{}: {message}", path.display()),
        }
    }
}

impl std::error::Error for CatalogError {}

/// When to hash content at load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum VerifyPolicy {
    /// Skip hashing when the resume file matches every file's size and mtime (default).
    #[default]
    IfChanged,
    /// Hash everything.
    Always,
    /// Trust the content: every piece is assumed good (sizes are still checked).
    Never,
}

#[derive(Debug, Clone)]
pub struct CatalogOptions {
    pub torrents_dir: PathBuf,
    pub data_dir: PathBuf,
    pub state_dir: PathBuf,
    /// Threads for parsing and hashing; 0 = all cores.
    pub hash_threads: usize,
    pub verify: VerifyPolicy,
}

/// What a load did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadReport {
    pub loaded: usize,
    /// Torrents loaded from resume state without hashing.
    pub resumed: usize,
    /// Torrents hashed during this load.
    pub verified: usize,
    /// Of `resumed`, those taken from the compact catalog store (no .torrent or resume file
    /// read).
    pub from_store: usize,
    /// (torrent file, reason) for each torrent not loaded.
    pub skipped: Vec<(PathBuf, String)>,
}

/// Load progress: (torrents examined, torrents total).
pub type LoadProgress<'a> = &'a (dyn Fn(usize, usize) + Sync);

/// The immutable set of torrents; shards share it read-only through an `Arc`.
#[derive(Debug, Default)]
pub struct Catalog {
    torrents: Vec<Arc<CatalogTorrent>>,
    index: index::HashIndex,
}

/// A torrent after phase 1, waiting for optional verification.
struct Prepared {
    entry: CatalogTorrent,
    stamps: Vec<FileStamp>,
    needs_verify: bool,
    /// Built from the compact store (nothing read or parsed).
    from_store: bool,
    info: StoreInfo,
}

impl Catalog {
    /// Loads every `*.torrent` (sorted by file name) in `opts.torrents_dir`.
    pub fn load(
        opts: &CatalogOptions,
        progress: LoadProgress<'_>,
    ) -> Result<(Catalog, LoadReport), CatalogError> {
        let read_dir = std::fs::read_dir(&opts.torrents_dir).map_err(|e| CatalogError::Io {
            path: opts.torrents_dir.clone(),
            message: e.to_string(),
        })?;
        let mut paths: Vec<PathBuf> = read_dir
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "torrent"))
            .collect();
        // One directory: byte order of the names (component-wise Path ordering costs ~15%
        // of a million-torrent restart and gives the same order here).
        paths.sort_unstable_by(|a, b| a.as_os_str().as_bytes().cmp(b.as_os_str().as_bytes()));
        let data_root = canonical_data_root(&opts.data_dir)?;
        // The compact store (fast path) unless everything is to be hashed anyway.
        let store = match opts.verify {
            VerifyPolicy::Always => None,
            _ => Store::open(&opts.state_dir, &data_root, &opts.torrents_dir),
        };
        let total = paths.len();
        let done = AtomicUsize::new(0);
        let interner = Interner::default();
        let results = parallel_map(&paths, opts.hash_threads, |path| {
            let fast = store
                .as_ref()
                .and_then(|s| s.prepare(path, &data_root, opts.verify, &interner));
            let r = match fast {
                Some(p) => Ok(p),
                None => slow_prepare(path, &data_root, opts, &interner),
            };
            progress(done.fetch_add(1, Ordering::Relaxed) + 1, total);
            r
        });
        // Torrents skipped (bad .torrent, missing content) are in no store: they alone must
        // not make every restart rewrite it.
        let all_from_store = results
            .iter()
            .all(|r| r.as_ref().map_or(true, |p| p.from_store));
        let (catalog, report, kept, own) = finish(paths.into_iter().zip(results).collect(), opts)?;
        let unchanged = store.as_ref().is_some_and(|s| {
            all_from_store && s.len() == catalog.len() && s.journal_entries() == 0
        });
        if !unchanged {
            let rows: Vec<_> = catalog
                .torrents
                .iter()
                .zip(&kept)
                .map(|(e, (info, stamps))| (e.as_ref(), info, stamps.as_slice()))
                .collect();
            let journal_entries = store.as_ref().map_or(0, |s| s.journal_entries());
            drop(store);
            let written = store::write(
                &opts.state_dir,
                &data_root,
                &opts.torrents_dir,
                &rows,
                journal_entries,
                &own,
            );
            if let Err(e) = written {
                // Not fatal: the next start takes the slow path (resume files).
                tracing::warn!("cannot write the catalog store ({e}); the next start is slower");
            }
        }
        release_freed_heap();
        Ok((catalog, report))
    }

    /// A catalog of entries already checked elsewhere (unit tests of code that takes a
    /// catalog). A duplicate info-hash keeps the first entry's index.
    pub fn from_entries(entries: Vec<CatalogTorrent>) -> Catalog {
        let torrents: Vec<_> = entries.into_iter().map(Arc::new).collect();
        Catalog {
            index: index::HashIndex::build(&torrents),
            torrents,
        }
    }

    /// Builds a catalog from torrents already parsed (zero-config `squall seed`), with the
    /// same checks, resume handling and verification as `load`. Each torrent path must stay
    /// readable: piece hashes are re-read from it when verifying. `opts.torrents_dir` is not
    /// used here.
    pub fn from_torrents(
        list: Vec<(Torrent, PathBuf)>,
        opts: &CatalogOptions,
    ) -> Result<(Catalog, LoadReport), CatalogError> {
        let data_root = canonical_data_root(&opts.data_dir)?;
        let interner = Interner::default();
        let results = parallel_map(&list, opts.hash_threads, |(t, path)| {
            prepare(
                t,
                path.clone(),
                &data_root,
                &opts.state_dir,
                opts.verify,
                &interner,
            )
        });
        let (catalog, report, _, _) = finish(
            list.into_iter().map(|(_, p)| p).zip(results).collect(),
            opts,
        )?;
        Ok((catalog, report))
    }

    /// A catalog of torrents already loaded (the runtime API's merge of the directory's
    /// catalog with its own torrents), indexed like `load` does: a hybrid also by its
    /// truncated v2 hash. A duplicate info-hash keeps the first entry.
    pub fn from_loaded(entries: impl IntoIterator<Item = Arc<CatalogTorrent>>) -> Catalog {
        let mut seen = HashSet::new();
        let torrents: Vec<_> = entries
            .into_iter()
            .filter(|e| seen.insert(e.info_hash))
            .collect();
        Catalog {
            index: index::HashIndex::build(&torrents),
            torrents,
        }
    }

    /// One torrent checked as `load` checks it (files resolved under `opts.data_dir`, sizes,
    /// resume state), hashed when `opts.verify` says so on `opts.hash_threads` threads with
    /// `progress` (bytes hashed so far), its resume file written. For the runtime API, which
    /// adds torrents one at a time off the control thread.
    pub fn load_one(
        t: &Torrent,
        torrent_path: PathBuf,
        opts: &CatalogOptions,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<CatalogTorrent, String> {
        let data_root = canonical_data_root(&opts.data_dir).map_err(|e| e.to_string())?;
        let interner = Interner::default();
        let mut p = prepare(
            t,
            torrent_path,
            &data_root,
            &opts.state_dir,
            opts.verify,
            &interner,
        )?;
        if !p.needs_verify {
            return Ok(p.entry);
        }
        let threads = opts.hash_threads.max(1);
        let v = verify_torrent_content(t, &p.entry.files, threads, progress)
            .map_err(|e| e.to_string())?;
        p.entry.have = v.have_bitfield();
        p.entry.complete = v.is_complete();
        let state = ResumeState {
            num_pieces: p.entry.num_pieces,
            have: p.entry.have.clone(),
            stamps: p.stamps,
        };
        if let Err(e) = resume::write_all(&opts.state_dir, &[(p.entry.info_hash, state)]) {
            tracing::warn!("cannot write resume state of {}: {e}", p.entry.info_hash);
        }
        Ok(p.entry)
    }

    pub fn get(&self, info_hash: &InfoHash) -> Option<&Arc<CatalogTorrent>> {
        self.index
            .get(&self.torrents, info_hash)
            .and_then(|i| self.torrents.get(i as usize))
    }

    pub fn torrents(&self) -> &[Arc<CatalogTorrent>] {
        &self.torrents
    }

    pub fn len(&self) -> usize {
        self.torrents.len()
    }

    pub fn is_empty(&self) -> bool {
        self.torrents.is_empty()
    }
}

/// Hands the load's freed temporaries (parsed torrents, paths, store bytes) back to the
/// kernel: without it glibc keeps their pages in RssAnon (see docs/benchmarks.md).
fn release_freed_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free heap pages to the kernel; it has no
    // preconditions and touches no live allocation.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// The slow path for one .torrent: stat, read, parse, `prepare`.
fn slow_prepare(
    path: &Path,
    data_root: &Path,
    opts: &CatalogOptions,
    interner: &Interner,
) -> Result<Prepared, String> {
    // Stat before reading: a file changed in between then mismatches next time.
    let stamp = std::fs::metadata(path)
        .map(|m| Stamp::of(&m))
        .map_err(|e| format!("cannot read: {e}"))?;
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read: {e}"))?;
    let t = torrent::parse(&bytes).map_err(|e| e.to_string())?;
    let mut p = prepare(
        &t,
        path.to_owned(),
        data_root,
        &opts.state_dir,
        opts.verify,
        interner,
    )?;
    p.info.torrent_stamp = Some(stamp);
    Ok(p)
}

fn canonical_data_root(data_dir: &Path) -> Result<PathBuf, CatalogError> {
    std::fs::canonicalize(data_dir).map_err(|e| CatalogError::Io {
        path: data_dir.to_owned(),
        message: format!("data directory unusable: {e}"),
    })
}

/// What `finish` keeps per loaded torrent (aligned with `Catalog::torrents`) for the store.
type Kept = Vec<(StoreInfo, Vec<FileStamp>)>;

/// `finish`'s result: the catalog, the report, what the store needs, and the info-hashes
/// whose resume files this load wrote (and so journaled).
type Finished = (Catalog, LoadReport, Kept, Vec<InfoHash>);

/// Phase 2 and 3: verify what needs it, index, write resume files.
fn finish(
    results: Vec<(PathBuf, Result<Prepared, String>)>,
    opts: &CatalogOptions,
) -> Result<Finished, CatalogError> {
    let mut report = LoadReport::default();
    let mut kept = Vec::with_capacity(results.len());
    // Wire hashes loaded so far (duplicates are skipped); dropped once the index is built.
    let mut seen = HashSet::with_capacity(results.len());
    let mut catalog = Catalog::default();
    let mut resume_writes = Vec::new();
    let mut verifications = verify_needed(&results, opts.hash_threads);
    for ((path, result), verification) in results.into_iter().zip(verifications.iter_mut()) {
        let mut prepared = match result {
            Ok(p) => p,
            Err(reason) => {
                tracing::warn!("skipping torrent {}: {reason}", path.display());
                report.skipped.push((path, reason));
                continue;
            }
        };
        if !seen.insert(prepared.entry.info_hash) {
            let reason = format!(
                "duplicate of an already loaded torrent (info-hash {})",
                prepared.entry.info_hash
            );
            tracing::warn!("skipping torrent {}: {reason}", path.display());
            report.skipped.push((path, reason));
            continue;
        }
        if let Some(verified) = verification.take() {
            let e = &mut prepared.entry;
            match verified {
                Ok(v) => {
                    e.have = v.have_bitfield();
                    e.complete = v.is_complete();
                    if !e.complete {
                        tracing::warn!(
                            "torrent {}: {} of {} pieces failed verification; seeding the rest",
                            path.display(),
                            v.bad_pieces.len(),
                            v.num_pieces
                        );
                    }
                    report.verified += 1;
                    resume_writes.push((
                        e.info_hash,
                        ResumeState {
                            num_pieces: e.num_pieces,
                            have: e.have.clone(),
                            stamps: prepared.stamps.clone(),
                        },
                    ));
                }
                Err(reason) => {
                    tracing::warn!("skipping torrent {}: {reason}", path.display());
                    report.skipped.push((path, reason));
                    continue;
                }
            }
        } else {
            report.resumed += 1;
            report.from_store += usize::from(prepared.from_store);
        }
        catalog.torrents.push(Arc::new(prepared.entry));
        kept.push((prepared.info, prepared.stamps));
    }
    if let Err(e) = resume::write_all(&opts.state_dir, &resume_writes) {
        // Not fatal: seeding goes on from the verified bitfields in memory; only the next
        // start pays, by re-verifying. The old resume files are untouched.
        tracing::warn!(
            "cannot write resume state ({e}); seeding continues, but the next start will \
             re-verify {} torrent(s): free space on (or fix) the filesystem holding {} \
             (squall_resume_write_errors_total counts these failures)",
            resume_writes.len(),
            resume::resume_dir(&opts.state_dir).display()
        );
    }
    drop(seen);
    report.loaded = catalog.torrents.len();
    catalog.torrents.shrink_to_fit();
    // A hybrid answers to both hashes (see `index`).
    catalog.index = index::HashIndex::build(&catalog.torrents);
    let own = resume_writes.iter().map(|(h, _)| *h).collect();
    Ok((catalog, report, kept, own))
}

/// Torrents of at most this many pieces are verified one per thread, many at once; larger
/// ones one at a time on all threads. 100,000 tiny torrents would otherwise cost 100,000
/// rounds of thread start-up.
const SMALL_TORRENT_PIECES_MAX: u32 = 16;

/// Phase 2: hashes every torrent that needs it. Returns, per result, `Some(outcome)` for
/// those hashed and `None` for the rest.
fn verify_needed(
    results: &[(PathBuf, Result<Prepared, String>)],
    hash_threads: usize,
) -> Vec<Option<Result<VerifyReport, String>>> {
    let verify_one = |e: &CatalogTorrent, threads: usize| e.verify_content(threads);
    let needing = |small: bool| -> Vec<usize> {
        results
            .iter()
            .enumerate()
            .filter_map(|(i, (_, r))| match r {
                Ok(p)
                    if p.needs_verify
                        && (p.entry.num_pieces <= SMALL_TORRENT_PIECES_MAX) == small =>
                {
                    Some(i)
                }
                _ => None,
            })
            .collect()
    };
    let entry = |i: usize| match &results[i].1 {
        Ok(p) => Some(&p.entry),
        Err(_) => None,
    };
    let mut out: Vec<Option<Result<VerifyReport, String>>> =
        (0..results.len()).map(|_| None).collect();
    let small = needing(true);
    let small_outcomes = parallel_map(&small, hash_threads, |&i| {
        entry(i).map(|e| verify_one(e, 1))
    });
    for (i, outcome) in small.into_iter().zip(small_outcomes) {
        out[i] = outcome;
    }
    for i in needing(false) {
        out[i] = entry(i).map(|e| verify_one(e, hash_threads));
    }
    out
}

/// Phase 1 for one torrent: resolve and stat files, compare with resume state.
fn prepare(
    t: &Torrent,
    torrent_path: PathBuf,
    data_root: &Path,
    state_dir: &Path,
    policy: VerifyPolicy,
    interner: &Interner,
) -> Result<Prepared, String> {
    let mut stamps = Vec::with_capacity(t.files.len());
    let mut entries = Vec::with_capacity(t.files.len());
    let mut inos = Vec::with_capacity(t.files.len());
    for f in &t.files {
        inos.push(0);
        if f.pad {
            stamps.push(FileStamp {
                size_bytes: f.length,
                mtime_ns: 0,
            });
            entries.push((PathBuf::new(), f.length, true));
            continue;
        }
        let joined = t.file_path_in(data_root, f);
        let real = match std::fs::canonicalize(&joined) {
            Ok(p) => p,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && f.length == 0 => {
                // Empty files are never read; clients often do not create them.
                stamps.push(FileStamp {
                    size_bytes: 0,
                    mtime_ns: 0,
                });
                entries.push((joined, 0, false));
                continue;
            }
            Err(e) => return Err(format!("content file {}: {e}", joined.display())),
        };
        if !real.starts_with(data_root) {
            return Err(format!(
                "content file {} resolves to {}, outside the data directory {} (a symlink escapes it)",
                joined.display(),
                real.display(),
                data_root.display()
            ));
        }
        let meta = std::fs::metadata(&real)
            .map_err(|e| format!("content file {}: {e}", real.display()))?;
        if !meta.is_file() {
            return Err(format!(
                "content file {} is not a regular file",
                real.display()
            ));
        }
        if meta.len() != f.length {
            return Err(format!(
                "content file {} is {} bytes, the torrent says {}",
                real.display(),
                meta.len(),
                f.length
            ));
        }
        stamps.push(FileStamp {
            size_bytes: meta.len(),
            mtime_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
        });
        if let Some(ino) = inos.last_mut() {
            *ino = meta.ino();
        }
        entries.push((real, f.length, false));
    }
    let num_pieces = t.num_pieces();
    let all_have = || all_have(num_pieces);
    let (have, needs_verify) = match policy {
        VerifyPolicy::Never => (all_have(), false),
        VerifyPolicy::Always => (Vec::new(), true),
        VerifyPolicy::IfChanged => match resume::read(state_dir, &t.info_hash) {
            Some(r) if r.num_pieces == num_pieces && r.stamps == stamps => (r.have, false),
            _ => (Vec::new(), true),
        },
    };
    let complete = !needs_verify && have == all_have();
    let trackers = interner.trackers(&t.trackers);
    Ok(Prepared {
        entry: CatalogTorrent {
            info_hash: t.info_hash,
            info_hash_v2: t.info_hash_v2,
            name: t.name.clone(),
            piece_length: t.piece_length,
            total_length: t.total_length,
            num_pieces,
            files: layout(entries),
            private: t.private,
            trackers,
            torrent_path,
            have,
            complete,
            info_len_bytes: t.info_bytes.len() as u64,
            url_paths: url_paths(t),
            mtime_secs: stamps
                .iter()
                .map(|s| s.mtime_ns.div_euclid(1_000_000_000))
                .max()
                .unwrap_or(0),
        },
        stamps,
        needs_verify,
        from_store: false,
        info: StoreInfo {
            torrent_stamp: None,
            multi_file: t.multi_file,
            inos,
        },
    })
}

/// A bitfield with every one of `num_pieces` pieces set.
fn all_have(num_pieces: u32) -> Vec<u8> {
    let mut have = vec![0xffu8; (num_pieces as usize).div_ceil(8)];
    if !num_pieces.is_multiple_of(8) {
        if let Some(last) = have.last_mut() {
            *last = 0xff << (8 - num_pieces % 8);
        }
    }
    have
}

/// Every file's URL segments (see `CatalogTorrent::url_paths`): none for a single-file
/// torrent.
fn url_paths(t: &Torrent) -> Vec<Vec<String>> {
    if !t.multi_file {
        return Vec::new();
    }
    t.files
        .iter()
        .map(|f| match (f.pad, t.multi_file) {
            (true, _) => Vec::new(),
            (false, false) => vec![t.name.clone()],
            (false, true) => std::iter::once(t.name.clone())
                .chain(f.path.iter().cloned())
                .collect(),
        })
        .collect()
}

/// Maps `items` on `threads` workers (0 = all cores), keeping input order.
fn parallel_map<T: Sync, R: Send>(
    items: &[T],
    threads: usize,
    f: impl Fn(&T) -> R + Sync,
) -> Vec<R> {
    let threads = if threads == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        threads
    }
    .clamp(1, items.len().max(1));
    let next = AtomicUsize::new(0);
    let mut indexed: Vec<(usize, R)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let mut out = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(item) = items.get(i) else { break };
                        out.push((i, f(item)));
                    }
                    out
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
    });
    indexed.sort_unstable_by_key(|(i, _)| *i);
    indexed.into_iter().map(|(_, r)| r).collect()
}

#[cfg(test)]
impl CatalogTorrent {
    /// A unit-test torrent: info-hash `[h; 20]`, named "t", one 16 KiB piece held, no files.
    /// Tests change what they need with struct update syntax (`..CatalogTorrent::fixture(h)`),
    /// so a new field touches this one place.
    pub fn fixture(h: u8) -> CatalogTorrent {
        CatalogTorrent {
            info_hash: InfoHash([h; 20]),
            info_hash_v2: None,
            name: "t".into(),
            piece_length: 16384,
            total_length: 1,
            num_pieces: 1,
            files: Vec::new(),
            private: false,
            trackers: Default::default(),
            torrent_path: PathBuf::new(),
            have: vec![0x80],
            complete: true,
            info_len_bytes: 0,
            url_paths: Vec::new(),
            mtime_secs: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::make::make_torrent;
    use crate::metainfo::create::CreateOptions;
    use std::fs;

    pub(super) struct Dirs {
        pub(super) _tmp: tempfile::TempDir,
        pub(super) opts: CatalogOptions,
    }

    /// Empty torrents, data and state directories in a temp dir (also store.rs's tests).
    pub(super) fn dirs() -> Dirs {
        let tmp = tempfile::tempdir().unwrap();
        let opts = CatalogOptions {
            torrents_dir: tmp.path().join("torrents"),
            data_dir: tmp.path().join("data"),
            state_dir: tmp.path().join("state"),
            hash_threads: 2,
            verify: VerifyPolicy::IfChanged,
        };
        for d in [&opts.torrents_dir, &opts.data_dir, &opts.state_dir] {
            fs::create_dir_all(d).unwrap();
        }
        Dirs { _tmp: tmp, opts }
    }

    fn add(d: &Dirs, name: &str, content: &[u8]) -> Torrent {
        let path = d.opts.data_dir.join(name);
        fs::write(&path, content).unwrap();
        let (t, bytes) = make_torrent(&path, &CreateOptions::default(), 1, &|_, _| {}).unwrap();
        fs::write(d.opts.torrents_dir.join(format!("{name}.torrent")), bytes).unwrap();
        t
    }

    #[test]
    fn loads_good_skips_bad_and_resumes() {
        // Proves: good torrents load and are indexed; garbage, missing-content and
        // symlink-escaping torrents are skipped with reasons; a second load uses resume state;
        // a changed file is re-verified and its bad piece leaves the bitfield.
        let d = dirs();
        let good = add(&d, "good.bin", &vec![3u8; 40_000]);
        let gone = add(&d, "gone.bin", b"soon missing");
        fs::remove_file(d.opts.data_dir.join("gone.bin")).unwrap();
        let _esc = add(&d, "esc.bin", b"outside");
        let outside = d.opts.state_dir.join("outside.bin");
        fs::rename(d.opts.data_dir.join("esc.bin"), &outside).unwrap();
        std::os::unix::fs::symlink(&outside, d.opts.data_dir.join("esc.bin")).unwrap();
        fs::write(d.opts.torrents_dir.join("junk.torrent"), b"not bencode").unwrap();

        let (cat, report) = Catalog::load(&d.opts, &|_, _| {}).unwrap();
        assert_eq!((report.loaded, report.verified, report.resumed), (1, 1, 0));
        assert_eq!(report.skipped.len(), 3, "{:?}", report.skipped);
        let reasons: String = report
            .skipped
            .iter()
            .map(|(p, r)| format!("{} {r}\n", p.display()))
            .collect();
        assert!(reasons.contains("outside the data directory"), "{reasons}");
        assert!(reasons.contains("junk.torrent"), "{reasons}");
        assert!(cat.get(&gone.info_hash).is_none());
        let entry = cat.get(&good.info_hash).unwrap();
        assert!(entry.complete && entry.has_piece(2) && !entry.has_piece(3));
        assert_eq!(entry.read_info_bytes().unwrap(), good.info_bytes);
        assert_eq!(entry.files[0].length, 40_000);

        let (cat2, report2) = Catalog::load(&d.opts, &|_, _| {}).unwrap();
        assert_eq!(
            (report2.loaded, report2.verified, report2.resumed),
            (1, 0, 1)
        );
        assert_eq!(cat2.torrents()[0].as_ref(), entry.as_ref());

        // Same size, new bytes and new mtime: must be re-verified, piece 0 now bad.
        let mut bytes = vec![3u8; 40_000];
        bytes[5] = 9;
        std::thread::sleep(std::time::Duration::from_millis(20));
        fs::write(d.opts.data_dir.join("good.bin"), &bytes).unwrap();
        let (cat3, report3) = Catalog::load(&d.opts, &|_, _| {}).unwrap();
        assert_eq!(report3.verified, 1);
        let e3 = cat3.get(&good.info_hash).unwrap();
        assert!(!e3.complete && !e3.has_piece(0) && e3.has_piece(1));
    }

    #[test]
    fn from_torrents_and_never_policy() {
        // Proves: from_torrents builds the same index, and VerifyPolicy::Never trusts content
        // (all pieces set) without hashing.
        let mut d = dirs();
        let t = add(&d, "x.bin", &vec![1u8; 20_000]);
        d.opts.verify = VerifyPolicy::Never;
        let path = d.opts.torrents_dir.join("x.bin.torrent");
        let (cat, report) = Catalog::from_torrents(vec![(t.clone(), path)], &d.opts).unwrap();
        assert_eq!((report.loaded, report.verified), (1, 0));
        let e = cat.get(&t.info_hash).unwrap();
        assert!(e.complete);
        assert_eq!(e.have, vec![0b1100_0000]);
    }

    #[test]
    fn multi_file_with_pad_and_uncreated_empty_file_loads_complete() {
        // Proves: a multi-file torrent loads from <data>/<name>/<path...>, its pad file is never
        // looked for (served as zeros), a missing empty file is accepted, and the piece that
        // spans the pad verifies.
        use crate::metainfo::bencode::{DictBuilder, Value};
        use crate::storage::{map_range, Extent};
        use sha1::{Digest, Sha1};
        let d = dirs();
        let root = d.opts.data_dir.join("multi");
        fs::create_dir_all(root.join("sub")).unwrap();
        fs::write(root.join("a"), b"0123456789").unwrap();
        fs::write(root.join("sub/b"), b"bbbbb").unwrap();
        let mut stream = b"0123456789".to_vec();
        stream.extend_from_slice(&[0; 6]);
        stream.extend_from_slice(b"bbbbb");
        let file = |len: i64, path: &[&str], pad: bool| {
            let mut f = DictBuilder::new().insert("length", Value::Int(len)).insert(
                "path",
                Value::List(path.iter().map(|c| Value::str(c)).collect()),
            );
            if pad {
                f.insert_mut("attr", Value::str("p"));
            }
            f.build()
        };
        let info = DictBuilder::new()
            .insert("name", Value::str("multi"))
            .insert("piece length", Value::Int(16384))
            .insert("pieces", Value::Bytes(Sha1::digest(&stream).to_vec()))
            .insert(
                "files",
                Value::List(vec![
                    file(10, &["a"], false),
                    file(6, &[".pad", "6"], true),
                    file(0, &["empty"], false),
                    file(5, &["sub", "b"], false),
                ]),
            )
            .build();
        let bytes = DictBuilder::new().insert("info", info).build().encode();
        fs::write(d.opts.torrents_dir.join("multi.torrent"), &bytes).unwrap();
        let (cat, report) = Catalog::load(&d.opts, &|_, _| {}).unwrap();
        assert!(report.skipped.is_empty(), "{:?}", report.skipped);
        let e = &cat.torrents()[0];
        assert!(e.complete && e.files[1].pad);
        assert!(e.files[3].path.ends_with("multi/sub/b"));
        let mut out = Vec::new();
        map_range(&e.files, 8, 10, &mut out);
        assert_eq!(out[1], Extent::Zero { len: 6 });
    }
}
