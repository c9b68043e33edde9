//! `tcptrace compare BASE.json NEW.json`: loads two reports, prints what changed (see
//! `analysis::compare`), and exits with status 3 when a metric regressed past the threshold.

use std::{
    fs::File,
    io::{self, BufReader, Write as _},
    path::Path,
};

use anyhow::Context as _;

use crate::{
    analysis::compare::{ReportDoc, diff},
    cli::CompareArgs,
    cmd::EXIT_BUDGET,
    render::compare::{render_markdown, render_text},
};

/// Reads a report, parsing only what is compared (see `ReportDoc`).
fn load(path: &Path) -> anyhow::Result<ReportDoc> {
    let file = File::open(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_reader(BufReader::new(file))
        .with_context(|| format!("{} is not a tcptrace report", path.display()))
}

/// The command: prints the comparison; status 3 when a metric regressed.
pub fn run(args: &CompareArgs) -> anyhow::Result<i32> {
    let metrics = diff(&load(&args.base)?, &load(&args.new)?);
    let text = if args.markdown {
        render_markdown(&metrics, args.max_regression)
    } else {
        render_text(&metrics, args.max_regression)
    };
    let mut out = io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {}
        other => other.context("writing the comparison")?,
    }
    let regressed = metrics.iter().any(|m| m.regressed(args.max_regression));
    Ok(if regressed { EXIT_BUDGET } else { 0 })
}
