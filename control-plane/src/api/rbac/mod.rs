//! Role-based access control as upstream's RBAC authorizer evaluates it
//! (`plugin/pkg/auth/authorizer/rbac`): a pure core over a snapshot of the
//! Roles, ClusterRoles and their bindings, apart from how the snapshot is
//! kept ([`super::authz`]).
//!
//! A request is allowed when some rule of a role bound to the user allows
//! it: ClusterRoleBindings grant everywhere, RoleBindings in the request's
//! namespace only. A binding applies to a `User` by name, a `Group` the
//! user is in, or a `ServiceAccount` (`system:serviceaccount:<ns>:<name>`,
//! the binding's namespace when the subject names none).
use std::collections::HashMap;

use serde_json::Value;

pub mod bootstrap;
pub mod escalation;
#[cfg(test)]
mod tests;

pub use escalation::not_covered;

/// Who asks: a user name and groups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub groups: Vec<String>,
}

/// What a request does, as authorizers see it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Attributes {
    pub verb: String,
    /// A request for a resource (else for `path`).
    pub resource_request: bool,
    pub api_group: String,
    pub api_version: String,
    pub resource: String,
    pub subresource: String,
    pub namespace: String,
    pub name: String,
    /// A non-resource request's path (`/api`, `/healthz`).
    pub path: String,
}

/// One `PolicyRule`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Rule {
    pub verbs: Vec<String>,
    pub api_groups: Vec<String>,
    pub resources: Vec<String>,
    pub resource_names: Vec<String>,
    pub non_resource_urls: Vec<String>,
}

fn strings(v: &Value, key: &str) -> Vec<String> {
    v.get(key)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

impl Rule {
    pub fn from_json(v: &Value) -> Rule {
        Rule {
            verbs: strings(v, "verbs"),
            api_groups: strings(v, "apiGroups"),
            resources: strings(v, "resources"),
            resource_names: strings(v, "resourceNames"),
            non_resource_urls: strings(v, "nonResourceURLs"),
        }
    }

    pub fn to_json(&self) -> Value {
        let mut o = serde_json::Map::new();
        o.insert("verbs".into(), self.verbs.clone().into());
        for (k, v) in [
            ("apiGroups", &self.api_groups),
            ("resources", &self.resources),
            ("resourceNames", &self.resource_names),
            ("nonResourceURLs", &self.non_resource_urls),
        ] {
            if !v.is_empty() {
                o.insert(k.into(), v.clone().into());
            }
        }
        Value::Object(o)
    }

    /// Upstream's `RuleAllows`.
    pub fn allows(&self, a: &Attributes) -> bool {
        if !matches_or_all(&self.verbs, &a.verb) {
            return false;
        }
        if !a.resource_request {
            return self.non_resource_urls.iter().any(|u| {
                u == "*"
                    || *u == a.path
                    || u.strip_suffix('*').is_some_and(|p| a.path.starts_with(p))
            });
        }
        let combined = if a.subresource.is_empty() {
            a.resource.clone()
        } else {
            format!("{}/{}", a.resource, a.subresource)
        };
        matches_or_all(&self.api_groups, &a.api_group)
            && self.resources.iter().any(|r| {
                r == "*"
                    || *r == combined
                    || (!a.subresource.is_empty()
                        && r.strip_prefix("*/") == Some(a.subresource.as_str()))
            })
            && (self.resource_names.is_empty() || self.resource_names.contains(&a.name))
    }
}

fn matches_or_all(list: &[String], wanted: &str) -> bool {
    list.iter().any(|x| x == "*" || x == wanted)
}

/// A subject of a binding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject {
    pub kind: String,
    pub name: String,
    pub namespace: String,
}

impl Subject {
    /// Upstream's `appliesToUser`; `namespace` is the binding's (empty for
    /// a ClusterRoleBinding).
    fn applies_to(&self, user: &User, namespace: &str) -> bool {
        match self.kind.as_str() {
            "User" => user.name == self.name,
            "Group" => user.groups.contains(&self.name),
            "ServiceAccount" => {
                let ns = if self.namespace.is_empty() {
                    namespace
                } else {
                    &self.namespace
                };
                !ns.is_empty() && user.name == format!("system:serviceaccount:{ns}:{}", self.name)
            }
            _ => false,
        }
    }

    /// How upstream names a subject in a reason (`ServiceAccount "sa/ns"`).
    fn describe(&self, binding_namespace: &str) -> String {
        match self.kind.as_str() {
            "ServiceAccount" => {
                let ns = if self.namespace.is_empty() {
                    binding_namespace
                } else {
                    &self.namespace
                };
                format!("{} {}", self.kind, quote(&format!("{}/{ns}", self.name)))
            }
            _ => format!("{} {}", self.kind, quote(&self.name)),
        }
    }
}

fn quote(s: &str) -> String {
    super::validation::quote(s)
}

#[derive(Debug, Clone)]
pub struct Binding {
    pub name: String,
    /// Empty for a ClusterRoleBinding.
    pub namespace: String,
    pub role_kind: String,
    pub role_name: String,
    pub subjects: Vec<Subject>,
}

impl Binding {
    pub fn from_json(v: &Value) -> Binding {
        let meta = |k: &str| {
            v.pointer(&format!("/metadata/{k}"))
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        let role = |k: &str| {
            v.pointer(&format!("/roleRef/{k}"))
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        let subjects = v
            .get("subjects")
            .and_then(Value::as_array)
            .map(|s| {
                s.iter()
                    .map(|s| Subject {
                        kind: s
                            .get("kind")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_owned(),
                        name: s
                            .get("name")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_owned(),
                        namespace: s
                            .get("namespace")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_owned(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        Binding {
            name: meta("name"),
            namespace: meta("namespace"),
            role_kind: role("kind"),
            role_name: role("name"),
            subjects,
        }
    }

    /// Upstream's binding describers, for reasons.
    fn describe(&self, subject: &Subject) -> String {
        if self.namespace.is_empty() {
            format!(
                "ClusterRoleBinding {} of {} {} to {}",
                quote(&self.name),
                self.role_kind,
                quote(&self.role_name),
                subject.describe("")
            )
        } else {
            format!(
                "RoleBinding {} of {} {} to {}",
                quote(&format!("{}/{}", self.name, self.namespace)),
                self.role_kind,
                quote(&self.role_name),
                subject.describe(&self.namespace)
            )
        }
    }
}

/// The RBAC objects at one revision.
#[derive(Debug, Default, Clone)]
pub struct Policy {
    /// ClusterRoles by name.
    pub cluster_roles: HashMap<String, Vec<Rule>>,
    /// Roles by (namespace, name).
    pub roles: HashMap<(String, String), Vec<Rule>>,
    pub cluster_bindings: Vec<Binding>,
    /// RoleBindings by namespace.
    pub bindings: HashMap<String, Vec<Binding>>,
}

pub fn rules_of(role: &Value) -> Vec<Rule> {
    role.get("rules")
        .and_then(Value::as_array)
        .map(|r| r.iter().map(Rule::from_json).collect())
        .unwrap_or_default()
}

/// What an authorizer decides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// Upstream's reason: `RBAC: allowed by …`, or the errors met on the way
    /// to a refusal (`RBAC: clusterrole.rbac.authorization.k8s.io "x" not found`).
    pub reason: String,
}

impl Policy {
    /// Adds one Role, ClusterRole or binding (JSON, as stored).
    pub fn add(&mut self, kind: &str, obj: &Value) {
        let meta = |k: &str| {
            obj.pointer(&format!("/metadata/{k}"))
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        match kind {
            "ClusterRole" => {
                self.cluster_roles.insert(meta("name"), rules_of(obj));
            }
            "Role" => {
                self.roles
                    .insert((meta("namespace"), meta("name")), rules_of(obj));
            }
            "ClusterRoleBinding" => self.cluster_bindings.push(Binding::from_json(obj)),
            "RoleBinding" => self
                .bindings
                .entry(meta("namespace"))
                .or_default()
                .push(Binding::from_json(obj)),
            _ => {}
        }
    }

    fn role_rules(&self, b: &Binding) -> Result<&[Rule], String> {
        let found = match b.role_kind.as_str() {
            "ClusterRole" => self.cluster_roles.get(&b.role_name),
            "Role" => self.roles.get(&(b.namespace.clone(), b.role_name.clone())),
            other => return Err(format!("unsupported role reference kind: {}", quote(other))),
        };
        found.map(Vec::as_slice).ok_or_else(|| {
            format!(
                "{}.rbac.authorization.k8s.io {} not found",
                b.role_kind.to_lowercase(),
                quote(&b.role_name)
            )
        })
    }

    /// Upstream's `VisitRulesFor`: each rule that applies to `user` in
    /// `namespace` (cluster-wide ones first), with where it comes from;
    /// `visit` returns false to stop. Bindings to missing roles give errors.
    pub fn visit_rules(
        &self,
        user: &User,
        namespace: &str,
        mut visit: impl FnMut(Result<(&Rule, String), String>) -> bool,
    ) {
        let namespaced = self
            .bindings
            .get(namespace)
            .filter(|_| !namespace.is_empty());
        let all = self
            .cluster_bindings
            .iter()
            .chain(namespaced.into_iter().flatten());
        for b in all {
            let Some(subject) = b.subjects.iter().find(|s| s.applies_to(user, &b.namespace)) else {
                continue;
            };
            match self.role_rules(b) {
                Err(e) => {
                    if !visit(Err(e)) {
                        return;
                    }
                }
                Ok(rules) => {
                    for r in rules {
                        if !visit(Ok((r, b.describe(subject)))) {
                            return;
                        }
                    }
                }
            }
        }
    }

    /// Upstream's RBAC `Authorize`.
    pub fn authorize(&self, user: &User, a: &Attributes) -> Decision {
        let mut errors = Vec::new();
        let mut allowed_by = None;
        self.visit_rules(user, &a.namespace, |found| match found {
            Ok((rule, source)) if rule.allows(a) => {
                allowed_by = Some(source);
                false
            }
            Ok(_) => true,
            Err(e) => {
                errors.push(e);
                true
            }
        });
        match allowed_by {
            Some(source) => Decision {
                allowed: true,
                reason: format!("RBAC: allowed by {source}"),
            },
            None => Decision {
                allowed: false,
                reason: aggregate(&errors)
                    .map(|e| format!("RBAC: {e}"))
                    .unwrap_or_default(),
            },
        }
    }

    /// Every rule that applies to `user` in `namespace`, and the errors met.
    pub fn rules_for(&self, user: &User, namespace: &str) -> (Vec<Rule>, Vec<String>) {
        let (mut rules, mut errors) = (Vec::new(), Vec::new());
        self.visit_rules(user, namespace, |found| {
            match found {
                Ok((r, _)) => rules.push(r.clone()),
                Err(e) => errors.push(e),
            }
            true
        });
        (rules, errors)
    }
}

/// Go's `utilerrors.NewAggregate(...).Error()`.
pub fn aggregate(errors: &[String]) -> Option<String> {
    let mut unique: Vec<String> = Vec::new();
    for e in errors {
        if !unique.contains(e) {
            unique.push(e.clone());
        }
    }
    match unique.as_slice() {
        [] => None,
        [one] => Some(one.clone()),
        many => Some(format!("[{}]", many.join(", "))),
    }
}
