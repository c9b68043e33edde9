//! When a command stops: a duration, Ctrl-C or SIGTERM.

use std::{future::Future, time::Duration};

use anyhow::Context as _;
use tokio::signal::unix::{SignalKind, signal};

/// Completes at the first of: `duration` elapsed, SIGINT, SIGTERM. Handlers are installed now,
/// so a signal that arrives before the future is polled is not lost.
pub fn stop_signal(duration: Option<Duration>) -> anyhow::Result<impl Future<Output = ()>> {
    let mut interrupt = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let mut terminate = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    Ok(async move {
        let deadline = async {
            match duration {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = deadline => {}
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
    })
}
