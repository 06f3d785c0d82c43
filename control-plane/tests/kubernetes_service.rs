//! The `default/kubernetes` Service: the first address of the range, port
//! 443, an Endpoints and an EndpointSlice at the server's advertised
//! address, repaired when deleted or edited and moved when the server moves.
//! Seen through kubectl 1.33 and 1.37 and the Python client, on both stores.
mod common;

use std::time::{Duration, Instant};

use common::{Backend, Kubectl, Server, kubectl_dispatcher, kubectl_newest, venv};
use serde_json::{Value, json};

fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !ok() {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn endpoints_of(k: &Kubectl) -> (Value, Value) {
    let ep = k.json(&["get", "endpoints", "kubernetes"]);
    let slice = k.json(&["get", "endpointslice", "kubernetes"]);
    (ep, slice)
}

fn kubernetes_service(bin: std::path::PathBuf, backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let extra = [
        "--kubernetes-service-interval",
        "1",
        "--service-cluster-ip-range",
        "10.100.0.0/16",
    ];
    let server = match backend {
        Backend::Embedded => Server::start_with(&data, &extra),
        Backend::Etcd => Server::start_on_etcd(&data, &extra),
    };
    let k = Kubectl::new(bin, &server, &dir.path().join("home"));
    let (host, port) = server.addr.rsplit_once(':').unwrap();
    let port: u64 = port.parse().unwrap();

    let table = k.ok(&["get", "svc", "-A"]);
    assert!(
        table
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>()[..5]
                == ["default", "kubernetes", "ClusterIP", "10.100.0.1", "<none>"]
                && l.contains("443/TCP")),
        "{table}"
    );
    let svc = k.json(&["get", "svc", "kubernetes"]);
    assert_eq!(
        svc["spec"]["ports"],
        json!([{"name": "https", "port": 443, "protocol": "TCP", "targetPort": port}])
    );
    assert!(
        svc["spec"].get("selector").is_none(),
        "its endpoints are the server's own"
    );
    let (ep, slice) = endpoints_of(&k);
    assert_eq!(
        ep["subsets"],
        json!([{"addresses": [{"ip": host}], "ports": [{"name": "https", "port": port, "protocol": "TCP"}]}])
    );
    assert_eq!(
        slice["metadata"]["labels"]["kubernetes.io/service-name"],
        "kubernetes"
    );
    assert_eq!(slice["addressType"], "IPv4");
    assert_eq!(
        slice["endpoints"],
        json!([{"addresses": [host], "conditions": {"ready": true}}])
    );

    // Deleted or edited, they come back as they should be.
    k.ok(&["delete", "endpointslice", "kubernetes"]);
    k.ok(&[
        "patch",
        "svc",
        "kubernetes",
        "--type=merge",
        "-p",
        r#"{"spec":{"ports":[{"name":"x","port":1}]}}"#,
    ]);
    k.ok(&[
        "patch",
        "endpoints",
        "kubernetes",
        "--type=merge",
        "-p",
        r#"{"subsets":[{"addresses":[{"ip":"10.1.2.3"}],"ports":[{"port":1}]}]}"#,
    ]);
    wait_for("the objects are repaired", || {
        let svc = k.json(&["get", "svc", "kubernetes"]);
        let slice = k.run(&["get", "endpointslice", "kubernetes"]);
        let ep = k.json(&["get", "endpoints", "kubernetes"]);
        svc["spec"]["ports"][0]["port"] == 443
            && slice.status.success()
            && ep["subsets"][0]["addresses"][0]["ip"] == host
    });

    // The Python client sees it in an all-namespaces list, as in-cluster tools do.
    let out = std::process::Command::new(venv().join("bin/python"))
        .args([
            "-c",
            "import sys; from kubernetes import client, config; config.load_kube_config(config_file=sys.argv[1]); \
             s = [x for x in client.CoreV1Api().list_service_for_all_namespaces().items if x.metadata.name == 'kubernetes'][0]; \
             print(s.metadata.namespace, s.spec.cluster_ip, s.spec.ports[0].port)",
            server.kubeconfig().to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "default 10.100.0.1 443",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Restarted on another port, the endpoints follow it.
    let etcd = server.kill_keeping_store();
    let server = match etcd {
        Some(etcd) => Server::start_on_this_etcd(etcd, &data, &extra),
        None => Server::start_with(&data, &extra),
    };
    let k = Kubectl::new(k.bin.clone(), &server, &dir.path().join("home2"));
    let new_port: u64 = server.addr.rsplit_once(':').unwrap().1.parse().unwrap();
    assert_ne!(new_port, port);
    let (ep, slice) = endpoints_of(&k);
    assert_eq!(ep["subsets"][0]["ports"][0]["port"], new_port);
    assert_eq!(slice["ports"][0]["port"], new_port);
    assert_eq!(
        k.json(&["get", "svc", "kubernetes"])["spec"]["ports"][0]["targetPort"],
        new_port
    );
}

#[test]
fn kubectl_1_33_kubernetes_service() {
    kubernetes_service(kubectl_dispatcher(), Backend::Embedded);
}

#[test]
fn kubectl_1_33_kubernetes_service_on_etcd() {
    kubernetes_service(kubectl_dispatcher(), Backend::Etcd);
}

#[test]
fn kubectl_1_37_kubernetes_service() {
    kubernetes_service(kubectl_newest(), Backend::Embedded);
}

#[test]
fn kubectl_1_37_kubernetes_service_on_etcd() {
    kubernetes_service(kubectl_newest(), Backend::Etcd);
}
