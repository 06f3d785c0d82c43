//! The watches: a kube-rs reflector per resource (Services and
//! EndpointSlices with kube-proxy's label selectors, and this node's Node),
//! each nudging the sync loop on every change.
use std::{fmt::Debug, hash::Hash, sync::Arc, time::Duration};

use futures::StreamExt as _;
use k8s_openapi::api::{
    core::v1::{Node, Service},
    discovery::v1::EndpointSlice,
};
use kube::{
    Api, Client, Resource,
    runtime::{
        WatchStreamExt as _,
        reflector::{self, Store},
        watcher,
    },
};
use serde::de::DeserializeOwned;
use tokio::sync::Notify;
use tracing::{debug, warn};

use super::{health::Health, metrics::Metrics};
use crate::desired::{SERVICE_SELECTOR, SLICE_SELECTOR};

const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Read handles of the three stores.
#[derive(Clone)]
pub struct Stores {
    pub services: Store<Service>,
    pub slices: Store<EndpointSlice>,
    pub node: Store<Node>,
}

impl Stores {
    /// Resolves once every store holds its initial list: before that, a
    /// missing object may simply not have arrived, so nothing may be deleted.
    pub async fn wait_until_ready(&self) -> anyhow::Result<()> {
        self.services.wait_until_ready().await?;
        self.slices.wait_until_ready().await?;
        self.node.wait_until_ready().await?;
        Ok(())
    }
}

/// Starts the watches; `changed` is notified after every change.
pub fn start(
    client: &Client,
    node_name: &str,
    changed: &Arc<Notify>,
    health: &Arc<Health>,
    metrics: &Arc<Metrics>,
) -> Stores {
    let ctx = Ctx {
        changed: Arc::clone(changed),
        health: Arc::clone(health),
        metrics: Arc::clone(metrics),
    };
    Stores {
        services: reflect(
            Api::all(client.clone()),
            watcher::Config::default().labels(SERVICE_SELECTOR),
            "services",
            ctx.clone(),
        ),
        slices: reflect(
            Api::all(client.clone()),
            watcher::Config::default().labels(SLICE_SELECTOR),
            "endpointslices",
            ctx.clone(),
        ),
        node: reflect(
            Api::all(client.clone()),
            watcher::Config::default().fields(&format!("metadata.name={node_name}")),
            "nodes",
            ctx,
        ),
    }
}

#[derive(Clone)]
struct Ctx {
    changed: Arc<Notify>,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
}

fn reflect<K>(api: Api<K>, config: watcher::Config, resource: &'static str, ctx: Ctx) -> Store<K>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + Hash + Clone,
{
    let (reader, writer) = reflector::store();
    // The stores keep only what a proxy reads: managedFields and kubectl's
    // last-applied copy of the whole object are most of an object's size.
    let slim = watcher(api, config).modify(|o: &mut K| {
        let meta = o.meta_mut();
        meta.managed_fields = None;
        if let Some(a) = meta.annotations.as_mut() {
            a.remove(LAST_APPLIED);
        }
    });
    let stream = reflector::reflector(writer, slim).backoff(Backoff::default());
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            match event {
                // A re-list ends with InitDone, after which the store is
                // replaced: objects deleted meanwhile are gone from it.
                Ok(
                    watcher::Event::Apply(_) | watcher::Event::Delete(_) | watcher::Event::InitDone,
                ) => {
                    ctx.health.queued();
                    ctx.changed.notify_one();
                }
                Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => {}
                Err(e) => {
                    ctx.metrics.watch_error(resource);
                    warn!(resource, error = %e, "watch failed; retrying");
                }
            }
        }
        debug!(resource, "watch ended");
    });
    reader
}

/// Retry delays of a failed watch: 200 ms doubling to 5 s, so the daemon is
/// back within seconds of the API server.
#[derive(Debug, Clone)]
struct Backoff {
    next: Duration,
}

const FIRST_RETRY: Duration = Duration::from_millis(200);
const MAX_RETRY: Duration = Duration::from_secs(5);

impl Default for Backoff {
    fn default() -> Self {
        Self { next: FIRST_RETRY }
    }
}

impl Iterator for Backoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let d = self.next;
        self.next = (self.next * 2).min(MAX_RETRY);
        Some(d)
    }
}

impl kube::runtime::utils::Backoff for Backoff {
    fn reset(&mut self) {
        self.next = FIRST_RETRY;
    }
}
