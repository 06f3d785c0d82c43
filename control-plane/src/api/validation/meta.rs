//! `ObjectMeta`: apimachinery's `ValidateObjectMeta` and
//! `ValidateObjectMetaUpdate`, with each kind's name rule.
use serde_json::Value;

use super::{
    Errors, child, dns1035_label, dns1123_label, dns1123_subdomain, labels, list, qualified_name,
    text,
};

/// Upstream's limit on all of an object's annotation keys and values.
const ANNOTATIONS_MAX_BYTES: usize = 256 * 1024;

/// `path.IsValidPathSegmentName`, the rule for RBAC names (`system:node-proxier`).
fn path_segment(name: &str) -> Vec<String> {
    let mut out = Vec::new();
    match name {
        "." | ".." => out.push(format!("may not be '{name}'")),
        _ => {
            for bad in ["/", "%"] {
                if name.contains(bad) {
                    out.push(format!("may not contain '{bad}'"));
                }
            }
        }
    }
    out
}

/// What is wrong with `name` for an object of `kind` in `group`.
pub fn name_problems(kind: &str, group: &str, name: &str) -> Vec<String> {
    if group == "rbac.authorization.k8s.io" {
        return path_segment(name);
    }
    match kind {
        "Service" => dns1035_label(name),
        "Namespace" => dns1123_label(name),
        "CronJob" => {
            let mut out = dns1123_subdomain(name);
            // Its Jobs get an 11-character suffix and must stay a DNS label.
            if name.len() > 52 {
                out.push("must be no more than 52 characters".into());
            }
            out
        }
        _ => dns1123_subdomain(name),
    }
}

/// `metadata` of a new object, or of an update of `old`.
pub fn metadata(e: &mut Errors, kind: &str, group: &str, obj: &Value, old: Option<&Value>) {
    let meta = obj.get("metadata").cloned().unwrap_or_default();
    let at = |f: &str| child("metadata", f);
    let name = text(&meta, "name");
    if name.is_empty() {
        e.required(at("name"), "name or generateName is required");
    } else {
        e.each(&at("name"), name, name_problems(kind, group, name));
    }
    labels(e, &at("labels"), meta.get("labels"));
    annotations(e, &at("annotations"), meta.get("annotations"));
    owner_references(e, &at("ownerReferences"), &meta);
    for f in list(&meta, "finalizers") {
        let f = f.as_str().unwrap_or_default();
        e.each(&at("finalizers"), f, qualified_name(f));
    }
    let has = |f: &str| list(&meta, "finalizers").iter().any(|x| x == f);
    if has("orphan") && has("foregroundDeletion") {
        e.invalid(
            at("finalizers"),
            meta.get("finalizers").unwrap_or(&Value::Null),
            "finalizer orphan and foregroundDeletion cannot be both set",
        );
    }
    let Some(old) = old else {
        return;
    };
    let old_meta = old.get("metadata").cloned().unwrap_or_default();
    if old_meta
        .get("deletionTimestamp")
        .is_some_and(|d| !d.is_null())
    {
        let before: Vec<&Value> = list(&old_meta, "finalizers").iter().collect();
        let mut added: Vec<&str> = list(&meta, "finalizers")
            .iter()
            .filter(|f| !before.contains(f))
            .filter_map(Value::as_str)
            .collect();
        added.sort_unstable();
        added.dedup();
        if !added.is_empty() {
            e.forbidden(
                at("finalizers"),
                &format!(
                    "no new finalizers can be added if the object is being deleted, found new finalizers []string{{{}}}",
                    added.iter().map(|f| super::quote(f)).collect::<Vec<_>>().join(", ")
                ),
            );
        }
    }
    if let (Some(new), Some(prev)) = (
        meta.get("generation").and_then(Value::as_i64),
        old_meta.get("generation").and_then(Value::as_i64),
    ) && new < prev
    {
        e.invalid(
            at("generation"),
            &Value::from(new),
            "must not be decremented",
        );
    }
    for f in ["name", "namespace", "uid", "creationTimestamp"] {
        if meta.get(f) != old_meta.get(f) {
            e.immutable(at(f), meta.get(f).unwrap_or(&Value::Null));
        }
    }
}

fn annotations(e: &mut Errors, field: &str, annotations: Option<&Value>) {
    let Some(map) = annotations.and_then(Value::as_object) else {
        return;
    };
    let mut total = 0;
    for (k, v) in map {
        e.each(field, k, qualified_name(&k.to_lowercase()));
        total += k.len() + v.as_str().map_or(0, str::len);
    }
    if total > ANNOTATIONS_MAX_BYTES {
        e.too_long(field, ANNOTATIONS_MAX_BYTES);
    }
}

fn owner_references(e: &mut Errors, field: &str, meta: &Value) {
    let mut controller: Option<String> = None;
    for r in list(meta, "ownerReferences") {
        let api_version = text(r, "apiVersion");
        let version = api_version.rsplit('/').next().unwrap_or_default();
        if version.is_empty() {
            e.invalid_str(
                child(field, "apiVersion"),
                api_version,
                "version must not be empty",
            );
        }
        for (f, what) in [("kind", "kind"), ("name", "name"), ("uid", "uid")] {
            if text(r, f).is_empty() {
                e.invalid_str(child(field, f), "", &format!("{what} must not be empty"));
            }
        }
        if api_version == "v1" && text(r, "kind") == "Event" {
            e.invalid(
                field,
                r,
                "/v1, Kind=Event is disallowed from being an owner",
            );
        }
        if r.get("controller") == Some(&Value::Bool(true)) {
            let this = format!("{}/{}", text(r, "kind"), text(r, "name"));
            match &controller {
                Some(first) => e.invalid(
                    field,
                    meta.get("ownerReferences").unwrap_or(&Value::Null),
                    &format!(
                        "Only one reference can have Controller set to true. Found \"true\" in references for {first} and {this}"
                    ),
                ),
                None => controller = Some(this),
            }
        }
    }
}
