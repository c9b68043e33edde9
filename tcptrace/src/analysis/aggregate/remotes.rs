//! Connections and TIME_WAIT entries per remote endpoint: which services a run talked to, and
//! how often (`tcptrace run --report`, `tcptrace compare`).

use std::{collections::hash_map::Entry, net::SocketAddr};

// foldhash, not SipHash: looked up at every connect and TIME_WAIT entry, on the event path.
use foldhash::HashMap;
use serde::Serialize;

/// Remotes counted at most; beyond, in `other`.
const MAX_REMOTES: usize = 65_536;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct RemoteStats {
    /// connect() calls toward it.
    pub connections: u64,
    pub time_wait_entries: u64,
}

#[derive(Debug, Default)]
pub struct Remotes {
    pub by_remote: HashMap<SocketAddr, RemoteStats>,
    /// What went to remotes beyond `MAX_REMOTES`.
    pub other: RemoteStats,
}

impl Remotes {
    fn stats(&mut self, remote: SocketAddr) -> &mut RemoteStats {
        // One lookup: a known remote, or room for a new one, or `other`.
        let full = self.by_remote.len() >= MAX_REMOTES;
        match self.by_remote.entry(remote) {
            Entry::Occupied(known) => known.into_mut(),
            Entry::Vacant(_) if full => &mut self.other,
            Entry::Vacant(new) => new.insert(RemoteStats::default()),
        }
    }

    pub fn connect(&mut self, remote: SocketAddr) {
        self.stats(remote).connections += 1;
    }

    pub fn time_wait(&mut self, remote: SocketAddr) {
        self.stats(remote).time_wait_entries += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_remote() {
        let mut remotes = Remotes::default();
        let db: SocketAddr = "10.0.0.5:5432".parse().unwrap();
        remotes.connect(db);
        remotes.connect(db);
        remotes.time_wait(db);
        assert_eq!(remotes.by_remote[&db], RemoteStats { connections: 2, time_wait_entries: 1 });
        assert_eq!(remotes.other, RemoteStats::default());
    }
}
