//! The two `struct tcp_info` fields the inventory needs: when data was last sent and received.
//!
//! They are read by their offsets in include/uapi/linux/tcp.h rather than through
//! netlink-packet-sock-diag's `TcpInfo` (its `rich_nlas` feature): that parser insists on the
//! whole Linux 5.4-era struct, and a shorter `INET_DIAG_INFO` (older kernels) fails the entire
//! response, so the socket would vanish from the inventory instead of only losing its idle time.
//! The two fields have sat at these offsets since `tcp_info` was introduced; the kernel only ever
//! appends to the struct. Pure: no I/O.

use std::time::Duration;

use crate::event::TcpState;

/// `tcpi_state` .. `tcpi_delivery_rate_app_limited` are eight `__u8`, then `__u32` from
/// `tcpi_rto` (offset 8): rto, ato, snd_mss, rcv_mss, unacked, sacked, lost, retrans, fackets,
/// then the times below, in milliseconds.
const LAST_DATA_SENT: usize = 44;
const LAST_DATA_RECV: usize = 52;
/// Bytes needed to read both fields.
const NEEDED: usize = LAST_DATA_RECV + 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("tcp_info of {0} bytes is shorter than the {NEEDED} bytes holding the last-data times")]
pub struct ShortTcpInfo(pub usize);

/// Time since data was last sent and received, as the kernel computed them at dump time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LastData {
    pub sent: Duration,
    pub recv: Duration,
}

impl TryFrom<&[u8]> for LastData {
    type Error = ShortTcpInfo;

    fn try_from(info: &[u8]) -> Result<Self, ShortTcpInfo> {
        if info.len() < NEEDED {
            return Err(ShortTcpInfo(info.len()));
        }
        // The kernel copies the struct as it is in memory: host byte order.
        let ms = |at: usize| {
            let mut raw = [0u8; 4];
            raw.copy_from_slice(&info[at..at + 4]);
            Duration::from_millis(u64::from(u32::from_ne_bytes(raw)))
        };
        Ok(Self { sent: ms(LAST_DATA_SENT), recv: ms(LAST_DATA_RECV) })
    }
}

impl LastData {
    /// Time since data last moved in either direction, where the kernel's timestamps mean that.
    ///
    /// `tcp_get_info()` (net/ipv4/tcp.c) zeroes both fields for a listener, and before the
    /// handshake completes (`SYN_SENT`, a socket that never connected, in `CLOSE`) the
    /// timestamps they are computed from were never set, so the values count from an arbitrary
    /// origin.
    pub fn idle(self, state: TcpState) -> Option<Duration> {
        use TcpState::*;
        match state {
            Established | FinWait1 | FinWait2 | CloseWait | LastAck | Closing => {
                Some(self.sent.min(self.recv))
            }
            Listen | SynSent | SynRecv | Close | TimeWait | NewSynRecv => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::mem::offset_of;

    use super::*;

    fn info(len: usize, sent: u32, recv: u32) -> Vec<u8> {
        let mut raw = vec![0xaa; len];
        raw[LAST_DATA_SENT..LAST_DATA_SENT + 4].copy_from_slice(&sent.to_ne_bytes());
        raw[LAST_DATA_RECV..LAST_DATA_RECV + 4].copy_from_slice(&recv.to_ne_bytes());
        raw
    }

    #[test]
    fn offsets_match_the_c_struct() {
        // libc's copy of glibc's netinet/tcp.h is an independent transcription of the layout.
        assert_eq!(offset_of!(libc::tcp_info, tcpi_last_data_sent), LAST_DATA_SENT);
        assert_eq!(offset_of!(libc::tcp_info, tcpi_last_data_recv), LAST_DATA_RECV);
    }

    #[test]
    fn reads_both_times_and_idle_is_the_smaller() {
        // 232 bytes is the 5.4 struct; newer kernels append fields, which must be ignored.
        for len in [NEEDED, 232, 280] {
            let last = LastData::try_from(info(len, 1500, 250).as_slice()).expect("long enough");
            assert_eq!(last.sent, Duration::from_millis(1500));
            assert_eq!(last.recv, Duration::from_millis(250));
            assert_eq!(last.idle(TcpState::Established), Some(Duration::from_millis(250)));
            assert_eq!(last.idle(TcpState::CloseWait), Some(Duration::from_millis(250)));
        }
    }

    #[test]
    fn rejects_a_short_struct() {
        assert_eq!(LastData::try_from(&[0u8; NEEDED - 1][..]), Err(ShortTcpInfo(NEEDED - 1)));
        assert_eq!(LastData::try_from(&[][..]), Err(ShortTcpInfo(0)));
    }

    #[test]
    fn no_idle_where_the_timestamps_mean_nothing() {
        let last = LastData::try_from(info(NEEDED, u32::MAX, u32::MAX).as_slice()).unwrap();
        for state in [TcpState::Listen, TcpState::SynSent, TcpState::Close, TcpState::TimeWait] {
            assert_eq!(last.idle(state), None, "{state}");
        }
    }
}
