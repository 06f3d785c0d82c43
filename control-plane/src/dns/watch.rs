//! Keeps the [`Snapshot`] equal to the cluster: kube-rs reflectors over
//! Namespaces, Services and EndpointSlices (what CoreDNS' `kubernetes`
//! plugin watches, pods aside: `pods insecure` needs none), and a task
//! that rebuilds the snapshot after each batch of changes.
use std::{
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::Result;
use futures::StreamExt as _;
use k8s_openapi::api::{
    core::v1::{Namespace, Service},
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
use tracing::{info, warn};

use super::{server::SharedSnapshot, snapshot::Snapshot};

/// Runs one reflector, waking `changed` on every event.
fn spawn_reflector<K>(client: &Client, changed: Arc<Notify>) -> Store<K>
where
    K: Resource<DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (store, writer) = reflector::store::<K>();
    let api: Api<K> = Api::all(client.clone());
    let stream = watcher(api, watcher::Config::default())
        .default_backoff()
        .reflect(writer);
    tokio::spawn(async move {
        futures::pin_mut!(stream);
        while let Some(event) = stream.next().await {
            match event {
                Ok(_) => changed.notify_one(),
                // The backoff retries; the store keeps its last state.
                Err(e) => warn!(kind = K::kind(&()).as_ref(), error = %e, "watch failed"),
            }
        }
    });
    store
}

/// Watches the cluster and keeps `shared` current until the client's
/// streams end. `shared` is marked synced once every watch has listed; the
/// future resolves only on a rebuild task failure.
pub async fn run(client: Client, shared: SharedSnapshot) -> Result<()> {
    let changed = Arc::new(Notify::new());
    let namespaces = spawn_reflector::<Namespace>(&client, Arc::clone(&changed));
    let services = spawn_reflector::<Service>(&client, Arc::clone(&changed));
    let slices = spawn_reflector::<EndpointSlice>(&client, Arc::clone(&changed));
    namespaces.wait_until_ready().await?;
    services.wait_until_ready().await?;
    slices.wait_until_ready().await?;
    info!("caches synced");
    loop {
        let serial = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_secs() as u32;
        let (ns, svc, eps) = (namespaces.state(), services.state(), slices.state());
        let snap = Snapshot::build(
            ns.iter().map(AsRef::as_ref),
            svc.iter().map(AsRef::as_ref),
            eps.iter().map(AsRef::as_ref),
            serial,
        );
        *shared.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(snap);
        // Changes while building wake the next round at once (Notify keeps
        // one permit), so a burst costs at most two rebuilds.
        changed.notified().await;
    }
}
