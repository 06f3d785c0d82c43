//! From a Service and its pods to endpoints and ports, as upstream's
//! `staging/src/k8s.io/endpointslice/utils.go` does (pure functions).
use std::net::IpAddr;

use k8s_openapi::{
    api::{
        core::v1::{ObjectReference, Pod, Service, ServicePort},
        discovery::v1::{Endpoint, EndpointConditions, EndpointPort},
    },
    apimachinery::pkg::util::intstr::IntOrString,
};
use kube::ResourceExt as _;

use crate::controllers::pods;

/// `IPv4` or `IPv6`: an EndpointSlice's `addressType`.
pub type AddressType = &'static str;

/// The address types a Service's slices are kept for: its `ipFamilies`; if
/// none, its ClusterIP's family; headless without families, both (upstream's
/// `getAddressTypesForService`).
pub fn address_types(svc: &Service) -> Vec<AddressType> {
    let spec = svc.spec.as_ref();
    let families: Vec<AddressType> = spec
        .and_then(|s| s.ip_families.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|f| match f.as_str() {
            "IPv4" => Some("IPv4"),
            "IPv6" => Some("IPv6"),
            _ => None,
        })
        .collect();
    if !families.is_empty() {
        return families;
    }
    let cluster_ip = spec.and_then(|s| s.cluster_ip.as_deref()).unwrap_or("");
    match cluster_ip.parse::<IpAddr>() {
        Ok(IpAddr::V4(_)) => vec!["IPv4"],
        Ok(IpAddr::V6(_)) => vec!["IPv6"],
        Err(_) => vec!["IPv4", "IPv6"],
    }
}

/// Whether the Service is headless (`clusterIP` empty or `None`).
pub fn is_headless(svc: &Service) -> bool {
    matches!(
        svc.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()),
        None | Some("") | Some("None")
    )
}

/// The pod's IPs of one family, each re-printed after parsing; the pod's
/// `podIP` when `podIPs` is empty.
pub fn pod_ips(pod: &Pod, family: AddressType) -> Vec<String> {
    let Some(status) = pod.status.as_ref() else {
        return Vec::new();
    };
    let listed: Vec<&str> = match status.pod_ips.as_ref().filter(|l| !l.is_empty()) {
        Some(list) => list.iter().map(|p| p.ip.as_str()).collect(),
        None => status.pod_ip.as_deref().into_iter().collect(),
    };
    listed
        .into_iter()
        .filter_map(|ip| ip.parse::<IpAddr>().ok())
        .filter(|ip| (family == "IPv4") == ip.is_ipv4())
        .map(|ip| ip.to_string())
        .collect()
}

/// The container port a Service port's `targetPort` names on this pod: a
/// number as given (unchecked); a name as the first port of any container
/// (sidecar init containers included) with that name and the Service port's
/// protocol; `None` when the name matches nothing — only that port is then
/// left out for this pod (upstream's `podutil.FindPort`).
pub fn resolve_target_port(port: &ServicePort, pod: &Pod) -> Option<i32> {
    let protocol = port.protocol.as_deref().unwrap_or("TCP");
    match &port.target_port {
        None => Some(port.port),
        Some(IntOrString::Int(0)) => Some(port.port),
        Some(IntOrString::Int(n)) => Some(*n),
        Some(IntOrString::String(name)) => {
            if let Ok(n) = name.parse::<i32>() {
                return Some(n);
            }
            let spec = pod.spec.as_ref()?;
            let sidecars = spec
                .init_containers
                .iter()
                .flatten()
                .filter(|c| c.restart_policy.as_deref() == Some("Always"));
            spec.containers
                .iter()
                .chain(sidecars)
                .flat_map(|c| c.ports.iter().flatten())
                .find(|p| {
                    p.name.as_deref() == Some(name.as_str())
                        && p.protocol.as_deref().unwrap_or("TCP") == protocol
                })
                .map(|p| p.container_port)
        }
    }
}

/// The slice ports a pod serves the Service on: one per Service port whose
/// target resolves on this pod.
pub fn endpoint_ports(svc: &Service, pod: &Pod) -> Vec<EndpointPort> {
    svc.spec
        .as_ref()
        .and_then(|s| s.ports.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|p| {
            Some(EndpointPort {
                name: Some(p.name.clone().unwrap_or_default()),
                port: Some(resolve_target_port(p, pod)?),
                protocol: Some(p.protocol.clone().unwrap_or_else(|| "TCP".into())),
                app_protocol: p.app_protocol.clone(),
            })
        })
        .collect()
}

/// A canonical key for a set of ports: pods with equal keys share slices
/// (upstream hashes the sorted list; any stable encoding does).
pub fn port_key(ports: &[EndpointPort]) -> String {
    let mut parts: Vec<String> = ports
        .iter()
        .map(|p| {
            format!(
                "{}/{}/{}/{}",
                p.name.as_deref().unwrap_or(""),
                p.port.unwrap_or(0),
                p.protocol.as_deref().unwrap_or(""),
                p.app_protocol.as_deref().unwrap_or("")
            )
        })
        .collect();
    parts.sort();
    parts.join(",")
}

/// `publishNotReadyAddresses` is set.
pub fn publish_not_ready(svc: &Service) -> bool {
    svc.spec
        .as_ref()
        .and_then(|s| s.publish_not_ready_addresses)
        .unwrap_or(false)
}

/// The endpoint for one pod and family, or `None` when the pod has no
/// address of that family. `zone` is its Node's
/// `topology.kubernetes.io/zone` label.
///
/// Conditions: `serving` = pod Ready; `terminating` = deletionTimestamp
/// set; `ready` = `publishNotReadyAddresses` or (serving and not
/// terminating).
pub fn endpoint_for(
    svc: &Service,
    pod: &Pod,
    family: AddressType,
    zone: Option<&str>,
) -> Option<Endpoint> {
    let addresses = pod_ips(pod, family);
    if addresses.is_empty() {
        return None;
    }
    let serving = pods::is_ready(pod);
    let terminating = pod.metadata.deletion_timestamp.is_some();
    let ready = publish_not_ready(svc) || (serving && !terminating);
    Some(Endpoint {
        addresses,
        conditions: Some(EndpointConditions {
            ready: Some(ready),
            serving: Some(serving),
            terminating: Some(terminating),
        }),
        hostname: hostname(svc, pod),
        node_name: pods::node_name(pod).map(str::to_owned),
        target_ref: Some(ObjectReference {
            kind: Some("Pod".into()),
            namespace: pod.namespace(),
            name: Some(pod.name_any()),
            uid: pod.uid(),
            ..ObjectReference::default()
        }),
        zone: zone.filter(|z| !z.is_empty()).map(str::to_owned),
        ..Endpoint::default()
    })
}

/// `spec.hostname`, only when the pod's `subdomain` is this Service's name
/// (and in its namespace).
pub fn hostname(svc: &Service, pod: &Pod) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    let host = spec.hostname.as_deref().filter(|h| !h.is_empty())?;
    (spec.subdomain.as_deref() == Some(svc.name_any().as_str())
        && pod.namespace() == svc.namespace())
    .then(|| host.to_owned())
}

/// Pods that get endpoints at all: not Succeeded or Failed (terminating
/// pods are kept, with `terminating: true`).
pub fn wants_endpoint(pod: &Pod) -> bool {
    !pods::is_terminal(pod)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn pod(v: serde_json::Value) -> Pod {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn named_target_port_resolves_per_pod_and_protocol() {
        let svc: Service = serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"ports": [
                {"name": "http", "port": 80, "targetPort": "http"},
                {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": "dns"}
            ]}
        }))
        .unwrap();
        let a = pod(
            json!({"metadata": {"name": "a"}, "spec": {"containers": [{"name": "c", "ports": [
                {"name": "http", "containerPort": 3000},
                {"name": "dns", "containerPort": 5353, "protocol": "TCP"}
            ]}]}}),
        );
        let b = pod(
            json!({"metadata": {"name": "b"}, "spec": {"containers": [{"name": "c", "ports": [
                {"name": "http", "containerPort": 3001}
            ]}], "initContainers": [{"name": "side", "restartPolicy": "Always", "ports": [
                {"name": "dns", "containerPort": 53, "protocol": "UDP"}
            ]}]}}),
        );
        let pa = endpoint_ports(&svc, &a);
        let pb = endpoint_ports(&svc, &b);
        // The TCP "dns" port does not serve a UDP Service port.
        assert_eq!(pa.len(), 1);
        assert_eq!(pa[0].port, Some(3000));
        assert_eq!(pb.len(), 2);
        assert_eq!(pb[0].port, Some(3001));
        assert_eq!(pb[1].port, Some(53));
        assert_ne!(port_key(&pa), port_key(&pb));
    }

    #[test]
    fn conditions_follow_readiness_deletion_and_publish_not_ready() {
        let mut svc: Service = serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"clusterIP": "10.96.0.10", "ports": [{"port": 80}]}
        }))
        .unwrap();
        let ready = pod(json!({
            "metadata": {"name": "a", "namespace": "default", "uid": "u1"},
            "spec": {"nodeName": "n1", "containers": []},
            "status": {"podIP": "10.244.1.5", "conditions": [{"type": "Ready", "status": "True"}]}
        }));
        let ep = endpoint_for(&svc, &ready, "IPv4", Some("z1")).unwrap();
        let c = ep.conditions.clone().unwrap();
        assert_eq!(
            (c.ready, c.serving, c.terminating),
            (Some(true), Some(true), Some(false))
        );
        assert_eq!(ep.node_name.as_deref(), Some("n1"));
        assert_eq!(ep.zone.as_deref(), Some("z1"));
        assert!(endpoint_for(&svc, &ready, "IPv6", None).is_none());

        let mut going = ready.clone();
        going.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::now(),
            ));
        let c = endpoint_for(&svc, &going, "IPv4", None)
            .unwrap()
            .conditions
            .unwrap();
        assert_eq!(
            (c.ready, c.serving, c.terminating),
            (Some(false), Some(true), Some(true))
        );

        let not_ready = pod(json!({
            "metadata": {"name": "b", "namespace": "default"},
            "status": {"podIP": "10.244.1.6", "conditions": [{"type": "Ready", "status": "False"}]}
        }));
        let c = endpoint_for(&svc, &not_ready, "IPv4", None)
            .unwrap()
            .conditions
            .unwrap();
        assert_eq!(c.ready, Some(false));
        svc.spec.as_mut().unwrap().publish_not_ready_addresses = Some(true);
        let c = endpoint_for(&svc, &not_ready, "IPv4", None)
            .unwrap()
            .conditions
            .unwrap();
        assert_eq!((c.ready, c.serving), (Some(true), Some(false)));
    }

    #[test]
    fn families_from_the_service() {
        let s = |v| serde_json::from_value::<Service>(v).unwrap();
        assert_eq!(
            address_types(&s(json!({"spec": {"clusterIP": "10.0.0.1"}}))),
            vec!["IPv4"]
        );
        assert_eq!(
            address_types(&s(json!({"spec": {"clusterIP": "fd00::1"}}))),
            vec!["IPv6"]
        );
        assert_eq!(
            address_types(&s(json!({"spec": {"clusterIP": "None"}}))),
            vec!["IPv4", "IPv6"]
        );
        assert_eq!(
            address_types(&s(
                json!({"spec": {"clusterIP": "None", "ipFamilies": ["IPv6"]}})
            )),
            vec!["IPv6"]
        );
    }
}
