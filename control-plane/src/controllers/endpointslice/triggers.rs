//! `endpoints.kubernetes.io/last-change-trigger-time`: when the change that
//! a slice write reflects happened (upstream's `TriggerTimeTracker`).
//!
//! The first time a Service is seen, its creation time; after that, the
//! earliest `Ready` transition among its pods that changed since the last
//! sync. `None` when nothing new triggered the write.
use std::collections::HashMap;

use k8s_openapi::{
    api::core::v1::{Pod, Service},
    jiff::Timestamp,
};
use kube::ResourceExt as _;

use crate::controllers::pods;

#[derive(Default)]
struct State {
    pods: HashMap<String, Timestamp>,
}

/// Per-Service memory of the pod trigger times last seen.
#[derive(Default)]
pub struct TriggerTimes {
    services: HashMap<String, State>,
}

impl TriggerTimes {
    /// The trigger time for this sync of `svc` over its `pods`, and
    /// remembers their times for the next one.
    pub fn compute<P: AsRef<Pod>>(&mut self, svc: &Service, pods: &[P]) -> Option<Timestamp> {
        let key = svc.uid().unwrap_or_default();
        let known = self.services.contains_key(&key);
        let state = self.services.entry(key).or_default();
        let mut min: Option<Timestamp> = None;
        let mut keep = |t: Timestamp| min = Some(min.map_or(t, |m| m.min(t)));
        if !known && let Some(t) = svc.metadata.creation_timestamp.as_ref() {
            keep(t.0);
        }
        let mut now = HashMap::new();
        for pod in pods {
            let pod = pod.as_ref();
            let Some(t) = pods::condition(pod, "Ready")
                .and_then(|c| c.last_transition_time.as_ref())
                .map(|t| t.0)
            else {
                continue;
            };
            if state.pods.get(&pod.name_any()) != Some(&t) {
                keep(t);
            }
            now.insert(pod.name_any(), t);
        }
        state.pods = now;
        min
    }
}
