//! The JSON API under `/api/v1/` on the admin listener: list, show, add, remove, recheck,
//! pause and resume torrents.
//!
//! Owns: routing `/api/v1/...` requests (already authenticated by `admin` through
//! `control::auth`), reading their query strings and bodies (percent-decoding, the .torrent
//! upload or the JSON naming a .torrent on this box), paging and filtering the list (at most
//! `PAGE_LIMIT_MAX` rows a page), and rendering answers and errors as JSON (`{"error": "..."}`).
//! Must never: hash, verify or read content (the runtime catalog's worker does), hold the
//! runtime lock and the stats view's lock at once (runtime first, released, then the view),
//! or change anything on a refused request.

use super::runtime::{lock, ApiError, SharedRuntime, TorrentInfo};
use crate::metainfo::InfoHash;
use crate::plane::{PeerRow, PeersPage, PeersRequest, ShardCommand, PEERS_PAGE_MAX};
use crate::stats::view::StatsView;
use crossbeam_channel::{bounded, Sender};
use serde_json::json;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Rows one list request returns at most (`?limit=`); more is refused, so a page is bounded.
pub const PAGE_LIMIT_MAX: usize = 1000;
/// Rows when `?limit=` is not given.
pub const PAGE_LIMIT_DEFAULT: usize = 100;
/// The prefix every API route starts with.
pub const PREFIX: &str = "/api/v1/";

/// What the API routes need: the runtime catalog, the request body bound, and the shards'
/// command channels (the one-torrent view asks each for a page of its peers).
#[derive(Clone)]
pub struct Api {
    pub runtime: SharedRuntime,
    /// `[admin] api_body_bytes_max`: larger bodies get 413 before they are read.
    pub body_bytes_max: usize,
    /// One per shard, in shard order; empty: no peer lists (unit tests).
    pub shards: Vec<Sender<ShardCommand>>,
}

/// Peers the one-torrent view lists when `?peers_limit=` is not given.
pub const PEERS_LIMIT_DEFAULT: usize = 50;
/// How long the one-torrent view waits for the shards' peer pages (a shard answers within
/// one loop turn, at most its 250 ms tick); a shard that misses it is left out and counted
/// in `peer_list.shards_missing`.
pub const PEERS_REPLY_TIMEOUT_MS: u64 = 1000;

/// An answer: status and JSON body.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiResponse {
    pub status: u16,
    pub body: serde_json::Value,
}

impl From<ApiError> for ApiResponse {
    fn from(e: ApiError) -> ApiResponse {
        error(e.status, &e.message)
    }
}

pub fn error(status: u16, message: &str) -> ApiResponse {
    ApiResponse {
        status,
        body: json!({ "error": message }),
    }
}

/// Whether `method` changes something (always needs the token).
pub fn is_mutating(method: &str) -> bool {
    !matches!(method, "GET" | "HEAD")
}

/// Routes one request. `path` is below `PREFIX`; `body` was read within the bound.
pub fn handle(
    api: &Api,
    view: &Mutex<StatsView>,
    method: &str,
    path: &str,
    query: &str,
    content_type: Option<&str>,
    body: &[u8],
) -> ApiResponse {
    let rest = path.strip_prefix(PREFIX).unwrap_or("");
    let parts: Vec<&str> = rest.split('/').filter(|p| !p.is_empty()).collect();
    let result = match (method, parts.as_slice()) {
        ("GET", ["torrents"]) => list(api, view, query),
        ("POST", ["torrents"]) => add(api, view, query, content_type, body),
        ("GET", ["torrents", hash]) => parse_hash(hash).and_then(|h| show(api, view, &h, query)),
        ("DELETE", ["torrents", hash]) => parse_hash(hash).and_then(|h| {
            lock(&api.runtime).remove(&h)?;
            Ok(ApiResponse {
                status: 200,
                body: json!({ "removed": h.to_hex() }),
            })
        }),
        ("POST", ["torrents", hash, action]) => parse_hash(hash).and_then(|h| {
            let info = {
                let mut rt = lock(&api.runtime);
                match *action {
                    "recheck" => rt.recheck(&h)?,
                    "pause" => rt.set_paused(&h, true)?,
                    "resume" => rt.set_paused(&h, false)?,
                    other => {
                        return Err(ApiError::new(
                            404,
                            format!("unknown action {other:?}: use recheck, pause or resume"),
                        ))
                    }
                }
            };
            let status = if *action == "recheck" { 202 } else { 200 };
            Ok(ApiResponse {
                status,
                body: to_json(with_numbers(vec![info], view).remove(0)),
            })
        }),
        (_, ["torrents"]) | (_, ["torrents", _]) | (_, ["torrents", _, _]) => Err(ApiError::new(
            405,
            format!("{method} is not served here: see docs/operations.md, Runtime catalog API"),
        )),
        _ => Err(ApiError::new(
            404,
            format!(
                "no API route {path}: try GET {PREFIX}torrents, POST {PREFIX}torrents, \
                 GET|DELETE {PREFIX}torrents/HASH, POST {PREFIX}torrents/HASH/recheck|pause|resume"
            ),
        )),
    };
    result.unwrap_or_else(ApiResponse::from)
}

fn to_json(info: TorrentInfo) -> serde_json::Value {
    serde_json::to_value(info).unwrap_or_default()
}

fn parse_hash(text: &str) -> Result<InfoHash, ApiError> {
    InfoHash::from_hex(text).ok_or_else(|| {
        ApiError::new(
            400,
            format!("{text:?} is not an info-hash: give its 40 hex digits"),
        )
    })
}

/// Peers, uploaded bytes and the errored reason from the merged stats (runtime lock released).
fn with_numbers(mut rows: Vec<TorrentInfo>, view: &Mutex<StatsView>) -> Vec<TorrentInfo> {
    let view = view.lock().unwrap_or_else(|p| p.into_inner());
    let errored: std::collections::HashMap<String, &str> = view
        .errored()
        .iter()
        .map(|r| (r.info_hash.to_hex(), r.reason.as_str()))
        .collect();
    let now = Instant::now();
    for r in &mut rows {
        if let Some(h) = InfoHash::from_hex(&r.info_hash) {
            if let Some(t) = view.torrent_totals(&h) {
                let f = t.figures(now);
                r.peers = f.peers;
                r.uploaded_bytes = f.uploaded_bytes;
                r.upload_bytes_per_sec = f.upload_bytes_per_sec;
                r.request_p50_us = f.request_p50_us;
                r.request_p99_us = f.request_p99_us;
            }
        }
        if let Some(reason) = errored.get(&r.info_hash) {
            if matches!(r.state, "seeding" | "incomplete") {
                r.state = "errored";
                r.error = Some(reason.to_string());
            }
        }
    }
    rows
}

fn show(
    api: &Api,
    view: &Mutex<StatsView>,
    h: &InfoHash,
    query: &str,
) -> Result<ApiResponse, ApiError> {
    let offset = number(query, "peers_offset", 0)?;
    let limit = number(query, "peers_limit", PEERS_LIMIT_DEFAULT)?;
    if limit > PEERS_PAGE_MAX {
        return Err(ApiError::new(
            400,
            format!(
                "?peers_limit={limit}: give 0 to {PEERS_PAGE_MAX}, and page with ?peers_offset="
            ),
        ));
    }
    let info = lock(&api.runtime).info(h).ok_or_else(|| {
        ApiError::new(
            404,
            format!("no torrent {h} in the catalog (list them with `squall torrents ls`)"),
        )
    })?;
    let mut body = to_json(with_numbers(vec![info], view).remove(0));
    body["peer_list"] = peer_list(&api.shards, h, offset, limit);
    Ok(ApiResponse { status: 200, body })
}

/// One page of the torrent's peers over all shards, in shard order, then each shard's
/// peer-table order: every shard is asked at once for up to `limit` peers after its share of
/// `offset` (cut by the counts the shards answer, so `total` is exact; a page read while
/// peers come and go may repeat or skip one). At most `shards x limit` rows cross, and one
/// page is at most `PEERS_PAGE_MAX`.
fn peer_list(
    shards: &[Sender<ShardCommand>],
    h: &InfoHash,
    offset: usize,
    limit: usize,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_millis(PEERS_REPLY_TIMEOUT_MS);
    // First every shard's count and first rows, at once; then the pages past `offset`.
    let first = ask_peers(
        shards,
        h,
        |_| (0, offset.saturating_add(limit).min(PEERS_PAGE_MAX)),
        deadline,
    );
    let mut missing = first.iter().filter(|p| p.is_none()).count();
    let totals: Vec<usize> = first
        .iter()
        .map(|p| p.as_ref().map_or(0, |p| p.total))
        .collect();
    let total: usize = totals.iter().sum();
    let mut rows: Vec<PeerRow> = Vec::new();
    if offset.saturating_add(limit) <= PEERS_PAGE_MAX {
        rows = first
            .into_iter()
            .flatten()
            .flat_map(|p| p.peers)
            .skip(offset)
            .take(limit)
            .collect();
    } else if limit > 0 {
        // A deep page: each shard skips its share of `offset`.
        let mut skip = offset;
        let plan: Vec<(usize, usize)> = totals
            .iter()
            .map(|n| {
                let local = skip.min(*n);
                skip -= local;
                (local, limit)
            })
            .collect();
        let pages = ask_peers(shards, h, |i| plan[i], deadline);
        missing = missing.max(pages.iter().filter(|p| p.is_none()).count());
        rows = pages
            .into_iter()
            .flatten()
            .flat_map(|p| p.peers)
            .take(limit)
            .collect();
    }
    let peers: Vec<serde_json::Value> = rows
        .iter()
        .map(|p| {
            json!({
                "address": p.addr.to_string(),
                "client": p.client,
                "upload_bytes_per_sec": p.upload_bytes_per_sec,
                "uploaded_bytes": p.uploaded_bytes,
                "queued_requests": p.queued_requests,
                "draining": p.draining,
            })
        })
        .collect();
    json!({
        "total": total,
        "offset": offset,
        "limit": limit,
        "shards_missing": missing,
        "peers": peers,
    })
}

/// Sends every shard a `Peers` request (`plan(shard)` = its offset and limit) and waits for
/// the answers until `deadline`; None for a shard whose queue was full or that did not answer.
fn ask_peers(
    shards: &[Sender<ShardCommand>],
    h: &InfoHash,
    plan: impl Fn(usize) -> (usize, usize),
    deadline: Instant,
) -> Vec<Option<PeersPage>> {
    let waiting: Vec<_> = shards
        .iter()
        .enumerate()
        .map(|(i, tx)| {
            let (reply, answer) = bounded::<PeersPage>(1);
            let (offset, limit) = plan(i);
            let request = PeersRequest {
                info_hash: *h,
                offset,
                limit,
                reply,
            };
            tx.try_send(ShardCommand::Peers(request))
                .ok()
                .map(|()| answer)
        })
        .collect();
    waiting
        .into_iter()
        .map(|answer| answer.and_then(|rx| rx.recv_deadline(deadline).ok()))
        .collect()
}

fn number(query: &str, key: &str, default: usize) -> Result<usize, ApiError> {
    match query_param(query, key) {
        None => Ok(default),
        Some(v) => v
            .parse()
            .map_err(|_| ApiError::new(400, format!("?{key}={v}: give a whole number"))),
    }
}

fn list(api: &Api, view: &Mutex<StatsView>, query: &str) -> Result<ApiResponse, ApiError> {
    let offset = number(query, "offset", 0)?;
    let limit = number(query, "limit", PAGE_LIMIT_DEFAULT)?;
    if limit == 0 || limit > PAGE_LIMIT_MAX {
        return Err(ApiError::new(
            400,
            format!("?limit={limit}: give 1 to {PAGE_LIMIT_MAX}, and page with ?offset="),
        ));
    }
    let name = query_param(query, "name").map(|n| n.to_lowercase());
    let state = query_param(query, "state");
    let errored = match query_param(query, "errored").as_deref() {
        None => None,
        Some("true" | "1") => Some(true),
        Some("false" | "0") => Some(false),
        Some(other) => {
            return Err(ApiError::new(
                400,
                format!("?errored={other}: give true or false"),
            ))
        }
    };
    let rows = lock(&api.runtime).list();
    // Numbers (and the errored state) first: the state filter sees what the answer shows.
    let rows = with_numbers(rows, view);
    let matching: Vec<TorrentInfo> = rows
        .into_iter()
        .filter(|r| {
            name.as_ref()
                .is_none_or(|n| r.name.to_lowercase().contains(n))
        })
        .filter(|r| state.as_ref().is_none_or(|s| r.state == s))
        .filter(|r| errored.is_none_or(|e| (r.state == "errored" || r.state == "failed") == e))
        .collect();
    let total = matching.len();
    let page: Vec<serde_json::Value> = matching
        .into_iter()
        .skip(offset)
        .take(limit)
        .map(to_json)
        .collect();
    Ok(ApiResponse {
        status: 200,
        body: json!({ "total": total, "offset": offset, "limit": limit, "torrents": page }),
    })
}

fn add(
    api: &Api,
    view: &Mutex<StatsView>,
    query: &str,
    content_type: Option<&str>,
    body: &[u8],
) -> Result<ApiResponse, ApiError> {
    let is_json = content_type.is_some_and(|c| c.starts_with("application/json"))
        || body.first() == Some(&b'{');
    let (torrent, data) = if is_json {
        let v: serde_json::Value = serde_json::from_slice(body).map_err(|e| {
            ApiError::new(
                400,
                format!("body is not JSON ({e}): send {{\"torrent_file\": PATH, \"data\": DIR}} or a .torrent"),
            )
        })?;
        let field = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_string);
        let file = field("torrent_file").ok_or_else(|| {
            ApiError::new(
                400,
                "JSON body needs \"torrent_file\": the .torrent's path on this machine",
            )
        })?;
        let data = field("data")
            .or_else(|| query_param(query, "data"))
            .ok_or_else(|| {
                ApiError::new(400, "name the data directory: \"data\": DIR (or ?data=DIR)")
            })?;
        (
            read_torrent_file(&PathBuf::from(file), api.body_bytes_max)?,
            data,
        )
    } else {
        if body.is_empty() {
            return Err(ApiError::new(
                400,
                "empty body: POST the .torrent file's bytes, with ?data=DIR",
            ));
        }
        let data = query_param(query, "data").ok_or_else(|| {
            ApiError::new(
                400,
                "name the data directory with ?data=DIR (percent-encoded)",
            )
        })?;
        (body.to_vec(), data)
    };
    let info = lock(&api.runtime).add(&torrent, &PathBuf::from(data))?;
    Ok(ApiResponse {
        status: 202,
        body: to_json(with_numbers(vec![info], view).remove(0)),
    })
}

/// A .torrent named by path on this machine, at most `max_bytes`.
fn read_torrent_file(path: &std::path::Path, max_bytes: usize) -> Result<Vec<u8>, ApiError> {
    let meta = std::fs::metadata(path)
        .map_err(|e| ApiError::new(400, format!("torrent_file {}: {e}", path.display())))?;
    if !meta.is_file() || meta.len() > max_bytes as u64 {
        return Err(ApiError::new(
            400,
            format!(
                "torrent_file {}: not a regular file of at most {max_bytes} bytes \
                 ([admin] api_body_bytes_max)",
                path.display()
            ),
        ));
    }
    std::fs::read(path)
        .map_err(|e| ApiError::new(400, format!("torrent_file {}: {e}", path.display())))
}

/// The percent-decoded value of `key` in `a=1&b=2` (`+` stays `+`: paths may hold it).
pub fn query_param(query: &str, key: &str) -> Option<String> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('=').or(Some((pair, ""))))
        .find(|(k, _)| *k == key)
        .and_then(|(_, v)| percent_decode(v))
}

/// `%XX` sequences to bytes; None when malformed or not UTF-8.
pub fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

pub use crate::metainfo::magnet::percent_encode;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Catalog;
    use crate::control::runtime::{Runtime, RuntimeSetup};
    use std::collections::HashMap;
    use std::sync::Arc;

    fn make(dir: &std::path::Path, name: &str, len: usize) -> Vec<u8> {
        let content = dir.join(name);
        std::fs::write(&content, vec![7u8; len]).unwrap();
        let opts = crate::metainfo::create::CreateOptions {
            piece_length: Some(16384),
            trackers: Vec::new(),
            private: false,
            comment: None,
            web_seeds: Vec::new(),
            created_by: "test".into(),
            creation_date: Some(0),
        };
        crate::make::make_torrent(&content, &opts, 1, &|_, _| {})
            .unwrap()
            .1
    }

    fn setup() -> (tempfile::TempDir, Api, Mutex<StatsView>) {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join("data")).unwrap();
        let rt = Runtime::start(
            RuntimeSetup {
                state_dir: tmp.path().join("state"),
                data_roots: vec![tmp.path().join("data")],
            },
            Arc::new(Catalog::default()),
        )
        .unwrap();
        let api = Api {
            runtime: Arc::new(Mutex::new(rt)),
            body_bytes_max: 1 << 20,
            shards: Vec::new(),
        };
        let view = Mutex::new(StatsView::new(1, 5, HashMap::new()));
        (tmp, api, view)
    }

    fn wait_state(api: &Api, h: &str, want: &str) -> serde_json::Value {
        for _ in 0..200 {
            lock(&api.runtime).poll();
            let v = lock(&api.runtime).info(&InfoHash::from_hex(h).unwrap());
            if let Some(v) = v.filter(|v| v.state == want) {
                return to_json(v);
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("{h} never reached {want}");
    }

    #[test]
    fn add_list_pause_remove_round_trip_and_refusals_change_nothing() {
        // A good add verifies off the caller's thread and is served; bad input (garbage
        // torrent, a data path outside the roots, an unknown hash, a bad limit) is a 4xx
        // JSON error and the list is unchanged; pause leaves the served catalog, remove
        // forgets it and the state file says so across a restart.
        let (tmp, api, view) = setup();
        let data = tmp.path().join("data");
        let bytes = make(&data, "one.bin", 40_000);
        let q = format!("data={}", percent_encode(data.to_str().unwrap()));
        let r = handle(
            &api,
            &view,
            "POST",
            "/api/v1/torrents",
            &q,
            None,
            b"d4:junke",
        );
        assert_eq!(r.status, 400, "{:?}", r.body);
        assert!(r.body["error"]
            .as_str()
            .unwrap()
            .contains("not a valid .torrent"));
        let outside = tempfile::tempdir().unwrap();
        let q_out = format!("data={}", percent_encode(outside.path().to_str().unwrap()));
        let r = handle(
            &api,
            &view,
            "POST",
            "/api/v1/torrents",
            &q_out,
            None,
            &bytes,
        );
        assert_eq!(r.status, 403, "{:?}", r.body);
        let list = handle(&api, &view, "GET", "/api/v1/torrents", "", None, b"");
        assert_eq!(list.body["total"], 0);
        let r = handle(&api, &view, "POST", "/api/v1/torrents", &q, None, &bytes);
        assert_eq!(r.status, 202, "{:?}", r.body);
        let h = r.body["info_hash"].as_str().unwrap().to_string();
        let again = handle(&api, &view, "POST", "/api/v1/torrents", &q, None, &bytes);
        assert_eq!(again.status, 409);
        let v = wait_state(&api, &h, "seeding");
        assert_eq!(v["size_bytes"], 40_000);
        assert_eq!(lock(&api.runtime).served().len(), 1);
        let r = handle(
            &api,
            &view,
            "GET",
            "/api/v1/torrents",
            "name=ONE&state=seeding",
            None,
            b"",
        );
        assert_eq!(r.body["total"], 1);
        let r = handle(
            &api,
            &view,
            "GET",
            "/api/v1/torrents",
            "limit=100000",
            None,
            b"",
        );
        assert_eq!(r.status, 400);
        let path = format!("/api/v1/torrents/{h}/pause");
        assert_eq!(
            handle(&api, &view, "POST", &path, "", None, b"").body["state"],
            "paused"
        );
        assert_eq!(lock(&api.runtime).served().len(), 0);
        let path = format!("/api/v1/torrents/{h}/resume");
        assert_eq!(
            handle(&api, &view, "POST", &path, "", None, b"").body["state"],
            "seeding"
        );
        let unknown = format!("/api/v1/torrents/{}", "ab".repeat(20));
        assert_eq!(
            handle(&api, &view, "DELETE", &unknown, "", None, b"").status,
            404
        );
        assert_eq!(
            handle(&api, &view, "GET", "/api/v1/torrents/xyz", "", None, b"").status,
            400
        );
        let one = format!("/api/v1/torrents/{h}");
        assert_eq!(
            handle(&api, &view, "DELETE", &one, "", None, b"").status,
            200
        );
        // Listed as draining until the control loop sees its peers gone, then unknown.
        let shown = handle(&api, &view, "GET", &one, "", None, b"");
        assert_eq!(shown.body["state"], "draining", "{:?}", shown.body);
        assert_eq!(shown.body["peer_list"]["total"], 0);
        let listed = handle(&api, &view, "GET", "/api/v1/torrents", "", None, b"");
        assert_eq!(listed.body["torrents"][0]["state"], "draining");
        let draining = lock(&api.runtime).draining();
        assert_eq!(draining.len(), 1);
        lock(&api.runtime).drained(&[draining[0].0]);
        assert_eq!(handle(&api, &view, "GET", &one, "", None, b"").status, 404);
        assert_eq!(lock(&api.runtime).served().len(), 0);
        let saved = std::fs::read_to_string(tmp.path().join("state/api/catalog.json")).unwrap();
        assert!(!saved.contains(&h), "{saved}");
    }

    /// A shard that answers `Peers` requests for `peers` peers (port = shard * 1000 + i).
    fn fake_shard(shard: usize, peers: usize) -> Sender<ShardCommand> {
        let (tx, rx) = bounded::<ShardCommand>(4);
        std::thread::spawn(move || {
            for cmd in rx.iter() {
                let ShardCommand::Peers(r) = cmd else {
                    continue;
                };
                let rows = (r.offset..peers)
                    .take(r.limit.min(PEERS_PAGE_MAX))
                    .map(|i| PeerRow {
                        addr: ([127, 0, 0, 1], (shard * 1000 + i) as u16).into(),
                        client: "test".into(),
                        upload_bytes_per_sec: 0.0,
                        uploaded_bytes: 0,
                        queued_requests: i,
                        draining: false,
                    })
                    .collect();
                let _ = r.reply.try_send(PeersPage {
                    shard,
                    total: peers,
                    peers: rows,
                });
            }
        });
        tx
    }

    #[test]
    fn peer_pages_run_over_the_shards_in_order() {
        // Proves: a page starts at `offset` counted over shard 0's peers, then shard 1's;
        // `total` sums the shards; a deep page (past PEERS_PAGE_MAX) skips whole shards; a
        // shard that never answers is counted as missing, not waited on forever.
        let shards = vec![fake_shard(0, 240), fake_shard(1, 100)];
        let h = InfoHash([3; 20]);
        let ports = |v: &serde_json::Value| -> Vec<u64> {
            v["peers"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| {
                    let a: std::net::SocketAddr = p["address"].as_str().unwrap().parse().unwrap();
                    u64::from(a.port())
                })
                .collect()
        };
        let v = peer_list(&shards, &h, 238, 4);
        assert_eq!(v["total"], 340);
        assert_eq!(ports(&v), vec![238, 239, 1000, 1001]);
        let v = peer_list(&shards, &h, 250, 3);
        assert_eq!(ports(&v), vec![1010, 1011, 1012]);
        assert_eq!(v["shards_missing"], 0);
        let (silent, _keep) = bounded::<ShardCommand>(4);
        let v = peer_list(&[silent], &h, 0, 5);
        assert_eq!(
            (v["total"].as_u64(), v["shards_missing"].as_u64()),
            (Some(0), Some(1))
        );
    }

    #[test]
    fn adds_persist_and_come_back_verified_after_a_restart() {
        // A torrent added (and paused) is listed again by a new runtime on the same state
        // directory, with its pause kept.
        let (tmp, api, view) = setup();
        let data = tmp.path().join("data");
        let bytes = make(&data, "two.bin", 20_000);
        let q = format!("data={}", percent_encode(data.to_str().unwrap()));
        let h = handle(&api, &view, "POST", "/api/v1/torrents", &q, None, &bytes).body["info_hash"]
            .as_str()
            .unwrap()
            .to_string();
        wait_state(&api, &h, "seeding");
        let path = format!("/api/v1/torrents/{h}/pause");
        handle(&api, &view, "POST", &path, "", None, b"");
        drop(api);
        let rt = Runtime::start(
            RuntimeSetup {
                state_dir: tmp.path().join("state"),
                data_roots: vec![data.clone()],
            },
            Arc::new(Catalog::default()),
        )
        .unwrap();
        let api = Api {
            runtime: Arc::new(Mutex::new(rt)),
            body_bytes_max: 1 << 20,
            shards: Vec::new(),
        };
        let v = wait_state(&api, &h, "paused");
        assert_eq!(v["name"], "two.bin");
        assert_eq!(percent_decode("a%20b%2Fc").as_deref(), Some("a b/c"));
        assert_eq!(percent_decode("%zz"), None);
    }
}
