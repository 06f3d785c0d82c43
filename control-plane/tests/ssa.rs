//! Server-side apply with field ownership, driven by kubectl 1.33 and 1.37
//! on both stores, answered as upstream's field manager answers: who owns
//! what in `managedFields`, 409 conflicts naming field and manager (and
//! their `FieldManagerConflict` causes), `--force-conflicts`, fields an
//! applier drops, no-op applies, the move from client-side apply, and an
//! apply that meets `kubectl scale`'s ownership.
mod common;

use common::{Backend, Kubectl, Server, kubectl_dispatcher, kubectl_newest};
use serde_json::{Value, json};

const CM: &str = "/api/v1/namespaces/default/configmaps";

fn config_map(data: &str) -> String {
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cfg\n  labels: {{app: web}}\ndata: {data}\n"
    )
}

fn managers(obj: &Value) -> Vec<(String, String)> {
    obj["metadata"]["managedFields"]
        .as_array()
        .map(|entries| {
            entries
                .iter()
                .map(|e| {
                    (
                        e["manager"].as_str().unwrap().to_owned(),
                        e["operation"].as_str().unwrap().to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn fields_of<'a>(obj: &'a Value, manager: &str) -> &'a Value {
    obj["metadata"]["managedFields"]
        .as_array()
        .and_then(|m| m.iter().find(|e| e["manager"] == manager))
        .map(|e| &e["fieldsV1"])
        .unwrap_or(&Value::Null)
}

fn get_cm(k: &Kubectl) -> Value {
    k.json(&["get", "cm", "cfg", "--show-managed-fields"])
}

fn stderr_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn ownership(bin: std::path::PathBuf, backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_on(backend, &dir.path().join("data"));
    let k = Kubectl::new(bin, &server, &dir.path().join("home"));
    let apply = |manager: &str, yaml: &str, force: bool| {
        let manager = format!("--field-manager={manager}");
        let mut args = vec!["apply", "--server-side", manager.as_str(), "-f", "-"];
        if force {
            args.push("--force-conflicts");
        }
        k.run_stdin(&args, yaml)
    };

    // A create by apply: the applier owns exactly what it sent.
    let out = apply("kubectl", &config_map("{a: '1', b: '2'}"), false);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let cm = get_cm(&k);
    assert_eq!(managers(&cm), [("kubectl".into(), "Apply".into())]);
    assert_eq!(
        fields_of(&cm, "kubectl"),
        &json!({"f:data": {"f:a": {}, "f:b": {}}, "f:metadata": {"f:labels": {"f:app": {}}}})
    );
    let entry = &cm["metadata"]["managedFields"][0];
    assert_eq!(
        (entry["apiVersion"].as_str(), entry["fieldsType"].as_str()),
        (Some("v1"), Some("FieldsV1"))
    );
    assert!(
        entry["time"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{entry}"
    );

    // The same configuration again changes nothing, not even the resourceVersion.
    let rv = cm["metadata"]["resourceVersion"].clone();
    assert!(
        apply("kubectl", &config_map("{a: '1', b: '2'}"), false)
            .status
            .success()
    );
    assert_eq!(get_cm(&k)["metadata"]["resourceVersion"], rv);

    // Another manager agreeing on a value shares it; disagreeing is a conflict.
    assert!(
        apply("other", &config_map("{b: '2'}"), false)
            .status
            .success()
    );
    let out = apply("other", &config_map("{a: '9', c: '3'}"), false);
    assert!(!out.status.success());
    assert!(
        stderr_of(&out)
            .contains(r#"Apply failed with 1 conflict: conflict with "kubectl": .data.a"#),
        "{}",
        stderr_of(&out)
    );
    let cm = get_cm(&k);
    assert_eq!(cm["data"], json!({"a": "1", "b": "2"}), "nothing applied");
    // Two conflicting managers, as upstream lists them.
    assert!(
        apply("third", &config_map("{a: '1'}"), false)
            .status
            .success()
    );
    let out = apply("other", &config_map("{a: '9', b: '7'}"), false);
    let err = stderr_of(&out);
    assert!(
        err.contains("Apply failed with 3 conflicts: conflicts with \"kubectl\":\n- .data.a\n- .data.b\nconflicts with \"third\":\n- .data.a"),
        "{err}"
    );

    // The conflict over the API: 409 with a FieldManagerConflict cause per field.
    let (code, status) = server.http(
        "PATCH",
        &format!("{CM}/cfg?fieldManager=other"),
        "application/apply-patch+yaml",
        &config_map("{a: '9'}"),
    );
    assert_eq!(code, 409, "{status}");
    assert_eq!(status["reason"], "Conflict");
    // Upstream lists causes in no particular order.
    let mut causes = status["details"]["causes"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    causes.sort_by_key(|c| c["message"].to_string());
    assert_eq!(
        Value::Array(causes),
        json!([
            {"reason": "FieldManagerConflict", "message": "conflict with \"kubectl\"", "field": ".data.a"},
            {"reason": "FieldManagerConflict", "message": "conflict with \"third\"", "field": ".data.a"}
        ])
    );

    // Forced, the value and its ownership move to the forcing manager.
    assert!(
        apply("other", &config_map("{a: '9', b: '2'}"), true)
            .status
            .success()
    );
    let cm = get_cm(&k);
    assert_eq!(cm["data"], json!({"a": "9", "b": "2"}));
    assert_eq!(
        fields_of(&cm, "kubectl"),
        &json!({"f:data": {"f:b": {}}, "f:metadata": {"f:labels": {"f:app": {}}}})
    );
    assert_eq!(
        fields_of(&cm, "third"),
        &json!({"f:metadata": {"f:labels": {"f:app": {}}}}),
        "third lost .data.a"
    );

    // A field the applier drops goes, unless someone else owns it too.
    assert!(
        apply("kubectl", &config_map("{b: '2', d: '4'}"), false)
            .status
            .success()
    );
    assert!(
        apply(
            "kubectl",
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: cfg}\ndata: {z: '0'}\n",
            false
        )
        .status
        .success()
    );
    let cm = get_cm(&k);
    assert_eq!(
        cm["data"],
        json!({"a": "9", "b": "2", "z": "0"}),
        "d was kubectl's alone, b is other's too"
    );
    assert_eq!(
        cm["metadata"]["labels"],
        json!({"app": "web"}),
        "the label is other's and third's too"
    );

    // An update (kubectl label) owns what it changed, as an Update entry.
    k.ok(&["label", "cm", "cfg", "team=net"]);
    let cm = get_cm(&k);
    assert!(
        managers(&cm).contains(&("kubectl-label".into(), "Update".into())),
        "{cm}"
    );
    assert_eq!(
        fields_of(&cm, "kubectl-label"),
        &json!({"f:metadata": {"f:labels": {"f:team": {}}}}),
        "the labels map existed: only the new label"
    );
}

/// `kubectl apply` (client-side) then `kubectl apply --server-side`: the
/// fields the client-side apply set are kubectl's to change, its manager
/// entry becomes kubectl's, and fields the new configuration leaves out go.
fn from_client_side_apply(bin: std::path::PathBuf, backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_on(backend, &dir.path().join("data"));
    let k = Kubectl::new(bin, &server, &dir.path().join("home"));
    k.ok_stdin(
        &["apply", "-f", "-"],
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  labels: {app: web, tier: front}\nspec:\n  selector: {app: web}\n  ports:\n  - {name: http, port: 80, targetPort: 8080}\n",
    );
    let second = "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  labels: {app: web}\nspec:\n  selector: {app: web}\n  ports:\n  - {name: http, port: 80, targetPort: 9090}\n  - {name: https, port: 443}\n";
    let out = k.run_stdin(&["apply", "--server-side", "-f", "-"], second);
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert!(
        !stderr_of(&out).contains("Warning"),
        "the migration went through: {}",
        stderr_of(&out)
    );
    let svc = k.json(&["get", "svc", "web", "--show-managed-fields"]);
    assert_eq!(svc["metadata"]["labels"], json!({"app": "web"}));
    let ports: Vec<(u64, Value)> = svc["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["port"].as_u64().unwrap(), p["targetPort"].clone()))
        .collect();
    assert_eq!(ports, [(80, json!(9090)), (443, json!(443))]);
    let names = managers(&svc);
    assert!(
        names.contains(&("kubectl".into(), "Apply".into())),
        "{names:?}"
    );
    assert!(
        !names.iter().any(|(m, _)| m == "kubectl-client-side-apply"),
        "{names:?}"
    );
    assert_eq!(
        fields_of(&svc, "kubectl")["f:spec"]["f:ports"]["k:{\"port\":443,\"protocol\":\"TCP\"}"],
        json!({".": {}, "f:name": {}, "f:port": {}})
    );
    // … and applying it again is a no-op.
    let rv = svc["metadata"]["resourceVersion"].clone();
    k.ok_stdin(&["apply", "--server-side", "-f", "-"], second);
    assert_eq!(
        k.json(&["get", "svc", "web"])["metadata"]["resourceVersion"],
        rv
    );

    // A Deployment scaled by `kubectl scale`: replicas are the scale
    // subresource's manager's, and an apply that changes them conflicts.
    k.ok(&["create", "deployment", "web", "--image=nginx"]);
    k.ok(&["scale", "deployment", "web", "--replicas=3"]);
    let deploy = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec:\n  replicas: 1\n  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n    spec:\n      containers: [{name: nginx, image: nginx}]\n";
    let out = k.run_stdin(&["apply", "--server-side", "-f", "-"], deploy);
    let err = stderr_of(&out);
    assert!(!out.status.success());
    assert!(
        err.contains("Apply failed with 1 conflict: conflict with \"kubectl\" with subresource \"scale\" using apps/v1: .spec.replicas"),
        "{err}"
    );
    assert_eq!(k.json(&["get", "deploy", "web"])["spec"]["replicas"], 3);
    k.ok_stdin(
        &["apply", "--server-side", "--force-conflicts", "-f", "-"],
        deploy,
    );
    let d = k.json(&["get", "deploy", "web", "--show-managed-fields"]);
    assert_eq!(d["spec"]["replicas"], 1);
    let scale_entry = d["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["subresource"] == "scale");
    assert!(
        scale_entry.is_none(),
        "the forced apply took .spec.replicas: {d}"
    );
}

#[test]
fn kubectl_1_33_server_side_apply() {
    ownership(kubectl_dispatcher(), Backend::Embedded);
}

#[test]
fn kubectl_1_33_server_side_apply_on_etcd() {
    ownership(kubectl_dispatcher(), Backend::Etcd);
}

#[test]
fn kubectl_1_37_server_side_apply() {
    ownership(kubectl_newest(), Backend::Embedded);
}

#[test]
fn kubectl_1_37_server_side_apply_on_etcd() {
    ownership(kubectl_newest(), Backend::Etcd);
}

#[test]
fn kubectl_1_33_from_client_side_apply() {
    from_client_side_apply(kubectl_dispatcher(), Backend::Embedded);
}

#[test]
fn kubectl_1_33_from_client_side_apply_on_etcd() {
    from_client_side_apply(kubectl_dispatcher(), Backend::Etcd);
}

#[test]
fn kubectl_1_37_from_client_side_apply() {
    from_client_side_apply(kubectl_newest(), Backend::Embedded);
}

#[test]
fn kubectl_1_37_from_client_side_apply_on_etcd() {
    from_client_side_apply(kubectl_newest(), Backend::Etcd);
}
