//! The HTTP side of `serve`: `/metrics`, `/report`, `/healthz`, answered from the pipeline.
//!
//! The pipeline owns the aggregator and runs on the same single thread, so a request never
//! reads it directly: it sends a `Question` and waits for the pipeline's `Answer` (the
//! pipeline answers at its next tick, within a fraction of a second). A request that gets no
//! answer in `ANSWER_TIMEOUT` (the pipeline is stopping, or wedged) gets a 503, never a hang.
//! Connections are bounded (`MAX_CONNECTIONS`), slow clients time out, and bcrypt, which takes
//! tens of milliseconds by design, runs off the thread that drains the ring buffer.

use std::{
    convert::Infallible,
    io,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode,
    body::Incoming,
    header::{self, HeaderValue},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    net::TcpListener,
    sync::{Semaphore, mpsc, oneshot},
    task::JoinHandle,
};

use super::web_config::WebConfig;
use crate::event::clock::monotonic_ns;

/// Connections served at once; more wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 64;
/// A request's headers (and a TLS handshake) must arrive within this.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);
/// The pipeline answers at its next tick; this is for when it never will.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// `/healthz` fails when the pipeline has not ticked for this long.
const STALE_AFTER: Duration = Duration::from_secs(5);

/// What a request asks the pipeline for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ask {
    Metrics { openmetrics: bool },
    Report,
}

pub struct Answer {
    pub content_type: &'static str,
    pub body: Bytes,
}

pub struct Question {
    pub ask: Ask,
    pub answer: oneshot::Sender<Answer>,
}

/// The pipeline's pulse, for `/healthz`.
#[derive(Debug, Default)]
pub struct Health {
    last_tick_ns: AtomicU64,
    stopping: AtomicBool,
}

impl Health {
    /// The pipeline ticked: its programs are attached and it drains the ring buffer.
    pub fn tick(&self) {
        self.last_tick_ns.store(monotonic_ns(), Ordering::Relaxed);
    }

    pub fn stop(&self) {
        self.stopping.store(true, Ordering::Relaxed);
    }

    fn healthy(&self) -> bool {
        let age = monotonic_ns().saturating_sub(self.last_tick_ns.load(Ordering::Relaxed));
        !self.stopping.load(Ordering::Relaxed) && age < STALE_AFTER.as_nanos() as u64
    }
}

/// Why `--listen` could not be bound: the user's to fix.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr}: {source}")]
pub struct BindError {
    pub addr: SocketAddr,
    pub source: io::Error,
}

/// Binds `addr` now, before the programs load: a taken port is said at once.
pub fn bind(addr: SocketAddr) -> Result<TcpListener, BindError> {
    let bound = std::net::TcpListener::bind(addr)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .and_then(TcpListener::from_std);
    bound.map_err(|source| BindError { addr, source })
}

/// Everything a connection needs, shared.
struct Shared {
    questions: mpsc::Sender<Question>,
    health: Arc<Health>,
    web: Option<Arc<WebConfig>>,
}

/// Serves `listener` until the task is aborted.
pub fn spawn(
    listener: TcpListener,
    questions: mpsc::Sender<Question>,
    health: Arc<Health>,
    web: Option<Arc<WebConfig>>,
) -> JoinHandle<()> {
    let shared = Arc::new(Shared { questions, health, web });
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    tokio::spawn(async move {
        loop {
            let Ok(slot) = slots.clone().acquire_owned().await else { return };
            let (stream, _) = match listener.accept().await {
                Ok(accepted) => accepted,
                // Out of descriptors or a connection reset before accept: try the next one.
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let shared = shared.clone();
            tokio::spawn(async move {
                let _slot = slot;
                let tls = shared.web.as_ref().and_then(|web| web.tls_acceptor());
                match tls {
                    Some(acceptor) => {
                        let handshake =
                            tokio::time::timeout(CLIENT_TIMEOUT, acceptor.accept(stream));
                        if let Ok(Ok(stream)) = handshake.await {
                            connection(TokioIo::new(stream), shared).await;
                        }
                    }
                    None => connection(TokioIo::new(stream), shared).await,
                }
            });
        }
    })
}

async fn connection<I>(io: I, shared: Arc<Shared>)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let service = service_fn(move |request| {
        let shared = shared.clone();
        async move { Ok::<_, Infallible>(respond(request, &shared).await) }
    });
    // A client that goes away mid-request is its own business.
    let _ = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(CLIENT_TIMEOUT)
        .serve_connection(io, service)
        .await;
}

async fn respond(request: Request<Incoming>, shared: &Shared) -> Response<Full<Bytes>> {
    let mut response = route(request, shared).await;
    if let Some(web) = &shared.web {
        for (name, value) in web.response_headers() {
            if let (Ok(name), Ok(value)) =
                (header::HeaderName::try_from(name.as_str()), HeaderValue::try_from(value.as_str()))
            {
                response.headers_mut().insert(name, value);
            }
        }
    }
    response
}

async fn route(request: Request<Incoming>, shared: &Shared) -> Response<Full<Bytes>> {
    // Health tells nothing about the host, and orchestrators' probes carry no credentials.
    let health = request.uri().path() == "/healthz";
    if let Some(web) = &shared.web
        && web.requires_auth()
        && !health
        && !authorized(web, request.headers().get(header::AUTHORIZATION)).await
    {
        let mut response = plain(StatusCode::UNAUTHORIZED, "unauthorized\n");
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"tcptrace\""));
        return response;
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let mut response = plain(StatusCode::METHOD_NOT_ALLOWED, "only GET\n");
        response.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    let ask = match request.uri().path() {
        "/metrics" => {
            let accept = request.headers().get(header::ACCEPT).and_then(|v| v.to_str().ok());
            Ask::Metrics { openmetrics: accept.is_some_and(wants_openmetrics) }
        }
        "/report" => Ask::Report,
        "/healthz" => {
            return if shared.health.healthy() {
                plain(StatusCode::OK, "ok\n")
            } else {
                plain(StatusCode::SERVICE_UNAVAILABLE, "not tracing\n")
            };
        }
        "/" => return plain(StatusCode::OK, INDEX),
        _ => return plain(StatusCode::NOT_FOUND, "not found: try /metrics, /report or /healthz\n"),
    };
    let (answer, answered) = oneshot::channel();
    let asked = shared.questions.try_send(Question { ask, answer });
    let answer = match asked {
        Ok(()) => tokio::time::timeout(ANSWER_TIMEOUT, answered).await,
        Err(mpsc::error::TrySendError::Full(_)) => {
            return plain(StatusCode::SERVICE_UNAVAILABLE, "busy: too many requests waiting\n");
        }
        Err(mpsc::error::TrySendError::Closed(_)) => {
            return plain(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n");
        }
    };
    match answer {
        Ok(Ok(Answer { content_type, body })) => {
            let mut response = Response::new(Full::new(body));
            response
                .headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
            response
        }
        Ok(Err(_)) => plain(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n"),
        Err(_) => plain(StatusCode::SERVICE_UNAVAILABLE, "no answer from the tracer in time\n"),
    }
}

/// Whether the credentials are good: from the cache when they were good before, else by
/// bcrypt on the blocking pool (it takes tens of milliseconds by design).
async fn authorized(web: &Arc<WebConfig>, authorization: Option<&HeaderValue>) -> bool {
    let authorization = authorization.map(|v| v.as_bytes().to_vec());
    if let Some(known) = web.authorized_cached(authorization.as_deref()) {
        return known;
    }
    let web = web.clone();
    tokio::task::spawn_blocking(move || web.authorized(authorization.as_deref()))
        .await
        .unwrap_or(false)
}

const INDEX: &str = "tcptrace serve\n\n/metrics  Prometheus metrics\n/report   the leak report (JSON, as tcptrace leaks --json)\n/healthz  200 while tracing\n";

fn plain(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

/// Whether an `Accept` header asks for OpenMetrics (Prometheus sends it first, with a higher
/// `q`, when it can parse it).
pub fn wants_openmetrics(accept: &str) -> bool {
    accept.split(',').any(|part| {
        let mut params = part.split(';').map(str::trim);
        let media = params.next().unwrap_or_default();
        let q = params
            .find_map(|p| p.strip_prefix("q="))
            .and_then(|q| q.parse::<f32>().ok())
            .unwrap_or(1.0);
        media.eq_ignore_ascii_case("application/openmetrics-text") && q > 0.0
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openmetrics_only_when_the_scraper_asks_for_it() {
        // What Prometheus 2.42 sends.
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert!(wants_openmetrics(prometheus));
        assert!(!wants_openmetrics("text/plain;version=0.0.4"));
        assert!(!wants_openmetrics("*/*"));
        assert!(!wants_openmetrics("application/openmetrics-text;q=0"));
        assert!(!wants_openmetrics(""));
    }
}
