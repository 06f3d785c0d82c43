//! RBAC decisions, reasons and the escalation check, as upstream's.
use serde_json::json;

use super::*;

fn user(name: &str, groups: &[&str]) -> User {
    User {
        name: name.into(),
        groups: groups.iter().map(|g| (*g).to_owned()).collect(),
    }
}

fn resource(verb: &str, group: &str, resource: &str, ns: &str, name: &str) -> Attributes {
    Attributes {
        verb: verb.into(),
        resource_request: true,
        api_group: group.into(),
        resource: resource.into(),
        namespace: ns.into(),
        name: name.into(),
        ..Attributes::default()
    }
}

fn policy() -> Policy {
    let mut p = Policy::default();
    p.add("ClusterRole", &json!({"metadata": {"name": "pod-reader"},
        "rules": [{"apiGroups": [""], "resources": ["pods", "pods/log"], "verbs": ["get", "list"]}]}));
    p.add(
        "ClusterRole",
        &json!({"metadata": {"name": "status-writer"},
        "rules": [{"apiGroups": ["*"], "resources": ["*/status"], "verbs": ["update"]}]}),
    );
    p.add("Role", &json!({"metadata": {"name": "cm-one", "namespace": "team"},
        "rules": [{"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["settings"], "verbs": ["get", "update"]}]}));
    p.add("RoleBinding", &json!({"metadata": {"name": "read-pods", "namespace": "team"},
        "roleRef": {"kind": "ClusterRole", "name": "pod-reader"},
        "subjects": [{"kind": "ServiceAccount", "name": "bot"}, {"kind": "Group", "name": "devs"}]}));
    p.add("RoleBinding", &json!({"metadata": {"name": "settings", "namespace": "team"},
        "roleRef": {"kind": "Role", "name": "cm-one"}, "subjects": [{"kind": "User", "name": "ann"}]}));
    p.add("ClusterRoleBinding", &json!({"metadata": {"name": "status"},
        "roleRef": {"kind": "ClusterRole", "name": "status-writer"}, "subjects": [{"kind": "User", "name": "ann"}]}));
    p.add("ClusterRoleBinding", &json!({"metadata": {"name": "dangling"},
        "roleRef": {"kind": "ClusterRole", "name": "gone"}, "subjects": [{"kind": "User", "name": "bob"}]}));
    p
}

#[test]
fn bindings_grant_their_roles_rules_where_they_apply() {
    let p = policy();
    let bot = user(
        "system:serviceaccount:team:bot",
        &["system:serviceaccounts"],
    );
    let d = p.authorize(&bot, &resource("list", "", "pods", "team", ""));
    assert_eq!(
        d,
        Decision {
            allowed: true,
            reason: r#"RBAC: allowed by RoleBinding "read-pods/team" of ClusterRole "pod-reader" to ServiceAccount "bot/team""#.into()
        }
    );
    // A RoleBinding grants in its namespace only; a verb it lacks is refused.
    assert!(
        !p.authorize(&bot, &resource("list", "", "pods", "other", ""))
            .allowed
    );
    assert!(
        !p.authorize(&bot, &resource("delete", "", "pods", "team", "x"))
            .allowed
    );
    // Groups, subresources named exactly, `*/status`, resource names.
    let dev = user("carl", &["devs"]);
    assert!(
        p.authorize(&dev, &resource("get", "", "pods", "team", "x"))
            .allowed
    );
    let mut log = resource("get", "", "pods", "team", "x");
    log.subresource = "log".into();
    assert!(p.authorize(&dev, &log).allowed);
    log.subresource = "exec".into();
    assert!(!p.authorize(&dev, &log).allowed);
    let ann = user("ann", &[]);
    let mut status = resource("update", "apps", "deployments", "any", "web");
    status.subresource = "status".into();
    let d = p.authorize(&ann, &status);
    assert_eq!(
        d.reason,
        r#"RBAC: allowed by ClusterRoleBinding "status" of ClusterRole "status-writer" to User "ann""#
    );
    assert!(
        p.authorize(&ann, &resource("get", "", "configmaps", "team", "settings"))
            .allowed
    );
    assert!(
        !p.authorize(&ann, &resource("get", "", "configmaps", "team", "other"))
            .allowed
    );
    assert!(
        !p.authorize(&ann, &resource("list", "", "configmaps", "team", ""))
            .allowed,
        "a named rule never lists"
    );
}

#[test]
fn refusals_carry_the_errors_met() {
    let p = policy();
    let d = p.authorize(&user("bob", &[]), &resource("get", "", "pods", "team", "x"));
    assert_eq!(
        d,
        Decision {
            allowed: false,
            reason: r#"RBAC: clusterrole.rbac.authorization.k8s.io "gone" not found"#.into()
        }
    );
    assert_eq!(
        p.authorize(&user("zed", &[]), &resource("get", "", "pods", "team", "x"))
            .reason,
        ""
    );
}

#[test]
fn non_resource_urls_match_exactly_or_by_prefix() {
    let rule = Rule::from_json(&json!({"nonResourceURLs": ["/api", "/apis/*"], "verbs": ["get"]}));
    let path = |p: &str| Attributes {
        verb: "get".into(),
        path: p.into(),
        ..Attributes::default()
    };
    assert!(rule.allows(&path("/api")));
    assert!(!rule.allows(&path("/api/v1")));
    assert!(rule.allows(&path("/apis/apps/v1")));
}

#[test]
fn escalation_is_what_the_owner_does_not_hold() {
    let owned = vec![Rule::from_json(
        &json!({"apiGroups": [""], "resources": ["pods", "*/status"], "verbs": ["get", "list"]}),
    )];
    let wanted = vec![
        Rule::from_json(
            &json!({"apiGroups": [""], "resources": ["pods", "services/status"], "verbs": ["get"]}),
        ),
        Rule::from_json(
            &json!({"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list", "delete"]}),
        ),
        Rule::from_json(
            &json!({"apiGroups": [""], "resources": ["pods"], "resourceNames": ["a"], "verbs": ["delete"]}),
        ),
    ];
    assert_eq!(
        not_covered(&owned, &wanted),
        [
            r#"{APIGroups:[""], Resources:["pods"], ResourceNames:["a"], Verbs:["delete"]}"#,
            r#"{APIGroups:[""], Resources:["secrets"], Verbs:["get" "list" "delete"]}"#,
        ]
    );
    let all = vec![Rule::from_json(
        &json!({"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}),
    )];
    assert!(not_covered(&all, &wanted).is_empty());
}
