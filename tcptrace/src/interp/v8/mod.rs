//! Node.js processes: recognising one (a `node` executable or `libnode.so` that exports V8's
//! postmortem metadata, the `v8dbg_*` values), and naming the JavaScript frames the kernel's
//! frame-pointer walk found in it.
//!
//! Every JavaScript frame V8 runs (interpreted, baseline or optimized) has a frame pointer and
//! keeps its `JSFunction` two words below it (`v8dbg_off_fp_function`); the kernel program
//! follows that to the function's `SharedFunctionInfo` (`tcptrace_common::FrameSlots`). Here
//! the `SharedFunctionInfo` gives the function's name (a string, or, once compiled, the first
//! name in its `ScopeInfo`, past the context locals) and its `Script`, whose name is the file
//! (`/srv/app/orders.js`, `node:net`). A typed frame (an entry or stub frame) keeps its type,
//! a small integer, where a JavaScript frame keeps its context, and may keep the function it
//! calls in the function's slot: the kernel records that slot's tag and such frames are
//! skipped; a C++ frame's slot fails the type checks. Both stay native.
//!
//! `ScopeInfo`'s layout has no metadata; as the OpenTelemetry eBPF profiler does, the name is
//! the first string at the variable part (`v8dbg_scopeinfo_idx_first_vars`) past the context
//! locals' names and infos, which holds from V8 9.1 (Node 16.4) to 12.7 (Node 22). Line
//! numbers are not given: V8 collects a function's source positions only when something asks
//! for a stack trace, so for most frames there is nothing to read.

pub mod heap;

use std::{collections::HashMap, path::PathBuf};

use procfs::process::MemoryMaps;
use tcptrace_common::{FrameSlots, InterpFrame, RUNTIME_V8};

use self::heap::{Heap, StringLayout, smi, untag};
use super::{
    mapped::{FileId, MappedFile},
    memory::ProcessMemory,
};
use crate::symbolize::Frame;

/// The `module` of a JavaScript frame; its `addr` is the frame's return address (as a file
/// offset when that is in the executable's builtins, as the native stack has it).
pub const JS_MODULE: &str = "[js]";

/// The metadata read, in this order (`v8dbg_` + name).
const SYMBOLS: &[&str] = &[
    "v8dbg_off_fp_function",
    "v8dbg_class_JSFunction__shared__SharedFunctionInfo",
    "v8dbg_class_HeapObject__map__Map",
    "v8dbg_class_Map__instance_type__uint16_t",
    "v8dbg_type_Map__MAP_TYPE",
    "v8dbg_type_SharedFunctionInfo__SHARED_FUNCTION_INFO_TYPE",
    "v8dbg_type_ScopeInfo__SCOPE_INFO_TYPE",
    "v8dbg_type_Script__SCRIPT_TYPE",
    "v8dbg_class_SharedFunctionInfo__name_or_scope_info__Object",
    "v8dbg_class_SharedFunctionInfo__script_or_debug_info__HeapObject",
    "v8dbg_class_Script__name__Object",
    "v8dbg_scopeinfo_idx_first_vars",
    "v8dbg_scopeinfo_idx_ncontextlocals",
    "v8dbg_FirstNonstringType",
    "v8dbg_StringRepresentationMask",
    "v8dbg_StringEncodingMask",
    "v8dbg_OneByteStringTag",
    "v8dbg_SeqStringTag",
    "v8dbg_ConsStringTag",
    "v8dbg_ThinStringTag",
    "v8dbg_SlicedStringTag",
    "v8dbg_class_String__length__int32_t",
    "v8dbg_class_SeqOneByteString__chars__char",
    "v8dbg_class_ConsString__first__String",
    "v8dbg_class_ConsString__second__String",
    "v8dbg_class_ThinString__actual__String",
    "v8dbg_class_SlicedString__parent__String",
    "v8dbg_class_SlicedString__offset__SMI",
    "v8dbg_TaggedSize",
    "v8dbg_off_fp_context",
];

/// A function with this many context locals or more keeps their names in a hash table, one
/// slot (V8's `kScopeInfoMaxInlinedLocalNamesSize`).
const MAX_INLINED_LOCAL_NAMES: u64 = 75;
/// `ScopeInfo` slots looked at for the name past where it is expected.
const NAME_SLOTS: u64 = 3;

/// Where one V8 keeps what names a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    heap: Heap,
    sfi_type: u16,
    scope_info_type: u16,
    script_type: u16,
    sfi_name_or_scope_info: u64,
    sfi_script: u64,
    script_name: u64,
    scope_first_vars: u64,
    scope_context_locals: u64,
}

/// A Node.js found in a process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// The file holding V8: `node`, or `libnode.so.N`.
    pub path: PathBuf,
    pub slots: FrameSlots,
    /// Its mappings: an interpreted frame returns into its builtins, which a stack of build
    /// ids places by file offset.
    file: MappedFile,
    layout: Layout,
}

/// What a process runs, as far as Node goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Detection {
    Known(Box<Node>),
    /// A Node tcptrace cannot read (`why`): its opens get native frames only.
    Unsupported {
        path: PathBuf,
        why: &'static str,
    },
    NotNode,
}

/// What was read of each Node executable: every process of one file has the same layout, and
/// finding V8's metadata among its 75,000 symbols takes 80 ms, so only its first process pays.
#[derive(Debug, Default)]
pub struct Layouts(HashMap<FileId, Result<(FrameSlots, Layout), &'static str>>);

/// Executables remembered at most; past this the cache starts over.
const MAX_LAYOUTS: usize = 64;

/// Whether process `pid`, mapping `maps`, runs a Node.js tcptrace can read.
pub fn detect(pid: u32, maps: &MemoryMaps, layouts: &mut Layouts) -> Detection {
    let Some((file, ())) = MappedFile::find(pid, maps, |name| {
        (name == "node" || name == "nodejs" || name.starts_with("libnode.so")).then_some(())
    }) else {
        return Detection::NotNode;
    };
    let id = file.identity();
    let read = match id.and_then(|id| layouts.0.get(&id)) {
        Some(read) => read.clone(),
        None => {
            let Some(read) = read_layout(pid, &file) else {
                return Detection::NotNode;
            };
            if let Some(id) = id {
                if layouts.0.len() >= MAX_LAYOUTS {
                    layouts.0.clear();
                }
                layouts.0.insert(id, read.clone());
            }
            read
        }
    };
    match read {
        Ok((slots, layout)) => {
            Detection::Known(Box::new(Node { path: file.path.clone(), slots, file, layout }))
        }
        Err(why) => Detection::Unsupported { path: file.path, why },
    }
}

/// The layout of the V8 in `file`, from its metadata in process `pid`; `Err` says why it
/// cannot be read, `None` that the process is gone.
fn read_layout(pid: u32, file: &MappedFile) -> Option<Result<(FrameSlots, Layout), &'static str>> {
    if !cfg!(target_arch = "x86_64") {
        return Some(Err("JavaScript frames are only read on x86-64"));
    }
    let addresses = file.symbols(SYMBOLS);
    if addresses.iter().all(Option::is_none) {
        return Some(Err("it lacks V8's postmortem metadata (v8dbg_*)"));
    }
    let Some(addresses) = addresses.into_iter().collect::<Option<Vec<u64>>>() else {
        return Some(Err("its V8 postmortem metadata lacks a value tcptrace reads"));
    };
    let memory = ProcessMemory::open(pid)?;
    let values: Vec<i64> = addresses
        .iter()
        .map(|&a| memory.u32(a).map(|v| i64::from(v as i32)))
        .collect::<Option<_>>()?;
    Some(layout(&values).ok_or("its V8 uses compressed pointers or an unexpected frame layout"))
}

/// What the kernel reads in a frame, and the layout, from `SYMBOLS`' values in order; `None`
/// for a V8 whose tagged words are not 8 bytes (pointer compression) or whose values are
/// implausible.
fn layout(v: &[i64]) -> Option<(FrameSlots, Layout)> {
    let offset = |i: usize| u64::try_from(v[i]).ok().filter(|&o| o < 4096);
    let ty = |i: usize| u16::try_from(v[i]).ok();
    let function = i32::try_from(v[0]).ok().filter(|o| (-64..0).contains(o) && o % 8 == 0)?;
    let shared = i32::try_from(v[1]).ok().filter(|o| (8..4096).contains(o))?;
    let context = i32::try_from(v[29]).ok().filter(|o| (-64..0).contains(o) && o % 8 == 0)?;
    if v[28] != 8 || context == function {
        return None;
    }
    let slots =
        FrameSlots { code: function, position: context, follow: shared, runtime: RUNTIME_V8 };
    let heap = Heap {
        map: offset(2)?,
        instance_type: offset(3)?,
        map_type: ty(4)?,
        first_nonstring_type: ty(13)?,
        string: StringLayout {
            representation_mask: ty(14)?,
            encoding_mask: ty(15)?,
            one_byte_tag: ty(16)?,
            seq_tag: ty(17)?,
            cons_tag: ty(18)?,
            thin_tag: ty(19)?,
            sliced_tag: ty(20)?,
            length: offset(21)?,
            seq_chars: offset(22)?,
            cons_first: offset(23)?,
            cons_second: offset(24)?,
            thin_actual: offset(25)?,
            sliced_parent: offset(26)?,
            sliced_offset: offset(27)?,
        },
    };
    Some((
        slots,
        Layout {
            heap,
            sfi_type: ty(5)?,
            scope_info_type: ty(6)?,
            script_type: ty(7)?,
            sfi_name_or_scope_info: offset(8)?,
            sfi_script: offset(9)?,
            script_name: offset(10)?,
            scope_first_vars: offset(11)?,
            scope_context_locals: offset(12)?,
        },
    ))
}

impl Node {
    /// The JavaScript frame `frame` is, named; `None` when it is not one (its context slot
    /// holds a frame type, or what the kernel read is not a `SharedFunctionInfo`: a native or
    /// stub frame) or cannot be read.
    pub fn frame(&self, memory: &ProcessMemory, frame: &InterpFrame) -> Option<Frame> {
        let l = &self.layout;
        if frame.instr != 1 || l.heap.type_of(memory, frame.code)? != l.sfi_type {
            return None;
        }
        let name = self.function_name(memory, frame.code);
        let file = l
            .heap
            .field(memory, frame.code, l.sfi_script)
            .filter(|&script| l.heap.type_of(memory, script) == Some(l.script_type))
            .and_then(|script| l.heap.field(memory, script, l.script_name))
            .and_then(|name| l.heap.string(memory, name))
            .filter(|name| !name.is_empty());
        Some(Frame {
            addr: self.file.offset(frame.pc).unwrap_or(frame.pc),
            symbol: Some(match name {
                Some(name) if !name.is_empty() => name,
                _ => "(anonymous)".to_owned(),
            }),
            file,
            line: None,
            module: Some(JS_MODULE.to_owned()),
        })
    }

    /// The name of the function of `sfi`: the string its `name_or_scope_info` is before it is
    /// compiled, the name its `ScopeInfo` keeps after.
    fn function_name(&self, memory: &ProcessMemory, sfi: u64) -> Option<String> {
        let l = &self.layout;
        let held = l.heap.field(memory, sfi, l.sfi_name_or_scope_info)?;
        let ty = l.heap.type_of(memory, held)?;
        if ty < l.heap.first_nonstring_type {
            return l.heap.string(memory, held);
        }
        if ty != l.scope_info_type {
            return None;
        }
        // The slots follow the map word.
        let slots = untag(held)? + l.heap.map + 8;
        let slot = |i: u64| memory.u64(slots + 8 * i);
        let locals = u64::try_from(smi(slot(l.scope_context_locals)?)?).ok()?;
        let names =
            if locals < MAX_INLINED_LOCAL_NAMES { 2 * locals } else { locals.checked_add(1)? };
        let first = l.scope_first_vars.checked_add(names)?;
        (first..first + NAME_SLOTS).find_map(|i| {
            let value = slot(i)?;
            untag(value)?;
            l.heap.string(memory, value)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Node 20.20's values (V8 11.3), as `nm -D node` and its data give them.
    fn node20() -> Vec<i64> {
        vec![
            -16, 24, 0, 12, 255, 262, 261, 167, 16, 32, 16, 3, 2, 128, 7, 8, 8, 0, 1, 5, 3, 12, 16,
            16, 24, 16, 16, 24, 8, -8,
        ]
    }

    #[test]
    fn node_20s_metadata_gives_its_layout() {
        let values = node20();
        assert_eq!(values.len(), SYMBOLS.len());
        let (slots, layout) = layout(&values).unwrap();
        assert_eq!(slots, FrameSlots { code: -16, position: -8, follow: 24, runtime: RUNTIME_V8 });
        assert_eq!(layout.sfi_type, 262);
        assert_eq!(layout.scope_first_vars, 3);
        assert_eq!(layout.heap.string.seq_chars, 16);
    }

    #[test]
    fn compressed_pointers_and_odd_frames_are_refused() {
        let mut compressed = node20();
        compressed[28] = 4;
        assert!(layout(&compressed).is_none());
        let mut odd = node20();
        odd[0] = -12;
        assert!(layout(&odd).is_none());
        let mut above = node20();
        above[0] = 16;
        assert!(layout(&above).is_none());
        let mut same = node20();
        same[29] = -16;
        assert!(layout(&same).is_none(), "the context and the function share no slot");
    }
}
