//! Storage: piece/block -> (file, offset) extents, piece hashing on all cores, verification.
//!
//! Owns: the mapping from torrent byte ranges to files, and reading content for hashing.
//! Must never: open content for writing, or follow a path outside the data root.

pub mod extents;
pub mod hasher;

pub use extents::{map_range, ContentFile, Extent};
pub use hasher::{
    hash_pieces, hash_pieces_v2, verify_pieces, verify_pieces_with, Expected, FileProblem,
    FileProblemKind, VerifyReport,
};

use std::fmt;
use std::fs::File;
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Why reading content failed in a way the caller must hear about (verification turns
/// missing and short files into bad pieces instead).
#[derive(Debug)]
pub enum StorageError {
    Io {
        path: PathBuf,
        source: io::Error,
    },
    /// A file ended before the length the torrent gives it.
    ShortFile {
        path: PathBuf,
        expected_bytes: u64,
        actual_bytes: u64,
    },
    Invalid(String),
}

impl fmt::Display for StorageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StorageError::Io { path, source } => write!(f, "{}: {source}", path.display()),
            StorageError::ShortFile { path, expected_bytes, actual_bytes } => write!(
                f,
                "{}: file is {actual_bytes} bytes but should be {expected_bytes} (did it change while being read?)",
                path.display()
            ),
            StorageError::Invalid(s) => f.write_str(s),
        }
    }
}

impl std::error::Error for StorageError {}

/// Opens a content file read-only (O_RDONLY | O_CLOEXEC, plus O_NOATIME so seeding does not
/// dirty inodes; O_NOATIME needs file ownership or CAP_FOWNER, so EPERM retries without it).
pub fn open_content(path: &Path) -> io::Result<File> {
    use std::os::fd::AsRawFd;
    // O_NONBLOCK: a content file replaced by a FIFO would otherwise block the shard in
    // open(2) until a writer appears. It is cleared again once the file is known regular
    // (io_uring would return EAGAIN for reads of an O_NONBLOCK file not in the page cache).
    let open = |flags: i32| {
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(flags | libc::O_NONBLOCK)
            .open(path)
    };
    let file = match open(libc::O_CLOEXEC | libc::O_NOATIME) {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => open(libc::O_CLOEXEC),
        other => other,
    }?;
    if !file.metadata()?.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file (a directory, FIFO or device replaced the content file?)",
        ));
    }
    let fd = file.as_raw_fd();
    // SAFETY: fcntl on an fd we own.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    // SAFETY: as above.
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(file)
}

/// Writes a state file atomically: temp file in the same directory, fsync, rename, fsync the
/// directory. A crash leaves the old file or the new one, never half of either.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => std::path::PathBuf::from("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        File::open(&dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
