//! Serves a Prometheus registry as text at `http://<address>/metrics`, for
//! the examples' `--metrics <host:port>`, and sets up `RUST_LOG` logging.
//!
//! axum (over hyper) does the HTTP: it is what rust-libp2p's own metrics
//! example uses, and it runs on the tokio runtime the examples already have.
//!
//! Each example, and `tests/metrics.rs`, uses part of it.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus_client::registry::Registry;

/// The content type of the Prometheus text format prometheus-client writes.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Binds `address` (port 0 picks a free one), serves `registry` at
/// `/metrics` on a task of the current tokio runtime for as long as the
/// process runs, and returns the address bound.
pub async fn serve(
    registry: Arc<Mutex<Registry>>,
    address: SocketAddr,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(address).await?;
    let bound = listener.local_addr()?;
    let app = Router::new().route(
        "/metrics",
        get(move || {
            let registry = Arc::clone(&registry);
            async move {
                let mut text = String::new();
                let registry = registry.lock().unwrap_or_else(|p| p.into_inner());
                match prometheus_client::encoding::text::encode(&mut text, &registry) {
                    Ok(()) => ([(CONTENT_TYPE, OPENMETRICS)], text).into_response(),
                    Err(e) => (
                        axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                        format!("encoding the metrics failed: {e}"),
                    )
                        .into_response(),
                }
            }
        }),
    );
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            eprintln!("metrics endpoint stopped: {e}");
        }
    });
    Ok(bound)
}

/// `config` recording its metrics in a registry of its own, served at
/// `http://<address>/metrics` from now on (the address bound goes to
/// stderr: stdout may be what another process reads); `config` as it is
/// without an address.
pub async fn with_metrics(
    config: bb_libp2p::Config,
    address: Option<SocketAddr>,
) -> std::io::Result<bb_libp2p::Config> {
    let Some(address) = address else {
        return Ok(config);
    };
    let mut registry = Registry::default();
    let config = config.with_metrics(bb_libp2p::Metrics::new(&mut registry));
    let bound = serve(Arc::new(Mutex::new(registry)), address).await?;
    eprintln!("metrics on http://{bound}/metrics");
    Ok(config)
}

/// Logs to stderr as `RUST_LOG` says (nothing when it is unset), e.g.
/// `RUST_LOG=bb_libp2p=debug`.
pub fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .try_init();
}
