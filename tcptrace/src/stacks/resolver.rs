//! Stack ids from the ring buffer to symbolized stacks, when the open event is read.
//!
//! User stacks come from the kernel as (build id, file offset) per frame (`USER_STACKS`, see
//! the kernel crate's `maps`): the kernel resolved each address to its file while the process
//! ran, so a process that has exited, even one that lived for a millisecond, still gets its
//! functions named, from the file `build_ids` finds for the id. A frame the kernel could not
//! place in a file (JIT code, an unreadable build id) is an address, symbolized against the
//! live process (or the mappings kept from its first lookup). Kernel stacks are addresses
//! (`STACKS`), symbolized from kallsyms.
//!
//! The maps are never cleared and `bpf_get_stackid` runs without `BPF_F_REUSE_STACKID`, so an
//! id means the same frames for the whole run: raw stacks are cached by id and symbolized ones
//! by (pid, ids), with pid 0 when every frame is in a file (the same stack of any process of
//! that program). A new stack whose hash bucket is taken is not captured, and counted
//! (`Counters::stack_failures`); clearing the maps while events are in flight would instead
//! give some of them another stack's frames.

use std::{
    collections::{HashMap, HashSet},
    hash::{Hash as _, Hasher as _},
    os::fd::{AsFd as _, AsRawFd as _},
    path::{Path, PathBuf},
    sync::Arc,
};

use aya::maps::{MapData, StackTraceMap};
use tcptrace_common::{BUILD_ID_IP, BUILD_ID_VALID, BuildIdFrame, USER_STACK_FRAMES};

use super::{
    KERNEL_MODULE, OpenStack, StackKey,
    build_ids::{BuildId, BuildIds},
    trust,
};
use crate::{
    event::{InterpStack, InterpWalk, StackIds},
    interp::{Interpreters, Named},
    kernel::{bpf_sys, probes::InterpMaps},
    symbolize::{Frame, Symbolizer},
};

/// Symbolized stacks kept; past this the cache starts over (the stacks already handed out
/// stay with their sockets).
const MAX_CACHED_STACKS: usize = 8192;

/// One user frame as the kernel captured it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RawFrame {
    InFile { build_id: BuildId, offset: u64 },
    Address(u64),
}

impl RawFrame {
    /// Whether the frame can be a return address at all (see `trust`).
    fn plausible(&self) -> bool {
        match *self {
            Self::InFile { offset, .. } => trust::plausible_offset(offset),
            Self::Address(addr) => trust::plausible_address(addr),
        }
    }
}

pub struct StackResolver {
    /// `USER_STACKS` (build-id frames), when user stacks are captured.
    user_map: Option<MapData>,
    /// `STACKS` (addresses), when kernel stacks are captured.
    kernel_map: Option<StackTraceMap<MapData>>,
    symbolizer: Symbolizer,
    build_ids: BuildIds,
    raw_user: HashMap<u32, Arc<[RawFrame]>>,
    stacks: HashMap<(u32, StackIds), Arc<OpenStack>>,
    /// Stacks with interpreter frames, by (pid, ids, hash of the frames the kernel read), and
    /// the processes they are of (forgotten at exit and exec: the names were read from them).
    interpreted: HashMap<(u32, StackIds, u64), Arc<OpenStack>>,
    interpreted_pids: HashSet<u32>,
    /// The processes running an interpreter whose frames the kernel walks (with user stacks).
    interpreters: Option<Interpreters>,
    /// Stack ids whose map entry could not be read.
    pub unreadable: u64,
}

impl StackResolver {
    /// With `interp_maps`, the running processes' interpreters are looked for at once.
    pub fn new(
        user_map: Option<MapData>,
        kernel_map: Option<StackTraceMap<MapData>>,
        interp_maps: Option<InterpMaps>,
    ) -> Self {
        let interpreters = interp_maps.map(|maps| {
            let mut interpreters = Interpreters::new(maps);
            interpreters.scan();
            interpreters
        });
        Self {
            user_map,
            kernel_map,
            symbolizer: Symbolizer::new(),
            build_ids: BuildIds::new(),
            raw_user: HashMap::new(),
            stacks: HashMap::new(),
            interpreted: HashMap::new(),
            interpreted_pids: HashSet::new(),
            interpreters,
            unreadable: 0,
        }
    }

    /// What the start-up look at running interpreters found that runs degraded.
    pub fn take_start_notes(&mut self) -> Vec<String> {
        self.interpreters.as_mut().map(Interpreters::take_start_notes).unwrap_or_default()
    }

    /// A process exited: its symbols are no longer needed.
    pub fn forget(&mut self, pid: u32) {
        self.symbolizer.forget(pid);
        if let Some(interpreters) = &mut self.interpreters {
            interpreters.forget(pid);
        }
        self.forget_interpreted(pid);
    }

    fn forget_interpreted(&mut self, pid: u32) {
        if self.interpreted_pids.remove(&pid) {
            self.interpreted.retain(|&(owner, ..), _| owner != pid);
        }
    }

    /// A process exec'd `path`: its later stacks belong to that file, and its cached symbols
    /// are stale.
    pub fn exec(&mut self, pid: u32, path: &Path) {
        self.build_ids.learn_exec(pid, path);
        self.symbolizer.remember(pid);
        if let Some(interpreters) = &mut self.interpreters {
            interpreters.exec(pid);
        }
        self.forget_interpreted(pid);
    }

    /// The symbolized stacks `ids` name, captured in process `pid`, with the interpreter
    /// frames `interp` when the kernel walked some; `None` when nothing can be read.
    pub fn resolve(
        &mut self,
        pid: u32,
        ids: StackIds,
        interp: Option<&InterpStack>,
    ) -> Option<Arc<OpenStack>> {
        match (interp, &self.interpreters) {
            (Some(interp), Some(_)) if !interp.frames.is_empty() => {
                self.with_interpreter(pid, ids, interp)
            }
            _ => self.native(pid, ids),
        }
    }

    /// Called often: processes exec'd lately are looked at again for an interpreter.
    pub fn tick(&mut self) {
        if let Some(interpreters) = &mut self.interpreters {
            interpreters.tick();
        }
    }

    /// The native stack with the interpreter's frames, cached by process, stack ids and the
    /// frames as the kernel read them: a process opening from one site again and again (a
    /// connection per request) names it once.
    fn with_interpreter(
        &mut self,
        pid: u32,
        ids: StackIds,
        interp: &InterpStack,
    ) -> Option<Arc<OpenStack>> {
        let mut raw = std::hash::DefaultHasher::new();
        (interp.runtime as u8, &interp.frames[..], interp.walk as u8).hash(&mut raw);
        let key = (pid, ids, raw.finish());
        if let Some(stack) = self.interpreted.get(&key) {
            return Some(Arc::clone(stack));
        }
        let stack = self.name_interpreted(pid, ids, interp)?;
        if self.interpreted.len() >= MAX_CACHED_STACKS {
            self.interpreted.clear();
            self.interpreted_pids.clear();
        }
        self.interpreted.insert(key, Arc::clone(&stack));
        self.interpreted_pids.insert(pid);
        Some(stack)
    }

    fn name_interpreted(
        &mut self,
        pid: u32,
        ids: StackIds,
        interp: &InterpStack,
    ) -> Option<Arc<OpenStack>> {
        let native = self.native(pid, ids);
        let interpreters = self.interpreters.as_mut()?;
        let interpreter = interpreters.interpreter(pid).map(|p| p.to_string_lossy().into_owned());
        let native_frames: &[Frame] = native.as_deref().map_or(&[], |stack| &stack.frames);
        let (frames, truncated) = match interpreters.frames(pid, interp) {
            // What runs from the interpreter's code outward is what its frames say.
            Named::Outer(named) => {
                let mut frames: Vec<Frame> = native_frames
                    .iter()
                    .take_while(|f| f.module.is_some() && f.module != interpreter)
                    .cloned()
                    .collect();
                frames.extend(named);
                (frames, interp.walk != InterpWalk::Complete)
            }
            // Both walks follow the same frame pointers: a named frame stands at its address,
            // in the runtime's generated code (anonymous memory) or, for V8's interpreted
            // frames, in the builtins of its executable.
            Named::AtAddresses(named) => {
                let mut named = named.into_iter().peekable();
                let frames = native_frames
                    .iter()
                    .map(|f| named.next_if(|n| n.addr == f.addr).unwrap_or_else(|| f.clone()))
                    .collect();
                (frames, native.as_ref().is_none_or(|stack| stack.truncated))
            }
        };
        // Sites differ by the named frames, not by the native stack under them (nor by what
        // the frame-pointer walk read in frames that are not interpreted).
        let mut hasher = std::hash::DefaultHasher::new();
        frames.iter().for_each(|f| (f.addr, &f.symbol, &f.file, f.line).hash(&mut hasher));
        Some(Arc::new(OpenStack {
            key: StackKey { user: ids.user, kernel: ids.kernel, interp: hasher.finish() | 1 },
            frames,
            truncated,
        }))
    }

    /// The kernel and native user frames.
    fn native(&mut self, pid: u32, ids: StackIds) -> Option<Arc<OpenStack>> {
        let user = ids.user.and_then(|id| self.user_frames(id));
        let by_address =
            user.as_ref().is_some_and(|u| u.iter().any(|f| matches!(f, RawFrame::Address(_))));
        let key = (if by_address { pid } else { 0 }, ids);
        if let Some(stack) = self.stacks.get(&key) {
            return Some(Arc::clone(stack));
        }
        let mut frames = Vec::new();
        if let Some(addrs) = ids.kernel.and_then(|id| self.kernel_addresses(id)) {
            let kernel = self.symbolizer.kernel(&addrs);
            // The innermost frames are tcptrace's own program and the tracing glue that ran it.
            let traced = kernel.iter().position(|f| !is_tracing_glue(f)).unwrap_or(kernel.len());
            frames.extend(kernel.into_iter().skip(traced).map(|frame| Frame {
                module: frame.module.or_else(|| Some(KERNEL_MODULE.to_owned())),
                ..frame
            }));
        }
        let kernel_frames = frames.len();
        let mut truncated = false;
        if let Some(user) = &user {
            // The first implausible frame and everything outer of it came through a broken
            // frame-pointer chain.
            let trusted = user.iter().take_while(|f| f.plausible()).count();
            frames.extend(self.user_stack(pid, &user[..trusted]));
            truncated = trust::truncated(&frames[kernel_frames..], user.len() >= USER_STACK_FRAMES);
        }
        if frames.is_empty() {
            return None;
        }
        let stack =
            Arc::new(OpenStack { key: StackKey::native(ids.user, ids.kernel), frames, truncated });
        if self.stacks.len() >= MAX_CACHED_STACKS {
            self.stacks.clear();
        }
        self.stacks.insert(key, Arc::clone(&stack));
        Some(stack)
    }

    /// Symbolizes user frames, innermost first; consecutive frames of one file in one lookup.
    fn user_stack(&mut self, pid: u32, raw: &[RawFrame]) -> Vec<Frame> {
        let mut frames = Vec::new();
        let mut i = 0;
        while i < raw.len() {
            match raw[i] {
                RawFrame::InFile { build_id, .. } => {
                    let run: Vec<u64> = raw[i..]
                        .iter()
                        .map_while(|f| match *f {
                            RawFrame::InFile { build_id: id, offset } if id == build_id => {
                                Some(offset)
                            }
                            _ => None,
                        })
                        .collect();
                    i += run.len();
                    frames.extend(self.in_file(pid, &build_id, &run));
                }
                RawFrame::Address(addr) => {
                    frames.extend(self.symbolizer.user_stack(pid, &[addr]));
                    i += 1;
                }
            }
        }
        frames
    }

    fn in_file(&mut self, pid: u32, build_id: &BuildId, offsets: &[u64]) -> Vec<Frame> {
        if self.build_ids.path(build_id).is_none() {
            // A file this process mapped after its exec (a library), or one seen for the first
            // time: its mappings name it, if it still runs.
            self.build_ids.learn_process(pid);
        }
        match self.build_ids.path(build_id).map(PathBuf::from) {
            Some(path) => self.symbolizer.file_stack(&path, offsets),
            None => offsets.iter().map(|&offset| Frame::unknown(offset, None)).collect(),
        }
    }

    fn user_frames(&mut self, id: u32) -> Option<Arc<[RawFrame]>> {
        if let Some(raw) = self.raw_user.get(&id) {
            return Some(Arc::clone(raw));
        }
        let map = self.user_map.as_ref()?;
        let mut value = vec![0u8; size_of::<BuildIdFrame>() * USER_STACK_FRAMES];
        let fd = map.fd().as_fd().as_raw_fd();
        if !matches!(bpf_sys::lookup(fd, id, &mut value), Ok(true)) {
            self.unreadable += 1;
            return None;
        }
        let raw: Arc<[RawFrame]> = value
            .chunks_exact(size_of::<BuildIdFrame>())
            .map_while(|chunk| {
                // SAFETY: a chunk is exactly one BuildIdFrame of plain integers; read_unaligned
                // copies it out of the byte buffer.
                let frame =
                    unsafe { std::ptr::read_unaligned(chunk.as_ptr().cast::<BuildIdFrame>()) };
                match frame.status {
                    BUILD_ID_VALID => Some(RawFrame::InFile {
                        build_id: frame.build_id,
                        offset: frame.offset_or_ip,
                    }),
                    BUILD_ID_IP => Some(RawFrame::Address(frame.offset_or_ip)),
                    // BUILD_ID_EMPTY: the stack ended.
                    _ => None,
                }
            })
            .collect();
        self.raw_user.insert(id, Arc::clone(&raw));
        Some(raw)
    }

    fn kernel_addresses(&mut self, id: u32) -> Option<Vec<u64>> {
        let map = self.kernel_map.as_ref()?;
        match map.get(&id, 0) {
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
