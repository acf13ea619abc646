//! Opening a shard's kernel resources: the ring, its optional registrations, the send
//! buffer pool and block cache (registered together), and the receive buffer ring.
//!
//! Owns: `ShardSetup` (what a shard is built from) and `IoResources::open`, which probes the
//! kernel's io_uring features, refuses a serve mode the kernel cannot do with a message that
//! says what to use instead, and falls back (once logged, from shard 0) where a refusal only
//! costs speed. Must never: log the same fallback once per shard, or leave a registration
//! pointing at memory that is dropped before the ring.

use crate::catalog::Catalog;
use crate::config::{DirectIo, EngineConfig, ServeMode};
use crate::plane::{ExtrasRequest, HealthReport, ShardCommand};
use crate::ring::buffers::BufferPool;
use crate::ring::provided::RecvBufRing;
use crate::ring::{Optional, Ring};
use crate::shard::admission::Admission;
use crate::shard::block_cache::{BlockCache, CACHE_BLOCK_LEN_BYTES};
use crate::shard::files::FileCache;
use crate::shard::submit::SendSlots;
use crate::stats::ShardStats;
use crossbeam_channel::{Receiver, Sender};
use std::os::fd::OwnedFd;
use std::sync::Arc;

/// The buffer group of the shard's receive buffer ring (`multishot_recv`).
pub const RECV_BUFFER_GROUP: u16 = 0;

/// Why a shard could not start; the message says what to do.
pub type StartError = String;

/// Everything a shard is built from (moved into its thread).
pub struct ShardSetup {
    pub index: usize,
    pub config: Arc<EngineConfig>,
    pub catalog: Arc<Catalog>,
    pub listeners: Vec<OwnedFd>,
    pub commands: Receiver<ShardCommand>,
    pub stats_tx: Sender<ShardStats>,
    pub health_tx: Sender<HealthReport>,
    /// Requests for what only a .torrent holds (BEP 9 info, BEP 52 trees), to the control
    /// plane's loader; answers come back as `ShardCommand::Extras`.
    pub extras_tx: Sender<ExtrasRequest>,
    pub admission: Arc<Admission>,
    pub peer_id: [u8; 20],
    pub cpu: Option<usize>,
}

/// A shard's ring and everything registered with it. Field order is drop order: the ring
/// first, so no op outlives the memory it names.
pub struct IoResources {
    pub ring: Ring,
    pub slots: SendSlots,
    pub recv_ring: Option<RecvBufRing>,
    pub files: FileCache,
    /// Why the buffer pool is not registered (then reads and sends use plain buffers).
    pub fixed_buffers_error: Option<String>,
    /// The shard's stats, with the features chosen filled in.
    pub stats: ShardStats,
}

impl IoResources {
    /// Opens them on the calling thread (SINGLE_ISSUER: the creator submits).
    pub fn open(index: usize, config: &EngineConfig) -> Result<IoResources, StartError> {
        let mut ring = Ring::new(config.ring_entries)?;
        for note in ring.notes.drain(..) {
            if index == 0 {
                tracing::warn!("{note}");
            }
        }
        // Optional registrations: a refusal (old kernel, seccomp, RLIMIT_NOFILE below the
        // table size) only costs the saving, so it is logged once (shard 0) and served on.
        // Splice runs in io-wq workers, where a fixed-file lookup takes the ring's lock:
        // splice mode keeps plain fds and registers no table.
        let ring_fd = ring.register_ring_fd(config.register_ring_fd);
        let fixed_files_wanted = config.fixed_files && config.serve_mode != ServeMode::Splice;
        let table_slots = config.open_files_per_shard_max as u32;
        let table = ring.register_fixed_files(fixed_files_wanted, table_slots);
        if index == 0 {
            if let Optional::Refused(note) = &ring_fd {
                tracing::debug!("{note}");
            }
            if let Optional::Refused(note) = &table {
                tracing::info!("{note}");
            }
            tracing::debug!(
                registered_ring_fd = ring.features.registered_ring_fd,
                fixed_file_slots = ring.features.fixed_file_slots,
                "io_uring registrations"
            );
        }
        let fixed_files = ring.features.fixed_file_slots > 0;
        if config.serve_mode == ServeMode::Zerocopy && !ring.features.send_zc {
            return Err(
                "serve mode zerocopy needs IORING_OP_SEND_ZC (Linux >= 6.0); use --serve copy"
                    .into(),
            );
        }
        if config.serve_mode == ServeMode::Splice && !ring.features.splice {
            return Err("serve mode splice needs IORING_OP_SPLICE; use --serve copy".into());
        }
        if !ring.features.multishot_accept {
            return Err(
                "this kernel's io_uring lacks multishot accept (Linux >= 5.19 needed)".into(),
            );
        }
        let pool = BufferPool::new(config.buffer_pool_slots_per_shard, config.slot_len_bytes())?;
        let cache =
            if config.block_cache_bytes_per_shard > 0 && config.serve_mode != ServeMode::Splice {
                Some(BlockCache::new(
                    config.block_cache_bytes_per_shard,
                    CACHE_BLOCK_LEN_BYTES,
                )?)
            } else {
                None
            };
        let mut regions = vec![pool.iovec()];
        regions.extend(cache.as_ref().map(|c| c.iovecs()).unwrap_or_default());
        // A failure is not logged here: the seeder gathers every shard's outcome and warns
        // once for the whole process (see `Seeder::start`).
        let fixed_buffers_error = if ring.features.read_fixed {
            ring.register_buffers(&regions).err().map(|e| {
                format!(
                    "cannot register the {} MiB send buffer pool and block cache with io_uring ({e})",
                    regions.iter().map(|r| r.iov_len).sum::<usize>() >> 20
                )
            })
        } else {
            Some("this kernel's io_uring lacks IORING_OP_READ_FIXED".to_string())
        };
        let fixed_buffers = fixed_buffers_error.is_none();
        let recv_ring = if config.multishot_recv {
            match RecvBufRing::new(
                &ring,
                RECV_BUFFER_GROUP,
                config.recv_buffers_per_shard,
                config.recv_buffer_bytes,
            ) {
                Ok(r) => Some(r),
                Err(e) => {
                    if index == 0 {
                        tracing::info!(
                            "io_uring provided-buffer ring refused ({e}); receiving with \
                             single recvs (multishot_recv off)"
                        );
                    }
                    None
                }
            }
        } else {
            None
        };
        // `validate` refuses direct_io without a cache; the cache is None in splice mode.
        // `Seeder::start` resolved "auto" to on or off; an unresolved auto reads buffered.
        let direct_io = config.direct_io == DirectIo::On && cache.is_some();
        let mut stats = ShardStats::new(index);
        stats.direct_io = direct_io;
        let page_cache_sends = config.page_cache_sends_effective();
        stats.page_cache_sends_on = page_cache_sends;
        stats.multishot_recv = recv_ring.is_some();
        stats.fixed_buffers = fixed_buffers;
        stats.fixed_files = fixed_files;
        stats.registered_ring_fd = ring.features.registered_ring_fd;
        let readv_fixed = ring.features.readv_fixed;
        Ok(IoResources {
            slots: SendSlots::new(pool, cache, fixed_buffers, readv_fixed, config),
            ring,
            recv_ring,
            files: FileCache::new(
                config.open_files_per_shard_max,
                fixed_files,
                direct_io,
                page_cache_sends.then_some(config.page_cache_map_bytes_max),
            ),
            fixed_buffers_error,
            stats,
        })
    }
}
