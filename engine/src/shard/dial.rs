//! Dial-outs: a connection to a peer the control plane found (tracker, DHT, API) for one
//! torrent, and what happens when its connect completes.
//!
//! Owns: making the socket and its connect op, and starting the session and transport once
//! connected. Must never: dial for a torrent outside the catalog, or dial past admission
//! (the per-IP and prefix limits inbound peers meet too).

use super::conn::{connect_sqe, dial_socket};
use super::{CloseReason, Phase, Shard};
use crate::metainfo::InfoHash;
use crate::ring::Completion;
use std::net::SocketAddr;

impl Shard {
    /// Dials a peer for `info_hash`; it is served like an inbound peer once connected, except
    /// that we send our handshake first and check that theirs names the same torrent.
    /// Returns the new peer's index (None: not dialed).
    pub(super) fn dial(&mut self, addr: SocketAddr, info_hash: InfoHash) -> Option<u32> {
        let accepting = self.listeners.accepting();
        let torrent = self
            .catalog
            .get(&info_hash)
            .filter(|_| accepting)
            .cloned()?;
        if !self.admit(&addr) {
            return None;
        }
        let Ok(fd) = dial_socket(&addr) else {
            self.admission.release(&addr.ip());
            self.stats.closed(CloseReason::ConnectFailed);
            return None;
        };
        let idx = self.insert_peer(fd, addr, Some(torrent));
        self.stats.peers_dialed += 1;
        let peer = self.peers.get_mut(idx)?;
        let sqe = connect_sqe(peer, &addr, idx);
        self.push(&sqe);
        Some(idx)
    }

    pub(super) fn on_connected(&mut self, idx: u32, c: Completion) {
        let Some(peer) = self.peers.get_mut(idx) else {
            return;
        };
        peer.ops_inflight -= 1;
        peer.connect_addr = None;
        if peer.phase == Phase::Closing {
            return;
        }
        if c.result < 0 {
            self.close_peer(idx, CloseReason::ConnectFailed);
            return;
        }
        peer.phase = Phase::Open;
        self.with_session(idx, |s, env, _| s.on_connected(env));
        self.start_outbound_transport(idx);
        self.pump(idx);
        self.arm_recv(idx);
    }
}
