//! Stack ids from the ring buffer to symbolized stacks, at the moment the open event arrives:
//! the process is alive then (an exit would take `/proc/<pid>/maps` with it), so stacks of
//! processes that exit before the report still name their functions.
//!
//! The kernel map is never cleared during a run and `bpf_get_stackid` runs without
//! `BPF_F_REUSE_STACKID`, so an id means the same addresses for the whole run: a symbolized
//! stack can be cached by (pid, ids). A new stack whose hash bucket is taken is not captured,
//! and counted (`Counters::stack_failures`); clearing the map while events are in flight would
//! instead give some of them another stack's frames.

use std::{collections::HashMap, sync::Arc};

use aya::maps::{MapData, StackTraceMap};

use super::{KERNEL_MODULE, OpenStack};
use crate::{
    connections::{Record, RecordKind},
    decode::{Event, EventKind, StackIds},
    symbolize::{Frame, Symbolizer},
};

/// Symbolized stacks kept across all processes; past this the cache starts over (the stacks
/// already handed out stay with their sockets).
const MAX_CACHED_STACKS: usize = 8192;

pub struct StackResolver {
    map: StackTraceMap<MapData>,
    symbolizer: Symbolizer,
    by_pid: HashMap<u32, HashMap<StackIds, Arc<OpenStack>>>,
    cached: usize,
    /// Stack ids whose map entry could not be read.
    pub unreadable: u64,
}

impl StackResolver {
    pub fn new(map: StackTraceMap<MapData>) -> Self {
        Self {
            map,
            symbolizer: Symbolizer::new(),
            by_pid: HashMap::new(),
            cached: 0,
            unreadable: 0,
        }
    }

    /// Gives the connect or accept `records` that `event` produced the stack it carries, and
    /// drops what is cached for a process that exits or execs.
    pub fn attach(&mut self, event: &Event, records: &mut [Record]) {
        match event.kind {
            EventKind::Exit | EventKind::Exec => self.forget(event.pid),
            EventKind::Connect | EventKind::Accept { .. } => {
                if event.stacks == StackIds::default() {
                    return;
                }
                let stack = self.resolve(event.pid, event.stacks);
                for record in records
                    .iter_mut()
                    .filter(|r| matches!(r.kind, RecordKind::Connect | RecordKind::Accept { .. }))
                {
                    record.stack.clone_from(&stack);
                }
            }
            EventKind::State { .. } | EventKind::Release { .. } => {}
        }
    }

    fn forget(&mut self, pid: u32) {
        if let Some(stacks) = self.by_pid.remove(&pid) {
            self.cached -= stacks.len();
        }
        self.symbolizer.forget(pid);
    }

    /// The symbolized stacks `ids` name, captured in process `pid`; `None` when neither can be
    /// read.
    pub fn resolve(&mut self, pid: u32, ids: StackIds) -> Option<Arc<OpenStack>> {
        if let Some(stack) = self.by_pid.get(&pid).and_then(|stacks| stacks.get(&ids)) {
            return Some(Arc::clone(stack));
        }
        let mut frames = Vec::new();
        if let Some(addrs) = ids.kernel.and_then(|id| self.addresses(id)) {
            let kernel = self.symbolizer.kernel(&addrs);
            // The innermost frames are tcptrace's own program and the tracing glue that ran it.
            let traced = kernel.iter().position(|f| !is_tracing_glue(f)).unwrap_or(kernel.len());
            frames.extend(kernel.into_iter().skip(traced).map(|frame| Frame {
                module: frame.module.or_else(|| Some(KERNEL_MODULE.to_owned())),
                ..frame
            }));
        }
        if let Some(addrs) = ids.user.and_then(|id| self.addresses(id)) {
            frames.extend(self.symbolizer.user_stack(pid, &addrs));
        }
        if frames.is_empty() {
            return None;
        }
        let stack = Arc::new(OpenStack { key: (ids.user, ids.kernel), frames });
        if self.cached >= MAX_CACHED_STACKS {
            self.by_pid.clear();
            self.cached = 0;
        }
        self.by_pid.entry(pid).or_default().insert(ids, Arc::clone(&stack));
        self.cached += 1;
        Some(stack)
    }

    fn addresses(&mut self, id: u32) -> Option<Vec<u64>> {
        match self.map.get(&id, 0) {
            Ok(trace) => Some(trace.frames().iter().map(|frame| frame.ip).collect()),
            Err(_) => {
                self.unreadable += 1;
                None
            }
        }
    }
}

/// BPF programs and the tracepoint code that calls them (`bpf_prog_<tag>_<name>`,
/// `bpf_trace_run3`, `perf_trace_*`, `__traceiter_*`, `trace_call_bpf`).
fn is_tracing_glue(frame: &Frame) -> bool {
    const GLUE: &[&str] = &["bpf_", "__bpf_", "perf_trace", "__traceiter_", "trace_call_bpf"];
    frame.symbol.as_deref().is_some_and(|s| GLUE.iter().any(|glue| s.starts_with(glue)))
}
