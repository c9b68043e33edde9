//! One ring record's way through user space: decoded, attributed to its socket's owner
//! (`connections`), given the code path that opened it (`stacks`), handed to the sink.

use std::io;

use super::{
    connections::{Connections, Record, RecordKind},
    placement::Placement,
};
use crate::{
    event::{Event, EventKind, StackIds},
    inventory::Snapshot,
    stacks::StackResolver,
};

/// Where the records go: `trace`'s renderer, or the aggregator of `leaks`, `top` and `run`.
pub trait Sink {
    /// One attributed record. An error ends the pipeline (the reader of `trace` left).
    fn record(&mut self, record: &Record) -> io::Result<()>;

    /// An inventory sweep taken at `taken_ns` (CLOCK_MONOTONIC), applied after every event
    /// from before it.
    fn inventory(&mut self, _snapshot: &Snapshot, _taken_ns: u64) {}

    /// After each batch of records.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Everything the events feed, apart from the stream they come from (so the stream's callback
/// can borrow it).
pub struct Feed<S> {
    conns: Connections,
    records: Vec<Record>,
    stacks: Option<StackResolver>,
    placement: Placement,
    pub sink: S,
    /// Kernel events decoded.
    pub events: u64,
    /// Ring records that did not decode.
    pub decode_errors: u64,
    /// The sink's first error; nothing more is fed after it.
    pub error: Option<io::Error>,
    /// `--bench-*`: events are counted, nothing more, so that the bench's reference points
    /// measure the kernel's work and not user space.
    #[cfg(feature = "bench")]
    count_only: bool,
}

impl<S: Sink> Feed<S> {
    pub fn new(
        capacity: usize,
        stacks: Option<StackResolver>,
        placement: Placement,
        sink: S,
    ) -> Self {
        Self {
            conns: Connections::new(capacity),
            records: Vec::new(),
            stacks,
            placement,
            sink,
            events: 0,
            decode_errors: 0,
            error: None,
            #[cfg(feature = "bench")]
            count_only: false,
        }
    }

    /// The reference points' feed (`--bench-*`): counts events, nothing more.
    #[cfg(feature = "bench")]
    pub fn count_only(self, count_only: bool) -> Self {
        Self { count_only, ..self }
    }

    pub fn handle(&mut self, bytes: &[u8]) {
        if self.error.is_some() {
            return;
        }
        let Ok(event) = Event::try_from(bytes) else {
            self.decode_errors += 1;
            return;
        };
        self.events += 1;
        #[cfg(feature = "bench")]
        if self.count_only {
            return;
        }
        self.records.clear();
        self.conns.apply(&event, &mut self.records);
        if let Some(stacks) = &mut self.stacks {
            attach_stack(stacks, &event, &mut self.records);
        }
        self.placement.attach(&event, &mut self.records);
        for record in &self.records {
            if let Err(e) = self.sink.record(record) {
                self.error = Some(e);
                return;
            }
        }
    }

    /// Periodic work between batches: the stack resolver's second looks at new processes.
    pub fn tick(&mut self) {
        if let Some(stacks) = &mut self.stacks {
            stacks.tick();
        }
    }

    /// Flushes the sink after a batch (unless it already failed).
    pub fn flush(&mut self) {
        if self.error.is_none()
            && let Err(e) = self.sink.flush()
        {
            self.error = Some(e);
        }
    }

    /// An inventory sweep's view: the processes holding sockets, whose exits are reported, each
    /// placed in its cgroup.
    pub fn inventory(&mut self, snapshot: &mut Snapshot, taken_ns: u64) {
        for pid in snapshot.sockets.iter().flat_map(|s| s.owners.iter().map(|o| o.pid)) {
            self.conns.note_holders([pid]);
            if let std::collections::hash_map::Entry::Vacant(slot) = snapshot.cgroups.entry(pid)
                && let Some(cgroup) = self.placement.of(pid)
            {
                slot.insert(cgroup);
            }
        }
        self.sink.inventory(snapshot, taken_ns);
    }

    /// Sockets the attribution table had no room for.
    pub fn untracked(&self) -> u64 {
        self.conns.untracked
    }

    /// Stack ids the kernel handed over whose stack could not be read.
    pub fn unreadable_stacks(&self) -> u64 {
        self.stacks.as_ref().map_or(0, |s| s.unreadable)
    }
}

/// Gives the connect or accept `records` that `event` produced the stack it carries, and tells
/// the resolver of the execs and exits that decide how later stacks are symbolized.
fn attach_stack(stacks: &mut StackResolver, event: &Event, records: &mut [Record]) {
    match event.kind {
        EventKind::Exit => stacks.forget(event.pid),
        EventKind::Exec => {
            if let Some(path) = &event.exec_path {
                stacks.exec(event.pid, path);
            }
        }
        EventKind::Connect | EventKind::Accept { .. } => {
            if event.stacks == StackIds::default() && event.interp.is_none() {
                return;
            }
            let stack = stacks.resolve(event.pid, event.stacks, event.interp.as_deref());
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
