//! One NETLINK_SOCK_DIAG dump of every TCP socket, IPv4 then IPv6, in the calling thread's
//! network namespace (sock_diag answers for the namespace its netlink socket was created in).
//! Messages are built and parsed by netlink-packet-sock-diag; this module only drives the
//! request/response loop and converts the crate's types into checked domain values.

use std::net::{IpAddr, SocketAddr, SocketAddrV6};

use anyhow::{Context as _, Result, bail};
use netlink_packet_core::{
    NLM_F_DUMP, NLM_F_REQUEST, NetlinkBuffer, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_sock_diag::{
    AF_INET, AF_INET6, IPPROTO_TCP, SockDiagMessage,
    inet::{ExtensionFlags, InetRequest, InetResponse, SocketId, StateFlags, Timer, nlas::Nla},
};
use netlink_sys::{Socket, SocketAddr as NetlinkAddr, protocols::NETLINK_SOCK_DIAG};

use super::tcp_info::LastData;
use crate::event::{DecodeError, TcpState};

/// The kernel sizes dump datagrams after the reader's buffer, up to 32 KiB
/// (`netlink_dump()`, net/netlink/af_netlink.c); a larger buffer never truncates.
const RECV_BUFFER: usize = 64 * 1024;

/// Every state bit but TIME_WAIT's, including `TCP_NEW_SYN_RECV` (12, request sockets) and, on
/// Linux 6.6+, `TCP_BOUND_INACTIVE` (13: bound sockets in CLOSE, reported with state CLOSE),
/// which the crate's flags do not name. The kernel only tests `1 << state` against this mask.
/// No process holds a TIME_WAIT socket, and a host that churns has tens of thousands of them:
/// dumping them every sweep cost the traced host more than the events did (`cargo xtask bench`).
const STATES: u32 = !(1 << tcptrace_common::tcp_state::TIME_WAIT);

/// One socket as sock_diag reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiagSocket {
    pub state: TcpState,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// `idiag_inode`: 0 once no process holds the socket (TIME_WAIT, request and orphaned sockets).
    pub inode: u32,
    pub cookie: u64,
    pub uid: u32,
    pub timer: Option<Timer>,
    /// From `INET_DIAG_INFO`; `None` when the kernel sent none (TIME_WAIT, request and
    /// bound-only sockets) or it was too short.
    pub last_data: Option<LastData>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConvertError {
    #[error(transparent)]
    State(#[from] DecodeError),
    #[error("address family {0} in a TCP dump")]
    Family(u8),
}

/// What one namespace's dump returned.
#[derive(Debug, Default)]
pub struct Dump {
    pub sockets: Vec<DiagSocket>,
    /// Messages that did not parse or convert, and the first reason.
    pub undecodable: usize,
    pub first_undecodable: Option<String>,
}

impl Dump {
    fn skip(&mut self, reason: String) {
        self.undecodable += 1;
        self.first_undecodable.get_or_insert(reason);
    }
}

/// Dumps every TCP socket of the calling thread's network namespace.
pub fn dump() -> Result<Dump> {
    let mut socket =
        Socket::new(NETLINK_SOCK_DIAG).context("creating a NETLINK_SOCK_DIAG socket")?;
    socket.bind_auto().context("binding the sock_diag socket")?;
    socket
        .connect(&NetlinkAddr::new(0, 0))
        .context("connecting the sock_diag socket to the kernel")?;
    let mut dump = Dump::default();
    let mut buffer = vec![0u8; RECV_BUFFER];
    for (sequence, family) in [(1, AF_INET), (2, AF_INET6)] {
        dump_family(&socket, family, sequence, &mut buffer, &mut dump)
            .with_context(|| format!("sock_diag dump of {} TCP sockets", family_name(family)))?;
    }
    Ok(dump)
}

fn family_name(family: u8) -> &'static str {
    if family == AF_INET { "IPv4" } else { "IPv6" }
}

fn request(family: u8, sequence: u32) -> Vec<u8> {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    header.sequence_number = sequence;
    let socket_id = if family == AF_INET { SocketId::new_v4() } else { SocketId::new_v6() };
    let request = InetRequest {
        family,
        protocol: IPPROTO_TCP,
        extensions: ExtensionFlags::INFO,
        states: StateFlags::from_bits_retain(STATES),
        socket_id,
    };
    let mut message = NetlinkMessage::new(header, SockDiagMessage::InetRequest(request).into());
    message.finalize();
    let mut bytes = vec![0u8; message.buffer_len()];
    message.serialize(&mut bytes);
    bytes
}

fn dump_family(
    socket: &Socket,
    family: u8,
    sequence: u32,
    buffer: &mut [u8],
    dump: &mut Dump,
) -> Result<()> {
    socket.send(&request(family, sequence), 0).context("sending the request")?;
    loop {
        // MSG_TRUNC makes recv return the datagram's real length, so truncation is visible.
        let len =
            socket.recv(&mut &mut buffer[..], libc::MSG_TRUNC).context("receiving the dump")?;
        if len > buffer.len() {
            bail!("a {len}-byte datagram did not fit the {}-byte buffer", buffer.len());
        }
        if parse_reply(&buffer[..len], sequence, dump)? == Reply::Done {
            return Ok(());
        }
    }
}

/// Whether the dump goes on after a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    More,
    Done,
}

/// One datagram of the dump's reply (the kernel's bytes, untrusted): its messages of request
/// `sequence` are parsed, the sockets appended to `dump` and what does not parse or convert
/// counted there. Pure: no I/O (fuzzed by `fuzz/`).
pub fn parse_reply(mut datagram: &[u8], sequence: u32, dump: &mut Dump) -> Result<Reply> {
    while !datagram.is_empty() {
        let header =
            NetlinkBuffer::new_checked(datagram).context("malformed netlink message header")?;
        let message_len = usize::try_from(header.length()).context("netlink message length")?;
        let (message, rest) = datagram.split_at(message_len);
        // NLMSG_ALIGN: messages start on 4-byte boundaries.
        datagram = rest.get(message_len.next_multiple_of(4) - message_len..).unwrap_or_default();
        if header.sequence_number() != sequence {
            continue;
        }
        match NetlinkMessage::<SockDiagMessage>::deserialize(message) {
            Ok(NetlinkMessage { payload, .. }) => match payload {
                NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(response)) => {
                    match DiagSocket::try_from(response.as_ref()) {
                        Ok(socket) => dump.sockets.push(socket),
                        Err(error) => dump.skip(error.to_string()),
                    }
                }
                NetlinkPayload::Done(done) if done.code < 0 => {
                    return Err(errno(done.code)).context("the kernel ended the dump");
                }
                NetlinkPayload::Done(_) => return Ok(Reply::Done),
                NetlinkPayload::Error(error) if let Some(code) = error.code => {
                    // Not `ErrorMessage::to_io`: it negates the code, which overflows on
                    // `i32::MIN` (fixed upstream after netlink-packet-core 0.9.0).
                    return Err(errno(code.get())).context("the kernel refused the request");
                }
                _ => {}
            },
            Err(error) => dump.skip(error.to_string()),
        }
    }
    Ok(Reply::More)
}

/// A netlink error code (`-errno`) as an I/O error; a code no errno has (a positive one, or
/// `i32::MIN`, whose negation overflows) is reported as it is.
fn errno(code: i32) -> std::io::Error {
    match code.checked_neg() {
        Some(errno) if errno > 0 => std::io::Error::from_raw_os_error(errno),
        _ => std::io::Error::other(format!("netlink error code {code}")),
    }
}

impl TryFrom<&InetResponse> for DiagSocket {
    type Error = ConvertError;

    fn try_from(response: &InetResponse) -> Result<Self, ConvertError> {
        let header = &response.header;
        if header.family != AF_INET && header.family != AF_INET6 {
            return Err(ConvertError::Family(header.family));
        }
        let SocketId {
            source_port,
            destination_port,
            source_address,
            destination_address,
            interface_id,
            cookie,
        } = &header.socket_id;
        let last_data = response.nlas.iter().find_map(|nla| match nla {
            Nla::TcpInfo(bytes) => LastData::try_from(bytes.as_slice()).ok(),
            _ => None,
        });
        Ok(Self {
            state: TcpState::try_from(header.state)?,
            local: socket_addr(*source_address, *source_port, *interface_id),
            remote: socket_addr(*destination_address, *destination_port, *interface_id),
            inode: header.inode,
            cookie: cookie_from(*cookie),
            uid: header.uid,
            timer: header.timer.clone(),
            last_data,
        })
    }
}

/// `idiag_cookie` is `__u32[2]`, low half first, each in host byte order
/// (`sock_diag_save_cookie()`, net/core/sock_diag.c): the value `bpf_get_socket_cookie()`
/// returns for the same socket.
pub fn cookie_from(raw: [u8; 8]) -> u64 {
    let [a, b, c, d, e, f, g, h] = raw;
    u64::from(u32::from_ne_bytes([a, b, c, d])) | u64::from(u32::from_ne_bytes([e, f, g, h])) << 32
}

/// `idiag_if` is the bound device; it only scopes link-local IPv6 addresses.
fn socket_addr(ip: IpAddr, port: u16, interface: u32) -> SocketAddr {
    match ip {
        IpAddr::V6(v6) if v6.is_unicast_link_local() => {
            SocketAddr::V6(SocketAddrV6::new(v6, port, 0, interface))
        }
        ip => SocketAddr::new(ip, port),
    }
}

#[cfg(test)]
mod tests {
    use std::{
        net::{Ipv4Addr, Ipv6Addr},
        time::Duration,
    };

    use netlink_packet_core::{Emitable, NetlinkDeserializable};
    use netlink_packet_sock_diag::inet::InetResponseHeader;

    use super::*;

    /// Replies the fuzzer found panicking (`fuzz/corpus/sock_diag`): a done or error message
    /// whose code is `i32::MIN`, which negates to an overflow.
    #[test]
    fn error_codes_no_errno_has_are_errors_not_panics() {
        for (name, reply) in [
            ("done", &include_bytes!("../../../fuzz/corpus/sock_diag/done-code-i32-min")[..]),
            ("error", &include_bytes!("../../../fuzz/corpus/sock_diag/error-code-i32-min")[..]),
        ] {
            let result = parse_reply(reply, 1, &mut Dump::default());
            let err = result.err().unwrap_or_else(|| panic!("{name}: accepted"));
            assert!(format!("{err:#}").contains("-2147483648"), "{name}: {err:#}");
        }
        assert_eq!(errno(-2).raw_os_error(), Some(2));
    }

    const KEEPALIVE: Timer = Timer::KeepAlive(Duration::from_secs(7200));

    fn response(nlas: Vec<Nla>) -> InetResponse {
        let header = InetResponseHeader {
            family: AF_INET,
            state: 1,
            timer: Some(KEEPALIVE),
            socket_id: SocketId {
                source_port: 40000,
                destination_port: 6379,
                source_address: IpAddr::V4(Ipv4Addr::LOCALHOST),
                destination_address: IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3)),
                interface_id: 0,
                cookie: [0; 8],
            },
            recv_queue: 0,
            send_queue: 0,
            uid: 1000,
            inode: 4242,
        };
        InetResponse { header, nlas: nlas.into() }
    }

    fn tcp_info(sent_ms: u32, recv_ms: u32) -> Vec<u8> {
        let mut raw = vec![0u8; 232];
        raw[44..48].copy_from_slice(&sent_ms.to_ne_bytes());
        raw[52..56].copy_from_slice(&recv_ms.to_ne_bytes());
        raw
    }

    #[test]
    fn cookie_halves_are_low_then_high() {
        let low = 0x5566_7788u32.to_ne_bytes();
        let high = 0x1122_3344u32.to_ne_bytes();
        let raw = [low[0], low[1], low[2], low[3], high[0], high[1], high[2], high[3]];
        assert_eq!(cookie_from(raw), 0x1122_3344_5566_7788);
    }

    #[test]
    fn link_local_ipv6_keeps_its_interface() {
        let link_local: Ipv6Addr = "fe80::1".parse().unwrap();
        assert_eq!(socket_addr(IpAddr::V6(link_local), 22, 3), "[fe80::1%3]:22".parse().unwrap());
        assert_eq!(
            socket_addr(IpAddr::V6(Ipv6Addr::LOCALHOST), 22, 3),
            "[::1]:22".parse().unwrap()
        );
        assert_eq!(
            socket_addr(IpAddr::V4(Ipv4Addr::LOCALHOST), 22, 3),
            "127.0.0.1:22".parse().unwrap()
        );
    }

    #[test]
    fn converts_a_response_with_tcp_info() {
        let socket = DiagSocket::try_from(&response(vec![
            Nla::Shutdown(0),
            Nla::TcpInfo(tcp_info(900, 1200)),
        ]))
        .expect("converts");
        assert_eq!(socket.state, TcpState::Established);
        assert_eq!(socket.local, "127.0.0.1:40000".parse().unwrap());
        assert_eq!(socket.remote, "10.1.2.3:6379".parse().unwrap());
        assert_eq!(socket.inode, 4242);
        assert_eq!(socket.uid, 1000);
        assert_eq!(socket.timer, Some(KEEPALIVE));
        let last = socket.last_data.expect("tcp_info");
        assert_eq!(
            (last.sent, last.recv),
            (Duration::from_millis(900), Duration::from_millis(1200))
        );
    }

    #[test]
    fn a_short_tcp_info_loses_only_the_times() {
        let socket =
            DiagSocket::try_from(&response(vec![Nla::TcpInfo(vec![0; 20])])).expect("converts");
        assert_eq!(socket.last_data, None);
        assert_eq!(socket.inode, 4242);
    }

    #[test]
    fn rejects_unknown_states() {
        let mut response = response(Vec::new());
        response.header.state = 14;
        assert_eq!(
            DiagSocket::try_from(&response),
            Err(ConvertError::State(DecodeError::State(14)))
        );
    }

    #[test]
    fn converts_what_the_crate_parses_off_the_wire() {
        let response = response(vec![Nla::TcpInfo(tcp_info(5, 6))]);
        let mut payload = vec![0u8; response.buffer_len()];
        response.emit(&mut payload);
        let mut header = NetlinkHeader::default();
        header.message_type = netlink_packet_sock_diag::SOCK_DIAG_BY_FAMILY;
        let parsed = SockDiagMessage::deserialize(&header, &payload).expect("parses");
        let SockDiagMessage::InetResponse(parsed) = parsed else {
            panic!("not an inet response: {parsed:?}")
        };
        let socket = DiagSocket::try_from(parsed.as_ref()).expect("converts");
        assert_eq!(socket.last_data.map(|l| l.sent), Some(Duration::from_millis(5)));
        assert_eq!(socket.timer, Some(KEEPALIVE));
    }

    #[test]
    fn the_request_asks_for_every_state_but_time_wait_and_tcp_info() {
        // inet_diag_req_v2 (include/uapi/linux/inet_diag.h): family, protocol, ext, pad, states.
        let bytes = request(AF_INET6, 7);
        let message = NetlinkBuffer::new_checked(&bytes[..]).expect("header");
        assert_eq!(message.flags(), NLM_F_REQUEST | NLM_F_DUMP);
        assert_eq!(message.sequence_number(), 7);
        assert_eq!(message.message_type(), netlink_packet_sock_diag::SOCK_DIAG_BY_FAMILY);
        let payload = message.payload();
        assert_eq!(payload[0], AF_INET6, "sdiag_family");
        assert_eq!(payload[1], IPPROTO_TCP, "sdiag_protocol");
        assert_eq!(payload[2], 1 << (netlink_packet_sock_diag::INET_DIAG_INFO - 1), "idiag_ext");
        let states = u32::from_ne_bytes(payload[4..8].try_into().expect("4 bytes"));
        assert_eq!(states & (1 << 6), 0, "TCP_TIME_WAIT (6) is left out");
        assert_eq!(states | (1 << 6), u32::MAX, "every other state is asked for");
    }
}
