//! What the snapshot could not see, as lines for the operator. Permission errors are counted
//! per kind of object, so an unprivileged run over 1,000 processes says so in one line each.

use std::collections::BTreeMap;

#[derive(Debug, Default)]
pub struct Warnings {
    lines: Vec<String>,
    /// What could not be read → how many times.
    denied: BTreeMap<&'static str, usize>,
}

impl Warnings {
    pub fn push(&mut self, line: impl Into<String>) {
        self.lines.push(line.into());
    }

    /// `what` is the operation that was refused: "reading a process's descriptors".
    pub fn denied(&mut self, what: &'static str) {
        *self.denied.entry(what).or_default() += 1;
    }

    pub fn into_lines(self) -> Vec<String> {
        let Self { mut lines, denied } = self;
        lines.extend(
            denied.into_iter().map(|(what, count)| format!("permission denied ({count}): {what}")),
        );
        lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permission_errors_are_summed_per_kind() {
        let mut warnings = Warnings::default();
        warnings.denied("reading a process's descriptors");
        warnings.push("netns 4026531840: dump failed");
        warnings.denied("reading a process's descriptors");
        warnings.denied("entering a network namespace");
        assert_eq!(
            warnings.into_lines(),
            [
                "netns 4026531840: dump failed",
                "permission denied (1): entering a network namespace",
                "permission denied (2): reading a process's descriptors",
            ]
        );
    }
}
