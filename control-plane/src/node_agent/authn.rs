//! Who may use the agent's endpoint, decided as a kubelet in webhook mode
//! decides it (`--authentication-token-webhook`, `--authorization-mode
//! Webhook`): the request's bearer token goes to the API server in a
//! TokenReview; the user it names must then be allowed, by a
//! SubjectAccessReview, the request's verb (`get` for GET, `create` for
//! POST) on `nodes/proxy` of this node — the resource kubelet checks for
//! `/containerLogs` and `/exec`. No token, or one the API server does not
//! know: 401; a user without the permission: 403. Answers are cached for a
//! minute per token and verb (kubelet caches them for 2 and 5 minutes).
use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use axum::http::{HeaderMap, Method, StatusCode, header};
use k8s_openapi::api::{
    authentication::v1::{TokenReview, TokenReviewSpec},
    authorization::v1::{ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec},
};
use kube::{Api, Client, api::PostParams};

/// How long a decision is reused.
const TTL: Duration = Duration::from_secs(60);

/// A refusal: the status and its message.
pub type Refusal = (StatusCode, String);

/// Decisions by (token, verb), with when they were made.
#[derive(Default)]
pub struct Gate {
    decisions: Mutex<HashMap<(String, &'static str), Decision>>,
}

/// A decision and when it was made.
type Decision = (Result<(), Refusal>, Instant);

/// The token of an `Authorization: Bearer …` header.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let token = v.strip_prefix("Bearer ")?.trim();
    (!token.is_empty()).then_some(token)
}

/// kubelet's verb for an HTTP method.
pub fn verb(method: &Method) -> &'static str {
    match *method {
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE => "delete",
        _ => "get",
    }
}

impl Gate {
    /// Whether `token` may `verb` `nodes/proxy` of `node`.
    ///
    /// # Errors
    /// 401 for an unknown token, 403 for a user without the permission,
    /// 503 when the API server cannot be asked (not cached).
    pub async fn check(
        &self,
        client: &Client,
        token: &str,
        verb: &'static str,
        node: &str,
    ) -> Result<(), Refusal> {
        let key = (token.to_owned(), verb);
        if let Some((decision, at)) = self.decisions.lock().expect("gate lock").get(&key)
            && at.elapsed() < TTL
        {
            return decision.clone();
        }
        let decision = decide(client, token, verb, node).await?;
        self.decisions
            .lock()
            .expect("gate lock")
            .insert(key, (decision.clone(), Instant::now()));
        decision
    }
}

/// The API server's answer (outer `Err`: it could not be asked).
async fn decide(
    client: &Client,
    token: &str,
    verb: &'static str,
    node: &str,
) -> Result<Result<(), Refusal>, Refusal> {
    let unavailable = |what: &str, e: kube::Error| {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("cannot ask the API server ({what}): {e}"),
        )
    };
    let review = TokenReview {
        spec: TokenReviewSpec {
            token: Some(token.to_owned()),
            ..TokenReviewSpec::default()
        },
        ..TokenReview::default()
    };
    let reviewed = Api::<TokenReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await
        .map_err(|e| unavailable("TokenReview", e))?;
    let status = reviewed.status.unwrap_or_default();
    let Some(user) = status.user.filter(|_| status.authenticated == Some(true)) else {
        return Ok(Err((StatusCode::UNAUTHORIZED, "Unauthorized".to_owned())));
    };
    let name = user.username.clone().unwrap_or_default();
    let access = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: user.username,
            groups: user.groups,
            uid: user.uid,
            extra: None,
            resource_attributes: Some(ResourceAttributes {
                verb: Some(verb.to_owned()),
                resource: Some("nodes".to_owned()),
                subresource: Some("proxy".to_owned()),
                name: Some(node.to_owned()),
                ..ResourceAttributes::default()
            }),
            ..SubjectAccessReviewSpec::default()
        },
        ..SubjectAccessReview::default()
    };
    let answered = Api::<SubjectAccessReview>::all(client.clone())
        .create(&PostParams::default(), &access)
        .await
        .map_err(|e| unavailable("SubjectAccessReview", e))?;
    if answered.status.is_some_and(|s| s.allowed) {
        Ok(Ok(()))
    } else {
        // kubelet's message.
        Ok(Err((
            StatusCode::FORBIDDEN,
            format!("Forbidden (user={name}, verb={verb}, resource=nodes, subresource=proxy)"),
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_and_verbs_as_kubelet_reads_them() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert(header::AUTHORIZATION, "Basic abc".parse().unwrap());
        assert_eq!(bearer(&h), None);
        h.insert(header::AUTHORIZATION, "Bearer ".parse().unwrap());
        assert_eq!(bearer(&h), None);
        h.insert(header::AUTHORIZATION, "Bearer t0k3n".parse().unwrap());
        assert_eq!(bearer(&h), Some("t0k3n"));
        assert_eq!(verb(&Method::GET), "get");
        assert_eq!(verb(&Method::POST), "create");
    }
}
