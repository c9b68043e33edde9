//! Real containers for the tests, with Debian's podman and runc, offline: the image is
//! busybox-static's binary imported as a root file system, and each container runs on the
//! host's network (so it reaches the test's listeners on loopback) with the flags this kind of
//! machine needs (runc: crun refuses its hybrid cgroup layout; small explicit rlimits: the
//! defaults exceed what the machine allows; a file events backend: there is no systemd).

use std::{
    path::Path,
    process::{Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

const IMAGE: &str = "localhost/tcptrace-test-busybox";

/// A running container, removed when dropped.
pub struct Container {
    pub id: String,
    pub name: String,
    /// Its main process, as the host sees it.
    pub pid: u32,
}

fn podman(args: &[&str]) -> String {
    let out = Command::new("podman")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("podman {args:?}: {e} (cargo xtask setup installs podman)"));
    assert!(
        out.status.success(),
        "podman {args:?}: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// The busybox image, imported once per machine (and once at a time: tests run in parallel).
fn image() {
    static IMPORT: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = IMPORT.lock().unwrap_or_else(|p| p.into_inner());
    let exists =
        Command::new("podman").args(["image", "exists", IMAGE]).status().is_ok_and(|s| s.success());
    if exists {
        return;
    }
    let root = std::env::temp_dir().join(format!("tcptrace-image-{}", std::process::id()));
    let bin = root.join("bin");
    std::fs::create_dir_all(&bin).expect("image root");
    std::fs::copy("/bin/busybox", bin.join("busybox")).expect("busybox-static's /bin/busybox");
    for applet in ["sh", "nc", "sleep", "cat"] {
        let _ = std::os::unix::fs::symlink("busybox", bin.join(applet));
    }
    let tarball = root.with_extension("tar");
    let tar = Command::new("tar")
        .args(["-C", &root.to_string_lossy(), "-cf", &tarball.to_string_lossy(), "."])
        .status()
        .expect("tar");
    assert!(tar.success(), "tar failed");
    podman(&["import", &tarball.to_string_lossy(), IMAGE]);
    let _ = std::fs::remove_file(tarball);
    let _ = std::fs::remove_dir_all(root);
}

impl Container {
    /// Starts `sh -c SCRIPT` in a new container and waits until its process runs.
    pub fn run(script: &str) -> Self {
        Self::run_with(&[], script)
    }

    /// `run` with more `podman run` options (volumes).
    pub fn run_with(options: &[&str], script: &str) -> Self {
        static SERIAL: AtomicU32 = AtomicU32::new(0);
        image();
        let name = format!("tt-{}-{}", std::process::id(), SERIAL.fetch_add(1, Ordering::Relaxed));
        let mut args = vec![
            "run",
            "-d",
            "--name",
            &name,
            "--runtime",
            "runc",
            "--cgroup-manager",
            "cgroupfs",
            "--events-backend",
            "file",
            "--network",
            "host",
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=1024:1024",
        ];
        args.extend_from_slice(options);
        args.extend([IMAGE, "/bin/sh", "-c", script]);
        let id = podman(&args);
        assert_eq!(id.len(), 64, "a full container id: {id:?}");
        let pid: u32 = podman(&["inspect", "-f", "{{.State.Pid}}", &name])
            .parse()
            .expect("the container's pid");
        assert!(Path::new(&format!("/proc/{pid}")).exists(), "container {name} is not running");
        Self { id, name, pid }
    }

    /// Waits until `done` holds, or panics after 10 s.
    pub fn wait_until(what: &str, done: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new("podman")
            .args(["rm", "-f", "-t", "0", &self.name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}
