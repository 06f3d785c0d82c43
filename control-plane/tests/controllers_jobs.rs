//! The Job controller against a real sy-apiserver (both stores), driven by
//! kubectl, with hollow nodes running the pods and the test playing the
//! kubelet that reports them Succeeded or Failed: completions and
//! parallelism (never more pods than parallelism), a pod deleted while
//! running counted as failed and replaced, `backoffLimit` ending the Job
//! `Failed`, `kubectl wait --for=condition=complete`, and
//! `ttlSecondsAfterFinished` removing a finished Job with its pods.
mod common;
mod controllers_support;

use std::time::Duration;

use common::Backend;
use controllers_support::{Plane, names, running};
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, ResourceExt as _,
    api::{Patch, PatchParams},
};
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(30);
const FINALIZER: &str = "batch.kubernetes.io/job-tracking";

fn job(name: &str, completions: u32, parallelism: u32, backoff: u32, ttl: Option<u32>) -> String {
    let ttl = ttl.map_or(String::new(), |t| {
        format!("  ttlSecondsAfterFinished: {t}\n")
    });
    format!(
        "apiVersion: batch/v1
kind: Job
metadata: {{name: {name}}}
spec:
  completions: {completions}
  parallelism: {parallelism}
  backoffLimit: {backoff}
{ttl}  template:
    spec:
      restartPolicy: Never
      containers: [{{name: work, image: busybox, command: [sh, -c, 'true']}}]
"
    )
}

/// The test as kubelet: the pod's containers ended with `phase`.
fn finish(plane: &Plane, pod: &str, phase: &str) {
    let api: Api<Pod> = Api::namespaced(plane.client.clone(), "default");
    let status = json!({"status": {"phase": phase, "conditions": [
        {"type": "Ready", "status": "False", "reason": "PodCompleted"}]}});
    plane
        .rt
        .block_on(api.patch_status(pod, &PatchParams::default(), &Patch::Merge(&status)))
        .unwrap_or_else(|e| panic!("marking pod {pod} {phase}: {e}"));
}

fn job_pods(plane: &Plane, job: &str) -> Vec<Pod> {
    plane.pods("default", &format!("batch.kubernetes.io/job-name={job}"))
}

fn active(pods: &[Pod]) -> Vec<Pod> {
    pods.iter()
        .filter(|p| {
            p.metadata.deletion_timestamp.is_none()
                && !matches!(
                    p.status.as_ref().and_then(|s| s.phase.as_deref()),
                    Some("Succeeded" | "Failed")
                )
        })
        .cloned()
        .collect()
}

fn status(plane: &Plane, job: &str) -> Value {
    plane.kubectl.json(&["get", "job", job])["status"].clone()
}

fn condition(status: &Value, ty: &str) -> Option<Value> {
    status["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == ty && c["status"] == "True")
        .cloned()
}

fn jobs(backend: Backend) {
    let mut plane = Plane::start(backend, 2);
    plane.start_manager(&["--controllers=job,garbagecollector"]);
    plane.start_scheduler();

    // completions 3, parallelism 2: two pods at a time until three succeed.
    plane
        .kubectl
        .ok_stdin(&["create", "-f", "-"], &job("calc", 3, 2, 6, None));
    let mut succeeded: Vec<String> = Vec::new();
    while succeeded.len() < 3 {
        let pods = plane.wait("a running pod of calc", T, || {
            let all = job_pods(&plane, "calc");
            let act = active(&all);
            assert!(
                act.len() <= 2,
                "never more than parallelism (2) active pods: {:?}",
                names(&act)
            );
            let run: Vec<Pod> = act.into_iter().filter(running).collect();
            (!run.is_empty()).then_some(run)
        });
        let p = &pods[0];
        assert!(
            p.finalizers().iter().any(|f| f == FINALIZER),
            "a running Job pod holds the tracking finalizer"
        );
        finish(&plane, &p.name_any(), "Succeeded");
        succeeded.push(p.name_any());
    }
    plane.kubectl.ok(&[
        "wait",
        "--for=condition=complete",
        "job/calc",
        "--timeout=30s",
    ]);
    let s = status(&plane, "calc");
    assert_eq!(s["succeeded"], 3, "{s}");
    assert!(s["failed"].is_null(), "{s}");
    assert!(s["active"].is_null(), "{s}");
    assert!(
        s["completionTime"].is_string() && s["startTime"].is_string(),
        "{s}"
    );
    assert_eq!(
        condition(&s, "Complete").unwrap()["reason"],
        "CompletionsReached"
    );
    assert!(condition(&s, "SuccessCriteriaMet").is_some(), "{s}");
    let all = job_pods(&plane, "calc");
    assert_eq!(
        all.len(),
        3,
        "exactly three pods were made: {:?}",
        names(&all)
    );
    plane.wait("finalizers removed once counted", T, || {
        job_pods(&plane, "calc")
            .iter()
            .all(|p| !p.finalizers().iter().any(|f| f == FINALIZER))
            .then_some(())
    });

    // backoffLimit 1: a pod deleted while running and a Failed pod are two
    // failures, one more than the limit.
    plane
        .kubectl
        .ok_stdin(&["create", "-f", "-"], &job("flaky", 1, 1, 1, None));
    let first = plane.wait("flaky's first pod running", T, || {
        active(&job_pods(&plane, "flaky")).into_iter().find(running)
    });
    plane
        .kubectl
        .ok(&["delete", "pod", &first.name_any(), "--wait=false"]);
    plane.wait("the deleted pod counted as failed, gone", T, || {
        let s = status(&plane, "flaky");
        let gone = !names(&job_pods(&plane, "flaky")).contains(&first.name_any());
        (s["failed"] == 1 && gone).then_some(())
    });
    let second = plane.wait("a replacement pod running", T, || {
        active(&job_pods(&plane, "flaky")).into_iter().find(running)
    });
    assert_ne!(second.name_any(), first.name_any());
    finish(&plane, &second.name_any(), "Failed");
    plane.kubectl.ok(&[
        "wait",
        "--for=condition=failed",
        "job/flaky",
        "--timeout=30s",
    ]);
    let s = status(&plane, "flaky");
    assert_eq!(s["failed"], 2, "{s}");
    assert_eq!(
        condition(&s, "Failed").unwrap()["reason"],
        "BackoffLimitExceeded"
    );
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        active(&job_pods(&plane, "flaky")).is_empty(),
        "no new pod after the Job failed"
    );
    let events = plane.kubectl.ok(&[
        "get",
        "events",
        "--field-selector=involvedObject.name=flaky",
        "-o",
        "jsonpath={.items[*].reason}",
    ]);
    assert!(events.contains("BackoffLimitExceeded"), "{events}");
    assert!(events.contains("SuccessfulCreate"), "{events}");

    // ttlSecondsAfterFinished: the Job and its pods go once it finished.
    plane
        .kubectl
        .ok_stdin(&["create", "-f", "-"], &job("brief", 1, 1, 6, Some(1)));
    let p = plane.wait("brief's pod running", T, || {
        active(&job_pods(&plane, "brief")).into_iter().find(running)
    });
    finish(&plane, &p.name_any(), "Succeeded");
    plane.wait("brief deleted after its TTL, with its pod", T, || {
        let gone = !plane.kubectl.run(&["get", "job", "brief"]).status.success();
        (gone && job_pods(&plane, "brief").is_empty()).then_some(())
    });
}

#[test]
fn jobs_complete_fail_and_expire() {
    jobs(Backend::Embedded);
}

#[test]
fn jobs_complete_fail_and_expire_on_etcd() {
    jobs(Backend::Etcd);
}
