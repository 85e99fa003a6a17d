//! Serving Prometheus metrics over HTTP.

use std::future::Future;

use axum::http::header::CONTENT_TYPE;
use axum::routing::get;
use prometheus::{Encoder, Registry, TextEncoder};

/// Serves `GET /metrics` in the Prometheus text format on `listener` until
/// `shutdown` resolves.
pub async fn serve_metrics(
    listener: tokio::net::TcpListener,
    registry: Registry,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = axum::Router::new().route(
        "/metrics",
        get(move || {
            let registry = registry.clone();
            async move {
                let mut buf = Vec::new();
                let encoder = TextEncoder::new();
                if let Err(e) = encoder.encode(&registry.gather(), &mut buf) {
                    buf = format!("# encoding failed: {e}\n").into_bytes();
                }
                ([(CONTENT_TYPE, encoder.format_type().to_string())], buf)
            }
        }),
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}
