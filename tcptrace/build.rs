//! Builds the kernel programs (tcptrace-ebpf) for the BPF target with the nightly toolchain and
//! bpf-linker, as aya-template does; the object is embedded by `include_bytes_aligned!`. With
//! this crate's `bench` feature the kernel crate's `bench` feature is on too: without it the
//! object has no bench code at all.
use anyhow::{Context as _, anyhow};
use aya_build::Toolchain;

fn main() -> anyhow::Result<()> {
    build_facts();
    let cargo_metadata::Metadata { packages, .. } =
        cargo_metadata::MetadataCommand::new().no_deps().exec().context("MetadataCommand::exec")?;
    let ebpf_package = packages
        .into_iter()
        .find(|cargo_metadata::Package { name, .. }| name.as_str() == "tcptrace-ebpf")
        .ok_or_else(|| anyhow!("tcptrace-ebpf package not found"))?;
    let cargo_metadata::Package { name, manifest_path, .. } = ebpf_package;
    // Cargo sets CARGO_FEATURE_<NAME> for each feature of this package it builds with.
    let features: &[&str] =
        if std::env::var_os("CARGO_FEATURE_BENCH").is_some() { &["bench"] } else { &[] };
    let ebpf_package = aya_build::Package {
        name: name.as_str(),
        root_dir: manifest_path
            .parent()
            .ok_or_else(|| anyhow!("no parent for {manifest_path}"))?
            .as_str(),
        features,
        ..Default::default()
    };
    aya_build::build_ebpf([ebpf_package], Toolchain::default())
}

/// What `tcptrace --version` says of the build: the commit (when built from a git checkout)
/// and the aya version that Cargo.lock pins.
fn build_facts() {
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|out| out.status.success())
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=TCPTRACE_GIT_COMMIT={commit}");
    let lock = std::fs::read_to_string("../Cargo.lock").unwrap_or_default();
    let aya = lock
        .split("[[package]]")
        .find(|p| p.contains("\nname = \"aya\"\n"))
        .and_then(|p| p.lines().find_map(|l| l.strip_prefix("version = ")))
        .map(|v| v.trim_matches('"').to_owned())
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=TCPTRACE_AYA_VERSION={aya}");
    println!("cargo:rerun-if-changed=../Cargo.lock");
    println!("cargo:rerun-if-changed=../.git/HEAD");
    println!("cargo:rerun-if-changed=../.git/refs/heads");
}
