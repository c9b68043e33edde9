//! One datagram of a NETLINK_SOCK_DIAG dump reply (bytes from the kernel, of any namespace the
//! inventory enters) → the sockets of `inventory::sock_diag::Dump`.
//!
//! Holds: parsing never panics; every message either becomes a socket or is counted as
//! undecodable (with its first reason kept); a socket's two addresses are of one family; its
//! idle time, when known, is the smaller of the two last-data times, and only for states
//! where the kernel's timestamps mean something.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tcptrace::{
    event::TcpState,
    inventory::sock_diag::{Dump, parse_reply},
};

/// The sequence number the seeds' messages carry (the inventory's IPv4 request).
const SEQUENCE: u32 = 1;

fuzz_target!(|data: &[u8]| {
    let mut dump = Dump::default();
    let outcome = parse_reply(data, SEQUENCE, &mut dump);
    // A netlink message is at least its 16-byte header, so no more items than that.
    assert!(dump.sockets.len() + dump.undecodable <= data.len() / 16, "{dump:?}");
    assert_eq!(dump.undecodable == 0, dump.first_undecodable.is_none(), "{dump:?}");
    if outcome.is_err() {
        return;
    }
    for socket in &dump.sockets {
        assert_eq!(socket.local.is_ipv4(), socket.remote.is_ipv4(), "{socket:?}");
        if let Some(last) = socket.last_data {
            let idle = last.idle(socket.state);
            use TcpState::*;
            match socket.state {
                Established | FinWait1 | FinWait2 | CloseWait | LastAck | Closing => {
                    assert_eq!(idle, Some(last.sent.min(last.recv)));
                }
                Listen | SynSent | SynRecv | Close | TimeWait | NewSynRecv => {
                    assert_eq!(idle, None);
                }
            }
        }
    }
    // A second pass over the same bytes appends the same sockets.
    let mut again = Dump::default();
    let _ = parse_reply(data, SEQUENCE, &mut again);
    assert_eq!(again.sockets, dump.sockets);
    assert_eq!(again.undecodable, dump.undecodable);
});
