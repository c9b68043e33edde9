//! The kernel's own view of a scenario's sockets, independent of tcptrace: `/proc/<pid>/net/tcp`
//! (the table of the process's namespace) joined with `/proc/<pid>/fd`, `ss` output, and a
//! socket's `tcp_info` read through a duplicate of the process's descriptor (`pidfd_getfd`).

use std::{
    fs, io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    process::Stdio,
    time::Duration,
};

use tcptrace::event::TcpState;

use crate::support::{
    netns::Netns,
    process::{poll_until, tool},
    raw,
};

/// A kernel TCP state number's name as tcptrace prints it; `?` for a number it does not know.
pub fn state_name(state: u8) -> &'static str {
    TcpState::try_from(state).map_or("?", TcpState::name)
}

/// The `tr` column of /proc/net/tcp: which timer is pending.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timer {
    None,
    Retransmit,
    /// Also the SYN_RECV and FIN_WAIT2 timers, which share the keepalive timer.
    Keepalive,
    TimeWait,
    ZeroWindowProbe,
    Other(u8),
}

/// One row of /proc/<pid>/net/tcp{,6}.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TcpRow {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub state: &'static str,
    pub timer: Timer,
    /// 0 for TIME_WAIT and orphaned sockets.
    pub inode: u64,
}

/// "0100007F:1F90": the address as the kernel's native-endian words of network-order bytes.
fn parse_endpoint(text: &str) -> Option<SocketAddr> {
    let (addr, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let mut bytes = Vec::with_capacity(16);
    for i in (0..addr.len()).step_by(8) {
        let word = u32::from_str_radix(addr.get(i..i + 8)?, 16).ok()?;
        bytes.extend_from_slice(&word.to_ne_bytes());
    }
    let ip = match bytes.len() {
        4 => IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(bytes).ok()?)),
        16 => {
            let v6 = Ipv6Addr::from(<[u8; 16]>::try_from(bytes).ok()?);
            v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// Rows of a /proc/net/tcp-format table (the header line is skipped).
pub fn parse_tcp_table(text: &str) -> Vec<TcpRow> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let timer = u8::from_str_radix(cols.get(5)?.split(':').next()?, 16).ok()?;
            Some(TcpRow {
                local: parse_endpoint(cols.get(1)?)?,
                remote: parse_endpoint(cols.get(2)?)?,
                state: state_name(u8::from_str_radix(cols.get(3)?, 16).ok()?),
                timer: match timer {
                    0 => Timer::None,
                    1 => Timer::Retransmit,
                    2 => Timer::Keepalive,
                    3 => Timer::TimeWait,
                    4 => Timer::ZeroWindowProbe,
                    other => Timer::Other(other),
                },
                inode: cols.get(9)?.parse().ok()?,
            })
        })
        .collect()
}

/// The TCP table of `pid`'s network namespace, IPv4 and IPv6.
pub fn tcp_table(pid: u32) -> Vec<TcpRow> {
    ["tcp", "tcp6"]
        .iter()
        .flat_map(|t| {
            parse_tcp_table(&fs::read_to_string(format!("/proc/{pid}/net/{t}")).unwrap_or_default())
        })
        .collect()
}

/// `pid`'s descriptors that are sockets, with their inodes.
pub fn socket_fds(pid: u32) -> Vec<(RawFd, u64)> {
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    let mut fds: Vec<(RawFd, u64)> = dir
        .flatten()
        .filter_map(|entry| {
            let fd = entry.file_name().to_str()?.parse().ok()?;
            let target = fs::read_link(entry.path()).ok()?;
            let inode =
                target.to_str()?.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()?;
            Some((fd, inode))
        })
        .collect();
    fds.sort_unstable();
    fds
}

/// A socket a process holds.
#[derive(Clone, Debug)]
pub struct Held {
    pub fd: RawFd,
    pub inode: u64,
    /// Its row in the namespace's TCP table; `None` once it has reached CLOSE (or is not TCP).
    pub row: Option<TcpRow>,
}

/// Every socket `pid` holds.
pub fn held(pid: u32) -> Vec<Held> {
    let table = tcp_table(pid);
    socket_fds(pid)
        .into_iter()
        .map(|(fd, inode)| Held {
            fd,
            inode,
            row: table.iter().find(|r| r.inode == inode).cloned(),
        })
        .collect()
}

/// The TCP row of `pid`'s descriptor `fd`, if it is a socket in the table.
pub fn row_of(pid: u32, fd: RawFd) -> Option<TcpRow> {
    held(pid).into_iter().find(|h| h.fd == fd)?.row
}

/// Waits until `pid`'s `fd` is a TCP socket in `state`.
pub fn wait_state(pid: u32, fd: RawFd, state: &str, timeout: Duration) -> TcpRow {
    poll_until(timeout, || row_of(pid, fd).filter(|r| r.state == state)).unwrap_or_else(|| {
        panic!("fd {fd} of pid {pid} not {state} within {timeout:?}; its sockets: {:#?}", held(pid))
    })
}

/// Waits until `pid` holds a TCP socket `local -> remote` in `state`; returns its descriptor.
pub fn wait_held(pid: u32, state: &str, remote: SocketAddr, timeout: Duration) -> (RawFd, TcpRow) {
    let found = poll_until(timeout, || {
        held(pid).into_iter().find_map(|h| {
            let row = h.row?;
            (row.state == state && row.remote == remote).then_some((h.fd, row))
        })
    });
    found.unwrap_or_else(|| {
        panic!(
            "pid {pid} holds no {state} socket to {remote} after {timeout:?}; its sockets: {:#?}",
            held(pid)
        )
    })
}

// ---------------------------------------------------------------------------------------------
// ss

/// A process holding an `ss` row's socket: `users:(("comm",pid=P,fd=F),...)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SsUser {
    pub comm: String,
    pub pid: u32,
    pub fd: RawFd,
}

/// One socket as `ss -tanpeioH` prints it.
#[derive(Clone, Debug)]
pub struct SsRow {
    /// "ESTAB", "CLOSE-WAIT", "TIME-WAIT", ...
    pub state: String,
    pub local: String,
    pub peer: String,
    pub users: Vec<SsUser>,
    /// The `timer:(...)` field, e.g. "keepalive,59sec,0".
    pub timer: Option<String>,
    /// Both lines as printed, for failure messages.
    pub text: String,
}

impl SsRow {
    pub fn held_by(&self, pid: u32, fd: RawFd) -> bool {
        self.users.iter().any(|u| u.pid == pid && u.fd == fd)
    }

    pub fn keepalive(&self) -> bool {
        self.timer.as_deref().is_some_and(|t| t.starts_with("keepalive"))
    }
}

fn parse_users(field: &str) -> Vec<SsUser> {
    // (("redis-server",pid=31188,fd=7),("x",pid=2,fd=3))
    field
        .split("),(")
        .filter_map(|user| {
            let user = user.trim_matches(|c| c == '(' || c == ')');
            let (comm, rest) = user.strip_prefix('"')?.split_once("\",")?;
            let mut pid = None;
            let mut fd = None;
            for kv in rest.split(',') {
                match kv.split_once('=') {
                    Some(("pid", v)) => pid = v.parse().ok(),
                    Some(("fd", v)) => fd = v.parse().ok(),
                    _ => {}
                }
            }
            Some(SsUser { comm: comm.to_owned(), pid: pid?, fd: fd? })
        })
        .collect()
}

/// Parses `ss -tanpeioH`: one line per socket, the `-i` details on an indented second line.
pub fn parse_ss(text: &str) -> Vec<SsRow> {
    let mut rows: Vec<SsRow> = Vec::new();
    for line in text.lines() {
        if line.starts_with(char::is_whitespace) {
            if let Some(last) = rows.last_mut() {
                last.text.push('\n');
                last.text.push_str(line);
            }
            continue;
        }
        let cols: Vec<&str> = line.split_whitespace().collect();
        if cols.len() < 5 {
            continue;
        }
        let field = |prefix: &str| cols.iter().find_map(|c| c.strip_prefix(prefix));
        rows.push(SsRow {
            state: cols[0].to_owned(),
            local: cols[3].to_owned(),
            peer: cols[4].to_owned(),
            users: field("users:").map(parse_users).unwrap_or_default(),
            timer: field("timer:(").map(|t| t.trim_end_matches(')').to_owned()),
            text: line.to_owned(),
        });
    }
    rows
}

/// `ss -tanpeioH` inside `ns` (ss lists no socket in CLOSE).
pub fn ss(ns: &Netns) -> Vec<SsRow> {
    let out = ns
        .command(tool("ss"))
        .arg("-tanpeioH")
        .stdin(Stdio::null())
        .stderr(Stdio::null()) // "Failed to find cgroup2 mount" without cgroup2
        .output()
        .expect("running ss");
    assert!(out.status.success(), "ss failed in {}: {}", ns.name(), out.status);
    parse_ss(&String::from_utf8_lossy(&out.stdout))
}

pub fn show_ss(rows: &[SsRow]) -> String {
    rows.iter().map(|r| format!("  {}\n", r.text)).collect()
}

// ---------------------------------------------------------------------------------------------
// tcp_info through a duplicate descriptor

/// What the kernel says about a socket another process holds.
#[derive(Clone, Copy, Debug)]
pub struct Peek {
    pub state: &'static str,
    /// Milliseconds since data was last received and sent.
    pub last_data_recv_ms: u32,
    pub last_data_sent_ms: u32,
    /// SO_KEEPALIVE.
    pub keepalive: bool,
}

/// Duplicates `pid`'s `fd` into this process (pidfd_getfd; needs root), reads `tcp_info` and
/// SO_KEEPALIVE, and closes the duplicate. Only where no tracer runs: while the duplicate is
/// open this process holds the socket too.
pub fn peek(pid: u32, fd: RawFd) -> Peek {
    // SAFETY: plain syscalls; each returned descriptor is owned right away.
    let dup = unsafe {
        let pidfd = libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0);
        assert!(pidfd >= 0, "pidfd_open({pid}): {}", io::Error::last_os_error());
        let pidfd = OwnedFd::from_raw_fd(pidfd as RawFd);
        let dup = libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0);
        assert!(dup >= 0, "pidfd_getfd({pid}, {fd}): {}", io::Error::last_os_error());
        OwnedFd::from_raw_fd(dup as RawFd)
    };
    // SAFETY: TCP_INFO fills a tcp_info (C integers).
    let info: Option<libc::tcp_info> =
        unsafe { raw::get_option(dup.as_raw_fd(), libc::IPPROTO_TCP, libc::TCP_INFO) };
    let info = info.unwrap_or_else(|| {
        panic!("TCP_INFO on fd {fd} of pid {pid}: {}", io::Error::last_os_error())
    });
    // SAFETY: SO_KEEPALIVE is an int.
    let keepalive: Option<libc::c_int> =
        unsafe { raw::get_option(dup.as_raw_fd(), libc::SOL_SOCKET, libc::SO_KEEPALIVE) };
    let keepalive = keepalive.unwrap_or_else(|| {
        panic!("SO_KEEPALIVE on fd {fd} of pid {pid}: {}", io::Error::last_os_error())
    });
    Peek {
        state: state_name(info.tcpi_state),
        last_data_recv_ms: info.tcpi_last_data_recv,
        last_data_sent_ms: info.tcpi_last_data_sent,
        keepalive: keepalive != 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_net_tcp_rows() {
        let text = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   \
            0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 108622 1 0000000000000000 100 0 0 10 0\n   \
            1: 010012C6:1B58 020012C6:AA08 01 00000000:00000000 02:0000EA5F 00000000     0        0 108812 1 0000000000000000 20 4 30 10 -1\n";
        let rows = parse_tcp_table(text);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].local, "127.0.0.1:8080".parse().unwrap());
        assert_eq!((rows[0].state, rows[0].timer, rows[0].inode), ("LISTEN", Timer::None, 108622));
        assert_eq!(rows[1].local, "198.18.0.1:7000".parse().unwrap());
        assert_eq!(rows[1].remote, "198.18.0.2:43528".parse().unwrap());
        assert_eq!((rows[1].state, rows[1].timer), ("ESTABLISHED", Timer::Keepalive));
    }

    #[test]
    fn parses_ss_rows_with_users_timers_and_details() {
        let text = "ESTAB  0      0      198.18.0.1:7000 198.18.0.2:43528 users:((\"redis-server\",pid=31188,fd=7)) timer:(keepalive,59sec,0) ino:108812 sk:1038 <->\n\
            \t ts sack bbr wscale:10,10 lastsnd:1300 lastrcv:1300\n\
            FIN-WAIT-2 0      0      127.0.0.1:8080  127.0.0.1:39518 timer:(timewait,59sec,0) ino:0 sk:1035\n\
            LISTEN 0 511 0.0.0.0:80 0.0.0.0:* users:((\"nginx\",pid=2,fd=5),(\"nginx\",pid=1,fd=6)) ino:1 sk:2 <->\n";
        let rows = parse_ss(text);
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[0].state, "ESTAB");
        assert_eq!(
            (rows[0].local.as_str(), rows[0].peer.as_str()),
            ("198.18.0.1:7000", "198.18.0.2:43528")
        );
        assert!(rows[0].held_by(31188, 7) && rows[0].keepalive());
        assert!(rows[0].text.contains("lastrcv:1300"));
        assert!(rows[1].users.is_empty() && !rows[1].keepalive());
        assert_eq!(
            rows[2].users,
            vec![
                SsUser { comm: "nginx".into(), pid: 2, fd: 5 },
                SsUser { comm: "nginx".into(), pid: 1, fd: 6 }
            ]
        );
    }
}
