//! Who a request comes from. Authentication: a client certificate the TLS
//! layer verified against the cluster CA, a bearer token from
//! `pki/tokens.csv`, or a ServiceAccount token this server issued (whose
//! account, and bound Pod or Secret, must still exist with the uid the
//! token names). Every authenticated identity is also in
//! `system:authenticated`; anonymous requests are refused (401), except
//! `/healthz`-style probes and `/version`. Impersonation headers
//! (`Impersonate-User`, `-Group`) act as another identity when RBAC allows
//! the `impersonate` verb, as upstream's filter does.
//!
//! What an identity may do is [`super::authz`]'s question; what a node may
//! write is further kept to its own Node and Lease here (upstream's
//! NodeRestriction admission).
use std::{collections::HashMap, sync::Arc};

use axum::http::{HeaderMap, Method, header};
use serde_json::Value;
use tracing::debug;

use super::{
    ApiServer, authz,
    path::Target,
    rbac::{Attributes, bootstrap::AUTHENTICATED},
    status::{ApiError, ApiResult},
    tokens,
};
use crate::{
    pki::{Identity, MASTERS, NODES},
    store::Store,
};

/// The client certificate's identity, attached to each request by the TLS
/// layer (absent without a verified certificate).
#[derive(Debug, Clone, Default)]
pub struct PeerIdentity(pub Option<Identity>);

/// How requests are authenticated.
#[derive(Debug, Clone)]
pub enum Auth {
    /// Tokens, ServiceAccount tokens signed by `signer`, and the client
    /// certificates the TLS layer verified.
    Required {
        tokens: HashMap<String, Identity>,
        signer: Arc<tokens::Signer>,
    },
    /// Everyone is an administrator: only for in-process benchmarks and
    /// tests that measure the API layer alone, never for a served port.
    Disabled,
}

impl Auth {
    pub fn signer(&self) -> Option<&tokens::Signer> {
        match self {
            Self::Required { signer, .. } => Some(signer),
            Self::Disabled => None,
        }
    }
}

/// The bearer token of `Authorization`; the scheme's case does not matter,
/// as upstream's (the Python client's in-cluster loader sends `bearer`).
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Upstream's groups of a ServiceAccount.
pub fn service_account_groups(namespace: &str) -> Vec<String> {
    vec![
        "system:serviceaccounts".to_owned(),
        format!("system:serviceaccounts:{namespace}"),
    ]
}

fn with_authenticated(mut id: Identity) -> Identity {
    if !id.groups.iter().any(|g| g == AUTHENTICATED) {
        id.groups.push(AUTHENTICATED.to_owned());
    }
    id
}

/// The identity of a request: its credential's, then the one it
/// impersonates (if allowed).
pub async fn authenticate<S: Store>(
    api: &ApiServer<S>,
    headers: &HeaderMap,
    peer: &PeerIdentity,
) -> ApiResult<Identity> {
    let id = match &api.auth {
        Auth::Disabled => Identity {
            user: "admin".into(),
            groups: vec![MASTERS.into()],
        },
        Auth::Required { tokens, .. } => match (bearer(headers), &peer.0) {
            (Some(t), _) => match tokens.get(t) {
                Some(id) => id.clone(),
                None => token_identity(api, t).await.map_err(|reason| {
                    debug!(%reason, "refused a bearer token");
                    ApiError::unauthorized()
                })?,
            },
            (None, Some(id)) => id.clone(),
            (None, None) => return Err(ApiError::unauthorized()),
        },
    };
    impersonate(api, with_authenticated(id), headers).await
}

/// The identity of a ServiceAccount token, or why it is refused (upstream's
/// wording, for TokenReview's `status.error`).
pub async fn token_identity<S: Store>(api: &ApiServer<S>, token: &str) -> Result<Identity, String> {
    let claims = review_token(api, token, &[tokens::ISSUER]).await?;
    Ok(with_authenticated(Identity {
        user: claims.username(),
        groups: service_account_groups(&claims.namespace),
    }))
}

/// A ServiceAccount token's claims if it is valid for one of `audiences`
/// now: signed by this server, unexpired, its account and bound object
/// still there with the uids it names.
pub async fn review_token<S: Store>(
    api: &ApiServer<S>,
    token: &str,
    audiences: &[&str],
) -> Result<tokens::Claims, String> {
    let signer = api.auth.signer().ok_or("no service-account key")?;
    let now = super::clock::unix_now();
    let claims = match signer.verify(token, audiences, now) {
        None => return Err("invalid bearer token".into()),
        Some(r) => r?,
    };
    let live_uid = |kind: &str, name: &str| {
        let key = match kind {
            "ServiceAccount" => format!("/core/serviceaccounts/{}/{name}", claims.namespace),
            "Pod" => format!("/core/pods/{}/{name}", claims.namespace),
            _ => format!("/core/secrets/{}/{name}", claims.namespace),
        };
        async move {
            let kv = api.store.get(&key).await.map_err(|e| e.to_string())?;
            let obj: Option<Value> = kv.and_then(|kv| serde_json::from_slice(&kv.value).ok());
            Ok::<_, String>(
                obj.filter(|o| o.pointer("/metadata/deletionTimestamp").is_none())
                    .and_then(|o| {
                        o.pointer("/metadata/uid")
                            .and_then(Value::as_str)
                            .map(str::to_owned)
                    }),
            )
        }
    };
    match live_uid("ServiceAccount", &claims.service_account).await? {
        None => {
            return Err(format!(
                "serviceaccounts {} not found",
                super::validation::quote(&claims.service_account)
            ));
        }
        Some(uid)
            if !claims.service_account_uid.is_empty() && uid != claims.service_account_uid =>
        {
            return Err(format!(
                "service account UID ({uid}) does not match claim ({})",
                claims.service_account_uid
            ));
        }
        Some(_) => {}
    }
    if let Some(b) = &claims.bound {
        let plural = if b.kind == "Pod" { "pods" } else { "secrets" };
        match live_uid(&b.kind, &b.name).await? {
            None => {
                return Err(format!(
                    "{plural} {} not found",
                    super::validation::quote(&b.name)
                ));
            }
            Some(uid) if uid != b.uid => {
                return Err(format!(
                    "{} UID ({uid}) does not match claim ({})",
                    b.kind.to_lowercase(),
                    b.uid
                ));
            }
            Some(_) => {}
        }
    }
    Ok(claims)
}

/// Upstream's impersonation filter: each impersonated user, service
/// account and group must be allowed the `impersonate` verb.
async fn impersonate<S: Store>(
    api: &ApiServer<S>,
    id: Identity,
    headers: &HeaderMap,
) -> ApiResult<Identity> {
    let values = |name: &str| -> Vec<String> {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok().map(str::to_owned))
            .collect()
    };
    let (users, groups) = (values("impersonate-user"), values("impersonate-group"));
    let Some(user) = users.first() else {
        if groups.is_empty() {
            return Ok(id);
        }
        return Err(ApiError::internal(
            "requested group impersonation without impersonating a user",
        ));
    };
    let check = |resource: &str, namespace: &str, name: &str| Attributes {
        verb: "impersonate".into(),
        resource_request: true,
        resource: resource.into(),
        namespace: namespace.into(),
        name: name.into(),
        ..Attributes::default()
    };
    let sa = user
        .strip_prefix("system:serviceaccount:")
        .and_then(|rest| rest.split_once(':'));
    let mut wanted = vec![match sa {
        Some((ns, name)) => check("serviceaccounts", ns, name),
        None => check("users", "", user),
    }];
    wanted.extend(groups.iter().map(|g| check("groups", "", g)));
    for a in &wanted {
        authz::authorize(api, &id, a).await?;
    }
    let mut groups = groups;
    if let (Some((ns, _)), true) = (sa, groups.is_empty()) {
        groups = service_account_groups(ns);
    }
    if user != "system:anonymous"
        && !groups
            .iter()
            .any(|g| g == AUTHENTICATED || g == "system:unauthenticated")
    {
        groups.push(AUTHENTICATED.to_owned());
    }
    Ok(Identity {
        user: user.clone(),
        groups,
    })
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

/// The verb of a request for a path that is no resource (`get`, `post`, …).
pub fn non_resource_verb(method: &Method) -> String {
    method.as_str().to_lowercase()
}

/// Upstream's NodeRestriction: a node (user `system:node:<name>` in
/// `system:nodes`) may change only its own Node, and only its own Lease in
/// `kube-node-lease`. `name` is the object's (from the body, on create).
pub fn node_restriction(id: &Identity, verb: &str, t: &Target, name: &str) -> ApiResult<()> {
    let Some(node) = id.user.strip_prefix("system:node:") else {
        return Ok(());
    };
    if !id.groups.iter().any(|g| g == NODES) || matches!(verb, "get" | "list" | "watch") {
        return Ok(());
    }
    let refuse = |why: String| {
        let mut e = ApiError::forbidden(format!(
            "{} {} is forbidden: {why}",
            t.res.qualified(),
            super::validation::quote(name)
        ));
        let about = e.about_mut();
        about.kind = Some(t.res.plural.to_owned());
        about.name = Some(name.to_owned());
        Err(e)
    };
    let q = super::validation::quote;
    match t.res.kind {
        "Node" if name != node => refuse(format!(
            "node {} is not allowed to modify node {}",
            q(node),
            q(name)
        )),
        "Lease" if t.namespace.as_deref() != Some("kube-node-lease") => {
            refuse("can only access leases in the \"kube-node-lease\" namespace".into())
        }
        "Lease" if name != node => {
            refuse("can only access node lease with the same name as the requesting node".into())
        }
        _ => Ok(()),
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

    #[test]
    fn nodes_change_only_their_own_node_and_lease() {
        let n1 = Identity {
            user: "system:node:n1".into(),
            groups: vec![NODES.into()],
        };
        let own = target("/api/v1/nodes/n1/status");
        assert!(node_restriction(&n1, "patch", &own, "n1").is_ok());
        let e =
            node_restriction(&n1, "patch", &target("/api/v1/nodes/n2/status"), "n2").unwrap_err();
        assert_eq!(
            e.message,
            "nodes \"n2\" is forbidden: node \"n1\" is not allowed to modify node \"n2\""
        );
        let lease = target("/apis/coordination.k8s.io/v1/namespaces/default/leases/n1");
        assert_eq!(
            node_restriction(&n1, "update", &lease, "n1")
                .unwrap_err()
                .message,
            "leases.coordination.k8s.io \"n1\" is forbidden: can only access leases in the \"kube-node-lease\" namespace"
        );
        let other = target("/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/n2");
        assert!(node_restriction(&n1, "update", &other, "n2").is_err());
        assert!(
            node_restriction(&n1, "get", &other, "n2").is_ok(),
            "reads are RBAC's alone"
        );
    }
}
