//! The node's interfaces, IPv4 addresses and main-table IPv4 routes, from
//! the kernel through rtnetlink: dumped at start, then dumped again after
//! every link, address or route notification (or a lost one), so the
//! daemon follows pods' interfaces appearing and going, addresses
//! changing, and which interface each pod is behind.
//!
//! Both netlink sockets are opened inside the node's network namespace
//! (`--node-netns`) and stay bound to it, wherever the daemon runs.
use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr},
    time::Duration,
};

use anyhow::{Context as _, Result};
use futures::{StreamExt as _, TryStreamExt as _};
use netlink_packet_core::NetlinkPayload;
use netlink_packet_route::{
    AddressFamily, RouteNetlinkMessage,
    address::AddressAttribute,
    link::{InfoKind, LinkAttribute, LinkInfo, LinkLayerType},
    route::{RouteAddress, RouteAttribute, RouteHeader, RouteType},
};
use rtnetlink::{Handle, MulticastGroup};
use tokio::sync::watch;
use tracing::{debug, error, warn};

use crate::{model::Ipv4Cidr, netns::with_netns, node::NodeAddress};

/// One network interface, as far as attaching programs cares.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Link {
    /// The interface's name.
    pub name: String,
    /// Frames carry an Ethernet header (`ARPHRD_ETHER`): the only kind the
    /// TC programs parse. Loopback and L3 devices (WireGuard, tun, IPIP)
    /// have none.
    pub ethernet: bool,
    /// A Linux bridge (`IFLA_INFO_KIND` "bridge").
    pub bridge: bool,
    /// The index of the bridge (or bond) this interface is a port of
    /// (`IFLA_MASTER`).
    pub master: Option<u32>,
}

/// One IPv4 unicast route of the main table that leaves through an
/// interface: `dst dev oif`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Route {
    pub dst: Ipv4Cidr,
    /// The outgoing interface's index.
    pub oif: u32,
}

/// What the kernel says the node has.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Interfaces by index.
    pub links: BTreeMap<u32, Link>,
    /// Every IPv4 address, with its interface.
    pub addrs: Vec<NodeAddress>,
    /// The main table's IPv4 unicast routes with an outgoing interface,
    /// sorted (a pod's `/32 dev veth…`, a bridge's subnet, the default).
    pub routes: Vec<Route>,
}

impl Snapshot {
    /// The interface the main table sends `ip` out of (longest prefix;
    /// among equal prefixes the first, as sorted), or `None` when no route
    /// matches. Policy routing and metrics are not considered: this answers
    /// which pod interface a local endpoint is behind.
    pub fn route_oif(&self, ip: Ipv4Addr) -> Option<u32> {
        self.routes
            .iter()
            .filter(|r| r.dst.contains(ip))
            .max_by_key(|r| (r.dst.prefix, std::cmp::Reverse(*r)))
            .map(|r| r.oif)
    }
}

/// Notifications often come in bursts (a veth pair is two links, each
/// changing state); one dump follows a burst.
const SETTLE: Duration = Duration::from_millis(20);

/// Starts following the interfaces of `netns` (`None`: this process's).
/// The receiver holds the first dump when this returns.
pub async fn watch(netns: Option<&str>) -> Result<watch::Receiver<Snapshot>> {
    let open = || -> Result<_> {
        let requests = rtnetlink::new_connection().context("rtnetlink connection")?;
        let events = rtnetlink::new_multicast_connection(&[
            MulticastGroup::Link,
            MulticastGroup::Ipv4Ifaddr,
            MulticastGroup::Ipv4Route,
        ])
        .context("rtnetlink notifications")?;
        Ok((requests, events))
    };
    // The sockets are made inside the namespace and stay bound to it.
    let ((conn, handle, _), (events_conn, _, mut events)) = match netns {
        Some(ns) => with_netns(ns, open)?,
        None => open()?,
    };
    tokio::spawn(conn);
    tokio::spawn(events_conn);
    let first = dump(&handle)
        .await
        .context("cannot list the node's interfaces")?;
    let (tx, rx) = watch::channel(first);
    tokio::spawn(async move {
        while let Some((msg, _)) = events.next().await {
            match msg.payload {
                NetlinkPayload::InnerMessage(
                    RouteNetlinkMessage::NewLink(_)
                    | RouteNetlinkMessage::DelLink(_)
                    | RouteNetlinkMessage::NewAddress(_)
                    | RouteNetlinkMessage::DelAddress(_)
                    | RouteNetlinkMessage::NewRoute(_)
                    | RouteNetlinkMessage::DelRoute(_),
                )
                | NetlinkPayload::Overrun(_) => {}
                _ => continue,
            }
            tokio::time::sleep(SETTLE).await;
            while let Ok(Some(_)) = tokio::time::timeout(Duration::ZERO, events.next()).await {}
            match dump(&handle).await {
                Ok(now) => {
                    tx.send_if_modified(|old| {
                        let changed = *old != now;
                        if changed {
                            debug!(
                                links = now.links.len(),
                                addrs = now.addrs.len(),
                                "node interfaces changed"
                            );
                            *old = now;
                        }
                        changed
                    });
                }
                Err(e) => {
                    warn!(error = %e, "cannot list the node's interfaces; will retry on the next change")
                }
            }
        }
        // The socket only ends with a kernel or memory failure; a daemon
        // that no longer follows interfaces would silently miss new pods.
        error!("rtnetlink notifications ended: exiting so that the node restarts the daemon");
        std::process::exit(1);
    });
    Ok(rx)
}

/// Every link, IPv4 address and main-table IPv4 route.
async fn dump(handle: &Handle) -> Result<Snapshot> {
    let mut snap = Snapshot::default();
    let mut links = handle.link().get().execute();
    while let Some(link) = links.try_next().await? {
        let mut l = Link {
            ethernet: link.header.link_layer_type == LinkLayerType::Ether,
            ..Link::default()
        };
        for a in &link.attributes {
            match a {
                LinkAttribute::IfName(n) => l.name.clone_from(n),
                LinkAttribute::Controller(m) => l.master = Some(*m),
                LinkAttribute::LinkInfo(infos) => {
                    l.bridge |= infos
                        .iter()
                        .any(|i| matches!(i, LinkInfo::Kind(InfoKind::Bridge)));
                }
                _ => {}
            }
        }
        if !l.name.is_empty() {
            snap.links.insert(link.header.index, l);
        }
    }
    let mut addrs = handle.address().get().execute();
    while let Some(a) = addrs.try_next().await? {
        if a.header.family != AddressFamily::Inet {
            continue;
        }
        // IFA_LOCAL is the interface's own address; IFA_ADDRESS is the
        // peer's on point-to-point links.
        let local = a.attributes.iter().find_map(|at| match at {
            AddressAttribute::Local(IpAddr::V4(v)) => Some(*v),
            _ => None,
        });
        let addr = local.or_else(|| {
            a.attributes.iter().find_map(|at| match at {
                AddressAttribute::Address(IpAddr::V4(v)) => Some(*v),
                _ => None,
            })
        });
        let (Some(addr), Some(link)) = (addr, snap.links.get(&a.header.index)) else {
            continue;
        };
        snap.addrs.push(NodeAddress {
            ifindex: a.header.index,
            ifname: link.name.clone(),
            addr,
        });
    }
    snap.addrs.sort();
    let mut routes = handle
        .route()
        .get(rtnetlink::RouteMessageBuilder::<Ipv4Addr>::new().build())
        .execute();
    while let Some(r) = routes.try_next().await? {
        let table = r
            .attributes
            .iter()
            .find_map(|a| match a {
                RouteAttribute::Table(t) => Some(*t),
                _ => None,
            })
            .unwrap_or(u32::from(r.header.table));
        if table != u32::from(RouteHeader::RT_TABLE_MAIN) || r.header.kind != RouteType::Unicast {
            continue;
        }
        let dst = r
            .attributes
            .iter()
            .find_map(|a| match a {
                RouteAttribute::Destination(RouteAddress::Inet(v)) => Some(*v),
                _ => None,
            })
            .unwrap_or(Ipv4Addr::UNSPECIFIED);
        let oif = r.attributes.iter().find_map(|a| match a {
            RouteAttribute::Oif(i) => Some(*i),
            _ => None,
        });
        if let Some(oif) = oif {
            // The kernel keeps a route's host bits zero.
            let dst = Ipv4Cidr {
                addr: dst,
                prefix: r.header.destination_prefix_length.min(32),
            };
            snap.routes.push(Route { dst, oif });
        }
    }
    snap.routes.sort();
    Ok(snap)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(dst: [u8; 4], prefix: u8, oif: u32) -> Route {
        Route {
            dst: Ipv4Cidr {
                addr: dst.into(),
                prefix,
            },
            oif,
        }
    }

    #[test]
    fn route_oif_takes_the_longest_matching_prefix() {
        let snap = Snapshot {
            routes: vec![
                route([0, 0, 0, 0], 0, 2),
                route([10, 244, 1, 0], 24, 3),
                route([10, 244, 1, 7], 32, 9),
            ],
            ..Snapshot::default()
        };
        assert_eq!(
            snap.route_oif([10, 244, 1, 7].into()),
            Some(9),
            "a pod's /32"
        );
        assert_eq!(
            snap.route_oif([10, 244, 1, 8].into()),
            Some(3),
            "the bridge's subnet"
        );
        assert_eq!(
            snap.route_oif([192, 0, 2, 1].into()),
            Some(2),
            "the default route"
        );
        let no_default = Snapshot {
            routes: vec![route([10, 244, 1, 0], 24, 3)],
            ..Snapshot::default()
        };
        assert_eq!(no_default.route_oif([10, 244, 2, 1].into()), None);
    }
}
