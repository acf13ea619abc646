//! Faults while seeding: a content file of one torrent is truncated, deleted, replaced by a
//! directory or replaced by a FIFO under the running `squall seed`. Behaviour these tests pin
//! down: the request that hits the broken file closes its peer with `disk_error`
//! (`squall_peers_closed_total{reason="disk_error"}`, `squall_disk_errors_total`, a warning
//! naming the file) and marks the torrent errored (/stats `errored_torrents` with a reason
//! naming the file, `squall_torrents_errored`); while errored its requests are rejected
//! (`requests_rejected{reason="torrent_errored"}`: BEP 6 reject, or a choke without the fast
//! extension); peers of other torrents are served throughout; once the file is restored the
//! periodic recheck (`errored_recheck_secs`, 1 s here) clears the state and the torrent is
//! served again, without a restart.
//!
//! chmod 000 does not stop root, so "unreadable" is modelled by a FIFO and a directory in the
//! file's place (both fail the engine's regular-file check at open).

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

const FILE_BYTES: usize = 4 << 20;
const BLOCK: u32 = 16384;

fn hex20(s: &str) -> [u8; 20] {
    let mut out = [0u8; 20];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).expect("hex info-hash");
    }
    out
}

fn frame(id: u8, payload: &[u8]) -> Vec<u8> {
    let mut v = ((payload.len() + 1) as u32).to_be_bytes().to_vec();
    v.push(id);
    v.extend_from_slice(payload);
    v
}

/// What a raw peer got for one block request.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Served(Vec<u8>),
    Closed,
    /// BEP 6 reject (fast-extension peers).
    Rejected,
    /// Choked after the request (peers without the fast extension).
    Choked,
}

/// Handshakes for `info_hash`, asks for block `b` (piece length = 16 KiB here), and reports
/// whether the block came back or squall closed the connection.
fn fetch_block(addr: SocketAddr, info_hash: [u8; 20], b: u32) -> Outcome {
    fetch_block_as(addr, info_hash, b, false)
}

/// `fetch_block`, as a peer with (`fast`) or without the BEP 6 fast extension.
fn fetch_block_as(addr: SocketAddr, info_hash: [u8; 20], b: u32, fast: bool) -> Outcome {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(8))).unwrap();
    let hs = squall_engine::wire::Handshake::new(info_hash, *b"-FT0001-faults-peer1", false, fast);
    let mut out = hs.to_bytes().to_vec();
    out.extend_from_slice(&frame(2, &[]));
    let mut req = Vec::new();
    req.extend_from_slice(&b.to_be_bytes());
    req.extend_from_slice(&0u32.to_be_bytes());
    req.extend_from_slice(&BLOCK.to_be_bytes());
    let _ = s.write_all(&out);
    let mut buf = Vec::new();
    let mut requested = false;
    let mut tmp = [0u8; 65536];
    // Bounded: at most 10,000 reads, each bounded by the read timeout.
    for _ in 0..10_000 {
        // Skip the 68-byte handshake, then parse frames.
        while buf.len() >= 68 + 4 {
            let at = 68;
            let len = u32::from_be_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]) as usize;
            if buf.len() < at + 4 + len {
                break;
            }
            let f: Vec<u8> = buf.drain(at..at + 4 + len).collect();
            if len == 0 {
                continue;
            }
            match f[4] {
                1 if !requested => {
                    requested = true;
                    let _ = s.write_all(&frame(6, &req));
                }
                7 => return Outcome::Served(f[13..].to_vec()),
                16 if requested => return Outcome::Rejected,
                0 if requested => return Outcome::Choked,
                _ => {}
            }
        }
        match s.read(&mut tmp) {
            Ok(0) | Err(_) => return Outcome::Closed,
            Ok(n) => buf.extend_from_slice(&tmp[..n]),
        }
    }
    Outcome::Closed
}

/// Like `fetch_block`, retried: each shard holds its own cached fd of a file, so after a
/// restore a shard that still has the broken file's fd fails one peer (and drops that fd)
/// before it reopens the restored file. With 2 shards, 3 tries suffice.
fn fetch_eventually(addr: SocketAddr, info_hash: [u8; 20], b: u32) -> Outcome {
    let mut got = Outcome::Closed;
    for _ in 0..3 {
        got = fetch_block(addr, info_hash, b);
        if got != Outcome::Closed {
            break;
        }
    }
    got
}

/// Breaks a content file in place.
type Fault = dyn Fn(&Path);

/// Block `i` (16 KiB) of `bytes`.
fn block(bytes: &[u8], i: u32) -> Vec<u8> {
    bytes[(i * BLOCK) as usize..((i + 1) * BLOCK) as usize].to_vec()
}

fn make_fifo(path: &Path) {
    let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo with a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
}

/// A config whose errored torrents are rechecked every second (tests stay short).
/// Fixed-file slots are on (not the default) so the faults exercise their empty/refill path.
const FAST_RECHECK_CONFIG: &str = "[engine]\nerrored_recheck_secs = 1\nfixed_files = true\n";

/// Two 4 MiB torrents, `a.bin` and `b.bin` under `<dir>/content`, seeded by 2 shards with
/// the 1 s recheck and an admin endpoint.
struct TwoTorrents {
    squall: SquallProcess,
    content: std::path::PathBuf,
    a_bytes: Vec<u8>,
    b_bytes: Vec<u8>,
}

fn seed_two_torrents(dir: &Path, seed_a: u64, seed_b: u64) -> TwoTorrents {
    let content = dir.join("content");
    let state = dir.join("state");
    let a_bytes = pattern_bytes(FILE_BYTES, seed_a);
    let b_bytes = pattern_bytes(FILE_BYTES, seed_b);
    write_file(&content.join("a.bin"), &a_bytes);
    write_file(&content.join("b.bin"), &b_bytes);
    let config = write_config(dir, FAST_RECHECK_CONFIG);
    let squall = SeedArgs::content(&content)
        .config(&config)
        .state(&state)
        .shards(2)
        .admin()
        .start();
    TwoTorrents {
        squall,
        content,
        a_bytes,
        b_bytes,
    }
}

/// Proves: each of four faults on torrent A's file (truncated, deleted, directory, FIFO)
/// makes A's block requests close the peer with disk_error, counted in /metrics and logged,
/// while torrent B's peers keep getting correct blocks; a FIFO does not hang the shard; after
/// the file is restored, A recovers (recheck) and is served again.
#[test]
fn content_faults_hit_only_their_torrent_and_recover() {
    let dir = tempfile::tempdir().unwrap();
    let TwoTorrents {
        squall,
        content,
        a_bytes,
        b_bytes,
    } = seed_two_torrents(dir.path(), 11, 12);
    let admin = squall.admin.expect("admin");
    let hash = |name: &str| hex20(&squall.torrents.iter().find(|t| t.1 == name).unwrap().0);
    let (a, b) = (hash("a.bin"), hash("b.bin"));
    let a_path = content.join("a.bin");

    // Each fault hits blocks squall has not opened A for yet on a fresh shard-side fd, or
    // (truncation) a cached fd whose file shrank under it. Block 200 lies past 1 MiB.
    let faults: [(&str, &Fault); 4] = [
        ("truncated", &|p: &Path| {
            std::fs::OpenOptions::new()
                .write(true)
                .open(p)
                .unwrap()
                .set_len(1 << 20)
                .unwrap()
        }),
        ("deleted", &|p: &Path| std::fs::remove_file(p).unwrap()),
        ("directory", &|p: &Path| {
            std::fs::remove_file(p).unwrap();
            std::fs::create_dir(p).unwrap();
        }),
        ("fifo", &|p: &Path| {
            std::fs::remove_file(p).unwrap();
            make_fifo(p);
        }),
    ];
    let mut expected_disk_closes = 0.0;
    for (name, fault) in faults {
        // Served before the fault.
        assert_eq!(
            fetch_eventually(squall.addr, a, 200),
            Outcome::Served(block(&a_bytes, 200)),
            "{name}: before"
        );
        fault(&a_path);
        // Replaced paths: a shard's cached fd still reads the old (unlinked) inode, so it may
        // keep serving the old, correct bytes until the fd is dropped; a shard that opens
        // the path anew must fail (and not hang on the FIFO). Truncation must fail. Block 201
        // was never served, so it is not in the hot-block cache: it must come from the file.
        let got = fetch_block(squall.addr, a, 201);
        if name != "truncated" {
            assert!(
                got == Outcome::Closed || got == Outcome::Served(block(&a_bytes, 201)),
                "{name}: {got:?}"
            );
            if got == Outcome::Closed {
                expected_disk_closes += 1.0;
            }
        } else {
            assert_eq!(got, Outcome::Closed, "{name}: A's request must fail");
            expected_disk_closes += 1.0;
        }
        // The other torrent is unaffected.
        for i in [0u32, 100, 255] {
            assert_eq!(
                fetch_block(squall.addr, b, i),
                Outcome::Served(block(&b_bytes, i)),
                "{name}: B block {i}"
            );
        }
        if got == Outcome::Closed {
            // The failure marked A errored, with a reason that names the file.
            let reason = wait_for(Duration::from_secs(10), "A to be errored", || {
                errored_torrents(admin)
                    .first()
                    .map(|e| e["reason"].as_str().unwrap_or("").to_string())
            });
            assert!(reason.contains("a.bin"), "{name}: {reason}");
        }
        // Restore A (a fresh inode for the replaced cases) and check it is served again.
        if a_path.is_dir() {
            std::fs::remove_dir(&a_path).unwrap();
        } else if a_path.exists() {
            std::fs::remove_file(&a_path).unwrap();
        }
        write_file(&a_path, &a_bytes);
        wait_for(Duration::from_secs(15), "A to recover", || {
            errored_torrents(admin).is_empty().then_some(())
        });
        assert_eq!(
            fetch_eventually(squall.addr, a, 200),
            Outcome::Served(block(&a_bytes, 200)),
            "{name}: after restore"
        );
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut page = String::new();
    while std::time::Instant::now() < deadline {
        page = http_get(admin, "/metrics").1;
        if metric_sum_with_reason(&page, "squall_peers_closed_total", "disk_error")
            >= expected_disk_closes
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(
        metric_sum_with_reason(&page, "squall_peers_closed_total", "disk_error")
            >= expected_disk_closes,
        "disk_error closes: {page}"
    );
    assert!(metric_sum(&page, "squall_disk_errors_total") >= expected_disk_closes);
    // The faults above went through fixed-file slots (on in this config), which had to be emptied
    // and refilled as A's file was broken and restored; the kernel refuses the table only
    // when RLIMIT_NOFILE is below it (open_files_per_shard_max, 1,024).
    if nofile_soft_limit().is_some_and(|n| n >= 1024) {
        assert_eq!(
            metric_sum(&page, "squall_shard_fixed_files"),
            2.0,
            "both shards read by fixed-file slot: {page}"
        );
    }
    let (code, _) = squall.terminate();
    assert_eq!(code, Some(0));
}

/// This process's soft RLIMIT_NOFILE (inherited by the squall it starts).
fn nofile_soft_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// Waits up to `secs` for a stderr line of `squall` containing `needle`.
fn stderr_line_with(squall: &SquallProcess, needle: &str, secs: u64) -> Option<String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match squall.stderr_lines.recv_timeout(left) {
            Ok(line) if line.contains(needle) => return Some(line),
            Ok(line) => eprintln!("squall: {line}"),
            Err(e) => {
                eprintln!("no line with {needle:?}: {e}");
                return None;
            }
        }
    }
}

/// Proves: when the state directory's filesystem is full, a catalog reload that must rewrite
/// resume state fails cleanly: squall stays up and keeps serving correct blocks, the warning
/// names the path and "No space left on device" and says what to do, the failure is counted
/// in /metrics, no temp file is left behind, and the previous resume file is byte-identical
/// and still decodes. Once space is freed, the next reload writes it again.
#[test]
fn full_state_disk_keeps_old_resume_state_and_keeps_seeding() {
    let dir = tempfile::tempdir().unwrap();
    let (data, torrents) = (dir.path().join("data"), dir.path().join("torrents"));
    let a_bytes = pattern_bytes(FILE_BYTES, 31);
    write_file(&data.join("a.bin"), &a_bytes);
    std::fs::create_dir_all(&torrents).unwrap();
    let hash = squall_make(
        &data.join("a.bin"),
        &torrents.join("a.torrent"),
        &["--piece-length", "16384"],
    );
    let Some(mount) = TmpfsMount::new(&dir.path().join("state"), 64 << 10) else {
        return;
    };
    let state = mount.path.clone();
    let mut squall = SeedArgs::catalog(&torrents, &data)
        .state(&state)
        .shards(1)
        .admin()
        .start();
    let admin = squall.admin.expect("admin");
    let resume_dir = state.join("resume");
    let resume_file = resume_dir.join(format!("{hash}.resume"));
    let before = std::fs::read(&resume_file).expect("resume state written at start");
    assert!(squall_engine::catalog::resume::ResumeState::decode(&before).is_some());

    // A new mtime (same bytes) makes the reload re-verify a.bin and rewrite its resume file.
    let touch = |secs: u64| {
        std::fs::File::options()
            .write(true)
            .open(data.join("a.bin"))
            .unwrap()
            .set_modified(std::time::UNIX_EPOCH + Duration::from_secs(secs))
            .unwrap()
    };
    touch(1_000_000_000);
    let filler = fill_filesystem(&state);
    // SAFETY: plain kill(2) on our child's pid.
    unsafe { libc::kill(squall.child.id() as i32, libc::SIGHUP) };
    let warning = stderr_line_with(&squall, "cannot write resume state", 60)
        .expect("a warning about the failed resume write");
    for needle in [
        resume_dir.to_str().unwrap(),
        "No space left on device",
        "free space",
    ] {
        assert!(warning.contains(needle), "{needle:?} missing in: {warning}");
    }
    stderr_line_with(&squall, "catalog reloaded", 60).expect("the reload itself succeeds");
    assert!(squall.child.try_wait().unwrap().is_none(), "squall died");
    assert_eq!(std::fs::read(&resume_file).unwrap(), before);
    let leftovers: Vec<_> = std::fs::read_dir(&resume_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temp files left: {leftovers:?}");
    let page = http_get(admin, "/metrics").1;
    assert!(
        metric_sum(&page, "squall_resume_write_errors_total") >= 1.0,
        "{page}"
    );
    assert_eq!(
        fetch_block(squall.addr, hex20(&hash), 200),
        Outcome::Served(block(&a_bytes, 200))
    );

    // Space again: the next reload writes fresh resume state (the new mtime).
    std::fs::remove_file(filler).unwrap();
    touch(1_100_000_000);
    // SAFETY: as above.
    unsafe { libc::kill(squall.child.id() as i32, libc::SIGHUP) };
    stderr_line_with(&squall, "catalog reloaded", 60).expect("reload after freeing space");
    let after = std::fs::read(&resume_file).unwrap();
    assert_ne!(
        after, before,
        "resume state not rewritten once space was free"
    );
    assert!(squall_engine::catalog::resume::ResumeState::decode(&after).is_some());
    let (code, _) = squall.terminate();
    assert_eq!(code, Some(0));
    drop(mount);
}

/// Proves: a content file swapped for a symlink after the catalog loaded (here pointing at a
/// same-length copy outside the data directory with one byte changed) is never followed:
/// requests that need it close the peer with disk_error and a warning naming the symlink,
/// and the outside bytes are never served. The idle fd cached before the swap is dropped
/// first (a truncation makes one read fail, and a disk_error drops the idle fds).
#[test]
fn content_swapped_for_a_symlink_is_not_followed() {
    let dir = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let content = dir.path().join("content");
    let state = dir.path().join("state");
    let a_bytes = pattern_bytes(FILE_BYTES, 41);
    write_file(&content.join("a.bin"), &a_bytes);
    let mut tampered = a_bytes.clone();
    tampered[(200 * BLOCK) as usize + 5] ^= 0xff;
    write_file(&outside.path().join("a.bin"), &tampered);
    let config = write_config(dir.path(), FAST_RECHECK_CONFIG);
    let squall = SeedArgs::content(&content)
        .config(&config)
        .state(&state)
        .shards(1)
        .admin()
        .start();
    let admin = squall.admin.expect("admin");
    let a = hex20(&squall.torrents[0].0);
    let a_path = content.join("a.bin");
    assert_eq!(
        fetch_block(squall.addr, a, 200),
        Outcome::Served(block(&a_bytes, 200))
    );
    // Drop the shard's cached fd: a short read is a disk_error, which forgets idle fds and
    // marks A errored. (Block 201 was never served, so the hot-block cache cannot answer it.)
    std::fs::OpenOptions::new()
        .write(true)
        .open(&a_path)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    assert_eq!(fetch_block(squall.addr, a, 201), Outcome::Closed);
    std::fs::remove_file(&a_path).unwrap();
    std::os::unix::fs::symlink(outside.path().join("a.bin"), &a_path).unwrap();
    // The recheck (every second) opens the file anew: it must refuse the symlink, so A stays
    // errored with a reason that says so, and the outside bytes are never served.
    let reason = wait_for(
        Duration::from_secs(10),
        "a recheck refusing the symlink",
        || {
            errored_torrents(admin)
                .first()
                .and_then(|e| e["reason"].as_str().map(str::to_string))
                .filter(|r| r.contains("symlink"))
        },
    );
    assert!(reason.contains("a.bin"), "{reason}");
    for attempt in 0..3 {
        for b in [200, 201] {
            let got = fetch_block(squall.addr, a, b);
            assert_ne!(
                got,
                Outcome::Served(block(&tampered, b)),
                "attempt {attempt}: bytes from outside the data directory were served"
            );
            assert!(
                matches!(got, Outcome::Closed | Outcome::Choked),
                "attempt {attempt} block {b}: {got:?}"
            );
        }
    }
    assert_eq!(errored_torrents(admin).len(), 1, "A must still be errored");
    let page = http_get(admin, "/metrics").1;
    assert!(
        metric_sum(&page, "squall_disk_errors_total") >= 1.0,
        "{page}"
    );
    let (code, _) = squall.terminate();
    assert_eq!(code, Some(0));
}

/// Proves issue #7 end to end: truncating A's file while A and B are seeded marks A errored
/// (/stats names the file, `squall_torrents_errored` = 1), A's requests are then rejected
/// (BEP 6 reject for a fast peer, choke otherwise; counted as `torrent_errored`) while a
/// libtorrent download of B completes byte-identical; once the file is restored, the recheck
/// clears A within its period (gauge 0, /stats empty) and a fresh libtorrent download of A
/// completes byte-identical.
#[test]
fn errored_torrent_is_rejected_then_recovers_after_recheck() {
    if !libtorrent_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let TwoTorrents {
        squall,
        content,
        a_bytes,
        ..
    } = seed_two_torrents(dir.path(), 21, 22);
    let a_path = content.join("a.bin");
    let admin = squall.admin.expect("admin");
    let hash = |name: &str| hex20(&squall.torrents.iter().find(|t| t.1 == name).unwrap().0);
    let a = hash("a.bin");
    assert_eq!(
        fetch_block(squall.addr, a, 200),
        Outcome::Served(block(&a_bytes, 200))
    );
    let metrics = || http_get(admin, "/metrics").1;
    assert_eq!(metric_sum(&metrics(), "squall_torrents_errored"), 0.0);

    // Truncate A under the running seeder: the next read past 1 MiB fails (block 201 was
    // never served, so it is not in the hot-block cache).
    std::fs::OpenOptions::new()
        .write(true)
        .open(&a_path)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    assert_eq!(fetch_block(squall.addr, a, 201), Outcome::Closed);
    let errored = wait_for(Duration::from_secs(10), "A in /stats", || {
        let list = errored_torrents(admin);
        (!list.is_empty()).then_some(list)
    });
    assert_eq!(errored.len(), 1, "{errored:?}");
    let a_hex = &squall.torrents.iter().find(|t| t.1 == "a.bin").unwrap().0;
    assert!(errored[0]["info_hash"]
        .as_str()
        .unwrap()
        .eq_ignore_ascii_case(a_hex));
    assert_eq!(errored[0]["name"], "a.bin");
    let reason = errored[0]["reason"].as_str().unwrap();
    assert!(reason.contains("a.bin"), "{reason}");
    assert!(errored[0]["since"].as_u64().unwrap() > 1_600_000_000);

    // Errored: even a block inside the intact first MiB is not served.
    assert_eq!(fetch_block_as(squall.addr, a, 0, true), Outcome::Rejected);
    assert_eq!(fetch_block_as(squall.addr, a, 0, false), Outcome::Choked);
    let page = metrics();
    assert_eq!(metric_sum(&page, "squall_torrents_errored"), 1.0, "{page}");
    // Shard counters arrive with each shard's next stats snapshot (1 s): the rejects and the
    // disk_error close may come from different shards, so wait for both.
    wait_for(
        Duration::from_secs(5),
        "rejects and the disk_error close in /metrics",
        || {
            let page = metrics();
            (metric_sum_with_reason(&page, "squall_requests_rejected_total", "torrent_errored")
                >= 2.0
                && metric_sum_with_reason(&page, "squall_peers_closed_total", "disk_error") >= 1.0)
                .then_some(())
        },
    );

    // The other torrent is unaffected: a real client downloads it.
    let save_b = dir.path().join("dl-b");
    let got = lt_download(
        Source::Magnet(&squall.magnet_of("b.bin")),
        &save_b,
        &squall.peer(),
        &[],
    );
    assert!(got.ok, "B download: {}", got.json);
    assert_same_tree(&content.join("b.bin"), &save_b.join("b.bin"));

    // Restore A: within the recheck period (1 s, plus a hash of 4 MiB) it recovers.
    write_file(&a_path, &a_bytes);
    wait_for(Duration::from_secs(10), "A to recover", || {
        errored_torrents(admin).is_empty().then_some(())
    });
    assert_eq!(metric_sum(&metrics(), "squall_torrents_errored"), 0.0);
    let save_a = dir.path().join("dl-a");
    let got = lt_download(
        Source::Magnet(&squall.magnet_of("a.bin")),
        &save_a,
        &squall.peer(),
        &[],
    );
    assert!(got.ok, "A download after recovery: {}", got.json);
    assert_same_tree(&a_path, &save_a.join("a.bin"));
    let (code, _) = squall.terminate();
    assert_eq!(code, Some(0));
}
