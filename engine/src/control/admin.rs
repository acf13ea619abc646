//! The admin HTTP endpoint: `GET /` (the dashboard), `GET /metrics` (Prometheus), `GET /stats`
//! (JSON), `/api/v1/` (the runtime catalog API, `control::api`), `GET /health`
//! (200 `ok`; 503 `starting`, `a shard is not accepting` or `degraded` with one line per errored
//! or skipped torrent; `GET /health?strict=0` answers 200 while degraded: liveness only).
//!
//! Owns: one std thread with a blocking listener, a minimal HTTP/1.1 reader (request line and
//! headers; a body only for `/api/v1/`, at most `[admin] api_body_bytes_max`), asking
//! `control::auth` whether a request may pass, and handing `/api/v1/` to `control::api`.
//! Must never: run on or talk to a shard: it reads the control thread's `StatsView` behind a
//! mutex the shards never see.
//!
//! Hand-written instead of `tiny_http`/`hyper`: three GET routes on a scrape endpoint do not
//! need keep-alive, chunking or bodies, and the bounds are easier to state on 150 lines we own:
//! one connection at a time (the next wait in the kernel backlog), a request head of at most
//! `REQUEST_HEAD_MAX_BYTES`, `IO_TIMEOUT` on every read and write, `Connection: close` always.
//! A scraper or `squall stats` makes one request a second; serial handling is plenty.

use super::api::{self, Api};
use super::auth::{AdminAuth, Verdict};
use crate::stats::catalog_health::Health;
use crate::stats::view::StatsView;
use crate::stats::{json, prometheus};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// The merged stats, written by the seed control loop and read by the admin thread.
pub type SharedView = Arc<Mutex<StatsView>>;

/// Longest request line plus headers; longer requests get 431 and are closed.
pub const REQUEST_HEAD_MAX_BYTES: usize = 8 * 1024;
/// Read and write timeout per connection: a stalled client holds the endpoint this long.
pub const IO_TIMEOUT: Duration = Duration::from_secs(2);

pub struct AdminServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl AdminServer {
    /// Binds `addr` and serves on a new thread. `token`: required bearer token on every
    /// request, if any; no API.
    pub fn start(
        addr: SocketAddr,
        token: Option<String>,
        view: SharedView,
    ) -> Result<AdminServer, String> {
        let auth = AdminAuth::new(token, true, AUTH_FAILURES_PER_MIN_DEFAULT);
        AdminServer::start_with(addr, Arc::new(auth), view, None)
    }

    /// Binds `addr` and serves the stats routes and, with `api`, `/api/v1/` on a new thread.
    pub fn start_with(
        addr: SocketAddr,
        auth: Arc<AdminAuth>,
        view: SharedView,
        api: Option<Api>,
    ) -> Result<AdminServer, String> {
        let listener = TcpListener::bind(addr).map_err(|e| {
            format!("admin endpoint: cannot listen on {addr}: {e} (choose another with --admin ADDR, or --admin off)")
        })?;
        let bound = listener.local_addr().unwrap_or(addr);
        let stop = Arc::new(AtomicBool::new(false));
        let thread_stop = stop.clone();
        let handle = std::thread::Builder::new()
            .name("squall-admin".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    if thread_stop.load(Ordering::Relaxed) {
                        break;
                    }
                    match conn {
                        Ok(stream) => serve(stream, &auth, &view, api.as_ref()),
                        Err(e) => {
                            tracing::debug!("admin accept failed: {e}");
                            // EMFILE and friends: back off instead of spinning.
                            std::thread::sleep(Duration::from_millis(50));
                        }
                    }
                }
            })
            .map_err(|e| format!("cannot start the admin thread: {e}"))?;
        Ok(AdminServer {
            addr: bound,
            stop,
            handle: Some(handle),
        })
    }

    /// The address actually bound (port 0 resolved).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting and joins the thread.
    pub fn stop(mut self) {
        self.stop_inner();
    }

    fn stop_inner(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the blocking accept with a connection of our own.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        if self.handle.is_some() {
            self.stop_inner();
        }
    }
}

/// A parsed request head: what the routes need and nothing more.
#[derive(Debug, PartialEq, Eq)]
pub struct RequestHead {
    pub method: String,
    pub path: String,
    /// What follows `?` in the target ("" when none).
    pub query: String,
    pub authorization: Option<String>,
    pub content_length: Option<usize>,
    pub content_type: Option<String>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum HeadError {
    TooLarge,
    Malformed,
}

/// Parses `METHOD PATH HTTP/1.x` and the headers (only `Authorization` is kept).
pub fn parse_head(head: &[u8]) -> Result<RequestHead, HeadError> {
    let text = std::str::from_utf8(head).map_err(|_| HeadError::Malformed)?;
    let mut lines = text.split("\r\n");
    let request_line = lines.next().ok_or(HeadError::Malformed)?;
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(HeadError::Malformed);
    };
    if !version.starts_with("HTTP/1.") || method.is_empty() || !target.starts_with('/') {
        return Err(HeadError::Malformed);
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let (path, query) = (path.to_string(), query.to_string());
    let mut authorization = None;
    let mut content_length = None;
    let mut content_type = None;
    for line in lines {
        if line.is_empty() {
            break;
        }
        let (name, value) = line.split_once(':').ok_or(HeadError::Malformed)?;
        let (name, value) = (name.trim(), value.trim());
        if name.eq_ignore_ascii_case("authorization") {
            authorization = Some(value.to_string());
        } else if name.eq_ignore_ascii_case("content-length") {
            content_length = Some(value.parse().map_err(|_| HeadError::Malformed)?);
        } else if name.eq_ignore_ascii_case("content-type") {
            content_type = Some(value.to_ascii_lowercase());
        }
    }
    Ok(RequestHead {
        method: method.to_string(),
        path,
        query,
        authorization,
        content_length,
        content_type,
    })
}

/// Reads up to the blank line ending the head, at most `REQUEST_HEAD_MAX_BYTES`; returns the
/// head and the body bytes read with it.
fn read_head(stream: &mut TcpStream) -> Result<(Vec<u8>, Vec<u8>), HeadError> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).map_err(|_| HeadError::Malformed)?;
        if n == 0 {
            return Err(HeadError::Malformed);
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(end + 4);
            return Ok((buf, rest));
        }
        if buf.len() > REQUEST_HEAD_MAX_BYTES {
            return Err(HeadError::TooLarge);
        }
    }
}

/// The dashboard page at `/` (polls `/stats`, `/metrics`, `/api/v1/torrents`; draws SVG).
pub const DASHBOARD_HTML: &str = include_str!("dashboard.html");

/// Failed token attempts one client may make a minute before 429s (`start` without config).
pub const AUTH_FAILURES_PER_MIN_DEFAULT: u32 = 10;

/// Reads the request body after the head: exactly `Content-Length` bytes, at most `max`.
fn read_body(stream: &mut TcpStream, mut body: Vec<u8>, len: usize) -> Result<Vec<u8>, ()> {
    body.truncate(len);
    let mut chunk = [0u8; 16 * 1024];
    while body.len() < len {
        let want = (len - body.len()).min(chunk.len());
        match stream.read(&mut chunk[..want]) {
            Ok(0) | Err(_) => return Err(()),
            Ok(n) => body.extend_from_slice(&chunk[..n]),
        }
    }
    Ok(body)
}

/// The answer to a request the token check refused, or None to go on.
fn refused(verdict: Verdict, is_api: bool) -> Option<Response> {
    let (status, message) = match verdict {
        Verdict::Allowed => return None,
        Verdict::Unauthorized => (
            401,
            "unauthorized: send Authorization: Bearer TOKEN (the token is in [admin] \
             token_file, default STATE_DIR/admin.token)",
        ),
        Verdict::Limited => (
            429,
            "too many failed token attempts from this address: wait a minute",
        ),
    };
    Some(if is_api {
        Response::json(status, &serde_json::json!({ "error": message }))
    } else {
        Response::text(status, &format!("{message}\n"))
    })
}

/// (status, content type, body) for one request of the stats routes (`/metrics`, `/stats`,
/// `/health`), after the token check.
pub fn route(head: &RequestHead, view: &Mutex<StatsView>) -> Response {
    if head.method != "GET" {
        return Response::text(405, "only GET is served\n");
    }
    // A poisoned lock means the control loop panicked; the data is still the last good view.
    let view = view.lock().unwrap_or_else(|p| p.into_inner());
    match head.path.as_str() {
        "/metrics" => {
            let mut body = prometheus::render(&view);
            super::auth::render_metrics(&mut body);
            Response {
                status: 200,
                content_type: prometheus::CONTENT_TYPE,
                body,
            }
        }
        "/stats" => Response {
            status: 200,
            content_type: "application/json",
            body: json::render(&view).to_string(),
        },
        // The live dashboard: our own HTML, JS and SVG, compiled in (works offline).
        "/" | "/dashboard" => Response {
            status: 200,
            content_type: "text/html; charset=utf-8",
            body: DASHBOARD_HTML.to_string(),
        },
        "/health" => {
            // 503 while any torrent is errored or skipped; `?strict=0` is liveness only
            // (shards up and accepting), for load balancers that must not drop a box over
            // one missing file.
            let health = view.health();
            let liveness_only = query_value(&head.query, "strict") == Some("0");
            let status = match health {
                Health::Ok => 200,
                Health::Degraded(_) if liveness_only => 200,
                _ => 503,
            };
            Response::text(status, &health.body())
        }
        _ => Response::text(
            404,
            "not found: try / (dashboard), /metrics, /stats, /health or /api/v1/torrents\n",
        ),
    }
}

/// The value of `key` in a query string `a=1&b=2` (no percent-decoding: our keys and
/// values are plain words).
pub fn query_value<'q>(query: &'q str, key: &str) -> Option<&'q str> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('=').or(Some((pair, ""))))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

impl Response {
    fn json(status: u16, body: &serde_json::Value) -> Response {
        Response {
            status,
            content_type: "application/json",
            body: format!("{body}\n"),
        }
    }

    fn text(status: u16, body: &str) -> Response {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.to_string(),
        }
    }
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        202 => "Accepted",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        507 => "Insufficient Storage",
        _ => "Error",
    }
}

/// Authenticates, reads the body (API only, bounded) and routes one parsed request.
fn respond(
    stream: &mut TcpStream,
    head: &RequestHead,
    early_body: Vec<u8>,
    auth: &AdminAuth,
    view: &Mutex<StatsView>,
    api: Option<&Api>,
) -> Response {
    let is_api = head.path.starts_with(api::PREFIX);
    let mutating = is_api && api::is_mutating(&head.method);
    let client = stream
        .peer_addr()
        .map(|a| a.ip())
        .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
    let verdict = auth.check(
        client,
        head.authorization.as_deref(),
        mutating,
        std::time::Instant::now(),
    );
    if let Some(r) = refused(verdict, is_api) {
        return r;
    }
    let Some(api) = api.filter(|_| is_api) else {
        return route(head, view);
    };
    let len = head.content_length.unwrap_or(0);
    if len > api.body_bytes_max {
        return Response::json(
            413,
            &serde_json::json!({ "error": format!(
                "body of {len} bytes is over [admin] api_body_bytes_max = {}", api.body_bytes_max
            ) }),
        );
    }
    let body = match read_body(stream, early_body, len) {
        Ok(b) => b,
        Err(()) => {
            return Response::json(
                400,
                &serde_json::json!({ "error": "the body ended before Content-Length bytes" }),
            )
        }
    };
    let r = api::handle(
        api,
        view,
        &head.method,
        &head.path,
        &head.query,
        head.content_type.as_deref(),
        &body,
    );
    Response::json(r.status, &r.body)
}

fn serve(mut stream: TcpStream, auth: &AdminAuth, view: &Mutex<StatsView>, api: Option<&Api>) {
    let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
    let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
    let response = match read_head(&mut stream) {
        Ok((head, early_body)) => match parse_head(&head) {
            Ok(head) => respond(&mut stream, &head, early_body, auth, view, api),
            Err(_) => Response::text(400, "malformed request\n"),
        },
        Err(HeadError::TooLarge) => Response::text(431, "request head too large\n"),
        // Timed out or closed before a full head (includes our own wake-up connection).
        Err(HeadError::Malformed) => return,
    };
    let head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        response.status,
        reason_phrase(response.status),
        response.content_type,
        response.body.len()
    );
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(response.body.as_bytes());
    let _ = stream.flush();
    // Lingering close: closing with unread request bytes would send a RST that can destroy
    // the response in flight; drain a bounded amount (each read bounded by IO_TIMEOUT).
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let mut sink = [0u8; 4096];
    for _ in 0..16 {
        match stream.read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::ShardStats;
    use std::collections::HashMap;
    use std::time::Instant;

    fn get(addr: SocketAddr, path: &str, auth: Option<&str>) -> (u16, String) {
        let mut s = TcpStream::connect(addr).unwrap();
        let auth = auth
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n{auth}\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        let status = out[9..12].parse().unwrap();
        let body = out.split_once("\r\n\r\n").unwrap().1.to_string();
        (status, body)
    }

    #[test]
    fn routes_health_and_token() {
        // The three routes answer over real TCP; /health follows the shards' `accepting`;
        // with a token, a request without it is refused.
        let view: SharedView = Arc::new(Mutex::new(StatsView::new(1, 5, HashMap::new())));
        let server = AdminServer::start(
            "127.0.0.1:0".parse().unwrap(),
            Some("t0k".into()),
            view.clone(),
        )
        .unwrap();
        let addr = server.local_addr();
        assert_eq!(get(addr, "/health", None).0, 401);
        assert_eq!(get(addr, "/health", Some("wrong")).0, 401);
        assert_eq!(get(addr, "/health", Some("t0k")).0, 503);
        let mut s = ShardStats::new(0);
        s.accepting = true;
        s.uploaded_bytes = 42;
        view.lock().unwrap().apply(s.snapshot(), Instant::now());
        assert_eq!(get(addr, "/health", Some("t0k")).0, 200);
        let (status, body) = get(addr, "/metrics", Some("t0k"));
        assert_eq!(status, 200);
        assert!(body.contains("squall_uploaded_bytes_total{shard=\"0\"} 42"));
        let (status, body) = get(addr, "/stats?x=1", Some("t0k"));
        assert_eq!(status, 200);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["total"]["uploaded_bytes"], 42);
        assert_eq!(get(addr, "/nope", Some("t0k")).0, 404);
        let (status, page) = get(addr, "/", Some("t0k"));
        assert!(status == 200 && page.contains("chart-throughput"), "{page}");
        server.stop();
    }

    #[test]
    fn health_is_degraded_by_a_skipped_torrent_unless_liveness_only() {
        // A skipped torrent turns 200 into 503 "degraded" naming its file; `?strict=0` still
        // answers 200 (alive); other query parameters do not relax it.
        let view: SharedView = Arc::new(Mutex::new(StatsView::new(1, 5, HashMap::new())));
        let mut s = ShardStats::new(0);
        s.accepting = true;
        view.lock().unwrap().apply(s.snapshot(), Instant::now());
        let server =
            AdminServer::start("127.0.0.1:0".parse().unwrap(), None, view.clone()).unwrap();
        let addr = server.local_addr();
        assert_eq!(get(addr, "/health", None), (200, "ok\n".to_string()));
        view.lock().unwrap().catalog_health_mut().skipped =
            vec![crate::stats::catalog_health::SkippedRow {
                file: "/t/gone.torrent".into(),
                reason: "file missing".into(),
            }];
        let (status, body) = get(addr, "/health", None);
        assert_eq!(status, 503);
        assert!(
            body.starts_with("degraded") && body.contains("/t/gone.torrent: file missing"),
            "{body}"
        );
        assert_eq!(get(addr, "/health?strict=0", None).0, 200);
        assert_eq!(get(addr, "/health?strict=1", None).0, 503);
        assert_eq!(get(addr, "/health?x=0", None).0, 503);
        assert_eq!(query_value("a=1&strict=0", "strict"), Some("0"));
        assert_eq!(query_value("strict", "strict"), Some(""));
        server.stop();
    }

    #[test]
    fn oversized_and_malformed_heads_are_refused() {
        // A head beyond the bound or a garbage request line never reaches a route.
        assert_eq!(parse_head(b"GARBAGE\r\n\r\n"), Err(HeadError::Malformed));
        assert_eq!(
            parse_head(b"GET /metrics HTTP/1.1\r\nAuthorization: Bearer a\r\n\r\n")
                .unwrap()
                .authorization
                .as_deref(),
            Some("Bearer a")
        );
        let view: SharedView = Arc::new(Mutex::new(StatsView::new(1, 5, HashMap::new())));
        let server = AdminServer::start("127.0.0.1:0".parse().unwrap(), None, view).unwrap();
        let mut s = TcpStream::connect(server.local_addr()).unwrap();
        let big = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(20_000));
        let _ = s.write_all(big.as_bytes());
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        assert!(out.starts_with("HTTP/1.1 431"), "{out}");
    }
}
