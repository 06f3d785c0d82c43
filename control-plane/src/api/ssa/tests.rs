//! Ownership and apply as upstream's field manager keeps them.
use serde_json::{Value, json};

use super::*;

fn writer<'a>(manager: &'a str) -> Writer<'a> {
    Writer {
        manager,
        subresource: "",
        api_version: "apps/v1",
        time: "2026-11-30T00:00:00Z",
        has_status: true,
    }
}

fn deploy() -> Ty {
    Ty::of_kind("apps/v1", "Deployment").unwrap()
}

fn owners(obj: &Value) -> Vec<(String, String, Vec<String>)> {
    managers_of(obj)
        .into_iter()
        .map(|e| {
            (
                e.manager,
                e.operation.name().to_owned(),
                e.set.paths().iter().map(|p| display(p)).collect(),
            )
        })
        .collect()
}

#[test]
fn a_create_owns_what_it_set_but_not_identity_or_status() {
    let mut obj = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "uid": "u", "labels": {"app": "web"}},
                         "spec": {"replicas": 2}, "status": {"replicas": 0}});
    record_update(&deploy(), None, &mut obj, &writer("kubectl-create"));
    assert_eq!(
        owners(&obj),
        [(
            "kubectl-create".into(),
            "Update".into(),
            vec![
                ".metadata.labels".into(),
                ".metadata.labels.app".into(),
                ".spec.replicas".into()
            ]
        )]
    );
    // As upstream writes it: the labels map did not exist before (a member,
    // `.`), the spec struct always did.
    let entry = &obj["metadata"]["managedFields"][0];
    assert_eq!(
        entry["fieldsV1"],
        json!({"f:metadata": {"f:labels": {".": {}, "f:app": {}}}, "f:spec": {"f:replicas": {}}})
    );
    assert_eq!(
        (entry["apiVersion"].as_str(), entry["fieldsType"].as_str()),
        (Some("apps/v1"), Some("FieldsV1"))
    );
}

#[test]
fn appliers_conflict_on_values_they_disagree_on_and_force_takes_them() {
    let live = apply(
        &deploy(),
        &json!({}),
        &json!({"spec": {"replicas": 2, "paused": false}}),
        &writer("a"),
        false,
    )
    .unwrap();
    // The same value is shared, not a conflict.
    let shared = apply(
        &deploy(),
        &live,
        &json!({"spec": {"replicas": 2}}),
        &writer("b"),
        false,
    )
    .unwrap();
    assert_eq!(owners(&shared).len(), 2);
    let e = apply(
        &deploy(),
        &shared,
        &json!({"spec": {"replicas": 3}}),
        &writer("b"),
        false,
    )
    .unwrap_err();
    assert_eq!(e.code.as_u16(), 409);
    assert_eq!(
        e.message,
        "Apply failed with 1 conflict: conflict with \"a\": .spec.replicas"
    );
    assert_eq!(
        (
            e.causes[0].reason,
            e.causes[0].field.as_str(),
            e.causes[0].message.as_str()
        ),
        (
            "FieldManagerConflict",
            ".spec.replicas",
            "conflict with \"a\""
        )
    );
    let forced = apply(
        &deploy(),
        &shared,
        &json!({"spec": {"replicas": 3}}),
        &writer("b"),
        true,
    )
    .unwrap();
    assert_eq!(forced["spec"]["replicas"], 3);
    assert_eq!(
        owners(&forced),
        [
            ("a".into(), "Apply".into(), vec![".spec.paused".into()]),
            ("b".into(), "Apply".into(), vec![".spec.replicas".into()])
        ]
    );
}

#[test]
fn an_applier_dropping_a_field_removes_it_unless_shared() {
    let live = apply(
        &deploy(),
        &json!({}),
        &json!({"metadata": {"labels": {"a": "1", "b": "2"}}, "spec": {"paused": true}}),
        &writer("a"),
        false,
    )
    .unwrap();
    let live = apply(
        &deploy(),
        &live,
        &json!({"metadata": {"labels": {"b": "2"}}}),
        &writer("other"),
        false,
    )
    .unwrap();
    let after = apply(
        &deploy(),
        &live,
        &json!({"metadata": {"labels": {"a": "1"}}}),
        &writer("a"),
        false,
    )
    .unwrap();
    assert_eq!(
        after["metadata"]["labels"],
        json!({"a": "1", "b": "2"}),
        "b is also other's"
    );
    assert!(after["spec"].get("paused").is_none(), "paused was only a's");
}

#[test]
fn updates_take_ownership_and_appliers_then_conflict_with_them() {
    let live = apply(
        &deploy(),
        &json!({}),
        &json!({"spec": {"replicas": 2}}),
        &writer("kubectl"),
        false,
    )
    .unwrap();
    let mut scaled = live.clone();
    scaled["spec"]["replicas"] = json!(5);
    let scale = Writer {
        subresource: "scale",
        ..writer("kubectl-scale")
    };
    record_update(&deploy(), Some(&live), &mut scaled, &scale);
    let e = apply(
        &deploy(),
        &scaled,
        &json!({"spec": {"replicas": 2}}),
        &writer("kubectl"),
        false,
    )
    .unwrap_err();
    assert_eq!(
        e.message,
        "Apply failed with 1 conflict: conflict with \"kubectl-scale\" with subresource \"scale\" using apps/v1: .spec.replicas"
    );
}

#[test]
fn managers_are_named_as_upstream_does() {
    assert_eq!(
        manager_name(Some("kubectl-create"), Some("kubectl/v1.37")),
        "kubectl-create"
    );
    assert_eq!(
        manager_name(None, Some("OpenAPI-Generator/37.0.2/python")),
        "OpenAPI-Generator"
    );
}

#[test]
fn kubectl_takes_over_what_its_client_side_apply_set() {
    // `kubectl apply` (client-side) created it: its annotation holds replicas 2.
    let last = r#"{"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"web"},"spec":{"replicas":2}}"#;
    let mut live = json!({"apiVersion": "apps/v1", "kind": "Deployment",
                          "metadata": {"name": "web", "annotations": {LAST_APPLIED: last}},
                          "spec": {"replicas": 2, "paused": true}});
    record_update(
        &deploy(),
        None,
        &mut live,
        &writer("kubectl-client-side-apply"),
    );
    let config = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"}, "spec": {"replicas": 3}});
    // Another manager conflicts, whatever the annotation says …
    assert_eq!(
        apply(&deploy(), &live, &config, &writer("other"), false)
            .unwrap_err()
            .code
            .as_u16(),
        409
    );
    // … kubectl does not, and its configuration becomes the annotation.
    let after = apply(&deploy(), &live, &config, &writer("kubectl"), false).unwrap();
    assert_eq!(after["spec"]["replicas"], 3);
    assert_eq!(
        after["metadata"]["annotations"][LAST_APPLIED],
        r#"{"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"web"},"spec":{"replicas":3}}"#
    );
    // A field changed since the annotation was written is a conflict still.
    let mut paused = live.clone();
    paused["spec"]["replicas"] = json!(4);
    record_update(&deploy(), Some(&live), &mut paused, &writer("kubectl-edit"));
    let e = apply(&deploy(), &paused, &config, &writer("kubectl"), false).unwrap_err();
    assert_eq!(
        e.causes[0].message,
        "conflict with \"kubectl-edit\" using apps/v1"
    );
}

#[test]
fn unmanaged_objects_are_not_tracked_by_updates_and_first_applies_meet_their_fields() {
    let live = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "uid": "u"}, "spec": {"replicas": 2}});
    let mut updated = live.clone();
    updated["spec"]["paused"] = json!(true);
    record_update(
        &deploy(),
        Some(&live),
        &mut updated,
        &writer("kubectl-edit"),
    );
    assert!(updated["metadata"].get("managedFields").is_none());
    let e = apply(
        &deploy(),
        &updated,
        &json!({"spec": {"replicas": 3}}),
        &writer("a"),
        false,
    )
    .unwrap_err();
    assert_eq!(
        e.message,
        "Apply failed with 1 conflict: conflict with \"before-first-apply\" using apps/v1: .spec.replicas"
    );
}

#[test]
fn entries_are_stamped_only_when_their_write_changed_something() {
    let config = json!({"spec": {"replicas": 2}});
    let live = apply(&deploy(), &json!({}), &config, &writer("a"), false).unwrap();
    let later = Writer {
        time: "2026-12-01T00:00:00Z",
        ..writer("a")
    };
    let again = apply(&deploy(), &live, &config, &later, false).unwrap();
    assert_eq!(again, live, "an apply that changes nothing changes nothing");
    let mut touched = live.clone();
    record_update(
        &deploy(),
        Some(&live),
        &mut touched,
        &Writer {
            time: "2026-12-01T00:00:00Z",
            ..writer("b")
        },
    );
    assert_eq!(touched, live);
}

#[test]
fn more_than_ten_updaters_are_merged_into_ancient_changes() {
    let mut obj = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "labels": {}}});
    record_update(&deploy(), None, &mut obj, &writer("creator"));
    for i in 0..11 {
        let old = obj.clone();
        obj["metadata"]["labels"][format!("l{i}")] = json!("x");
        let (name, time) = (format!("m{i:02}"), format!("2026-11-30T00:00:{i:02}Z"));
        record_update(
            &deploy(),
            Some(&old),
            &mut obj,
            &Writer {
                time: &time,
                ..writer(&name)
            },
        );
    }
    let names: Vec<String> = owners(&obj).into_iter().map(|(m, _, _)| m).collect();
    assert_eq!(names.len(), 10);
    assert_eq!(names[0], "ancient-changes", "{names:?}");
    let ancient = &owners(&obj)[0].2;
    assert!(
        ancient.contains(&".metadata.labels.l0".to_owned())
            && ancient.contains(&".metadata.labels.l1".to_owned()),
        "{ancient:?}"
    );
}

#[test]
fn a_list_this_applier_owned_whole_stays_while_it_applies_items() {
    let svc = Ty::of_kind("v1", "Service").unwrap();
    let v1 = Writer {
        api_version: "v1",
        ..writer("kubectl")
    };
    // As after kubectl's migration from client-side apply: the list itself
    // is the applier's, with its items.
    let mut live = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
                          "spec": {"ports": [{"port": 80, "protocol": "TCP"}, {"port": 81, "protocol": "TCP"}]}});
    record_update(&svc, None, &mut live, &v1);
    live["metadata"]["managedFields"][0]["operation"] = json!("Apply");
    let after = apply(
        &svc,
        &live,
        &json!({"spec": {"ports": [{"port": 80}]}}),
        &v1,
        false,
    )
    .unwrap();
    assert_eq!(
        after["spec"]["ports"],
        json!([{"port": 80, "protocol": "TCP"}])
    );
}
