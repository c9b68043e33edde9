//! Who a cgroup belongs to: a container of one of the common runtimes, or a systemd service on
//! hosts without containers. The identity comes from the cgroup path (`pattern`) and, for the
//! name, from the runtime's local files (`names`); nothing here does I/O.

use std::fmt;

use serde::Serialize;

/// Which runtime made the cgroup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Runtime {
    Docker,
    Podman,
    Containerd,
    CriO,
    Systemd,
}

impl Runtime {
    /// The same spelling as the JSON output, so text and JSON reports agree.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Docker => "docker",
            Self::Podman => "podman",
            Self::Containerd => "containerd",
            Self::CriO => "cri-o",
            Self::Systemd => "systemd",
        }
    }
}

impl fmt::Display for Runtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A container (or a systemd service on hosts without containers), as its cgroup path and the
/// runtime's local metadata tell.
///
/// Every field is serialized, `null` when unknown: consumers of the JSON get a fixed set of keys.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Container {
    /// The full id: 64 hex for docker/podman/containerd/cri-o; the unit name
    /// (`nginx.service`) for systemd.
    pub id: String,
    pub runtime: Runtime,
    /// The container's name from the runtime's storage, or for systemd the unit without
    /// `.service`.
    pub name: Option<String>,
    /// The pod's name: only the CRI API knows it, so it stays `None` unless a caller fills it.
    pub pod: Option<String>,
    pub namespace: Option<String>,
    /// The Kubernetes pod uid, with its dashes (the systemd cgroup driver writes them as `_`).
    pub pod_uid: Option<String>,
    /// `guaranteed`, `burstable` or `besteffort`, from the kubepods path.
    pub qos: Option<String>,
}

impl Container {
    /// A container of `runtime` known only by its id.
    pub fn new(id: impl Into<String>, runtime: Runtime) -> Self {
        Self {
            id: id.into(),
            runtime,
            name: None,
            pod: None,
            namespace: None,
            pod_uid: None,
            qos: None,
        }
    }

    /// The 12-character prefix the runtimes' own CLIs show, when the id is a 64-hex one.
    pub fn short_id(&self) -> &str {
        if is_full_id(&self.id) { &self.id[..12] } else { &self.id }
    }
}

/// Whether `s` is a full container id: the runtimes all use 64 lowercase hex digits.
pub fn is_full_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

impl fmt::Display for Container {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.runtime, self.short_id())?;
        if let Some(name) = &self.name {
            write!(f, " {name}")?;
        }
        match (&self.namespace, &self.pod, &self.pod_uid) {
            (Some(ns), Some(pod), _) => write!(f, " pod {ns}/{pod}"),
            (None, Some(pod), _) => write!(f, " pod {pod}"),
            (_, None, Some(uid)) => write!(f, " pod {uid}"),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "64a1b0d8ae8bf132110e6403f8e586522d0987de0a96c6f58101051bfb120d9d";

    #[test]
    fn runtime_names_match_serde() {
        for rt in
            [Runtime::Docker, Runtime::Podman, Runtime::Containerd, Runtime::CriO, Runtime::Systemd]
        {
            let json = serde_json::to_string(&rt).unwrap();
            assert_eq!(json, format!("\"{}\"", rt.name()));
        }
        assert_eq!(Runtime::CriO.name(), "cri-o");
    }

    #[test]
    fn short_id_only_for_hex_ids() {
        assert_eq!(Container::new(ID, Runtime::Podman).short_id(), "64a1b0d8ae8b");
        assert_eq!(Container::new("nginx.service", Runtime::Systemd).short_id(), "nginx.service");
        // Not hex: must not be cut (and must not panic on a multi-byte boundary).
        let odd = "é".repeat(32);
        assert_eq!(Container::new(odd.clone(), Runtime::Docker).short_id(), odd);
    }

    #[test]
    fn display_variants() {
        let mut c = Container::new(ID, Runtime::Podman);
        assert_eq!(c.to_string(), "podman 64a1b0d8ae8b");
        c.name = Some("tta-probe".into());
        assert_eq!(c.to_string(), "podman 64a1b0d8ae8b tta-probe");
        c.pod_uid = Some("1b2c".into());
        assert_eq!(c.to_string(), "podman 64a1b0d8ae8b tta-probe pod 1b2c");
        c.pod = Some("web-0".into());
        assert_eq!(c.to_string(), "podman 64a1b0d8ae8b tta-probe pod web-0");
        c.namespace = Some("prod".into());
        assert_eq!(c.to_string(), "podman 64a1b0d8ae8b tta-probe pod prod/web-0");
    }

    #[test]
    fn serializes_every_key() {
        let c = Container::new(ID, Runtime::CriO);
        let v: serde_json::Value = serde_json::to_value(&c).unwrap();
        let obj = v.as_object().unwrap();
        let keys: Vec<&str> = obj.keys().map(String::as_str).collect();
        for k in ["id", "runtime", "name", "pod", "namespace", "pod_uid", "qos"] {
            assert!(keys.contains(&k), "missing {k}");
        }
        assert_eq!(obj.len(), 7);
        assert_eq!(obj["runtime"], "cri-o");
        assert!(obj["name"].is_null());
        assert!(obj["qos"].is_null());
    }
}
