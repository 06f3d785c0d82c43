//! The DaemonSet controller (upstream's `daemonset-controller`): one pod
//! per eligible node.
//!
//! A node is eligible when the template's `nodeName` (if any) is that
//! node, its `nodeSelector` and required node affinity match, and it has no
//! `NoSchedule`/`NoExecute` taint the pod does not tolerate — counting the
//! tolerations every daemon pod gets (`not-ready` and `unreachable`
//! `NoExecute`; `disk-`, `memory-`, `pid-pressure` and `unschedulable`
//! `NoSchedule`; `network-unavailable` for host-network pods). A running
//! daemon pod stays unless a `NoExecute` taint or the selectors turn it
//! away (upstream's `NodeShouldRunDaemonPod`).
//!
//! Pods are created for the default scheduler, pinned by node affinity
//! `matchFields metadata.name In [node]`, labelled
//! `controller-revision-hash` (a hash of the template) and
//! `pod-template-generation`. `RollingUpdate` (default `maxUnavailable` 1)
//! replaces pods of older templates while at most `maxUnavailable` nodes
//! lack an available pod; `OnDelete` waits for the user to delete them.
//! Failed daemon pods and extra pods on one node are deleted.
//!
//! Unlike upstream, the template history is not kept in ControllerRevision
//! objects (the API server does not serve them yet).
use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
    time::Duration,
};

use futures::future::join_all;
use k8s_openapi::{
    api::{
        apps::v1::DaemonSet,
        core::v1::{
            Affinity, Node, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm,
            Pod, Toleration,
        },
    },
    apimachinery::pkg::util::intstr::IntOrString,
    jiff::Timestamp,
};
use kube::{
    Api, ResourceExt as _,
    api::{DeleteParams, Patch, PatchParams, PostParams},
    core::SelectorExt as _,
    runtime::{
        controller::{Action, Config, Controller},
        reflector::{ObjectRef, Store},
    },
};
use serde_json::json;

use super::{
    Backoff, Error, Result, Shared, deployment::core::template_hash, pods,
    replicaset::pod_from_template,
};
use crate::{
    client::{
        self,
        events::{EventType, Recorder},
    },
    scheduler::plugins,
};

/// `controller-revision-hash`.
pub const REVISION_HASH: &str = "controller-revision-hash";
/// `pod-template-generation` (legacy, still set upstream).
pub const TEMPLATE_GENERATION: &str = "pod-template-generation";

struct Ctx {
    shared: Arc<Shared>,
    nodes: Store<Node>,
    pods: Store<Pod>,
    recorder: Recorder,
    backoff: Backoff<ObjectRef<DaemonSet>>,
}

/// Runs the controller.
pub async fn run(shared: Arc<Shared>, workers: u16) -> anyhow::Result<()> {
    let dss = shared.daemon_sets();
    let nodes = shared.nodes();
    let pods_inf = shared.pods();
    dss.ready().await;
    nodes.ready().await;
    pods_inf.ready().await;
    let ctx = Arc::new(Ctx {
        recorder: shared.recorder("daemonset-controller"),
        shared: Arc::clone(&shared),
        nodes: nodes.store(),
        pods: pods_inf.store(),
        backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(300)),
    });
    let all = dss.store();
    let results = Controller::for_stream(dss.subscribe(), dss.store())
        .owns_stream(pods_inf.subscribe())
        .watches_stream(nodes.subscribe(), move |_n: Node| {
            all.state()
                .iter()
                .map(|d| ObjectRef::from_obj(d.as_ref()))
                .collect::<Vec<_>>()
        })
        .with_config(Config::default().concurrency(workers))
        .run(
            reconcile,
            |d: Arc<DaemonSet>, _e: &Error, ctx: Arc<Ctx>| {
                Action::requeue(ctx.backoff.next(ObjectRef::from_obj(d.as_ref())))
            },
            ctx,
        );
    super::drive("daemonset", results).await;
    Ok(())
}

fn tol(key: &str, effect: &str) -> Toleration {
    Toleration {
        key: Some(key.into()),
        operator: Some("Exists".into()),
        effect: Some(effect.into()),
        ..Toleration::default()
    }
}

/// The tolerations every daemon pod gets (upstream's
/// `AddOrUpdateDaemonPodTolerations`).
pub fn daemon_tolerations(host_network: bool) -> Vec<Toleration> {
    let mut t = vec![
        tol("node.kubernetes.io/not-ready", "NoExecute"),
        tol("node.kubernetes.io/unreachable", "NoExecute"),
        tol("node.kubernetes.io/disk-pressure", "NoSchedule"),
        tol("node.kubernetes.io/memory-pressure", "NoSchedule"),
        tol("node.kubernetes.io/pid-pressure", "NoSchedule"),
        tol("node.kubernetes.io/unschedulable", "NoSchedule"),
    ];
    if host_network {
        t.push(tol("node.kubernetes.io/network-unavailable", "NoSchedule"));
    }
    t
}

/// The daemon pod for `node`: the template with the daemon tolerations,
/// pinned to the node by `matchFields metadata.name`, labelled with the
/// template's hash and generation.
pub fn daemon_pod(ds: &DaemonSet, node: &str, hash: &str) -> Pod {
    let template = ds
        .spec
        .as_ref()
        .map(|s| s.template.clone())
        .unwrap_or_default();
    let mut pod = pod_from_template(ds, &template);
    let labels = pod.metadata.labels.get_or_insert_with(BTreeMap::new);
    labels.insert(REVISION_HASH.into(), hash.into());
    labels.insert(
        TEMPLATE_GENERATION.into(),
        ds.metadata.generation.unwrap_or(0).to_string(),
    );
    let spec = pod.spec.get_or_insert_with(Default::default);
    let host_network = spec.host_network == Some(true);
    let tolerations = spec.tolerations.get_or_insert_with(Vec::new);
    for t in daemon_tolerations(host_network) {
        if !tolerations
            .iter()
            .any(|x| x.key == t.key && x.effect == t.effect)
        {
            tolerations.push(t);
        }
    }
    let name_req = NodeSelectorRequirement {
        key: "metadata.name".into(),
        operator: "In".into(),
        values: Some(vec![node.into()]),
    };
    let affinity = spec.affinity.get_or_insert_with(Affinity::default);
    let na = affinity
        .node_affinity
        .get_or_insert_with(NodeAffinity::default);
    let required = na
        .required_during_scheduling_ignored_during_execution
        .get_or_insert_with(|| NodeSelector {
            node_selector_terms: Vec::new(),
        });
    if required.node_selector_terms.is_empty() {
        required
            .node_selector_terms
            .push(NodeSelectorTerm::default());
    }
    for term in &mut required.node_selector_terms {
        term.match_fields = Some(vec![name_req.clone()]);
    }
    pod
}

/// (should run, may keep running) for a template on a node (upstream's
/// `NodeShouldRunDaemonPod`).
pub fn should_run(ds: &DaemonSet, node: &Node) -> (bool, bool) {
    let template = ds
        .spec
        .as_ref()
        .map(|s| s.template.clone())
        .unwrap_or_default();
    let mut probe = Pod {
        metadata: Default::default(),
        spec: template.spec.clone(),
        status: None,
    };
    if let Some(n) = probe.spec.as_ref().and_then(|s| s.node_name.as_deref())
        && Some(n) != node.metadata.name.as_deref()
    {
        return (false, false);
    }
    let spec = probe.spec.get_or_insert_with(Default::default);
    let host_network = spec.host_network == Some(true);
    spec.tolerations
        .get_or_insert_with(Vec::new)
        .extend(daemon_tolerations(host_network));
    if !plugins::node_affinity_matches(&probe, node) {
        return (false, false);
    }
    let run = plugins::untolerated(&probe, node, &["NoSchedule", "NoExecute"]).is_none();
    let keep = plugins::untolerated(&probe, node, &["NoExecute"]).is_none();
    (run, keep)
}

/// The node a daemon pod is for: its `nodeName`, or its `matchFields
/// metadata.name` pin.
pub fn pod_node(pod: &Pod) -> Option<String> {
    if let Some(n) = pods::node_name(pod) {
        return Some(n.to_owned());
    }
    pod.spec
        .as_ref()?
        .affinity
        .as_ref()?
        .node_affinity
        .as_ref()?
        .required_during_scheduling_ignored_during_execution
        .as_ref()?
        .node_selector_terms
        .iter()
        .flat_map(|t| t.match_fields.iter().flatten())
        .find(|r| r.key == "metadata.name" && r.operator == "In")
        .and_then(|r| r.values.as_ref()?.first().cloned())
}

fn template_hash_of(ds: &DaemonSet) -> String {
    let t = ds
        .spec
        .as_ref()
        .map(|s| serde_json::to_value(&s.template).unwrap_or_default())
        .unwrap_or_default();
    template_hash(&t, ds.status.as_ref().and_then(|s| s.collision_count))
}

async fn reconcile(ds: Arc<DaemonSet>, ctx: Arc<Ctx>) -> Result<Action> {
    let key = ObjectRef::from_obj(ds.as_ref());
    let r = sync(&ds, &ctx).await;
    if r.is_ok() {
        ctx.backoff.reset(&key);
    }
    r
}

async fn sync(ds: &DaemonSet, ctx: &Ctx) -> Result<Action> {
    let ns = ds.namespace().unwrap_or_default();
    let name = ds.name_any();
    let uid = ds.uid().unwrap_or_default();
    let spec = ds.spec.clone().unwrap_or_default();
    let selector = pods::selector(&spec.selector)
        .map_err(|e| Error::Invalid(format!("DaemonSet {ns}/{name}: invalid selector: {e}")))?;
    let hash = template_hash_of(ds);
    let api: Api<Pod> = Api::namespaced(ctx.shared.client.clone(), &ns);
    // Our pods by node (claimed by controller reference and selector).
    let mut by_node: HashMap<String, Vec<Arc<Pod>>> = HashMap::new();
    for p in ctx.pods.state_filter(|p| {
        p.metadata.namespace.as_deref() == Some(ns.as_str())
            && pods::controller_of(p).is_some_and(|r| r.uid == uid)
            && selector.matches(pods::labels(p))
            && p.metadata.deletion_timestamp.is_none()
    }) {
        if let Some(n) = pod_node(&p) {
            by_node.entry(n).or_default().push(p);
        }
    }
    let nodes = ctx.nodes.state();
    let mut to_create: Vec<String> = Vec::new();
    let mut to_delete: Vec<Arc<Pod>> = Vec::new();
    let (mut desired, mut current, mut misscheduled, mut ready, mut available, mut updated) =
        (0, 0, 0, 0, 0, 0);
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let now = Timestamp::now();
    let mut old_available: Vec<Arc<Pod>> = Vec::new();
    let mut unavailable_nodes = 0;
    for node in &nodes {
        let node_name = node.name_any();
        let (run, keep) = should_run(ds, node);
        let mut here = by_node.remove(&node_name).unwrap_or_default();
        here.sort_by_key(|p| p.metadata.creation_timestamp.clone().map(|t| t.0));
        // Failed pods go (and are replaced).
        let (failed, live): (Vec<_>, Vec<_>) =
            here.into_iter().partition(|p| pods::phase(p) == "Failed");
        to_delete.extend(failed);
        if run {
            desired += 1;
        }
        match (live.first(), run, keep) {
            (None, true, _) => {
                to_create.push(node_name.clone());
                unavailable_nodes += 1;
            }
            (Some(_), _, false) => {
                misscheduled += 1;
                to_delete.extend(live.iter().cloned());
            }
            (Some(first), run, true) => {
                if run {
                    current += 1;
                } else {
                    misscheduled += 1;
                }
                to_delete.extend(live.iter().skip(1).cloned());
                let is_ready = pods::is_ready(first);
                let is_available = pods::is_available(first, min_ready, now);
                ready += i32::from(is_ready);
                available += i32::from(is_available);
                let up_to_date = pods::labels(first.as_ref()).get(REVISION_HASH) == Some(&hash);
                updated += i32::from(up_to_date);
                if !is_available {
                    unavailable_nodes += 1;
                }
                if !up_to_date && run {
                    if is_available {
                        old_available.push(Arc::clone(first));
                    } else {
                        // Old and not available: replace at once.
                        to_delete.push(Arc::clone(first));
                    }
                }
            }
            (None, false, _) => {}
        }
    }
    // Pods pinned to nodes that no longer exist.
    for (_, orphans) in by_node {
        to_delete.extend(orphans);
    }
    // Rolling update: replace old available pods while few enough nodes
    // lack an available pod.
    let strategy = spec.update_strategy.clone().unwrap_or_default();
    if strategy.type_.as_deref().unwrap_or("RollingUpdate") == "RollingUpdate" {
        let max_unavailable = match strategy
            .rolling_update
            .as_ref()
            .and_then(|r| r.max_unavailable.as_ref())
        {
            None => 1,
            Some(IntOrString::Int(n)) => *n,
            Some(IntOrString::String(p)) => {
                let pct: i64 = p.trim_end_matches('%').parse().unwrap_or(0);
                ((pct * i64::from(desired) + 99) / 100) as i32
            }
        }
        .max(if desired > 0 { 1 } else { 0 });
        let mut budget = max_unavailable - unavailable_nodes;
        for p in old_available {
            if budget <= 0 {
                break;
            }
            to_delete.push(p);
            budget -= 1;
        }
    }
    let pp = PostParams::default();
    let creates: Vec<Pod> = to_create.iter().map(|n| daemon_pod(ds, n, &hash)).collect();
    for (node, r) in to_create
        .iter()
        .zip(join_all(creates.iter().map(|p| api.create(&pp, p))).await)
    {
        match r {
            Ok(p) => ctx.recorder.publish(
                ds,
                EventType::Normal,
                "SuccessfulCreate",
                format!("Created pod: {}", p.name_any()),
            ),
            Err(e) if client::is_namespace_terminating(&e) => {}
            Err(e) => {
                ctx.recorder.publish(
                    ds,
                    EventType::Warning,
                    "FailedCreate",
                    format!("Error creating: {e}"),
                );
                return Err(Error::api(format!(
                    "creating the daemon pod of {ns}/{name} for node {node}"
                ))(e));
            }
        }
    }
    let dp = DeleteParams::default();
    let names: Vec<String> = to_delete.iter().map(|p| p.name_any()).collect();
    for (p, r) in to_delete
        .iter()
        .zip(join_all(names.iter().map(|n| api.delete(n, &dp))).await)
    {
        match r {
            Ok(_) => ctx.recorder.publish(
                ds,
                EventType::Normal,
                "SuccessfulDelete",
                format!("Deleted pod: {}", p.name_any()),
            ),
            Err(e) if client::is_not_found(&e) => {}
            Err(e) => {
                return Err(Error::api(format!(
                    "deleting daemon pod {ns}/{}",
                    p.name_any()
                ))(e));
            }
        }
    }
    let status = json!({
        "desiredNumberScheduled": desired,
        "currentNumberScheduled": current,
        "numberMisscheduled": misscheduled,
        "numberReady": ready,
        "numberAvailable": if available == 0 { None } else { Some(available) },
        "numberUnavailable": if desired - available <= 0 { None } else { Some(desired - available) },
        "updatedNumberScheduled": if updated == 0 { None } else { Some(updated) },
        "observedGeneration": ds.metadata.generation,
    });
    // Compared as Go writes them: omitted optional counts are zero.
    let norm = |v: &serde_json::Value| -> BTreeMap<String, serde_json::Value> {
        v.as_object()
            .into_iter()
            .flatten()
            .filter(|(k, v)| !v.is_null() && (k.as_str() != "conditions"))
            .filter(|(_, v)| *v != &json!(0))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    };
    let old = serde_json::to_value(&ds.status).unwrap_or_default();
    if norm(&status) != norm(&old) {
        let dapi: Api<DaemonSet> = Api::namespaced(ctx.shared.client.clone(), &ns);
        match dapi
            .patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Merge(&json!({"status": status})),
            )
            .await
        {
            Ok(_) => {}
            Err(e) if client::is_not_found(&e) => {}
            Err(e) => {
                return Err(Error::api(format!(
                    "updating the status of DaemonSet {ns}/{name}"
                ))(e));
            }
        }
    }
    if min_ready > 0 && ready != available {
        return Ok(Action::requeue(Duration::from_secs(min_ready as u64)));
    }
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn ds(v: serde_json::Value) -> DaemonSet {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn eligibility_follows_selectors_and_taints_with_daemon_tolerations() {
        let d = ds(
            json!({"metadata": {"name": "sy", "namespace": "kube-system", "uid": "u"},
            "spec": {"selector": {"matchLabels": {"app": "sy"}}, "template": {"metadata": {"labels": {"app": "sy"}},
                "spec": {"nodeSelector": {"kubernetes.io/os": "linux"}, "containers": [{"name": "c"}]}}}}),
        );
        let node = |v| serde_json::from_value::<Node>(v).unwrap();
        let linux =
            node(json!({"metadata": {"name": "n1", "labels": {"kubernetes.io/os": "linux"}}}));
        assert_eq!(should_run(&d, &linux), (true, true));
        let windows =
            node(json!({"metadata": {"name": "n2", "labels": {"kubernetes.io/os": "windows"}}}));
        assert_eq!(should_run(&d, &windows), (false, false));
        // Tolerated by every daemon pod: unreachable and unschedulable.
        let sick = node(
            json!({"metadata": {"name": "n3", "labels": {"kubernetes.io/os": "linux"}}, "spec": {"taints": [
            {"key": "node.kubernetes.io/unreachable", "effect": "NoExecute"},
            {"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}]}}),
        );
        assert_eq!(should_run(&d, &sick), (true, true));
        let dedicated = node(
            json!({"metadata": {"name": "n4", "labels": {"kubernetes.io/os": "linux"}}, "spec": {"taints": [
            {"key": "dedicated", "effect": "NoSchedule"}]}}),
        );
        assert_eq!(should_run(&d, &dedicated), (false, true));
        let evicting = node(
            json!({"metadata": {"name": "n5", "labels": {"kubernetes.io/os": "linux"}}, "spec": {"taints": [
            {"key": "dedicated", "effect": "NoExecute"}]}}),
        );
        assert_eq!(should_run(&d, &evicting), (false, false));
        let pod = daemon_pod(&d, "n1", "h");
        assert_eq!(pod_node(&pod).as_deref(), Some("n1"));
        assert_eq!(pod.labels()[REVISION_HASH], "h");
        assert!(plugins::node_affinity_matches(&pod, &linux));
        assert!(!plugins::node_affinity_matches(
            &pod,
            &node(json!({"metadata": {"name": "n9", "labels": {"kubernetes.io/os": "linux"}}}))
        ));
    }
}
