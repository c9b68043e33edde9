//! Loads the kernel programs, configures them and attaches them as `plan` says; hands out their
//! ring buffer, stack maps and counters.

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
    CONFIG_CLOSE_HOOK, COUNTER_CTX_MAP_FULL, COUNTER_FOLLOW_FULL, COUNTER_LOST_EVENTS,
    COUNTER_NESTED_CHANGES, COUNTER_OWNER_MAP_FULL, COUNTER_READ_FAILED, COUNTER_SENT_EVENTS,
    COUNTER_STACK_FAILED, FrameSlots, KernelOffsets, PyLayout, STACKS_KERNEL, STACKS_USER, names,
};

#[cfg(feature = "bench")]
pub use super::options::Bench;
pub use super::options::{Changes, ProbeOptions, StacksMode};
use super::{
    bpf_sys,
    btf_offsets::{KernelBtf, OffsetError},
    close_hook::CloseHook,
    counters::{self, Counters},
    plan::{self, NESTED_STATE_PROGRAM, RawTracepoint, Tracepoint},
    prog_stats::recursion_misses,
    stream::EventStream,
    tracefs,
    verifier::reason,
};

/// The kernel programs, built by build.rs.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tcptrace"));

/// Distinct user stacks the kernel's `USER_STACKS` map holds: 64 frames of 32 bytes (build id
/// and offset) each, so 16 MiB of kernel memory. Distinct open sites are few; a full map, or a
/// new stack whose hash bucket is taken, is a counted failure. The same number of address
/// stacks (4 MiB) and of (process image, site) pairs in the LRU cache that maps one to the
/// other.
const USER_STACK_ENTRIES: u32 = 8_192;
/// Distinct kernel stacks `STACKS` holds: 127 addresses each, 16 MiB (bcc's tools' size).
const KERNEL_STACK_ENTRIES: u32 = 16_384;

/// Python processes, and JVMs and Node.js processes, whose opens carry interpreter frames at
/// once (`PY_PROCS` and `FP_PROCS`, 32 and 16 bytes each).
const INTERP_PROCS_ENTRIES: u32 = 4_096;

/// Processes and threads `tcptrace run` can follow at once.
const FOLLOWED_ENTRIES: u32 = 65_536;

pub struct Probes {
    ebpf: Ebpf,
    close_hook: CloseHook,
    notes: Vec<String>,
    /// Programs attached, for their kernel statistics.
    attached: Vec<&'static str>,
}

/// The stack maps the programs fill, for `stacks::StackResolver`.
pub struct StackMaps {
    /// `USER_STACKS` (build-id frames), when user stacks are captured.
    pub user: Option<MapData>,
    /// `STACKS` (addresses), when kernel stacks are captured.
    pub kernel: Option<StackTraceMap<MapData>>,
    /// `PY_PROCS` and `FP_PROCS`, when user stacks are captured.
    pub interp: Option<InterpMaps>,
}

/// The maps that tell the kernel programs which processes run an interpreter whose frames they
/// walk (see `interp`).
pub struct InterpMaps {
    pub python: HashMap<MapData, u32, PyLayout>,
    /// JVMs and Node.js processes.
    pub frame_pointers: HashMap<MapData, u32, FrameSlots>,
}

impl Probes {
    pub fn load(options: &ProbeOptions) -> anyhow::Result<Self> {
        raise_memlock_limit();
        tracefs::ensure_mounted()?;
        tracefs::check_inet_sock_set_state()?;
        let mut notes = Vec::new();
        let mut offsets = kernel_offsets(&mut notes);
        if options.unrolled_loops {
            offsets.has_loop = 0;
        }
        let mut ebpf = load_object(options, &offsets)?;
        let kernel =
            plan::Kernel { offsets: offsets.valid != 0, connect_regs: offsets.connect_regs != 0 };
        let (close_hook, note) = plan::choose_close_hook(options.close_hook, |hook| {
            try_close_hook(&mut ebpf, hook, kernel.offsets)
        })?;
        notes.extend(note);
        let mut config: Array<_, u32> = Array::try_from(
            ebpf.map_mut(names::CONFIG).context("map CONFIG missing from the BPF object")?,
        )?;
        config.set(CONFIG_CLOSE_HOOK, close_hook.config_value(), 0).context("writing CONFIG")?;

        let mut attached = Vec::new();
        let raw_attached = attach_raw_tracepoints(&mut ebpf, kernel, &mut attached, &mut notes);
        for tracepoint in plan::tracepoints(kernel, close_hook, options.following(), &raw_attached)
        {
            match attach_tracepoint(&mut ebpf, tracepoint) {
                Ok(()) => attached.push(tracepoint.program),
                Err(e) if !tracepoint.required => notes.push(format!(
                    "{}:{} unavailable ({e:#})",
                    tracepoint.category, tracepoint.name
                )),
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
        let map = self.ebpf.take_map(names::EVENTS).context("ring buffer already taken")?;
        let ring: RingBuf<MapData> = RingBuf::try_from(map)?;
        EventStream::new(ring).context("registering the ring buffer with tokio")
    }

    /// The stack maps `mode` fills; `None` with `--stacks off`.
    pub fn stack_maps(&mut self, mode: StacksMode) -> anyhow::Result<Option<StackMaps>> {
        let bits = mode.bits();
        if bits == 0 {
            return Ok(None);
        }
        let user = if bits & STACKS_USER != 0 {
            match self.ebpf.take_map(names::USER_STACKS).context("user stack map already taken")? {
                aya::maps::Map::StackTraceMap(data) => Some(data),
                _ => anyhow::bail!("USER_STACKS is not a stack map"),
            }
        } else {
            None
        };
        let kernel = if bits & STACKS_KERNEL != 0 {
            let map =
                self.ebpf.take_map(names::STACKS).context("kernel stack map already taken")?;
            Some(StackTraceMap::try_from(map)?)
        } else {
            None
        };
        let interp = if bits & STACKS_USER != 0 {
            let python =
                self.ebpf.take_map(names::PY_PROCS).context("map PY_PROCS already taken")?;
            let frame_pointers =
                self.ebpf.take_map(names::FP_PROCS).context("map FP_PROCS already taken")?;
            Some(InterpMaps {
                python: HashMap::try_from(python)?,
                frame_pointers: HashMap::try_from(frame_pointers)?,
            })
        } else {
            None
        };
        Ok(Some(StackMaps { user, kernel, interp }))
    }

    /// Follows process `pid` (`Filter::follow`): it and every descendant it forks from now on.
    pub fn follow(&mut self, pid: u32) -> anyhow::Result<()> {
        let mut followed: HashMap<_, u32, u32> =
            HashMap::try_from(self.ebpf.map_mut(names::FOLLOWED).context("map FOLLOWED missing")?)?;
        followed.insert(pid, 1, 0).context("adding the command to the followed processes")
    }

    /// A function for a forked child to call before it execs (`CommandExt::pre_exec`): it adds
    /// its own pid to the followed processes, so the command is followed from its first
    /// instruction. It only makes the `bpf()` system call, which is async-signal-safe.
    pub fn follow_self_hook(
        &self,
    ) -> anyhow::Result<impl Fn() -> io::Result<()> + Send + Sync + 'static> {
        let map = self.ebpf.map(names::FOLLOWED).context("map FOLLOWED missing")?;
        let aya::maps::Map::HashMap(data) = map else {
            anyhow::bail!("map FOLLOWED is not a hash map");
        };
        let fd = data.fd().as_fd().as_raw_fd();
        Ok(move || bpf_sys::add_self(fd))
    }

    /// Whether any followed process (or thread) is still alive.
    pub fn followed_alive(&self) -> anyhow::Result<bool> {
        let followed: HashMap<_, u32, u32> =
            HashMap::try_from(self.ebpf.map(names::FOLLOWED).context("map FOLLOWED missing")?)?;
        Ok(followed.keys().next().is_some())
    }

    /// What `Bench::InKernel` counted, by process (tgid); empty in any other mode.
    #[cfg(feature = "bench")]
    pub fn bench_counts(&self) -> anyhow::Result<Vec<(u32, tcptrace_common::BenchCounts)>> {
        let map = self.ebpf.map(names::BENCH_COUNTS).context("map BENCH_COUNTS missing")?;
        let counts: HashMap<_, u32, tcptrace_common::BenchCounts> = HashMap::try_from(map)?;
        counts.iter().map(|entry| entry.context("reading BENCH_COUNTS")).collect()
    }

    pub fn counters(&self) -> anyhow::Result<Counters> {
        let counters: PerCpuArray<_, u64> =
            PerCpuArray::try_from(self.ebpf.map(names::COUNTERS).context("map COUNTERS missing")?)?;
        let sum = |index: u32| -> anyhow::Result<u64> {
            Ok(counters.get(&index, 0).context("reading COUNTERS")?.iter().sum())
        };
        let mut skipped = Vec::with_capacity(self.attached.len());
        for &name in &self.attached {
            let Some(program) = self.ebpf.program(name) else {
                continue;
            };
            let fd = program.fd().with_context(|| format!("program {name} has no fd"))?;
            let missed = recursion_misses(fd.as_fd())
                .with_context(|| format!("reading the statistics of program {name}"))?;
            skipped.push((name, missed));
        }
        let nested_changes = sum(COUNTER_NESTED_CHANGES)?;
        let nested_attached = self.attached.contains(&NESTED_STATE_PROGRAM);
        Ok(Counters {
            nested_changes,
            lost_events: sum(COUNTER_LOST_EVENTS)?,
            missed_runs: counters::missed_runs(skipped, nested_changes, nested_attached),
            read_failures: sum(COUNTER_READ_FAILED)?,
            owner_map_full: sum(COUNTER_OWNER_MAP_FULL)?,
            ctx_map_full: sum(COUNTER_CTX_MAP_FULL)?,
            stack_failures: sum(COUNTER_STACK_FAILED)?,
            follow_full: sum(COUNTER_FOLLOW_FULL)?,
            sent_events: sum(COUNTER_SENT_EVENTS)?,
        })
    }
}

/// The running kernel's struct offsets, or zeroes (the walks are then skipped) with a note
/// saying what that costs.
fn kernel_offsets(notes: &mut Vec<String>) -> KernelOffsets {
    match KernelBtf::from_sysfs().and_then(|btf| btf.kernel_offsets()) {
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
    }
}

/// The BPF object with its globals set and its maps sized for `options`.
fn load_object(options: &ProbeOptions, offsets: &KernelOffsets) -> anyhow::Result<Ebpf> {
    let fork_child_pid = if options.following() {
        tracefs::field_offset("sched", "sched_process_fork", "child_pid")?
    } else {
        0
    };
    let settings = options.settings(fork_child_pid);
    let user_stacks = settings.stacks & STACKS_USER != 0;
    let kernel_stacks = settings.stacks & STACKS_KERNEL != 0;
    let user_stack_entries = if user_stacks { USER_STACK_ENTRIES } else { 1 };
    EbpfLoader::new()
        .override_global(names::FILTER, &options.filter, true)
        .override_global(names::OFFSETS, offsets, true)
        .override_global(names::SETTINGS, &settings, true)
        .map_max_entries(names::EVENTS, options.ring_bytes)
        .map_max_entries(names::USER_STACKS, user_stack_entries)
        .map_max_entries(names::USER_ADDR_STACKS, user_stack_entries)
        .map_max_entries(names::SITE_STACKS, user_stack_entries)
        .map_max_entries(names::STACKS, if kernel_stacks { KERNEL_STACK_ENTRIES } else { 1 })
        .map_max_entries(names::PY_PROCS, if user_stacks { INTERP_PROCS_ENTRIES } else { 1 })
        .map_max_entries(names::FP_PROCS, if user_stacks { INTERP_PROCS_ENTRIES } else { 1 })
        .map_max_entries(names::FOLLOWED, if options.following() { FOLLOWED_ENTRIES } else { 1 })
        .load(EBPF_OBJECT)
        .map_err(|e| anyhow!("loading the BPF object: {}", reason(&e)))
}

/// Attaches the raw tracepoints the kernel allows (and the nested-change program after the
/// state program); returns those attached. A refusal is a note: the classic program stands in.
fn attach_raw_tracepoints(
    ebpf: &mut Ebpf,
    kernel: plan::Kernel,
    attached: &mut Vec<&'static str>,
    notes: &mut Vec<String>,
) -> Vec<RawTracepoint> {
    let mut raw_attached = Vec::new();
    for &raw in plan::raw_tracepoints(kernel) {
        if let Err(e) = attach_raw_tracepoint(ebpf, raw.program, raw.name) {
            notes.push(format!(
                "raw tracepoint {} unavailable ({e:#}): state changes can be missed while other BPF programs run",
                raw.name
            ));
            continue;
        }
        attached.push(raw.program);
        raw_attached.push(raw);
        if raw.program == plan::STATE_PROGRAM {
            match attach_raw_tracepoint(ebpf, NESTED_STATE_PROGRAM, raw.name) {
                Ok(()) => attached.push(NESTED_STATE_PROGRAM),
                Err(e) => notes.push(format!(
                    "{NESTED_STATE_PROGRAM} unavailable ({e:#}): a state change that interrupts another on its CPU is lost"
                )),
            }
        }
    }
    raw_attached
}

fn attach_tracepoint(ebpf: &mut Ebpf, tracepoint: Tracepoint) -> anyhow::Result<()> {
    let Tracepoint { program, category, name, .. } = tracepoint;
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
                .program_mut(names::TCP_CLOSE_FENTRY)
                .ok_or("program missing")?
                .try_into()
                .map_err(|e| reason(&e))?;
            prog.load("tcp_close", &btf).map_err(|e| reason(&e))?;
            prog.attach().map_err(|e| reason(&e))?;
        }
        CloseHook::Kprobe => {
            let prog: &mut KProbe = ebpf
                .program_mut(names::TCP_CLOSE_KPROBE)
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

/// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK.
fn raise_memlock_limit() {
    let unlimited = libc::rlimit { rlim_cur: libc::RLIM_INFINITY, rlim_max: libc::RLIM_INFINITY };
    // SAFETY: setrlimit with a valid struct; failure only matters on old kernels and is
    // reported by the map creation that follows.
    unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) };
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The names user space loads by are the kernel crate's identifiers: a rename on one side
    /// only would compile and fail at load time.
    #[test]
    fn every_shared_name_is_in_the_kernel_object() {
        let object = aya_obj::Object::parse(EBPF_OBJECT).expect("the BPF object parses");
        for map in names::MAPS {
            assert!(object.maps.contains_key(*map), "map {map} missing from the object");
        }
        for program in names::PROGRAMS {
            assert!(object.programs.contains_key(*program), "program {program} missing");
        }
        // Globals are symbols: their names are in the object's string table.
        for global in names::GLOBALS {
            let symbol = [b"\0", global.as_bytes(), b"\0"].concat();
            assert!(
                EBPF_OBJECT.windows(symbol.len()).any(|w| w == symbol),
                "global {global} missing from the object"
            );
        }
        assert!(!object.programs.contains_key("no_such_program"), "the check can fail");
    }
}
