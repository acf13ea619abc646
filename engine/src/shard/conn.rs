//! Connections: the shard's table of peers and the socket calls made outside io_uring.
//!
//! Owns: `PeerTable`, the slab of peers indexed by the `peer` field of op tokens, with a
//! generation per index so a completion for a freed and reused index is recognised; and the
//! few plain syscalls a connection needs at set-up and teardown (a socket to dial, its
//! options, its address, a splice pipe, pinning the shard thread).
//! Must never: free a peer that an in-flight op names (`Shard::maybe_free` checks
//! `ops_inflight` first), or be called per request: these syscalls happen once per
//! connection.

use crate::ring::token::{OpKind, Token};
use crate::ring::Completion;
use crate::shard::admission::Refusal;
use crate::shard::peer::Peer;
use crate::stats::CloseReason;
use io_uring::{opcode, squeue, types};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Every peer of a shard, by index; freed indices are reused with a new generation.
#[derive(Default)]
pub struct PeerTable {
    peers: Vec<Option<Peer>>,
    generations: Vec<u16>,
    free: Vec<u32>,
    live: usize,
}

impl PeerTable {
    /// Puts a new peer in the table (reusing a freed index); `make` gets its generation.
    pub fn insert(&mut self, make: impl FnOnce(u16) -> Peer) -> u32 {
        let idx = match self.free.pop() {
            Some(i) => i,
            None => {
                self.peers.push(None);
                self.generations.push(0);
                (self.peers.len() - 1) as u32
            }
        };
        let generation = self.generations[idx as usize];
        assert!(
            self.peers[idx as usize].is_none(),
            "a free index holds a peer"
        );
        self.peers[idx as usize] = Some(make(generation));
        self.live += 1;
        idx
    }

    pub fn get(&self, idx: u32) -> Option<&Peer> {
        self.peers.get(idx as usize).and_then(|p| p.as_ref())
    }

    pub fn get_mut(&mut self, idx: u32) -> Option<&mut Peer> {
        self.peers.get_mut(idx as usize).and_then(|p| p.as_mut())
    }

    /// The peer at `idx` is the one a token of `generation` named.
    pub fn is_live(&self, idx: u32, generation: u16) -> bool {
        self.get(idx).is_some_and(|p| p.generation == generation)
    }

    /// Takes the peer out; its index is reused with the next generation.
    pub fn remove(&mut self, idx: u32) -> Option<Peer> {
        let peer = self.peers.get_mut(idx as usize)?.take()?;
        self.generations[idx as usize] = self.generations[idx as usize].wrapping_add(1);
        self.free.push(idx);
        self.live -= 1;
        Some(peer)
    }

    /// One past the highest index ever used: iterate `0..slots()` to visit every peer.
    pub fn slots(&self) -> u32 {
        self.peers.len() as u32
    }

    /// Peers in the table (connected, connecting or closing).
    pub fn live(&self) -> usize {
        self.live
    }

    pub fn iter(&self) -> impl Iterator<Item = &Peer> {
        self.peers.iter().flatten()
    }
}

/// Peers waiting to be pumped: the ready list (pumped at the end of the loop turn, each at
/// most once: `Peer::pump_queued`) and the peers waiting for a free send slot (or a free
/// file), retried in order as slots free up (each at most once: `Peer::waiting_for_slot`).
/// Both hold at most one entry per live peer.
#[derive(Default)]
pub struct Waiting {
    ready: std::collections::VecDeque<(u32, u16)>,
    for_slot: std::collections::VecDeque<(u32, u16)>,
}

impl Waiting {
    pub fn ready(&mut self, peer: &mut Peer, idx: u32) {
        if !peer.pump_queued {
            peer.pump_queued = true;
            self.ready.push_back((idx, peer.generation));
        }
    }

    /// The next ready peer still alive (its mark cleared).
    pub fn next_ready(&mut self, peers: &mut PeerTable) -> Option<u32> {
        while let Some((idx, generation)) = self.ready.pop_front() {
            if let Some(peer) = peers.get_mut(idx).filter(|p| p.generation == generation) {
                peer.pump_queued = false;
                return Some(idx);
            }
        }
        None
    }

    pub fn for_slot(&mut self, peer: &mut Peer, idx: u32) {
        if !peer.waiting_for_slot {
            peer.waiting_for_slot = true;
            self.for_slot.push_back((idx, peer.generation));
        }
    }

    /// The next peer waiting for a slot still alive (its mark cleared).
    /// Peers waiting for a send slot now (some may have left since they queued).
    pub fn slot_waiters(&self) -> usize {
        self.for_slot.len()
    }

    pub fn next_for_slot(&mut self, peers: &mut PeerTable) -> Option<u32> {
        while let Some((idx, generation)) = self.for_slot.pop_front() {
            if let Some(peer) = peers.get_mut(idx).filter(|p| p.generation == generation) {
                peer.waiting_for_slot = false;
                return Some(idx);
            }
        }
        None
    }
}

/// The shard's listening sockets (SO_REUSEPORT) and their multishot accepts.
pub struct Listeners {
    fds: Vec<OwnedFd>,
    armed: Vec<bool>,
    accepting: bool,
}

/// What an accept completion brought.
pub enum Accepted {
    /// A new connection (its fd is ours now).
    Conn(OwnedFd),
    /// The accept failed (EMFILE, ENFILE, ...): counted; re-armed at the next tick, not in a
    /// hot loop.
    Failed(std::io::Error),
    /// Cancelled, or we stopped accepting (the fd, if any, is closed).
    Ignored,
}

impl Listeners {
    pub fn new(fds: Vec<OwnedFd>) -> Listeners {
        let armed = vec![false; fds.len()];
        Listeners {
            fds,
            armed,
            accepting: true,
        }
    }

    pub fn accepting(&self) -> bool {
        self.accepting
    }

    /// Every listener has its accept armed (what /stats calls accepting).
    pub fn all_armed(&self) -> bool {
        self.accepting && self.armed.iter().all(|a| *a)
    }

    pub fn any_armed(&self) -> bool {
        self.armed.iter().any(|a| *a)
    }

    /// The multishot accept SQEs of every listener not armed now (none once stopped).
    pub fn arm(&mut self, out: &mut impl FnMut(squeue::Entry)) {
        if !self.accepting {
            return;
        }
        for (i, fd) in self.fds.iter().enumerate() {
            if self.armed[i] {
                continue;
            }
            out(opcode::AcceptMulti::new(types::Fd(fd.as_raw_fd()))
                .flags(libc::SOCK_CLOEXEC)
                .build()
                .user_data(Token::new(OpKind::Accept, i as u16, 0, 0).encode()));
            self.armed[i] = true;
        }
    }

    /// Stops accepting: the cancels of every armed accept.
    pub fn stop(&mut self, out: &mut impl FnMut(squeue::Entry)) {
        self.accepting = false;
        for (i, armed) in self.armed.iter().enumerate() {
            if *armed {
                out(cancel_sqe(Token::new(OpKind::Accept, i as u16, 0, 0)));
            }
        }
    }

    pub fn on_completion(&mut self, listener: usize, c: &Completion) -> Accepted {
        if !c.more() {
            if let Some(armed) = self.armed.get_mut(listener) {
                *armed = false;
            }
        }
        if c.result < 0 {
            if c.result == -libc::ECANCELED {
                return Accepted::Ignored;
            }
            return Accepted::Failed(std::io::Error::from_raw_os_error(-c.result));
        }
        // SAFETY: a non-negative accept result is a new fd that nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(c.result) };
        if !self.accepting {
            return Accepted::Ignored;
        }
        Accepted::Conn(fd)
    }
}

/// The connect op of an outbound peer. Its address is boxed on the peer: it must not move
/// while the op is in flight.
pub fn connect_sqe(peer: &mut Peer, addr: &SocketAddr, idx: u32) -> squeue::Entry {
    peer.phase = crate::shard::peer::Phase::Connecting;
    let boxed = Box::new(crate::net::std_to_sockaddr(addr));
    let sqe = opcode::Connect::new(
        types::Fd(peer.fd.as_raw_fd()),
        (&boxed.0 as *const libc::sockaddr_storage).cast(),
        boxed.1,
    )
    .build()
    .user_data(Token::new(OpKind::Connect, 0, idx, peer.generation).encode());
    peer.connect_addr = Some(boxed);
    peer.ops_inflight += 1;
    sqe
}

/// An AsyncCancel of the op `target` names (its own completion is ignored).
pub fn cancel_sqe(target: Token) -> squeue::Entry {
    opcode::AsyncCancel::new(target.encode())
        .build()
        .user_data(Token::new(OpKind::Ignore, 0, 0, 0).encode())
}

/// The close reason counted for an admission refusal.
pub fn refusal_reason(refusal: Refusal) -> CloseReason {
    match refusal {
        Refusal::PeersLimit => CloseReason::PeersLimit,
        Refusal::PerIpLimit => CloseReason::PeersPerIpLimit,
        Refusal::PerPrefixLimit => CloseReason::PeersPerPrefixLimit,
    }
}

/// A non-blocking-free TCP socket to dial `addr` from (the connect itself is an io_uring op).
pub fn dial_socket(addr: &SocketAddr) -> std::io::Result<OwnedFd> {
    crate::net::tcp_socket(addr)
}

/// A pipe for splice mode, sized to hold a whole batch (the kernel may grant less, up to
/// /proc/sys/fs/pipe-max-size for unprivileged processes): returns its capacity too.
pub fn make_pipe(batch_len_bytes: usize) -> std::io::Result<(OwnedFd, OwnedFd, usize)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: fds has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded, so both are new fds we own.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // The whole batch is written into the pipe before the socket splice drains it, so the pipe
    // must hold it all, or the writes into it would block an io-wq worker.
    let want = batch_len_bytes.max(65536).min(i32::MAX as usize) as libc::c_int;
    // SAFETY: fcntl on an fd we own.
    unsafe { libc::fcntl(w.as_raw_fd(), libc::F_SETPIPE_SZ, want) };
    // SAFETY: fcntl on an fd we own.
    let capacity = unsafe { libc::fcntl(w.as_raw_fd(), libc::F_GETPIPE_SZ) };
    if capacity <= 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((r, w, capacity as usize))
}

pub fn peer_addr(fd: RawFd) -> Option<SocketAddr> {
    // SAFETY: sockaddr_storage is plain data; getpeername writes at most `len` bytes into it.
    unsafe {
        let mut storage: libc::sockaddr_storage = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        if libc::getpeername(
            fd,
            (&mut storage as *mut libc::sockaddr_storage).cast(),
            &mut len,
        ) != 0
        {
            return None;
        }
        crate::net::sockaddr_to_std(&storage)
    }
}

/// A new connection's TCP options: no Nagle delay (blocks go out as soon as they are
/// sent), and TCP_USER_TIMEOUT: data unacknowledged for `send_stall_secs` ends the
/// connection in the kernel too, so a peer that vanished cannot keep our sends queued.
/// Failures cost only those savings and are ignored.
pub fn tune_socket(fd: RawFd, send_stall_secs: u64) {
    let user_timeout_ms = send_stall_secs.saturating_mul(1000).min(i32::MAX as u64);
    let set = |name: libc::c_int, value: libc::c_int| {
        // SAFETY: setsockopt reads an int from a valid pointer.
        unsafe {
            libc::setsockopt(
                fd,
                libc::IPPROTO_TCP,
                name,
                (&value as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    };
    set(libc::TCP_NODELAY, 1);
    set(libc::TCP_USER_TIMEOUT, user_timeout_ms as libc::c_int);
}

pub fn pin_to_cpu(cpu: usize) {
    // SAFETY: cpu_set_t is plain data; CPU_SET stays inside it for cpu < CPU_SETSIZE.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if cpu < libc::CPU_SETSIZE as usize {
            libc::CPU_SET(cpu, &mut set);
            if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
                tracing::debug!(
                    "cannot pin shard to CPU {cpu}: {}",
                    std::io::Error::last_os_error()
                );
            }
        }
    }
}
