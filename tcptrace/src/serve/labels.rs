//! The label sets of the per-process metric families, and the bound on how many there are.
//!
//! A Prometheus series is one label set of one family, and every series costs memory here and
//! in every Prometheus that scrapes this host, for as long as the series lives. Labels are
//! therefore only the process name and the container (never pids, ports, addresses or stacks:
//! those are unbounded), and the `(comm, container)` pairs admitted at once are bounded by
//! `--max-series` (in pairs: `metrics::SERIES_PER_OWNER` series each): a pair beyond the bound
//! is counted under `comm="other"`. Pairs that saw no count for a while leave (`expire`), so a
//! host whose containers are redeployed for weeks does not grow.

use std::collections::HashMap;

use prometheus_client::encoding::EncodeLabelSet;

use crate::container::{Cgroup, Container};

/// The process name every pair beyond the bound is counted under.
pub const OTHER: &str = "other";

/// Who a count belongs to, as Prometheus labels.
#[derive(Debug, Clone, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct Owner {
    pub comm: String,
    /// The container's name, else its short id; empty for the host.
    pub container: String,
}

impl Owner {
    pub fn new(comm: &str, cgroup: Option<&Cgroup>) -> Self {
        Self {
            comm: comm.to_owned(),
            container: cgroup.and_then(|c| c.container.as_ref()).map(label).unwrap_or_default(),
        }
    }

    fn other() -> Self {
        Self { comm: OTHER.to_owned(), container: String::new() }
    }
}

/// A container's label: what an operator calls it (the name), else the id as `podman ps` and
/// `docker ps` show it (12 hex digits).
fn label(container: &Container) -> String {
    match &container.name {
        Some(name) => name.clone(),
        None => container.id.chars().take(12).collect(),
    }
}

/// The pairs admitted, each with when it last counted.
#[derive(Debug)]
pub struct Owners {
    last_seen_ns: HashMap<Owner, u64>,
    max: usize,
    /// Counts and gauges attributed to `other` because the bound was reached.
    pub folded: u64,
}

impl Owners {
    /// At most `max` pairs, `other` included.
    pub fn new(max: usize) -> Self {
        Self { last_seen_ns: HashMap::new(), max: max.max(1), folded: 0 }
    }

    /// The pairs admitted at most.
    pub fn max(&self) -> usize {
        self.max
    }

    pub fn len(&self) -> usize {
        self.last_seen_ns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.last_seen_ns.is_empty()
    }

    /// The labels a count by `owner` at `now_ns` goes under: its own while there is room
    /// (one place is kept for `other`), else `other`.
    pub fn admit(&mut self, owner: Owner, now_ns: u64) -> Owner {
        // Known pairs (nearly every count) only have their time stamped: no clone per count.
        if let Some(seen) = self.last_seen_ns.get_mut(&owner) {
            *seen = now_ns;
            return owner;
        }
        let owner = if self.last_seen_ns.len() + 1 < self.max {
            owner
        } else {
            self.folded += 1;
            Owner::other()
        };
        self.last_seen_ns.insert(owner.clone(), now_ns);
        owner
    }

    /// Forgets the pairs that counted nothing since `before_ns`, and returns them so their
    /// series can be removed.
    pub fn expire(&mut self, before_ns: u64) -> Vec<Owner> {
        let gone: Vec<Owner> = self
            .last_seen_ns
            .iter()
            .filter(|&(_, &seen)| seen < before_ns)
            .map(|(owner, _)| owner.clone())
            .collect();
        for owner in &gone {
            self.last_seen_ns.remove(owner);
        }
        gone
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(comm: &str) -> Owner {
        Owner { comm: comm.to_owned(), container: String::new() }
    }

    #[test]
    fn pairs_beyond_the_bound_fold_into_other_and_are_counted() {
        let mut owners = Owners::new(3);
        assert_eq!(owners.max(), 3);
        assert_eq!(owners.admit(owner("a"), 1), owner("a"));
        assert_eq!(owners.admit(owner("b"), 1), owner("b"));
        // One place stays for `other`.
        assert_eq!(owners.admit(owner("c"), 1).comm, OTHER);
        assert_eq!(owners.admit(owner("d"), 1).comm, OTHER);
        // Admitted ones keep their labels.
        assert_eq!(owners.admit(owner("a"), 2), owner("a"));
        assert_eq!((owners.len(), owners.folded), (3, 2));
    }

    #[test]
    fn pairs_that_stop_counting_leave_and_make_room() {
        let mut owners = Owners::new(3);
        owners.admit(owner("a"), 10);
        owners.admit(owner("b"), 20);
        assert_eq!(owners.expire(15), vec![owner("a")]);
        assert_eq!(owners.admit(owner("c"), 30), owner("c"));
        assert_eq!(owners.len(), 2);
    }

    #[test]
    fn container_label_is_the_name_else_the_short_id() {
        let id = "4f0c3a9e1b2d".repeat(5) + "abcd";
        let mut container = Container::new(id, crate::container::Runtime::Podman);
        let cgroup = Cgroup { id: Some(7), path: "/x".into(), container: Some(container.clone()) };
        assert_eq!(Owner::new("nc", Some(&cgroup)).container, "4f0c3a9e1b2d");
        container.name = Some("web-1".into());
        let cgroup = Cgroup { container: Some(container), ..cgroup };
        assert_eq!(Owner::new("nc", Some(&cgroup)).container, "web-1");
        assert_eq!(Owner::new("nc", None).container, "");
    }
}
