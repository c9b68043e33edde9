//! Interpreter frames: the code path of a connect() or accept() in a managed runtime, named
//! in the application's language.
//!
//! A Python program's native stack ends in the interpreter's eval loop, which says nothing
//! about the application. So for each process running a CPython tcptrace knows (`python`),
//! this layer puts the interpreter's layout in the kernel's `PY_PROCS` map; the kernel program
//! then walks the interpreter's frames at each open in that process and sends, per frame, the
//! code object and instruction (see `tcptrace_common::interp`). Here those become frames:
//! `open_order_client (leaky_jobs.py:5)`, read from the process's memory while it lives, with
//! a cache per code object.
//!
//! Processes are found at start (every running process, so programs already running are
//! covered without a restart) and at each exec. A Python linking `libpython` dynamically
//! (pyenv, source builds) has not mapped it yet when its exec is seen: it is looked at again
//! at its first open, which therefore has native frames only.
//!
//! May import `event`, `symbolize` (the `Frame` it produces) and `stdio`; imported by `stacks`.

pub mod memory;
pub mod python;

use std::{
    collections::{HashMap, HashSet},
    path::PathBuf,
    sync::Arc,
};

use aya::maps::{HashMap as BpfHashMap, MapData};
use tcptrace_common::PyLayout;

use self::{
    memory::ProcessMemory,
    python::{Detection, Interpreter, code::Code},
};
use crate::{
    event::{InterpStack, Runtime},
    symbolize::Frame,
};

/// The `module` of interpreter frames: their `addr` is the code object's address.
pub const PYTHON_MODULE: &str = "[python]";

/// Code objects kept per run; past this the cache starts over.
const MAX_CODES: usize = 16_384;

/// Processes remembered at most (interpreters and those awaiting a second look); past this
/// only the interpreters are kept. Exits remove them, but not those the filters hide.
const MAX_PROCESSES: usize = 65_536;

/// What tcptrace knows of a process's interpreter; a process without one is not remembered.
enum Known {
    Python(Interpreter),
    /// Exec'd and not yet an interpreter tcptrace can read: looked at again at its next open.
    Pending,
}

pub struct Interpreters {
    map: BpfHashMap<MapData, u32, PyLayout>,
    processes: HashMap<u32, Known>,
    codes: HashMap<(u32, u64), Option<Arc<Code>>>,
    /// Interpreter files already noted as unsupported.
    noted: HashSet<PathBuf>,
    /// The notes of the start-up scan, said after tcptrace's first line.
    start_notes: Vec<String>,
    scanning: bool,
    /// Processes the kernel map had no room for.
    pub map_full: u64,
}

impl Interpreters {
    pub fn new(map: BpfHashMap<MapData, u32, PyLayout>) -> Self {
        Self {
            map,
            processes: HashMap::new(),
            codes: HashMap::new(),
            noted: HashSet::new(),
            start_notes: Vec::new(),
            scanning: false,
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
        for process in processes.flatten() {
            if let Ok(pid) = u32::try_from(process.pid) {
                let detection = python::detect(pid);
                self.learn(pid, detection, false);
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
        let detection = python::detect(pid);
        self.learn(pid, detection, true);
    }

    /// Process `pid` exited.
    pub fn forget(&mut self, pid: u32) {
        if let Some(Known::Python(_)) = self.processes.remove(&pid) {
            let _ = self.map.remove(&pid);
        }
        self.codes.retain(|&(owner, _), _| owner != pid);
    }

    /// An open in `pid` that carried no interpreter frames: a process exec'd before its
    /// interpreter was mapped is looked at again.
    pub fn open_without_frames(&mut self, pid: u32) {
        if matches!(self.processes.get(&pid), Some(Known::Pending)) {
            self.processes.remove(&pid);
            let detection = python::detect(pid);
            self.learn(pid, detection, false);
        }
    }

    /// The file of `pid`'s interpreter, when it has one tcptrace reads.
    pub fn interpreter(&self, pid: u32) -> Option<&Interpreter> {
        match self.processes.get(&pid) {
            Some(Known::Python(interpreter)) => Some(interpreter),
            _ => None,
        }
    }

    /// Names the frames the kernel walked in `pid`, innermost first.
    pub fn frames(&mut self, pid: u32, stack: &InterpStack) -> Vec<Frame> {
        let Runtime::Python = stack.runtime;
        let Some(Known::Python(interpreter)) = self.processes.get(&pid) else {
            return Vec::new();
        };
        let version = interpreter.version;
        let memory = ProcessMemory::open(pid);
        if self.codes.len() >= MAX_CODES {
            self.codes.clear();
        }
        stack
            .frames
            .iter()
            .map(|frame| {
                let code = self
                    .codes
                    .entry((pid, frame.code))
                    .or_insert_with(|| {
                        memory
                            .as_ref()
                            .and_then(|m| Code::read(m, version, frame.code))
                            .map(Arc::new)
                    })
                    .clone();
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
            })
            .collect()
    }

    fn learn(&mut self, pid: u32, detection: Detection, just_exec: bool) {
        let known = match detection {
            Detection::Known(interpreter) => {
                let layout = PyLayout { runtime: interpreter.runtime, ..interpreter.version.walk };
                if self.map.insert(pid, layout, 0).is_err() {
                    self.map_full += 1;
                    return;
                }
                Known::Python(interpreter)
            }
            Detection::Unsupported { .. } | Detection::NotPython if just_exec => Known::Pending,
            Detection::Unsupported { version: (major, minor), path, why } => {
                if self.noted.insert(path.clone()) {
                    let note = format!(
                        "{} (Python {major}.{minor}, pid {pid}): {why}; its connections get native frames only",
                        path.display()
                    );
                    if self.scanning {
                        self.start_notes.push(note);
                    } else {
                        crate::say!("tcptrace: note: {note}");
                    }
                }
                return;
            }
            Detection::NotPython => return,
        };
        if self.processes.len() >= MAX_PROCESSES {
            self.processes.retain(|_, known| matches!(known, Known::Python(_)));
        }
        self.processes.insert(pid, known);
    }
}
