//! Which captured user frames to believe, and whether a stack reached where it starts.
//!
//! The kernel walks a user stack by its frame pointers. Code built without them (Debian's
//! `python3`, most of glibc, C at `-O2`) leaves whatever its registers held in the chain, and
//! the walk goes on through it: return addresses in kernel space, offsets no file has. Such a
//! frame, and every frame outer of it (found through the same broken chain), is dropped: it is
//! never shown, and never named as an opening site. A stack whose frames never reach a start
//! (`main`, a thread's entry) was cut short, and reports say so (`stack_truncated`).

use super::is_main;
use crate::symbolize::Frame;

/// The end of user space on x86-64 and arm64 with 48-bit virtual addresses (Linux maps no
/// user memory above it unless a program asks for 5-level page tables by hinting `mmap`), and
/// so the bound of any file offset a frame can have.
pub const USER_END: u64 = 1 << 47;

/// Whether a raw return address can be one: neither 0 nor past user space.
pub fn plausible_address(addr: u64) -> bool {
    addr != 0 && addr < USER_END
}

/// Whether an offset the kernel placed in a file can be a code offset of it.
pub fn plausible_offset(offset: u64) -> bool {
    offset < USER_END
}

/// Whether a symbol is where a process's or a thread's stack starts: a `main` (C's, Rust's,
/// Go's), the C library's start-up, a thread's entry, Go's scheduler.
pub fn is_start(symbol: &str) -> bool {
    const STARTS: &[&str] = &[
        "_start",
        "__libc_start_main",
        "__libc_start_call_main",
        "start_thread",
        "clone",
        "clone3",
        "__clone",
        "__clone3",
        "thread_start",
        "runtime.goexit",
        "runtime.mstart",
    ];
    STARTS.contains(&symbol) || is_main(symbol)
}

/// Whether user frames (innermost first) were cut short: no frame is a start, or the kernel's
/// frame limit was reached.
pub fn truncated(user: &[Frame], at_limit: bool) -> bool {
    at_limit || !user.iter().any(|f| f.symbol.as_deref().is_some_and(is_start))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named(symbol: &str) -> Frame {
        Frame { symbol: Some(symbol.to_owned()), ..Frame::unknown(0x5555_0000_1000, None) }
    }

    #[test]
    fn kernel_and_null_addresses_are_not_return_addresses() {
        assert!(plausible_address(0x7f29_d094_55da));
        assert!(!plausible_address(0));
        assert!(!plausible_address(0xffff_ffff_ffc0_0000), "python3's bogus frame");
        assert!(!plausible_address(USER_END));
        assert!(plausible_offset(0x1_2345));
        assert!(!plausible_offset(0xffff_ffff_ffc0_0000));
    }

    #[test]
    fn a_stack_that_reaches_main_or_a_thread_start_is_whole() {
        let whole = [named("db_checkout"), named("handle_orders"), named("main")];
        assert!(!truncated(&whole, false));
        let thread = [named("leaky::worker"), named("start_thread"), named("clone3")];
        assert!(!truncated(&thread, false));
        assert!(!truncated(&[named("leaky::main")], false));
        assert!(!truncated(&[named("main.main")], false));
    }

    #[test]
    fn a_stack_that_stops_early_or_at_the_limit_is_cut_short() {
        let cut = [named("connect"), named("open_order_client")];
        assert!(truncated(&cut, false));
        assert!(truncated(&[Frame::unknown(0x5555_0000_1000, None)], false));
        assert!(truncated(&[], false));
        assert!(truncated(&[named("main")], true), "the kernel stopped at its frame limit");
        // A name that merely contains a start is not one.
        assert!(truncated(&[named("domain_lookup"), named("restart_thread_pool")], false));
    }
}
