//! Syscall tracepoints that tie sockets to processes and descriptors.
//!
//! Formats (`syscalls:sys_enter_*`: arguments at 16, 24, 32 as 8-byte slots;
//! `syscalls:sys_exit_*`: `long ret` at 16), stable across kernels:
//! - connect(fd, ...): the descriptor, remembered until the syscall returns, because the
//!   `CLOSE -> SYN_SENT` change it causes runs in the calling thread; only attached where that
//!   change cannot read it from the caller's saved registers (`connect_fd`);
//! - accept/accept4 return: the new descriptor → file → socket → sock;
//! - close(fd), dup2/dup3(old, new), close_range(first, last, flags): in tracepoint mode, a
//!   release when the descriptor holds the file's last reference.

use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid, macros::tracepoint, programs::TracePointContext,
};
use tcptrace_common::{
    COUNTER_CTX_MAP_FULL, FLAG_ADDRS, FLAG_OWNER_LOST, KIND_ACCEPT, RELEASE_CLOSE,
    RELEASE_CLOSE_RANGE, RELEASE_DUP, tcp_state::CLOSE,
};

use crate::{
    bench::minimum_accept,
    filter::{addr_matches, process_matches},
    kernel::{FdTable, SockInfo, connect_fd_from_regs, socket_sock},
    maps::{
        CONNECT_FD, OFFSETS, bench_mode, count, current_event, emit, global, minimum,
        offsets_valid, remember_owner,
    },
    release::release_if_last,
    stacks::{KernelStack, capture},
};

/// include/uapi/linux/close_range.h: only marks descriptors close-on-exec.
const CLOSE_RANGE_CLOEXEC: u64 = 1 << 2;
/// How many descriptors of one close_range() call are checked (the verifier needs a bound).
const CLOSE_RANGE_SCAN: u32 = 64;

#[inline(always)]
fn arg(ctx: &TracePointContext, n: usize) -> Result<u64, i32> {
    // SAFETY: syscall arguments are 8-byte slots from offset 16.
    unsafe { ctx.read_at::<u64>(16 + 8 * n) }
}

#[inline(always)]
fn current_tid() -> u32 {
    bpf_get_current_pid_tgid() as u32
}

#[tracepoint]
pub fn sys_enter_connect(ctx: TracePointContext) -> u32 {
    if bench_mode() {
        return 0;
    }
    if let Ok(fd) = arg(&ctx, 0)
        && CONNECT_FD.insert(current_tid(), fd as i32, 0).is_err()
    {
        count(COUNTER_CTX_MAP_FULL);
    }
    0
}

/// The descriptor of the connect() thread `tid` is in, or -1: from its saved registers where
/// the kernel allows (no map, no syscall programs), else from `sys_enter_connect`'s map.
#[inline(always)]
pub fn connect_fd(tid: u32) -> i32 {
    if global!(OFFSETS.connect_regs) != 0 {
        return connect_fd_from_regs().unwrap_or(-1);
    }
    // SAFETY: plain map read.
    unsafe { CONNECT_FD.get(tid) }.copied().unwrap_or(-1)
}

#[tracepoint]
pub fn sys_exit_connect(_ctx: TracePointContext) -> u32 {
    if bench_mode() {
        return 0;
    }
    let _ = CONNECT_FD.remove(current_tid());
    0
}

#[tracepoint]
pub fn sys_exit_accept(ctx: TracePointContext) -> u32 {
    if bench_mode() {
        bench_accept(&ctx);
        return 0;
    }
    let _ = try_accept(&ctx);
    0
}

#[tracepoint]
pub fn sys_exit_accept4(ctx: TracePointContext) -> u32 {
    if bench_mode() {
        bench_accept(&ctx);
        return 0;
    }
    let _ = try_accept(&ctx);
    0
}

/// `cargo xtask bench`'s minimum; nothing for its floor.
#[inline(always)]
fn bench_accept(ctx: &TracePointContext) {
    if minimum()
        && offsets_valid()
        && let Ok(ret) = arg(ctx, 0)
        && (ret as i64) >= 0
    {
        let _ = minimum_accept(ret as u32);
    }
}

#[inline(always)]
fn try_accept(ctx: &TracePointContext) -> Result<(), i32> {
    let ret = arg(ctx, 0)? as i64;
    if ret < 0 {
        return Ok(());
    }
    let mut event = current_event(KIND_ACCEPT);
    if !process_matches(event.pid, &event.comm) {
        return Ok(());
    }
    event.fd = ret as i32;
    event.owner_pid = event.pid;
    capture(ctx, &mut event, KernelStack::Pointless);
    if !offsets_valid() {
        // Without BTF the descriptor cannot be tied to its sock: report what is known.
        emit(&event);
        return Ok(());
    }
    let file = FdTable::current()?.file(ret as u32)?;
    let sk = socket_sock(file)?;
    let info = SockInfo::read(sk)?;
    if !addr_matches(info.family, info.lport, info.rport) {
        return Ok(());
    }
    event.skaddr = sk;
    event.family = info.family;
    event.lport = info.lport;
    event.rport = info.rport;
    event.saddr = info.saddr;
    event.daddr = info.daddr;
    event.old_state = info.state;
    event.new_state = info.state;
    event.flags = FLAG_ADDRS;
    // A connection reset before accept() is already CLOSE: nothing will remove its owner.
    if info.state != CLOSE && !remember_owner(sk, event.pid, event.fd) {
        event.flags |= FLAG_OWNER_LOST;
    }
    emit(&event);
    Ok(())
}

#[inline(always)]
fn tracepoint_releases() -> bool {
    // User space attaches these programs in tracepoint mode only: no CONFIG lookup on every
    // close(2) of the host.
    offsets_valid()
}

#[tracepoint]
pub fn sys_enter_close(ctx: TracePointContext) -> u32 {
    if bench_mode() {
        return 0;
    }
    if tracepoint_releases()
        && let (Ok(fd), Ok(table)) = (arg(&ctx, 0), FdTable::current())
    {
        let _ = release_if_last(&table, fd as u32, RELEASE_CLOSE);
    }
    0
}

#[inline(always)]
fn on_dup(ctx: &TracePointContext) -> Result<(), i32> {
    let old = arg(ctx, 0)? as u32;
    let new = arg(ctx, 1)? as u32;
    if old != new {
        release_if_last(&FdTable::current()?, new, RELEASE_DUP)?;
    }
    Ok(())
}

#[tracepoint]
pub fn sys_enter_dup2(ctx: TracePointContext) -> u32 {
    if bench_mode() {
        return 0;
    }
    if tracepoint_releases() {
        let _ = on_dup(&ctx);
    }
    0
}

#[tracepoint]
pub fn sys_enter_dup3(ctx: TracePointContext) -> u32 {
    if bench_mode() {
        return 0;
    }
    if tracepoint_releases() {
        let _ = on_dup(&ctx);
    }
    0
}

#[tracepoint]
pub fn sys_enter_close_range(ctx: TracePointContext) -> u32 {
    if bench_mode() {
        return 0;
    }
    if tracepoint_releases() {
        let _ = on_close_range(&ctx);
    }
    0
}

#[inline(always)]
fn on_close_range(ctx: &TracePointContext) -> Result<(), i32> {
    let first = arg(ctx, 0)? as u32;
    let last = arg(ctx, 1)? as u32;
    if arg(ctx, 2)? & CLOSE_RANGE_CLOEXEC != 0 {
        return Ok(());
    }
    let table = FdTable::current()?;
    for i in 0..CLOSE_RANGE_SCAN {
        let fd = first.wrapping_add(i);
        if fd < first || fd > last {
            break;
        }
        let _ = release_if_last(&table, fd, RELEASE_CLOSE_RANGE);
    }
    Ok(())
}
