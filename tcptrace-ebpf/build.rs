use which::which;

/// Building this crate depends on the `bpf-linker` binary, which cargo cannot express; rebuild
/// when it changes (as aya-template does).
fn main() {
    match which("bpf-linker") {
        Ok(path) => println!("cargo:rerun-if-changed={}", path.display()),
        Err(e) => println!("cargo:warning=bpf-linker not found ({e}); run `cargo xtask setup`"),
    }
}
