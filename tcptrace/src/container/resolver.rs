//! Cgroup ids and pids → cgroup paths → containers, cached.
//!
//! An id the kernel recorded is looked up in a table of the hierarchy, walked again when an
//! unknown id appears (at most once a second: a host starting containers by the hundred does
//! not walk per container). A pid is placed by `/proc/<pid>/cgroup`, for the sockets the
//! inventory finds and on hosts whose kernel ids mean nothing. Every table is bounded, so a
//! host running containers for weeks keeps the memory it started with.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use foldhash::HashMap;

use super::{
    Container,
    hierarchy::{self, Hierarchy},
    names::Names,
    pattern,
};

/// The smallest time between two walks of the hierarchy.
const WALK_EVERY: Duration = Duration::from_secs(1);
/// Entries in each cache before it is emptied and filled again from what is live.
const CACHE_MAX: usize = 1 << 16;

/// Serializes a process's container (`null` when it has none, or its cgroup is unknown): the
/// reports' `container` fields.
pub fn serialize_container<S: serde::Serializer>(
    cgroup: &Option<Arc<Cgroup>>,
    s: S,
) -> Result<S::Ok, S::Error> {
    serde::Serialize::serialize(&cgroup.as_ref().and_then(|c| c.container.as_ref()), s)
}

/// One cgroup, as reports show it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Cgroup {
    /// The cgroup v2 id, when known.
    pub id: Option<u64>,
    /// Relative to the hierarchy's root (`/libpod_parent/libpod-…`).
    pub path: String,
    /// The container (or systemd service) the path names.
    pub container: Option<Container>,
}

pub struct Resolver {
    hierarchy: Option<Hierarchy>,
    names: Names,
    /// The last walk's table, id → path.
    paths: HashMap<u64, String>,
    last_walk: Option<Instant>,
    by_id: HashMap<u64, Arc<Cgroup>>,
    by_path: HashMap<String, Arc<Cgroup>>,
}

impl Resolver {
    pub fn new(hierarchy: Option<Hierarchy>, names: Names) -> Self {
        Self {
            hierarchy,
            names,
            paths: HashMap::default(),
            last_walk: None,
            by_id: HashMap::default(),
            by_path: HashMap::default(),
        }
    }

    /// This host's hierarchy (if any) and the runtimes' files at their usual places.
    pub fn for_host() -> Self {
        Self::new(Hierarchy::find(), Names::new())
    }

    /// The v2 hierarchy the kernel's ids are resolved in; `None` where none is mounted.
    pub fn hierarchy(&self) -> Option<&Hierarchy> {
        self.hierarchy.as_ref()
    }

    /// The cgroup whose id the kernel recorded; `None` when it is gone before it could be
    /// looked up (a container that lived less than the time to the next walk).
    pub fn by_id(&mut self, id: u64) -> Option<Arc<Cgroup>> {
        if let Some(known) = self.by_id.get(&id) {
            return Some(known.clone());
        }
        // An id not found is not remembered: the next walk may find it (ids are never reused,
        // and walks are at most one a second, so one that is gone costs no more than that).
        let path = self.path_of_id(id)?;
        let cgroup = self.by_path(path, Some(id));
        bounded_insert(&mut self.by_id, id, cgroup.clone());
        Some(cgroup)
    }

    /// Process `pid`'s cgroup, from `/proc`; `None` once it has exited.
    pub fn by_pid(&mut self, pid: u32) -> Option<Arc<Cgroup>> {
        let placed = hierarchy::of_pid(pid)?;
        let id = match &self.hierarchy {
            Some(h) if placed.v2 => h.id_of(&placed.path).ok(),
            _ => None,
        };
        Some(self.by_path(placed.path, id))
    }

    fn path_of_id(&mut self, id: u64) -> Option<String> {
        if let Some(path) = self.paths.get(&id) {
            return Some(path.clone());
        }
        if self.walked_recently() {
            return None;
        }
        let hierarchy = self.hierarchy.as_ref()?;
        self.paths = hierarchy.walk();
        self.last_walk = Some(Instant::now());
        self.paths.get(&id).cloned()
    }

    fn walked_recently(&self) -> bool {
        self.last_walk.is_some_and(|at| at.elapsed() < WALK_EVERY)
    }

    fn by_path(&mut self, path: String, id: Option<u64>) -> Arc<Cgroup> {
        if let Some(known) = self.by_path.get(&path)
            && (id.is_none() || known.id == id)
        {
            return known.clone();
        }
        let mut container = pattern::parse(&path);
        if let Some(container) = &mut container {
            self.names.fill(container);
        }
        let cgroup = Arc::new(Cgroup { id, path: path.clone(), container });
        bounded_insert(&mut self.by_path, path, cgroup.clone());
        cgroup
    }
}

fn bounded_insert<K: std::hash::Hash + Eq, V>(map: &mut HashMap<K, V>, key: K, value: V) {
    if map.len() >= CACHE_MAX {
        map.clear();
    }
    map.insert(key, value);
}

#[cfg(test)]
mod tests {
    use std::{fs, os::unix::fs::MetadataExt};

    use super::*;
    use crate::container::scratch;

    #[test]
    fn an_id_resolves_to_its_container_and_an_unknown_one_is_retried_after_a_walk() {
        let root = scratch("resolver");
        let id = "ab".repeat(32);
        let dir = root.join(format!("libpod_parent/libpod-{id}"));
        fs::create_dir_all(&dir).unwrap();
        let nowhere = scratch("resolver-names");
        let mut resolver = Resolver::new(
            Some(Hierarchy::new(root.clone())),
            Names::with_roots(nowhere.clone(), nowhere),
        );
        let ino = fs::metadata(&dir).unwrap().ino();
        let cgroup = resolver.by_id(ino).expect("found by the walk");
        assert_eq!(cgroup.path, format!("/libpod_parent/libpod-{id}"));
        assert_eq!(cgroup.id, Some(ino));
        let container = cgroup.container.as_ref().expect("podman's pattern");
        assert_eq!((container.id.as_str(), container.runtime.name()), (id.as_str(), "podman"));
        assert!(Arc::ptr_eq(&cgroup, &resolver.by_id(ino).unwrap()), "cached");

        // A cgroup made after the walk is found once a walk is due again.
        let later = root.join("system.slice/nginx.service");
        fs::create_dir_all(&later).unwrap();
        let later_ino = fs::metadata(&later).unwrap().ino();
        assert!(resolver.by_id(later_ino).is_none(), "no walk within a second");
        resolver.last_walk = None;
        let nginx = resolver.by_id(later_ino).expect("walked again");
        assert_eq!(nginx.container.as_ref().map(|c| c.id.as_str()), Some("nginx.service"));
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn no_hierarchy_resolves_no_id_but_pids_still_resolve() {
        let nowhere = scratch("resolver-none");
        let mut resolver = Resolver::new(None, Names::with_roots(nowhere.clone(), nowhere));
        assert!(resolver.hierarchy().is_none());
        assert!(resolver.by_id(1).is_none());
        let me = resolver.by_pid(std::process::id()).expect("this process is alive");
        assert_eq!(me.id, None);
        assert!(me.path.starts_with('/'));
        assert!(resolver.by_pid(u32::MAX).is_none(), "no such process");
    }
}
