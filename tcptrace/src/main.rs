use std::process::ExitCode;

use clap::Parser as _;
use tcptrace::{
    cli::{Cli, Command, UsageError},
    cmd::{compare, leaks, top, trace},
    kernel::{privileges, probes::Changes},
    stacks::StacksMode,
};

/// Status for bad input (clap uses the same for bad flags).
const EXIT_USAGE: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("tcptrace: error: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        // Statuses are 0..=255 by construction (the command's own, or ours).
        Ok(status) => ExitCode::from(u8::try_from(status).unwrap_or(1)),
        Err(e) if e.downcast_ref::<UsageError>().is_some() => {
            eprintln!("tcptrace: error: {e:#}");
            ExitCode::from(EXIT_USAGE)
        }
        Err(e) => {
            eprintln!("tcptrace: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The command's exit status.
async fn run(cli: Cli) -> anyhow::Result<i32> {
    // Bad flags first: they are the user's to fix whatever the privileges.
    let probe = match &cli.command {
        Command::Trace(args) => &args.probe,
        Command::Leaks(args) => &args.probe,
        Command::Top(args) => &args.probe,
        Command::Run(args) => {
            args.check()?;
            &args.probe
        }
        // Reads two files: no kernel, no privileges.
        Command::Compare(args) => return compare::run(args),
    };
    probe.to_options(StacksMode::Off, Changes::All)?;
    if let Some(missing) = privileges::missing() {
        anyhow::bail!(missing);
    }
    match cli.command {
        Command::Trace(args) => trace::run(args).await.map(|()| 0),
        Command::Leaks(args) => leaks::run(args).await.map(|()| 0),
        Command::Top(args) => top::run(args).await.map(|()| 0),
        Command::Run(args) => tcptrace::cmd::run::run(args).await,
        Command::Compare(_) => unreachable!("handled above"),
    }
}
