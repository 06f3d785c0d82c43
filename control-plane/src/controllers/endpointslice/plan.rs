//! The EndpointSlice reconciler's decisions, as upstream's
//! `staging/src/k8s.io/endpointslice/reconciler.go` makes them (pure: the
//! caller writes the plan).
//!
//! Per address type and per distinct port list:
//! 1. existing slices keep the endpoints still wanted (updated in place if
//!    they changed), drop the rest; a slice left empty is deleted;
//! 2. remaining endpoints top up the slices being updated anyway, fullest
//!    first, to `max_per_slice`;
//! 3. what is left goes, if fewer than a slice's worth, into the unchanged
//!    slice that ends closest to full (it must fit); else into new slices.
//!
//! Slices of port lists nobody wants any more, and slices not owned by the
//! Service, are deleted; a create paired with a delete becomes an update
//! that reuses the name; a Service whose slices would all go keeps one
//! placeholder slice (no ports, no endpoints).
use std::collections::{BTreeMap, HashMap};

use k8s_openapi::{
    api::{
        core::v1::Service,
        discovery::v1::{Endpoint, EndpointPort, EndpointSlice},
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::ResourceExt as _;

use super::endpoint::{self, AddressType};
use crate::controllers::pods;

/// `kubernetes.io/service-name`.
pub const LABEL_SERVICE_NAME: &str = "kubernetes.io/service-name";
/// `endpointslice.kubernetes.io/managed-by`.
pub const LABEL_MANAGED_BY: &str = "endpointslice.kubernetes.io/managed-by";
/// This controller's `managed-by` value (upstream's).
pub const CONTROLLER_NAME: &str = "endpointslice-controller.k8s.io";
/// `service.kubernetes.io/headless`.
pub const LABEL_HEADLESS: &str = "service.kubernetes.io/headless";
/// `endpoints.kubernetes.io/last-change-trigger-time`.
pub const ANNOTATION_TRIGGER_TIME: &str = "endpoints.kubernetes.io/last-change-trigger-time";

/// Wanted endpoints, grouped by address type and port list.
#[derive(Default, Debug)]
pub struct Desired {
    /// (address type, port key) → (ports, endpoints in a stable order).
    pub groups: BTreeMap<(AddressType, String), (Vec<EndpointPort>, Vec<Endpoint>)>,
}

impl Desired {
    /// Adds one pod's endpoint (for one family) with its resolved ports.
    pub fn add(&mut self, family: AddressType, ports: Vec<EndpointPort>, ep: Endpoint) {
        let key = endpoint::port_key(&ports);
        self.groups
            .entry((family, key))
            .or_insert_with(|| (ports, Vec::new()))
            .1
            .push(ep);
    }
}

/// What to write: created slices have no name (the server generates one
/// from `generateName`); updated ones carry their name and resourceVersion.
#[derive(Default, Debug)]
pub struct Plan {
    pub create: Vec<EndpointSlice>,
    pub update: Vec<EndpointSlice>,
    pub delete: Vec<EndpointSlice>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.create.is_empty() && self.update.is_empty() && self.delete.is_empty()
    }
}

/// The labels every slice of `svc` carries: the Service's (minus the
/// reserved keys), the service name, managed-by, and headless when it is.
pub fn slice_labels(svc: &Service) -> BTreeMap<String, String> {
    let mut labels: BTreeMap<String, String> = pods::labels(svc)
        .iter()
        .filter(|(k, _)| {
            k.as_str() != LABEL_SERVICE_NAME
                && k.as_str() != LABEL_MANAGED_BY
                && k.as_str() != LABEL_HEADLESS
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if endpoint::is_headless(svc) {
        labels.insert(LABEL_HEADLESS.into(), String::new());
    }
    labels.insert(LABEL_SERVICE_NAME.into(), svc.name_any());
    labels.insert(LABEL_MANAGED_BY.into(), CONTROLLER_NAME.into());
    labels
}

/// Whether `slice` is owned by `svc` (by uid, kind and apiVersion).
pub fn owned_by(slice: &EndpointSlice, svc: &Service) -> bool {
    let uid = svc.uid().unwrap_or_default();
    slice
        .owner_references()
        .iter()
        .any(|r| r.uid == uid && r.kind == "Service" && r.api_version == "v1")
}

/// A stable identity for an endpoint: its pod and its addresses.
fn endpoint_key(ep: &Endpoint) -> String {
    let target = ep
        .target_ref
        .as_ref()
        .map(|r| {
            format!(
                "{}/{}",
                r.namespace.as_deref().unwrap_or(""),
                r.name.as_deref().unwrap_or("")
            )
        })
        .unwrap_or_default();
    let mut addrs = ep.addresses.clone();
    addrs.sort();
    format!(
        "{target}|{}|{}",
        addrs.join(","),
        ep.hostname.as_deref().unwrap_or("")
    )
}

/// An endpoint compared the way upstream's `EndpointsEqualBeyondHash` does
/// (a target's resourceVersion does not count).
fn same_endpoint(a: &Endpoint, b: &Endpoint) -> bool {
    let strip = |e: &Endpoint| {
        let mut e = e.clone();
        if let Some(t) = e.target_ref.as_mut() {
            t.resource_version = None;
        }
        e
    };
    strip(a) == strip(b)
}

fn new_slice(svc: &Service, family: AddressType, ports: Vec<EndpointPort>) -> EndpointSlice {
    let name = svc.name_any();
    // The bare name when `<name>-` would not be a valid DNS subdomain
    // prefix (upstream's `getEndpointSlicePrefix`).
    let generate_name = if name.len() < 253 {
        format!("{name}-")
    } else {
        name
    };
    EndpointSlice {
        metadata: ObjectMeta {
            generate_name: Some(generate_name),
            namespace: svc.namespace(),
            labels: Some(slice_labels(svc)),
            owner_references: Some(vec![pods::controller_ref(svc)]),
            ..ObjectMeta::default()
        },
        address_type: family.to_owned(),
        endpoints: Vec::new(),
        ports: Some(ports),
    }
}

/// Plans the writes that make `existing` (the slices labelled with this
/// Service's name and our managed-by) match `desired`.
pub fn plan(
    svc: &Service,
    desired: Desired,
    existing: &[EndpointSlice],
    max_per_slice: usize,
) -> Plan {
    let max = max_per_slice.max(1);
    let labels = slice_labels(svc);
    let mut out = Plan::default();
    let families = endpoint::address_types(svc);
    // Owned slices by (family, port key); the rest are deleted.
    let mut by_group: HashMap<(String, String), Vec<EndpointSlice>> = HashMap::new();
    for s in existing {
        if !owned_by(s, svc) || !families.contains(&s.address_type.as_str()) {
            out.delete.push(s.clone());
            continue;
        }
        let key = endpoint::port_key(s.ports.as_deref().unwrap_or_default());
        by_group
            .entry((s.address_type.clone(), key))
            .or_default()
            .push(s.clone());
    }
    let mut unchanged_total = 0;
    for ((family, key), (ports, endpoints)) in desired.groups {
        let mut remaining: BTreeMap<String, Endpoint> = BTreeMap::new();
        let mut order: Vec<String> = Vec::new();
        for ep in endpoints {
            let k = endpoint_key(&ep);
            if remaining.insert(k.clone(), ep).is_none() {
                order.push(k);
            }
        }
        let mut to_update: Vec<EndpointSlice> = Vec::new();
        let mut unchanged: Vec<EndpointSlice> = Vec::new();
        let mut group = by_group
            .remove(&(family.to_owned(), key.clone()))
            .unwrap_or_default();
        group.sort_by_key(|s| s.name_any());
        for mut slice in group {
            let mut changed = slice.labels() != &labels;
            let mut kept = Vec::with_capacity(slice.endpoints.len());
            for ep in &slice.endpoints {
                match remaining.remove(&endpoint_key(ep)) {
                    Some(want) => {
                        changed |= !same_endpoint(ep, &want);
                        kept.push(want);
                    }
                    None => changed = true,
                }
            }
            if kept.is_empty() {
                out.delete.push(slice);
            } else if changed {
                slice.endpoints = kept;
                slice.metadata.labels = Some(labels.clone());
                to_update.push(slice);
            } else {
                unchanged.push(slice);
            }
        }
        let mut left: Vec<Endpoint> = order
            .iter()
            .filter_map(|k| remaining.remove(k))
            .collect::<Vec<_>>();
        left.reverse(); // popped from the back in the original order
        // 2. Top up the slices being written anyway, fullest first.
        to_update.sort_by_key(|s| std::cmp::Reverse(s.endpoints.len()));
        for slice in &mut to_update {
            while slice.endpoints.len() < max {
                let Some(ep) = left.pop() else { break };
                slice.endpoints.push(ep);
            }
        }
        // 3. The rest: into the unchanged slice that ends closest to full,
        // if all of it fits; else into new slices.
        while !left.is_empty() {
            let fill = if left.len() < max {
                unchanged
                    .iter()
                    .enumerate()
                    .filter(|(_, s)| s.endpoints.len() + left.len() <= max)
                    .max_by_key(|(_, s)| s.endpoints.len())
                    .map(|(i, _)| i)
            } else {
                None
            };
            let mut slice = match fill {
                Some(i) => unchanged.remove(i),
                None => new_slice(svc, family, ports.clone()),
            };
            while slice.endpoints.len() < max {
                let Some(ep) = left.pop() else { break };
                slice.endpoints.push(ep);
            }
            if slice.metadata.name.is_some() {
                to_update.push(slice);
            } else {
                out.create.push(slice);
            }
        }
        unchanged_total += unchanged.len();
        out.update.extend(to_update);
    }
    // Port lists (or families) nobody wants any more.
    for (_, slices) in by_group {
        out.delete.extend(slices);
    }
    // A Service with a selector always keeps one slice: a placeholder
    // (no ports, no endpoints) when nothing else would remain.
    if out.create.is_empty() && out.update.is_empty() && unchanged_total == 0 {
        let family = families.first().copied().unwrap_or("IPv4");
        let placeholder = new_slice(svc, family, Vec::new());
        let kept = out.delete.iter().position(|s| {
            owned_by(s, svc)
                && s.address_type == family
                && s.endpoints.is_empty()
                && s.ports.as_deref().unwrap_or_default().is_empty()
                && s.labels() == &labels
        });
        match kept {
            Some(i) => {
                out.delete.remove(i);
            }
            None => out.create.push(placeholder),
        }
    }
    // A create paired with a delete of the same family becomes an update.
    let mut creates = std::mem::take(&mut out.create);
    let mut kept_creates = Vec::new();
    for mut c in creates.drain(..) {
        let reuse = out
            .delete
            .iter()
            .position(|d| d.address_type == c.address_type && owned_by(d, svc));
        match reuse {
            Some(i) => {
                let d = out.delete.remove(i);
                c.metadata.name = d.metadata.name;
                c.metadata.generate_name = None;
                c.metadata.resource_version = d.metadata.resource_version;
                c.metadata.uid = d.metadata.uid;
                c.metadata.annotations = d.metadata.annotations;
                out.update.push(c);
            }
            None => kept_creates.push(c),
        }
    }
    out.create = kept_creates;
    out
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::Pod;
    use serde_json::json;

    use super::*;
    use crate::controllers::endpointslice::endpoint::{endpoint_for, endpoint_ports};

    fn svc() -> Service {
        serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "default", "uid": "svc-uid", "labels": {"team": "a"}},
            "spec": {"clusterIP": "10.96.0.10", "selector": {"app": "web"},
                      "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}
        }))
        .unwrap()
    }

    fn pod(i: usize, port: i32) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": format!("p{i}"), "namespace": "default", "uid": format!("u{i}")},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "ports": [{"name": "http", "containerPort": port}]}]},
            "status": {"podIP": format!("10.244.{}.{}", i / 250, i % 250 + 1),
                       "conditions": [{"type": "Ready", "status": "True"}]}
        }))
        .unwrap()
    }

    fn desired(s: &Service, pods: &[Pod]) -> Desired {
        let mut d = Desired::default();
        for p in pods {
            d.add(
                "IPv4",
                endpoint_ports(s, p),
                endpoint_for(s, p, "IPv4", None).unwrap(),
            );
        }
        d
    }

    /// Applies a plan as the server would (names for creates).
    fn apply(existing: Vec<EndpointSlice>, plan: Plan) -> Vec<EndpointSlice> {
        let mut out: Vec<EndpointSlice> = existing
            .into_iter()
            .filter(|e| {
                !plan
                    .delete
                    .iter()
                    .any(|d| d.metadata.name == e.metadata.name)
            })
            .filter(|e| {
                !plan
                    .update
                    .iter()
                    .any(|d| d.metadata.name == e.metadata.name)
            })
            .collect();
        out.extend(plan.update);
        for (i, mut c) in plan.create.into_iter().enumerate() {
            c.metadata.name = Some(format!("web-{i}-{}", out.len()));
            out.push(c);
        }
        out
    }

    #[test]
    fn two_hundred_fifty_pods_make_three_slices_and_a_rerun_changes_nothing() {
        let s = svc();
        let pods: Vec<Pod> = (0..250).map(|i| pod(i, 8080)).collect();
        let p = plan(&s, desired(&s, &pods), &[], 100);
        assert_eq!(p.create.len(), 3);
        let mut sizes: Vec<usize> = p.create.iter().map(|s| s.endpoints.len()).collect();
        sizes.sort();
        assert_eq!(sizes, vec![50, 100, 100]);
        let c = &p.create[0];
        assert_eq!(c.labels()[LABEL_SERVICE_NAME], "web");
        assert_eq!(c.labels()[LABEL_MANAGED_BY], CONTROLLER_NAME);
        assert_eq!(c.labels()["team"], "a");
        assert_eq!(c.metadata.generate_name.as_deref(), Some("web-"));
        assert_eq!(c.owner_references()[0].uid, "svc-uid");
        let state = apply(vec![], p);
        assert!(plan(&s, desired(&s, &pods), &state, 100).is_empty());
        // One pod fewer: one update, nothing created or deleted.
        let p = plan(&s, desired(&s, &pods[1..]), &state, 100);
        assert_eq!((p.create.len(), p.update.len(), p.delete.len()), (0, 1, 0));
    }

    #[test]
    fn new_endpoints_fill_the_unchanged_slice_closest_to_full() {
        let s = svc();
        let pods: Vec<Pod> = (0..150).map(|i| pod(i, 8080)).collect();
        let state = apply(vec![], plan(&s, desired(&s, &pods), &[], 100));
        let more: Vec<Pod> = (0..160).map(|i| pod(i, 8080)).collect();
        let p = plan(&s, desired(&s, &more), &state, 100);
        assert!(p.create.is_empty());
        assert_eq!(p.update.len(), 1);
        assert_eq!(p.update[0].endpoints.len(), 60);
    }

    #[test]
    fn different_resolved_ports_make_separate_slices() {
        let s = svc();
        let p = plan(&s, desired(&s, &[pod(1, 3000), pod(2, 3001)]), &[], 100);
        assert_eq!(p.create.len(), 2);
    }

    #[test]
    fn no_pods_leave_one_placeholder_and_foreign_slices_go() {
        let s = svc();
        let p = plan(&s, Desired::default(), &[], 100);
        assert_eq!(p.create.len(), 1);
        assert_eq!(p.create[0].ports.as_deref(), Some(&[][..]));
        let state = apply(vec![], p);
        assert!(plan(&s, Desired::default(), &state, 100).is_empty());
        // Pods arrive: the placeholder is reused by name.
        let p = plan(&s, desired(&s, &[pod(1, 8080)]), &state, 100);
        assert_eq!((p.create.len(), p.update.len(), p.delete.len()), (0, 1, 0));
        assert_eq!(p.update[0].metadata.name, state[0].metadata.name);
        // A slice owned by another uid is deleted.
        let mut foreign = state[0].clone();
        foreign.metadata.name = Some("other".into());
        foreign.metadata.owner_references.as_mut().unwrap()[0].uid = "old".into();
        let p = plan(&s, Desired::default(), &[state[0].clone(), foreign], 100);
        assert_eq!(p.delete.len(), 1);
        assert_eq!(p.delete[0].metadata.name.as_deref(), Some("other"));
    }
}
