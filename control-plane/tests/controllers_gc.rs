//! The garbage collector against a real sy-apiserver (both stores), driven
//! by kubectl: deleting a Deployment cascades to its ReplicaSet and pods
//! (background), `--cascade=orphan` leaves them with the owner's reference
//! removed, `--cascade=foreground` deletes the dependents before the
//! owner; an object naming an owner that never existed is collected. The
//! namespace controller empties a deleted namespace — built-in kinds, a
//! Deployment's pods, a custom resource — reports what a finalizer still
//! holds, and lets the namespace go once that is released.
mod common;
mod controllers_support;

use std::time::Duration;

use common::Backend;
use controllers_support::{Plane, running};
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(40);

const FOREGROUND_DEPLOYMENT: &str = "apiVersion: apps/v1
kind: Deployment
metadata: {name: fg, labels: {app: fg}}
spec:
  replicas: 2
  selector: {matchLabels: {app: fg}}
  template:
    metadata: {labels: {app: fg}, finalizers: [example.com/hold]}
    spec:
      containers: [{name: web, image: registry.example/web:1}]
";

fn items(plane: &Plane, what: &str, selector: &str) -> Vec<Value> {
    plane
        .kubectl
        .json(&["get", what, "-l", selector, "-o", "json"])["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn exists(plane: &Plane, what: &str) -> bool {
    plane.kubectl.run(&["get", what]).status.success()
}

fn deploy(plane: &Plane, name: &str, replicas: u32) {
    plane.kubectl.ok(&[
        "create",
        "deployment",
        name,
        "--image=registry.example/web:1",
        &format!("--replicas={replicas}"),
    ]);
    plane.wait(&format!("{replicas} running pods of {name}"), T, || {
        let pods = plane.live_pods("default", &format!("app={name}"));
        (pods.len() == replicas as usize && pods.iter().all(running)).then_some(())
    });
}

fn gc(backend: Backend) {
    let mut plane = Plane::start(backend, 2);
    plane.start_manager(&["--controllers=deployment,replicaset,garbagecollector"]);
    plane.start_scheduler();

    // Background (kubectl's default): the Deployment goes at once, then
    // its ReplicaSet, then the pods.
    deploy(&plane, "web", 3);
    plane.kubectl.ok(&["delete", "deployment", "web"]);
    plane.wait("web's ReplicaSet and pods collected", T, || {
        (items(&plane, "replicasets", "app=web").is_empty()
            && items(&plane, "pods", "app=web").is_empty())
        .then_some(())
    });

    // Orphan: the ReplicaSet stays without its owner reference and keeps
    // its pods; orphaned in turn, the pods lose theirs.
    deploy(&plane, "keep", 2);
    plane
        .kubectl
        .ok(&["delete", "deployment", "keep", "--cascade=orphan"]);
    assert!(!exists(&plane, "deployment/keep"), "the owner went");
    let rs = items(&plane, "replicasets", "app=keep");
    assert_eq!(rs.len(), 1, "the ReplicaSet stays");
    assert!(
        rs[0]["metadata"]["ownerReferences"].is_null(),
        "and no longer names the Deployment: {}",
        rs[0]["metadata"]
    );
    let rs_name = rs[0]["metadata"]["name"].as_str().unwrap().to_owned();
    std::thread::sleep(Duration::from_secs(1));
    let pods = items(&plane, "pods", "app=keep");
    assert_eq!(pods.len(), 2, "the pods stay");
    assert!(
        pods.iter()
            .all(|p| p["metadata"]["ownerReferences"][0]["name"] == rs_name.as_str()),
        "still the ReplicaSet's"
    );
    plane
        .kubectl
        .ok(&["delete", "replicaset", &rs_name, "--cascade=orphan"]);
    let pods = items(&plane, "pods", "app=keep");
    assert_eq!(pods.len(), 2, "the pods stay");
    assert!(
        pods.iter()
            .all(|p| p["metadata"]["ownerReferences"].is_null()),
        "without owners: {pods:?}"
    );

    // Foreground: the Deployment waits with its finalizer until the
    // ReplicaSet is gone, which waits for its pods. The pods carry a
    // finalizer of ours, so the wait can be seen.
    plane
        .kubectl
        .ok_stdin(&["create", "-f", "-"], FOREGROUND_DEPLOYMENT);
    plane.wait("2 running pods of fg", T, || {
        let pods = plane.live_pods("default", "app=fg");
        (pods.len() == 2 && pods.iter().all(running)).then_some(())
    });
    plane.kubectl.ok(&[
        "delete",
        "deployment",
        "fg",
        "--cascade=foreground",
        "--wait=false",
    ]);
    let waiting = |m: &Value| {
        m["deletionTimestamp"].is_string()
            && m["finalizers"]
                .as_array()
                .is_some_and(|f| f.contains(&json!("foregroundDeletion")))
    };
    plane.wait("pods of fg terminating, held by our finalizer", T, || {
        let pods = items(&plane, "pods", "app=fg");
        (pods.len() == 2
            && pods
                .iter()
                .all(|p| p["metadata"]["deletionTimestamp"].is_string()))
        .then_some(())
    });
    let d = plane.kubectl.json(&["get", "deployment", "fg"]);
    assert!(
        waiting(&d["metadata"]),
        "the Deployment waits: {}",
        d["metadata"]
    );
    let rs = items(&plane, "replicasets", "app=fg");
    assert!(
        rs.len() == 1 && waiting(&rs[0]["metadata"]),
        "the ReplicaSet waits too (deleted in the foreground): {rs:?}"
    );
    for p in items(&plane, "pods", "app=fg") {
        plane.kubectl.ok(&[
            "patch",
            "pod",
            p["metadata"]["name"].as_str().unwrap(),
            "--type=merge",
            "-p",
            r#"{"metadata":{"finalizers":null}}"#,
        ]);
    }
    plane.wait("fg gone, dependents first", T, || {
        let owner = exists(&plane, "deployment/fg");
        let rs = items(&plane, "replicasets", "app=fg").len();
        let pods = items(&plane, "pods", "app=fg").len();
        if !owner {
            assert_eq!(
                (rs, pods),
                (0, 0),
                "the Deployment went before its dependents"
            );
            return Some(());
        }
        if rs == 0 {
            assert_eq!(pods, 0, "the ReplicaSet went before its pods");
        }
        None
    });

    // A dependent whose owner never existed (or went before it was made)
    // is collected too.
    plane.kubectl.ok_stdin(
        &["create", "-f", "-"],
        r#"{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "stray", "labels": {"gc": "stray"},
            "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "ghost",
                                 "uid": "00000000-0000-0000-0000-00000000dead"}]}}"#,
    );
    plane.wait("the stray ConfigMap collected", T, || {
        (!exists(&plane, "configmap/stray")).then_some(())
    });
}

const TEAM: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: widgets.example.com}
spec:
  group: example.com
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}
---
apiVersion: v1
kind: Namespace
metadata: {name: team}
"#;

const TEAM_CONTENT: &str = r#"
apiVersion: example.com/v1
kind: Widget
metadata: {name: w1, namespace: team}
spec: {size: 3}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: plain, namespace: team}
data: {a: "1"}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: held, namespace: team, finalizers: [example.com/hold]}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: team}
spec:
  selector: {app: web}
  ports: [{port: 80}]
"#;

fn namespace(backend: Backend) {
    let mut plane = Plane::start(backend, 2);
    plane.start_manager(&["--controllers=namespace,garbagecollector,deployment,replicaset"]);
    plane.start_scheduler();
    plane.kubectl.ok_stdin(&["apply", "-f", "-"], TEAM);
    plane.wait("the Widget resource served", T, || {
        plane
            .kubectl
            .run(&["get", "widgets", "-n", "team"])
            .status
            .success()
            .then_some(())
    });
    plane.kubectl.ok_stdin(&["create", "-f", "-"], TEAM_CONTENT);
    plane.kubectl.ok(&[
        "create",
        "deployment",
        "web",
        "-n",
        "team",
        "--image=registry.example/web:1",
        "--replicas=2",
    ]);
    plane.wait("2 running pods in team", T, || {
        let pods = plane.live_pods("team", "app=web");
        (pods.len() == 2 && pods.iter().all(running)).then_some(())
    });

    plane
        .kubectl
        .ok(&["delete", "namespace", "team", "--wait=false"]);
    let ns = plane.wait("team emptied but for the held ConfigMap", T, || {
        let ns = plane.kubectl.json(&["get", "namespace", "team"]);
        let cond = |ty: &str| {
            ns["status"]["conditions"]
                .as_array()
                .and_then(|cs| cs.iter().find(|c| c["type"] == ty).cloned())
        };
        let finalizers = cond("NamespaceFinalizersRemaining")?;
        (finalizers["status"] == "True"
            && cond("NamespaceContentRemaining")?["message"]
                == "Some resources are remaining: configmaps. has 1 resource instances")
            .then_some(ns)
    });
    assert_eq!(ns["status"]["phase"], "Terminating");
    let conds = ns["status"]["conditions"].as_array().unwrap();
    let find = |ty: &str| conds.iter().find(|c| c["type"] == ty).unwrap();
    assert_eq!(
        find("NamespaceFinalizersRemaining")["message"],
        "Some content in the namespace has finalizers remaining: example.com/hold in 1 resource instances"
    );
    assert_eq!(
        (
            &find("NamespaceDeletionContentFailure")["status"],
            &find("NamespaceDeletionDiscoveryFailure")["reason"]
        ),
        (&json!("False"), &json!("ResourcesDiscovered"))
    );
    assert_eq!(ns["spec"]["finalizers"], json!(["kubernetes"]));
    for what in ["widgets", "deployments", "replicasets", "pods", "services"] {
        let left = plane
            .kubectl
            .json(&["get", what, "-n", "team", "-o", "json"]);
        assert_eq!(left["items"], json!([]), "{what} left in team");
    }
    let refused = plane
        .kubectl
        .run(&["create", "configmap", "late", "-n", "team"]);
    assert!(
        !refused.status.success(),
        "no new content while terminating"
    );

    plane.kubectl.ok(&[
        "patch",
        "configmap",
        "held",
        "-n",
        "team",
        "--type=merge",
        "-p",
        r#"{"metadata":{"finalizers":null}}"#,
    ]);
    plane.wait("namespace team gone", T, || {
        (!exists(&plane, "namespace/team")).then_some(())
    });
}

#[test]
fn namespace_controller_empties_then_removes() {
    namespace(Backend::Embedded);
}

#[test]
fn namespace_controller_empties_then_removes_on_etcd() {
    namespace(Backend::Etcd);
}

#[test]
fn garbage_collector_cascades() {
    gc(Backend::Embedded);
}

#[test]
fn garbage_collector_cascades_on_etcd() {
    gc(Backend::Etcd);
}
