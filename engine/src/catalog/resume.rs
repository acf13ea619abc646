//! Resume state: per torrent, the verified-piece bitfield and each file's size and mtime, so a
//! restart skips hashing torrents whose files did not change.
//!
//! Format: `<state_dir>/resume/<info-hash hex>.resume`, one bencoded dictionary
//! `{v: 1, num_pieces, have: <bitfield bytes>, sizes: [bytes...], mtimes_ns: [ns...]}`
//! (pad and empty files included, in torrent order, so positions line up without names).
//!
//! Owns: encoding, decoding and durably writing resume files. Must never: write anywhere but
//! the state directory, or trust a resume file that does not match the torrent's shape
//! (a mismatch means "verify again", never an error).

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::metainfo::bencode::{self, DictBuilder, Value};
use crate::metainfo::torrent::InfoHash;

const RESUME_VERSION: i64 = 1;

/// Batches up to this size fsync each file; larger ones use one `syncfs`. syncfs also flushes
/// unrelated dirty data on the filesystem (seconds on a busy disk), which only pays off when
/// it replaces many fsyncs, as on a catalog's first load.
const SYNCFS_BATCH_MIN: usize = 64;

/// One file's identity as seen at verification time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FileStamp {
    pub size_bytes: u64,
    pub mtime_ns: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResumeState {
    pub num_pieces: u32,
    pub have: Vec<u8>,
    pub stamps: Vec<FileStamp>,
}

pub fn resume_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("resume")
}

pub fn resume_path(state_dir: &Path, info_hash: &InfoHash) -> PathBuf {
    resume_dir(state_dir).join(format!("{}.resume", info_hash.to_hex()))
}

impl ResumeState {
    pub fn encode(&self) -> Vec<u8> {
        DictBuilder::new()
            .insert("v", Value::Int(RESUME_VERSION))
            .insert("num_pieces", Value::Int(i64::from(self.num_pieces)))
            .insert("have", Value::Bytes(self.have.clone()))
            .insert(
                "sizes",
                Value::List(
                    self.stamps
                        .iter()
                        .map(|s| Value::Int(s.size_bytes as i64))
                        .collect(),
                ),
            )
            .insert(
                "mtimes_ns",
                Value::List(self.stamps.iter().map(|s| Value::Int(s.mtime_ns)).collect()),
            )
            .build()
            .encode()
    }

    /// `None` for anything unexpected: the caller re-verifies.
    pub fn decode(bytes: &[u8]) -> Option<ResumeState> {
        let root = bencode::decode(bytes).ok()?;
        if root.get("v")?.as_int()? != RESUME_VERSION {
            return None;
        }
        let num_pieces = u32::try_from(root.get("num_pieces")?.as_int()?).ok()?;
        let have = root.get("have")?.as_bytes()?.to_vec();
        if have.len() != (num_pieces as usize).div_ceil(8) {
            return None;
        }
        let sizes = root.get("sizes")?.as_list()?;
        let mtimes = root.get("mtimes_ns")?.as_list()?;
        if sizes.len() != mtimes.len() {
            return None;
        }
        let stamps = sizes
            .iter()
            .zip(mtimes)
            .map(|(s, m)| {
                Some(FileStamp {
                    size_bytes: u64::try_from(s.as_int()?).ok()?,
                    mtime_ns: m.as_int()?,
                })
            })
            .collect::<Option<Vec<_>>>()?;
        Some(ResumeState {
            num_pieces,
            have,
            stamps,
        })
    }
}

pub fn read(state_dir: &Path, info_hash: &InfoHash) -> Option<ResumeState> {
    ResumeState::decode(&fs::read(resume_path(state_dir, info_hash)).ok()?)
}

/// Resume writes that failed since the process started (all catalog loads and reloads), for
/// `/metrics`. A process-wide counter because catalog loads run on the control thread, apart
/// from the shards whose stats feed the rest of the metrics.
static WRITE_FAILURES: AtomicU64 = AtomicU64::new(0);

/// How many `write_all` calls failed since start (`squall_resume_write_errors_total`).
pub fn write_failures_total() -> u64 {
    WRITE_FAILURES.load(Ordering::Relaxed)
}

/// Writes many resume files durably with O(1) syncs: every temp file is written, then one
/// `syncfs` flushes them all (small batches fsync each file instead), then each is renamed
/// over its target and the directory is fsynced once. A crash at any point leaves each target
/// either old or new, never torn: the same guarantee as fsync-per-file, which would cost
/// ~100,000 fsyncs on a first load.
///
/// On failure (a full disk: ENOSPC, EDQUOT) every temp file of this batch is removed, so a
/// full state directory does not fill further, and targets not yet renamed keep their old
/// bytes. The error names the file that failed.
pub fn write_all(state_dir: &Path, states: &[(InfoHash, ResumeState)]) -> io::Result<()> {
    if states.is_empty() {
        return Ok(());
    }
    // First tell the compact store these torrents' state changed (see store.rs); a failure
    // here fails the batch like any other write failure.
    let hashes: Vec<InfoHash> = states.iter().map(|(h, _)| *h).collect();
    if let Err(e) = super::store::journal(state_dir, &hashes) {
        WRITE_FAILURES.fetch_add(1, Ordering::Relaxed);
        return Err(io::Error::new(
            e.kind(),
            format!("{}: {e}", state_dir.join("catalog.journal").display()),
        ));
    }
    let mut temps = Vec::with_capacity(states.len());
    let result = write_all_inner(state_dir, states, &mut temps);
    if result.is_err() {
        WRITE_FAILURES.fetch_add(1, Ordering::Relaxed);
        for tmp in &temps {
            // Already renamed ones are gone (NotFound); nothing else can be done here.
            let _ = fs::remove_file(tmp);
        }
    }
    result
}

/// `path: error`, keeping the error's kind (and so ENOSPC stays recognisable).
fn at(path: &Path) -> impl FnOnce(io::Error) -> io::Error + '_ {
    move |e| io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

fn write_all_inner(
    state_dir: &Path,
    states: &[(InfoHash, ResumeState)],
    temps: &mut Vec<PathBuf>,
) -> io::Result<()> {
    let dir = resume_dir(state_dir);
    fs::create_dir_all(&dir).map_err(at(&dir))?;
    let pid = std::process::id();
    let mut renames = Vec::with_capacity(states.len());
    for (hash, state) in states {
        let target = resume_path(state_dir, hash);
        let tmp = dir.join(format!(".{}.{pid}.tmp", hash.to_hex()));
        let mut f = File::create(&tmp).map_err(at(&tmp))?;
        temps.push(tmp.clone());
        f.write_all(&state.encode()).map_err(at(&tmp))?;
        renames.push((tmp, target));
    }
    let dir_file = File::open(&dir).map_err(at(&dir))?;
    if states.len() <= SYNCFS_BATCH_MIN {
        for (tmp, _) in &renames {
            File::open(tmp)
                .and_then(|f| f.sync_all())
                .map_err(at(tmp))?;
        }
    } else {
        sync_filesystem(&dir_file).map_err(at(&dir))?;
    }
    for (tmp, target) in &renames {
        fs::rename(tmp, target).map_err(at(target))?;
    }
    dir_file.sync_all().map_err(at(&dir))
}

fn sync_filesystem(f: &File) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: syncfs takes a file descriptor we own for the duration of the call.
    let rc = unsafe { libc::syncfs(f.as_raw_fd()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_junk() {
        // Proves: encode/decode is identity, written files read back, and junk decodes to None.
        let state = ResumeState {
            num_pieces: 10,
            have: vec![0xff, 0xc0],
            stamps: vec![
                FileStamp {
                    size_bytes: 5,
                    mtime_ns: -3,
                },
                FileStamp {
                    size_bytes: 0,
                    mtime_ns: 7,
                },
            ],
        };
        assert_eq!(ResumeState::decode(&state.encode()), Some(state.clone()));
        assert_eq!(ResumeState::decode(b"garbage"), None);
        let bad = ResumeState {
            num_pieces: 100,
            ..state.clone()
        };
        assert_eq!(ResumeState::decode(&bad.encode()), None);
        let dir = tempfile::tempdir().unwrap();
        let h1 = InfoHash([1; 20]);
        let h2 = InfoHash([2; 20]);
        write_all(dir.path(), &[(h1, state.clone()), (h2, state.clone())]).unwrap();
        write_all(dir.path(), &[(h1, state.clone())]).unwrap();
        assert_eq!(read(dir.path(), &h2), Some(state));
        assert_eq!(fs::read_dir(resume_dir(dir.path())).unwrap().count(), 2);
    }

    #[test]
    fn failed_write_removes_its_temp_files_and_names_the_path() {
        // Proves: when a batch fails part-way (here: a target that is a non-empty directory,
        // so its rename fails), no temp file is left in the state directory, the error names
        // the failing path, the failure is counted, and an untouched target keeps its bytes.
        let dir = tempfile::tempdir().unwrap();
        let state = ResumeState {
            num_pieces: 3,
            have: vec![0xe0],
            stamps: vec![],
        };
        let (h1, h2) = (InfoHash([1; 20]), InfoHash([2; 20]));
        write_all(dir.path(), &[(h2, state.clone())]).unwrap();
        let before = fs::read(resume_path(dir.path(), &h2)).unwrap();
        let blocker = resume_path(dir.path(), &h1);
        fs::create_dir_all(blocker.join("x")).unwrap();
        let failures = write_failures_total();
        let newer = ResumeState {
            have: vec![0x80],
            ..state
        };
        let err = write_all(dir.path(), &[(h1, newer.clone()), (h2, newer)]).unwrap_err();
        assert!(
            err.to_string().contains(&blocker.display().to_string()),
            "{err}"
        );
        assert!(write_failures_total() > failures);
        let names: Vec<String> = fs::read_dir(resume_dir(dir.path()))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().all(|n| !n.ends_with(".tmp")), "{names:?}");
        assert_eq!(fs::read(resume_path(dir.path(), &h2)).unwrap(), before);
    }
}
