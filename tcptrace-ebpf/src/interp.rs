//! Interpreter frames at connect() and accept(): a Python process's code path, walked in the
//! opening thread from the layout user space put in `PY_PROCS`, and a JVM's or Node's frames,
//! walked by frame pointer with the slots user space put in `FP_PROCS` (see
//! `tcptrace_common::interp`).
//!
//! The walk reads only user memory, with `bpf_probe_read_user`, so a layout that is wrong (a
//! process that exec'd since, a hostile binary named like Python) yields a failed read or
//! frames user space cannot name, never a fault. Python's walk follows CPython 3.11's
//! structures: `_PyRuntime.interpreters.main` → `threads.head` → (`next` until `thread_id` or
//! `native_thread_id` is the caller) → `cframe->current_frame` → (`previous` until NULL),
//! recording each frame's `f_code` and `prev_instr` (Include/internal/pycore_runtime.h,
//! pycore_interp.h, pycore_frame.h and Include/cpython/pystate.h). The interpreter releases
//! the GIL around connect(), but the thread's own state and frames stay put until it returns
//! to Python.

use aya_ebpf::helpers::bpf_probe_read_user;
use tcptrace_common::{
    COUNTER_LOST_EVENTS, COUNTER_SENT_EVENTS, FLAG_INTERP, FrameSlots, INTERP_COMPLETE, INTERP_CUT,
    INTERP_FRAMES, INTERP_NO_THREAD, INTERP_READ_FAILED, INTERP_THREADS, InterpFrame, PyLayout,
    RUNTIME_PYTHON, RawEvent, RawInterpEvent, STACKS_USER,
};

use crate::{
    kernel::{current_thread_pointer, current_user_frame_pointer},
    loops::{Body, repeat},
    maps::{EVENTS, FP_PROCS, PY_PROCS, SETTINGS, count, emit, global, wakeup},
};

/// Sends an open record: with the interpreter's frames when the process runs a Python, a JVM
/// or a Node.js that user space recognised (and user stacks are on), as a plain event otherwise.
#[inline(always)]
pub fn emit_open(event: &RawEvent) {
    if global!(SETTINGS.stacks) & STACKS_USER == 0 {
        return emit(event);
    }
    // SAFETY: plain map reads; the values are copied before anything else runs.
    if let Some(layout) = unsafe { PY_PROCS.get(&event.pid) }.copied() {
        return send(event, RUNTIME_PYTHON, |frames| walk_python(&layout, event.tid, frames));
    }
    // SAFETY: as above.
    if let Some(slots) = unsafe { FP_PROCS.get(&event.pid) }.copied() {
        return send(event, slots.runtime, |frames| walk_frame_pointers(&slots, frames));
    }
    emit(event);
}

/// Sends `event` as a `RawInterpEvent` whose frames `walk` fills; counted like `emit`.
#[inline(always)]
fn send(
    event: &RawEvent,
    runtime: u32,
    walk: impl FnOnce(&mut [InterpFrame; INTERP_FRAMES]) -> (u32, u32),
) {
    // Written in place: the record is too large for the BPF stack.
    let Some(mut record) = EVENTS.reserve::<RawInterpEvent>(0) else {
        count(COUNTER_LOST_EVENTS);
        return;
    };
    let out = record.as_mut_ptr();
    // SAFETY: `out` points at reserved ring memory the size of a RawInterpEvent.
    unsafe {
        (*out).event = *event;
        (*out).event.flags |= FLAG_INTERP;
        (*out).runtime = runtime;
        (*out)._pad0 = 0;
        let frames = &mut (*out).frames;
        for frame in frames.iter_mut() {
            *frame = InterpFrame { code: 0, instr: 0, pc: 0 };
        }
        let (status, filled) = walk(frames);
        (*out).status = status;
        (*out).count = filled;
    }
    record.submit(wakeup());
    count(COUNTER_SENT_EVENTS);
}

/// `T` at `addr` in the current process; `None` for NULL or a failed read.
#[inline(always)]
fn user<T>(addr: u64) -> Option<T> {
    if addr == 0 {
        return None;
    }
    // SAFETY: bpf_probe_read_user tolerates any address and reports a fault as an error.
    unsafe { bpf_probe_read_user(addr as *const T) }.ok()
}

#[inline(always)]
fn member(base: u64, offset: u16) -> Option<u64> {
    if base == 0 {
        return None;
    }
    user::<u64>(base + u64::from(offset))
}

/// Fills `frames` with CPython's frames, innermost first; returns (`INTERP_*`, frames filled).
#[inline(always)]
fn walk_python(
    layout: &PyLayout,
    tid: u32,
    frames: &mut [InterpFrame; INTERP_FRAMES],
) -> (u32, u32) {
    let Some(thread) = calling_thread(layout, tid) else {
        return (INTERP_NO_THREAD, 0);
    };
    let Some(frame) = member(thread, layout.tstate_cframe)
        .and_then(|cframe| member(cframe, layout.cframe_current_frame))
    else {
        return (INTERP_READ_FAILED, 0);
    };
    let mut walk = PythonFrames {
        frame,
        out: Out::new(frames),
        code: layout.frame_code,
        instr: layout.frame_prev_instr,
        previous: layout.frame_previous,
    };
    repeat::<{ INTERP_FRAMES as u32 }, _>(INTERP_FRAMES as u32, &mut walk);
    walk.out.result(if walk.frame == 0 { INTERP_COMPLETE } else { INTERP_CUT })
}

/// Where a walk writes its frames (reserved ring memory), how many it filled, and how it
/// ended: `status` stays 0 while it has not ended by itself.
struct Out {
    frames: *mut InterpFrame,
    filled: u32,
    status: u32,
}

impl Out {
    #[inline(always)]
    fn new(frames: &mut [InterpFrame; INTERP_FRAMES]) -> Self {
        Self { frames: frames.as_mut_ptr(), filled: 0, status: 0 }
    }

    /// Stores frame `index`; `false` (the walk is cut) past the last slot. The check is the
    /// bound the verifier needs for the write, made on the loop's own index.
    #[inline(always)]
    fn put(&mut self, index: u64, frame: InterpFrame) -> bool {
        if index >= INTERP_FRAMES as u64 {
            return false;
        }
        // SAFETY: `frames` points at INTERP_FRAMES frames of ring memory; index is below.
        unsafe { *self.frames.add(index as usize) = frame };
        self.filled = index as u32 + 1;
        true
    }

    /// Ends the walk with `status`; `false`, for `Body::step` to return.
    #[inline(always)]
    fn end(&mut self, status: u32) -> bool {
        self.status = status;
        false
    }

    /// (`INTERP_*`, frames filled), with `unfinished` for a walk the loop's bound ended.
    #[inline(always)]
    fn result(&self, unfinished: u32) -> (u32, u32) {
        (if self.status == 0 { unfinished } else { self.status }, self.filled)
    }
}

/// The walk of `_PyInterpreterFrame`s by their `previous` links.
struct PythonFrames {
    frame: u64,
    out: Out,
    code: u16,
    instr: u16,
    previous: u16,
}

impl Body for PythonFrames {
    #[inline(always)]
    fn step(&mut self, index: u64) -> bool {
        if self.frame == 0 {
            return self.out.end(INTERP_COMPLETE);
        }
        let (Some(code), Some(instr), Some(previous)) = (
            member(self.frame, self.code),
            member(self.frame, self.instr),
            member(self.frame, self.previous),
        ) else {
            return self.out.end(INTERP_READ_FAILED);
        };
        if !self.out.put(index, InterpFrame { code, instr, pc: 0 }) {
            return false;
        }
        self.frame = previous;
        true
    }
}

/// The calling thread's `PyThreadState` in the main interpreter's thread list: the one whose
/// `thread_id` (`pthread_self()`) is the task's thread pointer, which holds in every pid
/// namespace; by its native thread id, which holds only in the kernel's, where the thread
/// pointer is unknown.
#[inline(always)]
fn calling_thread(layout: &PyLayout, tid: u32) -> Option<u64> {
    let (field, wanted) = match current_thread_pointer() {
        Some(pointer) => (layout.tstate_thread_id, pointer),
        None => (layout.tstate_native_thread_id, u64::from(tid)),
    };
    let interp = user::<u64>(layout.runtime + u64::from(layout.runtime_main_interp))?;
    let mut search = ThreadSearch {
        thread: member(interp, layout.interp_threads_head)?,
        found: 0,
        wanted,
        field,
        next: layout.tstate_next,
    };
    repeat::<{ INTERP_THREADS as u32 }, _>(INTERP_THREADS as u32, &mut search);
    (search.found != 0).then_some(search.found)
}

/// The search of the thread list by the `next` links; a failed read ends it unfound.
struct ThreadSearch {
    thread: u64,
    found: u64,
    wanted: u64,
    field: u16,
    next: u16,
}

impl Body for ThreadSearch {
    #[inline(always)]
    fn step(&mut self, _index: u64) -> bool {
        if self.thread == 0 {
            return false;
        }
        match member(self.thread, self.field) {
            Some(id) if id == self.wanted => {
                self.found = self.thread;
                false
            }
            Some(_) => match member(self.thread, self.next) {
                Some(next) => {
                    self.thread = next;
                    true
                }
                None => false,
            },
            None => false,
        }
    }
}

/// Fills `frames` from the user frame-pointer chain, innermost first: per frame its return
/// address and the slots `slots` names (whatever the frame holds there: user space keeps only
/// the frames it can tell are the runtime's, by return address or by the object's type). The
/// first frame is the caller of the function that made the system call, as with
/// `bpf_get_stackid`.
#[inline(always)]
fn walk_frame_pointers(
    slots: &FrameSlots,
    frames: &mut [InterpFrame; INTERP_FRAMES],
) -> (u32, u32) {
    let Some(fp) = current_user_frame_pointer() else {
        return (INTERP_READ_FAILED, 0);
    };
    let mut walk = FramePointers { fp, slots: *slots, out: Out::new(frames) };
    repeat::<{ INTERP_FRAMES as u32 }, _>(INTERP_FRAMES as u32, &mut walk);
    walk.out.result(INTERP_CUT)
}

/// The walk of the frame-pointer chain.
struct FramePointers {
    fp: u64,
    slots: FrameSlots,
    out: Out,
}

impl Body for FramePointers {
    #[inline(always)]
    fn step(&mut self, index: u64) -> bool {
        let fp = self.fp;
        let (Some(caller), Some(pc)) = (user::<u64>(fp), user::<u64>(fp.wrapping_add(8))) else {
            return self.out.end(INTERP_READ_FAILED);
        };
        // The chain ends at a null frame pointer, or one that does not lead up the stack.
        if caller <= fp {
            return self.out.end(INTERP_COMPLETE);
        }
        let slots = self.slots;
        let at = |offset: i32| user::<u64>(caller.wrapping_add(offset as i64 as u64)).unwrap_or(0);
        let mut code = at(slots.code);
        // A V8 heap object's tagged pointer (low bits 01), followed to the field that stays.
        if slots.follow != 0 && code & 3 == 1 {
            code = user::<u64>((code - 1).wrapping_add(slots.follow as i64 as u64)).unwrap_or(0);
        }
        let instr = match (slots.position, slots.follow) {
            (0, _) => 0,
            (position, 0) => at(position),
            // V8's context slot: a tagged pointer in a JavaScript frame, a small integer (the
            // frame's type) in a stub or entry frame. Only the tag is kept: the context
            // differs from call to call, and would make every walk look new to user space.
            (position, _) => at(position) & 1,
        };
        if !self.out.put(index, InterpFrame { code, instr, pc }) {
            return false;
        }
        self.fp = caller;
        true
    }
}
