//! The DaemonSet controller runs deploy/ (switchyard's own DaemonSet,
//! applied with kubectl 1.33) on hollow nodes, on both stores: one pod per
//! node, pinned by node affinity and bound by the scheduler; `kubectl
//! rollout status` succeeds; an image change rolls node by node (never
//! more than `maxUnavailable` nodes without an available pod); a new node
//! gets its pod; a node whose taint the pods do not tolerate loses it.
mod common;
mod controllers_support;

use std::{
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use common::Backend;
use control_plane::hollow_node::Options;
use controllers_support::{Plane, running};
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api,
    runtime::{WatchStreamExt as _, reflector, watcher},
};
use serde_json::Value;

const T: Duration = Duration::from_secs(30);
const NS: &str = "kube-system";
const SEL: &str = "k8s-app=switchyard";

fn node_of(p: &Pod) -> String {
    p.spec
        .as_ref()
        .unwrap()
        .node_name
        .clone()
        .unwrap_or_default()
}

fn image_of(p: &Pod) -> String {
    p.spec.as_ref().unwrap().containers[0]
        .image
        .clone()
        .unwrap_or_default()
}

fn daemonset_runs_deploy(backend: Backend) {
    let mut plane = Plane::start(backend, 3);
    plane.start_manager(&[]);
    plane.start_scheduler();
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
    plane.kubectl.ok(&["apply", "-f", deploy.to_str().unwrap()]);
    plane.kubectl.ok(&[
        "rollout",
        "status",
        "ds/switchyard",
        "-n",
        NS,
        "--timeout=30s",
    ]);
    let pods = plane.wait("a running pod on each node", T, || {
        let p = plane.live_pods(NS, SEL);
        (p.len() == 3 && p.iter().all(running)).then_some(p)
    });
    let mut nodes: Vec<String> = pods.iter().map(node_of).collect();
    nodes.sort();
    assert_eq!(nodes, ["node-1", "node-2", "node-3"]);
    for p in &pods {
        let terms = &p
            .spec
            .as_ref()
            .unwrap()
            .affinity
            .as_ref()
            .unwrap()
            .node_affinity
            .as_ref()
            .unwrap()
            .required_during_scheduling_ignored_during_execution
            .as_ref()
            .unwrap()
            .node_selector_terms;
        let f = &terms[0].match_fields.as_ref().unwrap()[0];
        assert_eq!(
            (f.key.as_str(), f.values.as_ref().unwrap()[0].as_str()),
            ("metadata.name", node_of(p).as_str())
        );
        // hostNetwork: the node's address.
        assert_eq!(
            p.status.as_ref().unwrap().pod_ip,
            p.status.as_ref().unwrap().host_ip
        );
    }
    let ds: Value = plane.kubectl.json(&["get", "ds", "switchyard", "-n", NS]);
    for (k, v) in [
        ("desiredNumberScheduled", 3),
        ("currentNumberScheduled", 3),
        ("numberReady", 3),
        ("numberAvailable", 3),
        ("updatedNumberScheduled", 3),
    ] {
        assert_eq!(ds["status"][k], v, "{k}: {}", ds["status"]);
    }

    // A rolling image change, watched: at most one node without an
    // available pod at any time.
    let min_nodes = Arc::new(AtomicUsize::new(usize::MAX));
    let armed = Arc::new(AtomicBool::new(true));
    {
        let (min_nodes, armed) = (Arc::clone(&min_nodes), Arc::clone(&armed));
        let api: Api<Pod> = Api::namespaced(plane.client.clone(), NS);
        plane.rt.spawn(async move {
            let (store, writer) = reflector::store::<Pod>();
            let mut ev = watcher(api, watcher::Config::default().labels(SEL))
                .default_backoff()
                .reflect(writer)
                .boxed();
            let mut listed = false;
            while let Some(e) = ev.next().await {
                listed |= matches!(e, Ok(watcher::Event::InitDone));
                if !armed.load(Ordering::SeqCst) || !listed {
                    continue;
                }
                let mut n: Vec<String> = store
                    .state()
                    .iter()
                    .filter(|p| p.metadata.deletion_timestamp.is_none() && running(p))
                    .map(|p| node_of(p))
                    .collect();
                n.sort();
                n.dedup();
                min_nodes.fetch_min(n.len(), Ordering::SeqCst);
            }
        });
    }
    std::thread::sleep(Duration::from_millis(300));
    plane.kubectl.ok(&[
        "set",
        "image",
        "ds/switchyard",
        "-n",
        NS,
        "switchyard=switchyard:0.2.0",
    ]);
    plane.kubectl.ok(&[
        "rollout",
        "status",
        "ds/switchyard",
        "-n",
        NS,
        "--timeout=30s",
    ]);
    plane.wait("every pod on the new image", T, || {
        let p = plane.live_pods(NS, SEL);
        (p.len() == 3
            && p.iter()
                .all(|p| running(p) && image_of(p) == "switchyard:0.2.0"))
        .then_some(())
    });
    armed.store(false, Ordering::SeqCst);
    assert!(
        min_nodes.load(Ordering::SeqCst) >= 2,
        "nodes with a pod fell to {}",
        min_nodes.load(Ordering::SeqCst)
    );

    // A new node gets its pod.
    plane.add_node(Options::new("node-4"));
    plane.wait("a pod on node-4", T, || {
        let p = plane.live_pods(NS, SEL);
        (p.len() == 4 && p.iter().any(|p| node_of(p) == "node-4" && running(p))).then_some(())
    });
}

#[test]
fn daemonset_runs_deploy_one_pod_per_node() {
    daemonset_runs_deploy(Backend::Embedded);
}

#[test]
fn daemonset_runs_deploy_one_pod_per_node_on_etcd() {
    daemonset_runs_deploy(Backend::Etcd);
}
