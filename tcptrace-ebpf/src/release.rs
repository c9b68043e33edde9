//! Releases: the moment a process gives up its last descriptor, i.e. when the kernel runs
//! `tcp_close()`.
//!
//! Three ways to see it, chosen in user space (`--close-hook`):
//! - fentry on `tcp_close` (net/ipv4/tcp.c, `void tcp_close(struct sock *sk, long timeout)`,
//!   that signature since 2.6; fentry needs 5.5+ and trampolines the kernel allows),
//! - kprobe on the same function where trampolines are refused (its first argument, `sk`, in
//!   the first argument register),
//! - tracepoints only, from what `tcp_close()` leaves behind: every change it makes
//!   (`tcptrace_common::may_release`) runs in the releasing task while the socket's file is
//!   being released, which no other change does (`kernel::file_released`), so a program on
//!   the same tracepoint reports the release just before the change; a socket already in
//!   CLOSE changes nothing, and `tcp:tcp_destroy_sock`, which `tcp_close()` fires for it, is
//!   its release.
//!   Nothing runs per close(2) of the host, and dup2(), close_range(), exit and a descriptor
//!   inherited across fork() need nothing of their own: they all end in the file's release.

use aya_ebpf::{
    macros::{fentry, kprobe, raw_tracepoint},
    programs::{FEntryContext, ProbeContext, RawTracePointContext},
};
use tcptrace_common::{
    FLAG_ADDRS, KIND_RELEASE, RELEASE_CLOSE, RELEASE_EXIT, may_release, tcp_state::CLOSE,
};

use crate::{
    filter::{addr_matches, filters_process, process_matches},
    kernel::{SockInfo, current_is_exiting, file_released, sock_state},
    maps::{OWNERS, ReadFailed, current_event, emit, finish, lean, offsets_valid},
    state::StateArgs,
};

/// Reports that the current process released `sk`, in `state` if the caller knows it (read
/// here otherwise), for `reason`.
#[inline(always)]
fn report_release(sk: u64, state: Option<u8>, reason: u8) -> Result<(), ReadFailed> {
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
    let state = if owner.is_some() && lean() && offsets_valid() {
        // Lean mode: user space has an owned socket's endpoints (`Triage::addresses_known`).
        match state {
            Some(state) => state,
            None => sock_state(sk).unwrap_or_else(|e| {
                read = Err(e);
                0
            }),
        }
    } else {
        let info = if offsets_valid() {
            SockInfo::read(sk).unwrap_or_else(|e| {
                read = Err(e);
                None
            })
        } else {
            None
        };
        if let Some(info) = &info {
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
        // A caller's state (the one before the change it runs in) is what `info` holds too:
        // the tracepoint fires before the new state is stored.
        state.unwrap_or(info.map_or(0, |i| i.state))
    };
    event.old_state = state;
    event.new_state = state;
    event.skaddr = sk;
    event.reason = reason;
    event.owner_pid = owner_pid;
    event.fd = if owner_pid == event.pid { owner_fd } else { -1 };
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

/// `sk` is being released by the current task, in `state` if known. Deferred fput() runs
/// tcp_close() after the syscall returned, so the syscall that dropped the descriptor is no
/// longer known here; exit is (PF_EXITING). Unknown, it is a close.
#[inline(always)]
fn released_now(sk: u64, state: Option<u8>) -> Result<(), ReadFailed> {
    let exiting = current_is_exiting();
    let reason = if exiting.unwrap_or(false) { RELEASE_EXIT } else { RELEASE_CLOSE };
    report_release(sk, state, reason)?;
    exiting.map(|_| ())
}

/// Tracepoint mode's releases from state changes: attached to `inet_sock_set_state` before
/// the state programs, so the release goes out before the change that reveals it (fentry's
/// order), and only in tracepoint mode, so the other modes pay nothing for it. A program of
/// its own rather than a step of the state program: inlined there it took 6.1's stack limit
/// for a call chain (512 bytes, the interpreter walks' `bpf_loop` callbacks included) to 544,
/// and as a subprogram 6.1 refused the state program's BTF. The kernel skips a run of it only
/// when a change interrupts it on its CPU, which is a softirq's; `tcp_close()` runs in a task,
/// so nothing a skip could miss is a release (user space counts its skips as no loss).
#[raw_tracepoint(tracepoint = "inet_sock_set_state")]
pub fn inet_sock_set_state_release(ctx: RawTracePointContext) -> i32 {
    #[cfg(feature = "bench")]
    if crate::bench::active() {
        return 0;
    }
    let StateArgs { sk, old, new } = StateArgs::raw(&ctx);
    // Before any read: most changes are none of `tcp_close()`'s.
    if !may_release(old, new) {
        return 0;
    }
    finish(release_if_file_released(sk, old))
}

/// The release, if `tcp_close()` is making this change of `sk` from `old`.
#[inline(always)]
fn release_if_file_released(sk: u64, old: u8) -> Result<(), ReadFailed> {
    if !file_released(sk)? {
        return Ok(());
    }
    // The state is the one before the change: what fentry's release would read.
    released_now(sk, Some(old))
}

/// `tcp:tcp_destroy_sock` (include/trace/events/tcp.h, since 4.15), `TP_PROTO(struct sock
/// *sk)`: fired by `tcp_v4_destroy_sock()` (`tcp_v6_destroy_sock()` calls it), which
/// `tcp_close()` calls for a socket already in CLOSE (refused, reset, timed out). Only
/// attached in tracepoint mode. Also fired in softirq for every orphan that reaches CLOSE,
/// whose release was seen (its owner is gone or marked released): those end at the lookup, and
/// are the only runs the kernel can skip (one interrupting another on its CPU), so user space
/// counts its skips as no loss. A socket that still has a file is never destroyed, so an owner
/// not yet released here is released now.
#[raw_tracepoint(tracepoint = "tcp_destroy_sock")]
pub fn tcp_destroy_sock_raw(ctx: RawTracePointContext) -> i32 {
    #[cfg(feature = "bench")]
    if crate::bench::active() {
        return 0;
    }
    let sk: u64 = ctx.arg(0);
    match OWNERS.get_ptr(sk) {
        // SAFETY: a map value pointer is valid for the duration of the program.
        Some(owner) if unsafe { (*owner).released } == 0 => finish(released_now(sk, Some(CLOSE))),
        _ => 0,
    }
}

#[fentry(function = "tcp_close")]
pub fn tcp_close_fentry(ctx: FEntryContext) -> i32 {
    #[cfg(feature = "bench")]
    if crate::bench::active() {
        return 0;
    }
    finish(released_now(ctx.arg(0), None))
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
    finish(released_now(sk, None))
}
