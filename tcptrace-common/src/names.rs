// No inner attributes or `use` here: the module doc is on its declaration in lib.rs.
//
// Every string below must equal the identifier of a `#[map]` static, a `#[no_mangle]` global or
// a program function in tcptrace-ebpf: aya names a map, a global or a program in the object
// after its Rust identifier, and a macro attribute cannot take its identifier from a constant.
// Renaming one side without the other compiles; user space's test that every name in `MAPS`,
// `GLOBALS` and `PROGRAMS` exists in the object catches it.

/// Ring buffer of every event (`RawEvent`, `RawExec`).
pub const EVENTS: &str = "EVENTS";
/// Per-CPU counters (`COUNTER_*`).
pub const COUNTERS: &str = "COUNTERS";
/// Runtime configuration (`CONFIG_*`).
pub const CONFIG: &str = "CONFIG";
/// skaddr → `Owner`.
pub const OWNERS: &str = "OWNERS";
/// The processes `tcptrace run` follows.
pub const FOLLOWED: &str = "FOLLOWED";
/// Build-id user stacks, by `RawEvent::user_stack`.
pub const USER_STACKS: &str = "USER_STACKS";
/// Address user stacks, the key of the build-id stack cache.
pub const USER_ADDR_STACKS: &str = "USER_ADDR_STACKS";
/// (address space, address stack) → build-id stack id.
pub const SITE_STACKS: &str = "SITE_STACKS";
/// Kernel stacks, by `RawEvent::kernel_stack`.
pub const STACKS: &str = "STACKS";
/// Thread id → the descriptor of its in-flight connect().
pub const CONNECT_FD: &str = "CONNECT_FD";
/// The last socket that received a RST, per CPU.
pub const LAST_RESET: &str = "LAST_RESET";
/// Per-CPU `StateMarks` of the nested state-change program.
pub const STATE_MARKS: &str = "STATE_MARKS";
/// tgid → `PyLayout` of the Python processes whose opens carry interpreter frames.
pub const PY_PROCS: &str = "PY_PROCS";
/// tgid → `FrameSlots` of the JVMs and Node.js processes whose opens carry their frames.
pub const FP_PROCS: &str = "FP_PROCS";
/// tgid → `BenchCounts`, in objects built for `cargo xtask bench` only (not in `MAPS`).
#[cfg(feature = "bench")]
pub const BENCH_COUNTS: &str = "BENCH_COUNTS";

/// Every map of the kernel object.
pub const MAPS: &[&str] = &[
    EVENTS,
    COUNTERS,
    CONFIG,
    OWNERS,
    FOLLOWED,
    USER_STACKS,
    USER_ADDR_STACKS,
    SITE_STACKS,
    STACKS,
    CONNECT_FD,
    LAST_RESET,
    STATE_MARKS,
    PY_PROCS,
    FP_PROCS,
];

/// Load-time global: `Filter`.
pub const FILTER: &str = "FILTER";
/// Load-time global: `KernelOffsets`.
pub const OFFSETS: &str = "OFFSETS";
/// Load-time global: `Settings`.
pub const SETTINGS: &str = "SETTINGS";

/// Every load-time global of the kernel object (`EbpfLoader::override_global`).
pub const GLOBALS: &[&str] = &[FILTER, OFFSETS, SETTINGS];

/// Tracepoint `sock:inet_sock_set_state` (the no-BTF fallback of the raw one).
pub const INET_SOCK_SET_STATE: &str = "inet_sock_set_state";
/// Raw tracepoint `inet_sock_set_state`.
pub const INET_SOCK_SET_STATE_RAW: &str = "inet_sock_set_state_raw";
/// Raw tracepoint `inet_sock_set_state`, attached after `INET_SOCK_SET_STATE_RAW`.
pub const INET_SOCK_SET_STATE_NESTED: &str = "inet_sock_set_state_nested";
/// Tracepoint `tcp:tcp_receive_reset`.
pub const TCP_RECEIVE_RESET: &str = "tcp_receive_reset";
/// Raw tracepoint `tcp_receive_reset`.
pub const TCP_RECEIVE_RESET_RAW: &str = "tcp_receive_reset_raw";
/// Tracepoint `syscalls:sys_enter_connect`.
pub const SYS_ENTER_CONNECT: &str = "sys_enter_connect";
/// Tracepoint `syscalls:sys_exit_connect`.
pub const SYS_EXIT_CONNECT: &str = "sys_exit_connect";
/// Tracepoint `syscalls:sys_exit_accept`.
pub const SYS_EXIT_ACCEPT: &str = "sys_exit_accept";
/// Tracepoint `syscalls:sys_exit_accept4`.
pub const SYS_EXIT_ACCEPT4: &str = "sys_exit_accept4";
/// Tracepoint `syscalls:sys_enter_close`.
pub const SYS_ENTER_CLOSE: &str = "sys_enter_close";
/// Tracepoint `syscalls:sys_enter_dup2`.
pub const SYS_ENTER_DUP2: &str = "sys_enter_dup2";
/// Tracepoint `syscalls:sys_enter_dup3`.
pub const SYS_ENTER_DUP3: &str = "sys_enter_dup3";
/// Tracepoint `syscalls:sys_enter_close_range`.
pub const SYS_ENTER_CLOSE_RANGE: &str = "sys_enter_close_range";
/// Tracepoint `sched:sched_process_exit`.
pub const SCHED_PROCESS_EXIT: &str = "sched_process_exit";
/// Tracepoint `sched:sched_process_fork`.
pub const SCHED_PROCESS_FORK: &str = "sched_process_fork";
/// Tracepoint `sched:sched_process_exec`.
pub const SCHED_PROCESS_EXEC: &str = "sched_process_exec";
/// fentry on `tcp_close`.
pub const TCP_CLOSE_FENTRY: &str = "tcp_close_fentry";
/// kprobe on `tcp_close`.
pub const TCP_CLOSE_KPROBE: &str = "tcp_close_kprobe";

/// Every program of the kernel object.
pub const PROGRAMS: &[&str] = &[
    INET_SOCK_SET_STATE,
    INET_SOCK_SET_STATE_RAW,
    INET_SOCK_SET_STATE_NESTED,
    TCP_RECEIVE_RESET,
    TCP_RECEIVE_RESET_RAW,
    SYS_ENTER_CONNECT,
    SYS_EXIT_CONNECT,
    SYS_EXIT_ACCEPT,
    SYS_EXIT_ACCEPT4,
    SYS_ENTER_CLOSE,
    SYS_ENTER_DUP2,
    SYS_ENTER_DUP3,
    SYS_ENTER_CLOSE_RANGE,
    SCHED_PROCESS_EXIT,
    SCHED_PROCESS_FORK,
    SCHED_PROCESS_EXEC,
    TCP_CLOSE_FENTRY,
    TCP_CLOSE_KPROBE,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_distinct_within_each_list() {
        for list in [MAPS, GLOBALS, PROGRAMS] {
            for (i, a) in list.iter().enumerate() {
                assert!(!list[i + 1..].contains(a), "{a} listed twice");
            }
        }
    }
}
