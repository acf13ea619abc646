//! HTTP/1.1 request heads: bytes in, a typed request or a typed error out.
//!
//! Owns: finding the end of one request head in a receive buffer, the request line (method,
//! origin-form target, version), the header fields the front-end uses (Host, Range, If-Range,
//! If-None-Match, Connection, and the body framing ones it refuses), and the bounds on line
//! length, head size and header count. Must never: do I/O, allocate, look at a clock, touch the
//! catalog or a path, or panic on any input (a fuzz target, `http_request`, checks that).
//! Request bodies are not supported: a head that announces one is refused (400), so no
//! request is ever framed differently by us and by a proxy in front (request smuggling).

/// Methods the front-end serves; every other well-formed method is 405.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
}

/// One parsed request head. Slices borrow the receive buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request<'a> {
    pub method: Method,
    /// The path of the target, still percent-encoded, without the query.
    pub path: &'a [u8],
    /// The connection stays open after the answer (HTTP/1.1 unless `Connection: close`;
    /// HTTP/1.0 only with `Connection: keep-alive`).
    pub keep_alive: bool,
    pub range: Option<&'a [u8]>,
    pub if_range: Option<&'a [u8]>,
    pub if_none_match: Option<&'a [u8]>,
}

/// Why a request head was refused; each maps to one status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestError {
    /// 400: malformed syntax, a missing or repeated Host, a body, an unknown version.
    BadRequest,
    /// 405: a well-formed method other than GET and HEAD.
    MethodNotAllowed,
    /// 414: the request line is longer than `request_line_bytes_max`.
    UriTooLong,
    /// 431: the head is larger than `header_bytes_max` or has more than `header_count_max`
    /// fields.
    HeadersTooLarge,
}

impl RequestError {
    pub fn status(self) -> u16 {
        match self {
            RequestError::BadRequest => 400,
            RequestError::MethodNotAllowed => 405,
            RequestError::UriTooLong => 414,
            RequestError::HeadersTooLarge => 431,
        }
    }
}

/// The bounds a head is parsed under (from `HttpConfig`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParseLimits {
    pub request_line_bytes_max: usize,
    pub header_bytes_max: usize,
    pub header_count_max: usize,
}

impl ParseLimits {
    pub fn from_config(c: &super::HttpConfig) -> ParseLimits {
        ParseLimits {
            request_line_bytes_max: c.request_line_bytes_max,
            header_bytes_max: c.header_bytes_max,
            header_count_max: c.header_count_max,
        }
    }
}

/// Parses the first request head in `buf`. `Ok(None)`: not complete yet (and within the
/// bounds: read more). `Ok(Some((request, used)))`: `used` bytes were the head.
pub fn parse<'a>(
    buf: &'a [u8],
    limits: &ParseLimits,
) -> Result<Option<(Request<'a>, usize)>, RequestError> {
    // RFC 9112 2.2: ignore at least one empty line before a request line.
    let mut start = 0;
    while start < buf.len() && start < 4 && (buf[start] == b'\r' || buf[start] == b'\n') {
        start += 1;
    }
    let buf_all = buf;
    let buf = &buf[start..];
    let Some(line_end) = find_line_end(buf) else {
        if buf.len() > limits.request_line_bytes_max {
            return Err(RequestError::UriTooLong);
        }
        return Ok(None);
    };
    let line = trim_cr(&buf[..line_end]);
    if line.len() > limits.request_line_bytes_max {
        return Err(RequestError::UriTooLong);
    }
    let Some(head_len) = find_head_end(buf) else {
        if buf.len() > limits.header_bytes_max {
            return Err(RequestError::HeadersTooLarge);
        }
        return Ok(None);
    };
    if head_len > limits.header_bytes_max {
        return Err(RequestError::HeadersTooLarge);
    }
    debug_assert!(start + head_len <= buf_all.len());
    let (method, path, http11) = request_line(line)?;
    let mut request = Request {
        method,
        path,
        keep_alive: http11,
        range: None,
        if_range: None,
        if_none_match: None,
    };
    let mut hosts = 0usize;
    let mut count = 0usize;
    let mut rest = &buf[line_end + 1..head_len];
    while let Some(end) = find_line_end(rest) {
        let field = trim_cr(&rest[..end]);
        rest = &rest[end + 1..];
        if field.is_empty() {
            break;
        }
        count += 1;
        if count > limits.header_count_max {
            return Err(RequestError::HeadersTooLarge);
        }
        let (name, value) = header_field(field)?;
        if name.eq_ignore_ascii_case(b"host") {
            hosts += 1;
        } else if name.eq_ignore_ascii_case(b"range") {
            request.range = Some(value);
        } else if name.eq_ignore_ascii_case(b"if-range") {
            request.if_range = Some(value);
        } else if name.eq_ignore_ascii_case(b"if-none-match") {
            request.if_none_match = Some(value);
        } else if name.eq_ignore_ascii_case(b"connection") {
            if has_token(value, b"close") {
                request.keep_alive = false;
            } else if has_token(value, b"keep-alive") {
                request.keep_alive = true;
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding")
            || (name.eq_ignore_ascii_case(b"content-length") && value != b"0")
        {
            return Err(RequestError::BadRequest);
        }
    }
    // RFC 9112 3.2: an HTTP/1.1 request without exactly one Host is a 400.
    if (http11 && hosts != 1) || hosts > 1 {
        return Err(RequestError::BadRequest);
    }
    Ok(Some((request, start + head_len)))
}

/// Index of the first `\n`.
fn find_line_end(buf: &[u8]) -> Option<usize> {
    buf.iter().position(|&b| b == b'\n')
}

/// Length of the head through its empty line (`\r\n\r\n`, or bare `\n\n`, RFC 9112 2.2).
fn find_head_end(buf: &[u8]) -> Option<usize> {
    let mut i = 0;
    while let Some(off) = find_line_end(&buf[i..]) {
        let nl = i + off;
        let next = &buf[nl + 1..];
        if next.first() == Some(&b'\n') {
            return Some(nl + 2);
        }
        if next.starts_with(b"\r\n") {
            return Some(nl + 3);
        }
        i = nl + 1;
    }
    None
}

fn trim_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// `method SP target SP HTTP/1.x`: the method, the target's path and whether it is 1.1.
fn request_line(line: &[u8]) -> Result<(Method, &[u8], bool), RequestError> {
    let mut parts = line.split(|&b| b == b' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(RequestError::BadRequest);
    };
    let http11 = match version {
        b"HTTP/1.1" => true,
        b"HTTP/1.0" => false,
        _ => return Err(RequestError::BadRequest),
    };
    if method.is_empty() || !method.iter().all(|&b| is_tchar(b)) {
        return Err(RequestError::BadRequest);
    }
    // Origin-form only (RFC 9112 3.2.1); the path ends at the query.
    if target.first() != Some(&b'/') || !target.iter().all(|&b| (0x21..0x7f).contains(&b)) {
        return Err(RequestError::BadRequest);
    }
    let path_len = target.iter().position(|&b| b == b'?' || b == b'#');
    let path = &target[..path_len.unwrap_or(target.len())];
    let method = match method {
        b"GET" => Method::Get,
        b"HEAD" => Method::Head,
        _ => return Err(RequestError::MethodNotAllowed),
    };
    Ok((method, path, http11))
}

/// `name ":" OWS value OWS`; a folded line (leading whitespace) or a bad name is a 400.
fn header_field(field: &[u8]) -> Result<(&[u8], &[u8]), RequestError> {
    let colon = field
        .iter()
        .position(|&b| b == b':')
        .ok_or(RequestError::BadRequest)?;
    let name = &field[..colon];
    if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
        return Err(RequestError::BadRequest);
    }
    let value = trim_ows(&field[colon + 1..]);
    if value.iter().any(|&b| b == 0 || b == b'\r' || b == b'\n') {
        return Err(RequestError::BadRequest);
    }
    Ok((name, value))
}

fn trim_ows(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

/// Whether a comma-separated header value lists `token` (case-insensitive).
fn has_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| trim_ows(t).eq_ignore_ascii_case(token))
}

/// RFC 9110 5.6.2 token characters.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const LIMITS: ParseLimits = ParseLimits {
        request_line_bytes_max: 64,
        header_bytes_max: 256,
        header_count_max: 4,
    };

    fn ok(text: &str) -> (Request<'_>, usize) {
        parse(text.as_bytes(), &LIMITS).unwrap().unwrap()
    }

    fn err(text: &str) -> RequestError {
        parse(text.as_bytes(), &LIMITS).unwrap_err()
    }

    #[test]
    fn parses_a_range_get_and_its_length() {
        // Proves: a complete head yields its fields and the exact byte count it used, so a
        // pipelined second request starts right after it.
        let text = "GET /a%20b?x=1 HTTP/1.1\r\nHost: h\r\nRange: bytes=0-9\r\n\r\nGET";
        let (r, used) = ok(text);
        assert_eq!(r.method, Method::Get);
        assert_eq!(r.path, b"/a%20b");
        assert_eq!(r.range, Some(&b"bytes=0-9"[..]));
        assert!(r.keep_alive);
        assert_eq!(&text[used..], "GET");
    }

    #[test]
    fn partial_heads_ask_for_more() {
        // Proves: every strict prefix of a valid head is "incomplete", never an error.
        let text = "HEAD /x HTTP/1.1\r\nHost: h\r\nIf-None-Match: \"e\"\r\n\r\n";
        for n in 0..text.len() {
            assert_eq!(
                parse(&text.as_bytes()[..n], &LIMITS),
                Ok(None),
                "prefix {n}"
            );
        }
        let (r, _) = ok(text);
        assert_eq!(r.method, Method::Head);
        assert_eq!(r.if_none_match, Some(&b"\"e\""[..]));
    }

    #[test]
    fn connection_and_version_decide_keep_alive() {
        // Proves: 1.1 keeps alive unless `close`; 1.0 only with `keep-alive`.
        assert!(
            !ok("GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
                .0
                .keep_alive
        );
        assert!(!ok("GET / HTTP/1.0\r\n\r\n").0.keep_alive);
        assert!(
            ok("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n")
                .0
                .keep_alive
        );
        assert!(ok("GET / HTTP/1.1\nHost: h\n\n").0.keep_alive);
    }

    #[test]
    fn each_refusal_has_its_status() {
        // Proves: each kind of bad head maps to its own status code.
        assert_eq!(err("POST / HTTP/1.1\r\nHost: h\r\n\r\n").status(), 405);
        assert_eq!(err("GET / HTTP/2.0\r\nHost: h\r\n\r\n").status(), 400);
        assert_eq!(err("GET / HTTP/1.1\r\n\r\n").status(), 400);
        assert_eq!(
            err("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n").status(),
            400
        );
        assert_eq!(err("GET x HTTP/1.1\r\nHost: h\r\n\r\n").status(), 400);
        assert_eq!(
            err("GET / HTTP/1.1\r\nHost: h\r\n folded\r\n\r\n").status(),
            400
        );
        assert_eq!(
            err("GET / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n").status(),
            400
        );
        assert_eq!(
            err("GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\n").status(),
            400
        );
        assert_eq!(err("GET  / HTTP/1.1\r\nHost: h\r\n\r\n").status(), 400);
        let long = format!("GET /{} HTTP/1.1\r\n", "a".repeat(80));
        assert_eq!(err(&long).status(), 414);
        assert_eq!(err(&"a".repeat(65)).status(), 414);
        let many = format!("GET / HTTP/1.1\r\n{}\r\n", "X-A: b\r\n".repeat(5));
        assert_eq!(err(&many).status(), 431);
        let big = format!("GET / HTTP/1.1\r\nHost: h\r\nX: {}", "b".repeat(300));
        assert_eq!(err(&big).status(), 431);
    }

    proptest! {
        #[test]
        fn never_panics_and_never_overruns(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            // Proves: any input gives a value, and a parsed head never claims more bytes
            // than were there.
            if let Ok(Some((_, used))) = parse(&bytes, &LIMITS) {
                prop_assert!(used <= bytes.len());
            }
        }

        #[test]
        fn pipelined_heads_parse_one_after_another(paths in proptest::collection::vec("[a-z0-9]{1,10}", 1..6)) {
            // Proves: a buffer of back-to-back heads yields each in order, using exactly its
            // bytes.
            let text: String = paths.iter().map(|p| format!("GET /{p} HTTP/1.1\r\nHost: h\r\n\r\n")).collect();
            let mut at = 0;
            for p in &paths {
                let (r, used) = parse(&text.as_bytes()[at..], &LIMITS).unwrap().unwrap();
                let want = format!("/{p}");
                prop_assert_eq!(r.path, want.as_bytes());
                at += used;
            }
            prop_assert_eq!(at, text.len());
        }
    }
}
