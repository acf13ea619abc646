//! Raw BitTorrent peers for the hostile and bound tests: a connection from any 127.x source
//! (so per-IP and per-network limits can be exercised from one machine), frames written by
//! hand (a test must be able to send what the engine's own encoder never would), and a small
//! frame reader. Owns nothing but the socket; never reaches outside 127.0.0.0/8.

use squall_engine::wire::{decode_frame, encode, parse_handshake, Handshake, Message};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::FromRawFd;
use std::time::Duration;

/// 127.a.b.c: a source address of its own for a test peer.
pub fn ip(a: u8, b: u8, c: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, a, b, c)
}

/// A connection from `src` (any 127.x address) to `dst`; with `rcvbuf`, its receive buffer
/// is set before it connects, so the window it advertises stays that small.
pub fn connect_from(
    src: Ipv4Addr,
    dst: SocketAddr,
    rcvbuf: Option<i32>,
) -> std::io::Result<TcpStream> {
    let SocketAddr::V4(d) = dst else {
        return Err(std::io::Error::other("IPv4 only"));
    };
    let sin = |ip: Ipv4Addr, port: u16| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: plain socket calls on a new fd, owned by the TcpStream built from it (closed
    // on every early return); the option and address pointers are to locals of the sizes
    // passed.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let stream = TcpStream::from_raw_fd(fd);
        if let Some(bytes) = rcvbuf {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                (&bytes as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
        let local = sin(src, 0);
        if libc::bind(fd, (&local as *const libc::sockaddr_in).cast(), len) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let remote = sin(*d.ip(), d.port());
        if libc::connect(fd, (&remote as *const libc::sockaddr_in).cast(), len) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(stream)
    }
}

/// One length-prefixed message: `id` and its payload.
pub fn frame(id: u8, payload: &[u8]) -> Vec<u8> {
    let mut v = ((payload.len() + 1) as u32).to_be_bytes().to_vec();
    v.push(id);
    v.extend_from_slice(payload);
    v
}

/// A request (id 6), cancel (8) or reject (16) frame.
pub fn request_frame(id: u8, index: u32, begin: u32, length: u32) -> Vec<u8> {
    let mut p = Vec::with_capacity(12);
    for v in [index, begin, length] {
        p.extend_from_slice(&v.to_be_bytes());
    }
    frame(id, &p)
}

/// (index, begin, length) of a request or reject payload.
pub fn triple(p: &[u8]) -> (u32, u32, u32) {
    let v = |i: usize| u32::from_be_bytes([p[i], p[i + 1], p[i + 2], p[i + 3]]);
    (v(0), v(4), v(8))
}

/// A frame read: (id, payload); id 255 stands for keep-alive.
pub type Frame = (u8, Vec<u8>);

/// A raw peer: its socket and what was read but not yet taken as frames.
pub struct Raw {
    pub s: TcpStream,
    pub buf: Vec<u8>,
}

impl Raw {
    /// Connects from `src` with read and write timeouts of `timeout`.
    pub fn connect(
        src: Ipv4Addr,
        dst: SocketAddr,
        rcvbuf: Option<i32>,
        timeout: Duration,
    ) -> std::io::Result<Raw> {
        let s = connect_from(src, dst, rcvbuf)?;
        s.set_read_timeout(Some(timeout))?;
        s.set_write_timeout(Some(timeout))?;
        Ok(Raw { s, buf: Vec::new() })
    }

    /// Sends a BitTorrent handshake and takes squall's 68-byte answer; false when the
    /// connection ends (or times out) first.
    pub fn handshake(
        &mut self,
        info_hash: [u8; 20],
        peer_id: [u8; 20],
        extended: bool,
        fast: bool,
    ) -> bool {
        let ours = squall_engine::wire::Handshake::new(info_hash, peer_id, extended, fast);
        if !self.send(&ours.to_bytes()) {
            return false;
        }
        while self.buf.len() < 68 {
            if !self.fill() {
                return false;
            }
        }
        self.buf.drain(..68);
        true
    }

    /// Writes all of `bytes`; false when the connection fails.
    pub fn send(&mut self, bytes: &[u8]) -> bool {
        self.s.write_all(bytes).is_ok()
    }

    /// Reads once; false on EOF, error or timeout.
    pub fn fill(&mut self) -> bool {
        let mut tmp = [0u8; 65536];
        match self.s.read(&mut tmp) {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&tmp[..n]);
                true
            }
        }
    }

    /// The next frame; None on close or timeout.
    pub fn next(&mut self) -> Option<Frame> {
        loop {
            if self.buf.len() >= 4 {
                let len = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]])
                    as usize;
                if self.buf.len() >= 4 + len {
                    let f: Vec<u8> = self.buf.drain(..4 + len).collect();
                    return Some(if len == 0 {
                        (255, Vec::new())
                    } else {
                        (f[4], f[5..].to_vec())
                    });
                }
            }
            if !self.fill() {
                return None;
            }
        }
    }

    /// Frames until one with `id` (Some), or None when the connection ends first; gives up
    /// after 100,000 other frames, so a peer flooded with keep-alives cannot hang a test.
    pub fn until(&mut self, id: u8) -> Option<Vec<u8>> {
        for _ in 0..100_000 {
            match self.next() {
                Some((i, p)) if i == id => return Some(p),
                Some(_) => continue,
                None => return None,
            }
        }
        None
    }
}

/// Encodes `m` with the engine's encoder and writes it; panics when the write fails.
pub fn send_message(s: &mut TcpStream, m: &Message<'_>) {
    let mut out = Vec::new();
    encode(m, &mut out);
    s.write_all(&out).expect("write");
}

/// Handshake as `peer_id` (with the fast extension when `fast`), interested, and reads until
/// unchoked; returns the bytes read past the unchoke. Panics when squall closes first or
/// stays silent for 10 s.
pub fn join_unchoked(
    s: &mut TcpStream,
    info_hash: [u8; 20],
    peer_id: [u8; 20],
    fast: bool,
) -> Vec<u8> {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(&Handshake::new(info_hash, peer_id, false, fast).to_bytes())
        .unwrap();
    send_message(s, &Message::Interested);
    let mut buf = Vec::new();
    let mut handshaken = false;
    loop {
        if !handshaken {
            if let Ok(Some(_)) = parse_handshake(&buf) {
                buf.drain(..68);
                handshaken = true;
                continue;
            }
        } else if let Ok(Some((m, used))) = decode_frame(&buf, 1 << 20) {
            let unchoked = m == Message::Unchoke;
            buf.drain(..used);
            if unchoked {
                return buf;
            }
            continue;
        }
        let mut tmp = [0u8; 4096];
        let n = s.read(&mut tmp).expect("read before unchoke");
        assert!(n > 0, "closed before unchoke");
        buf.extend_from_slice(&tmp[..n]);
    }
}
