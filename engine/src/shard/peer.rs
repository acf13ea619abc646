//! One connected peer's state, owned by its shard for the connection's whole life.
//!
//! Owns: the connection's side of a peer: socket, receive buffer, the control bytes being
//! sent, and the bookkeeping of the (at most one) send pipeline op in flight; its protocol
//! state is its `Session` (pure, in `session.rs`). Must never: be freed while
//! an op that names it is in flight (`ops_inflight`), or have two sends in flight at once
//! (two in-flight sends on one socket could reorder the byte stream).

use crate::shard::files::FileKey;
use crate::shard::session::Session;
use crate::stats::torrent::RateMeter;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

/// Initial receive buffer: handshakes and requests are small; it grows (bounded by
/// `message_len_max_bytes`) only for a large message such as a bitfield.
pub const RECV_BUF_INITIAL_BYTES: usize = 4096;
/// A peer's upload rate is measured over windows of at least this long.
pub const PEER_RATE_WINDOW_MS: u64 = 1000;
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Outbound: the connect op is in flight.
    Connecting,
    /// Connected: the session speaks (handshake, then messages).
    Open,
    Closing,
}

/// The batch of piece messages in flight for this peer (one slot).
#[derive(Debug)]
pub struct Batch {
    pub slot: u16,
    pub len_bytes: u32,
    pub sent_bytes: u32,
    pub payload_bytes: u64,
    pub blocks: u16,
    pub failed: bool,
    pub submitted_at: Instant,
    /// Zerocopy SendZc used for this batch (else plain Send / splice).
    pub zerocopy: bool,
    /// Some blocks are sent from the hot-block cache: the batch goes out as one SendMsg over
    /// the slot's gather list instead of one Send of the slot.
    pub gather: Option<GatherSend>,
    /// Some blocks are sent from file mappings (`page_cache_sends`): a send that fails with
    /// -EFAULT met a file that shrank under its mapping (a content fault, not the peer's).
    pub page_cache: bool,
}

/// Which part of a slot's gather list (`Shard::slot_send_iovecs`) is still to be sent.
#[derive(Debug, Clone, Copy)]
pub struct GatherSend {
    pub iov_first: u16,
    pub iov_count: u16,
}

pub struct Peer {
    pub fd: OwnedFd,
    pub addr: SocketAddr,
    pub generation: u16,
    pub phase: Phase,
    pub ops_inflight: u32,
    pub recv_buf: Vec<u8>,
    /// What `recv_buf` counts against the shard's receive budget (its bytes beyond the
    /// initial size, as of the last resize).
    pub recv_charged_bytes: usize,
    pub recv_len: usize,
    pub recv_armed: bool,
    /// The peer protocol: handshake, choking, queued requests, control bytes owed.
    pub session: Session,
    pub control_sending: Vec<u8>,
    pub control_sent: usize,
    pub control_inflight: bool,
    pub batch: Option<Batch>,
    /// Files whose in-flight count the current batch holds.
    pub batch_files: Vec<FileKey>,
    /// When each block of the current batch was requested (latency histogram).
    pub batch_request_times: Vec<Instant>,
    /// Expected result of each intermediate op of the current chain, by sequence number.
    pub chain_expect: Vec<u32>,
    /// (sequence number, file index) of each file read of the current chain, so a failed
    /// read names its file (`health`).
    pub chain_files: Vec<(u16, u32)>,
    /// splice mode: this peer's pipe (read end, write end, capacity in bytes).
    pub pipe: Option<(OwnedFd, OwnedFd, usize)>,
    /// zerocopy mode: the kernel reported copying, so this connection uses plain sends.
    pub zerocopy_disabled: bool,
    pub waiting_for_slot: bool,
    /// Queued in the shard's ready list (pumped at the end of the loop turn).
    pub pump_queued: bool,
    /// When the send in flight (control or batch) last made progress: started, or a read,
    /// a partial send or a chain step completed. `send_stall_secs` after it, a busy peer is
    /// closed (`send_stalled`).
    pub send_progress_at: Instant,
    pub uploaded_bytes: u64,
    /// This connection's recent upload rate (the API's peer list), updated per batch.
    pub upload_rate: RateMeter,
    /// Outbound connections: the address the connect op reads (boxed: it must not move while
    /// the op is in flight).
    pub connect_addr: Option<Box<(libc::sockaddr_storage, libc::socklen_t)>>,
    /// `piece_readahead`: the file whose readahead hint is in flight (at most one per peer;
    /// its in-flight count is held until the hint completes).
    pub readahead_file: Option<FileKey>,
    /// `page_cache_sends`: this peer's last residency check, reused for its next blocks
    /// while fresh (see `shard::Residency`).
    pub residency: Option<Residency>,
    /// Plaintext or MSE/RC4, and an encrypted batch's held send (`shard::transport`).
    pub crypto: crate::shard::transport::PeerCrypto,
}

/// A `mincore` answer: `file`'s bytes [start, end) were in the page cache at `checked_at`.
#[derive(Debug, Clone, Copy)]
pub struct Residency {
    pub file: FileKey,
    pub start: u64,
    pub end: u64,
    pub checked_at: Instant,
}

impl Peer {
    pub fn new(
        fd: OwnedFd,
        addr: SocketAddr,
        generation: u16,
        session: Session,
        recv_buf_bytes: usize,
    ) -> Peer {
        let now = session.connected_at();
        Peer {
            fd,
            addr,
            generation,
            phase: Phase::Open,
            ops_inflight: 0,
            recv_buf: vec![0; recv_buf_bytes],
            recv_charged_bytes: 0,
            recv_len: 0,
            recv_armed: false,
            session,
            control_sending: Vec::new(),
            control_sent: 0,
            control_inflight: false,
            batch: None,
            batch_files: Vec::new(),
            batch_request_times: Vec::new(),
            chain_expect: Vec::new(),
            chain_files: Vec::new(),
            pipe: None,
            zerocopy_disabled: false,
            waiting_for_slot: false,
            pump_queued: false,
            send_progress_at: now,
            uploaded_bytes: 0,
            upload_rate: RateMeter::new(now, Duration::from_millis(PEER_RATE_WINDOW_MS)),
            connect_addr: None,
            readahead_file: None,
            residency: None,
            crypto: Default::default(),
        }
    }

    /// `addr`'s source and network as admission counts them (`admission::group_keys`), for
    /// `send_slots_per_ip_max` and `send_slots_per_prefix_max`: a few integer operations per
    /// batch, computed rather than stored (64 bytes per peer).
    pub fn groups(&self) -> ((bool, u128), (bool, u128)) {
        crate::shard::admission::group_keys(&self.addr.ip())
    }

    /// A send (control or batch) is in flight: nothing else may be sent until it completes.
    pub fn send_busy(&self) -> bool {
        self.control_inflight || self.batch.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::size_of;

    /// Bytes of `Peer` itself (the peer table holds one per connection, inline). Was 944
    /// before issue 24 (group keys stored, per-batch lists inline, session extras inline).
    const PEER_STRUCT_BYTES_MAX: usize = 816;

    #[test]
    fn a_peer_stays_small() {
        // Proves: the per-connection struct does not grow unnoticed; at 19,000 peers every
        // 100 bytes here is 1.8 MiB (docs/benchmarks.md, lean peers, has the breakdown).
        let (peer, session) = (size_of::<Peer>(), size_of::<Session>());
        eprintln!("Peer {peer} bytes (Session {session})");
        assert!(peer <= PEER_STRUCT_BYTES_MAX, "Peer is {peer} bytes");
        assert!(session <= 256, "Session is {session} bytes");
    }
}
