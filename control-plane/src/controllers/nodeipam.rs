//! Node IPAM (upstream's `nodeipam` controller, `RangeAllocator`): every
//! Node gets a `podCIDR` — the next free subnet of `--cluster-cidr` of
//! `--node-cidr-mask-size` bits — written into `spec.podCIDR` and
//! `spec.podCIDRs` (which never change once set). Subnets overlapping
//! `--service-cluster-ip-range` are never handed out; a deleted Node's
//! subnet is free again. When the range is exhausted the Node gets a
//! Warning Event `CIDRNotAvailable` and is retried with backoff.
//!
//! IPv4 only for now (dual-stack clusters pass one CIDR per family
//! upstream).
use std::{
    collections::{HashMap, HashSet},
    net::Ipv4Addr,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context as _, bail};
use k8s_openapi::api::core::v1::Node;
use kube::{
    Api, ResourceExt as _,
    api::{Patch, PatchParams},
    runtime::{
        controller::{Action, Controller},
        reflector::{ObjectRef, Store},
    },
};
use serde_json::json;

use super::{Backoff, Error, Result, Shared};
use crate::client::events::{EventType, Recorder};

/// An IPv4 CIDR: network address and prefix length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Cidr {
    pub base: u32,
    pub prefix: u8,
}

impl Cidr {
    /// Parses `a.b.c.d/n` (host bits are cleared).
    pub fn parse(s: &str) -> anyhow::Result<Self> {
        let (ip, len) = s
            .trim()
            .split_once('/')
            .with_context(|| format!("{s:?} is not a CIDR (a.b.c.d/n)"))?;
        let ip: Ipv4Addr = ip
            .parse()
            .with_context(|| format!("{s:?}: only IPv4 CIDRs are supported"))?;
        let prefix: u8 = len
            .parse()
            .ok()
            .filter(|p| *p <= 32)
            .with_context(|| format!("{s:?}: invalid prefix length"))?;
        Ok(Self {
            base: u32::from(ip) & mask(prefix),
            prefix,
        })
    }

    fn last(&self) -> u32 {
        self.base | !mask(self.prefix)
    }

    fn overlaps(&self, other: &Cidr) -> bool {
        self.base <= other.last() && other.base <= self.last()
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", Ipv4Addr::from(self.base), self.prefix)
    }
}

fn mask(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix))
    }
}

/// The allocator's ranges.
#[derive(Clone, Debug)]
pub struct Settings {
    /// `--cluster-cidr`.
    pub cluster_cidr: Cidr,
    /// `--node-cidr-mask-size` (24).
    pub node_mask: u8,
    /// `--service-cluster-ip-range`, never handed out.
    pub service_cidr: Option<Cidr>,
}

impl Settings {
    /// Checks the mask fits the cluster CIDR (upstream refuses to start
    /// otherwise).
    pub fn new(cluster: &str, node_mask: u8, service: Option<&str>) -> anyhow::Result<Self> {
        let cluster_cidr = Cidr::parse(cluster).context("--cluster-cidr")?;
        if node_mask < cluster_cidr.prefix || node_mask > 30 {
            bail!(
                "--node-cidr-mask-size {node_mask} must be between the cluster CIDR's prefix ({}) and 30",
                cluster_cidr.prefix
            );
        }
        let service_cidr = service
            .map(Cidr::parse)
            .transpose()
            .context("--service-cluster-ip-range")?;
        Ok(Self {
            cluster_cidr,
            node_mask,
            service_cidr,
        })
    }
}

/// The first subnet of the cluster CIDR that is neither `used` nor
/// overlapping the service range (pure).
pub fn next_free(settings: &Settings, used: &HashSet<Cidr>) -> Option<Cidr> {
    let count = 1u64 << (settings.node_mask - settings.cluster_cidr.prefix);
    let step = 1u64 << (32 - settings.node_mask);
    (0..count)
        .map(|i| Cidr {
            base: (u64::from(settings.cluster_cidr.base) + i * step) as u32,
            prefix: settings.node_mask,
        })
        .find(|c| {
            !used.iter().any(|u| u.overlaps(c))
                && settings.service_cidr.is_none_or(|s| !s.overlaps(c))
        })
}

struct Ctx {
    shared: Arc<Shared>,
    nodes: Store<Node>,
    settings: Settings,
    /// Given out and not yet seen in the cache: node → subnet.
    pending: Mutex<HashMap<String, Cidr>>,
    recorder: Recorder,
    backoff: Backoff<ObjectRef<Node>>,
}

/// Runs the allocator.
pub async fn run(shared: Arc<Shared>, settings: Settings) -> anyhow::Result<()> {
    let nodes = shared.nodes();
    nodes.ready().await;
    let ctx = Arc::new(Ctx {
        recorder: shared.recorder("node-ipam-controller"),
        shared: Arc::clone(&shared),
        nodes: nodes.store(),
        settings,
        pending: Mutex::default(),
        backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(60)),
    });
    let results = Controller::for_stream(nodes.subscribe(), nodes.store()).run(
        reconcile,
        |node: Arc<Node>, _e: &Error, ctx: Arc<Ctx>| {
            Action::requeue(ctx.backoff.next(ObjectRef::from_obj(node.as_ref())))
        },
        ctx,
    );
    super::drive("nodeipam", results).await;
    Ok(())
}

fn pod_cidrs(node: &Node) -> Vec<Cidr> {
    let spec = node.spec.as_ref();
    spec.and_then(|s| s.pod_cidrs.clone())
        .unwrap_or_default()
        .into_iter()
        .chain(spec.and_then(|s| s.pod_cidr.clone()))
        .filter_map(|c| Cidr::parse(&c).ok())
        .collect()
}

async fn reconcile(node: Arc<Node>, ctx: Arc<Ctx>) -> Result<Action> {
    let name = node.name_any();
    if !pod_cidrs(&node).is_empty() {
        ctx.pending.lock().expect("pending").remove(&name);
        ctx.backoff.reset(&ObjectRef::from_obj(node.as_ref()));
        return Ok(Action::await_change());
    }
    let cidr = {
        let mut pending = ctx.pending.lock().expect("pending");
        if let Some(c) = pending.get(&name) {
            *c
        } else {
            let mut used: HashSet<Cidr> = ctx
                .nodes
                .state()
                .iter()
                .flat_map(|n| pod_cidrs(n))
                .collect();
            used.extend(pending.values().copied());
            let Some(c) = next_free(&ctx.settings, &used) else {
                drop(pending);
                let msg = format!(
                    "Node {name} status is now: CIDRNotAvailable (no free /{} in {})",
                    ctx.settings.node_mask, ctx.settings.cluster_cidr
                );
                ctx.recorder.publish(
                    node.as_ref(),
                    EventType::Warning,
                    "CIDRNotAvailable",
                    msg.clone(),
                );
                return Err(Error::Waiting(msg));
            };
            pending.insert(name.clone(), c);
            c
        }
    };
    let api: Api<Node> = Api::all(ctx.shared.client.clone());
    let patch = json!({"spec": {"podCIDR": cidr.to_string(), "podCIDRs": [cidr.to_string()]}});
    api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(Error::api(format!("setting the podCIDR of node {name}")))?;
    ctx.recorder.publish(
        node.as_ref(),
        EventType::Normal,
        "CIDRAssignmentSucceeded",
        format!("Node {name} got podCIDR {cidr}"),
    );
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets_in_order_skipping_used_and_the_service_range() {
        let s = Settings::new("10.0.0.0/14", 24, Some("10.0.1.0/24")).unwrap();
        let mut used = HashSet::new();
        let a = next_free(&s, &used).unwrap();
        assert_eq!(a.to_string(), "10.0.0.0/24");
        used.insert(a);
        // 10.0.1.0/24 is the service range.
        assert_eq!(next_free(&s, &used).unwrap().to_string(), "10.0.2.0/24");
        let tiny = Settings::new("10.1.0.0/23", 24, None).unwrap();
        let used: HashSet<Cidr> = [
            Cidr::parse("10.1.0.0/24").unwrap(),
            Cidr::parse("10.1.1.0/24").unwrap(),
        ]
        .into();
        assert_eq!(next_free(&tiny, &used), None);
        assert!(Settings::new("10.0.0.0/24", 16, None).is_err());
        assert!(Cidr::parse("fd00::/64").is_err());
    }
}
