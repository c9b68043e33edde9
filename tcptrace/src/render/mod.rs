//! What users read: `trace`'s lines (text or JSON), the `leaks` report, `run`'s report and JUnit
//! file, `compare`'s tables.
//!
//! Turns analysis results into bytes; decides nothing. May import `analysis`, `pipeline`,
//! `stacks`, `container`, `event` and `kernel`'s plain types; imported by `cmd`.

pub mod compare;
pub mod report;
pub mod run_report;
pub mod trace;
