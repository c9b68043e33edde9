//! What `tcptrace run` writes: the JSON document of `--report` (the leaks report plus the run's
//! own fields) and the JUnit XML of `--junit`.

use std::{
    io::{self, Write},
    net::SocketAddr,
};

use serde::Serialize;

use crate::{
    analysis::{aggregate::Remotes, budgets::Verdict},
    render::report::Report,
};

/// How the command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct CommandStatus {
    /// Its exit code; null when a signal killed it.
    pub exit_code: Option<i32>,
    /// The signal that killed it, if one did.
    pub signal: Option<i32>,
}

impl CommandStatus {
    /// The shell's convention: the exit code, or 128 + the signal.
    pub fn code(self) -> i32 {
        match (self.exit_code, self.signal) {
            (Some(code), _) => code,
            (None, Some(signal)) => 128 + signal,
            (None, None) => 1,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct RemoteReport {
    pub remote: SocketAddr,
    pub connections: u64,
    pub time_wait_entries: u64,
}

#[derive(Debug, Serialize)]
pub struct RunReport<'a> {
    pub command: Vec<String>,
    pub command_status: CommandStatus,
    /// tcptrace's own exit status (see `--help`).
    pub status: i32,
    pub budgets: &'a [Verdict],
    /// Per remote endpoint, most connections first.
    pub remotes: Vec<RemoteReport>,
    #[serde(flatten)]
    pub report: &'a Report,
}

impl RemoteReport {
    pub fn list(remotes: &Remotes) -> Vec<Self> {
        let mut list: Vec<Self> = remotes
            .by_remote
            .iter()
            .map(|(&remote, stats)| Self {
                remote,
                connections: stats.connections,
                time_wait_entries: stats.time_wait_entries,
            })
            .collect();
        list.sort_by(|a, b| {
            (b.connections, b.time_wait_entries, a.remote).cmp(&(
                a.connections,
                a.time_wait_entries,
                b.remote,
            ))
        });
        list
    }
}

impl RunReport<'_> {
    pub fn write_json(&self, out: &mut impl Write) -> io::Result<()> {
        serde_json::to_writer_pretty(&mut *out, self)?;
        writeln!(out)
    }

    /// One test case per budget, in a suite named after the command; a run without budgets
    /// has one case for the command itself, so CI systems always show something.
    pub fn write_junit(&self, out: &mut impl Write) -> io::Result<()> {
        let command = self.command.join(" ");
        let failed_command = self.command_status.code() != 0;
        let failures = self.budgets.iter().filter(|v| !v.passed).count();
        let (tests, failures) = if self.budgets.is_empty() {
            (1, usize::from(failed_command))
        } else {
            (self.budgets.len(), failures)
        };
        writeln!(out, r#"<?xml version="1.0" encoding="UTF-8"?>"#)?;
        writeln!(
            out,
            r#"<testsuite name="tcptrace run {}" tests="{tests}" failures="{failures}" time="{}">"#,
            xml(&command),
            self.report.duration_s
        )?;
        if self.budgets.is_empty() {
            write!(out, r#"  <testcase classname="tcptrace" name="command">"#)?;
            if failed_command {
                write!(
                    out,
                    r#"<failure message="the command failed with status {}"/>"#,
                    self.command_status.code()
                )?;
            }
            writeln!(out, "</testcase>")?;
        }
        for v in self.budgets {
            write!(out, r#"  <testcase classname="tcptrace.budgets" name="{}">"#, xml(&v.budget))?;
            if !v.passed {
                let detail = crate::analysis::budgets::describe(std::slice::from_ref(v)).join("\n");
                write!(
                    out,
                    r#"<failure message="{}: {} over the budget of {}">{}</failure>"#,
                    xml(&v.budget),
                    v.measured,
                    v.limit,
                    xml(&detail)
                )?;
            }
            writeln!(out, "</testcase>")?;
        }
        writeln!(out, "</testsuite>")
    }
}

/// Text as XML character data or attribute value.
fn xml(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // XML 1.0 has no way to write other control characters.
            c if c.is_control() && !matches!(c, '\n' | '\t' | '\r') => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_follow_the_shell() {
        assert_eq!(CommandStatus { exit_code: Some(7), signal: None }.code(), 7);
        assert_eq!(CommandStatus { exit_code: None, signal: Some(9) }.code(), 137);
    }

    #[test]
    fn xml_escapes_markup_and_control_characters() {
        assert_eq!(xml(r#"a<b & "c" 'd'>"#), "a&lt;b &amp; &quot;c&quot; &apos;d&apos;&gt;");
        assert_eq!(xml("x\u{1}y\nz"), "x\u{fffd}y\nz");
    }
}
