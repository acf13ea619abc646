//! A shard's view of torrent health: which torrents it must not serve, and its reports of
//! content faults to the control plane (`crate::control::health` owns the errored table and
//! rechecks).
//!
//! Owns: the errored set last published by the control plane (an immutable `Arc`) and this
//! shard's own marks, made the moment one of its reads or opens fails and kept until the
//! control plane's set acknowledges them (so the shard rejects at once, not one control-loop
//! turn later). Must never: block (reports go out with `try_send`; a full channel is counted
//! and retried at the next tick), do disk I/O, or hold more than `LOCAL_MARKS_MAX` marks.

use super::Shard;
use crate::catalog::CatalogTorrent;
use crate::metainfo::InfoHash;
use crate::plane::{ErroredSet, HealthReport};
use crate::shard::peer::Phase;
use crate::stats::ShardStats;
use crossbeam_channel::Sender;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Torrents a shard may have marked errored while waiting for the control plane. Marks are
/// one per faulty torrent and short-lived; beyond this a fault is still reported, not marked.
pub const LOCAL_MARKS_MAX: usize = 1024;
/// A mark the control plane has not acknowledged after this long is dropped (the control
/// plane may have recovered the torrent before its set with the mark reached this shard); a
/// fault that persists marks it again on the next failed read.
pub const LOCAL_MARK_ACK_TIMEOUT_SECS: u64 = 30;

#[derive(Debug)]
struct LocalMark {
    report: HealthReport,
    reported: bool,
    marked_at: Instant,
}

pub struct ShardHealth {
    published: Arc<ErroredSet>,
    local: HashMap<InfoHash, LocalMark>,
    reports: Sender<HealthReport>,
}

/// Open errors that say the process ran out of something, not that the content is bad: they
/// must not take a torrent out of service (counted and handled as limits elsewhere).
pub fn is_content_fault(e: &std::io::Error) -> bool {
    !matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOMEM | libc::EAGAIN | libc::EINTR)
    )
}

/// The reason a failed or short read gives: errno text, or how short it was.
pub fn read_failure_reason(result: i32, expected_bytes: u32) -> String {
    if result < 0 {
        format!(
            "read failed: {}",
            std::io::Error::from_raw_os_error(-result)
        )
    } else {
        format!("short read ({result} of {expected_bytes} bytes)")
    }
}

impl ShardHealth {
    pub fn new(reports: Sender<HealthReport>) -> ShardHealth {
        ShardHealth {
            published: Arc::new(ErroredSet::default()),
            local: HashMap::new(),
            reports,
        }
    }

    /// Hot path: one empty check when nothing is errored.
    pub fn is_errored(&self, h: &InfoHash) -> bool {
        (!self.published.is_empty() && self.published.contains(h))
            || (!self.local.is_empty() && self.local.contains_key(h))
    }

    /// A content file of `torrent` failed on this shard: mark and report it (once).
    pub fn content_failed(
        &mut self,
        torrent: &CatalogTorrent,
        file_index: u32,
        reason: String,
        now: Instant,
        stats: &mut ShardStats,
    ) {
        if self.is_errored(&torrent.info_hash) {
            return;
        }
        let file = torrent
            .files
            .get(file_index as usize)
            .map(|f| f.path.clone())
            .unwrap_or_default();
        let report = HealthReport {
            info_hash: torrent.info_hash,
            file,
            reason,
        };
        let reported = self.send(&report, stats);
        if self.local.len() < LOCAL_MARKS_MAX {
            self.local.insert(
                torrent.info_hash,
                LocalMark {
                    report,
                    reported,
                    marked_at: now,
                },
            );
        }
    }

    fn send(&self, report: &HealthReport, stats: &mut ShardStats) -> bool {
        let sent = self.reports.try_send(report.clone()).is_ok();
        if !sent {
            stats.health_reports_dropped += 1;
        }
        sent
    }

    /// Every tick: retry unsent reports, drop marks never acknowledged.
    pub fn on_tick(&mut self, now: Instant, stats: &mut ShardStats) {
        if self.local.is_empty() {
            return;
        }
        let timeout = Duration::from_secs(LOCAL_MARK_ACK_TIMEOUT_SECS);
        let reports = &self.reports;
        self.local.retain(|_, m| {
            if !m.reported {
                m.reported = reports.try_send(m.report.clone()).is_ok();
                if !m.reported {
                    stats.health_reports_dropped += 1;
                }
            }
            !m.reported || now.duration_since(m.marked_at) < timeout
        });
    }

    /// The control plane published a new set. Returns the torrents whose state changed on
    /// this shard (their idle fds must be dropped, so the next use reopens the file).
    pub fn on_published(&mut self, set: Arc<ErroredSet>) -> Vec<InfoHash> {
        let mut changed: Vec<InfoHash> = set
            .iter()
            .filter(|h| !self.published.contains(h))
            .chain(self.published.iter().filter(|h| !set.contains(h)))
            .copied()
            .collect();
        // A torrent this shard had marked was already errored here: not a change.
        changed.retain(|h| !self.local.contains_key(h));
        // Marks the set now carries are acknowledged: the set speaks for them from now on.
        self.local.retain(|h, _| !set.contains(h));
        self.published = set;
        changed
    }
}

impl Shard {
    /// A request of a peer whose torrent is errored: BEP 6 reject, or choke a peer without
    /// the fast extension (choking discards its queue, BEP 3). Returns true when it was.
    pub(super) fn reject_if_errored(&mut self, idx: u32) -> bool {
        let errored = self
            .peers
            .get(idx)
            .and_then(|p| p.session.torrent())
            .is_some_and(|t| self.health.is_errored(&t.info_hash));
        if !errored {
            return false;
        }
        self.with_session(idx, |s, _, actions| s.on_torrent_errored(actions));
        self.pump(idx);
        true
    }

    /// `ShardCommand::Health`: adopt the control plane's errored set.
    pub(super) fn on_health(&mut self, set: Arc<ErroredSet>) {
        let changed = self.health.on_published(set);
        for h in changed.iter() {
            self.forget_content(h);
        }
        // Peers of a torrent that recovered and were choked for it ask for a slot again.
        let recovered: Vec<InfoHash> = changed
            .into_iter()
            .filter(|h| !self.health.is_errored(h))
            .collect();
        if !recovered.is_empty() {
            for idx in 0..self.peers.slots() {
                let of_recovered = self.peers.get(idx).is_some_and(|p| {
                    p.phase == Phase::Open
                        && p.session
                            .torrent()
                            .is_some_and(|t| recovered.contains(&t.info_hash))
                });
                if of_recovered {
                    self.with_session(idx, |s, _, actions| s.on_recovered(actions));
                }
            }
        }
        // Peers of a torrent that just became errored may hold queued requests: answer them.
        for idx in 0..self.peers.slots() {
            let queued = self
                .peers
                .get(idx)
                .is_some_and(|p| !p.session.queue().is_empty() && !p.send_busy());
            if queued {
                self.reject_if_errored(idx);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crossbeam_channel::bounded;
    use std::path::PathBuf;

    fn torrent(h: u8) -> CatalogTorrent {
        CatalogTorrent {
            total_length: 4,
            files: vec![crate::storage::ContentFile {
                path: PathBuf::from("/d/a.bin"),
                length: 4,
                offset: 0,
                pad: false,
            }],
            ..CatalogTorrent::fixture(h)
        }
    }

    #[test]
    fn a_fault_is_marked_at_once_reported_once_and_acknowledged_by_the_set() {
        // The shard rejects from the first failure; a second failure does not report again;
        // the published set takes over the mark; its removal is a change (recovery).
        let (tx, rx) = bounded(4);
        let mut h = ShardHealth::new(tx);
        let mut stats = ShardStats::new(0);
        let t = torrent(1);
        let now = Instant::now();
        h.content_failed(&t, 0, "short read (1 of 4 bytes)".into(), now, &mut stats);
        h.content_failed(&t, 0, "again".into(), now, &mut stats);
        assert!(h.is_errored(&t.info_hash));
        let r = rx.try_recv().unwrap();
        assert_eq!(r.file, PathBuf::from("/d/a.bin"));
        assert!(rx.try_recv().is_err());
        let set: ErroredSet = [t.info_hash].into_iter().collect();
        // Already errored here: not a change for this shard's fds.
        assert!(h.on_published(Arc::new(set)).is_empty());
        assert!(h.is_errored(&t.info_hash));
        assert_eq!(
            h.on_published(Arc::new(ErroredSet::default())),
            vec![t.info_hash]
        );
        assert!(!h.is_errored(&t.info_hash));
    }

    #[test]
    fn a_full_channel_is_counted_and_retried_and_stale_marks_expire() {
        let (tx, rx) = bounded(1);
        tx.try_send(HealthReport {
            info_hash: InfoHash([0; 20]),
            file: PathBuf::new(),
            reason: String::new(),
        })
        .unwrap();
        let mut h = ShardHealth::new(tx);
        let mut stats = ShardStats::new(0);
        let now = Instant::now();
        h.content_failed(&torrent(1), 0, "x".into(), now, &mut stats);
        assert_eq!(stats.health_reports_dropped, 1);
        let _ = rx.try_recv();
        h.on_tick(now, &mut stats);
        assert_eq!(rx.try_recv().unwrap().info_hash, InfoHash([1; 20]));
        // Reported but never acknowledged: gone after the timeout.
        h.on_tick(
            now + Duration::from_secs(LOCAL_MARK_ACK_TIMEOUT_SECS),
            &mut stats,
        );
        assert!(!h.is_errored(&InfoHash([1; 20])));
    }

    #[test]
    fn limits_are_not_content_faults() {
        let e = |n| std::io::Error::from_raw_os_error(n);
        assert!(!is_content_fault(&e(libc::EMFILE)));
        assert!(is_content_fault(&e(libc::ENOENT)));
        assert!(is_content_fault(&e(libc::EIO)));
        assert_eq!(
            read_failure_reason(-libc::EIO, 16384),
            "read failed: Input/output error (os error 5)"
        );
        assert_eq!(
            read_failure_reason(5, 16384),
            "short read (5 of 16384 bytes)"
        );
    }
}
