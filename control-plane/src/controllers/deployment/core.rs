//! The Deployment controller's arithmetic (pure): template hashes,
//! `maxSurge`/`maxUnavailable` fenceposts, one RollingUpdate step, and the
//! status conditions — upstream's `deployment_util.go`, `rolling.go` and
//! `progress.go`.
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::Value;

/// `pod-template-hash`.
pub const HASH_LABEL: &str = "pod-template-hash";
/// `deployment.kubernetes.io/revision`.
pub const REVISION: &str = "deployment.kubernetes.io/revision";
/// `deployment.kubernetes.io/revision-history`.
pub const REVISION_HISTORY: &str = "deployment.kubernetes.io/revision-history";
/// `deployment.kubernetes.io/desired-replicas`.
pub const DESIRED_REPLICAS: &str = "deployment.kubernetes.io/desired-replicas";
/// `deployment.kubernetes.io/max-replicas`.
pub const MAX_REPLICAS: &str = "deployment.kubernetes.io/max-replicas";

/// Deployment annotations never copied onto its ReplicaSets.
pub const NOT_COPIED: &[&str] = &[
    "kubectl.kubernetes.io/last-applied-configuration",
    REVISION,
    REVISION_HISTORY,
    DESIRED_REPLICAS,
    MAX_REPLICAS,
    "deployment.kubernetes.io/error-selector-overlapping-with",
    "deployment.kubernetes.io/selector-updated-at",
];

/// FNV-1a, 32 bits (upstream hashes with it too).
fn fnv1a32(data: &[u8]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in data {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// The `pod-template-hash` of a template (as JSON, without that label)
/// and a collision count: FNV-1a over a canonical encoding, its decimal
/// digits spelled in upstream's `SafeEncodeString` alphabet (no vowels, no
/// look-alikes). Upstream hashes Go's dump of the struct, which cannot be
/// reproduced; only stability matters, since ReplicaSets are matched by
/// template, never by hash.
pub fn template_hash(template: &Value, collision_count: Option<i32>) -> String {
    let mut bytes = serde_json::to_vec(template).unwrap_or_default();
    if let Some(c) = collision_count {
        bytes.extend_from_slice(&(c as u64).to_le_bytes());
    }
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    fnv1a32(&bytes)
        .to_string()
        .bytes()
        .map(|b| ALPHABET[usize::from(b) % ALPHABET.len()] as char)
        .collect()
}

/// A template as JSON with the hash label removed, for comparing a
/// Deployment's template with its ReplicaSets'.
pub fn without_hash(template: &Value) -> Value {
    let mut t = template.clone();
    if let Some(labels) = t
        .pointer_mut("/metadata/labels")
        .and_then(Value::as_object_mut)
    {
        labels.remove(HASH_LABEL);
        if labels.is_empty()
            && let Some(m) = t.pointer_mut("/metadata").and_then(Value::as_object_mut)
        {
            m.remove("labels");
        }
    }
    t
}

/// An int-or-percent of `total`, rounded up or down.
fn scaled(v: Option<&IntOrString>, total: i32, round_up: bool, default_pct: i32) -> i32 {
    match v {
        Some(IntOrString::Int(n)) => *n,
        Some(IntOrString::String(s)) => {
            let pct: i64 = s.trim_end_matches('%').parse().unwrap_or(0);
            let num = pct * i64::from(total);
            (if round_up {
                (num + 99) / 100
            } else {
                num / 100
            }) as i32
        }
        None => {
            let num = i64::from(default_pct) * i64::from(total);
            (if round_up {
                (num + 99) / 100
            } else {
                num / 100
            }) as i32
        }
    }
}

/// (maxSurge, maxUnavailable) for `replicas`: surge rounds up, unavailable
/// down, defaults 25 % each; both zero would deadlock, so unavailable is
/// then 1 (upstream's `ResolveFenceposts`).
pub fn fenceposts(
    surge: Option<&IntOrString>,
    unavailable: Option<&IntOrString>,
    replicas: i32,
) -> (i32, i32) {
    let s = scaled(surge, replicas, true, 25).max(0);
    let u = scaled(unavailable, replicas, false, 25).max(0);
    if s == 0 && u == 0 { (0, 1) } else { (s, u) }
}

/// One ReplicaSet as the rolling arithmetic sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rs {
    pub name: String,
    /// `spec.replicas`.
    pub spec: i32,
    /// `status.availableReplicas`.
    pub available: i32,
    /// `status.replicas` (pods it has, healthy or not).
    pub actual: i32,
}

/// The new ReplicaSet's size for this step of a rolling update (upstream's
/// `NewRSNewReplicas` and the scale-up half of `reconcileNewReplicaSet`).
///
/// An old ReplicaSet counts with the pods it still has when that is more
/// than its `spec`: upstream counts specs only, so for the moment between
/// an old set's scale-down and its pod's deletion the cluster can hold one
/// pod more than `maxSurge` allows; here the bound holds for pods.
pub fn new_rs_target(replicas: i32, surge: i32, new: &Rs, olds: &[Rs]) -> i32 {
    if new.spec > replicas {
        return replicas;
    }
    let total: i32 = new.spec + olds.iter().map(|r| r.spec.max(r.actual)).sum::<i32>();
    let room = replicas + surge - total;
    if room <= 0 {
        return new.spec;
    }
    new.spec + room.min(replicas - new.spec).max(0)
}

/// How far to scale each old ReplicaSet down in this step (upstream's
/// `reconcileOldReplicaSets`): first their unhealthy pods, then available
/// ones, never below `replicas - maxUnavailable` available overall.
/// `olds` oldest first; returns (name, new spec) for the ones that change.
pub fn old_rs_targets(
    replicas: i32,
    unavailable: i32,
    new: &Rs,
    olds: &[Rs],
) -> Vec<(String, i32)> {
    let total: i32 = new.spec + olds.iter().map(|r| r.spec).sum::<i32>();
    if olds.iter().all(|r| r.spec == 0) {
        return Vec::new();
    }
    let min_available = replicas - unavailable;
    let new_unavailable = new.spec - new.available;
    let mut budget = total - min_available - new_unavailable;
    if budget <= 0 {
        return Vec::new();
    }
    let mut specs: Vec<i32> = olds.iter().map(|r| r.spec).collect();
    // 1. Unhealthy replicas first.
    for (i, r) in olds.iter().enumerate() {
        if budget <= 0 {
            break;
        }
        let unhealthy = (r.spec - r.available).max(0);
        let cut = unhealthy.min(budget).min(specs[i]);
        specs[i] -= cut;
        budget -= cut;
    }
    // 2. Then available ones, as far as minimum availability allows.
    let available: i32 = new.available + olds.iter().map(|r| r.available).sum::<i32>();
    // Unhealthy pods cut above were not available: availability unchanged.
    let mut can_cut = available - min_available;
    for spec in specs.iter_mut() {
        if can_cut <= 0 {
            break;
        }
        let cut = (*spec).min(can_cut);
        *spec -= cut;
        can_cut -= cut;
    }
    olds.iter()
        .zip(specs)
        .filter(|(r, s)| r.spec != *s)
        .map(|(r, s)| (r.name.clone(), s))
        .collect()
}

/// Upstream's `DeploymentComplete`.
pub fn complete(
    replicas: i32,
    updated: i32,
    total: i32,
    available: i32,
    observed: i64,
    generation: i64,
) -> bool {
    updated == replicas && total == replicas && available == replicas && observed >= generation
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn rs(name: &str, spec: i32, available: i32) -> Rs {
        Rs {
            name: name.into(),
            spec,
            available,
            actual: available,
        }
    }

    #[test]
    fn fenceposts_round_surge_up_and_unavailable_down() {
        let pct = |s: &str| IntOrString::String(s.into());
        assert_eq!(fenceposts(None, None, 3), (1, 0));
        assert_eq!(fenceposts(None, None, 10), (3, 2));
        assert_eq!(
            fenceposts(Some(&IntOrString::Int(0)), Some(&IntOrString::Int(0)), 5),
            (0, 1)
        );
        assert_eq!(fenceposts(Some(&pct("50%")), Some(&pct("50%")), 3), (2, 1));
    }

    #[test]
    fn hash_is_stable_and_ignores_its_own_label() {
        let t = json!({"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "a"}]}});
        let mut labelled = t.clone();
        labelled["metadata"]["labels"][HASH_LABEL] = json!("xyz");
        assert_eq!(without_hash(&labelled), t);
        let h = template_hash(&t, None);
        assert_eq!(h, template_hash(&t, None));
        assert_ne!(h, template_hash(&t, Some(1)));
        assert!(
            h.chars().all(|c| "bcdfghjklmnpqrstvwxz2456789".contains(c)),
            "{h}"
        );
    }

    #[test]
    fn a_rolling_update_never_drops_below_min_available() {
        // replicas 4, surge 1, unavailable 1: simulate to the end, pods
        // becoming available one step after they are created.
        let (replicas, surge, unavail) = (4, 1, 1);
        let mut new = rs("new", 0, 0);
        let mut olds = vec![rs("old", 4, 4)];
        for _ in 0..20 {
            new.spec = new_rs_target(replicas, surge, &new, &olds);
            for (name, s) in old_rs_targets(replicas, unavail, &new, &olds) {
                let o = olds.iter_mut().find(|o| o.name == name).unwrap();
                o.spec = s;
                o.available = o.available.min(s);
                o.actual = o.actual.min(s);
            }
            let available = new.available + olds.iter().map(|o| o.available).sum::<i32>();
            assert!(available >= replicas - unavail, "{new:?} {olds:?}");
            let total = new.spec + olds.iter().map(|o| o.spec).sum::<i32>();
            assert!(total <= replicas + surge);
            new.available = new.spec;
        }
        assert_eq!((new.spec, olds[0].spec), (4, 0));
    }
}
