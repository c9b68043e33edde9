//! nginx inside a namespace: one process (`master_process off`, `daemon off`) with a generated
//! configuration, its pid file, logs and temporary directories in a directory of its own; and
//! a keep-alive `GET /` as an actor makes it (no allocation).

use std::{
    net::{Ipv4Addr, SocketAddr},
    os::fd::RawFd,
    time::Duration,
};

use super::{Daemon, TempDir};
use crate::support::{netns::Netns, process::tool, raw};

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

/// `GET /` on a keep-alive HTTP/1.1 connection; reads the whole response into `buf` and
/// checks it is a 200.
pub fn http_get(fd: RawFd, buf: &mut [u8]) -> bool {
    if !raw::write_all(fd, b"GET / HTTP/1.1\r\nHost: tcptrace.test\r\nUser-Agent: tt-http\r\n\r\n")
    {
        return false;
    }
    let mut got = 0;
    loop {
        match http_response_len(&buf[..got]) {
            Some(len) if got >= len => return buf.starts_with(b"HTTP/1.1 200 "),
            _ if got == buf.len() => return false,
            _ => {}
        }
        // SAFETY: valid buffer.
        let n = unsafe { libc::read(fd, buf[got..].as_mut_ptr().cast(), buf.len() - got) };
        if n <= 0 {
            return false;
        }
        got += n as usize;
    }
}

/// The length of the HTTP response at the start of `bytes` (headers and a `Content-Length`
/// body), once its headers are complete; no allocation.
pub fn http_response_len(bytes: &[u8]) -> Option<usize> {
    let head_end = bytes.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = &bytes[..head_end];
    let name = b"\r\ncontent-length:";
    let at = head.windows(name.len()).position(|w| w.eq_ignore_ascii_case(name))? + name.len();
    let mut len = 0usize;
    let mut digits = 0;
    for &b in head[at..].iter().skip_while(|b| **b == b' ') {
        if !b.is_ascii_digit() {
            break;
        }
        len = len.checked_mul(10)?.checked_add(usize::from(b - b'0'))?;
        digits += 1;
    }
    (digits > 0).then_some(head_end + len)
}

#[cfg(test)]
mod tests {
    use super::http_response_len;

    #[test]
    fn http_response_length_needs_complete_headers_and_counts_the_body() {
        let full = b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Length: 6\r\nConnection: keep-alive\r\n\r\nhello\n";
        assert_eq!(http_response_len(full), Some(full.len()));
        assert_eq!(http_response_len(&full[..40]), None);
        assert_eq!(
            http_response_len(b"HTTP/1.1 200 OK\r\ncontent-length:12\r\n\r\n"),
            Some(38 + 12)
        );
        assert_eq!(http_response_len(b"HTTP/1.1 204 No Content\r\n\r\n"), None);
    }
}
