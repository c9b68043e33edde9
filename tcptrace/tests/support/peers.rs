//! Forked loopback peers: a client that connects to a server and a server that accepts on the
//! test's listener, each in a child process of its own (named, so that events and reports can
//! be told apart), each step on the test's word. The caller holds `process::forks()`.

use std::{
    ffi::CStr,
    net::{SocketAddr, TcpListener},
    os::fd::{AsRawFd, RawFd},
};

use super::{
    process::{Actor, Child},
    raw::{self, RawAddr},
};

/// How a child gives up its socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    /// close(2), then exit.
    Close,
    /// Exit while still holding the descriptor.
    Exit,
}

/// A forked client. Step by step, each on the test's word: connect to `server` and report the
/// descriptor and local port; then give the socket up (`Ending`) and exit.
pub struct ClientChild {
    actor: Actor,
    pub server: SocketAddr,
}

impl ClientChild {
    pub fn fork(comm: &'static CStr, server: SocketAddr, ending: Ending) -> Self {
        let addr = RawAddr::from(server);
        let actor = Actor::fork(comm, |steps| {
            if !steps.wait_go() {
                return 10;
            }
            let Some(fd) = raw::connect(&addr) else {
                return 11;
            };
            if !steps.report(fd) || !steps.report(raw::local_port(fd)) {
                return 12;
            }
            if !steps.wait_go() {
                return 13;
            }
            if ending == Ending::Close && !raw::close(fd) {
                return 14;
            }
            0
        });
        Self { actor, server }
    }

    pub fn child(&self) -> &Child {
        &self.actor.child
    }

    /// Lets the child connect; returns its descriptor and local address.
    pub fn connect(&self) -> (RawFd, SocketAddr) {
        self.actor.go();
        let fd = self.actor.recv("client descriptor");
        let port = self.actor.recv("client port");
        (fd, SocketAddr::new(self.server.ip(), port as u16))
    }

    /// Lets the child give up its socket and exit; waits for it.
    pub fn finish(self) {
        self.actor.finish();
    }
}

/// A forked server accepting on the test's `listener`. On the test's word: accept and report
/// the descriptor; then wait for the client's FIN, give the socket up (`Ending`) and exit.
pub struct ServerChild {
    actor: Actor,
}

impl ServerChild {
    pub fn fork(comm: &'static CStr, listener: &TcpListener, ending: Ending) -> Self {
        let listener = listener.as_raw_fd();
        let actor = Actor::fork(comm, |steps| {
            if !steps.wait_go() {
                return 20;
            }
            let Some(fd) = raw::accept(listener) else {
                return 21;
            };
            if !steps.report(fd) {
                return 22;
            }
            if !raw::read_eof(fd) {
                return 23;
            }
            if ending == Ending::Close && !raw::close(fd) {
                return 24;
            }
            0
        });
        Self { actor }
    }

    pub fn child(&self) -> &Child {
        &self.actor.child
    }

    /// Lets the child accept (a client must have connected); returns the accepted descriptor.
    pub fn accept(&self) -> RawFd {
        self.actor.go();
        self.actor.recv("accepted descriptor")
    }

    /// Waits for the child to see the client's FIN, give its socket up and exit.
    pub fn wait(self) {
        self.actor.child.wait();
    }
}
