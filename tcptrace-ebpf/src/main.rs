//! tcptrace's kernel programs. One module per hook family; maps and globals live in `maps`.
//!
//! Every hook has the same shape: the entry point (named after `tcptrace_common::names`) hands
//! the `Result<(), ReadFailed>` of the function doing the work to `maps::finish`, which counts
//! a failed read in `COUNTER_READ_FAILED` and returns 0. In that work an expected "no" (the
//! change or descriptor is filtered out, not a TCP socket, no BTF offsets) returns `Ok` early,
//! often through an `Ok(None)` from the walk; only a read that failed is an `Err`. Each module
//! names the kernel function or tracepoint format, with its kernel version and source file,
//! that its hooks depend on.
//!
//! With the `bench` feature, `cargo xtask bench`'s floor and minimum (`bench` module) are
//! compiled in and checked first by every hook; without it the object has no trace of them.
#![no_std]
#![no_main]
#![expect(internal_features, reason = "maps::count's atomic add needs core_intrinsics")]
#![feature(core_intrinsics)]

#[cfg(feature = "bench")]
mod bench;
mod filter;
mod interp;
mod kernel;
mod loops;
mod maps;
mod nested;
mod process;
mod release;
mod stacks;
mod state;
mod syscalls;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

// bpf_probe_read_kernel and bpf_get_current_task are GPL-only helpers.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
