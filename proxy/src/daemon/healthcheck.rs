//! Health-check servers on `healthCheckNodePort`s, as kube-proxy runs them
//! for `type: LoadBalancer` Services with `externalTrafficPolicy: Local`: a
//! cloud load balancer asks each node, and only nodes with a ready local
//! endpoint say yes.
//!
//! Any path is answered: 200 when the Service has a ready endpoint on this
//! node and the proxy is healthy, 503 otherwise (also when only terminating
//! endpoints are left, while traffic still flows to them), with
//! `{"service":{"namespace":…,"name":…},"localEndpoints":N,"serviceProxyHealthy":…}`,
//! `Content-Type: application/json`, `X-Content-Type-Options: nosniff` and
//! `X-Load-Balancing-Endpoint-Weight: N`.
//!
//! Listeners are opened inside the node's network namespace, on every
//! address of the node (kube-proxy binds the port on all addresses unless
//! `nodePortAddresses` narrows them; Switchyard always binds all).
use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddr},
    sync::{Arc, RwLock},
};

use axum::{
    Router,
    extract::State,
    http::{HeaderName, StatusCode, header},
    response::IntoResponse,
};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use super::health::Health;
use crate::{desired::HealthCheck, netns::with_netns};

/// kube-proxy's weight header: the number of local ready endpoints.
const WEIGHT_HEADER: &str = "x-load-balancing-endpoint-weight";

struct Server {
    check: Arc<RwLock<HealthCheck>>,
    task: JoinHandle<()>,
}

/// The running servers, by port.
pub struct HealthCheckServers {
    netns: Option<String>,
    proxy: Arc<Health>,
    servers: BTreeMap<u16, Server>,
}

#[derive(Clone)]
struct Ctx {
    check: Arc<RwLock<HealthCheck>>,
    proxy: Arc<Health>,
}

impl HealthCheckServers {
    /// No servers yet; listeners will be opened in `netns`.
    pub fn new(netns: Option<String>, proxy: Arc<Health>) -> Self {
        Self {
            netns,
            proxy,
            servers: BTreeMap::new(),
        }
    }

    /// Runs exactly the servers `checks` names: new ports are opened, gone
    /// ones closed, the others answer from the new counts. A port that
    /// cannot be opened is logged and tried again on the next call.
    pub fn update(&mut self, checks: &BTreeMap<u16, HealthCheck>) {
        let gone: Vec<u16> = self
            .servers
            .keys()
            .filter(|p| !checks.contains_key(p))
            .copied()
            .collect();
        for port in gone {
            if let Some(s) = self.servers.remove(&port) {
                s.task.abort();
                info!(port, "health check server stopped");
            }
        }
        for (port, check) in checks {
            if let Some(s) = self.servers.get(port) {
                *s.check
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = check.clone();
                continue;
            }
            match self.start(*port, check.clone()) {
                Ok(s) => {
                    info!(port, service = %format!("{}/{}", check.namespace, check.name), "health check server started");
                    self.servers.insert(*port, s);
                }
                Err(e) => {
                    warn!(port, error = %format!("{e:#}"), "cannot open health check node port")
                }
            }
        }
    }

    fn start(&self, port: u16, check: HealthCheck) -> anyhow::Result<Server> {
        let addr = SocketAddr::from((Ipv4Addr::UNSPECIFIED, port));
        let bind = || -> anyhow::Result<std::net::TcpListener> {
            let l = std::net::TcpListener::bind(addr)?;
            l.set_nonblocking(true)?;
            Ok(l)
        };
        let std_listener = match &self.netns {
            Some(ns) => with_netns(ns, bind)?,
            None => bind()?,
        };
        let listener = tokio::net::TcpListener::from_std(std_listener)?;
        let check = Arc::new(RwLock::new(check));
        let ctx = Ctx {
            check: Arc::clone(&check),
            proxy: Arc::clone(&self.proxy),
        };
        let app = Router::new().fallback(answer).with_state(ctx);
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                warn!(port, error = %e, "health check server failed");
            }
        });
        Ok(Server { check, task })
    }
}

async fn answer(State(ctx): State<Ctx>) -> impl IntoResponse {
    let check = ctx
        .check
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    let healthy = ctx.proxy.is_healthy();
    let status = if check.local_endpoints > 0 && healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = serde_json::json!({
        "service": {"namespace": check.namespace, "name": check.name},
        "localEndpoints": check.local_endpoints,
        "serviceProxyHealthy": healthy,
    });
    (
        status,
        [
            (header::CONTENT_TYPE, "application/json".to_owned()),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff".to_owned()),
            (
                HeaderName::from_static(WEIGHT_HEADER),
                check.local_endpoints.to_string(),
            ),
        ],
        body.to_string(),
    )
}
