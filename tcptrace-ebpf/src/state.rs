//! TCP state changes.
//!
//! `sock:inet_sock_set_state` (include/trace/events/sock.h, since 4.16; the fields below are
//! unchanged through 6.18): skaddr@8, oldstate@16, newstate@20, sport@24, dport@26 (host
//! order), family@28, protocol@30, saddr@32, daddr@36, saddr_v6@40, daddr_v6@56. User space
//! checks these offsets against tracefs before loading. Fired by `inet_sk_state_store()` and
//! `inet_sk_set_state()` (net/ipv4/af_inet.c) for every TCP state change, in whatever context
//! makes it (the caller's thread for connect(), listen() and close(), softirq for most others).
//!
//! `tcp:tcp_receive_reset` (include/trace/events/tcp.h, since 4.15): skaddr@8. Fired by
//! `tcp_reset()` (net/ipv4/tcp_input.c) just before it moves the socket to CLOSE.
//!
//! Each hook exists twice: as a raw tracepoint reading the `struct sock` through BTF offsets
//! (used whenever they are known; `TP_PROTO` arguments as declared in the same headers) and as
//! a classic tracepoint (the no-BTF fallback).

use core::ptr;

use aya_ebpf::{
    EbpfContext,
    macros::{raw_tracepoint, tracepoint},
    programs::{RawTracePointContext, TracePointContext, tracing::StackIdContext},
};
use tcptrace_common::{
    AF_INET, COUNTER_NESTED_CHANGES, ChangeId, FLAG_ADDRS, FLAG_OWNER_LOST, FLAG_RESET,
    IPPROTO_TCP, KIND_CONNECT, KIND_STATE, Owner, RawEvent, Triage, may_report, tcp_state::*,
};

#[cfg(feature = "bench")]
use crate::bench;
use crate::{
    filter::{addr_matches, filters_process, process_matches},
    interp::emit_open,
    kernel::SockInfo,
    maps::{
        LAST_RESET, OWNERS, ReadFailed, count, current_event, emit, finish, lean, opener_cgroup,
        remember_owner, stamped_event,
    },
    nested::{first_runs, first_skipped},
    stacks::{KernelStack, capture},
    syscalls::connect_fd,
};

#[tracepoint]
pub fn inet_sock_set_state(ctx: TracePointContext) -> u32 {
    #[cfg(feature = "bench")]
    if bench::active() {
        return finish(bench_classic_change(&ctx));
    }
    finish(try_inet_sock_set_state(&ctx))
}

#[inline(always)]
fn try_inet_sock_set_state(ctx: &TracePointContext) -> Result<(), ReadFailed> {
    let Some(change) = Change::from_tracepoint(ctx)? else {
        return Ok(());
    };
    let Some(kept) = triage(change.skaddr, change.old, change.new) else {
        return Ok(());
    };
    on_change(ctx, change, kept)
}

/// `cargo xtask bench`'s minimums on the classic tracepoint; nothing for its floor.
#[cfg(feature = "bench")]
#[inline(always)]
fn bench_classic_change(ctx: &TracePointContext) -> Result<(), ReadFailed> {
    if bench::minimum() {
        let StateArgs { sk, old, new } = StateArgs::classic(ctx)?;
        bench::minimum_change(ctx, sk, old, new);
    }
    Ok(())
}

/// The same hook as a raw tracepoint (`TP_PROTO(const struct sock *sk, int oldstate, int
/// newstate)`). Preferred whenever BTF offsets are known: a classic tracepoint program is
/// skipped, uncounted, whenever any other kprobe/tracepoint program is running on the CPU (the
/// global `bpf_prog_active` guard), which a softirq state change hits often; a raw tracepoint is
/// only skipped when it re-enters itself, and `inet_sock_set_state_nested` catches that.
#[raw_tracepoint(tracepoint = "inet_sock_set_state")]
pub fn inet_sock_set_state_raw(ctx: RawTracePointContext) -> i32 {
    let args = StateArgs::raw(&ctx);
    #[cfg(feature = "bench")]
    if bench::active() {
        if bench::minimum() {
            bench::minimum_change(&ctx, args.sk, args.old, args.new);
        }
        return 0;
    }
    // Before any map: most changes of a churning host end here (see `may_report`). The
    // nested program below decides the same first, so no mark is ever left for it to miss.
    if !may_report(args.old, args.new, lean()) {
        return 0;
    }
    first_runs(args.change_id());
    finish(on_raw_change(&ctx, args))
}

/// The second program on the hook: handles the changes the kernel skipped the first for (see
/// the `nested` module).
#[raw_tracepoint(tracepoint = "inet_sock_set_state")]
pub fn inet_sock_set_state_nested(ctx: RawTracePointContext) -> i32 {
    #[cfg(feature = "bench")]
    if bench::active() {
        return 0;
    }
    let args = StateArgs::raw(&ctx);
    if !may_report(args.old, args.new, lean()) || !first_skipped(args.change_id()) {
        return 0;
    }
    count(COUNTER_NESTED_CHANGES);
    finish(on_raw_change(&ctx, args))
}

/// The socket and its two states, as the tracepoint passes them.
#[derive(Clone, Copy)]
struct StateArgs {
    sk: u64,
    old: u8,
    new: u8,
}

impl StateArgs {
    #[inline(always)]
    fn raw(ctx: &RawTracePointContext) -> Self {
        Self { sk: ctx.arg(0), old: ctx.arg::<u64>(1) as u8, new: ctx.arg::<u64>(2) as u8 }
    }

    #[inline(always)]
    fn classic(ctx: &TracePointContext) -> Result<Self, ReadFailed> {
        // SAFETY (all reads): offsets from the tracepoint format (module docs).
        Ok(Self {
            sk: unsafe { ctx.read_at(8)? },
            old: unsafe { ctx.read_at::<i32>(16)? } as u8,
            new: unsafe { ctx.read_at::<i32>(20)? } as u8,
        })
    }

    #[inline(always)]
    fn change_id(self) -> ChangeId {
        ChangeId::new(self.sk, self.old, self.new)
    }
}

#[inline(always)]
fn on_raw_change(
    ctx: &RawTracePointContext,
    StateArgs { sk, old, new }: StateArgs,
) -> Result<(), ReadFailed> {
    // Decided before the socket is read: on a churning host, most changes end here.
    let Some(kept) = triage(sk, old, new) else {
        return Ok(());
    };
    let change = if kept.triage.addresses_known(old, lean()) {
        Change::bare(sk, old, new)
    } else {
        let Some(change) = Change::from_sock(sk, old, new)? else {
            return Ok(());
        };
        change
    };
    on_change(ctx, change, kept)
}

#[tracepoint]
pub fn tcp_receive_reset(ctx: TracePointContext) -> u32 {
    #[cfg(feature = "bench")]
    if bench::active() {
        return 0;
    }
    // SAFETY: offset from the tracepoint format (module docs).
    finish(unsafe { ctx.read_at::<u64>(8) }.map(mark_reset).map_err(ReadFailed::from))
}

/// `TP_PROTO(struct sock *sk)`; see `inet_sock_set_state_raw` for why raw is preferred.
#[raw_tracepoint(tracepoint = "tcp_receive_reset")]
pub fn tcp_receive_reset_raw(ctx: RawTracePointContext) -> i32 {
    #[cfg(feature = "bench")]
    if bench::active() {
        return 0;
    }
    mark_reset(ctx.arg(0));
    0
}

#[inline(always)]
fn mark_reset(skaddr: u64) {
    if let Some(slot) = LAST_RESET.get_ptr_mut(0) {
        // SAFETY: per-CPU slot.
        unsafe { *slot = skaddr };
    }
}

/// One TCP state change, whichever hook saw it.
#[derive(Clone, Copy)]
struct Change {
    skaddr: u64,
    old: u8,
    new: u8,
    family: u16,
    lport: u16,
    rport: u16,
    saddr: [u8; 16],
    daddr: [u8; 16],
    /// `FLAG_ADDRS` when the endpoints above were read.
    flags: u16,
}

impl Change {
    /// Writes the socket, the states and the endpoints into `event`.
    #[inline(always)]
    fn describe(&self, event: &mut RawEvent) {
        let Self { skaddr, old, new, family, lport, rport, saddr, daddr, flags } = *self;
        event.skaddr = skaddr;
        event.old_state = old;
        event.new_state = new;
        event.family = family;
        event.lport = lport;
        event.rport = rport;
        event.saddr = saddr;
        event.daddr = daddr;
        event.flags = flags;
    }

    /// The socket and its states only (see `Triage::addresses_known`).
    #[inline(always)]
    fn bare(skaddr: u64, old: u8, new: u8) -> Self {
        Self {
            skaddr,
            old,
            new,
            family: 0,
            lport: 0,
            rport: 0,
            saddr: [0; 16],
            daddr: [0; 16],
            flags: 0,
        }
    }

    /// None when the socket is not TCP or the address filters reject it.
    #[inline(always)]
    fn from_tracepoint(ctx: &TracePointContext) -> Result<Option<Self>, ReadFailed> {
        // SAFETY (all reads below): offsets from the tracepoint format (module docs).
        let protocol: u16 = unsafe { ctx.read_at(30)? };
        if protocol != IPPROTO_TCP {
            return Ok(None);
        }
        let family: u16 = unsafe { ctx.read_at(28)? };
        let lport: u16 = unsafe { ctx.read_at(24)? };
        let rport: u16 = unsafe { ctx.read_at(26)? };
        if !addr_matches(family, lport, rport) {
            return Ok(None);
        }
        let mut saddr = [0u8; 16];
        let mut daddr = [0u8; 16];
        if family == AF_INET {
            let s: [u8; 4] = unsafe { ctx.read_at(32)? };
            let d: [u8; 4] = unsafe { ctx.read_at(36)? };
            saddr[..4].copy_from_slice(&s);
            daddr[..4].copy_from_slice(&d);
        } else {
            saddr = unsafe { ctx.read_at(40)? };
            daddr = unsafe { ctx.read_at(56)? };
        }
        let StateArgs { sk, old, new } = StateArgs::classic(ctx)?;
        Ok(Some(Self {
            skaddr: sk,
            old,
            new,
            family,
            lport,
            rport,
            saddr,
            daddr,
            flags: FLAG_ADDRS,
        }))
    }

    /// None when the socket is not an IPv4/IPv6 TCP socket or the address filters reject it.
    #[inline(always)]
    fn from_sock(sk: u64, old: u8, new: u8) -> Result<Option<Self>, ReadFailed> {
        let Some(info) = SockInfo::read(sk)? else {
            return Ok(None);
        };
        if !addr_matches(info.family, info.lport, info.rport) {
            return Ok(None);
        }
        Ok(Some(Self {
            skaddr: sk,
            old,
            new,
            family: info.family,
            lport: info.lport,
            rport: info.rport,
            saddr: info.saddr,
            daddr: info.daddr,
            flags: FLAG_ADDRS,
        }))
    }
}

/// Whether this socket just received a RST on this CPU; consumes the mark.
#[inline(always)]
fn take_reset(skaddr: u64) -> bool {
    let Some(slot) = LAST_RESET.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: per-CPU slot.
    unsafe {
        if *slot == skaddr {
            *slot = 0;
            return true;
        }
    }
    false
}

/// A change `triage` kept, and its owner. A struct with every field set on every path, the
/// owner a pointer that may be null, not an `Option`: LLVM spills the absent payload of an
/// enum variant as an undefined register, which the verifier rejects (`R0 !read_ok`).
#[derive(Clone, Copy)]
struct Kept {
    /// `Open`, `Owned` or `Unowned`.
    triage: Triage,
    /// The socket's owner; null when unknown (or `Open`).
    owner: *mut Owner,
}

/// Whether a change is reported at all (`tcptrace_common::triage`), decided from the states
/// and the owner map alone.
#[inline(always)]
fn triage(skaddr: u64, old: u8, new: u8) -> Option<Kept> {
    let mut owner = ptr::null_mut();
    let triage = tcptrace_common::triage(old, new, lean(), filters_process(), || {
        owner = OWNERS.get_ptr_mut(skaddr).unwrap_or(ptr::null_mut());
        !owner.is_null()
    });
    if triage == Triage::Skip { None } else { Some(Kept { triage, owner }) }
}

#[inline(always)]
fn on_change<C: StackIdContext + EbpfContext>(
    ctx: &C,
    change: Change,
    kept: Kept,
) -> Result<(), ReadFailed> {
    if kept.triage == Triage::Open {
        return on_open(ctx, change);
    }
    let owner = kept.owner;
    let Change { skaddr, new, .. } = change;
    // Softirq context, mostly: the interrupted task is nobody's business, so its pid and comm
    // are not read; user space shows the owner.
    let mut event = stamped_event(KIND_STATE);
    change.describe(&mut event);
    if new == CLOSE && take_reset(skaddr) {
        event.flags |= FLAG_RESET;
    }
    if !owner.is_null() {
        // SAFETY: a map value pointer is valid for the duration of the program.
        unsafe {
            event.owner_pid = (*owner).pid;
            event.fd = (*owner).fd;
        }
    }
    emit(&event);
    // The owner stays known until the socket is both closed and released, so a release after
    // the protocol close (a dead descriptor) is still attributed and passes the filters.
    if new == CLOSE {
        // SAFETY: as above; the pointer is not used after the removal.
        if !owner.is_null() && unsafe { (*owner).released } != 0 {
            let _ = OWNERS.remove(skaddr);
        }
    }
    Ok(())
}

/// connect() and listen() make their changes in the caller's thread: that is the owner.
#[inline(always)]
fn on_open<C: StackIdContext + EbpfContext>(ctx: &C, change: Change) -> Result<(), ReadFailed> {
    let Change { skaddr, new, .. } = change;
    let mut event = current_event(KIND_STATE);
    if !process_matches(event.pid, &event.comm) {
        return Ok(());
    }
    change.describe(&mut event);
    // A connect() whose descriptor could not be read is still reported, with fd -1.
    let mut read = Ok(());
    if new == SYN_SENT {
        event.kind = KIND_CONNECT;
        capture(ctx, &mut event, KernelStack::Meaningful);
        event.fd = connect_fd(event.tid).unwrap_or_else(|e| {
            read = Err(e);
            -1
        });
    }
    event.owner_pid = event.pid;
    event.cgroup_id = opener_cgroup();
    if !remember_owner(skaddr, event.pid, event.fd) {
        event.flags |= FLAG_OWNER_LOST;
    }
    if new == SYN_SENT {
        emit_open(&event)
    } else {
        emit(&event)
    }
    read
}
