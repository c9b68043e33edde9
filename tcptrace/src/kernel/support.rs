//! What this kernel offers the close hooks, from files any user can read: the one line
//! `tcptrace --version` adds so a bug report says what the host allows. Whether fentry loads is
//! only known by loading it (the verifier decides), so that part says what it depends on.

use std::{fmt, path::Path};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Support {
    /// `/sys/kernel/btf/vmlinux`: fentry needs it, and so do accept's descriptor walk and
    /// the exit scan.
    pub btf: bool,
    /// The kprobe PMU (`CONFIG_KPROBE_EVENTS`), which aya attaches kprobes through.
    pub kprobes: bool,
    /// The uprobe PMU.
    pub uprobes: bool,
    /// The tracepoints the tracepoint hook needs, in tracefs or under debugfs.
    pub tracepoints: Option<bool>,
}

impl Support {
    /// The running kernel's, read now.
    pub fn here() -> Self {
        let exists = |path: &str| Path::new(path).exists();
        let event = "events/sock/inet_sock_set_state";
        let tracefs = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];
        // Unmounted tracefs (tcptrace mounts it at start) says nothing either way.
        let mounted = tracefs.iter().any(|t| exists(&format!("{t}/events")));
        Self {
            btf: exists("/sys/kernel/btf/vmlinux"),
            kprobes: exists("/sys/bus/event_source/devices/kprobe/type"),
            uprobes: exists("/sys/bus/event_source/devices/uprobe/type"),
            tracepoints: mounted.then(|| tracefs.iter().any(|t| exists(&format!("{t}/{event}")))),
        }
    }
}

impl fmt::Display for Support {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let yes = |b: bool| if b { "yes" } else { "no" };
        let tracepoint = match self.tracepoints {
            Some(found) => yes(found),
            None => "tracefs not mounted (tcptrace mounts it)",
        };
        let fentry = if self.btf { "if the verifier allows (BTF present)" } else { "no (no BTF)" };
        write!(
            f,
            "close hooks here: tracepoint {tracepoint}, kprobe {}, fentry {fentry}; uprobes {}",
            yes(self.kprobes),
            yes(self.uprobes)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn says_each_hook_and_what_fentry_depends_on() {
        let all = Support { btf: true, kprobes: true, uprobes: true, tracepoints: Some(true) };
        assert_eq!(
            all.to_string(),
            "close hooks here: tracepoint yes, kprobe yes, fentry if the verifier allows (BTF \
             present); uprobes yes"
        );
        let bare = Support { btf: false, kprobes: false, uprobes: false, tracepoints: None };
        let line = bare.to_string();
        assert!(line.contains("kprobe no") && line.contains("fentry no (no BTF)"), "{line}");
        assert!(line.contains("tracefs not mounted"), "{line}");
    }
}
