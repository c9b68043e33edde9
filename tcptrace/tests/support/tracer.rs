//! The `tcptrace` binary as a user runs it: a command with stdin empty and its output piped,
//! run to its end; or started, ready once its first stderr line says `tcptrace: tracing`,
//! signalled (SIGINT to stop, SIGTERM for `run`), and waited for, with its whole stdout and
//! stderr. A tracer still running when the test ends is killed.

use std::{
    io::{BufRead, BufReader, Read},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex, mpsc},
    thread,
    time::{Duration, Instant},
};

pub const TCPTRACE: &str = env!("CARGO_BIN_EXE_tcptrace");
/// Loading the programs and taking the inventory: a guard against a hang, not a target. Where
/// the kernel lacks `bpf_loop` it verifies the interpreter walks unrolled: 1.7 s on this
/// machine's host, about 30 s under the VM tier's emulation (`leaks` in a debug build).
const START_TIMEOUT: Duration = Duration::from_secs(120);
/// What is left of a `--duration` (a few seconds in the tests), or the final sweep and the
/// report after a signal.
const END_TIMEOUT: Duration = Duration::from_secs(30);
/// The first line tcptrace prints on stderr once its programs are attached.
const BANNER: &str = "tcptrace: tracing";

/// `tcptrace ARGS` with stdin empty and stdout and stderr piped.
pub fn tcptrace(args: &[&str]) -> Command {
    let mut cmd = Command::new(TCPTRACE);
    cmd.args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd
}

/// Runs `cmd` to its end: (exit code, or -1 for a signal; stdout; stderr).
pub fn run_to_end(cmd: &mut Command) -> (i32, String, String) {
    let out = cmd.output().unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A running tcptrace.
pub struct Tracer {
    child: Child,
    args: String,
    stderr: Arc<Mutex<Vec<String>>>,
    stderr_reader: Option<thread::JoinHandle<()>>,
    stdout_reader: Option<thread::JoinHandle<Vec<u8>>>,
}

/// How a tracer ended, and everything it printed.
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Tracer {
    /// Starts `tcptrace ARGS` and waits until it traces; fails with its stderr if it exits
    /// first, says something else first, or says nothing within 30 s.
    pub fn start(args: &[&str]) -> Self {
        let mut child = tcptrace(args).spawn().expect("spawning tcptrace");
        let mut stdout = child.stdout.take().expect("stdout");
        let stdout_reader = thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = stdout.read_to_end(&mut bytes);
            bytes
        });
        let stderr_pipe = child.stderr.take().expect("stderr");
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let (first_tx, first_rx) = mpsc::channel();
        let lines = Arc::clone(&stderr);
        let stderr_reader = thread::spawn(move || {
            for line in BufReader::new(stderr_pipe).lines().map_while(Result::ok) {
                let _ = first_tx.send(line.clone());
                lines.lock().unwrap_or_else(|p| p.into_inner()).push(line);
            }
        });
        let mut tracer = Self {
            child,
            args: args.join(" "),
            stderr,
            stderr_reader: Some(stderr_reader),
            stdout_reader: Some(stdout_reader),
        };
        match first_rx.recv_timeout(START_TIMEOUT) {
            Ok(first) if first.starts_with(BANNER) => tracer,
            Ok(first) => {
                // Give an error its following lines and the exit.
                let _ = first_rx.recv_timeout(Duration::from_secs(2));
                panic!(
                    "tcptrace {} did not start: {first}\nstderr:\n{}",
                    tracer.args,
                    tracer.stderr()
                )
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let status = tracer.child.wait().expect("waiting for tcptrace");
                panic!(
                    "tcptrace {} exited with {status} before saying anything on stderr",
                    tracer.args
                );
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                panic!("tcptrace {} said nothing on stderr within {START_TIMEOUT:?}", tracer.args)
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory, from /proc/PID/status.
    pub fn rss_kb(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("reading tcptrace's /proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc status")
    }

    /// Its stderr so far, the banner included.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap_or_else(|p| p.into_inner()).join("\n")
    }

    pub fn signal(&self, signal: libc::c_int) {
        // SAFETY: signals our own child, not yet reaped (`wait` takes `self`).
        let ret = unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
        assert_eq!(ret, 0, "signal {signal} to tcptrace: {}", std::io::Error::last_os_error());
    }

    /// SIGINT, then `wait`.
    pub fn stop(self) -> Finished {
        self.signal(libc::SIGINT);
        self.wait()
    }

    /// Waits up to 30 s for it to exit; what it printed.
    pub fn wait(mut self) -> Finished {
        let deadline = Instant::now() + END_TIMEOUT;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("waiting for tcptrace") {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "tcptrace {} did not exit within {END_TIMEOUT:?}; stderr:\n{}",
                self.args,
                self.stderr()
            );
            thread::sleep(Duration::from_millis(20));
        };
        let stdout = self.stdout_reader.take().expect("stdout reader").join().expect("stdout");
        self.stderr_reader.take().expect("stderr reader").join().expect("stderr");
        let stdout = String::from_utf8(stdout)
            .unwrap_or_else(|e| panic!("tcptrace {} printed no UTF-8 on stdout: {e}", self.args));
        Finished { status, stdout, stderr: self.stderr() }
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
