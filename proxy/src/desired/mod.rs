//! The pure core of the daemon: from the watched Services and EndpointSlices
//! to the [`DesiredTable`], with kube-proxy's semantics
//! (kube-proxy's `pkg/proxy` service port and endpoint handling):
//!
//! - every port of a Service is a frontend `clusterIP:port/protocol`, named
//!   `namespace/name:portname` (`namespace/name` when the port is unnamed);
//!   a NodePort or LoadBalancer Service's port is also a frontend on each of
//!   the node's NodePort addresses at its `nodePort`, and every Service's
//!   port one on each `externalIPs` entry and (LoadBalancer) each
//!   `status.loadBalancer.ingress[].ip` not in `ipMode: Proxy`;
//! - its backends are the endpoints of the Service's slices whose port has
//!   the same name and protocol: that port number is the (resolved) target
//!   port, so named `targetPort`s need nothing more;
//! - ready endpoints; when none is ready, the serving and terminating ones;
//!   with `internalTrafficPolicy: Local` (ClusterIP frontends), the same
//!   choice among this node's, dropping (not rejecting) when that leaves
//!   none while others exist; with `externalTrafficPolicy: Local` (external
//!   frontends), traffic from outside the node gets this node's endpoints
//!   and pods keep the cluster's (kube-proxy's short-circuit);
//! - `loadBalancerSourceRanges` restrict LoadBalancer IPs only, never
//!   NodePorts (kube-proxy's rule);
//! - endpoints listed by several slices are merged (ready wins);
//! - headless, ExternalName and `service-proxy-name`-labelled Services are
//!   not ours; IPv6 addresses wait for the IPv6 dataplane;
//! - an object with an invalid address, port, protocol or affinity is
//!   skipped whole and reported in [`Outcome::skipped`]: the rest applies.
//!
//! No I/O here: the daemon snapshots its stores and calls [`compute`].
use std::{
    collections::{BTreeMap, btree_map::Entry},
    fmt,
    net::{IpAddr, Ipv4Addr},
    sync::Arc,
};

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};

use crate::model::{
    BackendAddr, DEFAULT_AFFINITY_TIMEOUT_S, FrontendKey, FrontendKind, FrontendSpec, Ipv4Cidr,
    MAX_AFFINITY_TIMEOUT_S, Protocol,
};
use crate::table_file::MAX_BACKENDS_PER_FRONTEND;

mod fit;
#[cfg(test)]
pub(crate) mod tests;

pub use crate::model::DesiredTable;
pub use fit::{Fitted, fit_to_capacity};

/// Label linking an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Services (and slices) with this label belong to another proxy.
pub const SERVICE_PROXY_NAME_LABEL: &str = "service.kubernetes.io/service-proxy-name";
/// Set by the EndpointSlice controller on slices of headless Services.
pub const HEADLESS_LABEL: &str = "service.kubernetes.io/headless";
/// kube-proxy's informer selector for Services: objects a proxy must ignore
/// never reach its stores.
pub const SERVICE_SELECTOR: &str =
    "!service.kubernetes.io/service-proxy-name,!service.kubernetes.io/headless";
/// The same for EndpointSlices, which must also name their Service.
pub const SLICE_SELECTOR: &str = "kubernetes.io/service-name,!service.kubernetes.io/service-proxy-name,!service.kubernetes.io/headless";

/// Which kind of object was skipped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// A `v1` Service.
    Service,
    /// A `discovery.k8s.io/v1` EndpointSlice.
    EndpointSlice,
}

impl Kind {
    /// The kind's name, as in `kind:` (and the metrics' `kind` label).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Service => "Service",
            Self::EndpointSlice => "EndpointSlice",
        }
    }
}

/// An object left out of the table, and why.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Skipped {
    /// What was skipped.
    pub kind: Kind,
    /// `namespace/name`.
    pub object: String,
    /// The field at fault and what is wrong with it.
    pub reason: String,
}

impl fmt::Display for Skipped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.kind.as_str(), self.object, self.reason)
    }
}

/// What the node is, as far as Service semantics care.
#[derive(Clone, Debug, Default)]
pub struct NodeContext {
    /// This node's name (`--hostname-override`); endpoints whose `nodeName`
    /// equals it are local.
    pub name: Option<String>,
    /// Addresses NodePorts are served on (see `nodeport_addresses`).
    pub nodeport_addresses: Vec<Ipv4Addr>,
    /// The address source NAT uses; `None`: none is done.
    pub address: Option<Ipv4Addr>,
}

/// A Service whose `healthCheckNodePort` this node must answer
/// (`type: LoadBalancer`, `externalTrafficPolicy: Local`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCheck {
    /// The Service's namespace.
    pub namespace: String,
    /// The Service's name.
    pub name: String,
    /// Distinct ready endpoint addresses of the Service on this node
    /// (terminating ones do not count, as in kube-proxy).
    pub local_endpoints: usize,
}

/// The result of one computation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// What the maps must hold.
    pub table: DesiredTable,
    /// Invalid objects, in kind and name order.
    pub skipped: Vec<Skipped>,
    /// Frontends with a Local traffic policy (internal, external) that have
    /// endpoints, but none on this node (kube-proxy's `no_local_endpoints`).
    pub no_local_endpoints: (usize, usize),
    /// Health-check servers to run, by `healthCheckNodePort`.
    pub health_checks: BTreeMap<u16, HealthCheck>,
    /// The same Services per ServicePort, the unit kube-proxy's rule
    /// layouts are written in (`--proxy-mode iptables|nftables`), in
    /// Service and port order.
    pub service_ports: Vec<ServicePort>,
}

/// One ServicePort (`namespace/name:port` and protocol) with everything
/// kube-proxy's proxiers derive from it (`pkg/proxy/serviceport.go`,
/// `CategorizeEndpoints` in `pkg/proxy/topology.go`). IPv4 only.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePort {
    /// `namespace/name:portname`, or `namespace/name` for an unnamed port.
    pub name: String,
    /// The port's protocol.
    pub proto: Protocol,
    /// The Service's IPv4 ClusterIP.
    pub cluster_ip: Ipv4Addr,
    /// `spec.ports[].port`.
    pub port: u16,
    /// `spec.ports[].nodePort` of a NodePort or LoadBalancer Service.
    pub node_port: Option<u16>,
    /// `spec.externalIPs` (IPv4).
    pub external_ips: Vec<Ipv4Addr>,
    /// `status.loadBalancer.ingress[].ip` in VIP mode (IPv4).
    pub load_balancer_ips: Vec<Ipv4Addr>,
    /// `spec.loadBalancerSourceRanges` (IPv4).
    pub source_ranges: Vec<Ipv4Cidr>,
    /// `spec.healthCheckNodePort` when the Service needs one.
    pub health_check_node_port: Option<u16>,
    /// `internalTrafficPolicy: Local`.
    pub internal_local: bool,
    /// `externalTrafficPolicy: Local`.
    pub external_local: bool,
    /// `sessionAffinity: ClientIP` timeout in seconds.
    pub affinity_timeout_s: Option<u32>,
    /// Cluster endpoints: ready ones, else serving-and-terminating ones;
    /// sorted by their `IP:port` string as kube-proxy sorts them.
    pub cluster: Vec<BackendAddr>,
    /// This node's endpoints, chosen the same way.
    pub local: Vec<BackendAddr>,
    /// Whether any endpoint anywhere is usable (kube-proxy's
    /// `hasAnyEndpoints`): decides REJECT against DROP.
    pub has_any_endpoints: bool,
}

impl Default for ServicePort {
    fn default() -> Self {
        Self {
            name: String::new(),
            proto: Protocol::Tcp,
            cluster_ip: Ipv4Addr::UNSPECIFIED,
            port: 0,
            node_port: None,
            external_ips: Vec::new(),
            load_balancer_ips: Vec::new(),
            source_ranges: Vec::new(),
            health_check_node_port: None,
            internal_local: false,
            external_local: false,
            affinity_timeout_s: None,
            cluster: Vec::new(),
            local: Vec::new(),
            has_any_endpoints: false,
        }
    }
}

impl ServicePort {
    /// NodePort, externalIPs or LoadBalancer IPs (kube-proxy's
    /// `ExternallyAccessible`).
    pub fn externally_accessible(&self) -> bool {
        self.node_port.is_some()
            || !self.external_ips.is_empty()
            || !self.load_balancer_ips.is_empty()
    }

    /// kube-proxy's `UsesClusterEndpoints`: ClusterIP traffic under the
    /// Cluster policy, and external traffic whatever its policy (pods and
    /// the node short-circuit `externalTrafficPolicy: Local`).
    pub fn uses_cluster_endpoints(&self) -> bool {
        !self.internal_local || self.externally_accessible()
    }

    /// kube-proxy's `UsesLocalEndpoints`.
    pub fn uses_local_endpoints(&self) -> bool {
        self.internal_local || (self.external_local && self.externally_accessible())
    }

    /// Whether ClusterIP traffic has somewhere to go (kube-proxy's
    /// `hasInternalEndpoints`); without, it is rejected (no endpoints at
    /// all) or dropped (none here under the Local policy).
    pub fn has_internal_endpoints(&self) -> bool {
        self.has_any_endpoints && !(self.internal_local && self.local.is_empty())
    }

    /// The same for external traffic (`hasExternalEndpoints`).
    pub fn has_external_endpoints(&self) -> bool {
        self.has_any_endpoints && !(self.external_local && self.local.is_empty())
    }

    /// The endpoints some policy in use can reach, once each, in `IP:port`
    /// order: those that get an endpoint chain (kube-proxy's
    /// `allLocallyReachableEndpoints`).
    pub fn reachable_endpoints(&self) -> Vec<BackendAddr> {
        let mut eps: Vec<BackendAddr> = Vec::new();
        if self.uses_cluster_endpoints() {
            eps.extend(self.cluster.iter().copied());
        }
        if self.uses_local_endpoints() {
            eps.extend(self.local.iter().copied());
        }
        eps.sort_by_cached_key(|b| format!("{}:{}", b.addr, b.port));
        eps.dedup();
        eps
    }
}

/// Computes the desired table from snapshots of the stores.
pub fn compute(
    services: &[Arc<Service>],
    slices: &[Arc<EndpointSlice>],
    node: &NodeContext,
) -> Outcome {
    let mut out = Outcome::default();
    out.table.node.address = node.address;
    let endpoints = index_slices(slices, &mut out.skipped);
    let mut services: Vec<&Service> = services.iter().map(AsRef::as_ref).collect();
    services.sort_by_key(|s| object_name(&s.metadata));
    for svc in services {
        let name = object_name(&svc.metadata);
        let ports = match ServiceView::parse(svc) {
            Ok(Some(view)) => view,
            Ok(None) => continue,
            Err(reason) => {
                out.skipped.push(Skipped {
                    kind: Kind::Service,
                    object: name,
                    reason,
                });
                continue;
            }
        };
        let eps = endpoints.get(&name);
        add_service(&mut out, svc, &name, &ports, eps, node);
    }
    out.skipped.sort();
    out
}

/// `namespace/name` of an object.
pub fn object_name(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> String {
    format!(
        "{}/{}",
        meta.namespace.as_deref().unwrap_or("default"),
        meta.name.as_deref().unwrap_or("")
    )
}

/// One endpoint of one port, after validation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Endpoint {
    addr: Ipv4Addr,
    port: u16,
    ready: bool,
    serving: bool,
    terminating: bool,
    local: bool,
}

/// A port of a slice: what Service ports match on.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct PortKey {
    name: String,
    proto: Protocol,
}

/// Endpoints of every Service (`namespace/name`), per port, merged over
/// its slices.
type EndpointIndex = BTreeMap<String, BTreeMap<PortKey, Vec<EndpointSource>>>;

/// An endpoint as one slice lists it, before node locality is known.
#[derive(Clone, Debug)]
struct EndpointSource {
    addr: Ipv4Addr,
    port: u16,
    ready: bool,
    serving: bool,
    terminating: bool,
    node_name: Option<String>,
}

fn index_slices(slices: &[Arc<EndpointSlice>], skipped: &mut Vec<Skipped>) -> EndpointIndex {
    let mut index = EndpointIndex::new();
    for slice in slices {
        let Some(service) = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL))
        else {
            continue;
        };
        // IPv6 and FQDN slices are not for an IPv4 dataplane.
        if slice.address_type != "IPv4" {
            continue;
        }
        match parse_slice(slice) {
            Ok(ports) => {
                let ns = slice.metadata.namespace.as_deref().unwrap_or("default");
                let per_port = index.entry(format!("{ns}/{service}")).or_default();
                for (key, eps) in ports {
                    per_port.entry(key).or_default().extend(eps);
                }
            }
            Err(reason) => skipped.push(Skipped {
                kind: Kind::EndpointSlice,
                object: object_name(&slice.metadata),
                reason,
            }),
        }
    }
    index
}

/// A slice's endpoints per port, or what makes the slice invalid.
fn parse_slice(slice: &EndpointSlice) -> Result<Vec<(PortKey, Vec<EndpointSource>)>, String> {
    let mut ports = Vec::new();
    for (i, p) in slice.ports.iter().flatten().enumerate() {
        let proto = parse_protocol(p.protocol.as_deref())
            .map_err(|e| format!("ports[{i}].protocol: {e}"))?;
        let port = match p.port {
            // A port without a number carries no usable endpoints.
            None => None,
            Some(n) => Some(parse_port(n).map_err(|e| format!("ports[{i}].port: {e}"))?),
        };
        let name = p.name.clone().unwrap_or_default();
        ports.push((PortKey { name, proto }, port));
    }
    let mut endpoints = Vec::new();
    for (i, ep) in slice.endpoints.iter().enumerate() {
        // Upstream: every address of an endpoint is the same pod; the first
        // one is the one proxies use.
        let Some(first) = ep.addresses.first() else {
            return Err(format!("endpoints[{i}].addresses: empty"));
        };
        let addr = first.parse::<Ipv4Addr>().map_err(|_| {
            format!("endpoints[{i}].addresses[0]: `{first}` is not an IPv4 address")
        })?;
        if addr.is_unspecified() || addr.is_broadcast() || addr.is_multicast() {
            return Err(format!(
                "endpoints[{i}].addresses[0]: `{first}` cannot be an endpoint"
            ));
        }
        let c = ep.conditions.clone().unwrap_or_default();
        // API semantics: unset `ready` means ready; unset `serving` means
        // the same as `ready`; unset `terminating` means not terminating.
        let ready = c.ready.unwrap_or(true);
        endpoints.push((
            addr,
            ready,
            c.serving.unwrap_or(ready),
            c.terminating.unwrap_or(false),
            ep.node_name.clone(),
        ));
    }
    Ok(ports
        .into_iter()
        .filter_map(|(key, port)| {
            let port = port?;
            let eps = endpoints
                .iter()
                .map(
                    |(addr, ready, serving, terminating, node_name)| EndpointSource {
                        addr: *addr,
                        port,
                        ready: *ready,
                        serving: *serving,
                        terminating: *terminating,
                        node_name: node_name.clone(),
                    },
                )
                .collect();
            Some((key, eps))
        })
        .collect())
}

/// What the table needs of a Service.
struct ServiceView {
    cluster_ip: Ipv4Addr,
    ports: Vec<PortView>,
    affinity_timeout_s: Option<u32>,
    internal_local: bool,
    external_local: bool,
    /// `spec.externalIPs`, then the LoadBalancer ingress IPs.
    external: Vec<(Ipv4Addr, FrontendKind)>,
    source_ranges: Vec<Ipv4Cidr>,
    health_check_node_port: Option<u16>,
}

/// One `spec.ports[]` entry.
struct PortView {
    name: String,
    port: u16,
    proto: Protocol,
    /// Only for `type: NodePort` and `LoadBalancer`.
    node_port: Option<u16>,
}

impl ServiceView {
    /// `Ok(None)` for a Service that is not a proxy's business.
    fn parse(svc: &Service) -> Result<Option<Self>, String> {
        let labels = svc.metadata.labels.as_ref();
        if labels.is_some_and(|l| {
            l.contains_key(SERVICE_PROXY_NAME_LABEL) || l.contains_key(HEADLESS_LABEL)
        }) {
            return Ok(None);
        }
        let Some(spec) = &svc.spec else {
            return Ok(None);
        };
        let type_ = spec.type_.as_deref().unwrap_or("ClusterIP");
        if type_ == "ExternalName" {
            return Ok(None);
        }
        let ips: Vec<&str> = match (&spec.cluster_ips, &spec.cluster_ip) {
            (Some(ips), _) if !ips.is_empty() => ips.iter().map(String::as_str).collect(),
            (_, Some(ip)) => vec![ip.as_str()],
            _ => vec![],
        };
        let mut cluster_ip = None;
        for (i, ip) in ips.iter().enumerate() {
            if ip.is_empty() || *ip == "None" {
                return Ok(None); // headless
            }
            match ip.parse::<IpAddr>() {
                Ok(IpAddr::V4(v4)) if cluster_ip.is_none() => cluster_ip = Some(v4),
                Ok(_) => {} // the IPv6 family of a dual-stack Service
                Err(_) => return Err(format!("spec.clusterIPs[{i}]: `{ip}` is not an IP address")),
            }
        }
        let Some(cluster_ip) = cluster_ip else {
            return Ok(None); // no ClusterIP, or IPv6 only
        };
        let has_node_ports = matches!(type_, "NodePort" | "LoadBalancer");
        let mut ports = Vec::new();
        for (i, p) in spec.ports.iter().flatten().enumerate() {
            let proto = parse_protocol(p.protocol.as_deref())
                .map_err(|e| format!("spec.ports[{i}].protocol: {e}"))?;
            let port = parse_port(p.port).map_err(|e| format!("spec.ports[{i}].port: {e}"))?;
            let node_port = match p.node_port.filter(|_| has_node_ports) {
                // Unset or 0: none allocated (allocateLoadBalancerNodePorts: false).
                None | Some(0) => None,
                Some(n) => {
                    Some(parse_port(n).map_err(|e| format!("spec.ports[{i}].nodePort: {e}"))?)
                }
            };
            ports.push(PortView {
                name: p.name.clone().unwrap_or_default(),
                port,
                proto,
                node_port,
            });
        }
        let affinity_timeout_s = match spec.session_affinity.as_deref() {
            None | Some("None") => None,
            Some("ClientIP") => {
                let t = spec
                    .session_affinity_config
                    .as_ref()
                    .and_then(|c| c.client_ip.as_ref())
                    .and_then(|c| c.timeout_seconds)
                    .map_or(Ok(DEFAULT_AFFINITY_TIMEOUT_S), |t| {
                        u32::try_from(t)
                            .ok()
                            .filter(|t| (1..=MAX_AFFINITY_TIMEOUT_S).contains(t))
                            .ok_or_else(|| {
                                format!("spec.sessionAffinityConfig.clientIP.timeoutSeconds: {t} is outside 1..={MAX_AFFINITY_TIMEOUT_S}")
                            })
                    })?;
                Some(t)
            }
            Some(other) => {
                return Err(format!(
                    "spec.sessionAffinity: `{other}` (expected None or ClientIP)"
                ));
            }
        };
        let mut external = Vec::new();
        for (i, ip) in spec.external_ips.iter().flatten().enumerate() {
            match ip.parse::<IpAddr>() {
                Ok(IpAddr::V4(v4)) => external.push((v4, FrontendKind::ExternalIp)),
                Ok(IpAddr::V6(_)) => {}
                Err(_) => {
                    return Err(format!(
                        "spec.externalIPs[{i}]: `{ip}` is not an IP address"
                    ));
                }
            }
        }
        let is_lb = type_ == "LoadBalancer";
        let ingress = svc
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_ref())
            .filter(|_| is_lb);
        for (i, ing) in ingress.into_iter().flatten().enumerate() {
            // kube-proxy programs only VIP-mode addresses.
            if ing.ip_mode.as_deref() == Some("Proxy") {
                continue;
            }
            let Some(ip) = ing.ip.as_deref().filter(|ip| !ip.is_empty()) else {
                continue; // a hostname-only ingress
            };
            match ip.parse::<IpAddr>() {
                Ok(IpAddr::V4(v4)) => external.push((v4, FrontendKind::LoadBalancer)),
                Ok(IpAddr::V6(_)) => {}
                Err(_) => {
                    return Err(format!(
                        "status.loadBalancer.ingress[{i}].ip: `{ip}` is not an IP address"
                    ));
                }
            }
        }
        let mut source_ranges = Vec::new();
        for (i, r) in spec
            .load_balancer_source_ranges
            .iter()
            .flatten()
            .enumerate()
        {
            // Upstream accepts surrounding spaces; IPv6 ranges are the IPv6 dataplane's.
            let r = r.trim();
            if r.contains(':') {
                continue;
            }
            source_ranges.push(
                r.parse::<Ipv4Cidr>()
                    .map_err(|e| format!("spec.loadBalancerSourceRanges[{i}]: {e}"))?,
            );
        }
        let external_local = spec.external_traffic_policy.as_deref() == Some("Local");
        let health_check_node_port = match spec.health_check_node_port {
            Some(p) if is_lb && external_local && p != 0 => {
                Some(parse_port(p).map_err(|e| format!("spec.healthCheckNodePort: {e}"))?)
            }
            _ => None,
        };
        Ok(Some(Self {
            cluster_ip,
            ports,
            affinity_timeout_s,
            internal_local: spec.internal_traffic_policy.as_deref() == Some("Local"),
            external_local,
            external,
            source_ranges,
            health_check_node_port,
        }))
    }
}

fn add_service(
    out: &mut Outcome,
    svc_obj: &Service,
    name: &str,
    svc: &ServiceView,
    endpoints: Option<&BTreeMap<PortKey, Vec<EndpointSource>>>,
    node: &NodeContext,
) {
    let mut local_ready: std::collections::BTreeSet<Ipv4Addr> = Default::default();
    for p in &svc.ports {
        let frontend_name = if p.name.is_empty() {
            name.to_owned()
        } else {
            format!("{name}:{}", p.name)
        };
        let candidates = endpoints
            .and_then(|e| {
                e.get(&PortKey {
                    name: p.name.clone(),
                    proto: p.proto,
                })
            })
            .map(|srcs| merge(srcs, node))
            .unwrap_or_default();
        for e in candidates.iter().filter(|e| e.local) {
            out.table.node.local_endpoints.insert(e.addr);
            if e.ready {
                local_ready.insert(e.addr);
            }
        }
        let usable_anywhere = candidates
            .iter()
            .any(|e| e.ready || (e.serving && e.terminating));
        let to_backends = |eps: Vec<Endpoint>| -> Vec<BackendAddr> {
            let mut b: Vec<BackendAddr> = eps
                .iter()
                .map(|e| BackendAddr {
                    addr: e.addr,
                    port: e.port,
                    proto: p.proto,
                })
                .collect();
            // kube-proxy's order ("IP:port" strings), so slot numbers match
            // the order its rules would use.
            b.sort_by_cached_key(|b| format!("{}:{}", b.addr, b.port));
            b
        };
        let cluster = to_backends(select(&candidates, false));
        let local = to_backends(select(&candidates, true));
        out.service_ports.push(ServicePort {
            name: frontend_name.clone(),
            proto: p.proto,
            cluster_ip: svc.cluster_ip,
            port: p.port,
            node_port: p.node_port,
            external_ips: svc
                .external
                .iter()
                .filter(|(_, k)| *k == FrontendKind::ExternalIp)
                .map(|(a, _)| *a)
                .collect(),
            load_balancer_ips: svc
                .external
                .iter()
                .filter(|(_, k)| *k == FrontendKind::LoadBalancer)
                .map(|(a, _)| *a)
                .collect(),
            source_ranges: svc.source_ranges.clone(),
            health_check_node_port: svc.health_check_node_port,
            internal_local: svc.internal_local,
            external_local: svc.external_local,
            affinity_timeout_s: svc.affinity_timeout_s,
            cluster: cluster.clone(),
            local: local.clone(),
            has_any_endpoints: usable_anywhere,
        });
        if cluster.len() + local.len() > MAX_BACKENDS_PER_FRONTEND {
            out.skipped.push(Skipped {
                kind: Kind::Service,
                object: name.to_owned(),
                reason: format!(
                    "port {frontend_name}: {} endpoints, at most {MAX_BACKENDS_PER_FRONTEND} per port are supported",
                    cluster.len()
                ),
            });
            continue;
        }
        // The ClusterIP: internalTrafficPolicy decides.
        let internal = if svc.internal_local {
            local.clone()
        } else {
            cluster.clone()
        };
        let internal_starved = svc.internal_local && internal.is_empty() && usable_anywhere;
        if internal_starved {
            out.no_local_endpoints.0 += 1;
        }
        let mut frontends = vec![(
            svc.cluster_ip,
            p.port,
            FrontendSpec {
                name: frontend_name.clone(),
                kind: FrontendKind::ClusterIp,
                backends: internal,
                local_backends: None,
                affinity_timeout_s: svc.affinity_timeout_s,
                drop_when_empty: internal_starved,
                source_ranges: Vec::new(),
            },
        )];
        // External addresses: pods and the node use the cluster's endpoints;
        // externalTrafficPolicy decides for traffic from outside.
        let external_spec = |kind: FrontendKind| FrontendSpec {
            name: frontend_name.clone(),
            kind,
            backends: cluster.clone(),
            local_backends: svc.external_local.then(|| local.clone()),
            affinity_timeout_s: svc.affinity_timeout_s,
            drop_when_empty: false,
            source_ranges: if kind == FrontendKind::LoadBalancer {
                svc.source_ranges.clone()
            } else {
                Vec::new()
            },
        };
        let mut external_count = 0;
        if let Some(np) = p.node_port {
            for addr in &node.nodeport_addresses {
                frontends.push((*addr, np, external_spec(FrontendKind::NodePort)));
                external_count += 1;
            }
        }
        for (addr, kind) in &svc.external {
            frontends.push((*addr, p.port, external_spec(*kind)));
            external_count += 1;
        }
        if svc.external_local && external_count > 0 && local.is_empty() && usable_anywhere {
            out.no_local_endpoints.1 += 1;
        }
        for (addr, port, spec) in frontends {
            let key = FrontendKey {
                addr,
                port,
                proto: p.proto,
            };
            match out.table.frontends.entry(key) {
                Entry::Vacant(v) => {
                    v.insert(spec);
                }
                Entry::Occupied(o) => out.skipped.push(Skipped {
                    kind: Kind::Service,
                    object: name.to_owned(),
                    reason: format!(
                        "{} frontend {key} already belongs to {} ({})",
                        spec.kind,
                        o.get().name,
                        o.get().kind
                    ),
                }),
            }
        }
    }
    if let Some(port) = svc.health_check_node_port {
        out.health_checks.insert(
            port,
            HealthCheck {
                namespace: svc_obj
                    .metadata
                    .namespace
                    .clone()
                    .unwrap_or_else(|| "default".into()),
                name: svc_obj.metadata.name.clone().unwrap_or_default(),
                local_endpoints: local_ready.len(),
            },
        );
    }
}

/// Endpoints listed by several slices count once: the most usable listing
/// wins (ready, then serving and terminating, then the rest), whatever the
/// order of the slices.
fn merge(sources: &[EndpointSource], node: &NodeContext) -> Vec<Endpoint> {
    let mut by_addr: BTreeMap<(Ipv4Addr, u16), Endpoint> = BTreeMap::new();
    for s in sources {
        let ep = Endpoint {
            addr: s.addr,
            port: s.port,
            ready: s.ready,
            serving: s.serving,
            terminating: s.terminating,
            local: node.name.is_some() && s.node_name == node.name,
        };
        by_addr
            .entry((s.addr, s.port))
            .and_modify(|seen| {
                if rank(&ep) > rank(seen) {
                    *seen = ep;
                }
            })
            .or_insert(ep);
    }
    by_addr.into_values().collect()
}

fn rank(e: &Endpoint) -> u8 {
    match (e.ready, e.serving && e.terminating) {
        (true, _) => 2,
        (false, true) => 1,
        (false, false) => 0,
    }
}

/// Ready endpoints, else serving-and-terminating ones (the terminating
/// fallback), among all or, for `internalTrafficPolicy: Local`, local ones.
fn select(endpoints: &[Endpoint], local_only: bool) -> Vec<Endpoint> {
    let usable: Vec<Endpoint> = endpoints
        .iter()
        .filter(|e| !local_only || e.local)
        .copied()
        .collect();
    let ready: Vec<Endpoint> = usable.iter().filter(|e| e.ready).copied().collect();
    if !ready.is_empty() {
        return ready;
    }
    usable
        .into_iter()
        .filter(|e| e.serving && e.terminating)
        .collect()
}

/// Kubernetes spells protocols in upper case only; unset means TCP.
fn parse_protocol(p: Option<&str>) -> Result<Protocol, String> {
    match p {
        None | Some("TCP") => Ok(Protocol::Tcp),
        Some("UDP") => Ok(Protocol::Udp),
        Some("SCTP") => Ok(Protocol::Sctp),
        Some(other) => Err(format!("`{other}` (expected TCP, UDP or SCTP)")),
    }
}

fn parse_port(n: i32) -> Result<u16, String> {
    u16::try_from(n)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("{n} is outside 1..=65535"))
}
