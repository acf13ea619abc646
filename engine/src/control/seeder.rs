//! Starting and stopping the shards: the control plane's handle on the data plane.
//!
//! Owns: binding every listen address once per shard (SO_REUSEPORT; after the exclusive
//! probe of `crate::instance`, so a port another process listens on is refused), spawning the shard
//! threads (each builds its own ring on its own thread, pinned to its core), the bounded
//! channels to and from them, and the extras loader that answers the shards' .torrent reads
//! (`control::extras`). Must never: touch a shard's state directly: commands go through
//! `ShardCommand` channels, stats come back as snapshots.

use crate::catalog::Catalog;
use crate::config::{DirectIo, EngineConfig};
use crate::control::extras::ExtrasLoader;
use crate::net;
use crate::plane::{
    ErroredSet, ExtrasRequest, HealthReport, ShardCommand, EXTRAS_REQUESTS_CAPACITY,
    HEALTH_REPORTS_CAPACITY,
};
use crate::shard::admission::Admission;
use crate::shard::{Shard, ShardSetup};
use crate::stats::ShardStats;
use crossbeam_channel::{bounded, Receiver, Sender};
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;

/// Commands queued per shard; the control plane sends few (shutdown, catalog swaps).
pub const SHARD_COMMAND_CAPACITY: usize = 16;

pub struct Seeder {
    shards: Vec<(Sender<ShardCommand>, JoinHandle<ShardStats>)>,
    stats_rx: Receiver<ShardStats>,
    health_rx: Receiver<HealthReport>,
    /// Answers the shards' extras requests; None only after `join` took it.
    extras: Option<ExtrasLoader>,
    local_addrs: Vec<SocketAddr>,
    /// Where `[http] listen` was bound (ports resolved), in config order.
    http_addrs: Vec<SocketAddr>,
    pub fixed_buffers: bool,
    next_dial: std::sync::atomic::AtomicUsize,
    /// The admission counts every shard shares: all back to 0 once every shard has freed
    /// its peers (checked in `join`).
    admission: Arc<Admission>,
}

impl Seeder {
    /// Binds every listen address on every shard and starts the shards. Returns only when
    /// every shard is accepting, or with the first start-up error (and nothing left running).
    pub fn start(mut config: EngineConfig, catalog: Arc<Catalog>) -> Result<Seeder, String> {
        config.validate()?;
        if config.direct_io == DirectIo::Auto {
            let catalog_bytes = catalog.torrents().iter().map(|t| t.total_length).sum();
            let choice = crate::read_mode::resolve(&mut config, catalog_bytes);
            tracing::info!("direct_io = auto: {}", choice.why);
            config.validate()?;
        }
        let shard_count = config.shard_count();
        let cpus = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        // Port 0 means "any": the first bind picks the port, the other shards reuse it.
        // Before any SO_REUSEPORT bind of ours: another listener on a port (a second squall)
        // would otherwise share it silently and take most new connections.
        for addr in config.listen.iter().chain(&config.http.listen) {
            crate::instance::probe_port_free(addr)?;
        }
        let mut listen: Vec<SocketAddr> = Vec::new();
        let mut listeners: Vec<Vec<std::os::fd::OwnedFd>> =
            (0..shard_count).map(|_| Vec::new()).collect();
        for addr in &config.listen {
            let first = net::reuseport_listener(addr)?;
            let bound = net::local_addr(&first).unwrap_or(*addr);
            listen.push(bound);
            listeners[0].push(first);
            for per_shard in listeners.iter_mut().skip(1) {
                per_shard.push(net::reuseport_listener(&bound)?);
            }
        }
        // HTTP listeners go after the peer ones: a shard tells them apart by index.
        let mut http_addrs: Vec<SocketAddr> = Vec::new();
        for addr in &config.http.listen {
            let first = net::reuseport_listener(addr)?;
            let bound = net::local_addr(&first).unwrap_or(*addr);
            http_addrs.push(bound);
            listeners[0].push(first);
            for per_shard in listeners.iter_mut().skip(1) {
                per_shard.push(net::reuseport_listener(&bound)?);
            }
        }
        let config = Arc::new(config);
        let admission = Arc::new(Admission::from_config(&config));
        let (stats_tx, stats_rx) = bounded(config.stats_channel_capacity * shard_count);
        let (health_tx, health_rx) = bounded(HEALTH_REPORTS_CAPACITY);
        let (extras_tx, extras_rx) = bounded::<ExtrasRequest>(EXTRAS_REQUESTS_CAPACITY);
        let mut rand_bytes = [0u8; 12];
        for b in rand_bytes.iter_mut() {
            *b = rand::random();
        }
        let peer_id = crate::wire::handshake::peer_id(b"-SQ0100-", rand_bytes);
        let mut shards = Vec::with_capacity(shard_count);
        // Ok(None): fixed buffers; Ok(Some(why)): that shard fell back to plain buffers.
        let (ready_tx, ready_rx) = bounded::<Result<Option<String>, String>>(shard_count);
        for (index, shard_listeners) in listeners.into_iter().enumerate() {
            let (cmd_tx, cmd_rx) = bounded(SHARD_COMMAND_CAPACITY);
            let setup = ShardSetup {
                index,
                config: config.clone(),
                catalog: catalog.clone(),
                listeners: shard_listeners,
                commands: cmd_rx,
                stats_tx: stats_tx.clone(),
                health_tx: health_tx.clone(),
                extras_tx: extras_tx.clone(),
                admission: admission.clone(),
                peer_id,
                cpu: if config.pin_shards {
                    Some(index % cpus)
                } else {
                    None
                },
            };
            let ready = ready_tx.clone();
            let handle = std::thread::Builder::new()
                .name(format!("squall-shard-{index}"))
                .spawn(move || match Shard::new(setup) {
                    Ok(shard) => {
                        let fallback = shard.fixed_buffers_error().map(str::to_owned);
                        let _ = ready.send(Ok(fallback));
                        shard.run()
                    }
                    Err(e) => {
                        let _ = ready.send(Err(format!("shard {index}: {e}")));
                        ShardStats::new(index)
                    }
                })
                .map_err(|e| format!("cannot start shard thread {index}: {e}"))?;
            shards.push((cmd_tx, handle));
        }
        // Requests may already queue while it starts: the channel holds them.
        let senders = shards.iter().map(|(tx, _)| tx.clone()).collect();
        let extras = match ExtrasLoader::start(extras_rx, senders) {
            Ok(loader) => loader,
            Err(e) => {
                for (tx, _) in &shards {
                    let _ = tx.send(ShardCommand::Shutdown);
                }
                for (_, handle) in shards {
                    let _ = handle.join();
                }
                return Err(e);
            }
        };
        let mut seeder = Seeder {
            shards,
            stats_rx,
            health_rx,
            extras: Some(extras),
            local_addrs: listen,
            http_addrs,
            fixed_buffers: true,
            next_dial: std::sync::atomic::AtomicUsize::new(0),
            admission,
        };
        let mut fallbacks = Vec::new();
        for _ in 0..shard_count {
            match ready_rx.recv() {
                Ok(Ok(None)) => {}
                Ok(Ok(Some(why))) => fallbacks.push(why),
                Ok(Err(e)) => {
                    seeder.shutdown();
                    let _ = seeder.join();
                    return Err(e);
                }
                Err(_) => return Err("a shard thread died during start-up".into()),
            }
        }
        if let Some(why) = fallbacks.first() {
            seeder.fixed_buffers = false;
            // One warning for the process, however many shards fell back.
            tracing::warn!(
                "{} of {shard_count} shard(s) use unregistered send buffers: {why}. Reads and \
                 sends still work, with plain Read/Send instead of ReadFixed (slower). Fix: \
                 raise RLIMIT_MEMLOCK (`ulimit -l unlimited`, or LimitMEMLOCK=infinity in the \
                 systemd unit) or lower buffer_pool_slots_per_shard or block_cache_bytes_per_shard; \
                 squall_shard_fixed_buffers in /metrics shows which shards",
                fallbacks.len()
            );
        }
        Ok(seeder)
    }

    /// The addresses actually bound (port 0 resolved).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.local_addrs
    }

    /// Where HTTP is served (empty when `[http] listen` is not set).
    pub fn http_addrs(&self) -> &[SocketAddr] {
        &self.http_addrs
    }

    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// Every shard's command channel, in shard order (the API's peer lists use `try_send`).
    pub fn command_senders(&self) -> Vec<Sender<ShardCommand>> {
        self.shards.iter().map(|(tx, _)| tx.clone()).collect()
    }

    /// Snapshots from the shards (one per shard per second).
    pub fn stats(&self) -> &Receiver<ShardStats> {
        &self.stats_rx
    }

    /// Content-fault reports from the shards (for `health::HealthMonitor`).
    pub fn health_reports(&self) -> &Receiver<HealthReport> {
        &self.health_rx
    }

    /// Hands every shard the errored set. Never blocks: false when some shard's command
    /// queue was full (the caller sends the set again later; it is idempotent).
    pub fn publish_health(&self, set: Arc<ErroredSet>) -> bool {
        let mut all = true;
        for (tx, _) in &self.shards {
            all &= tx.try_send(ShardCommand::Health(set.clone())).is_ok();
        }
        all
    }

    /// Gives every shard a new catalog snapshot (new handshakes use it).
    pub fn swap_catalog(&self, catalog: Arc<Catalog>) {
        for (tx, _) in &self.shards {
            let _ = tx.send(ShardCommand::SwapCatalog(catalog.clone()));
        }
    }

    /// Dials `addr` for `info_hash` from one of the shards (round-robin) and serves it like an
    /// inbound peer. Never blocks: a shard whose command queue is full refuses (the caller
    /// may retry later).
    pub fn connect(
        &self,
        addr: SocketAddr,
        info_hash: crate::metainfo::InfoHash,
    ) -> Result<(), String> {
        let n = self
            .next_dial
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            % self.shards.len();
        self.shards[n]
            .0
            .try_send(ShardCommand::Connect { addr, info_hash })
            .map_err(|_| format!("shard {n} command queue is full"))
    }

    /// Asks every shard to stop accepting, close its peers and exit; the extras loader too
    /// (draining shards load nothing).
    pub fn shutdown(&self) {
        for (tx, _) in &self.shards {
            let _ = tx.send(ShardCommand::Shutdown);
        }
        if let Some(loader) = &self.extras {
            loader.stop();
        }
    }

    /// Waits for every shard and the extras loader; returns the merged final stats.
    pub fn join(mut self) -> ShardStats {
        let mut total = ShardStats::new(0);
        total.accepting = true;
        let mut all_clean = true;
        for (_, handle) in self.shards {
            match handle.join() {
                Ok(stats) => total.merge(&stats),
                Err(_) => {
                    all_clean = false;
                    tracing::error!("a shard thread panicked");
                }
            }
        }
        // Every shard freed every peer: each admission it counted must have been released.
        let admitted = self.admission.peers();
        if all_clean && total.peers_connected == 0 && admitted > 0 {
            tracing::error!("leak audit: {admitted} admission counts still held after every shard freed its peers");
            crate::abort_in_debug_builds("leak audit");
        }
        if let Some(loader) = self.extras.take() {
            loader.join();
        }
        total
    }
}
