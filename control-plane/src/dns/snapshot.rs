//! What the DNS server knows of the cluster: Namespaces, Services and the
//! ready endpoints of their EndpointSlices, indexed for lookups.
//!
//! A [`Snapshot`] is built whole from the watch caches' current objects
//! ([`Snapshot::build`], pure) and swapped in after every batch of changes,
//! so a query always sees one consistent state.
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::IpAddr,
};

use k8s_openapi::api::{
    core::v1::{Namespace, Service},
    discovery::v1::EndpointSlice,
};

/// The label naming an EndpointSlice's Service (`discovery.k8s.io/v1`).
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// A Service port as DNS publishes it (SRV records).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Port {
    /// The port's name; empty for an unnamed port.
    pub name: String,
    /// `TCP`, `UDP` or `SCTP`, as the API spells it.
    pub protocol: String,
    /// The port number; `None` for the sentinel of a slice without ports
    /// (CoreDNS' port -1: A records, no SRV).
    pub port: Option<u16>,
}

/// How a Service is published.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServiceKind {
    /// A virtual IP per family (`spec.clusterIPs`).
    ClusterIp(Vec<IpAddr>),
    /// `clusterIP: None`: the ready endpoints' addresses.
    Headless,
    /// `type: ExternalName`: a CNAME to `spec.externalName`.
    ExternalName(String),
}

/// One Service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceRecord {
    /// `metadata.namespace`.
    pub namespace: String,
    /// `metadata.name`.
    pub name: String,
    /// How it is published.
    pub kind: ServiceKind,
    /// `spec.ports` (ClusterIP Services' SRV records).
    pub ports: Vec<Port>,
}

/// One ready endpoint address of a Service, with its slice's ports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointRecord {
    /// One of the endpoint's `addresses`.
    pub ip: IpAddr,
    /// The DNS label naming the endpoint under its Service: the slice's
    /// `hostname`, else the address with `.`/`:` turned into `-` (CoreDNS
    /// without `endpoint_pod_names`).
    pub label: String,
    /// The ports of the slice(s) the address is in.
    pub ports: Vec<Port>,
}

/// A name a PTR record points back to, by parts (the zone is added when
/// answering).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ReverseTarget {
    /// The endpoint's label for an endpoint address; `None` for a ClusterIP.
    pub endpoint: Option<String>,
    /// The Service's name.
    pub service: String,
    /// The Service's namespace.
    pub namespace: String,
}

/// The indexed state one query is answered from.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Whether every watch has listed once; until then missing names are
    /// SERVFAIL rather than NXDOMAIN (CoreDNS before its first sync).
    pub synced: bool,
    /// Namespace names.
    pub namespaces: BTreeSet<String>,
    /// By (namespace, name).
    pub services: HashMap<(String, String), ServiceRecord>,
    /// Ready endpoints by (namespace, Service name), merged over slices,
    /// each address once.
    pub endpoints: HashMap<(String, String), Vec<EndpointRecord>>,
    /// PTR targets of ClusterIPs.
    pub cluster_ips: HashMap<IpAddr, ReverseTarget>,
    /// PTR targets of ready endpoint addresses (possibly several Services).
    pub endpoint_ips: HashMap<IpAddr, BTreeSet<ReverseTarget>>,
    /// SOA serial: seconds since the epoch when this snapshot was built
    /// (CoreDNS uses the time of the last change).
    pub serial: u32,
}

/// The DNS label of an endpoint: its hostname if set, else the dashed
/// address (`10-244-1-5`, `fd00--5`), as CoreDNS' `endpointHostname`.
pub fn endpoint_label(ip: IpAddr, hostname: Option<&str>) -> String {
    match hostname {
        Some(h) if !h.is_empty() => h.to_ascii_lowercase(),
        _ => ip.to_string().replace(['.', ':'], "-"),
    }
}

/// The ports of a Service's spec, named or not.
fn service_ports(svc: &Service) -> Vec<Port> {
    let spec = svc.spec.as_ref();
    spec.and_then(|s| s.ports.as_ref())
        .map(|ports| {
            ports
                .iter()
                .map(|p| Port {
                    name: p.name.clone().unwrap_or_default(),
                    protocol: p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                    port: u16::try_from(p.port).ok(),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// How a Service is published, or `None` when it publishes nothing (no
/// usable ClusterIP and not headless or ExternalName).
fn service_kind(svc: &Service) -> Option<ServiceKind> {
    let spec = svc.spec.as_ref()?;
    if spec.type_.as_deref() == Some("ExternalName") {
        let target = spec.external_name.as_deref()?.trim_end_matches('.');
        return (!target.is_empty())
            .then(|| ServiceKind::ExternalName(target.to_ascii_lowercase()));
    }
    let ips: Vec<&str> = match (&spec.cluster_ips, &spec.cluster_ip) {
        (Some(ips), _) if !ips.is_empty() => ips.iter().map(String::as_str).collect(),
        (_, Some(ip)) => vec![ip.as_str()],
        _ => vec![],
    };
    if ips.first() == Some(&"None") {
        return Some(ServiceKind::Headless);
    }
    let parsed: Vec<IpAddr> = ips.iter().filter_map(|ip| ip.parse().ok()).collect();
    (!parsed.is_empty()).then_some(ServiceKind::ClusterIp(parsed))
}

impl Snapshot {
    /// Indexes the watch caches' objects. Pure. Objects that cannot be
    /// published (a Service without a usable address, an endpoint address
    /// that does not parse) are left out, never failing the rest.
    ///
    /// Endpoints follow CoreDNS' `EndpointSliceToEndpoints`: only
    /// `conditions.ready` true or unset counts, each address gets the
    /// slice's ports (or a port-less sentinel when the slice has none).
    pub fn build<'a>(
        namespaces: impl IntoIterator<Item = &'a Namespace>,
        services: impl IntoIterator<Item = &'a Service>,
        slices: impl IntoIterator<Item = &'a EndpointSlice>,
        serial: u32,
    ) -> Self {
        let mut snap = Snapshot {
            synced: true,
            serial,
            ..Snapshot::default()
        };
        for ns in namespaces {
            if let Some(name) = &ns.metadata.name {
                snap.namespaces.insert(name.clone());
            }
        }
        for svc in services {
            let (Some(ns), Some(name)) = (&svc.metadata.namespace, &svc.metadata.name) else {
                continue;
            };
            let Some(kind) = service_kind(svc) else {
                continue;
            };
            if let ServiceKind::ClusterIp(ips) = &kind {
                for ip in ips {
                    snap.cluster_ips.insert(
                        *ip,
                        ReverseTarget {
                            endpoint: None,
                            service: name.clone(),
                            namespace: ns.clone(),
                        },
                    );
                }
            }
            snap.services.insert(
                (ns.clone(), name.clone()),
                ServiceRecord {
                    namespace: ns.clone(),
                    name: name.clone(),
                    kind,
                    ports: service_ports(svc),
                },
            );
        }
        // Slices in a stable order so that merged endpoints are too.
        let mut by_service: BTreeMap<(String, String, String), &EndpointSlice> = BTreeMap::new();
        for slice in slices {
            let meta = &slice.metadata;
            let service = meta.labels.as_ref().and_then(|l| l.get(SERVICE_NAME_LABEL));
            let (Some(ns), Some(service), Some(name)) = (&meta.namespace, service, &meta.name)
            else {
                continue;
            };
            by_service.insert((ns.clone(), service.clone(), name.clone()), slice);
        }
        for ((ns, service, _), slice) in by_service {
            let ports: Vec<Port> = match &slice.ports {
                Some(ports) if !ports.is_empty() => ports
                    .iter()
                    .map(|p| Port {
                        name: p.name.clone().unwrap_or_default(),
                        protocol: p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                        port: p.port.and_then(|p| u16::try_from(p).ok()),
                    })
                    .collect(),
                _ => vec![Port {
                    name: String::new(),
                    protocol: String::new(),
                    port: None,
                }],
            };
            let list = snap
                .endpoints
                .entry((ns.clone(), service.clone()))
                .or_default();
            for ep in &slice.endpoints {
                let ready = ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
                if !ready {
                    continue;
                }
                for addr in &ep.addresses {
                    let Ok(ip) = addr.parse::<IpAddr>() else {
                        continue;
                    };
                    let label = endpoint_label(ip, ep.hostname.as_deref());
                    if let Some(existing) = list.iter_mut().find(|e| e.ip == ip) {
                        // The same address in two slices (ports split over
                        // slices): one endpoint with both slices' ports.
                        for p in &ports {
                            if !existing.ports.contains(p) {
                                existing.ports.push(p.clone());
                            }
                        }
                        continue;
                    }
                    snap.endpoint_ips
                        .entry(ip)
                        .or_default()
                        .insert(ReverseTarget {
                            endpoint: Some(label.clone()),
                            service: service.clone(),
                            namespace: ns.clone(),
                        });
                    list.push(EndpointRecord {
                        ip,
                        label,
                        ports: ports.clone(),
                    });
                }
            }
        }
        snap
    }

    /// The Service `namespace/name`, if published.
    pub fn service(&self, namespace: &str, name: &str) -> Option<&ServiceRecord> {
        self.services.get(&(namespace.to_owned(), name.to_owned()))
    }

    /// The ready endpoints of Service `namespace/name`.
    pub fn endpoints_of(&self, namespace: &str, name: &str) -> &[EndpointRecord] {
        self.endpoints
            .get(&(namespace.to_owned(), name.to_owned()))
            .map_or(&[], Vec::as_slice)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yaml<T: serde::de::DeserializeOwned>(s: &str) -> T {
        serde_yaml::from_str(s).unwrap()
    }

    #[test]
    fn builds_services_endpoints_and_reverse_index() {
        let ns: Namespace = yaml("metadata: {name: default}");
        let svcs: Vec<Service> = vec![
            yaml(
                "metadata: {name: web, namespace: default}\nspec: {clusterIP: 10.96.0.20, clusterIPs: [10.96.0.20], ports: [{name: http, port: 80, protocol: TCP}]}",
            ),
            yaml(
                "metadata: {name: db, namespace: default}\nspec: {clusterIP: None, ports: [{name: pg, port: 5432}]}",
            ),
            yaml(
                "metadata: {name: ext, namespace: default}\nspec: {type: ExternalName, externalName: Foo.Example.com.}",
            ),
            yaml("metadata: {name: broken, namespace: default}\nspec: {clusterIP: nonsense}"),
        ];
        let slices: Vec<EndpointSlice> = vec![
            yaml(
                "metadata: {name: db-a, namespace: default, labels: {kubernetes.io/service-name: db}}\naddressType: IPv4\nports: [{name: pg, port: 5432, protocol: TCP}]\nendpoints:\n- {addresses: [10.244.1.5], hostname: db-0, conditions: {ready: true}}\n- {addresses: [10.244.1.6], conditions: {}}\n- {addresses: [10.244.1.7], conditions: {ready: false}}\n",
            ),
            yaml(
                "metadata: {name: db-b, namespace: default, labels: {kubernetes.io/service-name: db}}\naddressType: IPv4\nendpoints:\n- {addresses: [10.244.1.5]}\n",
            ),
        ];
        let snap = Snapshot::build([&ns], &svcs, &slices, 7);
        assert!(snap.synced);
        assert_eq!(
            snap.service("default", "web").unwrap().kind,
            ServiceKind::ClusterIp(vec!["10.96.0.20".parse().unwrap()])
        );
        assert_eq!(
            snap.service("default", "db").unwrap().kind,
            ServiceKind::Headless
        );
        assert_eq!(
            snap.service("default", "ext").unwrap().kind,
            ServiceKind::ExternalName("foo.example.com".into())
        );
        assert!(snap.service("default", "broken").is_none());
        let eps = snap.endpoints_of("default", "db");
        let labels: Vec<&str> = eps.iter().map(|e| e.label.as_str()).collect();
        assert_eq!(
            labels,
            ["db-0", "10-244-1-6"],
            "the unready endpoint is left out"
        );
        // 10.244.1.5 is in both slices: one endpoint, both slices' ports.
        assert_eq!(eps[0].ports.len(), 2);
        assert_eq!(
            snap.cluster_ips[&"10.96.0.20".parse::<IpAddr>().unwrap()].service,
            "web"
        );
        let back = &snap.endpoint_ips[&"10.244.1.6".parse::<IpAddr>().unwrap()];
        assert_eq!(
            back.iter().next().unwrap().endpoint.as_deref(),
            Some("10-244-1-6")
        );
    }

    #[test]
    fn dashed_labels_for_both_families() {
        assert_eq!(
            endpoint_label("10.1.2.3".parse().unwrap(), None),
            "10-1-2-3"
        );
        assert_eq!(
            endpoint_label("fd00::5".parse().unwrap(), Some("")),
            "fd00--5"
        );
        assert_eq!(
            endpoint_label("fd00::5".parse().unwrap(), Some("Web-0")),
            "web-0"
        );
    }
}
