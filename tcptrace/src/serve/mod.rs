//! `tcptrace serve`'s own parts: the Prometheus metrics kept beside the aggregator
//! (`metrics`, with its label bound in `labels` and the TIME_WAIT window in `window`) and the
//! HTTP side that answers scrapes (`http`, with the exporter-toolkit web config in
//! `web_config`).
//!
//! May import `analysis`, `render`, `pipeline`, `container`, `event` and `kernel`; imported by
//! `cmd` only.

pub mod http;
pub mod labels;
pub mod metrics;
pub mod web_config;
pub mod window;
