//! Pod predicates and owner references the controllers share (upstream's
//! `k8s.io/kubernetes/pkg/api/v1/pod` and `controller_utils.go`).
use std::collections::BTreeMap;

use k8s_openapi::{
    api::core::v1::{Pod, PodCondition},
    apimachinery::pkg::apis::meta::v1::{LabelSelector, OwnerReference},
    jiff::Timestamp,
};
use kube::{Resource, ResourceExt as _, core::Selector};

/// The pod's condition of type `ty`, if it has one.
pub fn condition<'a>(pod: &'a Pod, ty: &str) -> Option<&'a PodCondition> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == ty)
}

/// The `Ready` condition is `True`.
pub fn is_ready(pod: &Pod) -> bool {
    condition(pod, "Ready").is_some_and(|c| c.status == "True")
}

/// When `Ready` last changed (its `lastTransitionTime`).
pub fn ready_since(pod: &Pod) -> Option<Timestamp> {
    condition(pod, "Ready")
        .filter(|c| c.status == "True")
        .and_then(|c| c.last_transition_time.as_ref())
        .map(|t| t.0)
}

/// Ready for at least `min_ready_seconds` at `now` (upstream's
/// `IsPodAvailable`; with 0 a Ready pod is available at once).
pub fn is_available(pod: &Pod, min_ready_seconds: i32, now: Timestamp) -> bool {
    if !is_ready(pod) {
        return false;
    }
    if min_ready_seconds <= 0 {
        return true;
    }
    ready_since(pod)
        .is_some_and(|t| t.as_second() + i64::from(min_ready_seconds) <= now.as_second())
}

/// `status.phase`, empty when unset.
pub fn phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

/// Succeeded or Failed: its containers will not run again.
pub fn is_terminal(pod: &Pod) -> bool {
    matches!(phase(pod), "Succeeded" | "Failed")
}

/// Not terminal and not being deleted (upstream's `IsPodActive`).
pub fn is_active(pod: &Pod) -> bool {
    !is_terminal(pod) && pod.metadata.deletion_timestamp.is_none()
}

/// `spec.nodeName`, if bound.
pub fn node_name(pod: &Pod) -> Option<&str> {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .filter(|n| !n.is_empty())
}

/// The owner reference marked `controller: true`, if any.
pub fn controller_of<K: Resource>(obj: &K) -> Option<&OwnerReference> {
    obj.meta()
        .owner_references
        .as_ref()?
        .iter()
        .find(|r| r.controller == Some(true))
}

/// A controller reference to `owner` (`controller` and
/// `blockOwnerDeletion` true, as upstream's `NewControllerRef`).
pub fn controller_ref<K: Resource<DynamicType = ()>>(owner: &K) -> OwnerReference {
    OwnerReference {
        api_version: K::api_version(&()).into_owned(),
        kind: K::kind(&()).into_owned(),
        name: owner.name_any(),
        uid: owner.uid().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// A parsed label selector. An empty selector matches everything, a
/// `None` (absent) one nothing — callers decide which applies.
pub fn selector(sel: &LabelSelector) -> Result<Selector, String> {
    Selector::try_from(sel.clone()).map_err(|e| e.to_string())
}

/// A map selector (ReplicationController, Service) as a [`Selector`].
pub fn map_selector(labels: &BTreeMap<String, String>) -> Selector {
    labels.clone().into_iter().collect()
}

/// The object's labels, or an empty map.
pub fn labels<K: Resource>(obj: &K) -> &BTreeMap<String, String> {
    static EMPTY: BTreeMap<String, String> = BTreeMap::new();
    obj.meta().labels.as_ref().unwrap_or(&EMPTY)
}
