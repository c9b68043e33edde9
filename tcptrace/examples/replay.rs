//! tcptrace's user space alone, without the kernel: a generated event stream (the 13 events of
//! a loopback connection, client and server, as the kernel sends them) through decoding, the
//! owner attribution, the lifecycle aggregator and the findings. Prints events per second on
//! one core, and the heap each tracked socket costs with a million of them open.
//!
//! `cargo xtask bench` runs it; alone: `cargo run --release -p tcptrace --example replay`.

use std::{
    alloc::{GlobalAlloc, Layout, System},
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use tcptrace::{
    analysis::{
        aggregate::Aggregator,
        findings::{Limits, detect},
    },
    event::Event,
    pipeline::connections::Connections,
};
use tcptrace_common::{
    FLAG_ADDRS, KIND_ACCEPT, KIND_CONNECT, KIND_RELEASE, KIND_STATE, RELEASE_CLOSE, RawEvent,
    tcp_state::*,
};

/// Counts the heap in use, for the bytes per tracked socket.
struct Counting;

static IN_USE: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator, only counting.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        IN_USE.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        IN_USE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's contract, passed on.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        IN_USE.fetch_add(new_size, Ordering::Relaxed);
        IN_USE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's contract, passed on.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const CLIENT: u32 = 1000;
const SERVER: u32 = 2000;
const SERVICE_PORT: u16 = 8080;

/// One ring-buffer record.
fn record(
    ts_ns: u64,
    skaddr: u64,
    pid: u32,
    kind: u8,
    (old_state, new_state): (u8, u8),
    (lport, rport): (u16, u16),
) -> Vec<u8> {
    let mut raw = RawEvent::zeroed();
    raw.ts_ns = ts_ns;
    raw.skaddr = skaddr;
    raw.pid = pid;
    raw.tid = pid;
    raw.owner_pid = pid;
    raw.fd = 3;
    raw.comm[..6].copy_from_slice(if pid == CLIENT { b"client" } else { b"server" });
    raw.kind = kind;
    raw.old_state = old_state;
    raw.new_state = new_state;
    raw.reason = RELEASE_CLOSE;
    raw.family = 2;
    raw.lport = lport;
    raw.rport = rport;
    raw.flags = FLAG_ADDRS;
    raw.saddr[..4].copy_from_slice(&[127, 0, 0, 1]);
    raw.daddr[..4].copy_from_slice(&[127, 0, 0, 1]);
    // SAFETY: RawEvent is repr(C) plain integers without padding.
    unsafe {
        std::slice::from_raw_parts((&raw const raw).cast::<u8>(), size_of::<RawEvent>()).to_vec()
    }
}

/// (socket, pid, kind, (old state, new state), (local port, remote port)).
type Step = (u64, u32, u8, (u8, u8), (u16, u16));

/// Connection `i`'s events: the client connects, sends, closes first; the server accepts,
/// reads end of file, closes.
fn connection(i: u64, ts: &mut u64) -> Vec<Vec<u8>> {
    let (client, server) = (0xffff_8880_0000_0000 + i * 0x1000, 0xffff_8880_8000_0000 + i * 0x1000);
    let port = 10_000 + (i % 50_000) as u16;
    let (c, s) = ((port, SERVICE_PORT), (SERVICE_PORT, port));
    let steps: [Step; 13] = [
        (client, CLIENT, KIND_CONNECT, (CLOSE, SYN_SENT), (0, SERVICE_PORT)),
        (client, CLIENT, KIND_STATE, (SYN_SENT, ESTABLISHED), c),
        (server, SERVER, KIND_STATE, (LISTEN, SYN_RECV), s),
        (server, SERVER, KIND_STATE, (SYN_RECV, ESTABLISHED), s),
        (server, SERVER, KIND_ACCEPT, (0, ESTABLISHED), s),
        (client, CLIENT, KIND_RELEASE, (0, ESTABLISHED), c),
        (client, CLIENT, KIND_STATE, (ESTABLISHED, FIN_WAIT1), c),
        (server, SERVER, KIND_STATE, (ESTABLISHED, CLOSE_WAIT), s),
        (client, CLIENT, KIND_STATE, (FIN_WAIT1, FIN_WAIT2), c),
        (server, SERVER, KIND_RELEASE, (0, CLOSE_WAIT), s),
        (server, SERVER, KIND_STATE, (CLOSE_WAIT, LAST_ACK), s),
        (client, CLIENT, KIND_STATE, (FIN_WAIT2, CLOSE), c),
        (server, SERVER, KIND_STATE, (LAST_ACK, CLOSE), s),
    ];
    steps
        .into_iter()
        .map(|(sk, pid, kind, states, ports)| {
            *ts += 1_000;
            record(*ts, sk, pid, kind, states, ports)
        })
        .collect()
}

struct Pipeline {
    conns: Connections,
    agg: Aggregator,
    records: Vec<tcptrace::pipeline::connections::Record>,
}

impl Pipeline {
    fn new(capacity: usize) -> Self {
        Self {
            conns: Connections::new(capacity),
            agg: Aggregator::new(capacity),
            records: Vec::new(),
        }
    }

    fn handle(&mut self, bytes: &[u8]) {
        let event = Event::try_from(bytes).expect("generated events decode");
        self.records.clear();
        self.conns.apply(&event, &mut self.records);
        for record in &self.records {
            self.agg.apply(record);
        }
    }
}

fn main() {
    let smoke = std::env::args().any(|a| a == "--smoke");
    let (connections, open_sockets) = if smoke { (20_000, 50_000) } else { (400_000, 1_000_000) };

    // Throughput: whole lifecycles, as churn produces them.
    let mut ts = 0;
    let stream: Vec<Vec<u8>> = (0..connections).flat_map(|i| connection(i, &mut ts)).collect();
    let mut pipeline = Pipeline::new(1 << 20);
    let started = Instant::now();
    for bytes in &stream {
        pipeline.handle(bytes);
    }
    let elapsed = started.elapsed();
    let limits = Limits {
        min_age: Duration::from_secs(30),
        idle: Duration::from_secs(600),
        time_wait_rate: 47.0,
        ephemeral_ports: 28_232,
    };
    let findings = detect(&pipeline.agg, &limits, ts);
    let rate = stream.len() as f64 / elapsed.as_secs_f64();
    println!(
        "replay: {} events ({} connections) in {:.3} s on one core: {:.2} M events/s (target 5); {} findings",
        stream.len(),
        connections,
        elapsed.as_secs_f64(),
        rate / 1e6,
        findings.len()
    );
    drop(stream);

    // Memory: that many sockets open at once (connected, never closed).
    let mut pipeline = Pipeline::new(open_sockets + 1);
    let before = IN_USE.load(Ordering::Relaxed);
    let mut ts = 0;
    for i in 0..open_sockets as u64 {
        for bytes in connection(i, &mut ts).iter().take(2) {
            pipeline.handle(bytes);
        }
    }
    let after = IN_USE.load(Ordering::Relaxed);
    println!(
        "replay: {} open sockets tracked: {:.0} bytes of heap per socket (target 256)",
        pipeline.agg.tracked(),
        (after - before) as f64 / open_sockets as f64
    );
}
