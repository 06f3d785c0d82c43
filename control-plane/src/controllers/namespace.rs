//! The namespace controller (upstream's `namespace-controller` and its
//! `NamespacedResourcesDeleter`): a namespace being deleted is emptied —
//! every namespaced resource discovery lists, custom resources included —
//! then its `kubernetes` finalizer is removed through
//! `namespaces/<name>/finalize`, after which the API server deletes it.
//!
//! Each pass deletes every resource's objects (`deletecollection`, else
//! one by one), counts what is left, and writes upstream's conditions:
//! `NamespaceDeletionDiscoveryFailure`,
//! `NamespaceDeletionGroupVersionParsingFailure`,
//! `NamespaceDeletionContentFailure`, `NamespaceContentRemaining`,
//! `NamespaceFinalizersRemaining`. While anything is left (pods finishing
//! gracefully, objects held by finalizers) it looks again shortly.
use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
    time::Duration,
};

use k8s_openapi::api::core::v1::Namespace;
use kube::{
    Api, Client, ResourceExt as _,
    api::{DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams},
    discovery::{ApiResource, Discovery, Scope, verbs},
    runtime::{
        controller::{Action, Config, Controller},
        reflector::ObjectRef,
    },
};
use serde_json::{Value, json};
use tracing::info;

use super::{Backoff, Error, Result, Shared};
use crate::client;

/// The finalizer the API server gives every namespace.
pub const FINALIZER: &str = "kubernetes";

/// How soon a namespace with content left is looked at again.
const RECHECK: Duration = Duration::from_secs(1);

struct Ctx {
    client: Client,
    backoff: Backoff<ObjectRef<Namespace>>,
}

/// Runs the namespace controller (`--concurrent-namespace-syncs`).
pub async fn run(shared: Arc<Shared>, workers: u16) -> anyhow::Result<()> {
    let namespaces = shared.namespaces();
    namespaces.ready().await;
    let ctx = Arc::new(Ctx {
        client: shared.client.clone(),
        backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(60)),
    });
    let results = Controller::for_stream(namespaces.subscribe(), namespaces.store())
        .with_config(Config::default().concurrency(workers.max(1)))
        .run(reconcile, error_policy, ctx);
    super::drive("namespace", results).await;
    Ok(())
}

fn error_policy(ns: Arc<Namespace>, _err: &Error, ctx: Arc<Ctx>) -> Action {
    Action::requeue(ctx.backoff.next(ObjectRef::from_obj(ns.as_ref())))
}

async fn reconcile(ns: Arc<Namespace>, ctx: Arc<Ctx>) -> Result<Action> {
    let key = ObjectRef::from_obj(ns.as_ref());
    let r = sync(&ns, &ctx).await;
    if r.is_ok() {
        ctx.backoff.reset(&key);
    }
    r
}

fn spec_finalizers(ns: &Namespace) -> Vec<String> {
    ns.spec
        .as_ref()
        .and_then(|s| s.finalizers.clone())
        .unwrap_or_default()
}

/// What one pass found.
#[derive(Default)]
struct Pass {
    discovery_failure: Option<String>,
    /// Deletion failures, `resource.group: error`.
    failures: Vec<String>,
    /// `resource.group` → objects left.
    remaining: BTreeMap<String, usize>,
    /// finalizer → objects holding it.
    finalizers: BTreeMap<String, usize>,
}

async fn sync(ns: &Namespace, ctx: &Ctx) -> Result<Action> {
    if ns.metadata.deletion_timestamp.is_none()
        || !spec_finalizers(ns).iter().any(|f| f == FINALIZER)
    {
        return Ok(Action::await_change());
    }
    let name = ns.name_any();
    let pass = empty(&ctx.client, &name).await;
    write_conditions(ctx, ns, &pass).await?;
    if pass.discovery_failure.is_some() || !pass.failures.is_empty() {
        return Err(Error::Waiting(format!(
            "namespace {name}: {}",
            pass.discovery_failure
                .clone()
                .unwrap_or_else(|| pass.failures.join("; "))
        )));
    }
    if !pass.remaining.is_empty() {
        return Ok(Action::requeue(RECHECK));
    }
    finalize(ctx, ns).await?;
    info!(namespace = %name, "namespace emptied and finalized");
    Ok(Action::await_change())
}

/// Every namespaced resource that can be listed and deleted, in each
/// group's preferred version.
async fn resources(client: &Client) -> anyhow::Result<Vec<(ApiResource, bool)>> {
    let discovery = Discovery::new(client.clone()).run().await?;
    let mut out = Vec::new();
    for group in discovery.groups() {
        for (ar, caps) in group.recommended_resources() {
            if caps.scope != Scope::Namespaced
                || !caps.supports_operation(verbs::LIST)
                || !caps.supports_operation(verbs::DELETE)
            {
                continue;
            }
            out.push((ar, caps.supports_operation(verbs::DELETE_COLLECTION)));
        }
    }
    Ok(out)
}

fn label(ar: &ApiResource) -> String {
    format!("{}.{}", ar.plural, ar.group)
}

/// One pass of deletions and counting over namespace `ns`.
async fn empty(client: &Client, ns: &str) -> Pass {
    let mut pass = Pass::default();
    let resources = match resources(client).await {
        Ok(r) => r,
        Err(e) => {
            pass.discovery_failure = Some(format!("discovery failed: {e}"));
            return pass;
        }
    };
    let dp = DeleteParams::background();
    for (ar, collection) in &resources {
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, ar);
        let deleted = if *collection {
            api.delete_collection(&dp, &ListParams::default())
                .await
                .map(|_| ())
        } else {
            delete_each(&api, &dp).await
        };
        if let Err(e) = deleted
            && !client::is_not_found(&e)
        {
            pass.failures.push(format!("{}: {e}", label(ar)));
            continue;
        }
        match api.list(&ListParams::default()).await {
            Ok(left) if !left.items.is_empty() => {
                pass.remaining.insert(label(ar), left.items.len());
                for o in &left.items {
                    for f in o.finalizers() {
                        *pass.finalizers.entry(f.clone()).or_default() += 1;
                    }
                }
            }
            Ok(_) => {}
            Err(e) if client::is_not_found(&e) => {}
            Err(e) => pass.failures.push(format!("{}: {e}", label(ar))),
        }
    }
    pass
}

async fn delete_each(api: &Api<DynamicObject>, dp: &DeleteParams) -> kube::Result<()> {
    for o in api.list(&ListParams::default()).await?.items {
        if o.metadata.deletion_timestamp.is_some() {
            continue;
        }
        match api.delete(&o.name_any(), dp).await {
            Ok(_) => {}
            Err(e) if client::is_not_found(&e) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Upstream's five deletion conditions for this pass.
fn conditions(pass: &Pass) -> Vec<(&'static str, bool, &'static str, String)> {
    let (discovery, discovery_reason, discovery_msg) = match &pass.discovery_failure {
        Some(e) => (true, "DiscoveryFailed", e.clone()),
        None => (
            false,
            "ResourcesDiscovered",
            "All resources successfully discovered".to_owned(),
        ),
    };
    let content_failure = if pass.failures.is_empty() {
        (
            false,
            "ContentDeleted",
            "All content successfully deleted, may be waiting on finalization".to_owned(),
        )
    } else {
        (
            true,
            "ContentDeletionFailed",
            format!(
                "Failed to delete all resource types, {} remaining: {}",
                pass.failures.len(),
                pass.failures.join(", ")
            ),
        )
    };
    let remaining = if pass.remaining.is_empty() {
        (
            false,
            "ContentRemoved",
            "All content successfully removed".to_owned(),
        )
    } else {
        let each: Vec<String> = pass
            .remaining
            .iter()
            .map(|(r, n)| format!("{r} has {n} resource instances"))
            .collect();
        (
            true,
            "SomeResourcesRemain",
            format!("Some resources are remaining: {}", each.join(", ")),
        )
    };
    let finalizers = if pass.finalizers.is_empty() {
        (
            false,
            "ContentHasNoFinalizers",
            "All content-preserving finalizers finished".to_owned(),
        )
    } else {
        let each: Vec<String> = pass
            .finalizers
            .iter()
            .map(|(f, n)| format!("{f} in {n} resource instances"))
            .collect();
        (
            true,
            "SomeFinalizersRemain",
            format!(
                "Some content in the namespace has finalizers remaining: {}",
                each.join(", ")
            ),
        )
    };
    vec![
        (
            "NamespaceDeletionDiscoveryFailure",
            discovery,
            discovery_reason,
            discovery_msg,
        ),
        (
            "NamespaceDeletionGroupVersionParsingFailure",
            false,
            "ParsedGroupVersions",
            "All legacy kube types successfully parsed".to_owned(),
        ),
        (
            "NamespaceDeletionContentFailure",
            content_failure.0,
            content_failure.1,
            content_failure.2,
        ),
        (
            "NamespaceContentRemaining",
            remaining.0,
            remaining.1,
            remaining.2,
        ),
        (
            "NamespaceFinalizersRemaining",
            finalizers.0,
            finalizers.1,
            finalizers.2,
        ),
    ]
}

/// Writes the conditions when any changed (status, reason or message);
/// a condition keeps its `lastTransitionTime` while its status holds.
async fn write_conditions(ctx: &Ctx, ns: &Namespace, pass: &Pass) -> Result<()> {
    let current: Vec<Value> = ns
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .map(|c| serde_json::to_value(c).unwrap_or_default())
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default();
    let now = k8s_openapi::jiff::Timestamp::now()
        .round(k8s_openapi::jiff::Unit::Second)
        .map(|t| t.to_string())
        .unwrap_or_default();
    let mut changed = false;
    let mut out: Vec<Value> = Vec::new();
    let ours: BTreeSet<&str> = conditions(pass).iter().map(|c| c.0).collect();
    for (ty, status, reason, message) in conditions(pass) {
        let status = if status { "True" } else { "False" };
        let old = current.iter().find(|c| c["type"] == ty);
        let same = old.is_some_and(|c| {
            c["status"] == status && c["reason"] == reason && c["message"] == message.as_str()
        });
        changed |= !same;
        let since = old
            .filter(|c| c["status"] == status)
            .and_then(|c| c.get("lastTransitionTime").cloned())
            .unwrap_or_else(|| json!(now));
        out.push(json!({"type": ty, "status": status, "reason": reason,
            "message": message, "lastTransitionTime": since}));
    }
    out.extend(
        current
            .iter()
            .filter(|c| !ours.contains(c["type"].as_str().unwrap_or_default()))
            .cloned(),
    );
    if !changed {
        return Ok(());
    }
    let api: Api<Namespace> = Api::all(ctx.client.clone());
    match api
        .patch_status(
            &ns.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&json!({"status": {"conditions": out}})),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if client::is_not_found(&e) => Ok(()),
        Err(e) => Err(Error::api(format!(
            "updating the status of namespace {}",
            ns.name_any()
        ))(e)),
    }
}

/// Removes `kubernetes` from `spec.finalizers` through `/finalize` (read
/// fresh, so a concurrent change is not lost).
async fn finalize(ctx: &Ctx, ns: &Namespace) -> Result<()> {
    let api: Api<Namespace> = Api::all(ctx.client.clone());
    let name = ns.name_any();
    let what = || format!("finalizing namespace {name}");
    for _ in 0..5 {
        let Some(mut live) = api.get_opt(&name).await.map_err(Error::api(what()))? else {
            return Ok(());
        };
        let rest: Vec<String> = spec_finalizers(&live)
            .into_iter()
            .filter(|f| f != FINALIZER)
            .collect();
        live.spec.get_or_insert_with(Default::default).finalizers = Some(rest);
        match api
            .replace_subresource("finalize", &name, &PostParams::default(), &live)
            .await
        {
            Ok(_) => return Ok(()),
            Err(e) if client::is_not_found(&e) => return Ok(()),
            Err(e) if client::is_conflict(&e) => continue,
            Err(e) => return Err(Error::api(what())(e)),
        }
    }
    Err(Error::Waiting(format!("{}: kept conflicting", what())))
}
