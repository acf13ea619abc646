//! Tracker announce results, and the HTTP (BEP 3 / BEP 23 / BEP 7) response body parser.
//!
//! Owns: the typed outcome of one announce (`Announced`), the typed errors every tracker
//! client returns (`TrackerError`), and turning an untrusted bencoded body into them.
//! Must never: panic on any input (a proptest feeds it arbitrary bytes), trust a length or
//! count the tracker sends, or do I/O: bytes in, values out.

use crate::metainfo::bencode::{self, DecodeLimits, Node};
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

/// Peers kept from one response; a tracker sending more is truncated, not trusted.
pub const PEERS_PER_RESPONSE_MAX: usize = 1_000;
/// Longest `failure reason` / `warning message` kept (they end up in logs and /stats).
pub const REASON_LEN_MAX: usize = 256;

/// What a successful announce told us.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Announced {
    /// Seconds until the next regular announce, as the tracker asked (not yet clamped).
    pub interval_secs: Option<u64>,
    /// Seconds the tracker asks us never to announce faster than.
    pub min_interval_secs: Option<u64>,
    pub warning: Option<String>,
    /// Seeders and leechers the tracker knows of, when it says.
    pub complete: Option<u64>,
    pub incomplete: Option<u64>,
    pub peers: Vec<SocketAddr>,
}

/// Why an announce did not succeed. `Refused` is the tracker working and saying no (for this
/// torrent); every other kind means the tracker itself is failing, so it backs off for every
/// torrent on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrackerError {
    /// The tracker answered `failure reason` (BEP 3) or a UDP error action (BEP 15).
    Refused(String),
    /// Could not reach it: refused, reset, DNS, TLS.
    Network(String),
    /// No answer in time (UDP: after every retransmission).
    Timeout,
    /// An answer that is not a valid response.
    Malformed(String),
    /// HTTP status other than 200 without a bencoded failure reason.
    HttpStatus(u16),
    /// A URL we cannot announce to (scheme, host, port).
    BadUrl(String),
}

impl TrackerError {
    /// True when the tracker itself is at fault (shared backoff), false when it refused only
    /// this torrent.
    pub fn is_tracker_fault(&self) -> bool {
        !matches!(self, TrackerError::Refused(_))
    }
}

impl fmt::Display for TrackerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TrackerError::Refused(r) => write!(f, "failure reason: {r}"),
            TrackerError::Network(e) => write!(f, "network error: {e}"),
            TrackerError::Timeout => write!(f, "timed out"),
            TrackerError::Malformed(e) => write!(f, "malformed response: {e}"),
            TrackerError::HttpStatus(s) => write!(f, "HTTP status {s}"),
            TrackerError::BadUrl(e) => write!(f, "bad tracker URL: {e}"),
        }
    }
}

impl std::error::Error for TrackerError {}

/// Text from a tracker, cut to `REASON_LEN_MAX` bytes on a char boundary, lossy UTF-8.
pub fn clean_text(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut end = text.len().min(REASON_LEN_MAX);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end]
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// Compact IPv4 peers (BEP 23): 6 bytes each; a trailing partial entry is an error.
pub fn compact_peers_v4(bytes: &[u8], out: &mut Vec<SocketAddr>) -> Result<(), TrackerError> {
    if !bytes.len().is_multiple_of(6) {
        return Err(TrackerError::Malformed(format!(
            "compact peers: {} bytes is not a multiple of 6",
            bytes.len()
        )));
    }
    for c in bytes.chunks_exact(6) {
        if out.len() >= PEERS_PER_RESPONSE_MAX {
            break;
        }
        let ip = Ipv4Addr::new(c[0], c[1], c[2], c[3]);
        let port = u16::from_be_bytes([c[4], c[5]]);
        out.push(SocketAddr::V4(SocketAddrV4::new(ip, port)));
    }
    Ok(())
}

/// Compact IPv6 peers (BEP 7): 18 bytes each.
pub fn compact_peers_v6(bytes: &[u8], out: &mut Vec<SocketAddr>) -> Result<(), TrackerError> {
    if !bytes.len().is_multiple_of(18) {
        return Err(TrackerError::Malformed(format!(
            "compact peers6: {} bytes is not a multiple of 18",
            bytes.len()
        )));
    }
    for c in bytes.chunks_exact(18) {
        if out.len() >= PEERS_PER_RESPONSE_MAX {
            break;
        }
        let mut ip = [0u8; 16];
        ip.copy_from_slice(&c[..16]);
        let port = u16::from_be_bytes([c[16], c[17]]);
        out.push(SocketAddr::V6(SocketAddrV6::new(
            Ipv6Addr::from(ip),
            port,
            0,
            0,
        )));
    }
    Ok(())
}

fn non_negative(node: Option<&Node<'_>>, key: &str) -> Result<Option<u64>, TrackerError> {
    match node {
        None => Ok(None),
        Some(n) => match n.as_int() {
            Some(v) if v >= 0 => Ok(Some(v as u64)),
            _ => Err(TrackerError::Malformed(format!(
                "{key} is not a non-negative integer"
            ))),
        },
    }
}

/// Parses an HTTP announce response body. A `failure reason` wins over everything else.
pub fn parse_http_announce(body: &[u8]) -> Result<Announced, TrackerError> {
    let limits = DecodeLimits {
        depth_max: 8,
        input_bytes_max: bencode::INPUT_BYTES_MAX_DEFAULT,
        // A non-compact peer list of a few hundred dicts is far below this.
        values_max: 65_536,
    };
    let root =
        bencode::decode_with(body, limits).map_err(|e| TrackerError::Malformed(e.to_string()))?;
    if root.as_dict().is_none() {
        return Err(TrackerError::Malformed(format!(
            "expected a dictionary, got a {}",
            root.type_name()
        )));
    }
    if let Some(reason) = root.get("failure reason") {
        let text = reason.as_bytes().map(clean_text).unwrap_or_default();
        return Err(TrackerError::Refused(if text.is_empty() {
            "(no reason given)".into()
        } else {
            text
        }));
    }
    let mut out = Announced {
        interval_secs: non_negative(root.get("interval"), "interval")?,
        min_interval_secs: non_negative(root.get("min interval"), "min interval")?,
        warning: root
            .get("warning message")
            .and_then(|w| w.as_bytes())
            .map(clean_text),
        complete: non_negative(root.get("complete"), "complete")?,
        incomplete: non_negative(root.get("incomplete"), "incomplete")?,
        peers: Vec::new(),
    };
    match root.get("peers") {
        None => {}
        Some(p) => {
            if let Some(bytes) = p.as_bytes() {
                compact_peers_v4(bytes, &mut out.peers)?;
            } else if let Some(list) = p.as_list() {
                // Non-compact (BEP 3): a list of {ip, port} dictionaries. Bad entries are
                // skipped, not fatal: the rest of the answer is still good.
                for entry in list {
                    if out.peers.len() >= PEERS_PER_RESPONSE_MAX {
                        break;
                    }
                    let ip = entry
                        .get("ip")
                        .and_then(|ip| ip.as_str())
                        .and_then(|s| s.parse::<std::net::IpAddr>().ok());
                    let port = entry
                        .get("port")
                        .and_then(|p| p.as_int())
                        .and_then(|p| u16::try_from(p).ok());
                    if let (Some(ip), Some(port)) = (ip, port) {
                        out.peers.push(SocketAddr::new(ip, port));
                    }
                }
            } else {
                return Err(TrackerError::Malformed(
                    "peers is neither a string nor a list".into(),
                ));
            }
        }
    }
    if let Some(p6) = root.get("peers6") {
        match p6.as_bytes() {
            Some(bytes) => compact_peers_v6(bytes, &mut out.peers)?,
            None => return Err(TrackerError::Malformed("peers6 is not a string".into())),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn compact_v4_and_v6_peers_with_intervals() {
        // A typical opentracker answer: interval, min interval, compact peers and peers6.
        let mut body =
            b"d8:completei1e10:incompletei2e8:intervali1800e12:min intervali900e5:peers6:".to_vec();
        body.extend_from_slice(&[127, 0, 0, 1, 0x1a, 0xe1]);
        body.extend_from_slice(b"6:peers618:");
        let mut v6 = [0u8; 18];
        v6[15] = 1;
        v6[16] = 0x1a;
        v6[17] = 0xe2;
        body.extend_from_slice(&v6);
        body.push(b'e');
        let a = parse_http_announce(&body).unwrap();
        assert_eq!(a.interval_secs, Some(1800));
        assert_eq!(a.min_interval_secs, Some(900));
        assert_eq!(a.complete, Some(1));
        assert_eq!(a.incomplete, Some(2));
        assert_eq!(
            a.peers,
            vec![
                "127.0.0.1:6881".parse::<SocketAddr>().unwrap(),
                "[::1]:6882".parse().unwrap()
            ]
        );
    }

    #[test]
    fn failure_reason_and_warning() {
        // `failure reason` is a refusal of this torrent, not a tracker fault; warnings pass.
        let e = parse_http_announce(b"d14:failure reason8:not heree").unwrap_err();
        assert_eq!(e, TrackerError::Refused("not here".into()));
        assert!(!e.is_tracker_fault());
        let a = parse_http_announce(b"d8:intervali60e15:warning message4:slowe").unwrap();
        assert_eq!(a.warning.as_deref(), Some("slow"));
    }

    #[test]
    fn non_compact_peers_and_bad_shapes() {
        // BEP 3 dictionary peers parse; broken shapes are typed errors, never panics.
        let a = parse_http_announce(b"d5:peersld2:ip9:127.0.0.14:porti80eed2:ip3:bad4:porti1eeee")
            .unwrap();
        assert_eq!(a.peers, vec!["127.0.0.1:80".parse::<SocketAddr>().unwrap()]);
        assert!(parse_http_announce(b"d5:peers5:abcdee").is_err());
        assert!(parse_http_announce(b"le").is_err());
        assert!(parse_http_announce(b"<html>").is_err());
        assert!(parse_http_announce(b"d8:intervali-5ee").is_err());
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            // Whatever a tracker sends, parsing returns a value or a typed error.
            let _ = parse_http_announce(&bytes);
        }

        #[test]
        fn arbitrary_dicts_never_panic(peers in proptest::collection::vec(any::<u8>(), 0..64),
                                       interval in any::<i64>()) {
            // Well-formed bencode with hostile values is also handled.
            let mut body = format!("d8:intervali{interval}e5:peers{}:", peers.len()).into_bytes();
            body.extend_from_slice(&peers);
            body.push(b'e');
            let _ = parse_http_announce(&body);
        }
    }
}
