//! `cargo xtask bench`'s reference points, only with the `bench` feature: the floor
//! (`BENCH_FLOOR`: every program returns at once, the cost of the hooks themselves), the
//! minimum (`BENCH_MINIMUM`): the least per-connection work a tracer that matches opens to
//! closes can do, to measure what any such tracer costs on a kernel (its events carry the
//! socket, the states, the owner's pid and the time, nothing else), and the minimum kept in the
//! kernel (`BENCH_IN_KERNEL`): the same work with per-process counts in place of the records,
//! what a tracer that sends nothing per connection would cost.

use aya_ebpf::{
    EbpfContext, bindings::BPF_NOEXIST, macros::map, maps::HashMap,
    programs::tracing::StackIdContext,
};
use tcptrace_common::{
    BENCH_IN_KERNEL, BENCH_MINIMUM, BenchCounts, KIND_ACCEPT, KIND_CONNECT, KIND_STATE,
    tcp_state::*,
};

use crate::{
    kernel::{FdTable, socket_sock},
    maps::{OWNERS, ReadFailed, SETTINGS, add_one, emit, global, remember_owner, stamped_event},
    stacks::{KernelStack, capture},
};

/// tgid → its opens and its sockets' CLOSEs, counted by `BENCH_IN_KERNEL`.
#[map]
static BENCH_COUNTS: HashMap<u32, BenchCounts> = HashMap::with_max_entries(16384, 0);

/// The floor, the minimum or the minimum in the kernel: every hook returns at once (the
/// minimum's after their bit).
#[inline(always)]
pub fn active() -> bool {
    global!(SETTINGS.bench) != 0
}

/// The minimum (`BENCH_MINIMUM`) or the minimum in the kernel (`BENCH_IN_KERNEL`).
#[inline(always)]
pub fn minimum() -> bool {
    let bench = global!(SETTINGS.bench);
    bench == BENCH_MINIMUM || bench == BENCH_IN_KERNEL
}

#[inline(always)]
fn in_kernel() -> bool {
    global!(SETTINGS.bench) == BENCH_IN_KERNEL
}

/// A connect()'s open, in the caller's thread, or a socket's CLOSE.
#[inline(always)]
pub fn minimum_change<C: StackIdContext + EbpfContext>(ctx: &C, sk: u64, old: u8, new: u8) {
    if old == CLOSE && new == SYN_SENT {
        let pid = current_pid();
        let _ = remember_owner(sk, pid, -1);
        send(ctx, KIND_CONNECT, sk, old, new, pid);
    } else if new == CLOSE {
        // SAFETY: a plain map read; the entry is copied before its removal.
        let Some(owner_pid) = OWNERS.get_ptr_mut(sk).map(|owner| unsafe { (*owner).pid }) else {
            return;
        };
        let _ = OWNERS.remove(sk);
        if in_kernel() {
            tally(owner_pid, Tally::Close);
        } else {
            send(ctx, KIND_STATE, sk, old, new, 0);
        }
    }
}

/// An accept()'s new descriptor `fd`: the socket behind it.
#[inline(always)]
pub fn minimum_accept<C: StackIdContext + EbpfContext>(ctx: &C, fd: u32) -> Result<(), ReadFailed> {
    let Some(table) = FdTable::current()? else {
        return Ok(());
    };
    let Some(file) = table.file(fd)? else {
        return Ok(());
    };
    let Some(sk) = socket_sock(file)? else {
        return Ok(());
    };
    let pid = current_pid();
    let _ = remember_owner(sk, pid, fd as i32);
    send(ctx, KIND_ACCEPT, sk, ESTABLISHED, ESTABLISHED, pid);
    Ok(())
}

#[inline(always)]
fn current_pid() -> u32 {
    (aya_ebpf::helpers::bpf_get_current_pid_tgid() >> 32) as u32
}

/// An open (the minimum's record, or in the kernel its count and the stack `--stacks` asks for)
/// or the minimum's CLOSE record.
#[inline(always)]
fn send<C: StackIdContext + EbpfContext>(
    ctx: &C,
    kind: u8,
    sk: u64,
    old: u8,
    new: u8,
    owner_pid: u32,
) {
    let mut event = stamped_event(kind);
    if in_kernel() {
        // The stack id would be kept in the owner entry; the capture is the cost.
        capture(ctx, &mut event, KernelStack::Pointless);
        tally(owner_pid, Tally::Open);
        return;
    }
    event.skaddr = sk;
    event.old_state = old;
    event.new_state = new;
    event.owner_pid = owner_pid;
    emit(&event);
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Tally {
    Open,
    Close,
}

/// Counts an open or a CLOSE for process `pid`.
#[inline(always)]
fn tally(pid: u32, what: Tally) {
    if let Some(counts) = BENCH_COUNTS.get_ptr_mut(&pid) {
        // SAFETY: a valid, aligned map value; atomic because every CPU may count the process.
        unsafe {
            let slot = match what {
                Tally::Open => &raw mut (*counts).opens,
                Tally::Close => &raw mut (*counts).closes,
            };
            add_one(slot);
        }
        return;
    }
    let first = match what {
        Tally::Open => BenchCounts { opens: 1, closes: 0 },
        Tally::Close => BenchCounts { opens: 0, closes: 1 },
    };
    // Another CPU may have added the entry meanwhile: its count is lost, as in any first race
    // of a counter map, which a benchmark's totals can bear.
    let _ = BENCH_COUNTS.insert(&pid, &first, u64::from(BPF_NOEXIST));
}
