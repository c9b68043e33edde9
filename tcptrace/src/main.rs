use std::process::ExitCode;

use clap::{CommandFactory as _, FromArgMatches as _};
use tcptrace::{
    cli::{Cli, Options, UsageError},
    cmd::{compare, doctor, generate, leaks, run, serve, top, trace},
    kernel::{privileges, support::Support},
    serve::{http::BindError, web_config::WebConfigError},
};

/// musl's allocator is slow under many small allocations (see Cargo.toml).
#[cfg(target_env = "musl")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Status for bad input (clap uses the same for bad flags).
const EXIT_USAGE: u8 = 2;

fn main() -> ExitCode {
    // Bad flags first: they are the user's to fix whatever the privileges. `--version` adds
    // what this kernel offers, read now.
    let matches = Cli::command().long_version(long_version()).get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let options = match cli.validate() {
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

/// `tcptrace --version`: the version, the commit and aya it was built from, and the close
/// hooks this kernel allows: the line to paste into a bug report.
fn long_version() -> String {
    format!(
        "{} (commit {}, aya {})\n{}",
        env!("CARGO_PKG_VERSION"),
        env!("TCPTRACE_GIT_COMMIT"),
        env!("TCPTRACE_AYA_VERSION"),
        Support::here()
    )
}

fn fail(e: &anyhow::Error) -> ExitCode {
    tcptrace::say!("tcptrace: error: {e:#}");
    let usage = e.downcast_ref::<UsageError>().is_some()
        || e.downcast_ref::<BindError>().is_some()
        || e.downcast_ref::<WebConfigError>().is_some();
    if usage { ExitCode::from(EXIT_USAGE) } else { ExitCode::FAILURE }
}

/// The command's exit status.
async fn dispatch(options: Options) -> anyhow::Result<i32> {
    match &options {
        Options::Compare(args) => return compare::run(args),
        Options::Completions(shell) => return generate::completions(*shell),
        Options::Man(dir) => return generate::man_pages(dir),
        Options::Doctor => return doctor::run(),
        _ => {}
    }
    if let Some(missing) = privileges::missing() {
        anyhow::bail!(missing);
    }
    match options {
        Options::Trace(options) => trace::run(options).await.map(|()| 0),
        Options::Leaks(options) => leaks::run(options).await.map(|()| 0),
        Options::Top(options) => top::run(options).await.map(|()| 0),
        Options::Run(options) => run::run(options).await,
        Options::Serve(options) => serve::run(options).await.map(|()| 0),
        Options::Compare(_) | Options::Completions(_) | Options::Man(_) | Options::Doctor => {
            unreachable!("handled above")
        }
    }
}
