//! One connected peer's state, owned by its shard for the connection's whole life.
//!
//! Owns: the receive buffer, the queued requests, the control bytes waiting to be sent, and
//! the bookkeeping of the (at most one) send pipeline op in flight. Must never: be freed while
//! an op that names it is in flight (`ops_inflight`), or have two sends in flight at once
//! (two in-flight sends on one socket could reorder the byte stream).

use crate::catalog::CatalogTorrent;
use crate::shard::files::FileKey;
use crate::wire::message::BlockRequest;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Instant;

/// Initial receive buffer: handshakes and requests are small; it grows (bounded by
/// `message_len_max_bytes`) only for a large message such as a bitfield.
pub const RECV_BUF_INITIAL_BYTES: usize = 4096;
/// Control bytes (rejects, metadata, haves) queued for a peer that does not read; above this
/// the peer is closed (`send_backlog`).
pub const CONTROL_BACKLOG_MAX_BYTES: usize = 256 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Outbound: the connect op is in flight.
    Connecting,
    Handshake,
    Active,
    Closing,
}

#[derive(Debug, Clone, Copy)]
pub struct QueuedRequest {
    pub request: BlockRequest,
    pub received_at: Instant,
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
    pub recv_len: usize,
    pub recv_armed: bool,
    pub torrent: Option<Arc<CatalogTorrent>>,
    pub fast: bool,
    pub extended: bool,
    /// The peer's id for ut_metadata messages we send it (0: it does not take them).
    pub ut_metadata_id: u8,
    pub am_choking: bool,
    pub peer_interested: bool,
    pub queue: VecDeque<QueuedRequest>,
    pub control_pending: Vec<u8>,
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
    pub connected_at: Instant,
    pub last_recv_at: Instant,
    pub last_send_at: Instant,
    pub uploaded_bytes: u64,
    /// The peer shut down its write side (recv returned 0) with requests still owed: we
    /// finish answering them, then close (`pump` closes once nothing is left; the idle
    /// timeout backs that up). No recv is armed again.
    pub read_closed: bool,
    /// Outbound connections: the torrent we dialed for (the remote handshake must match), and
    /// the address the connect op reads (boxed: it must not move while the op is in flight).
    pub outbound_torrent: Option<Arc<CatalogTorrent>>,
    pub connect_addr: Option<Box<(libc::sockaddr_storage, libc::socklen_t)>>,
    /// `piece_readahead`: the file whose readahead hint is in flight (at most one per peer;
    /// its in-flight count is held until the hint completes).
    pub readahead_file: Option<FileKey>,
    /// `page_cache_sends`: this peer's last residency check, reused for its next blocks
    /// while fresh (see `shard::Residency`).
    pub residency: Option<Residency>,
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
        now: Instant,
        queue_max: usize,
        recv_buf_bytes: usize,
    ) -> Peer {
        Peer {
            fd,
            addr,
            generation,
            phase: Phase::Handshake,
            ops_inflight: 0,
            recv_buf: vec![0; recv_buf_bytes],
            recv_len: 0,
            recv_armed: false,
            torrent: None,
            fast: false,
            extended: false,
            ut_metadata_id: 0,
            am_choking: true,
            peer_interested: false,
            queue: VecDeque::with_capacity(queue_max.min(1024)),
            control_pending: Vec::new(),
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
            connected_at: now,
            last_recv_at: now,
            last_send_at: now,
            uploaded_bytes: 0,
            read_closed: false,
            outbound_torrent: None,
            connect_addr: None,
            readahead_file: None,
            residency: None,
        }
    }

    /// A send (control or batch) is in flight: nothing else may be sent until it completes.
    pub fn send_busy(&self) -> bool {
        self.control_inflight || self.batch.is_some()
    }
}
