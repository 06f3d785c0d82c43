//! Roles, ClusterRoles and their bindings (`pkg/apis/rbac/validation`).
use serde_json::Value;

use super::{Errors, child, dns1123_subdomain, index, label_selector, list, meta, text};

const GROUP: &str = "rbac.authorization.k8s.io";

pub fn role(e: &mut Errors, kind: &str, role: &Value) {
    let namespaced = kind == "Role";
    for (i, rule) in list(role, "rules").iter().enumerate() {
        let at = index("rules", i);
        if list(rule, "verbs").is_empty() {
            e.required(child(&at, "verbs"), "verbs must contain at least one value");
        }
        let urls = list(rule, "nonResourceURLs");
        if !urls.is_empty() {
            let urls_value = rule.get("nonResourceURLs").unwrap_or(&Value::Null);
            if namespaced {
                e.invalid(
                    child(&at, "nonResourceURLs"),
                    urls_value,
                    "namespaced rules cannot apply to non-resource URLs",
                );
            }
            if ["apiGroups", "resources", "resourceNames"]
                .iter()
                .any(|f| !list(rule, f).is_empty())
            {
                e.invalid(
                    child(&at, "nonResourceURLs"),
                    urls_value,
                    "rules cannot apply to both regular resources and non-resource URLs",
                );
            }
            continue;
        }
        if list(rule, "apiGroups").is_empty() {
            e.required(
                child(&at, "apiGroups"),
                "resource rules must supply at least one api group",
            );
        }
        if list(rule, "resources").is_empty() {
            e.required(
                child(&at, "resources"),
                "resource rules must supply at least one resource",
            );
        }
    }
    if let Some(agg) = role.get("aggregationRule").filter(|a| !a.is_null()) {
        let selectors = list(agg, "clusterRoleSelectors");
        if selectors.is_empty() {
            e.required(
                "aggregationRule.clusterRoleSelectors",
                "at least one clusterRoleSelector required if aggregationRule is non-nil",
            );
        }
        for (i, s) in selectors.iter().enumerate() {
            label_selector(e, &index("aggregationRule.clusterRoleSelectors", i), s);
        }
    }
}

/// Go's `%#v` of a RoleRef, as upstream shows it in "cannot change roleRef".
fn role_ref_value(r: &Value) -> String {
    format!(
        "rbac.RoleRef{{APIGroup:{}, Kind:{}, Name:{}}}",
        super::quote(text(r, "apiGroup")),
        super::quote(text(r, "kind")),
        super::quote(text(r, "name"))
    )
}

pub fn binding(e: &mut Errors, kind: &str, b: &Value, old: Option<&Value>) {
    let namespaced = kind == "RoleBinding";
    let role_ref = b.get("roleRef").cloned().unwrap_or_default();
    let api_group = text(&role_ref, "apiGroup");
    if api_group != GROUP {
        e.not_supported("roleRef.apiGroup", &Value::from(api_group), &[GROUP]);
    }
    let kinds: &[&str] = if namespaced {
        &["Role", "ClusterRole"]
    } else {
        &["ClusterRole"]
    };
    let ref_kind = text(&role_ref, "kind");
    if !kinds.contains(&ref_kind) {
        e.not_supported("roleRef.kind", &Value::from(ref_kind), kinds);
    }
    let name = text(&role_ref, "name");
    if name.is_empty() {
        e.required("roleRef.name", "");
    } else {
        e.each(
            "roleRef.name",
            name,
            meta::name_problems("Role", GROUP, name),
        );
    }
    for (i, s) in list(b, "subjects").iter().enumerate() {
        let at = index("subjects", i);
        let name = text(s, "name");
        if name.is_empty() {
            e.required(child(&at, "name"), "");
        }
        let group = text(s, "apiGroup");
        match text(s, "kind") {
            "ServiceAccount" => {
                if !name.is_empty() {
                    e.each(&child(&at, "name"), name, dns1123_subdomain(name));
                }
                if !group.is_empty() {
                    e.not_supported(child(&at, "apiGroup"), &Value::from(group), &[""]);
                }
                if !namespaced && text(s, "namespace").is_empty() {
                    e.required(child(&at, "namespace"), "");
                }
            }
            "User" | "Group" if group != GROUP => {
                e.not_supported(child(&at, "apiGroup"), &Value::from(group), &[GROUP]);
            }
            "User" | "Group" => {}
            other => e.not_supported(
                child(&at, "kind"),
                &Value::from(other),
                &["ServiceAccount", "User", "Group"],
            ),
        }
    }
    if let Some(old) = old
        && old.get("roleRef") != b.get("roleRef")
    {
        e.invalid_raw(
            "roleRef",
            &role_ref_value(&role_ref),
            "cannot change roleRef",
        );
    }
}
