//! The churn generator: loopback connections as fast as `threads` clients can make them, each
//! `connect`, one byte each way, `close` (the client closes first), in a network namespace of
//! its own so runs do not share TIME_WAIT sockets or ports.

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

/// What one run made.
#[derive(Debug, Clone, Copy)]
pub struct Churned {
    pub connections: u64,
    pub seconds: f64,
}

/// Runs the generator in this process: call it from a process of its own (`xtask churn`).
pub fn churn(threads: usize, duration: Duration) -> Result<Churned> {
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
        thread::spawn(move || serve(&listener));
    }
    let started = Instant::now();
    let clients: Vec<_> = (0..threads)
        .map(|_| {
            let (done, made) = (Arc::clone(&done), Arc::clone(&made));
            thread::spawn(move || client(server, &done, &made))
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

fn client(server: SocketAddr, done: &AtomicBool, made: &AtomicU64) -> Result<()> {
    let mut byte = [0u8; 1];
    while !done.load(Ordering::Relaxed) {
        let mut conn = TcpStream::connect(server).context("connecting")?;
        conn.write_all(b"x").context("writing")?;
        conn.read_exact(&mut byte).context("reading")?;
        drop(conn);
        made.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}

fn serve(listener: &TcpListener) {
    let mut byte = [0u8; 1];
    for conn in listener.incoming() {
        let Ok(mut conn) = conn else { continue };
        if conn.read_exact(&mut byte).is_ok() && conn.write_all(b"y").is_ok() {
            // Until the client's FIN: the client closes first, as most clients do.
            let _ = conn.read(&mut byte);
        }
    }
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
