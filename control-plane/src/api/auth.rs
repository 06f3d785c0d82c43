//! Who may do what. Authentication: a bearer token, or a client certificate
//! the TLS layer verified against the cluster CA; anonymous requests are
//! refused (401), except `/healthz`-style probes and `/version`.
//! Authorization, by group:
//!
//! - `system:masters`: everything;
//! - `switchyard:readers`: get, list and watch, anything;
//! - `system:nodes` (user `system:node:<name>`): read everything; write its
//!   own Node and its status, pod status, pod deletion (finishing graceful
//!   deletes), Events, and its Lease in `kube-node-lease`.
use std::collections::HashMap;

use axum::http::{HeaderMap, Method, header};

use super::{path::Target, resources::Sub, status::ApiError};
use crate::pki::{Identity, MASTERS, NODES, READERS};

/// The client certificate's identity, attached to each request by the TLS
/// layer (absent without a verified certificate).
#[derive(Debug, Clone, Default)]
pub struct PeerIdentity(pub Option<Identity>);

/// How requests are authenticated.
#[derive(Debug, Clone)]
pub enum Auth {
    /// Tokens, and the client certificates the TLS layer verified.
    Required { tokens: HashMap<String, Identity> },
    /// Everyone is an administrator: only for in-process benchmarks and
    /// tests that measure the API layer alone, never for a served port.
    Disabled,
}

impl Auth {
    pub fn authenticate(
        &self,
        headers: &HeaderMap,
        peer: &PeerIdentity,
    ) -> Result<Identity, ApiError> {
        let tokens = match self {
            Self::Disabled => {
                return Ok(Identity {
                    user: "admin".into(),
                    groups: vec![MASTERS.into()],
                });
            }
            Self::Required { tokens } => tokens,
        };
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        match (bearer, &peer.0) {
            (Some(t), _) => tokens.get(t).cloned().ok_or_else(ApiError::unauthorized),
            (None, Some(id)) => Ok(id.clone()),
            (None, None) => Err(ApiError::unauthorized()),
        }
    }
}

/// The Kubernetes verb of a request on `t`.
pub fn verb(method: &Method, t: &Target, watch: bool) -> &'static str {
    match (method.as_str(), t.name.is_some()) {
        ("GET", true) => "get",
        ("GET", false) if watch => "watch",
        ("GET", false) => "list",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", true) => "delete",
        ("DELETE", false) => "deletecollection",
        _ => "unknown",
    }
}

pub fn authorize(id: &Identity, verb: &str, t: &Target) -> Result<(), ApiError> {
    let has = |g: &str| id.groups.iter().any(|x| x == g);
    let read = matches!(verb, "get" | "list" | "watch");
    let allowed = has(MASTERS)
        || (read && (has(READERS) || has(NODES)))
        || (has(NODES) && node_may_write(id, verb, t));
    if allowed {
        return Ok(());
    }
    let resource = match t.sub {
        Some(s) => format!("{}/{}", t.res.plural, s.name()),
        None => t.res.plural.to_owned(),
    };
    let scope = t
        .namespace
        .as_deref()
        .map(|ns| format!(" in the namespace \"{ns}\""))
        .unwrap_or_else(|| " at the cluster scope".into());
    Err(ApiError::forbidden(format!(
        "{resource} is forbidden: User \"{}\" cannot {verb} resource \"{resource}\" in API group \"{}\"{scope}",
        id.user, t.res.group
    )))
}

fn node_may_write(id: &Identity, verb: &str, t: &Target) -> bool {
    let Some(node) = id.user.strip_prefix("system:node:") else {
        return false;
    };
    let own = t.name.as_deref() == Some(node);
    match (t.res.kind, t.sub) {
        ("Node", None) => own || verb == "create",
        ("Node", Some(Sub::Status)) => own,
        ("Pod", Some(Sub::Status)) => true,
        ("Pod", None) => verb == "delete",
        ("Event", None) => matches!(verb, "create" | "patch" | "update"),
        ("Lease", None) => {
            t.namespace.as_deref() == Some("kube-node-lease") && (own || verb == "create")
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::path::{self, Route};

    fn target(p: &str) -> Target {
        match path::parse(p).unwrap() {
            Route::Object(t) => t,
            other => panic!("{other:?}"),
        }
    }

    fn id(user: &str, group: &str) -> Identity {
        Identity {
            user: user.into(),
            groups: vec![group.into()],
        }
    }

    #[test]
    fn roles_are_kept_to() {
        let svc = target("/api/v1/namespaces/default/services/web");
        let admin = id("admin", MASTERS);
        let reader = id("reader", READERS);
        let node = id("system:node:n1", NODES);
        assert!(authorize(&admin, "delete", &svc).is_ok());
        assert!(authorize(&reader, "get", &svc).is_ok());
        let e = authorize(&reader, "patch", &svc).unwrap_err();
        assert_eq!(e.code.as_u16(), 403);
        assert!(
            e.message
                .contains("User \"reader\" cannot patch resource \"services\""),
            "{}",
            e.message
        );
        assert!(authorize(&node, "watch", &target("/api/v1/services")).is_ok());
        assert!(authorize(&node, "update", &svc).is_err());
        assert!(authorize(&node, "patch", &target("/api/v1/nodes/n1/status")).is_ok());
        assert!(
            authorize(&node, "patch", &target("/api/v1/nodes/n2/status")).is_err(),
            "another node's status"
        );
        assert!(
            authorize(
                &node,
                "update",
                &target("/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/n1")
            )
            .is_ok()
        );
        assert!(
            authorize(
                &node,
                "update",
                &target("/apis/coordination.k8s.io/v1/namespaces/default/leases/n1")
            )
            .is_err()
        );
        assert!(authorize(&id("stranger", "none"), "get", &svc).is_err());
    }
}
