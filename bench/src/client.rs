//! The synthetic swarm's event loop: one epoll loop per thread, each owning a fixed set of
//! peers (connections) for the whole run.
//!
//! Owns: sockets (nonblocking, bound to 127.x source addresses before connect), receiving
//! (up to 1 MiB per recv into one per-thread buffer, frames parsed in place; only the tail of
//! a partial frame is carried over per connection), batched request sends (one send per
//! refill), reconnects after a disconnect, and the open-loop timer.
//! Must never: share a peer or its counters with another thread, block, or copy a block
//! payload (the peer hashes it from the receive buffer).

use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::RawFd;
use std::sync::Arc;
use std::time::Instant;

use squall_engine::metainfo::torrent::Torrent;

use crate::peer::{xorshift, Peer, PeerConfig, PeerError};
use crate::stats::{ErrorKind, Stats};
use crate::sys::{self, Epoll};

/// One recv takes at most this much: large enough that a fast seeder's socket is drained in
/// few syscalls.
pub const RECV_CHUNK_BYTES: usize = 1 << 20;
/// After a disconnect, wait this long before dialing again (a refusing seeder must not turn
/// the bench into a connect storm).
const RECONNECT_DELAY_NS: u64 = 20_000_000;
const EVENTS_MAX: usize = 512;

/// What one thread is given.
pub struct ThreadPlan {
    pub target: SocketAddrV4,
    pub torrents: Vec<Arc<Torrent>>,
    /// Global numbers of this thread's peers (source address and first torrent derive from it).
    pub peer_numbers: Vec<usize>,
    pub source_ips: Vec<Ipv4Addr>,
    pub peer_cfg: PeerConfig,
    /// After a full walk, move to another torrent (reconnect) instead of repeating.
    pub hop: bool,
    /// Churn: peers start at this rate per second (per thread) instead of all at once.
    pub connect_rate_per_sec: Option<f64>,
    pub epoch: Instant,
    pub record_from_ns: u64,
    pub end_ns: u64,
    pub duration_secs: u64,
}

struct Conn {
    fd: RawFd,
    peer: Peer,
    connecting: bool,
    started_ns: u64,
    rx_pending: Vec<u8>,
    tx: Vec<u8>,
    tx_off: usize,
    want_write: bool,
}

struct Slot {
    number: usize,
    torrent_idx: usize,
    conn: Option<Conn>,
    reconnect_at_ns: Option<u64>,
}

fn now_ns(epoch: Instant) -> u64 {
    epoch.elapsed().as_nanos() as u64
}

pub fn run_thread(plan: ThreadPlan) -> Result<Stats, String> {
    let epoll = Epoll::new().map_err(|e| format!("epoll_create1: {e}"))?;
    let mut stats = Stats::new(plan.record_from_ns, plan.duration_secs);
    let mut rng = 0x9e37_79b9_7f4a_7c15u64 ^ plan.peer_numbers.first().copied().unwrap_or(0) as u64;
    let n_torrents = plan.torrents.len().max(1);
    let mut slots: Vec<Slot> = plan
        .peer_numbers
        .iter()
        .enumerate()
        .map(|(i, &number)| Slot {
            number,
            torrent_idx: number % n_torrents,
            conn: None,
            reconnect_at_ns: Some(match plan.connect_rate_per_sec {
                Some(rate) if rate > 0.0 => (i as f64 * 1e9 / rate) as u64,
                _ => 0,
            }),
        })
        .collect();
    let mut rx = vec![0u8; RECV_CHUNK_BYTES + (4 << 20)];
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; EVENTS_MAX];
    let open_loop = plan.peer_cfg.interval_ns.is_some();
    loop {
        let now = now_ns(plan.epoch);
        if now >= plan.end_ns {
            break;
        }
        // Dial peers that are due (start-up, reconnect after disconnect, hop, churn).
        let mut next_wake = plan.end_ns;
        for (i, slot) in slots.iter_mut().enumerate() {
            match slot.reconnect_at_ns {
                Some(at) if at <= now => {
                    slot.reconnect_at_ns = None;
                    dial(&plan, &epoll, slot, i, now, &mut stats, &mut rng);
                }
                Some(at) => next_wake = next_wake.min(at),
                None => {}
            }
            if open_loop {
                if let Some(due) = slot.conn.as_ref().and_then(|c| c.peer.next_due_ns()) {
                    if due <= now {
                        if let Some(conn) = slot.conn.as_mut() {
                            conn.peer.refill(now, &mut conn.tx);
                            if let Err(e) = flush(conn, &epoll, i) {
                                close_slot(slot, now, ErrorKind::Disconnect, &e, &mut stats);
                            }
                        }
                    } else {
                        next_wake = next_wake.min(due);
                    }
                }
            }
        }
        let timeout_ns = next_wake.saturating_sub(now).min(100_000_000);
        let n = epoll
            .wait(&mut events, timeout_ns)
            .map_err(|e| format!("epoll_wait: {e}"))?;
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
                // Walk or byte budget done: leave, and (hop/churn) come back as a new peer.
                if let Some(conn) = slot.conn.take() {
                    sys::close(conn.fd);
                }
                if plan.hop {
                    stats.count(ErrorKind::Hop);
                    slot.torrent_idx = (xorshift(&mut rng) % n_torrents as u64) as usize;
                }
                slot.reconnect_at_ns = Some(now);
            }
        }
    }
    for slot in slots.iter_mut() {
        if let Some(conn) = slot.conn.take() {
            sys::close(conn.fd);
        }
    }
    Ok(stats)
}

fn dial(
    plan: &ThreadPlan,
    epoll: &Epoll,
    slot: &mut Slot,
    token: usize,
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
    slot.conn = Some(Conn {
        fd,
        peer: Peer::new(torrent, plan.peer_cfg.clone(), seed, now),
        connecting: true,
        started_ns: now,
        rx_pending: Vec::new(),
        tx: Vec::with_capacity(plan.peer_cfg.depth * 17 + 256),
        tx_off: 0,
        want_write: true,
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
        let got = match sys::recv(conn.fd, &mut rx[pre..pre + RECV_CHUNK_BYTES]) {
            Ok(Some(0)) => return Err(disconnect("seeder closed the connection".into())),
            Ok(Some(n)) => n,
            Ok(None) => 0,
            Err(e) => return Err(disconnect(e.to_string())),
        };
        if got > 0 {
            let had_handshake = conn.peer.handshake_done;
            let used = conn
                .peer
                .on_recv(&rx[..pre + got], now, stats, &mut conn.tx)?;
            if !had_handshake && conn.peer.handshake_done && now >= stats.record_from_ns {
                stats.on_connected(now - conn.started_ns);
            }
            conn.rx_pending.clear();
            conn.rx_pending.extend_from_slice(&rx[used..pre + got]);
        }
    }
    flush(conn, epoll, token).map_err(disconnect)
}

/// Sends what is queued; arms EPOLLOUT only while something is left over.
fn flush(conn: &mut Conn, epoll: &Epoll, token: usize) -> Result<(), String> {
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
