//! The OpenAPI schemas of the built-in kinds, generated once from
//! `k8s-openapi`'s types: served under `/openapi/v3`, and the basis of
//! field validation — which fields a kind has (unknown ones are reported as
//! `fieldValidation` asks and never stored, as Go's decoding into typed
//! structs drops them) and what JSON type each must hold.
use std::{collections::HashMap, sync::OnceLock};

use k8s_openapi::{
    api::{
        apps::v1 as apps, authentication::v1 as authn, authorization::v1 as authz,
        autoscaling::v1 as autoscaling, batch::v1 as batch, coordination::v1 as coordination,
        core::v1 as core, discovery::v1 as discovery, policy::v1 as policy, rbac::v1 as rbac,
    },
    apiextensions_apiserver::pkg::apis::apiextensions::v1 as apiextensions,
    apimachinery::pkg::apis::meta::v1 as meta,
};
use schemars::{JsonSchema, generate::SchemaSettings};
use serde_json::{Map, Value, json};

/// Where definitions live in a schema document, and in `$ref`s.
pub const REF_PREFIX: &str = "#/components/schemas/";

pub struct Registry {
    /// Every definition, by name (`io.k8s.api.core.v1.Service`).
    pub definitions: Map<String, Value>,
    /// `(apiVersion, kind)` → definition name.
    kinds: HashMap<(String, String), String>,
}

macro_rules! kinds {
    ($gen:ident, $kinds:ident; $($api_version:literal $ty:ty),* $(,)?) => {
        $(
            $gen.subschema_for::<$ty>();
            let kind = stringify!($ty).rsplit("::").next().unwrap_or_default().trim().to_owned();
            $kinds.insert(($api_version.to_owned(), kind), <$ty as JsonSchema>::schema_name().into_owned());
        )*
    };
}

fn build() -> Registry {
    let mut generator = SchemaSettings::openapi3().into_generator();
    let mut kinds = HashMap::new();
    kinds!(generator, kinds;
        "v1" core::Namespace, "v1" core::Pod, "v1" core::Service, "v1" core::Endpoints,
        "v1" core::Node, "v1" core::ReplicationController, "v1" core::ConfigMap,
        "v1" core::Secret, "v1" core::ServiceAccount, "v1" core::Event, "v1" core::Binding,
        "apps/v1" apps::Deployment, "apps/v1" apps::ReplicaSet, "apps/v1" apps::DaemonSet,
        "batch/v1" batch::Job, "batch/v1" batch::CronJob,
        "discovery.k8s.io/v1" discovery::EndpointSlice,
        "coordination.k8s.io/v1" coordination::Lease,
        "rbac.authorization.k8s.io/v1" rbac::Role, "rbac.authorization.k8s.io/v1" rbac::RoleBinding,
        "rbac.authorization.k8s.io/v1" rbac::ClusterRole,
        "rbac.authorization.k8s.io/v1" rbac::ClusterRoleBinding,
        "authorization.k8s.io/v1" authz::SubjectAccessReview,
        "authorization.k8s.io/v1" authz::SelfSubjectAccessReview,
        "authorization.k8s.io/v1" authz::LocalSubjectAccessReview,
        "authorization.k8s.io/v1" authz::SelfSubjectRulesReview,
        "authentication.k8s.io/v1" authn::TokenRequest,
        "authentication.k8s.io/v1" authn::TokenReview,
        "authentication.k8s.io/v1" authn::SelfSubjectReview,
        "autoscaling/v1" autoscaling::Scale,
        "policy/v1" policy::Eviction,
        "apiextensions.k8s.io/v1" apiextensions::CustomResourceDefinition,
        "v1" meta::DeleteOptions, "v1" meta::Status,
    );
    let mut definitions = generator.take_definitions(true);
    // Upstream marks each kind's schema with the kind it is (`kubectl explain`
    // finds kinds by it).
    for ((api_version, kind), name) in &kinds {
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        if let Some(Value::Object(def)) = definitions.get_mut(name) {
            def.insert(
                "x-kubernetes-group-version-kind".into(),
                json!([{"group": group, "version": version, "kind": kind}]),
            );
        }
    }
    Registry { definitions, kinds }
}

static REGISTRY: OnceLock<Registry> = OnceLock::new();

pub fn registry() -> &'static Registry {
    REGISTRY.get_or_init(build)
}

impl Registry {
    /// The definition name of a kind.
    pub fn kind(&self, api_version: &str, kind: &str) -> Option<&str> {
        self.kinds
            .get(&(api_version.to_owned(), kind.to_owned()))
            .map(String::as_str)
    }

    /// Definitions `name` refers to, transitively, with itself.
    pub fn closure(&self, name: &str, out: &mut std::collections::BTreeSet<String>) {
        if !out.insert(name.to_owned()) {
            return;
        }
        if let Some(def) = self.definitions.get(name) {
            let mut refs = Vec::new();
            collect_refs(def, &mut refs);
            for r in refs {
                self.closure(&r, out);
            }
        }
    }

    /// The schema a reference (`$ref`, or `allOf: [$ref]` when the
    /// reference carries a description) points to.
    fn resolve<'a>(&'a self, schema: &'a Value) -> &'a Value {
        let mut s = schema;
        while let Some(name) = ref_name(s) {
            match self.definitions.get(name) {
                Some(def) => s = def,
                None => break,
            }
        }
        s
    }
}

/// The definition a schema refers to, if it is a reference.
fn ref_name(schema: &Value) -> Option<&str> {
    let r = schema
        .get("$ref")
        .or_else(|| match schema.get("allOf")?.as_array()?.as_slice() {
            [only] => only.get("$ref"),
            _ => None,
        })?;
    r.as_str()?.strip_prefix(REF_PREFIX)
}

fn collect_refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            if let Some(r) = m
                .get("$ref")
                .and_then(Value::as_str)
                .and_then(|r| r.strip_prefix(REF_PREFIX))
            {
                out.push(r.to_owned());
            }
            m.values().for_each(|x| collect_refs(x, out));
        }
        Value::Array(a) => a.iter().for_each(|x| collect_refs(x, out)),
        _ => {}
    }
}

/// A value of the wrong JSON type, as Go's decoder reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeError {
    /// `ServicePort.spec.ports.port`: the enclosing Go struct, then the field
    /// path without list indexes.
    pub field: String,
    /// `string`, `number`, `object`, `array`, `bool`.
    pub got: &'static str,
    /// The Go type: `int32`, `string`, `map[string]string`, …
    pub want: String,
}

impl std::fmt::Display for TypeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "json: cannot unmarshal {} into Go struct field {} of type {}",
            self.got, self.field, self.want
        )
    }
}

/// What checking an object against its kind's schema found.
#[derive(Debug, Default)]
pub struct Findings {
    /// Paths of fields the schema does not have (`spec.selectr`,
    /// `spec.ports[0].nme`), in key order; they have been removed.
    pub unknown: Vec<String>,
    pub type_error: Option<TypeError>,
}

/// Checks `obj` against the definition `name`, removing unknown fields.
pub fn check(name: &str, obj: &mut Value) -> Findings {
    let reg = registry();
    let mut out = Findings::default();
    let schema = json!({"$ref": format!("{REF_PREFIX}{name}")});
    let mut walk = Walk {
        reg,
        out: &mut out,
        go_path: Vec::new(),
        strukt: short(name).to_owned(),
    };
    walk.value(&schema, obj, "");
    out
}

fn short(def: &str) -> &str {
    def.rsplit('.').next().unwrap_or(def)
}

struct Walk<'a> {
    reg: &'a Registry,
    out: &'a mut Findings,
    /// Field names from the root (no list indexes or map keys) and the
    /// innermost struct's name, for Go-style type errors.
    go_path: Vec<String>,
    strukt: String,
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn go_type(reg: &Registry, schema: &Value) -> String {
    if let Some(name) = ref_name(schema) {
        return format!("v1.{}", short(name));
    }
    let s = reg.resolve(schema);
    match s.get("type").and_then(Value::as_str) {
        Some("integer") => s
            .get("format")
            .and_then(Value::as_str)
            .unwrap_or("int64")
            .to_owned(),
        Some("number") => "float64".into(),
        Some("boolean") => "bool".into(),
        Some("string") => "string".into(),
        Some("array") => format!(
            "[]{}",
            s.get("items")
                .map_or("interface {}".into(), |i| go_type(reg, i))
        ),
        Some("object") => match s.get("additionalProperties") {
            Some(v @ Value::Object(_)) => format!("map[string]{}", go_type(reg, v)),
            _ => "map[string]interface {}".into(),
        },
        _ => "interface {}".into(),
    }
}

impl Walk<'_> {
    fn join(path: &str, key: &str) -> String {
        if path.is_empty() {
            key.to_owned()
        } else {
            format!("{path}.{key}")
        }
    }

    fn type_error(&mut self, schema: &Value, v: &Value) {
        if self.out.type_error.is_none() {
            let field = if self.go_path.is_empty() {
                self.strukt.clone()
            } else {
                format!("{}.{}", self.strukt, self.go_path.join("."))
            };
            self.out.type_error = Some(TypeError {
                field,
                got: json_type(v),
                want: go_type(self.reg, schema),
            });
        }
    }

    fn value(&mut self, schema: &Value, v: &mut Value, path: &str) {
        // Go decodes null into any field as its zero value.
        if v.is_null() {
            return;
        }
        let reg = self.reg;
        // apiextensions' `JSON` (a schema's `default`, `enum` items) is any value.
        if ref_name(schema).is_some_and(|n| n.ends_with("apiextensions.v1.JSON")) {
            return;
        }
        let s = reg.resolve(schema);
        if s.get("x-kubernetes-int-or-string") == Some(&json!(true)) {
            if !matches!(v, Value::Number(_) | Value::String(_)) {
                self.type_error(schema, v);
            }
            return;
        }
        if let Some(alternatives) = s.get("oneOf").and_then(Value::as_array) {
            // Both forms of JSONSchemaPropsOr*: pick the one the value's shape matches.
            let pick = alternatives.iter().find(|alt| {
                let alt = reg.resolve(alt);
                match (alt.get("type").and_then(Value::as_str), &*v) {
                    (Some("array"), Value::Array(_)) | (Some("boolean"), Value::Bool(_)) => true,
                    (None | Some("object"), Value::Object(_)) => {
                        alt.get("type").is_none() || alt.get("properties").is_some()
                    }
                    _ => false,
                }
            });
            if let Some(alt) = pick {
                self.value(alt, v, path);
            } else {
                self.type_error(schema, v);
            }
            return;
        }
        // Kinds' own schemas have properties but no `type`.
        let ty = s.get("type").and_then(Value::as_str).or_else(|| {
            (s.get("properties").is_some() || s.get("additionalProperties").is_some())
                .then_some("object")
        });
        match (ty, v) {
            (Some("object"), Value::Object(map)) => {
                let props = s.get("properties").and_then(Value::as_object);
                let extra = s.get("additionalProperties");
                if props.is_none() && extra.is_none() {
                    // RawExtension, FieldsV1, JSON: any content.
                    return;
                }
                let mut unknown = Vec::new();
                for (key, val) in map.iter_mut() {
                    let sub = props
                        .and_then(|p| p.get(key))
                        .or_else(|| extra.filter(|e| e.is_object()));
                    let here = Self::join(path, key);
                    let is_field = props.is_some_and(|p| p.contains_key(key));
                    match sub {
                        Some(sub) if is_field => {
                            // Go names the innermost struct and the path of field names.
                            self.go_path.push(key.clone());
                            let inner = ref_name(sub).map(|n| short(n).to_owned());
                            let outer = inner.map(|n| std::mem::replace(&mut self.strukt, n));
                            self.value(sub, val, &here);
                            if let Some(outer) = outer {
                                self.strukt = outer;
                            }
                            self.go_path.pop();
                        }
                        Some(sub) => self.value(sub, val, &here),
                        None if extra == Some(&json!(true)) => {}
                        None => {
                            self.out.unknown.push(here);
                            unknown.push(key.clone());
                        }
                    }
                }
                for key in unknown {
                    map.remove(&key);
                }
            }
            (Some("array"), Value::Array(items)) => {
                if let Some(item_schema) = s.get("items") {
                    let inner = ref_name(item_schema).map(|n| short(n).to_owned());
                    let outer = inner.map(|n| std::mem::replace(&mut self.strukt, n));
                    for (i, item) in items.iter_mut().enumerate() {
                        self.value(item_schema, item, &format!("{path}[{i}]"));
                    }
                    if let Some(outer) = outer {
                        self.strukt = outer;
                    }
                }
            }
            (Some("string"), Value::String(_))
            | (Some("boolean"), Value::Bool(_))
            | (Some("number"), Value::Number(_))
            | (None, _) => {}
            (Some("integer"), Value::Number(n)) => {
                if n.as_i64().is_none() && n.as_u64().is_none() {
                    let n = Value::Number(n.clone());
                    self.type_error(schema, &n);
                }
            }
            (Some(_), other) => {
                let other = other.clone();
                self.type_error(schema, &other);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_fields_are_found_by_path_and_removed() {
        let reg = registry();
        let svc = reg.kind("v1", "Service").unwrap();
        let mut obj = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "labels": {"any": "key"}},
            "spec": {"selectr": {"app": "web"}, "ports": [{"port": 80, "nme": "http", "targetPort": "http"}]}});
        let found = check(svc, &mut obj);
        assert_eq!(
            found.unknown,
            ["spec.ports[0].nme", "spec.selectr"],
            "in key order"
        );
        assert!(found.type_error.is_none());
        assert!(obj["spec"].get("selectr").is_none());
        assert_eq!(
            obj["metadata"]["labels"]["any"], "key",
            "map keys are not fields"
        );
    }

    #[test]
    fn wrong_types_are_named_as_go_does() {
        let reg = registry();
        let mut obj = json!({"spec": {"ports": [{"port": "80"}]}});
        let found = check(reg.kind("v1", "Service").unwrap(), &mut obj);
        assert_eq!(
            found.type_error.unwrap().to_string(),
            "json: cannot unmarshal string into Go struct field ServicePort.spec.ports.port of type int32"
        );
        let mut obj = json!({"spec": {"selector": ["app"]}});
        let found = check(reg.kind("v1", "Service").unwrap(), &mut obj);
        assert_eq!(
            found.type_error.unwrap().to_string(),
            "json: cannot unmarshal array into Go struct field ServiceSpec.spec.selector of type map[string]string"
        );
    }

    #[test]
    fn free_form_and_either_or_fields_are_accepted() {
        let reg = registry();
        let mut crd = json!({"spec": {"versions": [{"name": "v1", "schema": {"openAPIV3Schema": {
            "type": "object", "properties": {"a": {"x-kubernetes-int-or-string": true, "default": {"x": 1}}},
            "additionalProperties": false, "items": [{"type": "string"}]}}}]}});
        let found = check(
            reg.kind("apiextensions.k8s.io/v1", "CustomResourceDefinition")
                .unwrap(),
            &mut crd,
        );
        assert!(
            found.unknown.is_empty() && found.type_error.is_none(),
            "{found:?}"
        );
        let mut pod = json!({"spec": {"containers": [{"name": "c", "resources": {"limits": {"cpu": "1", "memory": 1024}}, "ports": [{"containerPort": 80}]}]},
            "metadata": {"managedFields": [{"fieldsV1": {"f:spec": {}}}]}});
        let found = check(reg.kind("v1", "Pod").unwrap(), &mut pod);
        assert!(
            found.unknown.is_empty() && found.type_error.is_none(),
            "{found:?}"
        );
    }
}
