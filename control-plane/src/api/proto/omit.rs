//! What Go's JSON encoding leaves out of a built-in object: upstream decodes
//! every body into its Go type, so a client's `labels: {}`, `ports: []` or
//! `selector: null` come back absent. The server works on JSON, so it drops
//! them the same way before storing.
use serde_json::{Map, Value};

use super::schema::{self, Field, Type};

/// Drops from `obj` (a whole object of protobuf `message`) the null values,
/// and the empty lists and maps of fields Go writes only when set
/// (`omitempty`). Zero scalars are left alone: whether one is a value or
/// "unset" depends on the field, and keeping it is harmless.
pub fn drop_unset(message: &str, obj: &mut Value) {
    if let (Some(msg), Some(map)) = (schema::message(message), obj.as_object_mut()) {
        walk_message(msg, map);
    }
}

fn walk_message(msg: &schema::Message, map: &mut Map<String, Value>) {
    for f in &msg.fields {
        if f.inline {
            // An embedded struct's fields are its parent's in JSON.
            if let Some(inner) = message_of(&f.ty) {
                walk_message(inner, map);
            }
            continue;
        }
        let Some(v) = map.get_mut(f.json) else {
            continue;
        };
        walk_value(f, v);
        if unset(f, v) {
            map.remove(f.json);
        }
    }
}

fn unset(f: &Field, v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Array(a) => a.is_empty() && !f.always,
        Value::Object(o) => {
            o.is_empty() && !f.always && (f.repeated || matches!(f.ty, Type::Map(..)))
        }
        _ => false,
    }
}

fn walk_value(f: &Field, v: &mut Value) {
    let walk_one = |ty: &Type, v: &mut Value| {
        if let (Some(msg), Some(map)) = (message_of(ty), v.as_object_mut()) {
            walk_message(msg, map);
        }
    };
    match (&f.ty, v) {
        (Type::Map(_, item), Value::Object(entries)) => {
            entries.values_mut().for_each(|e| walk_one(item, e));
        }
        (ty, Value::Array(items)) if f.repeated => items.iter_mut().for_each(|i| walk_one(ty, i)),
        (ty, v) => walk_one(ty, v),
    }
}

fn message_of(ty: &Type) -> Option<&'static schema::Message> {
    match ty {
        Type::Message(m) => schema::message(m),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn drops_what_go_would_not_write() {
        let mut svc = json!({
            "metadata": {"name": "a", "labels": {}, "annotations": null},
            "spec": {
                "selector": {},
                "ports": [{"port": 80, "appProtocol": null}],
                "externalIPs": [],
                "clusterIP": ""
            }
        });
        drop_unset("k8s.io.api.core.v1.Service", &mut svc);
        assert_eq!(
            svc,
            json!({
                "metadata": {"name": "a"},
                "spec": {"ports": [{"port": 80}], "clusterIP": ""}
            })
        );
        // A probe's handler is embedded: its fields are the probe's.
        let mut pod = json!({"spec": {"containers": [{
            "name": "c",
            "livenessProbe": {"exec": null, "periodSeconds": 3}
        }]}});
        drop_unset("k8s.io.api.core.v1.Pod", &mut pod);
        assert_eq!(
            pod["spec"]["containers"][0]["livenessProbe"],
            json!({"periodSeconds": 3})
        );
    }
}
