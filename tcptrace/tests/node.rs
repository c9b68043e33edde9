//! End to end: a Node.js program's connections named by its JavaScript frames, read from V8's
//! frames without any flag (issue 18): Node's `net` module connects on a later tick, which the
//! report says; a connect made synchronously (through the `tcp_wrap` binding, as native-speed
//! drivers do) is named by the program's own function.

#[allow(dead_code, reason = "shared by several test binaries; each uses a subset")]
mod support {
    pub mod leaky_program;
    pub mod raw;
    pub mod sockets;
    pub mod tracer;
}

use std::{path::Path, thread, time::Duration};

use serde_json::Value;
use support::{
    leaky_program::{Program, Workdir, frames_of, report, unclosed_group},
    sockets::holding_server,
    tracer::Tracer,
};

const NODE: &str = "/usr/bin/node";

/// Opens 4 connections once the file `go` exists in its directory, with `net` or (argument
/// `raw`) with the `tcp_wrap` binding, says so by creating `ready`, and holds them.
const LEAKY: &str = r#"const net = require('net');
const fs = require('fs');
const path = require('path');
const [port, dir, how] = process.argv.slice(2);
const held = [];
function open_order_client() {
  return net.createConnection({ host: '127.0.0.1', port: Number(port) });
}
function open_raw_client() {
  const { TCP, TCPConnectWrap, constants } = process.binding('tcp_wrap');
  const handle = new TCP(constants.SOCKET);
  const req = new TCPConnectWrap();
  req.oncomplete = () => {};
  handle.connect(req, '127.0.0.1', Number(port));
  return handle;
}
function on_tick() {
  if (!fs.existsSync(path.join(dir, 'go'))) return;
  clearInterval(poll);
  for (let i = 0; i < 4; i++) held.push(how === 'raw' ? open_raw_client() : open_order_client());
  setTimeout(() => fs.writeFileSync(path.join(dir, 'ready'), ''), 300);
}
const poll = setInterval(on_tick, 20);
fs.writeFileSync(path.join(dir, 'started'), '');
setInterval(() => {}, 60000);
"#;

fn start(name: &str, port: &str, how: &str) -> (Workdir, Program) {
    let work = Workdir::new(&format!("node-{name}"));
    let script = work.write("leaky.js", LEAKY);
    let dir = work.dir.to_string_lossy().into_owned();
    let program = Program::spawn(Path::new(NODE), &[&script.to_string_lossy(), port, &dir, how]);
    work.wait_for("started");
    (work, program)
}

#[test]
#[ignore = "loads BPF programs: needs root (cargo xtask test)"]
fn a_node_programs_javascript_frames_are_named_and_its_deferred_connect_is_said() {
    let port = holding_server().to_string();
    let (work, program) = start("net", &port, "net");
    let tracer = Tracer::start(&["leaks", "--port", &port, "--min-age", "1s", "--json"]);
    work.connect();
    let (report, _) = report(tracer);
    let group = unclosed_group(&report, program.pid());
    let js = frames_of(group, "[js]");
    assert!(
        js.iter().any(|f| f["symbol"] == "internalConnect" && f["file"] == "node:net"),
        "Node's connect is named from V8's frames, without flags: {group:#}"
    );
    assert!(
        js.iter().all(|f| f["file"].as_str().is_some_and(|file| file.starts_with("node:"))),
        "the program's own function had returned when Node connected: {group:#}"
    );
    assert_eq!(group["connect_deferred"], true, "{group:#}");
    assert!(
        group["site"].as_str().is_some_and(|site| site.starts_with("internalConnect (node:net)")),
        "without an application frame the site is Node's innermost JavaScript: {group:#}"
    );
}

#[test]
#[ignore = "loads BPF programs: needs root (cargo xtask test)"]
fn a_synchronous_connect_in_node_is_named_by_the_programs_function() {
    let port = holding_server().to_string();
    let tracer = Tracer::start(&["leaks", "--port", &port, "--min-age", "1s", "--json"]);
    let (work, program) = start("raw", &port, "raw");
    // tcptrace reads a Node executable's V8 metadata at its first exec (80 ms; unoptimized
    // builds of tcptrace's own code add to it): opens before that get native frames only.
    thread::sleep(Duration::from_millis(500));
    work.connect();
    let (report, _) = report(tracer);
    let group = unclosed_group(&report, program.pid());
    assert_eq!(
        group["site"], "open_raw_client (leaky.js) ← on_tick (leaky.js)",
        "the site names the program's function and its caller: {group:#}"
    );
    assert_eq!(group["connect_deferred"], false, "{group:#}");
    let js: Vec<&Value> = frames_of(group, "[js]");
    assert!(
        js.iter().any(|f| f["symbol"] == "listOnTimeout"),
        "Node's timer frames outside the program are named too: {group:#}"
    );
}
