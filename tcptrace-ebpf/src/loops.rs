//! Loops the verifier checks once. A bounded loop is verified iteration by iteration, each
//! time with every state the program reached before it; the interpreter walks (up to 256
//! Python threads, 32 frames) and close_range()'s scan made those iterations most of the time
//! tcptrace took to load, ten times that under the VM tier's emulation. `bpf_loop` (5.17+)
//! runs the body as a callback the verifier checks on its own, with the loop index as an
//! unknown scalar, so the body must bound what it indexes by itself. Where the kernel lacks
//! the helper (`KernelOffsets::has_loop` is 0) the same body runs unrolled: such kernels load
//! the same programs, only more slowly. The choice reads a frozen global, so the verifier
//! never sees the branch not taken.

use core::ffi::c_void;

use aya_ebpf::helpers::bpf_loop;

use crate::maps::{OFFSETS, global};

/// One iteration of a loop.
pub trait Body {
    /// Runs iteration `index` (0, 1, ...); `false` ends the loop. 64 bits wide, as the
    /// callback's register is: a bound checked on a 32-bit copy is lost on the verifier.
    fn step(&mut self, index: u64) -> bool;
}

/// Runs `body` for indexes `0..times` until it returns `false`; at most `MAX` times where
/// the loop is unrolled, `times` may be larger where it is not (`bpf_loop` caps it at 2^23).
#[inline(always)]
pub fn repeat<const MAX: u32, B: Body>(times: u32, body: &mut B) {
    if global!(OFFSETS.has_loop) != 0 {
        return each(times, body);
    }
    for index in 0..MAX {
        if index >= times || !body.step(u64::from(index)) {
            return;
        }
    }
}

/// Runs `body` for indexes `0..times` with `bpf_loop` alone, for the scans of tracepoint mode
/// (exit, close_range()), which has always needed it. Unlike `repeat`, the caller's
/// frame holds no unrolled copy of the body: the verifier limits a call chain's stack to 512
/// bytes, and counts the caller's frame together with the callback's.
#[inline(always)]
pub fn each<B: Body>(times: u32, body: &mut B) {
    // SAFETY: the callback is a static BPF subprogram and `body` outlives the call.
    unsafe { bpf_loop(times, callback::<B> as *mut c_void, (body as *mut B).cast(), 0) };
}

/// bpf_loop's callback: 0 goes on, 1 stops.
extern "C" fn callback<B: Body>(index: u64, body: *mut c_void) -> i64 {
    // SAFETY: bpf_loop passes back the pointer `each` gave it, to a live `B`.
    let body = unsafe { &mut *body.cast::<B>() };
    i64::from(!body.step(index))
}
