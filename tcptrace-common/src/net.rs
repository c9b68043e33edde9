//! Socket constants as Linux numbers them (include/linux/socket.h, include/uapi/linux/in.h),
//! defined once for the kernel programs and user space. `libc` has them too, but the kernel
//! crate has no libc, and `RawEvent::family`/`Filter::family` carry these exact values.

/// `RawEvent::family`, `Filter::family`: IPv4.
pub const AF_INET: u16 = 2;
/// `RawEvent::family`, `Filter::family`: IPv6 (dual-stack sockets included).
pub const AF_INET6: u16 = 10;
/// `sock.sk_protocol` and the `inet_sock_set_state` tracepoint's `protocol` of a TCP socket.
pub const IPPROTO_TCP: u16 = 6;
