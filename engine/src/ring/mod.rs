//! The io_uring reactor of one shard: ring set-up with feature probing and fallbacks,
//! submission with flush-on-full, and batched completion reaping.
//!
//! Owns: the `IoUring` instance and the decisions about which kernel features to use.
//! Must never: drop a submission (a full SQ is flushed and the push retried), split a linked
//! chain across two submits (the kernel ends a chain at a submit boundary), or run a handler
//! while reaping: completions are copied out in a batch first, then dispatched by the shard.

pub mod block_cache;
pub mod buffers;
pub mod token;

use io_uring::{cqueue, opcode, squeue, types, IoUring, Probe};
use std::io;
use std::time::Duration;

/// Flags for SendZc (from the kernel UAPI; the crate's `sys` module is private).
pub const IORING_SEND_ZC_REPORT_USAGE: u16 = 8;
/// Set in a zero-copy notification's result when the kernel had to copy the data anyway.
pub const IORING_NOTIF_USAGE_ZC_COPIED: u32 = 1 << 31;

/// What the kernel accepted at set-up, logged once per shard.
#[derive(Debug, Clone, Default)]
pub struct RingFeatures {
    pub single_issuer: bool,
    pub defer_taskrun: bool,
    pub send_zc: bool,
    pub splice: bool,
    pub read_fixed: bool,
    /// IORING_OP_READV_FIXED (Linux 6.15): vectored reads into registered buffers.
    pub readv_fixed: bool,
    pub multishot_accept: bool,
}

/// A completion copied out of the CQ.
#[derive(Debug, Clone, Copy)]
pub struct Completion {
    pub user_data: u64,
    pub result: i32,
    pub flags: u32,
}

impl Completion {
    pub fn more(&self) -> bool {
        cqueue::more(self.flags)
    }
    pub fn is_notif(&self) -> bool {
        cqueue::notif(self.flags)
    }
}

pub struct Ring {
    ring: IoUring,
    pub features: RingFeatures,
    /// Fallback notes to log once (e.g. "DEFER_TASKRUN refused: using plain ring").
    pub notes: Vec<String>,
    tick: types::Timespec,
}

impl Ring {
    /// Builds a ring with SINGLE_ISSUER | DEFER_TASKRUN where the kernel takes them, else
    /// COOP_TASKRUN, else a plain ring. Must be called on the thread that will submit.
    pub fn new(entries: u32) -> Result<Ring, String> {
        let mut notes = Vec::new();
        let mut features = RingFeatures::default();
        let cq_entries = entries.saturating_mul(4);
        let ring = match IoUring::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .setup_cqsize(cq_entries)
            .setup_submit_all()
            .build(entries)
        {
            Ok(r) => {
                features.single_issuer = true;
                features.defer_taskrun = true;
                r
            }
            // ENOMEM is not a refused flag: since Linux 6.x a ring's memory counts against
            // RLIMIT_MEMLOCK unless the process has CAP_IPC_LOCK. Retrying with fewer flags
            // would fail the same way and hide the cause.
            Err(e) if e.raw_os_error() == Some(libc::ENOMEM) => {
                return Err(format!(
                    "cannot create an io_uring of {entries} entries ({e}): the locked-memory \
                     limit is too small for the ring itself. Fix: raise RLIMIT_MEMLOCK \
                     (`ulimit -l unlimited`, or LimitMEMLOCK=infinity in the systemd unit) \
                     or lower ring_entries"
                ));
            }
            Err(e) => {
                notes.push(format!(
                    "io_uring SINGLE_ISSUER|DEFER_TASKRUN refused ({e}); using COOP_TASKRUN"
                ));
                match IoUring::builder()
                    .setup_coop_taskrun()
                    .setup_cqsize(cq_entries)
                    .build(entries)
                {
                    Ok(r) => r,
                    Err(e2) => {
                        notes.push(format!(
                            "io_uring COOP_TASKRUN refused ({e2}); using a plain ring"
                        ));
                        IoUring::builder().setup_cqsize(cq_entries).build(entries).map_err(|e3| {
                            format!(
                                "cannot create an io_uring ({e3}). Squall needs Linux >= 6.1 with io_uring \
                                 enabled: check `sysctl kernel.io_uring_disabled` (must be 0) and that no \
                                 seccomp profile (e.g. a container runtime) blocks io_uring_setup"
                            )
                        })?
                    }
                }
            }
        };
        let mut probe = Probe::new();
        if ring.submitter().register_probe(&mut probe).is_ok() {
            features.send_zc = probe.is_supported(opcode::SendZc::CODE);
            features.splice = probe.is_supported(opcode::Splice::CODE);
            features.read_fixed = probe.is_supported(opcode::ReadFixed::CODE);
            features.readv_fixed = probe.is_supported(opcode::ReadvFixed::CODE);
            features.multishot_accept = probe.is_supported(opcode::AcceptMulti::CODE);
        }
        for (needed, name) in [
            (opcode::Send::CODE, "SEND"),
            (opcode::Recv::CODE, "RECV"),
            (opcode::Read::CODE, "READ"),
            (opcode::Timeout::CODE, "TIMEOUT"),
            (opcode::PollAdd::CODE, "POLL_ADD"),
        ] {
            if !probe.is_supported(needed) {
                return Err(format!(
                    "this kernel's io_uring lacks IORING_OP_{name}, which Squall needs; use Linux >= 6.1"
                ));
            }
        }
        Ok(Ring {
            ring,
            features,
            notes,
            tick: types::Timespec::new(),
        })
    }

    /// Registers one region as fixed buffer 0.
    pub fn register_buffers(&mut self, iovs: &[libc::iovec]) -> io::Result<()> {
        // SAFETY: the iovecs describe the shard's buffer pool and block cache, which outlive
        // the ring (the shard drops the ring first, or leaks them) and are never freed while
        // registered.
        unsafe { self.ring.submitter().register_buffers(iovs) }
    }

    /// Queues one SQE; a full SQ is submitted first, never dropped.
    pub fn push(&mut self, entry: &squeue::Entry) -> io::Result<()> {
        self.push_chain(std::slice::from_ref(entry))
    }

    /// Queues a linked chain (or any group) in one piece: when the SQ lacks room for all of
    /// it, submit what is queued first so the chain is never split across submits.
    pub fn push_chain(&mut self, entries: &[squeue::Entry]) -> io::Result<()> {
        let capacity = self.ring.submission().capacity();
        assert!(
            entries.len() <= capacity,
            "a chain longer than the submission queue"
        );
        loop {
            let free = {
                let sq = self.ring.submission();
                capacity - sq.len()
            };
            if free >= entries.len() {
                break;
            }
            self.submit()?;
            let still = { capacity - self.ring.submission().len() };
            if still < entries.len() {
                // The kernel did not take the entries yet (e.g. CQ overflow back-pressure):
                // reap nothing here, just wait briefly for it to consume them.
                self.ring.submitter().submit_and_wait(0)?;
            }
        }
        let mut sq = self.ring.submission();
        // SAFETY: every entry's buffers and fds are owned by the shard and stay valid until
        // the matching completion is reaped (see buffers.rs and shard/mod.rs for lifetimes).
        unsafe { sq.push_multiple(entries) }
            .map_err(|_| io::Error::other("submission queue full after flush"))
    }

    pub fn submit(&mut self) -> io::Result<usize> {
        loop {
            match self.ring.submit() {
                Ok(n) => return Ok(n),
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => return Ok(0),
                Err(e) => return Err(e),
            }
        }
    }

    /// Submits everything queued and waits for at least one completion or `timeout`.
    pub fn submit_and_wait(&mut self, timeout: Duration) -> io::Result<()> {
        self.tick = types::Timespec::new()
            .sec(timeout.as_secs())
            .nsec(timeout.subsec_nanos());
        let args = types::SubmitArgs::new().timespec(&self.tick);
        match self.ring.submitter().submit_with_args(1, &args) {
            Ok(_) => Ok(()),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ETIME) | Some(libc::EINTR) | Some(libc::EBUSY)
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Copies every available completion into `out` (cleared first).
    pub fn reap(&mut self, out: &mut Vec<Completion>) {
        out.clear();
        let mut cq = self.ring.completion();
        cq.sync();
        for cqe in &mut cq {
            out.push(Completion {
                user_data: cqe.user_data(),
                result: cqe.result(),
                flags: cqe.flags(),
            });
        }
    }

    pub fn sq_capacity(&mut self) -> usize {
        self.ring.submission().capacity()
    }
}
