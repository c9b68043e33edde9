//! The code path that opened a connection: user and kernel stacks captured at connect() and
//! accept(), in the opening thread, as ids into the `USER_STACKS` and `STACKS` maps
//! (`bpf_get_stackid`; `BPF_F_STACK_BUILD_ID` stacks since 4.17).

use core::ffi::c_void;

use aya_ebpf::{
    EbpfContext, bindings::BPF_F_USER_STACK, helpers::generated::bpf_get_stackid,
    programs::tracing::StackIdContext,
};
use tcptrace_common::{COUNTER_STACK_FAILED, RawEvent, STACKS_KERNEL, STACKS_USER};

use crate::{
    kernel::current_mm,
    maps::{
        SETTINGS, SITE_STACKS, STACKS, SiteKey, USER_ADDR_STACKS, USER_STACKS, count, finish,
        global,
    },
};

/// Whether a hook's kernel stack says anything: inside connect() it is the TCP connect path;
/// at accept()'s return the call is over (and syscall tracepoints hand the kernel user-mode
/// registers, so 6.1 captures nothing there).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum KernelStack {
    Meaningful,
    Pointless,
}

/// Fills `event`'s stack ids as `--stacks` asks; a failed capture is counted, not fatal.
#[inline(always)]
pub fn capture<C: StackIdContext + EbpfContext>(
    ctx: &C,
    event: &mut RawEvent,
    kernel: KernelStack,
) {
    let wanted = global!(SETTINGS.stacks);
    if wanted & STACKS_USER != 0 {
        match user_stack(ctx) {
            Some(id) => event.user_stack = id,
            None => count(COUNTER_STACK_FAILED),
        }
    }
    if wanted & STACKS_KERNEL != 0 && kernel == KernelStack::Meaningful {
        match ctx.get_stackid(&STACKS, 0) {
            Ok(id) => event.kernel_stack = id as i32,
            Err(_) => count(COUNTER_STACK_FAILED),
        }
    }
}

/// The build-id stack of the current user stack: looked up by its addresses when this address
/// space resolved it before, captured (and remembered) otherwise.
#[inline(always)]
fn user_stack<C: EbpfContext>(ctx: &C) -> Option<i32> {
    let mm = current_mm();
    // A failed read costs the cache only: the stack is still captured.
    finish::<u32>(mm.map(|_| ()));
    let Ok(Some(mm)) = mm else {
        return stack_id(ctx, USER_STACKS.as_ptr());
    };
    // A stack the address map cannot hold (full, or its hash bucket taken) is still captured.
    let Some(addr_stack) = stack_id(ctx, USER_ADDR_STACKS.as_ptr()) else {
        return stack_id(ctx, USER_STACKS.as_ptr());
    };
    let key = SiteKey { mm, addr_stack: addr_stack as u32, _pad0: 0 };
    // SAFETY: plain map read.
    if let Some(id) = unsafe { SITE_STACKS.get(&key) } {
        return Some(*id);
    }
    let id = stack_id(ctx, USER_STACKS.as_ptr())?;
    // LRU: an insert always finds room.
    let _ = SITE_STACKS.insert(&key, id, 0);
    Some(id)
}

/// `bpf_get_stackid` of the user stack into `map`.
#[inline(always)]
fn stack_id<C: EbpfContext>(ctx: &C, map: *mut c_void) -> Option<i32> {
    // SAFETY: a valid context and map; the helper checks everything else.
    let id = unsafe { bpf_get_stackid(ctx.as_ptr(), map, u64::from(BPF_F_USER_STACK)) };
    i32::try_from(id).ok().filter(|id| *id >= 0)
}
