//! The node's side of NodePorts, as pure functions: which of the node's
//! addresses serve NodePorts (kube-proxy's `--nodeport-addresses`), which
//! address source NAT uses, and which interfaces get the node-facing
//! programs. The addresses themselves come from the kernel (rtnetlink, in
//! the daemon).
use std::{collections::BTreeSet, fmt, net::Ipv4Addr};

use crate::model::Ipv4Cidr;

/// kube-proxy's `--nodeport-addresses` / `nodePortAddresses`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum NodePortAddresses {
    /// Unset: every address of the node except loopback (kube-proxy
    /// accepts 127.0.0.1 in iptables mode; Switchyard, like nftables mode,
    /// never does).
    #[default]
    All,
    /// `primary`: the node's primary IPv4 address (its Node's InternalIP).
    Primary,
    /// The node's addresses inside any of these networks.
    Cidrs(Vec<Ipv4Cidr>),
}

impl NodePortAddresses {
    /// Parses the flag's comma-separated values or the file's list: CIDRs,
    /// or the single value `primary`. IPv6 CIDRs are accepted and left to
    /// the IPv6 dataplane; an empty list means [`Self::All`].
    pub fn parse<'a>(items: impl IntoIterator<Item = &'a str>) -> Result<Self, String> {
        let items: Vec<&str> = items
            .into_iter()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        if items.is_empty() {
            return Ok(Self::All);
        }
        if items.contains(&"primary") {
            if items.len() > 1 {
                return Err("`primary` cannot be combined with CIDRs".into());
            }
            return Ok(Self::Primary);
        }
        let mut cidrs = Vec::new();
        for item in items {
            if item.contains(':') {
                continue;
            }
            if !item.contains('/') {
                return Err(format!(
                    "`{item}` is not a CIDR (ADDRESS/LENGTH) or `primary`"
                ));
            }
            cidrs.push(item.parse::<Ipv4Cidr>().map_err(|e| e.to_string())?);
        }
        Ok(Self::Cidrs(cidrs))
    }
}

impl fmt::Display for NodePortAddresses {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::All => f.write_str("all node addresses"),
            Self::Primary => f.write_str("primary"),
            Self::Cidrs(c) => {
                let c: Vec<String> = c.iter().map(ToString::to_string).collect();
                f.write_str(&c.join(","))
            }
        }
    }
}

/// One IPv4 address the kernel reports on the node.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct NodeAddress {
    /// The interface's index.
    pub ifindex: u32,
    /// The interface's name.
    pub ifname: String,
    /// The address.
    pub addr: Ipv4Addr,
}

/// What the node's addresses mean for the dataplane.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeAddressing {
    /// Addresses NodePorts are served on, sorted.
    pub nodeport: Vec<Ipv4Addr>,
    /// The address source NAT and hairpin traffic use.
    pub snat: Option<Ipv4Addr>,
    /// Interfaces that carry NodePort addresses (loopback excluded): they
    /// get the node-facing programs.
    pub node_ifaces: BTreeSet<String>,
}

const LOOPBACK_IF: &str = "lo";

/// Chooses, from the node's `addrs` and its Node's `internal_ips`:
/// - NodePort addresses per `setting`, never in 127.0.0.0/8;
/// - the source-NAT address: the first InternalIP the node holds, else the
///   first address on a non-loopback interface, else any other address that
///   is neither loopback nor link-local;
/// - the node-facing interfaces: those holding a NodePort address.
pub fn select(
    setting: &NodePortAddresses,
    addrs: &[NodeAddress],
    internal_ips: &[Ipv4Addr],
) -> NodeAddressing {
    let mut usable: Vec<&NodeAddress> = addrs.iter().filter(|a| !a.addr.is_loopback()).collect();
    usable.sort_by_key(|a| (a.ifname == LOOPBACK_IF, a.ifindex, a.addr));
    let chosen: Vec<Ipv4Addr> = match setting {
        NodePortAddresses::All => usable.iter().map(|a| a.addr).collect(),
        NodePortAddresses::Primary => internal_ips
            .iter()
            .copied()
            .filter(|ip| !ip.is_loopback())
            .collect(),
        NodePortAddresses::Cidrs(cidrs) => usable
            .iter()
            .map(|a| a.addr)
            .filter(|ip| cidrs.iter().any(|c| c.contains(*ip)))
            .collect(),
    };
    let nodeport: Vec<Ipv4Addr> = chosen
        .iter()
        .copied()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let held = |ip: &Ipv4Addr| usable.iter().any(|a| a.addr == *ip);
    let snat = internal_ips
        .iter()
        .copied()
        .find(held)
        .or_else(|| {
            usable
                .iter()
                .find(|a| a.ifname != LOOPBACK_IF)
                .map(|a| a.addr)
        })
        .or_else(|| {
            usable
                .iter()
                .find(|a| !a.addr.is_link_local())
                .map(|a| a.addr)
        });
    let node_ifaces = usable
        .iter()
        .filter(|a| a.ifname != LOOPBACK_IF && nodeport.contains(&a.addr))
        .map(|a| a.ifname.clone())
        .collect();
    NodeAddressing {
        nodeport,
        snat,
        node_ifaces,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(ifindex: u32, ifname: &str, addr: &str) -> NodeAddress {
        NodeAddress {
            ifindex,
            ifname: ifname.into(),
            addr: addr.parse().unwrap(),
        }
    }

    fn node() -> Vec<NodeAddress> {
        vec![
            a(1, "lo", "127.0.0.1"),
            a(1, "lo", "10.244.1.1"),
            a(1, "lo", "169.254.1.1"),
            a(2, "eth0", "192.168.0.11"),
            a(3, "eth1", "10.0.0.11"),
        ]
    }

    fn ips(v: &[Ipv4Addr]) -> Vec<String> {
        v.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn by_default_every_address_but_loopback_serves_nodeports() {
        let s = select(&NodePortAddresses::All, &node(), &[]);
        assert_eq!(
            ips(&s.nodeport),
            ["10.0.0.11", "10.244.1.1", "169.254.1.1", "192.168.0.11"]
        );
        assert_eq!(
            s.snat,
            Some("192.168.0.11".parse().unwrap()),
            "first real interface"
        );
        assert_eq!(
            s.node_ifaces.into_iter().collect::<Vec<_>>(),
            ["eth0", "eth1"]
        );
    }

    #[test]
    fn cidrs_and_primary_narrow_the_choice() {
        let cidrs = NodePortAddresses::parse(["10.0.0.0/8", "fd00::/64"]).unwrap();
        let s = select(&cidrs, &node(), &[]);
        assert_eq!(ips(&s.nodeport), ["10.0.0.11", "10.244.1.1"]);
        assert_eq!(s.node_ifaces.into_iter().collect::<Vec<_>>(), ["eth1"]);
        let loopback = NodePortAddresses::parse(["127.0.0.0/8"]).unwrap();
        assert!(
            select(&loopback, &node(), &[]).nodeport.is_empty(),
            "never localhost"
        );
        let internal = ["10.0.0.11".parse().unwrap()];
        let s = select(&NodePortAddresses::Primary, &node(), &internal);
        assert_eq!(ips(&s.nodeport), ["10.0.0.11"]);
        assert_eq!(s.snat, Some(internal[0]), "the Node's InternalIP");
    }

    #[test]
    fn a_node_with_addresses_on_loopback_only_still_has_a_snat_address() {
        let lo_only = &node()[..3];
        let s = select(&NodePortAddresses::All, lo_only, &[]);
        assert_eq!(
            s.snat,
            Some("10.244.1.1".parse().unwrap()),
            "not link-local"
        );
        assert!(s.node_ifaces.is_empty());
    }

    #[test]
    fn bad_settings_are_named() {
        assert_eq!(
            NodePortAddresses::parse(["primary", "10.0.0.0/8"]).unwrap_err(),
            "`primary` cannot be combined with CIDRs"
        );
        assert!(
            NodePortAddresses::parse(["10.0.0.1"])
                .unwrap_err()
                .contains("`10.0.0.1`")
        );
        assert!(NodePortAddresses::parse(["10.0.0.0/33"]).is_err());
        assert_eq!(
            NodePortAddresses::parse([""]).unwrap(),
            NodePortAddresses::All
        );
    }
}
