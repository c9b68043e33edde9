//! tracefs: classic tracepoints are attached by id from `events/<category>/<name>/id`, and the
//! kernel programs read `sock:inet_sock_set_state` at fixed offsets checked here first.

use std::{fs, path::Path};

use anyhow::{Context as _, bail};

pub const TRACEFS: &str = "/sys/kernel/tracing";

/// Mounts tracefs at /sys/kernel/tracing when it is not there (hardened kernels do not mount
/// it at boot). aya also looks in /sys/kernel/debug/tracing.
pub fn ensure_mounted() -> anyhow::Result<()> {
    let events = Path::new(TRACEFS).join("events");
    if events.is_dir() || Path::new("/sys/kernel/debug/tracing/events").is_dir() {
        return Ok(());
    }
    // Mounted, but closed to this process: tracefs is root's, mode 0700, so a non-root user
    // with CAP_BPF and CAP_PERFMON alone cannot read the tracepoint ids. Mounting would fail
    // too, with a reason that hides this one.
    if let Err(e) = fs::metadata(&events)
        && e.kind() == std::io::ErrorKind::PermissionDenied
    {
        bail!(
            "{TRACEFS} is not readable by this process ({e}): as a user other than root, tcptrace \
             needs CAP_DAC_READ_SEARCH besides CAP_BPF and CAP_PERFMON to read tracepoint ids"
        );
    }
    let source = c"nodev";
    let target = c"/sys/kernel/tracing";
    let fstype = c"tracefs";
    // SAFETY: valid NUL-terminated strings; no data argument.
    let rc = unsafe {
        libc::mount(source.as_ptr(), target.as_ptr(), fstype.as_ptr(), 0, std::ptr::null())
    };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        bail!(
            "tracefs is not mounted and mounting it failed ({err}); run: mount -t tracefs nodev {TRACEFS}"
        );
    }
    Ok(())
}

/// `(field name, offset, size)` as the kernel programs read them (tcptrace-ebpf/src/state.rs).
pub const INET_SOCK_SET_STATE: &[(&str, usize, usize)] = &[
    ("skaddr", 8, 8),
    ("oldstate", 16, 4),
    ("newstate", 20, 4),
    ("sport", 24, 2),
    ("dport", 26, 2),
    ("family", 28, 2),
    ("protocol", 30, 2),
    ("saddr", 32, 4),
    ("daddr", 36, 4),
    ("saddr_v6", 40, 16),
    ("daddr_v6", 56, 16),
];

fn events_dir() -> &'static str {
    if Path::new(TRACEFS).join("events").is_dir() {
        "/sys/kernel/tracing/events"
    } else {
        "/sys/kernel/debug/tracing/events"
    }
}

/// Checks that `sock:inet_sock_set_state` has the layout the kernel programs assume.
pub fn check_inet_sock_set_state() -> anyhow::Result<()> {
    let path = format!("{}/sock/inet_sock_set_state/format", events_dir());
    let format = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    check_format(&format, INET_SOCK_SET_STATE)
        .with_context(|| format!("sock:inet_sock_set_state has an unexpected layout ({path})"))
}

/// The offset of the 4-byte field `field` in the records of tracepoint `category:name`.
pub fn field_offset(category: &str, name: &str, field: &str) -> anyhow::Result<u32> {
    let path = format!("{}/{category}/{name}/format", events_dir());
    let format = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    find_field(&format, field)
        .and_then(|(offset, size)| (size == 4).then_some(offset))
        .with_context(|| format!("{category}:{name} has no 4-byte field {field} ({path})"))
}

/// Whether tracepoint `category:name` exists on this kernel.
pub fn has_tracepoint(category: &str, name: &str) -> bool {
    Path::new(events_dir()).join(category).join(name).is_dir()
}

pub fn check_format(format: &str, expected: &[(&str, usize, usize)]) -> anyhow::Result<()> {
    for &(name, offset, size) in expected {
        let line = field_line(format, name).with_context(|| format!("no field {name}"))?;
        if find_field(format, name) != Some((offset as u32, size as u32)) {
            bail!("field {name}: expected offset {offset} size {size}, found `{}`", line.trim());
        }
    }
    Ok(())
}

fn field_line<'a>(format: &'a str, name: &str) -> Option<&'a str> {
    format.lines().find(|l| l.split(';').next().is_some_and(|decl| field_name(decl) == Some(name)))
}

/// The (offset, size) of field `name`.
pub fn find_field(format: &str, name: &str) -> Option<(u32, u32)> {
    let line = field_line(format, name)?;
    let value = |key: &str| {
        line.split(';').find_map(|part| part.trim().strip_prefix(key)?.parse::<u32>().ok())
    };
    Some((value("offset:")?, value("size:")?))
}

/// `field:__u8 saddr[4]` → `saddr`.
fn field_name(decl: &str) -> Option<&str> {
    let decl = decl.trim().strip_prefix("field:")?;
    let last = decl.split_whitespace().last()?;
    Some(last.split('[').next().unwrap_or(last).trim_start_matches('*'))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FORMAT: &str = "name: inet_sock_set_state\nformat:\n\
        \tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
        \tfield:const void * skaddr;\toffset:8;\tsize:8;\tsigned:0;\n\
        \tfield:int oldstate;\toffset:16;\tsize:4;\tsigned:1;\n\
        \tfield:__u8 saddr[4];\toffset:32;\tsize:4;\tsigned:0;\n";

    #[test]
    fn accepts_matching_fields_including_arrays_and_pointers() {
        check_format(FORMAT, &[("skaddr", 8, 8), ("oldstate", 16, 4), ("saddr", 32, 4)])
            .expect("matches");
    }

    #[test]
    fn rejects_moved_or_missing_fields() {
        let err = check_format(FORMAT, &[("oldstate", 20, 4)]).unwrap_err();
        assert!(err.to_string().contains("oldstate"), "{err}");
        assert!(check_format(FORMAT, &[("newstate", 20, 4)]).is_err());
    }

    #[test]
    fn finds_a_field_by_name() {
        assert_eq!(find_field(FORMAT, "oldstate"), Some((16, 4)));
        assert_eq!(find_field(FORMAT, "newstate"), None);
    }

    #[test]
    #[ignore = "needs root: mounts tracefs"]
    fn this_kernels_tracepoint_has_the_layout_the_programs_read() {
        ensure_mounted().expect("tracefs mounted");
        assert!(
            Path::new(events_dir()).join("sock/inet_sock_set_state").is_dir(),
            "no sock:inet_sock_set_state in {}",
            events_dir()
        );
        check_inet_sock_set_state().expect("layout");
    }
}
