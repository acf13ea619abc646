//! Answers to parsed requests: status, header bytes, and which file bytes follow.
//!
//! Owns: RFC 9110 range semantics (single `first-last`, `first-`, `-suffix`; several ranges
//! in one header are answered 200 with the whole body, which RFC 9110 14.2 allows and every
//! downloader handles), the conditional headers (`If-None-Match`, `If-Range`), validators
//! (a strong ETag from the info-hash and file index, `Last-Modified` from the content files'
//! newest mtime), and the head of every response. Must never: do I/O, read a clock (the caller
//! passes the time), or put a body's bytes in memory: an answer names the file range and the
//! shard's serving path sends it.

use super::index::{hex, PathError, UrlIndex};
use super::request::{Method, Request, RequestError};
use crate::metainfo::InfoHash;
use std::io::Write;

/// The file bytes an answer sends after its head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Body {
    pub info_hash: InfoHash,
    pub file_index: u32,
    /// First byte, in the file.
    pub offset: u64,
    pub len: u64,
}

/// What to send: `head` (written by `answer`) then `body`, then keep the connection or close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub body: Option<Body>,
    pub keep_alive: bool,
}

/// How a `Range` header applies to a file of `len` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeAnswer {
    /// No usable range (absent, unparseable, not `bytes`, or several): the whole file, 200.
    Whole,
    /// 206 with bytes [start, start + len).
    Part { start: u64, len: u64 },
    /// 416.
    Unsatisfiable,
}

/// Applies one `Range` value to a file of `file_len` bytes.
pub fn range(value: &[u8], file_len: u64) -> RangeAnswer {
    let Some(specs) = value
        .get(..6)
        .filter(|unit| unit.eq_ignore_ascii_case(b"bytes="))
        .map(|_| &value[6..])
    else {
        return RangeAnswer::Whole;
    };
    let mut parts = specs.split(|&b| b == b',');
    let (Some(spec), None) = (parts.next(), parts.next()) else {
        return RangeAnswer::Whole;
    };
    let spec = trim(spec);
    let Some(dash) = spec.iter().position(|&b| b == b'-') else {
        return RangeAnswer::Whole;
    };
    let (first, last) = (&spec[..dash], &spec[dash + 1..]);
    match (number(first), number(last)) {
        (Some(first), last) if last.is_some() || spec.len() == dash + 1 => {
            if last.is_some_and(|l| l < first) {
                return RangeAnswer::Whole;
            }
            if first >= file_len {
                return RangeAnswer::Unsatisfiable;
            }
            let end = last.map_or(file_len - 1, |l| l.min(file_len - 1));
            RangeAnswer::Part {
                start: first,
                len: end - first + 1,
            }
        }
        (None, Some(suffix)) if first.is_empty() => {
            if suffix == 0 || file_len == 0 {
                return RangeAnswer::Unsatisfiable;
            }
            let len = suffix.min(file_len);
            RangeAnswer::Part {
                start: file_len - len,
                len,
            }
        }
        _ => RangeAnswer::Whole,
    }
}

/// Decimal digits only; saturates at u64::MAX (a huge last byte means "to the end").
fn number(s: &[u8]) -> Option<u64> {
    if s.is_empty() || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(s.iter().fold(0u64, |n, &d| {
        n.saturating_mul(10).saturating_add(u64::from(d - b'0'))
    }))
}

fn trim(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

/// The strong ETag of a file: `"<info-hash hex>-<file index>"`.
pub fn etag(info_hash: &InfoHash, file_index: u32) -> String {
    format!("\"{}-{file_index}\"", hex(&info_hash.0))
}

/// Answers one request: writes the head into `head` (cleared first). `errored` says whether
/// a torrent is errored (503); `now_secs` is the wall clock for `Date`.
pub fn answer(
    request: &Request<'_>,
    index: &UrlIndex,
    errored: impl Fn(&InfoHash) -> bool,
    now_secs: i64,
    head: &mut Vec<u8>,
) -> Answer {
    head.clear();
    let keep_alive = request.keep_alive;
    let target = match index.lookup(request.path) {
        Ok(t) => t,
        Err(PathError::Malformed) => return refusal(400, keep_alive, now_secs, head),
        Err(PathError::NotFound) => return refusal(404, keep_alive, now_secs, head),
    };
    let torrent = &target.torrent;
    if errored(&torrent.info_hash) {
        return refusal(503, keep_alive, now_secs, head);
    }
    let Some(file) = torrent.files.get(target.file_index as usize) else {
        return refusal(404, keep_alive, now_secs, head);
    };
    let file_len = file.length;
    let tag = etag(&torrent.info_hash, target.file_index);
    let modified = http_date(torrent.mtime_secs);
    let not_modified = request
        .if_none_match
        .is_some_and(|v| v == b"*" || v.split(|&b| b == b',').any(|t| trim(t) == tag.as_bytes()));
    if not_modified {
        status_line(head, 304, now_secs);
        let _ = write!(head, "ETag: {tag}\r\nLast-Modified: {modified}\r\n");
        end_head(head, keep_alive);
        return Answer {
            status: 304,
            body: None,
            keep_alive,
        };
    }
    // If-Range: the range applies only while the validator still matches (RFC 9110 13.1.5).
    let range_valid = request
        .if_range
        .is_none_or(|v| v == tag.as_bytes() || v == modified.as_bytes());
    let ranged = match request.range.filter(|_| range_valid) {
        Some(value) => range(value, file_len),
        None => RangeAnswer::Whole,
    };
    let (status, start, len) = match ranged {
        RangeAnswer::Whole => (200, 0, file_len),
        RangeAnswer::Part { start, len } => (206, start, len),
        RangeAnswer::Unsatisfiable => {
            status_line(head, 416, now_secs);
            let _ = write!(
                head,
                "Content-Range: bytes */{file_len}\r\nContent-Length: 0\r\n"
            );
            end_head(head, keep_alive);
            return Answer {
                status: 416,
                body: None,
                keep_alive,
            };
        }
    };
    debug_assert!(start.saturating_add(len) <= file_len);
    status_line(head, status, now_secs);
    let _ = write!(
        head,
        "Accept-Ranges: bytes\r\nContent-Type: application/octet-stream\r\nContent-Length: {len}\r\nETag: {tag}\r\nLast-Modified: {modified}\r\n"
    );
    if status == 206 {
        let _ = write!(
            head,
            "Content-Range: bytes {start}-{}/{file_len}\r\n",
            start + len - 1
        );
    }
    end_head(head, keep_alive);
    let body = (request.method == Method::Get && len > 0).then_some(Body {
        info_hash: torrent.info_hash,
        file_index: target.file_index,
        offset: start,
        len,
    });
    Answer {
        status,
        body,
        keep_alive,
    }
}

/// The answer to a head the parser refused: the connection closes after it (the rest of
/// the stream cannot be trusted to be framed as we think).
pub fn parse_refusal(error: RequestError, now_secs: i64, head: &mut Vec<u8>) -> Answer {
    head.clear();
    refusal(error.status(), false, now_secs, head)
}

/// An empty-bodied error answer (405 carries `Allow`).
pub fn refusal(status: u16, keep_alive: bool, now_secs: i64, head: &mut Vec<u8>) -> Answer {
    head.clear();
    status_line(head, status, now_secs);
    if status == 405 {
        head.extend_from_slice(b"Allow: GET, HEAD\r\n");
    }
    head.extend_from_slice(b"Content-Length: 0\r\n");
    end_head(head, keep_alive);
    Answer {
        status,
        body: None,
        keep_alive,
    }
}

fn status_line(head: &mut Vec<u8>, status: u16, now_secs: i64) {
    let _ = write!(
        head,
        "HTTP/1.1 {status} {}\r\nServer: squall\r\nDate: {}\r\n",
        reason(status),
        http_date(now_secs)
    );
}

fn end_head(head: &mut Vec<u8>, keep_alive: bool) {
    if !keep_alive {
        head.extend_from_slice(b"Connection: close\r\n");
    }
    head.extend_from_slice(b"\r\n");
}

pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        206 => "Partial Content",
        304 => "Not Modified",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        414 => "URI Too Long",
        416 => "Range Not Satisfiable",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// IMF-fixdate (RFC 9110 5.6.7), e.g. `Sun, 06 Nov 1994 08:49:37 GMT`.
pub fn http_date(secs: i64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let secs = secs.max(0);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{}, {day:02} {} {year} {:02}:{:02}:{:02} GMT",
        DAYS[days.rem_euclid(7) as usize],
        MONTHS[(month - 1) as usize],
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn every_range_form() {
        // Proves: first-last, first-, -suffix, clipping, 416 cases, and what is ignored.
        use RangeAnswer::*;
        assert_eq!(range(b"bytes=0-9", 100), Part { start: 0, len: 10 });
        assert_eq!(range(b"bytes=90-", 100), Part { start: 90, len: 10 });
        assert_eq!(range(b"bytes=-10", 100), Part { start: 90, len: 10 });
        assert_eq!(range(b"bytes=-1000", 100), Part { start: 0, len: 100 });
        assert_eq!(
            range(b"bytes=50-99999999999999999999999", 100),
            Part { start: 50, len: 50 }
        );
        assert_eq!(range(b"bytes=100-", 100), Unsatisfiable);
        assert_eq!(range(b"bytes=-0", 100), Unsatisfiable);
        assert_eq!(range(b"bytes=0-0", 0), Unsatisfiable);
        assert_eq!(range(b"bytes=0-1,5-6", 100), Whole);
        assert_eq!(range(b"bytes=9-1", 100), Whole);
        assert_eq!(range(b"items=0-1", 100), Whole);
        assert_eq!(range(b"bytes=a-b", 100), Whole);
        assert_eq!(range(b"bytes=-", 100), Whole);
    }

    #[test]
    fn dates_format_as_imf_fixdate() {
        // Proves: the RFC 9110 example date and the epoch.
        assert_eq!(http_date(784_111_777), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(http_date(0), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(http_date(951_782_400), "Tue, 29 Feb 2000 00:00:00 GMT");
    }

    proptest! {
        #[test]
        fn a_part_never_leaves_the_file(value in "bytes=[0-9]{0,4}-[0-9]{0,4}", len in 0u64..5000) {
            // Proves: whatever the header, a 206 range lies inside the file and is not empty.
            if let RangeAnswer::Part { start, len: n } = range(value.as_bytes(), len) {
                prop_assert!(n > 0 && start + n <= len);
            }
        }
    }
}
