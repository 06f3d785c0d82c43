//! Garbage collection through `ownerReferences`, done by the API server
//! when an owner is deleted (upstream runs a garbage-collector controller;
//! doing it here keeps `propagationPolicy` honest until ours exists):
//!
//! - `Background` (the default): once the owner is gone, its dependents are
//!   deleted, each with its own dependents in turn;
//! - `Foreground`: the owner waits, with the `foregroundDeletion` finalizer,
//!   until its dependents are deleted, then goes;
//! - `Orphan`: the dependents lose their reference to the owner, then the
//!   owner goes (finalizer `orphan` meanwhile).
use serde_json::Value;

use super::{
    ApiServer, objects,
    path::Target,
    resources,
    status::ApiResult,
    write::{self, DeleteOptions},
};
use crate::store::Store;

pub(super) const FOREGROUND: &str = "foregroundDeletion";
pub(super) const ORPHAN: &str = "orphan";

/// Objects whose `ownerReferences` name the owner's uid. Namespaced owners
/// only own objects of their namespace; cluster-scoped ones anything.
async fn dependents<S: Store>(
    api: &ApiServer<S>,
    owner: &Value,
) -> ApiResult<Vec<(Target, Value)>> {
    let Some(uid) = objects::meta_str(owner, "uid") else {
        return Ok(Vec::new());
    };
    let owner_ns = objects::meta_str(owner, "namespace");
    let mut out = Vec::new();
    for res in resources::all().into_iter().filter(|r| !r.review) {
        let prefix = match (owner_ns, res.namespaced) {
            (Some(_), false) => continue,
            (Some(ns), true) => res.key_prefix(Some(ns)),
            (None, _) => res.key_prefix(None),
        };
        let page = api
            .store
            .list(&prefix, None, None)
            .await
            .map_err(|e| super::status::ApiError::from_store(e, &res.qualified(), ""))?;
        for kv in page.items {
            let obj = objects::from_stored(&kv.value, kv.mod_rev)?;
            let owned = obj
                .pointer("/metadata/ownerReferences")
                .and_then(Value::as_array)
                .is_some_and(|refs| refs.iter().any(|r| r["uid"] == uid));
            if owned {
                let t = Target {
                    res,
                    namespace: objects::meta_str(&obj, "namespace").map(str::to_owned),
                    name: objects::name_of(&obj).map(str::to_owned),
                    sub: None,
                };
                out.push((t, obj));
            }
        }
    }
    Ok(out)
}

/// Deletes the dependents of an owner that is gone (or going, in the foreground).
pub(super) async fn delete_dependents<S: Store>(
    api: &ApiServer<S>,
    owner: &Value,
) -> ApiResult<()> {
    for (t, _) in dependents(api, owner).await? {
        // Boxed: deleting a dependent cascades to its own dependents.
        match Box::pin(write::delete_object(api, &t, &DeleteOptions::background())).await {
            Ok(_) => {}
            Err(e) if e.reason == "NotFound" => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Strips the owner's reference from its dependents.
pub(super) async fn orphan_dependents<S: Store>(
    api: &ApiServer<S>,
    owner: &Value,
) -> ApiResult<()> {
    let uid = objects::meta_str(owner, "uid")
        .unwrap_or_default()
        .to_owned();
    for (t, _) in dependents(api, owner).await? {
        write::modify(api, &t, None, &write::Owner::Server, |cur| {
            let mut out = cur.clone();
            if let Some(refs) = out
                .pointer_mut("/metadata/ownerReferences")
                .and_then(Value::as_array_mut)
            {
                refs.retain(|r| r["uid"] != uid.as_str());
                if refs.is_empty() {
                    objects::meta_mut(&mut out).remove("ownerReferences");
                }
            }
            Ok(out)
        })
        .await?;
    }
    Ok(())
}
