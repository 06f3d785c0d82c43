//! Graceful deletion of pods: what a DELETE does to a pod (upstream's
//! `rest.BeforeDelete` with the pod strategy's `CheckGracefulDelete`).
//!
//! A pod bound to a node is not removed by the first DELETE: it gets a
//! `deletionTimestamp` (now + the grace period) and
//! `deletionGracePeriodSeconds`, and its kubelet (our node agent) stops the
//! containers and deletes it again with grace 0, which removes it. The
//! grace period is the DeleteOptions' `gracePeriodSeconds`, else the pod's
//! `spec.terminationGracePeriodSeconds` (defaulted to 30); an unscheduled
//! or finished pod, or grace 0 (`kubectl delete --force --grace-period=0`),
//! is removed at once. A later DELETE may only shorten a pending grace
//! period.
use std::time::{Duration, SystemTime};

use serde_json::Value;

use super::clock;

/// What a DELETE does to a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum PodDelete {
    /// Remove it now (finalizers still hold it, marked with grace 0).
    Now,
    /// Keep it, terminating: `deletionTimestamp` (RFC 3339) and
    /// `deletionGracePeriodSeconds` (seconds, > 0) to write.
    Mark { timestamp: String, grace: i64 },
    /// Already terminating with a grace period no longer than the one
    /// asked for: the pod is answered unchanged.
    Pending,
}

fn grace_of(pod: &Value) -> Option<i64> {
    pod.pointer("/metadata/deletionGracePeriodSeconds")
        .and_then(Value::as_i64)
}

fn plus(t: SystemTime, secs: i64) -> SystemTime {
    if secs >= 0 {
        t + Duration::from_secs(secs.unsigned_abs())
    } else {
        t.checked_sub(Duration::from_secs(secs.unsigned_abs()))
            .unwrap_or(t)
    }
}

/// Plans a DELETE of `pod` with the DeleteOptions' `gracePeriodSeconds`
/// (`requested`; negative counts as 1, as upstream), at `now`.
pub(super) fn plan(pod: &Value, requested: Option<i64>, now: SystemTime) -> PodDelete {
    let requested = requested.map(|g| if g < 0 { 1 } else { g });
    if let Some(ts) = pod
        .pointer("/metadata/deletionTimestamp")
        .and_then(Value::as_str)
    {
        // Terminating already: without a grace period left it goes now;
        // otherwise only a shorter one changes anything, and moves the
        // deadline by the difference.
        let current = grace_of(pod).unwrap_or(0);
        if current <= 0 {
            return PodDelete::Now;
        }
        return match requested {
            Some(0) => PodDelete::Now,
            Some(g) if g < current => {
                let deadline = clock::parse(ts).unwrap_or(now);
                PodDelete::Mark {
                    timestamp: clock::rfc3339(plus(deadline, g - current)),
                    grace: g,
                }
            }
            _ => PodDelete::Pending,
        };
    }
    let str_at = |p: &str| pod.pointer(p).and_then(Value::as_str).unwrap_or("");
    let mut grace = requested.unwrap_or_else(|| {
        pod.pointer("/spec/terminationGracePeriodSeconds")
            .and_then(Value::as_i64)
            .unwrap_or(0)
    });
    if str_at("/spec/nodeName").is_empty()
        || matches!(str_at("/status/phase"), "Succeeded" | "Failed")
    {
        grace = 0;
    }
    if grace < 0 {
        grace = 1;
    }
    if grace == 0 {
        return PodDelete::Now;
    }
    PodDelete::Mark {
        timestamp: clock::rfc3339(plus(now, grace)),
        grace,
    }
}

/// Whether an object marked for deletion may go once no finalizer holds
/// it: not while a grace period runs (upstream's `ShouldDeleteDuringUpdate`:
/// the kubelet's DELETE with grace 0 ends it).
pub(super) fn grace_over(obj: &Value) -> bool {
    grace_of(obj).unwrap_or(0) <= 0
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn at(s: &str) -> SystemTime {
        clock::parse(s).unwrap()
    }

    #[test]
    fn a_bound_pod_gets_its_termination_grace_period() {
        let now = at("2026-01-01T00:00:00Z");
        let pod = json!({"metadata": {}, "spec": {"nodeName": "n1", "terminationGracePeriodSeconds": 30}});
        assert_eq!(
            plan(&pod, None, now),
            PodDelete::Mark {
                timestamp: "2026-01-01T00:00:30Z".into(),
                grace: 30
            }
        );
        assert_eq!(
            plan(&pod, Some(5), now),
            PodDelete::Mark {
                timestamp: "2026-01-01T00:00:05Z".into(),
                grace: 5
            }
        );
        assert_eq!(plan(&pod, Some(0), now), PodDelete::Now);
        assert_eq!(
            plan(&pod, Some(-3), now),
            PodDelete::Mark {
                timestamp: "2026-01-01T00:00:01Z".into(),
                grace: 1
            }
        );
    }

    #[test]
    fn unbound_finished_or_graceless_pods_go_at_once() {
        let now = SystemTime::now();
        let unbound = json!({"metadata": {}, "spec": {"terminationGracePeriodSeconds": 30}});
        assert_eq!(plan(&unbound, Some(10), now), PodDelete::Now);
        let done = json!({"metadata": {}, "spec": {"nodeName": "n1", "terminationGracePeriodSeconds": 30},
                          "status": {"phase": "Succeeded"}});
        assert_eq!(plan(&done, None, now), PodDelete::Now);
        let zero =
            json!({"metadata": {}, "spec": {"nodeName": "n1", "terminationGracePeriodSeconds": 0}});
        assert_eq!(plan(&zero, None, now), PodDelete::Now);
    }

    #[test]
    fn a_second_delete_may_only_shorten_the_grace_period() {
        let now = at("2026-01-01T00:00:10Z");
        let pod = json!({"metadata": {"deletionTimestamp": "2026-01-01T00:00:30Z", "deletionGracePeriodSeconds": 30},
                         "spec": {"nodeName": "n1", "terminationGracePeriodSeconds": 30}});
        assert_eq!(plan(&pod, None, now), PodDelete::Pending);
        assert_eq!(plan(&pod, Some(30), now), PodDelete::Pending);
        assert_eq!(plan(&pod, Some(60), now), PodDelete::Pending);
        assert_eq!(
            plan(&pod, Some(10), now),
            PodDelete::Mark {
                timestamp: "2026-01-01T00:00:10Z".into(),
                grace: 10
            }
        );
        assert_eq!(plan(&pod, Some(0), now), PodDelete::Now);
        let marked = json!({"metadata": {"deletionTimestamp": "2026-01-01T00:00:00Z", "deletionGracePeriodSeconds": 0},
                            "spec": {"nodeName": "n1"}});
        assert_eq!(plan(&marked, Some(30), now), PodDelete::Now);
        assert!(grace_over(&marked));
        assert!(!grace_over(&pod));
    }
}
