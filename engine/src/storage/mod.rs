//! Storage: piece/block -> (file, offset) extents, piece hashing on all cores, verification.
//!
//! Owns: the mapping from torrent byte ranges to files, and reading content for hashing.
//! Must never: open content for writing, or follow a path outside the data root (content is
//! opened without following symlinks: see `open_content`).

pub mod extents;
pub mod hasher;
pub mod mapping;

pub use extents::{map_range, ContentFile, Extent};
pub use hasher::{
    hash_pieces, hash_pieces_v2, verify_pieces, verify_pieces_with, verify_torrent_content,
    Expected, FileProblem, FileProblemKind, VerifyReport,
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
///
/// `path` is the canonical path the catalog resolved at load (symlinks inside the data root
/// are resolved then, and ones leaving it refused), so it contains no symlink. A symlink
/// found on it now means the file (or a directory above it) was swapped after the load: the
/// open is refused (ELOOP) rather than serving whatever the link points at. openat2(2) with
/// RESOLVE_NO_SYMLINKS checks every component; without openat2 (Linux < 5.6, or a seccomp
/// filter answering ENOSYS) O_NOFOLLOW still checks the last one.
pub fn open_content(path: &Path) -> io::Result<File> {
    open_content_with(path, 0)
}

/// Largest O_DIRECT alignment `open_content_direct` accepts: the hot-block cache's entries
/// are 16 KiB apart in page-aligned memory, so any power of two up to a page divides them.
pub const DIRECT_IO_ALIGN_MAX_BYTES: u32 = 4096;

/// `STATX_DIOALIGN` (linux/stat.h, Linux 6.1): ask statx for O_DIRECT alignment.
const STATX_DIOALIGN: u32 = 0x2000;

/// Opens a content file like `open_content`, plus O_DIRECT, and returns the alignment (in
/// bytes) its reads need: file offset, length and memory address must all be multiples of
/// it. Fails with `Unsupported` when the filesystem does not do O_DIRECT on this file
/// (statx reports no alignment, or one over `DIRECT_IO_ALIGN_MAX_BYTES`); the caller then
/// reads the file through the page cache.
pub fn open_content_direct(path: &Path) -> io::Result<(File, u32)> {
    use std::os::fd::AsRawFd;
    let file = open_content_with(path, libc::O_DIRECT)?;
    // SAFETY: an all-zero statx is a valid value of this plain C struct.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: statx(fd, "", AT_EMPTY_PATH, mask, &stx) on an fd we own; `stx` is a live,
    // writable statx for the duration of the call, and the path is a NUL-terminated "".
    let rc = unsafe {
        libc::statx(
            file.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            STATX_DIOALIGN,
            &mut stx,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    let align = stx.stx_dio_offset_align.max(stx.stx_dio_mem_align);
    if stx.stx_mask & STATX_DIOALIGN == 0
        || stx.stx_dio_offset_align == 0
        || !align.is_power_of_two()
        || align > DIRECT_IO_ALIGN_MAX_BYTES
    {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!(
                "no usable O_DIRECT alignment on this filesystem (offset {}, memory {})",
                stx.stx_dio_offset_align, stx.stx_dio_mem_align
            ),
        ));
    }
    Ok((file, align))
}

/// `open_content` with `extra_flags` (O_DIRECT) added to the open.
fn open_content_with(path: &Path, extra_flags: i32) -> io::Result<File> {
    use std::os::fd::AsRawFd;
    let base = libc::O_CLOEXEC | extra_flags;
    let file = match open_no_symlinks(path, base | libc::O_NOATIME) {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => open_no_symlinks(path, base),
        other => other,
    }
    .map_err(|e| {
        if e.raw_os_error() == Some(libc::ELOOP) {
            io::Error::new(
                e.kind(),
                format!(
                    "{e}: a symlink is now on this content file's path (replaced after the \
                     catalog was loaded?); it is not followed. Restore the file, or send \
                     SIGHUP to load the catalog again (symlinks leaving the data directory \
                     are refused)"
                ),
            )
        } else {
            e
        }
    })?;
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

/// `struct open_how` of openat2(2) (linux/openat2.h). libc's is `#[non_exhaustive]`, so it
/// cannot be built field by field; this one must keep its exact layout.
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

const _: () = assert!(std::mem::size_of::<OpenHow>() == std::mem::size_of::<libc::open_how>());
const _: () = assert!(std::mem::size_of::<OpenHow>() == 24);

/// Set once openat2 answered ENOSYS, so later opens go straight to the fallback.
static OPENAT2_MISSING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Opens `path` read-only with `flags` added, following no symlink anywhere on it (openat2
/// with RESOLVE_NO_SYMLINKS), else (no openat2) not following a symlink in its last
/// component (O_NOFOLLOW).
fn open_no_symlinks(path: &Path, flags: i32) -> io::Result<File> {
    use std::os::fd::FromRawFd;
    use std::os::unix::ffi::OsStrExt;
    use std::sync::atomic::Ordering;
    // O_NONBLOCK: a content file replaced by a FIFO would otherwise block the shard in
    // open(2) until a writer appears. It is cleared again once the file is known regular
    // (io_uring would return EAGAIN for reads of an O_NONBLOCK file not in the page cache).
    let flags = flags | libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOFOLLOW;
    if !OPENAT2_MISSING.load(Ordering::Relaxed) {
        let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))?;
        let how = OpenHow {
            flags: flags as u64,
            mode: 0,
            resolve: libc::RESOLVE_NO_SYMLINKS,
        };
        // SAFETY: openat2(AT_FDCWD, path, &how, sizeof how): `c_path` is NUL-terminated and
        // `how` is a live `open_how` (layout asserted above) for the duration of the call;
        // the kernel only reads them. It returns a new fd or -1 with errno set.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                libc::AT_FDCWD,
                c_path.as_ptr(),
                &how as *const OpenHow,
                std::mem::size_of::<OpenHow>(),
            )
        };
        if fd >= 0 {
            let fd = i32::try_from(fd).map_err(|_| io::Error::other("openat2: fd out of range"))?;
            // SAFETY: the kernel just gave us this fd; nothing else owns it.
            return Ok(unsafe { File::from_raw_fd(fd) });
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::ENOSYS) => OPENAT2_MISSING.store(true, Ordering::Relaxed),
            // Without O_NOATIME, EPERM can only be a seccomp filter refusing openat2: open
            // as below rather than fail every content file.
            Some(libc::EPERM) if flags & libc::O_NOATIME == 0 => {}
            _ => return Err(e),
        }
    }
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags)
        .open(path)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_content_direct_reports_an_alignment_the_kernel_enforces() {
        // Proves: on a filesystem that does O_DIRECT (ext4 and xfs always do), the file opens
        // with O_DIRECT set, an aligned read returns the file's bytes, and a misaligned one
        // is refused by the kernel (so the alignment reported is the one that matters).
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::FileExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.bin");
        let bytes: Vec<u8> = (0..65536u32).map(|i| (i * 7 + 3) as u8).collect();
        std::fs::write(&path, &bytes).unwrap();
        // SAFETY: statfs on a NUL-terminated path into a zeroed, writable struct.
        let mut sfs: libc::statfs = unsafe { std::mem::zeroed() };
        let c_path = std::ffi::CString::new(dir.path().to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::statfs(c_path.as_ptr(), &mut sfs) }, 0);
        let must_work = matches!(sfs.f_type as i64, 0xEF53 | 0x5846_5342);
        let (file, align) = match open_content_direct(&path) {
            Ok(v) => v,
            Err(e) if !must_work && e.kind() == io::ErrorKind::Unsupported => return,
            Err(e) => panic!("O_DIRECT open failed on an ext4/xfs temp dir: {e}"),
        };
        assert!(align.is_power_of_two() && align <= DIRECT_IO_ALIGN_MAX_BYTES);
        // SAFETY: fcntl F_GETFL on an fd we own.
        let flags = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETFL) };
        assert_ne!(flags & libc::O_DIRECT, 0, "O_DIRECT must stay set");
        assert_eq!(flags & libc::O_NONBLOCK, 0, "O_NONBLOCK must be cleared");
        // A page-aligned buffer: a Vec of 4 KiB-aligned chunks.
        #[repr(C, align(4096))]
        struct Page([u8; 4096]);
        let mut pages: Vec<Page> = (0..2).map(|_| Page([0; 4096])).collect();
        // SAFETY: the Vec holds 2 contiguous 4096-byte pages; the slice covers exactly them.
        let buf = unsafe { std::slice::from_raw_parts_mut(pages.as_mut_ptr().cast::<u8>(), 8192) };
        let n = file.read_at(&mut buf[..4096], 8192).unwrap();
        assert_eq!(n, 4096);
        assert_eq!(&buf[..4096], &bytes[8192..12288]);
        let misaligned = file.read_at(&mut buf[..4096], 8192 + u64::from(align) / 2);
        assert_eq!(
            misaligned.map_err(|e| e.raw_os_error()),
            Err(Some(libc::EINVAL)),
            "the kernel must refuse a read at half the reported alignment"
        );
    }

    #[test]
    fn open_content_refuses_symlinks_anywhere_on_the_path() {
        // Proves: a regular file opens; a symlink as the file itself, or as a directory on
        // its path, is refused with ELOOP and a message that says why, even when the link
        // points at a perfectly readable file.
        let dir = tempfile::tempdir().unwrap();
        let real_dir = dir.path().join("real");
        std::fs::create_dir(&real_dir).unwrap();
        let real = real_dir.join("f.bin");
        std::fs::write(&real, b"content").unwrap();
        assert!(open_content(&real).is_ok());

        let file_link = dir.path().join("link.bin");
        std::os::unix::fs::symlink(&real, &file_link).unwrap();
        let err = open_content(&file_link).unwrap_err();
        assert_eq!(err.raw_os_error().or(Some(libc::ELOOP)), Some(libc::ELOOP));
        assert!(err.to_string().contains("symlink"), "{err}");

        let dir_link = dir.path().join("linkdir");
        std::os::unix::fs::symlink(&real_dir, &dir_link).unwrap();
        let err = open_content(&dir_link.join("f.bin")).unwrap_err();
        assert!(err.to_string().contains("symlink"), "{err}");
    }
}
