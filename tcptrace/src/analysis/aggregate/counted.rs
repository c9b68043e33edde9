//! The counts the aggregator adds to processes, one by one, for a caller that keeps running
//! totals of its own: `serve`'s Prometheus counters must only ever grow, while the aggregator
//! folds and forgets processes to stay bounded, so totals derived from it would fall.

use std::net::SocketAddr;

use super::Direction;

/// One count added to process `pid` (after the record was applied, so the process, or the
/// name it was folded into, is known to the aggregator).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counted {
    pub pid: u32,
    pub count: Count,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Count {
    /// A connect() or accept() (`Direction::Active` or `Passive`; listeners are not counted).
    Opened(Direction),
    /// The last descriptor of a connection was given up.
    Released,
    /// A socket it owned entered TIME_WAIT, toward `remote` when known.
    TimeWait { remote: Option<SocketAddr> },
    /// A connection it owned closed, this long after its open.
    Lifetime { ns: u64 },
}
