//! Resource limits the operator's machine imposes: squall degrades gracefully and recovers.

mod common;

use common::*;
use std::process::Command;
use std::time::{Duration, Instant};

/// GET /metrics, or None while the endpoint cannot answer (e.g. no fd left to accept with).
fn try_metrics(admin: std::net::SocketAddr) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&admin, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.contains(" 200 ").then_some(out)
}

fn prlimit_available() -> bool {
    tool_available("prlimit", Command::new("prlimit").arg("--version"))
}

/// With only 64 file descriptors, a burst of connections exhausts them: accepts fail and are
/// counted, squall stays up, and once the burst is gone a fresh download completes.
#[test]
fn fd_exhaustion_is_counted_and_recovers() {
    if !prlimit_available() || !libtorrent_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let content = dir.path().join("content");
    let state = dir.path().join("state");
    write_file(&content.join("f.bin"), &pattern_bytes(2 << 20, 22));
    // Fixed files asked for, so the kernel's refusal of the table is exercised too.
    let config = write_config(dir.path(), "[engine]\nfixed_files = true\n");
    let mut squall = SeedArgs::content(&content)
        .config(&config)
        .state(&state)
        .admin()
        .shards(1)
        .start_under(&["prlimit", "--nofile=64:64"]);
    let admin = squall.admin.expect("admin address");
    let burst: Vec<_> = (0..120)
        .filter_map(|_| std::net::TcpStream::connect(squall.addr).ok())
        .collect();
    // While the burst holds every fd, even the admin endpoint cannot accept; let the shard
    // hit EMFILE for a few ticks, then release the burst and read the counters.
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        squall.child.try_wait().unwrap().is_none(),
        "squall died under fd exhaustion"
    );
    drop(burst);
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut accept_errors = 0.0;
    let mut page = String::new();
    while Instant::now() < deadline {
        if let Some(p) = try_metrics(admin) {
            accept_errors = metric_sum(&p, "squall_accept_errors_total");
            page = p;
            if accept_errors > 0.0 {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(
        accept_errors > 0.0,
        "accept failures under fd exhaustion were not counted"
    );
    // 64 fds is below the 1,024-slot fixed-file table: the kernel refused it (EMFILE) and
    // the shard reads by plain fd, which the download below proves still works.
    assert!(
        page.lines()
            .any(|l| l.starts_with("squall_shard_fixed_files{") && l.ends_with(" 0")),
        "fixed files refused under RLIMIT_NOFILE 64: {page}"
    );
    // Accepted burst connections send nothing: the handshake timeout frees them; accepts are
    // re-armed on the next tick. A fresh download then works.
    let save = dir.path().join("dl");
    let r = lt_download(
        Source::Torrent(&made_torrent(&state, "f.bin")),
        &save,
        &squall.peer(),
        &[],
    );
    assert!(r.ok, "{}", r.json);
    assert_same_tree(&content.join("f.bin"), &save.join("f.bin"));
}

/// `setpriv` and `prlimit` run squall without CAP_IPC_LOCK (which would exempt root from
/// RLIMIT_MEMLOCK) and with a small locked-memory limit.
fn no_ipc_lock_wrapper(memlock_bytes: u64) -> Option<Vec<String>> {
    let tools =
        tool_available("setpriv", Command::new("setpriv").arg("--version")) && prlimit_available();
    tools.then(|| {
        [
            "setpriv",
            "--inh-caps=-ipc_lock",
            "--ambient-caps=-ipc_lock",
            "--bounding-set=-ipc_lock",
            "--",
            "prlimit",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([format!("--memlock={memlock_bytes}:{memlock_bytes}")])
        .collect()
    })
}

/// Enough locked memory for two rings (~0.5 MiB each at 4,096 entries) but not for one
/// shard's 16 MiB buffer pool.
const MEMLOCK_RINGS_ONLY_BYTES: u64 = 8 << 20;

/// Proves: when RLIMIT_MEMLOCK is too small to register the buffer pools, squall starts
/// anyway, warns exactly once for the whole process (naming the limit and the fix), reports
/// `squall_shard_fixed_buffers 0` for every shard, and serves a libtorrent download
/// byte-identical over plain Read/Send.
#[test]
fn memlock_too_small_falls_back_to_plain_buffers_with_one_warning() {
    let Some(wrapper) = no_ipc_lock_wrapper(MEMLOCK_RINGS_ONLY_BYTES) else {
        return;
    };
    if !libtorrent_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let content = dir.path().join("content");
    let state = dir.path().join("state");
    write_file(&content.join("m.bin"), &pattern_bytes(3 << 20, 23));
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    let squall = SeedArgs::content(&content)
        .state(&state)
        .admin()
        .shards(2)
        .start_under(&wrapper);
    let admin = squall.admin.expect("admin address");
    let save = dir.path().join("dl");
    let r = lt_download(
        Source::Torrent(&made_torrent(&state, "m.bin")),
        &save,
        &squall.peer(),
        &[],
    );
    assert!(r.ok, "{}", r.json);
    assert_same_tree(&content.join("m.bin"), &save.join("m.bin"));

    let page = http_get(admin, "/metrics").1;
    let gauges: Vec<&str> = page
        .lines()
        .filter(|l| l.starts_with("squall_shard_fixed_buffers{"))
        .collect();
    assert_eq!(gauges.len(), 2, "{page}");
    assert!(gauges.iter().all(|l| l.ends_with(" 0")), "{gauges:?}");
    // The warning is logged before `ready`; everything up to now is in the channel.
    let lines: Vec<String> = squall.stderr_lines.try_iter().collect();
    let (code, _) = squall.terminate();
    assert_eq!(code, Some(0));
    let warnings: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains("unregistered send buffers"))
        .collect();
    assert_eq!(warnings.len(), 1, "one fallback warning: {lines:#?}");
    for needle in ["2 of 2 shard(s)", "RLIMIT_MEMLOCK", "LimitMEMLOCK"] {
        assert!(
            warnings[0].contains(needle),
            "{needle:?} in {}",
            warnings[0]
        );
    }
}

/// Proves: with no locked memory at all, even the ring cannot be created (Linux 6.x counts
/// ring memory against RLIMIT_MEMLOCK without CAP_IPC_LOCK), and squall exits non-zero with
/// a message naming the limit and the fix instead of blaming the kernel version.
#[test]
fn memlock_zero_fails_start_up_with_a_memlock_message() {
    let Some(wrapper) = no_ipc_lock_wrapper(0) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let content = dir.path().join("content");
    write_file(&content.join("z.bin"), &pattern_bytes(100_000, 24));
    let out = Command::new(&wrapper[0])
        .args(&wrapper[1..])
        .arg(squall_bin())
        .arg("seed")
        .arg(&content)
        .arg("--state")
        .arg(dir.path().join("state"))
        .args(["--listen", "127.0.0.1:0", "--admin", "off", "--shards", "1"])
        .output()
        .unwrap();
    let text = output_text(&out);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("RLIMIT_MEMLOCK"), "{text}");
    assert!(!text.contains("Linux >= 6.1"), "{text}");
}
