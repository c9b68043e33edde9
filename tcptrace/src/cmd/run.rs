//! `tcptrace run -- CMD`: trace a command and all its descendants, from the command's first
//! instruction (it adds itself to the kernel's followed processes between fork and exec) until
//! the last of them exits; then report, judge the budgets and exit with the documented status.

use std::{
    ffi::OsString,
    fs::File,
    io::{self, BufWriter, Write as _},
    os::unix::process::ExitStatusExt as _,
    path::Path,
    process::ExitStatus,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::oneshot,
    task::JoinHandle,
};

use crate::{
    analysis::budgets::{self, Measured},
    cli::{RunArgs, UsageError},
    cmd::{EXIT_BUDGET, leaks::final_report},
    kernel::probes::Changes,
    pipeline::Collector,
    render::run_report::{CommandStatus, RemoteReport, RunReport},
    stacks::StacksMode,
};

/// Exit status when the command cannot be found, or run (the shell's conventions).
const EXIT_NOT_FOUND: i32 = 127;
const EXIT_NOT_EXECUTABLE: i32 = 126;

/// How often the run checks whether its processes are gone.
const CHECK_EVERY: Duration = Duration::from_millis(100);

impl RunArgs {
    /// What clap cannot check: `run` chooses its processes itself.
    pub fn check(&self) -> Result<(), UsageError> {
        if !self.probe.filter.pids.is_empty() || self.probe.filter.comm.is_some() {
            return Err(UsageError::RunFollowsItsCommand);
        }
        Ok(())
    }
}

pub async fn run(args: RunArgs) -> anyhow::Result<i32> {
    args.check()?;
    let mut options = args.probe.to_options(StacksMode::User, Changes::Lifecycle)?;
    options.filter.follow = 1;
    let mut warnings = Vec::new();
    let limits = args.detect.limits(Duration::ZERO, &mut warnings);
    let mut collector = Collector::start(&options, args.detect.capacity(), false).await?;
    collector.agg_mut().exit_releases.enabled = true;
    let command_line = shell_words(&args.command);
    eprintln!(
        "tcptrace: tracing `{command_line}` and its descendants (close hook: {})",
        collector.close_hook()
    );
    for note in collector.notes() {
        eprintln!("tcptrace: note: {note}");
    }

    let mut command = tokio::process::Command::new(&args.command[0]);
    command.args(&args.command[1..]);
    let follow_self = collector.follow_self_hook()?;
    // SAFETY: the hook makes one system call and touches no shared state.
    unsafe { command.pre_exec(follow_self) };
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => {
            eprintln!("tcptrace: error: cannot run `{command_line}`: {e}");
            return Ok(match e.kind() {
                io::ErrorKind::PermissionDenied => EXIT_NOT_EXECUTABLE,
                _ => EXIT_NOT_FOUND,
            });
        }
    };
    let pid = child.id().context("the command has no pid")?;
    let forwarding = forward_signals(pid)?;
    let (exited_tx, mut exited_rx) = oneshot::channel();
    tokio::spawn(async move {
        let _ = exited_tx.send(child.wait().await);
    });

    let mut status: Option<ExitStatus> = None;
    let mut exited_at = Instant::now();
    let mut gone_once = false;
    let wait_descendants = args.wait_descendants;
    let traced = collector
        .run(std::future::pending(), args.detect.sweep, CHECK_EVERY, |c| {
            if status.is_none() {
                match exited_rx.try_recv() {
                    Ok(waited) => {
                        status = Some(waited.context("waiting for the command")?);
                        exited_at = Instant::now();
                    }
                    Err(oneshot::error::TryRecvError::Empty) => return Ok(true),
                    Err(oneshot::error::TryRecvError::Closed) => {
                        anyhow::bail!("lost track of the command")
                    }
                }
            }
            // The kernel forgets a process in its exit hook, just before exit_files() releases
            // its sockets: one more check lets those releases arrive.
            if !c.followed_alive()? {
                let done = gone_once;
                gone_once = true;
                return Ok(!done);
            }
            gone_once = false;
            Ok(exited_at.elapsed() < wait_descendants)
        })
        .await;
    if let Err(e) = &traced {
        warnings.push(format!("tracing stopped early ({e:#}): the report covers what was seen"));
    }
    let status = match status {
        Some(status) => status,
        // Tracing failed before the command ended: its outcome still decides the job.
        None => exited_rx
            .await
            .context("lost track of the command")?
            .context("waiting for the command")?,
    };
    forwarding.abort();
    let still_running = collector.followed_alive().unwrap_or(false);
    if still_running {
        warnings.push(format!(
            "descendants still running {} after the command exited: their connections are reported as they are",
            humantime::format_duration(wait_descendants)
        ));
    }

    let report = final_report(&mut collector, limits, warnings).await;
    let measured =
        Measured { findings: &report.findings, groups: &report.groups, agg: collector.agg() };
    let verdicts = budgets::check(&args.budgets, &measured);

    let command_status = CommandStatus { exit_code: status.code(), signal: status.signal() };
    let exceeded = verdicts.iter().any(|v| !v.passed);
    let exit = match command_status.code() {
        0 if exceeded => EXIT_BUDGET,
        code => code,
    };

    // The summary first: whatever happens to the files, the run's verdict is on stderr.
    let mut summary = io::stderr().lock();
    report.write_text(&mut summary).context("writing the summary")?;
    writeln!(summary)?;
    for line in budgets::describe(&verdicts) {
        writeln!(summary, "tcptrace: {line}")?;
    }
    writeln!(
        summary,
        "tcptrace: `{command_line}` {}; tcptrace exits with {exit}",
        match (command_status.exit_code, command_status.signal) {
            (Some(code), _) => format!("exited with {code}"),
            (None, Some(signal)) => format!("was killed by signal {signal}"),
            (None, None) => "ended".to_owned(),
        }
    )?;
    drop(summary);

    let run_report = RunReport {
        command: args.command.iter().map(|a| a.to_string_lossy().into_owned()).collect(),
        command_status,
        status: exit,
        budgets: &verdicts,
        remotes: RemoteReport::list(&collector.agg().remotes),
        report: &report,
    };
    if let Some(path) = &args.report {
        write_file(path, |out| run_report.write_json(out))?;
    }
    if let Some(path) = &args.junit {
        write_file(path, |out| run_report.write_junit(out))?;
    }
    Ok(exit)
}

fn write_file(
    path: &Path,
    write: impl FnOnce(&mut BufWriter<File>) -> io::Result<()>,
) -> anyhow::Result<()> {
    let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut out = BufWriter::new(file);
    write(&mut out)
        .and_then(|()| out.flush())
        .with_context(|| format!("writing {}", path.display()))
}

/// Ctrl-C and SIGTERM go to the command (it decides how to end), not to tcptrace, which ends
/// with the command.
fn forward_signals(pid: u32) -> anyhow::Result<JoinHandle<()>> {
    let mut interrupt = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let mut terminate = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let pid = libc::pid_t::try_from(pid).context("pid out of range")?;
    Ok(tokio::spawn(async move {
        loop {
            let signal = tokio::select! {
                _ = interrupt.recv() => libc::SIGINT,
                _ = terminate.recv() => libc::SIGTERM,
            };
            // SAFETY: kill has no memory preconditions; a command already gone is ESRCH.
            unsafe { libc::kill(pid, signal) };
        }
    }))
}

/// The command as a shell would show it (for messages only).
fn shell_words(words: &[OsString]) -> String {
    let quote = |word: &OsString| {
        let word = word.to_string_lossy();
        if !word.is_empty()
            && word.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c))
        {
            word.into_owned()
        } else {
            format!("'{}'", word.replace('\'', r"'\''"))
        }
    };
    words.iter().map(quote).collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_shown_quoted_as_a_shell_would_take_them() {
        let words: Vec<OsString> =
            ["sh", "-c", "echo 'hi' && exit 3", "--x=1"].iter().map(OsString::from).collect();
        assert_eq!(shell_words(&words), r#"sh -c 'echo '\''hi'\'' && exit 3' --x=1"#);
    }
}
