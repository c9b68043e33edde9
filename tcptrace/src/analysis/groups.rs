//! Findings grouped by (process, kind, open site): "412 connections unclosed, all opened at
//! `db::pool::checkout` ← `handlers::orders`" is one group, not 412 findings. Pure.

use std::{collections::HashMap, net::SocketAddr, sync::Arc, time::Duration};

use serde::Serialize;

use crate::{
    analysis::findings::{Finding, FindingKind},
    container::{Cgroup, serialize_container},
    stacks::{OpenStack, StackKey},
};

/// Remotes a group lists; the rest are only counted (`remotes_total`).
const MAX_REMOTES: usize = 16;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FindingGroup {
    pub kind: FindingKind,
    pub pid: u32,
    pub comm: String,
    /// The process's container.
    #[serde(rename = "container", serialize_with = "serialize_container")]
    pub cgroup: Option<Arc<Cgroup>>,
    /// Sockets the group stands for (TIME_WAIT entries for churn).
    pub count: u64,
    /// Findings in the group.
    pub findings: usize,
    #[serde(rename = "oldest_age_s", serialize_with = "opt_secs")]
    pub oldest_age: Option<Duration>,
    /// The remotes, most frequent first, at most 16.
    pub remotes: Vec<RemoteCount>,
    /// Distinct remotes, listed or not.
    pub remotes_total: usize,
    /// Descriptors of the group's sockets, lowest first.
    pub fds: Vec<i32>,
    /// The open site in one line (innermost own frame ← its caller); `null` without a stack.
    pub site: Option<String>,
    pub stack: Option<Arc<OpenStack>>,
    /// The stack stops before a `main` or a thread's start (see `Finding::stack_truncated`).
    pub stack_truncated: bool,
    /// Node ran the connect() on a later tick (see `Finding::connect_deferred`).
    pub connect_deferred: bool,
    pub explanation: &'static str,
    pub fix: &'static str,
    /// Index of the group's first finding in the slice it was grouped from.
    #[serde(skip)]
    pub first_finding: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RemoteCount {
    pub remote: SocketAddr,
    pub count: u64,
}

fn opt_secs<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_f64((d.as_secs_f64() * 1000.0).round() / 1000.0),
        None => s.serialize_none(),
    }
}

/// Findings of the same process and kind whose sockets were opened by the same stack (or that
/// all have none) form one group. Groups come by pid, then largest first.
pub fn group(findings: &[Finding]) -> Vec<FindingGroup> {
    type Key = (u32, FindingKind, Option<StackKey>);
    let mut index: HashMap<Key, usize> = HashMap::new();
    let mut groups: Vec<FindingGroup> = Vec::new();
    let mut remotes: Vec<HashMap<SocketAddr, u64>> = Vec::new();
    for (i, f) in findings.iter().enumerate() {
        let key = (f.pid, f.kind, f.stack.as_ref().map(|s| s.key));
        let at = *index.entry(key).or_insert_with(|| {
            groups.push(FindingGroup {
                kind: f.kind,
                pid: f.pid,
                comm: f.comm.clone(),
                cgroup: f.cgroup.clone(),
                count: 0,
                findings: 0,
                oldest_age: None,
                remotes: Vec::new(),
                remotes_total: 0,
                fds: Vec::new(),
                site: f.stack.as_ref().and_then(|s| s.site()),
                stack: f.stack.clone(),
                stack_truncated: f.stack.as_ref().is_some_and(|s| s.truncated),
                connect_deferred: f.stack.as_ref().is_some_and(|s| s.deferred()),
                explanation: f.kind.explanation(),
                fix: f.kind.fix(),
                first_finding: i,
            });
            remotes.push(HashMap::new());
            groups.len() - 1
        });
        let g = &mut groups[at];
        g.count += f.count;
        g.findings += 1;
        g.oldest_age = g.oldest_age.max(f.age);
        g.fds.extend(f.fd);
        if let Some(remote) = f.remote {
            *remotes[at].entry(remote).or_default() += f.count;
        }
    }
    for (g, remotes) in groups.iter_mut().zip(remotes) {
        g.fds.sort_unstable();
        g.remotes_total = remotes.len();
        let mut remotes: Vec<RemoteCount> =
            remotes.into_iter().map(|(remote, count)| RemoteCount { remote, count }).collect();
        remotes.sort_by(|a, b| b.count.cmp(&a.count).then(a.remote.cmp(&b.remote)));
        remotes.truncate(MAX_REMOTES);
        g.remotes = remotes;
    }
    groups.sort_by(|a, b| (a.pid, b.count, a.kind).cmp(&(b.pid, a.count, b.kind)));
    groups
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{event::TcpState, symbolize::Frame};

    fn stack(user_id: u32, function: &str) -> Arc<OpenStack> {
        Arc::new(OpenStack {
            key: StackKey::native(Some(user_id), None),
            frames: vec![Frame {
                addr: 0x5555_0000_1000 + u64::from(user_id),
                symbol: Some(function.to_owned()),
                file: Some("/src/leaky.c".to_owned()),
                line: Some(10 + user_id),
                module: Some("/tmp/leaky".to_owned()),
            }],
            truncated: false,
        })
    }

    fn finding(fd: i32, remote: &str, age_s: u64, stack: Option<Arc<OpenStack>>) -> Finding {
        Finding {
            fd: Some(fd),
            remote: Some(remote.parse().unwrap()),
            age: Some(Duration::from_secs(age_s)),
            stack,
            ..Finding::new(FindingKind::Unclosed, 7, "leaky".to_owned(), TcpState::Established)
        }
    }

    #[test]
    fn findings_are_grouped_by_open_site() {
        let orders = stack(1, "db_checkout");
        let cache = stack(2, "refresh_cache");
        let findings = [
            finding(5, "10.0.0.5:5432", 40, Some(orders.clone())),
            finding(6, "10.0.0.6:5432", 90, Some(orders.clone())),
            finding(7, "10.0.0.5:5432", 31, Some(orders)),
            finding(8, "10.0.0.7:6379", 50, Some(cache)),
            finding(9, "10.0.0.7:6379", 50, None),
        ];
        let groups = group(&findings);
        assert_eq!(groups.len(), 3, "{groups:#?}");
        let first = &groups[0];
        assert_eq!((first.count, first.findings, first.fds.as_slice()), (3, 3, &[5, 6, 7][..]));
        assert_eq!(first.oldest_age, Some(Duration::from_secs(90)));
        assert_eq!(first.site.as_deref(), Some("db_checkout (leaky.c:11)"));
        assert_eq!(first.remotes_total, 2);
        assert_eq!(
            first.remotes[0],
            RemoteCount { remote: "10.0.0.5:5432".parse().unwrap(), count: 2 }
        );
        let sites: Vec<_> = groups[1..].iter().map(|g| g.site.clone()).collect();
        assert!(sites.contains(&Some("refresh_cache (leaky.c:12)".to_owned())), "{sites:?}");
        assert!(sites.contains(&None), "a finding without a stack is its own group: {sites:?}");
    }

    #[test]
    fn kinds_and_processes_stay_apart() {
        let site = stack(1, "open_conn");
        let mut other_pid = finding(5, "10.0.0.5:5432", 40, Some(site.clone()));
        other_pid.pid = 8;
        let mut other_kind = finding(6, "10.0.0.5:5432", 40, Some(site.clone()));
        other_kind.kind = FindingKind::CloseWait;
        let groups = group(&[finding(4, "10.0.0.5:5432", 40, Some(site)), other_pid, other_kind]);
        assert_eq!(groups.len(), 3);
        assert!(groups.iter().all(|g| g.count == 1));
    }
}
