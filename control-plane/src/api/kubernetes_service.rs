//! The `default/kubernetes` Service, through which in-cluster clients find
//! the API server (`KUBERNETES_SERVICE_HOST`, kube-rs and client-go
//! in-cluster config), with an Endpoints and an EndpointSlice pointing at
//! the server's advertised address — upstream's bootstrap controller and
//! endpoint reconciler. Created at start and repaired every interval: a
//! deleted or edited object comes back as it should be.
//!
//! Upstream refuses loopback endpoint addresses from clients; the server
//! writes these objects itself, so a one-machine cluster advertising
//! `127.0.0.1` still gets its endpoints.
use std::net::SocketAddr;

use serde_json::{Value, json};
use tracing::warn;

use super::{
    ApiServer, path::Target, read::get_object, resources::Resource, services, status::ApiResult,
    write,
};
use crate::store::Store;

pub const NAMESPACE: &str = "default";
pub const NAME: &str = "kubernetes";
const PORT_NAME: &str = "https";
/// The port the Service exposes, whatever port the server listens on.
const SERVICE_PORT: u16 = 443;

fn family(addr: &SocketAddr) -> &'static str {
    if addr.is_ipv4() { "IPv4" } else { "IPv6" }
}

/// What the reconciler keeps equal: the Service's `spec.type` and `ports`,
/// the Endpoints' `subsets`, the slice's address type, endpoints and ports.
fn desired(
    settings: &super::Settings,
    addr: SocketAddr,
) -> [(&'static str, Value, &'static [&'static str]); 3] {
    let ip = addr.ip().to_string();
    let port = addr.port();
    let labels = json!({"component": "apiserver", "provider": "kubernetes"});
    [
        (
            "services",
            json!({"metadata": {"name": NAME, "labels": labels}, "spec": {
                "type": "ClusterIP",
                "clusterIP": services::first_ip(settings).to_string(),
                "sessionAffinity": "None",
                "ports": [{"name": PORT_NAME, "port": SERVICE_PORT, "protocol": "TCP", "targetPort": port}],
            }}),
            &["/spec/type", "/spec/ports"],
        ),
        (
            "endpoints",
            json!({"metadata": {"name": NAME,
                                "labels": {"endpointslice.kubernetes.io/skip-mirror": "true"}},
                   "subsets": [{"addresses": [{"ip": ip}],
                                "ports": [{"name": PORT_NAME, "port": port, "protocol": "TCP"}]}]}),
            &["/subsets"],
        ),
        (
            "endpointslices",
            json!({"metadata": {"name": NAME, "labels": {"kubernetes.io/service-name": NAME}},
                   "addressType": family(&addr),
                   "endpoints": [{"addresses": [ip], "conditions": {"ready": true}}],
                   "ports": [{"name": PORT_NAME, "port": port, "protocol": "TCP"}]}),
            &["/addressType", "/endpoints", "/ports"],
        ),
    ]
}

/// Creates or repairs the three objects. A no-op without an advertised address.
pub async fn reconcile<S: Store>(api: &ApiServer<S>) -> ApiResult<()> {
    let Some(addr) = api.settings.advertise else {
        return Ok(());
    };
    for (plural, want, kept) in desired(&api.settings, addr) {
        let group = if plural == "endpointslices" {
            "discovery.k8s.io"
        } else {
            ""
        };
        let res = Resource::find(group, "v1", plural).expect("a served resource");
        let t = Target {
            res,
            namespace: Some(NAMESPACE.to_owned()),
            name: Some(NAME.to_owned()),
            sub: None,
        };
        let current = match get_object(api, &t).await {
            Ok((obj, _)) => obj,
            Err(e) if e.reason == "NotFound" => {
                let mut obj = want.clone();
                match write::create_object(
                    api,
                    res,
                    Some(NAMESPACE),
                    &mut obj,
                    &write::Owner::Server,
                )
                .await
                {
                    Ok(_) => continue,
                    // Someone else created it meanwhile: repair it below.
                    Err(e) if e.reason == "AlreadyExists" => get_object(api, &t).await?.0,
                    Err(e) => return Err(e),
                }
            }
            Err(e) => return Err(e),
        };
        let drifted = |cur: &Value| kept.iter().any(|p| cur.pointer(p) != want.pointer(p));
        if !drifted(&current) {
            continue;
        }
        write::modify(api, &t, None, &write::Owner::Server, |cur| {
            let mut out = cur.clone();
            for p in kept {
                let field = &p[1..];
                match field.split_once('/') {
                    Some((outer, inner)) => {
                        out[outer][inner] = want.pointer(p).cloned().unwrap_or(Value::Null)
                    }
                    None => out[field] = want.pointer(p).cloned().unwrap_or(Value::Null),
                }
            }
            Ok(out)
        })
        .await?;
    }
    Ok(())
}

/// Reconciles now and then every `every`, until the server stops.
pub fn spawn<S: Store>(api: std::sync::Arc<ApiServer<S>>, every: std::time::Duration) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            if let Err(e) = reconcile(&api).await {
                warn!(error = %e.message, "reconciling the default/kubernetes Service");
            }
        }
    });
}
