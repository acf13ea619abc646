//! DHT (BEP 5) end to end, on loopback only.
//!
//! Every test builds its own DHT of `mainline::Testnet` nodes on 127.0.0.1 and points Squall
//! (and libtorrent) at those nodes alone; `dht_config` asserts that every bootstrap address it
//! writes is a loopback one, so no test can reach the public routers.
//!
//! The scale test announces a 2,000-torrent catalog at 20/s over a 15 s window by default
//! (about 25 s); with SQUALL_SOAK=1 it announces 10,000 at 100/s over 60 s. Both catalogs
//! are larger than the rate allows per 60 s interval, so the rate is what is measured.

mod common;

use common::*;
use std::net::{SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// A local DHT of `n` server nodes on 127.0.0.1, each knowing the others.
fn testnet(n: usize) -> mainline::Testnet {
    mainline::Testnet::builder(n)
        .build()
        .expect("local DHT testnet")
}

/// A local DHT of `n` libtorrent sessions on 127.0.0.1 (tests/support/lt_dht_nodes.py):
/// the nodes libtorrent itself can use (it gets no answer from mainline-crate nodes; see the
/// script). Returns the process (killed on drop) and the nodes' addresses.
fn libtorrent_dht(n: usize) -> (KillOnDrop, Vec<String>) {
    let mut child = Command::new(SYSTEM_PYTHON)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/support/lt_dht_nodes.py"
        ))
        .args(["--count", &n.to_string()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start lt_dht_nodes.py");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let v: serde_json::Value = serde_json::from_str(&line).expect("nodes line");
    let nodes = v["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap().to_string())
        .collect();
    (KillOnDrop(child), nodes)
}

/// A config turning the DHT on with `bootstrap` (asserted loopback) as the only way in.
fn dht_config(dir: &Path, bootstrap: &[String], rate_per_sec: u32, extra: &str) -> PathBuf {
    for b in bootstrap {
        let a: SocketAddr = b.parse().expect("bootstrap is an IP:PORT");
        assert!(
            a.ip().is_loopback(),
            "a test may only bootstrap from loopback: {a}"
        );
    }
    let list: Vec<String> = bootstrap.iter().map(|b| format!("\"{b}\"")).collect();
    write_config(
        dir,
        &format!(
            "[dht]\nenabled = true\nlisten = \"127.0.0.1:0\"\nbootstrap = [{}]\n\
             server_mode = \"always\"\nannounce_rate_per_sec = {rate_per_sec}\n\
             reannounce_secs = 60\n{extra}",
            list.join(", ")
        ),
    )
}

/// The `dht` object of /stats.
fn dht_stats(admin: SocketAddr) -> serde_json::Value {
    let (code, body) = http_get(admin, "/stats");
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("/stats JSON");
    v["dht"].clone()
}

fn wait_announced(admin: SocketAddr, at_least: u64) -> serde_json::Value {
    wait_for(Duration::from_secs(30), "DHT announces", || {
        let d = dht_stats(admin);
        assert!(d["error"].is_null(), "DHT failed: {d}");
        (d["announces_ok"].as_u64().unwrap_or(0) >= at_least).then_some(d)
    })
}

/// Peers the local DHT holds for `hex`, asked by a fresh client node of that DHT.
#[allow(deprecated)] // the crate's blocking API is deprecated in favour of async; fine here
fn lookup(bootstrap: &[String], hex: &str) -> Vec<SocketAddrV4> {
    let client = mainline::Dht::builder()
        .bootstrap(bootstrap)
        .bind_address(std::net::Ipv4Addr::LOCALHOST)
        .build()
        .expect("client node");
    let id = mainline::Id::from_bytes(hex::decode(hex).unwrap()).unwrap();
    client.get_peers(id).flatten().collect()
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

#[test]
fn libtorrent_finds_squall_through_a_local_dht_from_a_bare_magnet() {
    // Proves: with the DHT on, a bare magnet (info-hash only: no tracker, no peer address)
    // is enough: libtorrent, whose DHT knows only the local nodes, finds Squall there and
    // downloads the content byte-identical (metadata over ut_metadata, then pieces).
    if !libtorrent_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let content = dir.path().join("content");
    write_file(&content.join("movie.bin"), &pattern_bytes(5_000_011, 7));
    let (_net, nodes) = libtorrent_dht(4);
    let config = dht_config(dir.path(), &nodes, 50, "");
    let squall = SeedArgs::content(&content)
        .state(&dir.path().join("state"))
        .config(&config)
        .admin()
        .start();
    let admin = squall.admin.expect("admin");
    let (hex, _, printed) = squall.torrents[0].clone();
    assert!(printed.contains(&hex.to_lowercase()) || printed.contains(&hex));
    wait_announced(admin, 1);
    let bare = format!("magnet:?xt=urn:btih:{hex}");
    let save = dir.path().join("save");
    let started = Instant::now();
    let mut cmd = Command::new(SYSTEM_PYTHON);
    cmd.arg(LT_DOWNLOAD)
        .arg("--save")
        .arg(&save)
        .args(["--magnet", &bare, "--timeout", "60"]);
    for node in &nodes {
        cmd.args(["--dht-node", node]);
    }
    let out = cmd.output().expect("run lt_download.py");
    assert!(
        out.status.success(),
        "libtorrent did not download through the DHT: {} {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!(
        "bare magnet via the local DHT: {:.1} s: {}",
        started.elapsed().as_secs_f64(),
        String::from_utf8_lossy(&out.stdout).trim()
    );
    assert_same_tree(&content.join("movie.bin"), &save.join("movie.bin"));
}

#[test]
fn a_private_torrent_is_never_announced() {
    // Proves BEP 27: of a public and a private torrent in one catalog, the local DHT holds
    // Squall's peer port for the public one and nothing at all for the private one.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let torrents = dir.path().join("torrents");
    std::fs::create_dir_all(&torrents).unwrap();
    write_file(&data.join("public.bin"), &pattern_bytes(300_001, 1));
    write_file(&data.join("private.bin"), &pattern_bytes(300_002, 2));
    let public = squall_make(
        &data.join("public.bin"),
        &torrents.join("public.torrent"),
        &[],
    );
    let private = squall_make(
        &data.join("private.bin"),
        &torrents.join("private.torrent"),
        &["--private"],
    );
    let net = testnet(4);
    let config = dht_config(dir.path(), &net.bootstrap, 50, "");
    let squall = SeedArgs::catalog(&torrents, &data)
        .state(&dir.path().join("state"))
        .config(&config)
        .admin()
        .start();
    let d = wait_announced(squall.admin.unwrap(), 1);
    assert_eq!(
        d["torrents"], 1,
        "only the public torrent is scheduled: {d}"
    );
    let port = squall.addr.port();
    let found = lookup(&net.bootstrap, &public);
    assert!(
        found.iter().any(|a| a.port() == port),
        "public torrent: squall's port {port} not in {found:?}"
    );
    assert!(
        lookup(&net.bootstrap, &private).is_empty(),
        "the private torrent was announced"
    );
    let metrics = http_get(squall.admin.unwrap(), "/metrics").1;
    assert_eq!(metric_sum(&metrics, "squall_dht_torrents"), 1.0);
    assert!(metric_sum(&metrics, "squall_dht_announces_ok_total") >= 1.0);
}

#[test]
fn the_routing_table_is_saved_and_a_restart_rejoins_from_it() {
    // Proves: the node list and the public address the DHT reported are written to the
    // state directory (atomically) at stop, and a restart whose only configured bootstrap
    // node is dead still joins and announces, through the saved nodes.
    let dir = tempfile::tempdir().unwrap();
    let content = dir.path().join("content");
    write_file(&content.join("a.bin"), &pattern_bytes(100_003, 3));
    let state = dir.path().join("state");
    let net = testnet(4);
    let config = dht_config(dir.path(), &net.bootstrap, 50, "");
    let squall = SeedArgs::content(&content)
        .state(&state)
        .config(&config)
        .admin()
        .start();
    let stats = wait_for(Duration::from_secs(20), "routing table", || {
        let d = dht_stats(squall.admin.unwrap());
        let known = d["nodes"].as_u64().unwrap_or(0) >= 2 && d["public_ip"].is_string();
        known.then_some(d)
    });
    let id = stats["node_id"].as_str().unwrap_or_default();
    assert_eq!(id.len(), 40, "node id: {stats}");
    assert!(id.bytes().all(|b| b.is_ascii_hexdigit()), "{stats}");
    let (code, _) = squall.terminate();
    assert_eq!(code, Some(0));
    let saved = std::fs::read_to_string(state.join("dht-nodes.txt")).expect("saved nodes");
    assert!(
        net.bootstrap.iter().any(|b| saved.contains(b.as_str())),
        "{saved}"
    );
    // The address the local DHT reported for us is kept for the next start's node id.
    let ip = std::fs::read_to_string(state.join("dht-public-ip.txt")).expect("saved address");
    assert_eq!(ip.trim(), stats["public_ip"].as_str().unwrap(), "{stats}");
    // Restart bootstrapping from a loopback port where nothing listens.
    let dead = format!("127.0.0.1:{}", free_port());
    let config = dht_config(dir.path(), &[dead], 50, "");
    let squall = SeedArgs::content(&content)
        .state(&state)
        .config(&config)
        .admin()
        .start();
    wait_announced(squall.admin.unwrap(), 1);
}

#[test]
fn a_port_in_use_is_logged_once_and_seeding_goes_on() {
    // Proves: when the DHT's UDP port is taken, Squall says why once, reports the error in
    // /stats, and still serves peers.
    let dir = tempfile::tempdir().unwrap();
    let content = dir.path().join("content");
    write_file(&content.join("a.bin"), &pattern_bytes(100_003, 3));
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let net = testnet(2);
    let config = dht_config(dir.path(), &net.bootstrap, 50, "");
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("127.0.0.1:0\"", &format!("127.0.0.1:{port}\""));
    std::fs::write(&config, text).unwrap();
    let squall = SeedArgs::content(&content)
        .state(&dir.path().join("state"))
        .config(&config)
        .admin()
        .start();
    let admin = squall.admin.unwrap();
    let d = wait_for(Duration::from_secs(10), "DHT error", || {
        let d = dht_stats(admin);
        d["error"].as_str().map(|_| d.clone())
    });
    assert!(
        d["error"].as_str().unwrap().contains("cannot bind UDP"),
        "{d}"
    );
    let warnings: Vec<String> = squall
        .stderr_lines
        .try_iter()
        .filter(|l| l.contains("DHT could not start"))
        .collect();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    // Still seeding: the peer port accepts a handshake-bound connection.
    let _ = raw_connect(squall.addr);
    assert_eq!(http_get(admin, "/health").0, 200);
}

#[test]
fn a_large_catalog_announces_at_the_configured_rate_with_bounded_memory() {
    // Proves: a catalog larger than the rate allows per interval is announced at the rate
    // (not faster, not much slower), the queue drains, in-flight announces stay under their
    // bound, memory stays flat over the pass, and peers are still served meanwhile.
    let soak = std::env::var("SQUALL_SOAK").is_ok_and(|v| v == "1");
    let (count, rate, window) = if soak {
        (10_000usize, 100u32, Duration::from_secs(60))
    } else {
        (2_000, 20, Duration::from_secs(15))
    };
    let dir = tempfile::tempdir().unwrap();
    let content = dir.path().join("content");
    for i in 0..count {
        write_file(
            &content.join(format!("t{i:05}")),
            format!("torrent {i}\n").as_bytes(),
        );
    }
    let net = testnet(4);
    let config = dht_config(dir.path(), &net.bootstrap, rate, "");
    let made = Instant::now();
    let squall = SeedArgs::content(&content)
        .state(&dir.path().join("state"))
        .config(&config)
        .admin()
        .start();
    eprintln!(
        "{count} torrents ready in {:.1} s",
        made.elapsed().as_secs_f64()
    );
    let admin = squall.admin.unwrap();
    let pid = squall.child.id();
    let first = wait_announced(admin, 1);
    assert_eq!(first["torrents"], count as u64);
    let rss_start_kib = rss_kib(pid);
    let started = Instant::now();
    let done = |d: &serde_json::Value| {
        d["announces_ok"].as_u64().unwrap_or(0) + d["announces_failed"].as_u64().unwrap_or(0)
    };
    let base = done(&first);
    let mut in_flight_max = 0;
    while started.elapsed() < window {
        let d = dht_stats(admin);
        in_flight_max = in_flight_max.max(d["in_flight"].as_u64().unwrap_or(0));
        std::thread::sleep(Duration::from_millis(250));
    }
    let d = dht_stats(admin);
    let secs = started.elapsed().as_secs_f64();
    let per_sec = (done(&d) - base) as f64 / secs;
    let rss_end_kib = rss_kib(pid);
    eprintln!(
        "{count} torrents: {per_sec:.1} announces/s (rate {rate}), in flight max {in_flight_max}, \
         queue {} , failed {}, rss {rss_start_kib} -> {rss_end_kib} KiB",
        d["queue_len"], d["announces_failed"]
    );
    assert!(
        per_sec <= rate as f64 * 1.05,
        "{per_sec:.1}/s is over the rate"
    );
    assert!(
        per_sec >= rate as f64 * 0.8,
        "{per_sec:.1}/s is well under the rate"
    );
    assert!(in_flight_max <= 256);
    assert!(d["queue_len"].as_u64().unwrap() < count as u64 - (rate as u64 * 5));
    assert!(
        d["announces_failed"].as_u64().unwrap() * 20 <= done(&d),
        "more than 5% failed on a local network: {d}"
    );
    assert!(
        rss_end_kib < rss_start_kib + 32 * 1024,
        "memory grew by {} KiB during the pass",
        rss_end_kib - rss_start_kib
    );
    // Serving goes on during the pass.
    if libtorrent_available() {
        let save = dir.path().join("save");
        let t = dir.path().join("one.torrent");
        std::fs::copy(made_torrent(&dir.path().join("state"), "t00001"), &t).unwrap();
        let r = lt_download(Source::Torrent(&t), &save, &squall.peer(), &[]);
        assert!(r.ok, "{}", r.json);
    }
}
