//! TCP state changes.
//!
//! `sock:inet_sock_set_state` (include/trace/events/sock.h, stable since 4.16): skaddr@8,
//! oldstate@16, newstate@20, sport@24, dport@26 (host order), family@28, protocol@30,
//! saddr@32, daddr@36, saddr_v6@40, daddr_v6@56. User space checks these offsets against
//! tracefs before loading.
//!
//! `tcp:tcp_receive_reset` (include/trace/events/tcp.h): skaddr@8.
//!
//! Each hook exists twice: as a raw tracepoint reading the `struct sock` through BTF offsets
//! (used whenever they are known) and as a classic tracepoint (the no-BTF fallback).

use core::ptr;

use aya_ebpf::{
    EbpfContext,
    macros::{raw_tracepoint, tracepoint},
    programs::{RawTracePointContext, TracePointContext, tracing::StackIdContext},
};
use tcptrace_common::{
    COUNTER_NESTED_CHANGES, FLAG_ADDRS, FLAG_OWNER_LOST, FLAG_RESET, KIND_CONNECT, KIND_STATE,
    Owner, RawEvent, tcp_state::*,
};

use crate::{
    bench::minimum_change,
    filter::{addr_matches, filters_process, process_matches},
    kernel::{AF_INET, IPPROTO_TCP, SockInfo},
    maps::{
        LAST_RESET, OWNERS, bench_mode, count, current_event, emit, lean, minimum, remember_owner,
        stamped_event,
    },
    nested::{ChangeId, first_runs, first_skipped},
    stacks::{KernelStack, capture},
    syscalls::connect_fd,
};

#[tracepoint]
pub fn inet_sock_set_state(ctx: TracePointContext) -> u32 {
    if bench_mode() {
        if minimum()
            && let Ok(StateArgs { sk, old, new }) = StateArgs::classic(&ctx)
        {
            minimum_change(sk, old, new);
        }
        return 0;
    }
    if let Ok(Some(change)) = Change::from_tracepoint(&ctx)
        && let Some(triage) = triage(change.skaddr, change.old, change.new)
    {
        let _ = on_change(&ctx, change, triage);
    }
    0
}

/// The same hook as a raw tracepoint (`TP_PROTO(const struct sock *sk, int oldstate, int
/// newstate)`). Preferred whenever BTF offsets are known: a classic tracepoint program is
/// skipped, uncounted, whenever any other kprobe/tracepoint program is running on the CPU (the
/// global `bpf_prog_active` guard), which a softirq state change hits often; a raw tracepoint is
/// only skipped when it re-enters itself, and `inet_sock_set_state_nested` catches that.
#[raw_tracepoint(tracepoint = "inet_sock_set_state")]
pub fn inet_sock_set_state_raw(ctx: RawTracePointContext) -> i32 {
    if bench_mode() {
        if minimum() {
            let StateArgs { sk, old, new } = StateArgs::raw(&ctx);
            minimum_change(sk, old, new);
        }
        return 0;
    }
    let args = StateArgs::raw(&ctx);
    first_runs(args.change_id());
    on_raw_change(&ctx, args);
    0
}

/// The second program on the hook: handles the changes the kernel skipped the first for (see
/// the `nested` module).
#[raw_tracepoint(tracepoint = "inet_sock_set_state")]
pub fn inet_sock_set_state_nested(ctx: RawTracePointContext) -> i32 {
    if bench_mode() {
        return 0;
    }
    let args = StateArgs::raw(&ctx);
    if first_skipped(args.change_id()) {
        count(COUNTER_NESTED_CHANGES);
        on_raw_change(&ctx, args);
    }
    0
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
    fn classic(ctx: &TracePointContext) -> Result<Self, i32> {
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
fn on_raw_change(ctx: &RawTracePointContext, StateArgs { sk, old, new }: StateArgs) {
    // Decided before the socket is read: on a churning host, most changes end here.
    let Some(triage) = triage(sk, old, new) else {
        return;
    };
    let change = if triage.addresses_known(old) {
        Ok(Some(Change::bare(sk, old, new)))
    } else {
        Change::from_sock(sk, old, new)
    };
    if let Ok(Some(change)) = change {
        let _ = on_change(ctx, change, triage);
    }
}

#[tracepoint]
pub fn tcp_receive_reset(ctx: TracePointContext) -> u32 {
    if bench_mode() {
        return 0;
    }
    // SAFETY: offset from the tracepoint format (module docs).
    if let Ok(skaddr) = unsafe { ctx.read_at::<u64>(8) } {
        mark_reset(skaddr);
    }
    0
}

/// `TP_PROTO(struct sock *sk)`; see `inet_sock_set_state_raw` for why raw is preferred.
#[raw_tracepoint(tracepoint = "tcp_receive_reset")]
pub fn tcp_receive_reset_raw(ctx: RawTracePointContext) -> i32 {
    if bench_mode() {
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
    fn from_tracepoint(ctx: &TracePointContext) -> Result<Option<Self>, i32> {
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

    #[inline(always)]
    fn from_sock(sk: u64, old: u8, new: u8) -> Result<Option<Self>, i32> {
        let info = SockInfo::read(sk)?;
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

/// What is known of a change before its socket is read. A struct with every field set on
/// every path, not an enum: LLVM spills the absent payload of an enum variant as an undefined
/// register, which the verifier rejects (`R0 !read_ok`).
#[derive(Clone, Copy)]
struct Triage {
    /// connect() or listen(), in the caller's thread.
    open: bool,
    /// The socket's owner; null when unknown (or `open`).
    owner: *mut Owner,
}

/// Whether a change is reported at all, decided from the states and the owner map alone.
#[inline(always)]
fn triage(skaddr: u64, old: u8, new: u8) -> Option<Triage> {
    // tcp_close_state() "moves" FIN_WAIT2, LAST_ACK, ... to the state they are in: no change.
    if old == new {
        return None;
    }
    if old == CLOSE && (new == SYN_SENT || new == LISTEN) {
        return Some(Triage { open: true, owner: ptr::null_mut() });
    }
    // Decided from the states alone, before the owner-map lookup.
    if lean() && !lifecycle_change(old, new) {
        return None;
    }
    let owner = OWNERS.get_ptr_mut(skaddr).unwrap_or(ptr::null_mut());
    if owner.is_null() && filters_process() {
        return None;
    }
    Some(Triage { open: false, owner })
}

/// The changes (other than opens) that lean mode sends: the protocol close (lifetime, TIME_WAIT
/// entry, a dead descriptor), the peer's close (CLOSE_WAIT), and a connect()'s outcome (its
/// local port, its latency). The rest follow a close() or shutdown() of the owner's, or a
/// listener child's handshake that accept() reports; the inventory sweeps show the states of
/// sockets still held.
#[inline(always)]
fn lifecycle_change(old: u8, new: u8) -> bool {
    new == CLOSE || new == CLOSE_WAIT || old == SYN_SENT
}

impl Triage {
    /// Whether user space already has this socket's endpoints, so they need not be read: in
    /// lean mode, a socket with an owner was reported with them by its connect(), listen() or
    /// accept(), except the local port of a connect(), assigned after `CLOSE -> SYN_SENT`
    /// and first read when it leaves SYN_SENT.
    #[inline(always)]
    fn addresses_known(&self, old: u8) -> bool {
        lean() && !self.owner.is_null() && old != SYN_SENT
    }
}

#[inline(always)]
fn on_change<C: StackIdContext + EbpfContext>(
    ctx: &C,
    change: Change,
    triage: Triage,
) -> Result<(), i32> {
    if triage.open {
        return on_open(ctx, change);
    }
    let owner = triage.owner;
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
fn on_open<C: StackIdContext + EbpfContext>(ctx: &C, change: Change) -> Result<(), i32> {
    let Change { skaddr, new, .. } = change;
    let mut event = current_event(KIND_STATE);
    if !process_matches(event.pid, &event.comm) {
        return Ok(());
    }
    change.describe(&mut event);
    if new == SYN_SENT {
        event.kind = KIND_CONNECT;
        capture(ctx, &mut event, KernelStack::Meaningful);
        event.fd = connect_fd(event.tid);
    }
    event.owner_pid = event.pid;
    if !remember_owner(skaddr, event.pid, event.fd) {
        event.flags |= FLAG_OWNER_LOST;
    }
    emit(&event);
    Ok(())
}
