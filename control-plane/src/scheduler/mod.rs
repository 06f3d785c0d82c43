//! The scheduler (upstream's kube-scheduler, default profile, without
//! preemption): binds each pending pod whose `schedulerName` is ours to a
//! node through `pods/<name>/binding`.
//!
//! One `runtime::Controller<Pod>` reconciles pods one at a time (decisions
//! depend on each other). A cache of what is bound or *assumed* on each
//! node ([`plugins::NodeInfo`]) follows the pod watch, and a pod counts on
//! its node from the moment we decide, before the binding is seen.
//!
//! - Filters ([`plugins::filter`]): NodeUnschedulable, NodeName,
//!   TaintToleration, NodeAffinity (nodeSelector, required terms with
//!   `matchFields metadata.name`), NodePorts, NodeResourcesFit (requests vs
//!   allocatable minus what is bound; pod count), required inter-pod
//!   (anti-)affinity.
//! - Scores ([`plugins::score`]): LeastAllocated, BalancedAllocation,
//!   spreading of one owner's pods, preferred node affinity,
//!   PreferNoSchedule taints; the best node wins, ties at random.
//! - A pod nothing fits gets `PodScheduled=False`, reason `Unschedulable`,
//!   and a `FailedScheduling` Warning Event with upstream's FitError text;
//!   it is retried when the cluster changes in a way that might help (a
//!   Node added or changed in labels, taints, allocatable or
//!   schedulability; a bound pod deleted or finished), no sooner than its
//!   backoff (1 s doubling to 10 s), and at least every 5 minutes.
pub mod plugins;
pub mod resources;

use std::{
    collections::{HashMap, hash_map::DefaultHasher},
    hash::{Hash as _, Hasher as _},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::{StreamExt as _, channel::mpsc};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::{
    Api, ResourceExt as _,
    api::{Patch, PatchParams, PostParams},
    runtime::{
        controller::{Action, Config, Controller},
        reflector::{ObjectRef, Store},
    },
};
use serde_json::json;
use tracing::{info, warn};

use self::plugins::NodeInfo;
use crate::{
    client::{
        self,
        events::{EventType, Recorder},
    },
    controllers::{Error, Result, Shared, pods},
};

/// Settings.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The `schedulerName` this scheduler serves (`default-scheduler`).
    pub scheduler_name: String,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            scheduler_name: "default-scheduler".into(),
        }
    }
}

/// A pod that did not fit: when, and in what cluster state.
struct Unschedulable {
    attempts: u32,
    last: Instant,
    /// The pod's spec and labels, hashed: a change makes it worth a retry.
    pod_sig: u64,
    /// [`Cache::generation`] at the last attempt.
    generation: u64,
}

#[derive(Default)]
struct Cache {
    nodes: HashMap<String, NodeInfo>,
    /// Bound, unfinished pods counted on their node.
    counted: HashMap<ObjectRef<Pod>, (String, Pod)>,
    /// Pods we bound whose binding the watch has not shown yet.
    assumed: HashMap<ObjectRef<Pod>, (String, Pod)>,
    unschedulable: HashMap<ObjectRef<Pod>, Unschedulable>,
    /// Bumped by every cluster change that might let a pod fit.
    generation: u64,
    node_sigs: HashMap<String, u64>,
}

impl Cache {
    fn info(&mut self, node: &str) -> &mut NodeInfo {
        self.nodes.entry(node.to_owned()).or_default()
    }

    /// Follows one pod event (the pod as now, or its last state if gone).
    fn pod_event(&mut self, key: ObjectRef<Pod>, pod: &Pod, gone: bool) -> bool {
        let mut helped = false;
        if let Some((node, old)) = self.counted.remove(&key) {
            self.info(&node).account(&old, -1);
            helped = gone || pods::is_terminal(pod);
        }
        let bound = pods::node_name(pod).map(str::to_owned);
        if let Some(node) = bound.as_ref().filter(|_| !gone && !pods::is_terminal(pod)) {
            if let Some((anode, apod)) = self.assumed.remove(&key) {
                self.info(&anode).account(&apod, -1);
            }
            self.info(node).account(pod, 1);
            self.counted
                .insert(key.clone(), (node.clone(), pod.clone()));
        }
        if gone {
            if let Some((anode, apod)) = self.assumed.remove(&key) {
                self.info(&anode).account(&apod, -1);
            }
            self.unschedulable.remove(&key);
        }
        if helped {
            self.generation += 1;
        }
        helped
    }

    /// Follows one node event; whether it might help pending pods.
    fn node_event(&mut self, node: &Node, gone: bool) -> bool {
        let name = node.name_any();
        if gone {
            self.node_sigs.remove(&name);
            return false;
        }
        let sig = node_sig(node);
        if self.node_sigs.insert(name, sig) == Some(sig) {
            return false;
        }
        self.generation += 1;
        true
    }
}

fn hash_json<T: serde::Serialize>(v: &T) -> u64 {
    let mut h = DefaultHasher::new();
    serde_json::to_string(v).unwrap_or_default().hash(&mut h);
    h.finish()
}

/// What of a Node matters to scheduling (not its heartbeats).
fn node_sig(node: &Node) -> u64 {
    hash_json(&json!({
        "labels": node.metadata.labels,
        "taints": node.spec.as_ref().and_then(|s| s.taints.clone()),
        "unschedulable": node.spec.as_ref().and_then(|s| s.unschedulable),
        "allocatable": node.status.as_ref().and_then(|s| s.allocatable.clone()),
        "ready": node.status.as_ref().and_then(|s| s.conditions.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready")).map(|c| c.status.clone()),
    }))
}

fn pod_sig(pod: &Pod) -> u64 {
    hash_json(&json!({"labels": pod.metadata.labels, "spec": pod.spec}))
}

struct Ctx {
    shared: Arc<Shared>,
    settings: Settings,
    nodes: Store<Node>,
    cache: Mutex<Cache>,
    recorder: Recorder,
}

/// Per-pod backoff: 1 s doubling to 10 s (upstream's podInitialBackoff /
/// podMaxBackoff).
fn backoff(attempts: u32) -> Duration {
    Duration::from_secs(1u64 << attempts.saturating_sub(1).min(4)).min(Duration::from_secs(10))
}

/// Runs the scheduler until the process ends.
pub async fn run(shared: Arc<Shared>, settings: Settings) -> anyhow::Result<()> {
    let pods_inf = shared.pods();
    let nodes_inf = shared.nodes();
    pods_inf.ready().await;
    nodes_inf.ready().await;
    let ctx = Arc::new(Ctx {
        recorder: shared.recorder(&settings.scheduler_name),
        shared: Arc::clone(&shared),
        settings,
        nodes: nodes_inf.store(),
        cache: Mutex::default(),
    });
    // The cache follows pods and nodes; helpful changes wake the
    // unschedulable pods.
    let (poke_tx, poke_rx) = mpsc::unbounded::<ObjectRef<Pod>>();
    {
        let ctx = Arc::clone(&ctx);
        let store = pods_inf.store();
        let mut events = pods_inf.subscribe();
        let poke = poke_tx.clone();
        tokio::spawn(async move {
            while let Some(Ok(pod)) = events.next().await {
                let key = ObjectRef::from_obj(&pod);
                let gone = store.get(&key).is_none();
                let mut cache = ctx.cache.lock().expect("scheduler cache");
                if cache.pod_event(key, &pod, gone) {
                    for k in cache.unschedulable.keys() {
                        let _ = poke.unbounded_send(k.clone());
                    }
                }
            }
        });
    }
    {
        let ctx = Arc::clone(&ctx);
        let store = nodes_inf.store();
        let mut events = nodes_inf.subscribe();
        tokio::spawn(async move {
            while let Some(Ok(node)) = events.next().await {
                let gone = store.get(&ObjectRef::from_obj(&node)).is_none();
                let mut cache = ctx.cache.lock().expect("scheduler cache");
                if cache.node_event(&node, gone) {
                    for k in cache.unschedulable.keys() {
                        let _ = poke_tx.unbounded_send(k.clone());
                    }
                }
            }
        });
    }
    let results = Controller::for_stream(pods_inf.subscribe(), pods_inf.store())
        .reconcile_on(poke_rx)
        .with_config(Config::default().concurrency(1))
        .run(reconcile, error_policy, ctx);
    crate::controllers::drive("scheduler", results).await;
    Ok(())
}

fn error_policy(pod: Arc<Pod>, _err: &Error, ctx: Arc<Ctx>) -> Action {
    let key = ObjectRef::from_obj(pod.as_ref());
    let mut cache = ctx.cache.lock().expect("scheduler cache");
    let generation = cache.generation;
    let u = cache.unschedulable.entry(key).or_insert(Unschedulable {
        attempts: 0,
        last: Instant::now(),
        pod_sig: 0,
        generation,
    });
    u.attempts += 1;
    u.last = Instant::now();
    Action::requeue(backoff(u.attempts))
}

/// Whether this scheduler should place `pod` now.
fn is_pending_for_us(pod: &Pod, name: &str) -> bool {
    let spec = pod.spec.as_ref();
    pods::node_name(pod).is_none()
        && spec
            .and_then(|s| s.scheduler_name.as_deref())
            .unwrap_or("default-scheduler")
            == name
        && pod.metadata.deletion_timestamp.is_none()
        && !pods::is_terminal(pod)
        && spec
            .and_then(|s| s.scheduling_gates.as_ref())
            .is_none_or(Vec::is_empty)
}

enum Decision {
    Wait(Duration),
    Bind(String),
    Unfit(String),
}

fn decide(pod: &Pod, ctx: &Ctx) -> Decision {
    let key = ObjectRef::from_obj(pod);
    let sig = pod_sig(pod);
    let mut cache = ctx.cache.lock().expect("scheduler cache");
    if let Some(u) = cache.unschedulable.get(&key) {
        if u.pod_sig == sig && u.generation == cache.generation {
            // Nothing changed that could help: wait for a change (or the
            // 5-minute flush).
            return Decision::Wait(Duration::from_secs(300));
        }
        let wait = backoff(u.attempts).saturating_sub(u.last.elapsed());
        if !wait.is_zero() {
            return Decision::Wait(wait);
        }
    }
    let nodes: Vec<Arc<Node>> = ctx.nodes.state();
    let (chosen, failures) = {
        let empty = NodeInfo::default();
        let all: Vec<(&Node, &NodeInfo)> = nodes
            .iter()
            .map(|n| {
                let info = cache.nodes.get(n.metadata.name.as_deref().unwrap_or(""));
                (n.as_ref(), info.unwrap_or(&empty))
            })
            .collect();
        let mut feasible = Vec::new();
        let mut failures = Vec::new();
        for (n, info) in &all {
            let reasons = plugins::filter(pod, n, info, &all);
            if reasons.is_empty() {
                feasible.push((*n, *info));
            } else {
                failures.push(reasons);
            }
        }
        let chosen = if feasible.is_empty() {
            None
        } else {
            let scores = plugins::score(pod, &feasible);
            let best = scores.iter().copied().max().unwrap_or(0);
            let top: Vec<usize> = (0..feasible.len()).filter(|i| scores[*i] == best).collect();
            let pick = top[(uuid::Uuid::new_v4().as_u128() % top.len() as u128) as usize];
            Some(feasible[pick].0.name_any())
        };
        (chosen, failures)
    };
    let Some(node) = chosen else {
        let generation = cache.generation;
        let u = cache.unschedulable.entry(key).or_insert(Unschedulable {
            attempts: 0,
            last: Instant::now(),
            pod_sig: sig,
            generation,
        });
        u.attempts += 1;
        u.last = Instant::now();
        u.pod_sig = sig;
        u.generation = generation;
        return Decision::Unfit(plugins::fit_error(&failures));
    };
    // Assume: count it on the node now.
    cache.info(&node).account(pod, 1);
    cache
        .assumed
        .insert(key.clone(), (node.clone(), pod.clone()));
    cache.unschedulable.remove(&key);
    Decision::Bind(node)
}

async fn reconcile(pod: Arc<Pod>, ctx: Arc<Ctx>) -> Result<Action> {
    let key = ObjectRef::from_obj(pod.as_ref());
    if !is_pending_for_us(&pod, &ctx.settings.scheduler_name) {
        ctx.cache
            .lock()
            .expect("scheduler cache")
            .unschedulable
            .remove(&key);
        return Ok(Action::await_change());
    }
    if ctx
        .cache
        .lock()
        .expect("scheduler cache")
        .assumed
        .contains_key(&key)
    {
        return Ok(Action::await_change());
    }
    let ns = pod.namespace().unwrap_or_default();
    let name = pod.name_any();
    let api: Api<Pod> = Api::namespaced(ctx.shared.client.clone(), &ns);
    match decide(&pod, &ctx) {
        Decision::Wait(d) => Ok(Action::requeue(d)),
        Decision::Unfit(message) => {
            info!(pod = %format!("{ns}/{name}"), %message, "unschedulable");
            let current = pods::condition(&pod, "PodScheduled");
            let same = current.is_some_and(|c| {
                c.status == "False"
                    && c.reason.as_deref() == Some("Unschedulable")
                    && c.message.as_deref() == Some(message.as_str())
            });
            if !same {
                let patch = json!({"status": {"conditions": [{
                    "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                    "message": message, "lastProbeTime": null,
                    "lastTransitionTime": k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                        k8s_openapi::jiff::Timestamp::now()),
                }]}});
                if let Err(e) = api
                    .patch_status(&name, &PatchParams::default(), &Patch::Strategic(&patch))
                    .await
                    && !client::is_not_found(&e)
                {
                    warn!(pod = %format!("{ns}/{name}"), error = %e, "could not report unschedulable");
                }
            }
            ctx.recorder.publish(
                pod.as_ref(),
                EventType::Warning,
                "FailedScheduling",
                message,
            );
            Ok(Action::requeue(Duration::from_secs(300)))
        }
        Decision::Bind(node) => {
            let binding = json!({
                "apiVersion": "v1", "kind": "Binding",
                "metadata": {"name": name, "namespace": ns, "uid": pod.uid()},
                "target": {"apiVersion": "v1", "kind": "Node", "name": node},
            });
            let bound = api
                .create_subresource::<_, serde_json::Value>(
                    "binding",
                    &name,
                    &PostParams::default(),
                    &binding,
                )
                .await;
            match bound {
                Ok(_) => {
                    ctx.recorder.publish(
                        pod.as_ref(),
                        EventType::Normal,
                        "Scheduled",
                        format!("Successfully assigned {ns}/{name} to {node}"),
                    );
                    Ok(Action::await_change())
                }
                Err(e) => {
                    let mut cache = ctx.cache.lock().expect("scheduler cache");
                    if let Some((n, p)) = cache.assumed.remove(&key) {
                        cache.info(&n).account(&p, -1);
                    }
                    if client::is_not_found(&e) {
                        return Ok(Action::await_change());
                    }
                    Err(Error::api(format!(
                        "binding pod {ns}/{name} to node {node}"
                    ))(e))
                }
            }
        }
    }
}
