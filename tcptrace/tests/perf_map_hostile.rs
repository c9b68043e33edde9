//! Hostile perf maps (issue 13): a process running as `nobody` connects from JIT code
//! (anonymous executable memory) and puts something other than its perf map at
//! `/tmp/perf-<pid>.map`. `tcptrace leaks --duration 4s -p PID --json` must end on its own,
//! exit 0 with a report, and never show what the file points to.
//!
//! The JIT process is this test binary run again as `nobody` (the `jit_process` test, which
//! does nothing unless [`CHILD`] is set): it maps an anonymous page, writes a stub there that
//! makes the `connect` system call itself (so the stack's innermost frame is in the stub),
//! makes it executable, prints its address, and on `go PORT` connects to the test's listener
//! through the stub and keeps the connections open (an `unclosed` finding, with its stack).
//!
//! Run as root: `cargo test -p tcptrace --test perf_map_hostile -- --include-ignored`.
//! `PERF_MAP_HOSTILE_TCPTRACE=/path/to/tcptrace` runs another build (to see the bug in one
//! that has it: the FIFO case then fails at `BOUND` instead of hanging).

use std::{
    fs,
    io::{BufRead, BufReader, Read as _, Write as _},
    net::{TcpListener, TcpStream},
    os::unix::{
        ffi::OsStrExt as _,
        fs::{PermissionsExt as _, lchown, symlink},
        process::CommandExt as _,
    },
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex, mpsc},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

/// Set in the environment of the JIT process.
const CHILD: &str = "PERF_MAP_HOSTILE_CHILD";
const NOBODY: u32 = 65534;
/// tcptrace's whole run must fit: loading its programs on a loaded machine, 4 s of tracing,
/// the report. A tcptrace blocked on a perf map never ends.
const BOUND: Duration = Duration::from_secs(90);
/// Connections the JIT process opens once tcptrace traces.
const CONNECTIONS: usize = 5;
/// The stub: `mov eax, 42 (connect); syscall; ret`, called as `fn(fd, addr, len) -> i64`
/// (the System V arguments are the system call's).
const STUB: [u8; 8] = [0xb8, 0x2a, 0x00, 0x00, 0x00, 0x0f, 0x05, 0xc3];
/// Where the instruction pointer is during the system call: after `syscall`.
const IN_SYSCALL: u64 = 7;
/// The stub's size in the perf maps the tests write.
const STUB_SIZE: u64 = 0x10;

/// What the JIT process prints: its stub's address, then that it has connected.
const JIT_MARK: &str = "@@jit-stub ";
const CONNECTED_MARK: &str = "@@connected";

/// One tracer at a time: each loads its programs, on few cores.
static SERIAL: Mutex<()> = Mutex::new(());

// ---------------------------------------------------------------------------------------------
// The JIT process

/// The JIT process's body; passes at once when run as a test.
#[test]
fn jit_process() {
    if std::env::var_os(CHILD).is_none() {
        return;
    }
    const PAGE: usize = 4096;
    // SAFETY: a fresh anonymous mapping, never unmapped (the process exits).
    let page = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            PAGE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(page, libc::MAP_FAILED, "{}", std::io::Error::last_os_error());
    // SAFETY: the page is writable and larger than the stub.
    unsafe { std::ptr::copy_nonoverlapping(STUB.as_ptr(), page.cast::<u8>(), STUB.len()) };
    // SAFETY: the page mapped above.
    let ret = unsafe { libc::mprotect(page, PAGE, libc::PROT_READ | libc::PROT_EXEC) };
    assert_eq!(ret, 0, "{}", std::io::Error::last_os_error());
    // SAFETY: the page holds the stub, which follows the C calling convention.
    let connect: extern "C" fn(libc::c_int, *const libc::sockaddr_in, libc::socklen_t) -> i64 =
        unsafe { std::mem::transmute(page) };

    let mut out = std::io::stdout().lock();
    // Marked: the test harness may print on the same line.
    writeln!(out, "{JIT_MARK}{:x}", page as u64).unwrap();
    out.flush().unwrap();
    let mut stdin = BufReader::new(std::io::stdin());
    let mut line = String::new();
    stdin.read_line(&mut line).unwrap();
    let port: u16 = line.trim().strip_prefix("go ").expect("go PORT").parse().unwrap();
    let addr = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from_be_bytes([127, 0, 0, 1]).to_be() },
        sin_zero: [0; 8],
    };
    let mut fds = Vec::new();
    for _ in 0..CONNECTIONS {
        // SAFETY: plain system calls; the descriptor is kept open on purpose.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
        assert!(fd >= 0, "{}", std::io::Error::last_os_error());
        let ret = connect(fd, &addr, size_of::<libc::sockaddr_in>() as libc::socklen_t);
        assert_eq!(ret, 0, "connect through the stub: errno {}", -ret);
        fds.push(fd);
        thread::sleep(Duration::from_millis(100));
    }
    writeln!(out, "{CONNECTED_MARK}").unwrap();
    out.flush().unwrap();
    // Until the test closes stdin: the connections stay open.
    let _ = stdin.read_to_end(&mut Vec::new());
}

/// The JIT process, as `nobody`; killed on drop.
struct Jit {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<std::process::ChildStdout>,
    /// The stub's address.
    stub: u64,
    /// This binary, copied where `nobody` may run it.
    _exe: TempDir,
}

impl Jit {
    fn spawn() -> Self {
        let exe = TempDir::new("exe", 0o755);
        let copy = exe.0.join("jit");
        fs::copy(std::env::current_exe().unwrap(), &copy).unwrap();
        fs::set_permissions(&copy, fs::Permissions::from_mode(0o755)).unwrap();
        let mut child = Command::new(&copy)
            .args(["jit_process", "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD, "1")
            .uid(NOBODY)
            .gid(NOBODY)
            .current_dir("/")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawning the JIT process");
        let stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let line = read_until(&mut stdout, JIT_MARK);
        let (_, addr) = line.split_once(JIT_MARK).unwrap();
        let stub = u64::from_str_radix(addr.trim(), 16).unwrap();
        Self { child, stdin, stdout, stub, _exe: exe }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn perf_map(&self) -> PathBuf {
        PathBuf::from(format!("/tmp/perf-{}.map", self.pid()))
    }

    /// A perf map line naming the stub `name`.
    fn line(&self, name: &str) -> String {
        format!("{:x} {STUB_SIZE:x} {name}\n", self.stub)
    }

    /// Connects to `port` and waits until it has.
    fn connect(&mut self, port: u16) {
        writeln!(self.stdin, "go {port}").unwrap();
        self.stdin.flush().unwrap();
        read_until(&mut self.stdout, CONNECTED_MARK);
    }
}

/// The first line of `stdout` holding `mark`.
fn read_until(stdout: &mut impl BufRead, mark: &str) -> String {
    loop {
        let mut line = String::new();
        assert_ne!(stdout.read_line(&mut line).unwrap(), 0, "the JIT process ended before {mark}");
        if line.contains(mark) {
            return line;
        }
    }
}

impl Drop for Jit {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_file(self.perf_map());
    }
}

// ---------------------------------------------------------------------------------------------
// tcptrace

/// What `tcptrace leaks` left.
struct Run {
    status: ExitStatus,
    took: Duration,
    stdout: String,
    stderr: String,
    report: Value,
}

impl Run {
    fn everything(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }

    /// The frames of the JIT process's stacks at the stub's address.
    fn stub_frames(&self, jit: &Jit) -> Vec<Value> {
        let addr = format!("{:#x}", jit.stub + IN_SYSCALL);
        let findings = self.report["findings"].as_array().cloned().unwrap_or_default();
        findings
            .iter()
            .filter(|finding| finding["pid"] == jit.pid())
            .flat_map(|finding| finding["stack"].as_array().cloned().unwrap_or_default())
            .filter(|frame| frame["addr"] == addr.as_str())
            .collect()
    }
}

/// Traces `jit` with `tcptrace leaks --duration 4s -p PID --json`, the JIT process connecting
/// once it traces; fails if tcptrace has not ended within [`BOUND`] (and kills it then).
fn trace(jit: &mut Jit) -> Run {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
    let held = Arc::clone(&accepted);
    thread::spawn(move || {
        for stream in listener.incoming().map_while(Result::ok) {
            held.lock().unwrap().push(stream);
        }
    });

    let tcptrace = std::env::var("PERF_MAP_HOSTILE_TCPTRACE")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_tcptrace").to_owned());
    let pid = jit.pid().to_string();
    let started = Instant::now();
    let mut child = Command::new(&tcptrace)
        .args(["leaks", "--duration", "4s", "-p", &pid, "--json", "--min-age", "1s"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning tcptrace");
    let stdout = read_all(child.stdout.take().unwrap());
    let (tracing_tx, tracing) = mpsc::channel();
    let stderr_pipe = child.stderr.take().unwrap();
    let stderr_lines: Arc<Mutex<Vec<String>>> = Arc::default();
    let lines = Arc::clone(&stderr_lines);
    thread::spawn(move || {
        for line in BufReader::new(stderr_pipe).lines().map_while(Result::ok) {
            if line.starts_with("tcptrace: tracing") {
                let _ = tracing_tx.send(());
            }
            lines.lock().unwrap().push(line);
        }
    });
    let stderr = || stderr_lines.lock().unwrap().join("\n");

    if tracing.recv_timeout(BOUND).is_ok() {
        jit.connect(port);
    }
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > BOUND {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "tcptrace leaks --duration 4s did not end within {BOUND:?} (killed); stderr:\n{}",
                stderr()
            );
        }
        thread::sleep(Duration::from_millis(50));
    };
    let took = started.elapsed();
    let stdout = stdout.recv_timeout(Duration::from_secs(10)).expect("tcptrace's stdout");
    // The stderr reader ends with the pipe; give it a moment to take the last lines.
    thread::sleep(Duration::from_millis(100));
    let stderr = stderr();
    assert!(
        status.success(),
        "tcptrace exited with {status}; stderr:\n{stderr}\nstdout:\n{stdout}"
    );
    let report: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!("tcptrace leaks --json printed no JSON report ({e}):\n{stdout}\nstderr:\n{stderr}")
    });
    drop(accepted);
    Run { status, took, stdout, stderr, report }
}

fn read_all(mut pipe: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut text = String::new();
        let _ = pipe.read_to_string(&mut text);
        let _ = tx.send(text);
    });
    rx
}

/// What every hostile case must satisfy: tcptrace ended on its own with a report that has the
/// JIT process's stack, the stub's frame unnamed, and nothing of `secret`.
fn survived(run: &Run, jit: &Jit, secret: Option<&str>, why: &str) {
    let Run { status, took, stderr, .. } = run;
    eprintln!("tcptrace: {status} after {took:?}");
    if let Some(secret) = secret {
        assert!(
            !run.everything().contains(secret),
            "the secret is in the output:\n{}",
            run.everything()
        );
    }
    let frames = run.stub_frames(jit);
    assert!(!frames.is_empty(), "no stack frame at the stub ({:#x}):\n{}", jit.stub, run.stdout);
    assert!(frames.iter().all(|frame| frame["symbol"].is_null()), "{frames:#?}");
    let not_read = format!("perf-{}.map not read: ", jit.pid());
    let note = stderr.lines().find(|line| line.contains(&not_read));
    assert!(
        note.is_some_and(|note| note.contains(why)),
        "no note saying the perf map was not read ({why}):\n{stderr}"
    );
}

// ---------------------------------------------------------------------------------------------
// The cases

/// Runs a JIT process, lets `plant` put something at its perf map's path, and traces it.
fn traced<T>(plant: impl FnOnce(&Jit) -> T) -> (Jit, Run, T) {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let mut jit = Jit::spawn();
    let planted = plant(&jit);
    let run = trace(&mut jit);
    (jit, run, planted)
}

/// A perf map of the process's own, as a JIT writes it: the stub is named. (The hostile cases
/// below would pass vacuously if perf maps were never looked at.)
#[test]
#[ignore = "needs root: loads BPF programs"]
fn a_perf_map_names_the_jit_frame() {
    let (jit, run, ()) = traced(|jit| {
        fs::write(jit.perf_map(), jit.line("jit_connect_stub")).unwrap();
        lchown(jit.perf_map(), Some(NOBODY), Some(NOBODY)).unwrap();
    });
    let frames = run.stub_frames(&jit);
    assert!(!frames.is_empty(), "no stack frame at the stub ({:#x}):\n{}", jit.stub, run.stdout);
    assert!(frames.iter().all(|frame| frame["symbol"] == "jit_connect_stub"), "{frames:#?}");
}

/// `mkfifo /tmp/perf-PID.map` as nobody: opening it for reading blocked until a writer came.
#[test]
#[ignore = "needs root: loads BPF programs"]
fn a_fifo_perf_map_does_not_block() {
    let (jit, run, ()) = traced(|jit| {
        let path = std::ffi::CString::new(jit.perf_map().as_os_str().as_bytes()).unwrap();
        // SAFETY: a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o666) }, 0);
        lchown(jit.perf_map(), Some(NOBODY), Some(NOBODY)).unwrap();
    });
    survived(&run, &jit, None, "a FIFO");
}

/// A symbolic link to a file only root may read, written as a perf map naming the stub with a
/// secret: its content must not reach the report.
#[test]
#[ignore = "needs root: loads BPF programs"]
fn a_symbolic_link_perf_map_is_not_followed() {
    let (jit, run, (_dir, secret)) = traced(|jit| {
        let (dir, secret) = root_only_secret(jit);
        symlink(dir.0.join("secret"), jit.perf_map()).unwrap();
        lchown(jit.perf_map(), Some(NOBODY), Some(NOBODY)).unwrap();
        (dir, secret)
    });
    survived(&run, &jit, Some(&secret), "a symbolic link");
}

/// A hard link to the same file (what `fs.protected_hardlinks = 0` lets any user make).
#[test]
#[ignore = "needs root: loads BPF programs"]
fn a_hard_link_perf_map_is_not_read() {
    let (jit, run, (_dir, secret)) = traced(|jit| {
        let (dir, secret) = root_only_secret(jit);
        fs::hard_link(dir.0.join("secret"), jit.perf_map()).unwrap();
        (dir, secret)
    });
    survived(&run, &jit, Some(&secret), "2 hard links");
}

/// A perf map larger than the bound (it did take its size in memory, and more).
#[test]
#[ignore = "needs root: loads BPF programs"]
fn a_large_perf_map_is_skipped() {
    let (jit, run, ()) = traced(|jit| {
        let mut file = std::io::BufWriter::new(fs::File::create(jit.perf_map()).unwrap());
        // 72 MiB of functions elsewhere, then the stub's.
        let filler =
            "1000 10 filler_function_with_a_long_name_to_fill_the_file_quickly_0123456789\n";
        for _ in 0..(72 << 20) / filler.len() {
            file.write_all(filler.as_bytes()).unwrap();
        }
        file.write_all(jit.line("named_from_a_huge_map").as_bytes()).unwrap();
        drop(file);
        lchown(jit.perf_map(), Some(NOBODY), Some(NOBODY)).unwrap();
    });
    survived(&run, &jit, Some("named_from_a_huge_map"), "MiB, over the 64 MiB bound");
}

/// A directory only root may enter, holding `secret`: a perf map line naming the stub with a
/// unique secret. Returns the directory (removed on drop) and the secret.
fn root_only_secret(jit: &Jit) -> (TempDir, String) {
    let dir = TempDir::new("secret", 0o700);
    let secret = format!("ROOT_ONLY_SECRET_{}_{:x}", jit.pid(), jit.stub);
    let path = dir.0.join("secret");
    fs::write(&path, jit.line(&secret)).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
    (dir, secret)
}

/// A fresh directory under /tmp with `mode`, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(what: &str, mode: u32) -> Self {
        let path = Path::new("/tmp").join(format!(
            "tcptrace-perf-map-hostile-{what}-{}-{:?}",
            std::process::id(),
            thread::current().id()
        ));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir(&path).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
        Self(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}
