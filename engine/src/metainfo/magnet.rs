//! Magnet links (BEP 9): `magnet:?xt=urn:btih:<hex|base32>&dn=<name>&tr=<url>&x.pe=<addr>`.
//!
//! Owns: parsing and formatting magnet URIs. Must never: panic on any input.

use super::torrent::InfoHash;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Magnet {
    pub info_hash: InfoHash,
    pub display_name: Option<String>,
    pub trackers: Vec<String>,
    /// `x.pe` peer addresses (host:port) to dial directly.
    pub peers: Vec<String>,
}

use super::torrent::{MetainfoError, Torrent};

impl Magnet {
    /// Parses a magnet URI. The info-hash (`xt=urn:btih:`) may be 40 hex digits or 32 base32
    /// characters (RFC 4648, either case). Unknown parameters are ignored, as clients do.
    pub fn parse(uri: &str) -> Result<Magnet, MetainfoError> {
        let query = uri.strip_prefix("magnet:?").ok_or_else(|| {
            MetainfoError::Invalid(format!(
                "not a magnet link (must start with `magnet:?`): {uri:?}"
            ))
        })?;
        let mut info_hash = None;
        let mut display_name = None;
        let mut trackers = Vec::new();
        let mut peers = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, raw_value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = percent_decode(raw_value)?;
            match key {
                "xt" => {
                    if let Some(h) = value.strip_prefix("urn:btih:") {
                        info_hash = Some(decode_btih(h)?);
                    }
                }
                "dn" => display_name = Some(value),
                "tr" => trackers.push(value),
                "x.pe" => peers.push(value),
                _ => {}
            }
        }
        let info_hash = info_hash.ok_or_else(|| {
            MetainfoError::Invalid("magnet link has no `xt=urn:btih:` info-hash".into())
        })?;
        Ok(Magnet {
            info_hash,
            display_name,
            trackers,
            peers,
        })
    }

    /// Formats as `magnet:?xt=urn:btih:<hex>&dn=..&tr=..&x.pe=..`, percent-encoding values.
    pub fn to_uri(&self) -> String {
        let mut uri = format!("magnet:?xt=urn:btih:{}", self.info_hash.to_hex());
        if let Some(dn) = &self.display_name {
            uri.push_str("&dn=");
            uri.push_str(&percent_encode(dn));
        }
        for tr in &self.trackers {
            uri.push_str("&tr=");
            uri.push_str(&percent_encode(tr));
        }
        for pe in &self.peers {
            uri.push_str("&x.pe=");
            uri.push_str(&percent_encode(pe));
        }
        uri
    }
}

/// A magnet link for `t`: its name, every tracker (tier order), and `peers` as `x.pe`.
pub fn magnet_for(t: &Torrent, peers: &[String]) -> String {
    let uri = Magnet {
        info_hash: t.info_hash,
        display_name: Some(t.name.clone()),
        trackers: t.trackers.iter().flatten().cloned().collect(),
        peers: peers.to_vec(),
    }
    .to_uri();
    with_v2_topic(uri, &t.info_hash, t.info_hash_v2, t.has_v1())
}

/// BEP 52: a v2 info-hash travels as a SHA-256 multihash (0x12, length 0x20). A hybrid's
/// magnet carries both `xt`s; a v2-only torrent's only the btmh one (its 20-byte `info_hash`
/// is the truncated v2 hash, which no client accepts as a btih).
pub fn with_v2_topic(
    uri: String,
    info_hash: &InfoHash,
    v2: Option<[u8; 32]>,
    has_v1: bool,
) -> String {
    let Some(v2) = v2 else {
        return uri;
    };
    let btmh = format!("xt=urn:btmh:1220{}", hex::encode(v2));
    let btih = format!("xt=urn:btih:{}", info_hash.to_hex());
    if has_v1 {
        uri.replacen(&btih, &format!("{btih}&{btmh}"), 1)
    } else {
        uri.replacen(&btih, &btmh, 1)
    }
}

fn decode_btih(s: &str) -> Result<InfoHash, MetainfoError> {
    let bad = || {
        MetainfoError::Invalid(format!(
            "magnet info-hash {s:?} is neither 40 hex digits nor 32 base32 characters"
        ))
    };
    match s.len() {
        40 => InfoHash::from_hex(&s.to_ascii_lowercase()).ok_or_else(bad),
        32 => {
            let mut out = [0u8; 20];
            let mut acc: u64 = 0;
            let mut bits = 0u32;
            let mut n = 0usize;
            for c in s.bytes() {
                let v = match c.to_ascii_uppercase() {
                    c @ b'A'..=b'Z' => c - b'A',
                    c @ b'2'..=b'7' => c - b'2' + 26,
                    _ => return Err(bad()),
                };
                acc = (acc << 5) | u64::from(v);
                bits += 5;
                if bits >= 8 {
                    bits -= 8;
                    // 32 x 5 bits = 160 bits = exactly 20 bytes, so n never passes 19.
                    *out.get_mut(n).ok_or_else(bad)? = (acc >> bits) as u8;
                    n += 1;
                }
            }
            Ok(InfoHash(out))
        }
        _ => Err(bad()),
    }
}

fn percent_decode(s: &str) -> Result<String, MetainfoError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| {
                        MetainfoError::Invalid(format!("bad percent escape in magnet value {s:?}"))
                    })?;
                out.push(hex);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out)
        .map_err(|_| MetainfoError::Invalid(format!("magnet value {s:?} is not UTF-8")))
}

/// Percent-encodes everything but RFC 3986 unreserved characters (also used by the admin
/// API's clients for query values).
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "c12fe1c06bba254a9dc9f519b335aa7c1367a88a";

    #[test]
    fn parses_hex_and_base32_and_params() {
        // Proves: hex and base32 btih decode to the same hash; dn/tr/x.pe are percent-decoded.
        let hex = Magnet::parse(&format!(
            "magnet:?xt=urn:btih:{}&dn=My+File%20x&tr=http%3A%2F%2Ft%2Fa&tr=udp://u:1&x.pe=127.0.0.1:6881&foo=bar",
            HEX.to_uppercase()
        ))
        .unwrap();
        assert_eq!(hex.info_hash.to_hex(), HEX);
        assert_eq!(hex.display_name.as_deref(), Some("My File x"));
        assert_eq!(
            hex.trackers,
            vec!["http://t/a".to_string(), "udp://u:1".into()]
        );
        assert_eq!(hex.peers, vec!["127.0.0.1:6881".to_string()]);
        let b32 = Magnet::parse("magnet:?xt=urn:btih:YEX6DQDLXISUVHOJ6UM3GNNKPQJWPKEK").unwrap();
        assert_eq!(b32.info_hash.to_hex(), HEX);
    }

    #[test]
    fn refuses_malformed() {
        // Proves: wrong scheme, missing xt, bad hash lengths/alphabets and bad escapes are errors.
        for bad in [
            "http://x",
            "magnet:?dn=x",
            "magnet:?xt=urn:btih:abc",
            "magnet:?xt=urn:btih:1111111111111111111111111111111111111111&dn=%zz",
            "magnet:?xt=urn:btih:11111111111111111111111111111111",
            "magnet:?xt=urn:btih:g12fe1c06bba254a9dc9f519b335aa7c1367a88a",
        ] {
            assert!(Magnet::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn to_uri_round_trips() {
        // Proves: to_uri output parses back to the same Magnet.
        let m = Magnet {
            info_hash: InfoHash::from_hex(HEX).unwrap(),
            display_name: Some("a b&c=é".into()),
            trackers: vec!["http://t:80/announce?x=1".into()],
            peers: vec!["[::1]:6881".into()],
        };
        assert_eq!(Magnet::parse(&m.to_uri()).unwrap(), m);
    }

    #[test]
    fn magnet_for_a_torrent_names_it_and_lists_trackers_and_peers() {
        // Proves: magnet_for carries the info-hash, name, every tracker of every tier, and peers.
        let bytes = crate::metainfo::create::build_torrent_bytes(
            "my file",
            &[(vec![], 3)],
            16384,
            &[0; 20],
            &crate::metainfo::create::CreateOptions {
                trackers: vec![vec!["http://a/".into()], vec!["http://b/".into()]],
                ..Default::default()
            },
        );
        let t = crate::metainfo::torrent::parse(&bytes).unwrap();
        let m = Magnet::parse(&magnet_for(&t, &["127.0.0.1:1".into()])).unwrap();
        assert_eq!(m.info_hash, t.info_hash);
        assert_eq!(m.display_name.as_deref(), Some("my file"));
        assert_eq!(
            m.trackers,
            vec!["http://a/".to_string(), "http://b/".into()]
        );
        assert_eq!(m.peers, vec!["127.0.0.1:1".to_string()]);
    }

    proptest::proptest! {
        #[test]
        fn never_panics(s in ".{0,200}") {
            // Proves: parse is total over arbitrary strings.
            let _ = Magnet::parse(&s);
            let _ = Magnet::parse(&format!("magnet:?{s}"));
        }
    }
}
