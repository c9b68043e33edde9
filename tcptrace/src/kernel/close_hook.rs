//! How releases (the `tcp_close()` moment) are observed; see tcptrace-ebpf/src/release.rs.

use std::fmt;

use tcptrace_common::names;

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
    /// Derived from the state changes `tcp_close()` makes while the socket's file is being
    /// released, and from `tcp:tcp_destroy_sock` for a socket already in CLOSE: exact for every
    /// way a descriptor goes, from raw tracepoints alone.
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

    /// The kernel programs this mode attaches, in attachment order. Tracepoint mode's first
    /// goes on `inet_sock_set_state` before the state programs, so a release is reported
    /// before the change that reveals it, as with fentry (the kernel runs a tracepoint's
    /// programs in attachment order).
    pub const fn programs(self) -> &'static [&'static str] {
        match self {
            Self::Fentry => &[names::TCP_CLOSE_FENTRY],
            Self::Kprobe => &[names::TCP_CLOSE_KPROBE],
            Self::Tracepoint => &[names::INET_SOCK_SET_STATE_RELEASE, names::TCP_DESTROY_SOCK_RAW],
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
