//! What a tracer's hooks cost every system call of every process, outside its programs: a
//! syscall tracepoint (any one, attached by anyone) sends every task's every system call
//! through the kernel's traced entry and exit, which `bpf_stats` does not see. Measured as the
//! time of `getppid(2)`, which no tracer here hooks, while the tracer is attached.

use std::time::{Duration, Instant};

/// How long one measurement calls `getppid` for: short beside a run, and bounded under
/// emulation too.
const SPAN: Duration = Duration::from_millis(200);
/// Calls per batch, each batch timed on its own.
const BATCH: u32 = 1_000;

/// ns of one `getppid(2)`, the cheapest system call there is: the least over batches of calls
/// in `SPAN`. Just after a run the kernel tears the run's namespace down on the same CPUs, so
/// a mean would count the time this thread waited or served interrupts; the least batch is
/// one they missed. (Wall time: this kernel's per-thread CPU clock moves in whole ticks.)
pub fn ns_per_call() -> f64 {
    let start = Instant::now();
    let mut least = f64::INFINITY;
    while start.elapsed() < SPAN {
        let batch = Instant::now();
        for _ in 0..BATCH {
            // SAFETY: getppid has no preconditions.
            std::hint::black_box(unsafe { libc::getppid() });
        }
        least = least.min(batch.elapsed().as_nanos() as f64 / f64::from(BATCH));
    }
    least
}
