//! `compare`'s tables: aligned text for a terminal, markdown for a pull-request comment.

use std::fmt::Write as _;

use crate::analysis::compare::Metric;

/// How a metric changed, in a few characters.
fn change(m: &Metric) -> String {
    match (m.base, m.new) {
        (Some(base), Some(new)) if base == new => "=".to_owned(),
        (Some(0.0), Some(new)) => format!("+{}", number(new)),
        (Some(base), Some(new)) => format!("{:+.0}%", (new - base) / base * 100.0),
        (None, Some(_)) => "new".to_owned(),
        (Some(_), None) => "gone".to_owned(),
        (None, None) => String::new(),
    }
}

fn number(x: f64) -> String {
    // An empty sum of f64 is -0.0.
    let x = if x == 0.0 { 0.0 } else { x };
    if x.fract() == 0.0 { format!("{x:.0}") } else { format!("{x:.2}") }
}

fn cell(x: Option<f64>) -> String {
    x.map_or_else(|| "-".to_owned(), number)
}

/// The metrics as aligned text, regressions marked.
pub fn render_text(metrics: &[Metric], pct: f64) -> String {
    let width = metrics.iter().map(|m| m.name.len()).max().unwrap_or(6).max(6);
    let mut out = format!("{:<width$}  {:>10}  {:>10}  CHANGE\n", "METRIC", "BASE", "NEW");
    for m in metrics {
        let mark = if m.regressed(pct) { "  REGRESSED" } else { "" };
        let _ = writeln!(
            out,
            "{:<width$}  {:>10}  {:>10}  {}{mark}",
            m.name,
            cell(m.base),
            cell(m.new),
            change(m)
        );
    }
    out
}

/// The metrics as a markdown table for a pull-request comment: what changed, then the rest
/// folded away.
pub fn render_markdown(metrics: &[Metric], pct: f64) -> String {
    let regressions = metrics.iter().filter(|m| m.regressed(pct)).count();
    let mut out = if regressions == 0 {
        format!("### tcptrace: no regression past {pct}%\n\n")
    } else {
        format!("### tcptrace: {regressions} regression(s) past {pct}%\n\n")
    };
    let row = |m: &Metric| {
        let mark = if m.regressed(pct) { " :x:" } else { "" };
        format!(
            "| {} | {} | {} | {}{mark} |\n",
            m.name.replace('|', "\\|"),
            cell(m.base),
            cell(m.new),
            change(m)
        )
    };
    let header = "| metric | base | new | change |\n|---|---:|---:|---|\n";
    let (changed, same): (Vec<&Metric>, Vec<&Metric>) =
        metrics.iter().partition(|m| m.base != m.new);
    out.push_str(header);
    for m in &changed {
        out.push_str(&row(m));
    }
    if !same.is_empty() {
        let _ = write!(out, "\n<details><summary>{} unchanged</summary>\n\n{header}", same.len());
        for m in &same {
            out.push_str(&row(m));
        }
        out.push_str("\n</details>\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::compare::{diff, tests::report};

    #[test]
    fn regressions_are_marked_in_text_and_markdown() {
        let metrics = diff(
            &report(10, 4, &[], 10),
            &report(12, 4, &["closed-by-exit", "closed-by-exit"], 12),
        );
        let text = render_text(&metrics, 10.0);
        assert!(text.contains("REGRESSED"), "{text}");
        let markdown = render_markdown(&metrics, 10.0);
        assert!(markdown.starts_with("### tcptrace: 5 regression(s) past 10%"), "{markdown}");
        assert!(markdown.contains("| findings: closed-by-exit | 0 | 2 | +2 :x: |"), "{markdown}");
        assert!(markdown.contains("<details>"), "{markdown}");
    }

    #[test]
    fn the_same_report_says_no_regression() {
        let r = report(10, 4, &["unclosed"], 10);
        assert!(render_markdown(&diff(&r, &r), 10.0).starts_with("### tcptrace: no regression"));
    }
}
