//! `tcptrace serve`: trace as `leaks` does, for as long as the host runs, and answer
//! Prometheus scrapes, report requests and health checks over HTTP until SIGTERM or Ctrl-C.

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::{
    analysis::findings::Limits,
    cli::ServeOptions,
    cmd::{leaks, stop::stop_signal},
    event::clock::monotonic_ns,
    pipeline::Pipeline,
    serve::{
        http::{self, Answer, Ask, Health, Question},
        metrics::{MetricsSink, OPENMETRICS_CONTENT_TYPE, PipelineState, TEXT_CONTENT_TYPE},
        web_config::WebConfig,
    },
};

/// How often the pipeline answers waiting requests and stamps its health: a scrape waits
/// this long at most for its turn.
const TICK: Duration = Duration::from_millis(100);
/// Requests waiting for the pipeline at most; more get a 503 at once.
const QUEUE: usize = 32;

pub async fn run(options: ServeOptions) -> anyhow::Result<()> {
    let ServeOptions { probe, detect, listen, web_config, max_series } = options;
    // The user's mistakes first, before anything loads: a bad web config, a taken port.
    let web = web_config.as_deref().map(WebConfig::load).transpose()?.map(Arc::new);
    let tls = web.as_ref().is_some_and(|w| w.tls_acceptor().is_some());
    let listener = http::bind(listen)?;
    let mut warnings = Vec::new();
    let limits = leaks::limits(&detect, &mut warnings);
    let stop = stop_signal(None)?;
    let capacity = detect.capacity;
    let mut pipeline = Pipeline::start(&probe, capacity, Some(detect.sweep), |hook| {
        MetricsSink::new(capacity, max_series, hook)
    })
    .await?;
    let scheme = if tls { "https" } else { "http" };
    pipeline.announce(
        "TCP connections",
        Some(&format!("serving {scheme}://{listen}/metrics, /report and /healthz until SIGTERM")),
    );

    let health = Arc::new(Health::default());
    health.tick();
    let (questions, mut waiting) = mpsc::channel(QUEUE);
    let server = http::spawn(listener, questions, health.clone(), web);
    let served = pipeline
        .run(stop, Some(TICK), |p| {
            health.tick();
            while let Ok(question) = waiting.try_recv() {
                answer(p, question, &limits, &warnings);
            }
            Ok(true)
        })
        .await;
    // Requests from now on, and those waiting, get a 503: the answers would be stale.
    health.stop();
    waiting.close();
    server.abort();
    served?;
    crate::say!(
        "tcptrace: stopped after {}",
        humantime::format_duration(round(pipeline.elapsed()))
    );
    Ok(())
}

fn round(d: Duration) -> Duration {
    Duration::from_secs(d.as_secs())
}

fn answer(p: &mut Pipeline<MetricsSink>, question: Question, limits: &Limits, warnings: &[String]) {
    let Question { ask, answer } = question;
    let reply = match ask {
        Ask::Metrics { openmetrics } => {
            let state = PipelineState {
                events: p.events(),
                // Unreadable counters leave the loss counters where they were.
                losses: p.losses().unwrap_or_default(),
                capacity: p.sink().agg.capacity(),
            };
            p.sink_mut().refresh(monotonic_ns(), limits, &state);
            match p.sink().encode(openmetrics) {
                Ok(text) => Answer {
                    content_type: if openmetrics {
                        OPENMETRICS_CONTENT_TYPE
                    } else {
                        TEXT_CONTENT_TYPE
                    },
                    body: Bytes::from(text),
                },
                Err(_) => return,
            }
        }
        Ask::Report => {
            let report = leaks::report_now(p, &p.sink().agg, *limits, warnings.to_vec());
            let mut body = Vec::new();
            if report.write_json(&mut body).is_err() {
                return;
            }
            Answer { content_type: "application/json", body: Bytes::from(body) }
        }
    };
    // The client may have left.
    let _ = answer.send(reply);
}
