//! `--container` and `--cgroup`: the cgroups a user names, as the kernel filter's
//! `CgroupMatch`es (an id and its depth, so everything below the cgroup matches too).

use std::io;

use tcptrace_common::{CgroupMatch, MAX_FILTER_CGROUPS};

use super::{
    Container,
    hierarchy::{self, Hierarchy},
    names::Names,
    pattern,
};

#[derive(Debug, thiserror::Error)]
pub enum SelectError {
    #[error("--container and --cgroup need the cgroup v2 hierarchy, which is not mounted here")]
    NoHierarchy,
    #[error(
        "no running container matches {0:?} (an id, an id prefix or a name, as podman ps or docker ps show them)"
    )]
    UnknownContainer(String),
    #[error("{spec:?} matches {count} containers ({examples}); give more of the id")]
    Ambiguous { spec: String, count: usize, examples: String },
    #[error("--cgroup {path:?}: {source}")]
    NoCgroup { path: String, source: io::Error },
    #[error("at most {MAX_FILTER_CGROUPS} cgroups in all from --container and --cgroup")]
    TooMany,
}

/// A container found in the hierarchy: its outermost cgroup (processes may sit in cgroups
/// below it, which the filter's depth covers).
#[derive(Debug, Clone)]
pub struct Found {
    pub container: Container,
    pub path: String,
}

/// Every container (and systemd service) the hierarchy holds now, named where the runtimes'
/// files name them.
pub fn containers(hierarchy: &Hierarchy, names: &mut Names) -> Vec<Found> {
    let mut found: Vec<Found> = Vec::new();
    let mut paths: Vec<String> = hierarchy.walk().into_values().collect();
    // Shallow first, so a container's own directory is kept over the ones below it.
    paths.sort_by_key(|p| (hierarchy::level(p), p.clone()));
    for path in paths {
        let Some(mut container) = pattern::parse(&path) else { continue };
        if found.iter().any(|f| f.container.id == container.id) {
            continue;
        }
        names.fill(&mut container);
        found.push(Found { container, path });
    }
    found
}

/// The containers `spec` names: the one whose name or whole id it is, else those whose id
/// starts with it (one only: an ambiguous prefix is refused, as docker refuses it).
pub fn matching<'a>(spec: &str, found: &'a [Found]) -> Result<&'a Found, SelectError> {
    let exact = |f: &&Found| f.container.id == spec || f.container.name.as_deref() == Some(spec);
    if let Some(one) = found.iter().find(exact) {
        return Ok(one);
    }
    let prefixed: Vec<&Found> =
        found.iter().filter(|f| !spec.is_empty() && f.container.id.starts_with(spec)).collect();
    match prefixed.as_slice() {
        [] => Err(SelectError::UnknownContainer(spec.to_string())),
        [one] => Ok(one),
        many => Err(SelectError::Ambiguous {
            spec: spec.to_string(),
            count: many.len(),
            examples: many
                .iter()
                .take(3)
                .map(|f| f.container.short_id())
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

/// The filter entries for `containers` (ids, prefixes or names) and `cgroups` (paths relative
/// to the hierarchy or under its mount).
pub fn select(
    hierarchy: Option<&Hierarchy>,
    names: &mut Names,
    containers_wanted: &[String],
    cgroups: &[String],
) -> Result<Vec<CgroupMatch>, SelectError> {
    if containers_wanted.is_empty() && cgroups.is_empty() {
        return Ok(Vec::new());
    }
    let hierarchy = hierarchy.ok_or(SelectError::NoHierarchy)?;
    if containers_wanted.len() + cgroups.len() > MAX_FILTER_CGROUPS {
        return Err(SelectError::TooMany);
    }
    let mut selected = Vec::new();
    let found =
        if containers_wanted.is_empty() { Vec::new() } else { containers(hierarchy, names) };
    for spec in containers_wanted {
        let one = matching(spec, &found)?;
        selected.push(
            entry(hierarchy, &one.path)
                .map_err(|source| SelectError::NoCgroup { path: one.path.clone(), source })?,
        );
    }
    for path in cgroups {
        let relative = hierarchy.relative(&hierarchy.dir(path)).unwrap_or_else(|| path.clone());
        selected.push(
            entry(hierarchy, &relative)
                .map_err(|source| SelectError::NoCgroup { path: path.clone(), source })?,
        );
    }
    Ok(selected)
}

fn entry(hierarchy: &Hierarchy, path: &str) -> io::Result<CgroupMatch> {
    Ok(CgroupMatch { id: hierarchy.id_of(path)?, level: hierarchy::level(path), _pad0: 0 })
}

#[cfg(test)]
mod tests {
    use std::{fs, os::unix::fs::MetadataExt};

    use super::*;
    use crate::container::scratch;

    #[test]
    fn containers_are_selected_by_id_prefix_or_name_and_paths_by_cgroup() {
        let root = scratch("select");
        let (a, b) = ("a1".repeat(32), "a2".repeat(32));
        for id in [&a, &b] {
            fs::create_dir_all(root.join(format!("libpod_parent/libpod-{id}/inner"))).unwrap();
        }
        fs::create_dir_all(root.join("system.slice/redis.service")).unwrap();
        let storage = scratch("select-storage");
        fs::create_dir_all(storage.join("overlay-containers")).unwrap();
        fs::write(
            storage.join("overlay-containers/containers.json"),
            format!(r#"[{{"id":"{a}","names":["web"]}}]"#),
        )
        .unwrap();
        let mut names = Names::with_roots(storage, scratch("select-docker"));
        let h = Hierarchy::new(root.clone());
        let ino = |p: &str| fs::metadata(root.join(p)).unwrap().ino();

        let by_name = select(Some(&h), &mut names, &["web".into()], &[]).unwrap();
        assert_eq!(by_name[0].id, ino(&format!("libpod_parent/libpod-{a}")), "the outer cgroup");
        assert_eq!(by_name[0].level, 2);
        let by_prefix = select(Some(&h), &mut names, &["a2a2".into()], &[]).unwrap();
        assert_eq!(by_prefix[0].id, ino(&format!("libpod_parent/libpod-{b}")));
        let unit = select(Some(&h), &mut names, &["redis.service".into()], &[]).unwrap();
        assert_eq!(unit[0].level, 2);
        assert!(matches!(
            select(Some(&h), &mut names, &["a".into()], &[]),
            Err(SelectError::Ambiguous { count: 2, .. })
        ));
        assert!(matches!(
            select(Some(&h), &mut names, &["ffff".into()], &[]),
            Err(SelectError::UnknownContainer(_))
        ));
        let cgroup = select(Some(&h), &mut names, &[], &["/system.slice".into()]).unwrap();
        assert_eq!((cgroup[0].id, cgroup[0].level), (ino("system.slice"), 1));
        let absolute = root.join("system.slice").to_string_lossy().into_owned();
        assert_eq!(select(Some(&h), &mut names, &[], &[absolute]).unwrap(), cgroup);
        assert!(matches!(
            select(Some(&h), &mut names, &[], &["/nope".into()]),
            Err(SelectError::NoCgroup { .. })
        ));
        assert!(matches!(
            select(None, &mut names, &["web".into()], &[]),
            Err(SelectError::NoHierarchy)
        ));
        assert!(select(None, &mut names, &[], &[]).unwrap().is_empty(), "no filter, no need");
        let nine: Vec<String> = (0..9).map(|_| "web".to_string()).collect();
        assert!(matches!(select(Some(&h), &mut names, &nine, &[]), Err(SelectError::TooMany)));
        fs::remove_dir_all(root).unwrap();
    }
}
