//! Short-lived processes that each open one loopback connection and exit (the soak tests).

use std::{
    ffi::CStr,
    io::Read as _,
    net::{Ipv4Addr, TcpListener},
};

/// Forks a child that names itself `comm`, connects to `port` and exits holding the
/// connection (its exit releases it); accepts that connection, reaps the child, then reads
/// to the end and closes. Returns the child's pid.
pub fn connect_from_child(listener: &TcpListener, port: u16, comm: &CStr) -> i32 {
    let addr = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from(Ipv4Addr::LOCALHOST).to_be() },
        sin_zero: [0; 8],
    };
    // SAFETY: the child only makes system calls (async-signal-safe) and leaves with _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        // SAFETY: plain system calls on values prepared before the fork.
        unsafe {
            libc::prctl(libc::PR_SET_NAME, comm.as_ptr());
            let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
            let ok = fd >= 0
                && libc::connect(
                    fd,
                    (&raw const addr).cast::<libc::sockaddr>(),
                    size_of::<libc::sockaddr_in>() as libc::socklen_t,
                ) == 0;
            libc::_exit(if ok { 0 } else { 1 });
        }
    }
    let mut status = 0;
    // SAFETY: reaps our own child.
    let reaped = unsafe { libc::waitpid(pid, &raw mut status, 0) };
    assert_eq!(reaped, pid, "waitpid: {}", std::io::Error::last_os_error());
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "child {pid} could not connect (status {status:#x})"
    );
    let (mut stream, _) = listener.accept().expect("accepting the child's connection");
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).expect("reading to the child's end");
    pid
}
