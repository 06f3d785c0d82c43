//! Object metadata as the API server owns it: names, uids, timestamps,
//! generation, resourceVersion (the store revision, never stored in the
//! value itself).
use serde_json::{Map, Value, json};

use super::{
    clock, defaults,
    resources::Resource,
    status::{ApiError, ApiResult},
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

/// Appends to `out` the stored object `stored` (compact JSON, as
/// [`to_stored`] writes it) with `"resourceVersion"` spliced into its
/// top-level `metadata` — what [`from_stored`] then serializing gives,
/// without parsing. False (and nothing appended) if `metadata` is not found.
pub fn splice_revision(stored: &[u8], rev: Revision, out: &mut Vec<u8>) -> bool {
    const KEY: &[u8] = b"\"metadata\":{";
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for (i, &b) in stored.iter().enumerate() {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' if depth == 1
                && stored[i..].starts_with(KEY)
                && i > 0
                && matches!(stored[i - 1], b'{' | b',') =>
            {
                let open = i + KEY.len();
                out.extend_from_slice(&stored[..open]);
                out.extend_from_slice(b"\"resourceVersion\":\"");
                out.extend_from_slice(rev.to_string().as_bytes());
                out.push(b'"');
                if stored.get(open) != Some(&b'}') {
                    out.push(b',');
                }
                out.extend_from_slice(&stored[open..]);
                return true;
            }
            b'"' => in_string = true,
            b'{' | b'[' => depth += 1,
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

pub fn from_stored(bytes: &[u8], rev: Revision) -> ApiResult<Value> {
    let obj: Value = serde_json::from_slice(bytes)
        .map_err(|e| ApiError::internal(format!("stored object is not JSON: {e}")))?;
    Ok(with_revision(obj, rev))
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
    fn a_spliced_revision_reads_as_a_parsed_one() {
        for obj in [
            json!({"apiVersion": "v1", "kind": "ConfigMap", "data": {"\"metadata\":{": "x"}, "metadata": {"name": "a", "labels": {"k": "v"}}}),
            json!({"metadata": {}, "spec": {"metadata": {"name": "inner"}}}),
        ] {
            let mut out = Vec::new();
            assert!(splice_revision(&to_stored(&obj), 42, &mut out));
            let parsed: Value = serde_json::from_slice(&out).unwrap();
            assert_eq!(parsed, with_revision(obj, 42));
        }
        assert!(!splice_revision(br#"{"spec":{}}"#, 1, &mut Vec::new()));
    }

    #[test]
    fn create_fills_server_fields() {
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
