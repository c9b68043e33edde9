//! Struct member offsets from the running kernel's BTF, for the kernel programs' walks.
//!
//! Rust eBPF has no CO-RE relocations yet, so user space resolves each member once at start and
//! hands the result to the programs as the `OFFSETS` global. Every member's size is checked too:
//! a kernel that changed a member's type must fail loudly here, not return garbage later.

use std::path::Path;

use btf_rs::{Btf, BtfType, Type};
use tcptrace_common::KernelOffsets;

pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// `struct pt_regs` members holding a syscall's number, its first argument and the user frame
/// pointer, as the syscall entry code saved them; only x86-64 is mapped.
#[cfg(target_arch = "x86_64")]
const SYSCALL_REGS: Option<(&str, &str, &str)> = Some(("orig_ax", "di", "bp"));
#[cfg(not(target_arch = "x86_64"))]
const SYSCALL_REGS: Option<(&str, &str, &str)> = None;

/// The `task_struct` member holding a user thread's thread pointer (x86-64: the fs base that
/// glibc's and musl's `pthread_self()` return); only x86-64 is mapped.
#[cfg(target_arch = "x86_64")]
const THREAD_POINTER: Option<&str> = Some("thread.fsbase");
#[cfg(not(target_arch = "x86_64"))]
const THREAD_POINTER: Option<&str> = None;

#[derive(Debug, thiserror::Error)]
pub enum OffsetError {
    #[error("the kernel has no BTF at {path} (CONFIG_DEBUG_INFO_BTF is off)")]
    NoBtf { path: String },
    #[error("cannot parse kernel BTF: {0}")]
    Parse(String),
    #[error("kernel BTF has no struct {0}")]
    NoStruct(String),
    #[error("kernel BTF: struct {strukt} has no member {member}")]
    NoMember { strukt: String, member: String },
    #[error("kernel BTF: {strukt}.{member} is {actual} bytes, expected {expected}")]
    Size { strukt: String, member: String, actual: usize, expected: usize },
    #[error("kernel BTF: {strukt}.{member} is a bitfield or not byte-aligned")]
    Unaligned { strukt: String, member: String },
}

pub struct KernelBtf {
    btf: Btf,
}

impl KernelBtf {
    pub fn from_file(path: &Path) -> Result<Self, OffsetError> {
        if !path.exists() {
            return Err(OffsetError::NoBtf { path: path.display().to_string() });
        }
        // Read whole, then parsed: btf-rs's file reader seeks before each type it reads, which
        // made the parse 4 s of system calls here (0.2 s from memory).
        let bytes = std::fs::read(path)
            .map_err(|e| OffsetError::Parse(format!("reading {}: {e}", path.display())))?;
        let btf = Btf::from_bytes(&bytes).map_err(|e| OffsetError::Parse(e.to_string()))?;
        Ok(Self { btf })
    }

    pub fn from_sysfs() -> Result<Self, OffsetError> {
        Self::from_file(Path::new(VMLINUX_BTF))
    }

    fn find_struct(&self, name: &str) -> Result<btf_rs::Struct, OffsetError> {
        let types = self
            .btf
            .resolve_types_by_name(name)
            .map_err(|_| OffsetError::NoStruct(name.to_owned()))?;
        types
            .into_iter()
            .find_map(|t| match t {
                Type::Struct(s) => Some(s),
                _ => None,
            })
            .ok_or_else(|| OffsetError::NoStruct(name.to_owned()))
    }

    /// Byte offset and size of `path` ("member" or "member.sub") in `struct strukt`, looking
    /// through anonymous structs and unions as C does.
    pub fn member(&self, strukt: &str, path: &str) -> Result<(u32, usize), OffsetError> {
        let no_member =
            || OffsetError::NoMember { strukt: strukt.to_owned(), member: path.to_owned() };
        let mut current = self.find_struct(strukt)?;
        let mut offset_bits = 0u32;
        let mut size = 0usize;
        for name in path.split('.') {
            let (bits, member_type) = self.find_member(&current, name)?.ok_or_else(no_member)?;
            offset_bits += bits;
            size = self.type_size(&member_type).ok_or_else(no_member)?;
            if let Type::Struct(s) | Type::Union(s) = member_type {
                current = s;
            }
        }
        if !offset_bits.is_multiple_of(8) {
            return Err(OffsetError::Unaligned {
                strukt: strukt.to_owned(),
                member: path.to_owned(),
            });
        }
        Ok((offset_bits / 8, size))
    }

    /// Like `member`, but also checks the member is `expected` bytes wide.
    pub fn member_sized(
        &self,
        strukt: &str,
        path: &str,
        expected: usize,
    ) -> Result<u32, OffsetError> {
        let (offset, actual) = self.member(strukt, path)?;
        if actual != expected {
            return Err(OffsetError::Size {
                strukt: strukt.to_owned(),
                member: path.to_owned(),
                actual,
                expected,
            });
        }
        Ok(offset)
    }

    /// Bit offset and resolved type of `name` inside `s`, searching anonymous members.
    fn find_member(
        &self,
        s: &btf_rs::Struct,
        name: &str,
    ) -> Result<Option<(u32, Type)>, OffsetError> {
        for member in &s.members {
            if member.bitfield_size().is_some_and(|bits| bits != 0) {
                let member_name = self.btf.resolve_name(member).unwrap_or_default();
                if member_name == name {
                    return Err(OffsetError::Unaligned {
                        strukt: String::new(),
                        member: name.to_owned(),
                    });
                }
                continue;
            }
            let member_name = self.btf.resolve_name(member).unwrap_or_default();
            let Ok(member_type) = self.resolve_modifiers(member) else { continue };
            if member_name == name {
                return Ok(Some((member.bit_offset(), member_type)));
            }
            if member_name.is_empty()
                && let Type::Struct(inner) | Type::Union(inner) = &member_type
                && let Some((bits, t)) = self.find_member(inner, name)?
            {
                return Ok(Some((member.bit_offset() + bits, t)));
            }
        }
        Ok(None)
    }

    /// The type behind typedefs, const, volatile and type tags.
    fn resolve_modifiers(&self, typed: &dyn BtfType) -> Result<Type, btf_rs::Error> {
        let mut t = self.btf.resolve_chained_type(typed)?;
        loop {
            t = match &t {
                Type::Typedef(x) => self.btf.resolve_chained_type(x)?,
                Type::Volatile(x) => self.btf.resolve_chained_type(x)?,
                Type::Const(x) => self.btf.resolve_chained_type(x)?,
                Type::Restrict(x) => self.btf.resolve_chained_type(x)?,
                Type::TypeTag(x) => self.btf.resolve_chained_type(x)?,
                _ => return Ok(t),
            };
        }
    }

    fn type_size(&self, t: &Type) -> Option<usize> {
        match t {
            Type::Int(i) => Some(i.size()),
            Type::Ptr(_) => Some(8),
            Type::Struct(s) | Type::Union(s) => Some(s.size()),
            Type::Enum(e) => Some(e.size()),
            Type::Enum64(e) => Some(e.size()),
            Type::Array(a) => {
                let elem = self.resolve_modifiers(a).ok()?;
                Some(a.len() * self.type_size(&elem)?)
            }
            _ => None,
        }
    }

    /// Everything the kernel programs read, with the sizes they read it as.
    pub fn kernel_offsets(&self) -> Result<KernelOffsets, OffsetError> {
        // 6.13 replaced file.f_count (atomic_long_t: the count) with file.f_ref (file_ref_t:
        // 0 means one reference).
        let (file_refcount, file_ref_bias) = match self.member_sized("file", "f_ref", 8) {
            Ok(offset) => (offset, 1),
            Err(OffsetError::NoMember { .. }) => (self.member_sized("file", "f_count", 8)?, 0),
            Err(e) => return Err(e),
        };
        let sk =
            |member: &str, size| self.member_sized("sock", &format!("__sk_common.{member}"), size);
        Ok(KernelOffsets {
            valid: 1,
            task_files: self.member_sized("task_struct", "files", 8)?,
            task_flags: self.member_sized("task_struct", "flags", 4)?,
            task_signal: self.member_sized("task_struct", "signal", 8)?,
            signal_live: self.member_sized("signal_struct", "live", 4)?,
            files_fdt: self.member_sized("files_struct", "fdt", 8)?,
            fdtable_max_fds: self.member_sized("fdtable", "max_fds", 4)?,
            fdtable_fd: self.member_sized("fdtable", "fd", 8)?,
            file_private_data: self.member_sized("file", "private_data", 8)?,
            file_inode: self.member_sized("file", "f_inode", 8)?,
            file_refcount,
            file_ref_bias,
            inode_mode: self.member_sized("inode", "i_mode", 2)?,
            socket_sk: self.member_sized("socket", "sk", 8)?,
            sock_protocol: self.member_sized("sock", "sk_protocol", 2)?,
            skc_family: sk("skc_family", 2)?,
            skc_state: sk("skc_state", 1)?,
            // Not skc_num: unhashing at CLOSE and TIME_WAIT entry zeroes it first.
            inet_sport: self.member_sized("inet_sock", "inet_sport", 2)?,
            skc_dport: sk("skc_dport", 2)?,
            skc_daddr: sk("skc_daddr", 4)?,
            skc_rcv_saddr: sk("skc_rcv_saddr", 4)?,
            skc_v6_daddr: sk("skc_v6_daddr", 16)?,
            skc_v6_rcv_saddr: sk("skc_v6_rcv_saddr", 16)?,
            task_mm: self.member_sized("task_struct", "mm", 8)?,
            // Only for finding a Python thread: without it, threads are matched by thread id.
            task_fsbase: THREAD_POINTER
                .and_then(|member| self.member_sized("task_struct", member, 8).ok())
                .unwrap_or(0),
            // The helper's id in the kernel's own list says whether the verifier knows it.
            has_loop: u32::from(self.has_enum_value("bpf_func_id", "BPF_FUNC_loop")),
            ..self.connect_regs()
        })
    }

    /// Where connect()'s descriptor is in the caller's saved registers, if the kernel can hand
    /// the programs those registers. Anything missing leaves `connect_regs` at 0: the syscall
    /// programs then remember the descriptor instead.
    fn connect_regs(&self) -> KernelOffsets {
        let none = KernelOffsets::zeroed();
        // The helper's id in the kernel's own list says whether the verifier knows it.
        if !self.has_enum_value("bpf_func_id", "BPF_FUNC_task_pt_regs") {
            return none;
        }
        let Some((nr, arg0, fp)) = SYSCALL_REGS else { return none };
        let (Ok(regs_syscall_nr), Ok(regs_arg0), Ok(regs_fp)) = (
            self.member_sized("pt_regs", nr, 8),
            self.member_sized("pt_regs", arg0, 8),
            self.member_sized("pt_regs", fp, 8),
        ) else {
            return none;
        };
        KernelOffsets {
            connect_regs: 1,
            regs_syscall_nr,
            regs_arg0,
            regs_fp,
            sys_connect: libc::SYS_connect as u32,
            ..none
        }
    }

    /// Whether `enum name` has a member called `value`.
    fn has_enum_value(&self, name: &str, value: &str) -> bool {
        let Ok(types) = self.btf.resolve_types_by_name(name) else { return false };
        types.iter().any(|t| match t {
            Type::Enum(e) => {
                e.members.iter().any(|m| self.btf.resolve_name(m).is_ok_and(|n| n == value))
            }
            _ => false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kernel_btf() -> Option<KernelBtf> {
        match KernelBtf::from_sysfs() {
            Ok(btf) => Some(btf),
            Err(OffsetError::NoBtf { .. }) => None,
            Err(e) => panic!("BTF present but unreadable: {e}"),
        }
    }

    #[test]
    fn resolves_every_member_the_programs_read() {
        let Some(btf) = kernel_btf() else { return };
        let offsets = btf.kernel_offsets().expect("offsets");
        assert_eq!(offsets.valid, 1);
        // struct sock starts with struct sock_common, whose first members are the address pair
        // and the port pair: these are fixed by the kernel's lookup code.
        assert_eq!(offsets.skc_daddr, 0);
        assert_eq!(offsets.skc_rcv_saddr, 4);
        assert_eq!(offsets.skc_dport, 12);
        assert!(offsets.sock_protocol > offsets.skc_v6_rcv_saddr);
        // struct inet_sock starts with struct sock.
        assert!(offsets.inet_sport > offsets.sock_protocol);
        // The thread pointer lives in thread_struct, at the end of task_struct.
        #[cfg(target_arch = "x86_64")]
        assert!(offsets.task_fsbase > offsets.task_mm, "{offsets:?}");
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn finds_connects_descriptor_in_the_saved_registers() {
        let Some(btf) = kernel_btf() else { return };
        // Every kernel with BTF since 5.15 has the helper; the x86-64 pt_regs layout is ABI
        // (arch/x86/include/uapi/asm/ptrace.h): di is slot 14, orig_ax slot 15.
        assert!(btf.has_enum_value("bpf_func_id", "BPF_FUNC_task_pt_regs"));
        assert!(!btf.has_enum_value("bpf_func_id", "BPF_FUNC_no_such_helper"));
        let offsets = btf.kernel_offsets().expect("offsets");
        assert_eq!(
            (offsets.connect_regs, offsets.regs_arg0, offsets.regs_syscall_nr, offsets.sys_connect),
            (1, 14 * 8, 15 * 8, 42)
        );
    }

    #[test]
    fn looks_through_anonymous_unions() {
        let Some(btf) = kernel_btf() else { return };
        let (offset, size) = btf.member("sock_common", "skc_num").expect("skc_num");
        assert_eq!((offset, size), (14, 2));
    }

    #[test]
    fn reports_missing_members_and_wrong_sizes() {
        let Some(btf) = kernel_btf() else { return };
        assert!(matches!(btf.member("file", "no_such_member"), Err(OffsetError::NoMember { .. })));
        assert!(matches!(btf.member_sized("socket", "sk", 4), Err(OffsetError::Size { .. })));
        assert!(matches!(btf.member("no_such_struct_xyz", "x"), Err(OffsetError::NoStruct(_))));
    }

    #[test]
    fn missing_btf_file_is_a_typed_error() {
        let err = KernelBtf::from_file(Path::new("/nonexistent/vmlinux")).err().expect("error");
        assert!(matches!(err, OffsetError::NoBtf { .. }));
    }
}
