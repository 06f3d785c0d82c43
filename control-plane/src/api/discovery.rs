//! `/version`, `/api`, `/apis` and the group-version resource lists
//! (legacy discovery, which every client understands).
use std::collections::BTreeSet;

use axum::{http::StatusCode, response::Response};
use serde_json::{Value, json};

use super::{
    ApiServer, json_response,
    resources::{self, Resource, Sub},
    status::{ApiError, ApiResult},
};

pub(super) fn version<S>(api: &ApiServer<S>) -> Response {
    let minor = api.settings.minor_version;
    json_response(
        StatusCode::OK,
        &json!({
            "major": "1",
            "minor": minor.to_string(),
            "gitVersion": format!("v1.{minor}.0-switchyard"),
            "gitCommit": env!("CARGO_PKG_VERSION"),
            "gitTreeState": "clean",
            "buildDate": "2026-01-01T00:00:00Z",
            "goVersion": "rust",
            "compiler": "rustc",
            "platform": "linux/amd64",
        }),
    )
}

pub(super) fn core_versions() -> Response {
    json_response(
        StatusCode::OK,
        &json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": ""}]}),
    )
}

/// One named group's `APIGroup` (without `kind`). Every group serves one
/// version today, which is then the preferred one.
fn group_entry(group: &str) -> Value {
    let versions: BTreeSet<&str> = resources::all()
        .into_iter()
        .filter(|r| r.group == group)
        .map(|r| r.version)
        .collect();
    let versions: Vec<Value> = versions
        .into_iter()
        .map(|v| json!({"groupVersion": format!("{group}/{v}"), "version": v}))
        .collect();
    json!({"name": group, "preferredVersion": versions[0], "versions": versions})
}

pub(super) fn groups() -> Response {
    let names: BTreeSet<&str> = resources::all()
        .into_iter()
        .map(|r| r.group)
        .filter(|g| !g.is_empty())
        .collect();
    let groups: Vec<Value> = names.into_iter().map(group_entry).collect();
    json_response(
        StatusCode::OK,
        &json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}),
    )
}

/// `/apis/{group}`.
pub(super) fn group(group: &str) -> ApiResult<Response> {
    if group.is_empty() || !resources::all().iter().any(|r| r.group == group) {
        return Err(ApiError::path_not_found(&format!("/apis/{group}")));
    }
    let mut body = group_entry(group);
    body["kind"] = json!("APIGroup");
    body["apiVersion"] = json!("v1");
    Ok(json_response(StatusCode::OK, &body))
}

const VERBS: [&str; 8] = [
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

fn entry(r: &Resource) -> Value {
    let verbs: &[&str] = if r.review { &["create"] } else { &VERBS };
    json!({
        "name": r.plural, "singularName": r.singular, "namespaced": r.namespaced, "kind": r.kind,
        "verbs": verbs, "shortNames": r.short_names,
    })
}

fn sub_entry(r: &Resource, sub: Sub) -> Value {
    let name = format!("{}/{}", r.plural, sub.name());
    match sub {
        Sub::Status => {
            json!({"name": name, "singularName": "", "namespaced": r.namespaced, "kind": r.kind, "verbs": ["get", "patch", "update"]})
        }
        Sub::Scale => {
            json!({"name": name, "singularName": "", "namespaced": r.namespaced, "group": "autoscaling", "version": "v1", "kind": "Scale", "verbs": ["get", "patch", "update"]})
        }
        Sub::Binding => {
            json!({"name": name, "singularName": "", "namespaced": r.namespaced, "kind": "Binding", "verbs": ["create"]})
        }
        Sub::Finalize => {
            json!({"name": name, "singularName": "", "namespaced": r.namespaced, "kind": r.kind, "verbs": ["update"]})
        }
        Sub::Log => {
            json!({"name": name, "singularName": "", "namespaced": r.namespaced, "kind": "Pod", "verbs": ["get"]})
        }
        Sub::Exec => {
            json!({"name": name, "singularName": "", "namespaced": r.namespaced, "kind": "PodExecOptions", "verbs": ["create", "get"]})
        }
        Sub::Token => {
            json!({"name": name, "singularName": "", "namespaced": r.namespaced, "group": "authentication.k8s.io", "version": "v1", "kind": "TokenRequest", "verbs": ["create"]})
        }
    }
}

pub(super) fn resource_list(group: &str, version: &str) -> ApiResult<Response> {
    let served: Vec<&Resource> = resources::all()
        .into_iter()
        .filter(|r| r.group == group && r.version == version)
        .collect();
    if served.is_empty() {
        let gv = if group.is_empty() {
            format!("/api/{version}")
        } else {
            format!("/apis/{group}/{version}")
        };
        return Err(ApiError::path_not_found(&gv));
    }
    let mut resources = Vec::new();
    for r in served {
        resources.push(entry(r));
        resources.extend(r.subresources.iter().map(|s| sub_entry(r, *s)));
    }
    let gv = if group.is_empty() {
        version.to_owned()
    } else {
        format!("{group}/{version}")
    };
    Ok(json_response(
        StatusCode::OK,
        &json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}),
    ))
}
