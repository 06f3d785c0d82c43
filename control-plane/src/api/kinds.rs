//! What individual kinds add to the generic object handling: preparing
//! new objects (upstream's create strategies) and validation. (A
//! terminating namespace is emptied by the namespace controller.)
use serde_json::{Value, json};

use super::{
    objects,
    resources::Resource,
    status::{ApiError, ApiResult},
};

/// Prepares a new object of `res` as upstream's create strategies do:
/// defaults, a Namespace's finalizer and phase, a Pod's phase, a Job's
/// generated selector.
pub(super) fn prepare_create(res: &Resource, obj: &mut Value) {
    normalize(res, obj);
    match res.kind {
        "Namespace" => {
            obj["spec"]["finalizers"] = json!(["kubernetes"]);
            obj["status"] = json!({"phase": "Active"});
        }
        "Pod" if obj.pointer("/status/phase").is_none() => {
            obj["status"] = json!({"phase": "Pending"});
        }
        "Job" => generate_job_selector(obj),
        _ => {}
    }
}

/// What every write of `res` goes through before validation: the built-in
/// kinds' defaults, a custom resource's schema defaults, a CRD's names and
/// status.
pub(super) fn normalize(res: &Resource, obj: &mut Value) {
    if res.custom {
        if let Some(schema) = super::crd::schema_of(res) {
            super::crd::schema::default(&schema, obj);
        }
        // Its metadata is still a Go ObjectMeta (no `annotations: {}`).
        if let Some(meta) = obj.get_mut("metadata") {
            super::proto::omit::drop_unset("k8s.io.apimachinery.pkg.apis.meta.v1.ObjectMeta", meta);
        }
        return;
    }
    super::defaults::apply(res.kind, obj);
    if res.kind == "CustomResourceDefinition" {
        super::crd::prepare(obj);
    }
}

/// Upstream's Job strategy: unless `manualSelector`, pods are selected by
/// the Job's uid, and the template carries the name and uid labels.
fn generate_job_selector(job: &mut Value) {
    if job.pointer("/spec/manualSelector") == Some(&json!(true)) {
        return;
    }
    let name = objects::name_of(job).unwrap_or_default().to_owned();
    let uid = objects::meta_str(job, "uid").unwrap_or_default().to_owned();
    let labels = &mut job["spec"]["template"]["metadata"]["labels"];
    if !labels.is_object() {
        *labels = json!({});
    }
    let labels = labels.as_object_mut().expect("an object");
    for (key, value) in [
        ("batch.kubernetes.io/controller-uid", &uid),
        ("batch.kubernetes.io/job-name", &name),
        ("controller-uid", &uid),
        ("job-name", &name),
    ] {
        labels.entry(key).or_insert_with(|| json!(value));
    }
    let selector = &mut job["spec"]["selector"]["matchLabels"];
    if !selector.is_object() {
        *selector = json!({});
    }
    selector
        .as_object_mut()
        .expect("an object")
        .entry("batch.kubernetes.io/controller-uid")
        .or_insert_with(|| json!(uid));
}

/// A 422 `Invalid` for `obj` of `res` if upstream's validation finds
/// anything wrong with it (as created, or as an update of `old`).
pub(super) fn validate(res: &Resource, obj: &Value, old: Option<&Value>) -> ApiResult<()> {
    let causes = if res.custom {
        // Object metadata as any kind's, the rest by the version's schema.
        let mut e = super::validation::Errors::default();
        super::validation::metadata(&mut e, res.kind, res.group, obj, old);
        let mut causes = e.0;
        if let Some(schema) = super::crd::schema_of(res) {
            causes.extend(super::crd::schema::validate(&schema, obj));
        }
        causes
    } else {
        let mut causes = match old {
            None => super::validation::create(res.kind, res.group, obj),
            Some(old) => super::validation::update(res.kind, res.group, old, obj),
        };
        if res.kind == "CustomResourceDefinition" {
            causes.extend(super::crd::validate(obj, old));
        }
        causes
    };
    if causes.is_empty() {
        return Ok(());
    }
    Err(ApiError::invalid_in(
        res.group,
        res.kind,
        objects::name_of(obj).unwrap_or_default(),
        causes,
    ))
}
