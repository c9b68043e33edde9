//! Whether SO_KEEPALIVE is on, inferred from the one timer sock_diag reports. Pure: no I/O.
//!
//! `inet_sk_diag_fill()` (net/ipv4/inet_diag.c, unchanged in this respect from 4.x to 6.18)
//! reports a single timer in `idiag_timer` (include/uapi/linux/inet_diag.h), in this order of
//! precedence:
//!
//! | idiag_timer | when | crate value |
//! |---|---|---|
//! | 1 | `icsk_pending` is a retransmit, RACK reorder or tail-loss-probe timer | `Timer::Retransmit` |
//! | 4 | `icsk_pending` is the zero-window probe timer | `Timer::Probe` |
//! | 2 | otherwise, if `sk->sk_timer` is pending | `Timer::KeepAlive` |
//! | 0 | otherwise | `None` |
//! | 3 | TIME_WAIT sockets (`inet_twsk_diag_fill()`) | `Timer::TimeWait` |
//!
//! For TCP, `sk->sk_timer` runs `tcp_keepalive_timer()` (net/ipv4/tcp_timer.c). It is armed by
//! `tcp_set_keepalive()` (setsockopt SO_KEEPALIVE on a socket that is not CLOSE or LISTEN), by
//! `tcp_finish_connect()` and `tcp_create_openreq_child()` when SO_KEEPALIVE was set before the
//! handshake (accepted sockets inherit it from the listener), and it re-arms itself for as long
//! as SO_KEEPALIVE stays on; turning SO_KEEPALIVE off deletes it. The one other user is an
//! orphaned (closed by its process) FIN_WAIT2 socket, whose FIN_WAIT2 timeout reuses
//! `sk_timer`. `tcp_done()` stops every timer when a socket reaches CLOSE.
//!
//! So, in a state where the keepalive timer runs, `idiag_timer` 2 means SO_KEEPALIVE is on and
//! 0 means it is off. A pending retransmit or window probe (1, 4) hides `sk_timer`: unknown.

use netlink_packet_sock_diag::inet::Timer;

use crate::event::TcpState;

/// `Some(true)`: SO_KEEPALIVE is on; `Some(false)`: off; `None`: the dump cannot tell.
///
/// `orphan`: no process holds the socket any more (sock_diag reports inode 0).
pub fn infer(state: TcpState, timer: Option<&Timer>, orphan: bool) -> Option<bool> {
    use TcpState::*;
    match state {
        // Synchronized states: tcp_keepalive_timer() keeps the timer armed in all of them.
        Established | CloseWait | FinWait1 | LastAck | Closing => {}
        // An orphan's sk_timer is its FIN_WAIT2 timeout, whatever SO_KEEPALIVE says.
        FinWait2 if orphan => return None,
        FinWait2 => {}
        // LISTEN: tcp_set_keepalive() does not arm it. SYN_SENT: tcp_keepalive_timer() does
        // not re-arm, the retransmit timer hides it anyway. CLOSE: tcp_done() stopped it.
        // TIME_WAIT, request sockets (reported as SYN_RECV): no full socket, no sk_timer.
        Listen | SynSent | SynRecv | Close | TimeWait | NewSynRecv => return None,
    }
    match timer {
        None => Some(false),
        Some(Timer::KeepAlive(_)) => Some(true),
        Some(Timer::Retransmit(..) | Timer::Probe(_) | Timer::TimeWait) => None,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const KEEPALIVE: Timer = Timer::KeepAlive(Duration::from_secs(7200));

    #[test]
    fn keepalive_timer_on_an_idle_connection_means_on() {
        for state in
            [TcpState::Established, TcpState::CloseWait, TcpState::FinWait1, TcpState::LastAck]
        {
            assert_eq!(infer(state, Some(&KEEPALIVE), false), Some(true), "{state}");
            assert_eq!(infer(state, None, false), Some(false), "{state}");
        }
        // An orphan keeps SO_KEEPALIVE; outside FIN_WAIT2 its timer still means keepalive.
        assert_eq!(infer(TcpState::Established, Some(&KEEPALIVE), true), Some(true));
    }

    #[test]
    fn retransmit_and_window_probe_timers_hide_keepalive() {
        let retransmit = Timer::Retransmit(Duration::from_millis(200), 1);
        let probe = Timer::Probe(Duration::from_millis(200));
        assert_eq!(infer(TcpState::Established, Some(&retransmit), false), None);
        assert_eq!(infer(TcpState::Established, Some(&probe), false), None);
    }

    #[test]
    fn fin_wait2_timeout_of_an_orphan_is_not_keepalive() {
        assert_eq!(infer(TcpState::FinWait2, Some(&KEEPALIVE), true), None);
        assert_eq!(infer(TcpState::FinWait2, Some(&KEEPALIVE), false), Some(true));
        assert_eq!(infer(TcpState::FinWait2, None, false), Some(false));
    }

    #[test]
    fn states_without_a_keepalive_timer_are_unknown() {
        for state in [
            TcpState::Listen,
            TcpState::SynSent,
            TcpState::SynRecv,
            TcpState::Close,
            TcpState::TimeWait,
            TcpState::NewSynRecv,
        ] {
            assert_eq!(infer(state, None, false), None, "{state}");
            assert_eq!(infer(state, Some(&KEEPALIVE), false), None, "{state}");
        }
        assert_eq!(infer(TcpState::TimeWait, Some(&Timer::TimeWait), true), None);
    }
}
