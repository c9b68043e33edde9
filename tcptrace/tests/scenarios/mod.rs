//! Fixtures for the leak scenarios: network namespaces made by the test, real Debian servers
//! (nginx, redis-server) started inside them, forked processes driven step by step, readers of
//! the kernel's socket tables (`/proc`, `ss`), and `tcptrace leaks` run as a user runs it.
//!
//! Every scenario runs in namespaces of its own, so ports never collide and the tests run in
//! parallel. The test process itself holds no TCP socket: servers and clients are separate
//! processes, and a forked one closes every descriptor it inherited except its own pipes (see
//! `actor`), so no process ever holds a copy of another scenario's socket.

pub mod actor;
pub mod netns;
pub mod nginx;
pub mod redis;
pub mod sockets;
pub mod tracer;

use std::{
    env, fs,
    net::SocketAddr,
    path::{Path, PathBuf},
    process, thread,
    time::{Duration, Instant},
};

/// Where a program the scenarios run is installed; a failure names the package to install.
pub fn tool(name: &str) -> PathBuf {
    let path = env::var_os("PATH").unwrap_or_default();
    let dirs = env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/bin", "/sbin", "/bin"].map(PathBuf::from));
    for dir in dirs {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!(
        "{name} is not installed: run `cargo xtask setup` (it installs nginx, redis-server and iproute2)"
    )
}

/// Polls `probe` every 20 ms until it returns a value, for at most `timeout`.
pub fn poll_until<T>(timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe() {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

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
