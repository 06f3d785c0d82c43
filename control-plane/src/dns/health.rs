//! CoreDNS' `health` and `ready` endpoints: `/health` answers 200 `OK`
//! while the process runs; `/ready` answers 200 `OK` once the caches have
//! synced, 503 before.
use std::net::SocketAddr;

use anyhow::{Context as _, Result};
use axum::{Router, http::StatusCode, routing::get};
use tokio::net::TcpListener;

use super::server::SharedSnapshot;

/// Serves `/health` and `/ready` on `listen` until the task is dropped;
/// returns the bound address and the serving future.
pub async fn bind(
    listen: SocketAddr,
    snapshot: SharedSnapshot,
) -> Result<(SocketAddr, impl Future<Output = std::io::Result<()>>)> {
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding the health endpoint {listen}"))?;
    let addr = listener.local_addr()?;
    let app = Router::new()
        .route("/health", get(|| async { "OK" }))
        .route(
            "/ready",
            get(move || {
                let synced = snapshot.read().map(|s| s.synced).unwrap_or(false);
                async move {
                    if synced {
                        (StatusCode::OK, "OK")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "caches not synced")
                    }
                }
            }),
        );
    Ok((addr, axum::serve(listener, app).into_future()))
}
