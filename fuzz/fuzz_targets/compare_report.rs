//! A report given to `compare` (`run --report`, `leaks --json`: a file the user names, possibly
//! from another machine) → `ReportDoc` → `diff` → the text and markdown tables.
//!
//! Holds: parsing, diffing and rendering never panic, whatever the numbers (huge, negative,
//! sums that overflow to infinity or NaN); a report compared with itself has every metric
//! unchanged and no regression at any threshold, and the markdown says so; comparing with an
//! empty report renders too.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tcptrace::{
    analysis::compare::{ReportDoc, diff},
    render::compare::{render_markdown, render_text},
};

fn same(a: Option<f64>, b: Option<f64>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => a.to_bits() == b.to_bits(),
        (None, None) => true,
        _ => false,
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(doc) = serde_json::from_slice::<ReportDoc>(data) else { return };
    let metrics = diff(&doc, &doc);
    assert_eq!(metrics, diff(&doc, &doc), "diff is deterministic");
    assert!(metrics.len() >= 3, "the three totals are always there");
    for m in &metrics {
        assert!(same(m.base, m.new), "{m:?} changed against itself");
        for pct in [0.0, 10.0, -100.0, f64::NAN] {
            assert!(!m.regressed(pct), "{m:?} regressed against itself at {pct}%");
        }
    }
    for pct in [0.0, 10.0] {
        let markdown = render_markdown(&metrics, pct);
        assert!(
            markdown.starts_with(&format!("### tcptrace: no regression past {pct}%\n")),
            "{markdown}"
        );
        let text = render_text(&metrics, pct);
        assert!(text.starts_with("METRIC"), "{text}");
    }
    let empty: ReportDoc =
        serde_json::from_str(r#"{"processes": [], "findings": []}"#).expect("an empty report");
    for (base, new) in [(&doc, &empty), (&empty, &doc)] {
        let metrics = diff(base, new);
        let _ = render_markdown(&metrics, 10.0);
        let _ = render_text(&metrics, 10.0);
    }
});
