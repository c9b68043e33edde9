use std::{
    io::Read,
    net::{TcpListener, TcpStream},
    os::fd::AsRawFd,
    time::{Duration, Instant},
};

use tcptrace::{
    close_hook::CloseHookChoice,
    decode::Event,
    probes::{ProbeOptions, Probes},
    stream::EventStream,
};
use tcptrace_common::Filter;

struct Harness {
    stream: EventStream,
    _probes: Probes,
    runtime: tokio::runtime::Runtime,
    events: Vec<Event>,
}

impl Harness {
    fn load(filter: Filter) -> Self {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let mut probes = Probes::load(&ProbeOptions { filter, close_hook: CloseHookChoice::Auto, ring_bytes: 1 << 20 }).unwrap();
        let stream = { let _g = runtime.enter(); probes.events().unwrap() };
        Self { stream, _probes: probes, runtime, events: Vec::new() }
    }
    fn poll(&mut self, d: Duration) {
        let Self { stream, runtime, events, .. } = self;
        let _ = runtime.block_on(async { tokio::time::timeout(d, stream.next_batch(|b| events.push(Event::try_from(b).unwrap()))).await });
    }
}

#[test]
#[ignore]
fn dump() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let mut h = Harness::load(Filter { port, ..Filter::none() });
    let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (mut s, _) = l.accept().unwrap();
    println!("client fd {} {:?} server fd {}", c.as_raw_fd(), c.local_addr(), s.as_raw_fd());
    let scenario = std::env::var("SCEN").unwrap_or_default();
    match scenario.as_str() {
        "linger" => {
            let lg = libc::linger { l_onoff: 1, l_linger: 0 };
            unsafe { libc::setsockopt(c.as_raw_fd(), libc::SOL_SOCKET, libc::SO_LINGER, (&raw const lg).cast(), size_of::<libc::linger>() as u32) };
            drop(c);
            let _ = s.read(&mut [0u8; 1]);
            drop(s);
        }
        _ => {
            drop(c);
            let _ = s.read(&mut [0u8; 1]);
            drop(s);
        }
    }
    let end = Instant::now() + Duration::from_millis(500);
    while Instant::now() < end { h.poll(Duration::from_millis(100)); }
    for e in &h.events { if e.skaddr != 0 { println!("{e:?}"); } }
}
