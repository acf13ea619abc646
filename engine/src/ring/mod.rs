//! The io_uring reactor of one shard: ring set-up with feature probing and fallbacks,
//! submission with flush-on-full, and batched completion reaping.
//!
//! Owns: the `IoUring` instance and the decisions about which kernel features to use,
//! including the two optional registrations: the ring's own fd (`register_ring_fd`: every
//! io_uring_enter then skips the kernel's fd lookup of the ring) and the sparse fixed-file
//! table that `shard::files` installs content files into (`fixed_files`).
//! Must never: drop a submission (a full SQ is flushed and the push retried), split a linked
//! chain across two submits (the kernel ends a chain at a submit boundary), or run a handler
//! while reaping: completions are copied out in a batch first, then dispatched by the shard;
//! nor take `&mut` to the `IoUring` (the kept `Submitter` borrows it, see `Ring`).

pub mod buffers;
pub mod chaos;
pub mod provided;
pub mod token;

use io_uring::{cqueue, opcode, squeue, types, IoUring, Probe, Submitter};
use std::io;
use std::mem::ManuallyDrop;
use std::os::fd::RawFd;
use std::ptr::NonNull;
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
    /// IORING_REGISTER_RING_FDS took: every enter passes IORING_ENTER_REGISTERED_RING.
    pub registered_ring_fd: bool,
    /// Slots of the sparse fixed-file table (0 = none registered).
    pub fixed_file_slots: u32,
}

/// The outcome of an optional registration: the knob first, then the kernel's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Optional {
    /// Asked for and accepted.
    Used,
    /// The knob is off: nothing was asked of the kernel.
    Off,
    /// The kernel refused; the note says what and why (logged once, then plain fds are used).
    Refused(String),
}

/// Runs `register` only when `wanted`; a refusal is a fallback, never an error.
pub fn try_optional(
    wanted: bool,
    what: &str,
    register: impl FnOnce() -> io::Result<()>,
) -> Optional {
    if !wanted {
        return Optional::Off;
    }
    match register() {
        Ok(()) => Optional::Used,
        Err(e) => Optional::Refused(format!("{what} refused ({e}); using plain fds")),
    }
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
    /// The crate keeps a registered ring fd's index in a `Submitter`, which borrows the
    /// `IoUring`; so the `IoUring` lives on the heap at a fixed address (`uring`, from
    /// `Box::into_raw`, freed in `Drop`) and one `Submitter` borrowing it is kept for the
    /// Ring's whole life. Only shared references to the `IoUring` are ever made
    /// (`submission_shared`/`completion_shared`), so the submitter's borrow stays valid.
    submitter: ManuallyDrop<Submitter<'static>>,
    uring: NonNull<IoUring>,
    pub features: RingFeatures,
    /// Fallback notes to log once (e.g. "DEFER_TASKRUN refused: using plain ring").
    pub notes: Vec<String>,
    tick: types::Timespec,
    /// Completions taken from the CQ outside `reap` (so the kernel can flush an overflowed
    /// CQ while a push waits for SQ room), and completions made up for entries a push could
    /// not queue. `reap` hands them out first: every SQE the shard meant to submit gets its
    /// final completion, and the handler that counted it undoes what it counted.
    stash: Vec<Completion>,
    /// io_uring_enter calls that failed with a transient error (EAGAIN, ENOMEM) and were
    /// retried, and pushes that failed (their entries completed with -ECANCELED).
    pub enter_errors: u64,
    pub push_failures: u64,
    /// `SQUALL_CHAOS_SEED` in a debug build: completions delayed and failed on purpose
    /// (`chaos.rs`); None otherwise.
    chaos: Option<chaos::Chaos>,
}

/// Tells the rings of one process apart in chaos mode (each gets its own schedule).
static RINGS_MADE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// A push waits this many submit-and-drain rounds for SQ room before it fails.
const PUSH_ROOM_ROUNDS_MAX: u32 = 1000;

/// Errors of io_uring_enter that say "not now": the shard retries them, never stops on them.
pub fn is_transient_enter_error(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EAGAIN) | Some(libc::ENOMEM) | Some(libc::EINTR) | Some(libc::EBUSY)
    )
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
        let uring = NonNull::from(Box::leak(Box::new(ring)));
        // SAFETY: `uring` points at a live IoUring that is freed only in `Drop`, after the
        // submitter made here is dropped; nothing ever takes `&mut` to it (see the field).
        let submitter = unsafe { uring.as_ref() }.submitter();
        Ok(Ring {
            submitter: ManuallyDrop::new(submitter),
            uring,
            features,
            notes,
            tick: types::Timespec::new(),
            stash: Vec::new(),
            enter_errors: 0,
            push_failures: 0,
            chaos: chaos::Chaos::from_env(
                RINGS_MADE.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            ),
        })
    }

    fn uring(&self) -> &IoUring {
        // SAFETY: see `new`: valid until `Drop`, and only shared references exist.
        unsafe { self.uring.as_ref() }
    }

    /// Registers the ring's own fd (IORING_REGISTER_RING_FDS, Linux 5.18) when `wanted`:
    /// every later io_uring_enter passes its index instead of the fd, skipping the kernel's
    /// fdget/fdput of the ring on each call. A refusal leaves the plain fd in use.
    pub fn register_ring_fd(&mut self, wanted: bool) -> Optional {
        let submitter = &mut self.submitter;
        let outcome = try_optional(wanted, "io_uring IORING_REGISTER_RING_FDS", || {
            submitter.register_ring_fd()
        });
        self.features.registered_ring_fd = outcome == Optional::Used;
        outcome
    }

    /// Registers an empty (sparse) fixed-file table of `slots` entries when `wanted`. The
    /// kernel refuses more slots than RLIMIT_NOFILE; then content files go by plain fds.
    pub fn register_fixed_files(&mut self, wanted: bool, slots: u32) -> Optional {
        let submitter = &self.submitter;
        let outcome = try_optional(
            wanted && slots > 0,
            "io_uring sparse fixed-file table",
            || submitter.register_files_sparse(slots),
        );
        if outcome == Optional::Used {
            self.features.fixed_file_slots = slots;
        }
        outcome
    }

    /// Points fixed-file `slot` at `fd` (`-1` empties it). The kernel takes its own
    /// reference to the file, and an op already issued keeps the file it resolved; but a
    /// linked op resolves its slot only when issued, so the caller changes a slot only when
    /// no op (issued or not) names it: `shard::files` guarantees that.
    pub fn update_fixed_file(&mut self, slot: u32, fd: RawFd) -> io::Result<()> {
        debug_assert!(
            slot < self.features.fixed_file_slots,
            "fixed-file slot out of range"
        );
        match self.submitter.register_files_update(slot, &[fd])? {
            1 => Ok(()),
            n => Err(io::Error::other(format!(
                "fixed-file update of slot {slot} changed {n} entries, not 1"
            ))),
        }
    }

    /// Registers one region as fixed buffer 0.
    pub fn register_buffers(&mut self, iovs: &[libc::iovec]) -> io::Result<()> {
        // SAFETY: the iovecs describe the shard's buffer pool and block cache, which outlive
        // the ring (the shard drops the ring first, or leaks them) and are never freed while
        // registered.
        unsafe { self.submitter.register_buffers(iovs) }
    }

    /// Registers a provided-buffer ring (`ring::provided`) of `entries` descriptors at `addr`
    /// as buffer group `bgid`.
    pub fn register_buf_ring(&self, addr: u64, entries: u16, bgid: u16) -> io::Result<()> {
        // SAFETY: `addr` is a page-aligned `RecvBufRing` descriptor array of `entries`
        // entries, which outlives the registration: the shard drops the ring (releasing it)
        // before the RecvBufRing, or leaks the RecvBufRing.
        unsafe {
            self.submitter
                .register_buf_ring_with_flags(addr, entries, bgid, 0)
        }
    }

    /// Queues one SQE; a full SQ is submitted first, never dropped.
    pub fn push(&mut self, entry: &squeue::Entry) -> io::Result<()> {
        self.push_chain(std::slice::from_ref(entry))
    }

    /// Queues a linked chain (or any group) in one piece: when the SQ lacks room for all of
    /// it, submit what is queued first so the chain is never split across submits.
    ///
    /// When it fails (a broken ring, or no room after `PUSH_ROOM_ROUNDS_MAX` rounds), every
    /// entry is completed with -ECANCELED through `reap`, as the kernel completes the rest
    /// of a broken link chain: the caller's counts (ops in flight, slots, files) are undone
    /// by the same handlers that undo a cancelled op, so nothing is stranded.
    pub fn push_chain(&mut self, entries: &[squeue::Entry]) -> io::Result<()> {
        let pushed = self.try_push_chain(entries);
        if pushed.is_err() {
            self.push_failures += 1;
            self.stash.extend(entries.iter().map(|e| Completion {
                user_data: e.get_user_data(),
                result: -libc::ECANCELED,
                flags: 0,
            }));
        }
        pushed
    }

    fn try_push_chain(&mut self, entries: &[squeue::Entry]) -> io::Result<()> {
        let capacity = self.sq_capacity();
        if entries.len() > capacity {
            // The shard caps chains below the SQ (batch_chain_entries_max is validated
            // against ring_entries): refused here rather than aborted, should one slip by.
            return Err(io::Error::other("a chain longer than the submission queue"));
        }
        let mut rounds = 0;
        while capacity - self.sq_len() < entries.len() {
            rounds += 1;
            if rounds > PUSH_ROOM_ROUNDS_MAX {
                return Err(io::Error::other(
                    "the kernel took no submissions (CQ overflow not draining)",
                ));
            }
            self.submit()?;
            if capacity - self.sq_len() < entries.len() {
                // The kernel refused the entries (EBUSY: its CQ overflowed, or EAGAIN): move
                // the CQ into the stash so it can flush, then submit again. No handler runs.
                self.stash_completions();
            }
        }
        // SAFETY: the only SubmissionQueue of this ring is this local one (each method
        // makes its own and drops it before returning; Ring is !Sync).
        let mut sq = unsafe { self.uring().submission_shared() };
        // SAFETY: every entry's buffers and fds (and fixed-file slots) are owned by the shard
        // and stay valid until the matching completion is reaped (see buffers.rs, files.rs
        // and shard/mod.rs for lifetimes).
        unsafe { sq.push_multiple(entries) }
            .map_err(|_| io::Error::other("submission queue full after flush"))
    }

    /// Copies every available completion into the stash (handed out by the next `reap`).
    fn stash_completions(&mut self) {
        let mut stash = std::mem::take(&mut self.stash);
        // SAFETY: as in `reap`: the only CompletionQueue of this ring is a local one.
        let mut cq = unsafe { self.uring().completion_shared() };
        cq.sync();
        for cqe in &mut cq {
            stash.push(Completion {
                user_data: cqe.user_data(),
                result: cqe.result(),
                flags: cqe.flags(),
            });
        }
        drop(cq);
        self.stash = stash;
    }

    fn sq_len(&self) -> usize {
        // SAFETY: as in `push_chain`: no other SubmissionQueue of this ring exists now.
        unsafe { self.uring().submission_shared() }.len()
    }

    pub fn submit(&mut self) -> io::Result<usize> {
        loop {
            match self.submitter.submit() {
                Ok(n) => return Ok(n),
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                // EBUSY: the CQ overflowed and must be reaped first; EAGAIN/ENOMEM: the
                // kernel is short of memory now. Nothing was taken; the caller retries.
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => return Ok(0),
                Err(e) if is_transient_enter_error(&e) => {
                    self.enter_errors += 1;
                    return Ok(0);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Submits everything queued and waits for at least one completion or `timeout`.
    pub fn submit_and_wait(&mut self, timeout: Duration) -> io::Result<()> {
        // Stashed completions are waiting: do not sleep on the CQ (nor long while chaos
        // holds some back: they are due at the next reaps).
        let timeout = if !self.stash.is_empty() {
            Duration::ZERO
        } else if self.chaos.as_ref().is_some_and(|c| c.holding()) {
            timeout.min(Duration::from_millis(1))
        } else {
            timeout
        };
        self.tick = types::Timespec::new()
            .sec(timeout.as_secs())
            .nsec(timeout.subsec_nanos());
        let args = types::SubmitArgs::new().timespec(&self.tick);
        match self.submitter.submit_with_args(1, &args) {
            Ok(_) => Ok(()),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ETIME) | Some(libc::EINTR) | Some(libc::EBUSY)
                ) =>
            {
                Ok(())
            }
            Err(e) if is_transient_enter_error(&e) => {
                // Out of memory for the moment: count it, give the kernel a breath, and let
                // the loop come round (the SQEs stay queued).
                self.enter_errors += 1;
                std::thread::sleep(Duration::from_millis(1));
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// True when completions are waiting in the queue (no syscall).
    /// Submits what is queued and waits up to `wait` for a completion; first, when `poll` is
    /// nonzero, polls for up to `poll` without sleeping (`idle_poll_usecs`: each enter
    /// submits and runs deferred task work without blocking). A poll that found completions
    /// has submitted everything, so it does not enter again.
    pub fn poll_then_wait(&mut self, poll: Duration, wait: Duration) -> io::Result<()> {
        if poll > Duration::ZERO {
            let poll_until = std::time::Instant::now() + poll.min(wait);
            loop {
                if let Err(e) = self.submit_and_wait(Duration::ZERO) {
                    tracing::error!("io_uring submit failed: {e}");
                    break;
                }
                if self.completions_ready() {
                    return Ok(());
                }
                if std::time::Instant::now() >= poll_until {
                    break;
                }
                std::hint::spin_loop();
            }
        }
        self.submit_and_wait(wait)
    }

    pub fn completions_ready(&mut self) -> bool {
        if !self.stash.is_empty() {
            return true;
        }
        // SAFETY: as in `reap`: the only CompletionQueue of this ring is a local one.
        let mut cq = unsafe { self.uring().completion_shared() };
        cq.sync();
        !cq.is_empty()
    }

    /// Copies every available completion into `out` (cleared first).
    pub fn reap(&mut self, out: &mut Vec<Completion>) {
        out.clear();
        out.append(&mut self.stash);
        // SAFETY: the only CompletionQueue of this ring is this local one (Ring is !Sync and
        // no other method makes one).
        let mut cq = unsafe { self.uring().completion_shared() };
        cq.sync();
        for cqe in &mut cq {
            out.push(Completion {
                user_data: cqe.user_data(),
                result: cqe.result(),
                flags: cqe.flags(),
            });
        }
        drop(cq);
        if let Some(chaos) = self.chaos.as_mut() {
            chaos.filter(out);
        }
    }

    pub fn sq_capacity(&self) -> usize {
        // SAFETY: as in `push_chain`: no other SubmissionQueue of this ring exists now.
        unsafe { self.uring().submission_shared() }.capacity()
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        if self.features.registered_ring_fd {
            // The registration holds a reference to the ring in this thread's io_uring
            // context: without this the ring would live on until the thread exits.
            if let Err(e) = self.submitter.unregister_ring_fd() {
                tracing::debug!("io_uring unregister ring fd: {e}");
            }
        }
        // SAFETY: the submitter is not used after this; it only borrows `*uring`, freed next.
        unsafe { ManuallyDrop::drop(&mut self.submitter) };
        // SAFETY: `uring` came from `Box::leak` in `new`, is freed only here, and its only
        // borrower (the submitter) is gone.
        drop(unsafe { Box::from_raw(self.uring.as_ptr()) });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_optional_registration_falls_back_and_never_fails() {
        // The knob off never asks the kernel; a refusal becomes a note, not an error.
        let mut asked = false;
        assert_eq!(
            try_optional(false, "x", || {
                asked = true;
                Ok(())
            }),
            Optional::Off
        );
        assert!(!asked);
        assert_eq!(try_optional(true, "x", || Ok(())), Optional::Used);
        match try_optional(true, "ring fds", || {
            Err(io::Error::from_raw_os_error(libc::EINVAL))
        }) {
            Optional::Refused(note) => {
                assert!(note.starts_with("ring fds refused ("), "{note}");
                assert!(note.ends_with("using plain fds"), "{note}");
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    fn nops(n: u64, first: u64) -> Vec<squeue::Entry> {
        (first..first + n)
            .map(|i| opcode::Nop::new().build().user_data(i))
            .collect()
    }

    #[test]
    fn a_push_that_fails_completes_every_entry_as_cancelled() {
        // Proves: entries a push could not queue are not lost: `reap` hands out one
        // -ECANCELED completion per entry, with its user_data, so the shard's handlers
        // undo what was counted for them; nothing reached the kernel.
        let mut ring = Ring::new(8).unwrap();
        let chain = nops(ring.sq_capacity() as u64 + 1, 100);
        assert!(ring.push_chain(&chain).is_err());
        assert_eq!(ring.push_failures, 1);
        assert!(ring.completions_ready());
        let mut out = Vec::new();
        ring.reap(&mut out);
        let got: Vec<(u64, i32)> = out.iter().map(|c| (c.user_data, c.result)).collect();
        let want: Vec<(u64, i32)> = (100..100 + chain.len() as u64)
            .map(|u| (u, -libc::ECANCELED))
            .collect();
        assert_eq!(got, want);
        ring.submit_and_wait(Duration::ZERO).unwrap();
        ring.reap(&mut out);
        assert!(out.is_empty(), "nothing was submitted: {out:?}");
    }

    #[test]
    fn pushes_past_a_full_completion_queue_lose_nothing() {
        // Proves: with nobody reaping, pushing far more ops than the CQ holds (the kernel
        // overflows it; this kernel keeps the overflow and takes more submits, an older one
        // answers EBUSY, handled by `stash_completions`) never fails a push, and `reap`
        // returns every op's completion exactly once.
        let mut ring = Ring::new(4).unwrap();
        let total = 2_000u64;
        for e in nops(total, 0) {
            ring.push(&e).unwrap();
        }
        let mut seen = vec![0u32; total as usize];
        let mut out = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while seen.contains(&0) && std::time::Instant::now() < deadline {
            ring.submit_and_wait(Duration::from_millis(10)).unwrap();
            ring.reap(&mut out);
            for c in &out {
                assert_eq!(c.result, 0);
                seen[c.user_data as usize] += 1;
            }
        }
        assert!(seen.iter().all(|&n| n == 1), "lost or doubled: {seen:?}");
        assert_eq!(ring.push_failures, 0);
    }

    #[test]
    fn stashed_completions_come_out_of_reap_once_and_first() {
        // Proves: completions moved aside while a push waits for room (the EBUSY path) are
        // handed out by the next `reap` before newer ones, each exactly once.
        let mut ring = Ring::new(8).unwrap();
        for e in nops(3, 0) {
            ring.push(&e).unwrap();
        }
        ring.submit_and_wait(Duration::from_millis(100)).unwrap();
        while ring.stash.len() < 3 {
            ring.submit_and_wait(Duration::from_millis(10)).unwrap();
            ring.stash_completions();
        }
        for e in nops(2, 3) {
            ring.push(&e).unwrap();
        }
        let mut all = Vec::new();
        let mut out = Vec::new();
        while all.len() < 5 {
            ring.submit_and_wait(Duration::from_millis(10)).unwrap();
            ring.reap(&mut out);
            all.extend(out.iter().map(|c| c.user_data));
        }
        assert_eq!(all, vec![0, 1, 2, 3, 4]);
        ring.submit_and_wait(Duration::ZERO).unwrap();
        ring.reap(&mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn registered_ring_fd_and_fixed_files_serve_a_read() {
        // On a kernel that takes both registrations, a read through a fixed-file slot on a
        // ring entered by its registered index returns the file's bytes; a slot emptied
        // with -1 refuses the next read (EBADF) instead of reading another file.
        let Ok(mut ring) = Ring::new(64) else {
            return; // io_uring unavailable here (e.g. a sandbox): nothing to test
        };
        let ring_fd = ring.register_ring_fd(true);
        let files = ring.register_fixed_files(true, 4);
        if ring_fd != Optional::Used || files != Optional::Used {
            return; // an old kernel: the fallbacks are covered above
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"hello fixed files").unwrap();
        let file = std::fs::File::open(&path).unwrap();
        use std::os::fd::AsRawFd;
        ring.update_fixed_file(2, file.as_raw_fd()).unwrap();
        let mut buf = [0u8; 5];
        let read = |ring: &mut Ring, buf: &mut [u8; 5]| -> i32 {
            let sqe = opcode::Read::new(types::Fixed(2), buf.as_mut_ptr(), 5)
                .offset(6)
                .build()
                .user_data(7);
            ring.push(&sqe).unwrap();
            let mut out = Vec::new();
            for _ in 0..100 {
                ring.submit_and_wait(Duration::from_millis(10)).unwrap();
                ring.reap(&mut out);
                if let Some(c) = out.iter().find(|c| c.user_data == 7) {
                    return c.result;
                }
            }
            panic!("no completion");
        };
        assert_eq!(read(&mut ring, &mut buf), 5);
        assert_eq!(&buf, b"fixed");
        ring.update_fixed_file(2, -1).unwrap();
        assert_eq!(read(&mut ring, &mut buf), -libc::EBADF);
    }
}
