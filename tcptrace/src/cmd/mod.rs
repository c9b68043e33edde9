//! One module per command, each its entry point and nothing else: it turns the validated
//! options into a pipeline, runs it until the command's end, and hands the result to `render`.
//!
//! The top layer below `main`: it may import every other layer, and nothing imports it.

pub mod compare;
pub mod doctor;
pub mod generate;
pub mod leaks;
pub mod output;
pub mod run;
pub mod serve;
pub mod stop;
pub mod top;
pub mod trace;

/// Exit status when a budget is exceeded (`run`) or a metric regressed (`compare`), and the
/// command itself succeeded.
pub const EXIT_BUDGET: i32 = 3;
