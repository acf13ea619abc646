//! CI smoke of the benchmark against the real seeder: short, verified, never timed.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};

use squall_bench::{RunOptions, Verify};

#[test]
fn bench_against_squall_verifies_pieces() {
    // Proves: squall-bench drives the real `squall seed` end to end (handshake, unchoke,
    // requests, pieces) and every piece it completes passes SHA-1, i.e. Squall serves the right
    // bytes under a concurrent swarm, plaintext and encrypted (MSE/RC4). No speed threshold:
    // this machine is shared and noisy.
    let dir = tempfile::tempdir().expect("tempdir");
    let content_dir = dir.path().join("content");
    std::fs::create_dir_all(&content_dir).expect("mkdir");
    let mut data = Vec::new();
    squall_bench::content::write_content(&mut data, 8 << 20).expect("content");
    std::fs::write(content_dir.join("smoke.bin"), &data).expect("write");
    let state = dir.path().join("state");
    let mut child = Command::new(env!("CARGO_BIN_EXE_squall"))
        .arg("seed")
        .arg(&content_dir)
        .args(["--listen", "127.0.0.1:0", "--shards", "1", "--state"])
        .arg(&state)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn squall");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let mut addr: Option<SocketAddr> = None;
    let mut ready = false;
    for line in lines.by_ref() {
        let line = line.expect("line");
        if let Some(a) = line.strip_prefix("listening on ") {
            addr = a.trim().parse().ok();
        }
        if line.starts_with("ready") {
            ready = true;
            break;
        }
    }
    // Keep draining stdout so the seeder never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    let run_bench = |encrypt: bool| {
        assert!(ready, "squall seed never printed ready");
        let addr = addr.expect("squall printed no listen address");
        let torrent_path = state.join("zero-config").join("smoke.bin.torrent");
        let torrent = squall_bench::load_torrent(&torrent_path).expect("torrent");
        let mut opts = RunOptions::new(addr, vec![torrent]);
        opts.peers = 4;
        opts.depth = 32;
        opts.duration_secs = 2;
        opts.verify = Verify::Full;
        opts.target_pid = Some(child.id());
        opts.source_ips = squall_bench::parse_ip_range("127.0.0.2-127.0.0.9").expect("range");
        opts.encrypt = encrypt;
        squall_bench::run(opts).expect("run")
    };
    // Plaintext, then `--encrypt` (MSE/RC4): the encrypted benchmark cannot rot either.
    let results = [run_bench(false), run_bench(true)];
    let _ = child.kill();
    let _ = child.wait();
    for result in results {
        assert!(result.bytes > 0, "{result:?}");
        assert!(result.pieces_verified > 0, "{result:?}");
        assert_eq!(result.bad_pieces, 0, "{result:?}");
        for kind in ["protocol_errors", "disconnects"] {
            assert_eq!(
                result.errors.get(kind).copied().unwrap_or(0),
                0,
                "{result:?}"
            );
        }
        assert!(result.target_cpu_secs.is_some());
    }
}
