//! The churn generator: loopback connections as fast as `threads` clients can make them (and
//! `threads` servers answer them), in a network namespace of its own so runs do not share
//! TIME_WAIT sockets or ports, in one of the shapes a real server sees ([`Workload`]).

use std::{
    io::{self, Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

/// How each connection goes: one byte each way, then an end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Workload {
    /// The client closes first (most clients): its side goes to TIME_WAIT.
    ClientCloses,
    /// The server closes first (HTTP/1.0, a server ending idle keep-alives): the client
    /// passes through CLOSE_WAIT, the server's side goes to TIME_WAIT.
    ServerCloses,
    /// The client closes with SO_LINGER 0: a reset, no TIME_WAIT.
    Reset,
    /// Few long connections, many requests (a pool): each "connection" counted is a request
    /// on one of `threads` connections opened once.
    KeepAlive,
    /// As client-closes, with each client a CPython process (Debian's `/usr/bin/python3.11`)
    /// connecting from a function a few calls deep: what walking the interpreter's frames at
    /// each connect costs, next to the native clients' runs.
    PythonClients,
}

impl Workload {
    pub const ALL: [Self; 5] =
        [Self::ClientCloses, Self::ServerCloses, Self::Reset, Self::KeepAlive, Self::PythonClients];

    pub fn name(self) -> &'static str {
        match self {
            Self::ClientCloses => "client-closes",
            Self::ServerCloses => "server-closes",
            Self::Reset => "reset",
            Self::KeepAlive => "keep-alive",
            Self::PythonClients => "python-clients",
        }
    }

    /// What one unit of the rate is.
    pub fn unit(self) -> &'static str {
        if self == Self::KeepAlive { "req/s" } else { "conn/s" }
    }
}

/// What one run made.
#[derive(Debug, Clone, Copy)]
pub struct Churned {
    /// Connections made (requests, for keep-alive).
    pub connections: u64,
    pub seconds: f64,
}

/// Runs the generator in this process: call it from a process of its own (`xtask churn`).
pub fn churn(threads: usize, duration: Duration, workload: Workload) -> Result<Churned> {
    // Before any thread exists: the new namespace is the calling thread's, and threads
    // spawned afterwards inherit it.
    // SAFETY: unshare has no memory preconditions.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error()).context("unshare(CLONE_NEWNET): run as root");
    }
    loopback_up().context("bringing lo up in the new network namespace")?;
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("binding the server")?;
    let server = listener.local_addr()?;
    let listener = Arc::new(listener);
    let done = Arc::new(AtomicBool::new(false));
    let made = Arc::new(AtomicU64::new(0));
    for _ in 0..threads {
        let listener = Arc::clone(&listener);
        thread::spawn(move || serve(&listener, workload));
    }
    let started = Instant::now();
    let clients: Vec<_> = (0..threads)
        .map(|_| {
            let (done, made) = (Arc::clone(&done), Arc::clone(&made));
            thread::spawn(move || match workload {
                Workload::KeepAlive => pooled_client(server, &done, &made),
                Workload::PythonClients => python_client(server, duration, &made),
                _ => client(server, workload, &done, &made),
            })
        })
        .collect();
    thread::sleep(duration);
    done.store(true, Ordering::Relaxed);
    for client in clients {
        client.join().map_err(|_| anyhow::anyhow!("a client thread panicked"))??;
    }
    Ok(Churned {
        connections: made.load(Ordering::Relaxed),
        seconds: started.elapsed().as_secs_f64(),
    })
}

fn client(
    server: SocketAddr,
    workload: Workload,
    done: &AtomicBool,
    made: &AtomicU64,
) -> Result<()> {
    let mut byte = [0u8; 1];
    while !done.load(Ordering::Relaxed) {
        let mut conn = TcpStream::connect(server).context("connecting")?;
        conn.write_all(b"x").context("writing")?;
        conn.read_exact(&mut byte).context("reading")?;
        match workload {
            // Until the server's FIN, then close: the server closed first.
            Workload::ServerCloses => {
                let _ = conn.read(&mut byte);
            }
            Workload::Reset => linger_zero(&conn).context("SO_LINGER 0")?,
            Workload::ClientCloses | Workload::KeepAlive | Workload::PythonClients => {}
        }
        drop(conn);
        made.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}

/// The Python client: client-closes connections for `duration`, from `open_order_client`
/// under two more frames; prints how many it made.
const PYTHON_CLIENT: &str = r"import socket, sys, time

def open_order_client(addr):
    conn = socket.create_connection(addr)
    conn.sendall(b'x')
    conn.recv(1)
    conn.close()

def handle(addr, until):
    made = 0
    while time.monotonic() < until:
        open_order_client(addr)
        made += 1
    return made

def main():
    addr = (sys.argv[1], int(sys.argv[2]))
    print(handle(addr, time.monotonic() + float(sys.argv[3])))

main()
";

/// One CPython process making connections for `duration`.
fn python_client(server: SocketAddr, duration: Duration, made: &AtomicU64) -> Result<()> {
    const PYTHON: &str = "/usr/bin/python3.11";
    let out = std::process::Command::new(PYTHON)
        .args(["-c", PYTHON_CLIENT])
        .arg(server.ip().to_string())
        .arg(server.port().to_string())
        .arg(duration.as_secs_f64().to_string())
        .output()
        .with_context(|| format!("running {PYTHON} (cargo xtask setup installs python3)"))?;
    anyhow::ensure!(out.status.success(), "{PYTHON}: {}", String::from_utf8_lossy(&out.stderr));
    let count: u64 =
        String::from_utf8_lossy(&out.stdout).trim().parse().context("the Python client's count")?;
    made.fetch_add(count, Ordering::Relaxed);
    Ok(())
}

/// One connection, a request and its answer after another on it.
fn pooled_client(server: SocketAddr, done: &AtomicBool, made: &AtomicU64) -> Result<()> {
    let mut byte = [0u8; 1];
    let mut conn = TcpStream::connect(server).context("connecting")?;
    conn.set_nodelay(true).context("TCP_NODELAY")?;
    while !done.load(Ordering::Relaxed) {
        conn.write_all(b"x").context("writing")?;
        conn.read_exact(&mut byte).context("reading")?;
        made.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}

fn serve(listener: &TcpListener, workload: Workload) {
    let mut byte = [0u8; 1];
    for conn in listener.incoming() {
        let Ok(mut conn) = conn else { continue };
        match workload {
            // The server's own thread per pooled connection: requests until the client leaves.
            Workload::KeepAlive => {
                let _ = conn.set_nodelay(true);
                thread::spawn(move || {
                    let mut byte = [0u8; 1];
                    while conn.read_exact(&mut byte).is_ok() && conn.write_all(b"y").is_ok() {}
                });
            }
            // Answer, then close at once: this side closes first.
            Workload::ServerCloses => {
                let _ = conn.read_exact(&mut byte).and_then(|()| conn.write_all(b"y"));
            }
            // Answer, then wait for the client's FIN (or reset) before closing.
            Workload::ClientCloses | Workload::Reset | Workload::PythonClients => {
                if conn.read_exact(&mut byte).is_ok() && conn.write_all(b"y").is_ok() {
                    let _ = conn.read(&mut byte);
                }
            }
        }
    }
}

/// SO_LINGER with a zero timeout: close() then sends a reset and skips TIME_WAIT.
fn linger_zero(conn: &TcpStream) -> io::Result<()> {
    use std::os::fd::AsRawFd as _;
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: our own socket; the option value is a valid `linger` of the size given.
    let ret = unsafe {
        libc::setsockopt(
            conn.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    if ret == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// `ip link set lo up`, without iproute2.
fn loopback_up() -> io::Result<()> {
    // SAFETY: a plain socket for the interface ioctls, closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: zeroed ifreq is valid; the name fits; the ioctls read and write that struct.
    let result = unsafe {
        let mut ifr: libc::ifreq = std::mem::zeroed();
        for (dst, src) in ifr.ifr_name.iter_mut().zip(b"lo\0") {
            *dst = *src as libc::c_char;
        }
        if libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut ifr) < 0 {
            Err(io::Error::last_os_error())
        } else {
            ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            if libc::ioctl(fd, libc::SIOCSIFFLAGS, &ifr) < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(())
            }
        }
    };
    // SAFETY: our own descriptor.
    unsafe { libc::close(fd) };
    result
}
