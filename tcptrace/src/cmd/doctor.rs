//! `tcptrace doctor`: what this host gives tcptrace, what each missing piece costs, and whether
//! tracing works here, found the only sure way: by loading and attaching the programs, as
//! `trace` would, then letting them go. Exit 0 when tracing will work.

use crate::{
    container::Hierarchy,
    kernel::{
        close_hook::CloseHookChoice,
        options::{Changes, ProbeOptions, StacksMode},
        privileges,
        probes::Probes,
        support::Support,
    },
};

pub fn run() -> anyhow::Result<i32> {
    let support = Support::here();
    let check = |ok: bool, what: &str, without: &str| {
        let (mark, cost) =
            if ok { ("yes", String::new()) } else { ("no ", format!(": {without}")) };
        println!("{mark} {what}{cost}");
    };
    check(
        support.btf,
        "kernel BTF (/sys/kernel/btf/vmlinux)",
        "no fentry close hook; accepted sockets are not tied to their descriptors; releases need --close-hook kprobe",
    );
    check(
        support.kprobes,
        "kprobes",
        "no kprobe close hook (fentry or the tracepoint hook instead)",
    );
    check(support.uprobes, "uprobes", "nothing tcptrace uses yet");
    check(
        Hierarchy::find().is_some(),
        "cgroup v2 hierarchy",
        "containers are found from /proc/<pid>/cgroup only; no --container or --cgroup filter",
    );
    let privileges = privileges::missing();
    check(
        privileges.is_none(),
        "privileges to load BPF programs",
        privileges.as_deref().unwrap_or(""),
    );
    if privileges.is_some() {
        println!("tracing: cannot be tried without the privileges");
        return Ok(1);
    }
    match Probes::load(&trial_options()) {
        Ok(probes) => {
            println!(
                "yes tracing works here: programs loaded and attached, close hook {}",
                probes.close_hook()
            );
            for note in probes.notes() {
                println!("    note: {note}");
            }
            Ok(0)
        }
        Err(e) => {
            println!("no  tracing: {e:#}");
            Ok(1)
        }
    }
}

/// What `trace` loads by default, with user stacks so their maps are tried too.
fn trial_options() -> ProbeOptions {
    ProbeOptions {
        filter: tcptrace_common::Filter::none(),
        close_hook: CloseHookChoice::Auto,
        ring_bytes: 1 << 20,
        stacks: StacksMode::User,
        changes: Changes::All,
        cgroup_ids: true,
        unrolled_loops: false,
        #[cfg(feature = "bench")]
        bench: crate::kernel::options::Bench::Off,
    }
}
