//! Symbolization of live processes (the leaky fixtures, built here), perf maps, the kernel, and
//! processes that are gone. No BPF: the addresses come from the fixtures themselves, and the
//! frame-pointer walk they print is the one `bpf_get_stackid(BPF_F_USER_STACK)` makes.

mod fixtures;

use std::{
    fs,
    io::Read,
    net::TcpListener,
    path::{Path, PathBuf},
    ptr,
};

use fixtures::{Addrs, Fixture, line_of};
use tcptrace::symbolize::{Frame, Symbolizer};

/// The fixtures' functions, as their definitions start in the source.
const FUNCTIONS: [&str; 4] = ["open_conn", "db_checkout", "handle_orders", "refresh_cache"];

/// The one frame of an address outside inlined code.
fn single(frames: Vec<Frame>) -> Frame {
    let [frame] = <[Frame; 1]>::try_from(frames)
        .unwrap_or_else(|frames| panic!("expected one frame, got {frames:#?}"));
    frame
}

fn file_name(path: &str) -> &str {
    Path::new(path).file_name().and_then(|name| name.to_str()).unwrap_or(path)
}

/// Names each function with its definition's line, and the return address into db_checkout
/// with the line of the call.
/// Returns the frames of the return address looked up as it is.
fn check_functions_and_call_site(
    fixture: Fixture,
    name: impl Fn(&str) -> String,
    def: &str,
) -> Vec<Frame> {
    let (running, addrs) = fixture.print_addrs();
    let source = fixture.source();
    let source_name = file_name(source.to_str().unwrap()).to_owned();
    let mut symbolizer = Symbolizer::new();
    for function in FUNCTIONS {
        let frame = single(symbolizer.user(running.pid(), &[addrs.function(function)]));
        assert_eq!(frame.symbol.as_deref(), Some(&*name(function)), "{frame:#?}");
        assert_eq!(frame.file.as_deref().map(file_name), Some(&*source_name), "{frame:#?}");
        assert_eq!(frame.line, Some(line_of(&source, &format!("{def}{function}("))), "{frame:#?}");
        let module = frame.module.as_deref().expect("a module");
        assert_eq!(Path::new(module), fixture.binary(), "{frame:#?}");
        assert_eq!(frame.addr, addrs.function(function));
    }

    // As a captured stack holds it: looked up inside the call, the line of the call.
    let frame = single(symbolizer.user_stack(running.pid(), &[addrs.checkout_return]));
    assert_eq!(frame.symbol.as_deref(), Some(&*name("db_checkout")), "{frame:#?}");
    assert_eq!(frame.line, Some(addrs.checkout_call_line), "{frame:#?}");
    assert_eq!(frame.addr, addrs.checkout_return);
    assert_eq!(
        frame.display(),
        format!("{} ({source_name}:{})", name("db_checkout"), addrs.checkout_call_line)
    );
    // As it is: the instruction after the call, still in db_checkout (outermost frame), on the
    // call's line or a later one of the function. Rust inlines the atomic store that follows the
    // call there: its frames come first, with the same address.
    let frames = symbolizer.user(running.pid(), &[addrs.checkout_return]);
    let frame = frames.last().expect("a frame");
    assert_eq!(frame.symbol.as_deref(), Some(&*name("db_checkout")), "{frames:#?}");
    let line = frame.line.expect("a line");
    assert!(
        (addrs.checkout_call_line..addrs.checkout_call_line + 4).contains(&line),
        "{frames:#?}: the call is on line {}",
        addrs.checkout_call_line
    );
    assert!(frames.iter().all(|frame| frame.addr == addrs.checkout_return), "{frames:#?}");
    assert!(running.finish().success());
    frames
}

/// The frame-pointer walk from open_conn symbolizes to the whole call path.
fn check_stack_walk(fixture: Fixture, name: impl Fn(&str) -> String) {
    let (running, addrs) = fixture.print_addrs();
    let frames = Symbolizer::new().user_stack(running.pid(), &addrs.stack);
    // Shown by `--nocapture`, and with a failure.
    for frame in &frames {
        eprintln!(
            "{fixture:?}: {:#x} {} [{}]",
            frame.addr,
            frame.display(),
            frame.module.as_deref().unwrap_or("-")
        );
    }
    let symbols: Vec<&str> =
        frames.iter().map(|frame| frame.symbol.as_deref().unwrap_or("?")).collect();
    let expected: Vec<String> =
        ["open_conn", "db_checkout", "handle_orders", "print_addrs", "main"].map(&name).into();
    assert!(
        symbols.len() >= expected.len() && symbols[..expected.len()] == expected,
        "{:#?}",
        frames.iter().map(Frame::display).collect::<Vec<_>>()
    );
    assert!(running.finish().success());
}

#[test]
fn c_functions_and_call_site() {
    let frames = check_functions_and_call_site(Fixture::C, str::to_owned, "static int ");
    assert_eq!(frames.len(), 1, "nothing is inlined at the return address: {frames:#?}");
}

#[test]
fn c_stack_walk() {
    check_stack_walk(Fixture::C, str::to_owned);
}

#[test]
fn rust_functions_and_call_site() {
    let frames =
        check_functions_and_call_site(Fixture::Rust, |name| format!("leaky::{name}"), "fn ");
    // `CHECKOUT_CALL_LINE.store(..)`, inlined on the call's line: innermost first, then the
    // function it was inlined into, with the line of the inlined call.
    let [.., store, db_checkout] = &frames[..] else { panic!("no inlined frame: {frames:#?}") };
    let store_name = store.symbol.as_deref().unwrap_or_default();
    assert!(store_name.contains("AtomicU32") && store_name.ends_with("::store"), "{frames:#?}");
    assert!(store.file.as_deref().is_some_and(|file| file.ends_with("atomic.rs")), "{frames:#?}");
    let call_line = line_of(&Fixture::Rust.source(), "CHECKOUT_CALL_LINE.store(line!()");
    assert_eq!(db_checkout.line, Some(call_line), "{frames:#?}");
}

#[test]
fn rust_stack_walk() {
    check_stack_walk(Fixture::Rust, |name| format!("leaky::{name}"));
}

/// Without frame pointers the walk stops after the first frame, and without debug information
/// frames have a name but no file:line; addresses a broken walk produces (stack, heap, nothing,
/// the kernel's half) give frames without a symbol, with the module where there is one.
#[test]
fn c_without_frame_pointers_degrades() {
    let (running, addrs) = Fixture::CWithoutFramePointers.print_addrs();
    let pid = running.pid();
    let mut symbolizer = Symbolizer::new();
    for function in FUNCTIONS {
        let frame = single(symbolizer.user(pid, &[addrs.function(function)]));
        assert_eq!(frame.symbol.as_deref(), Some(function), "{frame:#?}");
        assert_eq!((frame.file.as_deref(), frame.line), (None, None), "{frame:#?}");
        assert_eq!(frame.display(), function);
    }

    let walk = symbolizer.user_stack(pid, &addrs.stack);
    let shown: Vec<String> = walk.iter().map(Frame::display).collect();
    eprintln!("without frame pointers: {shown:?}");
    assert_eq!(
        walk.first().and_then(|frame| frame.symbol.as_deref()),
        Some("open_conn"),
        "{shown:?}"
    );
    for lost in ["db_checkout", "handle_orders"] {
        assert!(walk.iter().all(|frame| frame.symbol.as_deref() != Some(lost)), "{shown:?}");
    }

    let maps = fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let start_of = |name: &str| {
        let line =
            maps.lines().find(|line| line.ends_with(name)).unwrap_or_else(|| panic!("{maps}"));
        u64::from_str_radix(line.split('-').next().unwrap(), 16).unwrap()
    };
    let junk = [start_of("[stack]") + 0x10, start_of("[heap]") + 0x10, 0, 0xffff_ffff_8100_0000];
    let frames = symbolizer.user_stack(pid, &junk);
    assert_eq!(
        frames,
        [
            Frame::unknown(junk[0], Some("[stack]".to_owned())),
            Frame::unknown(junk[1], Some("[heap]".to_owned())),
            Frame::unknown(0, None),
            Frame::unknown(junk[3], None),
        ]
    );
    assert!(running.finish().success());
}

/// Both fixtures open N connections along each path and hold them until stdin closes.
#[test]
fn fixtures_hold_their_connections() {
    for fixture in [Fixture::C, Fixture::Rust, Fixture::CWithoutFramePointers] {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port().to_string();
        let mut running = fixture.spawn(&[&port, "3"]);
        assert_eq!(running.line(), "ready");
        let mut accepted: Vec<_> = (0..6).map(|_| listener.accept().unwrap().0).collect();
        assert!(running.finish().success());
        for stream in &mut accepted {
            // Held until the fixture ended: then closed by the kernel.
            assert_eq!(stream.read(&mut [0; 1]).unwrap(), 0, "{fixture:?}");
        }
    }
}

/// A perf map (as `node --perf-basic-prof` writes it) names addresses in an anonymous
/// executable mapping, here one of this process.
#[test]
fn perf_map_names_jit_code() {
    const SIZE: usize = 4096;
    // SAFETY: a fresh anonymous mapping, unmapped by the guard below.
    let code = unsafe {
        libc::mmap(
            ptr::null_mut(),
            SIZE,
            libc::PROT_READ | libc::PROT_EXEC,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(code, libc::MAP_FAILED, "{}", std::io::Error::last_os_error());
    let start = code as u64;
    let pid = std::process::id();
    let perf_map = PerfMap::write(
        pid,
        &format!(
            "{start:x} 100 LazyCompile:*handleOrders /srv/app/orders.js:12\n{:x} 40 jit_stub\n",
            start + 0x100
        ),
    );

    let mut symbolizer = Symbolizer::new();
    let frames = symbolizer.user(pid, &[start + 0x10, start + 0x110, start + 0x800]);
    assert_eq!(
        frames.iter().map(|frame| frame.symbol.as_deref()).collect::<Vec<_>>(),
        [Some("LazyCompile:*handleOrders /srv/app/orders.js:12"), Some("jit_stub"), None],
        "{frames:#?}"
    );
    assert_eq!(frames[0].display(), "LazyCompile:*handleOrders /srv/app/orders.js:12");
    assert_eq!(frames[2].display(), format!("{:#x}", start + 0x800));

    drop(perf_map);
    // SAFETY: mapped above, not used since.
    unsafe { libc::munmap(code, SIZE) };
}

/// Removes the perf map it wrote.
struct PerfMap(PathBuf);

impl PerfMap {
    fn write(pid: u32, contents: &str) -> Self {
        let path = PathBuf::from(format!("/tmp/perf-{pid}.map"));
        fs::write(&path, contents).unwrap();
        Self(path)
    }
}

impl Drop for PerfMap {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

/// tcp_close's address in /proc/kallsyms symbolizes to tcp_close.
#[test]
#[ignore = "needs root: /proc/kallsyms shows addresses to root only"]
fn kernel_address() {
    let kallsyms = fs::read_to_string("/proc/kallsyms").unwrap();
    let addr = kallsyms
        .lines()
        .find_map(|line| {
            let mut words = line.split_whitespace();
            let (addr, _kind, name) = (words.next()?, words.next()?, words.next()?);
            (name == "tcp_close").then(|| u64::from_str_radix(addr, 16).unwrap())
        })
        .expect("tcp_close in /proc/kallsyms");
    assert_ne!(addr, 0, "/proc/kallsyms hides addresses: not root, or kptr_restrict=2");
    let mut symbolizer = Symbolizer::new();
    let frames = symbolizer.kernel(&[addr, addr + 4]);
    eprintln!("{frames:?}");
    assert_eq!(
        frames.iter().map(|frame| frame.symbol.as_deref()).collect::<Vec<_>>(),
        [Some("tcp_close"), Some("tcp_close")],
        "{frames:#?}"
    );
    assert_eq!(frames[1].addr, addr + 4);
    assert_eq!(frames[0].display(), "tcp_close");
    assert_eq!(single(symbolizer.kernel(&[0x10])).symbol, None);
}

/// A process that has exited: nothing to read, frames without a symbol, no panic; what was
/// cached while it lived is dropped by forget().
#[test]
fn exited_process() {
    let (running, addrs) = Fixture::C.print_addrs();
    let pid = running.pid();
    let open_conn = addrs.function("open_conn");
    let mut symbolizer = Symbolizer::new();
    assert_eq!(single(symbolizer.user(pid, &[open_conn])).symbol.as_deref(), Some("open_conn"));
    assert!(running.finish().success());

    // Still cached: the caller symbolizes at open time and forgets at exit.
    assert_eq!(single(symbolizer.user(pid, &[open_conn])).symbol.as_deref(), Some("open_conn"));
    symbolizer.forget(pid);
    assert_eq!(symbolizer.cached_addresses(), 0);
    let frames = symbolizer.user_stack(pid, &[open_conn, addrs.checkout_return]);
    assert_eq!(
        frames,
        [Frame::unknown(open_conn, None), Frame::unknown(addrs.checkout_return, None)]
    );
    // Nothing was cached for a process that is gone.
    assert_eq!(symbolizer.cached_addresses(), 0);

    // A fresh symbolizer that never saw it.
    let frame = single(Symbolizer::new().user(pid, &[open_conn]));
    assert_eq!(frame, Frame::unknown(open_conn, None));
    assert_eq!(frame.display(), format!("{open_conn:#x}"));
}

/// A process looked up once while alive: its mappings are kept, so addresses first looked up
/// after it exited (a second stack of a short-lived client) are still found in its files.
#[test]
fn addresses_of_a_process_seen_alive_resolve_after_it_exits() {
    for fixture in [Fixture::C, Fixture::Rust] {
        let (running, addrs) = fixture.print_addrs();
        let pid = running.pid();
        let mut symbolizer = Symbolizer::new();
        let first = single(symbolizer.user(pid, &[addrs.function("open_conn")]));
        assert!(first.symbol.is_some_and(|s| s.ends_with("open_conn")));
        assert!(running.finish().success());

        let frames = symbolizer.user_stack(pid, &[addrs.checkout_return]);
        let frame = frames.last().expect("a frame");
        assert!(frame.symbol.as_deref().is_some_and(|s| s.ends_with("db_checkout")), "{frames:#?}");
        assert_eq!(frame.line, Some(addrs.checkout_call_line), "{frames:#?}");
        assert_eq!(frame.addr, addrs.checkout_return);
        assert_eq!(frame.module.as_deref().map(Path::new), Some(fixture.binary()));
        // Forgotten at exit: nothing is left of it.
        symbolizer.forget(pid);
        let gone = symbolizer.user_stack(pid, &[addrs.checkout_return + 0x10]);
        assert_eq!(gone, [Frame::unknown(addrs.checkout_return + 0x10, None)]);
    }
}

#[test]
fn addrs_are_printed() {
    // The parser of --print-addrs reads every field (a fixture change that breaks the format
    // fails here first).
    let (running, Addrs { functions, checkout_return, checkout_call_line, stack }) =
        Fixture::C.print_addrs();
    assert_eq!(functions.len(), FUNCTIONS.len());
    assert_ne!(checkout_return, 0);
    assert_eq!(checkout_call_line, line_of(&Fixture::C.source(), "checkout_call_line = __LINE__"));
    assert!(!stack.is_empty());
    assert!(running.finish().success());
}
