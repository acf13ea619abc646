//! Socket set-up outside the data path: SO_REUSEPORT listeners and address conversion.
//!
//! Owns: the few blocking syscalls made at start-up (socket, setsockopt, bind, listen).
//! Must never: be called from a shard's loop.

use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// Pending connections per listener (the kernel also caps it at net.core.somaxconn).
pub const LISTEN_BACKLOG: i32 = 4096;

fn check(ret: libc::c_int, what: &str, addr: &SocketAddr) -> Result<(), String> {
    if ret < 0 {
        let e = std::io::Error::last_os_error();
        let hint = match e.raw_os_error() {
            Some(libc::EADDRINUSE) => {
                " (another program, or another squall, uses this port: pick another with --listen)"
            }
            Some(libc::EACCES) => " (ports below 1024 need privileges: use a port above 1024)",
            Some(libc::EADDRNOTAVAIL) => " (this machine has no such address)",
            Some(libc::EAFNOSUPPORT) => {
                " (this address family is not available, e.g. IPv6 disabled)"
            }
            _ => "",
        };
        return Err(format!("cannot {what} {addr}: {e}{hint}"));
    }
    Ok(())
}

/// A new close-on-exec TCP socket of `addr`'s family: what a listener, a probe or a dial
/// starts from.
pub fn tcp_socket(addr: &SocketAddr) -> std::io::Result<OwnedFd> {
    let domain = if addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: plain syscall; the result is checked before use.
    let raw = unsafe { libc::socket(domain, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `raw` is a new fd that nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// A listening TCP socket bound with SO_REUSEADDR and SO_REUSEPORT, so every shard can bind
/// the same address and the kernel spreads connections over them.
pub fn reuseport_listener(addr: &SocketAddr) -> Result<OwnedFd, String> {
    let domain = if addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: plain syscall; the result is checked before use.
    let raw = unsafe { libc::socket(domain, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    check(raw, "create a socket for", addr)?;
    // SAFETY: `raw` is a new fd that nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let one: libc::c_int = 1;
    let setopt = |level, name| {
        // SAFETY: setsockopt reads one int from a valid pointer.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                level,
                name,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        }
    };
    check(
        setopt(libc::SOL_SOCKET, libc::SO_REUSEADDR),
        "set SO_REUSEADDR on",
        addr,
    )?;
    check(
        setopt(libc::SOL_SOCKET, libc::SO_REUSEPORT),
        "set SO_REUSEPORT on",
        addr,
    )?;
    if addr.is_ipv6() {
        // Keep [::]:P and 0.0.0.0:P separate so both can be bound.
        check(
            setopt(libc::IPPROTO_IPV6, libc::IPV6_V6ONLY),
            "set IPV6_V6ONLY on",
            addr,
        )?;
    }
    let (storage, len) = std_to_sockaddr(addr);
    // SAFETY: storage holds a valid sockaddr of `len` bytes.
    let ret = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&storage as *const libc::sockaddr_storage).cast(),
            len,
        )
    };
    check(ret, "bind", addr)?;
    // SAFETY: plain syscall on an fd we own.
    check(
        unsafe { libc::listen(fd.as_raw_fd(), LISTEN_BACKLOG) },
        "listen on",
        addr,
    )?;
    Ok(fd)
}

/// The address a socket is bound to (to learn the port chosen for port 0).
pub fn local_addr(fd: &OwnedFd) -> Option<SocketAddr> {
    // SAFETY: getsockname writes at most `len` bytes into the zeroed storage.
    unsafe {
        let mut storage: libc::sockaddr_storage = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        if libc::getsockname(
            fd.as_raw_fd(),
            (&mut storage as *mut libc::sockaddr_storage).cast(),
            &mut len,
        ) != 0
        {
            return None;
        }
        sockaddr_to_std(&storage)
    }
}

pub fn sockaddr_to_std(storage: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match storage.ss_family as libc::c_int {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in.
            let a: &libc::sockaddr_in =
                unsafe { &*(storage as *const libc::sockaddr_storage).cast() };
            let ip = std::net::Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
            Some(SocketAddr::V4(SocketAddrV4::new(
                ip,
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6.
            let a: &libc::sockaddr_in6 =
                unsafe { &*(storage as *const libc::sockaddr_storage).cast() };
            let ip = std::net::Ipv6Addr::from(a.sin6_addr.s6_addr);
            Some(SocketAddr::V6(SocketAddrV6::new(
                ip,
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

pub fn std_to_sockaddr(addr: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            // SAFETY: sockaddr_storage is large and aligned enough for sockaddr_in.
            let sin: &mut libc::sockaddr_in =
                unsafe { &mut *(&mut storage as *mut libc::sockaddr_storage).cast() };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = a.port().to_be();
            sin.sin_addr.s_addr = u32::from(*a.ip()).to_be();
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            // SAFETY: sockaddr_storage is large and aligned enough for sockaddr_in6.
            let sin6: &mut libc::sockaddr_in6 =
                unsafe { &mut *(&mut storage as *mut libc::sockaddr_storage).cast() };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = a.port().to_be();
            sin6.sin6_addr.s6_addr = a.ip().octets();
            sin6.sin6_flowinfo = a.flowinfo();
            sin6.sin6_scope_id = a.scope_id();
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_reuseport_listeners_share_a_port() {
        // Shards bind the same address: the second bind must succeed, and port 0 resolves.
        let a = reuseport_listener(&"127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = local_addr(&a).unwrap();
        assert_ne!(addr.port(), 0);
        let _b = reuseport_listener(&addr).unwrap();
    }

    #[test]
    fn sockaddr_round_trip() {
        // Conversions to and from the C representation agree for both families.
        for s in ["127.0.0.5:6881", "[::1]:443"] {
            let addr: SocketAddr = s.parse().unwrap();
            let (st, _) = std_to_sockaddr(&addr);
            assert_eq!(sockaddr_to_std(&st), Some(addr));
        }
    }
}
