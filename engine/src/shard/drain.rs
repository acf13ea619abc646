//! Removing a torrent drains its peers instead of cutting them off.
//!
//! Owns: what a shard does to the peers of torrents a catalog swap dropped (removed or paused
//! through the API, or gone at a SIGHUP reload): each session stops taking requests (a BEP 6
//! peer gets a reject for every new one, counted as `torrent_removed`), the blocks it had
//! queued are still served, and the connection closes when nothing is owed
//! (`Session::finished`) or at `remove_drain_secs` at the latest (`Session::on_tick`).
//! Must never: touch content, or keep a peer past its deadline.

use super::peer::Phase;
use super::Shard;
use crate::stats::CloseReason;
use std::time::Duration;

impl Shard {
    /// After a catalog swap: every open peer whose torrent is no longer served starts its
    /// drain. O(peers on this shard), once per swap.
    pub(super) fn drain_removed(&mut self) {
        let drain = Duration::from_secs(self.config.remove_drain_secs);
        let deadline = self.now + drain;
        for idx in 0..self.peers.slots() {
            let Some(peer) = self.peers.get_mut(idx) else {
                continue;
            };
            let removed = peer
                .session
                .torrent()
                .is_some_and(|t| self.catalog.get(&t.info_hash).is_none());
            if !removed || peer.phase != Phase::Open {
                continue;
            }
            if drain.is_zero() {
                self.close_peer(idx, CloseReason::TorrentRemoved);
                continue;
            }
            peer.session.start_drain(deadline);
            // Answers owed go out, then `pump` closes it once its queue is served.
            self.queue_pump(idx);
        }
    }
}
