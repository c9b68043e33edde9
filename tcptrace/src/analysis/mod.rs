//! What the events mean: the lifecycle aggregator (`aggregate`: every socket's state, owner and
//! release; per-process counts and distributions; TIME_WAIT churn), leak `findings` and their
//! `groups`, `budgets` for `run`, the `compare` of two reports, and the host's ephemeral `ports`.
//!
//! Pure decision logic over the pipeline's records and the inventory's snapshots, unit-tested
//! without root. May import `pipeline` (its `Record`), `inventory`, `stacks`, `container`,
//! `event`; imported by `render`, `top` and `cmd`.

pub mod aggregate;
pub mod budgets;
pub mod compare;
pub mod findings;
pub mod groups;
pub mod ports;
