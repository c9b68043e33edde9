//! The starting inventory: every TCP socket that exists when tracing starts, which the event
//! stream will never report an open for.
//!
//! One walk over /proc maps socket inodes to the (pid, fd) pairs holding them and finds every
//! network namespace a process is in; named namespaces under /run/netns are added; then one
//! NETLINK_SOCK_DIAG dump per namespace lists its TCP sockets (IPv4 and IPv6, every state but
//! TIME_WAIT, which no process holds) with `tcp_info`, and the two are joined on the inode.
//!
//! Files, one reason to change each: `proc_fds` (the /proc walk), `netns` (finding and entering
//! namespaces), `sock_diag` (the netlink dump), `tcp_info` and `keepalive` (pure readings of
//! what the kernel reported), `filter` (the command's filters, as the kernel applies them to
//! events), `warnings`.
//!
//! May import `event` and `container` (its filter's cgroups); imported by `pipeline` (which sweeps) and `analysis` (which applies the
//! snapshots).
//!
//! What it cannot see:
//! - Sockets in CLOSE that the kernel already unhashed (after a reset, or never bound) are in no
//!   sock_diag table, although a process may still hold their descriptor; Linux 6.6+ reports
//!   the ones still bound to a port (`TCP_BOUND_INACTIVE`).
//! - A namespace that only a thread (not a thread-group leader) or only an open socket keeps
//!   alive, without a /run/netns mount, is not found; nor are descriptors of a thread that
//!   unshared its descriptor table.
//! - The walk and the dumps are not atomic: a socket opened after the walk has no owner, one
//!   closed before its dump is missing.

pub mod filter;
mod keepalive;
mod netns;
mod proc_fds;
pub mod sock_diag;
mod tcp_info;
mod warnings;

use std::{
    io,
    net::SocketAddr,
    time::{Duration, Instant},
};

use anyhow::Result;

use self::{netns::Namespaces, proc_fds::Owners, sock_diag::DiagSocket, warnings::Warnings};
use crate::event::TcpState;

/// One TCP socket as the kernel reported it, with the descriptors that hold it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InventorySocket {
    /// Socket inode (`idiag_inode`), as in `/proc/<pid>/fd` links `socket:[INODE]`; 0 once no
    /// process can hold it (TIME_WAIT, request sockets, sockets closed by their process).
    pub inode: u64,
    /// Socket cookie (`idiag_cookie`), the value `bpf_get_socket_cookie()` gives.
    pub cookie: u64,
    /// Inode of the network namespace it was dumped from (as `stat /proc/<pid>/ns/net`).
    pub netns: u64,
    pub state: TcpState,
    /// Dual-stack IPv6 sockets talking IPv4 keep their v4-mapped addresses (`::ffff:a.b.c.d`),
    /// as the kernel's tracepoints report them.
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// Owner uid of the socket (`idiag_uid`, in its namespace's user namespace).
    pub uid: u32,
    /// Time since data was last sent or received (the smaller of `tcpi_last_data_recv` and
    /// `tcpi_last_data_sent`), from `tcp_info`, at dump time. `None` when the kernel gave no
    /// `tcp_info` (TIME_WAIT, request and bound-only sockets) and where its timestamps mean
    /// nothing: LISTEN (zeroed), SYN_SENT and CLOSE (never set before a handshake).
    pub idle: Option<Duration>,
    /// SO_KEEPALIVE on (`Some(true)`) or off (`Some(false)`), inferred from `idiag_timer`:
    /// 2 (`sk_timer` pending, which for TCP is the keepalive timer) means on, 0 means off, in the
    /// synchronized states (ESTABLISHED, CLOSE_WAIT, FIN_WAIT1/2, LAST_ACK, CLOSING). `None`
    /// when the dump cannot tell: a retransmit or zero-window-probe timer is pending (the
    /// kernel reports only that one), an orphaned FIN_WAIT2 socket (its FIN_WAIT2 timeout
    /// reuses `sk_timer`), and LISTEN, SYN_SENT, SYN_RECV, CLOSE and TIME_WAIT, where no
    /// keepalive timer runs. See `keepalive.rs` for the kernel functions this rests on.
    pub keepalive: Option<bool>,
    /// Every (pid, fd) holding this inode, by pid then fd; empty for inode 0, and for a socket
    /// whose holders could not be read (see `Snapshot::warnings`).
    pub owners: Vec<FdOwner>,
}

/// A descriptor holding a socket.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FdOwner {
    /// The process (thread-group) id.
    pub pid: u32,
    pub fd: i32,
    /// The process's name (`/proc/<pid>/stat`), up to 15 bytes.
    pub comm: String,
}

#[derive(Debug, Clone)]
pub struct Snapshot {
    pub sockets: Vec<InventorySocket>,
    /// When the walk began: every fact was read after this instant.
    pub taken_at: Instant,
    /// When the last dump ended: every fact was read before this instant.
    pub finished_at: Instant,
    /// Inodes of the network namespaces that were dumped, the caller's first.
    pub namespaces: Vec<u64>,
    /// What could not be read: permission errors (summed per kind), namespaces that could not
    /// be entered, messages that did not decode.
    pub warnings: Vec<String>,
    /// The cgroup of each holder, by pid: left empty here, filled by the pipeline, which keeps
    /// what it knows of each process.
    pub cgroups: foldhash::HashMap<u32, std::sync::Arc<crate::container::Cgroup>>,
}

/// Every TCP socket a process can hold (IPv4 and IPv6, every state but TIME_WAIT) in every
/// network namespace reachable through `/proc/*/ns/net` and `/run/netns/*` (deduplicated by
/// namespace inode; the caller's own included), joined with the descriptors in `/proc/*/fd`.
///
/// Fails only if /proc cannot be listed or the caller's own namespace cannot be dumped;
/// everything else it could not see is in `warnings`.
pub fn snapshot() -> Result<Snapshot> {
    let taken_at = Instant::now();
    let mut warnings = Warnings::default();
    let mut namespaces = Namespaces::new()?;
    let mut owners = proc_fds::scan(&mut namespaces, &mut warnings)?;
    namespaces.add_named(&mut warnings);
    let dumps = namespaces.dump_all(&mut warnings)?;
    let finished_at = Instant::now();

    let mut sockets = Vec::with_capacity(dumps.iter().map(|ns| ns.dump.sockets.len()).sum());
    let mut dumped = Vec::with_capacity(dumps.len());
    for netns::NsDump { netns, dump } in dumps {
        dumped.push(netns);
        if dump.undecodable > 0 {
            warnings.push(format!(
                "network namespace {netns}: {} sock_diag messages skipped (first: {})",
                dump.undecodable,
                dump.first_undecodable.unwrap_or_default()
            ));
        }
        sockets.extend(dump.sockets.into_iter().map(|socket| join(socket, netns, &mut owners)));
    }
    Ok(Snapshot {
        sockets,
        taken_at,
        finished_at,
        namespaces: dumped,
        warnings: warnings.into_lines(),
        cgroups: Default::default(),
    })
}

/// The process or namespace went away while it was being read: a race, not an error.
fn vanished(error: &io::Error) -> bool {
    error.kind() == io::ErrorKind::NotFound || error.raw_os_error() == Some(libc::ESRCH)
}

fn join(socket: DiagSocket, netns: u64, owners: &mut Owners) -> InventorySocket {
    let DiagSocket { state, local, remote, inode, cookie, uid, timer, last_data } = socket;
    let inode = u64::from(inode);
    // Inodes are unique across namespaces (one sockfs), so each list is taken once.
    let mut owners =
        if inode == 0 { Vec::new() } else { owners.remove(&inode).unwrap_or_default() };
    owners.sort_unstable();
    InventorySocket {
        inode,
        cookie,
        netns,
        state,
        local,
        remote,
        uid,
        idle: last_data.and_then(|last| last.idle(state)),
        keepalive: keepalive::infer(state, timer.as_ref(), inode == 0),
        owners,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use netlink_packet_sock_diag::inet::Timer;

    use super::{tcp_info::LastData, *};

    fn diag(state: TcpState, inode: u32, timer: Option<Timer>) -> DiagSocket {
        DiagSocket {
            state,
            local: "127.0.0.1:8080".parse().unwrap(),
            remote: "127.0.0.1:40000".parse().unwrap(),
            inode,
            cookie: 9,
            uid: 0,
            timer,
            last_data: Some(LastData {
                sent: Duration::from_secs(3),
                recv: Duration::from_secs(2),
            }),
        }
    }

    fn owner(pid: u32, fd: i32) -> FdOwner {
        FdOwner { pid, fd, comm: format!("p{pid}") }
    }

    #[test]
    fn joins_owners_by_inode_sorted() {
        let mut owners = Owners::from([(77, vec![owner(20, 4), owner(10, 9), owner(10, 3)])]);
        let socket = join(
            diag(TcpState::Established, 77, Some(Timer::KeepAlive(Duration::ZERO))),
            5,
            &mut owners,
        );
        assert_eq!(socket.owners, [owner(10, 3), owner(10, 9), owner(20, 4)]);
        assert_eq!((socket.inode, socket.netns, socket.cookie), (77, 5, 9));
        assert_eq!(socket.idle, Some(Duration::from_secs(2)));
        assert_eq!(socket.keepalive, Some(true));
        assert!(owners.is_empty(), "each inode's owners are taken once");
    }

    #[test]
    fn inode_zero_has_no_owners() {
        let mut owners = Owners::from([(0, vec![owner(1, 1)])]);
        let socket = join(diag(TcpState::TimeWait, 0, Some(Timer::TimeWait)), 5, &mut owners);
        assert!(socket.owners.is_empty());
        assert_eq!(socket.keepalive, None);
        assert_eq!(socket.idle, None);
    }

    #[test]
    fn a_socket_nobody_holds_any_more_keeps_its_state() {
        let socket = join(diag(TcpState::CloseWait, 12, None), 5, &mut Owners::new());
        assert!(socket.owners.is_empty());
        assert_eq!(socket.keepalive, Some(false));
    }
}
