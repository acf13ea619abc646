//! The control plane: everything that runs beside the shards, never on them.
//!
//! Owns: the control loop (`Control`): starting and stopping the shards (`seeder`), torrent
//! health and rechecks (`health`), the admin endpoint (`admin`), the shards' .torrent reads
//! (`extras`), tracker announces (`crate::tracker`, started and reloaded here), the DHT node
//! (`crate::dht`, started and reloaded here), folding the
//! shards' stats snapshots into the `StatsView` the admin endpoint reads, catalog swaps on
//! reload, and the periodic summary line. Must never: run on a shard thread, reach a shard
//! other than through the `plane` messages over bounded channels, or build catalogs (that is
//! the caller's: zero config, sample content and .torrent directories live in the CLI, behind
//! `CatalogRebuild`).
//!
//! One thread (the caller's) runs the loop; every part that may block (announces, rechecks,
//! .torrent reads, admin requests) has its own thread, so a loop turn is bounded by
//! `POLL_PERIOD`.

pub mod admin;
pub mod api;
pub mod auth;
pub mod extras;
pub mod health;
pub mod runtime;
pub mod seeder;

use crate::catalog::{Catalog, CatalogTorrent};
use crate::config::{EngineConfig, TrackerConfig};
use crate::dht::{DhtConfig, DhtNode, DhtSetup};
use crate::stats::catalog_health::{SkippedRow, TorrentStates, TrackerAnnounces};
use crate::stats::view::StatsView;
use crate::stats::ShardStats;
use crate::tracker::{TorrentAnnounce, TrackerManager, TrackerSetup};
use admin::{AdminServer, SharedView};
use health::HealthMonitor;
use runtime::{Runtime, RuntimeSetup, SharedRuntime};
use seeder::Seeder;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Longest one loop turn waits for shard snapshots before it looks at health, reload and
/// the summary again (and so the longest a stop or reload flag waits to be seen).
pub const POLL_PERIOD: Duration = Duration::from_millis(200);

/// The admin endpoint to start.
#[derive(Debug, Clone)]
pub struct AdminSetup {
    pub listen: SocketAddr,
    /// Bearer token every request must carry, if any.
    pub token: Option<String>,
    /// A failed bind is only a warning (the built-in default port may be taken by another
    /// squall or a test); an address the operator chose must work.
    pub optional: bool,
    /// Read-only routes need the token too (non-loopback listener, or `[admin] token`).
    pub reads_need_token: bool,
    /// `[admin] auth_failures_per_min_max`.
    pub auth_failures_per_min_max: u32,
    /// `[admin] api_body_bytes_max`.
    pub api_body_bytes_max: usize,
}

/// Everything the control plane needs to start.
#[derive(Debug, Clone)]
pub struct ControlSetup {
    pub engine: EngineConfig,
    /// None: no admin endpoint (`--admin off`).
    pub admin: Option<AdminSetup>,
    pub tracker: TrackerConfig,
    /// Seconds between summary lines in the log; 0: never.
    pub summary_secs: u64,
    /// The runtime catalog API (`/api/v1/` on the admin endpoint); None: no API.
    pub api: Option<RuntimeSetup>,
}

/// Where a reload (SIGHUP) gets the new catalog: the control plane swaps catalogs, its
/// caller builds them.
pub trait CatalogRebuild {
    /// Builds the catalog again from its source. An error or an empty catalog keeps the
    /// current one.
    fn rebuild(&mut self) -> Result<Catalog, String>;
    /// A reload added this torrent (called before the new catalog reaches the shards).
    fn on_added(&mut self, _torrent: &CatalogTorrent) {}
    /// What the latest `rebuild` left out and why (shown in /stats, /health, /metrics).
    fn skipped(&self) -> Vec<SkippedRow> {
        Vec::new()
    }
}

/// Any closure that builds a catalog is a source (tests, embedders).
impl<F: FnMut() -> Result<Catalog, String>> CatalogRebuild for F {
    fn rebuild(&mut self) -> Result<Catalog, String> {
        self()
    }
}

/// The running control plane: the shards and every control-plane thread beside them.
pub struct Control {
    /// Shared with the tracker manager's connect hook only; unshared again at shutdown.
    seeder: Arc<Seeder>,
    admin: Option<AdminServer>,
    tracker_config: TrackerConfig,
    trackers: Option<TrackerManager>,
    trackers_started: bool,
    dht: Option<DhtNode>,
    health: HealthMonitor,
    view: SharedView,
    /// The API's torrents merged with the source's (`runtime`), when the API runs.
    runtime: Option<SharedRuntime>,
    /// The catalog the shards serve (the source's merged with the API's).
    catalog: Arc<Catalog>,
    /// Torrents of `catalog` with every piece verified.
    catalog_complete: u64,
    summary_every: Option<Duration>,
    summary_last_at: Instant,
    summary_last_uploaded_bytes: u64,
}

impl Control {
    /// Starts the shards (bound and accepting when this returns), the extras loader, the
    /// admin endpoint and the health monitor. Trackers start with `start_trackers` (or `run`),
    /// so a caller can print its own start-up lines first, as `squall seed` does.
    pub fn start(setup: ControlSetup, catalog: Arc<Catalog>) -> Result<Control, String> {
        let recheck = Duration::from_secs(setup.engine.errored_recheck_secs);
        let top_torrents = setup.engine.stats_top_torrents;
        let runtime: Option<SharedRuntime> = match setup.api {
            Some(rs) => Some(Arc::new(Mutex::new(Runtime::start(rs, catalog.clone())?))),
            None => None,
        };
        let catalog = match &runtime {
            Some(r) => Arc::new(runtime::lock(r).served()),
            None => catalog,
        };
        let drain = Duration::from_secs(setup.engine.remove_drain_secs);
        if let Some(r) = &runtime {
            runtime::lock(r).set_drain(drain);
        }
        let seeder = Seeder::start(setup.engine, catalog.clone())?;
        let names = catalog
            .torrents()
            .iter()
            .map(|t| (t.info_hash, t.name.clone()))
            .collect();
        let view: SharedView = Arc::new(Mutex::new(StatsView::new(
            seeder.shard_count(),
            top_torrents,
            names,
        )));
        let stop_seeder = |seeder: Seeder| {
            seeder.shutdown();
            let _ = seeder.join();
        };
        let admin = match setup.admin {
            None => None,
            Some(a) => match AdminServer::start_with(
                a.listen,
                Arc::new(auth::AdminAuth::new(
                    a.token,
                    a.reads_need_token,
                    a.auth_failures_per_min_max,
                )),
                view.clone(),
                runtime.as_ref().map(|r| api::Api {
                    runtime: r.clone(),
                    body_bytes_max: a.api_body_bytes_max,
                    shards: seeder.command_senders(),
                }),
            ) {
                Ok(server) => Some(server),
                Err(e) if a.optional => {
                    tracing::warn!("{e}; running without the admin endpoint");
                    None
                }
                Err(e) => {
                    stop_seeder(seeder);
                    return Err(e);
                }
            },
        };
        let health = match HealthMonitor::start(seeder.health_reports().clone(), recheck) {
            Ok(h) => h,
            Err(e) => {
                drop(admin);
                stop_seeder(seeder);
                return Err(e);
            }
        };
        Ok(Control {
            seeder: Arc::new(seeder),
            admin,
            tracker_config: setup.tracker,
            trackers: None,
            trackers_started: false,
            dht: None,
            health,
            view,
            runtime,
            catalog_complete: complete_count(&catalog),
            catalog,
            summary_every: (setup.summary_secs > 0)
                .then(|| Duration::from_secs(setup.summary_secs)),
            summary_last_at: Instant::now(),
            summary_last_uploaded_bytes: 0,
        })
    }

    /// The peer listen addresses actually bound (port 0 resolved).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        self.seeder.local_addrs()
    }

    /// Where HTTP is served (empty when off).
    pub fn http_addrs(&self) -> &[SocketAddr] {
        self.seeder.http_addrs()
    }

    /// The admin endpoint's address, when it runs.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(AdminServer::local_addr)
    }

    pub fn shard_count(&self) -> usize {
        self.seeder.shard_count()
    }

    /// The catalog the shards serve now (the latest successful reload).
    pub fn catalog(&self) -> &Arc<Catalog> {
        &self.catalog
    }

    /// The merged stats the admin endpoint serves.
    pub fn view(&self) -> &SharedView {
        &self.view
    }

    /// Starts announcing every torrent (its own trackers, plus `[tracker] extra` for public
    /// ones); peers the trackers return are dialed from the shards (`Seeder::connect`). Does
    /// nothing when trackers are disabled or already started.
    pub fn start_trackers(&mut self) -> Result<(), String> {
        if self.trackers_started || !self.tracker_config.enabled {
            return Ok(());
        }
        let dial = self.seeder.clone();
        let view = self.view.clone();
        let manager = TrackerManager::start(TrackerSetup {
            config: self.tracker_config.clone(),
            torrents: announces(&self.catalog),
            listen: self.seeder.local_addrs().to_vec(),
            connect: Arc::new(move |addr, hash| dial.connect(addr, hash)),
            // Per-torrent payload bytes from the merged shard snapshots (BEP 3 `uploaded`).
            uploaded: Arc::new(move |hash| lock_view(&view).torrent_uploaded_bytes(hash)),
        })
        .map_err(|e| format!("config: [tracker] {e}"))?;
        self.trackers = Some(manager);
        self.trackers_started = true;
        Ok(())
    }

    /// Starts the DHT node (its own threads) announcing every public torrent with the peer
    /// port. Binding happens on the DHT thread: a port in use is logged there once and
    /// seeding goes on without the DHT. Does nothing when disabled or already started.
    pub fn start_dht(
        &mut self,
        config: &DhtConfig,
        state_dir: Option<std::path::PathBuf>,
    ) -> Result<(), String> {
        if self.dht.is_some() || !config.enabled {
            return Ok(());
        }
        let addrs = self.seeder.local_addrs();
        let peer_port = addrs
            .iter()
            .find(|a| a.is_ipv4())
            .or(addrs.first())
            .map(|a| a.port())
            .ok_or("internal error: no peer listen address to announce")?;
        self.dht = Some(DhtNode::start(DhtSetup {
            config: config.clone(),
            state_dir,
            peer_port,
            torrents: crate::dht::public_torrents(&self.catalog),
        })?);
        Ok(())
    }

    /// Starts the trackers, then turns the loop until `stop` is set. `reload` (SIGHUP) is
    /// cleared when seen and rebuilds the catalog through `source`.
    pub fn run(
        &mut self,
        stop: &AtomicBool,
        reload: &AtomicBool,
        source: &mut dyn CatalogRebuild,
    ) -> Result<(), String> {
        self.start_trackers()?;
        while !stop.load(Ordering::Relaxed) {
            self.step(stop, reload, source);
        }
        Ok(())
    }

    /// One loop turn (at most about `POLL_PERIOD`): fold shard snapshots into the view,
    /// take in health reports and publish the errored set, reload when asked, log the
    /// summary when due.
    pub fn step(
        &mut self,
        stop: &AtomicBool,
        reload: &AtomicBool,
        source: &mut dyn CatalogRebuild,
    ) {
        // Drain snapshots for at most one poll period, however many shards send them.
        let poll_until = Instant::now() + POLL_PERIOD;
        while let Ok(s) = self.seeder.stats().recv_deadline(poll_until) {
            lock_view(&self.view).apply(s, Instant::now());
            if stop.load(Ordering::Relaxed) {
                break;
            }
        }
        self.health.poll(&self.catalog);
        let seeder = &self.seeder;
        self.health.publish(|set| seeder.publish_health(set));
        lock_view(&self.view).set_errored(self.health.rows());
        if let Some(d) = &self.dht {
            lock_view(&self.view).set_dht(Some(d.stats()));
        }
        if reload.swap(false, Ordering::Relaxed) {
            self.reload(source);
        }
        let api_changed = self.runtime.as_ref().and_then(|r| runtime::lock(r).poll());
        if let Some(served) = api_changed {
            tracing::info!(torrents = served.len(), "the admin API changed the catalog");
            self.install(served);
            self.follow_catalog();
        }
        self.follow_drains();
        self.publish_catalog_health();
        self.log_summary_when_due();
    }

    /// SIGHUP: build the catalog again and hand it to the shards. Peers of unchanged
    /// torrents are not disturbed; peers of removed torrents drain; a failed reload keeps
    /// the current catalog. Every errored torrent is rechecked now, and the trackers follow.
    fn reload(&mut self, source: &mut dyn CatalogRebuild) {
        tracing::info!("SIGHUP: reloading the catalog");
        let current = self.catalog.clone();
        match source.rebuild() {
            // An empty result replaces only an empty catalog (one that started empty and
            // waits for torrents): a directory briefly unmounted must not drop everything.
            Ok(catalog) if !catalog.is_empty() || current.is_empty() => {
                let is_new = |t: &&Arc<CatalogTorrent>| current.get(&t.info_hash).is_none();
                let added = catalog.torrents().iter().filter(is_new).count();
                let removed = current
                    .torrents()
                    .iter()
                    .filter(|t| catalog.get(&t.info_hash).is_none())
                    .count();
                for t in catalog.torrents().iter().filter(is_new) {
                    source.on_added(t);
                }
                let catalog = self.merge_api(Arc::new(catalog));
                tracing::info!(torrents = catalog.len(), added, removed, "catalog reloaded");
                self.install(catalog);
                self.set_skipped(source.skipped());
            }
            Ok(_) => {
                tracing::warn!("reload found no torrent to seed; keeping the current catalog")
            }
            Err(e) => tracing::warn!("reload failed ({e}); keeping the current catalog"),
        }
        self.follow_catalog();
    }

    /// Removed torrents stop being listed as `draining` once every shard has reported
    /// since the swap (a snapshot a stats interval after the removal) and none has a peer of
    /// it left, or at their deadline. O(draining torrents) per turn.
    fn follow_drains(&mut self) {
        let Some(r) = &self.runtime else {
            return;
        };
        let pending = runtime::lock(r).draining();
        if pending.is_empty() {
            return;
        }
        let now = Instant::now();
        // Past this, a snapshot was taken after the swap reached the shard.
        let settle = POLL_PERIOD + Duration::from_millis(crate::shard::STATS_INTERVAL_MS);
        let done: Vec<_> = {
            let view = lock_view(&self.view);
            pending
                .iter()
                .filter(|(h, since, deadline)| {
                    let gone = view.torrent_totals(h).is_none_or(|t| t.peers() == 0);
                    now >= *deadline || (gone && view.all_reported_since(*since + settle))
                })
                .map(|(h, _, _)| *h)
                .collect()
        };
        runtime::lock(r).drained(&done);
    }

    /// The source's new catalog merged with the API's torrents (the rule in `runtime`).
    fn merge_api(&mut self, base: Arc<Catalog>) -> Arc<Catalog> {
        let Some(r) = &self.runtime else {
            return base;
        };
        let mut rt = runtime::lock(r);
        rt.set_base(base.clone());
        rt.poll().unwrap_or(base)
    }

    /// Hands the shards a new catalog (new handshakes use it; peers of torrents it lacks
    /// drain, then close).
    fn install(&mut self, catalog: Arc<Catalog>) {
        self.seeder.swap_catalog(catalog.clone());
        self.catalog_complete = complete_count(&catalog);
        self.catalog = catalog;
    }

    /// Health, trackers and stats names follow the catalog just installed.
    fn follow_catalog(&mut self) {
        self.health.on_reload(&self.catalog);
        if let Some(t) = &self.trackers {
            let (added, removed) = t.reload(&announces(&self.catalog));
            tracing::info!(
                added,
                removed,
                "tracker announces follow the reloaded catalog"
            );
        }
        if let Some(d) = &self.dht {
            d.set_torrents(crate::dht::public_torrents(&self.catalog));
        }
        lock_view(&self.view).add_names(
            self.catalog
                .torrents()
                .iter()
                .map(|t| (t.info_hash, t.name.clone())),
        );
    }

    /// The torrents the catalog's load left out (the caller's report; reloads replace it).
    pub fn set_skipped(&mut self, rows: Vec<SkippedRow>) {
        lock_view(&self.view).catalog_health_mut().skipped = rows;
        self.publish_catalog_health();
    }

    /// Torrents by state and announce results into the view: O(errored torrents) per turn
    /// (the complete count is taken once per catalog).
    fn publish_catalog_health(&mut self) {
        let errored = self.health.rows();
        let errored_complete = errored
            .iter()
            .filter(|r| self.catalog.get(&r.info_hash).is_some_and(|t| t.complete))
            .count() as u64;
        let complete = self.catalog_complete;
        let incomplete = self.catalog.len() as u64 - complete;
        let errored_incomplete = errored.len() as u64 - errored_complete;
        let announces = self
            .trackers
            .as_ref()
            .map(|t| {
                let c = t.counters();
                TrackerAnnounces {
                    ok: c.announces_ok,
                    failed: c.announces_failed,
                }
            })
            .unwrap_or_default();
        let mut view = lock_view(&self.view);
        let health = view.catalog_health_mut();
        health.states = TorrentStates {
            seeding: complete.saturating_sub(errored_complete),
            skipped: health.skipped.len() as u64,
            errored: errored.len() as u64,
            incomplete: incomplete.saturating_sub(errored_incomplete),
        };
        health.announces = announces;
    }

    /// The summary line, once every shard has reported and the period has passed.
    fn log_summary_when_due(&mut self) {
        let Some(every) = self.summary_every else {
            return;
        };
        if self.summary_last_at.elapsed() < every {
            return;
        }
        let total = {
            let v = lock_view(&self.view);
            if !v.complete() {
                return;
            }
            v.total()
        };
        let secs = self.summary_last_at.elapsed().as_secs_f64();
        let sent_bytes = total
            .uploaded_bytes
            .saturating_sub(self.summary_last_uploaded_bytes);
        let gbps = sent_bytes as f64 * 8.0 / secs / 1e9;
        self.summary_last_uploaded_bytes = total.uploaded_bytes;
        self.summary_last_at = Instant::now();
        tracing::info!("{}", summary_line(&total, gbps));
    }

    /// Stops in order: trackers (`event=stopped` while peers are still served, bounded by
    /// `[tracker] stop_timeout_secs`), the admin endpoint, then the shards (peers closed,
    /// drained) and the extras loader. Returns every shard's final stats merged.
    pub fn shutdown(self) -> Result<ShardStats, String> {
        if let Some(t) = self.trackers {
            t.stop();
        }
        if let Some(d) = self.dht {
            d.stop();
        }
        tracing::info!("stopping: closing peers");
        if let Some(server) = self.admin {
            server.stop();
        }
        self.seeder.shutdown();
        // The tracker manager held the only other reference (its connect hook) and has ended.
        let seeder = Arc::try_unwrap(self.seeder)
            .map_err(|_| "internal error: the seeder is still shared at shutdown".to_string())?;
        let total = seeder.join();
        tracing::info!("stopped: {}", summary_line(&total, 0.0));
        Ok(total)
    }
}

fn complete_count(catalog: &Catalog) -> u64 {
    catalog.torrents().iter().filter(|t| t.complete).count() as u64
}

/// What the tracker manager needs of each catalog torrent.
fn announces(catalog: &Catalog) -> Vec<TorrentAnnounce> {
    catalog
        .torrents()
        .iter()
        .map(|t| TorrentAnnounce {
            info_hash: t.info_hash,
            private: t.private,
            trackers: t.trackers.to_vec(),
        })
        .collect()
}

/// The view is only ever locked briefly (apply one snapshot, render one response); a
/// poisoned lock still holds the last good numbers.
pub fn lock_view(view: &SharedView) -> MutexGuard<'_, StatsView> {
    view.lock().unwrap_or_else(|p| p.into_inner())
}

/// The one-line summary: peers, bytes and rate, blocks, request latency percentiles.
pub fn summary_line(s: &ShardStats, gbps: f64) -> String {
    let q = |h: &hdrhistogram::Histogram<u64>, p: f64| h.value_at_quantile(p) as f64 / 1000.0;
    format!(
        "peers {} | uploaded {:.1} MiB ({:.2} Gb/s) | blocks {} | request latency p50 {:.0}us p99 {:.0}us p99.9 {:.0}us",
        s.peers_connected,
        s.uploaded_bytes as f64 / (1 << 20) as f64,
        gbps,
        s.blocks_served,
        q(&s.request_latency_ns, 0.5),
        q(&s.request_latency_ns, 0.99),
        q(&s.request_latency_ns, 0.999),
    )
}
