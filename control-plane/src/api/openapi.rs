//! `/openapi/v3`: an index, and per group-version documents whose
//! `components.schemas` are the served kinds' real schemas (from
//! `k8s-openapi`, see [`super::schemas`]), each kind's marked with
//! `x-kubernetes-group-version-kind` (`kubectl explain` finds kinds by it).
//!
//! Each object path has a PATCH operation naming the kind and a
//! `fieldValidation` parameter, which tells kubectl that the server
//! validates fields itself (it then sends `fieldValidation=Strict` and
//! skips its own checks). The operations list JSON and merge patches but
//! not strategic merge patch: kubectl computes those from its compiled-in
//! types, because these schemas carry no `x-kubernetes-patch-merge-key`.
use std::collections::{BTreeMap, BTreeSet};

use axum::{http::StatusCode, response::Response};
use serde_json::{Map, Value, json};

use super::{
    json_response,
    resources::{self, RESOURCES},
    schemas::{self, REF_PREFIX},
    status::{ApiError, ApiResult},
};

fn doc_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// A stable hash of a document, so clients can cache by URL.
fn hash(doc: &Value) -> String {
    use std::hash::{Hash as _, Hasher as _};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    doc.to_string().hash(&mut h);
    format!("{:016X}", h.finish())
}

/// Each built-in group-version's document and its hash, built once.
fn built_in() -> &'static BTreeMap<(String, String), (Value, String)> {
    static DOCS: std::sync::OnceLock<BTreeMap<(String, String), (Value, String)>> =
        std::sync::OnceLock::new();
    DOCS.get_or_init(|| {
        let gvs: BTreeSet<(&str, &str)> = RESOURCES.iter().map(|r| (r.group, r.version)).collect();
        gvs.into_iter()
            .filter_map(|(g, v)| {
                let doc = build(g, v)?;
                let h = hash(&doc);
                Some(((g.to_owned(), v.to_owned()), (doc, h)))
            })
            .collect()
    })
}

/// Each custom group-version's document and its hash, built afresh (CRDs
/// change while the server runs).
fn custom() -> BTreeMap<(String, String), (Value, String)> {
    let gvs: BTreeSet<(&str, &str)> = super::crd::all()
        .iter()
        .map(|r| (r.group, r.version))
        .collect();
    gvs.into_iter()
        .filter_map(|(g, v)| {
            let doc = build(g, v)?;
            let h = hash(&doc);
            Some(((g.to_owned(), v.to_owned()), (doc, h)))
        })
        .collect()
}

pub(super) fn index() -> Response {
    let custom = custom();
    let paths: Map<String, Value> = built_in()
        .iter()
        .chain(custom.iter())
        .map(|((g, v), (_, h))| {
            let p = doc_path(g, v);
            (
                p.clone(),
                json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash={h}")}),
            )
        })
        .collect();
    json_response(StatusCode::OK, &json!({"paths": paths}))
}

/// A custom kind's schema as upstream publishes it: the version's
/// `openAPIV3Schema` with `apiVersion`, `kind` and `metadata` typed, marked
/// with its group, version and kind.
fn custom_definition(
    r: &super::resources::Resource,
    reg: &schemas::Registry,
    names: &mut BTreeSet<String>,
) -> Option<(String, Value)> {
    let mut schema = (*super::crd::schema_of(r)?).clone();
    let meta = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta";
    reg.closure(meta, names);
    let props = schema
        .as_object_mut()?
        .entry("properties")
        .or_insert_with(|| json!({}));
    props["apiVersion"] = json!({"type": "string"});
    props["kind"] = json!({"type": "string"});
    props["metadata"] = json!({"$ref": format!("{REF_PREFIX}{meta}")});
    schema["x-kubernetes-group-version-kind"] =
        json!([{"group": r.group, "version": r.version, "kind": r.kind}]);
    Some((super::crd::definition_name(r), schema))
}

fn build(group: &str, version: &str) -> Option<Value> {
    let served: Vec<_> = resources::all()
        .into_iter()
        .filter(|r| r.group == group && r.version == version)
        .collect();
    if served.is_empty() {
        return None;
    }
    let reg = schemas::registry();
    let mut names = BTreeSet::new();
    let mut paths = BTreeMap::new();
    let mut custom_schemas = Map::new();
    for r in served {
        let def = if r.custom {
            let Some((def, schema)) = custom_definition(r, reg, &mut names) else {
                continue;
            };
            custom_schemas.insert(def.clone(), schema);
            def
        } else {
            let Some(def) = reg.kind(&r.api_version(), r.kind) else {
                continue;
            };
            reg.closure(def, &mut names);
            def.to_owned()
        };
        let body = json!({"schema": {"$ref": format!("{REF_PREFIX}{def}")}});
        let gvk = json!({"group": r.group, "version": r.version, "kind": r.kind});
        if r.review {
            // A review is only created, on its collection.
            let collection = if r.namespaced {
                format!(
                    "/{}/namespaces/{{namespace}}/{}",
                    doc_path(group, version),
                    r.plural
                )
            } else {
                format!("/{}/{}", doc_path(group, version), r.plural)
            };
            let op = json!({
                "x-kubernetes-group-version-kind": gvk,
                "requestBody": {"content": {"application/json": body}},
                "responses": {"201": {"description": "Created", "content": {"application/json": body}}},
            });
            paths.insert(collection, json!({"post": op}));
            continue;
        }
        let base = if r.namespaced {
            format!(
                "/{}/namespaces/{{namespace}}/{}/{{name}}",
                doc_path(group, version),
                r.plural
            )
        } else {
            format!("/{}/{}/{{name}}", doc_path(group, version), r.plural)
        };
        let op = json!({
            "x-kubernetes-group-version-kind": gvk,
            "parameters": [
                {"name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
                {"name": "fieldManager", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
                {"name": "dryRun", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
                {"name": "force", "in": "query", "schema": {"type": "boolean", "uniqueItems": true}},
            ],
            "requestBody": {"content": {
                "application/json-patch+json": body,
                "application/merge-patch+json": body,
                "application/apply-patch+yaml": body,
            }},
            "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": {"$ref": format!("{REF_PREFIX}{def}")}}}}},
        });
        paths.insert(base, json!({"patch": op}));
    }
    let mut components: Map<String, Value> = names
        .into_iter()
        .filter_map(|n| Some((n.clone(), reg.definitions.get(&n)?.clone())))
        .collect();
    components.extend(custom_schemas);
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.33.0"},
        "paths": paths,
        "components": {"schemas": components},
    }))
}

pub(super) fn document(group: &str, version: &str) -> ApiResult<Response> {
    let key = (group.to_owned(), version.to_owned());
    if let Some((doc, _)) = built_in().get(&key) {
        return Ok(json_response(StatusCode::OK, doc));
    }
    custom()
        .get(&key)
        .map(|(doc, _)| json_response(StatusCode::OK, doc))
        .ok_or_else(|| {
            ApiError::path_not_found(&format!("/openapi/v3/{}", doc_path(group, version)))
        })
}
