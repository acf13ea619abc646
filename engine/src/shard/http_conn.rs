//! HTTP connections on a shard: the I/O around the pure front-end in `crate::http`.
//!
//! Owns: the shard's HTTP connection table, their receive buffers, and the ops of each
//! connection: one recv at a time into the connection's fixed-size head buffer, the send of a
//! response head, then the body in chunks of at most `http.send_chunk_bytes_max`, each sent
//! straight from the file's page-cache mapping when its pages are resident, or read into a
//! send-pool slot (the same registered buffers BitTorrent blocks use) and sent from there.
//! A connection accepted on a shard stays there; its admission (per IP and prefix) is the
//! one peers use, so HTTP and BitTorrent connections share the same bounds.
//!
//! Pipelining: requests that arrive while a response is going out wait in the head buffer
//! and are answered in order once it is done; a full buffer stops reading (backpressure).
//! Every operation has a deadline: idle connections and sends without progress for
//! `send_stall_secs` are closed on the tick; a head that does not arrive whole within
//! `http.request_timeout_secs` (slowloris) gets a 408 and the connection closes after it.
//!
//! Must never: hold a body's bytes in a heap buffer, open a path built from a URL (files are
//! found through `http::index::UrlIndex`), move or resize a buffer an op names, free a
//! connection (or release its slot or file use) while an op names it, or let one
//! connection's error affect another.

use super::{push_or_log, Shard};
use crate::http::index::UrlIndex;
use crate::http::request::{self, ParseLimits};
use crate::http::response::{self, Body};
use crate::ring::token::{OpKind, Token};
use crate::ring::Completion;
use crate::shard::conn::tune_socket;
use crate::shard::files::{AcquireError, FileKey};
use io_uring::{opcode, types};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

/// Token slot of a head send.
const SEND_HEAD: u16 = 0;
/// Token slot of a body-chunk send.
const SEND_BODY: u16 = 1;

/// The response body still to send.
#[derive(Debug, Clone, Copy)]
struct BodyLeft {
    key: FileKey,
    offset: u64,
    remaining: u64,
}

/// The body chunk in flight: its bytes live in a file mapping or in a pool slot.
#[derive(Debug, Clone, Copy)]
struct Chunk {
    /// Address of the bytes (mapping or slot), as an integer: valid while `file_held` (a
    /// mapping lives as long as its cache entry is in use) or while `slot` is held.
    addr: usize,
    len: u32,
    sent: u32,
    slot: Option<u16>,
    /// The file cache use counted for this chunk (given back when the read or the mapping
    /// send is done).
    file_held: bool,
}

pub struct HttpConn {
    fd: OwnedFd,
    addr: SocketAddr,
    generation: u16,
    closing: bool,
    ops_inflight: u32,
    recv_armed: bool,
    read_closed: bool,
    /// Fixed size (`http.header_bytes_max + 1`): never reallocated while a recv names it.
    buf: Box<[u8]>,
    /// Received bytes end here; bytes before `parsed` were heads already answered.
    recv_len: usize,
    parsed: usize,
    head: Vec<u8>,
    head_sent: usize,
    /// The two-part send of a head and its first body chunk (one sendmsg): boxed so their
    /// addresses stay put while the op names them.
    iov: Box<[libc::iovec; 2]>,
    msg: Box<libc::msghdr>,
    /// A response is going out (its head, then its body).
    responding: bool,
    /// After this response: keep the connection (else close it).
    keep_alive: bool,
    body: Option<BodyLeft>,
    chunk: Option<Chunk>,
    waiting: bool,
    /// The last answer said `Connection: close`: our side is shut for writing and what the
    /// client still sends is read and dropped until it closes (or `request_timeout_secs`),
    /// so unread bytes do not make the kernel reset the connection under that answer.
    lingering: bool,
    /// When the first byte of a head not yet complete arrived.
    head_started_at: Option<Instant>,
    request_at: Instant,
    last_activity: Instant,
    progress_at: Instant,
}

/// The shard's HTTP side: its connections and what answering needs.
pub struct HttpFront {
    conns: Vec<Option<HttpConn>>,
    generations: Vec<u16>,
    free: Vec<u32>,
    live: usize,
    pub index: UrlIndex,
    limits: ParseLimits,
    /// Connections waiting for a send slot or a file-cache entry; retried each loop turn.
    waiters: Vec<(u32, u16)>,
    residency_scratch: Vec<u8>,
}

impl HttpFront {
    pub fn new(config: &crate::http::HttpConfig, catalog: &crate::catalog::Catalog) -> HttpFront {
        HttpFront {
            conns: Vec::new(),
            generations: Vec::new(),
            free: Vec::new(),
            live: 0,
            index: if config.enabled() {
                UrlIndex::build(catalog)
            } else {
                UrlIndex::default()
            },
            limits: ParseLimits::from_config(config),
            waiters: Vec::new(),
            residency_scratch: Vec::new(),
        }
    }

    pub fn live(&self) -> usize {
        self.live
    }

    pub fn ops_in_flight(&self) -> u64 {
        self.conns
            .iter()
            .flatten()
            .map(|c| u64::from(c.ops_inflight))
            .sum()
    }

    fn get_mut(&mut self, idx: u32) -> Option<&mut HttpConn> {
        self.conns.get_mut(idx as usize).and_then(Option::as_mut)
    }

    fn is_live(&self, idx: u32, generation: u16) -> bool {
        self.conns
            .get(idx as usize)
            .and_then(Option::as_ref)
            .is_some_and(|c| c.generation == generation)
    }

    fn insert(&mut self, make: impl FnOnce(u16) -> HttpConn) -> u32 {
        let idx = match self.free.pop() {
            Some(i) => i,
            None => {
                self.conns.push(None);
                self.generations.push(0);
                (self.conns.len() - 1) as u32
            }
        };
        let g = &mut self.generations[idx as usize];
        *g = g.wrapping_add(1);
        self.conns[idx as usize] = Some(make(*g));
        self.live += 1;
        idx
    }
}

fn token(kind: OpKind, slot: u16, idx: u32, conn: &HttpConn) -> u64 {
    Token::new(kind, slot, idx, conn.generation).encode()
}

impl Shard {
    /// An accept on one of the HTTP listeners.
    pub(super) fn on_http_accept(&mut self, fd: OwnedFd) {
        let Some(addr) = super::conn::peer_addr(fd.as_raw_fd()) else {
            return;
        };
        if self.http.live() >= self.config.http.connections_per_shard_max {
            self.stats.http.connections_refused += 1;
            return;
        }
        if self.admission.admit(&addr.ip()).is_err() {
            self.stats.http.connections_refused += 1;
            return;
        }
        tune_socket(fd.as_raw_fd(), self.config.send_stall_secs);
        let now = self.now;
        let buf_len = self.config.http.header_bytes_max + 1;
        let idx = self.http.insert(|generation| HttpConn {
            fd,
            addr,
            generation,
            closing: false,
            ops_inflight: 0,
            recv_armed: false,
            read_closed: false,
            buf: vec![0u8; buf_len].into_boxed_slice(),
            recv_len: 0,
            parsed: 0,
            head: Vec::with_capacity(512),
            head_sent: 0,
            iov: Box::new(
                [libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0,
                }; 2],
            ),
            // SAFETY: msghdr is plain data; all-zero is a valid empty header.
            msg: Box::new(unsafe { std::mem::zeroed() }),
            responding: false,
            keep_alive: true,
            body: None,
            chunk: None,
            waiting: false,
            lingering: false,
            head_started_at: None,
            request_at: now,
            last_activity: now,
            progress_at: now,
        });
        self.stats.http.connections_accepted += 1;
        self.http_arm_recv(idx);
    }

    /// A completion of an HTTP connection's op.
    pub(super) fn on_http_completion(&mut self, token: Token, c: Completion) {
        if !self.http.is_live(token.peer, token.generation) {
            debug_assert!(false, "completion {token:?} for a freed HTTP connection");
            return;
        }
        let idx = token.peer;
        if let Some(conn) = self.http.get_mut(idx) {
            conn.ops_inflight -= 1;
        }
        match token.kind {
            OpKind::HttpRecv => self.on_http_recv(idx, c.result),
            OpKind::HttpSend if token.slot == SEND_HEAD => self.on_http_head_sent(idx, c.result),
            OpKind::HttpSend => self.on_http_body_sent(idx, c.result),
            OpKind::HttpRead => self.on_http_read(idx, c.result),
            _ => {}
        }
        self.http_maybe_free(idx);
    }

    /// Arms the connection's recv unless one is armed, the buffer is full, or it closed.
    fn http_arm_recv(&mut self, idx: u32) {
        let Some(conn) = self.http.get_mut(idx) else {
            return;
        };
        if conn.closing || conn.recv_armed || conn.read_closed {
            return;
        }
        if conn.recv_len == conn.buf.len() && conn.parsed > 0 {
            // No recv is in flight: moving the unanswered bytes down is safe.
            conn.buf.copy_within(conn.parsed..conn.recv_len, 0);
            conn.recv_len -= conn.parsed;
            conn.parsed = 0;
        }
        let space = conn.buf.len() - conn.recv_len;
        if space == 0 {
            return;
        }
        // SAFETY: `recv_len < buf.len()`, so the pointer and the `space` bytes after it lie
        // in the connection's boxed buffer, which is never moved or freed while the recv is
        // in flight (the connection is freed only with no op in flight).
        let dest = unsafe { conn.buf.as_mut_ptr().add(conn.recv_len) };
        let sqe = opcode::Recv::new(types::Fd(conn.fd.as_raw_fd()), dest, space as u32)
            .build()
            .user_data(token(OpKind::HttpRecv, 0, idx, conn));
        conn.recv_armed = true;
        conn.ops_inflight += 1;
        push_or_log(&mut self.ring, &sqe);
    }

    fn on_http_recv(&mut self, idx: u32, result: i32) {
        let now = self.now;
        let Some(conn) = self.http.get_mut(idx) else {
            return;
        };
        conn.recv_armed = false;
        if conn.closing {
            return;
        }
        if result < 0 {
            self.stats.http.closed_error += 1;
            self.http_close(idx);
            return;
        }
        if conn.lingering {
            if result == 0 {
                self.http_close(idx);
            } else {
                conn.recv_len += result as usize;
                conn.parsed = conn.recv_len;
                self.http_arm_recv(idx);
            }
            return;
        }
        if result == 0 {
            // Half-closed: answer what was asked, then close (`http_next`).
            conn.read_closed = true;
            if !conn.responding {
                self.http_next(idx);
            }
            return;
        }
        conn.recv_len += result as usize;
        debug_assert!(conn.recv_len <= conn.buf.len());
        conn.last_activity = now;
        if conn.head_started_at.is_none() {
            conn.head_started_at = Some(now);
        }
        if !conn.responding {
            self.http_next(idx);
        }
        self.http_arm_recv(idx);
    }

    /// Answers the next complete head in the buffer, if no response is going out; closes a
    /// connection that has nothing more to say.
    fn http_next(&mut self, idx: u32) {
        /// What the buffer held: the caller acts on it once the borrows end.
        enum Next {
            Wait,
            Close,
            Linger,
            Compact,
            Respond(u16),
        }
        let now = self.now;
        let now_secs = unix_now_secs();
        let next = {
            let Shard { http, health, .. } = &mut *self;
            let HttpFront {
                conns,
                index,
                limits,
                ..
            } = http;
            let Some(conn) = conns.get_mut(idx as usize).and_then(Option::as_mut) else {
                return;
            };
            if conn.closing || conn.responding {
                return;
            }
            let pending = &conn.buf[conn.parsed..conn.recv_len];
            let answer = match request::parse(pending, limits) {
                _ if !conn.keep_alive => None,
                Ok(Some((req, used))) => {
                    let errored = |h: &crate::metainfo::InfoHash| health.is_errored(h);
                    let a = response::answer(&req, index, errored, now_secs, &mut conn.head);
                    conn.parsed += used;
                    Some(a)
                }
                Ok(None) => {
                    if pending.is_empty() {
                        conn.head_started_at = None;
                    }
                    None
                }
                Err(e) => Some(response::parse_refusal(e, now_secs, &mut conn.head)),
            };
            match answer {
                None if conn.read_closed => Next::Close,
                None if !conn.keep_alive => Next::Linger,
                None if conn.recv_len == conn.buf.len() && conn.parsed > 0 => Next::Compact,
                None => Next::Wait,
                Some(answer) => {
                    conn.head_started_at = (conn.parsed < conn.recv_len).then_some(now);
                    conn.responding = true;
                    conn.keep_alive = answer.keep_alive;
                    conn.request_at = now;
                    conn.progress_at = now;
                    conn.head_sent = 0;
                    conn.body = answer.body.map(|b: Body| BodyLeft {
                        key: (b.info_hash, b.file_index),
                        offset: b.offset,
                        remaining: b.len,
                    });
                    Next::Respond(answer.status)
                }
            }
        };
        match next {
            Next::Wait => {}
            Next::Close => self.http_close(idx),
            Next::Linger => self.http_linger(idx),
            Next::Compact => self.http_arm_recv(idx),
            Next::Respond(status) => {
                self.stats.http.responded(status);
                // With a body, the head waits for the first chunk: both go in one send.
                if self.http.get_mut(idx).is_some_and(|c| c.body.is_some()) {
                    self.http_send_chunk(idx);
                } else {
                    self.http_send_head(idx);
                }
            }
        }
    }

    /// After a `Connection: close` answer: shut our side for writing and drain the client's
    /// until it closes (see `HttpConn::lingering`); the tick ends it at the head deadline.
    fn http_linger(&mut self, idx: u32) {
        let now = self.now;
        let Some(conn) = self.http.get_mut(idx) else {
            return;
        };
        conn.lingering = true;
        conn.head_started_at = Some(now);
        conn.parsed = conn.recv_len;
        // SAFETY: plain syscall on an fd we own.
        unsafe { libc::shutdown(conn.fd.as_raw_fd(), libc::SHUT_WR) };
        self.http_arm_recv(idx);
    }

    fn http_send_head(&mut self, idx: u32) {
        let Some(conn) = self.http.get_mut(idx) else {
            return;
        };
        let rest = &conn.head[conn.head_sent..];
        let more = if conn.body.is_some() {
            libc::MSG_MORE
        } else {
            0
        };
        let sqe = opcode::Send::new(
            types::Fd(conn.fd.as_raw_fd()),
            rest.as_ptr(),
            rest.len() as u32,
        )
        .flags(libc::MSG_NOSIGNAL | more)
        .build()
        .user_data(token(OpKind::HttpSend, SEND_HEAD, idx, conn));
        conn.ops_inflight += 1;
        push_or_log(&mut self.ring, &sqe);
    }

    fn on_http_head_sent(&mut self, idx: u32, result: i32) {
        let now = self.now;
        let Some(conn) = self.http.get_mut(idx) else {
            return;
        };
        if conn.closing {
            return;
        }
        if result <= 0 {
            self.stats.http.closed_error += 1;
            self.http_close(idx);
            return;
        }
        conn.progress_at = now;
        conn.head_sent += result as usize;
        if conn.head_sent < conn.head.len() {
            self.http_send_head(idx);
        } else if conn.body.is_some() {
            self.http_send_chunk(idx);
        } else {
            self.http_response_done(idx);
        }
    }

    /// Starts the next body chunk: from the mapping when resident, else a read into a slot.
    fn http_send_chunk(&mut self, idx: u32) {
        let chunk_max = self.config.http.send_chunk_bytes_max as u64;
        let Some(conn) = self.http.get_mut(idx) else {
            return;
        };
        let Some(body) = conn.body else {
            return;
        };
        debug_assert!(conn.chunk.is_none() && body.remaining > 0);
        let (info_hash, file_index) = body.key;
        let path = self
            .catalog
            .get(&info_hash)
            .and_then(|t| t.files.get(file_index as usize))
            .map(|f| f.path.clone());
        let Some(path) = path else {
            // The torrent left the catalog mid-response: the body cannot be finished.
            self.stats.http.closed_error += 1;
            self.http_close(idx);
            return;
        };
        let open = match self.files.acquire(body.key, &path, &mut self.ring) {
            Ok(open) => open,
            Err(AcquireError::Full) => {
                self.http_wait(idx);
                return;
            }
            Err(AcquireError::Open(e)) => {
                tracing::debug!(
                    shard = self.index,
                    "http: cannot open {}: {e}",
                    path.display()
                );
                if super::health::is_content_fault(&e) {
                    self.http_content_failed(body.key, format!("open failed: {e}"));
                }
                self.stats.http.closed_error += 1;
                self.http_close(idx);
                return;
            }
        };
        let want = body.remaining.min(chunk_max);
        if let Some(map) = open.map {
            let resident = map.resident_prefix(body.offset, want, &mut self.http.residency_scratch);
            if let Some(ptr) = map.send_ptr(body.offset, resident).filter(|_| resident > 0) {
                self.stats.http.page_cache_sends += 1;
                let chunk = Chunk {
                    addr: ptr as usize,
                    len: resident as u32,
                    sent: 0,
                    slot: None,
                    file_held: true,
                };
                self.http_send_body(idx, chunk);
                return;
            }
        }
        let Some(slot) = self.slots.pool.acquire() else {
            self.files.release(&body.key);
            self.http_wait(idx);
            return;
        };
        let len = want.min(self.slots.pool.slot_len_bytes() as u64) as u32;
        let dest = self.slots.pool.slot_ptr(slot);
        let sqe = match (self.slots.fixed_buffers, open.fixed_slot) {
            (true, Some(f)) => opcode::ReadFixed::new(types::Fixed(f), dest, len, 0)
                .offset(body.offset)
                .build(),
            (true, None) => opcode::ReadFixed::new(types::Fd(open.fd), dest, len, 0)
                .offset(body.offset)
                .build(),
            (false, Some(f)) => opcode::Read::new(types::Fixed(f), dest, len)
                .offset(body.offset)
                .build(),
            (false, None) => opcode::Read::new(types::Fd(open.fd), dest, len)
                .offset(body.offset)
                .build(),
        };
        let Some(conn) = self.http.get_mut(idx) else {
            return;
        };
        let sqe = sqe.user_data(token(OpKind::HttpRead, slot, idx, conn));
        conn.chunk = Some(Chunk {
            addr: dest as usize,
            len,
            sent: 0,
            slot: Some(slot),
            file_held: true,
        });
        conn.ops_inflight += 1;
        push_or_log(&mut self.ring, &sqe);
    }

    fn on_http_read(&mut self, idx: u32, result: i32) {
        let Some(conn) = self.http.get_mut(idx) else {
            return;
        };
        let (Some(mut chunk), Some(body)) = (conn.chunk, conn.body) else {
            return;
        };
        if chunk.file_held {
            chunk.file_held = false;
            conn.chunk = Some(chunk);
            self.files.release(&body.key);
        }
        let Some(conn) = self.http.get_mut(idx) else {
            return;
        };
        if conn.closing {
            return;
        }
        if result <= 0 {
            // 0: the file is shorter than the catalog says; < 0: a disk error. The head
            // promised more bytes than can follow: close, and take the torrent out of
            // service as a BitTorrent read failure would (503 until a recheck passes).
            let why = super::health::read_failure_reason(result, chunk.len);
            self.http_content_failed(body.key, why);
            self.stats.http.closed_error += 1;
            self.http_close(idx);
            return;
        }
        chunk.len = (result as u32).min(chunk.len);
        self.stats.http.buffer_sends += 1;
        self.http_send_body(idx, chunk);
    }

    fn http_send_body(&mut self, idx: u32, chunk: Chunk) {
        let Some(conn) = self.http.get_mut(idx) else {
            return;
        };
        debug_assert!(chunk.sent < chunk.len || conn.head_sent < conn.head.len());
        let ptr = (chunk.addr + chunk.sent as usize) as *const u8;
        let more = match conn.body {
            Some(b) if b.remaining > u64::from(chunk.len) => libc::MSG_MORE,
            _ => 0,
        };
        let fd = types::Fd(conn.fd.as_raw_fd());
        let sqe = if conn.head_sent < conn.head.len() {
            // The head (or what is left of it) and the chunk in one sendmsg.
            let head = &conn.head[conn.head_sent..];
            conn.iov[0] = libc::iovec {
                iov_base: head.as_ptr() as *mut libc::c_void,
                iov_len: head.len(),
            };
            conn.iov[1] = libc::iovec {
                iov_base: ptr as *mut libc::c_void,
                iov_len: (chunk.len - chunk.sent) as usize,
            };
            conn.msg.msg_iov = conn.iov.as_mut_ptr();
            conn.msg.msg_iovlen = 2;
            opcode::SendMsg::new(fd, &*conn.msg as *const libc::msghdr)
                .flags((libc::MSG_NOSIGNAL | more) as u32)
                .build()
        } else {
            opcode::Send::new(fd, ptr, chunk.len - chunk.sent)
                .flags(libc::MSG_NOSIGNAL | more)
                .build()
        }
        .user_data(token(OpKind::HttpSend, SEND_BODY, idx, conn));
        conn.chunk = Some(chunk);
        conn.ops_inflight += 1;
        push_or_log(&mut self.ring, &sqe);
    }

    fn on_http_body_sent(&mut self, idx: u32, result: i32) {
        let now = self.now;
        let Some(conn) = self.http.get_mut(idx) else {
            return;
        };
        let (Some(mut chunk), Some(mut body)) = (conn.chunk, conn.body) else {
            return;
        };
        if conn.closing {
            return;
        }
        if result <= 0 {
            if chunk.slot.is_none() {
                if let Some((now_len, mapped_len)) = self.files.shrunk_under_mapping(&body.key) {
                    let why = format!(
                        "file shrank to {now_len} bytes under its mapping of {mapped_len} \
                         (an HTTP send from it faulted)"
                    );
                    self.http_content_failed(body.key, why);
                }
            }
            self.stats.http.closed_error += 1;
            self.http_close(idx);
            return;
        }
        conn.progress_at = now;
        // A two-part send fills the head first.
        let to_head = (result as usize).min(conn.head.len() - conn.head_sent);
        conn.head_sent += to_head;
        let to_body = result as usize - to_head;
        chunk.sent += to_body as u32;
        let head_left = conn.head_sent < conn.head.len();
        self.stats.http.body_bytes_sent += to_body as u64;
        if head_left || chunk.sent < chunk.len {
            self.http_send_body(idx, chunk);
            return;
        }
        let Some(conn) = self.http.get_mut(idx) else {
            return;
        };
        conn.chunk = None;
        body.offset += u64::from(chunk.len);
        body.remaining -= u64::from(chunk.len);
        conn.body = (body.remaining > 0).then_some(body);
        self.http_release_chunk(chunk, &body.key);
        if body.remaining > 0 {
            self.http_send_chunk(idx);
        } else {
            self.http_response_done(idx);
        }
    }

    /// A content file failed under an HTTP body: mark the torrent errored on this shard and
    /// report it (the control plane publishes it to every shard), as BitTorrent reads do.
    fn http_content_failed(&mut self, (info_hash, file_index): FileKey, reason: String) {
        let Some(torrent) = self.catalog.get(&info_hash).cloned() else {
            return;
        };
        self.health
            .content_failed(&torrent, file_index, reason, self.now, &mut self.stats);
        self.forget_content(&info_hash);
    }

    fn http_release_chunk(&mut self, chunk: Chunk, key: &FileKey) {
        if chunk.file_held {
            self.files.release(key);
        }
        if let Some(slot) = chunk.slot {
            self.slots.pool.release(slot);
        }
    }

    fn http_response_done(&mut self, idx: u32) {
        let now = self.now;
        let Some(conn) = self.http.get_mut(idx) else {
            return;
        };
        let elapsed = now.duration_since(conn.request_at).as_nanos() as u64;
        conn.responding = false;
        conn.last_activity = now;
        // A head that started arriving during a long answer gets its full deadline from now.
        if conn.parsed < conn.recv_len {
            conn.head_started_at = Some(now);
        }
        if self.config.stats_histograms {
            crate::stats::ShardStats::record_latency(
                &mut self.stats.http.request_latency_ns,
                elapsed,
            );
        }
        self.http_next(idx);
        self.http_arm_recv(idx);
    }

    fn http_wait(&mut self, idx: u32) {
        if let Some(conn) = self.http.get_mut(idx) {
            if !conn.waiting {
                conn.waiting = true;
                let g = conn.generation;
                self.http.waiters.push((idx, g));
            }
        }
    }

    /// Retries connections that waited for a slot or a file (once each per loop turn).
    pub(super) fn http_serve_waiters(&mut self) {
        if self.http.waiters.is_empty() {
            return;
        }
        let waiters = std::mem::take(&mut self.http.waiters);
        for (idx, g) in waiters {
            if !self.http.is_live(idx, g) {
                continue;
            }
            let Some(conn) = self.http.get_mut(idx) else {
                continue;
            };
            conn.waiting = false;
            if conn.closing || conn.chunk.is_some() || conn.body.is_none() {
                continue;
            }
            self.http_send_chunk(idx);
        }
    }

    /// Closes a connection: its ops are woken (shutdown) and it is freed once they are back.
    pub(super) fn http_close(&mut self, idx: u32) {
        let Some(conn) = self.http.get_mut(idx) else {
            return;
        };
        if conn.closing {
            return;
        }
        conn.closing = true;
        // SAFETY: plain syscall on an fd we own.
        unsafe { libc::shutdown(conn.fd.as_raw_fd(), libc::SHUT_RDWR) };
        self.http_maybe_free(idx);
    }

    fn http_maybe_free(&mut self, idx: u32) {
        let ready = self
            .http
            .get_mut(idx)
            .is_some_and(|c| c.closing && c.ops_inflight == 0);
        if !ready {
            return;
        }
        let Some(conn) = self.http.conns.get_mut(idx as usize).and_then(Option::take) else {
            return;
        };
        self.http.free.push(idx);
        self.http.live -= 1;
        if let (Some(chunk), Some(body)) = (conn.chunk, conn.body) {
            self.http_release_chunk(chunk, &body.key);
        }
        self.admission.release(&conn.addr.ip());
        drop(conn); // closes the socket
    }

    /// Every HTTP connection closes (shutdown).
    pub(super) fn http_close_all(&mut self) {
        for idx in 0..self.http.conns.len() as u32 {
            self.http_close(idx);
        }
    }

    /// Deadlines: idle connections, slow heads, stalled sends.
    pub(super) fn http_on_tick(&mut self) {
        let now = self.now;
        let idle = Duration::from_secs(self.config.http.idle_timeout_secs);
        let slow = Duration::from_secs(self.config.http.request_timeout_secs);
        let stall = Duration::from_secs(self.config.send_stall_secs);
        for idx in 0..self.http.conns.len() as u32 {
            let Some(conn) = self.http.get_mut(idx) else {
                continue;
            };
            if conn.closing {
                continue;
            }
            let stats = &mut self.stats.http;
            if conn.lingering {
                if conn
                    .head_started_at
                    .is_some_and(|t| now.duration_since(t) > slow)
                {
                    self.http_close(idx);
                }
            } else if conn.responding {
                if now.duration_since(conn.progress_at) > stall {
                    stats.closed_send_stalled += 1;
                    self.http_close(idx);
                }
            } else if conn
                .head_started_at
                .is_some_and(|t| now.duration_since(t) > slow)
            {
                stats.closed_request_timeout += 1;
                self.http_refuse_slow_head(idx);
            } else if now.duration_since(conn.last_activity) > idle {
                stats.closed_idle += 1;
                self.http_close(idx);
            }
        }
        self.stats.http.connections_open = self.http.live() as u64;
    }

    /// A head that did not arrive whole in time (slowloris): answer 408 with `Connection:
    /// close`, then drain and close as after any closing answer (`http_linger`, bounded by
    /// `request_timeout_secs` again), so an honest but slow client learns why.
    fn http_refuse_slow_head(&mut self, idx: u32) {
        let now = self.now;
        let Some(conn) = self.http.get_mut(idx) else {
            return;
        };
        let answer = response::refusal(408, false, unix_now_secs(), &mut conn.head);
        conn.parsed = conn.recv_len;
        conn.head_started_at = None;
        conn.responding = true;
        conn.keep_alive = false;
        conn.request_at = now;
        conn.progress_at = now;
        conn.head_sent = 0;
        conn.body = None;
        self.stats.http.responded(answer.status);
        self.http_send_head(idx);
    }

    /// A new catalog: rebuild the URL index (connections keep going; a body whose torrent
    /// left is closed at its next chunk).
    pub(super) fn http_on_catalog(&mut self) {
        if self.config.http.enabled() {
            self.http.index = UrlIndex::build(&self.catalog);
        }
    }
}

fn unix_now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}
