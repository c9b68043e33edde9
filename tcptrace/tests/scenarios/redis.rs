//! redis-server inside a namespace, without persistence, with the keepalive setting under test;
//! and a PING as an actor sends it (no allocation).

use std::{
    net::{IpAddr, SocketAddr},
    os::fd::RawFd,
};

use super::{Daemon, TempDir};
use crate::support::{netns::Netns, process::tool, raw};

pub struct Redis {
    pub addr: SocketAddr,
    pub daemon: Daemon,
}

impl Redis {
    /// redis-server in `ns`, listening on `ip` at a free port. `tcp_keepalive_s` is its
    /// `tcp-keepalive` (0: accepted connections get no SO_KEEPALIVE).
    pub fn start(ns: &Netns, ip: IpAddr, tcp_keepalive_s: u32) -> Self {
        let addr = SocketAddr::new(ip, ns.free_port());
        let dir = TempDir::new(&format!("redis-{}", ns.name()));
        let mut cmd = ns.command(tool("redis-server"));
        cmd.args(["--port", &addr.port().to_string(), "--bind", &ip.to_string()])
            .args(["--tcp-keepalive", &tcp_keepalive_s.to_string()])
            .args([
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "no",
                "--daemonize",
                "no",
            ])
            .args(["--databases", "1", "--timeout", "0"])
            .arg("--dir")
            .arg(dir.path())
            .arg("--logfile")
            .arg(dir.path().join("redis.log"));
        Self { addr, daemon: Daemon::start("redis-server", cmd, dir, "redis.log", addr) }
    }

    pub fn pid(&self) -> u32 {
        self.daemon.pid()
    }
}

/// RESP `PING` and its `+PONG` reply, as a Redis client speaks them.
pub const RESP_PING: &[u8] = b"*1\r\n$4\r\nPING\r\n";
pub const RESP_PONG: &[u8; 7] = b"+PONG\r\n";

/// One PING/PONG round trip on a Redis connection.
pub fn ping(fd: RawFd) -> bool {
    let mut reply = [0u8; 7];
    raw::write_all(fd, RESP_PING) && raw::read_exact(fd, &mut reply) && &reply == RESP_PONG
}
