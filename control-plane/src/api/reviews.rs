//! The create-only kinds that answer a question in their `status` and store
//! nothing — SelfSubjectAccessReview (`kubectl auth can-i`),
//! SubjectAccessReview, LocalSubjectAccessReview, SelfSubjectRulesReview
//! (`kubectl auth can-i --list`), SelfSubjectReview (`kubectl auth whoami`),
//! TokenReview — and TokenRequest (`serviceaccounts/<name>/token`,
//! `kubectl create token`), as upstream's registries answer them.
use axum::{http::StatusCode, response::Response};
use serde_json::{Value, json};

use super::{
    ApiServer, Request, auth, authz, clock, decode,
    path::Target,
    rbac::{Attributes, Policy, User},
    read::get_object,
    resources::Resource,
    status::{ApiError, ApiResult, Cause},
    tokens,
};
use crate::{
    pki::{Identity, MASTERS},
    store::Store,
};

fn str_at<'a>(v: &'a Value, p: &str) -> &'a str {
    v.pointer(p).and_then(Value::as_str).unwrap_or_default()
}

fn strings_at(v: &Value, p: &str) -> Vec<String> {
    v.pointer(p)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Answers a create of a review kind.
pub(super) async fn create<S: Store>(
    api: &ApiServer<S>,
    t: &Target,
    req: &Request,
) -> ApiResult<Response> {
    let directive = decode::options(req, decode::Options::Create)?;
    let mut review = decode::object(req, t.res, directive)?;
    let id = req.user.clone().unwrap_or_else(|| Identity {
        user: "admin".into(),
        groups: vec![MASTERS.into()],
    });
    let status = match t.res.kind {
        "SelfSubjectAccessReview" => {
            check_attributes(t.res, &review)?;
            access(api, &authz::user_of(&id), &review).await?
        }
        "SubjectAccessReview" | "LocalSubjectAccessReview" => {
            check_attributes(t.res, &review)?;
            if t.res.kind == "LocalSubjectAccessReview" {
                check_local(t, &mut review)?;
            }
            let (name, groups) = (
                str_at(&review, "/spec/user"),
                strings_at(&review, "/spec/groups"),
            );
            if name.is_empty() && groups.is_empty() {
                return Err(invalid(
                    t.res,
                    vec![Cause::invalid(
                        "spec.user",
                        "Invalid value: \"\": at least one of user or group must be specified",
                    )],
                ));
            }
            let user = User {
                name: name.to_owned(),
                groups,
            };
            access(api, &user, &review).await?
        }
        "SelfSubjectRulesReview" => {
            let namespace = str_at(&review, "/spec/namespace");
            if namespace.is_empty() {
                return Err(ApiError::bad_request("no namespace on request"));
            }
            let policy = api.authz.fresh_policy(&*api.store).await?;
            rules(&policy, &authz::user_of(&id), namespace)
        }
        "SelfSubjectReview" => json!({"userInfo": {"username": id.user, "groups": id.groups}}),
        "TokenReview" => token_review(api, &review).await?,
        other => return Err(ApiError::internal(format!("no review for {other}"))),
    };
    review["status"] = status;
    review
        .as_object_mut()
        .map(|o| o.entry("metadata").or_insert_with(|| json!({})));
    review["metadata"]["creationTimestamp"] = Value::Null;
    Ok(req.reply(StatusCode::CREATED, &review))
}

fn invalid(res: &Resource, causes: Vec<Cause>) -> ApiError {
    ApiError::invalid_in(res.group, res.kind, "", causes)
}

/// Upstream's `ValidateSubjectAccessReviewSpec` on the attributes: exactly
/// one of resource or non-resource attributes.
fn check_attributes(res: &Resource, review: &Value) -> ApiResult<()> {
    let resource = review
        .pointer("/spec/resourceAttributes")
        .is_some_and(|v| !v.is_null());
    let non_resource = review
        .pointer("/spec/nonResourceAttributes")
        .is_some_and(|v| !v.is_null());
    match (resource, non_resource) {
        (true, true) => Err(invalid(res, vec![Cause::invalid(
            "spec.nonResourceAttributes",
            format!(
                "Invalid value: {}: cannot be specified in combination with resourceAttributes",
                go_print_non_resource(review)
            ),
        )])),
        (false, false) => Err(invalid(res, vec![Cause {
            reason: "FieldValueRequired",
            field: "spec.resourceAttributes".into(),
            message: "Required value: one of resourceAttributes and nonResourceAttributes must be specified".into(),
        }])),
        _ => Ok(()),
    }
}

/// How Go prints a `*NonResourceAttributes` in an error.
fn go_print_non_resource(review: &Value) -> String {
    format!(
        "&v1.NonResourceAttributes{{Path:{}, Verb:{}}}",
        super::validation::quote(str_at(review, "/spec/nonResourceAttributes/path")),
        super::validation::quote(str_at(review, "/spec/nonResourceAttributes/verb"))
    )
}

/// A LocalSubjectAccessReview is about its own namespace only.
fn check_local(t: &Target, review: &mut Value) -> ApiResult<()> {
    let ns = t.namespace.clone().unwrap_or_default();
    let meta_ns = str_at(review, "/metadata/namespace").to_owned();
    if !meta_ns.is_empty() && meta_ns != ns {
        return Err(ApiError::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        ));
    }
    review["metadata"]["namespace"] = json!(ns);
    if review.pointer("/spec/resourceAttributes").is_some()
        && str_at(review, "/spec/resourceAttributes/namespace") != ns
    {
        return Err(ApiError::bad_request(format!(
            "spec.resourceAttributes.namespace must match namespace: {ns}"
        )));
    }
    Ok(())
}

/// The status of an access review of `user`.
async fn access<S: Store>(api: &ApiServer<S>, user: &User, review: &Value) -> ApiResult<Value> {
    let a = match review
        .pointer("/spec/resourceAttributes")
        .filter(|v| !v.is_null())
    {
        Some(r) => Attributes {
            verb: str_at(r, "/verb").to_owned(),
            resource_request: true,
            api_group: str_at(r, "/group").to_owned(),
            api_version: str_at(r, "/version").to_owned(),
            resource: str_at(r, "/resource").to_owned(),
            subresource: str_at(r, "/subresource").to_owned(),
            namespace: str_at(r, "/namespace").to_owned(),
            name: str_at(r, "/name").to_owned(),
            path: String::new(),
        },
        None => Attributes {
            verb: str_at(review, "/spec/nonResourceAttributes/verb").to_owned(),
            path: str_at(review, "/spec/nonResourceAttributes/path").to_owned(),
            ..Attributes::default()
        },
    };
    let policy = api.authz.fresh_policy(&*api.store).await?;
    let d = authz::decide(&policy, user, &a);
    let mut status = json!({"allowed": d.allowed});
    if !d.reason.is_empty() {
        status["reason"] = json!(d.reason);
    }
    Ok(status)
}

/// The status of a rules review: the superuser group's rules, then RBAC's.
fn rules(policy: &Policy, user: &User, namespace: &str) -> Value {
    let (mut resource_rules, mut non_resource_rules) = (Vec::new(), Vec::new());
    if user.groups.iter().any(|g| g == MASTERS) {
        resource_rules.push(json!({"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]}));
        non_resource_rules.push(json!({"verbs": ["*"], "nonResourceURLs": ["*"]}));
    }
    let (found, errors) = policy.rules_for(user, namespace);
    for r in found {
        if !r.resources.is_empty() {
            let mut rule =
                json!({"verbs": r.verbs, "apiGroups": r.api_groups, "resources": r.resources});
            if !r.resource_names.is_empty() {
                rule["resourceNames"] = json!(r.resource_names);
            }
            resource_rules.push(rule);
        }
        if !r.non_resource_urls.is_empty() {
            non_resource_rules
                .push(json!({"verbs": r.verbs, "nonResourceURLs": r.non_resource_urls}));
        }
    }
    let mut status = json!({"resourceRules": resource_rules, "nonResourceRules": non_resource_rules, "incomplete": false});
    if let Some(e) = super::rbac::aggregate(&errors) {
        status["evaluationError"] = json!(e);
    }
    status
}

async fn token_review<S: Store>(api: &ApiServer<S>, review: &Value) -> ApiResult<Value> {
    let token = str_at(review, "/spec/token");
    if token.is_empty() {
        return Err(ApiError::bad_request(
            "token is required for TokenReview in authentication",
        ));
    }
    let mut audiences = strings_at(review, "/spec/audiences");
    if audiences.is_empty() {
        audiences.push(tokens::ISSUER.to_owned());
    }
    let wanted: Vec<&str> = audiences.iter().map(String::as_str).collect();
    if let auth::Auth::Required { tokens, .. } = &api.auth
        && let Some(id) = tokens.get(token)
    {
        let groups = [
            id.groups.clone(),
            vec![super::rbac::bootstrap::AUTHENTICATED.to_owned()],
        ]
        .concat();
        return Ok(
            json!({"authenticated": true, "user": {"username": id.user, "groups": groups}, "audiences": audiences}),
        );
    }
    match auth::review_token(api, token, &wanted).await {
        Ok(c) => {
            let mut groups = auth::service_account_groups(&c.namespace);
            groups.push(super::rbac::bootstrap::AUTHENTICATED.to_owned());
            let mut user =
                json!({"username": c.username(), "uid": c.service_account_uid, "groups": groups});
            if let Some(b) = c.bound.as_ref().filter(|b| b.kind == "Pod") {
                user["extra"] = json!({
                    "authentication.kubernetes.io/pod-name": [b.name],
                    "authentication.kubernetes.io/pod-uid": [b.uid],
                });
            }
            let matched: Vec<&String> = c
                .audiences
                .iter()
                .filter(|a| wanted.contains(&a.as_str()))
                .collect();
            Ok(json!({"authenticated": true, "user": user, "audiences": matched}))
        }
        Err(e) => Ok(json!({"user": {}, "error": e})),
    }
}

/// `POST serviceaccounts/<name>/token`: a TokenRequest answered with a
/// signed token for the account, bound to a Pod or Secret if asked.
pub(super) async fn token_request<S: Store>(
    api: &ApiServer<S>,
    t: &Target,
    req: &Request,
) -> ApiResult<Response> {
    let mut tr = req.object_body()?;
    let (namespace, name) = (
        t.namespace.clone().unwrap_or_default(),
        t.name.clone().unwrap_or_default(),
    );
    let kind = str_at(&tr, "/kind");
    if !kind.is_empty() && kind != "TokenRequest" {
        return Err(ApiError::bad_request(format!(
            "the body of the request was in an unknown format: kind {kind} is not a TokenRequest"
        )));
    }
    let expiration = match tr.pointer("/spec/expirationSeconds") {
        None | Some(Value::Null) => tokens::DEFAULT_EXPIRATION_S,
        Some(v) => v
            .as_i64()
            .ok_or_else(|| ApiError::bad_request("spec.expirationSeconds must be an integer"))?,
    };
    let invalid_tr = |cause: Cause| {
        ApiError::invalid_in("authentication.k8s.io", "TokenRequest", &name, vec![cause])
    };
    if expiration < tokens::MIN_EXPIRATION_S {
        return Err(invalid_tr(Cause::invalid(
            "spec.expirationSeconds",
            format!("Invalid value: {expiration}: may not specify a duration less than 10 minutes"),
        )));
    }
    if expiration > 1 << 32 {
        return Err(invalid_tr(Cause::invalid(
            "spec.expirationSeconds",
            format!(
                "Invalid value: {expiration}: may not specify a duration larger than 2^32 seconds"
            ),
        )));
    }
    let sa_target = Target {
        res: t.res,
        namespace: t.namespace.clone(),
        name: t.name.clone(),
        sub: None,
    };
    let (sa, _) = get_object(api, &sa_target).await?;
    let mut audiences = strings_at(&tr, "/spec/audiences");
    if audiences.is_empty() {
        audiences.push(tokens::ISSUER.to_owned());
    }
    let bound = match tr.pointer("/spec/boundObjectRef").filter(|v| !v.is_null()) {
        None => None,
        Some(r) => Some(bound_object(api, &namespace, &name, r).await?),
    };
    let now = clock::unix_now();
    let claims = tokens::Claims {
        namespace: namespace.clone(),
        service_account: name.clone(),
        service_account_uid: str_at(&sa, "/metadata/uid").to_owned(),
        audiences: audiences.clone(),
        issued_at: now,
        expires: now + expiration,
        bound,
    };
    let signer = api
        .auth
        .signer()
        .ok_or_else(|| ApiError::internal("no service-account key"))?;
    tr["apiVersion"] = json!("authentication.k8s.io/v1");
    tr["kind"] = json!("TokenRequest");
    tr["metadata"] = json!({"name": name, "namespace": namespace, "creationTimestamp": clock::format_unix(now, 0, false)});
    tr["spec"]["audiences"] = json!(audiences);
    tr["spec"]["expirationSeconds"] = json!(expiration);
    tr["status"] = json!({"token": signer.issue(&claims), "expirationTimestamp": clock::format_unix(claims.expires, 0, false)});
    Ok(req.reply(StatusCode::CREATED, &tr))
}

/// The Pod or Secret a token is bound to, checked as upstream does.
async fn bound_object<S: Store>(
    api: &ApiServer<S>,
    namespace: &str,
    sa: &str,
    r: &Value,
) -> ApiResult<tokens::BoundObject> {
    let (kind, api_version, name, uid) = (
        str_at(r, "/kind"),
        str_at(r, "/apiVersion"),
        str_at(r, "/name"),
        str_at(r, "/uid"),
    );
    let plural = match (api_version, kind) {
        ("v1" | "", "Pod") => "pods",
        ("v1" | "", "Secret") => "secrets",
        _ => {
            let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
            return Err(ApiError::bad_request(format!(
                "cannot bind token to object of type {group}/{version}, Kind={kind}"
            )));
        }
    };
    let res =
        Resource::find("", "v1", plural).ok_or_else(|| ApiError::internal("no such resource"))?;
    let target = Target {
        res,
        namespace: Some(namespace.to_owned()),
        name: Some(name.to_owned()),
        sub: None,
    };
    let (obj, _) = get_object(api, &target).await?;
    if kind == "Pod" {
        let runs_as = obj
            .pointer("/spec/serviceAccountName")
            .and_then(Value::as_str)
            .unwrap_or("default");
        if runs_as != sa {
            return Err(ApiError::bad_request(format!(
                "cannot bind token for serviceaccount {} to pod running with different serviceaccount name.",
                super::validation::quote(sa)
            )));
        }
    }
    let live_uid = str_at(&obj, "/metadata/uid").to_owned();
    if !uid.is_empty() && uid != live_uid {
        let mut e = ApiError::conflict_message(format!(
            "Operation cannot be fulfilled on {kind} {}: the UID in the bound object reference ({uid}) does not match the UID in record. The object might have been deleted and then recreated",
            super::validation::quote(name)
        ));
        e.about_mut().name = Some(name.to_owned());
        return Err(e);
    }
    Ok(tokens::BoundObject {
        kind: kind.to_owned(),
        name: name.to_owned(),
        uid: live_uid,
    })
}
