//! One Squall per port and per state directory.
//!
//! Owns: the state-directory lock (`StateLock`, an `flock` on `<state>/squall.lock` held for
//! the process's life), the exclusive probe bind that runs before the shards bind their
//! `SO_REUSEPORT` listeners (`probe_port_free`), and finding which process holds a port
//! (`/proc/net/tcp{,6}` for the socket inode, then `/proc/*/fd` for its owner).
//!
//! Why: the shards' listeners use `SO_REUSEPORT`, so a second Squall of the same user binds
//! the same port without an error and the kernel hands it most new connections, which it then
//! closes as `unknown_info_hash`. A bind without `SO_REUSEPORT` fails against any listener,
//! so the probe turns that silent split into a start-up error naming the port and the PID.
//!
//! Must never: keep the probe socket (the shards could not bind next to it), or fail a start
//! because the owner of a port could not be found (that only shortens the message).

use crate::net;
use std::fs::File;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

/// The lock file's name inside the state directory.
pub const LOCK_FILE_NAME: &str = "squall.lock";
/// TCP state LISTEN as /proc/net/tcp writes it.
const TCP_STATE_LISTEN_HEX: &str = "0A";
/// Processes scanned at most when looking for a port's owner (bounds the /proc walk).
const PROC_SCAN_PIDS_MAX: usize = 65_536;

/// Held for the life of the process: a second Squall on the same state directory would
/// share its resume files and zero-config torrents.
#[derive(Debug)]
pub struct StateLock {
    _file: File,
    path: PathBuf,
}

impl StateLock {
    /// Takes the lock on `<state_dir>/squall.lock` (without waiting) and writes our PID into
    /// it. Fails naming the PID of the Squall that holds it.
    pub fn acquire(state_dir: &Path) -> Result<StateLock, String> {
        let path = state_dir.join(LOCK_FILE_NAME);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| {
                format!(
                    "cannot open the lock file {}: {e} (choose another state directory with --state)",
                    path.display()
                )
            })?;
        // SAFETY: flock on an fd we own; the result is checked.
        let ret = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if ret != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                let holder = std::fs::read_to_string(&path)
                    .ok()
                    .and_then(|s| s.trim().parse::<u32>().ok())
                    .map(|pid| format!(" (PID {pid})"))
                    .unwrap_or_default();
                return Err(format!(
                    "another squall{holder} is running with the state directory {}: stop it, \
                     or give this one its own directory with --state",
                    state_dir.display()
                ));
            }
            return Err(format!("cannot lock {}: {e}", path.display()));
        }
        // Only the holder writes, so the PID in the file is always the holder's.
        let pid = std::process::id().to_string();
        let written = file.set_len(0).and_then(|()| {
            use std::io::Write;
            (&file).write_all(format!("{pid}\n").as_bytes())
        });
        if let Err(e) = written {
            tracing::warn!("cannot write the PID into {}: {e}", path.display());
        }
        Ok(StateLock { _file: file, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Binds `addr` once without `SO_REUSEPORT` and lets it go: an error here means another
/// process listens on it, and the message names the port and, when /proc tells, the PID.
/// Port 0 is always free (the kernel picks).
pub fn probe_port_free(addr: &SocketAddr) -> Result<(), String> {
    if addr.port() == 0 {
        return Ok(());
    }
    match exclusive_bind(addr) {
        Ok(_probe) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EADDRINUSE) => {
            let holder = match port_holder(addr.port()) {
                Some((pid, name)) => format!("PID {pid} ({name})"),
                None => "another process".to_string(),
            };
            Err(format!(
                "port {} is already in use on {addr}: {holder} listens on it. Is another squall \
                 running? Stop it, or pick another port with --listen",
                addr.port()
            ))
        }
        // Anything else (no such address, no privilege) the shards' own bind reports with
        // its hint; the probe only decides "taken by someone else".
        Err(_) => Ok(()),
    }
}

/// socket + SO_REUSEADDR (so our own sockets in TIME_WAIT from a restart do not count) +
/// bind, no listen. Dropped by the caller at once.
fn exclusive_bind(addr: &SocketAddr) -> std::io::Result<OwnedFd> {
    let fd = net::tcp_socket(addr)?;
    let one: libc::c_int = 1;
    let int_len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: setsockopt reads one int from a valid pointer.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            (&one as *const libc::c_int).cast(),
            int_len,
        );
        if addr.is_ipv6() {
            // As the shards do: [::]:P and 0.0.0.0:P are separate listeners.
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::IPPROTO_IPV6,
                libc::IPV6_V6ONLY,
                (&one as *const libc::c_int).cast(),
                int_len,
            );
        }
    }
    let (storage, len) = net::std_to_sockaddr(addr);
    // SAFETY: storage holds a valid sockaddr of `len` bytes.
    let ret = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&storage as *const libc::sockaddr_storage).cast(),
            len,
        )
    };
    if ret != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(fd)
}

/// (PID, command name) of a process with a TCP socket listening on `port`, if /proc shows one
/// (another user's fds are hidden from an unprivileged caller).
pub fn port_holder(port: u16) -> Option<(u32, String)> {
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        if let Ok(text) = std::fs::read_to_string(table) {
            inodes.extend(listening_inodes(&text, port));
        }
    }
    if inodes.is_empty() {
        return None;
    }
    let wanted: Vec<String> = inodes.iter().map(|i| format!("socket:[{i}]")).collect();
    let me = std::process::id();
    let procs = std::fs::read_dir("/proc").ok()?;
    for entry in procs.take(PROC_SCAN_PIDS_MAX).flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(target) = std::fs::read_link(fd.path()) else {
                continue;
            };
            if wanted.iter().any(|w| target.as_os_str() == w.as_str()) {
                let name = std::fs::read_to_string(entry.path().join("comm"))
                    .map(|s| s.trim().to_string())
                    .unwrap_or_else(|_| "?".into());
                return Some((pid, name));
            }
        }
    }
    None
}

/// Socket inodes of LISTEN rows for `port` in a /proc/net/tcp{,6} table.
/// Row: `sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode ...`,
/// with `local_address` as `HEXADDR:HEXPORT`.
pub fn listening_inodes(table: &str, port: u16) -> Vec<u64> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let local = cols.get(1)?;
            let state = cols.get(3)?;
            let inode = cols.get(9)?.parse::<u64>().ok()?;
            let port_hex = local.rsplit(':').next()?;
            let row_port = u16::from_str_radix(port_hex, 16).ok()?;
            (row_port == port && *state == TCP_STATE_LISTEN_HEX && inode != 0).then_some(inode)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_rows_are_found_by_port() {
        // Only LISTEN rows of the asked port count; established rows and other ports do not.
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 0100007F:1AE1 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0000000000000000 100 0 0 10 0\n\
   1: 0100007F:1AE1 0100007F:9C40 01 00000000:00000000 00:00000000 00000000     0        0 4343 1 0000000000000000 20 4 30 10 -1\n\
   2: 00000000:1AE2 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4444 1 0000000000000000 100 0 0 10 0\n";
        assert_eq!(listening_inodes(table, 6881), vec![4242]);
        assert_eq!(listening_inodes(table, 6882), vec![4444]);
        assert!(listening_inodes(table, 80).is_empty());
        assert!(listening_inodes("garbage\nnot a row", 6881).is_empty());
    }

    #[test]
    fn probe_refuses_a_port_with_a_listener_and_names_us() {
        // A plain listener holds the port: the probe fails naming the port; after it is
        // closed the probe passes. (The holder is this process, which the scan skips.)
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let err = probe_port_free(&addr).unwrap_err();
        assert!(err.contains(&format!("port {}", addr.port())), "{err}");
        drop(l);
        probe_port_free(&addr).unwrap();
        probe_port_free(&"127.0.0.1:0".parse().unwrap()).unwrap();
    }

    #[test]
    fn probe_sees_reuseport_listeners() {
        // The shards' SO_REUSEPORT listeners let another SO_REUSEPORT bind in, never the probe.
        let shard = net::reuseport_listener(&"127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = net::local_addr(&shard).unwrap();
        assert!(probe_port_free(&addr).is_err());
    }

    #[test]
    fn state_lock_is_exclusive_until_dropped() {
        // A second lock on the same directory fails naming the holder's PID; dropping frees it.
        let dir = tempfile::tempdir().unwrap();
        let first = StateLock::acquire(dir.path()).unwrap();
        let err = StateLock::acquire(dir.path()).unwrap_err();
        assert!(
            err.contains(&format!("PID {}", std::process::id())),
            "{err}"
        );
        drop(first);
        StateLock::acquire(dir.path()).unwrap();
    }
}
