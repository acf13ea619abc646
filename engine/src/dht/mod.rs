//! The Mainline DHT (BEP 5): one node per process, announcing the catalog's public torrents.
//!
//! Owns: the `mainline` crate's node (its own actor thread and UDP socket), the `squall-dht`
//! thread that feeds it announces at the configured rate (`schedule`), the routing table and
//! the node's public address saved in the state directory (so a restart rejoins at once, its
//! node id already valid for that address under BEP 42), and the process-level DHT stats the
//! control plane copies into `/stats` and `/metrics`. Must never: run on a shard thread, make
//! a shard wait, announce or look up a private torrent (BEP 27: torrents reach it only through
//! `public_torrents`, which leaves private ones out; nothing here ever sends get_peers), or stop Squall from seeding: every failure here
//! (a port in use, no bootstrap node resolving) is logged once and the DHT stays off.
//!
//! The crate's async API is driven by polling its futures with a no-op waker every
//! `DHT_TICK`: at most `DHT_ANNOUNCES_IN_FLIGHT_MAX` of them, so no executor is needed and one
//! thread does all of it.

pub mod config;
pub mod schedule;

pub use config::{DhtConfig, DhtServerMode};

use crate::metainfo::InfoHash;
use mainline::async_dht::AsyncDht;
use schedule::AnnounceSchedule;
use std::future::Future;
use std::net::{SocketAddr, SocketAddrV4, ToSocketAddrs};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Announces in flight at once (each is an iterative lookup then announce_peer to the
/// closest nodes, a few seconds on the Internet). At the default 50/s with ~3 s each, ~150
/// would be wanted; this bound makes a slow network slow the pass down instead.
pub const DHT_ANNOUNCES_IN_FLIGHT_MAX: usize = 256;
/// Nodes saved from the routing table (one `IP:PORT` a line).
pub const DHT_SAVED_NODES_MAX: usize = 512;
/// File in the state directory holding the saved routing table.
pub const DHT_NODES_FILE: &str = "dht-nodes.txt";
/// File in the state directory holding the node's public IPv4 address as the DHT reported
/// it (one line). BEP 42 derives a node id from that address, so the id a restart starts
/// with is one the network accepts, instead of a random one replaced (and the routing table
/// rebuilt) once the first answers name the address.
pub const DHT_PUBLIC_IP_FILE: &str = "dht-public-ip.txt";
/// How often the thread polls its futures and the schedule.
const DHT_TICK: Duration = Duration::from_millis(10);
/// How often the node count is read from the node.
const DHT_STATS_EVERY: Duration = Duration::from_secs(1);
/// First routing-table save after start, then every `DHT_SAVE_EVERY` (and at stop).
const DHT_FIRST_SAVE_AFTER: Duration = Duration::from_secs(20);
const DHT_SAVE_EVERY: Duration = Duration::from_secs(300);
/// Longest a stop waits for the node to hand over its routing table.
const DHT_STOP_SAVE_TIMEOUT: Duration = Duration::from_secs(2);

/// What the DHT node needs to start.
#[derive(Debug, Clone)]
pub struct DhtSetup {
    pub config: DhtConfig,
    /// Where the routing table is saved; None: not saved.
    pub state_dir: Option<PathBuf>,
    /// The peer port announced (announce_peer `port`).
    pub peer_port: u16,
    /// The catalog's public torrents.
    pub torrents: Vec<InfoHash>,
}

/// The catalog's torrents the DHT may announce: never a private one (BEP 27).
pub fn public_torrents(catalog: &crate::catalog::Catalog) -> Vec<InfoHash> {
    let public: Vec<InfoHash> = catalog
        .torrents()
        .iter()
        .filter(|t| !t.private)
        .map(|t| t.info_hash)
        .collect();
    debug_assert!(public
        .iter()
        .all(|h| catalog.get(h).is_some_and(|t| !t.private)));
    public
}

/// Process-level DHT numbers for `/stats` and `/metrics`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DhtStats {
    /// The node is up (bound and running).
    pub running: bool,
    /// Why it is not, when it failed to start.
    pub error: Option<String>,
    /// UDP address bound.
    pub local_addr: Option<SocketAddr>,
    /// The node id (hex), and the public address the DHT reports for this node.
    pub node_id: Option<String>,
    pub public_ip: Option<std::net::Ipv4Addr>,
    /// Good nodes in the routing table.
    pub nodes: u64,
    /// Public torrents announced each pass.
    pub torrents: u64,
    pub announces_ok: u64,
    pub announces_failed: u64,
    /// Torrents of this pass not yet started.
    pub queue_len: u64,
    pub in_flight: u64,
    /// Passes over the whole catalog finished, and how long the last took.
    pub passes: u64,
    pub last_pass_secs: Option<f64>,
}

struct Shared {
    stats: Mutex<DhtStats>,
    /// A reload's new torrent list, taken by the thread on its next tick (latest wins).
    pending: Mutex<Option<Vec<InfoHash>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The running DHT node and its announce thread.
pub struct DhtNode {
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl DhtNode {
    /// Starts the thread; binding and bootstrapping happen there, so this never blocks on
    /// DNS or the network, and a failure only shows in `stats().error` and one log line.
    pub fn start(setup: DhtSetup) -> Result<DhtNode, String> {
        let shared = Arc::new(Shared {
            stats: Mutex::new(DhtStats::default()),
            pending: Mutex::new(None),
        });
        let stop = Arc::new(AtomicBool::new(false));
        let (s, f) = (shared.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("squall-dht".into())
            .spawn(move || run(setup, &s, &f))
            .map_err(|e| format!("cannot start the DHT thread: {e}"))?;
        Ok(DhtNode {
            shared,
            stop,
            thread: Some(thread),
        })
    }

    pub fn stats(&self) -> DhtStats {
        lock(&self.shared.stats).clone()
    }

    /// The catalog was reloaded: announce these public torrents from now on.
    pub fn set_torrents(&self, torrents: Vec<InfoHash>) {
        *lock(&self.shared.pending) = Some(torrents);
    }

    /// Saves the routing table and stops the node (bounded by `DHT_STOP_SAVE_TIMEOUT`).
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for DhtNode {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

type Announce = Pin<Box<dyn Future<Output = bool> + Send>>;

/// What is saved and shown of the node: its good nodes, id and public address.
struct NodeState {
    nodes: Vec<String>,
    id: String,
    public_ip: Option<std::net::Ipv4Addr>,
}

fn node_state(dht: &AsyncDht) -> Pin<Box<dyn Future<Output = NodeState> + Send>> {
    let d = dht.clone();
    Box::pin(async move {
        let nodes = d.to_bootstrap().await;
        let info = d.info().await;
        NodeState {
            nodes,
            id: info.id().to_string(),
            public_ip: info.public_address().map(|a| *a.ip()),
        }
    })
}
type Pending<T> = Option<Pin<Box<dyn Future<Output = T> + Send>>>;

/// Polls once with a no-op waker: the crate's futures wait on flume channels that the
/// crate's actor thread fills; we look again every tick.
fn poll_once<T>(f: &mut Pin<Box<dyn Future<Output = T> + Send>>) -> Poll<T> {
    f.as_mut().poll(&mut Context::from_waker(Waker::noop()))
}

/// Saved nodes first (they were good when we stopped), then the configured bootstrap,
/// resolved here (DNS may block; this is the DHT thread). IPv4 only.
fn bootstrap_nodes(setup: &DhtSetup) -> (Vec<SocketAddrV4>, usize) {
    let mut nodes: Vec<SocketAddrV4> = setup
        .state_dir
        .as_ref()
        .and_then(|d| std::fs::read_to_string(d.join(DHT_NODES_FILE)).ok())
        .map(|text| {
            text.lines()
                .filter_map(|l| l.trim().parse().ok())
                .take(DHT_SAVED_NODES_MAX)
                .collect()
        })
        .unwrap_or_default();
    let saved = nodes.len();
    for entry in &setup.config.bootstrap {
        match entry.to_socket_addrs() {
            Ok(addrs) => nodes.extend(addrs.filter_map(|a| match a {
                SocketAddr::V4(v4) => Some(v4),
                SocketAddr::V6(_) => None,
            })),
            Err(e) => tracing::warn!("DHT bootstrap node {entry} does not resolve: {e}"),
        }
    }
    (nodes, saved)
}

/// The public address an earlier run saved, if any (anything unreadable: none).
fn saved_public_ip(setup: &DhtSetup) -> Option<std::net::Ipv4Addr> {
    let dir = setup.state_dir.as_ref()?;
    let text = std::fs::read_to_string(dir.join(DHT_PUBLIC_IP_FILE)).ok()?;
    text.trim().parse().ok()
}

fn save_public_ip(setup: &DhtSetup, ip: Option<std::net::Ipv4Addr>) {
    let (Some(dir), Some(ip)) = (&setup.state_dir, ip) else {
        return;
    };
    let path = dir.join(DHT_PUBLIC_IP_FILE);
    if let Err(e) = crate::storage::write_atomic(&path, format!("{ip}\n").as_bytes()) {
        tracing::warn!(
            "cannot save the DHT public address to {}: {e}",
            path.display()
        );
    }
}

fn save_nodes(setup: &DhtSetup, nodes: &[String]) {
    let Some(dir) = &setup.state_dir else { return };
    if nodes.is_empty() {
        return; // keep what an earlier run saved rather than an empty table
    }
    let mut text = String::new();
    for n in nodes.iter().take(DHT_SAVED_NODES_MAX) {
        text.push_str(n);
        text.push('\n');
    }
    let path = dir.join(DHT_NODES_FILE);
    if let Err(e) = crate::storage::write_atomic(&path, text.as_bytes()) {
        tracing::warn!(
            "cannot save the DHT routing table to {}: {e}",
            path.display()
        );
    }
}

fn start_node(setup: &DhtSetup, listen: SocketAddr) -> Result<(AsyncDht, usize), String> {
    let SocketAddr::V4(listen) = listen else {
        return Err(format!("{listen} is not IPv4"));
    };
    let (nodes, saved) = bootstrap_nodes(setup);
    if nodes.is_empty() {
        return Err(
            "no bootstrap node resolved and none was saved (check [dht] bootstrap \
                    and DNS)"
                .into(),
        );
    }
    let boot: Vec<String> = nodes.iter().map(|a| a.to_string()).collect();
    let mut b = mainline::Dht::builder();
    b.bootstrap(&boot)
        .bind_address(*listen.ip())
        .port(listen.port());
    if setup.config.server_mode == DhtServerMode::Always {
        b.server_mode();
    }
    if let Some(ip) = saved_public_ip(setup) {
        tracing::info!("DHT node id derived from the saved public address {ip} (BEP 42)");
        b.public_ip(ip);
    }
    let dht = b.build().map_err(|e| {
        format!("cannot bind UDP {listen}: {e} (free the port, set [dht] listen, or --no-dht)")
    })?;
    Ok((dht.as_async(), saved))
}

fn run(setup: DhtSetup, shared: &Shared, stop: &AtomicBool) {
    let listen = match setup.config.listen_addr() {
        Ok(a) => a,
        Err(e) => return fail(shared, e),
    };
    let (dht, saved) = match start_node(&setup, listen) {
        Ok(d) => d,
        Err(e) => return fail(shared, e),
    };
    run_node(&setup, dht, saved, shared, stop);
}

fn fail(shared: &Shared, why: String) {
    // Said once: the DHT stays off for this run and seeding goes on.
    tracing::warn!("DHT could not start: {why}; seeding goes on without the DHT");
    lock(&shared.stats).error = Some(why);
}

/// The announce loop: take reloads, start due announces, poll what is in flight, refresh the
/// stats, save the routing table now and then; at stop, save it once more.
fn run_node(setup: &DhtSetup, dht: AsyncDht, saved: usize, shared: &Shared, stop: &AtomicBool) {
    let started_at = Instant::now();
    let mut schedule = AnnounceSchedule::new(
        Duration::from_secs(setup.config.reannounce_secs),
        setup.config.announce_rate_per_sec,
        DHT_ANNOUNCES_IN_FLIGHT_MAX,
        started_at,
    );
    schedule.set_torrents(&setup.torrents);
    let local = {
        let d = dht.clone();
        let mut f: Pin<Box<dyn Future<Output = SocketAddrV4> + Send>> =
            Box::pin(async move { d.info().await.local_addr() });
        loop {
            if let Poll::Ready(a) = poll_once(&mut f) {
                break a;
            }
            if stop.load(Ordering::Relaxed) {
                return;
            }
            std::thread::sleep(DHT_TICK);
        }
    };
    tracing::info!(
        listen = %local,
        saved_nodes = saved,
        torrents = schedule.len(),
        rate_per_sec = setup.config.announce_rate_per_sec,
        reannounce_secs = setup.config.reannounce_secs,
        "DHT node started"
    );
    {
        let mut st = lock(&shared.stats);
        st.running = true;
        st.local_addr = Some(SocketAddr::V4(local));
    }
    let mut flying: Vec<Announce> = Vec::with_capacity(DHT_ANNOUNCES_IN_FLIGHT_MAX);
    let (mut ok, mut failed) = (0u64, 0u64);
    let mut nodes_query: Pending<NodeState> = None;
    let mut nodes = 0u64;
    let mut stats_at = started_at;
    let mut save_at = started_at + DHT_FIRST_SAVE_AFTER;
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        if let Some(torrents) = lock(&shared.pending).take() {
            let (added, removed) = schedule.set_torrents(&torrents);
            tracing::info!(added, removed, "DHT announces follow the reloaded catalog");
        }
        while let Some(hash) = schedule.next(now) {
            let d = dht.clone();
            let port = setup.peer_port;
            flying.push(Box::pin(async move {
                match mainline::Id::from_bytes(hash.0) {
                    Ok(id) => d.announce_peer(id, Some(port)).await.is_ok(),
                    Err(_) => false,
                }
            }));
        }
        let mut i = 0;
        while i < flying.len() {
            if let Poll::Ready(stored) = poll_once(&mut flying[i]) {
                drop(flying.swap_remove(i));
                schedule.on_done(Instant::now());
                if stored {
                    ok += 1;
                } else {
                    failed += 1;
                }
            } else {
                i += 1;
            }
        }
        debug_assert_eq!(flying.len(), schedule.in_flight());
        if nodes_query.is_none() && (now >= stats_at || now >= save_at) {
            nodes_query = Some(node_state(&dht));
        }
        if let Some(q) = nodes_query.as_mut() {
            if let Poll::Ready(state) = poll_once(q) {
                nodes_query = None;
                nodes = state.nodes.len() as u64;
                stats_at = now + DHT_STATS_EVERY;
                if now >= save_at {
                    save_nodes(setup, &state.nodes);
                    save_public_ip(setup, state.public_ip);
                    save_at = now + DHT_SAVE_EVERY;
                }
                let mut st = lock(&shared.stats);
                st.node_id = Some(state.id);
                st.public_ip = state.public_ip;
            }
        }
        {
            let mut st = lock(&shared.stats);
            st.nodes = nodes;
            st.torrents = schedule.len() as u64;
            st.announces_ok = ok;
            st.announces_failed = failed;
            st.queue_len = schedule.queue_len() as u64;
            st.in_flight = schedule.in_flight() as u64;
            st.passes = schedule.passes_done();
            st.last_pass_secs = schedule.last_pass().map(|d| d.as_secs_f64());
        }
        std::thread::sleep(DHT_TICK);
    }
    // Stop: save the routing table and address for the next start (bounded wait).
    let mut q = node_state(&dht);
    let deadline = Instant::now() + DHT_STOP_SAVE_TIMEOUT;
    while Instant::now() < deadline {
        if let Poll::Ready(state) = poll_once(&mut q) {
            save_nodes(setup, &state.nodes);
            save_public_ip(setup, state.public_ip);
            break;
        }
        std::thread::sleep(DHT_TICK);
    }
    lock(&shared.stats).running = false;
    tracing::info!(
        announces_ok = ok,
        announces_failed = failed,
        "DHT node stopped"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    /// A node bound to loopback whose only bootstrap is a dead loopback port: it sends
    /// nothing beyond 127.0.0.1, and its id is whatever it started with.
    fn started_id(state_dir: &std::path::Path) -> mainline::Id {
        let setup = DhtSetup {
            config: DhtConfig {
                enabled: true,
                listen: "127.0.0.1:0".into(),
                bootstrap: vec!["127.0.0.1:9".into()],
                ..DhtConfig::default()
            },
            state_dir: Some(state_dir.to_path_buf()),
            peer_port: 6881,
            torrents: Vec::new(),
        };
        let listen = setup.config.listen_addr().unwrap();
        let (dht, _) = start_node(&setup, listen).expect("node on loopback");
        let d = dht.clone();
        let mut f: Pin<Box<dyn Future<Output = mainline::Id> + Send>> =
            Box::pin(async move { *d.info().await.id() });
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Poll::Ready(id) = poll_once(&mut f) {
                return id;
            }
            assert!(Instant::now() < deadline, "no node info");
            std::thread::sleep(DHT_TICK);
        }
    }

    #[test]
    fn a_saved_public_address_gives_a_bep42_node_id_from_the_start() {
        // 203.0.113.7 (TEST-NET-3) stands for the public address an earlier run learned; it is
        // only read, never contacted. A random id passes BEP 42's check with p = 2^-21.
        let public = Ipv4Addr::new(203, 0, 113, 7);
        let dir = tempfile::tempdir().unwrap();
        assert!(!started_id(dir.path()).is_valid_for_ip(public));
        std::fs::write(dir.path().join(DHT_PUBLIC_IP_FILE), "203.0.113.7\n").unwrap();
        assert!(started_id(dir.path()).is_valid_for_ip(public));
        // An unreadable file is ignored, not an error.
        std::fs::write(dir.path().join(DHT_PUBLIC_IP_FILE), "not an address\n").unwrap();
        assert!(!started_id(dir.path()).is_valid_for_ip(public));
    }
}
