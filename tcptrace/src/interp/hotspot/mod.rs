//! HotSpot JVMs: recognising one (`libjvm.so` mapped, its `gHotSpotVM*` tables filled in), and
//! naming the interpreted frames the kernel's frame-pointer walk found in it.
//!
//! An interpreted Java frame's return address lies in the template interpreter's code
//! (`AbstractInterpreter::_code`, a `StubQueue`), and the frame keeps its `Method*` and
//! bytecode pointer at fixed slots below its frame pointer (x86-64:
//! src/hotspot/cpu/x86/frame_x86.hpp, `interpreter_frame_method_offset` = −3 and
//! `interpreter_frame_bcp_offset` = −8 words, since JDK 9 added the mirror slot). From the
//! `Method*`: its `ConstMethod` (name index, bytecodes, line table), its `ConstantPool` (the
//! symbols, the source file's name) and the class holding it. Every offset comes from the
//! JVM's own tables (`vmstructs`); a JVM without one of them gets native frames.
//!
//! Compiled frames (in the code cache outside the interpreter) are left to the native stack
//! and the JVM's perf map (`jcmd <pid> Compiler.perfmap`), as before.

pub mod linetable;
pub mod vmstructs;

use std::{ops::Range, path::PathBuf};

use procfs::process::MemoryMaps;
use tcptrace_common::{FrameSlots, InterpFrame, RUNTIME_HOTSPOT};

use self::vmstructs::VmStructs;
use super::{mapped::MappedFile, memory::ProcessMemory};
use crate::symbolize::Frame;

/// The `module` of an interpreted Java frame; its `addr` is the frame's return address.
pub const JAVA_MODULE: &str = "[java]";

/// x86-64's interpreted frame slots, in bytes from the frame pointer.
const X86_64_SLOTS: FrameSlots =
    FrameSlots { code: -3 * 8, position: -8 * 8, follow: 0, runtime: RUNTIME_HOTSPOT };

/// The types whose fields and sizes are read from the JVM's tables.
const TYPES: &[&str] = &[
    "Method",
    "ConstMethod",
    "ConstantPool",
    "InstanceKlass",
    "Klass",
    "Symbol",
    "AbstractInterpreter",
    "StubQueue",
];

/// Characters of a class, method or file name read at most.
const MAX_SYMBOL: u64 = 1024;
/// Bytes of a line number table read at most.
const MAX_LINE_TABLE: usize = 64 * 1024;

/// Where a JVM keeps what names an interpreted frame.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Layout {
    method_const: u64,
    const_constants: u64,
    const_name_index: u64,
    const_code_size: u64,
    const_flags: u64,
    /// The bit of `ConstMethod::_flags` saying a line number table follows the bytecodes.
    has_line_table: u32,
    const_size: u64,
    cp_holder: u64,
    cp_size: u64,
    /// `_source_file_name_index`: in `ConstantPool` (JDK 9+) or `InstanceKlass` (before).
    source_file: (u64, bool),
    klass_name: u64,
    symbol_length: u64,
    symbol_body: u64,
}

/// A JVM found in a process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Jvm {
    /// `libjvm.so`.
    pub path: PathBuf,
    pub slots: FrameSlots,
    interpreter: Range<u64>,
    layout: Layout,
}

/// What a process runs, as far as HotSpot goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Detection {
    Known(Jvm),
    /// `libjvm.so` is mapped but its tables are not filled in yet, or lack a field tcptrace
    /// needs (`why`).
    NotReady {
        path: PathBuf,
        why: &'static str,
    },
    NotJvm,
}

/// Whether process `pid`, mapping `maps`, runs a HotSpot JVM tcptrace can read.
pub fn detect(pid: u32, maps: &MemoryMaps) -> Detection {
    let Some((file, ())) = MappedFile::find(pid, maps, |name| (name == "libjvm.so").then_some(()))
    else {
        return Detection::NotJvm;
    };
    let not_ready = |why| Detection::NotReady { path: file.path.clone(), why };
    if !cfg!(target_arch = "x86_64") {
        return not_ready("interpreted frames are only read on x86-64");
    }
    let symbols = file.symbols(vmstructs::SYMBOLS);
    let Some(symbols) = symbols.into_iter().collect::<Option<Vec<u64>>>() else {
        return not_ready("its gHotSpotVM* symbols could not be read");
    };
    let Some(memory) = ProcessMemory::open(pid) else {
        return Detection::NotJvm;
    };
    let Some(vm) = VmStructs::read(&memory, &symbols, TYPES) else {
        return not_ready("its gHotSpotVM* tables are not filled in yet");
    };
    let Some(layout) = layout(&vm) else {
        return not_ready("its tables lack a field tcptrace reads");
    };
    let Some(interpreter) = interpreter(&vm, &memory) else {
        return not_ready("its interpreter is not generated yet");
    };
    Detection::Known(Jvm { path: file.path, slots: X86_64_SLOTS, interpreter, layout })
}

fn layout(vm: &VmStructs) -> Option<Layout> {
    let source_file = match vm.field("ConstantPool::_source_file_name_index") {
        Some(offset) => (offset, true),
        None => (vm.field("InstanceKlass::_source_file_name_index")?, false),
    };
    Some(Layout {
        method_const: vm.field("Method::_constMethod")?,
        const_constants: vm.field("ConstMethod::_constants")?,
        const_name_index: vm.field("ConstMethod::_name_index")?,
        const_code_size: vm.field("ConstMethod::_code_size")?,
        const_flags: vm
            .field("ConstMethod::_flags")
            .or_else(|| vm.field("ConstMethod::_flags._flags"))?,
        has_line_table: vm.constant("ConstMethod::_has_linenumber_table").unwrap_or(1) as u32,
        const_size: vm.size("ConstMethod")?,
        cp_holder: vm.field("ConstantPool::_pool_holder")?,
        cp_size: vm.size("ConstantPool")?,
        source_file,
        klass_name: vm.field("Klass::_name")?,
        symbol_length: vm.field("Symbol::_length")?,
        symbol_body: vm.field("Symbol::_body")?,
    })
}

/// The template interpreter's code: `AbstractInterpreter::_code`'s buffer.
fn interpreter(vm: &VmStructs, memory: &ProcessMemory) -> Option<Range<u64>> {
    let queue = memory.u64(vm.field("AbstractInterpreter::_code")?)?;
    if queue == 0 {
        return None;
    }
    let start = memory.u64(queue + vm.field("StubQueue::_stub_buffer")?)?;
    let size = memory.u32(queue + vm.field("StubQueue::_buffer_limit")?)?;
    (start != 0 && size != 0).then(|| start..start + u64::from(size))
}

impl Jvm {
    /// The Java frame `frame` is, named; `None` when it is not an interpreted frame (its
    /// return address is outside the interpreter) or its method cannot be read.
    pub fn frame(&self, memory: &ProcessMemory, frame: &InterpFrame) -> Option<Frame> {
        if !self.interpreter.contains(&frame.pc) || frame.code == 0 {
            return None;
        }
        let l = &self.layout;
        let const_method = memory.u64(frame.code + l.method_const)?;
        let constants = memory.u64(const_method + l.const_constants)?;
        let holder = memory.u64(constants + l.cp_holder)?;
        let class = self.symbol(memory, memory.u64(holder + l.klass_name)?)?.replace('/', ".");
        let name_index = u16_at(memory, const_method + l.const_name_index)?;
        let method = self.pool_symbol(memory, constants, name_index)?;
        let source_index = match l.source_file {
            (offset, true) => u16_at(memory, constants + offset),
            (offset, false) => u16_at(memory, holder + offset),
        };
        let file = source_index.and_then(|i| self.pool_symbol(memory, constants, i));
        let line = self.line(memory, const_method, frame.instr);
        Some(Frame {
            addr: frame.pc,
            symbol: Some(format!("{class}.{method}")),
            file,
            line,
            module: Some(JAVA_MODULE.to_owned()),
        })
    }

    /// The source line of the bytecode at `bcp` in the method of `const_method`.
    fn line(&self, memory: &ProcessMemory, const_method: u64, bcp: u64) -> Option<u32> {
        let l = &self.layout;
        let code = const_method + l.const_size;
        let code_size = u64::from(u16_at(memory, const_method + l.const_code_size)?);
        let bci = bcp.checked_sub(code).filter(|&bci| bci < code_size)?;
        // u2 in JDK 17, u4 in 21: the flag is in the low bits either way (little-endian).
        let flags = memory.u32(const_method + l.const_flags)?;
        if flags & l.has_line_table == 0 {
            return None;
        }
        // Read in pieces until the table's end marker: its length is not stored.
        let table_at = code + code_size;
        let mut table = Vec::new();
        while !linetable::is_complete(&table) {
            if table.len() >= MAX_LINE_TABLE {
                return None;
            }
            table.extend(memory.bytes(table_at + table.len() as u64, 64)?);
        }
        linetable::line_at(&table, bci)
    }

    /// The `Symbol*` at `index` of the constant pool `constants`, as text.
    fn pool_symbol(&self, memory: &ProcessMemory, constants: u64, index: u16) -> Option<String> {
        let entry = constants + self.layout.cp_size + u64::from(index) * 8;
        self.symbol(memory, memory.u64(entry)?)
    }

    /// A `Symbol`'s text (modified UTF-8, which is UTF-8 for every name a compiler writes).
    fn symbol(&self, memory: &ProcessMemory, symbol: u64) -> Option<String> {
        if symbol == 0 {
            return None;
        }
        let length = u64::from(u16_at(memory, symbol + self.layout.symbol_length)?);
        if length == 0 || length > MAX_SYMBOL {
            return None;
        }
        let bytes = memory.bytes(symbol + self.layout.symbol_body, length as usize)?;
        Some(String::from_utf8_lossy(&bytes).into_owned())
    }
}

fn u16_at(memory: &ProcessMemory, addr: u64) -> Option<u16> {
    memory.bytes(addr, 2).map(|b| u16::from_ne_bytes([b[0], b[1]]))
}
