//! The ReplicaSet and ReplicationController controllers (upstream's
//! `replicaset-controller` and `replicationcontroller`, one implementation
//! for both, as upstream converts RCs to ReplicaSets internally).
//!
//! Each sync of an owner:
//! 1. takes the active pods of its namespace (not Succeeded/Failed, not
//!    being deleted) and *claims* them: its own that still match stay, its
//!    own that stopped matching are released (ownerReference removed),
//!    matching orphans are adopted — after a live read confirms the owner
//!    still exists with the same uid and is not being deleted;
//! 2. if the pods it created or deleted earlier are all visible in the
//!    cache ("expectations"), creates the missing pods from the template in
//!    slow-start batches or deletes the surplus, unscheduled / not-ready /
//!    newest first ([`core::pods_to_delete`]);
//! 3. writes `status` (replicas, fullyLabeledReplicas, readyReplicas,
//!    availableReplicas, observedGeneration, the `ReplicaFailure`
//!    condition) when it changed, and requeues after `minReadySeconds`
//!    while pods are ready but not yet available.
pub mod core;

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fmt::Debug,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::future::join_all;
use k8s_openapi::{
    api::{
        apps::v1::ReplicaSet,
        core::v1::{Pod, PodTemplateSpec, ReplicationController},
    },
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference},
    jiff::Timestamp,
};
use kube::{
    Api, Resource, ResourceExt as _,
    api::{DeleteParams, Patch, PatchParams, PostParams},
    core::{Selector, SelectorExt as _},
    runtime::{
        controller::{Action, Config, Controller},
        reflector::{ObjectRef, Store},
    },
};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::{Value, json};

use super::{Backoff, Error, Result, Shared, pods};
use crate::client::{
    self,
    events::{EventType, Recorder},
    informer::Informer,
};

/// What the controller needs to know of a ReplicaSet or an RC.
pub trait ReplicaKind:
    Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
    + Clone
    + DeserializeOwned
    + Serialize
    + Debug
    + Send
    + Sync
    + 'static
{
    /// The component name Events carry.
    const COMPONENT: &'static str;
    /// The pod selector, or why it is unusable.
    fn selector(&self) -> std::result::Result<Selector, String>;
    /// `spec.replicas` (default 1).
    fn replicas(&self) -> i32;
    /// `spec.template`.
    fn template(&self) -> Option<&PodTemplateSpec>;
    /// `spec.minReadySeconds`.
    fn min_ready_seconds(&self) -> i32;
    /// The current `status`, as JSON.
    fn status_json(&self) -> Value;
}

impl ReplicaKind for ReplicaSet {
    const COMPONENT: &'static str = "replicaset-controller";
    fn selector(&self) -> std::result::Result<Selector, String> {
        let sel = self
            .spec
            .as_ref()
            .map(|s| &s.selector)
            .ok_or("spec.selector: Required value")?;
        if sel.match_labels.as_ref().is_none_or(BTreeMap::is_empty)
            && sel.match_expressions.as_ref().is_none_or(Vec::is_empty)
        {
            return Err("spec.selector: an empty selector selects nothing here".into());
        }
        pods::selector(sel)
    }
    fn replicas(&self) -> i32 {
        self.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
    }
    fn template(&self) -> Option<&PodTemplateSpec> {
        self.spec.as_ref()?.template.as_ref()
    }
    fn min_ready_seconds(&self) -> i32 {
        self.spec
            .as_ref()
            .and_then(|s| s.min_ready_seconds)
            .unwrap_or(0)
    }
    fn status_json(&self) -> Value {
        serde_json::to_value(&self.status).unwrap_or(Value::Null)
    }
}

impl ReplicaKind for ReplicationController {
    const COMPONENT: &'static str = "replication-controller";
    fn selector(&self) -> std::result::Result<Selector, String> {
        // The API server defaults an RC's selector to its template's labels.
        let sel = self
            .spec
            .as_ref()
            .and_then(|s| s.selector.clone())
            .filter(|s| !s.is_empty())
            .or_else(|| {
                self.template()
                    .and_then(|t| t.metadata.as_ref())
                    .and_then(|m| m.labels.clone())
            })
            .filter(|s| !s.is_empty())
            .ok_or("spec.selector: Required value")?;
        Ok(pods::map_selector(&sel))
    }
    fn replicas(&self) -> i32 {
        self.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
    }
    fn template(&self) -> Option<&PodTemplateSpec> {
        self.spec.as_ref()?.template.as_ref()
    }
    fn min_ready_seconds(&self) -> i32 {
        self.spec
            .as_ref()
            .and_then(|s| s.min_ready_seconds)
            .unwrap_or(0)
    }
    fn status_json(&self) -> Value {
        serde_json::to_value(&self.status).unwrap_or(Value::Null)
    }
}

/// Pods this owner created or deleted that the cache does not show yet.
#[derive(Default)]
struct Expectations {
    creating: HashSet<String>,
    deleting: HashSet<String>,
    since: Option<Instant>,
}

/// Upstream's expectations expire after five minutes.
const EXPECTATIONS_TIMEOUT: Duration = Duration::from_secs(300);

struct Ctx<K: ReplicaKind> {
    shared: Arc<Shared>,
    pods: Store<Pod>,
    recorder: Recorder,
    expectations: Mutex<HashMap<String, Expectations>>,
    backoff: Backoff<ObjectRef<K>>,
}

/// Runs the ReplicaSet controller.
pub async fn run_replica_sets(shared: Arc<Shared>, workers: u16) -> anyhow::Result<()> {
    let owners = shared.replica_sets();
    run::<ReplicaSet>(shared, owners, workers, "replicaset").await
}

/// Runs the ReplicationController controller.
pub async fn run_replication_controllers(shared: Arc<Shared>, workers: u16) -> anyhow::Result<()> {
    let owners = shared.replication_controllers();
    run::<ReplicationController>(shared, owners, workers, "replicationcontroller").await
}

async fn run<K: ReplicaKind>(
    shared: Arc<Shared>,
    owners: Informer<K>,
    workers: u16,
    name: &'static str,
) -> anyhow::Result<()> {
    let pods = shared.pods();
    owners.ready().await;
    pods.ready().await;
    let ctx = Arc::new(Ctx::<K> {
        recorder: shared.recorder(K::COMPONENT),
        shared: Arc::clone(&shared),
        pods: pods.store(),
        expectations: Mutex::default(),
        backoff: Backoff::new(Duration::from_millis(5), Duration::from_secs(300)),
    });
    let owner_store = owners.store();
    let orphans = move |pod: Pod| -> Vec<ObjectRef<K>> {
        if pods::controller_of(&pod).is_some() {
            return Vec::new();
        }
        let ns = pod.namespace();
        owner_store
            .state()
            .into_iter()
            .filter(|o| o.meta().namespace == ns)
            .filter(|o| o.selector().is_ok_and(|s| s.matches(pods::labels(&pod))))
            .map(|o| ObjectRef::from_obj(o.as_ref()))
            .collect()
    };
    let results = Controller::for_stream(owners.subscribe(), owners.store())
        .owns_stream(pods.subscribe())
        .watches_stream(pods.subscribe(), orphans)
        .with_config(Config::default().concurrency(workers))
        .run(reconcile::<K>, error_policy::<K>, ctx);
    super::drive(name, results).await;
    Ok(())
}

fn error_policy<K: ReplicaKind>(owner: Arc<K>, _err: &Error, ctx: Arc<Ctx<K>>) -> Action {
    Action::requeue(ctx.backoff.next(ObjectRef::from_obj(owner.as_ref())))
}

fn pod_key(ns: &str, name: &str) -> ObjectRef<Pod> {
    ObjectRef::new(name).within(ns)
}

impl<K: ReplicaKind> Ctx<K> {
    /// Whether every create and delete we made is visible in the cache.
    fn satisfied(&self, uid: &str, ns: &str) -> bool {
        let mut all = self.expectations.lock().expect("expectations");
        let Some(e) = all.get_mut(uid) else {
            return true;
        };
        if e.since.is_some_and(|s| s.elapsed() > EXPECTATIONS_TIMEOUT) {
            all.remove(uid);
            return true;
        }
        e.creating
            .retain(|n| self.pods.get(&pod_key(ns, n)).is_none());
        e.deleting.retain(|n| {
            self.pods
                .get(&pod_key(ns, n))
                .is_some_and(|p| p.metadata.deletion_timestamp.is_none())
        });
        if e.creating.is_empty() && e.deleting.is_empty() {
            all.remove(uid);
            return true;
        }
        false
    }

    fn expect(&self, uid: &str, created: Vec<String>, deleted: Vec<String>) {
        if created.is_empty() && deleted.is_empty() {
            return;
        }
        let mut all = self.expectations.lock().expect("expectations");
        let e = all.entry(uid.to_owned()).or_default();
        e.creating.extend(created);
        e.deleting.extend(deleted);
        e.since = Some(Instant::now());
    }
}

async fn reconcile<K: ReplicaKind>(owner: Arc<K>, ctx: Arc<Ctx<K>>) -> Result<Action> {
    let key = ObjectRef::from_obj(owner.as_ref());
    let result = sync(owner.as_ref(), &ctx).await;
    if result.is_ok() {
        ctx.backoff.reset(&key);
    }
    result
}

async fn sync<K: ReplicaKind>(owner: &K, ctx: &Ctx<K>) -> Result<Action> {
    let ns = owner.namespace().unwrap_or_default();
    let name = owner.name_any();
    let kind = K::kind(&());
    let uid = owner.uid().unwrap_or_default();
    let selector = match owner.selector() {
        Ok(s) => s,
        Err(e) => {
            let msg = format!("{kind} {ns}/{name}: invalid selector: {e}");
            ctx.recorder.publish(
                owner,
                EventType::Warning,
                "SelectorParseFailed",
                msg.clone(),
            );
            return Err(Error::Invalid(msg));
        }
    };
    let satisfied = ctx.satisfied(&uid, &ns);
    let active: Vec<Arc<Pod>> = ctx.pods.state_filter(|p| {
        p.metadata.namespace.as_deref() == Some(ns.as_str()) && pods::is_active(p)
    });
    let owned = claim(owner, ctx, &selector, &active).await?;
    let mut failure: Option<(String, String)> = None;
    if satisfied
        && owner.meta().deletion_timestamp.is_none()
        && let Err(f) = manage(owner, ctx, &owned).await
    {
        failure = Some(f);
    }
    let now = Timestamp::now();
    let refs: Vec<&Pod> = owned.iter().map(Arc::as_ref).collect();
    let template_labels = owner
        .template()
        .and_then(|t| t.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let counts = core::counts(&refs, &template_labels, owner.min_ready_seconds(), now);
    write_status(owner, ctx, &counts, failure.as_ref()).await?;
    if let Some((reason, msg)) = failure {
        return Err(Error::Waiting(format!(
            "{kind} {ns}/{name}: {reason}: {msg}"
        )));
    }
    let min_ready = owner.min_ready_seconds();
    if min_ready > 0 && counts.ready == owner.replicas() && counts.available != counts.ready {
        return Ok(Action::requeue(Duration::from_secs(min_ready as u64)));
    }
    Ok(Action::await_change())
}

/// Adopts matching orphans and releases own pods that stopped matching;
/// returns the active pods this owner controls afterwards.
async fn claim<K: ReplicaKind>(
    owner: &K,
    ctx: &Ctx<K>,
    selector: &Selector,
    active: &[Arc<Pod>],
) -> Result<Vec<Arc<Pod>>> {
    let uid = owner.uid().unwrap_or_default();
    let ns = owner.namespace().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(ctx.shared.client.clone(), &ns);
    let mut owned = Vec::new();
    let mut owner_checked: Option<bool> = None;
    for pod in active {
        let matches = selector.matches(pods::labels(pod.as_ref()));
        match pods::controller_of(pod.as_ref()) {
            Some(r) if r.uid == uid => {
                if matches {
                    owned.push(Arc::clone(pod));
                } else {
                    let refs: Vec<OwnerReference> = pod
                        .owner_references()
                        .iter()
                        .filter(|r| r.uid != uid)
                        .cloned()
                        .collect();
                    patch_owners(&api, pod, refs).await?;
                }
            }
            Some(_) => {}
            None if matches && owner.meta().deletion_timestamp.is_none() => {
                // Adopt only if the owner is really alive (an uncached read).
                let alive = match owner_checked {
                    Some(a) => a,
                    None => {
                        let owners: Api<K> = Api::namespaced(ctx.shared.client.clone(), &ns);
                        let live = owners.get_opt(&owner.name_any()).await.map_err(Error::api(
                            format!("reading {} {ns}/{}", K::kind(&()), owner.name_any()),
                        ))?;
                        let a = live.is_some_and(|l| {
                            l.uid().as_deref() == Some(uid.as_str())
                                && l.meta().deletion_timestamp.is_none()
                        });
                        owner_checked = Some(a);
                        a
                    }
                };
                if !alive {
                    continue;
                }
                let mut refs = pod.owner_references().to_vec();
                refs.push(pods::controller_ref(owner));
                if patch_owners(&api, pod, refs).await? {
                    owned.push(Arc::clone(pod));
                }
            }
            None => {}
        }
    }
    Ok(owned)
}

/// Sets a pod's ownerReferences (a merge patch guarded by its
/// resourceVersion). `false` if the pod is gone.
async fn patch_owners(api: &Api<Pod>, pod: &Pod, refs: Vec<OwnerReference>) -> Result<bool> {
    let patch = json!({"metadata": {
        "resourceVersion": pod.resource_version(),
        "ownerReferences": refs,
    }});
    match api
        .patch(
            &pod.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
    {
        Ok(_) => Ok(true),
        Err(e) if client::is_not_found(&e) => Ok(false),
        Err(e) => Err(Error::api(format!(
            "setting the owners of pod {}/{}",
            pod.namespace().unwrap_or_default(),
            pod.name_any()
        ))(e)),
    }
}

/// A pod from the owner's template (upstream's `GetPodFromTemplate`).
pub fn pod_from_template<K: Resource<DynamicType = ()>>(
    owner: &K,
    template: &PodTemplateSpec,
) -> Pod {
    let meta = template.metadata.clone().unwrap_or_default();
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(format!("{}-", owner.name_any())),
            namespace: owner.namespace(),
            labels: meta.labels,
            annotations: meta.annotations,
            finalizers: meta.finalizers,
            owner_references: Some(vec![pods::controller_ref(owner)]),
            ..ObjectMeta::default()
        },
        spec: template.spec.clone(),
        status: None,
    }
}

/// Creates or deletes pods; on failure returns (reason, message) for the
/// `ReplicaFailure` condition.
async fn manage<K: ReplicaKind>(
    owner: &K,
    ctx: &Ctx<K>,
    owned: &[Arc<Pod>],
) -> std::result::Result<(), (String, String)> {
    let uid = owner.uid().unwrap_or_default();
    let ns = owner.namespace().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(ctx.shared.client.clone(), &ns);
    let diff = core::replica_diff(owned.len(), owner.replicas());
    if diff != 0 {
        tracing::info!(owner = %owner.name_any(), active = owned.len(), wanted = owner.replicas(), "managing replicas");
    }
    if diff > 0 {
        let Some(template) = owner.template() else {
            return Err((
                "FailedCreate".into(),
                "spec.template: Required value".into(),
            ));
        };
        let pod = pod_from_template(owner, template);
        let mut created = Vec::new();
        let mut failure = None;
        for batch in core::slow_start_batches(diff as usize) {
            let pp = PostParams::default();
            let results = join_all((0..batch).map(|_| api.create(&pp, &pod))).await;
            for r in results {
                match r {
                    Ok(p) => {
                        ctx.recorder.publish(
                            owner,
                            EventType::Normal,
                            "SuccessfulCreate",
                            format!("Created pod: {}", p.name_any()),
                        );
                        created.push(p.name_any());
                    }
                    Err(e) if client::is_namespace_terminating(&e) => {}
                    Err(e) => {
                        ctx.recorder.publish(
                            owner,
                            EventType::Warning,
                            "FailedCreate",
                            format!("Error creating: {e}"),
                        );
                        failure = Some(("FailedCreate".to_owned(), e.to_string()));
                    }
                }
            }
            if failure.is_some() {
                break;
            }
        }
        ctx.expect(&uid, created, Vec::new());
        return failure.map_or(Ok(()), Err);
    }
    if diff < 0 {
        let refs: Vec<&Pod> = owned.iter().map(Arc::as_ref).collect();
        let victims = core::pods_to_delete(&refs, (-diff) as usize);
        let names: Vec<String> = victims.iter().map(|p| p.name_any()).collect();
        let dp = DeleteParams::default();
        let results = join_all(names.iter().map(|n| api.delete(n, &dp))).await;
        let mut deleted = Vec::new();
        let mut failure = None;
        for (n, r) in names.into_iter().zip(results) {
            match r {
                Ok(_) => {
                    ctx.recorder.publish(
                        owner,
                        EventType::Normal,
                        "SuccessfulDelete",
                        format!("Deleted pod: {n}"),
                    );
                    deleted.push(n);
                }
                Err(e) if client::is_not_found(&e) => {}
                Err(e) => {
                    ctx.recorder.publish(
                        owner,
                        EventType::Warning,
                        "FailedDelete",
                        format!("Error deleting: {e}"),
                    );
                    failure = Some(("FailedDelete".to_owned(), e.to_string()));
                }
            }
        }
        ctx.expect(&uid, Vec::new(), deleted);
        return failure.map_or(Ok(()), Err);
    }
    Ok(())
}

/// Status fields as Go writes them: `omitempty` counts left out when zero.
fn status_value(counts: &core::Counts, generation: Option<i64>, conditions: &[Value]) -> Value {
    let nz = |n: i32| if n == 0 { Value::Null } else { json!(n) };
    json!({
        "replicas": counts.replicas,
        "fullyLabeledReplicas": nz(counts.fully_labeled),
        "readyReplicas": nz(counts.ready),
        "availableReplicas": nz(counts.available),
        "observedGeneration": generation,
        "conditions": if conditions.is_empty() { Value::Null } else { json!(conditions) },
    })
}

/// Drops nulls and zero counts so that equal statuses compare equal.
fn normalized(status: &Value) -> Value {
    let mut out = serde_json::Map::new();
    if let Some(m) = status.as_object() {
        for (k, v) in m {
            let zero_count = v == &json!(0) && k != "replicas";
            if !v.is_null() && !zero_count {
                out.insert(k.clone(), v.clone());
            }
        }
    }
    if !out.contains_key("replicas") {
        out.insert("replicas".into(), json!(0));
    }
    Value::Object(out)
}

async fn write_status<K: ReplicaKind>(
    owner: &K,
    ctx: &Ctx<K>,
    counts: &core::Counts,
    failure: Option<&(String, String)>,
) -> Result<()> {
    let current = owner.status_json();
    let mut conditions: Vec<Value> = current
        .get("conditions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|c| c["type"] != "ReplicaFailure")
        .collect();
    if let Some((reason, message)) = failure {
        let old = current
            .get("conditions")
            .and_then(Value::as_array)
            .and_then(|cs| cs.iter().find(|c| c["type"] == "ReplicaFailure"))
            .cloned();
        let since = old
            .as_ref()
            .and_then(|c| c.get("lastTransitionTime").cloned())
            .unwrap_or_else(|| {
                json!(
                    Timestamp::now()
                        .round(k8s_openapi::jiff::Unit::Second)
                        .unwrap_or(Timestamp::now())
                        .to_string()
                )
            });
        conditions.push(json!({
            "type": "ReplicaFailure", "status": "True", "reason": reason,
            "message": message, "lastTransitionTime": since,
        }));
    }
    let status = status_value(counts, owner.meta().generation, &conditions);
    if normalized(&status) == normalized(&current) {
        return Ok(());
    }
    let ns = owner.namespace().unwrap_or_default();
    let api: Api<K> = Api::namespaced(ctx.shared.client.clone(), &ns);
    match api
        .patch_status(
            &owner.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&json!({ "status": status })),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if client::is_not_found(&e) => Ok(()),
        Err(e) => Err(Error::api(format!(
            "updating the status of {} {ns}/{}",
            K::kind(&()),
            owner.name_any()
        ))(e)),
    }
}
