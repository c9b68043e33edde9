//! `tcptrace run -- CMD`: trace a command and all its descendants, from the command's first
//! instruction (it adds itself to the kernel's followed processes between fork and exec) until
//! the last of them exits; then report, judge the budgets and exit with the documented status.

use std::{
    ffi::OsString,
    io::{self, Write as _},
    os::unix::process::ExitStatusExt as _,
    path::PathBuf,
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
    analysis::{
        aggregate::Aggregator,
        budgets::{self, Measured, Verdict},
    },
    cli::{RunOptions, UsageError},
    cmd::{
        EXIT_BUDGET,
        leaks::{final_report, limits},
        output::OutputFile,
    },
    pipeline::Pipeline,
    render::{
        report::Report,
        run_report::{CommandStatus, RemoteReport, RunReport},
    },
};

/// Exit status when the command cannot be found, or run (the shell's conventions).
const EXIT_NOT_FOUND: i32 = 127;
const EXIT_NOT_EXECUTABLE: i32 = 126;

/// How often the run checks whether its processes are gone.
const CHECK_EVERY: Duration = Duration::from_millis(100);

type Waited = io::Result<ExitStatus>;

pub async fn run(options: RunOptions) -> anyhow::Result<i32> {
    // Before anything runs: a report that cannot be written is known now, not after the job.
    let prepare = |path: &Option<PathBuf>| {
        path.as_deref()
            .map(OutputFile::prepare)
            .transpose()
            .map_err(|e| UsageError::Output(format!("{e:#}")))
    };
    let (report_file, junit_file) = (prepare(&options.report)?, prepare(&options.junit)?);
    let mut warnings = Vec::new();
    let limits = limits(&options.detect, &mut warnings);
    let capacity = options.detect.capacity;
    let mut pipeline =
        Pipeline::start(&options.probe, capacity, None, |_| Aggregator::new(capacity)).await?;
    pipeline.sink_mut().exit_releases.enabled = true;
    let command_line = shell_words(&options.command);
    pipeline.announce(&format!("`{command_line}` and its descendants"), None);

    let follow_self = pipeline.follow_self_hook()?;
    let (pid, exited) = match spawn(follow_self, &options.command) {
        Ok(spawned) => spawned,
        Err(e) => {
            crate::say!("tcptrace: error: cannot run `{command_line}`: {e}");
            return Ok(match e.kind() {
                io::ErrorKind::PermissionDenied => EXIT_NOT_EXECUTABLE,
                _ => EXIT_NOT_FOUND,
            });
        }
    };
    let forwarding = forward_signals(pid)?;
    let status = follow(&mut pipeline, exited, options.wait_descendants, &mut warnings).await?;
    forwarding.abort();

    let report = final_report(&mut pipeline, limits, warnings).await;
    let measured =
        Measured { findings: &report.findings, groups: &report.groups, agg: pipeline.sink() };
    let verdicts = budgets::check(&options.budgets, &measured);
    let command_status = CommandStatus { exit_code: status.code(), signal: status.signal() };
    let exceeded = verdicts.iter().any(|v| !v.passed);
    let exit = match command_status.code() {
        0 if exceeded => EXIT_BUDGET,
        code => code,
    };
    // A closed stderr loses the summary only: the verdict is in the status and the files.
    let _ = summarize(&report, &verdicts, &command_line, command_status, exit);
    let run_report = RunReport {
        command: options.command.iter().map(|a| a.to_string_lossy().into_owned()).collect(),
        command_status,
        status: exit,
        budgets: &verdicts,
        remotes: RemoteReport::list(&pipeline.sink().remotes),
        report: &report,
    };
    // A file that cannot be written now is said, and the status stays the documented one.
    if let Some(file) = &report_file
        && let Err(e) = file.write(|out| run_report.write_json(out))
    {
        crate::say!("tcptrace: error: {e:#}");
    }
    if let Some(file) = &junit_file
        && let Err(e) = file.write(|out| run_report.write_junit(out))
    {
        crate::say!("tcptrace: error: {e:#}");
    }
    Ok(exit)
}

/// Starts the command, followed from its first instruction; its pid, and its exit status once
/// it is reaped.
fn spawn(
    follow_self: impl Fn() -> io::Result<()> + Send + Sync + 'static,
    command: &[OsString],
) -> io::Result<(u32, oneshot::Receiver<Waited>)> {
    let mut cmd = tokio::process::Command::new(&command[0]);
    cmd.args(&command[1..]);
    // SAFETY: the hook makes one system call and touches no shared state.
    unsafe { cmd.pre_exec(follow_self) };
    let mut child = cmd.spawn()?;
    let pid = child.id().ok_or_else(|| io::Error::other("the command has no pid"))?;
    let (exited_tx, exited_rx) = oneshot::channel();
    tokio::spawn(async move {
        let _ = exited_tx.send(child.wait().await);
    });
    Ok((pid, exited_rx))
}

/// Traces until the command and its descendants are gone (or `wait_descendants` after the
/// command exited); the command's status. A tracing failure becomes a warning: the command's
/// outcome still decides the job.
async fn follow(
    pipeline: &mut Pipeline<Aggregator>,
    mut exited: oneshot::Receiver<Waited>,
    wait_descendants: Duration,
    warnings: &mut Vec<String>,
) -> anyhow::Result<ExitStatus> {
    let mut status: Option<ExitStatus> = None;
    let mut exited_at = Instant::now();
    let mut gone_once = false;
    let traced = pipeline
        .run(std::future::pending(), Some(CHECK_EVERY), |p| {
            if status.is_none() {
                match exited.try_recv() {
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
            if !p.followed_alive()? {
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
        None => {
            exited.await.context("lost track of the command")?.context("waiting for the command")?
        }
    };
    if pipeline.followed_alive().unwrap_or(false) {
        warnings.push(format!(
            "descendants still running {} after the command exited: their connections are reported as they are",
            humantime::format_duration(wait_descendants)
        ));
    }
    Ok(status)
}

/// The run's verdict on stderr, first: whatever happens to the files, it is there.
fn summarize(
    report: &Report,
    verdicts: &[Verdict],
    command_line: &str,
    status: CommandStatus,
    exit: i32,
) -> io::Result<()> {
    let mut summary = io::stderr().lock();
    report.write_text(&mut summary)?;
    writeln!(summary)?;
    for line in budgets::describe(verdicts) {
        writeln!(summary, "tcptrace: {line}")?;
    }
    let ended = match (status.exit_code, status.signal) {
        (Some(code), _) => format!("exited with {code}"),
        (None, Some(signal)) => format!("was killed by signal {signal}"),
        (None, None) => "ended".to_owned(),
    };
    writeln!(summary, "tcptrace: `{command_line}` {ended}; tcptrace exits with {exit}")
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
