//! Containers, end to end: real podman containers connect to a listener on the host while the
//! `tcptrace` binary traces, and every output names the container; the filters keep only it.

#[allow(dead_code, reason = "shared by several test binaries; each uses a subset")]
mod support {
    pub mod podman;
    pub mod tracer;
}

use std::{
    net::{TcpListener, TcpStream},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    thread,
    time::Duration,
};

use serde_json::Value;
use support::{podman::Container, tracer::Tracer};

/// A host listener that accepts and holds every connection, counting them.
struct Listener {
    port: u16,
    accepted: Arc<AtomicUsize>,
}

impl Listener {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("local addr").port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&accepted);
        thread::spawn(move || {
            let mut held: Vec<TcpStream> = Vec::new();
            for stream in listener.incoming().map_while(Result::ok) {
                held.push(stream);
                count.fetch_add(1, Ordering::SeqCst);
            }
        });
        Self { port, accepted }
    }

    fn wait_for(&self, n: usize) {
        Container::wait_until(&format!("{n} connections"), || {
            self.accepted.load(Ordering::SeqCst) >= n
        });
    }
}

/// A client on the host that connects and holds the connection open (busybox nc, as in the
/// container, so only where it runs differs). Killed when dropped.
struct HostClient(Child);

impl HostClient {
    fn connect(port: u16) -> Self {
        let child = Command::new("/bin/sh")
            .args(["-c", &format!("sleep 60 | exec /bin/busybox nc 127.0.0.1 {port}")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            // "Terminated" when the test kills it.
            .stderr(Stdio::null())
            .spawn()
            .expect("sh");
        Self(child)
    }
}

impl Drop for HostClient {
    fn drop(&mut self) {
        // The shell's pipeline: its sleep and nc are in its process group only if job control
        // were on, so end them by their parent's death and nc's lost stdin.
        let _ = Command::new("pkill").args(["-P", &self.0.id().to_string()]).status();
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A container whose `nc` connects to `port` and holds the connection.
fn leaking_container(port: u16) -> Container {
    Container::run(&format!("sleep 60 | nc 127.0.0.1 {port}"))
}

fn json(stdout: &str) -> Value {
    serde_json::from_str(stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

fn unclosed_by<'a>(report: &'a Value, comm: &str) -> Vec<&'a Value> {
    report["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .filter(|f| f["kind"] == "unclosed" && f["comm"] == comm)
        .collect()
}

#[test]
#[ignore = "needs root and podman (cargo xtask test)"]
fn a_leak_in_a_container_names_the_container_and_a_host_leak_names_none() {
    let listener = Listener::start();
    let port = listener.port.to_string();
    // Connected before tracing starts: only the inventory finds it.
    let before = leaking_container(listener.port);
    listener.wait_for(1);
    let tracer = Tracer::start(&["leaks", "--json", "--min-age", "1s", "--port", &port]);
    let container = leaking_container(listener.port);
    let _host = HostClient::connect(listener.port);
    listener.wait_for(3);
    thread::sleep(Duration::from_millis(1500));
    let done = tracer.stop();
    assert!(done.status.success(), "{}", done.stderr);
    let report = json(&done.stdout);

    let inside = unclosed_by(&report, "nc");
    assert_eq!(inside.len(), 1, "the container's connection: {report:#}");
    let c = &inside[0]["container"];
    assert_eq!(c["id"], container.id.as_str(), "the full id: {c}");
    assert_eq!(
        (c["runtime"].as_str(), c["name"].as_str()),
        (Some("podman"), Some(&*container.name))
    );
    assert!(c["pod"].is_null() && c["namespace"].is_null(), "no pod without Kubernetes: {c}");
    let pid = inside[0]["pid"].as_u64().expect("pid");

    let group = report["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .find(|g| g["pid"] == pid)
        .expect("the container's group");
    assert_eq!(group["container"], *c);
    let process = report["processes"]
        .as_array()
        .expect("processes")
        .iter()
        .find(|p| p["pid"] == pid)
        .expect("the container's process");
    assert_eq!(process["container"], *c);
    let cgroup = process["cgroup"].as_str().expect("a cgroup path");
    assert!(cgroup.ends_with(&format!("libpod-{}", container.id)), "{cgroup}");

    let held_before = report["processes"]
        .as_array()
        .expect("processes")
        .iter()
        .find(|p| p["container"]["id"] == before.id.as_str())
        .unwrap_or_else(|| panic!("the inventory's socket is placed too: {report:#}"));
    assert_eq!((held_before["comm"].as_str(), held_before["open"].as_u64()), (Some("nc"), Some(1)));

    let outside = unclosed_by(&report, "busybox");
    assert_eq!(outside.len(), 1, "the host's connection: {report:#}");
    assert!(outside[0]["container"].is_null(), "a host process: {}", outside[0]);
}

#[test]
#[ignore = "needs root and podman (cargo xtask test)"]
fn the_container_filter_keeps_only_the_container_in_leaks_trace_and_top() {
    let listener = Listener::start();
    // The container connects once the test connects to its trigger port: after the tracers
    // have started, so each sees its connect.
    let trigger = unused_port();
    let container = Container::run(&format!(
        "nc -l -p {trigger} >/dev/null; sleep 60 | nc 127.0.0.1 {}",
        listener.port
    ));
    let other = leaking_container(listener.port);
    let short = &container.id[..12];
    let cgroup = format!("/libpod_parent/libpod-{}", container.id);
    let leaks = Tracer::start(&["leaks", "--min-age", "1s", "--container", &container.name]);
    let trace = Tracer::start(&["trace", "--json", "--container", short]);
    let top = Tracer::start(&["top", "--interval", "1s", "--cgroup", &cgroup]);
    let _host = HostClient::connect(listener.port);
    Container::wait_until("the container's trigger", || {
        TcpStream::connect(("127.0.0.1", trigger)).is_ok()
    });
    listener.wait_for(3);
    thread::sleep(Duration::from_millis(1500));

    let leaks = leaks.stop();
    assert!(leaks.status.success(), "{}", leaks.stderr);
    let label = format!("[podman {short} {}]", container.name);
    assert!(leaks.stdout.contains(&label), "text names the container: {}", leaks.stdout);
    assert!(!leaks.stdout.contains("busybox ("), "the host is filtered out: {}", leaks.stdout);
    assert!(!leaks.stdout.contains(&other.id[..12]), "so is the other: {}", leaks.stdout);

    let trace = trace.stop();
    assert!(trace.status.success(), "{}", trace.stderr);
    let records: Vec<Value> = trace.stdout.lines().map(json).collect();
    assert!(records.iter().any(|r| r["event"] == "connect"), "{}", trace.stdout);
    for r in &records {
        assert_eq!(r["container"]["id"], container.id.as_str(), "{r}");
    }

    let top = top.stop();
    assert!(top.status.success(), "{}", top.stderr);
    assert!(top.stdout.contains("CONTAINER"), "{}", top.stdout);
    assert!(top.stdout.contains(&container.name), "{}", top.stdout);
    assert!(!top.stdout.contains("busybox"), "{}", top.stdout);
}

#[test]
#[ignore = "needs root (cargo xtask test)"]
fn an_unknown_container_is_a_one_line_usage_error() {
    for args in
        [&["leaks", "--container", "no-such-container"][..], &["trace", "--cgroup", "/no/such"]]
    {
        let out = support::tracer::tcptrace(args).output().expect("tcptrace");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        assert!(stderr.starts_with("tcptrace: error: "), "{stderr}");
    }
}

fn unused_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port()
}

#[test]
#[ignore = "needs root and podman (cargo xtask test)"]
fn trace_shows_the_container_of_each_record() {
    let listener = Listener::start();
    let tracer = Tracer::start(&["trace", "--json", "--port", &listener.port.to_string()]);
    let container = leaking_container(listener.port);
    let _host = HostClient::connect(listener.port);
    listener.wait_for(2);
    let done = tracer.stop();
    assert!(done.status.success(), "{}", done.stderr);
    let records: Vec<Value> = done.stdout.lines().map(json).collect();
    let connect_of = |comm: &str| {
        records
            .iter()
            .find(|r| r["event"] == "connect" && r["comm"] == comm)
            .unwrap_or_else(|| panic!("no connect by {comm}: {}", done.stdout))
    };
    let inside = connect_of("nc");
    assert_eq!(inside["container"]["id"], container.id.as_str(), "{inside}");
    assert!(inside["cgroup"].as_str().is_some_and(|c| c.contains(&container.id)), "{inside}");
    let outside = connect_of("busybox");
    assert!(outside["container"].is_null(), "{outside}");
}
