//! Forked scenario processes ("actors"), each inside a namespace, driven step by step over two
//! pipes: the test says go, the actor does one step and reports values (descriptors, ports,
//! counts). An actor's body runs in a copy of a multi-threaded process, so it makes raw libc
//! calls only (`sys`), and it exits with a code that names the failing step.
//!
//! Right after fork an actor closes every descriptor it inherited except its two pipes: the test
//! threads of the other scenarios keep opening pipes and namespace files, and a copy of one
//! (a tracer's stdout, a pipe the test reads to EOF) must not live on in an unrelated process.
//! `forks()` from tests/common is held across each fork so that forks never interleave.

use std::{ffi::CStr, io, os::fd::RawFd, time::Duration};

use super::netns::{self, Netns};
use crate::common::{Child, DEADLINE, Pipe, fork_child, forks};

/// A forked scenario process.
pub struct Actor {
    pub child: Child,
    go: Pipe,
    report: Pipe,
}

/// The actor's side of its pipes.
pub struct Steps<'a> {
    go: &'a Pipe,
    report: &'a Pipe,
}

impl Steps<'_> {
    /// Blocks until the test says go; false if it never will.
    pub fn wait_go(&self) -> bool {
        self.go.recv_blocking().is_some()
    }

    /// Sleeps up to `pause`; true if the test said go meanwhile (a pace that a stop cuts short).
    pub fn go_within(&self, pause: Duration) -> bool {
        self.go.recv_within(pause).is_some()
    }

    pub fn report(&self, value: i32) -> bool {
        self.report.send(value)
    }
}

/// Closes every descriptor from 3 up except `keep`; safe in a forked child.
fn close_inherited(mut keep: [RawFd; 4]) -> bool {
    keep.sort_unstable();
    let close_range = |first: u32, last: u32| {
        // SAFETY: closes descriptors of this (child) process only.
        unsafe { libc::syscall(libc::SYS_close_range, first, last, 0) == 0 }
    };
    let mut first = 3u32;
    for fd in keep {
        let fd = fd as u32;
        if fd > first && !close_range(first, fd - 1) {
            return false;
        }
        first = first.max(fd + 1);
    }
    close_range(first, u32::MAX)
}

impl Actor {
    /// Forks `body` as a process named `comm` inside `ns`. Exit codes 90-99 are this wrapper's.
    pub fn fork(comm: &'static CStr, ns: &Netns, body: impl FnOnce(&Steps<'_>) -> i32) -> Self {
        let (go, report) = (Pipe::new(), Pipe::new());
        let ns_fd = ns.fd();
        let [go_read, go_write] = go.fds();
        let [report_read, report_write] = report.fds();
        let child = {
            let _one_fork_at_a_time = forks();
            fork_child(comm, || {
                if !netns::enter(ns_fd) {
                    return 90;
                }
                if !close_inherited([go_read, go_write, report_read, report_write]) {
                    return 91;
                }
                body(&Steps { go: &go, report: &report })
            })
        };
        Self { child, go, report }
    }

    pub fn pid(&self) -> u32 {
        self.child.pid as u32
    }

    pub fn comm(&self) -> &'static str {
        self.child.comm.to_str().expect("ASCII comm")
    }

    /// Lets the actor take its next step.
    pub fn go(&self) {
        assert!(self.go.send(1), "signalling {}", self.comm());
    }

    /// The actor's next report, within `DEADLINE`.
    pub fn recv(&self, what: &str) -> i32 {
        self.recv_within(what, DEADLINE)
    }

    /// The actor's next report, within `timeout`; fails at once if the actor exited instead.
    pub fn recv_within(&self, what: &str, timeout: Duration) -> i32 {
        let step = Duration::from_millis(50);
        let mut waited = Duration::ZERO;
        loop {
            if let Some(value) = self.report.recv_within(step) {
                return value;
            }
            if let Some(status) = self.exit_status() {
                panic!(
                    "{} (pid {}) exited with code {status} before reporting {what} (the code marks the failing step)",
                    self.comm(),
                    self.pid()
                );
            }
            waited += step;
            assert!(waited < timeout, "no {what} from {} within {timeout:?}", self.comm());
        }
    }

    /// The exit code, if the actor has exited (it stays a zombie for `Child` to reap).
    fn exit_status(&self) -> Option<i32> {
        // SAFETY: all-zero is a valid siginfo_t; waitid with WNOWAIT leaves the child unreaped.
        unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            let flags = libc::WEXITED | libc::WNOHANG | libc::WNOWAIT;
            let ret = libc::waitid(libc::P_PID, self.child.pid as libc::id_t, &mut info, flags);
            assert_eq!(ret, 0, "waitid: {}", io::Error::last_os_error());
            (info.si_pid() != 0).then(|| info.si_status())
        }
    }

    /// Says go for the last time and waits for a clean exit.
    pub fn finish(self) {
        self.go();
        self.child.wait();
    }
}

/// Raw socket calls for actors: no allocation, so they are safe in a forked child.
pub mod sys {
    use std::{net::Ipv4Addr, os::fd::RawFd, time::Duration};

    use crate::common::{RawAddr, raw};

    /// A TCP socket listening on 127.0.0.1 (of the caller's namespace), any port, and the port.
    pub fn listen_loopback() -> Option<(RawFd, u16)> {
        let sin = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: libc::in_addr { s_addr: u32::from(Ipv4Addr::LOCALHOST).to_be() },
            sin_zero: [0; 8],
        };
        let len = size_of::<libc::sockaddr_in>() as libc::socklen_t;
        // SAFETY: plain syscalls with a valid address and length.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
            if fd < 0
                || libc::bind(fd, (&raw const sin).cast(), len) != 0
                || libc::listen(fd, 128) != 0
            {
                return None;
            }
            let port = raw::local_port(fd);
            (port > 0).then_some((fd, port as u16))
        }
    }

    /// A connected TCP socket, or `None`.
    pub fn connect(addr: &RawAddr) -> Option<RawFd> {
        let fd = raw::connect(addr);
        (fd >= 0).then_some(fd)
    }

    pub fn accept(listener: RawFd) -> Option<RawFd> {
        let fd = raw::accept(listener);
        (fd >= 0).then_some(fd)
    }

    pub fn write_all(fd: RawFd, mut bytes: &[u8]) -> bool {
        while !bytes.is_empty() {
            // SAFETY: valid buffer.
            let n = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
            if n <= 0 {
                return false;
            }
            bytes = &bytes[n as usize..];
        }
        true
    }

    pub fn read_exact(fd: RawFd, buf: &mut [u8]) -> bool {
        let mut got = 0;
        while got < buf.len() {
            // SAFETY: valid buffer.
            let n = unsafe { libc::read(fd, buf[got..].as_mut_ptr().cast(), buf.len() - got) };
            if n <= 0 {
                return false;
            }
            got += n as usize;
        }
        true
    }

    /// One read of up to one byte: the count, or minus the errno.
    pub fn read_one(fd: RawFd) -> i32 {
        let mut byte = 0u8;
        // SAFETY: valid one-byte buffer.
        let n = unsafe { libc::read(fd, (&raw mut byte).cast(), 1) };
        if n < 0 {
            // SAFETY: errno of this thread.
            -unsafe { *libc::__errno_location() }
        } else {
            n as i32
        }
    }

    /// SO_LINGER {on, 0}: close(2) aborts the connection with a RST.
    pub fn linger_zero(fd: RawFd) -> bool {
        let linger = libc::linger { l_onoff: 1, l_linger: 0 };
        // SAFETY: valid option pointer and length.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&raw const linger).cast(),
                size_of::<libc::linger>() as libc::socklen_t,
            ) == 0
        }
    }

    pub fn close(fd: RawFd) -> bool {
        raw::close(fd)
    }

    /// CLOCK_MONOTONIC in microseconds.
    pub fn now_us() -> i64 {
        // SAFETY: all-zero is a valid timespec; clock_gettime is async-signal-safe.
        let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
        // SAFETY: valid timespec.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        ts.tv_sec * 1_000_000 + ts.tv_nsec / 1_000
    }

    pub fn sleep(pause: Duration) {
        let ts = libc::timespec {
            tv_sec: pause.as_secs() as libc::time_t,
            tv_nsec: pause.subsec_nanos() as libc::c_long,
        };
        // SAFETY: valid timespec; an early wake-up is harmless here.
        unsafe { libc::nanosleep(&ts, std::ptr::null_mut()) };
    }

    /// RESP `PING` and its `+PONG` reply, as a Redis client speaks them.
    pub const RESP_PING: &[u8] = b"*1\r\n$4\r\nPING\r\n";
    pub const RESP_PONG: &[u8; 7] = b"+PONG\r\n";

    /// One PING/PONG round trip on a Redis connection.
    pub fn redis_ping(fd: RawFd) -> bool {
        let mut reply = [0u8; 7];
        write_all(fd, RESP_PING) && read_exact(fd, &mut reply) && &reply == RESP_PONG
    }

    /// `GET /` on a keep-alive HTTP/1.1 connection; reads the whole response into `buf` and
    /// checks it is a 200.
    pub fn http_get(fd: RawFd, buf: &mut [u8]) -> bool {
        if !write_all(fd, b"GET / HTTP/1.1\r\nHost: tcptrace.test\r\nUser-Agent: tt-http\r\n\r\n") {
            return false;
        }
        let mut got = 0;
        loop {
            match super::http_response_len(&buf[..got]) {
                Some(len) if got >= len => return buf.starts_with(b"HTTP/1.1 200 "),
                _ if got == buf.len() => return false,
                _ => {}
            }
            // SAFETY: valid buffer.
            let n = unsafe { libc::read(fd, buf[got..].as_mut_ptr().cast(), buf.len() - got) };
            if n <= 0 {
                return false;
            }
            got += n as usize;
        }
    }
}

/// The length of the HTTP response at the start of `bytes` (headers and a `Content-Length`
/// body), once its headers are complete; no allocation.
pub fn http_response_len(bytes: &[u8]) -> Option<usize> {
    let head_end = bytes.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = &bytes[..head_end];
    let name = b"\r\ncontent-length:";
    let at = head.windows(name.len()).position(|w| w.eq_ignore_ascii_case(name))? + name.len();
    let mut len = 0usize;
    let mut digits = 0;
    for &b in head[at..].iter().skip_while(|b| **b == b' ') {
        if !b.is_ascii_digit() {
            break;
        }
        len = len.checked_mul(10)?.checked_add(usize::from(b - b'0'))?;
        digits += 1;
    }
    (digits > 0).then_some(head_end + len)
}

#[cfg(test)]
mod tests {
    use super::http_response_len;

    #[test]
    fn http_response_length_needs_complete_headers_and_counts_the_body() {
        let full = b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Length: 6\r\nConnection: keep-alive\r\n\r\nhello\n";
        assert_eq!(http_response_len(full), Some(full.len()));
        assert_eq!(http_response_len(&full[..40]), None);
        assert_eq!(
            http_response_len(b"HTTP/1.1 200 OK\r\ncontent-length:12\r\n\r\n"),
            Some(38 + 12)
        );
        assert_eq!(http_response_len(b"HTTP/1.1 204 No Content\r\n\r\n"), None);
    }
}
