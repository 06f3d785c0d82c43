//! Object metadata as the API server owns it: names, uids, timestamps,
//! generation, resourceVersion (the store revision, never stored in the
//! value itself).
use serde_json::{Map, Value, json};

use super::{
    clock, defaults,
    resources::Resource,
    status::{ApiError, ApiResult, Cause},
};
use crate::store::Revision;

pub fn meta(obj: &Value) -> Option<&Map<String, Value>> {
    obj.get("metadata")?.as_object()
}

pub fn meta_mut(obj: &mut Value) -> &mut Map<String, Value> {
    if !obj.get("metadata").is_some_and(Value::is_object) {
        obj["metadata"] = json!({});
    }
    obj["metadata"]
        .as_object_mut()
        .expect("metadata is an object")
}

pub fn meta_str<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    meta(obj)?.get(field)?.as_str()
}

pub fn name_of(obj: &Value) -> Option<&str> {
    meta_str(obj, "name")
}

/// The revision a client sent as `metadata.resourceVersion`.
pub fn sent_revision(obj: &Value) -> ApiResult<Option<Revision>> {
    match meta_str(obj, "resourceVersion") {
        None | Some("") => Ok(None),
        Some(rv) => rv
            .parse()
            .map(Some)
            .map_err(|_| ApiError::bad_request(format!("invalid resourceVersion `{rv}`"))),
    }
}

/// The object as clients see it: with its resourceVersion.
pub fn with_revision(mut obj: Value, rev: Revision) -> Value {
    meta_mut(&mut obj).insert("resourceVersion".into(), json!(rev.to_string()));
    obj
}

/// Bytes to store: the object without resourceVersion (the store's
/// revision is the truth).
pub fn to_stored(obj: &Value) -> Vec<u8> {
    let mut obj = obj.clone();
    meta_mut(&mut obj).remove("resourceVersion");
    serde_json::to_vec(&obj).expect("a JSON value serializes")
}

pub fn from_stored(bytes: &[u8], rev: Revision) -> ApiResult<Value> {
    let obj: Value = serde_json::from_slice(bytes)
        .map_err(|e| ApiError::internal(format!("stored object is not JSON: {e}")))?;
    Ok(with_revision(obj, rev))
}

/// DNS-1123 label: lower-case alphanumerics and '-', at most 63, starting
/// and ending alphanumeric.
pub fn is_dns1123_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// DNS-1123 subdomain: dot-separated labels, at most 253.
pub fn is_dns1123_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns1123_label)
}

/// DNS-1035 label (Service names): a DNS-1123 label starting with a letter.
pub fn is_dns1035_label(s: &str) -> bool {
    is_dns1123_label(s) && s.starts_with(|c: char| c.is_ascii_lowercase())
}

/// Upstream's `path.IsValidPathSegmentName`, the rule for RBAC names
/// (`system:node-proxier`): anything that is a single path segment.
fn path_segment_problem(name: &str) -> Option<&'static str> {
    match name {
        "." => Some("may not be '.'"),
        ".." => Some("may not be '..'"),
        _ if name.contains('/') => Some("may not contain '/'"),
        _ if name.contains('%') => Some("may not contain '%'"),
        _ => None,
    }
}

fn name_problem(res: &Resource, name: &str) -> Option<String> {
    if res.group == "rbac.authorization.k8s.io" {
        return path_segment_problem(name).map(|rule| format!("Invalid value: \"{name}\": {rule}"));
    }
    let (ok, rule) = match res.kind {
        "Service" => (
            is_dns1035_label(name),
            "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character",
        ),
        "Namespace" => (
            is_dns1123_label(name),
            "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character",
        ),
        _ => (
            is_dns1123_subdomain(name),
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character",
        ),
    };
    (!ok).then(|| format!("Invalid value: \"{name}\": {rule}"))
}

/// Label keys and values, as `metadata.labels` must hold them.
fn label_problems(obj: &Value, causes: &mut Vec<Cause>) {
    let Some(labels) = meta(obj).and_then(|m| m.get("labels")) else {
        return;
    };
    let Some(labels) = labels.as_object() else {
        causes.push(Cause::invalid(
            "metadata.labels",
            "must be a map of strings",
        ));
        return;
    };
    for (k, v) in labels {
        let name = k.rsplit_once('/').map_or(k.as_str(), |(p, n)| {
            if !is_dns1123_subdomain(p) {
                causes.push(Cause::invalid(
                    format!("metadata.labels: Invalid value: \"{k}\""),
                    "prefix part must be a DNS-1123 subdomain",
                ));
            }
            n
        });
        let name_ok = !name.is_empty()
            && name.len() <= 63
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            && name.starts_with(|c: char| c.is_ascii_alphanumeric())
            && name.ends_with(|c: char| c.is_ascii_alphanumeric());
        if !name_ok {
            causes.push(Cause::invalid("metadata.labels", format!("Invalid value: \"{k}\": name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character")));
        }
        let value_ok = v.as_str().is_some_and(|v| {
            v.is_empty()
                || (v.len() <= 63
                    && v.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
                    && v.starts_with(|c: char| c.is_ascii_alphanumeric())
                    && v.ends_with(|c: char| c.is_ascii_alphanumeric()))
        });
        if !value_ok {
            causes.push(Cause::invalid("metadata.labels".to_string(), format!("Invalid value: {v}: a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character")));
        }
    }
}

/// Problems with name and labels, as causes of an `Invalid`.
pub fn metadata_causes(res: &Resource, obj: &Value) -> Vec<Cause> {
    let name = name_of(obj).unwrap_or_default().to_owned();
    let mut causes = Vec::new();
    if name.is_empty() {
        causes.push(Cause::required("metadata.name"));
    } else if let Some(p) = name_problem(res, &name) {
        causes.push(Cause::invalid("metadata.name", p));
    }
    label_problems(obj, &mut causes);
    causes
}

/// One `Invalid` with every cause, or nothing.
pub fn refuse_if_any(res: &Resource, obj: &Value, causes: Vec<Cause>) -> ApiResult<()> {
    if causes.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid(
            res.kind,
            name_of(obj).unwrap_or_default(),
            causes,
        ))
    }
}

/// `generateName` + 5 random characters, as upstream.
pub fn generate_name(prefix: &str) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let id = uuid::Uuid::new_v4();
    let suffix: String = id.as_bytes()[..5]
        .iter()
        .map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char)
        .collect();
    format!("{prefix}{suffix}")
}

/// Fills what the server owns on create: apiVersion/kind, name (from
/// `generateName`), namespace, uid, creationTimestamp, generation; clears
/// what a client may not set.
pub fn stamp_create(res: &Resource, ns: Option<&str>, obj: &mut Value) -> ApiResult<()> {
    if !obj.is_object() {
        return Err(ApiError::bad_request(
            "the request body must be a JSON object",
        ));
    }
    check_type(res, obj)?;
    obj["apiVersion"] = json!(res.api_version());
    obj["kind"] = json!(res.kind);
    let meta = meta_mut(obj);
    if meta
        .get("resourceVersion")
        .and_then(Value::as_str)
        .is_some_and(|v| !v.is_empty())
    {
        return Err(ApiError::bad_request(
            "resourceVersion should not be set on objects to be created",
        ));
    }
    match (
        res.namespaced,
        ns,
        meta.get("namespace").and_then(Value::as_str),
    ) {
        (true, Some(url), Some(body)) if url != body => {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        (true, Some(url), _) => {
            meta.insert("namespace".into(), json!(url));
        }
        (false, _, _) => {
            meta.remove("namespace");
        }
        (true, None, _) => {
            return Err(ApiError::bad_request(
                "a namespaced object must be created in a namespace",
            ));
        }
    }
    if meta
        .get("name")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
        && let Some(prefix) = meta.get("generateName").and_then(Value::as_str)
    {
        let name = generate_name(prefix);
        meta.insert("name".into(), json!(name));
    }
    meta.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
    meta.insert("creationTimestamp".into(), json!(clock::now()));
    if defaults::tracks_generation(res.kind) {
        meta.insert("generation".into(), json!(1));
    } else {
        meta.remove("generation");
    }
    for owned in [
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "managedFields",
        "selfLink",
    ] {
        meta.remove(owned);
    }
    Ok(())
}

/// Refuses a body of another kind than the URL's.
pub fn check_type(res: &Resource, obj: &Value) -> ApiResult<()> {
    let api_version = obj.get("apiVersion").and_then(Value::as_str);
    let kind = obj.get("kind").and_then(Value::as_str);
    if api_version.is_some_and(|v| v != res.api_version()) || kind.is_some_and(|k| k != res.kind) {
        return Err(ApiError::bad_request(format!(
            "the API version in the data ({}) does not match the expected API version ({}) or kind ({}) does not match {}",
            api_version.unwrap_or(""),
            res.api_version(),
            kind.unwrap_or(""),
            res.kind
        )));
    }
    Ok(())
}

/// Who writes an update: clients may not touch the deletion marks, the
/// server's own delete path sets them.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Writer {
    Client,
    Server,
}

/// Carries over what an update may not change, and bumps `generation` when
/// anything but metadata and status changed.
pub fn stamp_update(res: &Resource, old: &Value, new: &mut Value, writer: Writer) -> ApiResult<()> {
    if !new.is_object() {
        return Err(ApiError::bad_request(
            "the request body must be a JSON object",
        ));
    }
    check_type(res, new)?;
    new["apiVersion"] = json!(res.api_version());
    new["kind"] = json!(res.kind);
    let old_meta = meta(old).cloned().unwrap_or_default();
    let meta = meta_mut(new);
    let deletion_marks: &[&str] = match writer {
        Writer::Client => &["deletionTimestamp", "deletionGracePeriodSeconds"],
        Writer::Server => &[],
    };
    for &kept in ["uid", "creationTimestamp", "namespace", "generation"]
        .iter()
        .chain(deletion_marks)
    {
        match old_meta.get(kept) {
            Some(v) => meta.insert(kept.into(), v.clone()),
            None => meta.remove(kept),
        };
    }
    let spec_changed = strip(old, &["metadata", "status"]) != strip(new, &["metadata", "status"]);
    if spec_changed && defaults::tracks_generation(res.kind) {
        let g = old_meta
            .get("generation")
            .and_then(Value::as_i64)
            .unwrap_or(1);
        meta_mut(new).insert("generation".into(), json!(g + 1));
    }
    Ok(())
}

fn strip(obj: &Value, fields: &[&str]) -> Value {
    let mut o = obj.clone();
    if let Some(m) = o.as_object_mut() {
        for f in fields {
            m.remove(*f);
        }
        m.remove("apiVersion");
        m.remove("kind");
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_names() {
        assert!(
            is_dns1123_label("web-1")
                && !is_dns1123_label("Web")
                && !is_dns1123_label("-a")
                && !is_dns1123_label("")
        );
        assert!(is_dns1123_subdomain("a.b-c.d") && !is_dns1123_subdomain("a..b"));
        assert!(is_dns1035_label("web") && !is_dns1035_label("1web"));
    }

    #[test]
    fn rbac_names_are_path_segments() {
        let cr = Resource::find("rbac.authorization.k8s.io", "v1", "clusterroles").unwrap();
        let named = |n: &str| json!({"metadata": {"name": n}});
        for ok in ["system:node-proxier", "switchyard", "Mixed_Case"] {
            assert!(metadata_causes(cr, &named(ok)).is_empty(), "{ok}");
        }
        for bad in [".", "..", "a/b", "a%2Fb"] {
            let causes = metadata_causes(cr, &named(bad));
            assert_eq!(causes.len(), 1, "{bad}");
            assert_eq!(causes[0].field, "metadata.name");
        }
    }

    #[test]
    fn create_fills_server_fields_and_refuses_bad_names_with_causes() {
        let svc = Resource::find("", "v1", "services").unwrap();
        let mut o = json!({"metadata": {"name": "web", "labels": {"app": "web"}}, "spec": {}});
        stamp_create(svc, Some("default"), &mut o).unwrap();
        assert_eq!(o["kind"], "Service");
        assert_eq!(o["metadata"]["namespace"], "default");
        assert!(
            o["metadata"].get("generation").is_none(),
            "Services have none"
        );
        assert!(o["metadata"]["uid"].as_str().unwrap().len() == 36);
        let bad = json!({"metadata": {"name": "1Web", "labels": {"app": "no spaces"}}});
        let causes = metadata_causes(svc, &bad);
        let fields: Vec<_> = causes.iter().map(|c| c.field.as_str()).collect();
        assert_eq!(fields, ["metadata.name", "metadata.labels"]);
        let mut other_ns = json!({"metadata": {"name": "web", "namespace": "other"}});
        assert_eq!(
            stamp_create(svc, Some("default"), &mut other_ns)
                .unwrap_err()
                .code
                .as_u16(),
            400
        );
        let mut generated = json!({"metadata": {"generateName": "web-"}});
        stamp_create(svc, Some("default"), &mut generated).unwrap();
        assert!(
            name_of(&generated).unwrap().starts_with("web-")
                && name_of(&generated).unwrap().len() == 9
        );
    }

    #[test]
    fn update_keeps_identity_and_counts_spec_generations() {
        let dep = Resource::find("apps", "v1", "deployments").unwrap();
        let mut old = json!({"metadata": {"name": "web"}, "spec": {"replicas": 1}});
        stamp_create(dep, Some("default"), &mut old).unwrap();
        let mut labelled = json!({"metadata": {"name": "web", "uid": "forged", "labels": {"a": "b"}}, "spec": {"replicas": 1}});
        stamp_update(dep, &old, &mut labelled, Writer::Client).unwrap();
        assert_eq!(labelled["metadata"]["uid"], old["metadata"]["uid"]);
        assert_eq!(
            labelled["metadata"]["generation"], 1,
            "metadata-only change"
        );
        let mut scaled = json!({"metadata": {"name": "web"}, "spec": {"replicas": 3}});
        stamp_update(dep, &old, &mut scaled, Writer::Client).unwrap();
        assert_eq!(scaled["metadata"]["generation"], 2);
    }
}
