//! Every message tcptrace writes to stderr goes through here. A closed or broken stderr
//! (`tcptrace trace 2>&1 | head`) must not end the run: what it collected still goes to
//! stdout or its report files, so a failed write to stderr is dropped, never a panic (which
//! `eprintln!` does).
//!
//! A leaf module: imports nothing from the crate; every layer may use it.

use std::{
    fmt,
    io::{self, Write as _},
};

/// Writes one line to stderr, dropping it if stderr is gone.
pub fn line(args: fmt::Arguments<'_>) {
    let _ = writeln!(io::stderr().lock(), "{args}");
}

/// Writes to stderr without a newline (a progress line), dropping it if stderr is gone.
pub fn partial(args: fmt::Arguments<'_>) {
    let mut err = io::stderr().lock();
    let _ = err.write_fmt(args).and_then(|()| err.flush());
}

/// `eprintln!` that never panics: see the module docs.
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => { $crate::stdio::line(format_args!($($arg)*)) };
}

/// `eprint!` that never panics: see the module docs.
#[macro_export]
macro_rules! say_partial {
    ($($arg:tt)*) => { $crate::stdio::partial(format_args!($($arg)*)) };
}
