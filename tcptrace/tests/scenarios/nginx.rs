//! nginx inside a namespace: one process (`master_process off`, `daemon off`) with a generated
//! configuration, its pid file, logs and temporary directories in a directory of its own.

use std::{
    net::{Ipv4Addr, SocketAddr},
    time::Duration,
};

use super::{Daemon, TempDir, netns::Netns, tool};

/// How long nginx keeps an idle keep-alive connection open before closing it.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(1);

/// The body of every response.
pub const BODY: &str = "tcptrace\n";

pub struct Nginx {
    pub addr: SocketAddr,
    pub daemon: Daemon,
}

impl Nginx {
    /// nginx in `ns`, listening on 127.0.0.1 at a free port; `GET /` answers 200 with `BODY`.
    pub fn start(ns: &Netns) -> Self {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, ns.free_port()));
        let dir = TempDir::new(&format!("nginx-{}", ns.name()));
        let d = dir.path().display();
        let keepalive_ms = KEEPALIVE_TIMEOUT.as_millis();
        let config = format!(
            "daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{ worker_connections 64; }}
http {{
    access_log {d}/access.log;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    keepalive_timeout {keepalive_ms}ms;
    server {{
        listen {addr};
        location / {{
            default_type text/plain;
            return 200 {BODY:?};
        }}
    }}
}}
"
        );
        let conf = dir.path().join("nginx.conf");
        std::fs::write(&conf, config).expect("writing nginx.conf");
        let mut cmd = ns.command(tool("nginx"));
        // -e: the error log before the configuration is read (the default is under /var/log).
        cmd.arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&conf)
            .arg("-e")
            .arg(dir.path().join("error.log"));
        Self { addr, daemon: Daemon::start("nginx", cmd, dir, "error.log", addr) }
    }

    pub fn pid(&self) -> u32 {
        self.daemon.pid()
    }
}
