//! create, update, patch, delete (with finalizers) and the scale and
//! binding subresources.
use axum::{http::StatusCode, response::Response};
use serde_json::{Value, json};

use super::{
    ApiServer, Request, authz, clock, decode, gc, graceful, kinds,
    objects::{self, Writer, from_stored, name_of, sent_revision, to_stored},
    patch::{self, PatchType},
    read::{self, Filter, get_object, object_name},
    resources::{Resource, Sub},
    services, ssa,
    status::{ApiError, ApiResult},
};
use crate::store::{self, Revision, Store};

/// Internal retries of an unconditional write that raced another writer.
const RETRIES: usize = 8;

fn dry_run(req: &Request) -> bool {
    req.query.get("dryRun") == Some("All")
}

/// Who makes a write, for `managedFields` (see [`super::ssa`]).
pub(super) enum Owner<'a> {
    /// A client's create, update or patch: an `Update` by this manager.
    Manager(&'a str),
    /// A server-side apply: the write's `managedFields` are already set.
    Applied,
    /// The server's own bookkeeping (finalizers, deletion marks, its own
    /// objects): ownership is left as it is, and the object is not held to
    /// the rules for clients' (the `kubernetes` endpoints may be a loopback
    /// address on a one-machine cluster).
    Server,
}

impl Owner<'_> {
    fn writer(&self) -> Writer {
        match self {
            Self::Server => Writer::Server,
            Self::Manager(_) | Self::Applied => Writer::Client,
        }
    }
}

/// How `manager`'s write to `res` (through `sub`, if any) is recorded.
fn field_writer<'a>(
    res: &Resource,
    manager: &'a str,
    sub: &'a str,
    time: &'a str,
    api_version: &'a str,
) -> ssa::Writer<'a> {
    ssa::Writer {
        manager,
        subresource: sub,
        api_version,
        time,
        has_status: res.has(Sub::Status),
    }
}

/// Records `owner`'s write of `new` (over `old`, for an update) in its
/// `managedFields`.
fn track(res: &Resource, sub: Option<Sub>, owner: &Owner, old: Option<&Value>, new: &mut Value) {
    let Some(ty) = ssa::Ty::of_resource(res) else {
        return;
    };
    let manager = match (owner, old) {
        (Owner::Manager(manager), _) => manager,
        (Owner::Server, Some(old)) => return ssa::record_server_write(&ty, old, new),
        _ => return,
    };
    let (time, api_version) = (clock::now(), res.api_version());
    let sub = sub.map_or("", Sub::name);
    ssa::record_update(
        &ty,
        old,
        new,
        &field_writer(res, manager, sub, &time, &api_version),
    );
}

/// The manager a request writes as (`fieldManager`, else its User-Agent).
pub(super) fn manager_of(req: &Request) -> String {
    let agent = req
        .headers
        .get(axum::http::header::USER_AGENT)
        .and_then(|v| v.to_str().ok());
    ssa::manager_name(req.query.get("fieldManager"), agent)
}

/// Creates an object of `res` in `ns`; the object is stamped, defaulted and
/// validated first, and nothing is written if any of that fails.
pub(super) async fn create_object<S: Store>(
    api: &ApiServer<S>,
    res: &'static Resource,
    ns: Option<&str>,
    obj: &mut Value,
    owner: &Owner<'_>,
) -> ApiResult<Value> {
    // An apply's ownership is computed before the server's fields are set.
    let applied = match owner {
        Owner::Applied => obj.pointer("/metadata/managedFields").cloned(),
        _ => None,
    };
    objects::stamp_create(res, ns, obj)?;
    kinds::prepare_create(res, obj);
    if let Some(mf) = applied {
        objects::meta_mut(obj).insert("managedFields".into(), mf);
    }
    track(res, None, owner, None, obj);
    if let (true, Some(ns)) = (res.namespaced, ns) {
        check_namespace_open(api, ns).await?;
    }
    // A Service's addresses and ports are allocated before it is validated
    // (upstream's BeginCreate), and stay locked until it is stored.
    let mut allocations = if res.kind == "Service" {
        let mut a = api.alloc.lock().await;
        a.ensure_loaded(&*api.store).await?;
        services::allocate(&api.settings, &a, obj, None)?;
        Some(a)
    } else {
        None
    };
    if !matches!(owner, Owner::Server) {
        kinds::validate(res, obj, None)?;
    }
    let name = name_of(obj).unwrap_or_default().to_owned();
    let kv = api
        .store
        .create(&res.key(ns, &name), to_stored(obj))
        .await
        .map_err(|e| ApiError::from_store(e, &res.qualified(), &name))?;
    if let Some(a) = allocations.as_deref_mut() {
        a.record(obj);
    }
    if res.kind == "CustomResourceDefinition" {
        super::crd::observe(obj);
    }
    Ok(objects::with_revision(obj.clone(), kv.mod_rev))
}

/// What follows an object's deletion: a Service's IP and node ports are
/// free again. (Its dependents are the garbage collector's: a controller,
/// as upstream's.)
async fn deleted<S: Store>(api: &ApiServer<S>, res: &Resource, obj: &Value) -> ApiResult<()> {
    if res.kind == "Service" {
        api.alloc.lock().await.release(obj);
    }
    if res.kind == "CustomResourceDefinition" {
        delete_custom_resources(api, obj).await?;
    }
    Ok(())
}

/// A deleted CRD takes its objects with it (upstream's
/// `customresourcecleanup` finalizer), then stops being served.
async fn delete_custom_resources<S: Store>(api: &ApiServer<S>, crd: &Value) -> ApiResult<()> {
    let s = |p: &str| crd.pointer(p).and_then(Value::as_str).unwrap_or_default();
    let prefix = format!("/{}/{}/", s("/spec/group"), s("/spec/names/plural"));
    let page = api
        .store
        .list(&prefix, None, None)
        .await
        .map_err(|e| ApiError::from_store(e, s("/metadata/name"), ""))?;
    for kv in page.items {
        match api.store.delete(&kv.key, None).await {
            Ok(_) | Err(store::Error::NotFound { .. }) => {}
            Err(e) => return Err(ApiError::from_store(e, s("/metadata/name"), "")),
        }
    }
    super::crd::forget(s("/metadata/name"));
    Ok(())
}

async fn check_namespace_open<S: Store>(api: &ApiServer<S>, ns: &str) -> ApiResult<()> {
    let nsres = Resource::namespaces();
    let Some(kv) = api
        .store
        .get(&nsres.key(None, ns))
        .await
        .map_err(|e| ApiError::from_store(e, "namespaces", ns))?
    else {
        return Err(ApiError::not_found("namespaces", ns));
    };
    let obj = from_stored(&kv.value, kv.mod_rev)?;
    if objects::meta_str(&obj, "deletionTimestamp").is_some() {
        return Err(ApiError::forbidden(format!(
            "unable to create new content in namespace {ns} because it is being terminated"
        )));
    }
    Ok(())
}

pub(super) async fn create<S: Store>(
    api: &ApiServer<S>,
    t: &super::path::Target,
    req: &Request,
) -> ApiResult<Response> {
    let directive = decode::options(req, decode::Options::Create)?;
    let mut obj = decode::object(req, t.res, directive)?;
    if let Some(g) = authz::escalation_guard(api, t, req.user.as_ref()).await? {
        g.check(t, &obj)?;
    }
    if dry_run(req) {
        objects::stamp_create(t.res, t.namespace.as_deref(), &mut obj)?;
        kinds::prepare_create(t.res, &mut obj);
        kinds::validate(t.res, &obj, None)?;
        return Ok(req.reply(StatusCode::CREATED, &obj));
    }
    let manager = manager_of(req);
    let created = create_object(
        api,
        t.res,
        t.namespace.as_deref(),
        &mut obj,
        &Owner::Manager(&manager),
    )
    .await?;
    Ok(req.reply(StatusCode::CREATED, &created))
}

/// Read-modify-write of one object: `change` turns the current object into
/// the new one. With `expected`, the write is conditional on that revision
/// (409 otherwise); without, a race with another writer is retried.
/// An object being deleted whose last finalizer goes is deleted.
pub(in crate::api) async fn modify<S, F>(
    api: &ApiServer<S>,
    t: &super::path::Target,
    expected: Option<Revision>,
    owner: &Owner<'_>,
    change: F,
) -> ApiResult<Value>
where
    S: Store,
    F: FnMut(&Value) -> ApiResult<Value>,
{
    modify_or_try(api, t, expected, owner, false, change).await
}

/// [`modify`], or with `dry_run` everything but the write: the answer is
/// the object as it would have been stored.
async fn modify_or_try<S, F>(
    api: &ApiServer<S>,
    t: &super::path::Target,
    expected: Option<Revision>,
    owner: &Owner<'_>,
    dry_run: bool,
    mut change: F,
) -> ApiResult<Value>
where
    S: Store,
    F: FnMut(&Value) -> ApiResult<Value>,
{
    let writer = owner.writer();
    let name = object_name(t).to_owned();
    let key = t.res.key(t.namespace.as_deref(), &name);
    let resource = t.res.qualified();
    for _ in 0..RETRIES {
        let (current, rev) = get_object(api, t).await?;
        if expected.is_some_and(|e| e != rev) {
            return Err(ApiError::conflict(&resource, &name));
        }
        let mut new = change(&current)?;
        kinds::normalize(t.res, &mut new);
        objects::stamp_update(t.res, &current, &mut new, writer)?;
        track(t.res, t.sub, owner, Some(&current), &mut new);
        // A Service's type change clears and releases what the old type
        // held, and allocates what the new one needs; the allocations stay
        // locked until the write is stored.
        let mut allocations = None;
        if t.res.kind == "Service" && writer == Writer::Client && t.sub.is_none() {
            services::drop_type_dependent_fields(&current, &mut new);
            let mut a = api.alloc.lock().await;
            a.ensure_loaded(&*api.store).await?;
            services::allocate(&api.settings, &a, &mut new, Some(&current))?;
            allocations = Some(a);
        }
        // The server's own writes (finalizers, deletion marks) are not the
        // client's object to judge.
        if writer == Writer::Client {
            kinds::validate(t.res, &new, Some(&current))?;
        }
        if dry_run {
            return Ok(objects::with_revision(new, rev));
        }
        if objects::meta_str(&new, "deletionTimestamp").is_some()
            && !held(t.res, &new)
            && graceful::grace_over(&new)
        {
            // `deleted` releases the Service's allocations itself.
            drop(allocations.take());
            let gone = api.store.delete(&key, Some(rev)).await;
            match gone {
                Ok(kv) => {
                    deleted(api, t.res, &new).await?;
                    return Ok(objects::with_revision(new, kv.mod_rev));
                }
                Err(store::Error::Conflict { .. }) if expected.is_none() => continue,
                Err(e) => return Err(ApiError::from_store(e, &resource, &name)),
            }
        }
        // An update that changes nothing is not written, and the object
        // keeps its resourceVersion (upstream's storage compares the bytes).
        let stored = to_stored(&new);
        if stored == to_stored(&current) {
            return Ok(current);
        }
        match api.store.update(&key, stored, Some(rev)).await {
            Ok(kv) => {
                if let Some(a) = allocations.as_deref_mut() {
                    a.release(&current);
                    a.record(&new);
                }
                if t.res.kind == "CustomResourceDefinition" {
                    super::crd::observe(&new);
                }
                return Ok(objects::with_revision(new, kv.mod_rev));
            }
            Err(store::Error::Conflict { .. }) if expected.is_none() => {}
            Err(e) => return Err(ApiError::from_store(e, &resource, &name)),
        }
    }
    Err(ApiError::conflict(&resource, &name))
}

/// Whether finalizers hold an object being deleted: its own, and for a
/// Namespace also `spec.finalizers` (upstream's
/// `ShouldDeleteNamespaceDuringUpdate`).
fn held(res: &Resource, obj: &Value) -> bool {
    !finalizers(obj).is_empty()
        || (res.kind == "Namespace"
            && obj
                .pointer("/spec/finalizers")
                .and_then(Value::as_array)
                .is_some_and(|f| !f.is_empty()))
}

fn finalizers(obj: &Value) -> Vec<String> {
    obj.pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .map(|f| {
            f.iter()
                .filter_map(|v| Some(v.as_str()?.to_owned()))
                .collect()
        })
        .unwrap_or_default()
}

/// What a write to the main resource or to `/status` may change: the main
/// resource keeps the old status, `/status` keeps everything but status.
fn split_status(t: &super::path::Target, current: &Value, mut new: Value) -> Value {
    // A Namespace's `spec.finalizers` change only through `/finalize`, and
    // only they do (upstream's namespace and finalize strategies).
    if t.res.kind == "Namespace" {
        let theirs = new.pointer("/spec/finalizers").cloned();
        if t.sub == Some(Sub::Finalize) {
            let mut out = current.clone();
            match theirs {
                Some(f) => out["spec"]["finalizers"] = f,
                None => {
                    out.get_mut("spec")
                        .and_then(Value::as_object_mut)
                        .map(|s| s.remove("finalizers"));
                }
            }
            return out;
        }
        match current.pointer("/spec/finalizers") {
            Some(f) => new["spec"]["finalizers"] = f.clone(),
            None => {
                new.get_mut("spec")
                    .and_then(Value::as_object_mut)
                    .map(|s| s.remove("finalizers"));
            }
        }
    }
    if !t.res.has(Sub::Status) {
        return new;
    }
    if t.sub == Some(Sub::Status) {
        let mut out = current.clone();
        match new.get_mut("status").map(Value::take) {
            Some(s) => out["status"] = s,
            None => {
                out.as_object_mut().map(|o| o.remove("status"));
            }
        }
        return out;
    }
    match current.get("status") {
        Some(s) => new["status"] = s.clone(),
        None => {
            new.as_object_mut().map(|o| o.remove("status"));
        }
    }
    new
}

pub(super) async fn update<S: Store>(
    api: &ApiServer<S>,
    t: &super::path::Target,
    req: &Request,
) -> ApiResult<Response> {
    let directive = decode::options(req, decode::Options::Update)?;
    let body = decode::object(req, t.res, directive)?;
    let name = object_name(t);
    if name_of(&body).is_some_and(|n| n != name) {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({}) does not match the name on the URL ({name})",
            name_of(&body).unwrap_or_default()
        )));
    }
    let expected = sent_revision(&body)?;
    let manager = manager_of(req);
    let owner = Owner::Manager(&manager);
    let guard = authz::escalation_guard(api, t, req.user.as_ref()).await?;
    let updated = modify_or_try(api, t, expected, &owner, dry_run(req), |current| {
        let new = split_status(t, current, body.clone());
        guard.as_ref().map_or(Ok(()), |g| g.check(t, &new))?;
        Ok(new)
    })
    .await?;
    Ok(req.reply(StatusCode::OK, &updated))
}

pub(super) async fn patch<S: Store>(
    api: &ApiServer<S>,
    t: &super::path::Target,
    req: &Request,
) -> ApiResult<Response> {
    let ty = PatchType::from_content_type(req.content_type())?;
    let apply = matches!(ty, PatchType::Apply);
    let directive = decode::options(req, decode::Options::Patch { apply })?;
    let body = req.patch_body()?;
    if apply {
        return server_side_apply(api, t, req, &body).await;
    }
    let expected = body
        .is_object()
        .then(|| sent_revision(&body))
        .transpose()?
        .flatten();
    let kind = t.res.kind;
    let duplicates = decode::patch_duplicates(&req.body);
    let strategic = matches!(ty, PatchType::Strategic);
    let guard = authz::escalation_guard(api, t, req.user.as_ref()).await?;
    let manager = manager_of(req);
    let owner = Owner::Manager(&manager);
    let updated = modify_or_try(api, t, expected, &owner, dry_run(req), |current| {
        let mut patched = patch::apply(kind, current, &body, &ty)?;
        // The patched object's resourceVersion is a precondition (a JSON
        // patch may set it: kubectl's managed-fields migration does).
        let sent = sent_revision(&patched)?;
        if sent.is_some()
            && sent != objects::meta_str(current, "resourceVersion").and_then(|v| v.parse().ok())
        {
            return Err(ApiError::conflict(&t.res.qualified(), object_name(t)));
        }
        objects::meta_mut(&mut patched).remove("resourceVersion");
        // Upstream shows a strategic patch itself, other patches' result.
        decode::patched(
            req,
            t.res,
            directive,
            &mut patched,
            duplicates.clone(),
            |obj| {
                if strategic {
                    decode::go_print(&body)
                } else {
                    obj.to_string()
                }
            },
        )?;
        let new = split_status(t, current, patched);
        guard.as_ref().map_or(Ok(()), |g| g.check(t, &new))?;
        Ok(new)
    })
    .await?;
    Ok(req.reply(StatusCode::OK, &updated))
}

/// Server-side apply (`application/apply-patch+yaml`): the configuration
/// merged into the object (created if absent) with field ownership, see
/// [`ssa`]; a change to another manager's field is a 409 unless `force`.
async fn server_side_apply<S: Store>(
    api: &ApiServer<S>,
    t: &super::path::Target,
    req: &Request,
    config: &Value,
) -> ApiResult<Response> {
    // Upstream's version check: the configuration names this kind.
    let (api_version, kind) = (
        config
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or_default(),
        config
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or_default(),
    );
    if api_version != t.res.api_version() || kind != t.res.kind {
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        return Err(ApiError::bad_request(format!(
            "invalid object type: {group}/{version}, Kind={kind}"
        )));
    }
    if name_of(config).is_some_and(|n| n != object_name(t)) {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({}) does not match the name on the URL ({})",
            name_of(config).unwrap_or_default(),
            object_name(t)
        )));
    }
    refuse_undeclared_fields(t, config)?;
    let ty = ssa::Ty::of_resource(t.res)
        .ok_or_else(|| ApiError::internal(format!("no schema for {}", t.res.kind)))?;
    let force = req.query.flag("force");
    let manager = manager_of(req);
    let (time, api_version) = (clock::now(), t.res.api_version());
    let sub = t.sub.map_or("", Sub::name);
    let w = field_writer(t.res, &manager, sub, &time, &api_version);
    let guard = authz::escalation_guard(api, t, req.user.as_ref()).await?;
    let check = |obj: &Value| guard.as_ref().map_or(Ok(()), |g| g.check(t, obj));
    match get_object(api, t).await {
        Err(e) if e.reason == "NotFound" => {
            let mut obj = ssa::apply(&ty, &json!({}), config, &w, force)?;
            check(&obj)?;
            let created = if dry_run(req) {
                objects::stamp_create(t.res, t.namespace.as_deref(), &mut obj)?;
                kinds::prepare_create(t.res, &mut obj);
                kinds::validate(t.res, &obj, None)?;
                obj
            } else {
                create_object(
                    api,
                    t.res,
                    t.namespace.as_deref(),
                    &mut obj,
                    &Owner::Applied,
                )
                .await?
            };
            Ok(req.reply(StatusCode::CREATED, &created))
        }
        Err(e) => Err(e),
        Ok(_) => {
            let updated = modify_or_try(api, t, None, &Owner::Applied, dry_run(req), |current| {
                let mut live = current.clone();
                objects::meta_mut(&mut live).remove("resourceVersion");
                let merged = ssa::apply(&ty, &live, config, &w, force)?;
                let new = split_status(t, current, merged);
                check(&new)?;
                Ok(new)
            })
            .await?;
            Ok(req.reply(StatusCode::OK, &updated))
        }
    }
}

/// Server-side apply refuses fields the kind does not have, whatever
/// `fieldValidation` says: structured-merge-diff cannot type the patch.
/// Upstream answers 500 for this (kubernetes#139253, fixed to 400); the
/// message is upstream's.
fn refuse_undeclared_fields(t: &super::path::Target, body: &Value) -> ApiResult<()> {
    let mut probe = body.clone();
    let Some(found) = decode::check_schema(t.res, &mut probe) else {
        return Ok(());
    };
    let errors: Vec<String> = found
        .unknown
        .iter()
        .map(|p| format!(".{p}: field not declared in schema"))
        .chain(found.type_error.map(|e| format!(".{}: {e}", e.field)))
        .collect();
    if errors.is_empty() {
        return Ok(());
    }
    let detail = match errors.as_slice() {
        [one] => one.clone(),
        many => format!("errors:\n  {}", many.join("\n  ")),
    };
    let (group, version) = t
        .res
        .api_version()
        .rsplit_once('/')
        .map_or((String::new(), t.res.version.to_owned()), |(g, v)| {
            (g.to_owned(), v.to_owned())
        });
    Err(ApiError::bad_request(format!(
        "failed to create typed patch object ({}/{}; {group}/{version}, Kind={}): {detail}",
        objects::meta_str(body, "namespace").unwrap_or_default(),
        objects::name_of(body).unwrap_or_default(),
        t.res.kind
    )))
}

fn with_replicas(obj: &Value, scale: &Value) -> ApiResult<Value> {
    let replicas = scale
        .pointer("/spec/replicas")
        .and_then(Value::as_i64)
        .ok_or_else(|| ApiError::bad_request("spec.replicas is required"))?;
    let mut out = obj.clone();
    out["spec"]["replicas"] = json!(replicas);
    Ok(out)
}

pub(super) async fn put_scale<S: Store>(
    api: &ApiServer<S>,
    t: &super::path::Target,
    req: &Request,
) -> ApiResult<Response> {
    let scale = req.object_body()?;
    let expected = sent_revision(&scale)?;
    let manager = manager_of(req);
    let updated = modify(api, t, expected, &Owner::Manager(&manager), |current| {
        with_replicas(current, &scale)
    })
    .await?;
    Ok(req.reply(StatusCode::OK, &read::scale_of(&updated)))
}

pub(super) async fn patch_scale<S: Store>(
    api: &ApiServer<S>,
    t: &super::path::Target,
    req: &Request,
) -> ApiResult<Response> {
    let ty = PatchType::from_content_type(req.content_type())?;
    let body = req.patch_body()?;
    let manager = manager_of(req);
    let updated = modify(api, t, None, &Owner::Manager(&manager), |current| {
        let scale = patch::apply("Scale", &read::scale_of(current), &body, &ty)?;
        with_replicas(current, &scale)
    })
    .await?;
    Ok(req.reply(StatusCode::OK, &read::scale_of(&updated)))
}

pub(super) async fn bind<S: Store>(
    api: &ApiServer<S>,
    t: &super::path::Target,
    req: &Request,
) -> ApiResult<Response> {
    let binding = req.object_body()?;
    let node = binding
        .pointer("/target/name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| ApiError::bad_request("a binding needs target.name"))?
        .to_owned();
    let pod = object_name(t).to_owned();
    // Upstream sets the node through the binding alone, not as a pod update:
    // no field manager records it.
    modify(api, t, None, &Owner::Server, |current| {
        if let Some(bound) = current
            .pointer("/spec/nodeName")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
        {
            return Err(ApiError::conflict_message(format!(
                "pod {pod} is already assigned to node \"{bound}\""
            )));
        }
        let mut out = current.clone();
        out["spec"]["nodeName"] = json!(node);
        Ok(out)
    })
    .await?;
    Ok(req.reply(StatusCode::CREATED,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
    ))
}

/// `DeleteOptions` as far as they are honoured.
pub(super) struct DeleteOptions {
    propagation: Option<String>,
    grace_seconds: Option<i64>,
    uid: Option<String>,
    rv: Option<Revision>,
}

impl DeleteOptions {
    fn from_request(req: &Request) -> ApiResult<Self> {
        let body: Value = if req.body.is_empty() {
            json!({})
        } else {
            req.object_body()?
        };
        let grace = body.get("gracePeriodSeconds").and_then(Value::as_i64);
        let grace = match grace {
            Some(g) => Some(g),
            None => req.query.number("gracePeriodSeconds")?.map(|g| g as i64),
        };
        let rv = match body
            .pointer("/preconditions/resourceVersion")
            .and_then(Value::as_str)
        {
            Some(rv) => Some(rv.parse().map_err(|_| {
                ApiError::bad_request(format!("invalid precondition resourceVersion `{rv}`"))
            })?),
            None => None,
        };
        // The deprecated `orphanDependents` stands for a policy when none
        // is given (both given is upstream's 422).
        let orphan = body
            .get("orphanDependents")
            .and_then(Value::as_bool)
            .or(req.query.get("orphanDependents").map(|v| v == "true"));
        let policy = body
            .get("propagationPolicy")
            .and_then(Value::as_str)
            .or(req.query.get("propagationPolicy"))
            .map(str::to_owned);
        let invalid = |message: String| {
            ApiError::invalid_in(
                "meta.k8s.io",
                "DeleteOptions",
                "",
                vec![super::status::Cause::invalid("propagationPolicy", message)],
            )
        };
        if let Some(p) = policy.as_deref()
            && !matches!(p, "Orphan" | "Background" | "Foreground")
        {
            return Err(invalid(format!(
                "Unsupported value: \"{p}\": supported values: \"Foreground\", \"Background\", \"Orphan\""
            )));
        }
        if let (Some(p), Some(_)) = (policy.as_deref(), orphan) {
            return Err(invalid(format!(
                "Invalid value: \"{p}\": orphanDependents and deletionPropagation cannot be both set"
            )));
        }
        let policy = policy.or(orphan.map(|o| if o { "Orphan" } else { "Background" }.to_owned()));
        Ok(Self {
            propagation: policy,
            grace_seconds: grace,
            uid: body
                .pointer("/preconditions/uid")
                .and_then(Value::as_str)
                .map(str::to_owned),
            rv,
        })
    }
}

/// Deletes one object. Returns the object as last seen: still present with
/// a deletionTimestamp when finalizers (or a graceful pod) hold it.
pub(super) async fn delete_object<S: Store>(
    api: &ApiServer<S>,
    t: &super::path::Target,
    opts: &DeleteOptions,
) -> ApiResult<Value> {
    let name = object_name(t).to_owned();
    let resource = t.res.qualified();
    let (current, rev) = get_object(api, t).await?;
    if opts
        .uid
        .as_deref()
        .is_some_and(|u| Some(u) != objects::meta_str(&current, "uid"))
        || opts.rv.is_some_and(|r| r != rev)
    {
        return Err(ApiError::conflict_message(format!(
            "Operation cannot be fulfilled on {resource} \"{name}\": the precondition (uid or resourceVersion) does not match"
        )));
    }
    if t.res.kind == "Namespace" && name == "default" {
        return Err(ApiError::forbidden(
            "namespaces \"default\" is forbidden: this namespace may not be deleted",
        ));
    }
    // A pod bound to a node terminates gracefully (see `graceful`); a
    // pending grace period is only shortened, never lengthened.
    let pod_plan = (t.res.kind == "Pod")
        .then(|| graceful::plan(&current, opts.grace_seconds, std::time::SystemTime::now()));
    if pod_plan == Some(graceful::PodDelete::Pending) {
        return Ok(current);
    }
    let mut held = finalizers(&current);
    // The policy is recorded as a finalizer the garbage collector acts on
    // (upstream's `deletionFinalizersForGarbageCollection`); without one,
    // the resource's default: Orphan for a core/v1 ReplicationController
    // (kept for backwards compatibility, as upstream), else Background.
    let policy = opts.propagation.as_deref().or(match t.res.kind {
        "ReplicationController" => Some("Orphan"),
        _ => None,
    });
    let cascade = match policy {
        Some("Foreground") => Some(gc::FOREGROUND),
        Some("Orphan") => Some(gc::ORPHAN),
        _ => None,
    };
    // Background removes the GC finalizers an earlier delete asked for.
    if policy == Some("Background") {
        held.retain(|f| f != gc::FOREGROUND && f != gc::ORPHAN);
    } else if let Some(c) = cascade {
        held.retain(|f| f != gc::FOREGROUND && f != gc::ORPHAN || f == c);
    }
    if let Some(c) = cascade
        && !held.iter().any(|f| f == c)
    {
        held.push(c.to_owned());
    }
    let graceful_pod = matches!(pod_plan, Some(graceful::PodDelete::Mark { .. }));
    if held.is_empty() && !graceful_pod && !self::held(t.res, &current) {
        let kv = api
            .store
            .delete(&t.res.key(t.namespace.as_deref(), &name), Some(rev))
            .await;
        return match kv {
            Ok(kv) => {
                deleted(api, t.res, &current).await?;
                from_stored(&kv.value, kv.mod_rev)
            }
            Err(e) => Err(ApiError::from_store(e, &resource, &name)),
        };
    }
    let marked = modify(api, t, None, &Owner::Server, |cur| {
        let mut out = cur.clone();
        let meta = objects::meta_mut(&mut out);
        match &pod_plan {
            Some(graceful::PodDelete::Mark { timestamp, grace }) => {
                meta.insert("deletionTimestamp".into(), json!(timestamp));
                meta.insert("deletionGracePeriodSeconds".into(), json!(grace));
            }
            _ => {
                meta.entry("deletionTimestamp")
                    .or_insert_with(|| json!(clock::now()));
                // Finalizers hold it; its grace period is over (upstream's
                // `markAsDeleting`), so it goes with the last one.
                if pod_plan.is_some() {
                    meta.insert("deletionGracePeriodSeconds".into(), json!(0));
                }
            }
        }
        if !held.is_empty() {
            // Others' finalizers as they are now; the GC's as chosen above.
            let mut f: Vec<String> = finalizers(cur)
                .into_iter()
                .filter(|x| x != gc::FOREGROUND && x != gc::ORPHAN)
                .collect();
            f.extend(
                held.iter()
                    .filter(|h| !f.contains(h))
                    .cloned()
                    .collect::<Vec<_>>(),
            );
            meta.insert("finalizers".into(), json!(f));
        }
        if t.res.kind == "Namespace" {
            out["status"]["phase"] = json!("Terminating");
        }
        Ok(out)
    })
    .await?;
    Ok(marked)
}

pub(super) async fn delete<S: Store>(
    api: &ApiServer<S>,
    t: &super::path::Target,
    req: &Request,
) -> ApiResult<Response> {
    let opts = DeleteOptions::from_request(req)?;
    if dry_run(req) {
        // What would be deleted, left in place.
        let (obj, _) = get_object(api, t).await?;
        return Ok(req.reply(StatusCode::OK, &obj));
    }
    let obj = delete_object(api, t, &opts).await?;
    Ok(req.reply(StatusCode::OK, &obj))
}

pub(super) async fn delete_collection<S: Store>(
    api: &ApiServer<S>,
    t: &super::path::Target,
    req: &Request,
) -> ApiResult<Response> {
    let opts = DeleteOptions::from_request(req)?;
    let filter = Filter::from_request(t, req)?;
    let everything = super::list_options::Plan::everything();
    let (items, rv, _) = read::list_objects(api, t, &filter, &everything).await?;
    let mut deleted = Vec::new();
    for obj in items {
        let target = super::path::Target {
            res: t.res,
            namespace: objects::meta_str(&obj, "namespace").map(str::to_owned),
            name: name_of(&obj).map(str::to_owned),
            sub: None,
        };
        match delete_object(api, &target, &opts).await {
            Ok(o) => deleted.push(o),
            Err(e) if e.reason == "NotFound" => {}
            Err(e) => return Err(e),
        }
    }
    Ok(req.reply(StatusCode::OK,
        &json!({"kind": format!("{}List", t.res.kind), "apiVersion": t.res.api_version(), "metadata": {"resourceVersion": rv.to_string()}, "items": deleted}),
    ))
}
