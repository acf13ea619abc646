//! Torrent health on the control plane: which torrents are errored (a content file failed on
//! a shard), why and since when, and the periodic recheck that clears them.
//!
//! Flow: a shard that fails to open or read a content file marks the torrent errored for
//! itself at once and sends a `HealthReport` over a bounded channel (`try_send`; a full
//! channel is counted and retried at the shard's next tick). The control loop feeds reports
//! into `HealthMonitor`, which keeps the `ErroredTable`, logs each transition once, and
//! publishes the whole errored set to every shard as one `Arc<ErroredSet>` (level-triggered:
//! a snapshot lost to a full command queue is simply sent again, the latest wins). Every
//! `errored_recheck_secs` (and on SIGHUP) an errored torrent is rechecked on the recheck
//! worker thread: each file opened read-only, checked regular and of the right length, then
//! every piece hashed; a pass clears the state, a failure keeps it with the new reason.
//!
//! Owns: the errored table (at most one entry per catalog torrent), the recheck worker thread
//! and its bounded channels. Must never: run on a shard, do disk I/O on the control loop
//! (rechecks run on the worker), or keep entries for torrents no longer in the catalog.

use crate::catalog::{Catalog, CatalogTorrent};
use crate::metainfo::InfoHash;
pub use crate::plane::{ErroredRow, ErroredSet, HealthReport, HEALTH_REPORTS_CAPACITY};
use crate::storage::{open_content, FileProblemKind, VerifyReport};
use crossbeam_channel::{bounded, Receiver, Sender, TrySendError};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// Rechecks queued for the worker. One runs at a time; the rest wait their turn in the table.
pub const RECHECK_JOBS_CAPACITY: usize = 4;
/// Threads one recheck hashes on: one, so a recheck never takes cores from the shards.
pub const RECHECK_HASH_THREADS: usize = 1;

#[derive(Debug, Clone)]
struct Entry {
    row: ErroredRow,
    next_recheck_at: Instant,
    recheck_inflight: bool,
}

/// What a table update did; the caller logs transitions, never repeats.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    Errored,
    StillErrored,
    Recovered,
    /// Nothing to do (unknown torrent, or a recheck result for one no longer errored).
    Ignored,
}

/// The errored torrents and when each is next rechecked. Pure: time comes in as arguments.
#[derive(Debug, Default)]
pub struct ErroredTable {
    entries: HashMap<InfoHash, Entry>,
}

/// "file PATH: REASON": the form every errored reason takes.
pub fn file_reason(file: &Path, reason: &str) -> String {
    format!("file {}: {reason}", file.display())
}

impl ErroredTable {
    pub fn len(&self) -> usize {
        self.entries.len()
    }
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
    pub fn contains(&self, h: &InfoHash) -> bool {
        self.entries.contains_key(h)
    }

    /// A shard reported a failure. A torrent not in `catalog` is ignored (bounds the table by
    /// the catalog); an already errored one keeps its first reason (the cause, not an echo).
    pub fn report(
        &mut self,
        r: &HealthReport,
        catalog: &Catalog,
        now: Instant,
        wall: SystemTime,
        recheck: Duration,
    ) -> Transition {
        let Some(t) = catalog.get(&r.info_hash) else {
            return Transition::Ignored;
        };
        if self.entries.contains_key(&t.info_hash) {
            return Transition::StillErrored;
        }
        self.entries.insert(
            t.info_hash,
            Entry {
                row: ErroredRow {
                    info_hash: t.info_hash,
                    name: t.name.clone(),
                    reason: file_reason(&r.file, &r.reason),
                    since: wall,
                },
                next_recheck_at: now + recheck,
                recheck_inflight: false,
            },
        );
        Transition::Errored
    }

    /// Errored torrents whose recheck is due and not running; marks them running.
    pub fn take_due(&mut self, now: Instant, max: usize) -> Vec<InfoHash> {
        let mut due: Vec<InfoHash> = self
            .entries
            .iter()
            .filter(|(_, e)| !e.recheck_inflight && e.next_recheck_at <= now)
            .map(|(h, _)| *h)
            .collect();
        due.sort_unstable();
        due.truncate(max);
        for h in &due {
            if let Some(e) = self.entries.get_mut(h) {
                e.recheck_inflight = true;
            }
        }
        due
    }

    /// A recheck could not be queued: try again at the next poll.
    pub fn unclaim(&mut self, h: &InfoHash) {
        if let Some(e) = self.entries.get_mut(h) {
            e.recheck_inflight = false;
        }
    }

    /// SIGHUP: every errored torrent is due now (one already running is left alone).
    pub fn recheck_all_now(&mut self, now: Instant) {
        for e in self.entries.values_mut() {
            e.next_recheck_at = now;
        }
    }

    /// The recheck of `h` finished: pass clears it, failure keeps it with the new reason.
    pub fn recheck_done(
        &mut self,
        h: &InfoHash,
        outcome: Result<(), String>,
        now: Instant,
        recheck: Duration,
    ) -> Transition {
        let Some(e) = self.entries.get_mut(h) else {
            return Transition::Ignored;
        };
        match outcome {
            Ok(()) => {
                self.entries.remove(h);
                Transition::Recovered
            }
            Err(reason) => {
                e.row.reason = reason;
                e.recheck_inflight = false;
                e.next_recheck_at = now + recheck;
                Transition::StillErrored
            }
        }
    }

    /// Drops torrents the catalog no longer has (after a reload).
    pub fn retain_catalog(&mut self, catalog: &Catalog) {
        self.entries.retain(|h, _| catalog.get(h).is_some());
    }

    pub fn set(&self) -> ErroredSet {
        self.entries.keys().copied().collect()
    }

    /// Rows for /stats, by name then info-hash.
    pub fn rows(&self) -> Vec<ErroredRow> {
        let mut rows: Vec<ErroredRow> = self.entries.values().map(|e| e.row.clone()).collect();
        rows.sort_by(|a, b| a.name.cmp(&b.name).then(a.info_hash.cmp(&b.info_hash)));
        rows
    }
}

/// The recheck's decision from a verification report: recovered only when no file has a
/// problem and every piece the catalog serves (`have`) still hashes right.
pub fn recheck_verdict(torrent: &CatalogTorrent, report: &VerifyReport) -> Result<(), String> {
    if let Some(p) = report.file_problems.first() {
        let what = match &p.kind {
            FileProblemKind::Missing => "missing".to_string(),
            FileProblemKind::WrongSize {
                expected_bytes,
                actual_bytes,
            } => format!("{actual_bytes} bytes, expected {expected_bytes}"),
            FileProblemKind::Unreadable(e) => format!("unreadable: {e}"),
        };
        return Err(file_reason(&p.path, &what));
    }
    if let Some(bad) = report.bad_pieces.iter().find(|&&i| torrent.has_piece(i)) {
        return Err(format!(
            "piece {bad} no longer matches its hash ({} bad pieces in all): the content changed",
            report.bad_pieces.len()
        ));
    }
    Ok(())
}

/// Cheap checks before hashing: each file opens read-only, is regular, has its length.
fn check_files(torrent: &CatalogTorrent) -> Result<(), String> {
    for f in torrent.files.iter().filter(|f| !f.pad && f.length > 0) {
        let file = open_content(&f.path).map_err(|e| file_reason(&f.path, &e.to_string()))?;
        let len = file
            .metadata()
            .map_err(|e| file_reason(&f.path, &e.to_string()))?
            .len();
        if len != f.length {
            return Err(file_reason(
                &f.path,
                &format!("{len} bytes, expected {}", f.length),
            ));
        }
    }
    Ok(())
}

/// One full recheck of a torrent (runs on the recheck worker).
pub fn recheck(torrent: &CatalogTorrent) -> Result<(), String> {
    check_files(torrent)?;
    let report = torrent.verify_content(RECHECK_HASH_THREADS)?;
    recheck_verdict(torrent, &report)
}

type RecheckResult = (InfoHash, Result<(), String>);

/// The control loop's handle: the table, the report receiver, the recheck worker.
pub struct HealthMonitor {
    table: ErroredTable,
    reports: Receiver<HealthReport>,
    jobs: Sender<Arc<CatalogTorrent>>,
    results: Receiver<RecheckResult>,
    recheck: Duration,
    /// The set last handed to the shards, and whether a newer one still has to go out.
    published: Arc<ErroredSet>,
    publish_pending: bool,
}

impl HealthMonitor {
    /// Starts the recheck worker. `recheck` is `errored_recheck_secs`.
    pub fn start(
        reports: Receiver<HealthReport>,
        recheck: Duration,
    ) -> Result<HealthMonitor, String> {
        let (jobs_tx, jobs_rx) = bounded::<Arc<CatalogTorrent>>(RECHECK_JOBS_CAPACITY);
        // Room for every queued job plus the running one: the worker never waits to report.
        let (results_tx, results_rx) = bounded::<RecheckResult>(RECHECK_JOBS_CAPACITY + 1);
        // Detached, not joined: a recheck of a large torrent must not hold up shutdown, and
        // the worker only reads. It ends when the job channel closes (the monitor dropped).
        std::thread::Builder::new()
            .name("squall-recheck".into())
            .spawn(move || {
                for t in jobs_rx.iter() {
                    let outcome = self::recheck(&t);
                    if results_tx.send((t.info_hash, outcome)).is_err() {
                        return;
                    }
                }
            })
            .map_err(|e| format!("cannot start the recheck thread: {e}"))?;
        Ok(HealthMonitor {
            table: ErroredTable::default(),
            reports,
            jobs: jobs_tx,
            results: results_rx,
            recheck,
            published: Arc::new(ErroredSet::default()),
            publish_pending: false,
        })
    }

    /// Takes in reports and recheck results, starts due rechecks, logs transitions.
    pub fn poll(&mut self, catalog: &Catalog) {
        let now = Instant::now();
        let before = self.table.len();
        while let Ok(r) = self.reports.try_recv() {
            if self
                .table
                .report(&r, catalog, now, SystemTime::now(), self.recheck)
                == Transition::Errored
            {
                tracing::warn!(
                    info_hash = %r.info_hash,
                    "torrent {} errored: {}; its requests are rejected until a recheck \
                     passes (every {} s, or on SIGHUP)",
                    catalog.get(&r.info_hash).map(|t| t.name.as_str()).unwrap_or(""),
                    file_reason(&r.file, &r.reason),
                    self.recheck.as_secs()
                );
                self.publish_pending = true;
            }
        }
        while let Ok((h, outcome)) = self.results.try_recv() {
            let name = catalog.get(&h).map(|t| t.name.clone()).unwrap_or_default();
            let failure = outcome.as_ref().err().cloned();
            match self.table.recheck_done(&h, outcome, now, self.recheck) {
                Transition::Recovered => {
                    tracing::info!(info_hash = %h, "torrent {name} recovered: recheck passed");
                    self.publish_pending = true;
                }
                Transition::StillErrored => tracing::debug!(
                    info_hash = %h,
                    "torrent {name} still errored: {}",
                    failure.unwrap_or_default()
                ),
                _ => {}
            }
        }
        if self.table.len() != before {
            self.publish_pending = true;
        }
        let jobs = &self.jobs;
        for h in self.table.take_due(now, RECHECK_JOBS_CAPACITY) {
            let Some(t) = catalog.get(&h) else {
                self.table.unclaim(&h);
                continue;
            };
            if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) =
                jobs.try_send(t.clone())
            {
                self.table.unclaim(&h);
            }
        }
    }

    /// SIGHUP: recheck every errored torrent now; forget those the new catalog dropped.
    pub fn on_reload(&mut self, catalog: &Catalog) {
        let before = self.table.len();
        self.table.retain_catalog(catalog);
        if self.table.len() != before {
            self.publish_pending = true;
        }
        self.table.recheck_all_now(Instant::now());
    }

    /// Hands the current errored set to the shards when it changed; `send` returns false when
    /// some shard could not take it (it is sent again at the next call).
    pub fn publish(&mut self, send: impl FnOnce(Arc<ErroredSet>) -> bool) {
        if !self.publish_pending {
            return;
        }
        let set = Arc::new(self.table.set());
        self.published = set.clone();
        self.publish_pending = !send(set);
    }

    pub fn rows(&self) -> Vec<ErroredRow> {
        self.table.rows()
    }

    pub fn errored_count(&self) -> usize {
        self.table.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::FileProblem;
    use std::path::PathBuf;

    fn torrent(name: &str, h: u8, have: Vec<u8>) -> CatalogTorrent {
        CatalogTorrent {
            name: name.into(),
            total_length: 16384 * 8,
            num_pieces: 8,
            have,
            ..CatalogTorrent::fixture(h)
        }
    }

    fn report(h: u8, reason: &str) -> HealthReport {
        HealthReport {
            info_hash: InfoHash([h; 20]),
            file: PathBuf::from("/data/a/b.bin"),
            reason: reason.into(),
        }
    }

    #[test]
    fn transitions_are_reported_once_and_rechecks_follow_the_period() {
        // Errored once (a repeat is not a new transition); due only after the period; a
        // failed recheck keeps it with the new reason; a pass clears it.
        let catalog = Catalog::from_entries(vec![torrent("a", 1, vec![0xff])]);
        let mut t = ErroredTable::default();
        let now = Instant::now();
        let period = Duration::from_secs(10);
        let wall = SystemTime::now();
        assert_eq!(
            t.report(&report(1, "short read"), &catalog, now, wall, period),
            Transition::Errored
        );
        assert_eq!(
            t.report(&report(1, "other"), &catalog, now, wall, period),
            Transition::StillErrored
        );
        assert_eq!(t.rows()[0].reason, "file /data/a/b.bin: short read");
        assert!(t.set().contains(&InfoHash([1; 20])));
        assert!(t.take_due(now, 4).is_empty());
        let due = t.take_due(now + period, 4);
        assert_eq!(due, vec![InfoHash([1; 20])]);
        // Running: not handed out twice.
        assert!(t.take_due(now + period * 2, 4).is_empty());
        let later = now + period;
        assert_eq!(
            t.recheck_done(&due[0], Err("file x: missing".into()), later, period),
            Transition::StillErrored
        );
        assert_eq!(t.rows()[0].reason, "file x: missing");
        assert!(t.take_due(later, 4).is_empty());
        t.recheck_all_now(later);
        let due = t.take_due(later, 4);
        assert_eq!(
            t.recheck_done(&due[0], Ok(()), later, period),
            Transition::Recovered
        );
        assert!(t.is_empty() && t.set().is_empty());
        // A result for a torrent no longer errored changes nothing.
        assert_eq!(
            t.recheck_done(&due[0], Ok(()), later, period),
            Transition::Ignored
        );
    }

    #[test]
    fn unknown_torrents_are_ignored_and_reload_drops_removed_ones() {
        // The table never holds more than the catalog.
        let catalog = Catalog::from_entries(vec![torrent("a", 1, vec![0xff])]);
        let mut t = ErroredTable::default();
        let (now, wall, p) = (Instant::now(), SystemTime::now(), Duration::from_secs(1));
        assert_eq!(
            t.report(&report(9, "x"), &catalog, now, wall, p),
            Transition::Ignored
        );
        t.report(&report(1, "x"), &catalog, now, wall, p);
        assert_eq!(t.len(), 1);
        t.retain_catalog(&Catalog::from_entries(vec![torrent("b", 2, vec![0xff])]));
        assert!(t.is_empty());
    }

    #[test]
    fn verdict_needs_no_file_problem_and_every_served_piece_good() {
        // Piece 7 was never served (not in `have`), so its failure does not keep it errored;
        // a served bad piece or any file problem does.
        let t = torrent("a", 1, vec![0xfe]);
        let mut r = VerifyReport {
            num_pieces: 8,
            bad_pieces: vec![7],
            file_problems: Vec::new(),
        };
        assert_eq!(recheck_verdict(&t, &r), Ok(()));
        r.bad_pieces = vec![3, 7];
        assert!(recheck_verdict(&t, &r).unwrap_err().contains("piece 3"));
        r.bad_pieces.clear();
        r.file_problems.push(FileProblem {
            file_index: 0,
            path: PathBuf::from("/d/a.bin"),
            kind: FileProblemKind::WrongSize {
                expected_bytes: 10,
                actual_bytes: 4,
            },
        });
        assert_eq!(
            recheck_verdict(&t, &r),
            Err("file /d/a.bin: 4 bytes, expected 10".into())
        );
    }

    #[test]
    fn recheck_checks_files_before_hashing() {
        // A missing file, a directory in its place, and a short file are each named.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.bin");
        let mut t = torrent("a", 1, vec![0xff]);
        t.files.push(crate::storage::ContentFile {
            path: path.clone(),
            length: 8,
            offset: 0,
            pad: false,
        });
        assert!(check_files(&t).unwrap_err().starts_with("file "));
        std::fs::create_dir(&path).unwrap();
        assert!(check_files(&t).unwrap_err().contains("not a regular file"));
        std::fs::remove_dir(&path).unwrap();
        std::fs::write(&path, b"1234").unwrap();
        assert!(check_files(&t).unwrap_err().contains("4 bytes, expected 8"));
        std::fs::write(&path, b"12345678").unwrap();
        assert_eq!(check_files(&t), Ok(()));
    }
}
