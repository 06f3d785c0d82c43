//! The Deployment controller (upstream's `deployment-controller`): one
//! ReplicaSet per pod template, named `<deployment>-<pod-template-hash>`,
//! and the rollout between them.
//!
//! Each sync claims the Deployment's ReplicaSets (adopt / release by
//! selector, as for pods), finds the *new* one — whose template equals the
//! Deployment's, the hash label aside — and then:
//! - `RollingUpdate`: scales the new one up within `replicas + maxSurge`
//!   and the old ones down while at least `replicas - maxUnavailable` pods
//!   stay available ([`core`]);
//! - `Recreate`: scales the old ones to zero, waits until their pods are
//!   gone, then scales the new one up;
//! - paused: only scaling, no rollout (`Progressing=Unknown`,
//!   `DeploymentPaused`).
//!
//! Revisions: the new ReplicaSet gets `deployment.kubernetes.io/revision`
//! = the highest old revision + 1 (mirrored on the Deployment); one that
//! comes back (`kubectl rollout undo`) is re-stamped and remembers its old
//! numbers in `revision-history`. Old ReplicaSets scaled to zero beyond
//! `revisionHistoryLimit` are deleted once the rollout completes. Status:
//! replicas, updated/ready/available/unavailable counts,
//! `observedGeneration`, `collisionCount`, and the `Available` and
//! `Progressing` conditions (including `ProgressDeadlineExceeded`), so
//! that `kubectl rollout status | history | undo | restart | pause |
//! resume` work as upstream.
pub mod core;

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use k8s_openapi::{
    api::{
        apps::v1::{Deployment, DeploymentCondition, DeploymentStatus, ReplicaSet, ReplicaSetSpec},
        core::v1::Pod,
    },
    apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference, Time},
    jiff::Timestamp,
};
use kube::{
    Api, ResourceExt as _,
    api::{DeleteParams, Patch, PatchParams, PostParams},
    core::{Selector, SelectorExt as _},
    runtime::{
        controller::{Action, Config, Controller},
        reflector::{ObjectRef, Store},
    },
};
use serde_json::{Value, json};

use self::core::{
    DESIRED_REPLICAS, HASH_LABEL, MAX_REPLICAS, NOT_COPIED, REVISION, REVISION_HISTORY, Rs,
};
use super::{Backoff, Error, Result, Shared, pods};
use crate::client::{
    self,
    events::{EventType, Recorder},
};

struct Ctx {
    shared: Arc<Shared>,
    replica_sets: Store<ReplicaSet>,
    pods: Store<Pod>,
    recorder: Recorder,
    backoff: Backoff<ObjectRef<Deployment>>,
}

/// Runs the controller.
pub async fn run(shared: Arc<Shared>, workers: u16) -> anyhow::Result<()> {
    let deployments = shared.deployments();
    let rss = shared.replica_sets();
    let pods_inf = shared.pods();
    deployments.ready().await;
    rss.ready().await;
    pods_inf.ready().await;
    let ctx = Arc::new(Ctx {
        recorder: shared.recorder("deployment-controller"),
        shared: Arc::clone(&shared),
        replica_sets: rss.store(),
        pods: pods_inf.store(),
        backoff: Backoff::new(Duration::from_millis(5), Duration::from_secs(300)),
    });
    let dstore = deployments.store();
    let orphan_rs = move |rs: ReplicaSet| -> Vec<ObjectRef<Deployment>> {
        if pods::controller_of(&rs).is_some() {
            return Vec::new();
        }
        let ns = rs.namespace();
        dstore
            .state()
            .into_iter()
            .filter(|d| d.metadata.namespace == ns)
            .filter(|d| selector_of(d).is_ok_and(|s| s.matches(pods::labels(&rs))))
            .map(|d| ObjectRef::from_obj(d.as_ref()))
            .collect()
    };
    let rs_store = rss.store();
    // A pod of one of our ReplicaSets going away matters to Recreate.
    let pod_to_deployment = move |pod: Pod| -> Option<ObjectRef<Deployment>> {
        let r = pods::controller_of(&pod)?;
        if r.kind != "ReplicaSet" {
            return None;
        }
        let ns = pod.namespace()?;
        let rs = rs_store.get(&ObjectRef::new(&r.name).within(&ns))?;
        let d = pods::controller_of(rs.as_ref())?;
        (d.kind == "Deployment").then(|| ObjectRef::new(&d.name).within(&ns))
    };
    let results = Controller::for_stream(deployments.subscribe(), deployments.store())
        .owns_stream(rss.subscribe())
        .watches_stream(rss.subscribe(), orphan_rs)
        .watches_stream(pods_inf.subscribe(), pod_to_deployment)
        .with_config(Config::default().concurrency(workers))
        .run(
            reconcile,
            |d: Arc<Deployment>, _e: &Error, ctx: Arc<Ctx>| {
                Action::requeue(ctx.backoff.next(ObjectRef::from_obj(d.as_ref())))
            },
            ctx,
        );
    super::drive("deployment", results).await;
    Ok(())
}

fn selector_of(d: &Deployment) -> std::result::Result<Selector, String> {
    let sel = d
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

fn rs_spec(rs: &ReplicaSet) -> i32 {
    rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
}

/// A ReplicaSet for the rolling arithmetic. Its available pods count at
/// most up to its `spec`: after a scale-down the status may still count
/// pods that are about to be deleted, and leaning on them could take
/// availability below the minimum.
fn rs_view(rs: &ReplicaSet) -> Rs {
    let st = rs.status.as_ref();
    let spec = rs_spec(rs);
    Rs {
        name: rs.name_any(),
        spec,
        available: st.and_then(|s| s.available_replicas).unwrap_or(0).min(spec),
        actual: st.map_or(0, |s| s.replicas),
    }
}

fn revision(rs: &ReplicaSet) -> i64 {
    rs.annotations()
        .get(REVISION)
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

fn template_json(d: &Deployment) -> Value {
    d.spec
        .as_ref()
        .map(|s| serde_json::to_value(&s.template).unwrap_or(Value::Null))
        .unwrap_or(Value::Null)
}

fn rs_template_json(rs: &ReplicaSet) -> Value {
    rs.spec
        .as_ref()
        .and_then(|s| s.template.as_ref())
        .map(|t| serde_json::to_value(t).unwrap_or(Value::Null))
        .unwrap_or(Value::Null)
}

async fn reconcile(d: Arc<Deployment>, ctx: Arc<Ctx>) -> Result<Action> {
    let key = ObjectRef::from_obj(d.as_ref());
    let r = sync(&d, &ctx).await;
    if r.is_ok() {
        ctx.backoff.reset(&key);
    }
    r
}

/// Adopts matching orphan ReplicaSets, releases own ones that stopped
/// matching; returns the ones this Deployment controls.
async fn claim(d: &Deployment, ctx: &Ctx, selector: &Selector) -> Result<Vec<ReplicaSet>> {
    let ns = d.namespace().unwrap_or_default();
    let uid = d.uid().unwrap_or_default();
    let api: Api<ReplicaSet> = Api::namespaced(ctx.shared.client.clone(), &ns);
    let mut owned = Vec::new();
    for rs in ctx
        .replica_sets
        .state_filter(|r| r.metadata.namespace.as_deref() == Some(ns.as_str()))
    {
        let matches = selector.matches(pods::labels(rs.as_ref()));
        let refs: Option<Vec<OwnerReference>> = match pods::controller_of(rs.as_ref()) {
            Some(r) if r.uid == uid && matches => {
                owned.push(rs.as_ref().clone());
                None
            }
            Some(r) if r.uid == uid => Some(
                rs.owner_references()
                    .iter()
                    .filter(|r| r.uid != uid)
                    .cloned()
                    .collect(),
            ),
            None if matches
                && d.metadata.deletion_timestamp.is_none()
                && rs.metadata.deletion_timestamp.is_none() =>
            {
                let mut r = rs.owner_references().to_vec();
                r.push(pods::controller_ref(d));
                owned.push(rs.as_ref().clone());
                Some(r)
            }
            _ => None,
        };
        if let Some(refs) = refs {
            let patch = json!({"metadata": {"resourceVersion": rs.resource_version(), "ownerReferences": refs}});
            match api
                .patch(
                    &rs.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await
            {
                Ok(_) => {}
                Err(e) if client::is_not_found(&e) => {}
                Err(e) => {
                    return Err(Error::api(format!(
                        "setting the owners of ReplicaSet {ns}/{}",
                        rs.name_any()
                    ))(e));
                }
            }
        }
    }
    Ok(owned)
}

async fn sync(d: &Deployment, ctx: &Ctx) -> Result<Action> {
    let ns = d.namespace().unwrap_or_default();
    let name = d.name_any();
    let spec = d.spec.clone().unwrap_or_default();
    let selector = match selector_of(d) {
        Ok(s) => s,
        Err(e) => {
            let msg = format!("Deployment {ns}/{name}: invalid selector: {e}");
            ctx.recorder
                .publish(d, EventType::Warning, "SelectorParseFailed", msg.clone());
            return Err(Error::Invalid(msg));
        }
    };
    let owned = claim(d, ctx, &selector).await?;
    let want = core::without_hash(&template_json(d));
    let (mut news, mut olds): (Vec<ReplicaSet>, Vec<ReplicaSet>) = owned
        .into_iter()
        .partition(|rs| core::without_hash(&rs_template_json(rs)) == want);
    olds.sort_by_key(|r| {
        (
            r.metadata.creation_timestamp.clone().map(|t| t.0),
            r.name_any(),
        )
    });
    news.sort_by_key(|r| r.metadata.creation_timestamp.clone().map(|t| t.0));
    let mut new = news.into_iter().next();
    let replicas = spec.replicas.unwrap_or(1);
    let (surge, unavailable) = fenceposts_of(d);
    let paused = spec.paused == Some(true);
    let mut created_new = false;
    if d.metadata.deletion_timestamp.is_none() {
        if paused {
            // Only scaling while paused: the new set follows `replicas` when
            // nothing else runs.
            if let Some(n) = new.as_ref()
                && olds.iter().all(|o| rs_spec(o) == 0)
                && rs_spec(n) != replicas
            {
                new = Some(scale(ctx, d, n, replicas, surge).await?);
            }
        } else if spec.strategy.as_ref().and_then(|s| s.type_.as_deref()) == Some("Recreate") {
            let mut scaled = false;
            for o in olds.iter_mut().filter(|o| rs_spec(o) > 0) {
                *o = scale(ctx, d, o, 0, surge).await?;
                scaled = true;
            }
            let old_uids: Vec<String> = olds.iter().filter_map(|o| o.uid()).collect();
            let old_pods_left = !old_uids.is_empty()
                && ctx.pods.state().iter().any(|p| {
                    pods::is_active(p)
                        && pods::controller_of(p.as_ref())
                            .is_some_and(|r| old_uids.contains(&r.uid))
                });
            if !scaled && !old_pods_left {
                let n = match new.take() {
                    Some(n) => n,
                    None => {
                        created_new = true;
                        create_new_rs(d, ctx, &olds, replicas, surge).await?
                    }
                };
                let n = ensure_revision(d, ctx, n, &olds, surge).await?;
                new = Some(if rs_spec(&n) != replicas {
                    scale(ctx, d, &n, replicas, surge).await?
                } else {
                    n
                });
            }
        } else {
            let n = match new.take() {
                Some(n) => n,
                None => {
                    let views: Vec<Rs> = olds.iter().map(rs_view).collect();
                    let empty = Rs {
                        name: String::new(),
                        spec: 0,
                        available: 0,
                        actual: 0,
                    };
                    let target = core::new_rs_target(replicas, surge, &empty, &views);
                    created_new = true;
                    create_new_rs(d, ctx, &olds, target, surge).await?
                }
            };
            let mut n = ensure_revision(d, ctx, n, &olds, surge).await?;
            let views: Vec<Rs> = olds.iter().map(rs_view).collect();
            let target = core::new_rs_target(replicas, surge, &rs_view(&n), &views);
            if target != rs_spec(&n) {
                n = scale(ctx, d, &n, target, surge).await?;
            } else {
                for (old_name, to) in
                    core::old_rs_targets(replicas, unavailable, &rs_view(&n), &views)
                {
                    if let Some(o) = olds.iter_mut().find(|o| o.name_any() == old_name) {
                        *o = scale(ctx, d, o, to, surge).await?;
                    }
                }
            }
            new = Some(n);
        }
    }
    // Mirror the new set's revision on the Deployment.
    if let Some(rev) = new
        .as_ref()
        .and_then(|n| n.annotations().get(REVISION).cloned())
        && d.annotations().get(REVISION) != Some(&rev)
    {
        let api: Api<Deployment> = Api::namespaced(ctx.shared.client.clone(), &ns);
        let patch = json!({"metadata": {"annotations": {REVISION: rev}}});
        api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(Error::api(format!("annotating Deployment {ns}/{name}")))?;
    }
    let status = write_status(d, ctx, new.as_ref(), &olds, created_new, unavailable).await?;
    let complete = core::complete(
        replicas,
        status.updated_replicas.unwrap_or(0),
        status.replicas.unwrap_or(0),
        status.available_replicas.unwrap_or(0),
        status.observed_generation.unwrap_or(0),
        d.metadata.generation.unwrap_or(0),
    );
    if complete && !paused {
        cleanup_history(d, ctx, &olds).await?;
    }
    if !complete && !paused {
        // Check the progress deadline again when it would pass.
        if let Some(secs) = spec.progress_deadline_seconds {
            return Ok(Action::requeue(Duration::from_secs(secs.max(1) as u64 + 1)));
        }
    }
    Ok(Action::await_change())
}

fn fenceposts_of(d: &Deployment) -> (i32, i32) {
    let spec = d.spec.as_ref();
    let replicas = spec.and_then(|s| s.replicas).unwrap_or(1);
    let strategy = spec.and_then(|s| s.strategy.as_ref());
    if strategy.and_then(|s| s.type_.as_deref()) == Some("Recreate") {
        return (0, 0);
    }
    let ru = strategy.and_then(|s| s.rolling_update.as_ref());
    core::fenceposts(
        ru.and_then(|r| r.max_surge.as_ref()),
        ru.and_then(|r| r.max_unavailable.as_ref()),
        replicas,
    )
}

/// Sets a ReplicaSet's size (and the desired/max annotations), with a
/// `ScalingReplicaSet` Event.
async fn scale(
    ctx: &Ctx,
    d: &Deployment,
    rs: &ReplicaSet,
    to: i32,
    surge: i32,
) -> Result<ReplicaSet> {
    let ns = rs.namespace().unwrap_or_default();
    let replicas = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let from = rs_spec(rs);
    let api: Api<ReplicaSet> = Api::namespaced(ctx.shared.client.clone(), &ns);
    let patch = json!({
        "metadata": {"annotations": {
            DESIRED_REPLICAS: replicas.to_string(),
            MAX_REPLICAS: (replicas + surge).to_string(),
        }},
        "spec": {"replicas": to},
    });
    let out = api
        .patch(
            &rs.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
        .map_err(Error::api(format!(
            "scaling ReplicaSet {ns}/{}",
            rs.name_any()
        )))?;
    tracing::info!(deployment = %d.name_any(), replicaset = %rs.name_any(), from, to, "scaling");
    if from != to {
        let dir = if to > from { "up" } else { "down" };
        ctx.recorder.publish(
            d,
            EventType::Normal,
            "ScalingReplicaSet",
            format!(
                "Scaled {dir} replica set {} from {from} to {to}",
                rs.name_any()
            ),
        );
    }
    Ok(out)
}

/// The next revision: one more than the highest among `olds`.
fn next_revision(olds: &[ReplicaSet]) -> i64 {
    olds.iter().map(revision).max().unwrap_or(0) + 1
}

/// A ReplicaSet that became "new" again (rollback) gets the next revision;
/// its former numbers go into `revision-history`.
async fn ensure_revision(
    d: &Deployment,
    ctx: &Ctx,
    rs: ReplicaSet,
    olds: &[ReplicaSet],
    surge: i32,
) -> Result<ReplicaSet> {
    let next = next_revision(olds);
    let current = revision(&rs);
    let min_ready = d.spec.as_ref().and_then(|s| s.min_ready_seconds);
    let rs_min_ready = rs.spec.as_ref().and_then(|s| s.min_ready_seconds);
    if current >= next && min_ready == rs_min_ready {
        return Ok(rs);
    }
    let mut annotations = serde_json::Map::new();
    if current < next {
        annotations.insert(REVISION.into(), json!(next.to_string()));
        if current > 0 {
            let mut history: Vec<String> = rs
                .annotations()
                .get(REVISION_HISTORY)
                .map(|h| h.split(',').map(str::to_owned).collect())
                .unwrap_or_default();
            history.push(current.to_string());
            annotations.insert(REVISION_HISTORY.into(), json!(history.join(",")));
        }
    }
    let replicas = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    annotations.insert(DESIRED_REPLICAS.into(), json!(replicas.to_string()));
    annotations.insert(MAX_REPLICAS.into(), json!((replicas + surge).to_string()));
    let ns = rs.namespace().unwrap_or_default();
    let api: Api<ReplicaSet> = Api::namespaced(ctx.shared.client.clone(), &ns);
    let patch =
        json!({"metadata": {"annotations": annotations}, "spec": {"minReadySeconds": min_ready}});
    api.patch(
        &rs.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await
    .map_err(Error::api(format!(
        "updating ReplicaSet {ns}/{}",
        rs.name_any()
    )))
}

async fn create_new_rs(
    d: &Deployment,
    ctx: &Ctx,
    olds: &[ReplicaSet],
    replicas_now: i32,
    surge: i32,
) -> Result<ReplicaSet> {
    let ns = d.namespace().unwrap_or_default();
    let name = d.name_any();
    let spec = d.spec.clone().unwrap_or_default();
    let collisions = d.status.as_ref().and_then(|s| s.collision_count);
    let template_value = core::without_hash(&template_json(d));
    let hash = core::template_hash(&template_value, collisions);
    let mut template = spec.template.clone();
    template
        .metadata
        .get_or_insert_with(ObjectMeta::default)
        .labels
        .get_or_insert_with(BTreeMap::new)
        .insert(HASH_LABEL.into(), hash.clone());
    let mut selector: LabelSelector = spec.selector.clone();
    selector
        .match_labels
        .get_or_insert_with(BTreeMap::new)
        .insert(HASH_LABEL.into(), hash.clone());
    let mut labels = template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    labels.insert(HASH_LABEL.into(), hash.clone());
    let replicas = spec.replicas.unwrap_or(1);
    let mut annotations: BTreeMap<String, String> = d
        .annotations()
        .iter()
        .filter(|(k, _)| !NOT_COPIED.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    annotations.insert(REVISION.into(), next_revision(olds).to_string());
    annotations.insert(DESIRED_REPLICAS.into(), replicas.to_string());
    annotations.insert(MAX_REPLICAS.into(), (replicas + surge).to_string());
    let rs = ReplicaSet {
        metadata: ObjectMeta {
            name: Some(format!("{name}-{hash}")),
            namespace: Some(ns.clone()),
            labels: Some(labels),
            annotations: Some(annotations),
            owner_references: Some(vec![pods::controller_ref(d)]),
            ..ObjectMeta::default()
        },
        spec: Some(ReplicaSetSpec {
            replicas: Some(replicas_now),
            min_ready_seconds: spec.min_ready_seconds,
            selector,
            template: Some(template),
        }),
        status: None,
    };
    let api: Api<ReplicaSet> = Api::namespaced(ctx.shared.client.clone(), &ns);
    match api.create(&PostParams::default(), &rs).await {
        Ok(created) => {
            ctx.recorder.publish(
                d,
                EventType::Normal,
                "ScalingReplicaSet",
                format!(
                    "Scaled up replica set {} from 0 to {replicas_now}",
                    created.name_any()
                ),
            );
            Ok(created)
        }
        Err(e) if client::is_conflict(&e) => {
            // Ours with this template (the cache lagged)? Else a hash
            // collision: bump collisionCount and try again.
            let existing = api
                .get(&format!("{name}-{hash}"))
                .await
                .map_err(Error::api(format!("reading ReplicaSet {ns}/{name}-{hash}")))?;
            let ours =
                pods::controller_of(&existing).is_some_and(|r| Some(&r.uid) == d.uid().as_ref());
            if ours && core::without_hash(&rs_template_json(&existing)) == template_value {
                return Ok(existing);
            }
            let dapi: Api<Deployment> = Api::namespaced(ctx.shared.client.clone(), &ns);
            let patch = json!({"status": {"collisionCount": collisions.unwrap_or(0) + 1}});
            dapi.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map_err(Error::api(format!(
                    "bumping collisionCount of Deployment {ns}/{name}"
                )))?;
            Err(Error::Waiting(format!(
                "ReplicaSet name {name}-{hash} collides; retrying"
            )))
        }
        Err(e) => {
            ctx.recorder.publish(
                d,
                EventType::Warning,
                "ReplicaSetCreateError",
                format!("Failed to create new replica set \"{name}-{hash}\": {e}"),
            );
            Err(Error::api(format!(
                "creating ReplicaSet {ns}/{name}-{hash}"
            ))(e))
        }
    }
}

/// Deletes old, empty ReplicaSets beyond `revisionHistoryLimit`, oldest
/// revision first.
async fn cleanup_history(d: &Deployment, ctx: &Ctx, olds: &[ReplicaSet]) -> Result<()> {
    let limit = d
        .spec
        .as_ref()
        .and_then(|s| s.revision_history_limit)
        .unwrap_or(10)
        .max(0) as usize;
    let mut empty: Vec<&ReplicaSet> = olds
        .iter()
        .filter(|r| {
            rs_spec(r) == 0
                && r.status.as_ref().is_none_or(|s| s.replicas == 0)
                && r.metadata.deletion_timestamp.is_none()
        })
        .collect();
    if empty.len() <= limit {
        return Ok(());
    }
    empty.sort_by_key(|r| revision(r));
    let ns = d.namespace().unwrap_or_default();
    let api: Api<ReplicaSet> = Api::namespaced(ctx.shared.client.clone(), &ns);
    for rs in &empty[..empty.len() - limit] {
        match api.delete(&rs.name_any(), &DeleteParams::default()).await {
            Ok(_) => {}
            Err(e) if client::is_not_found(&e) => {}
            Err(e) => {
                return Err(Error::api(format!(
                    "deleting old ReplicaSet {ns}/{}",
                    rs.name_any()
                ))(e));
            }
        }
    }
    Ok(())
}

fn condition(status: &DeploymentStatus, ty: &str) -> Option<DeploymentCondition> {
    status
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == ty)
        .cloned()
}

/// Sets a condition: an unchanged status and reason changes nothing; the
/// same status keeps its lastTransitionTime.
fn set_condition(conds: &mut Vec<DeploymentCondition>, mut c: DeploymentCondition, touch: bool) {
    if let Some(old) = conds.iter().find(|o| o.type_ == c.type_) {
        if old.status == c.status && old.reason == c.reason && !touch {
            return;
        }
        if old.status == c.status {
            c.last_transition_time = old.last_transition_time.clone();
        }
    }
    conds.retain(|o| o.type_ != c.type_);
    conds.push(c);
}

fn new_condition(
    ty: &str,
    status: &str,
    reason: &str,
    message: String,
    now: Timestamp,
) -> DeploymentCondition {
    DeploymentCondition {
        type_: ty.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message),
        last_update_time: Some(Time(now)),
        last_transition_time: Some(Time(now)),
    }
}

async fn write_status(
    d: &Deployment,
    ctx: &Ctx,
    new: Option<&ReplicaSet>,
    olds: &[ReplicaSet],
    created_new: bool,
    unavailable: i32,
) -> Result<DeploymentStatus> {
    let spec = d.spec.clone().unwrap_or_default();
    let replicas = spec.replicas.unwrap_or(1);
    let old_status = d.status.clone().unwrap_or_default();
    let all: Vec<&ReplicaSet> = new.into_iter().chain(olds.iter()).collect();
    let st = |r: &ReplicaSet| r.status.clone().unwrap_or_default();
    let total: i32 = all.iter().map(|r| st(r).replicas).sum();
    let spec_total: i32 = all.iter().map(|r| rs_spec(r)).sum();
    let ready: i32 = all.iter().map(|r| st(r).ready_replicas.unwrap_or(0)).sum();
    let available: i32 = all
        .iter()
        .map(|r| st(r).available_replicas.unwrap_or(0))
        .sum();
    let updated = new.map_or(0, |n| st(n).replicas);
    let now = Timestamp::now();
    let mut status = DeploymentStatus {
        observed_generation: d.metadata.generation,
        replicas: Some(total),
        updated_replicas: Some(updated),
        ready_replicas: Some(ready),
        available_replicas: Some(available),
        unavailable_replicas: Some((spec_total - available).max(0)),
        collision_count: old_status.collision_count,
        conditions: old_status.conditions.clone(),
        terminating_replicas: old_status.terminating_replicas,
    };
    let mut conds = status.conditions.take().unwrap_or_default();
    let (avail_status, avail_reason, avail_msg) = if available >= replicas - unavailable {
        (
            "True",
            "MinimumReplicasAvailable",
            "Deployment has minimum availability.",
        )
    } else {
        (
            "False",
            "MinimumReplicasUnavailable",
            "Deployment does not have minimum availability.",
        )
    };
    set_condition(
        &mut conds,
        new_condition(
            "Available",
            avail_status,
            avail_reason,
            avail_msg.into(),
            now,
        ),
        false,
    );
    let new_name = new.map(|n| n.name_any()).unwrap_or_default();
    let progressing = condition(&old_status, "Progressing");
    if spec.paused == Some(true) {
        set_condition(
            &mut conds,
            new_condition(
                "Progressing",
                "Unknown",
                "DeploymentPaused",
                "Deployment is paused".into(),
                now,
            ),
            false,
        );
    } else if progressing.as_ref().and_then(|c| c.reason.as_deref()) == Some("DeploymentPaused") {
        set_condition(
            &mut conds,
            new_condition(
                "Progressing",
                "Unknown",
                "DeploymentResumed",
                "Deployment is resumed".into(),
                now,
            ),
            false,
        );
    } else if core::complete(
        replicas,
        updated,
        total,
        available,
        d.metadata.generation.unwrap_or(0),
        d.metadata.generation.unwrap_or(0),
    ) {
        set_condition(
            &mut conds,
            new_condition(
                "Progressing",
                "True",
                "NewReplicaSetAvailable",
                format!("ReplicaSet \"{new_name}\" has successfully progressed."),
                now,
            ),
            false,
        );
    } else if created_new {
        set_condition(
            &mut conds,
            new_condition(
                "Progressing",
                "True",
                "NewReplicaSetCreated",
                format!("Created new replica set \"{new_name}\""),
                now,
            ),
            true,
        );
    } else if updated > old_status.updated_replicas.unwrap_or(0)
        || total < old_status.replicas.unwrap_or(0)
        || ready > old_status.ready_replicas.unwrap_or(0)
        || available > old_status.available_replicas.unwrap_or(0)
        || progressing.is_none()
    {
        set_condition(
            &mut conds,
            new_condition(
                "Progressing",
                "True",
                "ReplicaSetUpdated",
                format!("ReplicaSet \"{new_name}\" is progressing."),
                now,
            ),
            true,
        );
    } else if let (Some(p), Some(secs)) = (progressing.as_ref(), spec.progress_deadline_seconds) {
        let last = p.last_update_time.as_ref().map_or(now, |t| t.0);
        if p.reason.as_deref() != Some("NewReplicaSetAvailable")
            && last.as_second() + i64::from(secs) < now.as_second()
        {
            set_condition(
                &mut conds,
                new_condition(
                    "Progressing",
                    "False",
                    "ProgressDeadlineExceeded",
                    format!("ReplicaSet \"{new_name}\" has timed out progressing."),
                    now,
                ),
                false,
            );
        }
    }
    conds.sort_by_key(|c| if c.type_ == "Available" { 0 } else { 1 });
    status.conditions = Some(conds);
    if status == old_status {
        return Ok(status);
    }
    let ns = d.namespace().unwrap_or_default();
    let api: Api<Deployment> = Api::namespaced(ctx.shared.client.clone(), &ns);
    match api
        .patch_status(
            &d.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&json!({"status": status})),
        )
        .await
    {
        Ok(_) => Ok(status),
        Err(e) if client::is_not_found(&e) => Ok(status),
        Err(e) => Err(Error::api(format!(
            "updating the status of Deployment {ns}/{}",
            d.name_any()
        ))(e)),
    }
}
