use std::process::ExitCode;

use clap::Parser as _;
use tcptrace::{
    cli::{Cli, Options, UsageError},
    cmd::{compare, leaks, run, top, trace},
    kernel::privileges,
};

/// Status for bad input (clap uses the same for bad flags).
const EXIT_USAGE: u8 = 2;

fn main() -> ExitCode {
    // Bad flags first: they are the user's to fix whatever the privileges.
    let options = match Cli::parse().validate() {
        Ok(options) => options,
        Err(e) => return fail(&e.into()),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            tcptrace::say!("tcptrace: error: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(options)) {
        // Statuses are 0..=255 by construction (the command's own, or ours).
        Ok(status) => ExitCode::from(u8::try_from(status).unwrap_or(1)),
        Err(e) => fail(&e),
    }
}

fn fail(e: &anyhow::Error) -> ExitCode {
    tcptrace::say!("tcptrace: error: {e:#}");
    if e.downcast_ref::<UsageError>().is_some() {
        ExitCode::from(EXIT_USAGE)
    } else {
        ExitCode::FAILURE
    }
}

/// The command's exit status.
async fn dispatch(options: Options) -> anyhow::Result<i32> {
    if let Options::Compare(args) = &options {
        return compare::run(args);
    }
    if let Some(missing) = privileges::missing() {
        anyhow::bail!(missing);
    }
    match options {
        Options::Trace(options) => trace::run(options).await.map(|()| 0),
        Options::Leaks(options) => leaks::run(options).await.map(|()| 0),
        Options::Top(options) => top::run(options).await.map(|()| 0),
        Options::Run(options) => run::run(options).await,
        Options::Compare(_) => unreachable!("handled above"),
    }
}
