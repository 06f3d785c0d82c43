//! The Job controller (upstream's `job-controller`, `NonIndexed` mode) and
//! the TTL-after-finished cleanup (upstream's `ttl-after-finished-controller`)
//! in one reconcile.
//!
//! A sync of a Job:
//! 1. takes the pods it controls (controller ownerReference with its uid);
//! 2. counts finished pods the way upstream does since 1.26: each pod
//!    carries the [`core::TRACKING_FINALIZER`]; a pod that ended (Succeeded,
//!    Failed, or deleted before it succeeded) is first recorded by uid in
//!    `status.uncountedTerminatedPods`, then loses the finalizer, then moves
//!    into `status.succeeded` / `status.failed` — so a pod is counted exactly
//!    once even if it is deleted at once, and a stale cache never counts
//!    twice (status writes are guarded by the Job's resourceVersion);
//! 3. decides the end ([`core::end`]): more failures than `backoffLimit`
//!    (`BackoffLimitExceeded`), past `activeDeadlineSeconds`
//!    (`DeadlineExceeded`), or enough successes; otherwise creates or deletes
//!    pods up to [`core::wanted_active`] (parallelism, capped by the
//!    successes still missing; none while suspended);
//! 4. writes `status`: `active`, `ready`, `terminating`, `succeeded`,
//!    `failed`, `startTime`, the interim `SuccessCriteriaMet` /
//!    `FailureTarget` condition as soon as the end is known, and `Complete`
//!    (with `completionTime`) / `Failed` once no pod runs and every ended pod
//!    is counted, as upstream 1.33 does;
//! 5. a finished Job with `ttlSecondsAfterFinished` is deleted (foreground,
//!    as upstream's TTL controller does) that long after it finished.
//!
//! A pod holding the tracking finalizer whose Job is gone loses it (a second
//! `Controller` over such pods), so deleting a Job never leaves pods stuck.
pub mod core;

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::{StreamExt as _, future::join_all};
use k8s_openapi::{
    api::{batch::v1::Job, core::v1::Pod},
    jiff::Timestamp,
};
use kube::{
    Api, ResourceExt as _,
    api::{DeleteParams, Patch, PatchParams, PostParams},
    runtime::{
        controller::{Action, Config, Controller},
        reflector::{ObjectRef, Store},
    },
};
use serde_json::{Value, json};

use self::core::{End, PodState, Spec, TRACKING_FINALIZER};
use super::{Backoff, Error, Result, Shared, pods};
use crate::client::{
    self,
    events::{EventType, Recorder},
};

const COMPONENT: &str = "job-controller";

/// Pods created or deleted that the cache does not show yet (per Job uid).
#[derive(Default)]
struct Expectations {
    creating: HashSet<String>,
    deleting: HashSet<String>,
    since: Option<Instant>,
}

struct Ctx {
    shared: Arc<Shared>,
    pods: Store<Pod>,
    jobs: Store<Job>,
    recorder: Recorder,
    expectations: Mutex<HashMap<String, Expectations>>,
    backoff: Backoff<ObjectRef<Job>>,
}

/// Runs the Job controller with `workers` Jobs synced at once
/// (`--concurrent-job-syncs`).
pub async fn run(shared: Arc<Shared>, workers: u16) -> anyhow::Result<()> {
    let jobs = shared.jobs();
    let pod_informer = shared.pods();
    jobs.ready().await;
    pod_informer.ready().await;
    let ctx = Arc::new(Ctx {
        recorder: shared.recorder(COMPONENT),
        shared: Arc::clone(&shared),
        pods: pod_informer.store(),
        jobs: jobs.store(),
        expectations: Mutex::default(),
        backoff: Backoff::new(Duration::from_millis(10), Duration::from_secs(300)),
    });
    let main = Controller::for_stream(jobs.subscribe(), jobs.store())
        .owns_stream(pod_informer.subscribe())
        .with_config(Config::default().concurrency(workers))
        .run(reconcile, error_policy, Arc::clone(&ctx));
    // Pods still holding the tracking finalizer: the orphan sweep.
    let tracked = pod_informer
        .subscribe()
        .filter(|p| std::future::ready(p.as_ref().is_ok_and(core::has_tracking_finalizer)));
    let orphans = Controller::for_stream(tracked, pod_informer.store())
        .with_config(Config::default().concurrency(2))
        .run(
            reconcile_orphan,
            |_, _, _| Action::requeue(Duration::from_secs(1)),
            ctx,
        );
    tokio::join!(
        super::drive("job", main),
        super::drive("job-orphans", orphans)
    );
    Ok(())
}

fn error_policy(job: Arc<Job>, _err: &Error, ctx: Arc<Ctx>) -> Action {
    Action::requeue(ctx.backoff.next(ObjectRef::from_obj(job.as_ref())))
}

async fn reconcile(job: Arc<Job>, ctx: Arc<Ctx>) -> Result<Action> {
    let key = ObjectRef::from_obj(job.as_ref());
    let r = sync(job.as_ref(), &ctx).await;
    if r.is_ok() {
        ctx.backoff.reset(&key);
    }
    r
}

fn now_string() -> String {
    Timestamp::now()
        .round(k8s_openapi::jiff::Unit::Second)
        .unwrap_or(Timestamp::now())
        .to_string()
}

fn conditions(job: &Job) -> Vec<Value> {
    serde_json::to_value(job.status.as_ref().and_then(|s| s.conditions.clone()))
        .ok()
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
}

fn has_condition(job: &Job, ty: &str) -> bool {
    job.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == ty && c.status == "True"))
}

/// `Complete` or `Failed` is true.
pub fn is_finished(job: &Job) -> bool {
    has_condition(job, "Complete") || has_condition(job, "Failed")
}

/// The uids in `status.uncountedTerminatedPods`: (succeeded, failed).
fn uncounted(job: &Job) -> (BTreeSet<String>, BTreeSet<String>) {
    let u = job
        .status
        .as_ref()
        .and_then(|s| s.uncounted_terminated_pods.as_ref());
    let set = |v: Option<&Vec<String>>| v.cloned().unwrap_or_default().into_iter().collect();
    (
        set(u.and_then(|u| u.succeeded.as_ref())),
        set(u.and_then(|u| u.failed.as_ref())),
    )
}

fn counts(job: &Job) -> (i32, i32) {
    let s = job.status.as_ref();
    (
        s.and_then(|s| s.succeeded).unwrap_or(0),
        s.and_then(|s| s.failed).unwrap_or(0),
    )
}

impl Ctx {
    fn satisfied(&self, uid: &str, ns: &str) -> bool {
        let mut all = self.expectations.lock().expect("expectations");
        let Some(e) = all.get_mut(uid) else {
            return true;
        };
        if e.since
            .is_some_and(|s| s.elapsed() > Duration::from_secs(300))
        {
            all.remove(uid);
            return true;
        }
        let key = |n: &str| ObjectRef::<Pod>::new(n).within(ns);
        e.creating.retain(|n| self.pods.get(&key(n)).is_none());
        e.deleting.retain(|n| {
            self.pods
                .get(&key(n))
                .is_some_and(|p| p.metadata.deletion_timestamp.is_none())
        });
        let done = e.creating.is_empty() && e.deleting.is_empty();
        if done {
            all.remove(uid);
        }
        done
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

async fn sync(job: &Job, ctx: &Ctx) -> Result<Action> {
    let ns = job.namespace().unwrap_or_default();
    let name = job.name_any();
    let uid = job.uid().unwrap_or_default();
    let jobs: Api<Job> = Api::namespaced(ctx.shared.client.clone(), &ns);
    if job.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let spec = match Spec::of(job) {
        Ok(s) => s,
        Err(e) => {
            let msg = format!("Job {ns}/{name}: {e}");
            ctx.recorder
                .publish(job, EventType::Warning, "InvalidJob", msg.clone());
            return Err(Error::Invalid(msg));
        }
    };
    let satisfied = ctx.satisfied(&uid, &ns);
    let owned: Vec<Arc<Pod>> = ctx.pods.state_filter(|p| {
        p.metadata.namespace.as_deref() == Some(ns.as_str())
            && pods::controller_of(p).is_some_and(|r| r.uid == uid)
    });

    // 1. Ended pods still holding the finalizer are recorded by uid first.
    let (mut un_ok, mut un_failed) = uncounted(job);
    let mut newly = false;
    for p in owned.iter().filter(|p| core::has_tracking_finalizer(p)) {
        let puid = p.uid().unwrap_or_default();
        let state = core::pod_state(p);
        if state == PodState::Active || un_ok.contains(&puid) || un_failed.contains(&puid) {
            continue;
        }
        if state == PodState::Succeeded {
            un_ok.insert(puid);
        } else {
            un_failed.insert(puid);
        }
        newly = true;
    }
    let mut job = job.clone();
    if newly {
        job = write_status(
            &jobs,
            &job,
            json!({"uncountedTerminatedPods": {"succeeded": un_ok, "failed": un_failed}}),
        )
        .await?;
    }
    // 2. …then lose the finalizer…
    let recorded: HashSet<&String> = un_ok.iter().chain(un_failed.iter()).collect();
    let pod_api: Api<Pod> = Api::namespaced(ctx.shared.client.clone(), &ns);
    let holding: Vec<&Arc<Pod>> = owned
        .iter()
        .filter(|p| {
            core::has_tracking_finalizer(p) && recorded.contains(&p.uid().unwrap_or_default())
        })
        .collect();
    let removed = join_all(holding.iter().map(|p| remove_finalizer(&pod_api, p))).await;
    let mut still: HashSet<String> = HashSet::new();
    for (p, r) in holding.iter().zip(removed) {
        if let Err(e) = r {
            tracing::warn!(pod = %p.name_any(), error = %e, "removing the tracking finalizer");
            still.insert(p.uid().unwrap_or_default());
        }
    }
    // 3. …and are counted.
    let (mut succeeded, mut failed) = counts(&job);
    let moved_ok: Vec<String> = un_ok
        .iter()
        .filter(|u| !still.contains(*u))
        .cloned()
        .collect();
    let moved_failed: Vec<String> = un_failed
        .iter()
        .filter(|u| !still.contains(*u))
        .cloned()
        .collect();
    succeeded += moved_ok.len() as i32;
    failed += moved_failed.len() as i32;
    un_ok.retain(|u| still.contains(u));
    un_failed.retain(|u| still.contains(u));

    let active: Vec<&Pod> = owned
        .iter()
        .map(Arc::as_ref)
        .filter(|p| core::pod_state(p) == PodState::Active)
        .collect();
    let terminating = owned
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_some() && !pods::is_terminal(p))
        .count() as i32;
    let start = job
        .status
        .as_ref()
        .and_then(|s| s.start_time.as_ref())
        .map(|t| t.0);
    let running_for = start.map(|t| Timestamp::now().as_second() - t.as_second());
    let finished = is_finished(&job);
    let end = if finished {
        None
    } else {
        core::end(&spec, succeeded, failed, active.len() as i32, running_for)
    };

    // Pods: none once the end is known, else as many as wanted.
    let mut active_count = active.len() as i32;
    if !finished && satisfied {
        let want = if end.is_some() {
            0
        } else {
            core::wanted_active(&spec, succeeded, active_count)
        };
        active_count += manage(&job, ctx, &pod_api, &spec, &active, want).await?;
    }
    let ready = active.iter().filter(|p| pods::is_ready(p)).count() as i32;

    // Status.
    let mut conds = conditions(&job);
    let now = now_string();
    let interim = conds
        .iter()
        .find(|c| {
            (c["type"] == "SuccessCriteriaMet" || c["type"] == "FailureTarget")
                && c["status"] == "True"
        })
        .cloned();
    match &end {
        Some(End::Complete) => {
            set_condition(
                &mut conds,
                &now,
                "SuccessCriteriaMet",
                "CompletionsReached",
                "Reached expected number of succeeded pods",
            );
        }
        // An event only when the condition is new (set_condition says so).
        Some(End::Failed { reason, message })
            if set_condition(&mut conds, &now, "FailureTarget", reason, message) =>
        {
            ctx.recorder
                .publish(&job, EventType::Warning, reason, message.to_string());
        }
        Some(End::Failed { .. }) | None => {}
    }
    let suspended = spec.suspend && !finished;
    if suspended {
        if set_condition(
            &mut conds,
            &now,
            "Suspended",
            "JobSuspended",
            "Job suspended",
        ) {
            ctx.recorder
                .publish(&job, EventType::Normal, "Suspended", "Job suspended");
        }
    } else if conds
        .iter()
        .any(|c| c["type"] == "Suspended" && c["status"] == "True")
    {
        for c in conds.iter_mut().filter(|c| c["type"] == "Suspended") {
            *c = json!({"type": "Suspended", "status": "False", "reason": "JobResumed",
                "message": "Job resumed", "lastProbeTime": now, "lastTransitionTime": now});
        }
        ctx.recorder
            .publish(&job, EventType::Normal, "Resumed", "Job resumed");
    }
    // The final condition once nothing runs and every ended pod is counted.
    let interim = interim.or_else(|| {
        conds
            .iter()
            .find(|c| {
                (c["type"] == "SuccessCriteriaMet" || c["type"] == "FailureTarget")
                    && c["status"] == "True"
            })
            .cloned()
    });
    let mut completion_time = job
        .status
        .as_ref()
        .and_then(|s| s.completion_time.as_ref())
        .map(|t| json!(t.0.to_string()));
    if !finished
        && let Some(i) = interim
        && active_count == 0
        && terminating == 0
        && un_ok.is_empty()
        && un_failed.is_empty()
    {
        let (ty, event, msg) = if i["type"] == "SuccessCriteriaMet" {
            completion_time = Some(json!(now));
            ("Complete", "Completed", "Job completed")
        } else {
            ("Failed", "", "")
        };
        set_condition(
            &mut conds,
            &now,
            ty,
            i["reason"].as_str().unwrap_or_default(),
            i["message"].as_str().unwrap_or_default(),
        );
        if !event.is_empty() {
            ctx.recorder
                .publish(&job, EventType::Normal, event, msg.to_string());
        }
    }
    let start_time = match job.status.as_ref().and_then(|s| s.start_time.as_ref()) {
        Some(t) => json!(t.0.to_string()),
        None if !spec.suspend => json!(now),
        None => Value::Null,
    };
    let nz = |n: i32| if n == 0 { Value::Null } else { json!(n) };
    let status = json!({
        "active": nz(active_count),
        "ready": ready,
        "terminating": terminating,
        "succeeded": nz(succeeded),
        "failed": nz(failed),
        "startTime": start_time,
        "completionTime": completion_time,
        "conditions": if conds.is_empty() { Value::Null } else { json!(conds) },
        "uncountedTerminatedPods": {
            "succeeded": if un_ok.is_empty() { Value::Null } else { json!(un_ok) },
            "failed": if un_failed.is_empty() { Value::Null } else { json!(un_failed) },
        },
    });
    if normalized(&status) != normalized(&serde_json::to_value(&job.status).unwrap_or_default()) {
        job = write_status(&jobs, &job, status).await?;
    }

    // TTL after finished, and the active deadline.
    if is_finished(&job) {
        return ttl(&job, ctx, &jobs).await;
    }
    if !still.is_empty() {
        return Err(Error::Waiting(format!(
            "Job {ns}/{name}: {} pods still hold {TRACKING_FINALIZER}",
            still.len()
        )));
    }
    if let (Some(d), Some(t)) = (spec.active_deadline_seconds, running_for)
        && !spec.suspend
    {
        return Ok(Action::requeue(Duration::from_secs((d - t).max(1) as u64)));
    }
    Ok(Action::await_change())
}

/// Sets condition `ty` true (unless it already is); whether it changed.
fn set_condition(conds: &mut Vec<Value>, now: &str, ty: &str, reason: &str, message: &str) -> bool {
    if conds
        .iter()
        .any(|c| c["type"] == ty && c["status"] == "True")
    {
        return false;
    }
    conds.retain(|c| c["type"] != ty);
    conds.push(
        json!({"type": ty, "status": "True", "reason": reason, "message": message,
        "lastProbeTime": now, "lastTransitionTime": now}),
    );
    true
}

/// Status as compared: nulls, empty lists and zero counts dropped, so that
/// a status equal to the stored one is not written again.
fn normalized(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| (k.clone(), normalized(v)))
                .filter(|(_, v)| {
                    !(v.is_null()
                        || *v == json!(0)
                        || v.as_array().is_some_and(Vec::is_empty)
                        || v.as_object().is_some_and(serde_json::Map::is_empty))
                })
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(normalized).collect()),
        other => other.clone(),
    }
}

/// A merge patch of `status`, guarded by the Job's resourceVersion (a
/// stale view never counts a pod twice: the write fails with a conflict).
async fn write_status(api: &Api<Job>, job: &Job, status: Value) -> Result<Job> {
    let patch = json!({
        "metadata": {"resourceVersion": job.resource_version()},
        "status": status,
    });
    api.patch_status(
        &job.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await
    .map_err(Error::api(format!(
        "updating the status of Job {}/{}",
        job.namespace().unwrap_or_default(),
        job.name_any()
    )))
}

/// Removes the tracking finalizer (upstream's strategic-merge
/// `$deleteFromPrimitiveList` patch). A pod already gone is fine.
async fn remove_finalizer(api: &Api<Pod>, pod: &Pod) -> Result<()> {
    let patch = json!({"metadata": {"$deleteFromPrimitiveList/finalizers": [TRACKING_FINALIZER]}});
    match api
        .patch(
            &pod.name_any(),
            &PatchParams::default(),
            &Patch::Strategic(&patch),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if client::is_not_found(&e) => Ok(()),
        Err(e) => Err(Error::api(format!(
            "removing {TRACKING_FINALIZER} from pod {}/{}",
            pod.namespace().unwrap_or_default(),
            pod.name_any()
        ))(e)),
    }
}

/// Creates or deletes pods towards `want` active ones; returns the change
/// in active pods.
async fn manage(
    job: &Job,
    ctx: &Ctx,
    api: &Api<Pod>,
    spec: &Spec,
    active: &[&Pod],
    want: i32,
) -> Result<i32> {
    let uid = job.uid().unwrap_or_default();
    let diff = want - active.len() as i32;
    if diff < 0 {
        let victims = core::surplus(active, (-diff) as usize);
        let names: Vec<String> = victims.iter().map(|p| p.name_any()).collect();
        let dp = DeleteParams::default();
        let results = join_all(names.iter().map(|n| api.delete(n, &dp))).await;
        let mut deleted = Vec::new();
        for (n, r) in names.into_iter().zip(results) {
            match r {
                Ok(_) => {
                    ctx.recorder.publish(
                        job,
                        EventType::Normal,
                        "SuccessfulDelete",
                        format!("Deleted pod: {n}"),
                    );
                    deleted.push(n);
                }
                Err(e) if client::is_not_found(&e) => {}
                Err(e) => {
                    ctx.recorder.publish(
                        job,
                        EventType::Warning,
                        "FailedDelete",
                        format!("Error deleting: {e}"),
                    );
                }
            }
        }
        let n = deleted.len() as i32;
        ctx.expect(&uid, Vec::new(), deleted);
        return Ok(-n);
    }
    if diff == 0 {
        return Ok(0);
    }
    let Some(template) = job.spec.as_ref().map(|s| &s.template) else {
        return Ok(0);
    };
    let mut pod = super::replicaset::pod_from_template(job, template);
    pod.metadata
        .finalizers
        .get_or_insert_with(Vec::new)
        .push(TRACKING_FINALIZER.to_owned());
    let _ = spec;
    let mut created = Vec::new();
    let mut failure = None;
    // Slow start, as the ReplicaSet controller: 1, 2, 4, … at most 500.
    for batch in super::replicaset::core::slow_start_batches(diff.min(500) as usize) {
        let pp = PostParams::default();
        let results = join_all((0..batch).map(|_| api.create(&pp, &pod))).await;
        for r in results {
            match r {
                Ok(p) => {
                    ctx.recorder.publish(
                        job,
                        EventType::Normal,
                        "SuccessfulCreate",
                        format!("Created pod: {}", p.name_any()),
                    );
                    created.push(p.name_any());
                }
                Err(e) if client::is_namespace_terminating(&e) => {}
                Err(e) => {
                    ctx.recorder.publish(
                        job,
                        EventType::Warning,
                        "FailedCreate",
                        format!("Error creating: {e}"),
                    );
                    failure = Some(e);
                }
            }
        }
        if failure.is_some() {
            break;
        }
    }
    let n = created.len() as i32;
    ctx.expect(&uid, created, Vec::new());
    if let Some(e) = failure {
        return Err(Error::api(format!(
            "creating pods for Job {}/{}",
            job.namespace().unwrap_or_default(),
            job.name_any()
        ))(e));
    }
    Ok(n)
}

/// Deletes a finished Job `ttlSecondsAfterFinished` after it finished
/// (upstream's TTL-after-finished controller, foreground propagation).
async fn ttl(job: &Job, ctx: &Ctx, api: &Api<Job>) -> Result<Action> {
    let Some(ttl) = job.spec.as_ref().and_then(|s| s.ttl_seconds_after_finished) else {
        return Ok(Action::await_change());
    };
    let finished_at = job
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| {
            cs.iter()
                .find(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
        })
        .and_then(|c| c.last_transition_time.as_ref())
        .map(|t| t.0.as_second())
        .unwrap_or_else(|| Timestamp::now().as_second());
    let left = finished_at + i64::from(ttl) - Timestamp::now().as_second();
    if left > 0 {
        return Ok(Action::requeue(Duration::from_secs(left as u64)));
    }
    let dp = DeleteParams {
        propagation_policy: Some(kube::api::PropagationPolicy::Foreground),
        preconditions: Some(kube::api::Preconditions {
            uid: job.uid(),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    match api.delete(&job.name_any(), &dp).await {
        Ok(_) => {}
        Err(e) if client::is_not_found(&e) => {}
        Err(e) => {
            return Err(Error::api(format!(
                "deleting finished Job {}/{}",
                job.namespace().unwrap_or_default(),
                job.name_any()
            ))(e));
        }
    }
    let _ = ctx;
    Ok(Action::await_change())
}

/// A pod holding the tracking finalizer whose Job is gone, being deleted
/// or finished loses the finalizer once it ended (upstream's orphan pod
/// handling), so it can go.
async fn reconcile_orphan(pod: Arc<Pod>, ctx: Arc<Ctx>) -> Result<Action> {
    if !core::has_tracking_finalizer(&pod) {
        return Ok(Action::await_change());
    }
    let ns = pod.namespace().unwrap_or_default();
    let owner = pods::controller_of(pod.as_ref()).filter(|r| r.kind == "Job");
    let job = owner.and_then(|r| {
        ctx.jobs
            .get(&ObjectRef::new(&r.name).within(&ns))
            .filter(|j| j.uid().as_deref() == Some(r.uid.as_str()))
    });
    let orphaned = match &job {
        None => {
            // Confirm with a live read: the cache may be behind a new Job.
            match owner {
                Some(r) => {
                    let api: Api<Job> = Api::namespaced(ctx.shared.client.clone(), &ns);
                    let live = api
                        .get_opt(&r.name)
                        .await
                        .map_err(Error::api(format!("reading Job {ns}/{}", r.name)))?;
                    live.is_none_or(|j| j.uid().as_deref() != Some(r.uid.as_str()))
                }
                None => true,
            }
        }
        Some(j) => j.metadata.deletion_timestamp.is_some(),
    };
    if orphaned {
        let api: Api<Pod> = Api::namespaced(ctx.shared.client.clone(), &ns);
        remove_finalizer(&api, &pod).await?;
    }
    Ok(Action::await_change())
}
