//! Keeps the TC programs on the node's interfaces: the pod-facing programs
//! on every pod interface (`--tc-iface`, `--pod-interface-name-prefix`), the
//! node-facing programs on every interface holding a NodePort address (and
//! `--node-iface`). It follows interfaces appearing and going: a pod
//! created while the daemon runs gets the per-packet path, and an interface
//! recreated under the same name (a new index) is attached again.
//!
//! Only Ethernet devices get programs (they parse an Ethernet header). A
//! bridge with pod interfaces as ports (a bridge CNI's `cni0`, holding the
//! pods' gateway address) is not node-facing, even when it holds a NodePort
//! address: pod traffic crosses it after its pod interface, and must not
//! be taken for traffic from outside. Name it with `--node-iface` to
//! override.
use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, Mutex},
};

use tracing::{info, warn};

use super::interfaces::Snapshot;
use crate::{attach::HookArgs, datapath::loader::Dataplane, netns::with_netns};

/// Which programs an interface gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Faces a pod: the pod-facing ingress program.
    Pod,
    /// Faces other nodes and the outside: the node-facing programs.
    Node,
}

/// An attachment: role and interface name, and the interface's index.
pub type Attachment = ((Role, String), u32);

/// What to change: attachments to make, and ones whose interface is gone
/// (or no longer wants them).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Pod interfaces that are bridge ports → their bridge: where the
    /// programs send what they redirect to such an interface.
    pub redirects: BTreeMap<u32, u32>,
    /// To attach (new interfaces, or recreated ones with a new index): pod
    /// interfaces first, each role in the order the interfaces were made.
    pub attach: Vec<Attachment>,
    /// To detach and forget.
    pub detach: Vec<(Role, String)>,
    /// Interfaces named by a flag that cannot get programs, with why.
    pub refused: Vec<(String, &'static str)>,
}

/// The pure part: from what exists (`snap`), what is asked for (`hooks`,
/// `node_ifaces`) and what is attached, the changes. An interface that is
/// both a pod's and a node's is a pod's: its traffic must not be
/// translated twice.
pub fn plan(
    snap: &Snapshot,
    hooks: &HookArgs,
    node_ifaces: &BTreeSet<String>,
    attached: &Attached,
) -> Plan {
    let mut wanted: BTreeMap<(Role, String), u32> = BTreeMap::new();
    let mut plan = Plan::default();
    let has_pod_ports = |bridge: u32| {
        snap.links
            .values()
            .any(|l| l.master == Some(bridge) && hooks.is_pod_iface(&l.name))
    };
    for (index, link) in &snap.links {
        let name = &link.name;
        let named = hooks.tc_ifaces.contains(name) || hooks.node_ifaces.contains(name);
        if !link.ethernet {
            if named {
                plan.refused.push((
                    name.clone(),
                    "not an Ethernet device (the programs parse Ethernet frames)",
                ));
            }
            continue;
        }
        if hooks.is_pod_iface(name) {
            wanted.insert((Role::Pod, name.clone()), *index);
            if let Some(bridge) = link
                .master
                .filter(|m| snap.links.get(m).is_some_and(|b| b.bridge))
            {
                plan.redirects.insert(*index, bridge);
            }
        } else if hooks.node_ifaces.contains(name)
            || (node_ifaces.contains(name) && !(link.bridge && has_pod_ports(*index)))
        {
            wanted.insert((Role::Node, name.clone()), *index);
        }
    }
    for (key, index) in &wanted {
        if attached.get(key) != Some(index) {
            plan.attach.push((key.clone(), *index));
        }
    }
    // Oldest interface first (indexes grow as interfaces are made): in a
    // burst of new pods, the first pods made are the first to be Ready,
    // and their endpoints wait for these attachments.
    plan.attach
        .sort_by_key(|((role, _), index)| (*role, *index));
    for key in attached.keys() {
        if !wanted.contains_key(key) {
            plan.detach.push(key.clone());
        }
    }
    plan
}

/// What a reconcile could not do, one line per interface.
#[derive(Debug, Default)]
pub struct Failures {
    /// Named by a flag, but unable to take programs (not Ethernet): a
    /// configuration mistake, not retried.
    pub refused: Vec<String>,
    /// Attachments, detachments or redirect writes that failed: retried.
    pub failed: Vec<String>,
}

impl Failures {
    /// Every line, refused first.
    pub fn all(&self) -> Vec<String> {
        self.refused.iter().chain(&self.failed).cloned().collect()
    }
}

/// What is attached, by role and interface name: the interface's index.
pub type Attached = BTreeMap<(Role, String), u32>;

/// The loaded programs and what they are attached to.
pub struct Attacher {
    dataplane: Dataplane,
    hooks: HookArgs,
    attached: Attached,
    /// A copy of `attached`, updated after every attachment, for readers
    /// that must not wait for a batch of attachments to finish.
    view: Arc<Mutex<Attached>>,
}

impl Attacher {
    /// Takes over the loaded object; nothing is attached to interfaces yet.
    pub fn new(dataplane: Dataplane, hooks: HookArgs) -> Self {
        Self {
            dataplane,
            hooks,
            attached: BTreeMap::new(),
            view: Arc::default(),
        }
    }

    /// What is attached, as of the last finished attachment (shared; read
    /// it while a reconcile runs).
    pub fn view(&self) -> Arc<Mutex<Attached>> {
        Arc::clone(&self.view)
    }

    /// Brings the attachments in line with `snap`, calling `on_attached`
    /// after each new attachment (the view is updated by then). Returns one
    /// line per interface that failed, the refused ones (named by a flag,
    /// but no Ethernet device) first; the others proceed. The first
    /// `refused` lines are for the caller to stop on, not to retry.
    pub fn reconcile(
        &mut self,
        snap: &Snapshot,
        node_ifaces: &BTreeSet<String>,
        on_attached: &dyn Fn(),
    ) -> Failures {
        let plan = plan(snap, &self.hooks, node_ifaces, &self.attached);
        let refused: Vec<String> = plan
            .refused
            .iter()
            .map(|(name, why)| format!("{name}: {why}"))
            .collect();
        let mut failed = Vec::new();
        for (role, name) in plan.detach {
            match self.dataplane.detach_iface(&name, role == Role::Node) {
                Ok(()) => {
                    info!(iface = %name, ?role, "tc programs detached (interface gone or no longer wanted)");
                    self.attached.remove(&(role, name));
                    publish(&self.view, &self.attached);
                }
                Err(e) => failed.push(format!("{name}: {e:#}")),
            }
        }
        if let Err(e) = self.dataplane.set_if_redirects(&plan.redirects) {
            failed.push(format!("redirect targets of bridged pod interfaces: {e:#}"));
        }
        if plan.attach.is_empty() {
            return Failures { refused, failed };
        }
        let dp = &mut self.dataplane;
        let attached = &mut self.attached;
        let view = &self.view;
        let mut attach_all = || -> anyhow::Result<()> {
            for ((role, name), index) in &plan.attach {
                let started = std::time::Instant::now();
                let r = match role {
                    Role::Pod => dp.attach_tc(name),
                    Role::Node => dp.attach_node_iface(name),
                };
                match r {
                    Ok(()) => {
                        let elapsed_ms = started.elapsed().as_secs_f64() * 1e3;
                        info!(iface = %name, index, ?role, elapsed_ms, "tc programs attached");
                        attached.insert((*role, name.clone()), *index);
                        publish(view, attached);
                        on_attached();
                    }
                    Err(e) => failed.push(format!("{name}: {:#}", anyhow::Error::from(e))),
                }
            }
            Ok(())
        };
        let entered = match &self.hooks.tc_netns {
            Some(ns) => with_netns(ns, attach_all),
            None => attach_all(),
        };
        if let Err(e) = entered {
            failed.push(format!("{e:#}"));
        }
        for f in &failed {
            warn!(failure = %f, "tc attachment failed; retried in a second and on every interface change");
        }
        Failures { refused, failed }
    }

    /// The loaded object (for the reconciler's maps).
    pub fn dataplane_mut(&mut self) -> &mut Dataplane {
        &mut self.dataplane
    }
}

fn publish(view: &Mutex<Attached>, attached: &Attached) {
    attached.clone_into(
        &mut view
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::interfaces::Link;

    /// Ethernet links, but `lo`.
    fn snap(links: &[(u32, &str)]) -> Snapshot {
        Snapshot {
            links: links
                .iter()
                .map(|(i, n)| {
                    let link = Link {
                        name: (*n).to_owned(),
                        ethernet: *n != "lo",
                        ..Link::default()
                    };
                    (*i, link)
                })
                .collect(),
            ..Snapshot::default()
        }
    }

    fn hooks() -> HookArgs {
        HookArgs {
            tc_ifaces: vec!["h0".into()],
            pod_interface_name_prefix: Some("veth".into()),
            ..HookArgs::default()
        }
    }

    #[test]
    fn pods_by_name_and_prefix_nodes_by_their_addresses() {
        let s = snap(&[
            (1, "lo"),
            (2, "eth0"),
            (3, "h0"),
            (4, "veth1"),
            (5, "h1"),
            (6, "eth1"),
        ]);
        let node = BTreeSet::from(["eth0".to_owned(), "veth1".to_owned()]);
        let p = plan(&s, &hooks(), &node, &BTreeMap::new());
        let got: Vec<(Role, &str, u32)> = p
            .attach
            .iter()
            .map(|((r, n), i)| (*r, n.as_str(), *i))
            .collect();
        assert_eq!(
            got,
            [
                (Role::Pod, "h0", 3),
                (Role::Pod, "veth1", 4),
                (Role::Node, "eth0", 2)
            ],
            "veth1 is a pod's even if it held a NodePort address"
        );
        assert!(p.detach.is_empty());
    }

    #[test]
    fn a_bridge_of_pods_is_not_node_facing_and_l3_devices_get_nothing() {
        let mut s = snap(&[
            (2, "eth0"),
            (3, "cni0"),
            (4, "veth1"),
            (5, "br0"),
            (6, "eth1"),
            (7, "wg0"),
        ]);
        s.links.get_mut(&3).unwrap().bridge = true;
        s.links.get_mut(&4).unwrap().master = Some(3);
        s.links.get_mut(&5).unwrap().bridge = true;
        s.links.get_mut(&6).unwrap().master = Some(5);
        s.links.get_mut(&7).unwrap().ethernet = false;
        // Every interface holds a NodePort address (nodePortAddresses unset).
        let node = s.links.values().map(|l| l.name.clone()).collect();
        let p = plan(&s, &hooks(), &node, &BTreeMap::new());
        let got: Vec<(Role, &str)> = p
            .attach
            .iter()
            .map(|((r, n), _)| (*r, n.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                (Role::Pod, "veth1"),
                (Role::Node, "eth0"),
                (Role::Node, "br0"),
                (Role::Node, "eth1"),
            ],
            "cni0 bridges pods; br0 bridges the node's own port; wg0 has no Ethernet header"
        );
        assert!(p.refused.is_empty(), "nothing was named explicitly");
        // Named by a flag: cni0 is node-facing after all; wg0 is refused.
        let named = HookArgs {
            node_ifaces: vec!["cni0".into(), "wg0".into()],
            ..hooks()
        };
        let p = plan(&s, &named, &node, &BTreeMap::new());
        assert!(p.attach.contains(&((Role::Node, "cni0".to_owned()), 3)));
        assert_eq!(
            p.redirects,
            BTreeMap::from([(4, 3)]),
            "what goes back to veth1 goes through its bridge"
        );
        assert_eq!(p.refused.len(), 1);
        assert_eq!(p.refused[0].0, "wg0");
    }

    #[test]
    fn new_recreated_and_vanished_interfaces() {
        let attached = BTreeMap::from([
            ((Role::Pod, "veth1".to_owned()), 4),
            ((Role::Pod, "veth2".to_owned()), 5),
            ((Role::Node, "eth0".to_owned()), 2),
        ]);
        // veth1 was recreated (index 7), veth2 is gone, veth3 is new, eth0
        // lost its NodePort address.
        let s = snap(&[(2, "eth0"), (7, "veth1"), (8, "veth3")]);
        let p = plan(&s, &hooks(), &BTreeSet::new(), &attached);
        assert_eq!(
            p.attach,
            [
                ((Role::Pod, "veth1".to_owned()), 7),
                ((Role::Pod, "veth3".to_owned()), 8)
            ]
        );
        assert_eq!(
            p.detach,
            [
                (Role::Pod, "veth2".to_owned()),
                (Role::Node, "eth0".to_owned())
            ]
        );
        // Nothing changed: nothing to do.
        let now = BTreeMap::from([((Role::Pod, "veth1".to_owned()), 7)]);
        let p = plan(&snap(&[(7, "veth1")]), &hooks(), &BTreeSet::new(), &now);
        assert_eq!(p, Plan::default());
    }
}
