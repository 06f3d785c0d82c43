//! The ClusterRoles and ClusterRoleBindings the server creates when they
//! are missing (upstream's bootstrap policy, labelled
//! `kubernetes.io/bootstrapping: rbac-defaults`), so the identities the
//! server issues hold their rights through ordinary bindings:
//!
//! | binding | role | to |
//! |---|---|---|
//! | `cluster-admin` | everything | group `system:masters` |
//! | `system:discovery` | discovery and OpenAPI paths | group `system:authenticated` |
//! | `system:public-info-viewer` | `/healthz`, `/livez`, `/readyz`, `/version` | groups `system:authenticated`, `system:unauthenticated` |
//! | `system:basic-user` | self-subject access, rules and identity reviews | group `system:authenticated` |
//! | `switchyard:reader` | get, list, watch anything | group `switchyard:readers` |
//! | `system:node` | what a node agent writes (its Node, pod status, Events, its Lease), reading everything, and the TokenReviews and SubjectAccessReviews that check who calls its endpoint | group `system:nodes` |
//!
//! Upstream's `system:masters` is also a superuser group that no binding can
//! take away; so is it here. A node's writes are further kept to its own
//! Node and Lease, as upstream's NodeRestriction admission does.
use serde_json::{Value, json};

fn labels() -> Value {
    json!({"kubernetes.io/bootstrapping": "rbac-defaults"})
}

fn annotations() -> Value {
    json!({"rbac.authorization.kubernetes.io/autoupdate": "true"})
}

fn role(name: &str, rules: Value) -> Value {
    json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
           "metadata": {"name": name, "labels": labels(), "annotations": annotations()},
           "rules": rules})
}

fn binding(name: &str, groups: &[&str]) -> Value {
    let subjects: Vec<Value> = groups
        .iter()
        .map(|g| json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": g}))
        .collect();
    json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
           "metadata": {"name": name, "labels": labels(), "annotations": annotations()},
           "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
           "subjects": subjects})
}

/// The bootstrap ClusterRoles.
pub fn cluster_roles() -> Vec<Value> {
    vec![
        role(
            "cluster-admin",
            json!([{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]},
                   {"nonResourceURLs": ["*"], "verbs": ["*"]}]),
        ),
        role(
            "system:discovery",
            json!([{"nonResourceURLs": ["/api", "/api/*", "/apis", "/apis/*", "/healthz", "/livez",
                                        "/openapi", "/openapi/*", "/readyz", "/version", "/version/"],
                    "verbs": ["get"]}]),
        ),
        role(
            "system:public-info-viewer",
            json!([{"nonResourceURLs": ["/healthz", "/livez", "/readyz", "/version", "/version/"], "verbs": ["get"]}]),
        ),
        role(
            "system:basic-user",
            json!([{"apiGroups": ["authorization.k8s.io"], "resources": ["selfsubjectaccessreviews", "selfsubjectrulesreviews"], "verbs": ["create"]},
                   {"apiGroups": ["authentication.k8s.io"], "resources": ["selfsubjectreviews"], "verbs": ["create"]}]),
        ),
        role(
            "switchyard:reader",
            json!([{"apiGroups": ["*"], "resources": ["*"], "verbs": ["get", "list", "watch"]}]),
        ),
        role(
            "system:node",
            json!([
                {"apiGroups": ["*"], "resources": ["*"], "verbs": ["get", "list", "watch"]},
                {"apiGroups": [""], "resources": ["nodes"], "verbs": ["create", "update", "patch"]},
                {"apiGroups": [""], "resources": ["nodes/status"], "verbs": ["update", "patch"]},
                {"apiGroups": [""], "resources": ["pods/status"], "verbs": ["update", "patch"]},
                {"apiGroups": [""], "resources": ["pods"], "verbs": ["delete"]},
                {"apiGroups": [""], "resources": ["events"], "verbs": ["create", "update", "patch"]},
                {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create", "update", "patch"]},
                {"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]},
                {"apiGroups": ["authorization.k8s.io"], "resources": ["subjectaccessreviews", "localsubjectaccessreviews"], "verbs": ["create"]}
            ]),
        ),
    ]
}

/// The bootstrap ClusterRoleBindings.
pub fn cluster_role_bindings() -> Vec<Value> {
    vec![
        binding("cluster-admin", &[crate::pki::MASTERS]),
        binding("system:discovery", &[AUTHENTICATED]),
        binding(
            "system:public-info-viewer",
            &[AUTHENTICATED, UNAUTHENTICATED],
        ),
        binding("system:basic-user", &[AUTHENTICATED]),
        binding("switchyard:reader", &[crate::pki::READERS]),
        binding("system:node", &[crate::pki::NODES]),
    ]
}

/// The group of every authenticated user.
pub const AUTHENTICATED: &str = "system:authenticated";
pub const UNAUTHENTICATED: &str = "system:unauthenticated";
