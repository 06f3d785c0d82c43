//! The node's interfaces and IPv4 addresses, from the kernel through
//! rtnetlink: dumped at start, then dumped again after every link or
//! address notification (or a lost one), so the daemon follows pods'
//! interfaces appearing and going, and addresses changing.
//!
//! Both netlink sockets are opened inside the node's network namespace
//! (`--node-netns`) and stay bound to it, wherever the daemon runs.
use std::{collections::BTreeMap, net::IpAddr, time::Duration};

use anyhow::{Context as _, Result};
use futures::{StreamExt as _, TryStreamExt as _};
use netlink_packet_core::NetlinkPayload;
use netlink_packet_route::{
    AddressFamily, RouteNetlinkMessage, address::AddressAttribute, link::LinkAttribute,
};
use rtnetlink::{Handle, MulticastGroup};
use tokio::sync::watch;
use tracing::{debug, warn};

use crate::{netns::with_netns, node::NodeAddress};

/// What the kernel says the node has.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Interface names by index.
    pub links: BTreeMap<u32, String>,
    /// Every IPv4 address, with its interface.
    pub addrs: Vec<NodeAddress>,
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
                    | RouteNetlinkMessage::DelAddress(_),
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
        warn!("rtnetlink notifications ended; interfaces are no longer followed");
    });
    Ok(rx)
}

/// Every link and IPv4 address.
async fn dump(handle: &Handle) -> Result<Snapshot> {
    let mut snap = Snapshot::default();
    let mut links = handle.link().get().execute();
    while let Some(link) = links.try_next().await? {
        let name = link.attributes.iter().find_map(|a| match a {
            LinkAttribute::IfName(n) => Some(n.clone()),
            _ => None,
        });
        if let Some(name) = name {
            snap.links.insert(link.header.index, name);
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
        let (Some(addr), Some(ifname)) = (addr, snap.links.get(&a.header.index)) else {
            continue;
        };
        snap.addrs.push(NodeAddress {
            ifindex: a.header.index,
            ifname: ifname.clone(),
            addr,
        });
    }
    snap.addrs.sort();
    Ok(snap)
}
