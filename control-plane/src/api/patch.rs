//! PATCH bodies: JSON patch (RFC 6902), JSON merge patch (RFC 7386) and
//! strategic merge patch, the one `kubectl apply` sends for built-in kinds.
//!
//! Strategic merge patch is a merge patch in which lists of objects with a
//! merge key are merged element by element (by that key) instead of being
//! replaced, with directives: `$patch: delete|replace|merge`,
//! `$setElementOrder/<field>`, `$retainKeys`, `$deleteFromPrimitiveList/<field>`.
//! Merge keys come from the upstream Go types' `patchMergeKey` tags.
use serde_json::{Map, Value};

use super::status::{ApiError, ApiResult};

pub enum PatchType {
    Json,
    Merge,
    Strategic,
    /// Server-side apply, taken as create-or-merge (no field ownership yet).
    Apply,
}

impl PatchType {
    pub fn from_content_type(ct: &str) -> ApiResult<Self> {
        match ct.split(';').next().unwrap_or("").trim() {
            "application/json-patch+json" => Ok(Self::Json),
            "application/merge-patch+json" => Ok(Self::Merge),
            "application/strategic-merge-patch+json" => Ok(Self::Strategic),
            "application/apply-patch+yaml" => Ok(Self::Apply),
            _ => Err(ApiError::unsupported_media_type(&[
                "application/json-patch+json",
                "application/merge-patch+json",
                "application/strategic-merge-patch+json",
                "application/apply-patch+yaml",
            ])),
        }
    }
}

pub fn apply(kind: &str, current: &Value, patch: &Value, ty: &PatchType) -> ApiResult<Value> {
    match ty {
        PatchType::Json => {
            let ops: json_patch::Patch = serde_json::from_value(patch.clone())
                .map_err(|e| ApiError::bad_request(format!("invalid JSON patch: {e}")))?;
            let mut doc = current.clone();
            json_patch::patch(&mut doc, &ops)
                .map_err(|e| ApiError::invalid_patch(e.to_string()))?;
            Ok(doc)
        }
        PatchType::Merge | PatchType::Apply => {
            let mut doc = current.clone();
            json_patch::merge(&mut doc, patch);
            Ok(doc)
        }
        PatchType::Strategic => Ok(strategic_merge(current, patch, kind, "")),
    }
}

/// Merge key of the list at `path` (dot-separated field names from the
/// object root, list items not counted) in an object of `kind`.
fn merge_key(kind: &str, path: &str) -> Option<&'static str> {
    let field = path.rsplit('.').next().unwrap_or(path);
    match (kind, field) {
        ("Service", "ports") if path == "spec.ports" => Some("port"),
        (
            _,
            "containers"
            | "initContainers"
            | "ephemeralContainers"
            | "env"
            | "volumes"
            | "imagePullSecrets",
        ) => Some("name"),
        (_, "volumeMounts") => Some("mountPath"),
        (_, "volumeDevices") => Some("devicePath"),
        (_, "ports")
            if path.ends_with("containers.ports") || path.ends_with("initContainers.ports") =>
        {
            Some("containerPort")
        }
        (_, "ownerReferences") => Some("uid"),
        (_, "conditions") => Some("type"),
        (_, "tolerations") => None,
        (_, "hostAliases") => Some("ip"),
        (_, "topologySpreadConstraints") => Some("topologyKey"),
        (_, "addresses") if kind == "Node" => Some("type"),
        _ => None,
    }
}

fn join(path: &str, field: &str) -> String {
    if path.is_empty() {
        field.to_owned()
    } else {
        format!("{path}.{field}")
    }
}

fn strategic_merge(current: &Value, patch: &Value, kind: &str, path: &str) -> Value {
    let (Some(cur), Some(p)) = (current.as_object(), patch.as_object()) else {
        return patch.clone();
    };
    match p.get("$patch").and_then(Value::as_str) {
        Some("replace") => {
            let mut out = p.clone();
            out.remove("$patch");
            return Value::Object(out);
        }
        Some("delete") => return Value::Null,
        _ => {}
    }
    let mut out = cur.clone();
    if let Some(keep) = p.get("$retainKeys").and_then(Value::as_array) {
        let keep: Vec<&str> = keep.iter().filter_map(Value::as_str).collect();
        out.retain(|k, _| keep.contains(&k.as_str()));
    }
    for (k, pv) in p {
        if k.starts_with('$') {
            continue;
        }
        let field_path = join(path, k);
        if pv.is_null() {
            out.remove(k);
            continue;
        }
        let order = p
            .get(&format!("$setElementOrder/{k}"))
            .and_then(Value::as_array);
        let merged = match (out.get(k), pv) {
            (Some(Value::Array(c)), Value::Array(pa)) => {
                merge_list(c, pa, order, kind, &field_path)
            }
            (Some(c @ Value::Object(_)), Value::Object(_)) => {
                strategic_merge(c, pv, kind, &field_path)
            }
            (None, Value::Object(_)) => {
                strategic_merge(&Value::Object(Map::new()), pv, kind, &field_path)
            }
            (None, Value::Array(pa)) => merge_list(&[], pa, order, kind, &field_path),
            _ => pv.clone(),
        };
        if merged.is_null() {
            out.remove(k);
        } else {
            out.insert(k.clone(), merged);
        }
    }
    for (k, pv) in p {
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            let doomed = pv.as_array().cloned().unwrap_or_default();
            if let Some(Value::Array(list)) = out.get_mut(field) {
                list.retain(|v| !doomed.contains(v));
            }
        }
    }
    Value::Object(out)
}

fn merge_list(
    current: &[Value],
    patch: &[Value],
    order: Option<&Vec<Value>>,
    kind: &str,
    path: &str,
) -> Value {
    // The patch's own items, directives dropped: the list as a replacement.
    let replacement = || {
        Value::Array(
            patch
                .iter()
                .filter(|v| v.get("$patch").is_none())
                .cloned()
                .collect(),
        )
    };
    // Lists without a merge key are replaced, as are lists the patch says to replace.
    let Some(key) = merge_key(kind, path) else {
        return replacement();
    };
    if patch
        .iter()
        .any(|v| v.get("$patch").and_then(Value::as_str) == Some("replace"))
    {
        return replacement();
    }
    let mut out: Vec<Value> = current.to_vec();
    for item in patch {
        let id = item.get(key);
        let pos = out.iter().position(|c| c.get(key) == id && id.is_some());
        let delete = item.get("$patch").and_then(Value::as_str) == Some("delete");
        match (pos, delete) {
            (Some(i), true) => {
                out.remove(i);
            }
            (None, true) => {}
            (Some(i), false) => out[i] = strategic_merge(&out[i], item, kind, path),
            (None, false) => out.push(strategic_merge(
                &Value::Object(Map::new()),
                item,
                kind,
                path,
            )),
        }
    }
    if let Some(order) = order {
        let rank = |v: &Value| {
            order
                .iter()
                .position(|o| o.get(key) == v.get(key))
                .unwrap_or(usize::MAX)
        };
        out.sort_by_key(rank);
    }
    Value::Array(out)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn kubectl_apply_changing_a_service_port() {
        let current = json!({"spec": {"ports": [
            {"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080},
            {"name": "metrics", "port": 81, "protocol": "TCP", "targetPort": 9090},
        ], "selector": {"app": "web"}}});
        // What kubectl 1.37 sent after a port was removed from the manifest.
        let patch = json!({"spec": {
            "$setElementOrder/ports": [{"port": 80}],
            "ports": [{"name": "http", "port": 80, "targetPort": 8081}, {"$patch": "delete", "port": 81}],
        }});
        let out = apply("Service", &current, &patch, &PatchType::Strategic).unwrap();
        assert_eq!(
            out["spec"]["ports"],
            json!([{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8081}])
        );
        assert_eq!(out["spec"]["selector"], json!({"app": "web"}));
    }

    #[test]
    fn containers_merge_by_name_and_order_follows_set_element_order() {
        let current = json!({"spec": {"template": {"spec": {"containers": [
            {"name": "a", "image": "a:1"}, {"name": "b", "image": "b:1", "env": [{"name": "X", "value": "1"}]},
        ]}}}});
        let patch = json!({"spec": {"template": {"spec": {
            "$setElementOrder/containers": [{"name": "b"}, {"name": "a"}, {"name": "c"}],
            "containers": [{"name": "b", "env": [{"name": "Y", "value": "2"}]}, {"name": "c", "image": "c:1"}],
        }}}});
        let out = apply("Deployment", &current, &patch, &PatchType::Strategic).unwrap();
        let cs = &out["spec"]["template"]["spec"]["containers"];
        assert_eq!(
            cs.as_array()
                .unwrap()
                .iter()
                .map(|c| c["name"].as_str().unwrap())
                .collect::<Vec<_>>(),
            ["b", "a", "c"]
        );
        assert_eq!(cs[0]["image"], "b:1");
        assert_eq!(
            cs[0]["env"],
            json!([{"name": "X", "value": "1"}, {"name": "Y", "value": "2"}])
        );
    }

    #[test]
    fn directives_replace_delete_retain_and_primitive_lists() {
        let current = json!({"metadata": {"labels": {"a": "1", "b": "2"}, "finalizers": ["x", "y"]}, "spec": {"strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}}, "args": ["1", "2"]}});
        let patch = json!({
            "metadata": {"labels": {"$patch": "replace", "c": "3"}, "$deleteFromPrimitiveList/finalizers": ["x"]},
            "spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate"}, "args": ["3"]},
        });
        let out = apply("Deployment", &current, &patch, &PatchType::Strategic).unwrap();
        assert_eq!(out["metadata"]["labels"], json!({"c": "3"}));
        assert_eq!(out["metadata"]["finalizers"], json!(["y"]));
        assert_eq!(out["spec"]["strategy"], json!({"type": "Recreate"}));
        assert_eq!(
            out["spec"]["args"],
            json!(["3"]),
            "lists without a merge key are replaced"
        );
        let removed = apply(
            "Deployment",
            &current,
            &json!({"spec": {"strategy": null}}),
            &PatchType::Strategic,
        )
        .unwrap();
        assert!(removed["spec"].get("strategy").is_none());
    }

    #[test]
    fn merge_and_json_patches() {
        let current = json!({"metadata": {"labels": {"a": "1"}}, "spec": {"replicas": 1}});
        let merged = apply(
            "Deployment",
            &current,
            &json!({"metadata": {"labels": {"a": null, "b": "2"}}}),
            &PatchType::Merge,
        )
        .unwrap();
        assert_eq!(merged["metadata"]["labels"], json!({"b": "2"}));
        let ops = json!([{"op": "replace", "path": "/spec/replicas", "value": 3}, {"op": "add", "path": "/metadata/labels/c", "value": "3"}]);
        let patched = apply("Deployment", &current, &ops, &PatchType::Json).unwrap();
        assert_eq!(
            (
                patched["spec"]["replicas"].as_u64(),
                patched["metadata"]["labels"]["c"].as_str()
            ),
            (Some(3), Some("3"))
        );
        let failing = json!([{"op": "test", "path": "/spec/replicas", "value": 9}]);
        assert_eq!(
            apply("Deployment", &current, &failing, &PatchType::Json)
                .unwrap_err()
                .code
                .as_u16(),
            422
        );
    }
}
