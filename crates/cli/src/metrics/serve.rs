//! Serving over HTTP, with axum: `GET /metrics` (the exposition), `GET /healthz` (the
//! process is alive and serving: always 200) and `GET /readyz` (200 when the [`Source`] is
//! ready, else 503 with a one-line reason). HEAD works too; other methods get 405.
//!
//! Connections are taken by our own accept loop, so that a node agent listening on every
//! address stays bounded: at most [`MAX_CONNECTIONS`] at once (more wait in the listen
//! backlog), one request each, a request head within [`HEADER_TIME`] and the whole answer
//! within [`CONNECTION_TIME`]. A scrape is one small request every few seconds from a
//! handful of Prometheus servers.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use super::render::CONTENT_TYPE;

/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 16;
/// How long a client has to send its request head.
const HEADER_TIME: Duration = Duration::from_secs(10);
/// How long a connection may last, request and answer (a scrape reads the ledger, asks NVML
/// and the kubelet, each bounded in time).
const CONNECTION_TIME: Duration = Duration::from_secs(30);

/// What the endpoints answer from.
#[tonic::async_trait]
pub trait Source: Send + Sync + 'static {
    /// The exposition, read afresh.
    async fn metrics(&self) -> String;
    /// `Ok` when ready; otherwise why not, in a line.
    async fn readiness(&self) -> Result<(), String>;
}

/// The routes, answering from `source`.
pub fn router(source: Arc<dyn Source>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .fallback(not_found)
        .with_state(source)
}

async fn metrics(State(source): State<Arc<dyn Source>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        source.metrics().await,
    )
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(source): State<Arc<dyn Source>>) -> (StatusCode, String) {
    match source.readiness().await {
        Ok(()) => (StatusCode::OK, "ready\n".into()),
        Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, one_line(&reason)),
    }
}

async fn not_found() -> (StatusCode, &'static str) {
    (StatusCode::NOT_FOUND, "try /metrics, /healthz or /readyz\n")
}

/// `text` on one line, ending with a line feed.
fn one_line(text: &str) -> String {
    let mut line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    line.push('\n');
    line
}

/// Serves the routes of `source` on `listener` for as long as the process runs.
pub async fn serve(listener: TcpListener, source: Arc<dyn Source>) {
    let app = router(source);
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors, say: wait a little instead of spinning.
                tracing::debug!("accepting a metrics connection failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let service = TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIME)
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(CONNECTION_TIME, connection).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reason_is_one_line() {
        assert_eq!(one_line("a\nb  c\n"), "a b c\n");
        assert_eq!(one_line(""), "\n");
    }
}
