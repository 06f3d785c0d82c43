//! The EndpointSlice mirroring controller against a real sy-apiserver
//! (both stores), driven by kubectl: user-written Endpoints of a
//! Service without a selector become an EndpointSlice (ready and not-ready
//! addresses, ports, labels, owner), follow edits, and go when the
//! Endpoints go; the Endpoints controller's own Endpoints (skip-mirror) and
//! Endpoints labelled skip-mirror are left alone.
mod common;
mod controllers_support;

use std::time::Duration;

use common::Backend;
use controllers_support::{Plane, endpoints};
use kube::ResourceExt as _;
use serde_json::json;

const T: Duration = Duration::from_secs(30);

const EXTERNAL: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: db}
spec:
  ports: [{name: pg, port: 5432}]
---
apiVersion: v1
kind: Endpoints
metadata: {name: db, labels: {team: data}}
subsets:
- addresses: [{ip: 192.0.2.10}, {ip: 192.0.2.11}]
  notReadyAddresses: [{ip: 192.0.2.12}]
  ports: [{name: pg, port: 5432}]
---
apiVersion: v1
kind: Service
metadata: {name: quiet}
spec:
  ports: [{port: 80}]
---
apiVersion: v1
kind: Endpoints
metadata: {name: quiet, labels: {endpointslice.kubernetes.io/skip-mirror: "true"}}
subsets:
- addresses: [{ip: 192.0.2.20}]
  ports: [{port: 80}]
"#;

fn mirroring(backend: Backend) {
    let mut plane = Plane::start(backend, 1);
    plane.start_manager(&[
        "--controllers=endpointslicemirroring,endpoint,endpointslice,replicationcontroller,garbagecollector",
    ]);
    plane.start_scheduler();
    plane.kubectl.ok_stdin(&["create", "-f", "-"], EXTERNAL);

    let slice = plane.wait("a mirrored slice for db", T, || {
        let s = plane.slices("default", "db");
        (s.len() == 1 && s[0].endpoints.len() == 3).then(|| s[0].clone())
    });
    let eps: Vec<(String, bool)> = endpoints(std::slice::from_ref(&slice))
        .into_iter()
        .map(|e| (e.0, e.1))
        .collect();
    assert_eq!(
        eps,
        [
            ("192.0.2.10".to_owned(), true),
            ("192.0.2.11".to_owned(), true),
            ("192.0.2.12".to_owned(), false)
        ]
    );
    let labels = slice.labels();
    assert_eq!(
        labels["endpointslice.kubernetes.io/managed-by"],
        "endpointslicemirroring-controller.k8s.io"
    );
    assert_eq!(labels["team"], "data", "the Endpoints' labels are copied");
    assert_eq!(slice.address_type, "IPv4");
    let port = &slice.ports.as_ref().unwrap()[0];
    assert_eq!(
        (port.name.as_deref(), port.port, port.protocol.as_deref()),
        (Some("pg"), Some(5432), Some("TCP"))
    );
    let owner = &slice.owner_references()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str()),
        ("Endpoints", "db")
    );

    // An edit of the Endpoints is followed.
    plane.kubectl.ok(&[
        "patch",
        "endpoints",
        "db",
        "--type=merge",
        "-p",
        &json!({"subsets": [{"addresses": [{"ip": "192.0.2.10"}], "ports": [{"name": "pg", "port": 5432}]}]})
            .to_string(),
    ]);
    plane.wait("the slice follows the edit", T, || {
        let s = plane.slices("default", "db");
        (s.len() == 1 && endpoints(&s).len() == 1).then_some(())
    });

    // Skip-mirror Endpoints, and a selector Service's own Endpoints (the
    // Endpoints controller labels them skip-mirror), are not mirrored.
    plane.kubectl.ok_stdin(
        &["create", "-f", "-"],
        "apiVersion: v1\nkind: ReplicationController\nmetadata: {name: web}\nspec:\n  replicas: 1\n  selector: {app: web}\n  template:\n    metadata: {labels: {app: web}}\n    spec:\n      containers: [{name: web, image: registry.example/web:1, ports: [{containerPort: 8080}]}]\n---\napiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  selector: {app: web}\n  ports: [{port: 80, targetPort: 8080}]\n",
    );
    plane.wait(
        "web's Endpoints written by the Endpoints controller",
        T,
        || {
            let e = plane.kubectl.json(&["get", "endpoints", "web"]);
            (e["subsets"][0]["addresses"].as_array().map(Vec::len) == Some(1)
                && e["metadata"]["labels"]["endpointslice.kubernetes.io/skip-mirror"] == "true")
                .then_some(())
        },
    );
    std::thread::sleep(Duration::from_secs(1));
    let web = plane.slices("default", "web");
    assert!(
        web.iter()
            .all(|s| s.labels()["endpointslice.kubernetes.io/managed-by"]
                == "endpointslice-controller.k8s.io"),
        "only the EndpointSlice controller's slices for web"
    );
    assert!(
        plane.slices("default", "quiet").is_empty(),
        "skip-mirror Endpoints are not mirrored"
    );

    // Deleting the Endpoints removes the mirrored slice.
    plane.kubectl.ok(&["delete", "endpoints", "db"]);
    plane.wait("db's mirrored slice gone", T, || {
        plane.slices("default", "db").is_empty().then_some(())
    });
}

#[test]
fn endpoints_mirrored_into_slices() {
    mirroring(Backend::Embedded);
}

#[test]
fn endpoints_mirrored_into_slices_on_etcd() {
    mirroring(Backend::Etcd);
}
