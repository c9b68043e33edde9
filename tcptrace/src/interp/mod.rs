//! Interpreter frames: the code path of a connect() or accept() in a managed runtime, named
//! in the application's language.
//!
//! A Python program's native stack ends in the interpreter's eval loop, and a Java program's
//! interpreted frames and a Node program's JavaScript frames are anonymous code: none names
//! the application. So for each process running a CPython (`python`), a HotSpot JVM
//! (`hotspot`) or a Node.js (`v8`) that tcptrace can read, this layer puts what the kernel
//! program needs in its map (`PY_PROCS`: the interpreter's layout; `FP_PROCS`: the slots a
//! frame keeps its code in); the kernel program then records, at each open in that process,
//! the interpreter's frames (see `tcptrace_common::interp`). Here those become frames named
//! from the process's memory while it lives: `open_order_client (leaky_jobs.py:5)`,
//! `Leaky.open_order_client (Leaky.java:7)`, `internalConnect (node:net)`.
//!
//! Processes are found at start (every running process, so programs already running are
//! covered without a restart) and at each exec. A process that is not yet readable at its exec
//! (a JVM loads `libjvm.so` after it, a Python may load `libpython` after it) is looked at
//! again every `RETRY_EVERY` for `RETRY_FOR`; its opens before then get native frames only.
//!
//! May import `kernel` (its maps), `event`, `symbolize` (the `Frame` it produces) and `stdio`;
//! imported by `stacks`.

pub mod hotspot;
mod mapped;
pub mod memory;
pub mod python;
pub mod v8;

use std::{
    collections::{HashMap, HashSet},
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use procfs::process::MemoryMaps;
use tcptrace_common::PyLayout;

use self::{hotspot::Jvm, memory::ProcessMemory, python::code::Code, v8::Node};
use crate::{
    event::{InterpStack, Runtime},
    kernel::probes::InterpMaps,
    symbolize::Frame,
};

/// The `module` of Python frames: their `addr` is the code object's address.
pub const PYTHON_MODULE: &str = "[python]";
pub use self::{hotspot::JAVA_MODULE, v8::JS_MODULE};

/// Code objects kept, and bytes of their names and line tables; past either the cache starts
/// over (a hostile process can make every code object claim the largest line table read).
const MAX_CODES: usize = 16_384;
const MAX_CODE_BYTES: usize = 16 << 20;
/// Processes remembered at most (interpreters and those awaiting a second look); past this
/// only the interpreters are kept. Exits remove them, but not those the filters hide.
const MAX_PROCESSES: usize = 65_536;
/// How often, and how long after its exec, a process not yet readable is looked at again.
const RETRY_EVERY: Duration = Duration::from_millis(100);
const RETRY_FOR: Duration = Duration::from_secs(30);

/// What tcptrace knows of a process's interpreter; a process without one is not remembered.
enum Known {
    Python(python::Interpreter),
    Jvm(Box<Jvm>),
    Node(Box<Node>),
    /// Exec'd and not yet an interpreter tcptrace can read: looked at again until `until`.
    Pending {
        until: Instant,
    },
}

/// Named interpreter frames, and how they go with the native stack.
pub enum Named {
    /// Python: the interpreter's frames stand for everything the native stack has from the
    /// interpreter's code outward.
    Outer(Vec<Frame>),
    /// HotSpot and V8: each named frame replaces the native frame at its return address.
    AtAddresses(Vec<Frame>),
}

/// What one detection found.
enum Found {
    Python(python::Interpreter),
    Jvm(Box<Jvm>),
    Node(Box<Node>),
    /// An interpreter tcptrace cannot read (`note` says which and why).
    Unsupported {
        file: PathBuf,
        note: String,
    },
    /// An interpreter not readable yet (still starting): looked at again while that is
    /// allowed, then noted as unsupported.
    NotYet {
        file: PathBuf,
        note: String,
    },
    Nothing,
}

pub struct Interpreters {
    maps: InterpMaps,
    processes: HashMap<u32, Known>,
    codes: HashMap<(u32, u64), Option<Arc<Code>>>,
    code_bytes: usize,
    /// Interpreter files already noted as unsupported.
    noted: HashSet<PathBuf>,
    /// The notes of the start-up scan, said after tcptrace's first line.
    start_notes: Vec<String>,
    scanning: bool,
    last_retry: Instant,
    /// The layouts of the Node executables seen.
    v8_layouts: v8::Layouts,
    /// Processes the kernel maps had no room for.
    pub map_full: u64,
}

impl Interpreters {
    pub fn new(maps: InterpMaps) -> Self {
        Self {
            maps,
            processes: HashMap::new(),
            codes: HashMap::new(),
            code_bytes: 0,
            noted: HashSet::new(),
            start_notes: Vec::new(),
            scanning: false,
            last_retry: Instant::now(),
            v8_layouts: v8::Layouts::default(),
            map_full: 0,
        }
    }

    /// Looks at every running process: programs started before tcptrace get their frames
    /// named from their next open on.
    pub fn scan(&mut self) {
        let Ok(processes) = procfs::process::all_processes() else {
            return;
        };
        self.scanning = true;
        // A process found starting (a JVM before its tables are filled in) is looked at again.
        let retry_until = Some(Instant::now() + RETRY_FOR);
        for process in processes.flatten() {
            if let Ok(pid) = u32::try_from(process.pid) {
                match detect(pid, &mut self.v8_layouts) {
                    Found::Nothing => {}
                    found => self.learn(pid, found, retry_until),
                }
            }
        }
        self.scanning = false;
    }

    /// What the start-up scan found that runs degraded (interpreters tcptrace cannot read).
    pub fn take_start_notes(&mut self) -> Vec<String> {
        std::mem::take(&mut self.start_notes)
    }

    /// Process `pid` exec'd: what it ran before is gone.
    pub fn exec(&mut self, pid: u32) {
        self.forget(pid);
        let found = detect(pid, &mut self.v8_layouts);
        self.learn(pid, found, Some(Instant::now() + RETRY_FOR));
    }

    /// Process `pid` exited.
    pub fn forget(&mut self, pid: u32) {
        match self.processes.remove(&pid) {
            Some(Known::Python(_)) => {
                let _ = self.maps.python.remove(&pid);
            }
            Some(Known::Jvm(_) | Known::Node(_)) => {
                let _ = self.maps.frame_pointers.remove(&pid);
            }
            _ => {}
        }
        // Their bytes stay counted until the cache starts over: that only comes sooner.
        self.codes.retain(|&(owner, _), _| owner != pid);
    }

    /// Looks again at the processes exec'd lately that were not readable yet; called often,
    /// does something every `RETRY_EVERY`.
    pub fn tick(&mut self) {
        let now = Instant::now();
        if now.duration_since(self.last_retry) < RETRY_EVERY {
            return;
        }
        self.last_retry = now;
        let pending: Vec<(u32, Instant)> = self
            .processes
            .iter()
            .filter_map(|(&pid, known)| match *known {
                Known::Pending { until } => Some((pid, until)),
                _ => None,
            })
            .collect();
        for (pid, until) in pending {
            self.processes.remove(&pid);
            let found = detect(pid, &mut self.v8_layouts);
            self.learn(pid, found, (now < until).then_some(until));
        }
    }

    /// The file of `pid`'s interpreter, when it has one tcptrace reads.
    pub fn interpreter(&self, pid: u32) -> Option<&PathBuf> {
        match self.processes.get(&pid) {
            Some(Known::Python(interpreter)) => Some(&interpreter.path),
            Some(Known::Jvm(jvm)) => Some(&jvm.path),
            Some(Known::Node(node)) => Some(&node.path),
            _ => None,
        }
    }

    /// Names the frames the kernel walked in `pid`.
    pub fn frames(&mut self, pid: u32, stack: &InterpStack) -> Named {
        // Opened at the first code object not cached, if any.
        let mut memory: Option<Option<ProcessMemory>> = None;
        match (stack.runtime, self.processes.get(&pid)) {
            (Runtime::Python, Some(Known::Python(interpreter))) => {
                let version = interpreter.version;
                if self.codes.len() >= MAX_CODES || self.code_bytes >= MAX_CODE_BYTES {
                    self.codes.clear();
                    self.code_bytes = 0;
                }
                let (codes, code_bytes) = (&mut self.codes, &mut self.code_bytes);
                Named::Outer(
                    stack
                        .frames
                        .iter()
                        .map(|frame| {
                            let code = codes
                                .entry((pid, frame.code))
                                .or_insert_with(|| {
                                    let memory =
                                        memory.get_or_insert_with(|| ProcessMemory::open(pid));
                                    let code = Code::read(memory.as_ref()?, version, frame.code)?;
                                    *code_bytes += code.size();
                                    Some(Arc::new(code))
                                })
                                .clone();
                            python_frame(code.as_deref(), version, frame)
                        })
                        .collect(),
                )
            }
            (Runtime::HotSpot, Some(Known::Jvm(jvm))) => {
                at_addresses(pid, stack, |m, f| jvm.frame(m, f))
            }
            (Runtime::V8, Some(Known::Node(node))) => {
                at_addresses(pid, stack, |m, f| node.frame(m, f))
            }
            _ => Named::AtAddresses(Vec::new()),
        }
    }

    /// Has the kernel walk `pid`'s frame pointers with `slots`; false (counted) when its map
    /// is full.
    fn walk_frame_pointers(&mut self, pid: u32, slots: tcptrace_common::FrameSlots) -> bool {
        let added = self.maps.frame_pointers.insert(pid, slots, 0).is_ok();
        if !added {
            self.map_full += 1;
        }
        added
    }

    /// Records what `found` says of `pid`. `retry_until`: a process just exec'd (or looked at
    /// again), which may become readable; `None`: this look is final.
    fn learn(&mut self, pid: u32, found: Found, retry_until: Option<Instant>) {
        let known = match found {
            Found::Python(interpreter) => {
                let layout = PyLayout { runtime: interpreter.runtime, ..interpreter.version.walk };
                if self.maps.python.insert(pid, layout, 0).is_err() {
                    self.map_full += 1;
                    return;
                }
                Known::Python(interpreter)
            }
            Found::Jvm(jvm) => {
                if !self.walk_frame_pointers(pid, jvm.slots) {
                    return;
                }
                Known::Jvm(jvm)
            }
            Found::Node(node) => {
                if !self.walk_frame_pointers(pid, node.slots) {
                    return;
                }
                Known::Node(node)
            }
            Found::NotYet { .. } | Found::Nothing if let Some(until) = retry_until => {
                Known::Pending { until }
            }
            Found::Unsupported { file, note } | Found::NotYet { file, note } => {
                if self.noted.insert(file) {
                    let note =
                        format!("{note} (pid {pid}); its connections get native frames only");
                    if self.scanning {
                        self.start_notes.push(note);
                    } else {
                        crate::say!("tcptrace: note: {note}");
                    }
                }
                return;
            }
            Found::Nothing => return,
        };
        if self.processes.len() >= MAX_PROCESSES {
            self.processes.retain(|_, known| !matches!(known, Known::Pending { .. }));
        }
        self.processes.insert(pid, known);
    }
}

/// What process `pid` runs, as far as interpreters go.
fn detect(pid: u32, v8_layouts: &mut v8::Layouts) -> Found {
    let Some(maps) = mapped::maps(pid) else {
        return Found::Nothing;
    };
    detect_in(pid, &maps, v8_layouts)
}

fn detect_in(pid: u32, maps: &MemoryMaps, v8_layouts: &mut v8::Layouts) -> Found {
    match python::detect(pid, maps) {
        python::Detection::Known(interpreter) => return Found::Python(interpreter),
        python::Detection::Unsupported { version: (major, minor), path, why } => {
            let note = format!("{} (Python {major}.{minor}): {why}", path.display());
            return Found::Unsupported { file: path, note };
        }
        python::Detection::NotYet { version: (major, minor), path, why } => {
            let note = format!("{} (Python {major}.{minor}): {why}", path.display());
            return Found::NotYet { file: path, note };
        }
        python::Detection::NotPython => {}
    }
    match hotspot::detect(pid, maps) {
        hotspot::Detection::Known(jvm) => return Found::Jvm(Box::new(jvm)),
        hotspot::Detection::NotReady { path, why } => {
            let note = format!("{} (HotSpot): {why}", path.display());
            return Found::NotYet { file: path, note };
        }
        hotspot::Detection::NotJvm => {}
    }
    match v8::detect(pid, maps, v8_layouts) {
        v8::Detection::Known(node) => Found::Node(node),
        v8::Detection::Unsupported { path, why } => {
            let note = format!("{} (Node.js): {why}", path.display());
            Found::Unsupported { file: path, note }
        }
        v8::Detection::NotNode => Found::Nothing,
    }
}

/// The frames a frame-pointer runtime names (`name`: `Jvm::frame`, `Node::frame`), read from
/// `pid`'s memory; none when the process is gone.
fn at_addresses(
    pid: u32,
    stack: &InterpStack,
    name: impl Fn(&ProcessMemory, &tcptrace_common::InterpFrame) -> Option<Frame>,
) -> Named {
    Named::AtAddresses(
        ProcessMemory::open(pid)
            .map(|memory| stack.frames.iter().filter_map(|f| name(&memory, f)).collect())
            .unwrap_or_default(),
    )
}

fn python_frame(
    code: Option<&Code>,
    version: &python::Version,
    frame: &tcptrace_common::InterpFrame,
) -> Frame {
    match code {
        Some(code) => Frame {
            addr: frame.code,
            line: code.line(version, frame.code, frame.instr),
            symbol: Some(code.name.clone()),
            file: Some(code.file.clone()),
            module: Some(PYTHON_MODULE.to_owned()),
        },
        None => Frame::unknown(frame.code, Some(PYTHON_MODULE.to_owned())),
    }
}
