//! What Services hold from finite pools — ClusterIPs from
//! `--service-cluster-ip-range`, node ports and health-check node ports
//! from `--service-node-port-range` — and how a type change moves them, as
//! upstream's Service registry does (`pkg/registry/core/service/storage`:
//! `dropTypeDependentFields`, `allocateCreate`/`allocateUpdate`).
use std::{collections::BTreeSet, net::Ipv4Addr};

use serde_json::{Value, json};

use super::{
    Settings, objects,
    resources::Resource,
    status::{ApiError, ApiResult},
    validation::Errors,
};
use crate::store::Store;

fn spec_str<'a>(svc: &'a Value, field: &str) -> &'a str {
    svc.pointer(&format!("/spec/{field}"))
        .and_then(Value::as_str)
        .unwrap_or_default()
}

/// Every type but ExternalName has a ClusterIP (`None` included).
pub fn needs_cluster_ip(svc: &Value) -> bool {
    spec_str(svc, "type") != "ExternalName"
}

/// NodePort and LoadBalancer types carry node ports.
fn has_node_port_type(svc: &Value) -> bool {
    matches!(spec_str(svc, "type"), "NodePort" | "LoadBalancer")
}

/// Node ports are allocated for NodePort Services, and for LoadBalancers
/// unless `allocateLoadBalancerNodePorts: false`.
fn allocates_node_ports(svc: &Value) -> bool {
    match spec_str(svc, "type") {
        "NodePort" => true,
        "LoadBalancer" => svc.pointer("/spec/allocateLoadBalancerNodePorts") != Some(&json!(false)),
        _ => false,
    }
}

/// A LoadBalancer with `externalTrafficPolicy: Local` gets a health-check port.
fn needs_health_check_port(svc: &Value) -> bool {
    spec_str(svc, "type") == "LoadBalancer" && spec_str(svc, "externalTrafficPolicy") == "Local"
}

fn externally_accessible(svc: &Value) -> bool {
    has_node_port_type(svc)
        || (spec_str(svc, "type") == "ClusterIP"
            && svc
                .pointer("/spec/externalIPs")
                .and_then(Value::as_array)
                .is_some_and(|a| !a.is_empty()))
}

fn node_ports_of(svc: &Value) -> Vec<Option<u64>> {
    svc.pointer("/spec/ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|p| {
            p.get("nodePort")
                .and_then(Value::as_u64)
                .filter(|n| *n != 0)
        })
        .collect()
}

/// Upstream's `dropTypeDependentFields`: when an update changes the type,
/// what only the old type used is cleared — but only if the client left it
/// as it was (a value the client changed is kept, for validation to judge).
pub fn drop_type_dependent_fields(old: &Value, new: &mut Value) {
    let same = |new: &Value, ptr: &str| old.pointer(ptr) == new.pointer(ptr);
    let Some(spec) = new.get("spec").cloned() else {
        return;
    };
    let mut spec = spec;
    let new_view = json!({"spec": spec});
    if needs_cluster_ip(old) && !needs_cluster_ip(&new_view) {
        if same(&new_view, "/spec/clusterIP") && same(&new_view, "/spec/clusterIPs") {
            // Released once the update is stored.
            remove(&mut spec, &["clusterIP", "clusterIPs"]);
        }
        if same(&new_view, "/spec/ipFamilies") {
            remove(&mut spec, &["ipFamilies"]);
        }
        if same(&new_view, "/spec/ipFamilyPolicy") {
            remove(&mut spec, &["ipFamilyPolicy"]);
        }
    }
    if has_node_port_type(old)
        && !has_node_port_type(&new_view)
        && node_ports_of(old) == node_ports_of(&new_view)
    {
        for p in spec
            .get_mut("ports")
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            if let Some(p) = p.as_object_mut() {
                p.remove("nodePort");
            }
        }
    }
    if needs_health_check_port(old)
        && !needs_health_check_port(&new_view)
        && same(&new_view, "/spec/healthCheckNodePort")
    {
        remove(&mut spec, &["healthCheckNodePort"]);
    }
    let was_lb = spec_str(old, "type") == "LoadBalancer";
    if was_lb && spec_str(&new_view, "type") != "LoadBalancer" {
        for field in ["allocateLoadBalancerNodePorts", "loadBalancerClass"] {
            if same(&new_view, &format!("/spec/{field}")) {
                remove(&mut spec, &[field]);
            }
        }
    }
    if externally_accessible(old)
        && !externally_accessible(&new_view)
        && same(&new_view, "/spec/externalTrafficPolicy")
    {
        remove(&mut spec, &["externalTrafficPolicy"]);
    }
    new["spec"] = spec;
    // A load balancer's status goes with the type.
    if spec_str(new, "type") != "LoadBalancer" {
        new["status"] = json!({"loadBalancer": {}});
    }
}

fn remove(spec: &mut Value, fields: &[&str]) {
    if let Some(m) = spec.as_object_mut() {
        for f in fields {
            m.remove(*f);
        }
    }
}

/// The first and last usable addresses of `cidr`, as u32.
fn usable(cidr: (Ipv4Addr, u8)) -> (u32, u32) {
    let base = u32::from(cidr.0) & (u32::MAX << (32 - cidr.1));
    let size = 1u32 << (32 - cidr.1);
    (base + 1, base + size - 2)
}

/// The first usable address of the range, which the `default/kubernetes`
/// Service holds.
pub fn first_ip(settings: &Settings) -> Ipv4Addr {
    Ipv4Addr::from(usable(settings.service_cidr).0)
}

fn service_ip(svc: &Value) -> Option<u32> {
    svc.pointer("/spec/clusterIP")
        .and_then(Value::as_str)
        .and_then(|s| s.parse::<Ipv4Addr>().ok())
        .map(u32::from)
}

fn service_node_ports(svc: &Value) -> impl Iterator<Item = u64> + '_ {
    node_ports_of(svc).into_iter().flatten().chain(
        svc.pointer("/spec/healthCheckNodePort")
            .and_then(Value::as_u64)
            .filter(|n| *n != 0),
    )
}

/// The ClusterIPs and node ports Services hold, loaded from the store once
/// and kept current by every Service write of this server.
#[derive(Debug, Default)]
pub struct Allocations {
    loaded: bool,
    ips: BTreeSet<u32>,
    node_ports: BTreeSet<u64>,
}

impl Allocations {
    /// Reads every Service once; later calls are free until [`Self::forget`].
    pub async fn ensure_loaded<S: Store>(&mut self, store: &S) -> ApiResult<()> {
        if self.loaded {
            return Ok(());
        }
        let services = Resource::find("", "v1", "services").expect("services are served");
        let page = store
            .list(&services.key_prefix(None), None, None)
            .await
            .map_err(|e| ApiError::from_store(e, "services", ""))?;
        *self = Self {
            loaded: true,
            ..Self::default()
        };
        for kv in &page.items {
            self.record(&objects::from_stored(&kv.value, kv.mod_rev)?);
        }
        Ok(())
    }

    pub fn record(&mut self, svc: &Value) {
        self.ips.extend(service_ip(svc));
        self.node_ports.extend(service_node_ports(svc));
    }

    pub fn release(&mut self, svc: &Value) {
        if let Some(ip) = service_ip(svc) {
            self.ips.remove(&ip);
        }
        for p in service_node_ports(svc) {
            self.node_ports.remove(&p);
        }
    }

    /// Makes the next allocation re-read the store (after deletes that
    /// bypassed [`Self::release`]).
    pub fn forget(&mut self) {
        self.loaded = false;
    }
}

/// The IP families of a Service that is not an ExternalName, set by the
/// allocator as upstream's (single-stack IPv4 is all the range offers).
pub fn default_ip_families(svc: &mut Value) {
    let spec = &mut svc["spec"];
    if spec["type"] == "ExternalName" {
        return;
    }
    if spec.get("ipFamilyPolicy").is_none_or(Value::is_null) {
        spec["ipFamilyPolicy"] = json!("SingleStack");
    }
    if spec
        .get("ipFamilies")
        .and_then(Value::as_array)
        .is_none_or(Vec::is_empty)
    {
        spec["ipFamilies"] = json!(["IPv4"]);
    }
}

/// Chooses what `svc` needs and does not have yet — a ClusterIP, node
/// ports, a health-check port — among those free, and checks what it asks
/// for is free and in range. `own` is the Service's stored version on an
/// update: what it holds counts as free for it. The caller holds the
/// allocations across this and the write, then records them.
pub fn allocate(
    settings: &Settings,
    taken: &Allocations,
    svc: &mut Value,
    own: Option<&Value>,
) -> ApiResult<()> {
    let own_ip = own.and_then(service_ip);
    let own_ports: BTreeSet<u64> = own
        .map(|o| service_node_ports(o).collect())
        .unwrap_or_default();
    let ip_taken = |n: &u32| taken.ips.contains(n) && Some(*n) != own_ip;
    let port_taken = |n: &u64| taken.node_ports.contains(n) && !own_ports.contains(n);
    let name = objects::name_of(svc).unwrap_or_default().to_owned();
    let mut e = Errors::default();
    let needs_ip = needs_cluster_ip(svc);
    default_ip_families(svc);
    let spec = &mut svc["spec"];
    let (first, last) = usable(settings.service_cidr);
    match spec["clusterIP"].as_str() {
        _ if !needs_ip => {}
        Some("None") => {}
        Some(ip) if !ip.is_empty() => {
            let requested = json!([ip]);
            match ip.parse::<Ipv4Addr>().map(u32::from) {
                Err(_) => e.invalid("spec.clusterIPs", &requested, &format!("failed to allocate IP {ip}: must be a valid IP address")),
                Ok(n) if !(first..=last).contains(&n) => e.invalid(
                    "spec.clusterIPs",
                    &requested,
                    &format!(
                        "failed to allocate IP {ip}: the provided IP ({ip}) is not in the valid range. The range of valid IPs is {}/{}",
                        settings.service_cidr.0, settings.service_cidr.1
                    ),
                ),
                Ok(n) if ip_taken(&n) => e.invalid(
                    "spec.clusterIPs",
                    &requested,
                    &format!("failed to allocate IP {ip}: provided IP is already allocated"),
                ),
                Ok(_) => {}
            }
        }
        _ => {
            // Dynamic allocation prefers the upper band, leaving the lower
            // one to requested addresses, as upstream does.
            let size = last - first + 1;
            let static_band = (size / 16).clamp(16, 256).min(size);
            let pick = (first + static_band..=last)
                .chain(first..first + static_band)
                .find(|n| !ip_taken(n))
                .ok_or_else(|| {
                    ApiError::internal("failed to allocate a serviceIP: range is full")
                })?;
            spec["clusterIP"] = json!(Ipv4Addr::from(pick).to_string());
        }
    }
    if needs_ip && let Some(ip) = spec["clusterIP"].as_str().map(str::to_owned) {
        spec["clusterIPs"] = json!([ip]);
    }
    let range = settings.node_ports.clone();
    let (lo, hi) = (u64::from(*range.start()), u64::from(*range.end()));
    let snapshot = json!({"spec": spec.clone()});
    // Every node-port field the new type needs: `(field, port index or
    // None for the health check, requested)`.
    let mut wanted: Vec<(String, Option<usize>, Option<u64>)> = Vec::new();
    if allocates_node_ports(&snapshot) {
        for (i, requested) in node_ports_of(&snapshot).into_iter().enumerate() {
            wanted.push((format!("spec.ports[{i}].nodePort"), Some(i), requested));
        }
    }
    if needs_health_check_port(&snapshot) {
        let requested = spec["healthCheckNodePort"].as_u64().filter(|n| *n != 0);
        wanted.push(("spec.healthCheckNodePort".into(), None, requested));
    }
    // Requested ports first, so a dynamic pick never takes one the client
    // asked for in the same request.
    let mut here = BTreeSet::new();
    for (field, _, requested) in &wanted {
        let Some(n) = *requested else { continue };
        if !(lo..=hi).contains(&n) {
            e.invalid(
                field,
                &json!(n),
                &format!(
                    "provided port is not in the valid range. The range of valid ports is {lo}-{hi}"
                ),
            );
        } else if port_taken(&n) || !here.insert(n) {
            e.invalid(field, &json!(n), "provided port is already allocated");
        }
    }
    for (_, port, requested) in &wanted {
        if requested.is_some() {
            continue;
        }
        // As for IPs, dynamic picks come from the upper band first.
        let static_band = ((hi - lo + 1) / 32).clamp(16, 128).min(hi - lo + 1);
        let n = (lo + static_band..=hi)
            .chain(lo..lo + static_band)
            .find(|n| !port_taken(n) && !here.contains(n))
            .ok_or_else(|| ApiError::internal("failed to allocate a nodePort: range is full"))?;
        here.insert(n);
        match port {
            Some(i) => spec["ports"][*i]["nodePort"] = json!(n),
            None => spec["healthCheckNodePort"] = json!(n),
        }
    }
    if e.0.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid("Service", &name, e.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings::default()
    }

    #[test]
    fn a_node_port_service_made_cluster_ip_loses_its_node_ports() {
        let old = json!({"spec": {"type": "NodePort", "clusterIP": "10.96.1.1", "clusterIPs": ["10.96.1.1"],
            "externalTrafficPolicy": "Cluster", "ports": [{"port": 80, "nodePort": 30100}]}});
        let mut new = old.clone();
        new["spec"]["type"] = json!("ClusterIP");
        drop_type_dependent_fields(&old, &mut new);
        assert_eq!(new["spec"]["ports"], json!([{"port": 80}]));
        assert!(new["spec"].get("externalTrafficPolicy").is_none());
        assert_eq!(new["spec"]["clusterIP"], "10.96.1.1", "still needed");
        // A node port the client changed is kept, for validation to refuse.
        let mut asked = old.clone();
        asked["spec"]["type"] = json!("ClusterIP");
        asked["spec"]["ports"][0]["nodePort"] = json!(30101);
        drop_type_dependent_fields(&old, &mut asked);
        assert_eq!(asked["spec"]["ports"][0]["nodePort"], 30101);
    }

    #[test]
    fn external_name_and_back() {
        let cluster = json!({"spec": {"type": "ClusterIP", "clusterIP": "10.96.1.1", "clusterIPs": ["10.96.1.1"],
            "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack", "ports": [{"port": 80}]}});
        let mut ext = cluster.clone();
        ext["spec"]["type"] = json!("ExternalName");
        ext["spec"]["externalName"] = json!("example.com");
        drop_type_dependent_fields(&cluster, &mut ext);
        for gone in ["clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"] {
            assert!(ext["spec"].get(gone).is_none(), "{gone}");
        }
        // Back to ClusterIP: a fresh address is allocated.
        let mut back = ext.clone();
        back["spec"]["type"] = json!("ClusterIP");
        back["spec"].as_object_mut().unwrap().remove("externalName");
        drop_type_dependent_fields(&ext, &mut back);
        let mut taken = Allocations::default();
        taken.record(&cluster);
        allocate(&settings(), &taken, &mut back, Some(&ext)).unwrap();
        let ip = back["spec"]["clusterIP"].as_str().unwrap();
        assert_ne!(ip, "10.96.1.1", "that one is still held");
        assert_eq!(back["spec"]["clusterIPs"], json!([ip]));
    }

    #[test]
    fn updates_keep_their_own_allocations_and_add_what_the_new_type_needs() {
        let old = json!({"metadata": {"name": "web"}, "spec": {"type": "ClusterIP", "clusterIP": "10.96.1.1", "ports": [{"port": 80}]}});
        let mut taken = Allocations::default();
        taken.record(&old);
        let mut lb = old.clone();
        lb["spec"]["type"] = json!("LoadBalancer");
        lb["spec"]["externalTrafficPolicy"] = json!("Local");
        allocate(&settings(), &taken, &mut lb, Some(&old)).unwrap();
        let node_port = lb["spec"]["ports"][0]["nodePort"].as_u64().unwrap();
        let health = lb["spec"]["healthCheckNodePort"].as_u64().unwrap();
        assert!(node_port != health && (30_000..=32_767).contains(&health));
        let mut other = json!({"metadata": {"name": "other"}, "spec": {"type": "NodePort", "clusterIP": "10.96.1.1", "ports": [{"port": 80, "nodePort": node_port}]}});
        taken.record(&lb);
        let e = allocate(&settings(), &taken, &mut other, None).unwrap_err();
        let fields: Vec<_> = e
            .causes
            .iter()
            .map(|c| (c.field.as_str(), c.message.as_str()))
            .collect();
        assert_eq!(
            fields,
            [
                (
                    "spec.clusterIPs",
                    "Invalid value: []string{\"10.96.1.1\"}: failed to allocate IP 10.96.1.1: provided IP is already allocated"
                ),
                (
                    "spec.ports[0].nodePort",
                    &*format!("Invalid value: {node_port}: provided port is already allocated")
                ),
            ]
        );
    }
}
