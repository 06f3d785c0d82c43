//! Real kubectl (the preinstalled 1.33 and 1.37 from PyPI) against a real
//! sy-apiserver on loopback: the commands of everyday use, end to end.
mod common;

use common::{Backend, Kubectl, Server, kubectl_dispatcher, kubectl_newest};
use serde_json::json;

/// The example users are pointed to (README, docs/control-plane.md).
const APP: &str = include_str!("../../examples/web-app.yaml");

fn everyday_commands(bin: std::path::PathBuf, backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_on(backend, &dir.path().join("data"));
    let k = Kubectl::new(bin, &server, &dir.path().join("home"));

    // create -f with a multi-document file
    let out = k.ok_stdin(&["create", "-f", "-"], APP);
    for made in [
        "deployment.apps/web created",
        "service/web created",
        "configmap/web-config created",
    ] {
        assert!(out.contains(made), "{out}");
    }
    // get: table, yaml, json, set-based selectors
    let table = k.ok(&["get", "svc"]);
    assert!(
        table.contains("CLUSTER-IP") && table.contains("80/TCP,81/TCP"),
        "{table}"
    );
    let svc = k.json(&["get", "svc", "web"]);
    let ip = svc["spec"]["clusterIP"].as_str().unwrap().to_owned();
    assert!(
        ip.starts_with("10.9") || ip.starts_with("10.10") || ip.starts_with("10.11"),
        "{ip}"
    );
    assert_eq!(svc["spec"]["ports"][0]["protocol"], "TCP");
    assert!(
        k.ok(&["get", "deploy", "web", "-o", "yaml"])
            .contains("replicas: 2")
    );
    let names = k.ok(&[
        "get",
        "svc,cm",
        "-l",
        "tier in (fe,config),app",
        "-o",
        "name",
    ]);
    assert_eq!(
        names.lines().collect::<Vec<_>>(),
        ["service/web", "configmap/web-config"]
    );
    assert_eq!(
        k.ok(&["get", "cm", "-l", "tier notin (config)", "-o", "name"])
            .trim(),
        "",
        "notin excludes"
    );

    // apply twice, the second time with a list item removed and one changed
    let applied = APP.replace("web-config", "web-config-2");
    k.ok_stdin(&["apply", "-f", "-"], &applied);
    let edited = applied
        .replace("  - {name: metrics, port: 81, targetPort: 9090}\n", "")
        .replace("targetPort: 8080", "targetPort: 8081");
    let out = k.ok_stdin(&["apply", "-f", "-"], &edited);
    assert!(out.contains("service/web configured"), "{out}");
    let ports = k.json(&["get", "svc", "web"])["spec"]["ports"].clone();
    assert_eq!(ports.as_array().unwrap().len(), 1, "{ports}");
    assert_eq!(ports[0]["targetPort"], 8081);
    assert_eq!(
        k.json(&["get", "svc", "web"])["spec"]["clusterIP"],
        ip.as_str(),
        "apply kept the ClusterIP"
    );

    // label, scale, three kinds of patch
    k.ok(&["label", "svc", "web", "env=prod"]);
    k.ok(&["scale", "deploy", "web", "--replicas=3"]);
    let deploy = k.json(&["get", "deploy", "web"]);
    assert_eq!(
        (
            deploy["spec"]["replicas"].as_u64(),
            deploy["metadata"]["generation"].as_u64()
        ),
        (Some(3), Some(2))
    );
    k.ok(&[
        "patch",
        "cm",
        "web-config",
        "--type=merge",
        "-p",
        r#"{"data":{"greeting":"hi"}}"#,
    ]);
    k.ok(&[
        "patch",
        "cm",
        "web-config",
        "--type=json",
        "-p",
        r#"[{"op":"add","path":"/data/extra","value":"1"}]"#,
    ]);
    k.ok(&[
        "patch",
        "deploy",
        "web",
        "-p",
        r#"{"spec":{"template":{"spec":{"containers":[{"name":"web","image":"web:2"}]}}}}"#,
    ]);
    assert_eq!(
        k.json(&["get", "cm", "web-config"])["data"],
        serde_json::json!({"greeting": "hi", "extra": "1"})
    );
    let c = &k.json(&["get", "deploy", "web"])["spec"]["template"]["spec"]["containers"];
    assert_eq!(
        (c.as_array().unwrap().len(), c[0]["image"].as_str()),
        (1, Some("web:2")),
        "strategic merge by name"
    );
    assert_eq!(
        k.json(&["get", "svc", "web"])["metadata"]["labels"]["env"],
        "prod"
    );

    // delete waits and returns; the object is gone
    k.ok(&["delete", "svc", "web"]);
    let gone = k.run(&["get", "svc", "web"]);
    assert!(!gone.status.success());
    assert!(String::from_utf8_lossy(&gone.stderr).contains("services \"web\" not found"));

    // api-resources from discovery
    let resources = k.ok(&["api-resources"]);
    for r in [
        "deployments",
        "endpointslices",
        "leases",
        "replicationcontrollers",
        "serviceaccounts",
    ] {
        assert!(resources.contains(r), "{r} missing from:\n{resources}");
    }
}

#[test]
fn kubectl_1_33_everyday_commands() {
    everyday_commands(kubectl_dispatcher(), Backend::Embedded);
}

#[test]
fn kubectl_1_33_everyday_commands_on_etcd() {
    everyday_commands(kubectl_dispatcher(), Backend::Etcd);
}

#[test]
fn kubectl_1_37_everyday_commands() {
    everyday_commands(kubectl_newest(), Backend::Embedded);
}

#[test]
fn kubectl_1_37_everyday_commands_on_etcd() {
    everyday_commands(kubectl_newest(), Backend::Etcd);
}

/// kubectl's typed generators (they send protobuf bodies and ask for
/// protobuf answers): each command succeeds and its object reads back.
fn generators(bin: std::path::PathBuf, backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_on(backend, &dir.path().join("data"));
    let k = Kubectl::new(bin, &server, &dir.path().join("home"));

    assert!(
        k.ok(&["create", "namespace", "x"])
            .contains("namespace/x created")
    );
    assert_eq!(k.json(&["get", "ns", "x"])["status"]["phase"], "Active");
    k.ok(&["create", "configmap", "c", "-n", "x", "--from-literal=a=1"]);
    assert_eq!(
        k.json(&["get", "cm", "c", "-n", "x"])["data"],
        json!({"a": "1"})
    );
    k.ok(&["create", "secret", "generic", "s", "--from-literal=a=b"]);
    let secret = k.json(&["get", "secret", "s"]);
    assert_eq!(
        (secret["type"].as_str(), secret["data"]["a"].as_str()),
        (Some("Opaque"), Some("Yg=="))
    );

    k.ok(&[
        "create",
        "deployment",
        "web",
        "--image=nginx",
        "--port=80",
        "--replicas=2",
    ]);
    let d = k.json(&["get", "deploy", "web"]);
    assert_eq!(d["spec"]["replicas"], 2);
    assert_eq!(d["spec"]["selector"]["matchLabels"], json!({"app": "web"}));
    let c = &d["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        (c["image"].as_str(), c["ports"][0]["containerPort"].as_u64()),
        (Some("nginx"), Some(80))
    );
    k.ok(&[
        "create",
        "deployment",
        "idle",
        "--image=nginx",
        "--replicas=0",
    ]);
    assert_eq!(
        k.json(&["get", "deploy", "idle"])["spec"]["replicas"],
        0,
        "a pointer's zero is kept"
    );

    assert!(
        k.ok(&[
            "expose",
            "deployment",
            "web",
            "--port=80",
            "--target-port=8080"
        ])
        .contains("service/web exposed")
    );
    let svc = k.json(&["get", "svc", "web"]);
    assert_eq!(svc["spec"]["selector"], json!({"app": "web"}));
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], 8080);
    assert!(
        svc["spec"]["clusterIP"]
            .as_str()
            .unwrap()
            .starts_with("10."),
        "{svc}"
    );
    k.ok(&["create", "service", "nodeport", "np", "--tcp=80:8080"]);
    let np = k.json(&["get", "svc", "np"]);
    let node_port = np["spec"]["ports"][0]["nodePort"].as_u64().unwrap();
    assert!((30_000..=32_767).contains(&node_port), "{np}");
    k.ok(&[
        "create",
        "service",
        "clusterip",
        "headless",
        "--clusterip=None",
    ]);
    assert_eq!(
        k.json(&["get", "svc", "headless"])["spec"]["clusterIP"],
        "None"
    );
    k.ok(&[
        "create",
        "service",
        "externalname",
        "ext",
        "--external-name=example.com",
    ]);
    let ext = k.json(&["get", "svc", "ext"]);
    assert_eq!(
        (ext["spec"]["type"].as_str(), ext["spec"].get("clusterIP")),
        (Some("ExternalName"), None)
    );

    k.ok(&["create", "serviceaccount", "robot"]);
    assert_eq!(k.json(&["get", "sa", "robot"])["metadata"]["name"], "robot");
    k.ok(&[
        "create",
        "job",
        "once",
        "--image=busybox",
        "--",
        "echo",
        "hi",
    ]);
    let job = k.json(&["get", "job", "once"]);
    let pod_spec = &job["spec"]["template"]["spec"];
    assert_eq!(pod_spec["containers"][0]["command"], json!(["echo", "hi"]));
    assert_eq!(pod_spec["restartPolicy"], "Never");
    k.ok(&[
        "run",
        "one",
        "--image=nginx",
        "--port=80",
        "--labels=app=one",
    ]);
    let pod = k.json(&["get", "pod", "one"]);
    assert_eq!(pod["metadata"]["labels"], json!({"app": "one"}));
    assert_eq!(
        pod["spec"]["containers"][0]["ports"][0]["containerPort"],
        80
    );

    k.ok(&["scale", "deploy", "web", "--replicas=3"]);
    k.ok(&["set", "image", "deploy/web", "nginx=nginx:1.27"]);
    k.ok(&["rollout", "restart", "deploy/web"]);
    let d = k.json(&["get", "deploy", "web"]);
    assert_eq!(d["spec"]["replicas"], 3);
    let template = &d["spec"]["template"];
    assert_eq!(template["spec"]["containers"][0]["image"], "nginx:1.27");
    assert!(
        template["metadata"]["annotations"]["kubectl.kubernetes.io/restartedAt"].is_string(),
        "{template}"
    );
}

#[test]
fn kubectl_1_33_generators() {
    generators(kubectl_dispatcher(), Backend::Embedded);
}

#[test]
fn kubectl_1_33_generators_on_etcd() {
    generators(kubectl_dispatcher(), Backend::Etcd);
}

#[test]
fn kubectl_1_37_generators() {
    generators(kubectl_newest(), Backend::Embedded);
}

#[test]
fn kubectl_1_37_generators_on_etcd() {
    generators(kubectl_newest(), Backend::Etcd);
}

#[test]
fn refusals_are_status_objects_with_causes() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));
    let k = Kubectl::new(kubectl_dispatcher(), &server, &dir.path().join("home"));
    let bad = "apiVersion: v1\nkind: Service\nmetadata: {name: Bad_Name}\nspec:\n  ports:\n  - {port: 0}\n";
    let out = k.run_stdin(&["create", "-f", "-"], bad);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("is invalid")
            && err.contains("metadata.name")
            && err.contains("spec.ports[0].port"),
        "{err}"
    );
    let (code, status) = server.json(
        "POST",
        "/api/v1/namespaces/nope/configmaps",
        r#"{"metadata":{"name":"x"}}"#,
    );
    assert_eq!(
        (code, status["reason"].as_str()),
        (404, Some("NotFound")),
        "{status}"
    );
    let (code, _) = server.json("GET", "/api/v1/namespaces/default/configmaps/x", "");
    assert_eq!(code, 404);
}
