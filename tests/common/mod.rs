//! Shared helpers for end-to-end tests: the real `squall` binary, real clients (Debian
//! python3-libtorrent, aria2c, opentracker), loopback only.
//!
//! A test that needs a tool calls `tool_available`: when the tool is missing it skips with a
//! note, unless SQUALL_REQUIRE_TOOLS=1 (set by scripts/test.sh after installing the tools),
//! where a missing tool fails the test.

#![allow(dead_code)]

mod raw_peer;
#[allow(unused_imports)] // not every test binary uses the raw peer
pub use raw_peer::*;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub const LT_DOWNLOAD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/lt_download.py");
/// Debian's libtorrent binding is for Debian's python, not whatever `python3` is on PATH.
pub const SYSTEM_PYTHON: &str = "/usr/bin/python3";

pub fn squall_bin() -> &'static str {
    env!("CARGO_BIN_EXE_squall")
}

fn require_tools() -> bool {
    std::env::var("SQUALL_REQUIRE_TOOLS")
        .map(|v| v == "1")
        .unwrap_or(false)
}

/// True when `check` says the tool works; else skip (or fail under SQUALL_REQUIRE_TOOLS=1).
pub fn tool_available(name: &str, check: &mut Command) -> bool {
    let ok = check
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        if require_tools() {
            panic!("required test tool missing: {name} (scripts/test.sh installs it)");
        }
        eprintln!("SKIP: {name} not available (run scripts/test.sh to install it)");
    }
    ok
}

pub fn libtorrent_available() -> bool {
    tool_available(
        "python3-libtorrent",
        Command::new(SYSTEM_PYTHON).args(["-c", "import libtorrent"]),
    )
}

/// aria2c (Debian) downloads `torrent` into `save` from the peers it learns, loopback only:
/// DHT, LPD and peer exchange off, a free listen port, no seeding afterwards; `extra`
/// arguments go before the torrent.
pub fn aria2c_download(torrent: &Path, save: &Path, extra: &[&str]) -> std::process::Output {
    Command::new("aria2c")
        .args([
            "--enable-dht=false",
            "--enable-dht6=false",
            "--bt-enable-lpd=false",
            "--enable-peer-exchange=false",
            "--seed-time=0",
            &format!("--listen-port={}", free_port()),
            "--bt-stop-timeout=60",
            "--summary-interval=0",
            "--console-log-level=warn",
            "--allow-overwrite=true",
            "--file-allocation=none",
        ])
        .args(extra)
        .arg(format!("--dir={}", save.display()))
        .arg(torrent)
        .output()
        .unwrap()
}

pub fn aria2c_available() -> bool {
    tool_available("aria2c", Command::new("aria2c").arg("--version"))
}

pub fn opentracker_available() -> bool {
    // opentracker has no --version; -h exits non-zero, so look it up on PATH.
    tool_available(
        "opentracker",
        Command::new("sh").args(["-c", "command -v opentracker"]),
    )
}

/// Deterministic pseudo-random bytes (xorshift), so failures are reproducible.
pub fn pattern_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut v = Vec::with_capacity(len);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

pub fn write_file(path: &Path, bytes: &[u8]) {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).unwrap();
    }
    std::fs::write(path, bytes).unwrap();
}

/// The standard test content: a single file of odd size, and a multi-file directory with odd
/// sizes, an empty file and a file smaller than one block.
pub fn standard_content(root: &Path) {
    write_file(&root.join("single.bin"), &pattern_bytes(3_000_017, 1));
    write_file(&root.join("multi/a.bin"), &pattern_bytes(1_234_567, 2));
    write_file(&root.join("multi/sub/b.bin"), &pattern_bytes(700_001, 3));
    write_file(&root.join("multi/sub/empty"), b"");
    write_file(&root.join("multi/z-small.txt"), &pattern_bytes(1_000, 4));
}

/// A running `squall seed`, killed (SIGTERM, then SIGKILL) when dropped.
pub struct SquallProcess {
    pub child: Child,
    pub addr: SocketAddr,
    /// (info-hash hex, name, magnet) per seeded torrent.
    pub torrents: Vec<(String, String, String)>,
    pub stderr_lines: mpsc::Receiver<String>,
    /// The admin endpoint, when squall printed `admin on ADDR` (start with
    /// `--admin 127.0.0.1:0` to get one on a free port).
    pub admin: Option<SocketAddr>,
    /// The first HTTP address, when squall printed `http on ADDR` (`--http 127.0.0.1:0`).
    pub http: Option<SocketAddr>,
}

impl SquallProcess {
    /// Starts `squall seed ARGS --listen 127.0.0.1:0` and waits for its `ready` line.
    pub fn start(args: &[&str]) -> SquallProcess {
        SquallProcess::start_under(&[], args)
    }

    /// Like `start`, run through a wrapper that execs it (e.g. `prlimit --nofile=64:64`), so
    /// the pid is still squall's.
    pub fn start_under(wrapper: &[&str], args: &[&str]) -> SquallProcess {
        let mut cmd = match wrapper.split_first() {
            Some((program, rest)) => {
                let mut c = Command::new(program);
                c.args(rest).arg(squall_bin());
                c
            }
            None => Command::new(squall_bin()),
        };
        cmd.arg("seed").args(args).args(["--listen", "127.0.0.1:0"]);
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn squall");
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let (err_tx, err_rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = err_tx.send(line);
            }
        });
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut addr = None;
        let mut admin = None;
        let mut http = None;
        let mut torrents = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match rx.recv_timeout(left) {
                Ok(l) => l,
                Err(_) => {
                    let _ = child.kill();
                    let errs: Vec<String> = err_rx.try_iter().collect();
                    panic!("squall did not become ready: {}", errs.join("\n"));
                }
            };
            if let Some(a) = line.strip_prefix("listening on ") {
                addr.get_or_insert(a.parse().expect("listen addr"));
            } else if let Some(a) = line.strip_prefix("http on ") {
                http.get_or_insert(a.parse().expect("http addr"));
            } else if let Some(a) = line.strip_prefix("admin on ") {
                admin = Some(a.parse().expect("admin addr"));
            } else if let Some(rest) = line.strip_prefix("seeding ") {
                // `seeding <info-hash> <name, may contain spaces> <magnet>`
                let (hash, rest) = rest.split_once(' ').expect("seeding line");
                let (name, magnet) = rest.rsplit_once(' ').expect("seeding line");
                torrents.push((hash.to_string(), name.to_string(), magnet.to_string()));
            } else if line.starts_with("ready:") {
                break;
            }
        }
        SquallProcess {
            child,
            addr: addr.expect("no listen line"),
            torrents,
            stderr_lines: err_rx,
            admin,
            http,
        }
    }

    pub fn peer(&self) -> String {
        self.addr.to_string()
    }

    pub fn magnet_of(&self, name: &str) -> String {
        self.torrents
            .iter()
            .find(|t| t.1 == name)
            .map(|t| t.2.clone())
            .expect("torrent by name")
    }

    /// SIGTERM and wait; returns the exit code and how long it took.
    pub fn terminate(mut self) -> (Option<i32>, Duration) {
        let started = Instant::now();
        // SAFETY: plain kill(2) on our child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return (status.code(), started.elapsed());
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                return (None, started.elapsed());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for SquallProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SAFETY: plain kill(2) on our child's pid.
            unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The `squall seed` arguments, built flag by flag: the same paths and flags were spelled out
/// by hand at every start, where a dropped flag or value was easy to miss. Arguments go in
/// the order the methods are called; `SquallProcess::start_under` adds `--listen 127.0.0.1:0`.
pub struct SeedArgs {
    args: Vec<String>,
}

impl SeedArgs {
    /// `squall seed CONTENT`: seeds each file and folder in `content` (torrents made in state).
    pub fn content(content: &Path) -> SeedArgs {
        SeedArgs { args: Vec::new() }.path(content)
    }

    /// `--torrents TORRENTS --data DATA`: seeds the `.torrent` files in `torrents` from `data`.
    pub fn catalog(torrents: &Path, data: &Path) -> SeedArgs {
        SeedArgs { args: Vec::new() }
            .arg("--torrents")
            .path(torrents)
            .arg("--data")
            .path(data)
    }

    /// `--state DIR`.
    pub fn state(self, dir: &Path) -> SeedArgs {
        self.arg("--state").path(dir)
    }

    /// `--shards N`.
    pub fn shards(self, n: usize) -> SeedArgs {
        self.arg("--shards").arg(&n.to_string())
    }

    /// `--admin 127.0.0.1:0`: an admin endpoint on a free port, read as `SquallProcess::admin`.
    pub fn admin(self) -> SeedArgs {
        self.args(&["--admin", "127.0.0.1:0"])
    }

    /// `--config FILE`.
    pub fn config(self, file: &Path) -> SeedArgs {
        self.arg("--config").path(file)
    }

    /// One more argument, as given.
    pub fn arg(mut self, arg: &str) -> SeedArgs {
        self.args.push(arg.to_string());
        self
    }

    /// More arguments, as given.
    pub fn args(self, args: &[&str]) -> SeedArgs {
        args.iter().fold(self, |s, a| s.arg(a))
    }

    /// A path argument; squall's arguments are UTF-8, as the hand-written lists assumed.
    fn path(self, path: &Path) -> SeedArgs {
        self.arg(path.to_str().expect("UTF-8 path"))
    }

    /// `SquallProcess::start` with these arguments.
    pub fn start(self) -> SquallProcess {
        self.start_under(&[])
    }

    /// `SquallProcess::start_under` (e.g. under `prlimit`) with these arguments.
    pub fn start_under(self, wrapper: &[&str]) -> SquallProcess {
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        SquallProcess::start_under(wrapper, &args)
    }
}

/// What `lt_download.py` printed.
#[derive(Debug)]
pub struct LtResult {
    pub ok: bool,
    pub json: String,
}

pub enum Source<'a> {
    Torrent(&'a Path),
    Magnet(&'a str),
}

pub fn lt_command(source: Source<'_>, save: &Path, peer: &str, extra: &[&str]) -> Command {
    let mut cmd = Command::new(SYSTEM_PYTHON);
    cmd.arg(LT_DOWNLOAD)
        .arg("--save")
        .arg(save)
        .args(["--peer", peer, "--timeout", "90"]);
    match source {
        Source::Torrent(p) => cmd.arg("--torrent").arg(p),
        Source::Magnet(m) => cmd.args(["--magnet", m]),
    };
    cmd.args(extra);
    cmd
}

pub fn lt_download(source: Source<'_>, save: &Path, peer: &str, extra: &[&str]) -> LtResult {
    let out = lt_command(source, save, peer, extra)
        .output()
        .expect("run lt_download.py");
    let json = String::from_utf8_lossy(&out.stdout).trim().to_string();
    LtResult {
        ok: out.status.success(),
        json: format!("{json} {}", String::from_utf8_lossy(&out.stderr)),
    }
}

/// Asserts two files or directory trees have identical bytes.
pub fn assert_same_tree(expected: &Path, actual: &Path) {
    if expected.is_file() {
        let a = std::fs::read(expected).unwrap();
        let b = std::fs::read(actual).unwrap_or_else(|e| panic!("{}: {e}", actual.display()));
        assert!(
            a == b,
            "{} differs from {}",
            actual.display(),
            expected.display()
        );
        return;
    }
    for entry in std::fs::read_dir(expected).unwrap() {
        let entry = entry.unwrap();
        assert_same_tree(&entry.path(), &actual.join(entry.file_name()));
    }
}

/// The .torrent zero-config seeding made for `name`.
pub fn made_torrent(state: &Path, name: &str) -> PathBuf {
    state.join("zero-config").join(format!("{name}.torrent"))
}

/// Opens a raw TCP connection to squall (for hostile-peer tests).
pub fn raw_connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// Reads until EOF or error; true when the peer closed the connection within the timeout.
pub fn closed_by_peer(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 65536];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                return false
            }
            Err(_) => return true,
        }
    }
}

/// GET `path` from an admin endpoint; (status, body). Panics when it cannot connect.
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("admin connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).expect("admin response");
    let (status, body) = split_response(&raw);
    (status, body.to_string())
}

/// An HTTP response's status code and body.
pub fn split_response(raw: &str) -> (u16, &str) {
    let (head, body) = raw.split_once("\r\n\r\n").expect("HTTP response");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status code");
    (status, body)
}

pub fn write_all(stream: &mut TcpStream, bytes: &[u8]) {
    let _ = stream.write_all(bytes);
}

/// `squall make CONTENT -o OUT EXTRA...`, asserting success; returns the v1 info-hash (hex).
pub fn squall_make(content: &Path, out: &Path, extra: &[&str]) -> String {
    let made = Command::new(squall_bin())
        .arg("make")
        .arg(content)
        .arg("-o")
        .arg(out)
        .args(extra)
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    info_hash_hex(out)
}

/// The `info_hash` that `squall info --json` reports for a .torrent.
pub fn info_hash_hex(torrent: &Path) -> String {
    let info = Command::new(squall_bin())
        .arg("info")
        .arg("--json")
        .arg(torrent)
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    v["info_hash"].as_str().unwrap().to_string()
}

/// Makes `<torrents>/<name>.torrent` of `content` (a file or directory) with `piece_length`
/// (e.g. "256K") and returns its info-hash: the catalog layout `SeedArgs::catalog` seeds.
pub fn make_catalog_torrent(
    content: &Path,
    torrents: &Path,
    name: &str,
    piece_length: &str,
) -> [u8; 20] {
    std::fs::create_dir_all(torrents).unwrap();
    let t = torrents.join(format!("{name}.torrent"));
    let hex = squall_make(content, &t, &["--piece-length", piece_length]);
    hex::decode(hex).unwrap().try_into().unwrap()
}

/// `len` pattern bytes (`seed`) as `<dir>/data/f.bin` and its catalog torrent (256 KiB
/// pieces) in `<dir>/torrents`: the one-file catalog many engine tests seed. Returns the
/// bytes and the info-hash.
pub fn one_file_catalog(dir: &Path, len: usize, seed: u64) -> (Vec<u8>, [u8; 20]) {
    let data = pattern_bytes(len, seed);
    let content = dir.join("data");
    write_file(&content.join("f.bin"), &data);
    let info_hash =
        make_catalog_torrent(&content.join("f.bin"), &dir.join("torrents"), "f", "256K");
    (data, info_hash)
}

/// Starts one-shard squall with the admin endpoint on the catalog `torrents` + `content`,
/// its state under `dir`, and `engine_toml` written as the `[engine]` table of its config.
pub fn seed_catalog_with_engine(
    dir: &Path,
    torrents: &Path,
    content: &Path,
    engine_toml: &str,
) -> SquallProcess {
    let config = dir.join("squall.toml");
    std::fs::write(&config, format!("[engine]\n{engine_toml}")).unwrap();
    SeedArgs::catalog(torrents, content)
        .state(&dir.join("state"))
        .shards(1)
        .config(&config)
        .admin()
        .start()
}

/// Polls `/metrics` on `admin` (shards publish their counters once a second) until the
/// counter `name{reason}` reaches `want` or 10 s pass; returns the last value read.
pub fn wait_metric_with_reason(admin: SocketAddr, name: &str, reason: &str, want: f64) -> f64 {
    let mut got = 0.0;
    for _ in 0..40 {
        got = metric_sum_with_reason(&http_get(admin, "/metrics").1, name, reason);
        if got >= want {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    got
}

/// A free loopback TCP port (bound, read back, released).
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// A child process (a tracker, a client) killed when the test ends, however it ends.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Sum of every sample of a Prometheus metric (all label sets) in a /metrics page.
pub fn metric_sum(page: &str, name: &str) -> f64 {
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.split(['{', ' ']).next() == Some(name))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum()
}

/// `standard_content` under `<dir>/content` and its two torrents (single.bin, multi) in
/// `<dir>/torrents`, each announcing to an opentracker on 127.0.0.1 that runs until
/// `tracker` drops.
pub struct TrackedCatalog {
    pub content: PathBuf,
    pub torrents: PathBuf,
    /// Info-hashes (hex) of single.bin and multi, in that order.
    pub hashes: Vec<String>,
    pub tracker_port: u16,
    pub tracker: KillOnDrop,
}

pub fn tracked_standard_catalog(dir: &Path) -> TrackedCatalog {
    let tracker_port = free_port();
    let announce = format!("http://127.0.0.1:{tracker_port}/announce");
    let content = dir.join("content");
    standard_content(&content);
    let torrents = dir.join("torrents");
    std::fs::create_dir_all(&torrents).unwrap();
    let hashes: Vec<String> = ["single.bin", "multi"]
        .iter()
        .map(|name| {
            let out = torrents.join(format!("{name}.torrent"));
            squall_make(&content.join(name), &out, &["--tracker", &announce])
        })
        .collect();
    let tracker = start_opentracker(dir, tracker_port, &hashes);
    TrackedCatalog {
        content,
        torrents,
        hashes,
        tracker_port,
        tracker,
    }
}

/// Announces squall (as a seed, left=0) for `hash_hex` to opentracker over HTTP.
pub fn announce_to(tracker_port: u16, hash_hex: &str, port: u16) {
    use std::io::{Read, Write};
    let bytes = hex::decode(hash_hex).unwrap();
    let escaped: String = bytes.iter().map(|b| format!("%{b:02X}")).collect();
    let path = format!(
        "/announce?info_hash={escaped}&peer_id=-SQTEST-000000000000&port={port}&uploaded=0&downloaded=0&left=0&compact=1&event=started"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", tracker_port)) {
            let req = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
            s.write_all(req.as_bytes()).unwrap();
            let mut resp = Vec::new();
            let _ = s.read_to_end(&mut resp);
            let text = String::from_utf8_lossy(&resp);
            assert!(text.contains("200"), "announce refused: {text}");
            assert!(!text.contains("failure"), "announce failed: {text}");
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "opentracker did not start"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Starts opentracker on 127.0.0.1:port (HTTP and UDP) with `hashes` whitelisted. It chroots
/// into its directory and drops root to `nobody`, so the directory is 755 and the list 644.
pub fn start_opentracker(dir: &Path, port: u16, hashes: &[String]) -> KillOnDrop {
    let tracker_dir = dir.join("tracker");
    std::fs::create_dir_all(&tracker_dir).unwrap();
    for p in [dir, tracker_dir.as_path()] {
        Command::new("chmod").arg("755").arg(p).status().unwrap();
    }
    std::fs::write(tracker_dir.join("whitelist"), hashes.join("\n") + "\n").unwrap();
    Command::new("chmod")
        .arg("644")
        .arg(tracker_dir.join("whitelist"))
        .status()
        .unwrap();
    let child = Command::new("opentracker")
        .args([
            "-i",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-P",
            &port.to_string(),
        ])
        .args(["-d", tracker_dir.to_str().unwrap(), "-w", "whitelist"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Wait until its TCP side answers.
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "opentracker did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    KillOnDrop(child)
}

/// Runs `squall ARGS` in `cwd` and returns its output (the caller asserts on it).
pub fn run_squall(args: &[&str], cwd: &Path) -> std::process::Output {
    Command::new(squall_bin())
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("run squall")
}

/// A process's stdout and stderr, for assertion messages.
pub fn output_text(o: &std::process::Output) -> String {
    format!(
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Sum of a Prometheus metric's samples carrying `reason="REASON"` (all shards).
pub fn metric_sum_with_reason(page: &str, name: &str, reason: &str) -> f64 {
    let label = format!("reason=\"{reason}\"");
    let prefix = format!("{name}{{");
    page.lines()
        .filter(|l| l.starts_with(&prefix) && l.contains(&label))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum()
}

/// A tmpfs mounted on a directory for one test (e.g. a tiny one to fill), unmounted when
/// dropped. Needs root (or CAP_SYS_ADMIN).
pub struct TmpfsMount {
    pub path: PathBuf,
}

impl TmpfsMount {
    /// Mounts a tmpfs of `size_bytes` on `path` (created if missing); None with a SKIP note
    /// when mounting is not permitted, or a panic under SQUALL_REQUIRE_TOOLS=1.
    pub fn new(path: &Path, size_bytes: u64) -> Option<TmpfsMount> {
        std::fs::create_dir_all(path).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_bytes}"), "tmpfs"])
            .arg(path)
            .output();
        match out {
            Ok(o) if o.status.success() => Some(TmpfsMount {
                path: path.to_owned(),
            }),
            other => {
                let why = match other {
                    Ok(o) => String::from_utf8_lossy(&o.stderr).trim().to_string(),
                    Err(e) => e.to_string(),
                };
                if require_tools() {
                    panic!(
                        "cannot mount a tmpfs on {} ({why}); this test needs root or CAP_SYS_ADMIN",
                        path.display()
                    );
                }
                eprintln!(
                    "SKIP: cannot mount a tmpfs on {} ({why}); run as root to test a full disk",
                    path.display()
                );
                None
            }
        }
    }
}

impl Drop for TmpfsMount {
    fn drop(&mut self) {
        // Lazy, so a process still holding a file there (squall being killed) cannot keep
        // the mount alive after the test.
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// Fills the filesystem holding `dir` with one file of zeros until it reports ENOSPC.
pub fn fill_filesystem(dir: &Path) -> PathBuf {
    let filler = dir.join("filler");
    let mut f = std::fs::File::create(&filler).unwrap();
    let chunk = [0u8; 4096];
    // Bounded: a tmpfs of a few KiB fills within a few iterations; 1 GiB is a runaway.
    for _ in 0..(1 << 18) {
        match f.write_all(&chunk) {
            Ok(()) => continue,
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => return filler,
            Err(e) => panic!("filling {}: {e}", dir.display()),
        }
    }
    panic!("{} did not fill up", dir.display());
}

/// The `errored_torrents` list of an admin endpoint's /stats.
pub fn errored_torrents(admin: SocketAddr) -> Vec<serde_json::Value> {
    let (code, body) = http_get(admin, "/stats");
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("/stats JSON");
    v["errored_torrents"]
        .as_array()
        .cloned()
        .expect("/stats has errored_torrents")
}

/// Calls `probe` every 100 ms until it gives a value; panics naming `what` after `timeout`.
pub fn wait_for<T>(timeout: Duration, what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Writes a squall config file (TOML `text`) into `dir`; returns its path.
pub fn write_config(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("squall.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Runs `squall ARGS` with stderr on a pipe for `secs`, then SIGTERM; returns stderr.
pub fn stderr_of_run(args: &[&str], secs: u64) -> String {
    let child = Command::new(squall_bin())
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(secs));
    // SAFETY: plain kill(2) on our child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs `squall config check` on `text`; returns (exit code, stderr).
pub fn config_check(text: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("squall.toml");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(squall_bin())
        .args(["config", "check"])
        .arg(&path)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// One request to an admin endpoint with an optional bearer token and body; (status, JSON
/// body, or Null when the body is not JSON).
pub fn admin_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &[u8],
) -> (u16, serde_json::Value) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("admin connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = s.write_all(head.as_bytes());
    let _ = s.write_all(body);
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let raw = String::from_utf8_lossy(&raw);
    let (status, body) = split_response(&raw);
    (
        status,
        serde_json::from_str(body).unwrap_or(serde_json::Value::Null),
    )
}

/// Sends a BitTorrent handshake for `info_hash` (hex); true when squall answers with its own
/// handshake (it serves the torrent), false when it closes instead.
pub fn handshake_accepted(addr: SocketAddr, info_hash: &str) -> bool {
    let mut s = raw_connect(addr);
    let mut hs = Vec::with_capacity(68);
    hs.push(19u8);
    hs.extend_from_slice(b"BitTorrent protocol");
    hs.extend_from_slice(&[0u8; 8]);
    hs.extend_from_slice(&hex::decode(info_hash).expect("hex info-hash"));
    hs.extend_from_slice(b"-TT0001-abcdefghijkl");
    write_all(&mut s, &hs);
    let mut reply = [0u8; 68];
    s.read_exact(&mut reply).is_ok() && reply[28..48] == hs[28..48]
}
