//! Fixtures for the leak scenarios: real Debian servers (nginx, redis-server) started inside
//! network namespaces made by the test, readers of the kernel's socket tables (`/proc`, `ss`),
//! and the report of `tcptrace leaks --json`. The generic pieces (namespaces, forked actors,
//! raw socket calls, running tcptrace) are the test support's.
//!
//! Every scenario runs in namespaces of its own, so ports never collide and the tests run in
//! parallel. The test process itself holds no TCP socket: servers and clients are separate
//! processes, and a forked one closes every descriptor it inherited except its own pipes (see
//! `Netns::fork`), so no process ever holds a copy of another scenario's socket.

pub mod leaks;
pub mod nginx;
pub mod redis;
pub mod sockets;

use std::{
    env, fs,
    net::SocketAddr,
    path::{Path, PathBuf},
    process,
    time::Duration,
};

use crate::support::process::poll_until;

/// A directory of its own under the system's temporary directory, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(label: &str) -> Self {
        let path = env::temp_dir().join(format!("tcptrace-{label}-{}", process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
        Self(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// The text of a file in it, or a note that it could not be read (for failure messages).
    pub fn read(&self, name: &str) -> String {
        fs::read_to_string(self.0.join(name)).unwrap_or_else(|e| format!("({name}: {e})"))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A server program (nginx, redis-server) running inside a namespace, killed on drop.
pub struct Daemon {
    name: &'static str,
    process: process::Child,
    /// Its configuration, logs and temporary files.
    dir: TempDir,
    /// The file in `dir` a failure message shows.
    log: &'static str,
}

impl Daemon {
    /// Starts `cmd` (made by `Netns::command`, so its pid is the server's) and waits until it
    /// listens on `listen`.
    pub fn start(
        name: &'static str,
        mut cmd: process::Command,
        dir: TempDir,
        log: &'static str,
        listen: SocketAddr,
    ) -> Self {
        let output = fs::File::create(dir.path().join("output.log")).expect("creating output.log");
        let process = cmd
            .stdin(process::Stdio::null())
            .stdout(output.try_clone().expect("dup output.log"))
            .stderr(output)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        let mut daemon = Self { name, process, dir, log };
        let pid = daemon.pid();
        let listening = poll_until(Duration::from_secs(10), || {
            if let Ok(Some(status)) = daemon.process.try_wait() {
                panic!(
                    "{name} exited with {status}:\n{}\n{}",
                    daemon.dir.read("output.log"),
                    daemon.log()
                );
            }
            let listening = sockets::held(pid)
                .into_iter()
                .any(|h| h.row.is_some_and(|r| r.state == "LISTEN" && r.local == listen));
            listening.then_some(())
        });
        if listening.is_none() {
            panic!("{name} (pid {pid}) does not listen on {listen} after 10 s:\n{}", daemon.log());
        }
        daemon
    }

    pub fn pid(&self) -> u32 {
        self.process.id()
    }

    /// The server's log, for failure messages.
    pub fn log(&self) -> String {
        format!("{} {}:\n{}", self.name, self.log, self.dir.read(self.log))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}
