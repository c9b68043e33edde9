use std::process::ExitCode;

use clap::Parser as _;
use tcptrace::{
    cli::{Cli, Command, UsageError},
    leaks, privileges,
    stacks::StacksMode,
    top, trace,
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
        Ok(()) => ExitCode::SUCCESS,
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

async fn run(cli: Cli) -> anyhow::Result<()> {
    // Bad flags first: they are the user's to fix whatever the privileges.
    let probe = match &cli.command {
        Command::Trace(args) => &args.probe,
        Command::Leaks(args) => &args.probe,
        Command::Top(args) => &args.probe,
    };
    probe.to_options(StacksMode::Off)?;
    if let Some(missing) = privileges::missing() {
        anyhow::bail!(missing);
    }
    match cli.command {
        Command::Trace(args) => trace::run(args).await,
        Command::Leaks(args) => leaks::run(args).await,
        Command::Top(args) => top::run(args).await,
    }
}
