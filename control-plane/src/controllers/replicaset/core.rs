//! The ReplicaSet / ReplicationController decisions (pure): which pods to
//! delete first, how many to create, and the status to report — upstream's
//! `replica_set.go`, `replica_set_utils.go` and `controller_utils.go`.
use std::{cmp::Ordering, collections::BTreeMap, collections::HashMap};

use k8s_openapi::{api::core::v1::Pod, jiff::Timestamp};
use kube::ResourceExt as _;

use crate::controllers::pods;

/// Most pods created or deleted in one sync (upstream's `BurstReplicas`).
pub const BURST_REPLICAS: usize = 500;

/// `controller.kubernetes.io/pod-deletion-cost`.
pub const DELETION_COST: &str = "controller.kubernetes.io/pod-deletion-cost";

/// How far the active pods are from the wanted count: positive = create
/// that many, negative = delete that many (each capped at
/// [`BURST_REPLICAS`]).
pub fn replica_diff(active: usize, wanted: i32) -> i64 {
    let d = i64::from(wanted.max(0)) - active as i64;
    d.clamp(-(BURST_REPLICAS as i64), BURST_REPLICAS as i64)
}

fn phase_rank(p: &Pod) -> u8 {
    match pods::phase(p) {
        "Pending" | "" => 0,
        "Unknown" => 1,
        "Running" => 2,
        _ => 3,
    }
}

fn deletion_cost(p: &Pod) -> i64 {
    p.annotations()
        .get(DELETION_COST)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn restarts(p: &Pod) -> i32 {
    p.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .map(|cs| cs.iter().map(|c| c.restart_count).max().unwrap_or(0))
        .unwrap_or(0)
}

fn created(p: &Pod) -> Option<Timestamp> {
    p.metadata.creation_timestamp.as_ref().map(|t| t.0)
}

/// Upstream's `ActivePodsWithRanks.Less`: `Less` = deleted first.
/// `rank` is the number of this controller's active pods on the same node
/// (pods doubled up on a node go first).
fn deletion_order(a: &Pod, ra: usize, b: &Pod, rb: usize) -> Ordering {
    // 1. Unassigned before assigned.
    let assigned = |p: &Pod| pods::node_name(p).is_some();
    if assigned(a) != assigned(b) {
        return assigned(a).cmp(&assigned(b));
    }
    // 2. Pending < Unknown < Running.
    if phase_rank(a) != phase_rank(b) {
        return phase_rank(a).cmp(&phase_rank(b));
    }
    // 3. Not ready before ready.
    if pods::is_ready(a) != pods::is_ready(b) {
        return pods::is_ready(a).cmp(&pods::is_ready(b));
    }
    // 4. Lower deletion cost first.
    if deletion_cost(a) != deletion_cost(b) {
        return deletion_cost(a).cmp(&deletion_cost(b));
    }
    // 5. More pods on the same node first.
    if ra != rb {
        return rb.cmp(&ra);
    }
    // 6. Both ready: the more recently ready first.
    if pods::is_ready(a) && pods::is_ready(b) {
        let (ta, tb) = (pods::ready_since(a), pods::ready_since(b));
        if ta != tb {
            return tb.cmp(&ta);
        }
    }
    // 7. More restarts first.
    if restarts(a) != restarts(b) {
        return restarts(b).cmp(&restarts(a));
    }
    // 8. Newer first.
    let (ca, cb) = (created(a), created(b));
    if ca != cb {
        return cb.cmp(&ca);
    }
    a.uid().cmp(&b.uid())
}

/// The `n` pods to delete, in upstream's order of preference.
pub fn pods_to_delete<'a>(active: &[&'a Pod], n: usize) -> Vec<&'a Pod> {
    let mut per_node: HashMap<&str, usize> = HashMap::new();
    for p in active {
        if let Some(node) = pods::node_name(p) {
            *per_node.entry(node).or_default() += 1;
        }
    }
    let rank = |p: &Pod| pods::node_name(p).map_or(0, |n| per_node[n]);
    let mut ranked: Vec<&Pod> = active.to_vec();
    ranked.sort_by(|a, b| deletion_order(a, rank(a), b, rank(b)));
    ranked.truncate(n);
    ranked
}

/// Status counts (upstream's `calculateStatus`).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Counts {
    pub replicas: i32,
    pub fully_labeled: i32,
    pub ready: i32,
    pub available: i32,
}

/// Counts over the controller's active pods. `template_labels` decides
/// "fully labeled"; `min_ready_seconds` decides "available".
pub fn counts(
    active: &[&Pod],
    template_labels: &BTreeMap<String, String>,
    min_ready_seconds: i32,
    now: Timestamp,
) -> Counts {
    let mut c = Counts {
        replicas: active.len() as i32,
        ..Counts::default()
    };
    for p in active {
        let labels = pods::labels(*p);
        if template_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
        {
            c.fully_labeled += 1;
        }
        if pods::is_ready(p) {
            c.ready += 1;
            if pods::is_available(p, min_ready_seconds, now) {
                c.available += 1;
            }
        }
    }
    c
}

/// Slow-start batch sizes for `n` creations: 1, 2, 4, … (upstream's
/// `slowStartBatch` with an initial batch of 1), so that a failing create
/// (quota, a webhook, a bad template) fails once, not `n` times.
pub fn slow_start_batches(n: usize) -> Vec<usize> {
    let mut out = Vec::new();
    let (mut left, mut size) = (n, 1);
    while left > 0 {
        let b = size.min(left);
        out.push(b);
        left -= b;
        size *= 2;
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn pod(name: &str, node: Option<&str>, phase: &str, ready: bool, created: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "uid": name, "creationTimestamp": created},
            "spec": {"nodeName": node, "containers": []},
            "status": {"phase": phase, "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]}
        }))
        .unwrap()
    }

    #[test]
    fn unscheduled_then_not_ready_then_newest_go_first() {
        let old_ready = pod("a", Some("n1"), "Running", true, "2024-01-01T00:00:00Z");
        let new_ready = pod("b", Some("n2"), "Running", true, "2024-01-02T00:00:00Z");
        let not_ready = pod("c", Some("n3"), "Running", false, "2023-01-01T00:00:00Z");
        let pending = pod("d", None, "Pending", false, "2023-01-01T00:00:00Z");
        let all = [&old_ready, &new_ready, &not_ready, &pending];
        let names: Vec<String> = pods_to_delete(&all, 4)
            .iter()
            .map(|p| p.name_any())
            .collect();
        assert_eq!(names, ["d", "c", "b", "a"]);
        assert_eq!(pods_to_delete(&all, 1)[0].name_any(), "d");
    }

    #[test]
    fn doubled_up_nodes_lose_pods_first() {
        let a = pod("a", Some("n1"), "Running", true, "2024-01-01T00:00:00Z");
        let b = pod("b", Some("n1"), "Running", true, "2024-01-01T00:00:00Z");
        let c = pod("c", Some("n2"), "Running", true, "2024-01-03T00:00:00Z");
        let first = pods_to_delete(&[&a, &b, &c], 1)[0].name_any();
        assert_ne!(first, "c");
    }

    #[test]
    fn diff_and_batches() {
        assert_eq!(replica_diff(1, 3), 2);
        assert_eq!(replica_diff(5, 3), -2);
        assert_eq!(replica_diff(0, 10_000), 500);
        assert_eq!(slow_start_batches(10), vec![1, 2, 4, 3]);
        assert!(slow_start_batches(0).is_empty());
    }

    #[test]
    fn availability_waits_min_ready_seconds() {
        let mut p = pod("a", Some("n1"), "Running", true, "2024-01-01T00:00:00Z");
        p.status.as_mut().unwrap().conditions.as_mut().unwrap()[0].last_transition_time =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                "2024-01-01T00:00:00Z".parse().unwrap(),
            ));
        let now: Timestamp = "2024-01-01T00:00:05Z".parse().unwrap();
        let c = counts(&[&p], &BTreeMap::new(), 10, now);
        assert_eq!((c.ready, c.available), (1, 0));
        let c = counts(&[&p], &BTreeMap::new(), 5, now);
        assert_eq!(c.available, 1);
    }
}
