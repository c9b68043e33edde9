//! A tracefs `format` file (`events/<category>/<name>/format`), read before the classic
//! tracepoint programs load: `check_format` against the layout the kernel programs assume,
//! and `find_field`.
//!
//! Holds: neither panics; `check_format` accepts exactly when `find_field` finds every
//! expected field at its offset and size; a field found is on a line declaring it.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tcptrace::kernel::tracefs::{INET_SOCK_SET_STATE, check_format, find_field};

fuzz_target!(|data: &[u8]| {
    let format = String::from_utf8_lossy(data);
    let expected_found = INET_SOCK_SET_STATE.iter().all(|&(name, offset, size)| {
        find_field(&format, name) == Some((offset as u32, size as u32))
    });
    assert_eq!(check_format(&format, INET_SOCK_SET_STATE).is_ok(), expected_found);
    for name in ["oldstate", "skaddr", "fd", "saddr", "", "common_type"] {
        if find_field(&format, name).is_some() {
            assert!(format.contains("field:"), "{name} found without a field declaration");
            assert!(format.contains("offset:") && format.contains("size:"));
        }
    }
});
