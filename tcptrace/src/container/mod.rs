//! Containers: which container (or pod, or systemd service) a process runs in, from its cgroup.
//!
//! The kernel records the opener's cgroup id at connect, listen and accept; `resolver` turns
//! ids and pids into cgroup paths (`hierarchy`), paths into identities by the runtimes' own
//! naming patterns (`pattern`), and adds the names the runtimes keep in their local files
//! (`names`); `select` turns `--container` and `--cgroup` into the kernel filter's entries.
//! Everything here is local and bounded: no network, no daemon socket, nothing that can hang.
//!
//! Imported by `pipeline` (attribution), `analysis`, `render` and `top` (the identity in
//! reports), `inventory` (its filter) and `cli` (the filter flags); imports only
//! `tcptrace-common`.

mod hierarchy;
mod identity;
mod names;
mod pattern;
mod resolver;
mod select;

pub use hierarchy::{Hierarchy, level as cgroup_level, v2_path_of_pid as cgroup_v2_path_of_pid};
pub use identity::{Container, Runtime};
pub use names::Names;
pub use pattern::parse;
pub use resolver::{Cgroup, Resolver, serialize_container};
pub use select::{SelectError, select};

/// An empty directory of the tests' own, named after `name` and the test process.
#[cfg(test)]
fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("tcptrace-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a scratch directory");
    dir
}
