//! The garbage collector's dependency graph and its decisions, without I/O
//! (upstream's `pkg/controller/garbagecollector/graph.go` and
//! `attemptToDeleteItem`).
use std::collections::{HashMap, HashSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::{
    api::{DynamicObject, PropagationPolicy},
    discovery::ApiResource,
};

/// The finalizer an owner deleted in the foreground waits with.
pub const FOREGROUND: &str = "foregroundDeletion";
/// The finalizer an owner deleted with `Orphan` waits with.
pub const ORPHAN: &str = "orphan";

/// What the graph keeps of one object.
#[derive(Clone, Debug)]
pub struct Node {
    pub uid: String,
    pub resource: ApiResource,
    pub namespace: Option<String>,
    pub name: String,
    pub owners: Vec<OwnerReference>,
    pub deleting: bool,
    pub finalizers: Vec<String>,
}

impl Node {
    /// The node of a watched object (`None` without a uid).
    pub fn of(obj: &DynamicObject, resource: &ApiResource) -> Option<Self> {
        let m = &obj.metadata;
        Some(Self {
            uid: m.uid.clone()?,
            resource: resource.clone(),
            namespace: m.namespace.clone(),
            name: m.name.clone().unwrap_or_default(),
            owners: m.owner_references.clone().unwrap_or_default(),
            deleting: m.deletion_timestamp.is_some(),
            finalizers: m.finalizers.clone().unwrap_or_default(),
        })
    }

    /// Being deleted in the foreground: it waits for its dependents.
    pub fn waits_for_dependents(&self) -> bool {
        self.deleting && self.finalizers.iter().any(|f| f == FOREGROUND)
    }

    /// Being deleted with `Orphan`: its dependents are to be released.
    pub fn orphaning(&self) -> bool {
        self.deleting && self.finalizers.iter().any(|f| f == ORPHAN)
    }
}

/// Every object seen, and who depends on whom (by uid).
#[derive(Default)]
pub struct Graph {
    nodes: HashMap<String, Node>,
    dependents: HashMap<String, HashSet<String>>,
}

impl Graph {
    /// Adds or replaces a node; returns the previous one.
    pub fn upsert(&mut self, node: Node) -> Option<Node> {
        let prev = self.nodes.remove(&node.uid);
        if let Some(p) = &prev {
            self.unlink(p);
        }
        for o in &node.owners {
            self.dependents
                .entry(o.uid.clone())
                .or_default()
                .insert(node.uid.clone());
        }
        self.nodes.insert(node.uid.clone(), node);
        prev
    }

    fn unlink(&mut self, node: &Node) {
        for o in &node.owners {
            if let Some(d) = self.dependents.get_mut(&o.uid) {
                d.remove(&node.uid);
                if d.is_empty() {
                    self.dependents.remove(&o.uid);
                }
            }
        }
    }

    /// Removes a node (the object is gone); returns it.
    pub fn remove(&mut self, uid: &str) -> Option<Node> {
        let node = self.nodes.remove(uid)?;
        self.unlink(&node);
        Some(node)
    }

    pub fn get(&self, uid: &str) -> Option<&Node> {
        self.nodes.get(uid)
    }

    /// The objects naming `uid` as an owner.
    pub fn dependents(&self, uid: &str) -> Vec<&Node> {
        self.dependents
            .get(uid)
            .map(|d| d.iter().filter_map(|u| self.nodes.get(u)).collect())
            .unwrap_or_default()
    }

    /// The dependents whose reference to `uid` has `blockOwnerDeletion`:
    /// a foreground deletion waits for exactly these.
    pub fn blocking_dependents(&self, uid: &str) -> Vec<&Node> {
        self.dependents(uid)
            .into_iter()
            .filter(|d| {
                d.owners
                    .iter()
                    .any(|o| o.uid == uid && o.block_owner_deletion == Some(true))
            })
            .collect()
    }

    /// Uids of nodes of `resource`, to find those gone after a re-list.
    pub fn uids_of(&self, resource: &ApiResource) -> Vec<String> {
        self.nodes
            .values()
            .filter(|n| &n.resource == resource)
            .map(|n| n.uid.clone())
            .collect()
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }
}

/// How an owner named in a reference stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OwnerState {
    /// Exists with that uid and is not being deleted in the foreground.
    Solid,
    /// Absent, or present under another uid.
    Dangling,
    /// Being deleted in the foreground.
    Waiting,
}

/// What to do with an object that has owners (upstream's
/// `attemptToDeleteItem` once the owners are classified).
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    /// A live owner remains and no reference needs removing.
    Keep,
    /// A live owner remains: drop the references (by uid) to owners that
    /// are gone or waiting.
    RemoveRefs(Vec<String>),
    /// No live owner: delete the object with this propagation.
    Delete(PropagationPolicy),
}

/// The verdict for an object with `owners` (each classified);
/// `has_dependents` says whether anything depends on the object itself.
/// An object with no solid owner is deleted: in the foreground when an
/// owner waits for it and it has dependents of its own (so the wait covers
/// them too), else in the background.
pub fn verdict(owners: &[(&OwnerReference, OwnerState)], has_dependents: bool) -> Verdict {
    if owners.is_empty() {
        return Verdict::Keep;
    }
    let solid = owners.iter().any(|(_, s)| *s == OwnerState::Solid);
    if solid {
        let drop: Vec<String> = owners
            .iter()
            .filter(|(_, s)| *s != OwnerState::Solid)
            .map(|(r, _)| r.uid.clone())
            .collect();
        return if drop.is_empty() {
            Verdict::Keep
        } else {
            Verdict::RemoveRefs(drop)
        };
    }
    let waiting = owners.iter().any(|(_, s)| *s == OwnerState::Waiting);
    if waiting && has_dependents {
        Verdict::Delete(PropagationPolicy::Foreground)
    } else {
        Verdict::Delete(PropagationPolicy::Background)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(uid: &str, block: bool) -> OwnerReference {
        OwnerReference {
            api_version: "v1".into(),
            kind: "ConfigMap".into(),
            name: uid.into(),
            uid: uid.into(),
            block_owner_deletion: block.then_some(true),
            controller: None,
        }
    }

    fn node(uid: &str, owners: Vec<OwnerReference>) -> Node {
        Node {
            uid: uid.into(),
            resource: ApiResource::erase::<k8s_openapi::api::core::v1::ConfigMap>(&()),
            namespace: Some("default".into()),
            name: uid.into(),
            owners,
            deleting: false,
            finalizers: Vec::new(),
        }
    }

    #[test]
    fn dependents_follow_owner_references() {
        let mut g = Graph::default();
        g.upsert(node("a", vec![]));
        g.upsert(node("b", vec![r("a", true)]));
        g.upsert(node("c", vec![r("a", false)]));
        let mut d: Vec<&str> = g.dependents("a").iter().map(|n| n.uid.as_str()).collect();
        d.sort();
        assert_eq!(d, ["b", "c"]);
        assert_eq!(g.blocking_dependents("a").len(), 1, "only b blocks");
        g.upsert(node("b", vec![]));
        assert_eq!(g.dependents("a").len(), 1, "b released");
        g.remove("c");
        assert!(g.dependents("a").is_empty());
    }

    #[test]
    fn verdicts() {
        let (a, b) = (r("a", true), r("b", false));
        assert_eq!(verdict(&[], false), Verdict::Keep);
        assert_eq!(verdict(&[(&a, OwnerState::Solid)], false), Verdict::Keep);
        assert_eq!(
            verdict(
                &[(&a, OwnerState::Solid), (&b, OwnerState::Dangling)],
                false
            ),
            Verdict::RemoveRefs(vec!["b".into()])
        );
        assert_eq!(
            verdict(&[(&a, OwnerState::Dangling)], true),
            Verdict::Delete(PropagationPolicy::Background)
        );
        assert_eq!(
            verdict(&[(&a, OwnerState::Waiting)], true),
            Verdict::Delete(PropagationPolicy::Foreground)
        );
        assert_eq!(
            verdict(&[(&a, OwnerState::Waiting)], false),
            Verdict::Delete(PropagationPolicy::Background)
        );
    }
}
