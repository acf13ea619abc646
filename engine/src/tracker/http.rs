//! HTTP(S) tracker announces (BEP 3, compact BEP 23, IPv6 peers BEP 7) over `ureq` + rustls.
//!
//! Owns: building the announce URL (binary info-hash and peer id percent-encoded by hand,
//! since they are not text) and one blocking request with a whole-request timeout and a
//! bounded body. Must never: read an unbounded body, follow redirects forever (ureq stops at
//! 5), or run on a shard: announce worker threads call it.

use super::response::{parse_http_announce, Announced, TrackerError};
use super::udp::{AnnounceParams, Event};
use std::io::Read;
use std::time::Duration;

/// Percent-encodes every byte that is not unreserved (RFC 3986).
pub fn percent_encode(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 3);
    for &b in bytes {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            s.push(b as char);
        } else {
            s.push_str(&format!("%{b:02X}"));
        }
    }
    s
}

/// The full announce URL; a tracker URL that already has a query (a passkey) keeps it.
pub fn announce_url(base: &str, p: &AnnounceParams) -> String {
    let sep = if base.contains('?') { '&' } else { '?' };
    let event = match p.event {
        Event::Started => "&event=started",
        Event::Stopped => "&event=stopped",
        Event::Completed => "&event=completed",
        // A periodic announce carries no event (BEP 3).
        Event::None => "",
    };
    format!(
        "{base}{sep}info_hash={}&peer_id={}&port={}&uploaded={}&downloaded=0&left=0&corrupt=0&key={:08x}&numwant={}&compact=1&no_peer_id=1{event}",
        percent_encode(&p.info_hash.0),
        percent_encode(&p.peer_id),
        p.port,
        p.uploaded_bytes,
        p.key,
        p.numwant,
    )
}

pub struct HttpClient {
    agent: ureq::Agent,
    response_bytes_max: usize,
}

impl HttpClient {
    pub fn new(timeout_secs: u64, response_bytes_max: usize) -> HttpClient {
        let agent = ureq::AgentBuilder::new()
            .timeout(Duration::from_secs(timeout_secs.max(1)))
            .user_agent(concat!("squall/", env!("CARGO_PKG_VERSION")))
            .build();
        HttpClient {
            agent,
            response_bytes_max,
        }
    }

    pub fn announce(&self, base: &str, p: &AnnounceParams) -> Result<Announced, TrackerError> {
        let url = announce_url(base, p);
        let response = match self.agent.get(&url).call() {
            Ok(r) => r,
            // A 4xx/5xx may still carry a bencoded failure reason: prefer it when it parses.
            Err(ureq::Error::Status(code, r)) => {
                return match self.read_body(r) {
                    Ok(body) => match parse_http_announce(&body) {
                        Err(TrackerError::Refused(reason)) => Err(TrackerError::Refused(reason)),
                        _ => Err(TrackerError::HttpStatus(code)),
                    },
                    Err(_) => Err(TrackerError::HttpStatus(code)),
                };
            }
            Err(ureq::Error::Transport(t)) => {
                return Err(match t.kind() {
                    ureq::ErrorKind::InvalidUrl | ureq::ErrorKind::UnknownScheme => {
                        TrackerError::BadUrl(t.to_string())
                    }
                    ureq::ErrorKind::Io
                        if t.to_string().contains("timed out")
                            || t.to_string().contains("WouldBlock") =>
                    {
                        TrackerError::Timeout
                    }
                    _ => TrackerError::Network(t.to_string()),
                })
            }
        };
        let body = self.read_body(response)?;
        parse_http_announce(&body)
    }

    fn read_body(&self, r: ureq::Response) -> Result<Vec<u8>, TrackerError> {
        let mut body = Vec::new();
        r.into_reader()
            .take(self.response_bytes_max as u64 + 1)
            .read_to_end(&mut body)
            .map_err(|e| TrackerError::Network(format!("reading the response: {e}")))?;
        if body.len() > self.response_bytes_max {
            return Err(TrackerError::Malformed(format!(
                "response longer than {} bytes",
                self.response_bytes_max
            )));
        }
        Ok(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metainfo::InfoHash;
    use std::io::Write;

    fn params(event: Event) -> AnnounceParams {
        AnnounceParams {
            info_hash: InfoHash([0xab; 20]),
            peer_id: *b"-SQ0100-abcdefghijkl",
            uploaded_bytes: 12,
            event,
            key: 0x1234,
            numwant: 50,
            port: 6881,
        }
    }

    #[test]
    fn url_encodes_binary_hash_and_keeps_passkey() {
        // Binary bytes are %XX; a passkey query survives; periodic sends no event.
        let u = announce_url("http://t/announce?pk=1", &params(Event::Started));
        assert!(
            u.starts_with("http://t/announce?pk=1&info_hash=%AB%AB"),
            "{u}"
        );
        assert!(u.contains("&left=0&") && u.contains("&compact=1") && u.contains("&port=6881"));
        assert!(u.contains("&uploaded=12&") && u.contains("key=00001234"));
        assert!(u.ends_with("&event=started"));
        assert!(!announce_url("http://t/a", &params(Event::None)).contains("event="));
    }

    #[test]
    fn http_announce_against_a_tiny_server() {
        // A real request over loopback: the response parses; a failure reason is Refused;
        // a closed port is a network error (a tracker fault).
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            for body in [
                &b"d8:intervali77e5:peers6:\x7f\x00\x00\x01\x00\x50e"[..],
                &b"d14:failure reason4:nopee"[..],
            ] {
                let (mut s, _) = l.accept().unwrap();
                let mut buf = [0u8; 4096];
                let _ = std::io::Read::read(&mut s, &mut buf);
                let head = format!("HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
                s.write_all(head.as_bytes()).unwrap();
                s.write_all(body).unwrap();
            }
        });
        let c = HttpClient::new(5, 1 << 20);
        let url = format!("http://127.0.0.1:{port}/announce");
        let a = c.announce(&url, &params(Event::Started)).unwrap();
        assert_eq!(a.interval_secs, Some(77));
        assert_eq!(a.peers.len(), 1);
        assert_eq!(
            c.announce(&url, &params(Event::None)),
            Err(TrackerError::Refused("nope".into()))
        );
        server.join().unwrap();
        let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let dead_port = dead.local_addr().unwrap().port();
        drop(dead);
        let e = c
            .announce(
                &format!("http://127.0.0.1:{dead_port}/a"),
                &params(Event::None),
            )
            .unwrap_err();
        assert!(e.is_tracker_fault(), "{e}");
    }
}
