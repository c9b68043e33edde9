//! Interpreter frames: the managed-language code path of a connect() or accept().
//!
//! A Python program's native stack ends in the interpreter's eval loop, which names no
//! application function. Its code path lives in the interpreter's own frame list, which the
//! kernel program walks at the open, in the opening thread, from the layout user space found
//! for that process (`PyLayout`, in the `PY_PROCS` map). A JVM's interpreted frames are on
//! the native stack but anonymous, and so are Node's JavaScript frames; the kernel program walks
//! their frame pointers and records, per frame, the slots where the runtime keeps what the
//! frame runs (`FrameSlots`, in `FP_PROCS`). The record carries those frames; user space reads names and line tables from
//! the process (see `tcptrace::interp`).

use crate::RawEvent;

/// `RawEvent::flags`: the record is a `RawInterpEvent` (the event, then interpreter frames).
pub const FLAG_INTERP: u16 = 1 << 3;

/// Interpreter frames walked per open, innermost first: more than an application's own
/// frames between its request handler and the connect, bounded for the verifier.
pub const INTERP_FRAMES: usize = 32;
/// Threads of an interpreter searched for the calling one: Python inserts new threads at the
/// head of the list, so a thread pool of this size still finds the main thread.
pub const INTERP_THREADS: usize = 256;

/// `RawInterpEvent::runtime`: CPython.
pub const RUNTIME_PYTHON: u32 = 1;

/// `RawInterpEvent::status`: the walk reached the outermost frame (HotSpot: the frame-pointer
/// chain ended).
pub const INTERP_COMPLETE: u32 = 1;
/// `RawInterpEvent::status`: the walk stopped at `INTERP_FRAMES`; outer frames are missing.
pub const INTERP_CUT: u32 = 2;
/// `RawInterpEvent::status`: the calling thread is not one of the interpreter's threads (a
/// thread started outside Python, or more than `INTERP_THREADS` threads before it).
pub const INTERP_NO_THREAD: u32 = 3;
/// `RawInterpEvent::status`: a read of the process's memory failed mid-walk (the frames
/// before it are kept).
pub const INTERP_READ_FAILED: u32 = 4;

/// Where one CPython version keeps what the walk reads: byte offsets from the headers of that
/// version (`Include/internal/pycore_*.h`), plus `_PyRuntime`'s address in this process.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PyLayout {
    /// The address of `_PyRuntime` in the process.
    pub runtime: u64,
    /// `_PyRuntimeState.interpreters.main`.
    pub runtime_main_interp: u16,
    /// `PyInterpreterState.threads.head`.
    pub interp_threads_head: u16,
    /// `PyThreadState.next`.
    pub tstate_next: u16,
    /// `PyThreadState.native_thread_id`: the kernel's thread id, in the process's pid
    /// namespace (matched when the thread pointer is unknown).
    pub tstate_native_thread_id: u16,
    /// `PyThreadState.thread_id`: `pthread_self()`, the thread pointer, matched against the
    /// task's (`KernelOffsets::task_fsbase`) in any pid namespace.
    pub tstate_thread_id: u16,
    /// `PyThreadState.cframe` (3.11, 3.12).
    pub tstate_cframe: u16,
    /// `_PyCFrame.current_frame`.
    pub cframe_current_frame: u16,
    /// `_PyInterpreterFrame.f_code`.
    pub frame_code: u16,
    /// `_PyInterpreterFrame.previous`.
    pub frame_previous: u16,
    /// `_PyInterpreterFrame.prev_instr`.
    pub frame_prev_instr: u16,
    pub _pad0: [u16; 2],
}

const _: () = assert!(size_of::<PyLayout>() == 32);

/// One interpreter frame as the kernel read it, addresses in the process. CPython: the code
/// object and the last instruction executed in it (the call in progress); `pc` is 0. HotSpot:
/// the frame's return address (`pc`, which says whether it is an interpreted frame) and, in
/// case it is, its `Method*` and bytecode pointer (`FrameSlots`). V8: the return address and
/// the `SharedFunctionInfo` of the frame's function, if it is a JavaScript frame.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct InterpFrame {
    pub code: u64,
    pub instr: u64,
    pub pc: u64,
}

const _: () = assert!(size_of::<InterpFrame>() == 24);

/// `RawInterpEvent::runtime`: HotSpot (a JVM), whose frames the kernel walks by frame pointer.
pub const RUNTIME_HOTSPOT: u32 = 2;
/// `RawInterpEvent::runtime`: V8 (Node.js), whose frames the kernel walks by frame pointer.
pub const RUNTIME_V8: u32 = 3;

/// What a frame-pointer walk reads in each frame of a runtime whose frames are on the native
/// stack (HotSpot, V8), in bytes from the frame pointer. The value of `FP_PROCS`.
///
/// HotSpot's interpreted frame keeps its `Method*` (`code`) and bytecode pointer (`position`)
/// at −3 and −8 words (x86-64: `frame::interpreter_frame_method_offset`, `_bcp_offset`). A V8
/// JavaScript frame keeps its `JSFunction` at −2 words (`v8dbg_off_fp_function`), a tagged
/// pointer that a young-generation GC moves: the walk follows it at once to the function's
/// `SharedFunctionInfo` (`follow`, `v8dbg_class_JSFunction__shared__SharedFunctionInfo`),
/// which stays put, and records that; and it records whether the slot above, the context
/// (`v8dbg_off_fp_context`), holds a pointer (1), as in a JavaScript frame, or a small
/// integer, the type of a stub or entry frame, which may keep a function in the same slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FrameSlots {
    /// The slot naming the frame's code (`InterpFrame::code`).
    pub code: i32,
    /// The slot of the frame's position in that code (`InterpFrame::instr`); 0: none read.
    /// With `follow`: the slot whose tag bit alone is recorded.
    pub position: i32,
    /// 0, or the offset in the V8 heap object `code` points to (tagged: low bits 01) of the
    /// pointer recorded in its place.
    pub follow: i32,
    /// `RUNTIME_*` of the records.
    pub runtime: u32,
}

const _: () = assert!(size_of::<FrameSlots>() == 16);

/// A connect or accept record of a process running a known interpreter (`FLAG_INTERP`).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct RawInterpEvent {
    pub event: RawEvent,
    /// `RUNTIME_*`.
    pub runtime: u32,
    /// `INTERP_*`.
    pub status: u32,
    /// Frames filled in `frames`, innermost first.
    pub count: u32,
    pub _pad0: u32,
    pub frames: [InterpFrame; INTERP_FRAMES],
}

const _: () = assert!(size_of::<RawInterpEvent>() == 112 + 16 + 24 * INTERP_FRAMES);

#[cfg(feature = "user")]
// SAFETY: repr(C), integers only, no implicit padding (checked by the size assertion).
unsafe impl aya::Pod for PyLayout {}
#[cfg(feature = "user")]
// SAFETY: as above.
unsafe impl aya::Pod for FrameSlots {}
