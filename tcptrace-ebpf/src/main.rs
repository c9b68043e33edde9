//! tcptrace's kernel programs. One module per hook family; maps and globals live in `maps`.
//!
//! Every hook follows the same shape: a thin entry point that never fails, and a `try_` function
//! that returns early (`?`) when a read fails or the event is filtered out.
#![no_std]
#![no_main]
// `maps::count`'s atomic add.
#![allow(internal_features)]
#![feature(core_intrinsics)]

mod bench;
mod filter;
mod kernel;
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
