//! What individual kinds add to the generic object handling: defaults,
//! Service IP and node-port allocation, immutable fields, and namespace
//! finalization.
use std::{collections::BTreeSet, net::Ipv4Addr, sync::Arc, time::Duration};

use serde_json::{Value, json};

use super::{
    ApiServer,
    objects::{self, from_stored},
    resources::{RESOURCES, Resource},
    status::{ApiError, ApiResult, Cause},
};
use crate::store::Store;

/// Prepares a new object of `res` as upstream's create strategies do:
/// defaults, a Namespace's finalizer and phase, a Pod's phase, a Job's
/// generated selector.
pub(super) fn prepare_create(res: &Resource, obj: &mut Value) {
    super::defaults::apply(res.kind, obj);
    match res.kind {
        "Namespace" => {
            obj["spec"]["finalizers"] = json!(["kubernetes"]);
            obj["status"] = json!({"phase": "Active"});
        }
        "Pod" if obj.pointer("/status/phase").is_none() => {
            obj["status"] = json!({"phase": "Pending"});
        }
        "Job" => generate_job_selector(obj),
        _ => {}
    }
}

/// Upstream's Job strategy: unless `manualSelector`, pods are selected by
/// the Job's uid, and the template carries the name and uid labels.
fn generate_job_selector(job: &mut Value) {
    if job.pointer("/spec/manualSelector") == Some(&json!(true)) {
        return;
    }
    let name = objects::name_of(job).unwrap_or_default().to_owned();
    let uid = objects::meta_str(job, "uid").unwrap_or_default().to_owned();
    let labels = &mut job["spec"]["template"]["metadata"]["labels"];
    if !labels.is_object() {
        *labels = json!({});
    }
    let labels = labels.as_object_mut().expect("an object");
    for (key, value) in [
        ("batch.kubernetes.io/controller-uid", &uid),
        ("batch.kubernetes.io/job-name", &name),
        ("controller-uid", &uid),
        ("job-name", &name),
    ] {
        labels.entry(key).or_insert_with(|| json!(value));
    }
    let selector = &mut job["spec"]["selector"]["matchLabels"];
    if !selector.is_object() {
        *selector = json!({});
    }
    selector
        .as_object_mut()
        .expect("an object")
        .entry("batch.kubernetes.io/controller-uid")
        .or_insert_with(|| json!(uid));
}

/// The first and last usable addresses of `cidr`, as u32.
fn usable(cidr: (Ipv4Addr, u8)) -> (u32, u32) {
    let base = u32::from(cidr.0) & (u32::MAX << (32 - cidr.1));
    let size = 1u32 << (32 - cidr.1);
    (base + 1, base + size - 2)
}

/// The ClusterIPs and node ports Services hold, loaded from the store once
/// and kept current by every Service create and delete of this server.
#[derive(Debug, Default)]
pub struct Allocations {
    loaded: bool,
    ips: BTreeSet<u32>,
    node_ports: BTreeSet<u64>,
}

fn service_ip(svc: &Value) -> Option<u32> {
    svc.pointer("/spec/clusterIP")
        .and_then(Value::as_str)
        .and_then(|s| s.parse::<Ipv4Addr>().ok())
        .map(u32::from)
}

fn service_node_ports(svc: &Value) -> impl Iterator<Item = u64> + '_ {
    svc.pointer("/spec/ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|p| p["nodePort"].as_u64())
}

impl Allocations {
    /// Reads every Service once; later calls are free until [`Self::forget`].
    pub(super) async fn ensure_loaded<S: Store>(&mut self, store: &S) -> ApiResult<()> {
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
            self.record(&from_stored(&kv.value, kv.mod_rev)?);
        }
        Ok(())
    }

    pub(super) fn record(&mut self, svc: &Value) {
        self.ips.extend(service_ip(svc));
        self.node_ports.extend(service_node_ports(svc));
    }

    pub(super) fn release(&mut self, svc: &Value) {
        if let Some(ip) = service_ip(svc) {
            self.ips.remove(&ip);
        }
        for p in service_node_ports(svc) {
            self.node_ports.remove(&p);
        }
    }

    /// Makes the next allocation re-read the store (after deletes that
    /// bypassed [`Self::release`]).
    pub(super) fn forget(&mut self) {
        self.loaded = false;
    }
}

/// Chooses a Service's ClusterIP and node ports among those free. The caller
/// holds the allocations across this and the write, then records them.
pub(super) fn allocate(
    settings: &super::Settings,
    taken: &Allocations,
    obj: &mut Value,
) -> ApiResult<()> {
    let (ips, node_ports) = (&taken.ips, &taken.node_ports);
    let name = objects::name_of(obj).unwrap_or_default().to_owned();
    let spec = &mut obj["spec"];
    let (first, last) = usable(settings.service_cidr);
    match spec["clusterIP"].as_str() {
        _ if spec["type"] == "ExternalName" => {}
        Some("None") => {}
        Some(ip) if !ip.is_empty() => {
            let refuse = |why: String| {
                ApiError::invalid(
                    "Service",
                    &name,
                    vec![Cause::invalid("spec.clusterIPs", why)],
                )
            };
            let n = u32::from(ip.parse::<Ipv4Addr>().map_err(|_| {
                refuse(format!(
                    "Invalid value: \"{ip}\": must be a valid IP address"
                ))
            })?);
            let failed = format!("Invalid value: [\"{ip}\"]: failed to allocate IP {ip}");
            if !(first..=last).contains(&n) {
                return Err(refuse(format!(
                    "{failed}: the provided IP ({ip}) is not in the valid range"
                )));
            }
            if ips.contains(&n) {
                return Err(refuse(format!(
                    "{failed}: provided IP is already allocated"
                )));
            }
        }
        _ => {
            // Dynamic allocation prefers the upper band, as upstream does.
            let size = last - first + 1;
            let static_band = (size / 16).clamp(16, 256).min(size);
            let pick = (first + static_band..=last)
                .chain(first..first + static_band)
                .find(|n| !ips.contains(n))
                .ok_or_else(|| ApiError::internal("the Service IP range is exhausted"))?;
            spec["clusterIP"] = json!(Ipv4Addr::from(pick).to_string());
        }
    }
    if let Some(ip) = spec["clusterIP"].as_str().map(str::to_owned) {
        spec["clusterIPs"] = json!([ip]);
    }
    if matches!(spec["type"].as_str(), Some("NodePort" | "LoadBalancer")) {
        let range = settings.node_ports.clone();
        let mut causes = Vec::new();
        // Ports given to this Service's earlier ports in this call.
        let mut here = BTreeSet::new();
        for (i, p) in spec["ports"]
            .as_array_mut()
            .into_iter()
            .flatten()
            .enumerate()
        {
            match p["nodePort"].as_u64() {
                Some(n) if !range.contains(&(n as u16)) || n > 65_535 => causes.push(Cause::invalid(format!("spec.ports[{i}].nodePort"), format!("Invalid value: {n}: provided port is not in the valid range. The range of valid ports is {}-{}", range.start(), range.end()))),
                Some(n) if node_ports.contains(&n) || !here.insert(n) => causes.push(Cause::invalid(format!("spec.ports[{i}].nodePort"), format!("Invalid value: {n}: provided port is already allocated"))),
                Some(_) => {}
                None => {
                    let size = u64::from(range.end() - range.start() + 1);
                    let static_band = (size / 32).clamp(16, 128).min(size);
                    let (lo, hi) = (u64::from(*range.start()), u64::from(*range.end()));
                    let n = (lo + static_band..=hi).chain(lo..lo + static_band).find(|n| !node_ports.contains(n) && !here.contains(n));
                    let Some(n) = n else {
                        return Err(ApiError::internal("the node port range is exhausted"));
                    };
                    here.insert(n);
                    p["nodePort"] = json!(n);
                }
            }
        }
        if !causes.is_empty() {
            return Err(ApiError::invalid("Service", &name, causes));
        }
    }
    Ok(())
}

/// A 422 `Invalid` for `obj` of `res` if upstream's validation finds
/// anything wrong with it (as created, or as an update of `old`).
pub(super) fn validate(res: &Resource, obj: &Value, old: Option<&Value>) -> ApiResult<()> {
    let causes = match old {
        None => super::validation::create(res.kind, res.group, obj),
        Some(old) => super::validation::update(res.kind, res.group, old, obj),
    };
    if causes.is_empty() {
        return Ok(());
    }
    Err(ApiError::invalid_in(
        res.group,
        res.kind,
        objects::name_of(obj).unwrap_or_default(),
        causes,
    ))
}

/// Deletes everything in a terminating namespace, then the namespace, in
/// the background (objects held by finalizers are waited for).
pub(super) async fn finalize_namespace<S: Store>(api: &ApiServer<S>, ns: &str) -> ApiResult<()> {
    let (store, alloc, ns) = (
        Arc::clone(&api.store),
        Arc::clone(&api.alloc),
        ns.to_owned(),
    );
    tokio::spawn(async move {
        for _ in 0..600 {
            let mut remaining = 0;
            for res in RESOURCES.iter().filter(|r| r.namespaced) {
                let Ok(page) = store.list(&res.key_prefix(Some(&ns)), None, None).await else {
                    return;
                };
                for kv in page.items {
                    let held = serde_json::from_slice::<Value>(&kv.value)
                        .ok()
                        .and_then(|o| {
                            o.pointer("/metadata/finalizers")
                                .and_then(Value::as_array)
                                .map(|f| !f.is_empty())
                        })
                        .unwrap_or(false);
                    if held {
                        remaining += 1;
                    } else {
                        let _ = store.delete(&kv.key, Some(kv.mod_rev)).await;
                    }
                }
            }
            if remaining == 0 {
                let _ = store
                    .delete(&Resource::namespaces().key(None, &ns), None)
                    .await;
                // Its Services' addresses are free again.
                alloc.lock().await.forget();
                return;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    Ok(())
}
