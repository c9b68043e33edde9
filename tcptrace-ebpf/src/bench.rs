//! `cargo xtask bench`'s reference points, only with the `bench` feature: the floor
//! (`BENCH_FLOOR`: every program returns at once, the cost of the hooks themselves) and the
//! minimum (`BENCH_MINIMUM`): the least per-connection work a tracer that matches opens to
//! closes can do, to measure what any such tracer costs on a kernel. Its events carry the
//! socket, the states, the owner's pid and the time, nothing else.

use tcptrace_common::{BENCH_MINIMUM, KIND_ACCEPT, KIND_CONNECT, KIND_STATE, tcp_state::*};

use crate::{
    kernel::{FdTable, socket_sock},
    maps::{OWNERS, ReadFailed, SETTINGS, emit, global, remember_owner, stamped_event},
};

/// The floor or the minimum: every hook returns at once (the minimum's after their bit).
#[inline(always)]
pub fn active() -> bool {
    global!(SETTINGS.bench) != 0
}

/// The minimum (`BENCH_MINIMUM`).
#[inline(always)]
pub fn minimum() -> bool {
    global!(SETTINGS.bench) == BENCH_MINIMUM
}

/// A connect()'s open, in the caller's thread, or a socket's CLOSE.
#[inline(always)]
pub fn minimum_change(sk: u64, old: u8, new: u8) {
    if old == CLOSE && new == SYN_SENT {
        let pid = current_pid();
        let _ = remember_owner(sk, pid, -1);
        send(KIND_CONNECT, sk, old, new, pid);
    } else if new == CLOSE && OWNERS.get_ptr_mut(sk).is_some() {
        let _ = OWNERS.remove(sk);
        send(KIND_STATE, sk, old, new, 0);
    }
}

/// An accept()'s new descriptor `fd`: the socket behind it.
#[inline(always)]
pub fn minimum_accept(fd: u32) -> Result<(), ReadFailed> {
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
    send(KIND_ACCEPT, sk, ESTABLISHED, ESTABLISHED, pid);
    Ok(())
}

#[inline(always)]
fn current_pid() -> u32 {
    (aya_ebpf::helpers::bpf_get_current_pid_tgid() >> 32) as u32
}

#[inline(always)]
fn send(kind: u8, sk: u64, old: u8, new: u8, owner_pid: u32) {
    let mut event = stamped_event(kind);
    event.skaddr = sk;
    event.old_state = old;
    event.new_state = new;
    event.owner_pid = owner_pid;
    emit(&event);
}
