//! Loads the kernel programs, configures them and attaches them: the only module that talks to
//! the BPF syscall.

use std::{
    io,
    os::fd::{AsFd as _, AsRawFd as _},
};

use anyhow::{Context as _, anyhow};
use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, PerCpuArray, RingBuf, StackTraceMap},
    programs::{FEntry, KProbe, RawTracePoint, TracePoint},
};
use tcptrace_common::{
    BENCH_FLOOR, BENCH_MINIMUM, CONFIG_CLOSE_HOOK, COUNTER_CTX_MAP_FULL, COUNTER_FOLLOW_FULL,
    COUNTER_LOST_EVENTS, COUNTER_NESTED_CHANGES, COUNTER_OWNER_MAP_FULL, COUNTER_STACK_FAILED,
    Filter, KernelOffsets, STACKS_KERNEL, STACKS_USER, Settings,
};

use crate::{
    kernel::{
        bpf_sys,
        btf_offsets::{KernelBtf, OffsetError},
        close_hook::{CloseHook, CloseHookChoice},
        prog_stats::recursion_misses,
        stream::EventStream,
        tracefs,
    },
    stacks::{StackResolver, StacksMode},
};

/// The kernel programs, built by build.rs.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tcptrace"));

/// (program, category, tracepoint, required). Optional ones degrade a feature when absent.
/// Hooks in `RAW_TRACEPOINTS` come first in their raw form and fall back to these.
const TRACEPOINTS: &[(&str, &str, &str, bool)] = &[
    ("inet_sock_set_state", "sock", "inet_sock_set_state", true),
    ("tcp_receive_reset", "tcp", "tcp_receive_reset", false),
    ("sys_enter_connect", "syscalls", "sys_enter_connect", true),
    ("sys_exit_connect", "syscalls", "sys_exit_connect", true),
    ("sys_exit_accept", "syscalls", "sys_exit_accept", false),
    ("sys_exit_accept4", "syscalls", "sys_exit_accept4", true),
    ("sys_enter_close", "syscalls", "sys_enter_close", true),
    ("sys_enter_dup2", "syscalls", "sys_enter_dup2", false),
    ("sys_enter_dup3", "syscalls", "sys_enter_dup3", false),
    ("sys_enter_close_range", "syscalls", "sys_enter_close_range", false),
    ("sched_process_exit", "sched", "sched_process_exit", true),
    ("sched_process_exec", "sched", "sched_process_exec", false),
    ("sched_process_fork", "sched", "sched_process_fork", true),
];

/// The programs that derive releases from descriptor syscalls: only attached in tracepoint
/// mode. With fentry or kprobe they would run on every close(2) of the host to do nothing.
const RELEASE_TRACEPOINTS: &[&str] =
    &["sys_enter_close", "sys_enter_dup2", "sys_enter_dup3", "sys_enter_close_range"];

/// The programs that remember connect()'s descriptor: only attached where the kernel programs
/// cannot read it from the caller's saved registers (`KernelOffsets::connect_regs`).
const CONNECT_TRACEPOINTS: &[&str] = &["sys_enter_connect", "sys_exit_connect"];

/// (program, tracepoint, classic fallback program). Raw tracepoints read the `struct sock` with
/// BTF offsets, and unlike classic tracepoint programs they are not skipped while another BPF
/// program runs on the CPU (see the kernel crate's `state` module).
const RAW_TRACEPOINTS: &[(&str, &str, &str)] = &[
    ("inet_sock_set_state_raw", "inet_sock_set_state", "inet_sock_set_state"),
    ("tcp_receive_reset_raw", "tcp_receive_reset", "tcp_receive_reset"),
];

/// The raw state-change program the kernel skips when a softirq change interrupts it on its
/// CPU, and the second program that handles those changes instead (see the kernel crate's
/// `nested` module). It must be attached after the first: the kernel runs a tracepoint's
/// programs in attachment order. The first's skipped runs are not lost when the second handled
/// them, and the second's own are never lost: the first ran for those.
const STATE_PROGRAM: &str = "inet_sock_set_state_raw";
const NESTED_STATE_PROGRAM: &str = "inet_sock_set_state_nested";

#[derive(Debug, Clone)]
pub struct ProbeOptions {
    pub filter: Filter,
    pub close_hook: CloseHookChoice,
    /// Ring buffer size in bytes (a power of two, at least a page).
    pub ring_bytes: u32,
    pub stacks: StacksMode,
    /// `cargo xtask bench`'s reference points; `Bench::Off` for real use.
    pub bench: Bench,
    /// Which state changes the kernel sends.
    pub changes: Changes,
}

/// What the programs do, for `cargo xtask bench`'s reference points.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bench {
    /// Their job.
    Off,
    /// Each returns at once: the cost of the hooks themselves.
    Floor,
    /// The least per-connection work a tracer that matches opens to closes can do (the kernel
    /// crate's `bench` module); user space only counts what arrives.
    Minimum,
}

impl Bench {
    fn setting(self) -> u32 {
        match self {
            Self::Off => 0,
            Self::Floor => BENCH_FLOOR,
            Self::Minimum => BENCH_MINIMUM,
        }
    }
}

/// Which TCP state changes the kernel sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Changes {
    /// Every one (`trace` prints them).
    All,
    /// Only those the aggregator uses (`leaks`, `top`, `run`): see `Settings::lean`.
    Lifecycle,
}

/// Distinct user stacks the kernel's `USER_STACKS` map holds: 64 frames of 32 bytes (build id
/// and offset) each, so 16 MiB of kernel memory. Distinct open sites are few; a full map, or a
/// new stack whose hash bucket is taken, is a counted failure. The same number of address
/// stacks (4 MiB) and of (process image, site) pairs in the LRU cache that maps one to the
/// other.
const USER_STACK_ENTRIES: u32 = 8_192;
/// Distinct kernel stacks `STACKS` holds: 127 addresses each, 16 MiB (bcc's tools' size).
const KERNEL_STACK_ENTRIES: u32 = 16_384;

/// Processes and threads `tcptrace run` can follow at once.
const FOLLOWED_ENTRIES: u32 = 65_536;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("close hook {hook} is not available on this kernel: {reason}")]
    CloseHookUnavailable { hook: CloseHook, reason: String },
}

/// Counters the kernel keeps for what it could not deliver or remember.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub lost_events: u64,
    /// Runs the kernel skipped because the program was already running on that CPU, and that
    /// no other program made up for.
    pub missed_runs: u64,
    /// State changes that interrupted the state-change program on their CPU, handled by its
    /// companion (`inet_sock_set_state_nested`) instead of being lost.
    pub nested_changes: u64,
    pub owner_map_full: u64,
    pub ctx_map_full: u64,
    /// Stacks the kernel could not capture (see `STACK_MAP_ENTRIES`).
    pub stack_failures: u64,
    /// Children of followed processes that could not be followed (map full).
    pub follow_full: u64,
}

pub struct Probes {
    ebpf: Ebpf,
    close_hook: CloseHook,
    notes: Vec<String>,
    /// Programs attached, for their kernel statistics.
    attached: Vec<&'static str>,
}

/// Set to print the whole verifier log when a program is rejected.
const VERIFIER_LOG_ENV: &str = "TCPTRACE_VERIFIER_LOG";

/// One-line reason from an aya error and its sources ("... : Operation not permitted"). A
/// verifier log is cut to its last line (the verdict) unless `TCPTRACE_VERIFIER_LOG` is set.
fn reason(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    if std::env::var_os(VERIFIER_LOG_ENV).is_some() {
        return text;
    }
    match text.split_once("Verifier output:") {
        Some((head, log)) => {
            let verdict = log
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with("verification time"))
                .find(|l| !l.starts_with(|c: char| c.is_ascii_digit() || c == ';'))
                .unwrap_or("");
            let head = head.trim_end_matches([' ', '.']);
            if verdict.is_empty() || verdict.starts_with(':') {
                head.to_owned()
            } else {
                format!("{head}: verifier: {verdict} (set {VERIFIER_LOG_ENV}=1 for the full log)")
            }
        }
        None => text,
    }
}

impl Probes {
    pub fn load(options: &ProbeOptions) -> anyhow::Result<Self> {
        raise_memlock_limit();
        tracefs::ensure_mounted()?;
        tracefs::check_inet_sock_set_state()?;

        let mut notes = Vec::new();
        let offsets = match KernelBtf::from_sysfs().and_then(|btf| btf.kernel_offsets()) {
            Ok(offsets) => offsets,
            Err(e @ OffsetError::NoBtf { .. }) => {
                notes.push(format!(
                    "{e}: accepted connections are not tied to their socket, and releases are only seen with --close-hook kprobe"
                ));
                KernelOffsets::zeroed()
            }
            Err(e) => {
                notes.push(format!("{e}: running without the descriptor walks"));
                KernelOffsets::zeroed()
            }
        };

        let following = options.filter.follow != 0;
        let fork_child_pid = if following {
            tracefs::field_offset("sched", "sched_process_fork", "child_pid")?
        } else {
            0
        };
        let settings = Settings {
            stacks: options.stacks.bits(),
            fork_child_pid,
            bench: options.bench.setting(),
            wakeup_bytes: options.ring_bytes / 4,
            lean: u32::from(options.changes == Changes::Lifecycle),
        };
        let user_stacks = settings.stacks & STACKS_USER != 0;
        let kernel_stacks = settings.stacks & STACKS_KERNEL != 0;
        let mut ebpf = EbpfLoader::new()
            .override_global("FILTER", &options.filter, true)
            .override_global("OFFSETS", &offsets, true)
            .override_global("SETTINGS", &settings, true)
            .map_max_entries("EVENTS", options.ring_bytes)
            .map_max_entries("USER_STACKS", if user_stacks { USER_STACK_ENTRIES } else { 1 })
            .map_max_entries("USER_ADDR_STACKS", if user_stacks { USER_STACK_ENTRIES } else { 1 })
            .map_max_entries("SITE_STACKS", if user_stacks { USER_STACK_ENTRIES } else { 1 })
            .map_max_entries("STACKS", if kernel_stacks { KERNEL_STACK_ENTRIES } else { 1 })
            .map_max_entries("FOLLOWED", if following { FOLLOWED_ENTRIES } else { 1 })
            .load(EBPF_OBJECT)
            .map_err(|e| anyhow!("loading the BPF object: {}", reason(&e)))?;

        let close_hook =
            attach_close_hook(&mut ebpf, options.close_hook, offsets.valid != 0, &mut notes)?;
        let mut config: Array<_, u32> = Array::try_from(
            ebpf.map_mut("CONFIG").context("map CONFIG missing from the BPF object")?,
        )?;
        config.set(CONFIG_CLOSE_HOOK, close_hook.config_value(), 0).context("writing CONFIG")?;

        let mut attached = Vec::new();
        let mut raw_attached = Vec::new();
        if offsets.valid != 0 {
            for &(program, name, fallback) in RAW_TRACEPOINTS {
                match attach_raw_tracepoint(&mut ebpf, program, name) {
                    Ok(()) => {
                        attached.push(program);
                        raw_attached.push(fallback);
                        if program == STATE_PROGRAM {
                            match attach_raw_tracepoint(&mut ebpf, NESTED_STATE_PROGRAM, name) {
                                Ok(()) => attached.push(NESTED_STATE_PROGRAM),
                                Err(e) => notes.push(format!(
                                    "{NESTED_STATE_PROGRAM} unavailable ({e:#}): a state change that interrupts another on its CPU is lost"
                                )),
                            }
                        }
                    }
                    Err(e) => notes.push(format!(
                        "raw tracepoint {name} unavailable ({e:#}): state changes can be missed while other BPF programs run"
                    )),
                }
            }
        }
        for &(program, category, name, required) in TRACEPOINTS {
            // Forks only matter to a followed process tree.
            if raw_attached.contains(&program)
                || (program == "sched_process_fork" && !following)
                || (RELEASE_TRACEPOINTS.contains(&program) && close_hook != CloseHook::Tracepoint)
                || (CONNECT_TRACEPOINTS.contains(&program) && offsets.connect_regs != 0)
            {
                continue;
            }
            match attach_tracepoint(&mut ebpf, program, category, name) {
                Ok(()) => attached.push(program),
                Err(e) if !required => notes.push(format!("{category}:{name} unavailable ({e:#})")),
                Err(e) => return Err(e),
            }
        }
        attached.extend(close_hook.program());
        Ok(Self { ebpf, close_hook, notes, attached })
    }

    pub fn close_hook(&self) -> CloseHook {
        self.close_hook
    }

    /// What runs degraded on this kernel, and why (printed at start).
    pub fn notes(&self) -> &[String] {
        &self.notes
    }

    pub fn events(&mut self) -> anyhow::Result<EventStream> {
        let map = self.ebpf.take_map("EVENTS").context("ring buffer already taken")?;
        let ring: RingBuf<MapData> = RingBuf::try_from(map)?;
        EventStream::new(ring).context("registering the ring buffer with tokio")
    }

    /// The stack maps `mode` fills and a symbolizer for them; `None` with `--stacks off`.
    pub fn stacks(&mut self, mode: StacksMode) -> anyhow::Result<Option<StackResolver>> {
        let bits = mode.bits();
        if bits == 0 {
            return Ok(None);
        }
        let user = if bits & STACKS_USER != 0 {
            match self.ebpf.take_map("USER_STACKS").context("user stack map already taken")? {
                aya::maps::Map::StackTraceMap(data) => Some(data),
                _ => anyhow::bail!("USER_STACKS is not a stack map"),
            }
        } else {
            None
        };
        let kernel = if bits & STACKS_KERNEL != 0 {
            let map = self.ebpf.take_map("STACKS").context("kernel stack map already taken")?;
            Some(StackTraceMap::try_from(map)?)
        } else {
            None
        };
        Ok(Some(StackResolver::new(user, kernel)))
    }

    /// Follows process `pid` (`Filter::follow`): it and every descendant it forks from now on.
    pub fn follow(&mut self, pid: u32) -> anyhow::Result<()> {
        let mut followed: HashMap<_, u32, u32> =
            HashMap::try_from(self.ebpf.map_mut("FOLLOWED").context("map FOLLOWED missing")?)?;
        followed.insert(pid, 1, 0).context("adding the command to the followed processes")
    }

    /// A function for a forked child to call before it execs (`CommandExt::pre_exec`): it adds
    /// its own pid to the followed processes, so the command is followed from its first
    /// instruction. It only makes the `bpf()` system call, which is async-signal-safe.
    pub fn follow_self_hook(
        &self,
    ) -> anyhow::Result<impl Fn() -> io::Result<()> + Send + Sync + 'static> {
        let map = self.ebpf.map("FOLLOWED").context("map FOLLOWED missing")?;
        let aya::maps::Map::HashMap(data) = map else {
            anyhow::bail!("map FOLLOWED is not a hash map");
        };
        let fd = data.fd().as_fd().as_raw_fd();
        Ok(move || bpf_sys::add_self(fd))
    }

    /// Whether any followed process (or thread) is still alive.
    pub fn followed_alive(&self) -> anyhow::Result<bool> {
        let followed: HashMap<_, u32, u32> =
            HashMap::try_from(self.ebpf.map("FOLLOWED").context("map FOLLOWED missing")?)?;
        Ok(followed.keys().next().is_some())
    }

    pub fn counters(&self) -> anyhow::Result<Counters> {
        let counters: PerCpuArray<_, u64> =
            PerCpuArray::try_from(self.ebpf.map("COUNTERS").context("map COUNTERS missing")?)?;
        let sum = |index: u32| -> anyhow::Result<u64> {
            Ok(counters.get(&index, 0).context("reading COUNTERS")?.iter().sum())
        };
        let nested_changes = sum(COUNTER_NESTED_CHANGES)?;
        let nested_attached = self.attached.contains(&NESTED_STATE_PROGRAM);
        let mut missed_runs = 0;
        for &name in &self.attached {
            let Some(program) = self.ebpf.program(name) else {
                continue;
            };
            let fd = program.fd().with_context(|| format!("program {name} has no fd"))?;
            let missed = recursion_misses(fd.as_fd())
                .with_context(|| format!("reading the statistics of program {name}"))?;
            missed_runs += match name {
                NESTED_STATE_PROGRAM => 0,
                STATE_PROGRAM if nested_attached => missed.saturating_sub(nested_changes),
                _ => missed,
            };
        }
        Ok(Counters {
            nested_changes,
            lost_events: sum(COUNTER_LOST_EVENTS)?,
            missed_runs,
            owner_map_full: sum(COUNTER_OWNER_MAP_FULL)?,
            ctx_map_full: sum(COUNTER_CTX_MAP_FULL)?,
            stack_failures: sum(COUNTER_STACK_FAILED)?,
            follow_full: sum(COUNTER_FOLLOW_FULL)?,
        })
    }
}

fn attach_tracepoint(
    ebpf: &mut Ebpf,
    program: &str,
    category: &str,
    name: &str,
) -> anyhow::Result<()> {
    if !tracefs::has_tracepoint(category, name) {
        return Err(anyhow!("the kernel has no tracepoint {category}:{name}"));
    }
    let prog: &mut TracePoint = ebpf
        .program_mut(program)
        .with_context(|| format!("program {program} missing from the BPF object"))?
        .try_into()?;
    prog.load().map_err(|e| anyhow!("loading {program}: {}", reason(&e)))?;
    prog.attach(category, name)
        .map_err(|e| anyhow!("attaching {category}:{name}: {}", reason(&e)))?;
    Ok(())
}

fn attach_raw_tracepoint(ebpf: &mut Ebpf, program: &str, name: &str) -> anyhow::Result<()> {
    let prog: &mut RawTracePoint = ebpf
        .program_mut(program)
        .with_context(|| format!("program {program} missing from the BPF object"))?
        .try_into()?;
    prog.load().map_err(|e| anyhow!("loading {program}: {}", reason(&e)))?;
    prog.attach(name).map_err(|e| anyhow!("attaching raw tracepoint {name}: {}", reason(&e)))?;
    Ok(())
}

fn try_close_hook(ebpf: &mut Ebpf, hook: CloseHook, have_offsets: bool) -> Result<(), String> {
    match hook {
        CloseHook::Fentry => {
            let btf = Btf::from_sys_fs().map_err(|e| reason(&e))?;
            let prog: &mut FEntry = ebpf
                .program_mut("tcp_close_fentry")
                .ok_or("program missing")?
                .try_into()
                .map_err(|e| reason(&e))?;
            prog.load("tcp_close", &btf).map_err(|e| reason(&e))?;
            prog.attach().map_err(|e| reason(&e))?;
        }
        CloseHook::Kprobe => {
            let prog: &mut KProbe = ebpf
                .program_mut("tcp_close_kprobe")
                .ok_or("program missing")?
                .try_into()
                .map_err(|e| reason(&e))?;
            prog.load().map_err(|e| reason(&e))?;
            prog.attach("tcp_close", 0).map_err(|e| reason(&e))?;
        }
        CloseHook::Tracepoint if !have_offsets => {
            return Err("it needs kernel BTF to read descriptor reference counts".to_owned());
        }
        CloseHook::Tracepoint => {}
    }
    Ok(())
}

fn attach_close_hook(
    ebpf: &mut Ebpf,
    choice: CloseHookChoice,
    have_offsets: bool,
    notes: &mut Vec<String>,
) -> anyhow::Result<CloseHook> {
    let mut refused = Vec::new();
    for &hook in choice.candidates() {
        match try_close_hook(ebpf, hook, have_offsets) {
            Ok(()) => {
                if !refused.is_empty() {
                    notes.push(format!("close hook {hook} in use; {}", refused.join("; ")));
                }
                return Ok(hook);
            }
            Err(reason) if choice == CloseHookChoice::Auto => {
                refused.push(format!("{hook} refused: {reason}"));
            }
            Err(reason) => return Err(LoadError::CloseHookUnavailable { hook, reason }.into()),
        }
    }
    // Auto ends with tracepoint, which only fails without BTF: releases are then not reported.
    notes.push(format!(
        "no close hook available ({}); releases are not reported",
        refused.join("; ")
    ));
    Ok(CloseHook::Tracepoint)
}

/// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK.
fn raise_memlock_limit() {
    let unlimited = libc::rlimit { rlim_cur: libc::RLIM_INFINITY, rlim_max: libc::RLIM_INFINITY };
    // SAFETY: setrlimit with a valid struct; failure only matters on old kernels and is
    // reported by the map creation that follows.
    unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) };
}
