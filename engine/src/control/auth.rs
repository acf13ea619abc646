//! Who may use the admin endpoint: the bearer token, its file, and the brake on guessing.
//!
//! Owns: reading (or creating, mode 0600, 32 random bytes as hex) the token file, the
//! constant-time comparison, the rule which requests need the token (mutating ones always;
//! read-only ones when the listener is not loopback, or when the token came from `[admin]
//! token`, which always guarded every route), the per-client failure table (bounded by
//! `AUTH_CLIENTS_MAX`) that answers 429 after `failures_per_min_max` failures in a minute,
//! and the process-wide counters `/metrics` shows. Must never: log or echo a token, compare
//! with an early exit, or grow a table per request.

use std::collections::HashMap;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Clients whose failures are remembered; past it the oldest window is forgotten.
pub const AUTH_CLIENTS_MAX: usize = 1024;
/// The window failures are counted over.
pub const AUTH_WINDOW: Duration = Duration::from_secs(60);
/// Random bytes in a created token (hex-encoded: 64 characters).
pub const TOKEN_BYTES: usize = 32;

static AUTH_FAILURES: AtomicU64 = AtomicU64::new(0);
static AUTH_RATE_LIMITED: AtomicU64 = AtomicU64::new(0);

/// Reads the token from `path`, creating the file (0600) with a random token when missing.
pub fn load_or_create_token(path: &Path) -> Result<String, String> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let token = text.trim().to_string();
            if token.is_empty() {
                return Err(format!(
                    "admin token file {} is empty: delete it (a new one is made at start) or \
                     write a token into it",
                    path.display()
                ));
            }
            if let Ok(meta) = std::fs::metadata(path) {
                if meta.permissions().mode() & 0o077 != 0 {
                    tracing::warn!(
                        "admin token file {} is readable by other users: chmod 600 it",
                        path.display()
                    );
                }
            }
            Ok(token)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)
                    .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
            }
            let bytes: [u8; TOKEN_BYTES] = rand::random();
            let token = hex::encode(bytes);
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(|e| {
                    format!("cannot create the admin token file {}: {e}", path.display())
                })?;
            f.write_all(format!("{token}\n").as_bytes())
                .and_then(|_| f.sync_all())
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            tracing::info!("created the admin token file {}", path.display());
            Ok(token)
        }
        Err(e) => Err(format!(
            "cannot read the admin token file {}: {e} (check its permissions, or set [admin] \
             token_file)",
            path.display()
        )),
    }
}

/// Compares without an early exit, so response time does not leak how much of it matched.
pub fn token_matches(given: &str, expected: &str) -> bool {
    let (a, b) = (given.as_bytes(), expected.as_bytes());
    let mut diff = a.len() ^ b.len();
    for (i, x) in a.iter().enumerate() {
        diff |= usize::from(x ^ b.get(i % b.len().max(1)).copied().unwrap_or(0));
    }
    diff == 0
}

/// The verdict on one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    /// 401: no token, or the wrong one.
    Unauthorized,
    /// 429: this client failed too often in the window.
    Limited,
}

#[derive(Debug, Clone, Copy)]
struct Window {
    started_at: Instant,
    failures: u32,
}

/// The admin endpoint's access rule.
#[derive(Debug)]
pub struct AdminAuth {
    token: Option<String>,
    reads_need_token: bool,
    failures_per_min_max: u32,
    clients: Mutex<HashMap<IpAddr, Window>>,
}

impl AdminAuth {
    /// `token`: None only when no token exists at all (then every request is allowed, as
    /// before the API: the listener is loopback); `reads_need_token`: read-only routes too.
    pub fn new(token: Option<String>, reads_need_token: bool, failures_per_min_max: u32) -> Self {
        AdminAuth {
            token,
            reads_need_token,
            failures_per_min_max: failures_per_min_max.max(1),
            clients: Mutex::new(HashMap::new()),
        }
    }

    /// No token at all: nothing is checked, and mutating routes are refused (no API without
    /// a token).
    pub fn has_token(&self) -> bool {
        self.token.is_some()
    }

    /// Checks `authorization` (the header's value) for a request from `client` at `now`.
    pub fn check(
        &self,
        client: IpAddr,
        authorization: Option<&str>,
        mutating: bool,
        now: Instant,
    ) -> Verdict {
        let Some(expected) = self.token.as_deref() else {
            return if mutating {
                Verdict::Unauthorized
            } else {
                Verdict::Allowed
            };
        };
        if !mutating && !self.reads_need_token {
            return Verdict::Allowed;
        }
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        let limited = clients.get(&client).is_some_and(|w| {
            now.duration_since(w.started_at) < AUTH_WINDOW
                && w.failures >= self.failures_per_min_max
        });
        if limited {
            AUTH_RATE_LIMITED.fetch_add(1, Ordering::Relaxed);
            return Verdict::Limited;
        }
        let ok = authorization
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|given| token_matches(given.trim(), expected));
        if ok {
            return Verdict::Allowed;
        }
        AUTH_FAILURES.fetch_add(1, Ordering::Relaxed);
        if !clients.contains_key(&client) && clients.len() >= AUTH_CLIENTS_MAX {
            // Forget the oldest window: the table stays bounded whatever the clients do.
            if let Some(oldest) = clients
                .iter()
                .min_by_key(|(_, w)| w.started_at)
                .map(|(ip, _)| *ip)
            {
                clients.remove(&oldest);
            }
        }
        let w = clients.entry(client).or_insert(Window {
            started_at: now,
            failures: 0,
        });
        if now.duration_since(w.started_at) >= AUTH_WINDOW {
            *w = Window {
                started_at: now,
                failures: 0,
            };
        }
        w.failures += 1;
        Verdict::Unauthorized
    }
}

/// The auth counters in Prometheus text (appended to `/metrics`).
pub fn render_metrics(out: &mut String) {
    use std::fmt::Write as _;
    let _ = writeln!(
        out,
        "# HELP squall_admin_auth_failures_total Admin requests refused for a missing or wrong token.\n\
         # TYPE squall_admin_auth_failures_total counter\n\
         squall_admin_auth_failures_total {}\n\
         # HELP squall_admin_auth_rate_limited_total Admin requests refused (429) after too many failures from one client.\n\
         # TYPE squall_admin_auth_rate_limited_total counter\n\
         squall_admin_auth_rate_limited_total {}",
        AUTH_FAILURES.load(Ordering::Relaxed),
        AUTH_RATE_LIMITED.load(Ordering::Relaxed)
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_rules_and_the_failure_brake() {
        // Reads are open on loopback, writes never; wrong tokens count per client, and the
        // limit answers 429 even to the right token until the window passes.
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let other: IpAddr = "127.0.0.2".parse().unwrap();
        let auth = AdminAuth::new(Some("s3cret".into()), false, 3);
        let now = Instant::now();
        assert_eq!(auth.check(ip, None, false, now), Verdict::Allowed);
        assert_eq!(auth.check(ip, None, true, now), Verdict::Unauthorized);
        assert_eq!(
            auth.check(ip, Some("Bearer s3cret"), true, now),
            Verdict::Allowed
        );
        assert_eq!(
            auth.check(ip, Some("Bearer nope"), true, now),
            Verdict::Unauthorized
        );
        assert_eq!(
            auth.check(ip, Some("s3cret"), true, now),
            Verdict::Unauthorized
        );
        assert_eq!(
            auth.check(ip, Some("Bearer s3cret"), true, now),
            Verdict::Limited
        );
        assert_eq!(
            auth.check(other, Some("Bearer s3cret"), true, now),
            Verdict::Allowed
        );
        let later = now + AUTH_WINDOW;
        assert_eq!(
            auth.check(ip, Some("Bearer s3cret"), true, later),
            Verdict::Allowed
        );
        let strict = AdminAuth::new(Some("t".into()), true, 3);
        assert_eq!(strict.check(ip, None, false, now), Verdict::Unauthorized);
        let none = AdminAuth::new(None, false, 3);
        assert_eq!(none.check(ip, None, false, now), Verdict::Allowed);
        assert_eq!(
            none.check(ip, Some("Bearer x"), true, now),
            Verdict::Unauthorized
        );
        assert!(token_matches("abc", "abc") && !token_matches("abd", "abc"));
        assert!(!token_matches("ab", "abc") && !token_matches("", "abc"));
    }

    #[test]
    fn token_file_is_created_private_and_read_back() {
        // First start makes a 64-hex-digit token, mode 0600; the next start reads the same.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/admin.token");
        let t = load_or_create_token(&path).unwrap();
        assert_eq!(t.len(), TOKEN_BYTES * 2);
        assert!(t.chars().all(|c| c.is_ascii_hexdigit()));
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(load_or_create_token(&path).unwrap(), t);
        std::fs::write(&path, "\n").unwrap();
        assert!(load_or_create_token(&path).unwrap_err().contains("empty"));
    }
}
