//! A real Prometheus server (Debian's `prometheus` package) scraping a target, and its HTTP
//! query API; `curl` for plain requests. Killed when dropped.

use std::{
    net::{Ipv4Addr, TcpListener},
    path::PathBuf,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

pub struct Prometheus {
    child: Child,
    pub port: u16,
    dir: PathBuf,
}

/// A port free now.
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap().local_addr().unwrap().port()
}

impl Prometheus {
    /// Starts Prometheus scraping `target` (host:port) every second, with `rules` (a rule file's
    /// path) when given; ready once its API answers.
    pub fn start(target: &str, rules: Option<&str>) -> Self {
        let port = free_port();
        let dir =
            std::env::temp_dir().join(format!("tcptrace-prometheus-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let rule_files = rules.map(|r| format!("rule_files: [{r:?}]\n")).unwrap_or_default();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n{rule_files}\
             scrape_configs:\n  - job_name: tcptrace\n    static_configs:\n      - targets: [{target:?}]\n"
        );
        std::fs::write(dir.join("prometheus.yml"), config).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting prometheus (cargo xtask setup installs it)");
        let prometheus = Self { child, port, dir };
        prometheus.wait_until("Prometheus ready", Duration::from_secs(60), || {
            curl(&format!("http://127.0.0.1:{port}/-/ready")).0 == 200
        });
        prometheus
    }

    /// The value of an instant query's first sample, `None` when the result is empty.
    pub fn query(&self, promql: &str) -> Option<f64> {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "5", "--data-urlencode"])
            .arg(format!("query={promql}"))
            .arg(format!("http://127.0.0.1:{}/api/v1/query", self.port))
            .output()
            .expect("curl");
        let body: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        assert_eq!(body["status"], "success", "query {promql}: {body}");
        let value = &body["data"]["result"][0]["value"][1];
        value.as_str().map(|v| v.parse().expect("a number"))
    }

    /// Polls `done` every 500 ms until it holds; panics after `timeout`.
    pub fn wait_until(&self, what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + timeout;
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            thread::sleep(Duration::from_millis(500));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// GET `url` with curl: (status, body); status 0 when nothing answered.
pub fn curl(url: &str) -> (u16, String) {
    curl_with(url, &[])
}

/// GET `url` with extra curl arguments: (status, body).
pub fn curl_with(url: &str, args: &[&str]) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "15", "-o", "-", "-w", "\n%{http_code}"])
        .args(args)
        .arg(url)
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}
