//! UDP tracker protocol (BEP 15): packet codec and a blocking client for control-plane threads.
//!
//! Owns: encoding connect / announce / scrape requests, parsing their responses (IPv4 and IPv6
//! peer formats, error action), the per-tracker connection-id cache (an id is reused for at
//! most `CONNECTION_ID_TTL`, as BEP 15 allows one minute), and retransmission
//! (`timeout * 2^n`, n <= retries). Must never: panic on any datagram, accept a response whose
//! transaction id or action does not match the request (those are ignored, as BEP 15 says),
//! wait without a deadline, or run on a shard.

use super::response::{clean_text, compact_peers_v4, compact_peers_v6, Announced, TrackerError};
use crate::metainfo::InfoHash;
use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs, UdpSocket};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// BEP 15 magic constant sent in the connect request.
pub const PROTOCOL_ID: u64 = 0x41727101980;
/// A connection id may be used for one minute after it was received (BEP 15).
pub const CONNECTION_ID_TTL: Duration = Duration::from_secs(60);
/// Most info-hashes in one scrape: 8 + 74 * 20 = 1488 bytes stays under a 1500-byte MTU.
pub const SCRAPE_HASHES_MAX: usize = 74;
/// Largest datagram read; anything longer is truncated by the kernel and parsed as such.
pub const DATAGRAM_BYTES_MAX: usize = 65_536;

const ACTION_CONNECT: u32 = 0;
const ACTION_ANNOUNCE: u32 = 1;
const ACTION_SCRAPE: u32 = 2;
const ACTION_ERROR: u32 = 3;

/// BEP 15 event codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    None = 0,
    Completed = 1,
    Started = 2,
    Stopped = 3,
}

/// What one announce says about us.
#[derive(Debug, Clone, Copy)]
pub struct AnnounceParams {
    pub info_hash: InfoHash,
    pub peer_id: [u8; 20],
    pub uploaded_bytes: u64,
    pub event: Event,
    pub key: u32,
    pub numwant: u32,
    pub port: u16,
}

pub fn encode_connect(transaction_id: u32) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&PROTOCOL_ID.to_be_bytes());
    b[8..12].copy_from_slice(&ACTION_CONNECT.to_be_bytes());
    b[12..].copy_from_slice(&transaction_id.to_be_bytes());
    b
}

pub fn encode_announce(connection_id: u64, transaction_id: u32, p: &AnnounceParams) -> [u8; 98] {
    let mut b = [0u8; 98];
    b[..8].copy_from_slice(&connection_id.to_be_bytes());
    b[8..12].copy_from_slice(&ACTION_ANNOUNCE.to_be_bytes());
    b[12..16].copy_from_slice(&transaction_id.to_be_bytes());
    b[16..36].copy_from_slice(&p.info_hash.0);
    b[36..56].copy_from_slice(&p.peer_id);
    // downloaded = 0, left = 0: we only seed.
    b[56..64].copy_from_slice(&0u64.to_be_bytes());
    b[64..72].copy_from_slice(&0u64.to_be_bytes());
    b[72..80].copy_from_slice(&p.uploaded_bytes.to_be_bytes());
    b[80..84].copy_from_slice(&(p.event as u32).to_be_bytes());
    // ip = 0: the tracker uses the sender's address.
    b[88..92].copy_from_slice(&p.key.to_be_bytes());
    b[92..96].copy_from_slice(&p.numwant.to_be_bytes());
    b[96..98].copy_from_slice(&p.port.to_be_bytes());
    b
}

pub fn encode_scrape(connection_id: u64, transaction_id: u32, hashes: &[InfoHash]) -> Vec<u8> {
    let mut b = Vec::with_capacity(16 + 20 * hashes.len().min(SCRAPE_HASHES_MAX));
    b.extend_from_slice(&connection_id.to_be_bytes());
    b.extend_from_slice(&ACTION_SCRAPE.to_be_bytes());
    b.extend_from_slice(&transaction_id.to_be_bytes());
    for h in hashes.iter().take(SCRAPE_HASHES_MAX) {
        b.extend_from_slice(&h.0);
    }
    b
}

/// One parsed datagram from a tracker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    Connect {
        transaction_id: u32,
        connection_id: u64,
    },
    Announce {
        transaction_id: u32,
        announced: Announced,
    },
    Scrape {
        transaction_id: u32,
        /// (seeders, completed, leechers) per requested hash, in request order.
        stats: Vec<ScrapeStats>,
    },
    Error {
        transaction_id: u32,
        message: String,
    },
}

impl Response {
    pub fn transaction_id(&self) -> u32 {
        match self {
            Response::Connect { transaction_id, .. }
            | Response::Announce { transaction_id, .. }
            | Response::Scrape { transaction_id, .. }
            | Response::Error { transaction_id, .. } => *transaction_id,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScrapeStats {
    pub seeders: u32,
    pub completed: u32,
    pub leechers: u32,
}

fn be_u32(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at + 4)?;
    Some(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

fn be_u64(b: &[u8], at: usize) -> Option<u64> {
    let s = b.get(at..at + 8)?;
    let mut a = [0u8; 8];
    a.copy_from_slice(s);
    Some(u64::from_be_bytes(a))
}

/// Parses a datagram. `ipv6` selects the peer format: BEP 15 sends 18-byte peers when the
/// request came over IPv6, 6-byte peers over IPv4.
pub fn parse_response(b: &[u8], ipv6: bool) -> Result<Response, TrackerError> {
    let short =
        || TrackerError::Malformed(format!("UDP response of {} bytes is too short", b.len()));
    let action = be_u32(b, 0).ok_or_else(short)?;
    let transaction_id = be_u32(b, 4).ok_or_else(short)?;
    match action {
        ACTION_CONNECT => Ok(Response::Connect {
            transaction_id,
            connection_id: be_u64(b, 8).ok_or_else(short)?,
        }),
        ACTION_ANNOUNCE => {
            let interval = be_u32(b, 8).ok_or_else(short)?;
            let leechers = be_u32(b, 12).ok_or_else(short)?;
            let seeders = be_u32(b, 16).ok_or_else(short)?;
            let mut announced = Announced {
                interval_secs: Some(interval as u64),
                complete: Some(seeders as u64),
                incomplete: Some(leechers as u64),
                ..Announced::default()
            };
            let peers = b.get(20..).unwrap_or_default();
            if ipv6 {
                compact_peers_v6(peers, &mut announced.peers)?;
            } else {
                compact_peers_v4(peers, &mut announced.peers)?;
            }
            Ok(Response::Announce {
                transaction_id,
                announced,
            })
        }
        ACTION_SCRAPE => {
            let body = b.get(8..).unwrap_or_default();
            if !body.len().is_multiple_of(12) {
                return Err(TrackerError::Malformed(format!(
                    "UDP scrape body of {} bytes is not a multiple of 12",
                    body.len()
                )));
            }
            let stats = body
                .chunks_exact(12)
                .take(SCRAPE_HASHES_MAX)
                .map(|c| ScrapeStats {
                    seeders: u32::from_be_bytes([c[0], c[1], c[2], c[3]]),
                    completed: u32::from_be_bytes([c[4], c[5], c[6], c[7]]),
                    leechers: u32::from_be_bytes([c[8], c[9], c[10], c[11]]),
                })
                .collect();
            Ok(Response::Scrape {
                transaction_id,
                stats,
            })
        }
        ACTION_ERROR => Ok(Response::Error {
            transaction_id,
            message: clean_text(b.get(8..).unwrap_or_default()),
        }),
        other => Err(TrackerError::Malformed(format!(
            "unknown UDP action {other}"
        ))),
    }
}

/// Host and port of a `udp://host:port/...` URL.
pub fn parse_udp_url(url: &str) -> Result<(String, u16), TrackerError> {
    let rest = url
        .strip_prefix("udp://")
        .ok_or_else(|| TrackerError::BadUrl(format!("{url}: not udp://")))?;
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, p) = v6
            .split_once("]:")
            .ok_or_else(|| TrackerError::BadUrl(format!("{url}: no port")))?;
        (h.to_string(), p)
    } else {
        let (h, p) = authority
            .rsplit_once(':')
            .ok_or_else(|| TrackerError::BadUrl(format!("{url}: no port")))?;
        (h.to_string(), p)
    };
    let port: u16 = port
        .parse()
        .map_err(|_| TrackerError::BadUrl(format!("{url}: bad port")))?;
    if host.is_empty() || port == 0 {
        return Err(TrackerError::BadUrl(format!("{url}: no host or port 0")));
    }
    Ok((host, port))
}

/// Blocking BEP 15 client; one per process, shared by the announce workers.
pub struct UdpClient {
    timeout_ms: u64,
    retries_max: u32,
    /// tracker address -> (connection id, when it was received). Bounded by the number of
    /// distinct UDP trackers in the catalog plus config.
    connection_ids: Mutex<HashMap<SocketAddr, (u64, Instant)>>,
}

impl UdpClient {
    pub fn new(timeout_ms: u64, retries_max: u32) -> UdpClient {
        UdpClient {
            timeout_ms: timeout_ms.max(1),
            retries_max,
            connection_ids: Mutex::new(HashMap::new()),
        }
    }

    fn resolve(url: &str) -> Result<SocketAddr, TrackerError> {
        let (host, port) = parse_udp_url(url)?;
        (host.as_str(), port)
            .to_socket_addrs()
            .map_err(|e| TrackerError::Network(format!("cannot resolve {host}: {e}")))?
            .next()
            .ok_or_else(|| TrackerError::Network(format!("{host} has no address")))
    }

    fn socket_for(addr: &SocketAddr) -> Result<UdpSocket, TrackerError> {
        let bind: SocketAddr = if addr.is_ipv6() {
            SocketAddr::from(([0u16; 8], 0))
        } else {
            SocketAddr::from(([0u8; 4], 0))
        };
        let s = UdpSocket::bind(bind).map_err(|e| TrackerError::Network(e.to_string()))?;
        s.connect(addr)
            .map_err(|e| TrackerError::Network(e.to_string()))?;
        Ok(s)
    }

    /// Sends `request` (rebuilt per try, since it may embed the connection id) and waits for
    /// a response with `transaction_id`, retransmitting after `timeout * 2^n`.
    fn exchange(
        &self,
        socket: &UdpSocket,
        ipv6: bool,
        transaction_id: u32,
        request: &[u8],
    ) -> Result<Response, TrackerError> {
        let mut buf = vec![0u8; DATAGRAM_BYTES_MAX];
        for attempt in 0..=self.retries_max {
            socket
                .send(request)
                .map_err(|e| TrackerError::Network(e.to_string()))?;
            let wait = Duration::from_millis(self.timeout_ms.saturating_mul(1 << attempt));
            let deadline = Instant::now() + wait;
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                socket
                    .set_read_timeout(Some(left))
                    .map_err(|e| TrackerError::Network(e.to_string()))?;
                match socket.recv(&mut buf) {
                    Ok(n) => {
                        // A stray or late datagram (other transaction, garbage) is ignored,
                        // not fatal: BEP 15 says to discard it and keep waiting.
                        match parse_response(&buf[..n], ipv6) {
                            Ok(r) if r.transaction_id() == transaction_id => return Ok(r),
                            _ => continue,
                        }
                    }
                    Err(e)
                        if e.kind() == std::io::ErrorKind::WouldBlock
                            || e.kind() == std::io::ErrorKind::TimedOut =>
                    {
                        break
                    }
                    // ICMP port unreachable shows up as ECONNREFUSED on a connected socket.
                    Err(e) => return Err(TrackerError::Network(e.to_string())),
                }
            }
        }
        Err(TrackerError::Timeout)
    }

    fn connection_id(&self, socket: &UdpSocket, addr: SocketAddr) -> Result<u64, TrackerError> {
        if let Ok(cache) = self.connection_ids.lock() {
            if let Some((id, at)) = cache.get(&addr) {
                if at.elapsed() < CONNECTION_ID_TTL {
                    return Ok(*id);
                }
            }
        }
        let tid: u32 = rand::random();
        match self.exchange(socket, addr.is_ipv6(), tid, &encode_connect(tid))? {
            Response::Connect { connection_id, .. } => {
                if let Ok(mut cache) = self.connection_ids.lock() {
                    cache.insert(addr, (connection_id, Instant::now()));
                }
                Ok(connection_id)
            }
            Response::Error { message, .. } => Err(TrackerError::Refused(message)),
            other => Err(TrackerError::Malformed(format!(
                "expected a connect response, got {other:?}"
            ))),
        }
    }

    fn forget(&self, addr: &SocketAddr) {
        if let Ok(mut cache) = self.connection_ids.lock() {
            cache.remove(addr);
        }
    }

    pub fn announce(&self, url: &str, params: &AnnounceParams) -> Result<Announced, TrackerError> {
        let addr = Self::resolve(url)?;
        let socket = Self::socket_for(&addr)?;
        let connection_id = self.connection_id(&socket, addr)?;
        let tid: u32 = rand::random();
        let request = encode_announce(connection_id, tid, params);
        match self.exchange(&socket, addr.is_ipv6(), tid, &request) {
            Ok(Response::Announce { announced, .. }) => Ok(announced),
            Ok(Response::Error { message, .. }) => {
                // The id may have expired on the tracker's side: get a fresh one next time.
                self.forget(&addr);
                Err(TrackerError::Refused(message))
            }
            Ok(other) => Err(TrackerError::Malformed(format!(
                "expected an announce response, got {other:?}"
            ))),
            Err(e) => {
                self.forget(&addr);
                Err(e)
            }
        }
    }

    /// Scrapes up to `SCRAPE_HASHES_MAX` hashes per request; longer lists go in batches.
    pub fn scrape(&self, url: &str, hashes: &[InfoHash]) -> Result<Vec<ScrapeStats>, TrackerError> {
        let addr = Self::resolve(url)?;
        let socket = Self::socket_for(&addr)?;
        let mut out = Vec::with_capacity(hashes.len());
        for batch in hashes.chunks(SCRAPE_HASHES_MAX) {
            let connection_id = self.connection_id(&socket, addr)?;
            let tid: u32 = rand::random();
            let request = encode_scrape(connection_id, tid, batch);
            match self.exchange(&socket, addr.is_ipv6(), tid, &request) {
                Ok(Response::Scrape { stats, .. }) if stats.len() == batch.len() => {
                    out.extend(stats)
                }
                Ok(Response::Scrape { stats, .. }) => {
                    return Err(TrackerError::Malformed(format!(
                        "scrape of {} hashes answered {}",
                        batch.len(),
                        stats.len()
                    )))
                }
                Ok(Response::Error { message, .. }) => {
                    self.forget(&addr);
                    return Err(TrackerError::Refused(message));
                }
                Ok(other) => {
                    return Err(TrackerError::Malformed(format!(
                        "expected a scrape response, got {other:?}"
                    )))
                }
                Err(e) => {
                    self.forget(&addr);
                    return Err(e);
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn announce_request_layout() {
        // Offsets follow BEP 15's table exactly (98 bytes, big-endian).
        let p = AnnounceParams {
            info_hash: InfoHash([7; 20]),
            peer_id: [9; 20],
            uploaded_bytes: 5,
            event: Event::Started,
            key: 0xdead_beef,
            numwant: 50,
            port: 6881,
        };
        let b = encode_announce(0x1122, 42, &p);
        assert_eq!(be_u64(&b, 0), Some(0x1122));
        assert_eq!(be_u32(&b, 8), Some(1));
        assert_eq!(be_u32(&b, 12), Some(42));
        assert_eq!(&b[16..36], &[7; 20]);
        assert_eq!(be_u64(&b, 72), Some(5));
        assert_eq!(be_u32(&b, 80), Some(2));
        assert_eq!(be_u32(&b, 88), Some(0xdead_beef));
        assert_eq!(&b[96..98], &6881u16.to_be_bytes());
        assert_eq!(
            encode_scrape(1, 2, &[InfoHash([0; 20]); 100]).len(),
            16 + 74 * 20
        );
    }

    #[test]
    fn responses_v4_v6_scrape_error() {
        // Both peer formats, scrape triples and error text parse; short input is an error.
        let mut a = vec![0, 0, 0, 1, 0, 0, 0, 9, 0, 0, 0, 60, 0, 0, 0, 2, 0, 0, 0, 1];
        a.extend_from_slice(&[127, 0, 0, 1, 0, 80]);
        match parse_response(&a, false).unwrap() {
            Response::Announce {
                transaction_id,
                announced,
            } => {
                assert_eq!(transaction_id, 9);
                assert_eq!(announced.interval_secs, Some(60));
                assert_eq!(
                    announced.peers,
                    vec!["127.0.0.1:80".parse::<SocketAddr>().unwrap()]
                );
            }
            other => panic!("{other:?}"),
        }
        let mut a6 = a[..20].to_vec();
        a6.extend_from_slice(&[0u8; 15]);
        a6.extend_from_slice(&[1, 0, 81]);
        match parse_response(&a6, true).unwrap() {
            Response::Announce { announced, .. } => {
                assert_eq!(
                    announced.peers,
                    vec!["[::1]:81".parse::<SocketAddr>().unwrap()]
                )
            }
            other => panic!("{other:?}"),
        }
        assert!(parse_response(&a, true).is_err());
        let s = [0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 4];
        assert_eq!(
            parse_response(&s, false).unwrap(),
            Response::Scrape {
                transaction_id: 3,
                stats: vec![ScrapeStats {
                    seeders: 1,
                    completed: 0,
                    leechers: 4
                }]
            }
        );
        let e = [0, 0, 0, 3, 0, 0, 0, 3, b'n', b'o'];
        assert_eq!(
            parse_response(&e, false).unwrap(),
            Response::Error {
                transaction_id: 3,
                message: "no".into()
            }
        );
        assert!(parse_response(&[0, 0, 0], false).is_err());
        assert!(parse_response(&[0, 0, 0, 9, 0, 0, 0, 0], false).is_err());
    }

    #[test]
    fn udp_urls() {
        // Host and port come out of the usual URL shapes; junk is a typed error.
        assert_eq!(
            parse_udp_url("udp://127.0.0.1:6969/announce").unwrap(),
            ("127.0.0.1".into(), 6969)
        );
        assert_eq!(parse_udp_url("udp://[::1]:80").unwrap(), ("::1".into(), 80));
        assert!(parse_udp_url("udp://host").is_err());
        assert!(parse_udp_url("http://x:1").is_err());
        assert!(parse_udp_url("udp://x:0/").is_err());
    }

    #[test]
    fn silent_tracker_times_out_after_bounded_retransmissions() {
        // A tracker that never answers costs timeout * (1 + 2 + ...), then Timeout: no hang.
        let quiet = UdpSocket::bind("127.0.0.1:0").unwrap();
        let url = format!("udp://{}/announce", quiet.local_addr().unwrap());
        let client = UdpClient::new(20, 2);
        let started = Instant::now();
        let p = AnnounceParams {
            info_hash: InfoHash([1; 20]),
            peer_id: [2; 20],
            uploaded_bytes: 0,
            event: Event::Started,
            key: 1,
            numwant: 1,
            port: 1,
        };
        assert_eq!(client.announce(&url, &p), Err(TrackerError::Timeout));
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(130) && took < Duration::from_secs(5),
            "{took:?}"
        );
        let mut buf = [0u8; 64];
        quiet
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let mut connects = 0;
        while quiet.recv(&mut buf).is_ok() {
            connects += 1;
        }
        assert_eq!(connects, 3, "one try and two retransmissions");
    }

    proptest! {
        #[test]
        fn arbitrary_datagrams_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300),
                                           ipv6 in any::<bool>()) {
            // Whatever arrives on the socket, parsing returns a value or a typed error.
            let _ = parse_response(&bytes, ipv6);
        }
    }
}
