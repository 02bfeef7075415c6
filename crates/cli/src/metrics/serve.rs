//! Serving over HTTP, with axum: `GET /metrics` (the exposition), `GET /healthz` (the
//! process is alive and serving: always 200) and `GET /readyz` (200 when the [`Source`] is
//! ready, else 503 with a one-line reason). HEAD works too; other methods get 405.
//!
//! Connections are taken by our own accept loop, so that a node agent listening on every
//! address stays bounded: at most [`MAX_CONNECTIONS`] at once and [`MAX_PER_PEER`] from one
//! address, one request each, a request head within [`HEADER_TIME`] and the whole answer
//! within [`CONNECTION_TIME`]. A scrape is one small request every few seconds from a
//! handful of Prometheus servers.
//!
//! A connection past a limit is closed at once, never left waiting: the port is open to
//! every pod of the cluster, and when connections waited in the listen backlog, one client
//! holding slow ones kept every slot and the kubelet's liveness probe queued behind them
//! until it timed out (and the kubelet restarted the node agent). Counted per address, such
//! a client holds [`MAX_PER_PEER`] slots; the probe, Prometheus and the rest still get in.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;

use super::render::CONTENT_TYPE;

/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 64;
/// Connections served at once from one peer address.
pub const MAX_PER_PEER: usize = 4;
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

/// The connections being served, in all and by peer address.
#[derive(Debug, Default)]
struct Connections {
    all: usize,
    by_peer: HashMap<IpAddr, usize>,
}

/// A connection's place among those served; given back when it is dropped.
#[derive(Debug)]
struct Slot {
    connections: Arc<Mutex<Connections>>,
    peer: IpAddr,
}

impl Slot {
    /// A place for a connection from `peer`, unless the limits are reached.
    fn take(connections: &Arc<Mutex<Connections>>, peer: IpAddr) -> Option<Slot> {
        let mut c = connections.lock().unwrap_or_else(PoisonError::into_inner);
        let from_peer = c.by_peer.get(&peer).copied().unwrap_or(0);
        if c.all >= MAX_CONNECTIONS || from_peer >= MAX_PER_PEER {
            return None;
        }
        c.all += 1;
        c.by_peer.insert(peer, from_peer + 1);
        Some(Slot {
            connections: Arc::clone(connections),
            peer,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut c = self
            .connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        c.all = c.all.saturating_sub(1);
        if let Some(n) = c.by_peer.get_mut(&self.peer) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                c.by_peer.remove(&self.peer);
            }
        }
    }
}

/// Serves the routes of `source` on `listener` for as long as the process runs.
pub async fn serve(listener: TcpListener, source: Arc<dyn Source>) {
    let app = router(source);
    let connections = Arc::new(Mutex::new(Connections::default()));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of descriptors, say: wait a little instead of spinning.
                tracing::debug!("accepting a metrics connection failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(slot) = Slot::take(&connections, peer.ip()) else {
            // Closed at once: waiting, it would hold the ones behind it in the backlog.
            drop(stream);
            continue;
        };
        let service = TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            let _slot = slot;
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
    fn connections_are_limited_per_peer_and_in_all_and_given_back() {
        let connections = Arc::new(Mutex::new(Connections::default()));
        let peer = |i: u32| IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
        let mine: Vec<Slot> = (0..MAX_PER_PEER)
            .map(|_| Slot::take(&connections, peer(0)).expect("room"))
            .collect();
        assert!(
            Slot::take(&connections, peer(0)).is_none(),
            "one peer's limit"
        );
        let others: Vec<Slot> = (1..)
            .map_while(|i| Slot::take(&connections, peer(i)))
            .collect();
        assert_eq!(
            mine.len() + others.len(),
            MAX_CONNECTIONS,
            "the limit in all"
        );
        drop(others);
        drop(mine);
        let c = connections.lock().unwrap();
        assert_eq!((c.all, c.by_peer.len()), (0, 0), "every slot given back");
    }

    #[test]
    fn a_reason_is_one_line() {
        assert_eq!(one_line("a\nb  c\n"), "a b c\n");
        assert_eq!(one_line(""), "\n");
    }
}
