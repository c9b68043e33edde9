//! Network namespaces as guards: `ip netns add tt-<label>-<pid>` with lo up, deleted on drop
//! (also when the test panics); veth pairs between two of them; running code, commands and
//! forked actors inside.

use std::{
    ffi::{CStr, OsStr},
    fs::File,
    io,
    net::{Ipv4Addr, SocketAddr, TcpListener},
    os::{
        fd::{AsRawFd, RawFd},
        unix::process::CommandExt,
    },
    process::{Command, Stdio},
    sync::Mutex,
    thread,
};

use super::process::{Actor, Steps, close_inherited, forks, tool};

/// `ip netns add` makes /run/netns a shared mount the first time; two first times at once can
/// stack two mounts and hide a namespace under the second. One creation at a time.
static CREATING: Mutex<()> = Mutex::new(());

/// A network namespace of the test's own.
pub struct Netns {
    name: String,
    /// /run/netns/<name>: what setns(2) takes.
    file: File,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new(tool("ip"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

impl Netns {
    /// A new namespace `tt-<label>-<pid>` with its loopback up.
    pub fn new(label: &str) -> Self {
        let name = format!("tt-{label}-{}", std::process::id());
        let file = {
            let _one_at_a_time = CREATING.lock().unwrap_or_else(|p| p.into_inner());
            // Left by an earlier run with the same pid that was killed before its guards ran.
            let _ = ip(&["netns", "del", &name]);
            ip(&["netns", "add", &name]).unwrap_or_else(|e| panic!("{e}"));
            File::open(format!("/run/netns/{name}"))
                .unwrap_or_else(|e| panic!("opening /run/netns/{name}: {e}"))
        };
        let ns = Self { name, file };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace's descriptor, for `enter` in a forked child.
    pub fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// `ip -n <name> ARGS`; panics with ip's message on failure.
    pub fn ip(&self, args: &[&str]) {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        ip(&all).unwrap_or_else(|e| panic!("{e}"));
    }

    /// A command that runs inside the namespace (setns before exec; its pid is the program's).
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new(program);
        let fd = self.fd();
        // SAFETY: setns is async-signal-safe; the descriptor stays open until exec (CLOEXEC).
        unsafe {
            cmd.pre_exec(move || if enter(fd) { Ok(()) } else { Err(io::Error::last_os_error()) });
        }
        cmd
    }

    /// Runs `f` on a thread inside the namespace.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let fd = self.fd();
        thread::scope(|s| {
            s.spawn(|| {
                assert!(enter(fd), "setns into {}: {}", self.name, io::Error::last_os_error());
                f()
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// A port free on every address of the namespace (bound to port 0 there and released).
    pub fn free_port(&self) -> u16 {
        self.run(|| {
            let listener = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
                .expect("binding a port in the namespace");
            listener.local_addr().expect("local address").port()
        })
    }

    /// Forks `body` as an actor named `comm` inside the namespace. Right after fork it closes
    /// every descriptor it inherited except its two pipes: the test threads of other scenarios
    /// keep opening pipes and namespace files, and a copy of one (a tracer's stdout, a pipe the
    /// test reads to EOF) must not live on in an unrelated process. `forks()` is held across
    /// the fork so that forks never interleave. Exit codes 90-99 are this wrapper's.
    pub fn fork(&self, comm: &'static CStr, body: impl FnOnce(&Steps<'_>) -> i32) -> Actor {
        let ns_fd = self.fd();
        let _one_fork_at_a_time = forks();
        Actor::fork(comm, |steps| {
            if !enter(ns_fd) {
                return 90;
            }
            if !close_inherited(steps.fds()) {
                return 91;
            }
            body(steps)
        })
    }

    /// Whether the namespace has a network device named `name`.
    pub fn has_link(&self, name: &str) -> bool {
        ip(&["-n", &self.name, "link", "show", "dev", name]).is_ok()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = ip(&["netns", "del", &self.name]) {
            eprintln!("leaving namespace {}: {e}", self.name);
        }
    }
}

/// Moves the calling thread into the network namespace open as `fd`; safe in a forked child.
pub fn enter(fd: RawFd) -> bool {
    // SAFETY: a plain syscall on a descriptor the caller keeps open.
    unsafe { libc::setns(fd, libc::CLONE_NEWNET) == 0 }
}

/// Name of each end of a veth pair, inside its namespace.
pub const VETH: &str = "tt0";

/// A veth pair: `VETH` in `a` with `a_addr`/30, `VETH` in `b` with `b_addr`/30. The addresses
/// are from 198.18.0.0/15 (RFC 2544, for benchmarks), only ever configured in these namespaces.
pub struct Veth {
    a_ns: String,
    pub a_addr: Ipv4Addr,
    pub b_addr: Ipv4Addr,
}

impl Veth {
    pub fn between(a: &Netns, b: &Netns) -> Self {
        let (a_addr, b_addr) = (Ipv4Addr::new(198, 18, 0, 1), Ipv4Addr::new(198, 18, 0, 2));
        ip(&[
            "link",
            "add",
            VETH,
            "netns",
            a.name(),
            "type",
            "veth",
            "peer",
            "name",
            VETH,
            "netns",
            b.name(),
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        for (ns, addr) in [(a, a_addr), (b, b_addr)] {
            ns.ip(&["addr", "add", &format!("{addr}/30"), "dev", VETH]);
            ns.ip(&["link", "set", VETH, "up"]);
        }
        Self { a_ns: a.name().to_owned(), a_addr, b_addr }
    }

    /// Deletes the pair (from `a`'s side; the peer goes with it): whatever was connected across
    /// it loses its peer without a FIN or a RST.
    pub fn cut(&self) {
        ip(&["-n", &self.a_ns, "link", "del", VETH]).unwrap_or_else(|e| panic!("{e}"));
    }
}
