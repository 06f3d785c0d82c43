//! kube-scheduler's default filter and score plugins, as pure functions
//! over a pod and one node's summary ([`NodeInfo`]). Reasons are worded as
//! upstream's, because users and tests read them in `FailedScheduling`.
use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::{
    Node, NodeSelectorRequirement, NodeSelectorTerm, Pod, PodAffinityTerm, Taint, Toleration,
};
use kube::{ResourceExt as _, core::SelectorExt as _};

use super::resources::{self, Amounts};
use crate::controllers::pods;

/// What is bound (or assumed) on one node.
#[derive(Debug, Default, Clone)]
pub struct NodeInfo {
    /// Σ requests of its pods (milli-units).
    pub requested: Amounts,
    /// Σ CPU / memory with upstream's non-zero defaults (for scoring).
    pub nonzero: (i128, i128),
    /// Pods bound to it.
    pub pod_count: usize,
    /// Host ports in use: (protocol, hostIP, port).
    pub host_ports: Vec<(String, String, i32)>,
    /// Pods per controller uid (for spreading).
    pub owners: HashMap<String, usize>,
    /// (namespace, labels) of its pods (for inter-pod affinity).
    pub pod_labels: Vec<(String, BTreeMap<String, String>)>,
}

impl NodeInfo {
    /// Adds (`sign` = 1) or removes (`sign` = -1) one pod's share.
    pub fn account(&mut self, pod: &Pod, sign: i32) {
        let s = i128::from(sign);
        for (k, v) in resources::pod_requests(pod) {
            *self.requested.entry(k).or_default() += s * v;
        }
        let (c, m) = resources::nonzero_requests(pod);
        self.nonzero.0 += s * c;
        self.nonzero.1 += s * m;
        let ports = host_ports(pod);
        let ns = pod.namespace().unwrap_or_default();
        let owner = pods::controller_of(pod).map(|r| r.uid.clone());
        if sign > 0 {
            self.pod_count += 1;
            self.host_ports.extend(ports);
            if let Some(o) = owner {
                *self.owners.entry(o).or_default() += 1;
            }
            self.pod_labels.push((ns, pods::labels(pod).clone()));
        } else {
            self.pod_count = self.pod_count.saturating_sub(1);
            for p in ports {
                if let Some(i) = self.host_ports.iter().position(|h| *h == p) {
                    self.host_ports.remove(i);
                }
            }
            if let Some(o) = owner
                && let Some(n) = self.owners.get_mut(&o)
            {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.owners.remove(&o);
                }
            }
            let labels = pods::labels(pod);
            if let Some(i) = self
                .pod_labels
                .iter()
                .position(|(n, l)| *n == ns && l == labels)
            {
                self.pod_labels.remove(i);
            }
        }
    }
}

/// The pod's host ports: (protocol, hostIP or 0.0.0.0, port).
pub fn host_ports(pod: &Pod) -> Vec<(String, String, i32)> {
    pod.spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| {
            let port = p.host_port.filter(|h| *h > 0)?;
            Some((
                p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                p.host_ip
                    .clone()
                    .filter(|i| !i.is_empty())
                    .unwrap_or_else(|| "0.0.0.0".into()),
                port,
            ))
        })
        .collect()
}

/// A toleration tolerates a taint: equal or empty effect, and `Exists`
/// with an equal or empty key, or `Equal` with equal key and value.
pub fn tolerates(t: &Toleration, taint: &Taint) -> bool {
    if let Some(e) = t.effect.as_deref().filter(|e| !e.is_empty())
        && e != taint.effect
    {
        return false;
    }
    let key = t.key.as_deref().unwrap_or("");
    if !key.is_empty() && key != taint.key {
        return false;
    }
    match t.operator.as_deref().unwrap_or("Equal") {
        "Exists" => true,
        "Equal" | "" => {
            !key.is_empty()
                && t.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or("")
        }
        _ => false,
    }
}

fn tolerations(pod: &Pod) -> &[Toleration] {
    pod.spec
        .as_ref()
        .and_then(|s| s.tolerations.as_deref())
        .unwrap_or_default()
}

fn taints(node: &Node) -> &[Taint] {
    node.spec
        .as_ref()
        .and_then(|s| s.taints.as_deref())
        .unwrap_or_default()
}

/// Whether `pod` tolerates every taint of `node` with one of `effects`;
/// the first one it does not, otherwise.
pub fn untolerated<'a>(pod: &Pod, node: &'a Node, effects: &[&str]) -> Option<&'a Taint> {
    taints(node)
        .iter()
        .filter(|t| effects.contains(&t.effect.as_str()))
        .find(|t| !tolerations(pod).iter().any(|tol| tolerates(tol, t)))
}

fn requirement_matches(r: &NodeSelectorRequirement, value: Option<&str>) -> bool {
    let values = r.values.as_deref().unwrap_or_default();
    match r.operator.as_str() {
        "In" => value.is_some_and(|v| values.iter().any(|x| x == v)),
        "NotIn" => value.is_none_or(|v| !values.iter().any(|x| x == v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" | "Lt" => {
            let (Some(v), Some(bound)) = (
                value.and_then(|v| v.parse::<i64>().ok()),
                values.first().and_then(|b| b.parse::<i64>().ok()),
            ) else {
                return false;
            };
            if r.operator == "Gt" {
                v > bound
            } else {
                v < bound
            }
        }
        _ => false,
    }
}

/// A node selector term: its expressions (labels) and fields
/// (`metadata.name` only) all hold; an empty term matches nothing.
pub fn term_matches(term: &NodeSelectorTerm, node: &Node) -> bool {
    let exprs = term.match_expressions.as_deref().unwrap_or_default();
    let fields = term.match_fields.as_deref().unwrap_or_default();
    if exprs.is_empty() && fields.is_empty() {
        return false;
    }
    let labels = pods::labels(node);
    exprs
        .iter()
        .all(|r| requirement_matches(r, labels.get(&r.key).map(String::as_str)))
        && fields.iter().all(|r| {
            r.key == "metadata.name" && requirement_matches(r, node.metadata.name.as_deref())
        })
}

/// `nodeSelector` and the required node affinity both hold.
pub fn node_affinity_matches(pod: &Pod, node: &Node) -> bool {
    let Some(spec) = pod.spec.as_ref() else {
        return true;
    };
    let labels = pods::labels(node);
    if let Some(sel) = spec.node_selector.as_ref()
        && !sel.iter().all(|(k, v)| labels.get(k) == Some(v))
    {
        return false;
    }
    let required = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|n| {
            n.required_during_scheduling_ignored_during_execution
                .as_ref()
        });
    match required {
        Some(r) => r.node_selector_terms.iter().any(|t| term_matches(t, node)),
        None => true,
    }
}

fn term_selects(
    term: &PodAffinityTerm,
    pod_ns: &str,
    ns: &str,
    labels: &BTreeMap<String, String>,
) -> bool {
    let in_ns = match term.namespaces.as_ref().filter(|n| !n.is_empty()) {
        Some(list) => list.iter().any(|n| n == ns),
        None => ns == pod_ns,
    };
    in_ns
        && term
            .label_selector
            .as_ref()
            .and_then(|s| pods::selector(s).ok())
            .is_some_and(|s| s.matches(labels))
}

/// Pods matching `term` in the topology domain (`topologyKey` value) of
/// `node`, over all nodes.
fn matches_in_domain(
    term: &PodAffinityTerm,
    pod_ns: &str,
    node: &Node,
    nodes: &[(&Node, &NodeInfo)],
) -> usize {
    let Some(domain) = pods::labels(node).get(&term.topology_key) else {
        return 0;
    };
    nodes
        .iter()
        .filter(|(n, _)| pods::labels(*n).get(&term.topology_key) == Some(domain))
        .map(|(_, info)| {
            info.pod_labels
                .iter()
                .filter(|(ns, l)| term_selects(term, pod_ns, ns, l))
                .count()
        })
        .sum()
}

/// The filters, in upstream's order; each failing reason as upstream words
/// it. `nodes` is the whole cluster (for inter-pod affinity).
pub fn filter(
    pod: &Pod,
    node: &Node,
    info: &NodeInfo,
    nodes: &[(&Node, &NodeInfo)],
) -> Vec<String> {
    let mut reasons = Vec::new();
    let spec = pod.spec.clone().unwrap_or_default();
    // NodeUnschedulable
    if node.spec.as_ref().and_then(|s| s.unschedulable) == Some(true) {
        let t = Taint {
            key: "node.kubernetes.io/unschedulable".into(),
            effect: "NoSchedule".into(),
            ..Taint::default()
        };
        if !tolerations(pod).iter().any(|tol| tolerates(tol, &t)) {
            reasons.push("node(s) were unschedulable".to_owned());
            return reasons;
        }
    }
    // NodeName
    if let Some(n) = spec.node_name.as_deref().filter(|n| !n.is_empty())
        && Some(n) != node.metadata.name.as_deref()
    {
        reasons.push("node(s) didn't match the requested node name".to_owned());
        return reasons;
    }
    // TaintToleration
    if let Some(t) = untolerated(pod, node, &["NoSchedule", "NoExecute"]) {
        reasons.push(format!(
            "node(s) had untolerated taint {{{}: {}}}",
            t.key,
            t.value.as_deref().unwrap_or("")
        ));
        return reasons;
    }
    // NodeAffinity
    if !node_affinity_matches(pod, node) {
        reasons.push("node(s) didn't match Pod's node affinity/selector".to_owned());
        return reasons;
    }
    // NodePorts
    let wanted = host_ports(pod);
    if wanted.iter().any(|(proto, ip, port)| {
        info.host_ports.iter().any(|(p2, ip2, port2)| {
            proto == p2 && port == port2 && (ip == ip2 || ip == "0.0.0.0" || ip2 == "0.0.0.0")
        })
    }) {
        reasons.push("node(s) didn't have free ports for the requested pod ports".to_owned());
    }
    // NodeResourcesFit
    let alloc = resources::allocatable(node);
    if (info.pod_count as i128 + 1) * 1000 > alloc.get("pods").copied().unwrap_or(110_000) {
        reasons.push("Too many pods".to_owned());
    }
    for (res, want) in resources::pod_requests(pod) {
        if want <= 0 {
            continue;
        }
        let have = alloc.get(&res).copied().unwrap_or(0);
        let used = info.requested.get(&res).copied().unwrap_or(0);
        if have < used + want {
            reasons.push(format!("Insufficient {res}"));
        }
    }
    // InterPodAffinity (required terms of the incoming pod)
    let pod_ns = pod.namespace().unwrap_or_default();
    if let Some(aff) = spec.affinity.as_ref() {
        for term in aff
            .pod_anti_affinity
            .as_ref()
            .and_then(|a| {
                a.required_during_scheduling_ignored_during_execution
                    .as_ref()
            })
            .into_iter()
            .flatten()
        {
            if matches_in_domain(term, &pod_ns, node, nodes) > 0 {
                reasons.push("node(s) didn't match pod anti-affinity rules".to_owned());
                break;
            }
        }
        for term in aff
            .pod_affinity
            .as_ref()
            .and_then(|a| {
                a.required_during_scheduling_ignored_during_execution
                    .as_ref()
            })
            .into_iter()
            .flatten()
        {
            let here = matches_in_domain(term, &pod_ns, node, nodes);
            // The first pod of a group that selects itself may go anywhere.
            let anywhere: usize = nodes
                .iter()
                .map(|(_, i)| {
                    i.pod_labels
                        .iter()
                        .filter(|(ns, l)| term_selects(term, &pod_ns, ns, l))
                        .count()
                })
                .sum();
            let selects_self = term_selects(term, &pod_ns, &pod_ns, pods::labels(pod));
            if here == 0
                && !(anywhere == 0
                    && selects_self
                    && pods::labels(node).contains_key(&term.topology_key))
            {
                reasons.push("node(s) didn't match pod affinity rules".to_owned());
                break;
            }
        }
    }
    reasons
}

/// Whether preemption could help a node that failed for `reason`
/// (resources, ports and anti-affinity could be freed; the rest cannot).
pub fn preemption_might_help(reason: &str) -> bool {
    reason.starts_with("Insufficient")
        || reason == "Too many pods"
        || reason.contains("free ports")
        || reason.contains("anti-affinity")
}

/// LeastAllocated over CPU and memory: free share after placing the pod,
/// 0–100.
fn least_allocated(pod: &Pod, node: &Node, info: &NodeInfo) -> i64 {
    let alloc = resources::allocatable(node);
    let (c, m) = resources::nonzero_requests(pod);
    let score = |cap: i128, used: i128| -> i128 {
        if cap <= 0 || used > cap {
            0
        } else {
            (cap - used) * 100 / cap
        }
    };
    let cpu = score(alloc.get("cpu").copied().unwrap_or(0), info.nonzero.0 + c);
    let mem = score(
        alloc.get("memory").copied().unwrap_or(0),
        info.nonzero.1 + m,
    );
    ((cpu + mem) / 2) as i64
}

/// BalancedAllocation: how evenly CPU and memory would be used, 0–100.
fn balanced(pod: &Pod, node: &Node, info: &NodeInfo) -> i64 {
    let alloc = resources::allocatable(node);
    let (c, m) = resources::nonzero_requests(pod);
    let frac = |cap: i128, used: i128| -> f64 {
        if cap <= 0 {
            1.0
        } else {
            (used as f64 / cap as f64).min(1.0)
        }
    };
    let f1 = frac(alloc.get("cpu").copied().unwrap_or(0), info.nonzero.0 + c);
    let f2 = frac(
        alloc.get("memory").copied().unwrap_or(0),
        info.nonzero.1 + m,
    );
    ((1.0 - (f1 - f2).abs() / 2.0) * 100.0) as i64
}

/// Scores every feasible node (upstream's weights: TaintToleration 3,
/// NodeAffinity 2, spreading 2, NodeResourcesFit 1, BalancedAllocation 1)
/// and returns the totals in the same order as `feasible`.
pub fn score(pod: &Pod, feasible: &[(&Node, &NodeInfo)]) -> Vec<i64> {
    let owner = pods::controller_of(pod).map(|r| r.uid.clone());
    let prefs = pod
        .spec
        .as_ref()
        .and_then(|s| s.affinity.as_ref())
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|n| {
            n.preferred_during_scheduling_ignored_during_execution
                .clone()
        })
        .unwrap_or_default();
    let affinity: Vec<i64> = feasible
        .iter()
        .map(|(n, _)| {
            prefs
                .iter()
                .filter(|p| term_matches(&p.preference, n))
                .map(|p| i64::from(p.weight))
                .sum()
        })
        .collect();
    let soft_taints: Vec<i64> = feasible
        .iter()
        .map(|(n, _)| {
            taints(n)
                .iter()
                .filter(|t| t.effect == "PreferNoSchedule")
                .filter(|t| !tolerations(pod).iter().any(|tol| tolerates(tol, t)))
                .count() as i64
        })
        .collect();
    let same_owner: Vec<i64> = feasible
        .iter()
        .map(|(_, i)| {
            owner
                .as_ref()
                .map_or(0, |o| i.owners.get(o).copied().unwrap_or(0)) as i64
        })
        .collect();
    let max_aff = affinity.iter().copied().max().unwrap_or(0);
    let max_taint = soft_taints.iter().copied().max().unwrap_or(0);
    let max_owner = same_owner.iter().copied().max().unwrap_or(0);
    feasible
        .iter()
        .enumerate()
        .map(|(i, (n, info))| {
            let aff = if max_aff > 0 {
                affinity[i] * 100 / max_aff
            } else {
                0
            };
            let taint = if max_taint > 0 {
                100 - soft_taints[i] * 100 / max_taint
            } else {
                100
            };
            let spread = if max_owner > 0 {
                (max_owner - same_owner[i]) * 100 / max_owner
            } else {
                100
            };
            3 * taint
                + 2 * aff
                + 2 * spread
                + least_allocated(pod, n, info)
                + balanced(pod, n, info)
        })
        .collect()
}

/// Upstream's FitError text from each node's failing reasons:
/// `0/N nodes are available: ` + the sorted `<count> <reason>` items + `.`,
/// then what preemption found (this scheduler does not preempt: a node
/// that only lacks room "found no victims", the rest are "not helpful").
pub fn fit_error(per_node: &[Vec<String>]) -> String {
    let total = per_node.len();
    if total == 0 {
        return "no nodes available to schedule pods".to_owned();
    }
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for reasons in per_node {
        for r in reasons {
            *counts.entry(r.as_str()).or_default() += 1;
        }
    }
    let mut items: Vec<String> = counts.iter().map(|(r, n)| format!("{n} {r}")).collect();
    items.sort();
    let helpful = per_node
        .iter()
        .filter(|rs| !rs.is_empty() && rs.iter().all(|r| preemption_might_help(r)))
        .count();
    let mut pre = Vec::new();
    if helpful > 0 {
        pre.push(format!(
            "{helpful} No preemption victims found for incoming pod"
        ));
    }
    if total > helpful {
        pre.push(format!(
            "{} Preemption is not helpful for scheduling",
            total - helpful
        ));
    }
    pre.sort();
    format!(
        "0/{total} nodes are available: {}. preemption: 0/{total} nodes are available: {}.",
        items.join(", "),
        pre.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn node(v: serde_json::Value) -> Node {
        serde_json::from_value(v).unwrap()
    }
    fn pod(v: serde_json::Value) -> Pod {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn taints_tolerations_and_unschedulable() {
        let n = node(
            json!({"metadata": {"name": "n1"}, "spec": {"taints": [{"key": "dedicated", "value": "db", "effect": "NoSchedule"}]}}),
        );
        let plain = pod(json!({"spec": {"containers": []}}));
        let tol = pod(
            json!({"spec": {"containers": [], "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "db"}]}}),
        );
        let info = NodeInfo::default();
        assert_eq!(
            filter(&plain, &n, &info, &[]),
            vec!["node(s) had untolerated taint {dedicated: db}"]
        );
        assert!(filter(&tol, &n, &info, &[]).is_empty());
        let cordoned = node(json!({"metadata": {"name": "n2"}, "spec": {"unschedulable": true}}));
        assert_eq!(
            filter(&plain, &cordoned, &info, &[]),
            vec!["node(s) were unschedulable"]
        );
    }

    #[test]
    fn affinity_selector_and_match_fields() {
        let n = node(json!({"metadata": {"name": "n1", "labels": {"disk": "ssd", "gen": "5"}}}));
        let by_name = pod(
            json!({"spec": {"containers": [], "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n2"]}]},
                                  {"matchExpressions": [{"key": "gen", "operator": "Gt", "values": ["4"]}]}]}}}}}),
        );
        assert!(node_affinity_matches(&by_name, &n));
        let sel = pod(json!({"spec": {"containers": [], "nodeSelector": {"disk": "hdd"}}}));
        assert_eq!(
            filter(&sel, &n, &NodeInfo::default(), &[]),
            vec!["node(s) didn't match Pod's node affinity/selector"]
        );
    }

    #[test]
    fn resources_ports_and_pod_count() {
        let n = node(
            json!({"metadata": {"name": "n1"}, "status": {"allocatable": {"cpu": "1", "memory": "1Gi", "pods": "1"}}}),
        );
        let big = pod(
            json!({"spec": {"containers": [{"name": "c", "resources": {"requests": {"cpu": "2"}},
            "ports": [{"containerPort": 80, "hostPort": 8080}]}]}}),
        );
        let mut info = NodeInfo::default();
        info.account(&pod(json!({"spec": {"containers": [{"name": "c", "ports": [{"containerPort": 80, "hostPort": 8080}]}]}})), 1);
        let r = filter(&big, &n, &info, &[]);
        assert!(r.contains(&"Insufficient cpu".to_owned()));
        assert!(r.contains(&"Too many pods".to_owned()));
        assert!(
            r.contains(&"node(s) didn't have free ports for the requested pod ports".to_owned())
        );
    }

    #[test]
    fn spreading_prefers_the_node_with_fewer_siblings() {
        let n1 = node(
            json!({"metadata": {"name": "n1"}, "status": {"allocatable": {"cpu": "4", "memory": "8Gi"}}}),
        );
        let n2 = node(
            json!({"metadata": {"name": "n2"}, "status": {"allocatable": {"cpu": "4", "memory": "8Gi"}}}),
        );
        let sibling = pod(
            json!({"metadata": {"ownerReferences": [{"apiVersion": "v1", "kind": "ReplicationController", "name": "rc", "uid": "rc1", "controller": true}]},
            "spec": {"containers": [{"name": "c"}]}}),
        );
        let mut i1 = NodeInfo::default();
        i1.account(&sibling, 1);
        let i2 = NodeInfo::default();
        let s = score(&sibling, &[(&n1, &i1), (&n2, &i2)]);
        assert!(s[1] > s[0], "{s:?}");
    }

    #[test]
    fn fit_error_is_worded_as_upstream() {
        let aff = "node(s) didn't match Pod's node affinity/selector".to_owned();
        let r = vec![
            vec![aff.clone()],
            vec!["Insufficient cpu".to_owned()],
            vec![aff],
        ];
        assert_eq!(
            fit_error(&r),
            "0/3 nodes are available: 1 Insufficient cpu, 2 node(s) didn't match Pod's node affinity/selector. \
             preemption: 0/3 nodes are available: 1 No preemption victims found for incoming pod, 2 Preemption is not helpful for scheduling."
        );
    }
}
