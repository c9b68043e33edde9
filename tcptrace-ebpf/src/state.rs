//! TCP state changes.
//!
//! `sock:inet_sock_set_state` (include/trace/events/sock.h, stable since 4.16): skaddr@8,
//! oldstate@16, newstate@20, sport@24, dport@26 (host order), family@28, protocol@30,
//! saddr@32, daddr@36, saddr_v6@40, daddr_v6@56. User space checks these offsets against
//! tracefs before loading.
//!
//! `tcp:tcp_receive_reset` (include/trace/events/tcp.h): skaddr@8.

use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use tcptrace_common::{
    CLOSE_HOOK_TRACEPOINT, FLAG_ADDRS, FLAG_OWNER_LOST, FLAG_RESET, KIND_CONNECT, KIND_STATE,
    RELEASE_EXIT, tcp_state::*,
};

use crate::{
    filter::{addr_matches, filters_process, process_matches},
    kernel::{AF_INET, IPPROTO_TCP, current_is_exiting},
    maps::{
        CONNECT_FD, LAST_RESET, OWNERS, close_hook, current_event, emit, remember_owner,
    },
    release::report_release,
};

#[tracepoint]
pub fn inet_sock_set_state(ctx: TracePointContext) -> u32 {
    let _ = try_inet_sock_set_state(&ctx);
    0
}

#[tracepoint]
pub fn tcp_receive_reset(ctx: TracePointContext) -> u32 {
    // SAFETY: offset from the tracepoint format (module docs).
    if let Ok(skaddr) = unsafe { ctx.read_at::<u64>(8) }
        && let Some(slot) = LAST_RESET.get_ptr_mut(0) {
            // SAFETY: per-CPU slot.
            unsafe { *slot = skaddr };
        }
    0
}

/// Whether this socket just received a RST on this CPU; consumes the mark.
#[inline(always)]
fn take_reset(skaddr: u64) -> bool {
    let Some(slot) = LAST_RESET.get_ptr_mut(0) else { return false };
    // SAFETY: per-CPU slot.
    unsafe {
        if *slot == skaddr {
            *slot = 0;
            return true;
        }
    }
    false
}

/// The changes `tcp_close()` makes itself (tcp_close_state() or an abort to CLOSE); a peer's FIN
/// or RST, the final ACK of LAST_ACK and TIME_WAIT entry make other changes or are flagged.
#[inline(always)]
fn is_close_style(old: u8, new: u8) -> bool {
    match (old, new) {
        (ESTABLISHED | SYN_RECV, FIN_WAIT1) => true,
        (CLOSE_WAIT, LAST_ACK) => true,
        (LAST_ACK, CLOSE) => false,
        (_, CLOSE) => true,
        _ => false,
    }
}

#[inline(always)]
fn try_inet_sock_set_state(ctx: &TracePointContext) -> Result<(), i32> {
    // SAFETY (all reads below): offsets from the tracepoint format (module docs).
    let protocol: u16 = unsafe { ctx.read_at(30)? };
    if protocol != IPPROTO_TCP {
        return Ok(());
    }
    let family: u16 = unsafe { ctx.read_at(28)? };
    let lport: u16 = unsafe { ctx.read_at(24)? };
    let rport: u16 = unsafe { ctx.read_at(26)? };
    if !addr_matches(family, lport, rport) {
        return Ok(());
    }
    let skaddr: u64 = unsafe { ctx.read_at(8)? };
    let old = unsafe { ctx.read_at::<i32>(16)? } as u8;
    let new = unsafe { ctx.read_at::<i32>(20)? } as u8;

    let mut event = current_event(KIND_STATE);
    event.skaddr = skaddr;
    event.old_state = old;
    event.new_state = new;
    event.family = family;
    event.lport = lport;
    event.rport = rport;
    event.flags = FLAG_ADDRS;
    if family == AF_INET {
        let saddr: [u8; 4] = unsafe { ctx.read_at(32)? };
        let daddr: [u8; 4] = unsafe { ctx.read_at(36)? };
        event.saddr[..4].copy_from_slice(&saddr);
        event.daddr[..4].copy_from_slice(&daddr);
    } else {
        event.saddr = unsafe { ctx.read_at(40)? };
        event.daddr = unsafe { ctx.read_at(56)? };
    }
    let reset = new == CLOSE && take_reset(skaddr);
    if reset {
        event.flags |= FLAG_RESET;
    }

    // connect() and listen() make these changes in the caller's thread: that is the owner.
    if old == CLOSE && (new == SYN_SENT || new == LISTEN) {
        if !process_matches(event.pid, &event.comm) {
            return Ok(());
        }
        if new == SYN_SENT {
            event.kind = KIND_CONNECT;
            // SAFETY: plain map read.
            event.fd = unsafe { CONNECT_FD.get(event.tid) }.copied().unwrap_or(-1);
        }
        event.owner_pid = event.pid;
        if !remember_owner(skaddr, event.pid, event.fd) {
            event.flags |= FLAG_OWNER_LOST;
        }
        emit(&event);
        return Ok(());
    }

    let owner = OWNERS.get_ptr_mut(skaddr);
    match owner {
        // SAFETY: a map value pointer is valid for the duration of the program.
        Some(owner) => unsafe {
            event.owner_pid = (*owner).pid;
            event.fd = (*owner).fd;
        },
        None if filters_process() => return Ok(()),
        None => {}
    }

    // Tracepoint mode, process exit: the exiting thread's tcp_close() makes a close-style change
    // on a socket its process owns. (close/dup2/dup3/close_range are caught at syscall entry.)
    if close_hook() == CLOSE_HOOK_TRACEPOINT
        && !reset
        && event.owner_pid == event.pid
        && is_close_style(old, new)
        && current_is_exiting()
    {
        report_release(skaddr, None, -1, RELEASE_EXIT);
    }

    // tcp_close_state() "moves" FIN_WAIT2, LAST_ACK, ... to the state they are in: no change.
    if old == new {
        return Ok(());
    }
    emit(&event);
    // The owner stays known until the socket is both closed and released, so a release after
    // the protocol close (a dead descriptor) is still attributed and passes the filters.
    if new == CLOSE {
        // SAFETY: as above; the pointer is not used after the removal.
        if owner.is_some_and(|o| unsafe { (*o).released } != 0) {
            let _ = OWNERS.remove(skaddr);
        }
    }
    Ok(())
}
