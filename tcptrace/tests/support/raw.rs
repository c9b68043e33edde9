//! Raw libc calls that allocate nothing, so a forked child of this multi-threaded process may
//! make them: socket addresses built before fork(), connect/listen/accept, reads and writes,
//! SO_LINGER 0, bringing up `lo` in a new namespace, the clock. Each returns `None` or `false`
//! on failure rather than panicking: a child reports failure by its exit code.

use std::{
    io,
    net::{Ipv4Addr, SocketAddr},
    os::fd::RawFd,
    time::Duration,
};

/// A socket address in the form connect(2) takes, built before fork().
#[derive(Clone, Copy)]
pub struct RawAddr {
    storage: libc::sockaddr_storage,
    len: libc::socklen_t,
    family: libc::c_int,
}

impl From<SocketAddr> for RawAddr {
    fn from(addr: SocketAddr) -> Self {
        // SAFETY: all-zero is a valid sockaddr_storage.
        let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let (len, family) = match addr {
            SocketAddr::V4(v4) => {
                let sin = libc::sockaddr_in {
                    sin_family: libc::AF_INET as libc::sa_family_t,
                    sin_port: v4.port().to_be(),
                    sin_addr: libc::in_addr { s_addr: u32::from(*v4.ip()).to_be() },
                    sin_zero: [0; 8],
                };
                // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
                unsafe { std::ptr::write((&raw mut storage).cast(), sin) };
                (size_of::<libc::sockaddr_in>(), libc::AF_INET)
            }
            SocketAddr::V6(v6) => {
                let sin6 = libc::sockaddr_in6 {
                    sin6_family: libc::AF_INET6 as libc::sa_family_t,
                    sin6_port: v6.port().to_be(),
                    sin6_flowinfo: 0,
                    sin6_addr: libc::in6_addr { s6_addr: v6.ip().octets() },
                    sin6_scope_id: 0,
                };
                // SAFETY: as above, for sockaddr_in6.
                unsafe { std::ptr::write((&raw mut storage).cast(), sin6) };
                (size_of::<libc::sockaddr_in6>(), libc::AF_INET6)
            }
        };
        Self { storage, len: len as libc::socklen_t, family }
    }
}

/// A TCP socket connected to `addr`.
pub fn connect(addr: &RawAddr) -> Option<RawFd> {
    // SAFETY: plain syscalls with valid arguments.
    unsafe {
        let fd = libc::socket(addr.family, libc::SOCK_STREAM, 0);
        if fd < 0 || libc::connect(fd, (&raw const addr.storage).cast(), addr.len) != 0 {
            return None;
        }
        Some(fd)
    }
}

/// A TCP socket whose connect() to `addr` failed, and the error (in the test, not a child).
pub fn failed_connect(addr: &RawAddr) -> (RawFd, io::Error) {
    // SAFETY: plain syscalls with valid arguments.
    unsafe {
        let fd = libc::socket(addr.family, libc::SOCK_STREAM, 0);
        assert!(fd >= 0, "socket: {}", io::Error::last_os_error());
        let ret = libc::connect(fd, (&raw const addr.storage).cast(), addr.len);
        assert_eq!(ret, -1, "connect succeeded");
        (fd, io::Error::last_os_error())
    }
}

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
        if fd < 0 || libc::bind(fd, (&raw const sin).cast(), len) != 0 || libc::listen(fd, 128) != 0
        {
            return None;
        }
        let port = local_port(fd);
        (port > 0).then_some((fd, port as u16))
    }
}

pub fn accept(listener: RawFd) -> Option<RawFd> {
    // SAFETY: null address arguments are allowed.
    let fd = unsafe { libc::accept(listener, std::ptr::null_mut(), std::ptr::null_mut()) };
    (fd >= 0).then_some(fd)
}

/// The local port of `fd`, or -1.
pub fn local_port(fd: RawFd) -> i32 {
    // SAFETY: valid buffer and length.
    unsafe {
        let mut storage: libc::sockaddr_storage = std::mem::zeroed();
        let mut len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        if libc::getsockname(fd, (&raw mut storage).cast(), &mut len) != 0 {
            return -1;
        }
        // sin_port and sin6_port are at the same offset.
        let sin = &*(&raw const storage).cast::<libc::sockaddr_in>();
        i32::from(u16::from_be(sin.sin_port))
    }
}

/// Reads until EOF; false on error or data.
pub fn read_eof(fd: RawFd) -> bool {
    read_one(fd) == 0
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

/// setsockopt(2) with a plain value (an int, a `linger`).
pub fn set_option<T: Copy>(fd: RawFd, level: libc::c_int, name: libc::c_int, value: T) -> bool {
    // SAFETY: a valid pointer to a `T` and its size.
    unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&raw const value).cast(),
            size_of::<T>() as libc::socklen_t,
        ) == 0
    }
}

/// getsockopt(2) into a zeroed `T`.
///
/// # Safety
/// All-zero bytes, and whatever the kernel writes for this option, must be a valid `T`: a C
/// integer or a C struct of them (`tcp_info`).
pub unsafe fn get_option<T: Copy>(fd: RawFd, level: libc::c_int, name: libc::c_int) -> Option<T> {
    // SAFETY: the caller vouches for all-zero `T`; the buffer and its length are valid.
    unsafe {
        let mut value: T = std::mem::zeroed();
        let mut len = size_of::<T>() as libc::socklen_t;
        let ret = libc::getsockopt(fd, level, name, (&raw mut value).cast(), &mut len);
        (ret == 0).then_some(value)
    }
}

/// SO_LINGER {on, 0}: close(2) aborts the connection with a RST.
pub fn linger_zero(fd: RawFd) -> bool {
    set_option(fd, libc::SOL_SOCKET, libc::SO_LINGER, libc::linger { l_onoff: 1, l_linger: 0 })
}

pub fn close(fd: RawFd) -> bool {
    // SAFETY: closes a descriptor the caller owns.
    unsafe { libc::close(fd) == 0 }
}

/// Brings up `lo` in the calling thread's network namespace (`ip link set lo up`).
pub fn loopback_up() -> bool {
    // SAFETY: plain syscalls on a socket this function owns; ifreq is zeroed then named "lo".
    unsafe {
        let control = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if control < 0 {
            return false;
        }
        let mut request: libc::ifreq = std::mem::zeroed();
        request.ifr_name[..2].copy_from_slice(&[b'l' as libc::c_char, b'o' as libc::c_char]);
        let ok = libc::ioctl(control, libc::SIOCGIFFLAGS, &raw mut request) == 0 && {
            request.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            libc::ioctl(control, libc::SIOCSIFFLAGS, &raw const request) == 0
        };
        libc::close(control);
        ok
    }
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
