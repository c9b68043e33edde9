#!/usr/bin/env python3
"""Writes ring-buffer records as the kernel programs emit them (tcptrace-common's RawEvent,
104 bytes, and RawExec, RawEvent + a 256-byte path) into fuzz/corpus/ring_record/. The layout is
RawEvent's field by field (repr(C), no implicit padding, little-endian as on x86-64); the
ring_record target checks every decoded field against these same offsets."""
import os, socket, struct, sys

out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "../corpus/ring_record")
KIND_STATE, KIND_CONNECT, KIND_ACCEPT, KIND_RELEASE, KIND_EXIT, KIND_EXEC = 1, 2, 3, 4, 5, 6
FLAG_RESET, FLAG_ADDRS, FLAG_OWNER_LOST = 1, 2, 4
AF_INET, AF_INET6 = 2, 10
STACK_NONE = -1

def raw_event(kind, old=0, new=0, reason=0, family=AF_INET, lport=0, rport=0, flags=0,
              saddr=b"", daddr=b"", pid=4242, tid=4243, owner=4242, fd=7, comm=b"curl",
              user_stack=STACK_NONE, kernel_stack=STACK_NONE, ts=123_456_789_000, sk=0xffff8881_0a2b_3c00):
    b = struct.pack("<QQIIIi16sBBBBHHHHi16s16siI", ts, sk, pid, tid, owner, fd, comm, kind, old,
                    new, reason, family, lport, rport, flags, user_stack, saddr.ljust(16, b"\0"),
                    daddr.ljust(16, b"\0"), kernel_stack, 0)
    assert len(b) == 104
    return b

v4 = lambda a: socket.inet_pton(socket.AF_INET, a)
v6 = lambda a: socket.inet_pton(socket.AF_INET6, a)
addrs4 = dict(family=AF_INET, flags=FLAG_ADDRS, saddr=v4("127.0.0.1"), daddr=v4("10.1.2.3"), lport=40000, rport=6379)
addrs6 = dict(family=AF_INET6, flags=FLAG_ADDRS, saddr=v6("::1"), daddr=v6("fe80::1"), lport=443, rport=51000)
seeds = {
    "connect-v4": raw_event(KIND_CONNECT, 7, 2, user_stack=3, kernel_stack=4, **addrs4),
    "accept-v6": raw_event(KIND_ACCEPT, 0, 1, comm=b"nginx", **addrs6),
    "state-established-close-wait": raw_event(KIND_STATE, 1, 8, owner=0, fd=-1, comm=b"swapper/0", **addrs4),
    "state-reset": raw_event(KIND_STATE, 1, 7, **{**addrs6, "flags": FLAG_ADDRS | FLAG_RESET}),
    "state-owner-lost": raw_event(KIND_STATE, 7, 2, owner=0, fd=-1, **{**addrs4, "flags": FLAG_ADDRS | FLAG_OWNER_LOST}),
    "release-close": raw_event(KIND_RELEASE, 0, 8, reason=1),
    "release-exit-unknown-state": raw_event(KIND_RELEASE, 0, 0, reason=4, comm=b"leaky-c"),
    "exit": raw_event(KIND_EXIT, fd=-1, owner=0),
    "exec-short": raw_event(KIND_EXEC, fd=-1, owner=0),
    "exec-path": raw_event(KIND_EXEC, fd=-1, owner=0, comm=b"bash") + b"./leaky-c".ljust(256, b"\0"),
    "exec-path-full": raw_event(KIND_EXEC, fd=-1, owner=0) + b"/usr/bin/" + b"x" * 247,
}
for name, record in seeds.items():
    with open(os.path.join(out, name), "wb") as f:
        f.write(record)
