//! Taking over the terminal and, whatever happens, giving it back.
//!
//! Raw mode outlives the process: a tcptrace that exits or panics without restoring leaves the
//! user's shell without echo or line editing. So restoring is reachable from every exit path:
//! the guard's `Drop`, an explicit restore that reports errors, and a panic hook that runs before
//! the panic message is printed (in the alternate screen, the message would vanish with it).

use std::{
    io::{self, Write},
    sync::{
        Once,
        atomic::{AtomicBool, Ordering},
    },
};

use ratatui::crossterm::{
    cursor::Show,
    execute,
    terminal::{EnterAlternateScreen, LeaveAlternateScreen, disable_raw_mode, enable_raw_mode},
};

/// Whether the terminal is (possibly partly) taken over. Global because raw mode is a property of
/// the terminal, not of a value, and the panic hook has no value to look at.
static TAKEN: AtomicBool = AtomicBool::new(false);

/// Restores the terminal on drop; [`TerminalGuard::restore`] does it with errors reported.
#[derive(Debug)]
pub(crate) struct TerminalGuard(());

impl TerminalGuard {
    /// Enters raw mode and the alternate screen, and makes sure a panic restores them.
    pub(crate) fn take() -> io::Result<Self> {
        install_panic_hook();
        // Marked first: if entering fails halfway, restore() undoes the half that happened.
        TAKEN.store(true, Ordering::SeqCst);
        let entered = enable_raw_mode().and_then(|()| execute!(io::stdout(), EnterAlternateScreen));
        if let Err(e) = entered {
            let _ = restore();
            return Err(e);
        }
        Ok(TerminalGuard(()))
    }

    pub(crate) fn restore(self) -> io::Result<()> {
        restore()
    }
}

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        // Nowhere to report the error to, and the process is going on or going away anyway.
        let _ = restore();
    }
}

/// Leaves raw mode and the alternate screen and shows the cursor, if the terminal was taken;
/// otherwise does nothing, so calling it twice (drop after an explicit restore, the panic hook
/// after either) is harmless.
pub(crate) fn restore() -> io::Result<()> {
    if !TAKEN.swap(false, Ordering::SeqCst) {
        return Ok(());
    }
    // Both steps are tried even if the first fails: half a terminal back is better than none.
    // Raw mode goes first because it is the one that breaks the user's shell.
    let raw = disable_raw_mode();
    let screen = leave_screen(&mut io::stdout());
    raw.and(screen)
}

fn leave_screen(out: &mut impl Write) -> io::Result<()> {
    execute!(out, LeaveAlternateScreen, Show)
}

/// Chains [`restore`] in front of the current panic hook, once per process: the hook is a
/// no-op while the terminal is not taken, so it can stay installed after the TUI is gone.
fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        chain_panic_hook(|| {
            let _ = restore();
        })
    });
}

fn chain_panic_hook(before: fn()) {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        before();
        previous(info);
    }));
}

#[cfg(test)]
mod tests {
    use std::{panic, sync::Mutex};

    use super::*;

    #[test]
    fn restore_is_idempotent_and_harmless_when_not_taken() {
        // Never taken in tests: both calls are no-ops that succeed without writing to stdout.
        assert!(!TAKEN.load(Ordering::SeqCst));
        assert!(restore().is_ok());
        assert!(restore().is_ok());
        assert!(!TAKEN.load(Ordering::SeqCst));
        // Raw mode was never entered: disabling it is a no-op too (crossterm keeps no saved mode).
        assert!(disable_raw_mode().is_ok());
    }

    #[test]
    fn leaving_the_screen_also_shows_the_cursor() {
        let mut out = Vec::new();
        leave_screen(&mut out).expect("writes to a Vec");
        assert_eq!(out, b"\x1b[?1049l\x1b[?25h");
    }

    static CALLS: Mutex<Vec<&str>> = Mutex::new(Vec::new());

    fn record(call: &'static str) {
        CALLS.lock().unwrap_or_else(|e| e.into_inner()).push(call);
    }

    #[test]
    fn panic_hook_restores_before_the_previous_hook_prints() {
        let original = panic::take_hook();
        panic::set_hook(Box::new(|info| {
            if info.payload().downcast_ref::<&str>() == Some(&"top panic hook test") {
                record("previous hook");
            }
        }));
        chain_panic_hook(|| record("restore"));

        let caught = panic::catch_unwind(|| panic!("top panic hook test"));

        // Put the test harness's hook back before asserting, so a failure prints normally.
        let _chained = panic::take_hook();
        panic::set_hook(original);
        assert!(caught.is_err());
        let calls = CALLS.lock().unwrap_or_else(|e| e.into_inner()).clone();
        // Another test panicking meanwhile could add a "restore"; the order of ours is what counts.
        let last_two = &calls[calls.len().saturating_sub(2)..];
        assert_eq!(last_two, ["restore", "previous hook"], "{calls:?}");
    }
}
