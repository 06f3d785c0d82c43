//! CustomResourceDefinitions (`apiextensions.k8s.io/v1`): a stored CRD
//! makes each of its served versions a resource like the built-in ones —
//! discovery, OpenAPI v3, list and watch, the status subresource,
//! server-side apply — whose objects are pruned, defaulted and validated
//! against that version's `openAPIV3Schema` ([`schema`]).
//!
//! The served resources live in a process-wide registry (one API server per
//! process), filled from the store at start ([`load`]) and changed as CRDs
//! are written ([`observe`], [`forget`]). All versions of a CRD share its
//! storage (`/<group>/<plural>/…`); objects keep the version they were
//! written in (upstream's `None` conversion would rewrite `apiVersion`).
use std::{
    collections::HashSet,
    sync::{Arc, OnceLock, RwLock},
};

use serde_json::{Value, json};

use super::{
    resources::{Resource, Sub},
    status::Cause,
    validation::Errors,
};
use crate::store::Store;

pub mod schema;

/// One served version of a CRD.
struct Served {
    /// The CRD's name (`<plural>.<group>`).
    crd: String,
    res: &'static Resource,
    schema: Arc<Value>,
}

fn registry() -> &'static RwLock<Vec<Served>> {
    static R: OnceLock<RwLock<Vec<Served>>> = OnceLock::new();
    R.get_or_init(RwLock::default)
}

/// A string that lives as long as the process: resource names are
/// `&'static` everywhere, and CRDs are few and rarely change.
fn intern(s: &str) -> &'static str {
    static STRINGS: OnceLock<RwLock<HashSet<&'static str>>> = OnceLock::new();
    let strings = STRINGS.get_or_init(RwLock::default);
    if let Some(found) = strings.read().expect("intern lock").get(s) {
        return found;
    }
    let mut w = strings.write().expect("intern lock");
    if let Some(found) = w.get(s) {
        return found;
    }
    let leaked: &'static str = Box::leak(s.to_owned().into_boxed_str());
    w.insert(leaked);
    leaked
}

/// The same resource, interned: a CRD rewritten with the same names and
/// scope reuses it.
fn intern_resource(r: Resource) -> &'static Resource {
    static RESOURCES: OnceLock<RwLock<Vec<&'static Resource>>> = OnceLock::new();
    let all = RESOURCES.get_or_init(RwLock::default);
    if let Some(found) = all
        .read()
        .expect("resource lock")
        .iter()
        .find(|x| ***x == r)
    {
        return found;
    }
    let leaked: &'static Resource = Box::leak(Box::new(r));
    all.write().expect("resource lock").push(leaked);
    leaked
}

fn str_at<'a>(v: &'a Value, p: &str) -> &'a str {
    v.pointer(p).and_then(Value::as_str).unwrap_or_default()
}

fn strings_at(v: &Value, p: &str) -> Vec<&'static str> {
    v.pointer(p)
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).map(intern).collect())
        .unwrap_or_default()
}

/// The resources a CRD serves, one per served version, with each version's
/// schema.
fn served_of(crd: &Value) -> Vec<Served> {
    let name = str_at(crd, "/metadata/name").to_owned();
    let group = intern(str_at(crd, "/spec/group"));
    let plural = intern(str_at(crd, "/spec/names/plural"));
    let kind = intern(str_at(crd, "/spec/names/kind"));
    let singular = match str_at(crd, "/spec/names/singular") {
        "" => intern(&kind.to_lowercase()),
        s => intern(s),
    };
    let short: &'static [&'static str] =
        Box::leak(strings_at(crd, "/spec/names/shortNames").into_boxed_slice());
    let namespaced = str_at(crd, "/spec/scope") != "Cluster";
    let versions = crd
        .pointer("/spec/versions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    versions
        .iter()
        .filter(|v| v.get("served") == Some(&Value::Bool(true)))
        .map(|v| {
            let subresources: &'static [Sub] = if v.pointer("/subresources/status").is_some() {
                &[Sub::Status]
            } else {
                &[]
            };
            let res = intern_resource(Resource {
                group,
                version: intern(str_at(v, "/name")),
                plural,
                singular,
                kind,
                namespaced,
                short_names: short,
                subresources,
                extra_fields: &[],
                review: false,
                custom: true,
            });
            let schema = v
                .pointer("/schema/openAPIV3Schema")
                .cloned()
                .unwrap_or_else(|| json!({}));
            Served {
                crd: name.clone(),
                res,
                schema: Arc::new(schema),
            }
        })
        .collect()
}

/// Serves what `crd` (as stored) defines, replacing what it defined before.
pub fn observe(crd: &Value) {
    let name = str_at(crd, "/metadata/name");
    let mut r = registry().write().expect("crd registry lock");
    r.retain(|s| s.crd != name);
    if crd.pointer("/metadata/deletionTimestamp").is_none() {
        r.extend(served_of(crd));
    }
}

/// Stops serving the CRD `name`.
pub fn forget(name: &str) {
    registry()
        .write()
        .expect("crd registry lock")
        .retain(|s| s.crd != name);
}

/// Serves every stored CRD.
pub async fn load<S: Store>(store: &S) -> crate::store::Result<()> {
    let page = store
        .list(
            "/apiextensions.k8s.io/customresourcedefinitions/",
            None,
            None,
        )
        .await?;
    for kv in page.items {
        if let Ok(crd) = serde_json::from_slice::<Value>(&kv.value) {
            observe(&crd);
        }
    }
    Ok(())
}

/// A served custom resource.
pub fn find(group: &str, version: &str, plural: &str) -> Option<&'static Resource> {
    registry()
        .read()
        .expect("crd registry lock")
        .iter()
        .find(|s| s.res.group == group && s.res.version == version && s.res.plural == plural)
        .map(|s| s.res)
}

/// Every served custom resource.
pub fn all() -> Vec<&'static Resource> {
    registry()
        .read()
        .expect("crd registry lock")
        .iter()
        .map(|s| s.res)
        .collect()
}

/// The schema of a served custom resource.
pub fn schema_of(res: &Resource) -> Option<Arc<Value>> {
    registry()
        .read()
        .expect("crd registry lock")
        .iter()
        .find(|s| std::ptr::eq(s.res, res) || *s.res == *res)
        .map(|s| Arc::clone(&s.schema))
}

/// What upstream's CRD strategy adds: default names, and the status its
/// controllers would write at once — names accepted, established, the
/// storage version stored.
pub fn prepare(crd: &mut Value) {
    let kind = str_at(crd, "/spec/names/kind").to_owned();
    if let Some(names) = crd
        .pointer_mut("/spec/names")
        .and_then(Value::as_object_mut)
    {
        names
            .entry("singular")
            .or_insert_with(|| json!(kind.to_lowercase()));
        names
            .entry("listKind")
            .or_insert_with(|| json!(format!("{kind}List")));
    }
    let storage: Vec<Value> = crd
        .pointer("/spec/versions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|v| v.get("storage") == Some(&Value::Bool(true)))
        .filter_map(|v| v.get("name").cloned())
        .collect();
    let mut stored: Vec<Value> = crd
        .pointer("/status/storedVersions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for s in storage {
        if !stored.contains(&s) {
            stored.push(s);
        }
    }
    let now = super::clock::now();
    let condition = |kind: &str, reason: &str, message: &str| json!({"type": kind, "status": "True", "lastTransitionTime": now, "reason": reason, "message": message});
    let names = crd
        .pointer("/spec/names")
        .cloned()
        .unwrap_or_else(|| json!({}));
    crd["status"] = json!({
        "acceptedNames": names,
        "conditions": [
            condition("NamesAccepted", "NoConflicts", "no conflicts found"),
            condition("Established", "InitialNamesAccepted", "the initial names have been accepted"),
        ],
        "storedVersions": stored,
    });
}

/// Upstream's CRD validation, the rules a hand-written CRD meets first.
pub fn validate(crd: &Value, old: Option<&Value>) -> Vec<Cause> {
    let mut e = Errors::default();
    let (group, plural, kind) = (
        str_at(crd, "/spec/group"),
        str_at(crd, "/spec/names/plural"),
        str_at(crd, "/spec/names/kind"),
    );
    let name = str_at(crd, "/metadata/name");
    if !plural.is_empty() && !group.is_empty() && name != format!("{plural}.{group}") {
        e.invalid(
            "metadata.name",
            &json!(name),
            "must be spec.names.plural+\".\"+spec.group",
        );
    }
    if group.is_empty() {
        e.required("spec.group", "");
    } else if !group.contains('.') {
        e.invalid(
            "spec.group",
            &json!(group),
            "should be a domain with at least one dot",
        );
    }
    if plural.is_empty() {
        e.required("spec.names.plural", "");
    }
    if kind.is_empty() {
        e.required("spec.names.kind", "");
    }
    match str_at(crd, "/spec/scope") {
        "Cluster" | "Namespaced" => {}
        "" => e.required("spec.scope", ""),
        other => e.not_supported("spec.scope", &json!(other), &["Cluster", "Namespaced"]),
    }
    let versions = crd
        .pointer("/spec/versions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if versions.is_empty() {
        e.invalid(
            "spec.versions",
            &json!([]),
            "must have exactly one version marked as storage version",
        );
    } else if versions
        .iter()
        .filter(|v| v.get("storage") == Some(&Value::Bool(true)))
        .count()
        != 1
    {
        e.invalid(
            "spec.versions",
            &Value::Array(versions.clone()),
            "must have exactly one version marked as storage version",
        );
    }
    for (i, v) in versions.iter().enumerate() {
        let at = format!("spec.versions[{i}]");
        if str_at(v, "/name").is_empty() {
            e.required(format!("{at}.name"), "");
        }
        match v.pointer("/schema/openAPIV3Schema") {
            None => e.required(
                format!("{at}.schema.openAPIV3Schema"),
                "schemas are required",
            ),
            Some(s) => structural(&mut e, s, &format!("{at}.schema.openAPIV3Schema"), true),
        }
    }
    if let Some(old) = old {
        let old_scope = str_at(old, "/spec/scope");
        if !old_scope.is_empty() && str_at(crd, "/spec/scope") != old_scope {
            e.invalid(
                "spec.scope",
                &json!(str_at(crd, "/spec/scope")),
                "field is immutable",
            );
        }
    }
    e.0
}

/// Upstream's structural-schema rule most often met: every node says its
/// type, unless it preserves unknown fields or is int-or-string.
fn structural(e: &mut Errors, s: &Value, at: &str, root: bool) {
    let free = s.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true))
        || s.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true));
    if s.get("type").is_none() && !free {
        let detail = if root {
            "must not be empty at the root"
        } else {
            "must not be empty for specified object fields"
        };
        e.required(format!("{at}.type"), detail);
    }
    if root
        && s.get("type")
            .and_then(Value::as_str)
            .is_some_and(|t| t != "object")
    {
        e.invalid(
            format!("{at}.type"),
            s.get("type").unwrap_or(&Value::Null),
            "must be object at the root",
        );
    }
    for (k, p) in s
        .get("properties")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        structural(e, p, &format!("{at}.properties[{k}]"), false);
    }
    if let Some(items) = s.get("items").filter(|i| i.is_object()) {
        if items.get("type").is_none()
            && items.get("x-kubernetes-preserve-unknown-fields").is_none()
            && items.get("x-kubernetes-int-or-string").is_none()
        {
            e.required(
                format!("{at}.items.type"),
                "must not be empty for specified array items",
            );
        }
        for (k, p) in items
            .get("properties")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            structural(e, p, &format!("{at}.items.properties[{k}]"), false);
        }
    }
}

/// The kube-openapi name of a custom kind's schema (`com.example.v1.Widget`),
/// as upstream publishes it: the group reversed.
pub fn definition_name(res: &Resource) -> String {
    let reversed: Vec<&str> = res.group.split('.').rev().collect();
    format!("{}.{}.{}", reversed.join("."), res.version, res.kind)
}
