//! The EndpointSlice mirroring controller (upstream's
//! `endpointslicemirroring-controller`): the `v1/Endpoints` a user writes
//! for a Service without a selector are mirrored into EndpointSlices, so
//! that slice consumers (kube-proxy, `switchyard`) see them.
//!
//! Mirrored: Endpoints whose Service exists and has no selector, unless
//! labelled `endpointslice.kubernetes.io/skip-mirror: "true"` (the
//! Endpoints controller labels its own so) or a leader-election record.
//! Each subset becomes one slice per address family ([`desired`]): its
//! ports; each address an endpoint with `ready` true (`addresses`) or false
//! (`notReadyAddresses`), its `hostname`, `nodeName` and `targetRef`;
//! invalid IPs skipped; at most `--mirroring-max-endpoints-per-subset`
//! (1000) endpoints. Slices carry the Endpoints' labels and annotations
//! (less the trigger-time and last-applied ones), `kubernetes.io/service-name`,
//! `endpointslice.kubernetes.io/managed-by:
//! endpointslicemirroring-controller.k8s.io`, and a controller
//! ownerReference to the Endpoints (so they go with them). Slices no longer
//! wanted — the Service gone or given a selector, the Endpoints skipped —
//! are deleted; edited ones are put back.
use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::IpAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use k8s_openapi::{
    api::{
        core::v1::{EndpointAddress, Endpoints, Service},
        discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice},
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::{
    Api, ResourceExt as _,
    api::{DeleteParams, PostParams},
    runtime::{
        controller::{Action, Config, Controller},
        reflector::{ObjectRef, Store},
    },
};

use super::{
    Backoff, Error, Result, Shared,
    endpointslice::plan::{LABEL_MANAGED_BY, LABEL_SERVICE_NAME},
    pods,
};
use crate::client::{
    self,
    events::{EventType, Recorder},
};

/// Endpoints labelled so are not mirrored.
pub const LABEL_SKIP_MIRROR: &str = "endpointslice.kubernetes.io/skip-mirror";
/// This controller's `managed-by` value (upstream's).
pub const CONTROLLER_NAME: &str = "endpointslicemirroring-controller.k8s.io";
/// Endpoints carrying it are leader-election records, never mirrored.
const LEADER_ANNOTATION: &str = "control-plane.alpha.kubernetes.io/leader";
/// Annotations not copied onto slices.
const SKIPPED_ANNOTATIONS: [&str; 2] = [
    "endpoints.kubernetes.io/last-change-trigger-time",
    "kubectl.kubernetes.io/last-applied-configuration",
];

/// Settings (upstream's `--mirroring-*` flags).
#[derive(Clone, Debug)]
pub struct Settings {
    /// `--mirroring-max-endpoints-per-subset` (1000).
    pub max_endpoints_per_subset: usize,
    /// `--mirroring-concurrent-service-endpoint-syncs` (5).
    pub concurrent_syncs: u16,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            max_endpoints_per_subset: 1000,
            concurrent_syncs: 5,
        }
    }
}

/// Whether `ep` (for `svc`) is to be mirrored.
pub fn should_mirror(ep: &Endpoints, svc: Option<&Service>) -> bool {
    let skip = ep
        .labels()
        .get(LABEL_SKIP_MIRROR)
        .is_some_and(|v| v == "true");
    let leader = ep.annotations().contains_key(LEADER_ANNOTATION);
    let selectorless = svc.is_some_and(|s| {
        s.spec
            .as_ref()
            .and_then(|s| s.selector.as_ref())
            .is_none_or(BTreeMap::is_empty)
    });
    !skip && !leader && selectorless
}

/// One wanted slice: its address type, ports and endpoints.
#[derive(Clone, Debug, PartialEq)]
pub struct Wanted {
    pub address_type: &'static str,
    pub ports: Vec<EndpointPort>,
    pub endpoints: Vec<Endpoint>,
}

fn endpoint(a: &EndpointAddress, ready: bool) -> Endpoint {
    Endpoint {
        addresses: vec![a.ip.clone()],
        conditions: Some(EndpointConditions {
            ready: Some(ready),
            ..EndpointConditions::default()
        }),
        hostname: a.hostname.clone(),
        node_name: a.node_name.clone(),
        target_ref: a.target_ref.clone(),
        ..Endpoint::default()
    }
}

/// The slices `ep` mirrors to: one per subset and address family (subsets
/// with equal ports share one), at most `max` endpoints each. Also returns
/// how many addresses were skipped as invalid and how many for the limit.
pub fn desired(ep: &Endpoints, max: usize) -> (Vec<Wanted>, usize, usize) {
    let mut out: Vec<Wanted> = Vec::new();
    let (mut invalid, mut truncated) = (0, 0);
    for subset in ep.subsets.iter().flatten() {
        let ports: Vec<EndpointPort> = subset
            .ports
            .iter()
            .flatten()
            .map(|p| EndpointPort {
                name: Some(p.name.clone().unwrap_or_default()),
                port: Some(p.port),
                protocol: Some(p.protocol.clone().unwrap_or_else(|| "TCP".into())),
                app_protocol: p.app_protocol.clone(),
            })
            .collect();
        let addresses = subset.addresses.iter().flatten().map(|a| (a, true)).chain(
            subset
                .not_ready_addresses
                .iter()
                .flatten()
                .map(|a| (a, false)),
        );
        for (a, ready) in addresses {
            let family = match a.ip.parse::<IpAddr>() {
                Ok(IpAddr::V4(_)) => "IPv4",
                Ok(IpAddr::V6(_)) => "IPv6",
                Err(_) => {
                    invalid += 1;
                    continue;
                }
            };
            let w = match out
                .iter_mut()
                .find(|w| w.address_type == family && w.ports == ports)
            {
                Some(w) => w,
                None => {
                    out.push(Wanted {
                        address_type: family,
                        ports: ports.clone(),
                        endpoints: Vec::new(),
                    });
                    out.last_mut().expect("just pushed")
                }
            };
            if w.endpoints.len() >= max {
                truncated += 1;
                continue;
            }
            w.endpoints.push(endpoint(a, ready));
        }
    }
    (out, invalid, truncated)
}

/// The labels and annotations a mirrored slice of `ep` carries.
fn metadata_for(ep: &Endpoints) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
    let mut labels = pods::labels(ep).clone();
    labels.insert(LABEL_SERVICE_NAME.into(), ep.name_any());
    labels.insert(LABEL_MANAGED_BY.into(), CONTROLLER_NAME.into());
    let annotations = ep
        .annotations()
        .iter()
        .filter(|(k, _)| !SKIPPED_ANNOTATIONS.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    (labels, annotations)
}

/// Slices written or deleted that the cache does not show yet.
#[derive(Default)]
struct Expected {
    /// name → resourceVersion we wrote.
    written: HashMap<String, String>,
    deleted: HashSet<String>,
    since: Option<Instant>,
}

struct Ctx {
    shared: Arc<Shared>,
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    settings: Settings,
    recorder: Recorder,
    expected: Mutex<HashMap<ObjectRef<Endpoints>, Expected>>,
    backoff: Backoff<ObjectRef<Endpoints>>,
}

fn mirrored_by(slice: &EndpointSlice) -> Option<ObjectRef<Endpoints>> {
    let labels = slice.labels();
    (labels.get(LABEL_MANAGED_BY).map(String::as_str) == Some(CONTROLLER_NAME)).then_some(())?;
    let svc = labels.get(LABEL_SERVICE_NAME)?;
    Some(ObjectRef::new(svc).within(&slice.namespace()?))
}

/// Runs the mirroring controller.
pub async fn run(shared: Arc<Shared>, settings: Settings) -> anyhow::Result<()> {
    let endpoints = shared.endpoints();
    let services = shared.services();
    let slices = shared.endpoint_slices();
    endpoints.ready().await;
    services.ready().await;
    slices.ready().await;
    let ctx = Arc::new(Ctx {
        shared: Arc::clone(&shared),
        services: services.store(),
        slices: slices.store(),
        recorder: shared.recorder("endpointslicemirroring-controller"),
        settings: settings.clone(),
        expected: Mutex::default(),
        backoff: Backoff::new(Duration::from_secs(1), Duration::from_secs(100)),
    });
    let results = Controller::for_stream(endpoints.subscribe(), endpoints.store())
        .watches_stream(services.subscribe(), |svc: Service| {
            Some(ObjectRef::new(&svc.name_any()).within(&svc.namespace()?))
        })
        .watches_stream(slices.subscribe(), |s: EndpointSlice| mirrored_by(&s))
        .with_config(Config::default().concurrency(settings.concurrent_syncs.max(1)))
        .run(reconcile, error_policy, ctx);
    super::drive("endpointslicemirroring", results).await;
    Ok(())
}

fn error_policy(ep: Arc<Endpoints>, err: &Error, ctx: Arc<Ctx>) -> Action {
    if matches!(err, Error::Stale(_)) {
        return Action::requeue(Duration::from_millis(200));
    }
    Action::requeue(ctx.backoff.next(ObjectRef::from_obj(ep.as_ref())))
}

async fn reconcile(ep: Arc<Endpoints>, ctx: Arc<Ctx>) -> Result<Action> {
    let key = ObjectRef::from_obj(ep.as_ref());
    let r = sync(&ep, &ctx, &key).await;
    if r.is_ok() {
        ctx.backoff.reset(&key);
    }
    r
}

impl Ctx {
    /// Whether the cache shows our last writes for `key`.
    fn caught_up(&self, key: &ObjectRef<Endpoints>, ns: &str) -> bool {
        let mut all = self.expected.lock().expect("expected");
        let Some(e) = all.get_mut(key) else {
            return true;
        };
        if e.since
            .is_some_and(|s| s.elapsed() > Duration::from_secs(30))
        {
            all.remove(key);
            return true;
        }
        let get = |n: &str| self.slices.get(&ObjectRef::new(n).within(ns));
        e.written.retain(|n, rv| {
            get(n).is_none_or(|s| {
                let cached: u64 = s
                    .resource_version()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                cached < rv.parse().unwrap_or(0)
            })
        });
        e.deleted.retain(|n| get(n).is_some());
        let done = e.written.is_empty() && e.deleted.is_empty();
        if done {
            all.remove(key);
        }
        done
    }

    fn record(
        &self,
        key: &ObjectRef<Endpoints>,
        written: Vec<EndpointSlice>,
        deleted: Vec<String>,
    ) {
        if written.is_empty() && deleted.is_empty() {
            return;
        }
        let mut all = self.expected.lock().expect("expected");
        let e = all.entry(key.clone()).or_default();
        for s in written {
            e.written
                .insert(s.name_any(), s.resource_version().unwrap_or_default());
        }
        e.deleted.extend(deleted);
        e.since = Some(Instant::now());
    }
}

async fn sync(ep: &Endpoints, ctx: &Ctx, key: &ObjectRef<Endpoints>) -> Result<Action> {
    let ns = ep.namespace().unwrap_or_default();
    let name = ep.name_any();
    if !ctx.caught_up(key, &ns) {
        return Err(Error::Stale(format!(
            "mirrored slices of Endpoints {ns}/{name}"
        )));
    }
    let svc = ctx.services.get(&ObjectRef::new(&name).within(&ns));
    let wanted = if should_mirror(ep, svc.as_deref()) && ep.metadata.deletion_timestamp.is_none() {
        let (w, invalid, truncated) = desired(ep, ctx.settings.max_endpoints_per_subset);
        if invalid > 0 {
            ctx.recorder.publish(
                ep,
                EventType::Warning,
                "AddressTypeNotSupported",
                format!("Skipped {invalid} invalid IP addresses when mirroring to EndpointSlices"),
            );
        }
        if truncated > 0 {
            ctx.recorder.publish(
                ep,
                EventType::Warning,
                "EndpointsTruncated",
                format!(
                    "Skipped {truncated} addresses over the limit of {} per subset",
                    ctx.settings.max_endpoints_per_subset
                ),
            );
        }
        w
    } else {
        Vec::new()
    };
    let mut existing: Vec<Arc<EndpointSlice>> = ctx.slices.state_filter(|s| {
        s.metadata.namespace.as_deref() == Some(ns.as_str())
            && mirrored_by(s).is_some_and(|r| r.name == name)
    });
    existing.sort_by_key(|s| s.name_any());
    let api: Api<EndpointSlice> = Api::namespaced(ctx.shared.client.clone(), &ns);
    let (labels, annotations) = metadata_for(ep);
    let owner = super::pods::controller_ref(ep);
    let mut written = Vec::new();
    let mut deleted = Vec::new();
    let mut used: HashSet<String> = HashSet::new();
    for w in &wanted {
        let found = existing.iter().find(|s| {
            !used.contains(&s.name_any())
                && s.address_type == w.address_type
                && s.ports.clone().unwrap_or_default() == w.ports
        });
        let target = |base: ObjectMeta| EndpointSlice {
            metadata: ObjectMeta {
                labels: Some(labels.clone()),
                annotations: Some(annotations.clone()),
                owner_references: Some(vec![owner.clone()]),
                ..base
            },
            address_type: w.address_type.to_owned(),
            endpoints: w.endpoints.clone(),
            ports: Some(w.ports.clone()),
        };
        let what = |verb: &str| format!("{verb} a mirrored EndpointSlice of Endpoints {ns}/{name}");
        match found {
            Some(s) => {
                used.insert(s.name_any());
                let same = s.endpoints == w.endpoints
                    && s.labels() == &labels
                    && s.annotations() == &annotations
                    && s.owner_references() == std::slice::from_ref(&owner);
                if same {
                    continue;
                }
                let next = target(ObjectMeta {
                    name: s.metadata.name.clone(),
                    namespace: s.metadata.namespace.clone(),
                    resource_version: s.metadata.resource_version.clone(),
                    ..ObjectMeta::default()
                });
                let done = api
                    .replace(&s.name_any(), &PostParams::default(), &next)
                    .await
                    .map_err(Error::api(what("updating")))?;
                written.push(done);
            }
            None => {
                let new = target(ObjectMeta {
                    generate_name: Some(format!("{name}-")),
                    namespace: Some(ns.clone()),
                    ..ObjectMeta::default()
                });
                match api.create(&PostParams::default(), &new).await {
                    Ok(done) => written.push(done),
                    Err(e) if client::is_namespace_terminating(&e) => {}
                    Err(e) => return Err(Error::api(what("creating"))(e)),
                }
            }
        }
    }
    for s in existing.iter().filter(|s| !used.contains(&s.name_any())) {
        match api.delete(&s.name_any(), &DeleteParams::default()).await {
            Ok(_) => deleted.push(s.name_any()),
            Err(e) if client::is_not_found(&e) => {}
            Err(e) => {
                return Err(Error::api(format!(
                    "deleting mirrored EndpointSlice {ns}/{}",
                    s.name_any()
                ))(e));
            }
        }
    }
    ctx.record(key, written, deleted);
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{EndpointPort as CorePort, EndpointSubset};

    use super::*;

    fn addr(ip: &str) -> EndpointAddress {
        EndpointAddress {
            ip: ip.into(),
            ..EndpointAddress::default()
        }
    }

    #[test]
    fn subsets_become_slices_per_family() {
        let ep = Endpoints {
            subsets: Some(vec![
                EndpointSubset {
                    addresses: Some(vec![addr("10.0.0.1"), addr("fd00::1"), addr("nope")]),
                    not_ready_addresses: Some(vec![addr("10.0.0.2")]),
                    ports: Some(vec![CorePort {
                        name: Some("http".into()),
                        port: 80,
                        ..CorePort::default()
                    }]),
                },
                EndpointSubset {
                    addresses: Some(vec![addr("10.0.0.3")]),
                    not_ready_addresses: None,
                    ports: Some(vec![CorePort {
                        name: Some("http".into()),
                        port: 80,
                        ..CorePort::default()
                    }]),
                },
            ]),
            ..Endpoints::default()
        };
        let (w, invalid, truncated) = desired(&ep, 1000);
        assert_eq!((invalid, truncated), (1, 0));
        assert_eq!(w.len(), 2, "IPv4 and IPv6; equal ports share a slice");
        let v4 = w.iter().find(|w| w.address_type == "IPv4").unwrap();
        let ready: Vec<(String, bool)> = v4
            .endpoints
            .iter()
            .map(|e| {
                (
                    e.addresses[0].clone(),
                    e.conditions.as_ref().unwrap().ready.unwrap(),
                )
            })
            .collect();
        assert_eq!(
            ready,
            [
                ("10.0.0.1".to_owned(), true),
                ("10.0.0.2".to_owned(), false),
                ("10.0.0.3".to_owned(), true)
            ]
        );
        assert_eq!(v4.ports[0].protocol.as_deref(), Some("TCP"));
        let (w, _, truncated) = desired(&ep, 2);
        assert_eq!(truncated, 1);
        assert!(w.iter().all(|w| w.endpoints.len() <= 2));
    }

    #[test]
    fn who_is_mirrored() {
        let svc = |selector: Option<&str>| Service {
            spec: Some(k8s_openapi::api::core::v1::ServiceSpec {
                selector: selector.map(|s| BTreeMap::from([("app".to_owned(), s.to_owned())])),
                ..Default::default()
            }),
            ..Service::default()
        };
        let mut ep = Endpoints::default();
        assert!(should_mirror(&ep, Some(&svc(None))));
        assert!(
            !should_mirror(&ep, Some(&svc(Some("web")))),
            "selector Services are the slice controller's"
        );
        assert!(!should_mirror(&ep, None), "no Service, nothing mirrored");
        ep.metadata.labels = Some(BTreeMap::from([(
            LABEL_SKIP_MIRROR.to_owned(),
            "true".to_owned(),
        )]));
        assert!(!should_mirror(&ep, Some(&svc(None))));
    }
}
