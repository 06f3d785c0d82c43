//! Nodes, the scheduler and leader election, with hollow nodes playing the
//! kubelets against a real sy-apiserver (both stores):
//!
//! - nodeipam gives each Node a podCIDR, and its pods' addresses come from it;
//! - a node whose Lease stops → `Ready=Unknown`, tainted unreachable, its
//!   pods' endpoints not ready; then (after their toleration) its pods are
//!   evicted and recreated on the other nodes; back, it is untainted;
//! - an unschedulable pod (Python client) gets `PodScheduled=False` with
//!   upstream's FitError and a `FailedScheduling` Event, and is scheduled
//!   when a fitting node appears;
//! - two controller managers: one acts, the other takes over when the
//!   first is killed.
mod common;
mod controllers_support;

use std::time::Duration;

use common::Backend;
use control_plane::hollow_node::Options;
use controllers_support::{Plane, endpoints, pod_ip, running};
use k8s_openapi::api::{
    coordination::v1::Lease,
    core::v1::{Node, Pod},
};
use kube::{Api, ResourceExt as _};

const T: Duration = Duration::from_secs(20);

const RC_TOLERATING_10S: &str = r#"
apiVersion: v1
kind: ReplicationController
metadata: {name: web}
spec:
  replicas: 3
  selector: {app: web}
  template:
    metadata: {labels: {app: web}}
    spec:
      tolerations:
      - {key: node.kubernetes.io/unreachable, operator: Exists, effect: NoExecute, tolerationSeconds: 10}
      containers:
      - name: web
        image: registry.example/web:1
        ports: [{containerPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
"#;

fn node(plane: &Plane, name: &str) -> Node {
    let api: Api<Node> = Api::all(plane.client.clone());
    plane.rt.block_on(api.get(name)).unwrap()
}

fn ready_status(n: &Node) -> String {
    n.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
        .map(|c| c.status.clone())
        .unwrap_or_default()
}

fn taint_keys(n: &Node) -> Vec<String> {
    n.spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .map(|ts| {
            ts.iter()
                .map(|t| format!("{}:{}", t.key, t.effect))
                .collect()
        })
        .unwrap_or_default()
}

fn node_lease_stops(backend: Backend) {
    let mut plane = Plane::start(backend, 0);
    plane.fallback_cidrs = false;
    for i in 1..=3 {
        plane.add_node(Options::new(&format!("node-{i}")));
    }
    plane.start_manager(&[
        "--node-monitor-period=500ms",
        "--node-monitor-grace-period=8s",
        "--allocate-node-cidrs=true",
        "--cluster-cidr=10.244.0.0/16",
        "--service-cluster-ip-range=10.96.0.0/12",
    ]);
    plane.start_scheduler();

    // nodeipam: distinct /24s out of the cluster CIDR.
    let cidrs = plane.wait("podCIDRs on all nodes", T, || {
        let mut c: Vec<String> = (1..=3)
            .filter_map(|i| node(&plane, &format!("node-{i}")).spec?.pod_cidr)
            .collect();
        c.sort();
        c.dedup();
        (c.len() == 3).then_some(c)
    });
    assert!(
        cidrs
            .iter()
            .all(|c| c.starts_with("10.244.") && c.ends_with(".0/24")),
        "{cidrs:?}"
    );

    plane
        .kubectl
        .ok_stdin(&["create", "-f", "-"], RC_TOLERATING_10S);
    let pods = plane.wait("3 running pods", T, || {
        let p = plane.live_pods("default", "app=web");
        (p.len() == 3 && p.iter().all(running)).then_some(p)
    });
    for p in &pods {
        let n = node(
            &plane,
            p.spec.as_ref().unwrap().node_name.as_deref().unwrap(),
        );
        let cidr = n.spec.unwrap().pod_cidr.unwrap();
        let prefix = cidr.trim_end_matches("0/24");
        assert!(
            pod_ip(p).unwrap().starts_with(prefix),
            "{:?} not in {cidr}",
            pod_ip(p)
        );
    }
    plane.wait("3 ready endpoints", T, || {
        let e = endpoints(&plane.slices("default", "web"));
        (e.len() == 3 && e.iter().all(|e| e.1)).then_some(())
    });

    // node-2 dies.
    let dead = "node-2";
    let victim = pods
        .iter()
        .find(|p| p.spec.as_ref().unwrap().node_name.as_deref() == Some(dead))
        .unwrap()
        .clone();
    let victim_ip = pod_ip(&victim).unwrap();
    plane.nodes[1].stop();
    plane.wait("node-2 Unknown and tainted unreachable", T, || {
        let n = node(&plane, dead);
        let t = taint_keys(&n);
        (ready_status(&n) == "Unknown"
            && t.contains(&"node.kubernetes.io/unreachable:NoExecute".to_owned())
            && t.contains(&"node.kubernetes.io/unreachable:NoSchedule".to_owned()))
        .then_some(())
    });
    // Its pod's endpoint stops being ready before the pod is evicted.
    plane.wait("the dead node's endpoint not ready", T, || {
        let e = endpoints(&plane.slices("default", "web"));
        e.iter()
            .find(|e| e.0 == victim_ip)
            .is_some_and(|e| !e.1 && !e.2)
            .then_some(())
    });
    let still: Vec<Pod> = plane.live_pods("default", "app=web");
    assert!(
        still.iter().any(|p| p.name_any() == victim.name_any()),
        "evicted before its 10 s toleration ran out"
    );
    // Then it is evicted and replaced elsewhere.
    let replaced = plane.wait("a replacement on a live node", T, || {
        let p = plane.live_pods("default", "app=web");
        (p.len() == 3
            && !p.iter().any(|p| p.name_any() == victim.name_any())
            && p.iter().all(running)
            && p.iter()
                .all(|p| p.spec.as_ref().unwrap().node_name.as_deref() != Some(dead)))
        .then_some(p)
    });
    plane.wait("3 ready endpoints on the live nodes", T, || {
        let e = endpoints(&plane.slices("default", "web"));
        let ready: Vec<_> = e.iter().filter(|e| e.1).collect();
        (ready.len() == 3
            && ready.iter().all(|e| e.4 != dead)
            && replaced
                .iter()
                .all(|p| ready.iter().any(|e| Some(&e.0) == pod_ip(p).as_ref())))
        .then_some(())
    });
    let events = plane.kubectl.json(&["get", "events", "-A"]);
    let reasons: Vec<&str> = events["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["reason"].as_str())
        .collect();
    assert!(reasons.contains(&"NodeNotReady"), "{reasons:?}");
    assert!(reasons.contains(&"TaintManagerEviction"), "{reasons:?}");

    // Back: Ready again and untainted.
    plane.rt.block_on(plane.nodes[1].resume()).unwrap();
    plane.wait("node-2 untainted", T, || {
        let n = node(&plane, dead);
        (ready_status(&n) == "True" && taint_keys(&n).is_empty()).then_some(())
    });
}

#[test]
fn node_lease_stops_endpoints_not_ready_then_pods_evicted() {
    node_lease_stops(Backend::Embedded);
}

#[test]
fn node_lease_stops_endpoints_not_ready_then_pods_evicted_on_etcd() {
    node_lease_stops(Backend::Etcd);
}

fn unschedulable_then_scheduled(backend: Backend) {
    let mut plane = Plane::start(backend, 2);
    plane.start_scheduler();
    plane.python(
        "v1.create_namespaced_pod('default', {'apiVersion': 'v1', 'kind': 'Pod',\n\
         \x20   'metadata': {'name': 'fussy'},\n\
         \x20   'spec': {'nodeSelector': {'disk': 'ssd'}, 'containers': [{'name': 'c', 'image': 'registry.example/c:1'}]}})",
    );
    let want = "0/2 nodes are available: 2 node(s) didn't match Pod's node affinity/selector. \
                preemption: 0/2 nodes are available: 2 Preemption is not helpful for scheduling.";
    plane.wait("PodScheduled=False Unschedulable", T, || {
        let out = plane.python(
            "p = v1.read_namespaced_pod_status('fussy', 'default')\n\
             c = [c for c in (p.status.conditions or []) if c.type == 'PodScheduled']\n\
             print(c[0].status, c[0].reason, c[0].message, sep='|') if c else print('none')",
        );
        (out.trim() == format!("False|Unschedulable|{want}")).then_some(())
    });
    plane.wait("a FailedScheduling event", T, || {
        let ev = plane.kubectl.json(&[
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=fussy,reason=FailedScheduling",
        ]);
        ev["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["message"] == want && e["type"] == "Warning")
            .then_some(())
    });
    let mut o = Options::new("node-ssd");
    o.labels.insert("disk".into(), "ssd".into());
    plane.add_node(o);
    plane.wait("fussy bound to node-ssd and running", T, || {
        let p = plane.pods("default", "");
        let f = p.iter().find(|p| p.name_any() == "fussy")?;
        (f.spec.as_ref()?.node_name.as_deref() == Some("node-ssd") && running(f)).then_some(())
    });
    let ev = plane.kubectl.json(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=fussy,reason=Scheduled",
    ]);
    assert_eq!(
        ev["items"][0]["message"],
        "Successfully assigned default/fussy to node-ssd"
    );
}

#[test]
fn unschedulable_pod_reported_then_scheduled_when_a_node_appears() {
    unschedulable_then_scheduled(Backend::Embedded);
}

#[test]
fn unschedulable_pod_reported_then_scheduled_when_a_node_appears_on_etcd() {
    unschedulable_then_scheduled(Backend::Etcd);
}

fn lease(plane: &Plane) -> Option<Lease> {
    let api: Api<Lease> = Api::namespaced(plane.client.clone(), "kube-system");
    plane
        .rt
        .block_on(api.get_opt("kube-controller-manager"))
        .unwrap()
}

fn holder(plane: &Plane) -> Option<String> {
    lease(plane)?.spec?.holder_identity
}

fn leader_election(backend: Backend) {
    let mut plane = Plane::start(backend, 0);
    let le = |id: &'static str| {
        [
            "--leader-elect=true",
            // Wide enough that a renewal slowed by a loaded CI machine
            // (an fsync behind a dozen servers) does not hand over.
            "--leader-elect-lease-duration=10s",
            "--leader-elect-renew-deadline=7s",
            "--leader-elect-retry-period=1s",
            id,
            "--controllers=replicationcontroller",
        ]
    };
    let a = plane.start_manager(&le("--leader-elect-identity=manager-a"));
    plane.wait("manager-a leads", T, || {
        (holder(&plane).as_deref() == Some("manager-a")).then_some(())
    });
    let b = plane.start_manager(&le("--leader-elect-identity=manager-b"));
    plane.kubectl.ok_stdin(
        &["create", "-f", "-"],
        "apiVersion: v1\nkind: ReplicationController\nmetadata: {name: web}\nspec:\n  replicas: 3\n  selector: {app: web}\n  template:\n    metadata: {labels: {app: web}}\n    spec:\n      containers: [{name: c, image: registry.example/c:1}]\n",
    );
    plane.wait("3 pods", T, || {
        (plane.pods("default", "app=web").len() == 3).then_some(())
    });
    // Only one acts: the count stays 3, and b never led.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(plane.pods("default", "app=web").len(), 3);
    assert_eq!(holder(&plane).as_deref(), Some("manager-a"));
    assert!(
        !plane.procs[b].log().contains("became leader"),
        "{}",
        plane.logs()
    );
    let transitions = lease(&plane)
        .unwrap()
        .spec
        .unwrap()
        .lease_transitions
        .unwrap_or(0);

    // a dies without releasing; b takes over once the lease runs out.
    plane.procs[a].kill();
    plane.wait("manager-b leads", T + Duration::from_secs(10), || {
        (holder(&plane).as_deref() == Some("manager-b")).then_some(())
    });
    let after = lease(&plane)
        .unwrap()
        .spec
        .unwrap()
        .lease_transitions
        .unwrap_or(0);
    assert_eq!(after, transitions + 1);
    plane.kubectl.ok(&["scale", "rc", "web", "--replicas=5"]);
    plane.wait("b scales to 5", T, || {
        (plane.pods("default", "app=web").len() == 5).then_some(())
    });
}

#[test]
fn leader_election_one_manager_acts_the_other_takes_over() {
    leader_election(Backend::Embedded);
}

#[test]
fn leader_election_one_manager_acts_the_other_takes_over_on_etcd() {
    leader_election(Backend::Etcd);
}
