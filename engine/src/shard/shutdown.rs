//! How a shard stops: the drain (busy peers finish their sends), the forced close, and the
//! reap that makes sure the kernel no longer names any memory the shard is about to free.
//!
//! Owns: the order of the last steps of `Shard::run`. Must never: free a receive buffer,
//! a mapping, an iovec array or a pool while an op that names it may still be in flight;
//! when the kernel does not give every op back in time, that memory is leaked (once, at
//! exit) instead.

use super::{push_or_log, Shard, SHUTDOWN_DRAIN_MS};
use crate::stats::{CloseReason, ShardStats};
use io_uring::{opcode, types};
use std::time::{Duration, Instant};

/// After the loop ends, ops still in flight get this long to come back (after a cancel of
/// every one of them) before the shard leaks what they may name.
pub const SHUTDOWN_REAP_MS: u64 = 2000;
/// One wait of the reap loop.
const REAP_WAIT_MS: u64 = 10;

impl Shard {
    pub(super) fn begin_shutdown(&mut self) {
        if self.shutdown_deadline.is_some() {
            return;
        }
        self.shutdown_deadline = Some(self.now + Duration::from_millis(SHUTDOWN_DRAIN_MS));
        self.stats.accepting = false;
        let ring = &mut self.ring;
        self.listeners.stop(&mut |sqe| push_or_log(ring, &sqe));
        // HTTP connections close at once (a client retries a cut range; no drain).
        self.http_close_all();
        // Drain: a peer with a send in flight finishes it (up to the drain deadline) and is
        // closed when it completes; idle peers are closed now. New requests are not served.
        for idx in 0..self.peers.slots() {
            let busy = self.peers.get_mut(idx).is_some_and(|p| p.send_busy());
            if !busy {
                self.close_peer(idx, CloseReason::Shutdown);
            }
        }
    }

    /// After the drain deadline: close whoever is left; their ops complete with errors.
    pub(super) fn force_close_all(&mut self) {
        for idx in 0..self.peers.slots() {
            self.close_peer(idx, CloseReason::Shutdown);
        }
        self.http_close_all();
    }

    /// Ops the kernel still holds: every peer's, plus armed accepts.
    pub(super) fn ops_in_flight(&self) -> u64 {
        let peers: u64 = self.peers.iter().map(|p| u64::from(p.ops_inflight)).sum();
        peers + self.http.ops_in_flight() + u64::from(self.listeners.any_armed())
    }

    /// The loop has ended (drained, past the force deadline, or the ring broke): cancel every
    /// op still in flight and reap them, then free everything, or leak what an op that never
    /// came back may still name.
    pub(super) fn finish(mut self) -> ShardStats {
        if self.ops_in_flight() > 0 {
            self.cancel_and_reap();
        }
        self.sync_stats();
        self.stats.accepting = false;
        let inflight = self.ops_in_flight();
        if inflight == 0 && self.peers.live() == 0 && self.http.live() == 0 {
            let leaks = self.leak_audit();
            if !leaks.is_empty() {
                tracing::error!(shard = self.index, "leak audit: {}", leaks.join("; "));
                // Loud in debug builds, which every end-to-end test runs: the process dies
                // with a non-zero status instead of exiting 0 with a log line.
                crate::abort_in_debug_builds("leak audit");
            }
        }
        let stats = self.stats.snapshot();
        let _ = self.stats_tx.try_send(stats.clone());
        if inflight > 0 {
            tracing::warn!(
                shard = self.index,
                inflight,
                "shard exits with io_uring ops in flight; leaking the memory they may name"
            );
            let Shard {
                ring,
                slots,
                recv,
                peers,
                files,
                http,
                ..
            } = self;
            // Closing the ring makes the kernel cancel what is left, asynchronously: the
            // buffers, iovecs, sockaddrs and mappings those ops name must outlive that.
            drop(ring);
            std::mem::forget(slots);
            std::mem::forget(recv);
            std::mem::forget(peers);
            std::mem::forget(files);
            std::mem::forget(http);
        }
        stats
    }

    /// With every peer freed and no op in flight, everything a peer or an op could hold
    /// must be back: send slots and their per-group counts, cache references, file uses,
    /// receive-buffer budget, choker places and extras waiters. One line per leak.
    pub(super) fn leak_audit(&self) -> Vec<String> {
        let mut leaks = self.slots.leaks();
        let uses = self.files.uses_held();
        if uses > 0 {
            leaks.push(format!("{uses} file uses still held"));
        }
        if self.recv.grown_bytes() > 0 {
            leaks.push(format!(
                "{} receive-buffer bytes still counted",
                self.recv.grown_bytes()
            ));
        }
        let (unchoked, waiting) = (self.choker.unchoked_count(), self.choker.waiting_count());
        if unchoked + waiting > 0 {
            leaks.push(format!(
                "choker still holds {unchoked} unchoked and {waiting} waiting peers"
            ));
        }
        if !self.torrent_peers.is_empty() {
            leaks.push(format!(
                "peer counts kept for {} torrents",
                self.torrent_peers.len()
            ));
        }
        leaks
    }

    fn cancel_and_reap(&mut self) {
        self.force_close_all();
        let ring = &mut self.ring;
        self.listeners.stop(&mut |sqe| push_or_log(ring, &sqe));
        // IORING_ASYNC_CANCEL_ANY (Linux 5.19): every cancellable op ends now; disk reads
        // already running finish on their own.
        let cancel_all = opcode::AsyncCancel2::new(types::CancelBuilder::any())
            .build()
            .user_data(super::Token::new(super::OpKind::Ignore, 0, 0, 0).encode());
        push_or_log(&mut self.ring, &cancel_all);
        let deadline = Instant::now() + Duration::from_millis(SHUTDOWN_REAP_MS);
        let mut completions = Vec::new();
        while self.ops_in_flight() > 0 && Instant::now() < deadline {
            let wait = Duration::from_millis(REAP_WAIT_MS);
            if let Err(e) = self.ring.poll_then_wait(Duration::ZERO, wait) {
                tracing::error!(
                    shard = self.index,
                    "io_uring_enter failed while reaping: {e}"
                );
                return;
            }
            self.ring.reap(&mut completions);
            self.now = Instant::now();
            for c in completions.iter() {
                self.dispatch(*c);
            }
        }
    }
}
