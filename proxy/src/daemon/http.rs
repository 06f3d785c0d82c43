//! The health server (`/healthz`, `/livez`) and the metrics server
//! (`/metrics`), on their own addresses as kube-proxy has them.
use std::{net::SocketAddr, sync::Arc};

use anyhow::{Context as _, Result};
use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::IntoResponse,
    routing::get,
};
use tokio::net::TcpListener;
use tracing::info;

use super::{health::Health, metrics::Metrics};

/// Binds both listeners (so a port in use stops the daemon at start, with
/// the address named) and serves them until the runtime ends.
pub async fn serve(
    healthz: SocketAddr,
    metrics_addr: SocketAddr,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
) -> Result<()> {
    let health_app = Router::new()
        .route("/healthz", get(healthz_handler))
        .route("/livez", get(livez_handler))
        .with_state(health);
    let metrics_app = Router::new()
        .route("/metrics", get(metrics_handler))
        .with_state(metrics);
    let hl = TcpListener::bind(healthz)
        .await
        .with_context(|| format!("--healthz-bind-address: cannot listen on {healthz}"))?;
    let ml = TcpListener::bind(metrics_addr)
        .await
        .with_context(|| format!("--metrics-bind-address: cannot listen on {metrics_addr}"))?;
    info!(healthz = %hl.local_addr()?, metrics = %ml.local_addr()?, "serving health and metrics");
    tokio::spawn(async move { axum::serve(hl, health_app).await });
    tokio::spawn(async move { axum::serve(ml, metrics_app).await });
    Ok(())
}

fn json(answer: super::health::Answer) -> impl IntoResponse {
    (
        StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        answer.body,
    )
}

async fn healthz_handler(State(h): State<Arc<Health>>) -> impl IntoResponse {
    json(h.answer(true))
}

async fn livez_handler(State(h): State<Arc<Health>>) -> impl IntoResponse {
    json(h.answer(false))
}

async fn metrics_handler(State(m): State<Arc<Metrics>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, super::metrics::CONTENT_TYPE)],
        m.render(),
    )
}
