#!/usr/bin/env python3
"""Captures real NETLINK_SOCK_DIAG dump replies, as the inventory requests them (every state but
TIME_WAIT, INET_DIAG_INFO, sequence 1), into fuzz/corpus/sock_diag/: a few messages per file,
the last file ending with the kernel's NLMSG_DONE. Run as any user on a host with TCP sockets
open (loopback ones are opened here so there is something to see)."""
import os, socket, struct, sys

out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "../corpus/sock_diag")
NETLINK_SOCK_DIAG, SOCK_DIAG_BY_FAMILY, NLMSG_DONE = 4, 20, 3
srv6 = socket.socket(socket.AF_INET6); srv6.bind(("::1", 0)); srv6.listen(4)
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(4)
held = [socket.create_connection(("127.0.0.1", srv.getsockname()[1])), srv.accept()[0],
        socket.create_connection(("::1", srv6.getsockname()[1])), srv6.accept()[0]]
held[1].close()  # the peer closed: CLOSE_WAIT

def loopback(message):
    """Only this test's own sockets go into the corpus: source address on loopback."""
    src = message[24:40]
    return src[0] == 127 or src == bytes(15) + b"\x01" or src[:12] == bytes(10) + b"\xff\xff" and src[12] == 127

def dump(family):
    nl = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_SOCK_DIAG)
    req = struct.pack("=BBBxI", family, 6, 1 << 1, 0xFFFFFFFF & ~(1 << 6)) + bytes(48)
    nl.send(struct.pack("=IHHII", 16 + len(req), SOCK_DIAG_BY_FAMILY, 0x301, 1, 0) + req)
    messages = []
    while True:
        data = nl.recv(65536)
        while data:
            length, kind = struct.unpack_from("=IH", data)
            if kind == NLMSG_DONE or loopback(data[:length]):
                messages.append(data[:length])
            data = data[(length + 3) & ~3:]
            if kind == NLMSG_DONE:
                return messages

for family, name in [(socket.AF_INET, "v4"), (socket.AF_INET6, "v6")]:
    messages = dump(family)
    done = messages.pop()
    for i in range(0, min(len(messages), 8), 4):
        chunk = messages[i:i + 4]
        with open(os.path.join(out, f"reply-{name}-{i // 4}"), "wb") as f:
            f.write(b"".join(m + bytes(-len(m) % 4) for m in chunk))
    with open(os.path.join(out, f"reply-{name}-last"), "wb") as f:
        f.write(b"".join(m + bytes(-len(m) % 4) for m in messages[-1:] + [done]))
