//! Upstream's validation and `fieldValidation`, as kubectl 1.33 and 1.37
//! and raw HTTP see them, on both stores: each refusal names the field and
//! nothing of a refused write is stored.
mod common;

use common::{Backend, Kubectl, Server, kubectl_dispatcher, kubectl_newest};
use serde_json::{Value, json};

const SVC: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  selector: {app: web}\n  ports: [{port: 80}]\n";

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn kubectl_checks(bin: std::path::PathBuf, backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_on(backend, &dir.path().join("data"));
    let k = Kubectl::new(bin, &server, &dir.path().join("home"));

    // A misspelt field: kubectl asks for Strict, upstream refuses with the path.
    let misspelt = SVC.replace("selector:", "selectr:");
    let out = k.run_stdin(&["apply", "-f", "-"], &misspelt);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains(
            "Service in version \"v1\" cannot be handled as a Service: strict decoding error: unknown field \"spec.selectr\""
        ),
        "{}",
        stderr(&out)
    );
    assert!(
        !k.run(&["get", "svc", "web"]).status.success(),
        "nothing was created"
    );
    // --validate=warn: created, the field reported and dropped.
    let out = k.run_stdin(&["apply", "--validate=warn", "-f", "-"], &misspelt);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("unknown field \"spec.selectr\""),
        "{}",
        stderr(&out)
    );
    assert!(
        k.json(&["get", "svc", "web"])["spec"]
            .get("selectr")
            .is_none()
    );
    k.ok(&["delete", "svc", "web"]);

    // On an existing object client-side apply patches: a 422 on `patch`, nothing changed.
    k.ok_stdin(&["apply", "-f", "-"], SVC);
    let before = k.json(&["get", "svc", "web"])["metadata"]["resourceVersion"].clone();
    let out = k.run_stdin(
        &["apply", "-f", "-"],
        &SVC.replace("ports:", "portz: 1\n  ports:"),
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("patch: Invalid value")
            && stderr(&out).contains("strict decoding error: unknown field \"spec.portz\""),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        k.json(&["get", "svc", "web"])["metadata"]["resourceVersion"],
        before
    );

    continue_with_resource_version(&k);

    // Objects upstream refuses, each with its field path.
    for (manifest, expected) in [
        (slice("169.254.1.1"), "endpoints[0].addresses[0]: Invalid value: \"169.254.1.1\": may not be in the link-local range (169.254.0.0/16, fe80::/10)"),
        (slice("127.0.0.1"), "endpoints[0].addresses[0]: Invalid value: \"127.0.0.1\": may not be in the loopback range (127.0.0.0/8, ::1/128)"),
        (slice("not-an-ip"), "endpoints[0].addresses[0]: Invalid value: \"not-an-ip\": must be a valid IPv4 address"),
        (
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec:\n  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: api}}\n    spec: {containers: [{name: web, image: nginx}]}\n".to_owned(),
            "spec.template.metadata.labels: Invalid value: map[string]string{\"app\":\"api\"}: `selector` does not match template `labels`",
        ),
        (
            "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers: [{name: c, image: i, readinessProbe: {periodSeconds: 5}}]\n".to_owned(),
            "spec.containers[0].readinessProbe: Required value: must specify a handler type",
        ),
        (
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\ndata: {\"no/slash\": x}\n".to_owned(),
            "data[no/slash]: Invalid value: \"no/slash\": a valid config key must consist of alphanumeric characters",
        ),
    ] {
        let out = k.run_stdin(&["create", "-f", "-"], &manifest);
        assert!(!out.status.success(), "{manifest}");
        assert!(stderr(&out).contains("is invalid") && stderr(&out).contains(expected), "{}", stderr(&out));
    }
    for kind in ["endpointslices", "deployments", "pods", "configmaps"] {
        let names = k.ok(&["get", kind, "-o", "name"]);
        // (The server's own objects aside.)
        let own = [
            "configmap/kube-root-ca.crt",
            "endpointslice.discovery.k8s.io/kubernetes",
        ];
        assert!(
            names.lines().all(|l| own.contains(&l)),
            "nothing refused was stored: {names}"
        );
    }
}

/// The issue's list case through `kubectl get --raw`: a continue token with
/// a resourceVersion is upstream's 400.
fn continue_with_resource_version(k: &Kubectl) {
    let page: Value = serde_json::from_str(&k.ok(&[
        "get",
        "--raw",
        "/api/v1/namespaces/default/services?limit=1",
    ]))
    .unwrap();
    let token = page["metadata"]["continue"]
        .as_str()
        .expect("more than one Service")
        .to_owned();
    let out = k.run(&[
        "get",
        "--raw",
        &format!("/api/v1/namespaces/default/services?limit=1&continue={token}&resourceVersion=5"),
    ]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("specifying resource version is not allowed when using continue"),
        "{}",
        stderr(&out)
    );
}

fn slice(address: &str) -> String {
    format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: web-1}}\naddressType: IPv4\nendpoints: [{{addresses: [\"{address}\"]}}]\nports: [{{port: 80}}]\n"
    )
}

#[test]
fn kubectl_1_33_field_validation_and_refusals() {
    kubectl_checks(kubectl_dispatcher(), Backend::Embedded);
}

#[test]
fn kubectl_1_33_field_validation_and_refusals_on_etcd() {
    kubectl_checks(kubectl_dispatcher(), Backend::Etcd);
}

#[test]
fn kubectl_1_37_field_validation_and_refusals() {
    kubectl_checks(kubectl_newest(), Backend::Embedded);
}

#[test]
fn kubectl_1_37_field_validation_and_refusals_on_etcd() {
    kubectl_checks(kubectl_newest(), Backend::Etcd);
}

const CMS: &str = "/api/v1/namespaces/default/configmaps";

fn post(server: &Server, query: &str, body: &str) -> (u16, Value, Vec<String>) {
    let r = server.raw(
        "POST",
        &format!("{CMS}{query}"),
        &[("Content-Type", "application/json")],
        body.as_bytes(),
    );
    let warnings = r
        .headers
        .iter()
        .filter(|(n, _)| n == "warning")
        .map(|(_, v)| v.clone())
        .collect();
    (r.code, serde_json::from_slice(&r.body).unwrap(), warnings)
}

#[test]
fn field_validation_directives_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));
    let body = r#"{"metadata": {"name": "a", "name": "b"}, "data": {"k": "v"}, "dta": {}}"#;
    // Strict: refused, both problems named.
    let (code, status, _) = post(&server, "?fieldValidation=Strict", body);
    assert_eq!(code, 400, "{status}");
    assert_eq!(
        status["message"],
        "ConfigMap in version \"v1\" cannot be handled as a ConfigMap: strict decoding error: duplicate field \"metadata.name\", unknown field \"dta\""
    );
    // Warn (the default): created from the last duplicate, both reported.
    let (code, created, warnings) = post(&server, "", body);
    assert_eq!(code, 201, "{created}");
    assert_eq!(created["metadata"]["name"], "b");
    assert!(created.get("dta").is_none());
    assert_eq!(
        warnings,
        [
            r#"299 - "duplicate field \"metadata.name\"""#,
            r#"299 - "unknown field \"dta\"""#
        ]
    );
    // Ignore: silent.
    let (code, _, warnings) = post(
        &server,
        "?fieldValidation=Ignore",
        &body.replace("\"b\"", "\"c\""),
    );
    assert_eq!((code, warnings.len()), (201, 0));
    // A bad directive, and a wrong type.
    let (code, status, _) = post(
        &server,
        "?fieldValidation=Bogus",
        r#"{"metadata": {"name": "d"}}"#,
    );
    assert_eq!(code, 422);
    assert_eq!(
        status["message"],
        "CreateOptions.meta.k8s.io \"\" is invalid: fieldValidation: Unsupported value: \"Bogus\": supported values: \"\", \"Ignore\", \"Strict\", \"Warn\""
    );
    let (code, status, _) = post(
        &server,
        "",
        r#"{"metadata": {"name": "e"}, "data": {"k": 1}}"#,
    );
    assert_eq!(code, 400);
    assert_eq!(
        status["message"],
        "ConfigMap in version \"v1\" cannot be handled as a ConfigMap: json: cannot unmarshal number into Go struct field ConfigMap.data of type string"
    );
    let (_, list) = server.json("GET", CMS, "");
    let names: Vec<_> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["metadata"]["name"].clone())
        .filter(|n| n != "kube-root-ca.crt")
        .collect();
    assert_eq!(
        names,
        [json!("b"), json!("c")],
        "nothing refused was stored"
    );
    // Server-side apply of an undeclared field: upstream's message, as a 400.
    let r = server.raw(
        "PATCH",
        &format!("{CMS}/f?fieldManager=test"),
        &[("Content-Type", "application/apply-patch+yaml")],
        br#"{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "f"}, "dat": {}}"#,
    );
    let status: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(r.code, 400, "{status}");
    assert_eq!(
        status["message"],
        "failed to create typed patch object (/f; /v1, Kind=ConfigMap): .dat: field not declared in schema"
    );
}
