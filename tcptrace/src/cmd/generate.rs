//! `tcptrace completions SHELL` and the hidden `tcptrace man DIR`: shell completions and man
//! pages generated from the command-line definition itself (clap_complete, clap_mangen), so
//! they cannot drift from the flags. The package build (`cargo xtask dist`) runs both.

use std::{fs, io, path::Path};

use anyhow::Context as _;
use clap::CommandFactory as _;
use clap_complete::Shell;

use crate::cli::Cli;

/// Man pages go in section 8: tcptrace is a system administration command (it needs root).
const SECTION: &str = "8";

pub fn completions(shell: Shell) -> anyhow::Result<i32> {
    let mut cmd = Cli::command();
    clap_complete::generate(shell, &mut cmd, "tcptrace", &mut io::stdout().lock());
    Ok(0)
}

/// `tcptrace.8` and one page per visible command (`tcptrace-leaks.8`, ...) in `dir`.
pub fn man_pages(dir: &Path) -> anyhow::Result<i32> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let cmd = Cli::command();
    render(cmd.clone(), &dir.join(format!("tcptrace.{SECTION}")))?;
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = format!("tcptrace-{}", sub.get_name());
        let page = sub.clone().name(name.clone()).bin_name(format!("tcptrace {}", sub.get_name()));
        render(page, &dir.join(format!("{name}.{SECTION}")))?;
    }
    Ok(0)
}

fn render(cmd: clap::Command, path: &Path) -> anyhow::Result<()> {
    let mut page = Vec::new();
    clap_mangen::Man::new(cmd).section(SECTION).render(&mut page)?;
    fs::write(path, page).with_context(|| format!("writing {}", path.display()))
}
