//! How releases (the `tcp_close()` moment) are observed; see tcptrace-ebpf/src/release.rs.

use std::fmt;

use tcptrace_common::{CLOSE_HOOK_FENTRY, CLOSE_HOOK_KPROBE, CLOSE_HOOK_TRACEPOINT, names};

/// What the user asked for with `--close-hook`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CloseHookChoice {
    /// The best hook the kernel allows: fentry, then kprobe, then tracepoints.
    Auto,
    Fentry,
    Kprobe,
    Tracepoint,
}

/// The hook in use, reported at start and in every JSON record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CloseHook {
    /// fentry on tcp_close: exact, cheapest; needs BPF trampolines.
    Fentry,
    /// kprobe on tcp_close: exact; needs CONFIG_KPROBES.
    Kprobe,
    /// Derived from syscall and state tracepoints: exact for close/dup2/dup3 and exit, bounded
    /// for close_range.
    Tracepoint,
}

impl CloseHook {
    pub const fn name(self) -> &'static str {
        match self {
            Self::Fentry => "fentry",
            Self::Kprobe => "kprobe",
            Self::Tracepoint => "tracepoint",
        }
    }

    /// The kernel program this mode attaches; tracepoint mode has none of its own (the syscall
    /// and `sched_process_exit` programs, always attached, do the work).
    pub const fn program(self) -> Option<&'static str> {
        match self {
            Self::Fentry => Some(names::TCP_CLOSE_FENTRY),
            Self::Kprobe => Some(names::TCP_CLOSE_KPROBE),
            Self::Tracepoint => None,
        }
    }

    /// The value the kernel programs read from `CONFIG[CONFIG_CLOSE_HOOK]`.
    pub const fn config_value(self) -> u32 {
        match self {
            Self::Fentry => CLOSE_HOOK_FENTRY,
            Self::Kprobe => CLOSE_HOOK_KPROBE,
            Self::Tracepoint => CLOSE_HOOK_TRACEPOINT,
        }
    }
}

impl fmt::Display for CloseHook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl CloseHookChoice {
    /// The hooks to try, best first.
    pub fn candidates(self) -> &'static [CloseHook] {
        match self {
            Self::Auto => &[CloseHook::Fentry, CloseHook::Kprobe, CloseHook::Tracepoint],
            Self::Fentry => &[CloseHook::Fentry],
            Self::Kprobe => &[CloseHook::Kprobe],
            Self::Tracepoint => &[CloseHook::Tracepoint],
        }
    }
}
