//! End-to-end: engine knobs against real libtorrent downloads from the real `squall`
//! binary: `direct_io` (O_DIRECT reads into the hot-block cache; `"auto"` choosing it from
//! the memory budget), `page_cache_sends`
//! (blocks sent from file mappings), `piece_readahead` (fadvise WILLNEED), `idle_poll_usecs`, and `multishot_recv` with a receive buffer ring so
//! small that it runs dry all the time.
//!
//! direct_io:
//! The content is a multi-file torrent whose second file starts at an unaligned torrent
//! offset and whose files end mid-block, so both paths of direct_io run: aligned block reads
//! with O_DIRECT, and unaligned extents and file tails through the page cache.
//!
//! The buffered run also sets `idle_poll_usecs` (poll the ring before sleeping), so that
//! loop path serves a real client too.
//!
//! What the page cache holds is read with mincore(2) after dropping the files' pages with
//! fadvise(DONTNEED): a buffered seeder leaves the served file resident, an O_DIRECT one
//! must not.

mod common;

use common::*;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const BIG_BYTES: usize = (24 << 20) + 12_345;
const SMALL_BYTES: usize = (5 << 20) + 777;

/// Fraction of `path`'s pages in the page cache now (mincore on a read-only mapping).
fn resident_fraction(path: &Path) -> f64 {
    let file = std::fs::File::open(path).unwrap();
    let len = file.metadata().unwrap().len() as usize;
    let page = 4096usize;
    let pages = len.div_ceil(page);
    // SAFETY: a read-only shared mapping of a file we hold open, of its exact length; it is
    // only passed to mincore and unmapped below, never dereferenced.
    let addr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            0,
        )
    };
    assert_ne!(addr, libc::MAP_FAILED, "mmap {}", path.display());
    let mut vec = vec![0u8; pages];
    // SAFETY: `addr` maps `len` bytes (page aligned); `vec` has one byte per page.
    let rc = unsafe { libc::mincore(addr, len, vec.as_mut_ptr()) };
    // SAFETY: unmapping exactly the mapping made above.
    unsafe { libc::munmap(addr, len) };
    assert_eq!(rc, 0, "mincore {}", path.display());
    vec.iter().filter(|b| *b & 1 == 1).count() as f64 / pages as f64
}

/// Asks the kernel to drop `path`'s pages from the page cache (no root needed).
fn drop_from_page_cache(path: &Path) {
    let file = std::fs::File::open(path).unwrap();
    // Dirty pages (the file was just written) are not dropped: write them back first.
    file.sync_all().unwrap();
    // SAFETY: posix_fadvise on an fd we hold open; it only advises the kernel.
    let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    assert_eq!(rc, 0);
}

/// statfs magic of `dir`'s filesystem is one that always does O_DIRECT (ext4, xfs).
fn fs_does_direct_io(dir: &Path) -> bool {
    let c_path = std::ffi::CString::new(dir.to_str().unwrap()).unwrap();
    // SAFETY: statfs on a NUL-terminated path into a zeroed, writable struct.
    let mut sfs: libc::statfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statfs(c_path.as_ptr(), &mut sfs) }, 0);
    matches!(sfs.f_type as i64, 0xEF53 | 0x5846_5342)
}

/// Starts `squall seed` on `torrents`/`content` with the TOML `config` (written under `dir`),
/// one shard, the admin endpoint on a free port.
fn start_seeder(dir: &Path, torrents: &Path, content: &Path, config: &str) -> SquallProcess {
    std::fs::create_dir_all(dir).unwrap();
    let cfg = write_config(dir, config);
    SeedArgs::catalog(torrents, content)
        .config(&cfg)
        .state(&dir.join("state"))
        .shards(1)
        .admin()
        .start()
}

/// /stats `total` once the shards' snapshots (sent every second) count `bytes` uploaded.
fn total_after_upload(admin: std::net::SocketAddr, bytes: u64) -> serde_json::Value {
    wait_for(Duration::from_secs(10), "the upload in /stats", || {
        let (status, body) = http_get(admin, "/stats");
        assert_eq!(status, 200);
        let v: serde_json::Value = serde_json::from_str(&body).expect("/stats is JSON");
        let uploaded = v["total"]["uploaded_bytes"].as_u64().unwrap_or(0);
        (uploaded >= bytes).then(|| v["total"].clone())
    })
}

/// Downloads `torrent` from `squall` with libtorrent into `save`, checks that `saved` (the
/// download's copy) is byte-identical to `source`, and returns /stats `total` once it counts
/// `bytes` uploaded.
fn download_checked(
    squall: &SquallProcess,
    torrent: &Path,
    save: &Path,
    (source, saved): (&Path, &Path),
    bytes: u64,
) -> serde_json::Value {
    let admin = squall.admin.expect("no admin line");
    let r = lt_download(Source::Torrent(torrent), save, &squall.peer(), &[]);
    assert!(r.ok, "{}", r.json);
    assert_same_tree(source, saved);
    total_after_upload(admin, bytes)
}

/// Seeds `content` with `config`, drops the content from the page cache, downloads it with
/// libtorrent, checks the bytes, and returns (/stats total, resident fraction of big.bin).
fn seed_and_download(
    dir: &Path,
    content: &Path,
    torrents: &Path,
    label: &str,
    config: &str,
) -> (serde_json::Value, f64) {
    let squall = start_seeder(&dir.join(format!("run-{label}")), torrents, content, config);
    let admin = squall.admin.expect("no admin line");
    // Loading hashed the content through the page cache: drop it, and check it is gone, so
    // what is resident after the download is what serving put there.
    let multi = content.join("multi");
    let big = multi.join("big.bin");
    for f in ["big.bin", "small.bin"] {
        drop_from_page_cache(&multi.join(f));
    }
    let before = resident_fraction(&big);
    assert!(
        before < 0.05,
        "fadvise(DONTNEED) left {before:.2} of big.bin resident"
    );
    let save = dir.join(format!("dl-{label}"));
    let r = lt_download(
        Source::Torrent(&torrents.join("multi.torrent")),
        &save,
        &squall.peer(),
        &[],
    );
    assert!(r.ok, "{label}: {}", r.json);
    // Measured before the comparison below reads the source through the page cache.
    let resident = resident_fraction(&big);
    assert_same_tree(&multi, &save.join("multi"));
    let total = total_after_upload(admin, (BIG_BYTES + SMALL_BYTES) as u64);
    let (code, _) = squall.terminate();
    assert_eq!(code, Some(0), "{label}: squall exit");
    (total, resident)
}

/// One two-file torrent ("multi") under `dir`: big.bin, then small.bin starting at an
/// unaligned torrent offset, so one block straddles the two files. 256 KiB pieces (the
/// automatic length would be one block): 16 blocks per piece, so a piece's first block has
/// a rest to read ahead. Returns (content dir, torrents dir).
fn make_multi(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let content = dir.join("content");
    write_file(
        &content.join("multi/big.bin"),
        &pattern_bytes(BIG_BYTES, 91),
    );
    write_file(
        &content.join("multi/small.bin"),
        &pattern_bytes(SMALL_BYTES, 92),
    );
    let torrents = dir.join("torrents");
    std::fs::create_dir_all(&torrents).unwrap();
    squall_make(
        &content.join("multi"),
        &torrents.join("multi.torrent"),
        &["--piece-length", "256K"],
    );
    (content, torrents)
}

/// Proves: with `direct_io = true` a libtorrent download is byte-identical, aligned block
/// reads go through O_DIRECT and the unaligned ones (the second file's start, both files'
/// tails) fall back and are counted, and serving leaves big.bin out of the page cache; the
/// same download buffered (default config) leaves it resident and issues readahead hints.
#[test]
fn direct_io_serves_identical_bytes_without_filling_the_page_cache() {
    if !libtorrent_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (content, torrents) = make_multi(dir.path());

    let (buffered, buffered_resident) = seed_and_download(
        dir.path(),
        &content,
        &torrents,
        "buffered",
        "[engine]\nidle_poll_usecs = 50\n",
    );
    assert_eq!(buffered["direct_io"], false);
    assert_eq!(
        buffered["multishot_recv"], true,
        "multishot_recv is on by default"
    );
    assert_eq!(buffered["direct_reads"], 0);
    assert_eq!(
        buffered["page_cache_sends_on"], true,
        "page_cache_sends is on by default"
    );
    assert!(
        buffered["readaheads"].as_u64().unwrap_or(0) > 0,
        "piece_readahead is on by default: {buffered}"
    );
    assert!(
        buffered_resident > 0.9,
        "a buffered seeder leaves what it served in the page cache ({buffered_resident:.2})"
    );

    let direct_config = "[engine]\ndirect_io = true\nblock_cache_bytes_per_shard = 67108864\n";
    let (direct, direct_resident) =
        seed_and_download(dir.path(), &content, &torrents, "direct", direct_config);
    if !fs_does_direct_io(dir.path()) {
        // tmpfs and friends: squall must still serve (checked above), buffered and counted.
        assert!(
            direct["direct_open_failures"].as_u64().unwrap_or(0) > 0,
            "{direct}"
        );
        return;
    }
    assert_eq!(direct["direct_io"], true, "{direct}");
    assert_eq!(
        direct["page_cache_sends_on"], false,
        "direct_io rules out sends from the page cache: {direct}"
    );
    assert_eq!(direct["page_cache_sends"], 0, "{direct}");
    assert_eq!(direct["direct_open_failures"], 0, "{direct}");
    assert_eq!(
        direct["readaheads"], 0,
        "no readahead hints with O_DIRECT: {direct}"
    );
    let direct_reads = direct["direct_reads"].as_u64().unwrap_or(0);
    let fallbacks = direct["direct_read_fallbacks"].as_u64().unwrap_or(0);
    // Every whole block of big.bin is aligned; small.bin's blocks (unaligned start) and
    // big.bin's tail are not. A block libtorrent asks for twice may be a cache hit.
    let aligned_blocks = (BIG_BYTES / (16 << 10)) as u64;
    assert!(
        direct_reads >= aligned_blocks * 9 / 10 && direct_reads <= aligned_blocks * 2,
        "{direct_reads} O_DIRECT block reads for {aligned_blocks} aligned blocks: {direct}"
    );
    assert!(fallbacks > 0, "unaligned extents must fall back: {direct}");
    assert!(
        direct_resident < 0.1,
        "O_DIRECT serving left {direct_resident:.2} of big.bin in the page cache"
    );
}

/// Proves: `direct_io = "auto"` (the default) picks O_DIRECT when the catalog (29 MiB here)
/// is larger than the memory budget, and the page cache when it fits, on the real binary
/// with real files; the budget is injected with `direct_io_memory_budget_bytes` (it is
/// otherwise the cgroup's limit or MemAvailable). Both serve byte-identical downloads.
#[test]
fn direct_io_auto_picks_each_mode_from_the_memory_budget() {
    if !libtorrent_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (content, torrents) = make_multi(dir.path());
    let fits = "[engine]\ndirect_io = \"auto\"\ndirect_io_memory_budget_bytes = 1073741824\n";
    let (buffered, _) = seed_and_download(dir.path(), &content, &torrents, "auto-fits", fits);
    assert_eq!(buffered["direct_io"], false, "{buffered}");
    assert_eq!(buffered["direct_reads"], 0, "{buffered}");
    assert_eq!(buffered["page_cache_sends_on"], true, "{buffered}");
    // 24 MiB of budget for 29 MiB of catalog: direct, into the 16 MiB cache set here.
    let outgrows = "[engine]\ndirect_io = \"auto\"\ndirect_io_memory_budget_bytes = 25165824\n\
                    block_cache_bytes_per_shard = 16777216\n";
    let (direct, resident) =
        seed_and_download(dir.path(), &content, &torrents, "auto-outgrows", outgrows);
    if !fs_does_direct_io(dir.path()) {
        return; // tmpfs: O_DIRECT opens fail and are counted (the test above)
    }
    assert_eq!(direct["direct_io"], true, "{direct}");
    assert_eq!(direct["page_cache_sends_on"], false, "{direct}");
    assert!(direct["direct_reads"].as_u64().unwrap_or(0) > 0, "{direct}");
    assert!(
        resident < 0.1,
        "auto-direct left {resident:.2} of big.bin cached"
    );
}

/// Proves: with the content in the page cache and no hot-block cache, `page_cache_sends`
/// serves a libtorrent download byte-identical, sending the blocks that lie in one file
/// from that file's mapping (counted) and reading the one block that straddles big.bin and
/// small.bin; with it off, every block is read and none is counted.
#[test]
fn page_cache_sends_serve_resident_blocks_from_file_mappings() {
    if !libtorrent_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (content, torrents) = make_multi(dir.path());
    let multi = content.join("multi");
    let blocks = (BIG_BYTES + SMALL_BYTES).div_ceil(16 << 10) as u64;
    for (label, on) in [("mapped", true), ("read", false)] {
        let config =
            format!("[engine]\nblock_cache_bytes_per_shard = 0\npage_cache_sends = {on}\n");
        let run = dir.path().join(format!("run-{label}"));
        let squall = start_seeder(&run, &torrents, &content, &config);
        // Loading hashed the content: it is resident now (a tmp dir may be tmpfs, which
        // keeps it resident anyway).
        let save = dir.path().join(format!("dl-{label}"));
        let total = download_checked(
            &squall,
            &torrents.join("multi.torrent"),
            &save,
            (&multi, &save.join("multi")),
            (BIG_BYTES + SMALL_BYTES) as u64,
        );
        let (code, _) = squall.terminate();
        assert_eq!(code, Some(0), "{label}: squall exit");
        assert_eq!(total["page_cache_sends_on"], on, "{total}");
        assert_eq!(total["map_failures"], 0, "{total}");
        assert_eq!(total["page_cache_send_faults"], 0, "{total}");
        assert_eq!(total["disk_errors"], 0, "{total}");
        let sent = total["page_cache_sends"].as_u64().unwrap_or(0);
        let served = total["blocks_served"].as_u64().unwrap_or(0);
        assert!(
            served >= blocks,
            "{served} blocks served for {blocks}: {total}"
        );
        if on {
            // All but the straddling block (libtorrent may ask for a block twice).
            assert!(
                sent >= blocks - 1 && sent < served,
                "{sent} page-cache sends of {served} blocks served ({blocks} in the torrent): {total}"
            );
        } else {
            assert_eq!(sent, 0, "{total}");
        }
    }
}

/// Proves: run as a user that neither owns nor may write the content (uid 65534 on
/// root-owned files), squall does not send from mappings, because Linux's mincore then
/// calls every page resident and a send could fault pages in from disk on the shard's
/// thread: each such file is counted in `map_failures`, none is sent from the page cache,
/// and a libtorrent download is still byte-identical (read path).
#[test]
fn page_cache_sends_skip_files_whose_residency_is_hidden() {
    if !libtorrent_available()
        || !tool_available(
            "setpriv to uid 65534 (needs root)",
            Command::new("setpriv").args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "true",
            ]),
        )
    {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (content, torrents) = make_multi(dir.path());
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    // uid 65534 may traverse and read everything, and write only its state directory.
    for p in [dir.path(), &content, &content.join("multi"), &torrents] {
        Command::new("chmod").arg("755").arg(p).status().unwrap();
    }
    for f in ["multi/big.bin", "multi/small.bin"] {
        Command::new("chmod")
            .arg("644")
            .arg(content.join(f))
            .status()
            .unwrap();
    }
    Command::new("chmod")
        .arg("-R")
        .arg("a+r")
        .arg(&torrents)
        .status()
        .unwrap();
    Command::new("chown")
        .arg("65534:65534")
        .arg(&state)
        .status()
        .unwrap();
    let config = write_config(dir.path(), "[engine]\npage_cache_sends = true\n");
    Command::new("chmod")
        .arg("644")
        .arg(&config)
        .status()
        .unwrap();
    let squall = SeedArgs::catalog(&torrents, &content)
        .config(&config)
        .state(&state)
        .shards(1)
        .admin()
        .start_under(&[
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
        ]);
    let save = dir.path().join("dl");
    let total = download_checked(
        &squall,
        &torrents.join("multi.torrent"),
        &save,
        (&content.join("multi"), &save.join("multi")),
        (BIG_BYTES + SMALL_BYTES) as u64,
    );
    let stderr: Vec<String> = squall.stderr_lines.try_iter().collect();
    let (code, _) = squall.terminate();
    assert_eq!(code, Some(0));
    assert_eq!(total["page_cache_sends_on"], true, "{total}");
    assert_eq!(total["page_cache_sends"], 0, "{total}");
    assert!(
        total["map_failures"].as_u64().unwrap_or(0) >= 2,
        "both files counted: {total}"
    );
    assert_eq!(total["mapped_bytes"], 0, "{total}");
    assert!(
        stderr.iter().any(|l| l.contains("cannot see which pages")),
        "the warning says why: {stderr:?}"
    );
}

/// Proves: with a receive buffer ring of one 64-byte buffer, libtorrent's request bursts
/// keep emptying it, so the kernel keeps ending the multishot recv (-ENOBUFS); each end is
/// counted and re-armed, no byte of a request is lost (the download completes and is
/// byte-identical), and the peer is never closed for it.
#[test]
fn multishot_recv_survives_an_exhausted_buffer_ring() {
    if !libtorrent_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let content = dir.path().join("content");
    write_file(
        &content.join("one.bin"),
        &pattern_bytes((8 << 20) + 4321, 93),
    );
    let torrents = dir.path().join("torrents");
    std::fs::create_dir_all(&torrents).unwrap();
    squall_make(&content.join("one.bin"), &torrents.join("one.torrent"), &[]);
    let squall = start_seeder(
        &dir.path().join("run"),
        &torrents,
        &content,
        "[engine]\nmultishot_recv = true\nrecv_buffers_per_shard = 1\nrecv_buffer_bytes = 64\n",
    );
    let save = dir.path().join("dl");
    let total = download_checked(
        &squall,
        &torrents.join("one.torrent"),
        &save,
        (&content, &save),
        8 << 20,
    );
    assert_eq!(total["multishot_recv"], true, "{total}");
    assert!(
        total["recv_buffers_exhausted"].as_u64().unwrap_or(0) > 0,
        "one 64-byte buffer must run dry: {total}"
    );
    for reason in ["socket_error", "malformed_message", "protocol_violation"] {
        assert_eq!(total["peers_closed"][reason], 0, "{reason}: {total}");
    }
    let (code, _) = squall.terminate();
    assert_eq!(code, Some(0));
}
