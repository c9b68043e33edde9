//! The configurations a benchmark round measures: no tracer, the floor, tcptrace's commands and
//! the peers (bpftrace, libbpf-tools) where they are installed. Each is started as a process,
//! stopped with SIGINT, and read for the events it delivered and lost.

use std::{
    io::{BufRead as _, BufReader},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tracer {
    /// No tracer: the rate every other one is a ratio of.
    Baseline,
    /// tcptrace's programs on every hook it uses, each returning at once.
    Floor,
    /// The same hooks doing the least per-connection work a tracer that matches opens to
    /// closes can do (an owner-map entry and a record at each open, its removal and a record
    /// at each CLOSE), user space only counting: what any such tracer costs here.
    Minimum,
    /// The minimum's work with per-process counts in a kernel map in place of its records:
    /// what a tracer that aggregates in the kernel and sends nothing per connection costs.
    InKernel,
    /// `InKernel` with the user stack captured at each open, as `leaks` does.
    InKernelStacks,
    /// `tcptrace trace > /dev/null`.
    Trace,
    /// `tcptrace leaks`, as a user runs it (user stacks at every open).
    Leaks,
    /// `tcptrace leaks --stacks off`.
    LeaksNoStacks,
    /// `tcptrace leaks` without the opener's cgroup id in open records (hidden
    /// `--bench-no-cgroup`): beside `Leaks`, what container attribution costs.
    LeaksNoCgroup,
    /// bpftrace counting state changes in the kernel.
    BpftraceCount,
    /// bpftrace printing every state change.
    BpftracePrintf,
    /// libbpf-tools `tcplife`.
    Tcplife,
    /// libbpf-tools `tcpstates`.
    Tcpstates,
}

impl Tracer {
    pub const ALL: [Self; 13] = [
        Self::Baseline,
        Self::Floor,
        Self::Minimum,
        Self::InKernel,
        Self::InKernelStacks,
        Self::Trace,
        Self::Leaks,
        Self::LeaksNoStacks,
        Self::LeaksNoCgroup,
        Self::BpftraceCount,
        Self::BpftracePrintf,
        Self::Tcplife,
        Self::Tcpstates,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Baseline => "none (baseline)",
            Self::Floor => "floor: tcptrace hooks, empty",
            Self::Minimum => "minimum: owner and a record per open/close",
            Self::InKernel => "in-kernel counts: minimum, no records",
            Self::InKernelStacks => "in-kernel counts + user stacks",
            Self::Trace => "tcptrace trace > /dev/null",
            Self::Leaks => "tcptrace leaks",
            Self::LeaksNoStacks => "tcptrace leaks --stacks off",
            Self::LeaksNoCgroup => "tcptrace leaks, no cgroup id",
            Self::BpftraceCount => "bpftrace, count in kernel",
            Self::BpftracePrintf => "bpftrace, printf per change",
            Self::Tcplife => "libbpf-tools tcplife",
            Self::Tcpstates => "libbpf-tools tcpstates",
        }
    }

    /// The command that starts it, or why it cannot run here.
    fn command(self, tcptrace: &Path) -> Result<Option<Command>> {
        let tcptrace_cmd = |args: &[&str]| {
            let mut cmd = Command::new(tcptrace);
            cmd.args(args);
            cmd
        };
        Ok(Some(match self {
            Self::Baseline => return Ok(None),
            Self::Floor => tcptrace_cmd(&["trace", "--bench-floor"]),
            Self::Minimum => tcptrace_cmd(&["trace", "--bench-minimum"]),
            Self::InKernel => tcptrace_cmd(&["trace", "--bench-in-kernel", "--stacks", "off"]),
            Self::InKernelStacks => {
                tcptrace_cmd(&["trace", "--bench-in-kernel", "--stacks", "user"])
            }
            Self::Trace => tcptrace_cmd(&["trace"]),
            Self::Leaks => tcptrace_cmd(&["leaks", "--json"]),
            Self::LeaksNoStacks => tcptrace_cmd(&["leaks", "--json", "--stacks", "off"]),
            Self::LeaksNoCgroup => tcptrace_cmd(&["leaks", "--json", "--bench-no-cgroup"]),
            Self::BpftraceCount => {
                let mut cmd = Command::new(installed("bpftrace")?);
                cmd.args(["-e", "tracepoint:sock:inet_sock_set_state { @[args->oldstate, args->newstate] = count(); }"]);
                cmd
            }
            Self::BpftracePrintf => {
                let mut cmd = Command::new(installed("bpftrace")?);
                cmd.args(["-e", r#"tracepoint:sock:inet_sock_set_state { printf("%d %d %d %d\n", pid, args->sport, args->oldstate, args->newstate); }"#]);
                cmd
            }
            Self::Tcplife => Command::new(libbpf_tool("tcplife")?),
            Self::Tcpstates => Command::new(libbpf_tool("tcpstates")?),
        }))
    }

    /// A line on stderr that says the tracer is attached.
    fn ready_marker(self) -> Option<&'static str> {
        match self {
            Self::Floor
            | Self::Minimum
            | Self::InKernel
            | Self::InKernelStacks
            | Self::Trace
            | Self::Leaks
            | Self::LeaksNoStacks
            | Self::LeaksNoCgroup => Some("tcptrace: tracing"),
            _ => None,
        }
    }

    /// How long it takes to attach, for those that say nothing on stderr: bpftrace compiles
    /// its script with LLVM first.
    fn attach_time(self) -> Duration {
        match self {
            Self::BpftraceCount | Self::BpftracePrintf => Duration::from_secs(4),
            _ => Duration::from_secs(2),
        }
    }
}

/// Where the binary is, or an error saying it is not installed.
fn installed(name: &str) -> Result<PathBuf> {
    for dir in ["/usr/bin", "/usr/sbin", "/usr/local/bin", "/usr/local/sbin"] {
        let path = Path::new(dir).join(name);
        if path.exists() {
            return Ok(path);
        }
    }
    bail!("{name} is not installed")
}

/// The libbpf-tools binaries the benchmark runs, where installed (for the VM's initramfs).
pub fn libbpf_tools() -> Vec<PathBuf> {
    ["tcplife", "tcpstates"].into_iter().filter_map(|name| libbpf_tool(name).ok()).collect()
}

/// Debian's libbpf-tools installs each tool under its own name, or with a `bpf-` prefix.
fn libbpf_tool(name: &str) -> Result<PathBuf> {
    installed(name).or_else(|_| installed(&format!("bpf-{name}")))
}

/// A tracer running while the workload runs.
pub struct Running {
    tracer: Tracer,
    child: Child,
    stderr: mpsc::Receiver<String>,
    stdout: Option<mpsc::Receiver<String>>,
}

/// What a tracer said and cost.
#[derive(Debug, Clone, Copy, Default)]
pub struct TracerCost {
    pub events: Option<u64>,
    pub lost: Option<u64>,
    /// Peak resident set size, KiB.
    pub max_rss_kib: u64,
}

/// Starts `tracer` and waits until it is attached; `None` for the baseline.
pub fn start(tracer: Tracer, tcptrace: &Path) -> Result<Option<Running>> {
    let Some(mut cmd) = tracer.command(tcptrace)? else { return Ok(None) };
    // Output that only the tracer's cost matters for goes to /dev/null, as a user would send it.
    let keep_stdout = matches!(
        tracer,
        Tracer::Leaks | Tracer::LeaksNoStacks | Tracer::LeaksNoCgroup | Tracer::BpftraceCount
    );
    cmd.stdin(Stdio::null())
        .stdout(if keep_stdout { Stdio::piped() } else { Stdio::null() })
        .stderr(Stdio::piped());
    // A tracer left attached by a bench that died would slow every later run, the baseline's
    // included (its syscall tracepoints alone slow every system call of the host).
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().with_context(|| format!("starting {}", tracer.name()))?;
    let stderr = lines(child.stderr.take().expect("piped stderr"));
    let stdout = child.stdout.take().map(lines);
    let deadline = Instant::now() + Duration::from_secs(30);
    match tracer.ready_marker() {
        Some(marker) => loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match stderr.recv_timeout(left) {
                Ok(line) if line.contains(marker) => break,
                Ok(_) => {}
                Err(_) => bail!("{} did not start (no `{marker}` line)", tracer.name()),
            }
        },
        None => thread::sleep(tracer.attach_time()),
    }
    if let Ok(Some(status)) = child.try_wait() {
        bail!("{} exited at start ({status})", tracer.name());
    }
    Ok(Some(Running { tracer, child, stderr, stdout }))
}

fn lines(stream: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

impl Running {
    /// The tracer's user and system CPU time so far, from /proc/PID/stat: read when the
    /// workload starts and ends, so start-up (loading, the first inventory) and the final
    /// report are left out of the per-connection cost.
    pub fn cpu_s(&self) -> Result<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()))
            .context("reading the tracer's /proc stat")?;
        // After the command name, which may hold spaces: state is field 3, utime 14, stime 15.
        let fields: Vec<&str> =
            stat.rsplit_once(')').context("no command name")?.1.split_whitespace().collect();
        let ticks = |i: usize| fields.get(i - 3).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        Ok((ticks(14) + ticks(15)) as f64 / hz)
    }

    /// Stops the tracer (SIGINT, as a user's Ctrl-C) and reads what it delivered and cost.
    pub fn stop(mut self) -> Result<TracerCost> {
        let pid = libc::pid_t::try_from(self.child.id()).context("pid")?;
        let (status, usage) = interrupt(pid)?;
        // The reader threads end at the pipes' end of file.
        let stderr: Vec<String> = self.stderr.iter().collect();
        let stdout: Vec<String> =
            self.stdout.take().map(|rx| rx.iter().collect()).unwrap_or_default();
        let _ = self.child.wait();
        if status != 0 && !matches!(self.tracer, Tracer::BpftraceCount | Tracer::BpftracePrintf) {
            bail!("{} failed (status {status}): {}", self.tracer.name(), stderr.join("\n"));
        }
        let (events, lost) = delivered(self.tracer, &stdout, &stderr);
        Ok(TracerCost { events, lost, max_rss_kib: u64::try_from(usage.ru_maxrss).unwrap_or(0) })
    }
}

/// Stops our child `pid` as a user would (SIGINT, again every 2 s: bpftrace has been seen to
/// miss one that came while it attached), SIGKILL after 20 s; its status and resource usage.
fn interrupt(pid: libc::pid_t) -> Result<(i32, libc::rusage)> {
    let started = Instant::now();
    let mut signalled: Option<Instant> = None;
    loop {
        let elapsed = started.elapsed();
        if signalled.is_none_or(|at| at.elapsed() >= Duration::from_secs(2)) {
            let signal =
                if elapsed >= Duration::from_secs(20) { libc::SIGKILL } else { libc::SIGINT };
            // SAFETY: signalling our own child, not yet reaped.
            unsafe { libc::kill(pid, signal) };
            signalled = Some(Instant::now());
        }
        if let Some(done) = wait4(pid, libc::WNOHANG)? {
            return Ok(done);
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// waitpid with the child's resource usage (CPU time, peak RSS); None while it runs (WNOHANG).
fn wait4(pid: libc::pid_t, options: i32) -> Result<Option<(i32, libc::rusage)>> {
    let mut status = 0;
    // SAFETY: zeroed rusage is a valid out-parameter.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waiting for our own child with valid out-pointers.
    let ret = unsafe { libc::wait4(pid, &mut status, options, &mut usage) };
    if ret == 0 {
        return Ok(None);
    }
    if ret != pid {
        bail!("wait4: {}", std::io::Error::last_os_error());
    }
    let code = if libc::WIFEXITED(status) { libc::WEXITSTATUS(status) } else { 128 };
    Ok(Some((code, usage)))
}

/// (events delivered, events lost) as the tracer reports them, where it does.
fn delivered(tracer: Tracer, stdout: &[String], stderr: &[String]) -> (Option<u64>, Option<u64>) {
    let number_after = |lines: &[String], prefix: &str| {
        lines.iter().find_map(|l| l.strip_prefix(prefix)?.split_whitespace().next()?.parse().ok())
    };
    match tracer {
        Tracer::Floor | Tracer::Minimum | Tracer::Trace => trace_summary(stderr),
        Tracer::InKernel | Tracer::InKernelStacks => {
            // Nothing goes through the ring: what was counted, and what the ring lost.
            // "tcptrace: counted in the kernel: N opens, M closes, P processes"
            let counted = stderr.iter().find_map(|l| {
                let words: Vec<u64> = l
                    .strip_prefix("tcptrace: counted in the kernel: ")?
                    .split(|c: char| !c.is_ascii_digit())
                    .filter_map(|w| w.parse().ok())
                    .collect();
                Some(words.first()? + words.get(1)?)
            });
            (counted, trace_summary(stderr).1)
        }
        Tracer::Leaks | Tracer::LeaksNoStacks | Tracer::LeaksNoCgroup => {
            let report: serde_json::Value =
                serde_json::from_str(&stdout.join("\n")).unwrap_or_default();
            (report["events"].as_u64(), report["events_lost"].as_u64())
        }
        Tracer::BpftraceCount => {
            // "@[1, 2]: 1234" per state pair.
            let sum = stdout
                .iter()
                .filter_map(|l| l.rsplit_once("]: ")?.1.trim().parse::<u64>().ok())
                .sum();
            (Some(sum), number_after(stderr, "Lost ").or(Some(0)))
        }
        Tracer::BpftracePrintf => (None, number_after(stderr, "Lost ").or(Some(0))),
        Tracer::Baseline | Tracer::Tcplife | Tracer::Tcpstates => (None, None),
    }
}

/// (events read, events lost) from `tcptrace trace`'s last line: "tcptrace: N events read, M
/// lost, ...".
fn trace_summary(stderr: &[String]) -> (Option<u64>, Option<u64>) {
    let Some(line) = stderr.iter().find(|l| l.contains(" events read, ")) else {
        return (None, None);
    };
    let words: Vec<&str> = line.split_whitespace().collect();
    let at = |i: usize| words.get(i).and_then(|w| w.parse().ok());
    (at(1), at(4))
}
