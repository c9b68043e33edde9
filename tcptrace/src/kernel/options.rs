//! What the kernel programs are asked to do: filters, the close hook, the ring size, which
//! stacks to capture and which state changes to send. Plain data, turned into the programs'
//! load-time `Settings` here.

use std::{fmt, str::FromStr};

use tcptrace_common::{Filter, STACKS_KERNEL, STACKS_USER, Settings};

use super::close_hook::CloseHookChoice;

#[derive(Debug, Clone)]
pub struct ProbeOptions {
    pub filter: Filter,
    pub close_hook: CloseHookChoice,
    /// Ring buffer size in bytes (a power of two, at least a page).
    pub ring_bytes: u32,
    pub stacks: StacksMode,
    /// Which state changes the kernel sends.
    pub changes: Changes,
    /// Whether open records carry the opener's cgroup id (off where no cgroup v2 hierarchy is
    /// in use: every task would read the root's).
    pub cgroup_ids: bool,
    /// Verify the programs' loops unrolled even where the kernel has `bpf_loop`, as kernels
    /// before 5.17 must: for the test that keeps that path loading. False for real use.
    pub unrolled_loops: bool,
    /// `cargo xtask bench`'s reference points; `Bench::Off` for real use.
    #[cfg(feature = "bench")]
    pub bench: Bench,
}

impl ProbeOptions {
    /// The programs' load-time settings; `fork_child_pid` is the offset of `child_pid` in
    /// `sched_process_fork` records (0 unless a process tree is followed).
    pub fn settings(&self, fork_child_pid: u32) -> Settings {
        Settings {
            stacks: self.stacks.bits(),
            fork_child_pid,
            #[cfg(feature = "bench")]
            bench: self.bench.setting(),
            #[cfg(not(feature = "bench"))]
            bench: 0,
            wakeup_bytes: self.ring_bytes / 4,
            lean: u32::from(self.changes == Changes::Lifecycle),
            cgroup_ids: u32::from(self.cgroup_ids),
        }
    }

    /// Whether the programs follow a process tree (`tcptrace run`).
    pub fn following(&self) -> bool {
        self.filter.follow != 0
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

/// What the programs do, for `cargo xtask bench`'s reference points.
#[cfg(feature = "bench")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bench {
    /// Their job.
    Off,
    /// Each returns at once: the cost of the hooks themselves.
    Floor,
    /// The least per-connection work a tracer that matches opens to closes can do (the kernel
    /// crate's `bench` module); user space only counts what arrives.
    Minimum,
    /// The minimum with per-process counts in a kernel map in place of its records, and the
    /// user stack at each open as `--stacks` asks: what a tracer that sends nothing per
    /// connection costs.
    InKernel,
}

#[cfg(feature = "bench")]
impl Bench {
    fn setting(self) -> u32 {
        match self {
            Self::Off => 0,
            Self::Floor => tcptrace_common::BENCH_FLOOR,
            Self::Minimum => tcptrace_common::BENCH_MINIMUM,
            Self::InKernel => tcptrace_common::BENCH_IN_KERNEL,
        }
    }
}

/// `--stacks`: which stacks the kernel captures at connect and accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StacksMode {
    /// The process's stack: the functions that opened the connection.
    User,
    /// The kernel's stack (how the system call got to the socket).
    Kernel,
    Both,
    Off,
}

impl StacksMode {
    /// The kernel's `Settings::stacks` bits.
    pub fn bits(self) -> u32 {
        match self {
            Self::User => STACKS_USER,
            Self::Kernel => STACKS_KERNEL,
            Self::Both => STACKS_USER | STACKS_KERNEL,
            Self::Off => 0,
        }
    }
}

impl fmt::Display for StacksMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::User => "user",
            Self::Kernel => "kernel",
            Self::Both => "both",
            Self::Off => "off",
        })
    }
}

impl FromStr for StacksMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        <Self as clap::ValueEnum>::from_str(s, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stack_modes_parse_and_set_the_kernel_bits() {
        assert_eq!("both".parse::<StacksMode>().unwrap().bits(), STACKS_USER | STACKS_KERNEL);
        assert_eq!(StacksMode::Off.bits(), 0);
        assert!("all".parse::<StacksMode>().is_err());
    }

    #[test]
    fn lean_events_for_the_aggregating_commands_only() {
        let options = |changes| ProbeOptions {
            filter: Filter::none(),
            close_hook: CloseHookChoice::Auto,
            ring_bytes: 1 << 23,
            stacks: StacksMode::User,
            changes,
            cgroup_ids: true,
            unrolled_loops: false,
            #[cfg(feature = "bench")]
            bench: Bench::Off,
        };
        let lean = options(Changes::Lifecycle).settings(0);
        assert_eq!((lean.lean, lean.stacks, lean.wakeup_bytes), (1, STACKS_USER, 1 << 21));
        assert_eq!(options(Changes::All).settings(0).lean, 0);
        assert_eq!(lean.cgroup_ids, 1);
    }
}
