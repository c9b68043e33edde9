//! Which programs a kernel and a close hook get, decided from what is known before attaching:
//! pure, so every combination is unit-tested without root. `probes` carries the plan out.

use tcptrace_common::names;

use super::close_hook::{CloseHook, CloseHookChoice};

/// A classic tracepoint program. Optional ones degrade a feature when absent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tracepoint {
    pub program: &'static str,
    pub category: &'static str,
    pub name: &'static str,
    pub required: bool,
}

/// A program named after its tracepoint, as all of them are.
const fn tp(program: &'static str, category: &'static str, required: bool) -> Tracepoint {
    Tracepoint { program, category, name: program, required }
}

/// Every classic tracepoint program, in attachment order.
pub const TRACEPOINTS: &[Tracepoint] = &[
    tp(names::INET_SOCK_SET_STATE, "sock", true),
    tp(names::TCP_RECEIVE_RESET, "tcp", false),
    tp(names::SYS_ENTER_CONNECT, "syscalls", true),
    tp(names::SYS_EXIT_CONNECT, "syscalls", true),
    tp(names::SYS_EXIT_ACCEPT, "syscalls", false),
    tp(names::SYS_EXIT_ACCEPT4, "syscalls", true),
    tp(names::SYS_ENTER_CLOSE, "syscalls", true),
    tp(names::SYS_ENTER_DUP2, "syscalls", false),
    tp(names::SYS_ENTER_DUP3, "syscalls", false),
    tp(names::SYS_ENTER_CLOSE_RANGE, "syscalls", false),
    tp(names::SCHED_PROCESS_EXIT, "sched", true),
    tp(names::SCHED_PROCESS_EXEC, "sched", false),
    tp(names::SCHED_PROCESS_FORK, "sched", true),
];

/// A raw tracepoint program and the classic program it replaces when it attaches. Raw
/// tracepoints read the `struct sock` with BTF offsets, and unlike classic tracepoint programs
/// they are not skipped while another BPF program runs on the CPU (see the kernel crate's
/// `state` module).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawTracepoint {
    pub program: &'static str,
    pub name: &'static str,
    pub replaces: &'static str,
}

pub const RAW_TRACEPOINTS: &[RawTracepoint] = &[
    RawTracepoint {
        program: STATE_PROGRAM,
        name: "inet_sock_set_state",
        replaces: "inet_sock_set_state",
    },
    RawTracepoint {
        program: names::TCP_RECEIVE_RESET_RAW,
        name: "tcp_receive_reset",
        replaces: "tcp_receive_reset",
    },
];

/// The raw state-change program the kernel skips when a softirq change interrupts it on its
/// CPU, and the second program that handles those changes instead (see the kernel crate's
/// `nested` module). The second must be attached after the first: the kernel runs a
/// tracepoint's programs in attachment order.
pub const STATE_PROGRAM: &str = names::INET_SOCK_SET_STATE_RAW;
pub const NESTED_STATE_PROGRAM: &str = names::INET_SOCK_SET_STATE_NESTED;

/// The programs that derive releases from descriptor syscalls: only attached in tracepoint
/// mode. With fentry or kprobe they would run on every close(2) of the host to do nothing.
const RELEASE_TRACEPOINTS: &[&str] = &[
    names::SYS_ENTER_CLOSE,
    names::SYS_ENTER_DUP2,
    names::SYS_ENTER_DUP3,
    names::SYS_ENTER_CLOSE_RANGE,
];

/// The programs that remember connect()'s descriptor: only attached where the kernel programs
/// cannot read it from the caller's saved registers (`KernelOffsets::connect_regs`).
const CONNECT_TRACEPOINTS: &[&str] = &[names::SYS_ENTER_CONNECT, names::SYS_EXIT_CONNECT];

/// What the plan depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kernel {
    /// BTF offsets are known (the descriptor walks and raw tracepoints work).
    pub offsets: bool,
    /// connect()'s descriptor can be read from the saved registers.
    pub connect_regs: bool,
}

/// The raw tracepoints to try: none without BTF offsets.
pub fn raw_tracepoints(kernel: Kernel) -> &'static [RawTracepoint] {
    if kernel.offsets { RAW_TRACEPOINTS } else { &[] }
}

/// The classic tracepoints to attach once the close hook is chosen and the raw ones in
/// `raw_attached` replaced theirs.
pub fn tracepoints(
    kernel: Kernel,
    close_hook: CloseHook,
    following: bool,
    raw_attached: &[RawTracepoint],
) -> Vec<Tracepoint> {
    TRACEPOINTS
        .iter()
        .copied()
        .filter(|t| !raw_attached.iter().any(|raw| raw.replaces == t.program))
        // Forks only matter to a followed process tree.
        .filter(|t| following || t.program != "sched_process_fork")
        .filter(|t| {
            close_hook == CloseHook::Tracepoint || !RELEASE_TRACEPOINTS.contains(&t.program)
        })
        .filter(|t| !kernel.connect_regs || !CONNECT_TRACEPOINTS.contains(&t.program))
        .collect()
}

/// Why the close hook the user asked for cannot be had.
#[derive(Debug, thiserror::Error)]
pub enum CloseHookError {
    #[error("close hook {hook} is not available on this kernel: {reason}")]
    Unavailable { hook: CloseHook, reason: String },
}

/// The close hook in use and the note that says what was refused on the way, from trying
/// `choice`'s candidates best first. `Auto` never fails: it ends with tracepoints, which only
/// fail without BTF, and releases are then not reported (said in the note).
pub fn choose_close_hook(
    choice: CloseHookChoice,
    mut attach: impl FnMut(CloseHook) -> Result<(), String>,
) -> Result<(CloseHook, Option<String>), CloseHookError> {
    let mut refused = Vec::new();
    for &hook in choice.candidates() {
        match attach(hook) {
            Ok(()) if refused.is_empty() => return Ok((hook, None)),
            Ok(()) => {
                return Ok((
                    hook,
                    Some(format!("close hook {hook} in use; {}", refused.join("; "))),
                ));
            }
            Err(reason) if choice == CloseHookChoice::Auto => {
                refused.push(format!("{hook} refused: {reason}"));
            }
            Err(reason) => return Err(CloseHookError::Unavailable { hook, reason }),
        }
    }
    let note =
        format!("no close hook available ({}); releases are not reported", refused.join("; "));
    Ok((CloseHook::Tracepoint, Some(note)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const BTF: Kernel = Kernel { offsets: true, connect_regs: true };
    const OLD_BTF: Kernel = Kernel { offsets: true, connect_regs: false };
    const NO_BTF: Kernel = Kernel { offsets: false, connect_regs: false };

    fn programs(plan: &[Tracepoint]) -> Vec<&'static str> {
        plan.iter().map(|t| t.program).collect()
    }

    #[test]
    fn raw_tracepoints_need_btf_and_replace_their_classic_programs() {
        assert!(raw_tracepoints(NO_BTF).is_empty());
        let raw = raw_tracepoints(BTF);
        assert_eq!(raw.len(), 2);
        let plan = programs(&tracepoints(BTF, CloseHook::Tracepoint, false, raw));
        assert!(!plan.contains(&"inet_sock_set_state") && !plan.contains(&"tcp_receive_reset"));
        // A raw program that failed to attach leaves its classic fallback in.
        let plan = programs(&tracepoints(BTF, CloseHook::Tracepoint, false, &raw[..1]));
        assert!(!plan.contains(&"inet_sock_set_state") && plan.contains(&"tcp_receive_reset"));
        let plan = programs(&tracepoints(NO_BTF, CloseHook::Tracepoint, false, &[]));
        assert!(plan.contains(&"inet_sock_set_state") && plan.contains(&"tcp_receive_reset"));
    }

    #[test]
    fn release_programs_only_in_tracepoint_mode() {
        for hook in [CloseHook::Fentry, CloseHook::Kprobe] {
            let plan = programs(&tracepoints(BTF, hook, false, RAW_TRACEPOINTS));
            for program in RELEASE_TRACEPOINTS {
                assert!(!plan.contains(program), "{hook}: {program}");
            }
            assert!(plan.contains(&"sched_process_exit"), "{hook}: exits are always seen");
        }
        let plan = programs(&tracepoints(BTF, CloseHook::Tracepoint, false, RAW_TRACEPOINTS));
        for program in RELEASE_TRACEPOINTS {
            assert!(plan.contains(program), "{program}");
        }
    }

    #[test]
    fn connect_programs_only_without_saved_registers() {
        let plan = programs(&tracepoints(BTF, CloseHook::Fentry, false, RAW_TRACEPOINTS));
        assert!(!plan.contains(&"sys_enter_connect") && !plan.contains(&"sys_exit_connect"));
        let plan = programs(&tracepoints(OLD_BTF, CloseHook::Fentry, false, RAW_TRACEPOINTS));
        assert!(plan.contains(&"sys_enter_connect") && plan.contains(&"sys_exit_connect"));
    }

    #[test]
    fn forks_only_when_following() {
        let plan = programs(&tracepoints(BTF, CloseHook::Fentry, false, RAW_TRACEPOINTS));
        assert!(!plan.contains(&"sched_process_fork"));
        let plan = programs(&tracepoints(BTF, CloseHook::Fentry, true, RAW_TRACEPOINTS));
        assert!(plan.contains(&"sched_process_fork"));
    }

    #[test]
    fn plans_keep_the_attachment_order() {
        let plan = tracepoints(NO_BTF, CloseHook::Tracepoint, true, &[]);
        assert_eq!(plan, TRACEPOINTS, "nothing left out, nothing reordered");
    }

    #[test]
    fn auto_takes_the_best_hook_and_says_what_was_refused() {
        let (hook, note) = choose_close_hook(CloseHookChoice::Auto, |_| Ok(())).unwrap();
        assert_eq!((hook, note), (CloseHook::Fentry, None));
        let (hook, note) = choose_close_hook(CloseHookChoice::Auto, |hook| match hook {
            CloseHook::Fentry => Err("EPERM".to_owned()),
            _ => Ok(()),
        })
        .unwrap();
        assert_eq!(hook, CloseHook::Kprobe);
        assert_eq!(note.as_deref(), Some("close hook kprobe in use; fentry refused: EPERM"));
        let (hook, note) = choose_close_hook(CloseHookChoice::Auto, |hook| match hook {
            CloseHook::Tracepoint => Ok(()),
            other => Err(format!("no {other}")),
        })
        .unwrap();
        assert_eq!(hook, CloseHook::Tracepoint);
        assert_eq!(
            note.as_deref(),
            Some(
                "close hook tracepoint in use; fentry refused: no fentry; kprobe refused: no kprobe"
            )
        );
    }

    #[test]
    fn auto_without_any_hook_runs_without_releases() {
        let (hook, note) =
            choose_close_hook(CloseHookChoice::Auto, |_| Err("no".to_owned())).unwrap();
        assert_eq!(hook, CloseHook::Tracepoint);
        assert!(note.unwrap().ends_with("releases are not reported"));
    }

    #[test]
    fn an_explicit_hook_is_never_replaced() {
        let mut tried = Vec::new();
        let err = choose_close_hook(CloseHookChoice::Fentry, |hook| {
            tried.push(hook);
            Err("EPERM".to_owned())
        })
        .unwrap_err();
        assert_eq!(tried, [CloseHook::Fentry]);
        assert_eq!(err.to_string(), "close hook fentry is not available on this kernel: EPERM");
    }
}
