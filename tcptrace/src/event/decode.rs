//! Ring-buffer bytes → checked domain events (`types`): every length checked before a read,
//! every raw number converted with `TryFrom`. Pure: no I/O, unit-tested without root.

use std::{
    ffi::OsStr,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::unix::ffi::OsStrExt as _,
    path::PathBuf,
};

use tcptrace_common::{
    AF_INET, AF_INET6, FLAG_ADDRS, FLAG_INTERP, FLAG_OWNER_LOST, FLAG_RESET, INTERP_FRAMES,
    KIND_ACCEPT, KIND_CONNECT, KIND_EXEC, KIND_EXIT, KIND_RELEASE, KIND_STATE, RawEvent, RawExec,
    RawInterpEvent,
};

use super::{
    error::DecodeError,
    types::{
        Comm, Endpoints, Event, EventKind, InterpStack, InterpWalk, ReleaseReason, Runtime,
        StackIds, TcpState,
    },
};

fn ip(family: u16, raw: &[u8; 16]) -> Result<IpAddr, DecodeError> {
    match family {
        AF_INET => Ok(IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]))),
        AF_INET6 => Ok(IpAddr::V6(Ipv6Addr::from(*raw))),
        other => Err(DecodeError::Family(other)),
    }
}

impl TryFrom<&RawEvent> for Event {
    type Error = DecodeError;

    fn try_from(raw: &RawEvent) -> Result<Self, DecodeError> {
        let RawEvent {
            ts_ns,
            skaddr,
            pid,
            tid,
            owner_pid,
            fd,
            comm,
            kind,
            old_state,
            new_state,
            reason,
            family,
            lport,
            rport,
            flags,
            user_stack,
            saddr,
            daddr,
            kernel_stack,
            _pad0: _,
            cgroup_id,
        } = *raw;
        let endpoints = if flags & FLAG_ADDRS != 0 {
            Some(Endpoints {
                local: SocketAddr::new(ip(family, &saddr)?, lport),
                remote: SocketAddr::new(ip(family, &daddr)?, rport),
            })
        } else {
            None
        };
        let state_if_known =
            |s: u8| if s == 0 { Ok(None) } else { TcpState::try_from(s).map(Some) };
        let kind = match kind {
            KIND_CONNECT => EventKind::Connect,
            KIND_ACCEPT => EventKind::Accept { state: state_if_known(new_state)? },
            KIND_STATE => EventKind::State {
                old: TcpState::try_from(old_state)?,
                new: TcpState::try_from(new_state)?,
                reset: flags & FLAG_RESET != 0,
            },
            KIND_RELEASE => EventKind::Release {
                reason: ReleaseReason::try_from(reason)?,
                state: state_if_known(new_state)?,
            },
            KIND_EXIT => EventKind::Exit,
            KIND_EXEC => EventKind::Exec,
            other => return Err(DecodeError::Kind(other)),
        };
        Ok(Self {
            ts_ns,
            skaddr,
            pid,
            tid,
            comm: Comm::new(comm),
            owner_pid: (owner_pid != 0).then_some(owner_pid),
            fd: (fd >= 0).then_some(fd),
            endpoints,
            owner_lost: flags & FLAG_OWNER_LOST != 0,
            stacks: StackIds::from_raw(user_stack, kernel_stack),
            kind,
            exec_path: None,
            cgroup: (cgroup_id != 0).then_some(cgroup_id),
            interp: None,
        })
    }
}

impl TryFrom<&[u8]> for Event {
    type Error = DecodeError;

    fn try_from(bytes: &[u8]) -> Result<Self, DecodeError> {
        if bytes.len() < size_of::<RawEvent>() {
            return Err(DecodeError::Short(bytes.len()));
        }
        // SAFETY: the length is checked above; read_unaligned copies, so the ring's alignment
        // does not matter, and RawEvent is plain integers (every bit pattern is valid).
        let raw = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<RawEvent>()) };
        let mut event = Self::try_from(&raw)?;
        if event.kind == EventKind::Exec
            && let Some(path) = bytes.get(size_of::<RawEvent>()..size_of::<RawExec>())
        {
            let end = path.iter().position(|&b| b == 0).unwrap_or(path.len());
            if end > 0 {
                event.exec_path = Some(PathBuf::from(OsStr::from_bytes(&path[..end])));
            }
        }
        if raw.flags & FLAG_INTERP != 0
            && matches!(event.kind, EventKind::Connect | EventKind::Accept { .. })
        {
            event.interp = Some(Box::new(interp_stack(bytes)?));
        }
        Ok(event)
    }
}

/// The frames after the event of a `RawInterpEvent`.
fn interp_stack(bytes: &[u8]) -> Result<InterpStack, DecodeError> {
    if bytes.len() < size_of::<RawInterpEvent>() {
        return Err(DecodeError::ShortInterp(bytes.len()));
    }
    // SAFETY: the length is checked above; read_unaligned copies plain integers.
    let raw = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<RawInterpEvent>()) };
    let count = (raw.count as usize).min(INTERP_FRAMES);
    Ok(InterpStack {
        runtime: Runtime::try_from(raw.runtime)?,
        walk: InterpWalk::try_from(raw.status)?,
        frames: raw.frames[..count].to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use tcptrace_common::{EXEC_PATH_LEN, tcp_state};

    use super::*;

    fn raw_state(old: u8, new: u8) -> RawEvent {
        let mut raw = RawEvent::zeroed();
        raw.kind = KIND_STATE;
        raw.old_state = old;
        raw.new_state = new;
        raw.family = AF_INET;
        raw.flags = FLAG_ADDRS;
        raw.saddr[..4].copy_from_slice(&[127, 0, 0, 1]);
        raw.daddr[..4].copy_from_slice(&[10, 1, 2, 3]);
        raw.lport = 40000;
        raw.rport = 6379;
        raw
    }

    fn bytes(raw: &RawEvent) -> Vec<u8> {
        // SAFETY: RawEvent is repr(C) plain data without padding.
        unsafe {
            std::slice::from_raw_parts((raw as *const RawEvent).cast::<u8>(), size_of::<RawEvent>())
        }
        .to_vec()
    }

    #[test]
    fn decodes_a_state_change_from_unaligned_bytes() {
        let mut raw = raw_state(tcp_state::ESTABLISHED, tcp_state::FIN_WAIT1);
        raw.owner_pid = 42;
        raw.fd = 7;
        raw.comm[..4].copy_from_slice(b"curl");
        let mut buf = vec![0u8];
        buf.extend(bytes(&raw));
        let event = Event::try_from(&buf[1..]).expect("decodes");
        assert_eq!(
            event.kind,
            EventKind::State { old: TcpState::Established, new: TcpState::FinWait1, reset: false }
        );
        assert_eq!(event.owner_pid, Some(42));
        assert_eq!(event.fd, Some(7));
        assert_eq!(event.comm.as_str(), "curl");
        let endpoints = event.endpoints.expect("addresses");
        assert_eq!(endpoints.local, "127.0.0.1:40000".parse().unwrap());
        assert_eq!(endpoints.remote, "10.1.2.3:6379".parse().unwrap());
    }

    #[test]
    fn decodes_ipv6_and_the_reset_flag() {
        let mut raw = raw_state(tcp_state::ESTABLISHED, tcp_state::CLOSE);
        raw.family = AF_INET6;
        raw.saddr = Ipv6Addr::LOCALHOST.octets();
        raw.daddr = Ipv6Addr::LOCALHOST.octets();
        raw.flags |= FLAG_RESET;
        let event = Event::try_from(bytes(&raw).as_slice()).expect("decodes");
        assert!(matches!(event.kind, EventKind::State { reset: true, .. }));
        assert_eq!(event.endpoints.unwrap().local, "[::1]:40000".parse().unwrap());
        assert_eq!(event.fd, None, "fd -1 means unknown");
    }

    fn interp_bytes(record: &RawInterpEvent) -> Vec<u8> {
        // SAFETY: RawInterpEvent is repr(C) plain data without padding.
        unsafe {
            std::slice::from_raw_parts(
                (record as *const RawInterpEvent).cast::<u8>(),
                size_of::<RawInterpEvent>(),
            )
        }
        .to_vec()
    }

    #[test]
    fn decodes_the_interpreter_frames_of_a_connect() {
        let mut raw = raw_state(0, 0);
        raw.kind = KIND_CONNECT;
        raw.flags |= FLAG_INTERP;
        let mut record = RawInterpEvent {
            event: raw,
            runtime: tcptrace_common::RUNTIME_PYTHON,
            status: tcptrace_common::INTERP_CUT,
            count: 2,
            _pad0: 0,
            frames: [tcptrace_common::InterpFrame::default(); INTERP_FRAMES],
        };
        record.frames[0] = tcptrace_common::InterpFrame { code: 0x7f00, instr: 0x7f80, pc: 0 };
        record.frames[1] = tcptrace_common::InterpFrame { code: 0x8f00, instr: 0x8f80, pc: 1 };
        record.frames[2] = tcptrace_common::InterpFrame { code: 0xdead, instr: 0xbeef, pc: 2 };
        let event = Event::try_from(interp_bytes(&record).as_slice()).expect("decodes");
        let interp = event.interp.expect("interpreter frames");
        assert_eq!(interp.runtime, Runtime::Python);
        assert_eq!(interp.walk, InterpWalk::Cut);
        assert_eq!(interp.frames, record.frames[..2], "only the frames it counted");

        // A count past the array is cut to it, never read beyond.
        record.count = u32::MAX;
        let event = Event::try_from(interp_bytes(&record).as_slice()).expect("decodes");
        assert_eq!(event.interp.unwrap().frames.len(), INTERP_FRAMES);

        let bytes = interp_bytes(&record);
        assert_eq!(
            Event::try_from(&bytes[..size_of::<RawEvent>() + 8]),
            Err(DecodeError::ShortInterp(size_of::<RawEvent>() + 8))
        );
        record.runtime = tcptrace_common::RUNTIME_HOTSPOT;
        let event = Event::try_from(interp_bytes(&record).as_slice()).expect("decodes");
        assert_eq!(event.interp.unwrap().runtime, Runtime::HotSpot);
        record.runtime = 9;
        assert_eq!(Event::try_from(interp_bytes(&record).as_slice()), Err(DecodeError::Runtime(9)));
        record.runtime = tcptrace_common::RUNTIME_PYTHON;
        record.status = 0;
        assert_eq!(
            Event::try_from(interp_bytes(&record).as_slice()),
            Err(DecodeError::InterpWalk(0))
        );
    }

    #[test]
    fn rejects_short_records_and_unknown_values() {
        assert_eq!(Event::try_from(&[0u8; 10][..]), Err(DecodeError::Short(10)));
        let mut raw = raw_state(tcp_state::ESTABLISHED, 99);
        assert_eq!(Event::try_from(&raw), Err(DecodeError::State(99)));
        raw = raw_state(1, 2);
        raw.kind = 200;
        assert_eq!(Event::try_from(&raw), Err(DecodeError::Kind(200)));
        raw = raw_state(1, 2);
        raw.family = 1;
        assert_eq!(Event::try_from(&raw), Err(DecodeError::Family(1)));
        raw = raw_state(1, 2);
        raw.kind = KIND_RELEASE;
        raw.reason = 77;
        assert_eq!(Event::try_from(&raw), Err(DecodeError::Reason(77)));
    }

    #[test]
    fn an_exec_record_carries_the_path() {
        let mut exec = RawExec { event: RawEvent::zeroed(), filename: [0; EXEC_PATH_LEN] };
        exec.event.kind = KIND_EXEC;
        exec.filename[..9].copy_from_slice(b"./leaky-c");
        // SAFETY: RawExec is repr(C) plain data without padding.
        let bytes = unsafe {
            std::slice::from_raw_parts((&raw const exec).cast::<u8>(), size_of::<RawExec>())
        };
        let event = Event::try_from(bytes).expect("decodes");
        assert_eq!(event.kind, EventKind::Exec);
        assert_eq!(event.exec_path.as_deref(), Some(std::path::Path::new("./leaky-c")));
        // Without the path (a short record): still an exec.
        let event = Event::try_from(&bytes[..size_of::<RawEvent>()]).expect("decodes");
        assert_eq!((event.kind, event.exec_path), (EventKind::Exec, None));
    }

    #[test]
    fn every_kernel_state_number_decodes_to_its_state() {
        // include/net/tcp_states.h, in its order.
        let kernel = [
            "ESTABLISHED",
            "SYN_SENT",
            "SYN_RECV",
            "FIN_WAIT1",
            "FIN_WAIT2",
            "TIME_WAIT",
            "CLOSE",
            "CLOSE_WAIT",
            "LAST_ACK",
            "LISTEN",
            "CLOSING",
            "NEW_SYN_RECV",
        ];
        for (raw, name) in (1..).zip(kernel) {
            assert_eq!(TcpState::try_from(raw).map(TcpState::name), Ok(name), "state {raw}");
        }
        assert_eq!(TcpState::try_from(0), Err(DecodeError::State(0)));
        assert_eq!(TcpState::try_from(13), Err(DecodeError::State(13)));
    }
}
