//! The API's look at one torrent's peers on this shard, on demand.
//!
//! Owns: answering `ShardCommand::Peers` with one bounded page (`PEERS_PAGE_MAX`) and naming
//! a peer's client from its BEP 10 `v` or its peer id. Must never: run per request (only when
//! the API asks), wait on the reply channel (`try_send`: the API sized it), or return more
//! than a page.

use super::peer::Peer;
use super::Shard;
use crate::plane::{PeerRow, PeersPage, PeersRequest, PEERS_PAGE_MAX};
use std::time::Instant;

impl Shard {
    /// One page of `request.info_hash`'s peers here: O(peers on this shard) to find them.
    pub(super) fn on_peers_request(&mut self, request: PeersRequest) {
        let limit = request.limit.min(PEERS_PAGE_MAX);
        let total = self
            .torrent_peers
            .get(&request.info_hash)
            .copied()
            .unwrap_or(0);
        let mut peers = Vec::with_capacity(limit.min(total));
        if limit > 0 && request.offset < total {
            let mine = self
                .peers
                .iter()
                .filter(|p| p.session.torrent().map(|t| t.info_hash) == Some(request.info_hash));
            for p in mine.skip(request.offset).take(limit) {
                peers.push(peer_row(p, self.now));
            }
        }
        let page = PeersPage {
            shard: self.index,
            total,
            peers,
        };
        // The API gave up (timed out) or its channel is full: nothing to do.
        let _ = request.reply.try_send(page);
    }
}

fn peer_row(p: &Peer, now: Instant) -> PeerRow {
    let (peer_id, v) = p.session.identity();
    PeerRow {
        addr: p.addr,
        client: v.map_or_else(|| client_from_peer_id(peer_id), str::to_string),
        upload_bytes_per_sec: p.upload_rate.rate(p.uploaded_bytes, now),
        uploaded_bytes: p.uploaded_bytes,
        queued_requests: p.session.queue().len(),
        draining: p.session.draining(),
    }
}

/// A client name from an Azureus-style peer id (`-LT2080-...`: client code, version), the
/// convention of nearly every client; "unknown" otherwise.
pub fn client_from_peer_id(id: &[u8; 20]) -> String {
    let az = id[0] == b'-' && id[7] == b'-' && id[1..7].iter().all(u8::is_ascii_alphanumeric);
    if !az {
        return "unknown".to_string();
    }
    let code = [id[1], id[2]];
    let name = match &code {
        b"LT" => "libtorrent",
        b"lt" => "libTorrent (rakshasa)",
        b"qB" => "qBittorrent",
        b"TR" => "Transmission",
        b"DE" => "Deluge",
        b"UT" => "uTorrent",
        b"AZ" => "Vuze",
        b"A2" => "aria2",
        b"BT" => "BitTorrent",
        b"rQ" => "rqbit",
        b"SQ" => "Squall",
        _ => "",
    };
    let version: Vec<String> = id[3..7].iter().map(|b| (*b as char).to_string()).collect();
    let code = String::from_utf8_lossy(&code);
    match name {
        "" => format!("{code} {}", version.join(".")),
        n => format!("{n} {}", version.join(".")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_clients_from_azureus_peer_ids() {
        // The convention real clients follow gives a name and version; anything else is
        // "unknown", never a panic.
        let mut id = [b'x'; 20];
        id[..8].copy_from_slice(b"-LT2080-");
        assert_eq!(client_from_peer_id(&id), "libtorrent 2.0.8.0");
        id[..8].copy_from_slice(b"-ZZ1234-");
        assert_eq!(client_from_peer_id(&id), "ZZ 1.2.3.4");
        assert_eq!(client_from_peer_id(&[0; 20]), "unknown");
        assert_eq!(client_from_peer_id(&[0xff; 20]), "unknown");
    }
}
