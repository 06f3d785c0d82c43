//! The Deployment controller with the ReplicaSet controller, the scheduler
//! and hollow nodes, driven by kubectl 1.33 (`set image`, `rollout status |
//! history | undo | restart | pause | resume`, `scale`) on both stores:
//!
//! - a rolling update never has fewer than `replicas - maxUnavailable`
//!   ready pods, nor more than `replicas + maxSurge` pods (watched
//!   throughout by a pod watch);
//! - revisions, history, undo back to the first template, restart;
//! - pause stops the rollout, resume continues it;
//! - `revisionHistoryLimit` removes old empty ReplicaSets;
//! - `Recreate` never runs old and new pods together;
//! - a rollout that cannot progress hits `ProgressDeadlineExceeded`.
mod common;
mod controllers_support;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use common::Backend;
use controllers_support::{Plane, running};
use futures::StreamExt as _;
use k8s_openapi::api::{apps::v1::ReplicaSet, core::v1::Pod};
use kube::{
    Api, ResourceExt as _,
    api::ListParams,
    runtime::{WatchStreamExt as _, reflector, watcher},
};
use serde_json::Value;

const T: Duration = Duration::from_secs(30);

const DEPLOYMENT: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 4
  revisionHistoryLimit: 2
  selector: {matchLabels: {app: web}}
  strategy:
    type: RollingUpdate
    rollingUpdate: {maxSurge: 1, maxUnavailable: 1}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: web
        image: registry.example/web:1
"#;

/// Watches the pods of `selector` and records the fewest ready (and not
/// terminating) pods and the most pods seen at once, once armed.
struct Watch {
    min_ready: Arc<AtomicUsize>,
    max_pods: Arc<AtomicUsize>,
    armed: Arc<AtomicBool>,
    /// Two templates' pods ready at once (for Recreate).
    mixed: Arc<AtomicBool>,
}

fn watch(plane: &Plane, selector: &str) -> Watch {
    let w = Watch {
        min_ready: Arc::new(AtomicUsize::new(usize::MAX)),
        max_pods: Arc::new(AtomicUsize::new(0)),
        armed: Arc::new(AtomicBool::new(false)),
        mixed: Arc::new(AtomicBool::new(false)),
    };
    let api: Api<Pod> = Api::namespaced(plane.client.clone(), "default");
    let cfg = watcher::Config::default().labels(selector);
    let (min_ready, max_pods, armed, mixed) = (
        Arc::clone(&w.min_ready),
        Arc::clone(&w.max_pods),
        Arc::clone(&w.armed),
        Arc::clone(&w.mixed),
    );
    plane.rt.spawn(async move {
        let (store, writer) = reflector::store::<Pod>();
        let mut events = watcher(api, cfg).default_backoff().reflect(writer).boxed();
        let mut listed = false;
        while let Some(e) = events.next().await {
            listed |= matches!(e, Ok(watcher::Event::InitDone));
            if !armed.load(Ordering::SeqCst) || !listed {
                continue;
            }
            let pods = store.state();
            let live: Vec<_> = pods
                .iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .collect();
            let ready: Vec<_> = live.iter().filter(|p| running(p)).collect();
            min_ready.fetch_min(ready.len(), Ordering::SeqCst);
            max_pods.fetch_max(live.len(), Ordering::SeqCst);
            let mut hashes: Vec<String> = pods
                .iter()
                .filter(|p| running(p))
                .filter_map(|p| p.labels().get("pod-template-hash").cloned())
                .collect();
            hashes.sort();
            hashes.dedup();
            if hashes.len() > 1 {
                mixed.store(true, Ordering::SeqCst);
            }
        }
    });
    w
}

fn replica_sets(plane: &Plane, selector: &str) -> Vec<ReplicaSet> {
    let api: Api<ReplicaSet> = Api::namespaced(plane.client.clone(), "default");
    plane
        .rt
        .block_on(api.list(&ListParams::default().labels(selector)))
        .unwrap()
        .items
}

fn rollout_status(plane: &Plane, name: &str) -> String {
    plane.kubectl.ok(&[
        "rollout",
        "status",
        &format!("deployment/{name}"),
        "--timeout=30s",
    ])
}

fn image(plane: &Plane, name: &str) -> String {
    let d: Value = plane.kubectl.json(&["get", "deployment", name]);
    d["spec"]["template"]["spec"]["containers"][0]["image"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn rolling_update(backend: Backend) {
    let mut plane = Plane::start(backend, 3);
    plane.start_manager(&[]);
    plane.start_scheduler();
    let w = watch(&plane, "app=web");
    plane.kubectl.ok_stdin(&["create", "-f", "-"], DEPLOYMENT);
    let out = rollout_status(&plane, "web");
    assert!(
        out.contains("deployment \"web\" successfully rolled out"),
        "{out}"
    );
    let d: Value = plane.kubectl.json(&["get", "deployment", "web"]);
    assert_eq!(
        d["metadata"]["annotations"]["deployment.kubernetes.io/revision"],
        "1"
    );
    assert_eq!(d["status"]["availableReplicas"], 4);
    assert_eq!(d["status"]["updatedReplicas"], 4);
    let conds = d["status"]["conditions"].as_array().unwrap();
    assert!(conds.iter().any(|c| c["type"] == "Available"
        && c["status"] == "True"
        && c["reason"] == "MinimumReplicasAvailable"));
    assert!(conds.iter().any(|c| c["type"] == "Progressing"
        && c["status"] == "True"
        && c["reason"] == "NewReplicaSetAvailable"));
    let first = replica_sets(&plane, "app=web");
    assert_eq!(first.len(), 1);
    let first_name = first[0].name_any();
    assert!(first_name.starts_with("web-"));
    assert_eq!(
        first[0].labels()["pod-template-hash"],
        first_name["web-".len()..]
    );

    // A rolling update, watched throughout.
    w.armed.store(true, Ordering::SeqCst);
    plane.kubectl.ok(&[
        "set",
        "image",
        "deployment/web",
        "web=registry.example/web:2",
    ]);
    rollout_status(&plane, "web");
    assert!(
        w.min_ready.load(Ordering::SeqCst) >= 3,
        "ready fell to {}",
        w.min_ready.load(Ordering::SeqCst)
    );
    assert!(
        w.max_pods.load(Ordering::SeqCst) <= 5,
        "pods rose to {}",
        w.max_pods.load(Ordering::SeqCst)
    );
    let rss = replica_sets(&plane, "app=web");
    assert_eq!(rss.len(), 2);
    let old = rss.iter().find(|r| r.name_any() == first_name).unwrap();
    assert_eq!(old.spec.as_ref().unwrap().replicas, Some(0));
    let pods = plane.live_pods("default", "app=web");
    assert_eq!(pods.len(), 4);
    assert!(
        pods.iter()
            .all(|p| p.spec.as_ref().unwrap().containers[0].image.as_deref()
                == Some("registry.example/web:2"))
    );
    let history = plane.kubectl.ok(&["rollout", "history", "deployment/web"]);
    assert!(history.contains('1') && history.contains('2'), "{history}");

    // Undo: back to the first template, whose ReplicaSet becomes revision 3.
    plane.kubectl.ok(&["rollout", "undo", "deployment/web"]);
    rollout_status(&plane, "web");
    assert_eq!(image(&plane, "web"), "registry.example/web:1");
    let back = replica_sets(&plane, "app=web")
        .into_iter()
        .find(|r| r.name_any() == first_name)
        .unwrap();
    assert_eq!(back.spec.as_ref().unwrap().replicas, Some(4));
    assert_eq!(back.annotations()["deployment.kubernetes.io/revision"], "3");
    assert_eq!(
        back.annotations()["deployment.kubernetes.io/revision-history"],
        "1"
    );
    assert!(w.min_ready.load(Ordering::SeqCst) >= 3);

    // Restart: a new template (restartedAt), revision 4; the limit of 2 old
    // ReplicaSets holds.
    plane.kubectl.ok(&["rollout", "restart", "deployment/web"]);
    rollout_status(&plane, "web");
    let d: Value = plane.kubectl.json(&["get", "deployment", "web"]);
    assert_eq!(
        d["metadata"]["annotations"]["deployment.kubernetes.io/revision"],
        "4"
    );
    assert!(
        d["spec"]["template"]["metadata"]["annotations"]["kubectl.kubernetes.io/restartedAt"]
            .is_string()
    );
    plane.wait("at most 3 ReplicaSets (history limit 2)", T, || {
        (replica_sets(&plane, "app=web").len() == 3).then_some(())
    });
    assert!(w.min_ready.load(Ordering::SeqCst) >= 3);

    // Pause: a template change makes no ReplicaSet; resume rolls it out.
    plane.kubectl.ok(&["rollout", "pause", "deployment/web"]);
    plane.kubectl.ok(&[
        "set",
        "image",
        "deployment/web",
        "web=registry.example/web:3",
    ]);
    plane.wait("Progressing=Unknown DeploymentPaused", T, || {
        let d: Value = plane.kubectl.json(&["get", "deployment", "web"]);
        d["status"]["conditions"]
            .as_array()?
            .iter()
            .any(|c| {
                c["type"] == "Progressing"
                    && c["status"] == "Unknown"
                    && c["reason"] == "DeploymentPaused"
            })
            .then_some(())
    });
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        plane
            .live_pods("default", "app=web")
            .iter()
            .all(|p| p.spec.as_ref().unwrap().containers[0].image.as_deref()
                != Some("registry.example/web:3"))
    );
    plane.kubectl.ok(&["rollout", "resume", "deployment/web"]);
    rollout_status(&plane, "web");
    assert_eq!(image(&plane, "web"), "registry.example/web:3");
    assert!(w.min_ready.load(Ordering::SeqCst) >= 3);
    assert!(w.max_pods.load(Ordering::SeqCst) <= 5);

    // Scale.
    plane
        .kubectl
        .ok(&["scale", "deployment/web", "--replicas=6"]);
    rollout_status(&plane, "web");
    plane.wait("6 running pods", T, || {
        let p = plane.live_pods("default", "app=web");
        (p.len() == 6 && p.iter().all(running)).then_some(())
    });
}

#[test]
fn deployment_rolling_update_undo_restart_pause() {
    rolling_update(Backend::Embedded);
}

#[test]
fn deployment_rolling_update_undo_restart_pause_on_etcd() {
    rolling_update(Backend::Etcd);
}

#[test]
fn deployment_recreate_and_progress_deadline() {
    let mut plane = Plane::start(Backend::Embedded, 2);
    plane.start_manager(&[]);
    plane.start_scheduler();
    let w = watch(&plane, "app=batch");
    plane.kubectl.ok_stdin(
        &["create", "-f", "-"],
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: batch}\nspec:\n  replicas: 3\n  strategy: {type: Recreate}\n  selector: {matchLabels: {app: batch}}\n  template:\n    metadata: {labels: {app: batch}}\n    spec:\n      containers: [{name: c, image: registry.example/batch:1}]\n",
    );
    rollout_status(&plane, "batch");
    w.armed.store(true, Ordering::SeqCst);
    plane.kubectl.ok(&[
        "set",
        "image",
        "deployment/batch",
        "c=registry.example/batch:2",
    ]);
    rollout_status(&plane, "batch");
    plane.wait("3 new pods running", T, || {
        let p = plane.live_pods("default", "app=batch");
        (p.len() == 3 && p.iter().all(running)).then_some(())
    });
    assert!(
        !w.mixed.load(Ordering::SeqCst),
        "Recreate ran old and new pods together"
    );

    // A rollout that cannot progress (no node fits) times out.
    plane.kubectl.ok_stdin(
        &["create", "-f", "-"],
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: stuck}\nspec:\n  replicas: 1\n  progressDeadlineSeconds: 2\n  selector: {matchLabels: {app: stuck}}\n  template:\n    metadata: {labels: {app: stuck}}\n    spec:\n      nodeSelector: {disk: none}\n      containers: [{name: c, image: registry.example/c:1}]\n",
    );
    plane.wait("ProgressDeadlineExceeded", T, || {
        let d: Value = plane.kubectl.json(&["get", "deployment", "stuck"]);
        d["status"]["conditions"]
            .as_array()?
            .iter()
            .any(|c| {
                c["type"] == "Progressing"
                    && c["status"] == "False"
                    && c["reason"] == "ProgressDeadlineExceeded"
            })
            .then_some(())
    });
    let out = plane
        .kubectl
        .run(&["rollout", "status", "deployment/stuck", "--timeout=10s"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("exceeded its progress deadline"), "{err}");
}
