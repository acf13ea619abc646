//! The runtime catalog: torrents added, removed, paused and rechecked through the admin API,
//! merged with the catalog the configured source (a .torrent directory, zero config) builds.
//!
//! Owns: the API's table of torrents (`added`, bounded by `API_TORRENTS_MAX`), the removed and
//! paused sets, its persisted form under `<state>/api/` (`catalog.json`, written temp + rename,
//! and one copy of each added .torrent), the verify worker thread with its bounded job queue
//! (`VERIFY_JOBS_MAX`), and the merge rule that turns (source catalog, API state) into the
//! catalog the shards serve. Must never: write into a content directory, hash or read content on
//! the control thread or the admin thread (the worker does), accept a data directory outside
//! the allowed roots, or hand the shards anything but a whole immutable `Catalog`.
//!
//! Merge rule (docs/operations.md, "Runtime catalog API"): served = the source's torrents,
//! less those removed or paused through the API, less those the API also holds; plus the API's
//! torrents that finished verifying and are not paused. An API entry wins over the source's
//! entry of the same info-hash. A reload (SIGHUP) rebuilds only the source's side; the API's
//! side (added, removed, paused) is kept as persisted.

use crate::catalog::{Catalog, CatalogOptions, CatalogTorrent, VerifyPolicy};
use crate::metainfo::torrent::{self, InfoHash};
use crossbeam_channel::{bounded, Receiver, Sender, TrySendError};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Torrents the API adds, and separately info-hashes it removes or pauses: each table is
/// refused past this (a 409-free 507 naming the limit), so a client loop cannot grow them.
pub const API_TORRENTS_MAX: usize = 100_000;
/// Verifications queued for the worker (adds, rechecks); one runs at a time, more are refused
/// with 503 until the queue drains.
pub const VERIFY_JOBS_MAX: usize = 64;
/// Threads one verification hashes on: one, so the API never takes cores from the shards.
pub const VERIFY_HASH_THREADS: usize = 1;

/// The runtime catalog behind the control plane's lock (the admin thread and the control loop).
pub type SharedRuntime = Arc<Mutex<Runtime>>;

pub fn lock(runtime: &SharedRuntime) -> MutexGuard<'_, Runtime> {
    // A poisoned lock means a thread panicked mid-update; the tables are still consistent
    // enough to serve (every update is a single insert or remove).
    runtime.lock().unwrap_or_else(|p| p.into_inner())
}

/// What the runtime catalog needs to start.
#[derive(Debug, Clone)]
pub struct RuntimeSetup {
    pub state_dir: PathBuf,
    /// Directories a data directory given to the API must be inside (canonicalised at start;
    /// ones that do not exist are left out with a warning).
    pub data_roots: Vec<PathBuf>,
}

/// An API-refused request: the HTTP status and a message a person can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub message: String,
}

impl ApiError {
    pub fn new(status: u16, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default)]
struct Persisted {
    version: u32,
    added: Vec<PersistedTorrent>,
    removed: Vec<String>,
    paused: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct PersistedTorrent {
    info_hash: String,
    data_dir: PathBuf,
}

#[derive(Debug, Clone)]
enum Phase {
    Verifying,
    Ready(Arc<CatalogTorrent>),
    Failed(String),
}

#[derive(Debug)]
struct Added {
    name: String,
    size_bytes: u64,
    data_dir: PathBuf,
    torrent_path: PathBuf,
    phase: Phase,
    /// The job whose result counts (a later add or recheck makes older results stale).
    job: u64,
    verified_bytes: Arc<AtomicU64>,
}

enum JobKind {
    /// Read the .torrent copy, check the files under `data_dir`, hash as `policy` says.
    Load {
        torrent_path: PathBuf,
        data_dir: PathBuf,
        policy: VerifyPolicy,
    },
    /// Hash a source torrent's files again.
    Recheck(Arc<CatalogTorrent>),
}

struct Job {
    id: u64,
    info_hash: InfoHash,
    kind: JobKind,
    verified_bytes: Arc<AtomicU64>,
}

type JobResult = (u64, InfoHash, Result<CatalogTorrent, String>);

/// One torrent as the API lists it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TorrentInfo {
    pub info_hash: String,
    pub name: String,
    pub size_bytes: u64,
    /// `verifying`, `seeding`, `incomplete` (some pieces failed), `paused`, `errored` (a
    /// content file failed while serving), `failed` (the API's verification failed).
    pub state: &'static str,
    /// `catalog` (the configured source) or `api`.
    pub source: &'static str,
    pub paused: bool,
    /// While verifying: bytes hashed so far of `size_bytes`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verified_bytes: Option<u64>,
    /// Why it is errored or failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    pub peers: u64,
    pub uploaded_bytes: u64,
    /// Recent upload rate (the stats view's per-torrent meter).
    pub upload_bytes_per_sec: f64,
    /// Request latency percentiles of its blocks since start, microseconds.
    pub request_p50_us: f64,
    pub request_p99_us: f64,
}

/// A removed torrent whose peers are draining: listed as `draining` until the shards report
/// none left, or `deadline` (the shards' `remove_drain_secs` plus a report's grace).
#[derive(Debug, Clone)]
struct Draining {
    row: TorrentInfo,
    since: Instant,
    deadline: Instant,
}

/// After the shards' drain deadline, how long the API waits for their stats to show the
/// peers gone before it stops listing the torrent as draining anyway.
pub const DRAIN_REPORT_GRACE_MS: u64 = 3000;

pub struct Runtime {
    state_dir: PathBuf,
    api_dir: PathBuf,
    roots: Vec<PathBuf>,
    base: Arc<Catalog>,
    added: BTreeMap<InfoHash, Added>,
    removed: BTreeSet<InfoHash>,
    paused: BTreeSet<InfoHash>,
    /// Source torrents rechecked through the API (replaced at the next reload).
    overrides: HashMap<InfoHash, Arc<CatalogTorrent>>,
    /// Source torrents being rechecked: (job, bytes hashed).
    rechecking: HashMap<InfoHash, (u64, Arc<AtomicU64>)>,
    next_job: u64,
    jobs: Sender<Job>,
    results: Receiver<JobResult>,
    /// The served catalog must be rebuilt (an add finished, a remove, a pause ...).
    changed: bool,
    /// Removed torrents whose peers drain (at most `API_TORRENTS_MAX`; each leaves within
    /// `drain` plus `DRAIN_REPORT_GRACE_MS`).
    draining: BTreeMap<InfoHash, Draining>,
    /// `[engine] remove_drain_secs`.
    drain: Duration,
}

impl Runtime {
    /// Loads the persisted API state, starts the verify worker and queues a verification
    /// (resume state makes it a stat when nothing changed) for every persisted add.
    pub fn start(setup: RuntimeSetup, base: Arc<Catalog>) -> Result<Runtime, String> {
        let api_dir = setup.state_dir.join("api");
        std::fs::create_dir_all(api_dir.join("torrents")).map_err(|e| {
            format!(
                "cannot create {}: {e} (the state directory must be writable)",
                api_dir.display()
            )
        })?;
        let mut roots = Vec::new();
        for r in &setup.data_roots {
            match std::fs::canonicalize(r) {
                Ok(c) => roots.push(c),
                Err(e) => tracing::warn!(
                    "admin API: data root {} is unusable ({e}); torrents cannot be added under it",
                    r.display()
                ),
            }
        }
        let (jobs_tx, jobs_rx) = bounded::<Job>(VERIFY_JOBS_MAX);
        // Room for every queued job plus the running one: the worker never waits to report.
        let (results_tx, results_rx) = bounded::<JobResult>(VERIFY_JOBS_MAX + 1);
        let state_dir = setup.state_dir.clone();
        // Detached: a verification of a large torrent must not hold up shutdown; it ends when
        // the job channel closes (the runtime dropped).
        std::thread::Builder::new()
            .name("squall-api-verify".into())
            .spawn(move || {
                for job in jobs_rx.iter() {
                    let outcome = run_job(&job, &state_dir);
                    if results_tx.send((job.id, job.info_hash, outcome)).is_err() {
                        return;
                    }
                }
            })
            .map_err(|e| format!("cannot start the API verify thread: {e}"))?;
        let mut rt = Runtime {
            state_dir: setup.state_dir,
            api_dir,
            roots,
            base,
            added: BTreeMap::new(),
            removed: BTreeSet::new(),
            paused: BTreeSet::new(),
            overrides: HashMap::new(),
            rechecking: HashMap::new(),
            next_job: 1,
            jobs: jobs_tx,
            results: results_rx,
            changed: false,
            draining: BTreeMap::new(),
            drain: Duration::from_secs(crate::config::REMOVE_DRAIN_SECS_DEFAULT),
        };
        rt.load_persisted()?;
        Ok(rt)
    }

    fn catalog_json(&self) -> PathBuf {
        self.api_dir.join("catalog.json")
    }

    fn torrent_copy(&self, h: &InfoHash) -> PathBuf {
        self.api_dir.join("torrents").join(format!("{h}.torrent"))
    }

    fn load_persisted(&mut self) -> Result<(), String> {
        let path = self.catalog_json();
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        let p: Persisted = serde_json::from_str(&text).map_err(|e| {
            format!(
                "{}: {e} (the admin API's saved catalog is damaged: fix or remove it)",
                path.display()
            )
        })?;
        let hash = |s: &str| {
            InfoHash::from_hex(s).ok_or_else(|| format!("{}: bad info-hash {s:?}", path.display()))
        };
        for s in &p.removed {
            self.removed.insert(hash(s)?);
        }
        for s in &p.paused {
            self.paused.insert(hash(s)?);
        }
        for a in p.added.into_iter().take(API_TORRENTS_MAX) {
            let h = hash(&a.info_hash)?;
            let torrent_path = self.torrent_copy(&h);
            // Name and size come from the copy; a copy that went missing is a failed entry the
            // operator can see and remove, not a start-up failure.
            let parsed = std::fs::read(&torrent_path)
                .map_err(|e| format!("{}: {e}", torrent_path.display()))
                .and_then(|b| torrent::parse(&b).map_err(|e| e.to_string()));
            let (name, size_bytes) = match &parsed {
                Ok(t) => (t.name.clone(), t.total_length),
                Err(_) => (String::new(), 0),
            };
            self.added.insert(
                h,
                Added {
                    name,
                    size_bytes,
                    data_dir: a.data_dir.clone(),
                    torrent_path: torrent_path.clone(),
                    phase: Phase::Verifying,
                    job: 0,
                    verified_bytes: Arc::new(AtomicU64::new(0)),
                },
            );
            match parsed {
                Ok(_) => {
                    if let Err(e) = self.queue_load(h, VerifyPolicy::IfChanged) {
                        self.fail(&h, e.message);
                    }
                }
                Err(e) => self.fail(&h, e),
            }
        }
        Ok(())
    }

    fn fail(&mut self, h: &InfoHash, why: String) {
        if let Some(a) = self.added.get_mut(h) {
            a.phase = Phase::Failed(why);
        }
    }

    /// Writes `catalog.json` (temp + rename), so a restart keeps every change.
    fn persist(&self) -> Result<(), ApiError> {
        let p = Persisted {
            version: 1,
            added: self
                .added
                .iter()
                .map(|(h, a)| PersistedTorrent {
                    info_hash: h.to_hex(),
                    data_dir: a.data_dir.clone(),
                })
                .collect(),
            removed: self.removed.iter().map(InfoHash::to_hex).collect(),
            paused: self.paused.iter().map(InfoHash::to_hex).collect(),
        };
        let bytes = serde_json::to_vec_pretty(&p).unwrap_or_default();
        let path = self.catalog_json();
        crate::storage::write_atomic(&path, &bytes).map_err(|e| {
            ApiError::new(
                500,
                format!(
                    "cannot save {}: {e} (free space on or fix the state directory)",
                    path.display()
                ),
            )
        })
    }

    fn queue_load(&mut self, h: InfoHash, policy: VerifyPolicy) -> Result<(), ApiError> {
        let Some(a) = self.added.get_mut(&h) else {
            return Err(ApiError::new(404, format!("no torrent {h}")));
        };
        let id = self.next_job;
        let verified_bytes = Arc::new(AtomicU64::new(0));
        let job = Job {
            id,
            info_hash: h,
            kind: JobKind::Load {
                torrent_path: a.torrent_path.clone(),
                data_dir: a.data_dir.clone(),
                policy,
            },
            verified_bytes: verified_bytes.clone(),
        };
        match self.jobs.try_send(job) {
            Ok(()) => {
                self.next_job += 1;
                a.job = id;
                a.verified_bytes = verified_bytes;
                a.phase = Phase::Verifying;
                self.changed = true;
                Ok(())
            }
            Err(TrySendError::Full(_)) => Err(ApiError::new(
                503,
                format!(
                    "{VERIFY_JOBS_MAX} verifications are already queued; retry when some finish"
                ),
            )),
            Err(TrySendError::Disconnected(_)) => {
                Err(ApiError::new(500, "the verify worker has stopped"))
            }
        }
    }

    /// The data directory `dir` if it is inside an allowed root (after resolving symlinks).
    fn check_data_dir(&self, dir: &Path) -> Result<PathBuf, ApiError> {
        if !dir.is_absolute() {
            return Err(ApiError::new(
                400,
                format!("data directory {}: give an absolute path", dir.display()),
            ));
        }
        let real = std::fs::canonicalize(dir)
            .map_err(|e| ApiError::new(400, format!("data directory {}: {e}", dir.display())))?;
        if !real.is_dir() {
            return Err(ApiError::new(
                400,
                format!("data directory {}: not a directory", dir.display()),
            ));
        }
        if !self.roots.iter().any(|r| real.starts_with(r)) {
            let roots: Vec<String> = self.roots.iter().map(|r| r.display().to_string()).collect();
            return Err(ApiError::new(
                403,
                format!(
                    "data directory {} is outside the allowed roots [{}] (the catalog's data \
                     directory and [admin] data_roots)",
                    real.display(),
                    roots.join(", ")
                ),
            ));
        }
        Ok(real)
    }

    /// Adds a torrent from its .torrent bytes, its content under `data_dir`. Verification is
    /// queued; the torrent is served once it finishes. Changes nothing on any refusal.
    pub fn add(&mut self, bytes: &[u8], data_dir: &Path) -> Result<TorrentInfo, ApiError> {
        let t = torrent::parse(bytes)
            .map_err(|e| ApiError::new(400, format!("not a valid .torrent: {e}")))?;
        let data_dir = self.check_data_dir(data_dir)?;
        let h = t.info_hash;
        if self.added.contains_key(&h) {
            return Err(ApiError::new(
                409,
                format!("torrent {h} ({}) was already added", t.name),
            ));
        }
        if self.base.get(&h).is_some() && !self.removed.contains(&h) {
            return Err(ApiError::new(
                409,
                format!(
                    "torrent {h} ({}) is already seeded from the catalog directory",
                    t.name
                ),
            ));
        }
        if self.added.len() >= API_TORRENTS_MAX {
            return Err(ApiError::new(
                507,
                format!("the API holds {API_TORRENTS_MAX} torrents, its limit; remove some first"),
            ));
        }
        let copy = self.torrent_copy(&h);
        crate::storage::write_atomic(&copy, bytes)
            .map_err(|e| ApiError::new(500, format!("cannot save {}: {e}", copy.display())))?;
        self.added.insert(
            h,
            Added {
                name: t.name.clone(),
                size_bytes: t.total_length,
                data_dir,
                torrent_path: copy.clone(),
                phase: Phase::Verifying,
                job: 0,
                verified_bytes: Arc::new(AtomicU64::new(0)),
            },
        );
        let undo = |rt: &mut Runtime, e: ApiError| {
            rt.added.remove(&h);
            let _ = std::fs::remove_file(&copy);
            e
        };
        if let Err(e) = self.queue_load(h, VerifyPolicy::IfChanged) {
            return Err(undo(self, e));
        }
        let was_removed = self.removed.remove(&h);
        // Added again while its old peers drain: the new entry is what the API shows.
        self.draining.remove(&h);
        if let Err(e) = self.persist() {
            if was_removed {
                self.removed.insert(h);
            }
            return Err(undo(self, e));
        }
        Ok(self.info(&h).unwrap_or_else(|| unreachable_info(h)))
    }

    /// Removes a torrent: its peers drain when the new catalog reaches the shards (listed as
    /// `draining` meanwhile). The content is never touched; the API's copy of its .torrent
    /// goes.
    pub fn remove(&mut self, h: &InfoHash) -> Result<(), ApiError> {
        let row = self.info(h);
        self.remove_entry(h)?;
        if let Some(mut row) = row.filter(|_| !self.drain.is_zero()) {
            row.state = "draining";
            let since = Instant::now();
            let deadline = since + self.drain + Duration::from_millis(DRAIN_REPORT_GRACE_MS);
            self.draining.insert(
                *h,
                Draining {
                    row,
                    since,
                    deadline,
                },
            );
        }
        Ok(())
    }

    /// `[engine] remove_drain_secs`: how long removed torrents are listed as draining at most.
    pub fn set_drain(&mut self, drain: Duration) {
        self.drain = drain;
    }

    /// Removed torrents still draining: (info-hash, removed at, give up at).
    pub fn draining(&self) -> Vec<(InfoHash, Instant, Instant)> {
        self.draining
            .iter()
            .map(|(h, d)| (*h, d.since, d.deadline))
            .collect()
    }

    /// The shards report these drained (no peer left) or their deadline passed.
    pub fn drained(&mut self, done: &[InfoHash]) {
        for h in done {
            self.draining.remove(h);
        }
    }

    fn remove_entry(&mut self, h: &InfoHash) -> Result<(), ApiError> {
        if let Some(a) = self.added.remove(h) {
            let was_paused = self.paused.remove(h);
            // Added after the source's copy was removed: the source's must not come back.
            let tombstone = self.base.get(h).is_some() && self.removed.insert(*h);
            if let Err(e) = self.persist() {
                self.added.insert(*h, a);
                if was_paused {
                    self.paused.insert(*h);
                }
                if tombstone {
                    self.removed.remove(h);
                }
                return Err(e);
            }
            let _ = std::fs::remove_file(&a.torrent_path);
        } else if self.serves_from_base(h) {
            if self.removed.len() >= API_TORRENTS_MAX {
                return Err(ApiError::new(507, "too many removed torrents remembered"));
            }
            self.removed.insert(*h);
            let was_paused = self.paused.remove(h);
            if let Err(e) = self.persist() {
                self.removed.remove(h);
                if was_paused {
                    self.paused.insert(*h);
                }
                return Err(e);
            }
            self.overrides.remove(h);
            self.rechecking.remove(h);
        } else {
            return Err(not_found(h));
        }
        self.changed = true;
        Ok(())
    }

    /// Pauses (`true`) or resumes a torrent: paused, it leaves the served catalog (peers are
    /// closed) but stays listed and persisted.
    pub fn set_paused(&mut self, h: &InfoHash, paused: bool) -> Result<TorrentInfo, ApiError> {
        if !self.added.contains_key(h) && !self.serves_from_base(h) {
            return Err(not_found(h));
        }
        let was = self.paused.contains(h);
        if was != paused {
            if paused {
                if self.paused.len() >= API_TORRENTS_MAX {
                    return Err(ApiError::new(507, "too many paused torrents"));
                }
                self.paused.insert(*h);
            } else {
                self.paused.remove(h);
            }
            if let Err(e) = self.persist() {
                if paused {
                    self.paused.remove(h);
                } else {
                    self.paused.insert(*h);
                }
                return Err(e);
            }
            self.changed = true;
        }
        Ok(self.info(h).unwrap_or_else(|| unreachable_info(*h)))
    }

    /// Hashes a torrent's content again on the worker; it stays served (with its old pieces)
    /// until the result replaces it.
    pub fn recheck(&mut self, h: &InfoHash) -> Result<TorrentInfo, ApiError> {
        if self.added.contains_key(h) {
            self.queue_load(*h, VerifyPolicy::Always)?;
        } else if let Some(t) = self.base_torrent(h) {
            let id = self.next_job;
            let bytes = Arc::new(AtomicU64::new(0));
            let job = Job {
                id,
                info_hash: *h,
                kind: JobKind::Recheck(t),
                verified_bytes: bytes.clone(),
            };
            match self.jobs.try_send(job) {
                Ok(()) => {
                    self.next_job += 1;
                    self.rechecking.insert(*h, (id, bytes));
                }
                Err(_) => {
                    return Err(ApiError::new(
                        503,
                        format!("{VERIFY_JOBS_MAX} verifications are already queued; retry later"),
                    ))
                }
            }
        } else {
            return Err(not_found(h));
        }
        Ok(self.info(h).unwrap_or_else(|| unreachable_info(*h)))
    }

    fn serves_from_base(&self, h: &InfoHash) -> bool {
        self.base.get(h).is_some_and(|t| t.info_hash == *h) && !self.removed.contains(h)
    }

    /// The source torrent as served now (a recheck result replaces the loaded one).
    fn base_torrent(&self, h: &InfoHash) -> Option<Arc<CatalogTorrent>> {
        if !self.serves_from_base(h) {
            return None;
        }
        self.overrides
            .get(h)
            .cloned()
            .or_else(|| self.base.get(h).cloned())
    }

    /// A reload built the source's catalog again; recheck results of the old one are dropped.
    pub fn set_base(&mut self, base: Arc<Catalog>) {
        self.base = base;
        self.overrides.clear();
        self.changed = true;
    }

    /// Takes in finished verifications; returns the catalog to serve when it changed.
    pub fn poll(&mut self) -> Option<Arc<Catalog>> {
        while let Ok((id, h, outcome)) = self.results.try_recv() {
            self.on_result(id, h, outcome);
        }
        if !std::mem::take(&mut self.changed) {
            return None;
        }
        Some(Arc::new(self.served()))
    }

    fn on_result(&mut self, id: u64, h: InfoHash, outcome: Result<CatalogTorrent, String>) {
        if let Some(a) = self.added.get_mut(&h) {
            if a.job != id {
                return;
            }
            match outcome {
                Ok(t) => {
                    tracing::info!(info_hash = %h, complete = t.complete, "admin API: {} verified", a.name);
                    a.phase = Phase::Ready(Arc::new(t));
                }
                Err(e) => {
                    tracing::warn!(info_hash = %h, "admin API: {} failed verification: {e}", a.name);
                    a.phase = Phase::Failed(e);
                }
            }
            self.changed = true;
        } else if self.rechecking.get(&h).is_some_and(|(j, _)| *j == id) {
            self.rechecking.remove(&h);
            match outcome {
                Ok(t) => {
                    self.overrides.insert(h, Arc::new(t));
                }
                Err(e) => tracing::warn!(info_hash = %h, "admin API: recheck failed: {e}"),
            }
            self.changed = true;
        }
    }

    /// The merge rule (module comment).
    pub fn served(&self) -> Catalog {
        let from_base = self.base.torrents().iter().filter_map(|t| {
            let h = &t.info_hash;
            if self.removed.contains(h) || self.paused.contains(h) || self.added.contains_key(h) {
                return None;
            }
            Some(self.overrides.get(h).cloned().unwrap_or_else(|| t.clone()))
        });
        let from_api = self.added.iter().filter_map(|(h, a)| match &a.phase {
            Phase::Ready(t) if !self.paused.contains(h) => Some(t.clone()),
            _ => None,
        });
        Catalog::from_loaded(from_base.collect::<Vec<_>>().into_iter().chain(from_api))
    }

    /// Every torrent the API knows (the source's not removed, and its own), by name, without
    /// the serving numbers (`peers`, `uploaded_bytes` are 0: the caller fills them in).
    pub fn list(&self) -> Vec<TorrentInfo> {
        let mut rows: Vec<TorrentInfo> = self
            .base
            .torrents()
            .iter()
            .filter(|t| {
                self.serves_from_base(&t.info_hash) && !self.added.contains_key(&t.info_hash)
            })
            .filter_map(|t| self.info(&t.info_hash))
            .chain(self.added.keys().filter_map(|h| self.info(h)))
            .chain(
                self.draining
                    .iter()
                    .filter(|(h, _)| !self.added.contains_key(h) && !self.serves_from_base(h))
                    .map(|(_, d)| d.row.clone()),
            )
            .collect();
        rows.sort_by(|a, b| a.name.cmp(&b.name).then(a.info_hash.cmp(&b.info_hash)));
        rows
    }

    /// One torrent, as `list` shows it.
    pub fn info(&self, h: &InfoHash) -> Option<TorrentInfo> {
        let paused = self.paused.contains(h);
        if let Some(a) = self.added.get(h) {
            let (state, verified_bytes, error) = match &a.phase {
                Phase::Verifying => (
                    "verifying",
                    Some(a.verified_bytes.load(Ordering::Relaxed)),
                    None,
                ),
                Phase::Failed(e) => ("failed", None, Some(e.clone())),
                Phase::Ready(_) if paused => ("paused", None, None),
                Phase::Ready(t) if t.complete => ("seeding", None, None),
                Phase::Ready(_) => ("incomplete", None, None),
            };
            return Some(TorrentInfo {
                info_hash: h.to_hex(),
                name: a.name.clone(),
                size_bytes: a.size_bytes,
                state,
                source: "api",
                paused,
                verified_bytes,
                error,
                data_dir: Some(a.data_dir.clone()),
                peers: 0,
                uploaded_bytes: 0,
                upload_bytes_per_sec: 0.0,
                request_p50_us: 0.0,
                request_p99_us: 0.0,
            });
        }
        let Some(t) = self.base_torrent(h) else {
            return self.draining.get(h).map(|d| d.row.clone());
        };
        let rechecking = self.rechecking.get(h);
        let state = match () {
            _ if rechecking.is_some() => "verifying",
            _ if paused => "paused",
            _ if t.complete => "seeding",
            _ => "incomplete",
        };
        Some(TorrentInfo {
            info_hash: h.to_hex(),
            name: t.name.clone(),
            size_bytes: t.total_length,
            state,
            source: "catalog",
            paused,
            verified_bytes: rechecking.map(|(_, b)| b.load(Ordering::Relaxed)),
            error: None,
            data_dir: None,
            peers: 0,
            uploaded_bytes: 0,
            upload_bytes_per_sec: 0.0,
            request_p50_us: 0.0,
            request_p99_us: 0.0,
        })
    }

    /// The state directory (for errors and tests).
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }
}

fn not_found(h: &InfoHash) -> ApiError {
    ApiError::new(
        404,
        format!("no torrent {h} in the catalog (list them with `squall torrents ls`)"),
    )
}

/// `info` of a hash just inserted cannot be None; this keeps the API free of `unwrap`.
fn unreachable_info(h: InfoHash) -> TorrentInfo {
    TorrentInfo {
        info_hash: h.to_hex(),
        name: String::new(),
        size_bytes: 0,
        state: "verifying",
        source: "api",
        paused: false,
        verified_bytes: None,
        error: None,
        data_dir: None,
        peers: 0,
        uploaded_bytes: 0,
        upload_bytes_per_sec: 0.0,
        request_p50_us: 0.0,
        request_p99_us: 0.0,
    }
}

/// One verification on the worker thread.
fn run_job(job: &Job, state_dir: &Path) -> Result<CatalogTorrent, String> {
    let progress = |bytes: u64| job.verified_bytes.store(bytes, Ordering::Relaxed);
    match &job.kind {
        JobKind::Load {
            torrent_path,
            data_dir,
            policy,
        } => {
            let bytes = std::fs::read(torrent_path)
                .map_err(|e| format!("{}: {e}", torrent_path.display()))?;
            let t = torrent::parse(&bytes).map_err(|e| e.to_string())?;
            if t.info_hash != job.info_hash {
                return Err(format!(
                    "{} changed: its info-hash is now {}",
                    torrent_path.display(),
                    t.info_hash
                ));
            }
            let opts = CatalogOptions {
                torrents_dir: PathBuf::new(),
                data_dir: data_dir.clone(),
                state_dir: state_dir.to_path_buf(),
                hash_threads: VERIFY_HASH_THREADS,
                verify: *policy,
            };
            Catalog::load_one(&t, torrent_path.clone(), &opts, &progress)
        }
        // Its resume file is written like an added torrent's, so a restart (or a reload,
        // which loads the source again) keeps what the recheck found.
        JobKind::Recheck(old) => old.recheck(state_dir, VERIFY_HASH_THREADS, &progress),
    }
}
