//! A ring-buffer record (the bytes `kernel::stream` hands to the decoder) → `Event`.
//!
//! Holds: decoding never panics; it fails exactly when the record is shorter than a `RawEvent`
//! or a raw value is outside its domain; a decoded event says what the bytes say, field by
//! field, read here independently of the decoder (by offset, little-endian as on x86-64).

#![no_main]

use std::{mem::offset_of, net::IpAddr, os::unix::ffi::OsStrExt as _};

use libfuzzer_sys::fuzz_target;
use tcptrace::event::{DecodeError, Event, EventKind};
use tcptrace_common::{
    EXEC_PATH_LEN, FLAG_ADDRS, FLAG_INTERP, FLAG_OWNER_LOST, FLAG_RESET, KIND_ACCEPT, KIND_CONNECT,
    KIND_EXEC, KIND_EXIT, KIND_RELEASE, KIND_STATE, RawEvent, RawInterpEvent,
};

const LEN: usize = size_of::<RawEvent>();

fn bytes<const N: usize>(data: &[u8], at: usize) -> [u8; N] {
    data[at..at + N].try_into().expect("in bounds")
}

macro_rules! field {
    ($data:expr, $name:ident, $ty:ty) => {
        <$ty>::from_ne_bytes(bytes($data, offset_of!(RawEvent, $name)))
    };
}

fuzz_target!(|data: &[u8]| {
    let decoded = Event::try_from(data);
    assert_eq!(decoded, Event::try_from(data), "decoding is deterministic");
    if data.len() < LEN {
        assert_eq!(decoded, Err(DecodeError::Short(data.len())));
        return;
    }
    let kind = data[offset_of!(RawEvent, kind)];
    let old_state = data[offset_of!(RawEvent, old_state)];
    let new_state = data[offset_of!(RawEvent, new_state)];
    let reason = data[offset_of!(RawEvent, reason)];
    let family = field!(data, family, u16);
    let flags = field!(data, flags, u16);
    let state_ok = |s: u8| (1..=12).contains(&s);
    let interp = flags & FLAG_INTERP != 0 && matches!(kind, KIND_CONNECT | KIND_ACCEPT);
    let known_kind = matches!(
        kind,
        KIND_CONNECT | KIND_ACCEPT | KIND_STATE | KIND_RELEASE | KIND_EXIT | KIND_EXEC
    );
    let event = match decoded {
        Ok(event) => event,
        Err(DecodeError::Short(_)) => panic!("Short for a record of {} bytes", data.len()),
        Err(DecodeError::Family(f)) => {
            assert_eq!(f, family);
            assert!(flags & FLAG_ADDRS != 0 && f != 2 && f != 10, "family {f} refused");
            return;
        }
        Err(DecodeError::Kind(k)) => {
            assert_eq!(k, kind);
            assert!(!known_kind, "kind {k} refused");
            return;
        }
        Err(DecodeError::State(s)) => {
            assert!(!state_ok(s), "state {s} refused");
            assert!(s == old_state || s == new_state);
            return;
        }
        Err(DecodeError::Reason(r)) => {
            assert_eq!((kind, r), (KIND_RELEASE, reason));
            assert!(!(1..=4).contains(&r), "reason {r} refused");
            return;
        }
        // An open that says it carries interpreter frames (FLAG_INTERP) and does not.
        Err(DecodeError::ShortInterp(n)) => {
            assert_eq!(n, data.len());
            assert!(interp, "ShortInterp for a record without interpreter frames");
            assert!(n < size_of::<RawInterpEvent>(), "{n} bytes refused");
            return;
        }
        Err(DecodeError::Runtime(r)) => {
            assert!(interp);
            assert_eq!(r, u32::from_ne_bytes(bytes(data, offset_of!(RawInterpEvent, runtime))));
            assert!(!(1..=3).contains(&r), "runtime {r} refused");
            return;
        }
        Err(DecodeError::InterpWalk(w)) => {
            assert!(interp);
            assert_eq!(w, u32::from_ne_bytes(bytes(data, offset_of!(RawInterpEvent, status))));
            assert!(!(1..=4).contains(&w), "walk status {w} refused");
            return;
        }
    };
    assert_eq!(event.interp.is_some(), interp, "interpreter frames decoded exactly when flagged");
    assert!(known_kind, "kind {kind} accepted");
    assert_eq!(event.ts_ns, field!(data, ts_ns, u64));
    assert_eq!(event.skaddr, field!(data, skaddr, u64));
    assert_eq!(event.pid, field!(data, pid, u32));
    assert_eq!(event.tid, field!(data, tid, u32));
    let owner = field!(data, owner_pid, u32);
    assert_eq!(event.owner_pid, (owner != 0).then_some(owner));
    assert!(event.owner_pid != Some(0));
    let fd = field!(data, fd, i32);
    assert_eq!(event.fd, (fd >= 0).then_some(fd));
    assert!(event.fd.is_none_or(|fd| fd >= 0));
    assert_eq!(event.owner_lost, flags & FLAG_OWNER_LOST != 0);
    let user = field!(data, user_stack, i32);
    let kernel = field!(data, kernel_stack, i32);
    assert_eq!(event.stacks.user, u32::try_from(user).ok());
    assert_eq!(event.stacks.kernel, u32::try_from(kernel).ok());
    let comm = event.comm.as_str();
    assert!(!comm.contains('\0') && comm.chars().count() <= 16, "comm {comm:?}");
    match event.endpoints {
        None => assert_eq!(flags & FLAG_ADDRS, 0),
        Some(endpoints) => {
            assert_ne!(flags & FLAG_ADDRS, 0);
            assert_eq!(endpoints.local.port(), field!(data, lport, u16));
            assert_eq!(endpoints.remote.port(), field!(data, rport, u16));
            let saddr: [u8; 16] = bytes(data, offset_of!(RawEvent, saddr));
            let daddr: [u8; 16] = bytes(data, offset_of!(RawEvent, daddr));
            match (family, endpoints.local.ip(), endpoints.remote.ip()) {
                (2, IpAddr::V4(l), IpAddr::V4(r)) => {
                    assert_eq!((l.octets(), r.octets()), (bytes(&saddr, 0), bytes(&daddr, 0)));
                }
                (10, IpAddr::V6(l), IpAddr::V6(r)) => {
                    assert_eq!((l.octets(), r.octets()), (saddr, daddr));
                }
                other => panic!("family {family} decoded as {other:?}"),
            }
        }
    }
    match event.kind {
        EventKind::Connect => assert_eq!(kind, KIND_CONNECT),
        EventKind::Accept { state } => {
            assert_eq!(kind, KIND_ACCEPT);
            assert_eq!(state.is_none(), new_state == 0);
        }
        EventKind::State { reset, .. } => {
            assert_eq!(kind, KIND_STATE);
            assert!(state_ok(old_state) && state_ok(new_state));
            assert_eq!(reset, flags & FLAG_RESET != 0);
        }
        EventKind::Release { state, .. } => {
            assert_eq!(kind, KIND_RELEASE);
            assert!((1..=4).contains(&reason));
            assert_eq!(state.is_none(), new_state == 0);
        }
        EventKind::Exit => assert_eq!(kind, KIND_EXIT),
        EventKind::Exec => assert_eq!(kind, KIND_EXEC),
    }
    match &event.exec_path {
        None => {}
        Some(path) => {
            assert_eq!(event.kind, EventKind::Exec, "only an exec carries a path");
            let path = path.as_os_str().as_bytes();
            assert!(!path.is_empty() && path.len() <= EXEC_PATH_LEN);
            assert!(!path.contains(&0), "the path stops at the first NUL");
            assert_eq!(&data[LEN..LEN + path.len()], path);
        }
    }
    if event.kind == EventKind::Exec && data.len() >= LEN + EXEC_PATH_LEN && data[LEN] != 0 {
        assert!(event.exec_path.is_some(), "a full exec record with a path keeps it");
    }
});
