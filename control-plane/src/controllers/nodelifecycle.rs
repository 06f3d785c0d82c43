//! Node lifecycle (upstream's `node-lifecycle-controller` and
//! `taint-eviction-controller`):
//!
//! - **Health.** A node is heard from when its Lease in `kube-node-lease`
//!   is renewed or its `Ready` heartbeat changes — measured on this
//!   controller's clock, never by comparing remote timestamps. Silent for
//!   `--node-monitor-grace-period` (50 s; `--node-startup-grace-period`,
//!   60 s, if it never posted `Ready`), its `Ready`, `MemoryPressure`,
//!   `DiskPressure` and `PIDPressure` conditions become `Unknown` (reason
//!   `NodeStatusUnknown`, "Kubelet stopped posting node status."), a
//!   `NodeNotReady` Event is written, and every pod on it gets `Ready=False`
//!   — so its endpoints stop being ready.
//! - **Taints**, kept in step with the conditions: `Ready=False` →
//!   `node.kubernetes.io/not-ready`, `Unknown` →
//!   `node.kubernetes.io/unreachable` (each `NoSchedule` and `NoExecute`);
//!   pressure conditions and `spec.unschedulable` → their `NoSchedule`
//!   taints. They go when the condition clears.
//! - **Eviction.** A pod on a node with a `NoExecute` taint it does not
//!   tolerate is deleted at once; one that tolerates it for
//!   `tolerationSeconds` is deleted that long after the taint was added
//!   (Event `TaintManagerEviction`). Its controller then replaces it on a
//!   healthy node.
//!
//! Not done: upstream's per-zone eviction rate limits and its "full
//! disruption" mode (all nodes of a zone down → no evictions).
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::StreamExt as _;
use k8s_openapi::{
    api::{
        coordination::v1::Lease,
        core::v1::{Node, NodeCondition, Pod, Taint},
    },
    apimachinery::pkg::apis::meta::v1::Time,
    jiff::Timestamp,
};
use kube::{
    Api, ResourceExt as _,
    api::{DeleteParams, Patch, PatchParams},
    runtime::{
        controller::{Action, Controller},
        reflector::{ObjectRef, Store},
    },
};
use serde_json::json;
use tracing::info;

use super::{Backoff, Error, Result, Shared, pods};
use crate::{
    client::{
        self,
        events::{EventType, Recorder},
    },
    scheduler::plugins::tolerates,
};

/// Timings (upstream's flags).
#[derive(Clone, Debug)]
pub struct Settings {
    /// `--node-monitor-period` (5 s): how often each node is checked.
    pub monitor_period: Duration,
    /// `--node-monitor-grace-period` (50 s since 1.32).
    pub grace_period: Duration,
    /// `--node-startup-grace-period` (60 s).
    pub startup_grace_period: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            monitor_period: Duration::from_secs(5),
            grace_period: Duration::from_secs(50),
            startup_grace_period: Duration::from_secs(60),
        }
    }
}

pub const TAINT_NOT_READY: &str = "node.kubernetes.io/not-ready";
pub const TAINT_UNREACHABLE: &str = "node.kubernetes.io/unreachable";
pub const TAINT_UNSCHEDULABLE: &str = "node.kubernetes.io/unschedulable";

/// What we last heard from a node, and when (our clock).
struct Health {
    lease_renew: Option<Timestamp>,
    heartbeat: Option<Timestamp>,
    probe: Instant,
}

struct Ctx {
    shared: Arc<Shared>,
    settings: Settings,
    leases: Store<Lease>,
    pods: Store<Pod>,
    health: Mutex<HashMap<String, Health>>,
    recorder: Recorder,
    backoff: Backoff<ObjectRef<Node>>,
}

/// Runs the controller.
pub async fn run(shared: Arc<Shared>, settings: Settings) -> anyhow::Result<()> {
    let nodes = shared.nodes();
    let leases = shared.node_leases();
    let pods = shared.pods();
    nodes.ready().await;
    leases.ready().await;
    pods.ready().await;
    let ctx = Arc::new(Ctx {
        recorder: shared.recorder("node-controller"),
        shared: Arc::clone(&shared),
        settings,
        leases: leases.store(),
        pods: pods.store(),
        health: Mutex::default(),
        backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(30)),
    });
    // Pods landing on a tainted node are checked too.
    let pod_nodes = pods.subscribe().filter_map(|p| async move {
        p.ok()
            .and_then(|p| pods::node_name(&p).map(ObjectRef::<Node>::new))
    });
    let results = Controller::for_stream(nodes.subscribe(), nodes.store())
        .watches_stream(leases.subscribe(), |l: Lease| {
            Some(ObjectRef::<Node>::new(&l.name_any()))
        })
        .reconcile_on(pod_nodes)
        .run(
            reconcile,
            |node: Arc<Node>, _e: &Error, ctx: Arc<Ctx>| {
                Action::requeue(ctx.backoff.next(ObjectRef::from_obj(node.as_ref())))
            },
            ctx,
        );
    super::drive("nodelifecycle", results).await;
    Ok(())
}

fn condition<'a>(node: &'a Node, ty: &str) -> Option<&'a NodeCondition> {
    node.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == ty)
}

/// The taints the node's conditions call for (keys and effects), among
/// those this controller manages.
pub fn condition_taints(node: &Node) -> Vec<(&'static str, &'static str)> {
    let mut out = Vec::new();
    match condition(node, "Ready").map(|c| c.status.as_str()) {
        Some("False") => {
            out.push((TAINT_NOT_READY, "NoSchedule"));
            out.push((TAINT_NOT_READY, "NoExecute"));
        }
        Some("Unknown") => {
            out.push((TAINT_UNREACHABLE, "NoSchedule"));
            out.push((TAINT_UNREACHABLE, "NoExecute"));
        }
        _ => {}
    }
    for (cond, key) in [
        ("MemoryPressure", "node.kubernetes.io/memory-pressure"),
        ("DiskPressure", "node.kubernetes.io/disk-pressure"),
        ("PIDPressure", "node.kubernetes.io/pid-pressure"),
        (
            "NetworkUnavailable",
            "node.kubernetes.io/network-unavailable",
        ),
    ] {
        if condition(node, cond).is_some_and(|c| c.status == "True") {
            out.push((key, "NoSchedule"));
        }
    }
    if node.spec.as_ref().and_then(|s| s.unschedulable) == Some(true) {
        out.push((TAINT_UNSCHEDULABLE, "NoSchedule"));
    }
    out
}

const MANAGED: &[&str] = &[
    TAINT_NOT_READY,
    TAINT_UNREACHABLE,
    TAINT_UNSCHEDULABLE,
    "node.kubernetes.io/memory-pressure",
    "node.kubernetes.io/disk-pressure",
    "node.kubernetes.io/pid-pressure",
    "node.kubernetes.io/network-unavailable",
];

/// The node's taints with the managed ones made to match its conditions
/// (others untouched; kept ones keep their `timeAdded`). `None` if nothing
/// changes.
pub fn reconcile_taints(node: &Node, now: Timestamp) -> Option<Vec<Taint>> {
    let current: Vec<Taint> = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default();
    let want = condition_taints(node);
    let mut out: Vec<Taint> = current
        .iter()
        .filter(|t| {
            !MANAGED.contains(&t.key.as_str())
                || want.iter().any(|(k, e)| *k == t.key && *e == t.effect)
        })
        .cloned()
        .collect();
    for (k, e) in &want {
        if !out.iter().any(|t| t.key == *k && t.effect == *e) {
            out.push(Taint {
                key: (*k).to_owned(),
                effect: (*e).to_owned(),
                time_added: (*e == "NoExecute").then_some(Time(now)),
                value: None,
            });
        }
    }
    (out != current).then_some(out)
}

/// When `pod` must leave a node with these taints: `Some(now)` for an
/// untolerated `NoExecute` taint, the earliest `timeAdded +
/// tolerationSeconds` of the tolerated ones with a limit, `None` if it may
/// stay.
pub fn eviction_time(pod: &Pod, taints: &[Taint], now: Timestamp) -> Option<Timestamp> {
    let tolerations = pod
        .spec
        .as_ref()
        .and_then(|s| s.tolerations.clone())
        .unwrap_or_default();
    let mut when: Option<Timestamp> = None;
    for taint in taints.iter().filter(|t| t.effect == "NoExecute") {
        let matching: Vec<_> = tolerations.iter().filter(|t| tolerates(t, taint)).collect();
        if matching.is_empty() {
            return Some(now);
        }
        // The shortest limit among matching tolerations; none = forever.
        let limit = matching
            .iter()
            .map(|t| t.toleration_seconds)
            .min_by_key(|s| s.unwrap_or(i64::MAX));
        if let Some(Some(secs)) = limit {
            let added = taint.time_added.as_ref().map_or(now, |t| t.0);
            let at = added
                .checked_add(k8s_openapi::jiff::SignedDuration::from_secs(secs.max(0)))
                .unwrap_or(now);
            when = Some(when.map_or(at, |w| w.min(at)));
        }
    }
    when
}

async fn reconcile(node: Arc<Node>, ctx: Arc<Ctx>) -> Result<Action> {
    let name = node.name_any();
    let nodes: Api<Node> = Api::all(ctx.shared.client.clone());
    let now = Timestamp::now();
    // 1. Health.
    let lease = ctx
        .leases
        .get(&ObjectRef::new(&name).within("kube-node-lease"))
        .and_then(|l| l.spec.as_ref()?.renew_time.as_ref().map(|t| t.0));
    let ready = condition(&node, "Ready");
    let heartbeat = ready
        .and_then(|c| c.last_heartbeat_time.as_ref())
        .map(|t| t.0);
    let silent_for = {
        let mut health = ctx.health.lock().expect("node health");
        let h = health.entry(name.clone()).or_insert(Health {
            lease_renew: lease,
            heartbeat,
            probe: Instant::now(),
        });
        if h.lease_renew != lease || h.heartbeat != heartbeat {
            h.lease_renew = lease;
            h.heartbeat = heartbeat;
            h.probe = Instant::now();
        }
        h.probe.elapsed()
    };
    let grace = if ready.is_none() {
        ctx.settings.startup_grace_period
    } else {
        ctx.settings.grace_period
    };
    let mut node = node.as_ref().clone();
    if silent_for > grace && ready.is_none_or(|c| c.status != "Unknown") {
        let was_ready = ready.is_some_and(|c| c.status == "True");
        let mut conditions = node
            .status
            .as_ref()
            .and_then(|s| s.conditions.clone())
            .unwrap_or_default();
        for ty in ["Ready", "MemoryPressure", "DiskPressure", "PIDPressure"] {
            match conditions.iter_mut().find(|c| c.type_ == ty) {
                Some(c) => {
                    if c.status != "Unknown" {
                        c.status = "Unknown".into();
                        c.reason = Some("NodeStatusUnknown".into());
                        c.message = Some("Kubelet stopped posting node status.".into());
                        c.last_transition_time = Some(Time(now));
                    }
                }
                None => conditions.push(NodeCondition {
                    type_: ty.into(),
                    status: "Unknown".into(),
                    reason: Some("NodeStatusNeverUpdated".into()),
                    message: Some("Kubelet never posted node status.".into()),
                    last_heartbeat_time: None,
                    last_transition_time: Some(Time(now)),
                }),
            }
        }
        let patch = json!({"status": {"conditions": conditions}});
        node = nodes
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(Error::api(format!("marking node {name} Unknown")))?;
        info!(node = %name, ?silent_for, "node stopped posting status");
        if was_ready {
            ctx.recorder.publish(
                &node,
                EventType::Normal,
                "NodeNotReady",
                format!("Node {name} status is now: NodeNotReady"),
            );
        }
    }
    // 2. Pods of a node that is not Ready are not ready either.
    let node_ready = condition(&node, "Ready").is_some_and(|c| c.status == "True");
    let on_node: Vec<Arc<Pod>> = ctx
        .pods
        .state_filter(|p| pods::node_name(p) == Some(name.as_str()));
    if !node_ready && condition(&node, "Ready").is_some() {
        for pod in on_node.iter().filter(|p| pods::is_ready(p)) {
            mark_not_ready(&ctx, pod).await?;
        }
    }
    // 3. Taints follow the conditions.
    if let Some(taints) = reconcile_taints(&node, now) {
        let patch = json!({"spec": {"taints": taints}});
        node = nodes
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(Error::api(format!("updating the taints of node {name}")))?;
    }
    // 4. Evict pods that do not tolerate its NoExecute taints.
    let taints = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default();
    let mut next = ctx.settings.monitor_period;
    for pod in on_node
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
    {
        let Some(at) = eviction_time(pod, &taints, now) else {
            continue;
        };
        if at <= now {
            evict(&ctx, pod).await?;
        } else {
            let wait = (at.as_millisecond() - now.as_millisecond()).max(0) as u64;
            next = next.min(Duration::from_millis(wait));
        }
    }
    ctx.backoff.reset(&ObjectRef::new(&name));
    Ok(Action::requeue(next))
}

async fn mark_not_ready(ctx: &Ctx, pod: &Pod) -> Result<()> {
    let ns = pod.namespace().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(ctx.shared.client.clone(), &ns);
    let mut conditions = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    for c in conditions.iter_mut().filter(|c| c.type_ == "Ready") {
        c.status = "False".into();
        c.last_transition_time = Some(Time(Timestamp::now()));
    }
    let patch = json!({"status": {"conditions": conditions}});
    match api
        .patch_status(
            &pod.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if client::is_not_found(&e) => Ok(()),
        Err(e) => Err(Error::api(format!(
            "marking pod {ns}/{} not ready",
            pod.name_any()
        ))(e)),
    }
}

async fn evict(ctx: &Ctx, pod: &Pod) -> Result<()> {
    let ns = pod.namespace().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(ctx.shared.client.clone(), &ns);
    ctx.recorder.publish(
        pod,
        EventType::Normal,
        "TaintManagerEviction",
        format!("Marking for deletion Pod {ns}/{}", pod.name_any()),
    );
    match api.delete(&pod.name_any(), &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(e) if client::is_not_found(&e) => Ok(()),
        Err(e) => Err(Error::api(format!("evicting pod {ns}/{}", pod.name_any()))(
            e,
        )),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn taints_follow_conditions_and_keep_foreign_ones() {
        let node: Node = serde_json::from_value(json!({
            "metadata": {"name": "n"},
            "spec": {"taints": [{"key": "dedicated", "value": "x", "effect": "NoSchedule"},
                                {"key": TAINT_NOT_READY, "effect": "NoExecute"}]},
            "status": {"conditions": [{"type": "Ready", "status": "Unknown"}]}
        }))
        .unwrap();
        let now = Timestamp::now();
        let t = reconcile_taints(&node, now).unwrap();
        let keys: Vec<(&str, &str)> = t
            .iter()
            .map(|t| (t.key.as_str(), t.effect.as_str()))
            .collect();
        assert_eq!(
            keys,
            [
                ("dedicated", "NoSchedule"),
                (TAINT_UNREACHABLE, "NoSchedule"),
                (TAINT_UNREACHABLE, "NoExecute")
            ]
        );
        let mut healed = node.clone();
        healed.spec.as_mut().unwrap().taints = Some(t);
        healed.status.as_mut().unwrap().conditions.as_mut().unwrap()[0].status = "True".into();
        let t = reconcile_taints(&healed, now).unwrap();
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn eviction_waits_for_toleration_seconds() {
        let now: Timestamp = "2025-01-01T00:00:10Z".parse().unwrap();
        let taint = Taint {
            key: TAINT_UNREACHABLE.into(),
            effect: "NoExecute".into(),
            time_added: Some(Time("2025-01-01T00:00:00Z".parse().unwrap())),
            value: None,
        };
        let plain: Pod = serde_json::from_value(json!({"spec": {"containers": []}})).unwrap();
        assert_eq!(
            eviction_time(&plain, std::slice::from_ref(&taint), now),
            Some(now)
        );
        let tolerant: Pod = serde_json::from_value(json!({"spec": {"containers": [], "tolerations": [
            {"key": TAINT_UNREACHABLE, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 30}]}}))
        .unwrap();
        assert_eq!(
            eviction_time(&tolerant, std::slice::from_ref(&taint), now),
            Some("2025-01-01T00:00:30Z".parse().unwrap())
        );
        let forever: Pod =
            serde_json::from_value(json!({"spec": {"containers": [], "tolerations": [
            {"operator": "Exists"}]}}))
            .unwrap();
        assert_eq!(eviction_time(&forever, &[taint], now), None);
    }
}
