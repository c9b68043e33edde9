//! A process's container (or systemd service), from its cgroup path alone. Pure: no I/O.
//!
//! The runtimes name the cgroups they create after the container id, in one of two shapes
//! depending on the cgroup driver:
//!
//! | runtime | systemd driver | cgroupfs driver |
//! |---|---|---|
//! | docker | `docker-<id>.scope` | `/docker/<id>` |
//! | podman | `libpod-<id>.scope` (under `machine.slice` or the user's `user.slice`) | `/libpod_parent/libpod-<id>` |
//! | containerd (CRI) | `cri-containerd-<id>.scope` | `<id>` directly under the pod's cgroup |
//! | cri-o | `crio-<id>.scope` | `crio-<id>` |
//! | nerdctl | `nerdctl-<id>.scope` | — |
//!
//! Kubernetes puts containers under `kubepods[/<qos>]/pod<uid>` (cgroupfs) or
//! `kubepods.slice/kubepods-<qos>.slice/kubepods-<qos>-pod<uid>.slice` (systemd, with the
//! uid's dashes written as `_` because `-` is systemd's slice separator); Guaranteed pods have
//! no QoS level of their own.
//!
//! Decisions:
//! - The innermost container component wins (docker-in-docker, nested podman), and whatever a
//!   container creates below its own cgroup (podman's `container` child with `--cgroups=split`,
//!   a systemd running inside it) still belongs to it.
//! - A bare 64-hex directory under a Kubernetes pod does not say which runtime made it; it is
//!   reported as containerd, the CRI runtime of nearly every cluster since dockershim's removal
//!   (Kubernetes 1.24). CRI-O and the systemd driver both name their runtime in the path.
//! - `libpod-conmon-<id>.scope` and `crio-conmon-<id>.scope` hold conmon, the runtime's monitor:
//!   no container is attributed for them (an enclosing container, if any, still is).
//! - A pod's own cgroup with no container leaf is `None`: there is no container id to give. The
//!   pause (sandbox) container is a container leaf like any other and is reported with its id;
//!   its path cannot tell it apart.
//! - A systemd service is reported only when no container encloses the process, and only for
//!   system units: `user@<uid>.service` is a user's manager, and units below it are a user's
//!   own (their names would be mistaken for system ones), so both are `None`.
//! - `..` components (paths seen from inside another cgroup namespace) are skipped like any
//!   other unknown component, so the container leaf is still found.

use super::identity::{Container, Runtime, is_full_id};

/// The prefixes of the runtimes' container cgroups (`<prefix><id>[.scope]`).
const SCOPE_PREFIXES: [(&str, Runtime); 5] = [
    ("cri-containerd-", Runtime::Containerd),
    ("nerdctl-", Runtime::Containerd),
    ("docker-", Runtime::Docker),
    ("libpod-", Runtime::Podman),
    ("crio-", Runtime::CriO),
];

/// Longest systemd unit name (`UNIT_NAME_MAX` in systemd's unit-name.h).
const UNIT_NAME_MAX: usize = 255;

/// What one path component is.
#[derive(Debug, PartialEq, Eq)]
enum Component<'a> {
    Container(&'a str, Runtime),
    /// `kubepods` itself (cgroupfs), or a kubepods slice with what it says of the pod.
    Kube {
        qos: Option<&'static str>,
        pod_uid: Option<String>,
        root: bool,
    },
    Service(&'a str),
    UserManager,
    DockerDir,
    Other,
}

/// The Kubernetes pod the path has entered so far.
#[derive(Default)]
struct Kube {
    inside: bool,
    qos: Option<&'static str>,
    pod_uid: Option<String>,
}

/// The container whose cgroup `path` (as `/proc/<pid>/cgroup` shows it) is or is under, or
/// the systemd service it belongs to; `None` for anything else.
pub fn parse(path: &str) -> Option<Container> {
    let mut kube = Kube::default();
    let mut found: Option<Container> = None;
    let mut service: Option<&str> = None;
    let mut user_manager = false;
    // What the previous component was: a bare id is only a container under `docker` or a pod.
    let (mut after_docker, mut after_pod) = (false, false);
    for comp in path.split('/').filter(|c| !c.is_empty()) {
        let class = classify(comp, after_docker, after_pod, kube.inside);
        (after_docker, after_pod) = (false, false);
        match class {
            Component::Container(id, runtime) => {
                let mut c = Container::new(id, runtime);
                if kube.pod_uid.is_some() {
                    c.pod_uid = kube.pod_uid.clone();
                    c.qos = Some(kube.qos.unwrap_or("guaranteed").to_owned());
                }
                found = Some(c);
            }
            Component::Kube { qos, pod_uid, root } => {
                if root {
                    kube = Kube { inside: true, ..Kube::default() };
                }
                kube.inside = true;
                kube.qos = qos.or(kube.qos);
                if pod_uid.is_some() {
                    kube.pod_uid = pod_uid;
                    after_pod = true;
                }
            }
            Component::Service(unit) if !user_manager => service = Some(unit),
            Component::UserManager => user_manager = true,
            Component::DockerDir => after_docker = true,
            Component::Service(_) | Component::Other => {}
        }
    }
    found.or_else(|| service.map(systemd_service))
}

fn systemd_service(unit: &str) -> Container {
    let mut c = Container::new(unit, Runtime::Systemd);
    c.name = unit.strip_suffix(".service").map(str::to_owned);
    c
}

fn classify(comp: &str, after_docker: bool, after_pod: bool, in_kube: bool) -> Component<'_> {
    if is_full_id(comp) {
        return match (after_docker, after_pod) {
            (true, _) => Component::Container(comp, Runtime::Docker),
            (false, true) => Component::Container(comp, Runtime::Containerd),
            _ => Component::Other,
        };
    }
    if comp == "docker" {
        return Component::DockerDir;
    }
    if let Some(kube) = kube_component(comp, in_kube) {
        return kube;
    }
    let stem = comp.strip_suffix(".scope").unwrap_or(comp);
    for (prefix, runtime) in SCOPE_PREFIXES {
        // `libpod-conmon-<id>` and `crio-conmon-<id>` fail here: not a 64-hex id.
        if let Some(id) = stem.strip_prefix(prefix).filter(|id| is_full_id(id)) {
            return Component::Container(id, runtime);
        }
    }
    if let Some(stem) = comp.strip_suffix(".service") {
        if stem.starts_with("user@") {
            return Component::UserManager;
        }
        if is_unit_name(comp) && !stem.is_empty() {
            return Component::Service(comp);
        }
    }
    Component::Other
}

/// The kubepods hierarchy, in either driver's spelling.
fn kube_component(comp: &str, in_kube: bool) -> Option<Component<'static>> {
    if let Some(stem) = comp.strip_suffix(".slice") {
        // `kubepods-burstable-pod<uid>.slice`, possibly with a `--cgroup-root` prefix
        // (`kubelet-kubepods-...`): the slice name repeats every level, separated by `-`.
        let mut parts = stem.split('-').skip_while(|p| *p != "kubepods");
        parts.next()?;
        let mut qos = None;
        let mut pod_uid = None;
        for part in parts {
            if let Some(level) = qos_level(part) {
                qos = Some(level);
            } else if let Some(uid) = part.strip_prefix("pod") {
                pod_uid = Some(pod_uid_of(uid)?);
            } else {
                return None;
            }
        }
        let root = qos.is_none() && pod_uid.is_none();
        return Some(Component::Kube { qos, pod_uid, root });
    }
    if comp == "kubepods" {
        return Some(Component::Kube { qos: None, pod_uid: None, root: true });
    }
    if !in_kube {
        return None;
    }
    if let Some(level) = qos_level(comp) {
        return Some(Component::Kube { qos: Some(level), pod_uid: None, root: false });
    }
    let uid = pod_uid_of(comp.strip_prefix("pod")?)?;
    Some(Component::Kube { qos: None, pod_uid: Some(uid), root: false })
}

fn qos_level(s: &str) -> Option<&'static str> {
    match s {
        "burstable" => Some("burstable"),
        "besteffort" => Some("besteffort"),
        _ => None,
    }
}

/// A pod uid with its dashes restored: a UUID, or the 32-hex hash kubelet gives static pods.
fn pod_uid_of(raw: &str) -> Option<String> {
    let uid = raw.replace('_', "-");
    let ok = (32..=36).contains(&uid.len())
        && uid.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f' | b'-'));
    ok.then_some(uid)
}

/// systemd's unit-name alphabet, so arbitrary directories named `*.service` are not taken for
/// units.
fn is_unit_name(s: &str) -> bool {
    s.len() <= UNIT_NAME_MAX
        && s.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b':' | b'-' | b'_' | b'.' | b'\\' | b'@')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "64a1b0d8ae8bf132110e6403f8e586522d0987de0a96c6f58101051bfb120d9d";
    const ID2: &str = "0f3c1d9a5b7e2f4c6a8b0d1e3f5a7c9b2d4e6f8a0b1c3d5e7f9a1b2c3d4e5f60";
    const UID: &str = "7c4b9a1e-2f3d-4c5b-8a6e-9d0f1e2a3b4c";
    const UID_: &str = "7c4b9a1e_2f3d_4c5b_8a6e_9d0f1e2a3b4c";

    fn expect(path: &str, id: &str, runtime: Runtime) -> Container {
        let c = parse(path).unwrap_or_else(|| panic!("no container in {path}"));
        assert_eq!((c.id.as_str(), c.runtime), (id, runtime), "{path}");
        c
    }

    fn expect_pod(path: &str, id: &str, runtime: Runtime, uid: &str, qos: &str) {
        let c = expect(path, id, runtime);
        assert_eq!(c.pod_uid.as_deref(), Some(uid), "{path}");
        assert_eq!(c.qos.as_deref(), Some(qos), "{path}");
    }

    fn expect_none(path: &str) {
        assert_eq!(parse(path), None, "{path}");
    }

    #[test]
    fn docker() {
        let c = expect(&format!("/system.slice/docker-{ID}.scope"), ID, Runtime::Docker);
        assert_eq!((c.pod_uid, c.qos, c.name), (None, None, None));
        expect(&format!("/docker/{ID}"), ID, Runtime::Docker);
        expect(&format!("/docker/{ID}/nested/child"), ID, Runtime::Docker);
        // Docker in docker: the inner container is the one the process runs in.
        expect(&format!("/docker/{ID}/docker/{ID2}"), ID2, Runtime::Docker);
        let rootless =
            format!("/user.slice/user-1000.slice/user@1000.service/user.slice/docker-{ID}.scope");
        expect(&rootless, ID, Runtime::Docker);
    }

    #[test]
    fn podman() {
        expect(&format!("/libpod_parent/libpod-{ID}"), ID, Runtime::Podman);
        expect(&format!("/machine.slice/libpod-{ID}.scope"), ID, Runtime::Podman);
        expect(&format!("/machine.slice/libpod-{ID}.scope/container"), ID, Runtime::Podman);
        let rootless =
            format!("/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope");
        expect(&rootless, ID, Runtime::Podman);
        expect(&format!("{rootless}/container"), ID, Runtime::Podman);
        let in_pod = format!("/machine.slice/machine-libpod_pod_{ID2}.slice/libpod-{ID}.scope");
        expect(&in_pod, ID, Runtime::Podman);
        // A systemd inside the container does not make its units the process's identity.
        let systemd_inside = format!("/machine.slice/libpod-{ID}.scope/system.slice/nginx.service");
        expect(&systemd_inside, ID, Runtime::Podman);
    }

    #[test]
    fn conmon_is_not_a_container() {
        expect_none(&format!("/machine.slice/libpod-conmon-{ID}.scope"));
        expect_none(&format!(
            "/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-conmon-{ID}.scope"
        ));
        expect_none(&format!(
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/crio-conmon-{ID}.scope"
        ));
        expect_none("/libpod_parent/conmon");
        // Inside an enclosing container, conmon still runs in that container.
        expect(&format!("/docker/{ID2}/libpod-conmon-{ID}.scope"), ID2, Runtime::Docker);
    }

    #[test]
    fn containerd_systemd_driver() {
        let qos = "/kubepods.slice/kubepods-burstable.slice";
        let p = format!("{qos}/kubepods-burstable-pod{UID_}.slice/cri-containerd-{ID}.scope");
        expect_pod(&p, ID, Runtime::Containerd, UID, "burstable");
        let p = format!("/kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{ID}.scope");
        expect_pod(&p, ID, Runtime::Containerd, UID, "guaranteed");
        let p = format!(
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/cri-containerd-{ID}.scope"
        );
        expect_pod(&p, ID, Runtime::Containerd, UID, "besteffort");
    }

    #[test]
    fn containerd_cgroupfs_driver() {
        // Static pods' uid is kubelet's 32-hex config hash.
        let hash = "5b1e1b2f0e8b3c0d6a9f5e7b8c1d2e3f";
        for (parent, uid, qos) in [
            ("/kubepods/burstable", UID, "burstable"),
            ("/kubepods/besteffort", UID, "besteffort"),
            ("/kubepods", UID, "guaranteed"),
            ("/kubepods/burstable", hash, "burstable"),
        ] {
            let p = format!("{parent}/pod{uid}/{ID}");
            expect_pod(&p, ID, Runtime::Containerd, uid, qos);
        }
    }

    #[test]
    fn cri_o() {
        let p = format!(
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/crio-{ID}.scope"
        );
        expect_pod(&p, ID, Runtime::CriO, UID, "besteffort");
        expect_pod(
            &format!("/kubepods/burstable/pod{UID}/crio-{ID}"),
            ID,
            Runtime::CriO,
            UID,
            "burstable",
        );
    }

    #[test]
    fn docker_under_kubernetes() {
        let p = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/docker-{ID}.scope"
        );
        expect_pod(&p, ID, Runtime::Docker, UID, "burstable");
    }

    #[test]
    fn nested_and_foreign_namespaces() {
        // kind: a node container running kubelet with `--cgroup-root=/kubelet`.
        let p = format!(
            "/system.slice/docker-{ID2}.scope/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{UID_}.slice/cri-containerd-{ID}.scope"
        );
        expect_pod(&p, ID, Runtime::Containerd, UID, "besteffort");
        // The node's own processes belong to the node container.
        let node = format!("/system.slice/docker-{ID2}.scope/kubelet.slice");
        let c = expect(&node, ID2, Runtime::Docker);
        assert_eq!(c.pod_uid, None);
        // Read from inside another pod's cgroup namespace.
        let p = format!("/../../kubepods-besteffort-pod{UID_}.slice/cri-containerd-{ID}.scope");
        expect_pod(&p, ID, Runtime::Containerd, UID, "besteffort");
        expect(&format!("/system.slice/nerdctl-{ID}.scope"), ID, Runtime::Containerd);
    }

    #[test]
    fn pod_without_container_leaf() {
        expect_none(&format!(
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice"
        ));
        expect_none(&format!("/kubepods/burstable/pod{UID}"));
        expect_none("/kubepods.slice/kubepods-burstable.slice");
        expect_none("/kubepods");
    }

    #[test]
    fn systemd_services() {
        let containerd = format!("/system.slice/containerd.service/{ID}");
        for (path, unit, name) in [
            ("/system.slice/nginx.service", "nginx.service", "nginx"),
            (
                "/system.slice/system-getty.slice/getty@tty1.service",
                "getty@tty1.service",
                "getty@tty1",
            ),
            ("/system.slice/foo.service/sub", "foo.service", "foo"),
            (
                "/system.slice/docker-compose@app.service",
                "docker-compose@app.service",
                "docker-compose@app",
            ),
            (&containerd, "containerd.service", "containerd"),
        ] {
            let c = expect(path, unit, Runtime::Systemd);
            assert_eq!(c.name.as_deref(), Some(name));
        }
    }

    #[test]
    fn not_containers() {
        for p in [
            "",
            "/",
            "//",
            "/init.scope",
            "/system.slice",
            "/user.slice/user-1000.slice/session-3.scope",
            "/user.slice/user-1000.slice/user@1000.service",
            "/user.slice/user-1000.slice/user@1000.service/init.scope",
            "/user.slice/user-1000.slice/user@1000.service/app.slice/dbus.service",
            "/system.slice/.service",
            "/system.slice/bad name.service",
            "/..",
            "/../..",
        ] {
            expect_none(p);
        }
    }

    #[test]
    fn ids_are_validated() {
        let upper = ID.to_uppercase();
        for id in [&ID[..63], &format!("{ID}0"), &upper, &format!("{}g", &ID[..63]), ""] {
            expect_none(&format!("/system.slice/docker-{id}.scope"));
            expect_none(&format!("/docker/{id}"));
            expect_none(&format!("/machine.slice/libpod-{id}.scope"));
            expect_none(&format!("/kubepods/pod{UID}/{id}"));
        }
        // A bare id is a container only under `docker` or a pod.
        expect_none(&format!("/{ID}"));
        expect_none(&format!("/kubepods/burstable/{ID}"));
        expect_none(&format!("/kubepods/burstable/podnot-a-uid/{ID}"));
        expect_none(&format!("/system.slice/docker-{ID}.scopex"));
        // A malformed pod uid loses the pod, not the container the runtime named.
        let p = format!("/kubepods.slice/kubepods-podXYZ.slice/cri-containerd-{ID}.scope");
        assert_eq!(expect(&p, ID, Runtime::Containerd).pod_uid, None);
    }

    #[test]
    fn odd_input() {
        expect_none("/\u{FFFD}\u{FFFD}/docker-\u{FFFD}.scope");
        expect_none(&"é".repeat(100_000));
        expect_none(&"/".repeat(100_000));
        let deep = format!("{}docker-{ID}.scope", "../".repeat(10_000));
        expect(&deep, ID, Runtime::Docker);
        let hex_like = format!("/docker/{}", "é".repeat(32));
        expect_none(&hex_like);
    }

    /// Deterministic xorshift: enough to explore the parser's branches without a new crate.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
            items[(self.next() % items.len() as u64) as usize]
        }
    }

    #[test]
    fn never_panics() {
        let pieces = [
            "/",
            "/",
            "-",
            "_",
            ".",
            "..",
            "docker",
            "docker-",
            "libpod-",
            "conmon-",
            "crio-",
            "cri-containerd-",
            "kubepods",
            "kubepods-",
            "burstable",
            "besteffort",
            "pod",
            ".slice",
            ".scope",
            ".service",
            "user@",
            "@",
            "a",
            "0",
            "f",
            "G",
            "é",
            "\u{FFFD}",
            "\0",
            ID,
            UID,
            UID_,
            &ID[..12],
        ];
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for _ in 0..20_000 {
            let len = rng.next() % 24;
            let path: String = (0..len).map(|_| rng.pick(&pieces)).collect();
            if let Some(c) = parse(&path) {
                match c.runtime {
                    Runtime::Systemd => assert!(c.id.ends_with(".service"), "{path:?}"),
                    _ => assert!(is_full_id(&c.id), "{path:?}"),
                }
                assert!(c.pod_uid.is_none() || c.qos.is_some(), "{path:?}");
            }
        }
    }
}
