//! Loopback sockets in the test process: listen and connect with a message that names the
//! address on failure, the listener's address, a free port, connected pairs, a server thread
//! that holds every connection, waiting for the peer's FIN, and SO_LINGER 0 (close with a RST).

use std::{
    io::{self, Read},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd,
    thread,
};

use super::raw;

pub const LOCALHOST_V4: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0);
pub const LOCALHOST_V6: SocketAddr = SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 0);

/// 127.0.0.1 at `port`.
pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::new(LOCALHOST_V4.ip(), port)
}

pub fn listen(addr: SocketAddr) -> TcpListener {
    TcpListener::bind(addr).unwrap_or_else(|e| panic!("binding {addr}: {e}"))
}

pub fn addr_of(listener: &TcpListener) -> SocketAddr {
    listener.local_addr().expect("listener address")
}

/// A port nothing listens on: bound and released again.
pub fn unused_port() -> u16 {
    addr_of(&listen(LOCALHOST_V4)).port()
}

pub fn connect(addr: SocketAddr) -> TcpStream {
    TcpStream::connect(addr).unwrap_or_else(|e| panic!("connecting to {addr}: {e}"))
}

pub fn accept(listener: &TcpListener) -> TcpStream {
    listener.accept().expect("accept").0
}

/// A connected (client, server) pair through `listener`.
pub fn pair(listener: &TcpListener) -> (TcpStream, TcpStream) {
    let client = connect(addr_of(listener));
    (client, accept(listener))
}

pub fn local_addr(stream: &TcpStream) -> SocketAddr {
    stream.local_addr().expect("local address")
}

/// Reads until the peer's FIN (asserting it sent no data): the FIN has been processed.
pub fn read_eof(stream: &TcpStream) {
    let n = raw::read_one(stream.as_raw_fd());
    assert_eq!(n, 0, "expected EOF; read gave {n} (below 0: minus the errno)");
}

/// SO_LINGER {on, 0}: close(2) aborts the connection with a RST.
pub fn set_linger_zero(socket: &impl AsRawFd) {
    assert!(raw::linger_zero(socket.as_raw_fd()), "SO_LINGER: {}", io::Error::last_os_error());
}

/// A loopback server in a thread of its own that accepts every connection and holds it until
/// the client closes; returns its port.
pub fn holding_server() -> u16 {
    let listener = listen(LOCALHOST_V4);
    let port = addr_of(&listener).port();
    thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            thread::spawn(move || {
                let _ = conn.read_to_end(&mut Vec::new());
            });
        }
    });
    port
}
