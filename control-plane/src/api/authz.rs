//! Authorization: upstream's chain of the superuser group `system:masters`,
//! then RBAC ([`super::rbac`]) over a snapshot of the RBAC objects, then —
//! for nodes' writes — NodeRestriction.
//!
//! The snapshot is kept current by a watch on the RBAC objects
//! ([`spawn`]); a refusal is decided again on a fresh snapshot when the
//! store has moved on since, so a binding works from the moment its create
//! returns.
use std::sync::{Arc, RwLock};

use futures::StreamExt as _;
use serde_json::Value;
use tracing::warn;

use super::{
    ApiServer,
    path::Target,
    rbac::{Attributes, Decision, Policy, User},
    status::{ApiError, ApiResult},
};
use crate::{
    pki::{Identity, MASTERS},
    store::{EventKind, Revision, Store, WatchItem},
};

/// Where every RBAC object is stored.
const PREFIX: &str = "/rbac.authorization.k8s.io/";

#[derive(Debug, Default)]
struct Snapshot {
    policy: Arc<Policy>,
    revision: Revision,
}

/// The RBAC objects as of a revision.
#[derive(Debug, Default)]
pub struct Authorizer {
    current: RwLock<Snapshot>,
}

/// The kind of a stored RBAC object, from its key
/// (`/rbac.authorization.k8s.io/rolebindings/ns/name`).
fn kind_of(key: &str) -> Option<&'static str> {
    match key.strip_prefix(PREFIX)?.split('/').next()? {
        "roles" => Some("Role"),
        "rolebindings" => Some("RoleBinding"),
        "clusterroles" => Some("ClusterRole"),
        "clusterrolebindings" => Some("ClusterRoleBinding"),
        _ => None,
    }
}

fn policy_of<'a>(objects: impl Iterator<Item = (&'a str, &'a [u8])>) -> Policy {
    let mut policy = Policy::default();
    for (key, value) in objects {
        if let (Some(kind), Ok(obj)) = (kind_of(key), serde_json::from_slice::<Value>(value)) {
            policy.add(kind, &obj);
        }
    }
    policy
}

impl Authorizer {
    pub fn policy(&self) -> Arc<Policy> {
        Arc::clone(&self.current.read().expect("authorizer lock").policy)
    }

    fn install(&self, policy: Policy, revision: Revision) {
        let mut cur = self.current.write().expect("authorizer lock");
        if revision >= cur.revision {
            *cur = Snapshot {
                policy: Arc::new(policy),
                revision,
            };
        }
    }

    /// Reads every RBAC object afresh.
    async fn reload<S: Store>(&self, store: &S) -> ApiResult<Revision> {
        let page = store
            .list(PREFIX, None, None)
            .await
            .map_err(|e| ApiError::from_store(e, "rbac", ""))?;
        let policy = policy_of(
            page.items
                .iter()
                .map(|kv| (kv.key.as_str(), kv.value.as_slice())),
        );
        self.install(policy, page.revision);
        Ok(page.revision)
    }

    /// The policy, re-read first if the store has moved past it.
    pub async fn fresh_policy<S: Store>(&self, store: &S) -> ApiResult<Arc<Policy>> {
        let seen = self.current.read().expect("authorizer lock").revision;
        let now = store
            .current_revision()
            .await
            .map_err(|e| ApiError::from_store(e, "rbac", ""))?;
        if now > seen || seen == 0 {
            self.reload(store).await?;
        }
        Ok(self.policy())
    }
}

/// Keeps `api`'s RBAC snapshot current by watching the RBAC objects.
pub fn spawn<S: Store>(api: Arc<ApiServer<S>>) {
    tokio::spawn(async move {
        loop {
            if let Err(e) = follow(&api).await {
                warn!(error = %e.message, "following RBAC objects; starting over");
            }
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        }
    });
}

async fn follow<S: Store>(api: &ApiServer<S>) -> ApiResult<()> {
    let page = api
        .store
        .list(PREFIX, None, None)
        .await
        .map_err(|e| ApiError::from_store(e, "rbac", ""))?;
    let mut objects: std::collections::BTreeMap<String, Vec<u8>> = page
        .items
        .into_iter()
        .map(|kv| (kv.key, kv.value))
        .collect();
    let rebuild = |objects: &std::collections::BTreeMap<String, Vec<u8>>, rev| {
        let policy = policy_of(objects.iter().map(|(k, v)| (k.as_str(), v.as_slice())));
        api.authz.install(policy, rev);
    };
    rebuild(&objects, page.revision);
    let mut events = api
        .store
        .watch(PREFIX, page.revision)
        .await
        .map_err(|e| ApiError::from_store(e, "rbac", ""))?;
    while let Some(item) = events.next().await {
        match item.map_err(|e| ApiError::from_store(e, "rbac", ""))? {
            WatchItem::Event(e) => {
                match e.kind {
                    EventKind::Put => objects.insert(e.kv.key.clone(), e.kv.value.clone()),
                    EventKind::Delete => objects.remove(&e.kv.key),
                };
                rebuild(&objects, e.revision());
            }
            WatchItem::Progress(_) => {}
        }
    }
    Ok(())
}

/// The RBAC user of an identity.
pub fn user_of(id: &Identity) -> User {
    User {
        name: id.user.clone(),
        groups: id.groups.clone(),
    }
}

/// The superuser group's decision, then RBAC's on `policy`.
pub fn decide(policy: &Policy, user: &User, a: &Attributes) -> Decision {
    if user.groups.iter().any(|g| g == MASTERS) {
        return Decision {
            allowed: true,
            reason: String::new(),
        };
    }
    policy.authorize(user, a)
}

/// The attributes of a request on `t`.
pub fn resource_attributes(verb: &str, t: &Target) -> Attributes {
    Attributes {
        verb: verb.to_owned(),
        resource_request: true,
        api_group: t.res.group.to_owned(),
        api_version: t.res.version.to_owned(),
        resource: t.res.plural.to_owned(),
        subresource: t.sub.map(|s| s.name().to_owned()).unwrap_or_default(),
        namespace: t.namespace.clone().unwrap_or_default(),
        name: t.name.clone().unwrap_or_default(),
        path: String::new(),
    }
}

/// Upstream's refusal: 403 naming the user, verb, resource and scope, and
/// the authorizer's reason when it gave one.
pub fn forbidden(user: &str, a: &Attributes, reason: &str) -> ApiError {
    let quote = super::validation::quote;
    let what = if !a.resource_request {
        format!(
            "User {} cannot {} path {}",
            quote(user),
            a.verb,
            quote(&a.path)
        )
    } else {
        let resource = if a.subresource.is_empty() {
            a.resource.clone()
        } else {
            format!("{}/{}", a.resource, a.subresource)
        };
        let scope = if a.namespace.is_empty() {
            " at the cluster scope".to_owned()
        } else {
            format!(" in the namespace {}", quote(&a.namespace))
        };
        format!(
            "User {} cannot {} resource {} in API group {}{scope}",
            quote(user),
            a.verb,
            quote(&resource),
            quote(&a.api_group)
        )
    };
    let what = if reason.is_empty() {
        what
    } else {
        format!("{what}: {reason}")
    };
    let qualified = match (a.resource_request, a.api_group.is_empty()) {
        (false, _) => String::new(),
        (true, true) => a.resource.clone(),
        (true, false) => format!("{}.{}", a.resource, a.api_group),
    };
    let message = match (qualified.is_empty(), a.name.is_empty()) {
        (true, _) => format!("forbidden: {what}"),
        (false, true) => format!("{qualified} is forbidden: {what}"),
        (false, false) => format!("{qualified} {} is forbidden: {what}", quote(&a.name)),
    };
    let mut e = ApiError::forbidden(message);
    if a.resource_request {
        let about = e.about_mut();
        about.kind = Some(a.resource.clone());
        about.name = (!a.name.is_empty()).then(|| a.name.clone());
        about.group = (!a.api_group.is_empty()).then(|| a.api_group.clone());
    }
    e
}

/// Whether `id` may do `a`: allowed at once on the current snapshot, else
/// decided again on a fresh one; a refusal is upstream's 403.
pub async fn authorize<S: Store>(
    api: &ApiServer<S>,
    id: &Identity,
    a: &Attributes,
) -> ApiResult<Decision> {
    let user = user_of(id);
    let d = decide(&api.authz.policy(), &user, a);
    if d.allowed {
        return Ok(d);
    }
    let d = decide(&*api.authz.fresh_policy(&*api.store).await?, &user, a);
    if d.allowed {
        Ok(d)
    } else {
        Err(forbidden(&id.user, a, &d.reason))
    }
}

/// Upstream's escalation check on a write of a Role, ClusterRole or
/// binding, for one request's user: the rules written, or those of the
/// role bound, must be the user's own already — unless it may `escalate`
/// (roles) or `bind` (that role), or is a superuser.
pub struct EscalationGuard {
    policy: Arc<Policy>,
    id: Identity,
}

/// The guard for a write to `t` by the request's user; `None` when the
/// kind is no RBAC kind or the user may do anything.
pub async fn escalation_guard<S: Store>(
    api: &ApiServer<S>,
    t: &Target,
    user: Option<&Identity>,
) -> ApiResult<Option<EscalationGuard>> {
    let Some(id) = user else {
        return Ok(None);
    };
    if t.res.group != "rbac.authorization.k8s.io" || id.groups.iter().any(|g| g == MASTERS) {
        return Ok(None);
    }
    Ok(Some(EscalationGuard {
        policy: api.authz.fresh_policy(&*api.store).await?,
        id: id.clone(),
    }))
}

impl EscalationGuard {
    fn allowed(&self, verb: &str, resource: &str, namespace: &str, name: &str) -> bool {
        let a = Attributes {
            verb: verb.into(),
            resource_request: true,
            api_group: "rbac.authorization.k8s.io".into(),
            resource: resource.into(),
            namespace: namespace.into(),
            name: name.into(),
            ..Attributes::default()
        };
        decide(&self.policy, &user_of(&self.id), &a).allowed
    }

    /// Checks `obj`, the object as it would be written.
    pub fn check(&self, t: &Target, obj: &Value) -> ApiResult<()> {
        let s = |p: &str| {
            obj.pointer(p)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        let (name, namespace) = (s("/metadata/name"), t.namespace.clone().unwrap_or_default());
        let rules = match t.res.kind {
            "Role" | "ClusterRole" => {
                if self.allowed("escalate", t.res.plural, &namespace, &name) {
                    return Ok(());
                }
                super::rbac::rules_of(obj)
            }
            "RoleBinding" | "ClusterRoleBinding" => {
                let (kind, role) = (s("/roleRef/kind"), s("/roleRef/name"));
                let plural = if kind == "Role" {
                    "roles"
                } else {
                    "clusterroles"
                };
                if self.allowed("bind", plural, &namespace, &role) {
                    return Ok(());
                }
                let found = match kind.as_str() {
                    "Role" => self.policy.roles.get(&(namespace.clone(), role.clone())),
                    _ => self.policy.cluster_roles.get(&role),
                };
                match found {
                    Some(rules) => rules.clone(),
                    None => {
                        let resource = format!("{}.rbac.authorization.k8s.io", kind.to_lowercase());
                        return Err(ApiError::not_found(&resource, &role));
                    }
                }
            }
            _ => return Ok(()),
        };
        let (owned, errors) = self.policy.rules_for(&user_of(&self.id), &namespace);
        let missing = super::rbac::not_covered(&owned, &rules);
        if missing.is_empty() {
            return Ok(());
        }
        let quote = super::validation::quote;
        let groups: Vec<String> = self.id.groups.iter().map(|g| quote(g)).collect();
        let mut why = format!(
            "user {} (groups=[{}]) is attempting to grant RBAC permissions not currently held:\n{}",
            quote(&self.id.user),
            groups.join(" "),
            missing.join("\n")
        );
        if let Some(e) = super::rbac::aggregate(&errors) {
            why = format!("{why}; resolution errors: [{e}]");
        }
        let mut e = ApiError::forbidden(format!(
            "{} {} is forbidden: {why}",
            t.res.qualified(),
            quote(&name)
        ));
        let about = e.about_mut();
        about.kind = Some(t.res.plural.to_owned());
        about.name = Some(name);
        about.group = Some(t.res.group.to_owned());
        Err(e)
    }
}
