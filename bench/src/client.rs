//! The synthetic swarm's event loop: one epoll loop per thread, each owning a fixed set of
//! peer slots (connections) for the whole run.
//!
//! Owns: sockets (nonblocking, bound to 127.x source addresses before connect), receiving
//! (up to 1 MiB per recv into one per-thread buffer, frames parsed in place; only the tail of
//! a partial frame is carried over per connection), batched request sends (one send per
//! refill), reconnects after a disconnect, the timer heap that wakes a slot when its
//! open-loop request or its dial is due (`timer.rs`: a wake-up costs O(due slots x log n),
//! and epoll_wait sleeps exactly until the earliest one), and churn's open-loop arrival
//! schedule.
//! Must never: share a peer or its counters with another thread, block, scan every peer on a
//! wake-up, or copy a block payload on the in-order path (the peer hashes it from the
//! receive buffer).

use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::RawFd;
use std::sync::Arc;
use std::time::Instant;

use squall_engine::metainfo::torrent::Torrent;

use crate::peer::{xorshift, Peer, PeerConfig, PeerError};
use crate::stats::{ErrorKind, Stats};
use crate::sys::{self, Epoll};
use crate::timer::TimerHeap;

/// One recv takes at most this much: large enough that a fast seeder's socket is drained in
/// few syscalls.
pub const RECV_CHUNK_BYTES: usize = 1 << 20;
/// After a disconnect, wait this long before dialing again (a refusing seeder must not turn
/// the bench into a connect storm).
const RECONNECT_DELAY_NS: u64 = 20_000_000;
const EVENTS_MAX: usize = 512;
/// The loop wakes at least this often even with nothing due, to notice the end of the run.
const WAIT_MAX_NS: u64 = 100_000_000;
/// Timer slack of the bench's threads: an open-loop request is written when due, not up to
/// the default 50 us later (see `sys::set_timer_slack_ns`).
const TIMER_SLACK_NS: u64 = 1;
/// At the end of a run, a peer still waiting this long (for its connect + handshake, for an
/// unchoke, or for the answer to its oldest request) is counted in `stalled_at_end`: the
/// bench has no
/// request timeout, so a seeder that silently stops serving a connection shows up here
/// rather than only as a lower Gb/s.
pub const STALLED_AFTER_NS: u64 = 1_000_000_000;

/// Churn: new peers arrive on a fixed schedule (open loop), independent of how long each
/// one takes; an arrival that finds every slot busy is dropped and counted.
#[derive(Clone, Copy, Debug)]
pub struct ArrivalPlan {
    /// Joins per second over the whole run (all threads).
    pub join_rate_per_sec: f64,
    /// This thread's place among `threads`: its arrivals are every `threads`-th of the
    /// global schedule, so the union over threads is exactly `join_rate_per_sec`.
    pub thread_index: usize,
    pub threads: usize,
}

/// What one thread is given.
pub struct ThreadPlan {
    pub target: SocketAddrV4,
    pub torrents: Vec<Arc<Torrent>>,
    /// Global numbers of this thread's peers (source address and first torrent derive from it).
    /// With churn these are the thread's share of the max-concurrent-peers limit.
    pub peer_numbers: Vec<usize>,
    /// Peers over all threads: peer k's open-loop phase is k / peers_total of the interval.
    pub peers_total: usize,
    pub source_ips: Vec<Ipv4Addr>,
    pub peer_cfg: PeerConfig,
    /// After a full walk, move to another torrent (reconnect) instead of repeating.
    pub hop: bool,
    /// Churn: peers join on this schedule and leave for good (their slot is freed) when
    /// done; `None`: every slot dials at the start and redials after a disconnect.
    pub arrivals: Option<ArrivalPlan>,
    pub epoch: Instant,
    /// Poll (zero-timeout waits) instead of sleeping when the next timer is this close.
    pub spin_ns: u64,
    pub record_from_ns: u64,
    pub end_ns: u64,
    pub duration_secs: u64,
    /// Peers speak MSE/PE with RC4 (`mse`).
    pub encrypt: bool,
}

struct Conn {
    fd: RawFd,
    peer: Peer,
    connecting: bool,
    /// When the connection was meant to start: the dial time, or with churn the arrival's
    /// scheduled time, so connect_us is charged for any lateness of the bench itself.
    started_ns: u64,
    rx_pending: Vec<u8>,
    tx: Vec<u8>,
    tx_off: usize,
    want_write: bool,
    /// `--encrypt`: the connection's MSE handshake and RC4 streams.
    crypt: Option<Box<crate::mse::Crypt>>,
    info_hash: squall_engine::metainfo::InfoHash,
}

struct Slot {
    number: usize,
    torrent_idx: usize,
    conn: Option<Conn>,
    reconnect_at_ns: Option<u64>,
    /// Churn: the slot holds an arrival (taken from the free list) until its peer is gone.
    busy: bool,
}

fn now_ns(epoch: Instant) -> u64 {
    epoch.elapsed().as_nanos() as u64
}

/// Churn's arrival clock: arrival k of this thread is due at
/// (k x threads + thread_index) / rate seconds, computed from k (no accumulated drift).
struct Arrivals {
    plan: ArrivalPlan,
    next_k: u64,
    end_ns: u64,
}

impl Arrivals {
    fn due_ns(&self, k: u64) -> u64 {
        let global = k * self.plan.threads as u64 + self.plan.thread_index as u64;
        (global as f64 * 1e9 / self.plan.join_rate_per_sec) as u64
    }

    /// The next arrival's time, if it falls inside the run.
    fn next_ns(&self) -> Option<u64> {
        let t = self.due_ns(self.next_k);
        (t < self.end_ns).then_some(t)
    }
}

/// Counts one churn event inside the measured window only.
fn in_window(stats: &Stats, at_ns: u64) -> bool {
    at_ns >= stats.record_from_ns
}

pub fn run_thread(plan: ThreadPlan) -> Result<Stats, String> {
    // Best effort: a kernel that refuses leaves the default slack, which only adds lateness.
    let _ = sys::set_timer_slack_ns(TIMER_SLACK_NS);
    let epoll = Epoll::new().map_err(|e| format!("epoll_create1: {e}"))?;
    let mut stats = Stats::new(plan.record_from_ns, plan.duration_secs);
    let mut rng = 0x9e37_79b9_7f4a_7c15u64 ^ plan.peer_numbers.first().copied().unwrap_or(0) as u64;
    let n_torrents = plan.torrents.len().max(1);
    let churn = plan.arrivals.is_some();
    let mut slots: Vec<Slot> = plan
        .peer_numbers
        .iter()
        .map(|&number| Slot {
            number,
            torrent_idx: number % n_torrents,
            conn: None,
            // Without churn every slot dials at once; with churn slots wait for arrivals.
            reconnect_at_ns: if churn { None } else { Some(0) },
            busy: false,
        })
        .collect();
    let mut timer = TimerHeap::new(slots.len());
    for (i, slot) in slots.iter().enumerate() {
        rearm(&mut timer, slot, i);
    }
    // Churn: free slots, a stack sized at start-up (the max-concurrent-peers limit).
    let mut free_slots: Vec<usize> = if churn {
        (0..slots.len()).rev().collect()
    } else {
        Vec::new()
    };
    let mut arrivals = plan.arrivals.map(|p| Arrivals {
        plan: p,
        next_k: 0,
        end_ns: plan.end_ns,
    });
    let mut fired: Vec<usize> = Vec::with_capacity(slots.len());
    let mut rx = vec![0u8; RECV_CHUNK_BYTES + (4 << 20)];
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; EVENTS_MAX];
    // This thread's CPU time when the measured window opened (at its first wake in it).
    let mut cpu_secs_at_window: Option<f64> = None;
    // Time in the window spent in zero-timeout polls that found nothing (spinning, not work).
    let mut spin_idle_ns = 0u64;
    loop {
        let now = now_ns(plan.epoch);
        if cpu_secs_at_window.is_none() && in_window(&stats, now) {
            cpu_secs_at_window = Some(sys::thread_cpu_secs());
        }
        // Churn arrivals first, so every arrival scheduled before the end is admitted (or
        // counted as dropped) even when the loop itself runs late.
        if let Some(arr) = arrivals.as_mut() {
            while let Some(at) = arr.next_ns().filter(|&t| t <= now) {
                let global = arr.next_k * arr.plan.threads as u64 + arr.plan.thread_index as u64;
                arr.next_k += 1;
                let Some(i) = free_slots.pop() else {
                    if in_window(&stats, at) {
                        stats.joins_dropped_at_limit += 1;
                    }
                    continue;
                };
                if in_window(&stats, at) {
                    stats.joins_started += 1;
                }
                let slot = &mut slots[i];
                debug_assert!(!slot.busy && slot.conn.is_none());
                slot.busy = true;
                slot.torrent_idx = (global % n_torrents as u64) as usize;
                dial(&plan, &epoll, slot, i, at, now, &mut stats, &mut rng);
                if slot.conn.is_none() {
                    // The dial failed (counted); with churn the arrival is over.
                    leave(&mut timer, slot, i, &mut free_slots);
                }
            }
        }
        if now >= plan.end_ns {
            if let Some(at_window) = cpu_secs_at_window {
                stats.bench_cpu_secs = (sys::thread_cpu_secs() - at_window).max(0.0);
            }
            stats.bench_spin_secs = spin_idle_ns as f64 / 1e9;
            break;
        }
        // Slots whose dial or open-loop request is due (and only those).
        fired.clear();
        timer.pop_due(now, &mut fired);
        for &i in &fired {
            let slot = &mut slots[i];
            on_timer(&plan, &epoll, slot, i, now, &mut stats, &mut rng);
            if churn && slot.conn.is_none() {
                leave(&mut timer, slot, i, &mut free_slots);
            }
            rearm(&mut timer, &slots[i], i);
        }
        let mut next_wake = plan.end_ns;
        if let Some(t) = timer.next_due_ns() {
            next_wake = next_wake.min(t);
        }
        if let Some(t) = arrivals.as_ref().and_then(|a| a.next_ns()) {
            next_wake = next_wake.min(t);
        }
        let mut timeout_ns = next_wake.saturating_sub(now).min(WAIT_MAX_NS);
        let spinning = plan.spin_ns > 0 && timeout_ns <= plan.spin_ns;
        if spinning {
            timeout_ns = 0;
        }
        let poll_from = if spinning { now_ns(plan.epoch) } else { 0 };
        let n = epoll
            .wait(&mut events, timeout_ns)
            .map_err(|e| format!("epoll_wait: {e}"))?;
        if spinning && n == 0 {
            if in_window(&stats, poll_from) {
                spin_idle_ns += now_ns(plan.epoch).saturating_sub(poll_from);
            }
            std::hint::spin_loop();
        }
        for ev in events.iter().take(n) {
            let token = ev.u64 as usize;
            let flags = ev.events;
            let Some(slot) = slots.get_mut(token) else {
                continue;
            };
            let now = now_ns(plan.epoch);
            if let Err(err) = on_event(slot, token, flags, now, &epoll, &mut rx, &mut stats) {
                let PeerError(kind, why) = err;
                close_slot(slot, now, kind, &why, &mut stats);
            }
            if slot.conn.as_ref().is_some_and(|c| c.peer.finished) {
                // Walk or byte budget done: leave, and (hop / leave-after-bytes without
                // churn) come back as a new peer.
                if let Some(conn) = slot.conn.take() {
                    sys::close(conn.fd);
                }
                if churn {
                    if in_window(&stats, now) {
                        stats.sessions_completed += 1;
                    }
                } else {
                    if plan.hop {
                        stats.count(ErrorKind::Hop);
                        slot.torrent_idx = (xorshift(&mut rng) % n_torrents as u64) as usize;
                    }
                    slot.reconnect_at_ns = Some(now);
                }
            }
            if churn && slot.conn.is_none() {
                leave(&mut timer, slot, token, &mut free_slots);
            }
            rearm(&mut timer, &slots[token], token);
        }
    }
    let now = now_ns(plan.epoch);
    for slot in slots.iter_mut() {
        if let Some(conn) = slot.conn.take() {
            let stalled = |since: u64| now.saturating_sub(since) >= STALLED_AFTER_NS;
            let p = &conn.peer;
            stats.peers_at_end.connected += 1;
            if p.handshake_done {
                stats.peers_at_end.handshaken += 1;
            }
            if p.blocks_in_window > 0 {
                stats.peers_at_end.served += 1;
            }
            if !p.handshake_done {
                if stalled(conn.started_ns) {
                    stats.stalled_at_end.handshake += 1;
                }
            } else if p.choked {
                if stalled(p.choked_since_ns) {
                    stats.stalled_at_end.unchoke += 1;
                }
            } else if p.oldest_outstanding_ns().is_some_and(stalled) {
                stats.stalled_at_end.request += 1;
            }
            sys::close(conn.fd);
        }
    }
    Ok(stats)
}

/// Churn: a peer that is gone (done, failed, or never connected) frees its slot for good.
fn leave(timer: &mut TimerHeap, slot: &mut Slot, i: usize, free_slots: &mut Vec<usize>) {
    slot.reconnect_at_ns = None;
    if slot.busy {
        slot.busy = false;
        timer.disarm(i);
        free_slots.push(i);
    }
}

/// Arms the slot's next wake-up: its dial when it has no connection, its next open-loop
/// request when the window has room. A connected closed-loop peer needs no timer.
fn rearm(timer: &mut TimerHeap, slot: &Slot, i: usize) {
    let due = match &slot.conn {
        None => slot.reconnect_at_ns,
        Some(conn) => conn.peer.next_due_ns(),
    };
    if let Some(at) = due {
        timer.arm(i, at);
    }
}

/// A slot's timer fired: dial if its reconnect is due, or write its due open-loop requests.
fn on_timer(
    plan: &ThreadPlan,
    epoll: &Epoll,
    slot: &mut Slot,
    i: usize,
    now: u64,
    stats: &mut Stats,
    rng: &mut u64,
) {
    if slot.conn.is_none() {
        if slot.reconnect_at_ns.is_some_and(|at| at <= now) {
            slot.reconnect_at_ns = None;
            dial(plan, epoll, slot, i, now, now, stats, rng);
        }
        return;
    }
    let Some(conn) = slot.conn.as_mut() else {
        return;
    };
    if conn.peer.next_due_ns().is_some_and(|due| due <= now) {
        conn.peer.refill(now, &mut conn.tx);
        if let Err(e) = flush(conn, epoll, i) {
            close_slot(slot, now, ErrorKind::Disconnect, &e, stats);
        }
    }
}

/// Open loop: slot k's requests are due at k/peers_total of an interval past each grid
/// point, so the swarm's requests are spread evenly over time, not sent in bursts.
fn phase_ns(plan: &ThreadPlan, slot: &Slot) -> u64 {
    match plan.peer_cfg.interval_ns {
        Some(interval) => {
            let total = plan.peers_total.max(1) as u128;
            ((slot.number as u128 % total) * interval as u128 / total) as u64
        }
        None => 0,
    }
}

#[allow(clippy::too_many_arguments)]
fn dial(
    plan: &ThreadPlan,
    epoll: &Epoll,
    slot: &mut Slot,
    token: usize,
    started_ns: u64,
    now: u64,
    stats: &mut Stats,
    rng: &mut u64,
) {
    let source = if plan.source_ips.is_empty() {
        None
    } else {
        Some(plan.source_ips[slot.number % plan.source_ips.len()])
    };
    let fd = match sys::connect_nonblocking(plan.target, source) {
        Ok(fd) => fd,
        Err(_) => {
            stats.count(ErrorKind::ConnectFailed);
            slot.reconnect_at_ns = Some(now + RECONNECT_DELAY_NS);
            return;
        }
    };
    let flags = (libc::EPOLLIN | libc::EPOLLOUT) as u32;
    if epoll.add(fd, flags, token as u64).is_err() {
        sys::close(fd);
        stats.count(ErrorKind::ConnectFailed);
        slot.reconnect_at_ns = Some(now + RECONNECT_DELAY_NS);
        return;
    }
    let Some(torrent) = plan.torrents.get(slot.torrent_idx).cloned() else {
        sys::close(fd);
        return;
    };
    let seed = xorshift(rng) ^ slot.number as u64;
    let info_hash = torrent.info_hash;
    slot.conn = Some(Conn {
        fd,
        peer: Peer::new(torrent, plan.peer_cfg.clone(), seed, now).with_phase(phase_ns(plan, slot)),
        connecting: true,
        started_ns,
        rx_pending: Vec::new(),
        tx: Vec::with_capacity(plan.peer_cfg.depth * 17 + 256),
        tx_off: 0,
        want_write: true,
        crypt: plan
            .encrypt
            .then(|| Box::new(crate::mse::Crypt::pending(seed))),
        info_hash,
    });
}

fn close_slot(slot: &mut Slot, now: u64, kind: ErrorKind, _why: &str, stats: &mut Stats) {
    if let Some(conn) = slot.conn.take() {
        sys::close(conn.fd);
        stats.count(if conn.connecting {
            ErrorKind::ConnectFailed
        } else {
            kind
        });
    }
    slot.reconnect_at_ns = Some(now + RECONNECT_DELAY_NS);
}

fn on_event(
    slot: &mut Slot,
    token: usize,
    flags: u32,
    now: u64,
    epoll: &Epoll,
    rx: &mut [u8],
    stats: &mut Stats,
) -> Result<(), PeerError> {
    let Some(conn) = slot.conn.as_mut() else {
        return Ok(());
    };
    let disconnect = |why: String| PeerError(ErrorKind::Disconnect, why);
    if conn.connecting {
        if flags & (libc::EPOLLOUT | libc::EPOLLERR | libc::EPOLLHUP) as u32 == 0 {
            return Ok(());
        }
        match sys::socket_error(conn.fd) {
            Ok(0) => {}
            Ok(code) => {
                return Err(PeerError(
                    ErrorKind::ConnectFailed,
                    std::io::Error::from_raw_os_error(code).to_string(),
                ))
            }
            Err(e) => return Err(PeerError(ErrorKind::ConnectFailed, e.to_string())),
        }
        conn.connecting = false;
        conn.peer.on_connected(&mut conn.tx);
        if let Some(c) = conn.crypt.as_mut() {
            c.start(conn.info_hash, &mut conn.tx);
        }
    }
    if flags & (libc::EPOLLIN | libc::EPOLLHUP | libc::EPOLLERR) as u32 != 0 {
        let pre = conn.rx_pending.len();
        if pre > rx.len() - RECV_CHUNK_BYTES {
            return Err(PeerError(
                ErrorKind::Protocol,
                "partial frame too large".into(),
            ));
        }
        rx[..pre].copy_from_slice(&conn.rx_pending);
        let mut got = match sys::recv(conn.fd, &mut rx[pre..pre + RECV_CHUNK_BYTES]) {
            Ok(Some(0)) => return Err(disconnect("seeder closed the connection".into())),
            Ok(Some(n)) => n,
            Ok(None) => 0,
            Err(e) => return Err(disconnect(e.to_string())),
        };
        if let (Some(c), true) = (conn.crypt.as_mut(), got > 0) {
            let protocol = |e: String| PeerError(ErrorKind::Protocol, e);
            match c
                .on_recv(&mut rx[pre..pre + got], &mut conn.tx)
                .map_err(protocol)?
            {
                crate::mse::Received::InPlace => {}
                crate::mse::Received::Handshaking => got = 0,
                crate::mse::Received::Established(rest) => {
                    if rest.len() > rx.len() - pre {
                        return Err(protocol("MSE: too much after the handshake".into()));
                    }
                    rx[pre..pre + rest.len()].copy_from_slice(&rest);
                    got = rest.len();
                }
            }
        }
        if got > 0 {
            let had_handshake = conn.peer.handshake_done;
            let used = conn
                .peer
                .on_recv(&rx[..pre + got], now, stats, &mut conn.tx)?;
            if !had_handshake && conn.peer.handshake_done && now >= stats.record_from_ns {
                stats.on_connected(now.saturating_sub(conn.started_ns));
            }
            conn.rx_pending.clear();
            conn.rx_pending.extend_from_slice(&rx[used..pre + got]);
        }
    }
    flush(conn, epoll, token).map_err(disconnect)
}

/// Sends what is queued; arms EPOLLOUT only while something is left over.
fn flush(conn: &mut Conn, epoll: &Epoll, token: usize) -> Result<(), String> {
    if let Some(c) = conn.crypt.as_mut() {
        c.seal(&mut conn.tx);
    }
    while conn.tx_off < conn.tx.len() {
        let n = sys::send(conn.fd, &conn.tx[conn.tx_off..]).map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        conn.tx_off += n;
    }
    if conn.tx_off == conn.tx.len() {
        conn.tx.clear();
        conn.tx_off = 0;
        if let Some(c) = conn.crypt.as_mut() {
            c.on_tx_cleared();
        }
    }
    let want_write = !conn.tx.is_empty() || conn.connecting;
    if want_write != conn.want_write {
        let mut flags = libc::EPOLLIN as u32;
        if want_write {
            flags |= libc::EPOLLOUT as u32;
        }
        epoll
            .modify(conn.fd, flags, token as u64)
            .map_err(|e| e.to_string())?;
        conn.want_write = want_write;
    }
    Ok(())
}
