//! The null seeder: the bench's own ceiling. Speaks just enough BitTorrent to be benched and
//! answers every request from memory (the deterministic content pattern), never from disk.
//!
//! Owns: one epoll loop, its listener and connections; per connection a small receive
//! buffer (requests only) and a backlog of unsent bytes.
//! Must never: read a file, hash, or choke; a request for any (index, begin) of a known
//! torrent gets the pattern bytes at that offset, so content made with `gen-content` and
//! torrents made from it verify.

use std::net::SocketAddrV4;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use squall_engine::metainfo::torrent::Torrent;
use squall_engine::wire::{
    decode_frame, encode, parse_handshake, write_piece_header, Handshake, Message, HANDSHAKE_LEN,
    PIECE_HEADER_LEN,
};

use crate::content::{self, PATTERN_TAIL_BYTES};
use crate::sys::{self, Epoll};

/// Requests answered per sendmsg: bounded by IOV_MAX (1024) at two iovecs per block.
const BLOCKS_PER_SEND_MAX: usize = 512;
const LISTENER_TOKEN: u64 = u64::MAX;
/// Bytes read per recv. The connection's receive buffer is zero-filled once to this size
/// (and again only if a partial message makes it grow), not before every recv: zeroing
/// 64 KiB per 17-byte request was 7% of the null seeder's core in open loop.
const RECV_CHUNK_BYTES: usize = 64 * 1024;

pub struct NullSeeder {
    listener: RawFd,
    addr: SocketAddrV4,
    torrents: Vec<Arc<Torrent>>,
    pattern: Vec<u8>,
}

#[derive(Debug, Default, Clone, Copy)]
pub struct NullSeederStats {
    pub connections: u64,
    pub blocks: u64,
    pub bytes: u64,
}

struct Conn {
    fd: RawFd,
    torrent: Option<usize>,
    /// Received bytes are `rx[..rx_len]`; the rest is room for the next recv.
    rx: Vec<u8>,
    rx_len: usize,
    /// Unsent bytes (copied only when a send came up short).
    backlog: Vec<u8>,
    backlog_off: usize,
    want_write: bool,
}

impl NullSeeder {
    pub fn bind(addr: SocketAddrV4, torrents: Vec<Arc<Torrent>>) -> Result<NullSeeder, String> {
        if torrents.is_empty() {
            return Err("null seeder: give at least one --torrent".into());
        }
        let (listener, addr) = sys::listen(addr).map_err(|e| format!("listen on {addr}: {e}"))?;
        Ok(NullSeeder {
            listener,
            addr,
            torrents,
            pattern: content::pattern(),
        })
    }

    pub fn local_addr(&self) -> SocketAddrV4 {
        self.addr
    }

    /// Serves until `stop` is set (checked every 100 ms).
    pub fn serve(self, stop: Arc<AtomicBool>) -> Result<NullSeederStats, String> {
        let epoll = Epoll::new().map_err(|e| format!("epoll_create1: {e}"))?;
        epoll
            .add(self.listener, libc::EPOLLIN as u32, LISTENER_TOKEN)
            .map_err(|e| format!("epoll_ctl: {e}"))?;
        let mut stats = NullSeederStats::default();
        let mut conns: Vec<Option<Conn>> = Vec::new();
        let mut free: Vec<usize> = Vec::new();
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 512];
        let mut reqs: Vec<(u32, u32, u32)> = Vec::new();
        let mut headers: Vec<[u8; PIECE_HEADER_LEN]> = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            let n = epoll
                .wait(&mut events, 100_000_000)
                .map_err(|e| format!("epoll_wait: {e}"))?;
            for ev in events.iter().take(n) {
                if ev.u64 == LISTENER_TOKEN {
                    while let Ok(Some(fd)) = sys::accept(self.listener) {
                        let idx = free.pop().unwrap_or_else(|| {
                            conns.push(None);
                            conns.len() - 1
                        });
                        if epoll.add(fd, libc::EPOLLIN as u32, idx as u64).is_err() {
                            sys::close(fd);
                            free.push(idx);
                            continue;
                        }
                        stats.connections += 1;
                        conns[idx] = Some(Conn {
                            fd,
                            torrent: None,
                            rx: vec![0; RECV_CHUNK_BYTES],
                            rx_len: 0,
                            backlog: Vec::new(),
                            backlog_off: 0,
                            want_write: false,
                        });
                    }
                    continue;
                }
                let idx = ev.u64 as usize;
                let Some(Some(conn)) = conns.get_mut(idx) else {
                    continue;
                };
                let ok = self.on_event(
                    conn,
                    idx,
                    ev.events,
                    &epoll,
                    &mut reqs,
                    &mut headers,
                    &mut stats,
                );
                if ok.is_err() {
                    sys::close(conn.fd);
                    conns[idx] = None;
                    free.push(idx);
                }
            }
        }
        for c in conns.into_iter().flatten() {
            sys::close(c.fd);
        }
        sys::close(self.listener);
        Ok(stats)
    }

    #[allow(clippy::too_many_arguments)]
    fn on_event(
        &self,
        conn: &mut Conn,
        idx: usize,
        flags: u32,
        epoll: &Epoll,
        reqs: &mut Vec<(u32, u32, u32)>,
        headers: &mut Vec<[u8; PIECE_HEADER_LEN]>,
        stats: &mut NullSeederStats,
    ) -> Result<(), String> {
        let mut out = Vec::new();
        if flags & (libc::EPOLLIN | libc::EPOLLHUP | libc::EPOLLERR) as u32 != 0 {
            let start = conn.rx_len;
            if conn.rx.len() < start + RECV_CHUNK_BYTES {
                conn.rx.resize(start + RECV_CHUNK_BYTES, 0);
            }
            let got = sys::recv(conn.fd, &mut conn.rx[start..start + RECV_CHUNK_BYTES])
                .map_err(|e| e.to_string())?;
            conn.rx_len = start + got.unwrap_or(0);
            if got == Some(0) {
                return Err("closed".into());
            }
            let mut pos = 0;
            if conn.torrent.is_none() {
                let Some(hs) =
                    parse_handshake(&conn.rx[..conn.rx_len]).map_err(|e| e.to_string())?
                else {
                    return Ok(());
                };
                let t = self
                    .torrents
                    .iter()
                    .position(|t| t.info_hash.0 == hs.info_hash)
                    .ok_or("unknown info-hash")?;
                conn.torrent = Some(t);
                pos = HANDSHAKE_LEN;
                let ours = Handshake::new(hs.info_hash, *b"-SBNULL-000000000000", false, true);
                out.extend_from_slice(&ours.to_bytes());
                if hs.supports_fast() {
                    encode(&Message::HaveAll, &mut out);
                } else {
                    let n = self.torrents[t].num_pieces() as usize;
                    let mut bits = vec![0xffu8; n.div_ceil(8)];
                    if !n.is_multiple_of(8) {
                        if let Some(last) = bits.last_mut() {
                            *last = 0xffu8 << (8 - n % 8);
                        }
                    }
                    encode(&Message::Bitfield(&bits), &mut out);
                }
            }
            reqs.clear();
            loop {
                let (msg, used) = match decode_frame(&conn.rx[pos..conn.rx_len], 1 << 20) {
                    Ok(Some(x)) => x,
                    Ok(None) => break,
                    Err(e) => return Err(e.to_string()),
                };
                match msg {
                    Message::Interested => encode(&Message::Unchoke, &mut out),
                    Message::Request(r) => {
                        if r.length as usize > PATTERN_TAIL_BYTES {
                            return Err("request too long".into());
                        }
                        reqs.push((r.index, r.begin, r.length));
                    }
                    _ => {}
                }
                pos += used;
            }
            conn.rx.copy_within(pos..conn.rx_len, 0);
            conn.rx_len -= pos;
        }
        let Some(t) = conn.torrent else { return Ok(()) };
        let piece_length = self.torrents[t].piece_length;
        // Control messages first, then blocks, in as few sendmsg calls as possible.
        if !out.is_empty() {
            self.send_or_backlog(
                conn,
                &[libc::iovec {
                    iov_base: out.as_ptr() as *mut libc::c_void,
                    iov_len: out.len(),
                }],
            )?;
        }
        for chunk in reqs.chunks(BLOCKS_PER_SEND_MAX) {
            headers.clear();
            for &(index, begin, len) in chunk {
                let mut h = [0u8; PIECE_HEADER_LEN];
                write_piece_header(&mut h, index, begin, len);
                headers.push(h);
            }
            let mut iov = Vec::with_capacity(chunk.len() * 2);
            for (h, &(index, begin, len)) in headers.iter().zip(chunk) {
                let offset = index as u64 * piece_length + begin as u64;
                let data =
                    content::slice(&self.pattern, offset, len as usize).ok_or("bad slice")?;
                iov.push(libc::iovec {
                    iov_base: h.as_ptr() as *mut libc::c_void,
                    iov_len: h.len(),
                });
                iov.push(libc::iovec {
                    iov_base: data.as_ptr() as *mut libc::c_void,
                    iov_len: data.len(),
                });
                stats.blocks += 1;
                stats.bytes += len as u64;
            }
            self.send_or_backlog(conn, &iov)?;
        }
        if flags & libc::EPOLLOUT as u32 != 0 {
            self.drain_backlog(conn)?;
        }
        let want_write = conn.backlog_off < conn.backlog.len();
        if want_write != conn.want_write {
            let mut f = libc::EPOLLIN as u32;
            if want_write {
                f |= libc::EPOLLOUT as u32;
            }
            epoll
                .modify(conn.fd, f, idx as u64)
                .map_err(|e| e.to_string())?;
            conn.want_write = want_write;
        }
        Ok(())
    }

    fn drain_backlog(&self, conn: &mut Conn) -> Result<(), String> {
        while conn.backlog_off < conn.backlog.len() {
            let n =
                sys::send(conn.fd, &conn.backlog[conn.backlog_off..]).map_err(|e| e.to_string())?;
            if n == 0 {
                return Ok(());
            }
            conn.backlog_off += n;
        }
        conn.backlog.clear();
        conn.backlog_off = 0;
        Ok(())
    }

    /// Sends `iov` unless a backlog is waiting (order matters); whatever is not sent is
    /// copied to the backlog.
    fn send_or_backlog(&self, conn: &mut Conn, iov: &[libc::iovec]) -> Result<(), String> {
        self.drain_backlog(conn)?;
        let mut sent = 0usize;
        if conn.backlog.is_empty() {
            let mut start = 0;
            while start < iov.len() {
                let end = (start + 1024).min(iov.len());
                let n = sys::sendv(conn.fd, &iov[start..end]).map_err(|e| e.to_string())?;
                let want: usize = iov[start..end].iter().map(|v| v.iov_len).sum();
                sent += n;
                if n < want {
                    break;
                }
                start = end;
            }
        }
        let mut skip = sent;
        for v in iov {
            // SAFETY: every iovec was built above from a live slice of exactly iov_len bytes.
            let bytes = unsafe { std::slice::from_raw_parts(v.iov_base as *const u8, v.iov_len) };
            if skip >= bytes.len() {
                skip -= bytes.len();
                continue;
            }
            conn.backlog.extend_from_slice(&bytes[skip..]);
            skip = 0;
        }
        Ok(())
    }
}
