//! Compact catalog store: one file, `<state_dir>/catalog.store`, holding for every torrent of
//! a directory catalog what its `CatalogTorrent` needs, the .torrent file's identity (size,
//! mtime, inode), each content file's identity and the verified-piece bitfield. A restart
//! then stats every .torrent and content file (all cores) and skips reading and parsing the
//! .torrent and its resume file when the stamps match: ~1 µs of syscalls per torrent instead
//! of two opens, two reads and a bencode parse.
//!
//! Format (little-endian): `MAGIC`, `u32 STORE_VERSION`, the canonical data root and torrents
//! directory (`u32` length + bytes each), `u64` record count, then records sorted by .torrent
//! file name, each `u32 body length`, `u32 CRC-32 of the body`, body (see `encode_record`).
//! Written whole and atomically (temp file, fsync, rename, directory fsync) when a load found
//! anything the store did not already say.
//!
//! Invalidation journal, `<state_dir>/catalog.journal`: 20-byte info-hashes whose resume state
//! was rewritten outside a catalog load (API recheck, runtime adds). Appended (and fsynced)
//! before each resume write; a record whose hash is in it is not trusted. A load that writes
//! a new store drops from it the hashes journaled while it ran, then truncates the journal.
//!
//! Owns: the store's encoding, decoding, atomic write, the journal, and the fast path that turns
//! a matching record into a `Prepared` torrent. Must never: trust a record whose checksum,
//! version, roots, .torrent stamp or content stamps do not match, or that is journaled (any
//! mismatch is "take the slow path for this torrent", never an error or a panic); follow a
//! symlink out of the data directory; write anywhere but the state directory.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::metainfo::torrent::InfoHash;
use crate::storage::extents::layout;

use super::intern::Interner;
use super::{all_have, resume::FileStamp, CatalogTorrent, Prepared, VerifyPolicy};

const MAGIC: &[u8; 8] = b"SQCATSTO";
const STORE_VERSION: u32 = 1;
const STORE_FILE: &str = "catalog.store";
const JOURNAL_FILE: &str = "catalog.journal";
/// A record longer than this is corrupt (a torrent with ~100,000 files and long paths fits).
const RECORD_MAX_BYTES: usize = 64 << 20;

/// One file's identity: size, modification time and inode. A file replaced by another of the
/// same size and mtime (rename over it) still differs by inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stamp {
    pub size_bytes: u64,
    pub mtime_ns: i64,
    pub ino: u64,
}

impl Stamp {
    pub fn of(m: &fs::Metadata) -> Stamp {
        Stamp {
            size_bytes: m.len(),
            mtime_ns: m.mtime() * 1_000_000_000 + m.mtime_nsec(),
            ino: m.ino(),
        }
    }
}

/// What a load keeps about one torrent beyond its `CatalogTorrent`, so it can be stored.
#[derive(Debug, Clone, Default)]
pub struct StoreInfo {
    /// The .torrent's identity when it was read (`None`: not from a torrents directory).
    pub torrent_stamp: Option<Stamp>,
    pub multi_file: bool,
    /// Per file: its inode (0 for pad and absent empty files).
    pub inos: Vec<u64>,
}

/// Serialises journal appends and the load's "drop what was journaled, truncate" step.
static JOURNAL_LOCK: Mutex<()> = Mutex::new(());

fn store_path(state_dir: &Path) -> PathBuf {
    state_dir.join(STORE_FILE)
}

fn journal_path(state_dir: &Path) -> PathBuf {
    state_dir.join(JOURNAL_FILE)
}

/// Records `hashes` as "resume state rewritten": the store must not be trusted for them.
/// Called before each resume write (see `resume::write_all`).
pub fn journal(state_dir: &Path, hashes: &[InfoHash]) -> io::Result<()> {
    if hashes.is_empty() {
        return Ok(());
    }
    let _guard = JOURNAL_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let mut bytes = Vec::with_capacity(hashes.len() * 20);
    for h in hashes {
        bytes.extend_from_slice(&h.0);
    }
    let mut f = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(journal_path(state_dir))?;
    f.write_all(&bytes)?;
    f.sync_data()
}

/// The journal's hashes, in order (a damaged tail shorter than one hash is ignored).
fn read_journal(state_dir: &Path) -> Vec<InfoHash> {
    let mut bytes = Vec::new();
    if let Ok(mut f) = File::open(journal_path(state_dir)) {
        if f.read_to_end(&mut bytes).is_err() {
            bytes.clear();
        }
    }
    bytes
        .chunks_exact(20)
        .map(|c| {
            let mut h = [0u8; 20];
            h.copy_from_slice(c);
            InfoHash(h)
        })
        .collect()
}

/// A store read at the start of a load: the file's bytes and where each record is.
pub struct Store {
    /// The torrents directory and data root, open: stats go through `fstatat` on these, one
    /// path component each instead of walking the whole path (half the kernel time at 1M).
    torrents_fd: File,
    data_fd: File,
    bytes: Vec<u8>,
    /// (file name range, body range, crc) per record, sorted by file name.
    records: Vec<(std::ops::Range<usize>, std::ops::Range<usize>, u32)>,
    journaled: HashSet<InfoHash>,
    /// Journal entries when the store was read.
    journal_entries: usize,
}

impl Store {
    /// Reads the store of `state_dir` if it exists and was written for these directories;
    /// `None` otherwise (or when damaged in its header or framing: every torrent then takes
    /// the slow path).
    pub fn open(state_dir: &Path, data_root: &Path, torrents_dir: &Path) -> Option<Store> {
        let journal = read_journal(state_dir);
        let journal_entries = journal.len();
        let journaled = journal.into_iter().collect();
        let bytes = fs::read(store_path(state_dir)).ok()?;
        let torrents_dir = fs::canonicalize(torrents_dir).ok()?;
        let mut r = Reader::new(&bytes);
        if r.take(8)? != MAGIC || r.u32()? != STORE_VERSION {
            return None;
        }
        if r.bytes32()? != data_root.as_os_str().as_bytes()
            || r.bytes32()? != torrents_dir.as_os_str().as_bytes()
        {
            return None;
        }
        let count = r.u64()?;
        let mut records = Vec::with_capacity(usize::try_from(count).ok()?.min(bytes.len() / 16));
        for _ in 0..count {
            let len = r.u32()? as usize;
            let crc = r.u32()?;
            if len > RECORD_MAX_BYTES {
                return None;
            }
            let start = r.pos;
            let body = r.take(len)?;
            let name_len = u16::from_le_bytes([*body.first()?, *body.get(1)?]) as usize;
            if name_len + 2 > len {
                return None;
            }
            records.push((start + 2..start + 2 + name_len, start..start + len, crc));
        }
        if r.pos != bytes.len() {
            return None;
        }
        Some(Store {
            torrents_fd: File::open(&torrents_dir).ok()?,
            data_fd: File::open(data_root).ok()?,
            bytes,
            records,
            journaled,
            journal_entries,
        })
    }

    /// The record for the .torrent named `file_name`, if any.
    fn find(&self, file_name: &[u8]) -> Option<&[u8]> {
        let i = self
            .records
            .binary_search_by(|(name, _, _)| self.bytes[name.clone()].cmp(file_name))
            .ok()?;
        let (_, body, crc) = &self.records[i];
        let body = &self.bytes[body.clone()];
        (crc32fast::hash(body) == *crc).then_some(body)
    }

    /// The fast path: `Some` when the store has a record for `torrent_path` whose .torrent
    /// and content stamps still match; `None` means "load it the slow way".
    pub(super) fn prepare(
        &self,
        torrent_path: &Path,
        data_root: &Path,
        policy: VerifyPolicy,
        interner: &Interner,
    ) -> Option<Prepared> {
        let name = torrent_path.file_name()?.as_bytes();
        let rec = decode_record(self.find(name)?)?;
        if self.journaled.contains(&rec.entry.info_hash) {
            return None;
        }
        if stat_at(&self.torrents_fd, name, true)?.0 != rec.torrent_stamp {
            return None;
        }
        let mut entries = Vec::with_capacity(rec.files.len());
        let mut stamps = Vec::with_capacity(rec.files.len());
        let mut inos = Vec::with_capacity(rec.files.len());
        for f in &rec.files {
            let (path, stamp) = check_file(f, &rec, data_root, &self.data_fd)?;
            entries.push((path, f.length, f.pad));
            stamps.push(FileStamp {
                size_bytes: stamp.size_bytes,
                mtime_ns: stamp.mtime_ns,
            });
            inos.push(stamp.ino);
        }
        let mut entry = rec.entry;
        entry.trackers = interner.trackers(&rec.trackers);
        entry.files = layout(entries);
        entry.torrent_path = torrent_path.to_owned();
        entry.url_paths = url_paths_of(&entry.name, rec.multi_file, &rec.files);
        if policy == VerifyPolicy::Never || rec.have.is_none() {
            entry.have = all_have(entry.num_pieces);
            entry.complete = true;
        } else {
            entry.have = rec.have?;
            entry.complete = entry.have == all_have(entry.num_pieces);
        }
        Some(Prepared {
            entry,
            stamps,
            needs_verify: false,
            from_store: true,
            info: StoreInfo {
                torrent_stamp: Some(rec.torrent_stamp),
                multi_file: rec.multi_file,
                inos,
            },
        })
    }
}

/// Re-checks one stored content file: the path the first load resolved (no symlink on the
/// way, or the same resolution again) and the same stamp. Returns its path and stamp.
fn check_file(
    f: &StoredFile,
    rec: &Record,
    data_root: &Path,
    data_fd: &File,
) -> Option<(PathBuf, Stamp)> {
    if f.pad {
        return Some((PathBuf::new(), Stamp::default()));
    }
    let joined = joined_path(data_root, &rec.entry.name, rec.multi_file, &f.components);
    if f.absent {
        // An empty file no client created: it must still be absent.
        return match fs::symlink_metadata(&joined) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Some((joined, Stamp::default())),
            _ => None,
        };
    }
    let real = data_root.join(Path::new(std::ffi::OsStr::from_bytes(&f.real_rel)));
    let direct = !rec.multi_file && real == joined;
    if direct {
        // `<data>/<name>` itself, not a symlink: nothing on the way can leave the data root.
        let (stamp, regular) = stat_at(data_fd, &f.real_rel, false)?;
        return (regular && stamp == f.stamp && stamp.size_bytes == f.length)
            .then_some((real, stamp));
    }
    let meta = {
        // Directories or symlinks on the way: resolve again, as the first load did.
        let resolved = fs::canonicalize(&joined).ok()?;
        if resolved != real || !resolved.starts_with(data_root) {
            return None;
        }
        let m = fs::metadata(&resolved).ok()?;
        if !m.is_file() {
            return None;
        }
        m
    };
    let stamp = Stamp::of(&meta);
    (stamp == f.stamp && stamp.size_bytes == f.length).then_some((real, stamp))
}

/// `fstatat(2)` of `name` (one path component) in the open directory `dir`, following a
/// final symlink or not: its stamp and whether it is a regular file. `None` on any error.
fn stat_at(dir: &File, name: &[u8], follow: bool) -> Option<(Stamp, bool)> {
    use std::os::fd::AsRawFd;
    if name.is_empty() || name.contains(&b'/') {
        return None;
    }
    let c = std::ffi::CString::new(name).ok()?;
    let flags = if follow { 0 } else { libc::AT_SYMLINK_NOFOLLOW };
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `dir` is an open directory we own for the call, `c` is NUL-terminated and
    // outlives it, and `st` points to writable memory of the right type.
    let rc = unsafe { libc::fstatat(dir.as_raw_fd(), c.as_ptr(), st.as_mut_ptr(), flags) };
    if rc != 0 {
        return None;
    }
    // SAFETY: fstatat returned 0, so the kernel filled `st` in.
    let st = unsafe { st.assume_init() };
    let stamp = Stamp {
        size_bytes: u64::try_from(st.st_size).ok()?,
        mtime_ns: st.st_mtime * 1_000_000_000 + st.st_mtime_nsec,
        ino: st.st_ino,
    };
    Some((stamp, st.st_mode & libc::S_IFMT == libc::S_IFREG))
}

fn joined_path(data_root: &Path, name: &str, multi_file: bool, components: &[String]) -> PathBuf {
    let mut p = data_root.join(name);
    if multi_file {
        for c in components {
            p.push(c);
        }
    }
    p
}

/// BEP 19 URL segments (see `CatalogTorrent::url_paths`).
fn url_paths_of(name: &str, multi_file: bool, files: &[StoredFile]) -> Vec<Vec<String>> {
    if !multi_file {
        return Vec::new();
    }
    files
        .iter()
        .map(|f| match (f.pad, multi_file) {
            (true, _) => Vec::new(),
            (false, false) => vec![name.to_owned()],
            (false, true) => std::iter::once(name.to_owned())
                .chain(f.components.iter().cloned())
                .collect(),
        })
        .collect()
}

struct StoredFile {
    pad: bool,
    /// Empty file that did not exist at load (clients often do not create them).
    absent: bool,
    length: u64,
    /// Path below the torrent's root (multi-file only).
    components: Vec<String>,
    /// The resolved path relative to the data root.
    real_rel: Vec<u8>,
    stamp: Stamp,
}

struct Record {
    torrent_stamp: Stamp,
    multi_file: bool,
    /// `None`: every piece verified.
    have: Option<Vec<u8>>,
    files: Vec<StoredFile>,
    trackers: Vec<Vec<String>>,
    /// Everything but files, torrent path, have, trackers and url paths (filled in by
    /// `prepare`).
    entry: CatalogTorrent,
}

fn put_u16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_le_bytes());
}
fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}
fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}
fn put_bytes16(out: &mut Vec<u8>, b: &[u8]) -> Option<()> {
    put_u16(out, u16::try_from(b.len()).ok()?);
    out.extend_from_slice(b);
    Some(())
}
fn put_bytes32(out: &mut Vec<u8>, b: &[u8]) -> Option<()> {
    put_u32(out, u32::try_from(b.len()).ok()?);
    out.extend_from_slice(b);
    Some(())
}
fn put_stamp(out: &mut Vec<u8>, s: &Stamp) {
    put_u64(out, s.size_bytes);
    put_u64(out, s.mtime_ns as u64);
    put_u64(out, s.ino);
}

/// One record's body; `None` when a field does not fit the format (that torrent is then
/// not stored and takes the slow path next time).
fn encode_record(
    e: &CatalogTorrent,
    info: &StoreInfo,
    stamps: &[FileStamp],
    data_root: &Path,
) -> Option<Vec<u8>> {
    let torrent_stamp = info.torrent_stamp?;
    let file_name = e.torrent_path.file_name()?.as_bytes();
    if stamps.len() != e.files.len() || info.inos.len() != e.files.len() {
        return None;
    }
    let mut out = Vec::with_capacity(128 + e.name.len() + e.have.len());
    put_bytes16(&mut out, file_name)?;
    put_stamp(&mut out, &torrent_stamp);
    out.extend_from_slice(&e.info_hash.0);
    match &e.info_hash_v2 {
        Some(v2) => {
            out.push(1);
            out.extend_from_slice(v2);
        }
        None => out.push(0),
    }
    put_bytes16(&mut out, e.name.as_bytes())?;
    put_u64(&mut out, e.piece_length);
    put_u64(&mut out, e.total_length);
    put_u32(&mut out, e.num_pieces);
    out.push(u8::from(e.private) | u8::from(info.multi_file) << 1 | u8::from(e.complete) << 2);
    put_u64(&mut out, e.info_len_bytes);
    put_u64(&mut out, e.mtime_secs as u64);
    put_u16(&mut out, u16::try_from(e.trackers.len()).ok()?);
    for tier in e.trackers.iter() {
        put_u16(&mut out, u16::try_from(tier.len()).ok()?);
        for url in tier {
            put_bytes16(&mut out, url.as_bytes())?;
        }
    }
    put_u32(&mut out, u32::try_from(e.files.len()).ok()?);
    for (i, f) in e.files.iter().enumerate() {
        let absent = !f.pad && stamps[i] == FileStamp::default() && info.inos[i] == 0;
        out.push(u8::from(f.pad) | u8::from(absent) << 1);
        put_u64(&mut out, f.length);
        let components: &[String] = match (f.pad, info.multi_file) {
            (false, true) => e
                .url_paths
                .get(i)
                .map_or(&[][..], |p| p.get(1..).unwrap_or(&[])),
            _ => &[],
        };
        put_u16(&mut out, u16::try_from(components.len()).ok()?);
        for c in components {
            put_bytes16(&mut out, c.as_bytes())?;
        }
        let real_rel = if f.pad || absent {
            &[][..]
        } else {
            f.path.strip_prefix(data_root).ok()?.as_os_str().as_bytes()
        };
        put_bytes32(&mut out, real_rel)?;
        put_stamp(
            &mut out,
            &Stamp {
                size_bytes: stamps[i].size_bytes,
                mtime_ns: stamps[i].mtime_ns,
                ino: info.inos[i],
            },
        );
    }
    if e.complete {
        put_u32(&mut out, u32::MAX);
    } else {
        put_bytes32(&mut out, &e.have)?;
    }
    Some(out)
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader { bytes, pos: 0 }
    }
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let s = self.bytes.get(self.pos..end)?;
        self.pos = end;
        Some(s)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.take(2)?.try_into().ok()?))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn bytes16(&mut self) -> Option<&'a [u8]> {
        let n = self.u16()? as usize;
        self.take(n)
    }
    fn bytes32(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    fn string16(&mut self) -> Option<String> {
        String::from_utf8(self.bytes16()?.to_vec()).ok()
    }
    fn stamp(&mut self) -> Option<Stamp> {
        Some(Stamp {
            size_bytes: self.u64()?,
            mtime_ns: self.u64()? as i64,
            ino: self.u64()?,
        })
    }
}

/// Decodes one record body (checksum already checked); `None` for anything inconsistent.
fn decode_record(body: &[u8]) -> Option<Record> {
    let mut r = Reader::new(body);
    r.bytes16()?; // file name, matched by `find`
    let torrent_stamp = r.stamp()?;
    let mut hash = [0u8; 20];
    hash.copy_from_slice(r.take(20)?);
    let info_hash_v2 = match r.u8()? {
        0 => None,
        1 => Some(<[u8; 32]>::try_from(r.take(32)?).ok()?),
        _ => return None,
    };
    let name = r.string16()?;
    let piece_length = r.u64()?;
    let total_length = r.u64()?;
    let num_pieces = r.u32()?;
    let flags = r.u8()?;
    let info_len_bytes = r.u64()?;
    let mtime_secs = r.u64()? as i64;
    if piece_length == 0 || total_length.div_ceil(piece_length) != u64::from(num_pieces) {
        return None;
    }
    let tiers = r.u16()?;
    let mut trackers = Vec::with_capacity(tiers as usize);
    for _ in 0..tiers {
        let n = r.u16()?;
        let mut tier = Vec::with_capacity(n as usize);
        for _ in 0..n {
            tier.push(r.string16()?);
        }
        trackers.push(tier);
    }
    let multi_file = flags & 2 != 0;
    let nfiles = r.u32()? as usize;
    let mut files = Vec::with_capacity(nfiles.min(body.len() / 32));
    let mut sum = 0u64;
    for _ in 0..nfiles {
        let fflags = r.u8()?;
        let length = r.u64()?;
        let ncomp = r.u16()?;
        let mut components = Vec::with_capacity(ncomp as usize);
        for _ in 0..ncomp {
            let c = r.string16()?;
            // The same rule as the .torrent parser: one plain component each.
            if c.is_empty() || c == "." || c == ".." || c.contains('/') || c.contains('\0') {
                return None;
            }
            components.push(c);
        }
        let real_rel = r.bytes32()?.to_vec();
        if Path::new(std::ffi::OsStr::from_bytes(&real_rel))
            .components()
            .any(|c| !matches!(c, std::path::Component::Normal(_)))
        {
            return None;
        }
        let stamp = r.stamp()?;
        sum = sum.checked_add(length)?;
        files.push(StoredFile {
            pad: fflags & 1 != 0,
            absent: fflags & 2 != 0,
            length,
            components,
            real_rel,
            stamp,
        });
    }
    if sum != total_length
        || name.is_empty()
        || name.contains('/')
        || name == ".."
        || (!multi_file && files.len() != 1)
    {
        return None;
    }
    let have = match r.u32()? {
        u32::MAX => None,
        n => {
            let have = r.take(n as usize)?.to_vec();
            if have.len() != (num_pieces as usize).div_ceil(8) {
                return None;
            }
            Some(have)
        }
    };
    if r.pos != body.len() {
        return None;
    }
    Some(Record {
        torrent_stamp,
        multi_file,
        have,
        files,
        trackers,
        entry: CatalogTorrent {
            info_hash: InfoHash(hash),
            info_hash_v2,
            name,
            piece_length,
            total_length,
            num_pieces,
            files: Vec::new(),
            private: flags & 1 != 0,
            trackers: Default::default(),
            torrent_path: PathBuf::new(),
            have: Vec::new(),
            complete: flags & 4 != 0,
            info_len_bytes,
            url_paths: Vec::new(),
            mtime_secs,
        },
    })
}

/// Writes a new store for `torrents` (entry, its stamps, its store info), sorted by file
/// name, atomically; then empties the journal. Hashes journaled since the load read it
/// (entry `journal_entries` on), beyond the one entry per hash in `own` that the load's own
/// resume writes added, were rewritten by someone else meanwhile (an API recheck): their
/// records are left out, so the next load reads their resume files.
pub fn write(
    state_dir: &Path,
    data_root: &Path,
    torrents_dir: &Path,
    torrents: &[(&CatalogTorrent, &StoreInfo, &[FileStamp])],
    journal_entries: usize,
    own: &[InfoHash],
) -> io::Result<()> {
    let torrents_dir = fs::canonicalize(torrents_dir)?;
    let _guard = JOURNAL_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let mut counts: std::collections::HashMap<InfoHash, i64> = std::collections::HashMap::new();
    for h in read_journal(state_dir).into_iter().skip(journal_entries) {
        *counts.entry(h).or_default() += 1;
    }
    for h in own {
        if let Some(n) = counts.get_mut(h) {
            *n -= 1;
        }
    }
    let late: HashSet<InfoHash> = counts
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .map(|(h, _)| h)
        .collect();
    let mut records: Vec<Vec<u8>> = torrents
        .iter()
        .filter(|(e, _, _)| !late.contains(&e.info_hash))
        .filter_map(|(e, info, stamps)| encode_record(e, info, stamps, data_root))
        .collect();
    records.sort_unstable_by(|a, b| record_name(a).cmp(record_name(b)));
    records.dedup_by(|a, b| record_name(a) == record_name(b));
    let mut out = Vec::with_capacity(64 + records.iter().map(|r| r.len() + 8).sum::<usize>());
    out.extend_from_slice(MAGIC);
    put_u32(&mut out, STORE_VERSION);
    let bad = || io::Error::new(io::ErrorKind::InvalidInput, "path too long for the store");
    put_bytes32(&mut out, data_root.as_os_str().as_bytes()).ok_or_else(bad)?;
    put_bytes32(&mut out, torrents_dir.as_os_str().as_bytes()).ok_or_else(bad)?;
    put_u64(&mut out, records.len() as u64);
    for r in &records {
        put_u32(&mut out, r.len() as u32);
        put_u32(&mut out, crc32fast::hash(r));
        out.extend_from_slice(r);
    }
    drop(records);
    fs::create_dir_all(state_dir)?;
    let target = store_path(state_dir);
    let tmp = state_dir.join(format!(".{STORE_FILE}.{}.tmp", std::process::id()));
    let written = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(&out)?;
        f.sync_all()?;
        fs::rename(&tmp, &target)?;
        File::open(state_dir)?.sync_all()
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(io::Error::new(
            e.kind(),
            format!("{}: {e}", target.display()),
        ));
    }
    // Every journaled hash is now either in the store with what this load saw, or left out.
    match fs::remove_file(journal_path(state_dir)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

fn record_name(body: &[u8]) -> &[u8] {
    let n = u16::from_le_bytes([body[0], body[1]]) as usize;
    &body[2..2 + n]
}

impl Store {
    /// Journal entries when this store was read (see `write`).
    pub fn journal_entries(&self) -> usize {
        self.journal_entries
    }

    /// Records in the store.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{dirs, Dirs};
    use super::super::Catalog;
    use super::*;
    use crate::make::make_torrent;
    use crate::metainfo::create::CreateOptions;
    use proptest::prelude::*;

    fn add(d: &Dirs, name: &str, content: &[u8], tracker: Option<&str>) {
        fs::write(d.opts.data_dir.join(name), content).unwrap();
        retorrent(d, name, tracker);
    }

    /// (Re)writes the .torrent of `<data>/name`, leaving the content as it is.
    fn retorrent(d: &Dirs, name: &str, tracker: Option<&str>) {
        let path = d.opts.data_dir.join(name);
        let mut co = CreateOptions::default();
        if let Some(t) = tracker {
            co.trackers = vec![vec![t.to_owned()]];
        }
        let (_, bytes) = make_torrent(&path, &co, 1, &|_, _| {}).unwrap();
        fs::write(d.opts.torrents_dir.join(format!("{name}.torrent")), bytes).unwrap();
    }

    fn load(d: &Dirs) -> (Catalog, super::super::LoadReport) {
        Catalog::load(&d.opts, &|_, _| {}).unwrap()
    }

    fn entries(c: &Catalog) -> Vec<CatalogTorrent> {
        c.torrents().iter().map(|t| t.as_ref().clone()).collect()
    }

    /// Three single-file torrents (one with a tracker, one partial after a damaged byte) and
    /// a multi-file one with a sub-directory.
    fn catalog() -> Dirs {
        let d = dirs();
        add(
            &d,
            "a.bin",
            &vec![1u8; 40_000],
            Some("http://127.0.0.1:6969/announce"),
        );
        add(&d, "b.bin", b"bee", None);
        add(&d, "c.bin", &vec![7u8; 50_000], None);
        let mut damaged = vec![7u8; 50_000];
        damaged[20_000] = 0;
        fs::write(d.opts.data_dir.join("c.bin"), damaged).unwrap();
        let root = d.opts.data_dir.join("m");
        fs::create_dir_all(root.join("sub")).unwrap();
        fs::write(root.join("x"), vec![5u8; 30_000]).unwrap();
        fs::write(root.join("sub/y"), b"why").unwrap();
        let (_, bytes) = make_torrent(&root, &CreateOptions::default(), 1, &|_, _| {}).unwrap();
        fs::write(d.opts.torrents_dir.join("m.torrent"), bytes).unwrap();
        d
    }

    #[test]
    fn restart_from_the_store_equals_the_slow_path() {
        // Proves: the first load writes the store; the second takes every torrent from it
        // (nothing hashed) and builds entries identical to the slow path's, partial bitfields
        // and multi-file paths included; an unchanged restart does not rewrite the store, even
        // with a bad .torrent in the directory (skipped each time, never stored).
        let d = catalog();
        fs::write(d.opts.torrents_dir.join("junk.torrent"), b"not bencode").unwrap();
        let (first, r1) = load(&d);
        assert_eq!((r1.loaded, r1.verified, r1.from_store), (4, 4, 0));
        assert_eq!(r1.skipped.len(), 1);
        let c = first.torrents().iter().find(|t| t.name == "c.bin").unwrap();
        assert!(!c.complete && !c.has_piece(1) && c.has_piece(0));
        let store_file = d.opts.state_dir.join(STORE_FILE);
        let written = fs::metadata(&store_file).unwrap().modified().unwrap();
        let (second, r2) = load(&d);
        assert_eq!((r2.loaded, r2.verified, r2.from_store), (4, 0, 4));
        assert_eq!(entries(&second), entries(&first));
        assert_eq!(
            fs::metadata(&store_file).unwrap().modified().unwrap(),
            written
        );
        // The slow path from resume files (store gone) agrees too, and migrates.
        fs::remove_file(&store_file).unwrap();
        let (third, r3) = load(&d);
        assert_eq!((r3.verified, r3.from_store, r3.resumed), (0, 0, 4));
        assert_eq!(entries(&third), entries(&first));
        assert!(store_file.exists());
    }

    #[test]
    fn changed_torrent_or_content_is_not_trusted() {
        // Proves: a .torrent rewritten (new tracker, same name) is parsed again; a content
        // file with new bytes (same size, new mtime) is hashed again and its bad piece
        // dropped; a content file swapped for a symlink is resolved again (and refused when it
        // leaves the data directory); a removed torrent leaves the store.
        let d = catalog();
        load(&d);
        retorrent(&d, "b.bin", Some("http://127.0.0.1:7000/announce"));
        let mut bytes = vec![1u8; 40_000];
        bytes[3] = 2;
        std::thread::sleep(std::time::Duration::from_millis(20));
        fs::write(d.opts.data_dir.join("a.bin"), &bytes).unwrap();
        let outside = d.opts.state_dir.join("outside");
        fs::write(&outside, vec![5u8; 30_000]).unwrap();
        fs::remove_file(d.opts.data_dir.join("m/x")).unwrap();
        std::os::unix::fs::symlink(&outside, d.opts.data_dir.join("m/x")).unwrap();
        fs::remove_file(d.opts.torrents_dir.join("c.bin.torrent")).unwrap();
        let (cat, r) = load(&d);
        assert_eq!((r.loaded, r.verified, r.from_store), (2, 1, 0), "{r:?}");
        assert_eq!(r.skipped.len(), 1, "{r:?}");
        assert!(r.skipped[0].1.contains("outside the data directory"));
        let by = |n: &str| cat.torrents().iter().find(|t| t.name == n).unwrap().clone();
        assert_eq!(by("b.bin").trackers[0][0], "http://127.0.0.1:7000/announce");
        let a = by("a.bin");
        assert!(!a.has_piece(0) && a.has_piece(1));
        let (again, r2) = load(&d);
        assert_eq!((r2.loaded, r2.verified, r2.from_store), (2, 0, 2));
        assert_eq!(entries(&again), entries(&cat));
    }

    #[test]
    fn recheck_journals_and_the_store_follows() {
        // Proves: a resume write outside a load (an API recheck) is journaled, so the next
        // load reads that torrent's resume file instead of the stale record, then rewrites the
        // store and empties the journal.
        let d = catalog();
        let (cat, _) = load(&d);
        let c = cat.torrents().iter().find(|t| t.name == "c.bin").unwrap();
        let mut fixed = c.as_ref().clone();
        fixed.have = super::super::all_have(fixed.num_pieces);
        fixed.complete = true;
        let state = super::super::resume::ResumeState {
            num_pieces: fixed.num_pieces,
            have: fixed.have.clone(),
            stamps: vec![
                super::super::resume::read(&d.opts.state_dir, &fixed.info_hash)
                    .unwrap()
                    .stamps[0],
            ],
        };
        super::super::resume::write_all(&d.opts.state_dir, &[(fixed.info_hash, state)]).unwrap();
        assert!(d.opts.state_dir.join(JOURNAL_FILE).exists());
        let (next, r) = load(&d);
        assert_eq!((r.verified, r.from_store), (0, 3));
        assert!(next.get(&fixed.info_hash).unwrap().complete);
        assert!(!d.opts.state_dir.join(JOURNAL_FILE).exists());
        let (_, r2) = load(&d);
        assert_eq!(r2.from_store, 4);
    }

    #[test]
    fn other_directories_or_verify_always_ignore_the_store() {
        // Proves: a store written for another data directory is not used, and
        // VerifyPolicy::Always hashes everything whatever the store says.
        let mut d = catalog();
        load(&d);
        d.opts.verify = VerifyPolicy::Always;
        let (_, r) = load(&d);
        assert_eq!((r.verified, r.from_store), (4, 0));
        d.opts.verify = VerifyPolicy::IfChanged;
        let other = d.opts.state_dir.parent().unwrap().join("data2");
        std::os::unix::fs::symlink(&d.opts.data_dir, &other).unwrap();
        fs::rename(
            &d.opts.data_dir,
            d.opts.state_dir.parent().unwrap().join("data3"),
        )
        .unwrap();
        fs::remove_file(&other).unwrap();
        std::os::unix::fs::symlink(d.opts.state_dir.parent().unwrap().join("data3"), &other)
            .unwrap();
        d.opts.data_dir = other;
        let (cat, r2) = load(&d);
        assert_eq!((r2.loaded, r2.from_store), (4, 0), "{r2:?}");
        assert!(cat.torrents().iter().all(|t| t.files[0]
            .path
            .starts_with(d.opts.state_dir.parent().unwrap().join("data3"))));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn corrupt_store_falls_back_never_panics(
            flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
            cut in proptest::option::of(any::<prop::sample::Index>()),
        ) {
            // Proves: whatever bytes of the store are flipped or cut off, a load neither
            // errors nor panics and builds the same catalog as the slow path.
            let d = catalog();
            let (first, _) = load(&d);
            let path = d.opts.state_dir.join(STORE_FILE);
            let mut bytes = fs::read(&path).unwrap();
            for (i, x) in &flips {
                let i = i.index(bytes.len());
                bytes[i] ^= x | 1;
            }
            if let Some(c) = cut {
                bytes.truncate(c.index(bytes.len()));
            }
            fs::write(&path, &bytes).unwrap();
            let (cat, r) = load(&d);
            prop_assert_eq!(r.loaded, 4);
            prop_assert_eq!(entries(&cat), entries(&first));
        }
    }

    #[test]
    fn hostile_record_bodies_decode_to_none_or_a_consistent_record() {
        // Proves: record bodies with a valid checksum but hostile contents (path components
        // that climb out, lengths that do not add up) are rejected by decode_record.
        let d = catalog();
        let (cat, _) = load(&d);
        let data_root = fs::canonicalize(&d.opts.data_dir).unwrap();
        let m = cat.torrents().iter().find(|t| t.name == "m").unwrap();
        let info = StoreInfo {
            torrent_stamp: Some(Stamp::default()),
            multi_file: true,
            inos: vec![1; m.files.len()],
        };
        let stamps = vec![FileStamp::default(); m.files.len()];
        let good = encode_record(m, &info, &stamps, &data_root).unwrap();
        assert!(decode_record(&good).is_some());
        let mut evil = m.as_ref().clone();
        evil.url_paths[0] = vec!["m".into(), "..".into()];
        assert!(
            decode_record(&encode_record(&evil, &info, &stamps, &data_root).unwrap()).is_none()
        );
        let mut short = m.as_ref().clone();
        short.total_length += 1;
        assert!(
            decode_record(&encode_record(&short, &info, &stamps, &data_root).unwrap()).is_none()
        );
        for n in 0..good.len() {
            let _ = decode_record(&good[..n]);
        }
    }
}
