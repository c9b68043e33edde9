//! `tcptrace serve` end to end: a real Prometheus (Debian's package) scrapes it while a process
//! holds CLOSE_WAIT sockets (the C fixture, so its code paths are known) and then exits; promtool checks the exposition and the alert rules
//! of deploy/; bad input, shutdown under scrapes, and memory across short-lived processes.
//!
//! Root tests: run by `cargo xtask test` with `--include-ignored`. Each filters on a port of
//! its own, so other tests may run beside them.

#[allow(dead_code, reason = "shared by several test binaries; each uses a subset")]
mod support {
    pub mod children;
    pub mod prometheus;
    pub mod tracer;
}
mod fixtures;

use std::{
    net::{Ipv4Addr, TcpListener, TcpStream},
    path::Path,
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::Duration,
};

use fixtures::Fixture;
use serde_json::Value;
use support::{
    children::connect_from_child,
    prometheus::{Prometheus, curl, curl_with, free_port},
    tracer::{Tracer, run_to_end, tcptrace},
};

/// The C fixture opens this many connections along each of its two paths, and holds them.
const PER_PATH: usize = 2;
const HELD: usize = 2 * PER_PATH;
/// Its task name (the binary's name, cut to 15 bytes).
const FIXTURE_COMM: &str = "leaky-c";

/// `tcptrace serve` on a free port, traced connections filtered to `port`.
fn serve(port: u16, extra: &[&str]) -> (Tracer, String) {
    let listen = format!("127.0.0.1:{}", free_port());
    let port = port.to_string();
    let mut args =
        vec!["serve", "--listen", &listen, "--port", &port, "--min-age", "1s", "--sweep", "1s"];
    args.extend_from_slice(extra);
    (Tracer::start(&args), listen)
}

#[test]
#[ignore = "loads BPF programs: needs root (cargo xtask test)"]
fn prometheus_sees_close_wait_findings_rise_to_the_count_and_fall_to_zero_on_exit() {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tracer, listen) = serve(port, &[]);
    let prometheus = Prometheus::start(&listen, None);

    let mut holder = Fixture::C.spawn(&[&port.to_string(), &PER_PATH.to_string()]);
    assert_eq!(holder.line(), "ready");
    // Accept and close this side: the holder's sockets go to CLOSE_WAIT and stay there.
    for _ in 0..HELD {
        drop(listener.accept().expect("accept"));
    }
    let comm = FIXTURE_COMM;
    let findings = format!("sum(tcptrace_findings{{kind=\"close-wait\",comm=\"{comm}\"}})");
    let timeout = Duration::from_secs(60);
    prometheus.wait_until("4 close-wait findings in Prometheus", timeout, || {
        prometheus.query(&findings) == Some(HELD as f64)
    });
    let held = format!("sum(tcptrace_connections{{state=\"CLOSE_WAIT\",comm=\"{comm}\"}})");
    assert_eq!(prometheus.query(&held), Some(HELD as f64));
    let opened =
        format!("sum(tcptrace_connections_opened_total{{direction=\"connect\",comm=\"{comm}\"}})");
    assert_eq!(prometheus.query(&opened), Some(HELD as f64));

    // The code path is one request away.
    let (status, report) = curl(&format!("http://{listen}/report"));
    assert_eq!(status, 200);
    let report: Value = serde_json::from_str(&report).expect("/report is JSON");
    let pid = holder.pid();
    let groups: Vec<&Value> = report["groups"]
        .as_array()
        .map(|g| g.iter().filter(|g| g["pid"] == pid && g["kind"] == "close-wait").collect())
        .unwrap_or_default();
    let sites: Vec<&str> = groups.iter().map(|g| g["site"].as_str().unwrap_or_default()).collect();
    assert_eq!(groups.len(), 2, "one group per opening path: {report:#}");
    assert!(groups.iter().all(|g| g["count"] == PER_PATH), "{groups:#?}");
    assert!(sites.iter().any(|s| s.starts_with("db_checkout (leaky.c:")), "{sites:?}");
    assert!(sites.iter().any(|s| s.starts_with("refresh_cache (leaky.c:")), "{sites:?}");

    assert!(holder.finish().success());
    prometheus.wait_until("the findings back to 0 after the exit", timeout, || {
        prometheus.query(&findings) == Some(0.0)
    });
    assert_eq!(prometheus.query(&held), Some(0.0));
    assert_eq!(prometheus.query("tcptrace_events_lost_total{reason=\"ring_full\"}"), Some(0.0));
    assert_eq!(prometheus.query("up{job=\"tcptrace\"}"), Some(1.0));

    let finished = tracer.stop();
    assert!(finished.status.success(), "SIGINT: exit 0; stderr:\n{}", finished.stderr);
}

#[test]
#[ignore = "loads BPF programs: needs root (cargo xtask test)"]
fn promtool_accepts_the_exposition_in_both_formats() {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tracer, listen) = serve(port, &[]);
    // Every family has samples: opens, releases, TIME_WAIT entries and lifetimes.
    for _ in 0..3 {
        let client = TcpStream::connect(("127.0.0.1", port)).unwrap();
        drop(listener.accept().unwrap());
        drop(client);
    }
    let url = format!("http://{listen}/metrics");
    let has_lifetimes = || curl(&url).1.contains("tcptrace_connection_lifetime_seconds_count");
    for _ in 0..50 {
        if has_lifetimes() {
            break;
        }
        thread::sleep(Duration::from_millis(200));
    }
    let (status, text) = curl(&url);
    assert_eq!(status, 200);
    assert!(text.contains("# TYPE tcptrace_connections_opened_total counter"), "{text}");
    assert!(text.contains("tcptrace_connection_lifetime_seconds_bucket{"), "{text}");
    assert!(text.contains("tcptrace_build_info{version="), "{text}");
    promtool_check_metrics(&text);

    let accept =
        "Accept: application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5";
    let (status, openmetrics) = curl_with(&url, &["-H", accept]);
    assert_eq!(status, 200);
    assert!(openmetrics.ends_with("# EOF\n"), "OpenMetrics ends with # EOF: {openmetrics}");
    let (_, headers) = curl_with(&url, &["-H", accept, "-D", "-", "-o", "/dev/null"]);
    assert!(headers.contains("application/openmetrics-text"), "{headers}");

    assert!(tracer.stop().status.success());
}

fn promtool_check_metrics(text: &str) {
    use std::io::Write as _;
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (cargo xtask setup installs prometheus)");
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_alert_rules_pass_their_promtool_tests() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus");
    let out = Command::new("promtool")
        .args(["test", "rules", "tcptrace-rules.test.yml"])
        .current_dir(&dir)
        .output()
        .expect("promtool (cargo xtask setup installs prometheus)");
    assert!(
        out.status.success(),
        "promtool test rules: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
#[ignore = "loads BPF programs: needs root (cargo xtask test)"]
fn health_and_unknown_paths() {
    let (tracer, listen) = serve(free_port(), &[]);
    assert_eq!(curl(&format!("http://{listen}/healthz")).0, 200);
    assert_eq!(curl(&format!("http://{listen}/nope")).0, 404);
    assert_eq!(curl_with(&format!("http://{listen}/metrics"), &["-X", "POST"]).0, 405);
    assert!(tracer.stop().status.success());
}

#[test]
#[ignore = "loads BPF programs: needs root (cargo xtask test)"]
fn a_taken_port_or_a_bad_address_is_one_line_and_status_2() {
    let taken = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    for listen in [addr.as_str(), "localhost", "256.1.1.1:80"] {
        let (code, stdout, stderr) =
            run_to_end(tcptrace(&["serve", "--listen", listen]).stdin(std::process::Stdio::null()));
        assert_eq!(code, 2, "--listen {listen}: {stderr}");
        assert!(stdout.is_empty());
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert!(
            lines[0].starts_with("error:") || lines[0].starts_with("tcptrace: error:"),
            "{stderr}"
        );
        if listen == addr {
            assert_eq!(lines.len(), 1, "one line: {stderr}");
            assert!(lines[0].contains(&addr) && lines[0].contains("in use"), "{stderr}");
        }
    }
}

#[test]
#[ignore = "loads BPF programs: needs root (cargo xtask test)"]
fn sigterm_while_scrapes_run_exits_0_without_a_hang() {
    let (tracer, listen) = serve(free_port(), &[]);
    let stop = Arc::new(AtomicBool::new(false));
    let scrapers: Vec<_> = (0..4)
        .map(|_| {
            let (stop, url) = (stop.clone(), format!("http://{listen}/metrics"));
            thread::spawn(move || {
                let mut answered = 0;
                while !stop.load(Ordering::Relaxed) {
                    // 200 until the stop; then 503 or a refused connection, never a hang
                    // (curl's --max-time would fail the status check below).
                    let (status, _) = curl(&url);
                    assert!(matches!(status, 0 | 200 | 503), "status {status}");
                    answered += u32::from(status == 200);
                }
                answered
            })
        })
        .collect();
    thread::sleep(Duration::from_secs(1));
    tracer.signal(libc::SIGTERM);
    let finished = tracer.wait();
    stop.store(true, Ordering::Relaxed);
    let answered: u32 = scrapers.into_iter().map(|s| s.join().expect("scraper")).sum();
    assert!(finished.status.success(), "exit 0 on SIGTERM; stderr:\n{}", finished.stderr);
    assert!(answered > 0, "scrapes were answered before the stop");
}

/// Across 3,000 short-lived processes, each with a name of its own, scraped as Prometheus
/// would: memory stays flat, the series stay within `--max-series` (the names beyond it are
/// counted under `other`), and the counters stay exact across the folding.
#[test]
#[ignore = "loads BPF programs: needs root (cargo xtask test)"]
fn memory_and_series_stay_bounded_across_short_lived_processes() {
    const CHILDREN: usize = 3_000;
    const FIRST: usize = 300;
    // Ten (comm, container) pairs.
    const MAX_SERIES: usize = 340;
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    let max_series = MAX_SERIES.to_string();
    let (tracer, listen) = serve(port, &["--stacks", "off", "--max-series", &max_series]);
    let url = format!("http://{listen}/metrics");
    let scrape = || {
        let (status, text) = curl(&url);
        assert_eq!(status, 200);
        text
    };
    let spawn = |i: usize| {
        let comm = std::ffi::CString::new(format!("soak-{i}")).unwrap();
        connect_from_child(&listener, port, &comm);
        if i.is_multiple_of(100) {
            scrape();
        }
    };
    (0..FIRST).for_each(spawn);
    thread::sleep(Duration::from_secs(2));
    scrape();
    let rss_first = tracer.rss_kb();
    (FIRST..CHILDREN).for_each(spawn);
    thread::sleep(Duration::from_secs(2));
    let text = scrape();
    let rss_all = tracer.rss_kb();
    let ratio = rss_all as f64 / rss_first as f64;
    eprintln!(
        "serve RSS after {FIRST} processes {rss_first} kB, after {CHILDREN} {rss_all} kB (x{ratio:.2})"
    );

    let per_process = text.lines().filter(|l| !l.starts_with('#') && l.contains("comm=\"")).count();
    assert!(per_process <= MAX_SERIES, "{per_process} per-process series: {text}");
    let sum = |prefix: &str| -> f64 {
        text.lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum()
    };
    let connects = sum("tcptrace_connections_opened_total{comm=\"soak-")
        + sum(
            "tcptrace_connections_opened_total{comm=\"other\",container=\"\",direction=\"connect\"}",
        );
    assert_eq!(connects, CHILDREN as f64, "every connect counted once, folded or not: {text}");
    assert!(sum("tcptrace_series_folded_total") > 0.0, "{text}");
    assert_eq!(sum("tcptrace_events_lost_total{reason=\"ring_full\"}"), 0.0);
    assert!(tracer.stop().status.success());
    assert!(
        ratio <= 1.25,
        "RSS grew x{ratio:.2} from {FIRST} to {CHILDREN} short-lived processes ({rss_first} kB -> {rss_all} kB)"
    );
}

/// TLS and basic auth from an exporter-toolkit web config: the right credentials over HTTPS
/// get the metrics, wrong or missing ones a 401, plain HTTP nothing; health needs none.
#[test]
#[ignore = "loads BPF programs: needs root (cargo xtask test)"]
fn tls_and_basic_auth_from_a_web_config() {
    let dir = std::env::temp_dir().join(format!("tcptrace-web-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
    std::fs::write(dir.join("tls.crt"), cert.cert.pem()).unwrap();
    std::fs::write(dir.join("tls.key"), cert.signing_key.serialize_pem()).unwrap();
    let hash = bcrypt::hash("s3cret", 4).unwrap();
    let config = format!(
        "tls_server_config:\n  cert_file: tls.crt\n  key_file: tls.key\nbasic_auth_users:\n  prometheus: {hash}\n"
    );
    let web = dir.join("web.yml");
    std::fs::write(&web, config).unwrap();
    let (tracer, listen) = serve(free_port(), &["--web-config", web.to_str().unwrap()]);
    let ca = dir.join("tls.crt");
    let ca = ca.to_str().unwrap();
    let https = format!("https://{listen}/metrics");
    let (status, text) = curl_with(&https, &["--cacert", ca, "-u", "prometheus:s3cret"]);
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("tcptrace_build_info"), "{text}");
    assert_eq!(curl_with(&https, &["--cacert", ca, "-u", "prometheus:wrong"]).0, 401);
    assert_eq!(curl_with(&https, &["--cacert", ca]).0, 401);
    assert_eq!(curl_with(&format!("https://{listen}/healthz"), &["--cacert", ca]).0, 200);
    assert_ne!(curl(&format!("http://{listen}/metrics")).0, 200, "plain HTTP is refused");
    assert!(tracer.stop().status.success());
    let _ = std::fs::remove_dir_all(&dir);

    // A web config that does not hold: one line, status 2.
    let bad = dir.with_extension("bad.yml");
    std::fs::write(&bad, "basic_auth_user:\n  x: y\n").unwrap();
    let (code, _, stderr) =
        run_to_end(&mut tcptrace(&["serve", "--web-config", bad.to_str().unwrap()]));
    let _ = std::fs::remove_file(&bad);
    assert_eq!(code, 2, "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("basic_auth_user"), "{stderr}");
}
