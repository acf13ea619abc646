//! Every knob and limit of the engine, with units in the names and documented defaults.
//!
//! Owns: the `EngineConfig` the shards are sized from at start-up, and its validation.
//! Must never: let an unbounded value through: every queue, pool and table of the data path
//! takes its bound from here, and `validate` refuses values that would break an invariant.

pub use crate::read_mode::DirectIo;
pub use crate::tracker::config::TrackerConfig;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

/// How piece blocks travel from disk to socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServeMode {
    /// ReadFixed into a registered buffer behind the 13-byte piece header, then Send, linked.
    Copy,
    /// The same buffers sent with SendZc; a buffer is reused only after its notification.
    Zerocopy,
    /// Header Send, then file -> pipe -> socket splices (zero copies, io-wq workers).
    Splice,
}

impl ServeMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ServeMode::Copy => "copy",
            ServeMode::Zerocopy => "zerocopy",
            ServeMode::Splice => "splice",
        }
    }
}

impl std::str::FromStr for ServeMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "copy" => Ok(ServeMode::Copy),
            "zerocopy" => Ok(ServeMode::Zerocopy),
            "splice" => Ok(ServeMode::Splice),
            other => Err(format!(
                "unknown serve mode {other:?}: expected copy, zerocopy or splice"
            )),
        }
    }
}

/// Largest block a peer may request when `block_len_max_bytes` is raised (BEP 3 clients use
/// 16 KiB; some accept up to 128 KiB).
pub const BLOCK_LEN_CEILING_BYTES: u32 = 128 * 1024;

/// Most torrents `stats_top_torrents` may expose with their own metric series.
pub const STATS_TOP_TORRENTS_CEILING: usize = 1_000;

/// Default hot-block cache per shard (see `block_cache_bytes_per_shard`): off. With
/// `page_cache_sends`, a block in the page cache is sent from it in one copy, as a cache hit
/// would be, so a cache beside the page cache only holds the same bytes twice (measured:
/// 64 MiB of cache cost 0.97x on `hot`, 0.94x on `catalog` and 0.84x on a catalog larger
/// than RAM; docs/benchmarks.md). The cache is for `direct_io`, where it is the only cache.
pub const BLOCK_CACHE_BYTES_PER_SHARD_DEFAULT: u64 = 0;
/// Largest hot-block cache a shard may pin (registered memory counts against RAM).
pub const BLOCK_CACHE_BYTES_PER_SHARD_CEILING: u64 = 64 << 30;

/// Most content files a shard may keep open: the kernel's fixed-file table holds at most
/// 2^20 entries (IORING_MAX_FIXED_FILES), and `fixed_files` gives every cached file a slot.
pub const OPEN_FILES_PER_SHARD_CEILING: usize = 1 << 20;

/// Largest receive buffer ring per shard (`recv_buffers_per_shard x recv_buffer_bytes`).
pub const RECV_RING_BYTES_CEILING: u64 = 256 << 20;

/// Default `page_cache_map_bytes_max` per shard, 16 GiB: page tables at most 32 MiB per
/// shard even if every mapped byte were sent from.
pub const PAGE_CACHE_MAP_BYTES_MAX_DEFAULT: u64 = 16 << 30;

/// Bounds of `page_cache_map_bytes_max`: 1 MiB to 1 TiB (2 GiB of page tables per shard at
/// worst).
pub const PAGE_CACHE_MAP_BYTES_RANGE: std::ops::RangeInclusive<u64> = (1 << 20)..=(1 << 40);

/// Longest `idle_poll_usecs` accepted: beyond ~10 ms a shard that polls is just a busy core.
pub const IDLE_POLL_USECS_CEILING: u64 = 10_000;

/// Default `peers_per_ip_max`: connections from one IPv4 address or one IPv6 /64.
pub const PEERS_PER_IP_MAX_DEFAULT: usize = 64;

/// How many sources' worth a network holds by default: `peers_per_prefix_max` defaults to
/// this many times `peers_per_ip_max`, so a few hosts behind one /24 (a small office, a
/// carrier-grade NAT pool) are served, while one party holding a whole /24 or /48 cannot
/// take more than a handful of sources' share of `peers_max`.
pub const PEERS_PER_PREFIX_PER_IP_RATIO: usize = 4;

/// Default `peers_per_prefix_max`: connections from one IPv4 /24 or one IPv6 /48.
pub const PEERS_PER_PREFIX_MAX_DEFAULT: usize =
    PEERS_PER_IP_MAX_DEFAULT * PEERS_PER_PREFIX_PER_IP_RATIO;

/// Bounds of `ring_entries` (a power of two): the kernel's SQ allows up to 32768.
pub const RING_ENTRIES_FLOOR: u32 = 64;
pub const RING_ENTRIES_CEILING: u32 = 32768;

/// Default `recv_buffer_bytes_per_shard_max`: 64 MiB, a thousand peers each halfway
/// through a 64 KiB message at once.
pub const RECV_BUFFER_BYTES_PER_SHARD_MAX_DEFAULT: usize = 64 << 20;

/// Default `send_slots_per_ip_max`: a quarter of the default send buffer pool (64 slots).
pub const SEND_SLOTS_PER_IP_MAX_DEFAULT: usize = 16;
/// Default `send_slots_per_prefix_max`: half the default pool (two sources' worth), so one
/// network (IPv4 /24, IPv6 /48) of many addresses cannot take every slot either.
pub const SEND_SLOTS_PER_PREFIX_MAX_DEFAULT: usize = 32;
/// Default `send_stall_secs`: a live TCP connection whose receiver takes nothing for 10 s
/// is not being served; its slot goes to peers that read.
pub const SEND_STALL_SECS_DEFAULT: u64 = 10;
/// Default `batch_files_max`: a batch of many small files holds at most 32 (plus one
/// block's) open, so the 32 slots one network may hold pin at most ~1,024 files.
pub const BATCH_FILES_MAX_DEFAULT: usize = 32;

/// Default `batch_chain_entries_max`: room for a full default batch of whole blocks in every
/// mode (copy: up to 64 blocks read one by one, then the send, 65 entries; splice: 16 header
/// writes and file splices, then the socket splice, 33), so at the defaults only blocks split
/// across many files cut a batch short; 1/32 of the default ring.
pub const BATCH_CHAIN_ENTRIES_MAX_DEFAULT: u32 = 128;

/// Shortest chain that serves one block in every mode: splice mode writes its header into
/// the pipe, splices it from the file, then splices the pipe to the socket (copy and
/// zerocopy need two: a read and a send).
pub const BATCH_CHAIN_ENTRIES_MIN: u32 = 3;

/// Submission-queue entries kept free beside the longest batch chain: the same loop turn
/// queues other entries around a chain (the batch's readahead hint, recv and accept
/// re-arms, control sends, timeouts), and with this room a maximal chain fits without
/// waiting for the queue to drain completely.
pub const RING_ENTRIES_BESIDE_CHAIN: u32 = 16;

/// Bytes per pipe slot assumed by the splice checks: one page on x86_64 and most aarch64
/// kernels. The kernel sizes a pipe in slots of one page each (`pipe_buffer`s).
pub const PIPE_SLOT_BYTES: usize = 4096;

/// Smallest pipe the engine asks for in splice mode (the kernel's default pipe: 16 slots).
pub const SPLICE_PIPE_BYTES_MIN: usize = 64 * 1024;

/// Largest pipe an unprivileged process may ask for: the default of
/// /proc/sys/fs/pipe-max-size. A larger request fails (EPERM) and the pipe keeps its default
/// 64 KiB, so the checks assume this bound (the shipped service runs without capabilities).
pub const PIPE_BYTES_MAX_UNPRIVILEGED: usize = 1 << 20;

/// Default `remove_drain_secs`: long enough for a full request queue (512 x 16 KiB) at a
/// slow peer's rate, short enough that a removal is done within seconds.
pub const REMOVE_DRAIN_SECS_DEFAULT: u64 = 10;
/// Largest `remove_drain_secs`: a removal must finish within minutes.
pub const REMOVE_DRAIN_SECS_MAX: u64 = 600;

/// Default admin endpoint: loopback only, so nothing is exposed by accident.
pub const ADMIN_LISTEN_DEFAULT: &str = "127.0.0.1:7881";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineConfig {
    /// Addresses to listen on; every shard binds each with SO_REUSEPORT.
    pub listen: Vec<SocketAddr>,
    /// The `[http]` table (a table of its own in the file: see `SeedConfig::http`), copied
    /// here by the CLI so the shards get it with the rest.
    #[serde(skip)]
    pub http: crate::http::HttpConfig,
    /// Shard threads (one io_uring each). 0 = one per online CPU.
    pub shards: usize,
    /// Pin shard i to CPU i (mod online CPUs).
    pub pin_shards: bool,
    pub serve_mode: ServeMode,
    /// MSE/PE (encrypted peers): off | allow | prefer | require (`wire::mse`).
    pub encryption: crate::wire::mse::EncryptionMode,
    /// MSE handshakes (DH key exchanges) a shard starts per second, all peers together;
    /// more are closed at once (`encryption_failures{reason="rate_limited"}`).
    pub encryption_handshakes_per_sec_max: u32,
    /// MSE handshakes a shard starts per second for one IPv4 address or IPv6 /64.
    pub encryption_handshakes_per_ip_per_sec_max: u32,
    /// zerocopy mode: a connection whose sends the kernel reports as copied (loopback, NICs
    /// without the offloads) switches to plain sends.
    pub zerocopy_adaptive: bool,
    /// Read consecutive blocks of a batch with one vectored read (readv around the piece
    /// headers) instead of one read per block.
    pub vectored_reads: bool,
    /// Register the ring's own fd (IORING_REGISTER_RING_FDS) so every io_uring_enter skips
    /// the kernel's lookup of it. Falls back to the plain fd when the kernel refuses.
    pub register_ring_fd: bool,
    /// Install each cached content file in a per-shard fixed-file table (one slot per
    /// `open_files_per_shard_max`) and read by slot, skipping the kernel's per-op fd lookup.
    /// Falls back to plain fds when the kernel refuses the table. Not used in splice mode.
    pub fixed_files: bool,
    /// Read content with O_DIRECT into the hot-block cache, bypassing the page cache, for
    /// catalogs larger than RAM: the cache is then the only cache, and RAM is not spent
    /// twice. Aligned reads into cache entries only; file tails, blocks straddling files and
    /// reads that find the cache full stay buffered (counted). `true` needs the cache (and
    /// not splice mode); a filesystem without O_DIRECT falls back to buffered reads
    /// (counted). `"auto"` (the default) decides at start (`crate::read_mode`): direct when
    /// the catalog is larger than the memory budget, with half the budget as cache if none
    /// is set; buffered when it fits.
    pub direct_io: DirectIo,
    /// `direct_io = "auto"`: the memory budget to compare the catalog with, in bytes; 0 =
    /// detect (the cgroup's limit, v2 memory.max or v1 memory.limit_in_bytes, and
    /// MemAvailable, whichever is smaller).
    pub direct_io_memory_budget_bytes: u64,
    /// Buffered reads: when a peer asks for the first block of a piece that is not in the
    /// hot-block cache, ask the kernel to read the rest of the piece ahead
    /// (IORING_OP_FADVISE, POSIX_FADV_WILLNEED; one in flight per peer). Peers fetch a
    /// piece's blocks in order, but interleaved peers defeat the kernel's own sequential
    /// detection on a shared file.
    pub piece_readahead: bool,
    /// Send a block whose pages are already in the page cache straight from a read-only
    /// mapping of its file (the kernel copies page cache -> socket once) instead of reading
    /// it into our memory and sending that (two copies). Residency is checked with mincore
    /// first, so a block on disk is still read asynchronously and never faults the shard.
    /// Not used with `direct_io` (which keeps content out of the page cache) or in splice
    /// mode. Each open content file is then also mapped (bounded by
    /// `open_files_per_shard_max`; mind `vm.max_map_count` with many shards).
    pub page_cache_sends: bool,
    /// `page_cache_sends`: most bytes of content files a shard keeps mapped at once. Bounds
    /// its page tables (at most ~2 MiB per GiB mapped, for the parts sent from). To map a
    /// file past it, idle files' mappings are dropped first (least recently used); a file
    /// that still does not fit is read instead (counted as `maps_over_budget`).
    pub page_cache_map_bytes_max: u64,
    /// After a loop turn that had work, poll the ring (non-blocking enters) for up to this
    /// long before sleeping: at moderate load the next request usually arrives within it,
    /// and the shard skips a sleep and a wake-up (an IPI, and on a VM an exit) per request.
    /// Costs up to this much spinning per idle gap. 0 = always sleep at once.
    pub idle_poll_usecs: u64,
    /// Receive with one multishot recv per peer from a shared provided-buffer ring
    /// (`recv_buffers_per_shard` x `recv_buffer_bytes`) instead of arming a recv into the
    /// peer's own buffer after every completion. Falls back to single recvs (logged once)
    /// when the kernel refuses the buffer ring.
    pub multishot_recv: bool,
    /// Receive buffers in each shard's provided-buffer ring (power of two, at most 32768).
    /// A buffer is out of the ring only from a completion to its dispatch in the same loop
    /// turn; a burst larger than this ends some peers' multishot recvs (counted as
    /// `recv_buffers_exhausted`, re-armed at once).
    pub recv_buffers_per_shard: u32,
    /// Bytes per receive buffer: the most one receive completion carries.
    pub recv_buffer_bytes: u32,
    /// Peers across all shards; connections beyond it are accepted and closed at once.
    pub peers_max: usize,
    /// Peers of one torrent on one shard.
    pub peers_per_torrent_max: usize,
    /// Connections from one source, all shards together: one IPv4 address, or one IPv6 /64
    /// (a host may use any address of its /64, so each is not counted alone). An
    /// IPv4-mapped IPv6 address counts as its IPv4 address. Approximate on the strict side:
    /// counters live in a fixed table under a keyed hash, and sources sharing a counter
    /// share the limit.
    pub peers_per_ip_max: usize,
    /// Connections from one network, all shards together: one IPv4 /24 or one IPv6 /48.
    /// Bounds what many sources in one network can hold together (a /48 holds 65,536 /64s).
    /// At least `peers_per_ip_max`. Default 256 (4 x the default `peers_per_ip_max`).
    pub peers_per_prefix_max: usize,
    /// A peer that has not completed its handshake by then is closed.
    pub handshake_timeout_secs: u64,
    /// A peer that sent nothing for this long is closed.
    pub idle_timeout_secs: u64,
    /// Send buffer slots the peers of one source (an IPv4 address or an IPv6 /64) may hold
    /// at once on a shard: many connections from one source cannot take every slot.
    pub send_slots_per_ip_max: usize,
    /// Send buffer slots the peers of one network (an IPv4 /24 or an IPv6 /48) may hold at
    /// once on a shard: the same bound one level up, for sources that walk a prefix.
    pub send_slots_per_prefix_max: usize,
    /// A send to a peer (control bytes or a batch, its disk reads included) that makes no
    /// progress for this long closes the peer, releasing its send slot, files and cache
    /// references; also the sockets' TCP_USER_TIMEOUT. A peer that never reads must not hold
    /// a slot forever.
    pub send_stall_secs: u64,
    /// A keep-alive is sent after this long without sending anything.
    pub keepalive_interval_secs: u64,
    /// Longest message a peer may send us (length prefix); longer closes the peer.
    pub message_len_max_bytes: u32,
    /// Receive-buffer bytes a shard's peers may hold beyond the first 4 KiB of each, all
    /// together (partial large messages: bitfields, extension messages). A peer whose
    /// message would take the shard past it is closed (`recv_memory_limit`): many peers
    /// each sending part of a large message and stalling cannot grow memory without bound.
    pub recv_buffer_bytes_per_shard_max: usize,
    /// Longest block a peer may request. Default 16 KiB, at most 128 KiB.
    pub block_len_max_bytes: u32,
    /// Requests queued per peer (advertised as BEP 10 `reqq`); more are rejected.
    pub request_queue_per_peer_max: usize,
    /// Send buffers per shard (each `send_batch_bytes_max` plus headers).
    pub buffer_pool_slots_per_shard: usize,
    /// Hot-block cache per shard, in bytes of registered memory (0 = off, the default).
    /// Recently served 16 KiB blocks are sent from here without a read; CLOCK eviction. The
    /// only cache with `direct_io`; beside the page cache (with `page_cache_sends`) it holds
    /// the same bytes twice.
    pub block_cache_bytes_per_shard: u64,
    /// Bytes of piece payload coalesced into one send, for blocks read into the send buffer
    /// slot (which is sized for this many).
    pub send_batch_bytes_max: u32,
    /// Bytes of piece payload one send may carry when its blocks come from the hot-block
    /// cache: only their 13-byte headers take slot space, so a batch of cache hits grows to
    /// this without larger slots. Fewer, larger sends: fewer wake-ups and per-send costs.
    pub cached_send_batch_bytes_max: u32,
    /// Open content files cached per shard.
    pub open_files_per_shard_max: usize,
    /// Interested peers unchoked at once, across all shards (split evenly).
    pub upload_slots_max: usize,
    /// When more peers want in than there are slots, rotate every this many seconds.
    pub choke_rotation_secs: u64,
    /// io_uring submission queue entries per shard.
    pub ring_entries: u32,
    /// Most submission-queue entries one batch's linked chain may take (its reads, or in
    /// splice mode its pipe writes and splices, plus its send). A block spanning many small
    /// files needs one read per file, so without this bound a chain could outgrow the
    /// submission queue; the shard ends a batch early rather than build a longer chain.
    /// At least 3; `ring_entries` must hold it plus 16 entries for other ops. Default 128.
    pub batch_chain_entries_max: u32,
    /// Files one batch may hold open: no block is added to a batch holding this many, so
    /// a batch holds at most this plus one block's files, and batches stuck on peers that
    /// do not read pin a bounded share of `open_files_per_shard_max`.
    pub batch_files_max: usize,
    /// Info dictionaries cached per shard for BEP 9 metadata serving.
    pub metadata_cache_entries_max: usize,
    /// v2/hybrid torrents whose merkle trees (built from the piece layers in the .torrent,
    /// about 64 bytes per piece) are cached per shard to answer BEP 52 hash requests.
    pub v2_layer_cache_entries_max: usize,
    /// Stats snapshots queued from shards to the control thread.
    pub stats_channel_capacity: usize,
    /// Record the latency histograms (request, disk read, handshake). Off only to measure
    /// what recording costs (squall-bench with it on vs off); counters are always kept.
    pub stats_histograms: bool,
    /// Torrents exposed with per-torrent series (top N by uploaded bytes): bounds the
    /// cardinality of `squall_torrent_*` metrics. 0 = no per-torrent series.
    pub stats_top_torrents: usize,
    /// An errored torrent (a content file failed) is rechecked this often: files reopened
    /// read-only and size-checked, then every piece hashed; a pass serves it again.
    pub errored_recheck_secs: u64,
    /// A removed (or paused) torrent's peers drain: they take no new requests, get the
    /// blocks they had queued, then close; at this deadline the rest are closed. 0 = close
    /// at once.
    pub remove_drain_secs: u64,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            listen: vec!["0.0.0.0:6881"
                .parse()
                .unwrap_or_else(|_| unreachable_addr())],
            http: crate::http::HttpConfig::default(),
            shards: 0,
            pin_shards: true,
            serve_mode: ServeMode::Copy,
            encryption: crate::wire::mse::EncryptionMode::Allow,
            encryption_handshakes_per_sec_max: crate::shard::transport::HANDSHAKES_PER_SEC_DEFAULT,
            encryption_handshakes_per_ip_per_sec_max:
                crate::shard::transport::HANDSHAKES_PER_IP_PER_SEC_DEFAULT,
            zerocopy_adaptive: true,
            vectored_reads: true,
            register_ring_fd: true,
            // Off: its A/B (benchmarks.md, 2026-11-25) showed no gain and a possible loss.
            fixed_files: false,
            // Off: for catalogs larger than RAM (see docs/operations.md and benchmarks.md).
            direct_io: DirectIo::Auto,
            direct_io_memory_budget_bytes: 0,
            piece_readahead: true,
            page_cache_sends: true,
            page_cache_map_bytes_max: PAGE_CACHE_MAP_BYTES_MAX_DEFAULT,
            // Off: it buys p99 at moderate load with a spinning core (benchmarks.md).
            idle_poll_usecs: 0,
            multishot_recv: true,
            recv_buffers_per_shard: 2048,
            recv_buffer_bytes: 2048,
            peers_max: 10_000,
            peers_per_torrent_max: 1_000,
            peers_per_ip_max: PEERS_PER_IP_MAX_DEFAULT,
            peers_per_prefix_max: PEERS_PER_PREFIX_MAX_DEFAULT,
            handshake_timeout_secs: 10,
            idle_timeout_secs: 180,
            send_stall_secs: SEND_STALL_SECS_DEFAULT,
            send_slots_per_ip_max: SEND_SLOTS_PER_IP_MAX_DEFAULT,
            send_slots_per_prefix_max: SEND_SLOTS_PER_PREFIX_MAX_DEFAULT,
            keepalive_interval_secs: 90,
            message_len_max_bytes: 1 << 20,
            recv_buffer_bytes_per_shard_max: RECV_BUFFER_BYTES_PER_SHARD_MAX_DEFAULT,
            block_len_max_bytes: crate::BLOCK_LEN_BYTES,
            request_queue_per_peer_max: 512,
            buffer_pool_slots_per_shard: 64,
            block_cache_bytes_per_shard: BLOCK_CACHE_BYTES_PER_SHARD_DEFAULT,
            send_batch_bytes_max: 256 * 1024,
            cached_send_batch_bytes_max: 1024 * 1024,
            open_files_per_shard_max: 1_024,
            upload_slots_max: 4_096,
            choke_rotation_secs: 30,
            ring_entries: 4_096,
            batch_chain_entries_max: BATCH_CHAIN_ENTRIES_MAX_DEFAULT,
            batch_files_max: BATCH_FILES_MAX_DEFAULT,
            metadata_cache_entries_max: 256,
            v2_layer_cache_entries_max: 64,
            stats_channel_capacity: 16,
            stats_histograms: true,
            stats_top_torrents: 20,
            errored_recheck_secs: 10,
            remove_drain_secs: REMOVE_DRAIN_SECS_DEFAULT,
        }
    }
}

fn unreachable_addr() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 6881))
}

impl EngineConfig {
    /// Shards to run: `shards`, or one per online CPU when 0.
    pub fn shard_count(&self) -> usize {
        if self.shards > 0 {
            self.shards
        } else {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        }
    }

    /// Bytes of one send slot: the batch payload plus one piece header per block it can hold.
    /// A buffer slot: room for `send_batch_bytes_max` of blocks read into it, each with its
    /// header, plus the headers of the extra blocks a batch may send from the cache.
    pub fn slot_len_bytes(&self) -> usize {
        let header = crate::wire::message::PIECE_HEADER_LEN;
        let in_slot = self.slot_blocks_max();
        in_slot * (header + self.block_len_max_bytes as usize)
            + (self.blocks_per_batch_max() - in_slot) * header
    }

    /// Most blocks one batch holds in its slot (read there, not from the cache).
    pub fn slot_blocks_max(&self) -> usize {
        (self.send_batch_bytes_max / self.block_len_max_bytes).max(1) as usize
    }

    /// Sends from file mappings are in effect: asked for, and not ruled out by `direct_io`
    /// or splice mode.
    pub fn page_cache_sends_effective(&self) -> bool {
        self.page_cache_sends
            && self.direct_io != DirectIo::On
            && self.serve_mode != ServeMode::Splice
    }

    /// The hot-block cache is in effect: sized, and not in splice mode (file bytes go
    /// through a pipe there, and the shard builds no cache).
    pub fn block_cache_effective(&self) -> bool {
        self.block_cache_bytes_per_shard > 0 && self.serve_mode != ServeMode::Splice
    }

    /// Bytes of the pipe the shard should ask for per peer in splice mode (`F_SETPIPE_SZ`):
    /// room for a whole batch with its headers (one send slot) and, since the kernel bounds
    /// a pipe by slots rather than bytes, a slot for every page the batch may fill; at least
    /// the kernel's default pipe. The kernel may grant less (a user past
    /// /proc/sys/fs/pipe-user-pages-soft gets small pipes), so the shard sizes each batch
    /// from the capacity it got.
    pub fn splice_pipe_bytes_requested(&self) -> usize {
        let blocks = self.blocks_per_batch_max();
        let block_len = self.block_len_max_bytes as usize;
        self.slot_len_bytes()
            .max(splice_pipe_slots_needed(blocks, block_len) * PIPE_SLOT_BYTES)
            .max(SPLICE_PIPE_BYTES_MIN)
    }

    /// Why a splice batch of `blocks` blocks of `block_len_max_bytes` cannot go through a
    /// pipe the shard may ask for: `None` when it fits. Assumes an unprivileged process and
    /// every block within one file (a block spanning files needs more slots; the shard
    /// counts those at run time with `pipe_slots_of_file_splice`).
    fn splice_batch_misfit(&self, blocks: usize) -> Option<String> {
        let block_len = self.block_len_max_bytes as usize;
        let batch_bytes = blocks * (crate::wire::message::PIECE_HEADER_LEN + block_len);
        let needed = splice_pipe_slots_needed(blocks, block_len);
        let requested = batch_bytes
            .max(needed * PIPE_SLOT_BYTES)
            .max(SPLICE_PIPE_BYTES_MIN);
        let granted = pipe_bytes_granted(requested);
        if granted > PIPE_BYTES_MAX_UNPRIVILEGED {
            return Some(format!(
                "a batch of {blocks} blocks with headers ({batch_bytes} bytes) may fill {needed} \
                 pipe slots (the kernel bounds a pipe by slots, not bytes: one per 4 KiB page of \
                 a block, one more for a block that starts mid-page, one per header write), so \
                 it needs a pipe of {granted} bytes, above the {PIPE_BYTES_MAX_UNPRIVILEGED} an \
                 unprivileged process may ask for (/proc/sys/fs/pipe-max-size): the pipe would \
                 stay at 64 KiB and a file -> pipe splice would come up short"
            ));
        }
        // What is asked for covers every slot; the kernel only rounds it up.
        debug_assert!(needed <= pipe_slots(granted));
        None
    }

    /// Most blocks one coalesced send carries: `cached_send_batch_bytes_max` worth when they
    /// come from the hot-block cache or the page cache (only their headers take slot space).
    pub fn blocks_per_batch_max(&self) -> usize {
        let gathered = self.block_cache_effective() || self.page_cache_sends_effective();
        let cached = if gathered {
            (self.cached_send_batch_bytes_max / self.block_len_max_bytes) as usize
        } else {
            0
        };
        self.slot_blocks_max().max(cached)
    }

    /// Refuses values that would break an engine invariant; the message names the key.
    pub fn validate(&self) -> Result<(), String> {
        fn positive(name: &str, v: u64) -> Result<(), String> {
            if v == 0 {
                Err(format!("{name} = 0: must be at least 1"))
            } else {
                Ok(())
            }
        }
        self.http.validate()?;
        if self.listen.is_empty() {
            return Err("listen = []: give at least one address, e.g. \"0.0.0.0:6881\"".into());
        }
        for addr in &self.listen {
            if addr.port() == 0 && self.listen.len() > 1 {
                return Err(format!(
                    "listen = {addr}: port 0 (any port) only works with a single listen address"
                ));
            }
        }
        if self.block_len_max_bytes < crate::BLOCK_LEN_BYTES
            || self.block_len_max_bytes > BLOCK_LEN_CEILING_BYTES
        {
            return Err(format!(
                "block_len_max_bytes = {}: must be between {} and {BLOCK_LEN_CEILING_BYTES}",
                self.block_len_max_bytes,
                crate::BLOCK_LEN_BYTES
            ));
        }
        if self.send_batch_bytes_max < self.block_len_max_bytes
            || self.send_batch_bytes_max > 4 << 20
        {
            return Err(format!(
                "send_batch_bytes_max = {}: must be between block_len_max_bytes ({}) and 4194304",
                self.send_batch_bytes_max, self.block_len_max_bytes
            ));
        }
        if self.cached_send_batch_bytes_max < self.block_len_max_bytes
            || self.cached_send_batch_bytes_max > 4 << 20
        {
            return Err(format!(
                "cached_send_batch_bytes_max = {}: must be between block_len_max_bytes ({}) and \
                 4194304",
                self.cached_send_batch_bytes_max, self.block_len_max_bytes
            ));
        }
        if (self.message_len_max_bytes as usize)
            < crate::BLOCK_LEN_BYTES as usize + crate::wire::message::PIECE_HEADER_LEN
        {
            return Err(format!(
                "message_len_max_bytes = {}: must be at least {} (a block and its header)",
                self.message_len_max_bytes,
                crate::BLOCK_LEN_BYTES as usize + crate::wire::message::PIECE_HEADER_LEN
            ));
        }
        if self.recv_buffer_bytes_per_shard_max < self.message_len_max_bytes as usize + 4 {
            return Err(format!(
                "recv_buffer_bytes_per_shard_max = {}: must hold at least one message of \
                 message_len_max_bytes = {} and its 4-byte length; raise it to at least {} \
                 (default {RECV_BUFFER_BYTES_PER_SHARD_MAX_DEFAULT}) or lower \
                 message_len_max_bytes",
                self.recv_buffer_bytes_per_shard_max,
                self.message_len_max_bytes,
                self.message_len_max_bytes as usize + 4
            ));
        }
        positive("peers_max", self.peers_max as u64)?;
        positive("peers_per_torrent_max", self.peers_per_torrent_max as u64)?;
        positive("peers_per_ip_max", self.peers_per_ip_max as u64)?;
        positive("peers_per_prefix_max", self.peers_per_prefix_max as u64)?;
        positive("handshake_timeout_secs", self.handshake_timeout_secs)?;
        crate::shard::transport::validate_config(self)?;
        positive("idle_timeout_secs", self.idle_timeout_secs)?;
        positive("send_stall_secs", self.send_stall_secs)?;
        positive("send_slots_per_ip_max", self.send_slots_per_ip_max as u64)?;
        positive("batch_files_max", self.batch_files_max as u64)?;
        positive(
            "send_slots_per_prefix_max",
            self.send_slots_per_prefix_max as u64,
        )?;
        positive("keepalive_interval_secs", self.keepalive_interval_secs)?;
        positive(
            "request_queue_per_peer_max",
            self.request_queue_per_peer_max as u64,
        )?;
        positive(
            "buffer_pool_slots_per_shard",
            self.buffer_pool_slots_per_shard as u64,
        )?;
        positive(
            "open_files_per_shard_max",
            self.open_files_per_shard_max as u64,
        )?;
        if self.open_files_per_shard_max > OPEN_FILES_PER_SHARD_CEILING {
            return Err(format!(
                "open_files_per_shard_max = {}: at most {OPEN_FILES_PER_SHARD_CEILING} (the \
                 kernel's fixed-file table size)",
                self.open_files_per_shard_max
            ));
        }
        positive("upload_slots_max", self.upload_slots_max as u64)?;
        positive("choke_rotation_secs", self.choke_rotation_secs)?;
        positive("errored_recheck_secs", self.errored_recheck_secs)?;
        if self.remove_drain_secs > REMOVE_DRAIN_SECS_MAX {
            return Err(format!(
                "remove_drain_secs = {}: at most {REMOVE_DRAIN_SECS_MAX} (a removed torrent's \
                 peers must be gone within minutes; 0 closes them at once)",
                self.remove_drain_secs
            ));
        }
        positive(
            "metadata_cache_entries_max",
            self.metadata_cache_entries_max as u64,
        )?;
        positive(
            "v2_layer_cache_entries_max",
            self.v2_layer_cache_entries_max as u64,
        )?;
        positive("stats_channel_capacity", self.stats_channel_capacity as u64)?;
        if self.stats_top_torrents > STATS_TOP_TORRENTS_CEILING {
            return Err(format!(
                "stats_top_torrents = {}: at most {STATS_TOP_TORRENTS_CEILING} (each is a \
                 metric series; Prometheus suffers beyond a few hundred)",
                self.stats_top_torrents
            ));
        }
        if self.buffer_pool_slots_per_shard > u16::MAX as usize - 1 {
            return Err(format!(
                "buffer_pool_slots_per_shard = {}: at most 65534",
                self.buffer_pool_slots_per_shard
            ));
        }
        if self.block_cache_bytes_per_shard > BLOCK_CACHE_BYTES_PER_SHARD_CEILING {
            return Err(format!(
                "block_cache_bytes_per_shard = {}: at most {BLOCK_CACHE_BYTES_PER_SHARD_CEILING} \
                 (64 GiB); 0 turns the cache off",
                self.block_cache_bytes_per_shard
            ));
        }
        if self.block_cache_bytes_per_shard > 0
            && self.block_cache_bytes_per_shard < u64::from(self.block_len_max_bytes)
        {
            return Err(format!(
                "block_cache_bytes_per_shard = {}: less than one block ({} bytes); use 0 to \
                 turn the cache off",
                self.block_cache_bytes_per_shard, self.block_len_max_bytes
            ));
        }
        if !self.recv_buffers_per_shard.is_power_of_two()
            || self.recv_buffers_per_shard > crate::ring::provided::RECV_BUFFERS_CEILING
        {
            return Err(format!(
                "recv_buffers_per_shard = {}: must be a power of two between 1 and 32768 (the \
                 kernel's limit for a buffer ring)",
                self.recv_buffers_per_shard
            ));
        }
        if !(64..=1 << 20).contains(&self.recv_buffer_bytes) {
            return Err(format!(
                "recv_buffer_bytes = {}: must be between 64 and 1048576",
                self.recv_buffer_bytes
            ));
        }
        let ring_bytes = u64::from(self.recv_buffers_per_shard) * u64::from(self.recv_buffer_bytes);
        if self.multishot_recv && ring_bytes > RECV_RING_BYTES_CEILING {
            return Err(format!(
                "recv_buffers_per_shard x recv_buffer_bytes = {ring_bytes} bytes per shard: at \
                 most {RECV_RING_BYTES_CEILING} (256 MiB); the default ring is 4 MiB"
            ));
        }
        if !PAGE_CACHE_MAP_BYTES_RANGE.contains(&self.page_cache_map_bytes_max) {
            return Err(format!(
                "page_cache_map_bytes_max = {}: must be between {} (1 MiB) and {} (1 TiB)",
                self.page_cache_map_bytes_max,
                PAGE_CACHE_MAP_BYTES_RANGE.start(),
                PAGE_CACHE_MAP_BYTES_RANGE.end()
            ));
        }
        if self.idle_poll_usecs > IDLE_POLL_USECS_CEILING {
            return Err(format!(
                "idle_poll_usecs = {}: at most {IDLE_POLL_USECS_CEILING} (50-100 is the useful \
                 range; 0 turns polling off)",
                self.idle_poll_usecs
            ));
        }
        if self.direct_io == DirectIo::On && self.block_cache_bytes_per_shard == 0 {
            return Err(
                "direct_io = true needs the hot-block cache (block_cache_bytes_per_shard \
                 > 0): O_DIRECT reads land in it, and it is then the only cache"
                    .to_string(),
            );
        }
        if self.direct_io_memory_budget_bytes != 0
            && self.direct_io_memory_budget_bytes < crate::read_mode::AUTO_CACHE_BYTES_PER_SHARD_MIN
        {
            return Err(format!(
                "direct_io_memory_budget_bytes = {}: at least {} (16 MiB), or 0 to detect the \
                 budget (cgroup limit, MemAvailable)",
                self.direct_io_memory_budget_bytes,
                crate::read_mode::AUTO_CACHE_BYTES_PER_SHARD_MIN
            ));
        }
        if self.direct_io == DirectIo::On && self.serve_mode == ServeMode::Splice {
            return Err(
                "direct_io = true does not work with serve_mode = \"splice\" (splice \
                 reads through the page cache); use copy or zerocopy"
                    .to_string(),
            );
        }
        if self.peers_max > (1 << 24) - 1 {
            return Err(format!("peers_max = {}: at most 16777215", self.peers_max));
        }
        if !(RING_ENTRIES_FLOOR..=RING_ENTRIES_CEILING).contains(&self.ring_entries)
            || !self.ring_entries.is_power_of_two()
        {
            return Err(format!(
                "ring_entries = {}: must be a power of two between {RING_ENTRIES_FLOOR} and \
                 {RING_ENTRIES_CEILING}",
                self.ring_entries
            ));
        }
        if self.batch_chain_entries_max < BATCH_CHAIN_ENTRIES_MIN {
            return Err(format!(
                "batch_chain_entries_max = {}: at least {BATCH_CHAIN_ENTRIES_MIN} (one block in \
                 splice mode: header write, file -> pipe splice, pipe -> socket splice)",
                self.batch_chain_entries_max
            ));
        }
        // A linked chain is queued whole, so the submission queue must hold the longest one
        // (the ring asserts it) plus the entries queued beside it.
        let chain_room =
            u64::from(self.batch_chain_entries_max) + u64::from(RING_ENTRIES_BESIDE_CHAIN);
        if chain_room > u64::from(self.ring_entries) {
            let ring_needed = chain_room.next_power_of_two();
            let chain_fits = self.ring_entries - RING_ENTRIES_BESIDE_CHAIN;
            let raise = if ring_needed <= u64::from(RING_ENTRIES_CEILING) {
                format!("raise ring_entries to at least {ring_needed} or ")
            } else {
                String::new()
            };
            return Err(format!(
                "ring_entries = {} is below the longest SQE chain one batch may build \
                 (batch_chain_entries_max = {}) plus {RING_ENTRIES_BESIDE_CHAIN} entries for \
                 the ops queued beside it: {raise}lower batch_chain_entries_max to at most \
                 {chain_fits}",
                self.ring_entries, self.batch_chain_entries_max
            ));
        }
        if self.peers_per_prefix_max < self.peers_per_ip_max {
            return Err(format!(
                "peers_per_prefix_max = {} is below peers_per_ip_max = {}: one network (IPv4 \
                 /24, IPv6 /48) must hold at least one source's connections (IPv4 address, \
                 IPv6 /64); raise peers_per_prefix_max to at least {} or lower \
                 peers_per_ip_max",
                self.peers_per_prefix_max, self.peers_per_ip_max, self.peers_per_ip_max
            ));
        }
        if self.send_slots_per_prefix_max < self.send_slots_per_ip_max {
            return Err(format!(
                "send_slots_per_prefix_max = {} is below send_slots_per_ip_max = {}: one \
                 network (IPv4 /24, IPv6 /48) must be able to hold one source's send slots \
                 (IPv4 address, IPv6 /64); raise send_slots_per_prefix_max to at least {} \
                 or lower send_slots_per_ip_max",
                self.send_slots_per_prefix_max,
                self.send_slots_per_ip_max,
                self.send_slots_per_ip_max
            ));
        }
        if self.serve_mode == ServeMode::Splice {
            // Splice batches hold only blocks read into the slot (no cache, no mappings).
            let blocks = self.slot_blocks_max();
            if let Some(why) = self.splice_batch_misfit(blocks) {
                // Always found: one block fits (128 KiB fills at most 34 of 256 slots).
                let fits = (1..blocks)
                    .rev()
                    .find(|b| self.splice_batch_misfit(*b).is_none())
                    .unwrap_or(1);
                return Err(format!(
                    "send_batch_bytes_max = {} with serve_mode = \"splice\": {why}; lower \
                     send_batch_bytes_max to at most {} ({fits} blocks of {} bytes), or use \
                     serve_mode = \"copy\"",
                    self.send_batch_bytes_max,
                    fits * self.block_len_max_bytes as usize,
                    self.block_len_max_bytes
                ));
            }
        }
        Ok(())
    }
}

/// Bytes the kernel makes of a pipe size request: a power-of-two number of pages
/// (fs/pipe.c, `round_pipe_size`). It refuses the request (EPERM) when this exceeds
/// /proc/sys/fs/pipe-max-size for an unprivileged process.
pub fn pipe_bytes_granted(requested_bytes: usize) -> usize {
    requested_bytes.max(PIPE_SLOT_BYTES).next_power_of_two()
}

/// Slots of a pipe of `capacity_bytes` (what `F_GETPIPE_SZ` returns).
pub fn pipe_slots(capacity_bytes: usize) -> usize {
    capacity_bytes / PIPE_SLOT_BYTES
}

/// Most pipe slots one file -> pipe splice of `len_bytes` fills: one per page-cache page it
/// touches, and a file of a multi-file torrent starts anywhere in a page, so one more.
pub fn pipe_slots_of_file_splice(len_bytes: usize) -> usize {
    len_bytes.div_ceil(PIPE_SLOT_BYTES) + 1
}

/// Most pipe slots one write of `len_bytes` into the pipe fills (piece headers, a pad file's
/// zeros): a write fills fresh slots a page at a time, or merges into the last one.
pub fn pipe_slots_of_pipe_write(len_bytes: usize) -> usize {
    len_bytes.div_ceil(PIPE_SLOT_BYTES)
}

/// Most pipe slots a splice batch of `blocks` blocks fills before its socket splice drains
/// the pipe, when each block is at most `block_len_bytes` and lies within one file: per
/// block, its header write and its file splice. A batch whose blocks span files counts each
/// op with `pipe_slots_of_file_splice` / `pipe_slots_of_pipe_write` instead.
pub fn splice_pipe_slots_needed(blocks: usize, block_len_bytes: usize) -> usize {
    let header = crate::wire::message::PIECE_HEADER_LEN;
    blocks * (pipe_slots_of_pipe_write(header) + pipe_slots_of_file_splice(block_len_bytes))
}

/// Where the catalog comes from (the `[catalog]` table of a config file).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CatalogPaths {
    /// Directory of .torrent files.
    pub torrents_dir: Option<std::path::PathBuf>,
    /// Directory holding the torrents' content.
    pub data_dir: Option<std::path::PathBuf>,
    /// Resume state and zero-config torrents.
    pub state_dir: Option<std::path::PathBuf>,
}

/// The admin/metrics HTTP endpoint (the `[admin]` table): control plane only.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// `ADDR:PORT` to serve `/metrics`, `/stats`, `/health` on, or `"off"`. Default
    /// 127.0.0.1:7881. Port 0 picks a free port (printed as `admin on ADDR`).
    pub listen: String,
    /// Bearer token required on every request (`Authorization: Bearer TOKEN`). Required when
    /// `listen` is not a loopback address (or `token_file`).
    pub token: Option<String>,
    /// The API's token file (made 0600 when missing); default `STATE_DIR/admin.token`.
    pub token_file: Option<std::path::PathBuf>,
    /// More roots an API data directory may lie under (besides the catalog's). Default [].
    pub data_roots: Vec<std::path::PathBuf>,
    /// Largest API request body (an uploaded .torrent); larger: 413. Default 8 MiB.
    pub api_body_bytes_max: usize,
    /// Wrong-token attempts per client address a minute, then 429. Default 10.
    pub auth_failures_per_min_max: u32,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: ADMIN_LISTEN_DEFAULT.to_string(),
            token: None,
            token_file: None,
            data_roots: Vec::new(),
            api_body_bytes_max: 8 << 20,
            auth_failures_per_min_max: 10,
        }
    }
}

impl AdminConfig {
    /// The address to serve on (`None` for "off"), refusing a non-loopback address without
    /// a token and an empty token.
    pub fn listen_addr(&self) -> Result<Option<SocketAddr>, String> {
        let text = self.listen.trim();
        if text.eq_ignore_ascii_case("off") {
            return Ok(None);
        }
        let addr: SocketAddr = crate::config_file::parse_socket_addr(text).map_err(|why| {
            format!("admin.listen = {text:?}: {why}; expected ADDR:PORT (e.g. \"{ADMIN_LISTEN_DEFAULT}\") or \"off\"")
        })?;
        if matches!(&self.token, Some(t) if t.trim().is_empty()) {
            return Err("admin.token = \"\": give a non-empty token or leave it out".into());
        }
        if !addr.ip().is_loopback() && self.token.is_none() && self.token_file.is_none() {
            return Err(format!(
                "admin.listen = {addr}: not a loopback address, so set admin.token or \
                 admin.token_file (clients send `Authorization: Bearer TOKEN`), or use 127.0.0.1"
            ));
        }
        self.check_api_limits()?;
        Ok(Some(addr))
    }
}

/// A whole config file: `[catalog]`, `[engine]`, `[admin]`, `[tracker]` and `[dht]` tables.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SeedConfig {
    pub catalog: CatalogPaths,
    pub engine: EngineConfig,
    pub admin: AdminConfig,
    pub tracker: TrackerConfig,
    pub dht: crate::dht::DhtConfig,
    pub http: crate::http::HttpConfig,
}

impl SeedConfig {
    /// Parses and validates a TOML config; errors carry the line and column.
    pub fn from_toml(text: &str) -> Result<SeedConfig, String> {
        let config: SeedConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        config.validate()?;
        Ok(config)
    }

    /// Every table's rules; messages start with `key = value:` (see `config_file`).
    pub fn validate(&self) -> Result<(), String> {
        self.engine.validate()?;
        self.admin.listen_addr()?;
        self.tracker.validate()?;
        self.dht.validate()?;
        self.http.validate()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        // The shipped defaults must pass the same validation a config file does.
        EngineConfig::default().validate().unwrap();
    }

    #[test]
    fn bad_values_name_the_key() {
        // Each refusal names the offending key so the operator knows what to fix.
        let c = EngineConfig {
            block_len_max_bytes: 1 << 20,
            ..EngineConfig::default()
        };
        assert!(c.validate().unwrap_err().contains("block_len_max_bytes"));
        let c = EngineConfig {
            ring_entries: 1000,
            ..EngineConfig::default()
        };
        assert!(c.validate().unwrap_err().contains("ring_entries"));
        let c = EngineConfig {
            peers_max: 0,
            ..EngineConfig::default()
        };
        assert!(c.validate().unwrap_err().contains("peers_max"));
        let c = EngineConfig {
            open_files_per_shard_max: OPEN_FILES_PER_SHARD_CEILING + 1,
            ..EngineConfig::default()
        };
        assert!(c
            .validate()
            .unwrap_err()
            .contains("open_files_per_shard_max"));
        let c = EngineConfig {
            recv_buffers_per_shard: 1000,
            ..EngineConfig::default()
        };
        assert!(c.validate().unwrap_err().contains("recv_buffers_per_shard"));
        let c = EngineConfig {
            recv_buffer_bytes: 16,
            ..EngineConfig::default()
        };
        assert!(c.validate().unwrap_err().contains("recv_buffer_bytes"));
        let c = EngineConfig {
            recv_buffers_per_shard: 32768,
            recv_buffer_bytes: 1 << 20,
            ..EngineConfig::default()
        };
        assert!(c.validate().unwrap_err().contains("256 MiB"));
        let c = EngineConfig {
            idle_poll_usecs: IDLE_POLL_USECS_CEILING + 1,
            ..EngineConfig::default()
        };
        assert!(c.validate().unwrap_err().contains("idle_poll_usecs"));
        for bad in [0, (1 << 20) - 1, (1 << 40) + 1] {
            let c = EngineConfig {
                page_cache_map_bytes_max: bad,
                ..EngineConfig::default()
            };
            assert!(c
                .validate()
                .unwrap_err()
                .contains("page_cache_map_bytes_max"));
        }
        // direct_io has nowhere to read into without the cache, and splice bypasses it.
        let c = EngineConfig {
            direct_io: DirectIo::On,
            block_cache_bytes_per_shard: 0,
            ..EngineConfig::default()
        };
        let err = c.validate().unwrap_err();
        assert!(err.contains("direct_io") && err.contains("block_cache_bytes_per_shard"));
        let c = EngineConfig {
            direct_io: DirectIo::On,
            serve_mode: ServeMode::Splice,
            block_cache_bytes_per_shard: 64 << 20,
            ..EngineConfig::default()
        };
        assert!(c.validate().unwrap_err().contains("splice"));
        let c = EngineConfig {
            direct_io: DirectIo::On,
            block_cache_bytes_per_shard: 64 << 20,
            ..EngineConfig::default()
        };
        c.validate().unwrap();
        // The default cache is off: direct_io alone is refused, naming the key to set.
        let c = EngineConfig {
            direct_io: DirectIo::On,
            ..EngineConfig::default()
        };
        assert!(c
            .validate()
            .unwrap_err()
            .contains("block_cache_bytes_per_shard"));
    }

    #[test]
    fn chain_longer_than_the_ring_is_refused() {
        // Proves: a batch chain the submission queue cannot hold (the ring asserts, and the
        // engine aborts) is refused at load, with the two ways out in numbers; a ring that
        // holds the chain and the margin beside it passes.
        let c = EngineConfig {
            ring_entries: 64,
            ..EngineConfig::default()
        };
        let err = c.validate().unwrap_err();
        assert!(err.starts_with("ring_entries = 64 is below"), "{err}");
        assert!(
            err.contains("batch_chain_entries_max = 128")
                && err.contains("raise ring_entries to at least 256")
                && err.contains("lower batch_chain_entries_max to at most 48"),
            "{err}"
        );
        let c = EngineConfig {
            ring_entries: 64,
            batch_chain_entries_max: 48,
            ..EngineConfig::default()
        };
        c.validate().unwrap();
        let c = EngineConfig {
            ring_entries: 64,
            batch_chain_entries_max: 49,
            ..EngineConfig::default()
        };
        assert!(c.validate().unwrap_err().contains("at most 48"));
        // A chain no ring can hold: only lowering it helps, so only that is offered.
        let c = EngineConfig {
            ring_entries: RING_ENTRIES_CEILING,
            batch_chain_entries_max: RING_ENTRIES_CEILING,
            ..EngineConfig::default()
        };
        let err = c.validate().unwrap_err();
        assert!(!err.contains("raise ring_entries"), "{err}");
        assert!(err.contains("at most 32752"), "{err}");
        // Too short to serve one block in splice mode.
        let c = EngineConfig {
            batch_chain_entries_max: 2,
            ..EngineConfig::default()
        };
        assert!(c
            .validate()
            .unwrap_err()
            .starts_with("batch_chain_entries_max = 2: at least 3"));
    }

    #[test]
    fn send_slots_per_prefix_hold_at_least_one_source() {
        // Proves: a network's send-slot bound below its sources' is refused, naming both
        // keys and the value to set; equal is fine; the default is two sources' worth.
        let c = EngineConfig {
            send_slots_per_ip_max: 40,
            ..EngineConfig::default()
        };
        let err = c.validate().unwrap_err();
        assert!(
            err.starts_with("send_slots_per_prefix_max = 32 is below send_slots_per_ip_max = 40")
                && err.contains("at least 40"),
            "{err}"
        );
        let c = EngineConfig {
            send_slots_per_ip_max: 40,
            send_slots_per_prefix_max: 40,
            ..EngineConfig::default()
        };
        c.validate().unwrap();
        let d = EngineConfig::default();
        assert_eq!(d.send_slots_per_prefix_max, 2 * d.send_slots_per_ip_max);
    }

    #[test]
    fn network_limit_holds_at_least_one_source() {
        // Proves: peers_per_prefix_max below peers_per_ip_max (a network smaller than one of
        // its sources) and a zero limit are refused, naming the key and the value to set.
        let c = EngineConfig {
            peers_per_ip_max: 300,
            ..EngineConfig::default()
        };
        let err = c.validate().unwrap_err();
        assert!(
            err.starts_with("peers_per_prefix_max = 256 is below peers_per_ip_max = 300")
                && err.contains("at least 300"),
            "{err}"
        );
        let c = EngineConfig {
            peers_per_ip_max: 300,
            peers_per_prefix_max: 300,
            ..EngineConfig::default()
        };
        c.validate().unwrap();
        let c = EngineConfig {
            peers_per_prefix_max: 0,
            ..EngineConfig::default()
        };
        assert!(c
            .validate()
            .unwrap_err()
            .starts_with("peers_per_prefix_max = 0: must be at least 1"));
        assert_eq!(
            EngineConfig::default().peers_per_prefix_max,
            PEERS_PER_PREFIX_PER_IP_RATIO * EngineConfig::default().peers_per_ip_max
        );
    }

    #[test]
    fn splice_batch_must_fit_the_pipes_slots() {
        // Proves: in splice mode the pipe asked for covers the slots a batch may fill (not
        // just its bytes: a short file -> pipe splice is reported as a short disk read); a
        // batch that needs a pipe larger than an unprivileged process gets is refused with
        // the largest batch that fits; and every suggested value passes.
        let splice = |send_batch_bytes_max: u32, block_len_max_bytes: u32| EngineConfig {
            serve_mode: ServeMode::Splice,
            send_batch_bytes_max,
            block_len_max_bytes,
            ..EngineConfig::default()
        };
        // The default batch (16 blocks, 262,352 bytes with headers) may fill 96 slots, so it
        // asks for 96 pages and gets 512 KiB (128 slots).
        splice(256 << 10, 16 << 10).validate().unwrap();
        assert_eq!(splice_pipe_slots_needed(16, 16 << 10), 96);
        let requested = splice(256 << 10, 16 << 10).splice_pipe_bytes_requested();
        assert_eq!(requested, 96 * PIPE_SLOT_BYTES);
        assert_eq!(pipe_bytes_granted(requested), 512 << 10);
        // Three blocks (49,191 bytes) fit the default 64 KiB pipe's bytes but not its 16
        // slots (18): the request is sized by slots.
        let three = splice(48 << 10, 16 << 10);
        three.validate().unwrap();
        assert_eq!(three.splice_pipe_bytes_requested(), 18 * PIPE_SLOT_BYTES);
        // 64 blocks may fill 384 slots: a 2 MiB pipe, refused for an unprivileged process.
        let err = splice(1 << 20, 16 << 10).validate().unwrap_err();
        assert!(
            err.starts_with("send_batch_bytes_max = 1048576 with serve_mode = \"splice\"")
                && err.contains("384")
                && err.contains("pipe-max-size")
                && err.contains("at most 688128 (42 blocks"),
            "{err}"
        );
        splice(688128, 16 << 10).validate().unwrap();
        let err = splice(688128 + (16 << 10), 16 << 10)
            .validate()
            .unwrap_err();
        assert!(err.contains("at most 688128"), "{err}");
        let err = splice(1 << 20, 128 << 10).validate().unwrap_err();
        assert!(err.contains("at most 917504 (7 blocks"), "{err}");
        // Copy mode has no pipe: the same batch passes there.
        let copy = EngineConfig {
            serve_mode: ServeMode::Copy,
            ..splice(4 << 20, 16 << 10)
        };
        copy.validate().unwrap();
        // Every refusal's suggestion is itself accepted.
        for block_len in [16u32 << 10, 32 << 10, 128 << 10] {
            for blocks in 1..=(4u32 << 20) / block_len {
                let c = splice(blocks * block_len, block_len);
                let Err(err) = c.validate() else { continue };
                let suggested: u32 = err
                    .split("at most ")
                    .nth(1)
                    .and_then(|rest| rest.split(' ').next())
                    .and_then(|n| n.parse().ok())
                    .unwrap_or_else(|| panic!("no suggestion in {err}"));
                assert!(suggested < blocks * block_len, "{err}");
                splice(suggested, block_len).validate().unwrap();
            }
        }
    }

    #[test]
    fn pipe_slot_arithmetic() {
        // Proves: the slot counts the shard uses at run time are upper bounds of what the
        // kernel fills: pages touched by a splice at any offset, fresh pages of a write.
        assert_eq!(pipe_slots_of_file_splice(16384), 5);
        assert_eq!(pipe_slots_of_file_splice(1), 2);
        assert_eq!(pipe_slots_of_pipe_write(13), 1);
        assert_eq!(pipe_slots_of_pipe_write(0), 0);
        assert_eq!(pipe_slots_of_pipe_write(4097), 2);
        for len in 1..3 * PIPE_SLOT_BYTES {
            for start in [0, 1, PIPE_SLOT_BYTES - 1] {
                let touched = (start + len).div_ceil(PIPE_SLOT_BYTES);
                assert!(touched <= pipe_slots_of_file_splice(len), "{start}+{len}");
            }
        }
        assert_eq!(pipe_bytes_granted(1), PIPE_SLOT_BYTES);
        assert_eq!(pipe_bytes_granted(65536), 65536);
        assert_eq!(pipe_bytes_granted(65537), 131072);
        assert_eq!(pipe_slots(65536), 16);
    }

    #[test]
    fn config_file_rejects_unknown_keys_with_position() {
        // A typo in a key must be refused, naming the key and where it is.
        let err = SeedConfig::from_toml("[engine]\npeers_maxx = 3\n").unwrap_err();
        assert!(
            err.contains("peers_maxx") && err.contains("line 2"),
            "{err}"
        );
        let ok = SeedConfig::from_toml("[engine]\nserve_mode = \"splice\"\nshards = 2\n").unwrap();
        assert_eq!(ok.engine.serve_mode, ServeMode::Splice);
    }

    #[test]
    fn admin_refuses_public_address_without_token() {
        // A non-loopback admin endpoint without a token would expose stats to anyone.
        let mut a = AdminConfig::default();
        assert_eq!(
            a.listen_addr().unwrap(),
            Some("127.0.0.1:7881".parse().unwrap())
        );
        a.listen = "0.0.0.0:7881".into();
        assert!(a.listen_addr().unwrap_err().contains("admin.token"));
        a.token = Some("s3cret".into());
        assert!(a.listen_addr().unwrap().is_some());
        a.listen = "off".into();
        assert_eq!(a.listen_addr().unwrap(), None);
        a.listen = "nonsense".into();
        assert!(a.listen_addr().unwrap_err().contains("admin.listen"));
        let err = SeedConfig::from_toml("[admin]\nlisten = \"[::]:7881\"\n").unwrap_err();
        assert!(err.contains("admin.token"), "{err}");
        let c = EngineConfig {
            stats_top_torrents: 5000,
            ..EngineConfig::default()
        };
        assert!(c.validate().unwrap_err().contains("stats_top_torrents"));
    }

    #[test]
    fn tracker_table_parses_and_validates() {
        // The [tracker] table is optional, refuses unknown keys, and refuses a zero bound.
        assert!(SeedConfig::from_toml("").unwrap().tracker.enabled);
        TrackerConfig::default().validate().unwrap();
        let c = SeedConfig::from_toml(
            "[tracker]\nextra = [\"udp://127.0.0.1:1/announce\"]\nannounce_concurrency_max = 2\n",
        )
        .unwrap();
        assert_eq!(c.tracker.announce_concurrency_max, 2);
        assert_eq!(c.tracker.extra.len(), 1);
        let err = SeedConfig::from_toml("[tracker]\nannounce_per_tracker_max = 0\n").unwrap_err();
        assert!(err.contains("announce_per_tracker_max"), "{err}");
        let err = SeedConfig::from_toml("[tracker]\nextraa = []\n").unwrap_err();
        assert!(err.contains("extraa"), "{err}");
    }

    #[test]
    fn slot_holds_a_full_batch_with_headers() {
        // A slot must fit every block of a batch plus its 13-byte header.
        // Cached blocks take only their header, so a slot also holds the headers of the
        // extra blocks a batch of cache hits may carry.
        let c = EngineConfig::default();
        assert_eq!(c.slot_blocks_max(), 16);
        assert_eq!(c.blocks_per_batch_max(), 64);
        assert_eq!(c.slot_len_bytes(), 16 * (13 + 16384) + 48 * 13);
        // Blocks sent from file mappings take only their header too.
        let no_cache = EngineConfig {
            block_cache_bytes_per_shard: 0,
            ..EngineConfig::default()
        };
        assert_eq!(no_cache.blocks_per_batch_max(), 64);
        let neither = EngineConfig {
            page_cache_sends: false,
            ..no_cache.clone()
        };
        assert_eq!(neither.blocks_per_batch_max(), 16);
        assert_eq!(neither.slot_len_bytes(), 16 * (13 + 16384));
        // direct_io and splice rule mappings out.
        let splice = EngineConfig {
            serve_mode: ServeMode::Splice,
            ..no_cache.clone()
        };
        assert!(!splice.page_cache_sends_effective());
        assert_eq!(splice.blocks_per_batch_max(), 16);
        // The shard builds no cache in splice mode, so a sized one does not grow batches
        // (nor the pipe asked for them).
        let splice_with_cache = EngineConfig {
            block_cache_bytes_per_shard: 64 << 20,
            ..splice.clone()
        };
        assert!(!splice_with_cache.block_cache_effective());
        assert_eq!(splice_with_cache.blocks_per_batch_max(), 16);
        assert_eq!(splice_with_cache.slot_len_bytes(), 16 * (13 + 16384));
        let direct = EngineConfig {
            direct_io: DirectIo::On,
            ..EngineConfig::default()
        };
        assert!(!direct.page_cache_sends_effective());
        assert!(EngineConfig::default().page_cache_sends_effective());
    }
}

#[cfg(test)]
mod shipped_configs {
    use super::*;

    #[test]
    fn default_toml_matches_the_code_defaults() {
        // configs/default.toml documents the defaults: it must parse and equal them.
        let text = include_str!("../../configs/default.toml");
        let parsed = SeedConfig::from_toml(text).unwrap();
        let a = toml::to_string(&parsed.engine).unwrap();
        let b = toml::to_string(&EngineConfig::default()).unwrap();
        assert_eq!(a, b);
        assert_eq!(parsed.tracker, TrackerConfig::default());
        assert_eq!(parsed.http, crate::http::HttpConfig::default());
        // The shipped config turns the DHT on; everything else is the built-in default.
        let dht_on = crate::dht::DhtConfig {
            enabled: true,
            ..Default::default()
        };
        assert_eq!(parsed.dht, dht_on);
        assert!(
            !SeedConfig::default().dht.enabled,
            "a bare `squall seed` announces nothing"
        );
        assert!(text.contains("[tracker]") && text.contains("[admin]"));
    }
}
