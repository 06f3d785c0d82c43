//! Endpoints held back from the maps until the per-packet program is on
//! their pod's interface.
//!
//! A local endpoint's replies to a translated flow are reverse-translated
//! by the pod-facing program on its own interface. Written to the maps
//! before that program is attached, the endpoint would take connections
//! whose replies leave with the pod's address, and the clients would drop
//! them. Attaching is slow under load (a tcx attachment waits for RCU
//! grace periods under the RTNL lock: 20–150 ms each with pods starting),
//! so the daemon attaches in the background and, at each sync, leaves out
//! only this node's endpoints whose interface still waits, found through
//! the main routing table:
//! - a route leaving through a waiting pod interface (a pod's `/32 dev
//!   veth…`): held, even if programmed before (the interface was recreated
//!   without the program);
//! - a route leaving through a bridge one of whose ports waits (a bridge
//!   CNI's `cni0` subnet; which port is not known from routes): held only
//!   if not programmed yet, so that a new pod never takes its neighbours
//!   out of the maps.
//!
//! A later sync, woken when an attachment is done, writes them. Every other
//! change goes to the maps at once. An endpoint whose route the daemon has
//! not seen yet is not held: the node agent routes a pod before its
//! containers start, long before it can be Ready.
use std::{collections::BTreeSet, net::Ipv4Addr, sync::Arc};

use k8s_openapi::api::discovery::v1::{Endpoint, EndpointSlice};

use super::{
    attacher::{self, Role},
    interfaces::Snapshot,
};
use crate::attach::HookArgs;

/// Pod-facing interfaces (by index) that want the per-packet program and
/// do not have it yet: new, recreated under a new index, or failed.
pub fn waiting_pod_ifaces(
    snap: &Snapshot,
    hooks: &HookArgs,
    node_ifaces: &BTreeSet<String>,
    attached: &attacher::Attached,
) -> BTreeSet<u32> {
    attacher::plan(snap, hooks, node_ifaces, attached)
        .attach
        .into_iter()
        .filter(|((role, _), _)| *role == Role::Pod)
        .map(|(_, index)| index)
        .collect()
}

/// Whether the endpoint at `ip` waits for a program (see the module docs);
/// `programmed` says whether the maps already hold it, and is asked only
/// for an endpoint behind a bridge with a waiting port.
pub fn is_held(
    snap: &Snapshot,
    waiting: &BTreeSet<u32>,
    ip: Ipv4Addr,
    programmed: impl FnOnce() -> bool,
) -> bool {
    if waiting.is_empty() {
        return false;
    }
    let Some(oif) = snap.route_oif(ip) else {
        return false;
    };
    if waiting.contains(&oif) {
        return true;
    }
    let behind_waiting_bridge = waiting
        .iter()
        .any(|w| snap.links.get(w).and_then(|l| l.master) == Some(oif));
    behind_waiting_bridge && !programmed()
}

/// `slices` without the endpoints of node `node` (or of no node) that
/// `held` says to leave out (an endpoint goes when any of its addresses is
/// held), and how many endpoints were left out. Slices without such an
/// endpoint are shared, not copied; a trimmed copy carries no
/// `resourceVersion`, so that its trigger time is measured when the slice
/// is written whole.
pub fn without_held(
    slices: &[Arc<EndpointSlice>],
    node: &str,
    held: impl Fn(Ipv4Addr) -> bool,
) -> (Vec<Arc<EndpointSlice>>, usize) {
    let is_held = |e: &Endpoint| {
        e.node_name.as_deref().is_none_or(|n| n == node)
            && e.addresses
                .iter()
                .filter_map(|a| a.parse::<Ipv4Addr>().ok())
                .any(&held)
    };
    let mut left_out = 0;
    let kept = slices
        .iter()
        .map(|s| {
            let held: Vec<bool> = s.endpoints.iter().map(is_held).collect();
            let n = held.iter().filter(|h| **h).count();
            if n == 0 {
                return Arc::clone(s);
            }
            left_out += n;
            let mut s = EndpointSlice::clone(s);
            let mut h = held.iter();
            s.endpoints.retain(|_| !h.next().copied().unwrap_or(false));
            s.metadata.resource_version = None;
            Arc::new(s)
        })
        .collect();
    (kept, left_out)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::api::discovery::v1::Endpoint;

    use super::*;
    use crate::daemon::interfaces::{Link, Route};

    fn link(name: &str) -> Link {
        Link {
            name: name.to_owned(),
            ethernet: true,
            ..Link::default()
        }
    }

    /// eth0 (2) with the default route; veth1 (4) and veth2 (5) with a
    /// pod's /32 each; cni0 (6), a bridge with port veth3 (7), holding
    /// 10.244.9.0/24.
    fn node() -> Snapshot {
        let mut links = BTreeMap::from([
            (2, link("eth0")),
            (4, link("veth1")),
            (5, link("veth2")),
            (6, link("cni0")),
            (7, link("veth3")),
        ]);
        links.get_mut(&6).unwrap().bridge = true;
        links.get_mut(&7).unwrap().master = Some(6);
        let route = |dst: [u8; 4], prefix, oif| Route {
            dst: crate::model::Ipv4Cidr {
                addr: dst.into(),
                prefix,
            },
            oif,
        };
        Snapshot {
            links,
            addrs: Vec::new(),
            routes: vec![
                route([0, 0, 0, 0], 0, 2),
                route([10, 244, 0, 4], 32, 4),
                route([10, 244, 0, 5], 32, 5),
                route([10, 244, 9, 0], 24, 6),
            ],
        }
    }

    fn hooks() -> HookArgs {
        HookArgs {
            pod_interface_name_prefix: Some("veth".into()),
            ..HookArgs::default()
        }
    }

    #[test]
    fn only_endpoints_behind_a_waiting_pod_interface_are_held() {
        let snap = node();
        // veth1 attached; veth2 and veth3 (a bridge port) waiting.
        let attached = BTreeMap::from([((Role::Pod, "veth1".to_owned()), 4)]);
        let waiting = waiting_pod_ifaces(&snap, &hooks(), &BTreeSet::new(), &attached);
        assert_eq!(waiting, BTreeSet::from([5, 7]));
        let held =
            |ip: [u8; 4], programmed: bool| is_held(&snap, &waiting, ip.into(), || programmed);
        assert!(
            !held([10, 244, 0, 4], false),
            "its interface has the program"
        );
        assert!(held([10, 244, 0, 5], false), "its interface waits");
        assert!(
            held([10, 244, 0, 5], true),
            "its interface waits, programmed or not"
        );
        assert!(
            held([10, 244, 9, 3], false),
            "new, behind a bridge with a waiting port"
        );
        assert!(
            !held([10, 244, 9, 3], true),
            "programmed, behind that bridge: a neighbour's new pod does not take it out"
        );
        assert!(
            !held([10, 244, 1, 8], false),
            "another node's pod, via eth0"
        );
        // veth1 recreated under a new index: waiting again.
        let mut recreated = snap.clone();
        let l = recreated.links.remove(&4).unwrap();
        recreated.links.insert(8, l);
        recreated.routes[1].oif = 8;
        let waiting = waiting_pod_ifaces(&recreated, &hooks(), &BTreeSet::new(), &attached);
        assert!(is_held(
            &recreated,
            &waiting,
            [10, 244, 0, 4].into(),
            || true
        ));
        // Nothing waits: nothing is held, whatever the routes.
        assert!(!is_held(
            &snap,
            &BTreeSet::new(),
            [10, 244, 0, 5].into(),
            || false
        ));
    }

    /// A slice of endpoints `(address, node)`.
    fn slice(name: &str, endpoints: &[(&str, Option<&str>)]) -> Arc<EndpointSlice> {
        Arc::new(EndpointSlice {
            metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                name: Some(name.to_owned()),
                resource_version: Some("7".to_owned()),
                ..Default::default()
            },
            address_type: "IPv4".to_owned(),
            endpoints: endpoints
                .iter()
                .map(|(a, node)| Endpoint {
                    addresses: vec![(*a).to_owned()],
                    node_name: node.map(str::to_owned),
                    ..Endpoint::default()
                })
                .collect(),
            ports: None,
        })
    }

    #[test]
    fn held_endpoints_leave_their_slice_and_the_others_stay_shared() {
        let here = Some("node-1");
        let a = slice(
            "a",
            &[
                ("10.244.0.4", here),
                ("10.244.0.5", here),
                ("10.244.0.6", None),
            ],
        );
        let b = slice("b", &[("10.244.1.8", here)]);
        let other = slice("c", &[("10.244.0.5", Some("node-2"))]);
        let held = |ip: Ipv4Addr| ip.octets()[3] != 4;
        let slices = [Arc::clone(&a), Arc::clone(&b), Arc::clone(&other)];
        let (kept, left_out) = without_held(&slices, "node-1", held);
        assert_eq!(
            left_out, 3,
            "10.244.0.5 and 10.244.0.6 (no node) in a, 10.244.1.8 in b"
        );
        let addrs: Vec<&str> = kept[0]
            .endpoints
            .iter()
            .map(|e| e.addresses[0].as_str())
            .collect();
        assert_eq!(addrs, ["10.244.0.4"]);
        assert_eq!(
            kept[0].metadata.resource_version, None,
            "a trimmed copy is not the version the API server wrote"
        );
        assert!(kept[1].endpoints.is_empty());
        assert!(
            Arc::ptr_eq(&kept[2], &other),
            "another node's endpoints are never held, and the slice is not copied"
        );
        assert_eq!(a.endpoints.len(), 3, "the store's copy is not changed");
    }
}
