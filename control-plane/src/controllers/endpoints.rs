//! The legacy Endpoints controller (upstream's `endpoints-controller`,
//! still run because older clients read `v1/Endpoints`): every Service with
//! a selector has an Endpoints object of the same name listing its pods.
//!
//! - Addresses: each pod's first IP of the Service's first family, with
//!   `nodeName`, `targetRef` and `hostname` (when its `subdomain` is the
//!   Service); under `addresses` when the pod is Ready or the Service
//!   publishes not-ready addresses, else `notReadyAddresses`. Terminating
//!   pods are left out unless `publishNotReadyAddresses`; Succeeded/Failed
//!   pods always.
//! - Ports: one per Service port, a named `targetPort` resolved per pod;
//!   pods with the same resolved ports share a subset (upstream's
//!   `RepackSubsets`). A headless Service without ports gets subsets
//!   without ports.
//! - More than 1000 addresses: ready ones are kept first and the object is
//!   annotated `endpoints.kubernetes.io/over-capacity: truncated`.
//! - Labels: the Service's, plus `service.kubernetes.io/headless` when
//!   headless and `endpointslice.kubernetes.io/skip-mirror: "true"` (so the
//!   mirroring controller leaves them alone, as upstream). No ownerReference (as upstream): when the Service goes, this
//!   controller deletes the Endpoints itself — and any Endpoints whose
//!   Service does not exist (checked by a live read), except leader-election
//!   records.
//!
//! Nothing is written when subsets, labels and the capacity annotation are
//! unchanged.
use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
    time::Duration,
};

use k8s_openapi::api::core::v1::{
    EndpointAddress, EndpointPort, EndpointSubset, Endpoints, ObjectReference, Pod, Service,
};
use kube::{
    Api, ResourceExt as _,
    api::{DeleteParams, ObjectMeta, PostParams},
    core::SelectorExt as _,
    runtime::{
        controller::{Action, Config, Controller},
        reflector::{ObjectRef, Store},
    },
};

use super::{
    Backoff, Error, Result, Shared,
    endpointslice::{endpoint, pod_to_services},
    pods,
};
use crate::client::{
    self,
    events::{EventType, Recorder},
};

/// Most addresses one Endpoints object holds.
pub const MAX_ADDRESSES: usize = 1000;
/// `endpoints.kubernetes.io/over-capacity`.
pub const OVER_CAPACITY: &str = "endpoints.kubernetes.io/over-capacity";
/// Endpoints used as leader-election records are never touched.
pub const LEADER_ANNOTATION: &str = "control-plane.alpha.kubernetes.io/leader";

/// The subsets for `svc` over `pods`, and whether they were truncated.
pub fn desired_subsets<P: std::borrow::Borrow<Pod>>(
    svc: &Service,
    pods: &[P],
) -> (Vec<EndpointSubset>, bool) {
    let family = endpoint::address_types(svc)[0];
    let publish = endpoint::publish_not_ready(svc);
    let svc_ports = svc
        .spec
        .as_ref()
        .and_then(|s| s.ports.clone())
        .unwrap_or_default();
    // (sorted port list) → (ready addresses, not-ready addresses)
    type Group = (Vec<EndpointAddress>, Vec<EndpointAddress>);
    /// Sorted (name, port, protocol) of a subset's ports.
    type PortsKey = Vec<(String, i32, String)>;
    let mut groups: BTreeMap<PortsKey, (Vec<EndpointPort>, Group)> = BTreeMap::new();
    for pod in pods {
        let pod: &Pod = pod.borrow();
        if pods::is_terminal(pod) || (!publish && pod.metadata.deletion_timestamp.is_some()) {
            continue;
        }
        let Some(ip) = endpoint::pod_ips(pod, family).into_iter().next() else {
            continue;
        };
        let address = EndpointAddress {
            ip,
            hostname: endpoint::hostname(svc, pod),
            node_name: pods::node_name(pod).map(str::to_owned),
            target_ref: Some(ObjectReference {
                kind: Some("Pod".into()),
                namespace: pod.namespace(),
                name: Some(pod.name_any()),
                uid: pod.uid(),
                ..ObjectReference::default()
            }),
        };
        let ports: Vec<EndpointPort> = svc_ports
            .iter()
            .filter_map(|p| {
                Some(EndpointPort {
                    name: p.name.clone().filter(|n| !n.is_empty()),
                    port: endpoint::resolve_target_port(p, pod)?,
                    protocol: Some(p.protocol.clone().unwrap_or_else(|| "TCP".into())),
                    app_protocol: p.app_protocol.clone(),
                })
            })
            .collect();
        if ports.is_empty() && !svc_ports.is_empty() {
            continue;
        }
        let mut key: Vec<(String, i32, String)> = ports
            .iter()
            .map(|p| {
                (
                    p.name.clone().unwrap_or_default(),
                    p.port,
                    p.protocol.clone().unwrap_or_default(),
                )
            })
            .collect();
        key.sort();
        let entry = groups
            .entry(key)
            .or_insert_with(|| (ports, Group::default()));
        if publish || pods::is_ready(pod) {
            entry.1.0.push(address);
        } else {
            entry.1.1.push(address);
        }
    }
    // Ready addresses are kept first when over capacity.
    let total: usize = groups.values().map(|(_, (r, n))| r.len() + n.len()).sum();
    let truncated = total > MAX_ADDRESSES;
    let mut budget = MAX_ADDRESSES;
    let mut out = Vec::new();
    for (_, (ports, (mut ready, mut not_ready))) in groups {
        ready.sort_by(|a, b| a.ip.cmp(&b.ip));
        not_ready.sort_by(|a, b| a.ip.cmp(&b.ip));
        ready.truncate(budget);
        budget -= ready.len();
        out.push((ports, ready, not_ready));
    }
    for (_, _, not_ready) in &mut out {
        not_ready.truncate(budget);
        budget -= not_ready.len();
    }
    let subsets = out
        .into_iter()
        .filter(|(_, r, n)| !r.is_empty() || !n.is_empty())
        .map(|(mut ports, r, n)| {
            ports.sort_by(|a, b| (&a.name, a.port).cmp(&(&b.name, b.port)));
            EndpointSubset {
                addresses: (!r.is_empty()).then_some(r),
                not_ready_addresses: (!n.is_empty()).then_some(n),
                ports: (!ports.is_empty()).then_some(ports),
            }
        })
        .collect();
    (subsets, truncated)
}

struct Ctx {
    shared: Arc<Shared>,
    pods: Store<Pod>,
    services: Store<Service>,
    endpoints: Store<Endpoints>,
    recorder: Recorder,
    backoff: Backoff<ObjectRef<Service>>,
    gc_backoff: Backoff<ObjectRef<Endpoints>>,
}

/// Runs the controller (and its clean-up of Endpoints without a Service).
pub async fn run(shared: Arc<Shared>, workers: u16) -> anyhow::Result<()> {
    let services = shared.services();
    let pods_inf = shared.pods();
    let eps = shared.endpoints();
    services.ready().await;
    pods_inf.ready().await;
    eps.ready().await;
    let ctx = Arc::new(Ctx {
        recorder: shared.recorder("endpoint-controller"),
        shared: Arc::clone(&shared),
        pods: pods_inf.store(),
        services: services.store(),
        endpoints: eps.store(),
        backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(300)),
        gc_backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(300)),
    });
    let writer = Controller::for_stream(services.subscribe(), services.store())
        .watches_stream(
            pods_inf.subscribe(),
            pod_to_services(services.store(), pods_inf.store()),
        )
        .watches_stream(eps.subscribe(), |e: Endpoints| {
            e.namespace()
                .map(|ns| ObjectRef::<Service>::new(&e.name_any()).within(&ns))
        })
        .with_config(Config::default().concurrency(workers))
        .run(
            reconcile,
            |s: Arc<Service>, _e: &Error, ctx: Arc<Ctx>| {
                Action::requeue(ctx.backoff.next(ObjectRef::from_obj(s.as_ref())))
            },
            Arc::clone(&ctx),
        );
    // Endpoints whose Service is gone: woken by the Endpoints themselves
    // (every one at start, as upstream's checkLeftoverEndpoints) and by
    // Service deletions.
    let cleaner = Controller::for_stream(eps.subscribe(), eps.store())
        .watches_stream(services.subscribe(), |s: Service| {
            s.namespace()
                .map(|ns| ObjectRef::<Endpoints>::new(&s.name_any()).within(&ns))
        })
        .run(
            clean,
            |e: Arc<Endpoints>, _err: &Error, ctx: Arc<Ctx>| {
                Action::requeue(ctx.gc_backoff.next(ObjectRef::from_obj(e.as_ref())))
            },
            ctx,
        );
    tokio::join!(
        super::drive("endpoint", writer),
        super::drive("endpoint-cleanup", cleaner)
    );
    Ok(())
}

fn labels_for(svc: &Service) -> BTreeMap<String, String> {
    let mut labels = pods::labels(svc).clone();
    if endpoint::is_headless(svc) {
        labels.insert("service.kubernetes.io/headless".into(), String::new());
    } else {
        labels.remove("service.kubernetes.io/headless");
    }
    labels.insert(super::mirroring::LABEL_SKIP_MIRROR.into(), "true".into());
    labels
}

async fn reconcile(svc: Arc<Service>, ctx: Arc<Ctx>) -> Result<Action> {
    let spec = svc.spec.clone().unwrap_or_default();
    let Some(selector) = spec.selector.as_ref() else {
        return Ok(Action::await_change());
    };
    if spec.type_.as_deref() == Some("ExternalName") || svc.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = svc.namespace().unwrap_or_default();
    let name = svc.name_any();
    let selector = pods::map_selector(selector);
    let selected = ctx.pods.state_filter(|p| {
        p.metadata.namespace.as_deref() == Some(ns.as_str()) && selector.matches(pods::labels(p))
    });
    let (subsets, truncated) = desired_subsets(&svc, &selected);
    let labels = labels_for(&svc);
    let current = ctx.endpoints.get(&ObjectRef::new(&name).within(&ns));
    let api: Api<Endpoints> = Api::namespaced(ctx.shared.client.clone(), &ns);
    let mut annotations: BTreeMap<String, String> = current
        .as_ref()
        .map(|e| e.annotations().clone())
        .unwrap_or_default();
    if truncated {
        annotations.insert(OVER_CAPACITY.into(), "truncated".into());
    } else {
        annotations.remove(OVER_CAPACITY);
    }
    let want_subsets = (!subsets.is_empty()).then_some(subsets);
    let result = match current {
        Some(cur) => {
            if cur.subsets == want_subsets
                && cur.labels() == &labels
                && cur.annotations() == &annotations
            {
                return Ok(Action::await_change());
            }
            let mut next = cur.as_ref().clone();
            next.subsets = want_subsets;
            next.metadata.labels = Some(labels);
            next.metadata.annotations = (!annotations.is_empty()).then_some(annotations);
            api.replace(&name, &PostParams::default(), &next)
                .await
                .map(|_| ())
        }
        None => {
            let e = Endpoints {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    namespace: Some(ns.clone()),
                    labels: Some(labels),
                    annotations: (!annotations.is_empty()).then_some(annotations),
                    ..ObjectMeta::default()
                },
                subsets: want_subsets,
            };
            match api.create(&PostParams::default(), &e).await {
                Err(e) if client::is_namespace_terminating(&e) => Ok(()),
                r => r.map(|_| ()),
            }
        }
    };
    match result {
        Ok(()) => {
            ctx.backoff.reset(&ObjectRef::from_obj(svc.as_ref()));
            Ok(Action::await_change())
        }
        Err(e) => {
            ctx.recorder.publish(
                svc.as_ref(),
                EventType::Warning,
                "FailedToUpdateEndpoint",
                format!("Failed to update endpoint {ns}/{name}: {e}"),
            );
            Err(Error::api(format!("writing Endpoints {ns}/{name}"))(e))
        }
    }
}

async fn clean(eps: Arc<Endpoints>, ctx: Arc<Ctx>) -> Result<Action> {
    if eps.annotations().contains_key(LEADER_ANNOTATION) {
        return Ok(Action::await_change());
    }
    let ns = eps.namespace().unwrap_or_default();
    let name = eps.name_any();
    if ctx
        .services
        .get(&ObjectRef::new(&name).within(&ns))
        .is_some()
    {
        return Ok(Action::await_change());
    }
    // The cache may lag a new Service: ask the server.
    let services: Api<Service> = Api::namespaced(ctx.shared.client.clone(), &ns);
    if services
        .get_opt(&name)
        .await
        .map_err(Error::api(format!("reading Service {ns}/{name}")))?
        .is_some()
    {
        return Ok(Action::await_change());
    }
    let api: Api<Endpoints> = Api::namespaced(ctx.shared.client.clone(), &ns);
    let dp = DeleteParams {
        preconditions: Some(kube::api::Preconditions {
            uid: eps.uid(),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    match api.delete(&name, &dp).await {
        Ok(_) => Ok(Action::await_change()),
        Err(e) if client::is_not_found(&e) || client::is_conflict(&e) => Ok(Action::await_change()),
        Err(e) => Err(Error::api(format!(
            "deleting Endpoints {ns}/{name} of a deleted Service"
        ))(e)),
    }
}

/// Sorted (ip, ready) pairs of every address, for tests and logs.
pub fn addresses(e: &Endpoints) -> BTreeSet<(String, bool)> {
    e.subsets
        .iter()
        .flatten()
        .flat_map(|s| {
            s.addresses
                .iter()
                .flatten()
                .map(|a| (a.ip.clone(), true))
                .chain(
                    s.not_ready_addresses
                        .iter()
                        .flatten()
                        .map(|a| (a.ip.clone(), false)),
                )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn subsets_group_pods_by_resolved_ports_and_readiness() {
        let svc: Service = serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"clusterIP": "10.96.0.10", "selector": {"app": "web"},
                     "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}
        }))
        .unwrap();
        let pod = |name: &str, ip: &str, port: i32, ready: bool, deleting: bool| -> Pod {
            let mut p: Pod = serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": "default"},
                "spec": {"nodeName": "n1", "containers": [{"name": "c", "ports": [{"name": "http", "containerPort": port}]}]},
                "status": {"podIP": ip, "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]}
            }))
            .unwrap();
            if deleting {
                p.metadata.deletion_timestamp =
                    Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                        k8s_openapi::jiff::Timestamp::now(),
                    ));
            }
            p
        };
        let pods = vec![
            pod("a", "10.0.0.1", 8080, true, false),
            pod("b", "10.0.0.2", 8080, false, false),
            pod("c", "10.0.0.3", 9090, true, false),
            pod("d", "10.0.0.4", 8080, true, true),
        ];
        let (subsets, truncated) = desired_subsets(&svc, &pods);
        assert!(!truncated);
        assert_eq!(subsets.len(), 2);
        let s8080 = subsets
            .iter()
            .find(|s| s.ports.as_ref().unwrap()[0].port == 8080)
            .unwrap();
        assert_eq!(s8080.addresses.as_ref().unwrap().len(), 1);
        assert_eq!(
            s8080.not_ready_addresses.as_ref().unwrap()[0].ip,
            "10.0.0.2"
        );
        assert_eq!(
            s8080.ports.as_ref().unwrap()[0].name.as_deref(),
            Some("http")
        );
        let many: Vec<Pod> = (0..1200)
            .map(|i| {
                pod(
                    &format!("p{i}"),
                    &format!("10.1.{}.{}", i / 250, i % 250 + 1),
                    8080,
                    i % 2 == 0,
                    false,
                )
            })
            .collect();
        let (subsets, truncated) = desired_subsets(&svc, &many);
        assert!(truncated);
        let s = &subsets[0];
        assert_eq!(s.addresses.as_ref().unwrap().len(), 600);
        assert_eq!(s.not_ready_addresses.as_ref().unwrap().len(), 400);
    }
}
