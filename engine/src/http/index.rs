//! URL paths to catalog files: percent-decoding (RFC 3986) and the index built from a catalog
//! snapshot.
//!
//! Owns: the BEP 19 URL layout. A single-file torrent is `/<name>`; a multi-file torrent's
//! files are `/<name>/<path...>`; every file is also `/<info-hash-hex>/` followed by the same
//! path (40 lowercase hex digits of the wire info-hash), which always names exactly one
//! torrent. Where several torrents share a name, the plain `/<name>...` URLs belong to the
//! one with the lowest info-hash; the others are reachable through their info-hash prefix
//! only (`squall info` and the printed magnets give the full URL). BEP 47 pad files are not
//! URLs. Must never: build a filesystem path from a URL (a request only looks up this index),
//! accept a decoded segment that is empty, `.`, `..`, or holds `/`, `\` or NUL, or accept a
//! path whose decoded bytes are not UTF-8 (which refuses overlong encodings).

use crate::catalog::{Catalog, CatalogTorrent};
use std::collections::HashMap;
use std::sync::Arc;

/// Why a URL path names no file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// 400: bad percent-encoding, a forbidden segment, or bytes that are not UTF-8.
    Malformed,
    /// 404: well-formed, but no catalog file has this URL.
    NotFound,
}

/// The file a URL names.
#[derive(Debug, Clone)]
pub struct Target {
    pub torrent: Arc<CatalogTorrent>,
    pub file_index: u32,
}

/// URL key (decoded segments joined by `/`, no leading slash) -> file.
#[derive(Debug, Default)]
pub struct UrlIndex {
    files: HashMap<String, (Arc<CatalogTorrent>, u32)>,
}

impl UrlIndex {
    /// Indexes every non-pad file of every torrent (see the module doc for the layout).
    pub fn build(catalog: &Catalog) -> UrlIndex {
        let mut torrents: Vec<&Arc<CatalogTorrent>> = catalog.torrents().iter().collect();
        torrents.sort_by_key(|t| t.info_hash.0);
        let mut files = HashMap::new();
        for t in torrents {
            let hex = hex(&t.info_hash.0);
            for i in 0..t.files.len() {
                let segments = t.url_segments(i);
                let pad = t.files.get(i).is_none_or(|f| f.pad);
                if pad || segments.is_empty() || !segments.iter().all(|s| segment_ok(s.as_bytes()))
                {
                    continue;
                }
                let key = segments.join("/");
                files
                    .entry(format!("{hex}/{key}"))
                    .or_insert_with(|| (t.clone(), i as u32));
                // Lowest info-hash first: an earlier torrent keeps a shared name.
                files.entry(key).or_insert_with(|| (t.clone(), i as u32));
            }
        }
        UrlIndex { files }
    }

    pub fn len(&self) -> usize {
        self.files.len()
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// The file a request path (still percent-encoded, starting with `/`) names.
    pub fn lookup(&self, raw_path: &[u8]) -> Result<Target, PathError> {
        let key = decode_path(raw_path)?;
        self.files
            .get(key.as_str())
            .map(|(t, i)| Target {
                torrent: t.clone(),
                file_index: *i,
            })
            .ok_or(PathError::NotFound)
    }
}

/// Decodes `/seg/seg...` into `seg/seg...`: each segment percent-decoded on its own (so
/// `%2F` is a byte inside a segment, which is then refused), checked, and joined.
pub fn decode_path(raw: &[u8]) -> Result<String, PathError> {
    let rest = raw.strip_prefix(b"/").ok_or(PathError::Malformed)?;
    let mut out: Vec<u8> = Vec::with_capacity(rest.len());
    for (n, segment) in rest.split(|&b| b == b'/').enumerate() {
        if n > 0 {
            out.push(b'/');
        }
        let start = out.len();
        let mut i = 0;
        while i < segment.len() {
            let b = segment[i];
            if b == b'%' {
                let hi = segment.get(i + 1).and_then(|&c| hex_value(c));
                let lo = segment.get(i + 2).and_then(|&c| hex_value(c));
                let (Some(hi), Some(lo)) = (hi, lo) else {
                    return Err(PathError::Malformed);
                };
                out.push(hi << 4 | lo);
                i += 3;
            } else {
                out.push(b);
                i += 1;
            }
        }
        if !segment_ok(&out[start..]) {
            return Err(PathError::Malformed);
        }
    }
    String::from_utf8(out).map_err(|_| PathError::Malformed)
}

/// A decoded segment that can name nothing but itself.
fn segment_ok(s: &[u8]) -> bool {
    !s.is_empty()
        && s != b"."
        && s != b".."
        && !s.iter().any(|&b| b == b'/' || b == b'\\' || b == 0)
}

fn hex_value(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|v| v as u8)
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Percent-encodes one URL segment the way BEP 19 clients do (RFC 3986 unreserved kept).
pub fn encode_segment(segment: &str) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(segment.len());
    for &b in segment.as_bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            s.push(b as char);
        } else {
            let _ = write!(s, "%{b:02X}");
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::extents::layout;
    use std::path::PathBuf;

    fn torrent(h: u8, name: &str, paths: &[&[&str]], pads: &[bool]) -> Arc<CatalogTorrent> {
        let files = layout(pads.iter().map(|&p| (PathBuf::from("/x"), 10, p)));
        Arc::new(CatalogTorrent {
            name: name.into(),
            total_length: 10 * pads.len() as u64,
            files,
            url_paths: paths
                .iter()
                .map(|p| p.iter().map(|s| s.to_string()).collect())
                .collect(),
            ..CatalogTorrent::fixture(h)
        })
    }

    #[test]
    fn single_multi_and_hex_prefixed_urls_resolve() {
        // Proves: the BEP 19 layouts and the info-hash prefix name the right files, pads and
        // directories are not URLs.
        let catalog = Catalog::from_loaded([
            torrent(1, "one file.iso", &[&["one file.iso"]], &[false]),
            torrent(
                2,
                "dir",
                &[&["dir", "a"], &[], &["dir", "sub", "b c"]],
                &[false, true, false],
            ),
        ]);
        let index = UrlIndex::build(&catalog);
        assert_eq!(index.lookup(b"/one%20file.iso").unwrap().file_index, 0);
        assert_eq!(index.lookup(b"/dir/sub/b%20c").unwrap().file_index, 2);
        let hex2 = hex(&[2; 20]);
        assert_eq!(
            index
                .lookup(format!("/{hex2}/dir/a").as_bytes())
                .unwrap()
                .file_index,
            0
        );
        assert_eq!(index.lookup(b"/dir").unwrap_err(), PathError::NotFound);
        assert_eq!(index.lookup(b"/dir/sub").unwrap_err(), PathError::NotFound);
        assert_eq!(index.len(), 6);
    }

    #[test]
    fn a_shared_name_goes_to_the_lowest_info_hash() {
        // Proves: the documented duplicate rule, and that both stay reachable by hex prefix.
        let catalog = Catalog::from_loaded([
            torrent(9, "same", &[&["same"]], &[false]),
            torrent(3, "same", &[&["same"]], &[false]),
        ]);
        let index = UrlIndex::build(&catalog);
        assert_eq!(index.lookup(b"/same").unwrap().torrent.info_hash.0, [3; 20]);
        let nine = format!("/{}/same", hex(&[9; 20]));
        assert_eq!(
            index.lookup(nine.as_bytes()).unwrap().torrent.info_hash.0,
            [9; 20]
        );
    }

    #[test]
    fn traversal_in_every_encoding_is_malformed() {
        // Proves: each traversal spelling is refused before any lookup.
        for raw in [
            &b"/dir/../etc/passwd"[..],
            b"/dir/%2e%2e/x",
            b"/dir/%2E%2E/x",
            b"/dir%2fa",
            b"/dir/.",
            b"/dir%5c..%5cx",
            b"/dir/a%00",
            b"/%c0%ae%c0%ae/x",
            b"/dir//a",
            b"/dir/%zz",
            b"/dir/%2",
            b"dir",
        ] {
            assert_eq!(
                decode_path(raw).unwrap_err(),
                PathError::Malformed,
                "{raw:?}"
            );
        }
        assert_eq!(decode_path(b"/a/%C3%A9").unwrap(), "a/é");
    }

    #[test]
    fn encoding_round_trips() {
        // Proves: what `encode_segment` writes, `decode_path` reads back.
        for s in ["a b", "é+x", "100%", "a~b-c_d.e"] {
            assert_eq!(
                decode_path(format!("/{}", encode_segment(s)).as_bytes()).unwrap(),
                s
            );
        }
    }
}
