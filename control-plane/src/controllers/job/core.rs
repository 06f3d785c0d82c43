//! The Job controller's decisions, without I/O (upstream's
//! `pkg/controller/job/job_controller.go`, `NonIndexed` completion mode).
use k8s_openapi::api::{batch::v1::Job, core::v1::Pod};
use kube::ResourceExt as _;

use crate::controllers::pods;

/// The finalizer every Job pod carries until its end is counted in the
/// Job's status (upstream's `batch.kubernetes.io/job-tracking`), so that a
/// pod deleted right after it finished is still counted.
pub const TRACKING_FINALIZER: &str = "batch.kubernetes.io/job-tracking";

/// What of `spec` the controller uses, defaults applied as the API server
/// applies them (parallelism 1, backoffLimit 6).
#[derive(Clone, Debug, PartialEq)]
pub struct Spec {
    pub parallelism: i32,
    /// `None`: a work queue — done once one pod succeeded and none runs.
    pub completions: Option<i32>,
    pub backoff_limit: i32,
    pub suspend: bool,
    pub active_deadline_seconds: Option<i64>,
}

impl Spec {
    /// The Job's spec, or what is wrong with it.
    pub fn of(job: &Job) -> Result<Self, String> {
        let s = job.spec.as_ref().ok_or("spec: Required value")?;
        if s.completion_mode
            .as_deref()
            .is_some_and(|m| m != "NonIndexed")
        {
            return Err(format!(
                "spec.completionMode: {:?} is not supported (only NonIndexed)",
                s.completion_mode.as_deref().unwrap_or_default()
            ));
        }
        Ok(Self {
            parallelism: s.parallelism.unwrap_or(1).max(0),
            completions: s.completions,
            backoff_limit: s.backoff_limit.unwrap_or(6),
            suspend: s.suspend.unwrap_or(false),
            active_deadline_seconds: s.active_deadline_seconds,
        })
    }
}

/// How a pod of the Job stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PodState {
    /// Running or about to (not terminal, not being deleted).
    Active,
    /// Phase Succeeded.
    Succeeded,
    /// Phase Failed, or being deleted before it succeeded (upstream's
    /// `isPodFailed` with `podReplacementPolicy: TerminatingOrFailed`).
    Failed,
}

/// The state of one pod.
pub fn pod_state(pod: &Pod) -> PodState {
    match pods::phase(pod) {
        "Succeeded" => PodState::Succeeded,
        "Failed" => PodState::Failed,
        _ if pod.metadata.deletion_timestamp.is_some() => PodState::Failed,
        _ => PodState::Active,
    }
}

/// Whether the pod still holds the tracking finalizer.
pub fn has_tracking_finalizer(pod: &Pod) -> bool {
    pod.finalizers().iter().any(|f| f == TRACKING_FINALIZER)
}

/// Why a Job ends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum End {
    /// Enough pods succeeded: condition `Complete` (reason
    /// `CompletionsReached`).
    Complete,
    /// `Failed` with upstream's reason and message.
    Failed {
        reason: &'static str,
        message: &'static str,
    },
}

/// The Job's end, if it has reached one: more failures than
/// `backoffLimit`, past `activeDeadlineSeconds`, or enough successes.
/// `running_for` is the seconds since `status.startTime`.
pub fn end(
    spec: &Spec,
    succeeded: i32,
    failed: i32,
    active: i32,
    running_for: Option<i64>,
) -> Option<End> {
    if failed > spec.backoff_limit {
        return Some(End::Failed {
            reason: "BackoffLimitExceeded",
            message: "Job has reached the specified backoff limit",
        });
    }
    if let (Some(deadline), Some(t)) = (spec.active_deadline_seconds, running_for)
        && !spec.suspend
        && t >= deadline
    {
        return Some(End::Failed {
            reason: "DeadlineExceeded",
            message: "Job was active longer than specified deadline",
        });
    }
    let complete = match spec.completions {
        Some(c) => succeeded >= c,
        None => succeeded >= 1 && active == 0,
    };
    complete.then_some(End::Complete)
}

/// How many pods should be active (upstream's `manageJob`): none while
/// suspended; with `completions`, parallelism but never more than the
/// successes still missing; as a work queue, parallelism until the first
/// success, then only those still running.
pub fn wanted_active(spec: &Spec, succeeded: i32, active: i32) -> i32 {
    if spec.suspend {
        return 0;
    }
    match spec.completions {
        Some(c) => spec.parallelism.min((c - succeeded).max(0)),
        None if succeeded > 0 => active.min(spec.parallelism),
        None => spec.parallelism,
    }
}

/// Pods to delete when there are `surplus` too many active ones: not yet
/// bound first, then not ready, then the newest (upstream's
/// `ActivePods` order).
pub fn surplus<'a>(active: &[&'a Pod], surplus: usize) -> Vec<&'a Pod> {
    let mut ranked: Vec<&Pod> = active.to_vec();
    ranked.sort_by_key(|p| {
        (
            pods::node_name(p).is_some(),
            pods::is_ready(p),
            std::cmp::Reverse(p.metadata.creation_timestamp.clone().map(|t| t.0)),
        )
    });
    ranked.truncate(surplus);
    ranked
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(parallelism: i32, completions: Option<i32>) -> Spec {
        Spec {
            parallelism,
            completions,
            backoff_limit: 2,
            suspend: false,
            active_deadline_seconds: None,
        }
    }

    #[test]
    fn wanted_pods() {
        assert_eq!(wanted_active(&spec(3, Some(5)), 0, 0), 3);
        assert_eq!(
            wanted_active(&spec(3, Some(5)), 3, 2),
            2,
            "only 2 more needed"
        );
        assert_eq!(wanted_active(&spec(3, Some(5)), 5, 0), 0);
        assert_eq!(wanted_active(&spec(2, None), 0, 2), 2);
        assert_eq!(
            wanted_active(&spec(2, None), 1, 1),
            1,
            "work queue: no new pods after a success"
        );
        let mut s = spec(3, Some(5));
        s.suspend = true;
        assert_eq!(wanted_active(&s, 0, 3), 0);
    }

    #[test]
    fn ends() {
        let s = spec(2, Some(3));
        assert_eq!(
            end(&s, 2, 2, 2, None),
            None,
            "2 failures within a limit of 2"
        );
        assert!(matches!(
            end(&s, 2, 3, 2, None),
            Some(End::Failed {
                reason: "BackoffLimitExceeded",
                ..
            })
        ));
        assert_eq!(end(&s, 3, 0, 0, None), Some(End::Complete));
        assert_eq!(end(&spec(2, None), 1, 0, 1, None), None, "one still runs");
        assert_eq!(end(&spec(2, None), 1, 0, 0, None), Some(End::Complete));
        let mut d = spec(1, Some(1));
        d.active_deadline_seconds = Some(10);
        assert_eq!(end(&d, 0, 0, 1, Some(9)), None);
        assert!(matches!(
            end(&d, 0, 0, 1, Some(10)),
            Some(End::Failed {
                reason: "DeadlineExceeded",
                ..
            })
        ));
    }

    #[test]
    fn pod_states() {
        let mut p = Pod::default();
        assert_eq!(pod_state(&p), PodState::Active);
        p.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::now(),
        ));
        assert_eq!(
            pod_state(&p),
            PodState::Failed,
            "terminating counts as failed"
        );
        p.status = Some(k8s_openapi::api::core::v1::PodStatus {
            phase: Some("Succeeded".into()),
            ..Default::default()
        });
        assert_eq!(pod_state(&p), PodState::Succeeded);
    }
}
