//! The controller manager and the scheduler against a real sy-apiserver
//! (both stores), driven by kubectl 1.33 and the official Python client,
//! with hollow nodes playing the kubelets:
//!
//! - `kubectl create -f` of a ReplicationController (3 replicas) and a
//!   Service → 3 pods spread over 3 nodes → one EndpointSlice with 3 ready
//!   endpoints (and the RC's status counts them);
//! - a pod marked not ready (Python client) leaves the ready set;
//! - a deleted pod is replaced;
//! - `kubectl scale` up and down (the not-ready pod goes first);
//! - a label edit that takes a pod out of the selector → it is released
//!   and a new pod is made;
//! - a named targetPort served on different container ports per pod → one
//!   slice per port;
//! - 250 pods behind one Service → 3 slices.
mod common;
mod controllers_support;

use std::time::Duration;

use common::Backend;
use controllers_support::{Plane, endpoints, names, pod_ip, running};
use kube::ResourceExt as _;
use serde_json::Value;

const RC_AND_SERVICE: &str = r#"
apiVersion: v1
kind: ReplicationController
metadata: {name: web}
spec:
  replicas: 3
  selector: {app: web}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: web
        image: registry.example/web:1
        ports: [{name: http, containerPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: http}]
"#;

const T: Duration = Duration::from_secs(20);

fn rc_and_service_scenario(backend: Backend) {
    let mut plane = Plane::start(backend, 3);
    plane.start_manager(&[]);
    plane.start_scheduler();
    plane
        .kubectl
        .ok_stdin(&["create", "-f", "-"], RC_AND_SERVICE);

    // 3 pods, one per node, running.
    let pods = plane.wait("3 running web pods", T, || {
        let p = plane.live_pods("default", "app=web");
        (p.len() == 3 && p.iter().all(running)).then_some(p)
    });
    let mut nodes: Vec<String> = pods
        .iter()
        .map(|p| p.spec.as_ref().unwrap().node_name.clone().unwrap())
        .collect();
    nodes.sort();
    assert_eq!(
        nodes,
        ["node-1", "node-2", "node-3"],
        "pods spread over the nodes"
    );
    for p in &pods {
        let owner = &p.owner_references()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str()),
            ("ReplicationController", "web")
        );
        assert_eq!(owner.controller, Some(true));
    }

    // One slice, 3 ready endpoints on the pods' IPs and nodes.
    let svc = plane.service("default", "web");
    let slice = plane.wait("one slice with 3 ready endpoints", T, || {
        let s = plane.slices("default", "web");
        let eps = endpoints(&s);
        (s.len() == 1 && eps.len() == 3 && eps.iter().all(|e| e.1 && e.2 && !e.3))
            .then(|| s[0].clone())
    });
    let mut want: Vec<(String, String)> = pods
        .iter()
        .map(|p| {
            (
                pod_ip(p).unwrap(),
                p.spec.as_ref().unwrap().node_name.clone().unwrap(),
            )
        })
        .collect();
    want.sort();
    let got: Vec<(String, String)> = endpoints(std::slice::from_ref(&slice))
        .into_iter()
        .map(|e| (e.0, e.4))
        .collect();
    assert_eq!(got, want);
    assert_eq!(slice.address_type, "IPv4");
    let labels = slice.labels();
    assert_eq!(labels["kubernetes.io/service-name"], "web");
    assert_eq!(
        labels["endpointslice.kubernetes.io/managed-by"],
        "endpointslice-controller.k8s.io"
    );
    assert_eq!(slice.owner_references()[0].uid, svc.uid().unwrap());
    assert!(
        slice
            .annotations()
            .contains_key("endpoints.kubernetes.io/last-change-trigger-time")
    );
    let ports = slice.ports.clone().unwrap();
    assert_eq!(ports.len(), 1);
    assert_eq!(
        (ports[0].port, ports[0].name.as_deref()),
        (Some(8080), Some(""))
    );
    for ep in &slice.endpoints {
        let t = ep.target_ref.as_ref().unwrap();
        let pod = pods.iter().find(|p| Some(p.name_any()) == t.name).unwrap();
        assert_eq!(t.uid, pod.uid());
    }

    // The legacy Endpoints object says the same.
    plane.wait("Endpoints web with 3 ready addresses", T, || {
        let e = plane.kubectl.json(&["get", "endpoints", "web"]);
        let subsets = e["subsets"].as_array()?;
        (subsets.len() == 1
            && subsets[0]["addresses"].as_array()?.len() == 3
            && subsets[0]["notReadyAddresses"].is_null()
            && subsets[0]["ports"][0]["port"] == 8080)
            .then_some(())
    });

    // The RC's status counts them.
    plane.wait("rc status 3/3/3", T, || {
        let rc = plane.kubectl.json(&["get", "rc", "web"]);
        let s = &rc["status"];
        (s["replicas"] == 3
            && s["readyReplicas"] == 3
            && s["availableReplicas"] == 3
            && s["observedGeneration"] == rc["metadata"]["generation"])
            .then_some(())
    });

    // A pod marked not ready (as its kubelet would) leaves the ready set.
    let sick = pods[0].name_any();
    let sick_ip = pod_ip(&pods[0]).unwrap();
    plane.python(&format!(
        "import datetime\n\
         pod = v1.read_namespaced_pod_status({sick:?}, 'default')\n\
         for c in pod.status.conditions:\n\
         \x20   if c.type in ('Ready', 'ContainersReady'):\n\
         \x20       c.status = 'False'\n\
         \x20       c.last_transition_time = datetime.datetime.now(datetime.timezone.utc)\n\
         v1.replace_namespaced_pod_status({sick:?}, 'default', pod)\n"
    ));
    plane.wait("the sick pod's endpoint not ready", T, || {
        let eps = endpoints(&plane.slices("default", "web"));
        let e = eps.iter().find(|e| e.0 == sick_ip)?;
        (eps.len() == 3 && !e.1 && !e.2 && eps.iter().filter(|e| e.1).count() == 2).then_some(())
    });
    plane.wait("Endpoints: the sick pod under notReadyAddresses", T, || {
        let e = plane.kubectl.json(&["get", "endpoints", "web"]);
        let s = &e["subsets"][0];
        (s["addresses"].as_array()?.len() == 2
            && s["notReadyAddresses"][0]["ip"] == sick_ip.as_str())
        .then_some(())
    });
    plane.wait("rc readyReplicas 2", T, || {
        let rc = plane.kubectl.json(&["get", "rc", "web"]);
        (rc["status"]["readyReplicas"] == 2 && rc["status"]["replicas"] == 3).then_some(())
    });

    // A deleted pod is replaced.
    let victim = pods[1].name_any();
    let victim_ip = pod_ip(&pods[1]).unwrap();
    plane
        .kubectl
        .ok(&["delete", "pod", &victim, "--wait=false"]);
    let after = plane.wait("a replacement pod", T, || {
        let p = plane.live_pods("default", "app=web");
        (p.len() == 3
            && !names(&p).contains(&victim)
            && p.iter().filter(|p| running(p)).count() >= 2)
            .then_some(p)
    });
    plane.wait("the deleted pod's endpoint gone, the new one in", T, || {
        let eps = endpoints(&plane.slices("default", "web"));
        let ips: Vec<String> = after.iter().filter_map(pod_ip).collect();
        (eps.len() == 3
            && !eps.iter().any(|e| e.0 == victim_ip)
            && ips.len() == 3
            && ips.iter().all(|ip| eps.iter().any(|e| &e.0 == ip)))
        .then_some(())
    });

    // kubectl scale up, then down: the not-ready pod is deleted first.
    plane.kubectl.ok(&["scale", "rc", "web", "--replicas=5"]);
    plane.wait("5 endpoints", T, || {
        let p = plane.live_pods("default", "app=web");
        (p.len() == 5 && endpoints(&plane.slices("default", "web")).len() == 5).then_some(())
    });
    plane.kubectl.ok(&["scale", "rc", "web", "--replicas=2"]);
    let two = plane.wait("2 pods left", T, || {
        let p = plane.live_pods("default", "app=web");
        (p.len() == 2 && endpoints(&plane.slices("default", "web")).len() == 2).then_some(p)
    });
    assert!(
        !names(&two).contains(&sick),
        "the not-ready pod goes first: {:?}",
        names(&two)
    );

    // A label edit takes a pod out of the selector: it is released and
    // replaced.
    let moved = two[0].name_any();
    plane
        .kubectl
        .ok(&["label", "pod", &moved, "app=debug", "--overwrite"]);
    plane.wait("a new pod for the relabelled one", T, || {
        let p = plane.live_pods("default", "app=web");
        (p.len() == 2 && !names(&p).contains(&moved) && p.iter().all(running)).then_some(())
    });
    let released = plane.pods("default", "app=debug");
    assert_eq!(released.len(), 1);
    assert!(
        released[0]
            .owner_references()
            .iter()
            .all(|r| r.controller != Some(true)),
        "released: {:?}",
        released[0].owner_references()
    );
    plane.wait("slice without the relabelled pod", T, || {
        let eps = endpoints(&plane.slices("default", "web"));
        let gone = pod_ip(&released[0]).unwrap();
        (eps.len() == 2 && !eps.iter().any(|e| e.0 == gone)).then_some(())
    });

    // Events: the RC's creations and the scheduler's bindings.
    let events = plane.kubectl.json(&["get", "events"]);
    let reasons: Vec<&str> = events["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["reason"].as_str())
        .collect();
    for r in ["SuccessfulCreate", "SuccessfulDelete", "Scheduled"] {
        assert!(reasons.contains(&r), "no {r} event among {reasons:?}");
    }

    // A Service without a selector keeps the Endpoints its owner writes;
    // a deleted Service loses its own (and its slices).
    plane.kubectl.ok_stdin(
        &["create", "-f", "-"],
        "apiVersion: v1\nkind: Service\nmetadata: {name: ext}\nspec:\n  ports: [{port: 80}]\n---\napiVersion: v1\nkind: Endpoints\nmetadata: {name: ext}\nsubsets: [{addresses: [{ip: 192.0.2.10}], ports: [{port: 80}]}]\n",
    );
    plane.kubectl.ok(&["delete", "service", "web"]);
    plane.wait("Endpoints and slices of web gone", T, || {
        let gone = !plane
            .kubectl
            .run(&["get", "endpoints", "web"])
            .status
            .success();
        (gone && plane.slices("default", "web").is_empty()).then_some(())
    });
    let ext = plane.kubectl.json(&["get", "endpoints", "ext"]);
    assert_eq!(ext["subsets"][0]["addresses"][0]["ip"], "192.0.2.10");
}

#[test]
fn rc_and_service_to_endpointslices() {
    rc_and_service_scenario(Backend::Embedded);
}

#[test]
fn rc_and_service_to_endpointslices_on_etcd() {
    rc_and_service_scenario(Backend::Etcd);
}

fn rc(name: &str, replicas: u32, label: &str, port: u16) -> String {
    format!(
        r#"
apiVersion: v1
kind: ReplicationController
metadata: {{name: {name}}}
spec:
  replicas: {replicas}
  selector: {{app: {label}, variant: {name}}}
  template:
    metadata: {{labels: {{app: {label}, variant: {name}}}}}
    spec:
      containers:
      - name: c
        image: registry.example/c:1
        ports: [{{name: http, containerPort: {port}}}]
---
"#
    )
}

fn named_ports_and_many_pods(backend: Backend) {
    let mut plane = Plane::start(backend, 0);
    for i in 1..=3 {
        let mut o = control_plane::hollow_node::Options::new(&format!("node-{i}"));
        o.max_pods = 200;
        plane.add_node(o);
    }
    plane.start_manager(&[]);
    plane.start_scheduler();
    // "http" is 3000 on one RC's pods and 3001 on the other's.
    let yaml = format!(
        "{}{}{}apiVersion: v1\nkind: Service\nmetadata: {{name: multi}}\nspec:\n  selector: {{app: multi}}\n  ports: [{{name: web, port: 80, targetPort: http}}]\n---\napiVersion: v1\nkind: Service\nmetadata: {{name: big}}\nspec:\n  selector: {{app: big}}\n  ports: [{{port: 80, targetPort: 8080}}]\n",
        rc("a", 1, "multi", 3000),
        rc("b", 1, "multi", 3001),
        rc("big", 250, "big", 8080),
    );
    plane.kubectl.ok_stdin(&["create", "-f", "-"], &yaml);
    let slices = plane.wait("two slices for the named port", T, || {
        let s = plane.slices("default", "multi");
        (s.len() == 2 && s.iter().all(|s| s.endpoints.len() == 1)).then_some(s)
    });
    let mut ports: Vec<i32> = slices
        .iter()
        .map(|s| s.ports.as_ref().unwrap()[0].port.unwrap())
        .collect();
    ports.sort();
    assert_eq!(ports, [3000, 3001]);
    for s in &slices {
        assert_eq!(s.ports.as_ref().unwrap()[0].name.as_deref(), Some("web"));
    }

    let big = plane.wait("250 endpoints in 3 slices", Duration::from_secs(90), || {
        let s = plane.slices("default", "big");
        let eps = endpoints(&s);
        (eps.len() == 250 && eps.iter().all(|e| e.1)).then_some(s)
    });
    let mut sizes: Vec<usize> = big.iter().map(|s| s.endpoints.len()).collect();
    sizes.sort();
    assert_eq!(sizes, [50, 100, 100]);
    let rc: Value = plane.kubectl.json(&["get", "rc", "big"]);
    assert_eq!(rc["status"]["replicas"], 250);
}

#[test]
fn named_target_ports_and_250_pods() {
    named_ports_and_many_pods(Backend::Embedded);
}

#[test]
fn named_target_ports_and_250_pods_on_etcd() {
    named_ports_and_many_pods(Backend::Etcd);
}
