//! A custom resource against its version's `openAPIV3Schema`, in upstream's
//! order: unknown fields pruned (their paths kept for `fieldValidation`),
//! non-nullable nulls dropped, `default`s filled in, then validated as
//! apiextensions-apiserver does through kube-openapi, each failure a field
//! cause worded as upstream's (`spec.size: Invalid value: "string":
//! spec.size in body must be of type integer: "string"`).
//!
//! `apiVersion`, `kind` and `metadata` at the root are the server's (the
//! generic object-meta rules check `metadata`).
use serde_json::{Map, Value};

use crate::api::{
    status::Cause,
    validation::{Errors, quote},
};

fn flag(s: &Value, key: &str) -> bool {
    s.get(key) == Some(&Value::Bool(true))
}

fn ty(s: &Value) -> &str {
    s.get("type").and_then(Value::as_str).unwrap_or_default()
}

fn child(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// The schema of `key` in an object schema: a property, the
/// `additionalProperties` schema, or `None` for a field to prune.
fn property<'a>(s: &'a Value, key: &str) -> Option<&'a Value> {
    if let Some(p) = s.get("properties").and_then(|p| p.get(key)) {
        return Some(p);
    }
    match s.get("additionalProperties") {
        Some(a @ Value::Object(_)) => Some(a),
        _ => None,
    }
}

/// Removes what `schema` does not declare (unless it preserves unknown
/// fields) and nulls it does not allow, recording each pruned field's path.
pub fn prune(schema: &Value, v: &mut Value, unknown: &mut Vec<String>) {
    prune_at(schema, v, "", true, unknown);
}

fn prune_at(s: &Value, v: &mut Value, path: &str, root: bool, unknown: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            let preserve = flag(s, "x-kubernetes-preserve-unknown-fields");
            let additional_any = s.get("additionalProperties") == Some(&Value::Bool(true));
            let keys: Vec<String> = m.keys().cloned().collect();
            for k in keys {
                if root && matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
                    continue;
                }
                match property(s, &k) {
                    Some(p) => {
                        let nullable = flag(p, "nullable");
                        let value = m.get_mut(&k).expect("a key just listed");
                        if value.is_null() && !nullable {
                            m.remove(&k);
                            continue;
                        }
                        prune_at(p, value, &child(path, &k), false, unknown);
                    }
                    None if preserve || additional_any => {}
                    None => {
                        m.remove(&k);
                        unknown.push(child(path, &k));
                    }
                }
            }
        }
        Value::Array(items) => {
            if let Some(item) = s.get("items") {
                for (i, x) in items.iter_mut().enumerate() {
                    prune_at(item, x, &format!("{path}[{i}]"), false, unknown);
                }
            }
        }
        _ => {}
    }
}

/// Fills in the `default` of every absent property, top-down.
pub fn default(schema: &Value, v: &mut Value) {
    match v {
        Value::Object(m) => {
            if let Some(props) = schema.get("properties").and_then(Value::as_object) {
                for (k, p) in props {
                    if let (false, Some(d)) = (m.contains_key(k), p.get("default")) {
                        m.insert(k.clone(), d.clone());
                    }
                }
            }
            for (k, x) in m.iter_mut() {
                if let Some(p) = property(schema, k) {
                    default(p, x);
                }
            }
        }
        Value::Array(items) => {
            if let Some(item) = schema.get("items") {
                items.iter_mut().for_each(|x| default(item, x));
            }
        }
        _ => {}
    }
}

/// The JSON type kube-openapi sees a value as.
fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n)
            if n.is_i64() || n.is_u64() || n.as_f64().is_some_and(|f| f.fract() == 0.0) =>
        {
            "integer"
        }
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Every way `v` breaks `schema`, as upstream's causes.
pub fn validate(schema: &Value, v: &Value) -> Vec<Cause> {
    let mut e = Errors::default();
    let Some(m) = v.as_object() else {
        return e.0;
    };
    // The root's own fields, minus the server's.
    let mut body = Map::new();
    for (k, x) in m {
        if !matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
            body.insert(k.clone(), x.clone());
        }
    }
    let mut root = schema.clone();
    if let Some(req) = root.get_mut("required").and_then(Value::as_array_mut) {
        req.retain(|r| !matches!(r.as_str(), Some("apiVersion" | "kind" | "metadata")));
    }
    check(&root, &Value::Object(body), "", &mut e);
    e.0
}

fn invalid(e: &mut Errors, path: &str, v: &Value, detail: String) {
    e.invalid(path, v, &detail);
}

fn check(s: &Value, v: &Value, path: &str, e: &mut Errors) {
    let actual = type_name(v);
    let int_or_string = flag(s, "x-kubernetes-int-or-string");
    let want = ty(s);
    let type_ok = match (want, actual) {
        _ if int_or_string => matches!(actual, "integer" | "string"),
        ("", _) => true,
        ("number", "integer") => true,
        (w, a) => w == a,
    };
    let here = if path.is_empty() { "." } else { path };
    if !type_ok {
        let wanted = if int_or_string {
            "integer,string"
        } else {
            want
        };
        e.push(
            "FieldValueTypeInvalid",
            path,
            format!(
                "Invalid value: {}: {here} in body must be of type {wanted}: {}",
                quote(actual),
                quote(actual)
            ),
        );
        return;
    }
    if let Some(options) = s.get("enum").and_then(Value::as_array)
        && !options.contains(v)
    {
        let shown: Vec<String> = options
            .iter()
            .map(|o| o.as_str().map_or_else(|| o.to_string(), str::to_owned))
            .collect();
        let refs: Vec<&str> = shown.iter().map(String::as_str).collect();
        e.not_supported(path, v, &refs);
    }
    match v {
        Value::Number(n) => {
            let x = n.as_f64().unwrap_or_default();
            let num = |k: &str| s.get(k).and_then(Value::as_f64);
            let show_n = |f: f64| Value::from(f).to_string().trim_end_matches(".0").to_owned();
            if let Some(min) = num("minimum") {
                let exclusive = flag(s, "exclusiveMinimum");
                if x < min || (exclusive && x == min) {
                    let rel = if exclusive {
                        "greater than"
                    } else {
                        "greater than or equal to"
                    };
                    invalid(
                        e,
                        path,
                        v,
                        format!("{here} in body should be {rel} {}", show_n(min)),
                    );
                }
            }
            if let Some(max) = num("maximum") {
                let exclusive = flag(s, "exclusiveMaximum");
                if x > max || (exclusive && x == max) {
                    let rel = if exclusive {
                        "less than"
                    } else {
                        "less than or equal to"
                    };
                    invalid(
                        e,
                        path,
                        v,
                        format!("{here} in body should be {rel} {}", show_n(max)),
                    );
                }
            }
            if let Some(m) = num("multipleOf").filter(|m| *m > 0.0)
                && (x / m).fract() != 0.0
            {
                invalid(
                    e,
                    path,
                    v,
                    format!("{here} in body should be a multiple of {}", show_n(m)),
                );
            }
        }
        Value::String(text) => {
            let len = text.chars().count();
            if let Some(max) = s.get("maxLength").and_then(Value::as_u64)
                && len as u64 > max
            {
                e.too_long(path, max as usize);
            }
            if let Some(min) = s.get("minLength").and_then(Value::as_u64)
                && (len as u64) < min
            {
                invalid(
                    e,
                    path,
                    v,
                    format!("{here} in body should be at least {min} chars long"),
                );
            }
            if let Some(pattern) = s.get("pattern").and_then(Value::as_str)
                && regex::Regex::new(pattern).is_ok_and(|re| !re.is_match(text))
            {
                invalid(
                    e,
                    path,
                    v,
                    format!("{here} in body should match '{pattern}'"),
                );
            }
        }
        Value::Array(items) => {
            if let Some(max) = s.get("maxItems").and_then(Value::as_u64)
                && items.len() as u64 > max
            {
                e.too_many(path, items.len(), max as usize);
            }
            if let Some(min) = s.get("minItems").and_then(Value::as_u64)
                && (items.len() as u64) < min
            {
                invalid(
                    e,
                    path,
                    v,
                    format!("{here} in body should have at least {min} items"),
                );
            }
            if let Some(item) = s.get("items") {
                for (i, x) in items.iter().enumerate() {
                    check(item, x, &format!("{path}[{i}]"), e);
                }
            }
        }
        Value::Object(m) => {
            if let Some(max) = s.get("maxProperties").and_then(Value::as_u64)
                && m.len() as u64 > max
            {
                e.too_many(path, m.len(), max as usize);
            }
            if let Some(min) = s.get("minProperties").and_then(Value::as_u64)
                && (m.len() as u64) < min
            {
                invalid(
                    e,
                    path,
                    v,
                    format!("{here} in body should have at least {min} properties"),
                );
            }
            for r in s
                .get("required")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if let Some(k) = r.as_str()
                    && !m.contains_key(k)
                {
                    e.required(child(path, k), "");
                }
            }
            for (k, x) in m {
                if let Some(p) = property(s, k) {
                    check(p, x, &child(path, k), e);
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn schema() -> Value {
        json!({"type": "object", "required": ["spec"], "properties": {
            "spec": {"type": "object", "required": ["size"], "properties": {
                "size": {"type": "integer", "minimum": 1, "maximum": 10},
                "color": {"type": "string", "enum": ["red", "blue"], "default": "red"},
                "name": {"type": "string", "maxLength": 5, "pattern": "^[a-z]+$"},
                "port": {"x-kubernetes-int-or-string": true},
                "items": {"type": "array", "maxItems": 2, "items": {"type": "object", "required": ["id"], "properties": {"id": {"type": "string"}}}},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}
            }},
            "status": {"type": "object", "properties": {"ready": {"type": "boolean"}}}
        }})
    }

    fn messages(v: &Value) -> Vec<String> {
        validate(&schema(), v)
            .into_iter()
            .map(|c| format!("{}: {}", c.field, c.message))
            .collect()
    }

    #[test]
    fn prunes_unknown_fields_and_fills_defaults() {
        let mut v = json!({"apiVersion": "x/v1", "kind": "W", "metadata": {"name": "w"},
                           "spec": {"size": 2, "sise": 3, "labels": {"a": "b"}, "free": {"any": {"thing": 1}}, "name": null},
                           "extra": true});
        let mut unknown = Vec::new();
        prune(&schema(), &mut v, &mut unknown);
        assert_eq!(unknown, ["extra", "spec.sise"]);
        default(&schema(), &mut v);
        assert_eq!(
            v["spec"],
            json!({"size": 2, "color": "red", "labels": {"a": "b"}, "free": {"any": {"thing": 1}}})
        );
    }

    #[test]
    fn validation_is_worded_as_upstream() {
        assert_eq!(
            messages(&json!({"metadata": {"name": "w"}})),
            ["spec: Required value"]
        );
        assert_eq!(
            messages(&json!({"spec": {"size": "big"}})),
            [
                r#"spec.size: Invalid value: "string": spec.size in body must be of type integer: "string""#
            ]
        );
        assert_eq!(
            messages(
                &json!({"spec": {"size": 0, "color": "pink", "name": "TooLong1", "port": true,
                                      "items": [{}, {"id": "a"}, {"id": "b"}]}})
            ),
            [
                "spec.color: Unsupported value: \"pink\": supported values: \"red\", \"blue\"",
                "spec.items: Too many: 3: must have at most 2 items",
                "spec.items[0].id: Required value",
                "spec.name: Too long: may not be more than 5 bytes",
                "spec.name: Invalid value: \"TooLong1\": spec.name in body should match '^[a-z]+$'",
                "spec.port: Invalid value: \"boolean\": spec.port in body must be of type integer,string: \"boolean\"",
                "spec.size: Invalid value: 0: spec.size in body should be greater than or equal to 1",
            ]
        );
    }
}
