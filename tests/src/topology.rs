//! One node of the cluster in a box: a node namespace with pods behind veth
//! pairs, routed the way Calico routes: a /32 route per pod on the node, and
//! each pod's default route via 169.254.1.1. The node holds 169.254.1.1 on
//! its loopback, so it answers ARP for it on every pod-facing veth (Calico
//! uses proxy ARP, which needs a default route the node must not have here).
//!
//! ```text
//!   client pod ─eth0══h0─┐
//!   b1 pod     ─eth0══h1─┤ node netns (forwarding, no default route:
//!   b2 pod     ─eth0══h2─┤  an untranslated Service packet has nowhere to go)
//!   b3 pod     ─eth0══h3─┘
//! ```
use std::net::Ipv4Addr;

use anyhow::Result;

use crate::{
    cmd::{ip_in, sysctl_in},
    netns::Netns,
};

/// The node's own address (on its loopback), source of its ARP requests.
pub const NODE_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 1);
const GATEWAY: &str = "169.254.1.1";
/// The node's address on its link to the outside: NodePorts are dialled on it.
pub const NODE_EXTERNAL_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 100, 1);
/// The external client's address.
pub const EXTERNAL_CLIENT_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 100, 2);
/// The node's interface to the external client's namespace.
pub const NODE_EXTERNAL_IF: &str = "ext0";

pub struct Pod {
    pub name: String,
    pub ip: Ipv4Addr,
    /// The pod's veth end inside the node namespace.
    pub host_if: String,
    pub netns: Netns,
}

pub struct NodeTopology {
    // Pods first: their namespaces (and veth pairs) go before the node's.
    pub client: Pod,
    pub backends: Vec<Pod>,
    pub node: Netns,
}

impl NodeTopology {
    /// A node with a client pod (10.244.1.10) and `n` backend pods named
    /// `b1..bn` (10.244.1.11…).
    pub fn build(prefix: &str, n: u8) -> Result<Self> {
        let node = Netns::new(&format!("{prefix}-node"))?;
        let nn = node.name().to_owned();
        sysctl_in(&nn, "net.ipv4.ip_forward", "1")?;
        sysctl_in(&nn, "net.ipv4.conf.all.rp_filter", "0")?;
        sysctl_in(&nn, "net.ipv4.conf.default.rp_filter", "0")?;
        ip_in(&nn, &["addr", "add", &format!("{NODE_IP}/32"), "dev", "lo"])?;
        ip_in(&nn, &["addr", "add", &format!("{GATEWAY}/32"), "dev", "lo"])?;
        let client = Self::pod(&node, prefix, "client", 0, Ipv4Addr::new(10, 244, 1, 10))?;
        let backends = (1..=n)
            .map(|i| {
                Self::pod(
                    &node,
                    prefix,
                    &format!("b{i}"),
                    i,
                    Ipv4Addr::new(10, 244, 1, 10 + i),
                )
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            client,
            backends,
            node,
        })
    }

    fn pod(node: &Netns, prefix: &str, name: &str, index: u8, ip: Ipv4Addr) -> Result<Pod> {
        let netns = Netns::new(&format!("{prefix}-{name}"))?;
        let (nn, pn) = (node.name(), netns.name());
        let host_if = format!("h{index}");
        // Created inside the node namespace, peer moved straight into the pod's.
        ip_in(
            nn,
            &[
                "link", "add", &host_if, "type", "veth", "peer", "name", "eth0", "netns", pn,
            ],
        )?;
        ip_in(pn, &["addr", "add", &format!("{ip}/32"), "dev", "eth0"])?;
        ip_in(pn, &["link", "set", "eth0", "up"])?;
        ip_in(
            pn,
            &["route", "add", GATEWAY, "dev", "eth0", "scope", "link"],
        )?;
        ip_in(
            pn,
            &["route", "add", "default", "via", GATEWAY, "dev", "eth0"],
        )?;
        ip_in(nn, &["link", "set", &host_if, "up"])?;
        ip_in(nn, &["route", "add", &format!("{ip}/32"), "dev", &host_if])?;
        Ok(Pod {
            name: name.to_owned(),
            ip,
            host_if,
            netns,
        })
    }

    /// Every pod-facing interface of the node.
    pub fn host_ifs(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.client.host_if.as_str())
            .chain(self.backends.iter().map(|p| p.host_if.as_str()))
    }

    /// A namespace outside the cluster, linked to the node by a veth
    /// (`ext0` 192.168.100.1/24 on the node, `eth0` 192.168.100.2/24 with a
    /// default route via the node): a client there reaches NodePorts on
    /// [`NODE_EXTERNAL_IP`], and pods directly (routing only) for a floor.
    pub fn add_external(&self, prefix: &str) -> Result<Netns> {
        let ext = Netns::new(&format!("{prefix}-ext"))?;
        let (nn, en) = (self.node.name(), ext.name());
        ip_in(
            nn,
            &[
                "link",
                "add",
                NODE_EXTERNAL_IF,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                en,
            ],
        )?;
        ip_in(
            nn,
            &[
                "addr",
                "add",
                &format!("{NODE_EXTERNAL_IP}/24"),
                "dev",
                NODE_EXTERNAL_IF,
            ],
        )?;
        ip_in(nn, &["link", "set", NODE_EXTERNAL_IF, "up"])?;
        ip_in(
            en,
            &[
                "addr",
                "add",
                &format!("{EXTERNAL_CLIENT_IP}/24"),
                "dev",
                "eth0",
            ],
        )?;
        ip_in(en, &["link", "set", "eth0", "up"])?;
        ip_in(
            en,
            &[
                "route",
                "add",
                "default",
                "via",
                &NODE_EXTERNAL_IP.to_string(),
            ],
        )?;
        Ok(ext)
    }
}
