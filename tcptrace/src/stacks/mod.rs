//! The code path that opened a connection: the stacks the kernel captured at connect() and
//! accept(), symbolized while the process lives, and the "open site" a report groups by.
//!
//! `resolver` reads the kernel's stack map and symbolizes (with a cache per process); this file
//! is the result and how it is named in one line.
//!
//! May import `kernel` (the maps and `bpf_sys`), `event`, `interp` and `symbolize`; imported by
//! `pipeline`, `analysis` and `render`.

mod build_ids;
mod resolver;
mod trust;

use serde::{Serialize, Serializer};

pub use self::resolver::StackResolver;
use crate::symbolize::Frame;

/// The `module` of kernel frames outside any module (the kernel image itself).
pub const KERNEL_MODULE: &str = "[kernel]";

/// What makes two code paths the same, so a report groups by it: the kernel's stack ids (equal
/// ids mean equal addresses) and a hash of the interpreter frames (code objects and
/// instructions), 0 without.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StackKey {
    pub user: Option<u32>,
    pub kernel: Option<u32>,
    pub interp: u64,
}

impl StackKey {
    /// The key of a stack without interpreter frames.
    pub const fn native(user: Option<u32>, kernel: Option<u32>) -> Self {
        Self { user, kernel, interp: 0 }
    }
}

/// One connection's code path: kernel frames (innermost first), then user frames (innermost
/// first), where the user frames of an interpreter are its own (`interp`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenStack {
    pub key: StackKey,
    pub frames: Vec<Frame>,
    /// The user frames stop before a `main` or a thread's start: code without frame pointers
    /// ended the walk (the frames it left implausible are dropped), or the kernel's frame
    /// limit did. Reports say so (`stack_truncated`).
    pub truncated: bool,
}

impl Serialize for OpenStack {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.frames.serialize(s)
    }
}

impl OpenStack {
    /// The frames of the program's own code: user frames past the system-call plumbing (the C
    /// library, Rust's std and its runtimes, Go's runtime and net package, an interpreter's or
    /// a JIT runtime's own code) that only pass the call on, and past the interpreted
    /// libraries (Python's standard library and installed packages) that the application
    /// called. Without an application frame, from the first library frame; without that
    /// either, all user frames.
    pub fn own_frames(&self) -> &[Frame] {
        let user = self
            .frames
            .iter()
            .position(|f| f.module.as_deref() != Some(KERNEL_MODULE) && !is_kernel(f))
            .unwrap_or(self.frames.len());
        let user = &self.frames[user..];
        let first = user
            .iter()
            .position(|f| !is_plumbing(f) && !is_interpreted_library(f))
            .or_else(|| user.iter().position(|f| !is_plumbing(f)));
        match first {
            Some(first) => &user[first..],
            None => user,
        }
    }

    /// The own frames up to the program's `main` (C's `main`, Rust's `crate::main`, Go's
    /// `main.main`): what runs before it is the language runtime's start-up.
    pub fn to_main(&self) -> &[Frame] {
        let own = self.own_frames();
        match own.iter().position(|f| f.symbol.as_deref().is_some_and(is_main)) {
            Some(main) => &own[..=main],
            None => own,
        }
    }

    /// A Node.js connect() run on a later tick of the event loop: the stack has JavaScript
    /// frames and none is the application's (only Node's own modules and installed packages),
    /// because the function that asked for the connection had returned before it ran (Node
    /// connects from `process.nextTick`). Reports say so (`connect_deferred`).
    pub fn deferred(&self) -> bool {
        let mut js = self
            .frames
            .iter()
            .filter(|f| f.module.as_deref() == Some(crate::interp::JS_MODULE))
            .peekable();
        js.peek().is_some() && js.all(is_interpreted_library)
    }

    /// The open site in one line: the innermost own frame and its caller,
    /// `db_checkout (leaky.c:61) ← handle_orders (leaky.c:75)`; `None` without user frames.
    pub fn site(&self) -> Option<String> {
        let own = self.own_frames();
        let mut names = own.iter().take(2).map(Frame::display);
        let first = names.next()?;
        Some(match names.next() {
            Some(caller) => format!("{first} ← {caller}"),
            None => first,
        })
    }
}

fn is_main(symbol: &str) -> bool {
    symbol == "main" || symbol.ends_with("::main") || symbol.ends_with(".main")
}

/// Kernel addresses are in the top half of the address space on every 64-bit Linux.
fn is_kernel(frame: &Frame) -> bool {
    frame.addr >= 1 << 63
}

/// Interpreted code that is not the application's: Python's standard library, the packages
/// installed for it (`lib/python3.N/`, `site-packages`, Debian's `lib/python3/dist-packages`)
/// and its frozen modules; the JDK's classes; Node's own modules (`node:net`) and packages
/// (`node_modules/`).
fn is_interpreted_library(frame: &Frame) -> bool {
    const JDK: &[&str] = &["java.", "javax.", "sun.", "jdk.", "com.sun."];
    match frame.module.as_deref() {
        Some(crate::interp::PYTHON_MODULE) => frame.file.as_deref().is_some_and(|file| {
            file.starts_with("<frozen")
                || file.contains("/lib/python")
                || file.contains("/site-packages/")
                || file.contains("/dist-packages/")
        }),
        Some(crate::interp::JAVA_MODULE) => {
            frame.symbol.as_deref().is_some_and(|s| JDK.iter().any(|p| s.starts_with(p)))
        }
        // A function without a script is V8's own (a builtin such as `Promise`).
        Some(crate::interp::JS_MODULE) => frame
            .file
            .as_deref()
            .is_none_or(|file| file.starts_with("node:") || file.contains("/node_modules/")),
        _ => false,
    }
}

/// Frames that only carry a connect() or accept() to the kernel: system libraries, language
/// runtimes, and the native code of interpreters and JIT runtimes (CPython's eval loop and its
/// extension modules, `libjvm.so`, Node's and V8's C++ and builtins, Node's own JavaScript).
fn is_plumbing(frame: &Frame) -> bool {
    const LIBRARIES: &[&str] = &[
        "libc.so",
        "libc-",
        "ld-linux",
        "libpthread",
        "libstd-",
        "python3",
        "libpython3",
        "libjvm.so",
        "libnode.so",
    ];
    /// Executables that are a runtime (their own code is plumbing).
    const RUNTIMES: &[&str] = &["node", "nodejs"];
    const NAMESPACES: &[&str] = &[
        "std::",
        "core::",
        "alloc::",
        "socket2::",
        "mio::",
        "tokio::net::",
        "syscall.",
        "internal/poll.",
        "net.",
        "runtime.",
        "__libc_",
        "__GI_",
        "node::",
        "v8::",
        "Builtins_",
        "uv_",
    ];
    // Python's extension modules (`lib-dynload/_socket.cpython-311-….so`) and Node's own
    // JavaScript, as perf maps name it (`JS:~internalConnect node:net:1090`).
    const PLACES: &[&str] = &["/lib/python3", "node:internal", "node:net"];
    let library = frame.module.as_deref().is_some_and(|module| {
        let name = module.rsplit('/').next().unwrap_or(module);
        LIBRARIES.iter().any(|lib| name.starts_with(lib)) || RUNTIMES.contains(&name)
    });
    // `<std::net::TcpStream as ...>::connect` names its namespace after the `<`.
    let symbol = frame.symbol.as_deref().map(|s| s.trim_start_matches('<'));
    let place = |text: Option<&str>| text.is_some_and(|t| PLACES.iter().any(|p| t.contains(p)));
    // An interpreter frame is the application's or a library's (`is_interpreted_library`).
    let interpreted = matches!(
        frame.module.as_deref(),
        Some(crate::interp::PYTHON_MODULE | crate::interp::JAVA_MODULE | crate::interp::JS_MODULE)
    );
    !interpreted
        && (library
            || symbol.is_some_and(|s| NAMESPACES.iter().any(|ns| s.starts_with(ns)))
            || place(frame.module.as_deref())
            || place(symbol))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(addr: u64, symbol: Option<&str>, module: Option<&str>, line: Option<u32>) -> Frame {
        Frame {
            addr,
            symbol: symbol.map(str::to_owned),
            file: line.map(|_| "/src/leaky.c".to_owned()),
            line,
            module: module.map(str::to_owned),
        }
    }

    fn c_stack() -> OpenStack {
        OpenStack {
            key: StackKey::native(Some(1), Some(2)),
            frames: vec![
                frame(0xffff_ffff_8100_0000, Some("__sys_connect"), Some(KERNEL_MODULE), None),
                frame(0x7f00_0000_1000, Some("__connect"), Some("/lib/libc.so.6"), None),
                frame(0x5555_0000_1000, Some("db_checkout"), Some("/tmp/leaky"), Some(61)),
                frame(0x5555_0000_2000, Some("handle_orders"), Some("/tmp/leaky"), Some(75)),
                frame(0x5555_0000_3000, Some("main"), Some("/tmp/leaky"), Some(90)),
            ],
            truncated: false,
        }
    }

    #[test]
    fn the_site_skips_the_kernel_and_the_c_library() {
        let stack = c_stack();
        assert_eq!(stack.own_frames().len(), 3);
        assert_eq!(
            stack.site().as_deref(),
            Some("db_checkout (leaky.c:61) ← handle_orders (leaky.c:75)")
        );
    }

    #[test]
    fn the_runtime_start_up_past_main_is_cut() {
        let mut stack = c_stack();
        stack.frames.push(frame(0x7f00_0000_2000, Some("__libc_start_main"), None, None));
        assert_eq!(stack.to_main().len(), 3);
        assert_eq!(stack.to_main().last().unwrap().symbol.as_deref(), Some("main"));
    }

    #[test]
    fn the_site_skips_rust_std() {
        let stack = OpenStack {
            key: StackKey::native(Some(1), None),
            frames: vec![
                frame(0x7f00_0000_1000, Some("connect"), Some("/lib/libc.so.6"), None),
                frame(0x5555_0000_0100, Some("std::net::tcp::TcpStream::connect"), None, None),
                frame(
                    0x5555_0000_0200,
                    Some("<std::net::tcp::TcpStream as std::io::Read>::read"),
                    None,
                    None,
                ),
                frame(0x5555_0000_1000, Some("leaky::open_conn"), Some("/tmp/leaky"), Some(12)),
            ],
            truncated: false,
        };
        assert_eq!(stack.site().as_deref(), Some("leaky::open_conn (leaky.c:12)"));
    }

    fn python(symbol: &str, file: &str, line: u32) -> Frame {
        Frame {
            addr: 0x7f00_1000_0000,
            symbol: Some(symbol.to_owned()),
            file: Some(file.to_owned()),
            line: Some(line),
            module: Some(crate::interp::PYTHON_MODULE.to_owned()),
        }
    }

    #[test]
    fn the_site_of_a_python_program_is_its_own_function() {
        let mut stack = OpenStack {
            key: StackKey::native(Some(1), None),
            frames: vec![
                frame(0x7f00_0000_1000, Some("__libc_connect"), Some("/lib/libc.so.6"), None),
                frame(
                    0x7f00_0000_2000,
                    Some("sock_call_ex"),
                    Some("/usr/lib/python3.11/lib-dynload/_socket.cpython-311-x86_64-linux-gnu.so"),
                    None,
                ),
                frame(
                    0x5555_0000_1000,
                    Some("_PyEval_EvalFrameDefault"),
                    Some("/usr/bin/python3.11"),
                    None,
                ),
                python("create_connection", "/usr/lib/python3.11/socket.py", 836),
                python("Pool._connect", "/venv/lib/python3.11/site-packages/pymongo/pool.py", 90),
                python("open_order_client", "/srv/app/leaky_jobs.py", 5),
                python("main", "/srv/app/leaky_jobs.py", 9),
            ],
            truncated: false,
        };
        assert_eq!(
            stack.site().as_deref(),
            Some("open_order_client (leaky_jobs.py:5) ← main (leaky_jobs.py:9)")
        );
        // Library code only: its innermost frame, never the interpreter's C.
        stack.frames.truncate(5);
        assert_eq!(
            stack.site().as_deref(),
            Some("create_connection (socket.py:836) ← Pool._connect (pool.py:90)")
        );
        // A Python function whose name looks like Go's runtime is still the application's.
        stack.frames.push(python("runtime.connect", "/srv/app/jobs.py", 3));
        assert_eq!(stack.own_frames()[0].symbol.as_deref(), Some("runtime.connect"));
    }

    fn js(symbol: &str, file: &str) -> Frame {
        Frame {
            addr: 0x0100_0000,
            symbol: Some(symbol.to_owned()),
            file: Some(file.to_owned()),
            line: None,
            module: Some(crate::interp::JS_MODULE.to_owned()),
        }
    }

    fn node_stack(js_frames: Vec<Frame>) -> OpenStack {
        let mut frames = vec![
            frame(0x7f00_0000_1000, Some("__connect"), Some("/lib/libc.so.6"), None),
            frame(0x0200_0000, Some("uv__tcp_connect"), Some("/usr/bin/node"), None),
            frame(0x0200_1000, Some("node::TCPWrap::Connect"), Some("/usr/bin/node"), None),
            frame(0x0200_2000, Some("Builtins_CallApiCallback"), Some("/usr/bin/node"), None),
        ];
        frames.extend(js_frames);
        frames.push(frame(0x0200_3000, Some("Builtins_JSEntry"), Some("/usr/bin/node"), None));
        OpenStack { key: StackKey::native(Some(1), None), frames, truncated: false }
    }

    #[test]
    fn a_node_connect_from_the_next_tick_is_deferred_and_sited_in_node() {
        let stack = node_stack(vec![
            js("internalConnect", "node:net"),
            js("defaultTriggerAsyncIdScope", "node:internal/async_hooks"),
            js("processTicksAndRejections", "node:internal/process/task_queues"),
        ]);
        assert!(stack.deferred());
        assert_eq!(
            stack.site().as_deref(),
            Some("internalConnect (node:net) ← defaultTriggerAsyncIdScope (async_hooks)")
        );
    }

    #[test]
    fn a_node_connect_inside_the_programs_function_is_sited_there() {
        let stack = node_stack(vec![
            js("connect", "/srv/app/node_modules/driver/index.js"),
            js("open_order_client", "/srv/app/orders.js"),
            js("listOnTimeout", "node:internal/timers"),
        ]);
        assert!(!stack.deferred());
        assert_eq!(
            stack.site().as_deref(),
            Some("open_order_client (orders.js) ← listOnTimeout (timers)")
        );
        // Native frames only (V8's frames not read): nothing is said about ticks.
        assert!(!node_stack(Vec::new()).deferred());
    }

    #[test]
    fn the_site_of_a_java_program_is_its_own_method() {
        let java = |symbol: &str, file: &str, line: u32| Frame {
            module: Some(crate::interp::JAVA_MODULE.to_owned()),
            ..python(symbol, file, line)
        };
        let stack = OpenStack {
            key: StackKey::native(Some(1), None),
            frames: vec![
                frame(0x7f00_0000_1000, Some("__libc_connect"), Some("/lib/libc.so.6"), None),
                java("sun.nio.ch.Net.connect", "Net.java", 579),
                java("java.net.Socket.<init>", "Socket.java", 287),
                java("Leaky.open_order_client", "Leaky.java", 7),
                java("Leaky.main", "Leaky.java", 16),
                frame(
                    0x7f00_0000_2000,
                    Some("JavaCalls::call_helper"),
                    Some("/usr/lib/jvm/x/lib/server/libjvm.so"),
                    None,
                ),
            ],
            truncated: false,
        };
        assert_eq!(
            stack.site().as_deref(),
            Some("Leaky.open_order_client (Leaky.java:7) ← Leaky.main (Leaky.java:16)")
        );
    }

    #[test]
    fn runtime_frames_of_java_and_node_are_plumbing() {
        for (symbol, module) in [
            ("JVM_Connect", "/usr/lib/jvm/java-17-openjdk-amd64/lib/server/libjvm.so"),
            ("node::TCPWrap::Connect<sockaddr_in>", "/usr/bin/node"),
            ("v8::internal::Execution::Call", "/usr/bin/node"),
            ("Builtins_JSEntryTrampoline", "/usr/bin/node"),
            ("JS:~internalConnect node:net:1090", "/tmp/perf-1.map"),
        ] {
            assert!(
                is_plumbing(&frame(0x7f00_0000_1000, Some(symbol), Some(module), None)),
                "{symbol}"
            );
        }
        assert!(!is_plumbing(&frame(
            0x7f00_0000_1000,
            Some("JS:*openOrderClient /srv/app.js:7"),
            None,
            None
        )));
    }

    #[test]
    fn a_stack_of_plumbing_only_is_named_by_its_first_user_frame() {
        let stack = OpenStack {
            key: StackKey::native(Some(1), None),
            frames: vec![frame(0x7f00_0000_1000, None, Some("/lib/libc.so.6"), None)],
            truncated: false,
        };
        assert_eq!(stack.site().as_deref(), Some("0x7f0000001000 (libc.so.6)"));
        let kernel_only = OpenStack {
            key: StackKey::native(None, Some(2)),
            frames: c_stack().frames[..1].to_vec(),
            truncated: false,
        };
        assert_eq!(kernel_only.site(), None);
    }

    #[test]
    fn serializes_as_its_frames() {
        let value = serde_json::to_value(c_stack()).unwrap();
        assert_eq!(value.as_array().unwrap().len(), 5);
        assert_eq!(value[2]["symbol"], "db_checkout");
        assert_eq!(value[2]["line"], 61);
    }
}
