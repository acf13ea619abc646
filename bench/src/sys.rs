//! Thin, checked wrappers over the few libc calls the event loops use.
//!
//! Owns: every `unsafe` block of the crate, each with its SAFETY argument.
//! Must never: keep state, or hide an error (every failure becomes an `io::Error`).

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::RawFd;

fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn sockaddr_in(addr: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*addr.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

pub fn close(fd: RawFd) {
    // SAFETY: `fd` is a descriptor this crate opened and closes exactly once.
    unsafe {
        libc::close(fd);
    }
}

fn setsockopt_int(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: the option value points to a live c_int and its exact size is passed.
    cvt(unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    })
    .map(|_| ())
}

/// A nonblocking TCP socket, bound to `source` (port chosen at connect time) when given,
/// with a connect in progress to `target`.
pub fn connect_nonblocking(target: SocketAddrV4, source: Option<Ipv4Addr>) -> io::Result<RawFd> {
    // SAFETY: plain socket(2) call; the result is checked.
    let fd = cvt(unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    })?;
    let setup = || -> io::Result<()> {
        // Requests are 17-byte frames written in batches; Nagle would only add latency.
        setsockopt_int(fd, libc::IPPROTO_TCP, libc::TCP_NODELAY, 1)?;
        if let Some(ip) = source {
            // Defer the port choice to connect() so thousands of connections per source
            // address do not exhaust bind()'s port range.
            setsockopt_int(fd, libc::IPPROTO_IP, libc::IP_BIND_ADDRESS_NO_PORT, 1)?;
            let sa = sockaddr_in(SocketAddrV4::new(ip, 0));
            // SAFETY: `sa` is a valid sockaddr_in and its size is passed.
            cvt(unsafe {
                libc::bind(
                    fd,
                    (&sa as *const libc::sockaddr_in).cast(),
                    std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                )
            })?;
        }
        let sa = sockaddr_in(target);
        // SAFETY: as for bind.
        let ret = unsafe {
            libc::connect(
                fd,
                (&sa as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        if ret < 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EINPROGRESS) {
                return Err(err);
            }
        }
        Ok(())
    };
    match setup() {
        Ok(()) => Ok(fd),
        Err(e) => {
            close(fd);
            Err(e)
        }
    }
}

/// The pending error of a socket whose nonblocking connect finished (0 = connected).
pub fn socket_error(fd: RawFd) -> io::Result<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: value/len point to live locals of the sizes passed.
    cvt(unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    })?;
    Ok(value)
}

/// A nonblocking listening socket on `addr` (SO_REUSEADDR), and the address it got.
pub fn listen(addr: SocketAddrV4) -> io::Result<(RawFd, SocketAddrV4)> {
    // SAFETY: plain socket(2) call; the result is checked.
    let fd = cvt(unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    })?;
    let setup = || -> io::Result<SocketAddrV4> {
        setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
        let sa = sockaddr_in(addr);
        // SAFETY: `sa` is a valid sockaddr_in and its size is passed.
        cvt(unsafe {
            libc::bind(
                fd,
                (&sa as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        })?;
        // SAFETY: plain listen(2) on our socket.
        cvt(unsafe { libc::listen(fd, 4096) })?;
        let mut out: libc::sockaddr_in = sockaddr_in(addr);
        let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        // SAFETY: `out`/`len` are live and sized for a sockaddr_in.
        cvt(unsafe {
            libc::getsockname(fd, (&mut out as *mut libc::sockaddr_in).cast(), &mut len)
        })?;
        Ok(SocketAddrV4::new(
            Ipv4Addr::from(u32::from_be(out.sin_addr.s_addr)),
            u16::from_be(out.sin_port),
        ))
    };
    match setup() {
        Ok(a) => Ok((fd, a)),
        Err(e) => {
            close(fd);
            Err(e)
        }
    }
}

/// Accepts one connection, nonblocking; `Ok(None)` when none is waiting.
pub fn accept(fd: RawFd) -> io::Result<Option<RawFd>> {
    // SAFETY: null address pointers are allowed by accept4(2).
    let ret = unsafe {
        libc::accept4(
            fd,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
        )
    };
    if ret < 0 {
        let err = io::Error::last_os_error();
        if err.kind() == io::ErrorKind::WouldBlock {
            return Ok(None);
        }
        return Err(err);
    }
    let _ = setsockopt_int(ret, libc::IPPROTO_TCP, libc::TCP_NODELAY, 1);
    Ok(Some(ret))
}

/// recv(2) into `buf`: `Ok(Some(0))` is EOF, `Ok(None)` would block.
pub fn recv(fd: RawFd, buf: &mut [u8]) -> io::Result<Option<usize>> {
    // SAFETY: `buf` is a live, writable slice of the length passed.
    let ret = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
    if ret < 0 {
        let err = io::Error::last_os_error();
        if err.kind() == io::ErrorKind::WouldBlock {
            return Ok(None);
        }
        return Err(err);
    }
    Ok(Some(ret as usize))
}

/// send(2) of `buf` (MSG_NOSIGNAL: a closed peer is an error, not a SIGPIPE); returns bytes
/// sent, 0 when it would block.
pub fn send(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: `buf` is a live slice of the length passed.
    let ret = unsafe { libc::send(fd, buf.as_ptr().cast(), buf.len(), libc::MSG_NOSIGNAL) };
    if ret < 0 {
        let err = io::Error::last_os_error();
        if err.kind() == io::ErrorKind::WouldBlock {
            return Ok(0);
        }
        return Err(err);
    }
    Ok(ret as usize)
}

/// writev(2) of `iov` with MSG_NOSIGNAL semantics (via sendmsg); 0 when it would block.
pub fn sendv(fd: RawFd, iov: &[libc::iovec]) -> io::Result<usize> {
    // SAFETY: msghdr is plain data; zeroed is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov.as_ptr() as *mut libc::iovec;
    msg.msg_iovlen = iov.len() as _;
    // SAFETY: every iovec points into memory the caller keeps alive for this call.
    let ret = unsafe { libc::sendmsg(fd, &msg, libc::MSG_NOSIGNAL) };
    if ret < 0 {
        let err = io::Error::last_os_error();
        if err.kind() == io::ErrorKind::WouldBlock {
            return Ok(0);
        }
        return Err(err);
    }
    Ok(ret as usize)
}

pub struct Epoll {
    fd: RawFd,
}

impl Epoll {
    pub fn new() -> io::Result<Epoll> {
        // SAFETY: plain epoll_create1(2).
        let fd = cvt(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
        Ok(Epoll { fd })
    }

    fn ctl(&self, op: libc::c_int, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event { events, u64: token };
        // SAFETY: `ev` is a live epoll_event.
        cvt(unsafe { libc::epoll_ctl(self.fd, op, fd, &mut ev) }).map(|_| ())
    }

    pub fn add(&self, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_ADD, fd, events, token)
    }

    pub fn modify(&self, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_MOD, fd, events, token)
    }

    /// Waits up to `timeout_ns` (nanosecond resolution via epoll_pwait2, so open-loop
    /// schedules are not rounded up to milliseconds).
    pub fn wait(&self, events: &mut [libc::epoll_event], timeout_ns: u64) -> io::Result<usize> {
        let ts = libc::timespec {
            tv_sec: (timeout_ns / 1_000_000_000) as libc::time_t,
            tv_nsec: (timeout_ns % 1_000_000_000) as libc::c_long,
        };
        // SAFETY: `events` is a live buffer of the length passed; `ts` is live.
        let ret = unsafe {
            libc::epoll_pwait2(
                self.fd,
                events.as_mut_ptr(),
                events.len() as libc::c_int,
                &ts,
                std::ptr::null(),
            )
        };
        if ret < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                return Ok(0);
            }
            return Err(err);
        }
        Ok(ret as usize)
    }
}

impl Drop for Epoll {
    fn drop(&mut self) {
        close(self.fd);
    }
}

/// Timer slack for the calling thread, in ns (`PR_SET_TIMERSLACK`). Linux lets a timed wait
/// of a normal thread end up to 50 us late by default; in open loop that lateness would be
/// charged to the seeder (latency counts from each request's intended send time), so the
/// bench's threads ask for 1 ns. Returns the error when the kernel refuses.
pub fn set_timer_slack_ns(ns: u64) -> io::Result<()> {
    // SAFETY: PR_SET_TIMERSLACK takes one integer argument and touches no memory of ours.
    let ret = unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, ns as libc::c_ulong, 0, 0, 0) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// CPU time of the calling thread in seconds (CLOCK_THREAD_CPUTIME_ID: user + system, ns
/// resolution). 0.0 if the clock cannot be read, which Linux does not do for this clock.
pub fn thread_cpu_secs() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a live, writable timespec; the clock id is a constant.
    let ret = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if ret < 0 {
        return 0.0;
    }
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

/// utime + stime of a process in seconds, from /proc/PID/stat (whole process, all threads).
pub fn process_cpu_secs(pid: u32) -> Result<f64, String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| format!("/proc/{pid}/stat: {e} (is --target-pid a running process?)"))?;
    // The command name may contain spaces and parentheses; fields resume after the last ')'.
    let rest = text
        .rfind(')')
        .map(|i| &text[i + 1..])
        .ok_or_else(|| format!("/proc/{pid}/stat: unexpected format"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ')': state is field 3 of stat(5), so utime (14) and stime (15) are at 11 and 12.
    let num = |i: usize| -> Result<u64, String> {
        fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| format!("/proc/{pid}/stat: field {} unreadable", i + 3))
    };
    // SAFETY: sysconf has no memory effects.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let ticks = if ticks > 0 { ticks as f64 } else { 100.0 };
    Ok((num(11)? + num(12)?) as f64 / ticks)
}
