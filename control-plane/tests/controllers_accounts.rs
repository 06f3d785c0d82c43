//! The ServiceAccount controller and root-CA publisher against a real
//! sy-apiserver (both stores), with kubectl 1.33 and the Python client:
//! every namespace, old or new, gets a `default` ServiceAccount and a
//! `kube-root-ca.crt` ConfigMap holding the server's CA; deleted, they come
//! back.
mod common;
mod controllers_support;

use std::time::Duration;

use common::Backend;
use controllers_support::Plane;
use serde_json::Value;

const T: Duration = Duration::from_secs(20);

fn accounts(backend: Backend) {
    let mut plane = Plane::start(backend, 0);
    let ca = plane.server.data_dir.join("pki/ca.crt");
    let ca_arg = format!("--root-ca-file={}", ca.display());
    plane.start_manager(&["--controllers=serviceaccount", &ca_arg]);
    let ca_pem = std::fs::read_to_string(&ca).unwrap();
    plane.kubectl.ok(&["create", "namespace", "team-a"]);
    for ns in ["default", "kube-system", "team-a"] {
        plane.wait(&format!("default ServiceAccount in {ns}"), T, || {
            let out = plane.python(&format!(
                "from kubernetes.client.rest import ApiException\n\
                 try:\n    print(v1.read_namespaced_service_account('default', {ns:?}).metadata.uid)\n\
                 except ApiException as e:\n    print('missing', e.status)"
            ));
            (!out.starts_with("missing")).then_some(())
        });
        plane.wait(&format!("kube-root-ca.crt in {ns}"), T, || {
            let out = plane.kubectl.run(&[
                "get",
                "configmap",
                "kube-root-ca.crt",
                "-n",
                ns,
                "-o",
                "json",
            ]);
            let cm: Value = serde_json::from_slice(&out.stdout).ok()?;
            (cm["data"]["ca.crt"] == ca_pem.as_str()
                && cm["metadata"]["annotations"]["kubernetes.io/description"].is_string())
            .then_some(())
        });
    }
    let uid = |plane: &Plane| -> String {
        plane
            .kubectl
            .json(&["get", "sa", "default", "-n", "team-a"])["metadata"]["uid"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let before = uid(&plane);
    plane
        .kubectl
        .ok(&["delete", "sa", "default", "-n", "team-a"]);
    plane
        .kubectl
        .ok(&["delete", "configmap", "kube-root-ca.crt", "-n", "team-a"]);
    plane.wait("default ServiceAccount recreated", T, || {
        let out = plane
            .kubectl
            .run(&["get", "sa", "default", "-n", "team-a", "-o", "json"]);
        let sa: Value = serde_json::from_slice(&out.stdout).ok()?;
        (sa["metadata"]["uid"].as_str()? != before).then_some(())
    });
    plane.wait("kube-root-ca.crt recreated", T, || {
        plane
            .kubectl
            .run(&["get", "configmap", "kube-root-ca.crt", "-n", "team-a"])
            .status
            .success()
            .then_some(())
    });
}

#[test]
fn default_service_account_and_root_ca_in_every_namespace() {
    accounts(Backend::Embedded);
}

#[test]
fn default_service_account_and_root_ca_in_every_namespace_on_etcd() {
    accounts(Backend::Etcd);
}
