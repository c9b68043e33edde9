//! Releases: the moment a process gives up its last descriptor, i.e. when the kernel runs
//! `tcp_close()`.
//!
//! Three ways to see it, chosen in user space (`--close-hook`):
//! - fentry on `tcp_close` (net/ipv4/tcp.c, `void tcp_close(struct sock *sk, long timeout)`,
//!   that signature since 2.6; fentry needs 5.5+ and trampolines the kernel allows),
//! - kprobe on the same function where trampolines are refused (its first argument, `sk`, in
//!   the first argument register),
//! - tracepoints only: close(2)/dup2/dup3/close_range at syscall entry when the file's reference
//!   count is 1 (`syscalls` module), and at exit a scan of the descriptor table (`process`
//!   module).

use aya_ebpf::{
    macros::{fentry, kprobe},
    programs::{FEntryContext, ProbeContext},
};
use tcptrace_common::{FLAG_ADDRS, KIND_RELEASE, RELEASE_CLOSE, RELEASE_EXIT, tcp_state::CLOSE};

use crate::{
    filter::{addr_matches, filters_process, process_matches},
    kernel::{FdTable, SockInfo, current_is_exiting, file_refs, sock_state, socket_sock},
    maps::{OWNERS, ReadFailed, current_event, emit, finish, lean, offsets_valid},
};

/// Reports that the current process released `sk`. `info` is read here when the caller has not
/// (`None`), which needs BTF offsets; without them the release carries no endpoints.
#[inline(always)]
pub fn report_release(
    sk: u64,
    info: Option<&SockInfo>,
    fd_hint: i32,
    reason: u8,
) -> Result<(), ReadFailed> {
    let mut event = current_event(KIND_RELEASE);
    let owner = OWNERS.get_ptr_mut(sk);
    let (owner_pid, owner_fd) = match owner {
        // SAFETY: a map value pointer is valid for the duration of the program.
        Some(owner) => unsafe {
            if (*owner).released != 0 {
                return Ok(());
            }
            ((*owner).pid, (*owner).fd)
        },
        None => (0, -1),
    };
    // With a process filter, owners are only remembered for matching processes.
    if filters_process() && owner.is_none() && !process_matches(event.pid, &event.comm) {
        return Ok(());
    }
    // A failed read is counted, but the release is still sent: with state 0 and without
    // endpoints, as when BTF offsets are missing, since user space knows the socket by its
    // address and a lost release would look like a leak.
    let mut read = Ok(());
    let state = if info.is_none() && owner.is_some() && lean() && offsets_valid() {
        // Lean mode: user space has an owned socket's endpoints (`Triage::addresses_known`).
        sock_state(sk).unwrap_or_else(|e| {
            read = Err(e);
            0
        })
    } else {
        let read_info;
        let info = match info {
            Some(info) => Some(info),
            None if offsets_valid() => {
                read_info = SockInfo::read(sk).unwrap_or_else(|e| {
                    read = Err(e);
                    None
                });
                read_info.as_ref()
            }
            None => None,
        };
        if let Some(info) = info {
            // A socket that reached CLOSE has lost its ports; an owner entry means it passed
            // the address filters when it was opened.
            if owner.is_none() && !addr_matches(info.family, info.lport, info.rport) {
                return read;
            }
            event.family = info.family;
            event.lport = info.lport;
            event.rport = info.rport;
            event.saddr = info.saddr;
            event.daddr = info.daddr;
            event.flags |= FLAG_ADDRS;
        }
        info.map_or(0, |i| i.state)
    };
    event.old_state = state;
    event.new_state = state;
    event.skaddr = sk;
    event.reason = reason;
    event.owner_pid = owner_pid;
    event.fd = if fd_hint >= 0 {
        fd_hint
    } else if owner_pid == event.pid {
        owner_fd
    } else {
        -1
    };
    emit(&event);
    if let Some(owner) = owner {
        if state == CLOSE {
            // Released after the protocol close (a dead descriptor): nothing more will come.
            let _ = OWNERS.remove(sk);
        } else {
            // SAFETY: as above.
            unsafe { (*owner).released = 1 };
        }
    }
    read
}

/// Tracepoint mode: reports a release if `fd` holds the last reference to a TCP socket.
/// `OWNED_FIRST`: look the socket up in the owner map before reading it (see below); close(2)
/// does, the per-descriptor loop of close_range(2) cannot afford the instructions (the
/// verifier refuses it, E2BIG).
#[inline(always)]
pub fn release_if_last<const OWNED_FIRST: bool>(
    table: &FdTable,
    fd: u32,
    reason: u8,
) -> Result<(), ReadFailed> {
    let Some(file) = table.file(fd)? else {
        return Ok(());
    };
    let Some(sk) = socket_sock(file)? else {
        return Ok(());
    };
    if file_refs(file)? != 1 {
        return Ok(());
    }
    // A socket with an owner is TCP (only TCP opens are remembered), and in lean mode user
    // space has its endpoints: `report_release` reads its state alone, where `SockInfo` is
    // seven reads. Any other socket must be read to tell whether it is TCP at all.
    if OWNED_FIRST && lean() && OWNERS.get_ptr(sk).is_some() {
        return report_release(sk, None, fd as i32, reason);
    }
    let Some(info) = SockInfo::read(sk)? else {
        return Ok(());
    };
    report_release(sk, Some(&info), fd as i32, reason)
}

#[inline(always)]
fn on_tcp_close(sk: u64) -> Result<(), ReadFailed> {
    // Deferred fput() runs tcp_close() after the syscall returned, so the syscall that dropped
    // the descriptor is no longer known here; exit is (PF_EXITING). Unknown, it is a close.
    let exiting = current_is_exiting();
    let reason = if exiting.unwrap_or(false) { RELEASE_EXIT } else { RELEASE_CLOSE };
    report_release(sk, None, -1, reason)?;
    exiting.map(|_| ())
}

#[fentry(function = "tcp_close")]
pub fn tcp_close_fentry(ctx: FEntryContext) -> i32 {
    #[cfg(feature = "bench")]
    if crate::bench::active() {
        return 0;
    }
    finish(on_tcp_close(ctx.arg(0)))
}

/// A kprobe's `sk`: the first argument register (`pt_regs.di` on x86-64), which aya reads for
/// the target architecture.
#[kprobe]
pub fn tcp_close_kprobe(ctx: ProbeContext) -> u32 {
    #[cfg(feature = "bench")]
    if crate::bench::active() {
        return 0;
    }
    let Some(sk) = ctx.arg::<u64>(0) else {
        // Reading a register of the context cannot fail on a supported architecture.
        return finish(Err(ReadFailed));
    };
    finish(on_tcp_close(sk))
}
