//! The controller manager: upstream kube-controller-manager's controllers as
//! clients of the API server, each a kube-rs `runtime::Controller`
//! (reconcile / error_policy / context) over shared watch caches.
//!
//! | name | module | what it keeps true |
//! |---|---|---|
//! | `endpointslice` | [`endpointslice`] | each selector Service's EndpointSlices match its pods |
//! | `endpoint` | [`endpoints`] | each selector Service's legacy Endpoints object |
//! | `endpointslicemirroring` | [`mirroring`] | slices mirrored from user-written Endpoints |
//! | `replicaset`, `replicationcontroller` | [`replicaset`] | `replicas` pods per ReplicaSet / RC |
//! | `deployment` | [`deployment`] | ReplicaSets per template, rolling updates |
//! | `daemonset` | [`daemonset`] | one pod per eligible node |
//! | `job` | [`job`] | pods until `completions` succeed or `backoffLimit` fails |
//! | `garbagecollector` | [`gc`] | dependents follow their owners (ownerReferences) |
//! | `namespace` | [`namespace`] | a terminating namespace is emptied, then removed |
//! | `serviceaccount` | [`serviceaccount`] | a `default` ServiceAccount per namespace |
//! | `nodelifecycle` | [`nodelifecycle`] | Nodes whose Lease stops are `Unknown`, tainted, evicted |
//! | `nodeipam` | [`nodeipam`] | every Node has a `podCIDR` |
//!
//! Every controller retries a failed object with a per-object exponential
//! backoff ([`Backoff`]), reports it by name (log and Warning Event), and
//! never stops the others.
use std::{
    collections::HashMap,
    fmt::Display,
    hash::Hash,
    sync::{Arc, Mutex, OnceLock},
    time::Duration,
};

use futures::{Stream, StreamExt as _};
use k8s_openapi::api::{
    apps::v1::{DaemonSet, Deployment, ReplicaSet},
    batch::v1::Job,
    coordination::v1::Lease,
    core::v1::{Endpoints, Namespace, Node, Pod, ReplicationController, Service, ServiceAccount},
    discovery::v1::EndpointSlice,
};
use kube::{
    Api, Client, Resource,
    runtime::{
        controller::{self, Action},
        reflector::ObjectRef,
        watcher,
    },
};
use serde::de::DeserializeOwned;
use tracing::{debug, warn};

use crate::client::{events::Recorder, informer::Informer};

pub mod daemonset;
pub mod deployment;
pub mod endpoints;
pub mod endpointslice;
pub mod gc;
pub mod job;
pub mod manager;
pub mod mirroring;
pub mod namespace;
pub mod nodeipam;
pub mod nodelifecycle;
pub mod pods;
pub mod replicaset;
pub mod serviceaccount;

/// One process's client and shared watch caches, each started the first
/// time a controller asks for it (a controller run alone watches only what
/// it needs).
pub struct Shared {
    pub client: Client,
    pods: OnceLock<Informer<Pod>>,
    services: OnceLock<Informer<Service>>,
    nodes: OnceLock<Informer<Node>>,
    endpoint_slices: OnceLock<Informer<EndpointSlice>>,
    endpoints: OnceLock<Informer<Endpoints>>,
    replica_sets: OnceLock<Informer<ReplicaSet>>,
    replication_controllers: OnceLock<Informer<ReplicationController>>,
    deployments: OnceLock<Informer<Deployment>>,
    daemon_sets: OnceLock<Informer<DaemonSet>>,
    jobs: OnceLock<Informer<Job>>,
    namespaces: OnceLock<Informer<Namespace>>,
    service_accounts: OnceLock<Informer<ServiceAccount>>,
    node_leases: OnceLock<Informer<Lease>>,
}

macro_rules! informer {
    ($fn:ident, $field:ident, $ty:ty, $api:expr) => {
        #[doc = concat!("The shared cache of `", stringify!($ty), "` objects.")]
        pub fn $fn(&self) -> Informer<$ty> {
            self.$field
                .get_or_init(|| {
                    let api: Api<$ty> = $api(self.client.clone());
                    Informer::spawn(api, watcher::Config::default())
                })
                .clone()
        }
    };
}

impl Shared {
    pub fn new(client: Client) -> Arc<Self> {
        Arc::new(Self {
            client,
            pods: OnceLock::new(),
            services: OnceLock::new(),
            nodes: OnceLock::new(),
            endpoint_slices: OnceLock::new(),
            endpoints: OnceLock::new(),
            replica_sets: OnceLock::new(),
            replication_controllers: OnceLock::new(),
            deployments: OnceLock::new(),
            daemon_sets: OnceLock::new(),
            jobs: OnceLock::new(),
            namespaces: OnceLock::new(),
            service_accounts: OnceLock::new(),
            node_leases: OnceLock::new(),
        })
    }

    informer!(pods, pods, Pod, Api::all);
    informer!(services, services, Service, Api::all);
    informer!(nodes, nodes, Node, Api::all);
    informer!(endpoint_slices, endpoint_slices, EndpointSlice, Api::all);
    informer!(endpoints, endpoints, Endpoints, Api::all);
    informer!(replica_sets, replica_sets, ReplicaSet, Api::all);
    informer!(
        replication_controllers,
        replication_controllers,
        ReplicationController,
        Api::all
    );
    informer!(deployments, deployments, Deployment, Api::all);
    informer!(daemon_sets, daemon_sets, DaemonSet, Api::all);
    informer!(jobs, jobs, Job, Api::all);
    informer!(namespaces, namespaces, Namespace, Api::all);
    informer!(service_accounts, service_accounts, ServiceAccount, Api::all);

    /// Node Leases (namespace `kube-node-lease`).
    pub fn node_leases(&self) -> Informer<Lease> {
        self.node_leases
            .get_or_init(|| {
                let api: Api<Lease> = Api::namespaced(self.client.clone(), "kube-node-lease");
                Informer::spawn(api, watcher::Config::default())
            })
            .clone()
    }

    /// A recorder for Events from `component`.
    pub fn recorder(&self, component: &str) -> Recorder {
        Recorder::new(self.client.clone(), component, None)
    }
}

/// Per-object exponential backoff for `error_policy` (client-go's
/// `ItemExponentialFailureRateLimiter`): `base × 2^failures`, capped.
pub struct Backoff<K> {
    base: Duration,
    cap: Duration,
    failures: Mutex<HashMap<K, u32>>,
}

impl<K: Hash + Eq> Backoff<K> {
    /// Upstream's controller queues: 5 ms doubling (EndpointSlice uses 1 s)
    /// up to 1000 s; here the cap is `cap`.
    pub fn new(base: Duration, cap: Duration) -> Self {
        Self {
            base,
            cap,
            failures: Mutex::default(),
        }
    }

    /// The next delay for `key`, counting this failure.
    pub fn next(&self, key: K) -> Duration {
        let mut f = self.failures.lock().expect("backoff");
        let n = f.entry(key).or_insert(0);
        let d = self.base.saturating_mul(1u32 << (*n).min(20));
        *n += 1;
        d.min(self.cap)
    }

    /// Forgets `key`'s failures (after a success).
    pub fn reset(&self, key: &K) {
        self.failures.lock().expect("backoff").remove(key);
    }
}

/// Drives a controller's result stream, logging each failed object by
/// name; returns when the stream ends.
pub async fn drive<K, E, QE>(
    name: &'static str,
    results: impl Stream<Item = Result<(ObjectRef<K>, Action), controller::Error<E, QE>>>,
) where
    K: Resource,
    E: Display + std::error::Error + 'static,
    QE: Display + std::error::Error + 'static,
{
    results
        .for_each(|r| async move {
            match r {
                Ok((obj, _)) => debug!(controller = name, object = %obj, "reconciled"),
                Err(controller::Error::ReconcilerFailed(e, obj)) => {
                    warn!(controller = name, object = %obj, error = %e, "reconcile failed")
                }
                Err(controller::Error::ObjectNotFound(_)) => {}
                Err(e) => debug!(controller = name, error = %e, "controller"),
            }
        })
        .await;
}

/// Errors a reconcile can end with; each names the object.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An API call failed.
    #[error("{what}: {source}")]
    Api {
        what: String,
        #[source]
        source: kube::Error,
    },
    /// The object is malformed (reported, retried with backoff).
    #[error("{0}")]
    Invalid(String),
    /// The cache has not yet seen our own last write; retried shortly.
    #[error("stale cache: {0}")]
    Stale(String),
    /// Something the object needs is missing (retried).
    #[error("{0}")]
    Waiting(String),
}

impl Error {
    /// Wraps an API error with what was being done.
    pub fn api(what: impl Into<String>) -> impl FnOnce(kube::Error) -> Self {
        let what = what.into();
        move |source| Self::Api { what, source }
    }
}

/// A reconcile's result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Objects in a cache, as owned `Arc`s, filtered.
pub fn cached<K, F>(informer: &Informer<K>, f: F) -> Vec<Arc<K>>
where
    K: Resource<DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
    F: Fn(&K) -> bool,
{
    informer.store().state_filter(|o| f(o))
}
