//! A minimal `/openapi/v3`: enough for kubectl to know that the server
//! validates fields itself (`fieldValidation`), so `kubectl create -f` and
//! `apply -f` work with their default `--validate=strict`. Schemas are not
//! published; kubectl then computes strategic merge patches from its own
//! compiled-in types.
use std::collections::BTreeSet;

use axum::{http::StatusCode, response::Response};
use serde_json::{Map, Value, json};

use super::{
    json_response,
    resources::RESOURCES,
    status::{ApiError, ApiResult},
};

fn doc_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

pub(super) fn index() -> Response {
    let gvs: BTreeSet<(&str, &str)> = RESOURCES.iter().map(|r| (r.group, r.version)).collect();
    let paths: Map<String, Value> = gvs
        .into_iter()
        .map(|(g, v)| {
            let p = doc_path(g, v);
            (
                p.clone(),
                json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash=0")}),
            )
        })
        .collect();
    json_response(StatusCode::OK, &json!({"paths": paths}))
}

pub(super) fn document(group: &str, version: &str) -> ApiResult<Response> {
    let served: Vec<_> = RESOURCES
        .iter()
        .filter(|r| r.group == group && r.version == version)
        .collect();
    if served.is_empty() {
        return Err(ApiError::path_not_found(&format!(
            "/openapi/v3/{}",
            doc_path(group, version)
        )));
    }
    let mut paths = Map::new();
    for r in served {
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
            "x-kubernetes-group-version-kind": {"group": r.group, "version": r.version, "kind": r.kind},
            "parameters": [{"name": "fieldValidation", "in": "query", "schema": {"type": "string"}}],
            "requestBody": {"content": {"application/merge-patch+json": {"schema": {"type": "object"}}}},
            "responses": {"200": {"description": "OK"}},
        });
        paths.insert(base, json!({"patch": op}));
    }
    Ok(json_response(
        StatusCode::OK,
        &json!({"openapi": "3.0.0", "info": {"title": "Switchyard", "version": "v1"}, "paths": paths}),
    ))
}
