//! Service type changes as upstream makes them, driven by kubectl 1.33 and
//! 1.37 on both stores: what only the old type used is cleared and freed
//! (ClusterIPs, node ports, health-check ports), the new type gets what it
//! needs; a value the client changed itself is judged, not cleared.
mod common;

use common::{Backend, Kubectl, Server, kubectl_dispatcher, kubectl_newest};
use serde_json::Value;

fn spec(k: &Kubectl, name: &str) -> Value {
    k.json(&["get", "svc", name])["spec"].clone()
}

fn patch(k: &Kubectl, name: &str, patch: &str) {
    k.ok(&["patch", "svc", name, "--type=merge", "-p", patch]);
}

fn type_changes(bin: std::path::PathBuf, backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_on(backend, &dir.path().join("data"));
    let k = Kubectl::new(bin, &server, &dir.path().join("home"));

    // ExternalName → ClusterIP: the Service gets an address it can be served on.
    k.ok(&[
        "create",
        "service",
        "externalname",
        "ext",
        "--external-name=example.com",
    ]);
    assert!(spec(&k, "ext").get("clusterIP").is_none());
    patch(
        &k,
        "ext",
        r#"{"spec":{"type":"ClusterIP","externalName":null,"ports":[{"port":80}]}}"#,
    );
    let s = spec(&k, "ext");
    let ip = s["clusterIP"].as_str().expect("a ClusterIP").to_owned();
    assert!(ip.starts_with("10."), "{s}");
    assert_eq!(s["clusterIPs"], serde_json::json!([ip]));
    assert_eq!(s["ipFamilyPolicy"], "SingleStack");

    // ClusterIP → ExternalName: the address is cleared and free for another.
    patch(
        &k,
        "ext",
        r#"{"spec":{"type":"ExternalName","externalName":"example.org"}}"#,
    );
    let s = spec(&k, "ext");
    for gone in ["clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"] {
        assert!(s.get(gone).is_none(), "{gone} in {s}");
    }
    k.ok_stdin(
        &["apply", "-f", "-"],
        &format!("apiVersion: v1\nkind: Service\nmetadata: {{name: reuse}}\nspec:\n  clusterIP: {ip}\n  ports: [{{port: 80}}]\n"),
    );
    assert_eq!(
        spec(&k, "reuse")["clusterIP"],
        ip.as_str(),
        "the released address"
    );

    // NodePort re-applied as ClusterIP: the node port is cleared and freed.
    let np = |ty: &str, node_port: &str| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: np}}\nspec:\n  type: {ty}\n  selector: {{app: web}}\n  ports: [{{port: 80{node_port}}}]\n"
        )
    };
    k.ok_stdin(&["apply", "-f", "-"], &np("NodePort", ", nodePort: 30100"));
    assert_eq!(spec(&k, "np")["ports"][0]["nodePort"], 30100);
    k.ok_stdin(&["apply", "-f", "-"], &np("ClusterIP", ""));
    let s = spec(&k, "np");
    assert!(s["ports"][0].get("nodePort").is_none(), "{s}");
    assert!(s.get("externalTrafficPolicy").is_none(), "{s}");
    k.ok(&[
        "create",
        "service",
        "nodeport",
        "taker",
        "--tcp=81:81",
        "--node-port=30100",
    ]);
    assert_eq!(
        spec(&k, "taker")["ports"][0]["nodePort"],
        30100,
        "the freed node port"
    );

    // ClusterIP → LoadBalancer (Local): node ports and a health-check port appear.
    patch(
        &k,
        "np",
        r#"{"spec":{"type":"LoadBalancer","externalTrafficPolicy":"Local"}}"#,
    );
    let s = spec(&k, "np");
    let health = s["healthCheckNodePort"]
        .as_u64()
        .expect("a health-check port");
    assert!(s["ports"][0]["nodePort"].as_u64().is_some(), "{s}");
    assert_eq!(s["allocateLoadBalancerNodePorts"], true);
    // … and back to NodePort: the health-check port goes and is free again.
    patch(
        &k,
        "np",
        r#"{"spec":{"type":"NodePort","externalTrafficPolicy":"Cluster"}}"#,
    );
    let s = spec(&k, "np");
    assert!(
        s.get("healthCheckNodePort").is_none() && s.get("allocateLoadBalancerNodePorts").is_none(),
        "{s}"
    );
    k.ok_stdin(
        &["apply", "-f", "-"],
        &format!("apiVersion: v1\nkind: Service\nmetadata: {{name: lb}}\nspec:\n  type: LoadBalancer\n  externalTrafficPolicy: Local\n  healthCheckNodePort: {health}\n  ports: [{{port: 80}}]\n"),
    );
    assert_eq!(spec(&k, "lb")["healthCheckNodePort"], health);

    // A node port the client asks for on a ClusterIP Service is refused.
    let out = k.run(&[
        "patch", "svc", "np", "--type=json", "-p",
        r#"[{"op":"replace","path":"/spec/type","value":"ClusterIP"},{"op":"replace","path":"/spec/ports/0/nodePort","value":30200}]"#,
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains(
            "spec.ports[0].nodePort: Forbidden: may not be used when `type` is 'ClusterIP'"
        ),
        "{err}"
    );
    assert_eq!(spec(&k, "np")["type"], "NodePort", "nothing applied");
}

#[test]
fn kubectl_1_33_service_type_changes() {
    type_changes(kubectl_dispatcher(), Backend::Embedded);
}

#[test]
fn kubectl_1_33_service_type_changes_on_etcd() {
    type_changes(kubectl_dispatcher(), Backend::Etcd);
}

#[test]
fn kubectl_1_37_service_type_changes() {
    type_changes(kubectl_newest(), Backend::Embedded);
}

#[test]
fn kubectl_1_37_service_type_changes_on_etcd() {
    type_changes(kubectl_newest(), Backend::Etcd);
}
