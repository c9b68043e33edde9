//! Load and attach errors in one line: aya's error chain joined, a verifier log cut to its
//! verdict (the whole log when `TCPTRACE_VERIFIER_LOG` is set).

/// Set to print the whole verifier log when a program is rejected.
pub const VERIFIER_LOG_ENV: &str = "TCPTRACE_VERIFIER_LOG";

/// One-line reason from an aya error and its sources ("... : Operation not permitted").
pub fn reason(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    if std::env::var_os(VERIFIER_LOG_ENV).is_some() { text } else { shorten(&text) }
}

/// `text` with a verifier log cut to its verdict.
fn shorten(text: &str) -> String {
    let Some((head, log)) = text.split_once("Verifier output:") else {
        return text.to_owned();
    };
    let verdict = log
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("verification time"))
        .find(|l| !l.starts_with(|c: char| c.is_ascii_digit() || c == ';'))
        .unwrap_or("");
    let head = head.trim_end_matches([' ', '.']);
    if verdict.is_empty() || verdict.starts_with(':') {
        head.to_owned()
    } else {
        format!("{head}: verifier: {verdict} (set {VERIFIER_LOG_ENV}=1 for the full log)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_verifier_log_is_cut_to_its_verdict() {
        let text = "the BPF_PROG_LOAD syscall failed. Verifier output: 0: (79) r1 = *(u64 *)(r1 +0)\n\
                    ; some source\n12: (85) call bpf_probe_read_kernel#113\n\
                    R2 min value is negative, either use unsigned or 'var &= const'\n\
                    verification time 30 usec\n";
        assert_eq!(
            shorten(text),
            "the BPF_PROG_LOAD syscall failed: verifier: R2 min value is negative, either use \
             unsigned or 'var &= const' (set TCPTRACE_VERIFIER_LOG=1 for the full log)"
        );
        assert_eq!(
            shorten("attaching: Operation not permitted"),
            "attaching: Operation not permitted"
        );
        assert_eq!(shorten("load failed. Verifier output: \n"), "load failed");
    }
}
