//! Domain types of the desired dataplane, independent of map layouts.
use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::Ipv4Addr,
    str::FromStr,
};

use proxy_common::proto;

/// `sessionAffinityConfig.clientIP.timeoutSeconds` default, as upstream.
pub const DEFAULT_AFFINITY_TIMEOUT_S: u32 = 10_800;
/// Upper bound upstream validation allows for the affinity timeout (one day).
pub const MAX_AFFINITY_TIMEOUT_S: u32 = 86_400;
/// Most backend slots one frontend can have, both ranges together: slot
/// numbers and the master entry's counts are `u16`.
pub const MAX_SLOTS_PER_FRONTEND: usize = u16::MAX as usize;

/// Transport protocol of a Service port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    /// `TCP`.
    Tcp,
    /// `UDP`.
    Udp,
    /// `SCTP` (computed and written, not yet translated by the programs).
    Sctp,
}

impl Protocol {
    /// The IP protocol number, as the maps store it.
    pub const fn number(self) -> u8 {
        match self {
            Self::Tcp => proto::TCP,
            Self::Udp => proto::UDP,
            Self::Sctp => proto::SCTP,
        }
    }

    /// The protocol of an IP protocol number; `None` for any other.
    pub const fn from_number(n: u8) -> Option<Self> {
        match n {
            proto::TCP => Some(Self::Tcp),
            proto::UDP => Some(Self::Udp),
            proto::SCTP => Some(Self::Sctp),
            _ => None,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Tcp => "TCP",
            Self::Udp => "UDP",
            Self::Sctp => "SCTP",
        })
    }
}

/// Error of [`Protocol::from_str`].
#[derive(Debug, thiserror::Error)]
#[error("unknown protocol `{0}` (expected TCP, UDP or SCTP)")]
pub struct UnknownProtocol(pub String);

impl FromStr for Protocol {
    type Err = UnknownProtocol;

    /// Kubernetes spells protocols in upper case; lower case is accepted too.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_uppercase().as_str() {
            "TCP" => Ok(Self::Tcp),
            "UDP" => Ok(Self::Udp),
            "SCTP" => Ok(Self::Sctp),
            _ => Err(UnknownProtocol(s.to_owned())),
        }
    }
}

/// Where clients send: a Service IP, port and protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FrontendKey {
    /// The Service IP (or node address, externalIP, LoadBalancer IP).
    pub addr: Ipv4Addr,
    /// The Service port (or node port), host order.
    pub port: u16,
    /// The port's protocol.
    pub proto: Protocol,
}

impl fmt::Display for FrontendKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}/{}", self.addr, self.port, self.proto)
    }
}

/// A frontend's ID in the maps ([`proxy_common::lb::Lb4Service::frontend_id`]):
/// it names the frontend in conntrack, membership, affinity and
/// source-range entries. Allocated by the reconciler; never 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FrontendId(pub u32);

/// A backend's ID in the maps (the key of `SY_LB4_BE`), shared by every
/// frontend that uses the backend. Allocated by the reconciler; never 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendId(pub u32);

impl fmt::Display for FrontendId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "frontend #{}", self.0)
    }
}

impl fmt::Display for BackendId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "backend #{}", self.0)
    }
}

/// Where traffic goes: an endpoint address and target port. The protocol is
/// the frontend's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendAddr {
    /// The endpoint's address.
    pub addr: Ipv4Addr,
    /// The target port, host order.
    pub port: u16,
    /// The frontend's protocol.
    pub proto: Protocol,
}

impl fmt::Display for BackendAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}/{}", self.addr, self.port, self.proto)
    }
}

/// What kind of address a frontend is, as kube-proxy distinguishes them:
/// only external kinds take `externalTrafficPolicy` into account.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FrontendKind {
    /// `spec.clusterIP`.
    #[default]
    ClusterIp,
    /// A node address at `spec.ports[].nodePort`.
    NodePort,
    /// One of `spec.externalIPs`.
    ExternalIp,
    /// One of `status.loadBalancer.ingress[].ip`.
    LoadBalancer,
}

impl FrontendKind {
    /// The kind as `switchyard inspect` and the table file spell it.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::ClusterIp => "ClusterIP",
            Self::NodePort => "NodePort",
            Self::ExternalIp => "ExternalIP",
            Self::LoadBalancer => "LoadBalancer",
        }
    }

    /// Whether traffic to it from outside the cluster is "external" in
    /// kube-proxy's sense (NodePort, externalIPs, LoadBalancer IPs).
    pub const fn is_external(self) -> bool {
        !matches!(self, Self::ClusterIp)
    }

    /// The kind bits of [`proxy_common::lb::Lb4Service::flags`].
    pub const fn bits(self) -> u16 {
        use proxy_common::lb::*;
        let k = match self {
            Self::ClusterIp => SVC_KIND_CLUSTER_IP,
            Self::NodePort => SVC_KIND_NODE_PORT,
            Self::ExternalIp => SVC_KIND_EXTERNAL_IP,
            Self::LoadBalancer => SVC_KIND_LOAD_BALANCER,
        };
        k << SVC_KIND_SHIFT
    }

    /// The kind named by master-entry flags.
    pub const fn from_flags(flags: u16) -> Self {
        use proxy_common::lb::*;
        match (flags >> SVC_KIND_SHIFT) & SVC_KIND_MASK {
            SVC_KIND_NODE_PORT => Self::NodePort,
            SVC_KIND_EXTERNAL_IP => Self::ExternalIp,
            SVC_KIND_LOAD_BALANCER => Self::LoadBalancer,
            _ => Self::ClusterIp,
        }
    }
}

impl fmt::Display for FrontendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An IPv4 network, `address/prefix`, with the host bits cleared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ipv4Cidr {
    /// The network address (host bits zero).
    pub addr: Ipv4Addr,
    /// Prefix length, 0..=32.
    pub prefix: u8,
}

impl Ipv4Cidr {
    /// Whether `ip` lies inside the network.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let mask = u32::MAX
            .checked_shl(32 - u32::from(self.prefix))
            .unwrap_or(0);
        u32::from(ip) & mask == u32::from(self.addr)
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Error of [`Ipv4Cidr::from_str`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("`{0}` is not an IPv4 CIDR (ADDRESS/0..32)")]
pub struct BadCidr(pub String);

impl FromStr for Ipv4Cidr {
    type Err = BadCidr;

    /// `10.0.0.0/8`; host bits are cleared (`10.1.2.3/8` is `10.0.0.0/8`,
    /// as Go's `net.ParseCIDR` gives it); a bare address is a `/32`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadCidr(s.to_owned());
        let (ip, prefix) = match s.trim().split_once('/') {
            Some((ip, p)) => (
                ip,
                p.parse::<u8>().ok().filter(|p| *p <= 32).ok_or_else(bad)?,
            ),
            None => (s.trim(), 32),
        };
        let ip: Ipv4Addr = ip.parse().map_err(|_| bad())?;
        let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
        Ok(Self {
            addr: Ipv4Addr::from(u32::from(ip) & mask),
            prefix,
        })
    }
}

/// What one frontend should do.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FrontendSpec {
    /// A name for logs and inspection, e.g. `default/web:http`.
    pub name: String,
    /// What kind of address this is.
    pub kind: FrontendKind,
    /// Backends every client may use, in slot order, without duplicates.
    /// Empty means reject (or drop, with `drop_when_empty`).
    pub backends: Vec<BackendAddr>,
    /// `externalTrafficPolicy: Local`: the backends traffic from outside the
    /// node uses (this node's endpoints); empty means drop. `None` for the
    /// `Cluster` policy and for ClusterIPs.
    pub local_backends: Option<Vec<BackendAddr>>,
    /// `sessionAffinity: ClientIP` timeout in seconds, if on.
    pub affinity_timeout_s: Option<u32>,
    /// With no `backends`, drop instead of rejecting: the Service has
    /// endpoints, but its policy allows none here (kube-proxy's DROP for
    /// `internalTrafficPolicy: Local` without a local endpoint).
    pub drop_when_empty: bool,
    /// `loadBalancerSourceRanges`: when not empty, only these sources may
    /// use the frontend (pods included, as with kube-proxy).
    pub source_ranges: Vec<Ipv4Cidr>,
}

impl FrontendSpec {
    /// Backend slots the frontend takes: both ranges.
    pub fn slot_count(&self) -> usize {
        self.backends.len() + self.local_backends.as_ref().map_or(0, Vec::len)
    }

    /// Every backend of either range, once each.
    pub fn all_backends(&self) -> impl Iterator<Item = &BackendAddr> {
        let local = self.local_backends.iter().flatten();
        self.backends
            .iter()
            .chain(local.filter(|b| !self.backends.contains(b)))
    }
}

/// What the dataplane needs to know about the node it runs on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeDataplane {
    /// The address source NAT uses (traffic from outside to another node's
    /// backend, and hairpin traffic); `None`: no source NAT.
    pub address: Option<Ipv4Addr>,
    /// Endpoint addresses on this node: traffic from outside reaches them
    /// without source NAT.
    pub local_endpoints: BTreeSet<Ipv4Addr>,
}

/// The whole desired dataplane: what the maps must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DesiredTable {
    /// Every frontend and what it does.
    pub frontends: BTreeMap<FrontendKey, FrontendSpec>,
    /// The node's part.
    pub node: NodeDataplane,
}

impl DesiredTable {
    /// Number of backend slots all frontends need.
    pub fn slot_count(&self) -> usize {
        self.frontends.values().map(FrontendSpec::slot_count).sum()
    }

    /// Number of (frontend, backend) memberships.
    pub fn member_count(&self) -> usize {
        self.frontends
            .values()
            .map(|f| f.all_backends().count())
            .sum()
    }

    /// Number of source-range entries.
    pub fn source_range_count(&self) -> usize {
        self.frontends.values().map(|f| f.source_ranges.len()).sum()
    }

    /// Distinct backends (shared between frontends).
    pub fn backend_count(&self) -> usize {
        let mut all: Vec<_> = self
            .frontends
            .values()
            .flat_map(FrontendSpec::all_backends)
            .collect();
        all.sort_unstable();
        all.dedup();
        all.len()
    }
}

// Map-boundary conversions: the only place host values become network-order
// map fields and back.
mod to_maps {
    use std::net::Ipv4Addr;

    use proxy_common::lb::{Lb4Backend, Lb4Key, SLOT_SCOPE_CLUSTER, SLOT_SCOPE_LOCAL};

    use super::{BackendAddr, FrontendKey, Protocol};

    pub(crate) fn addr_be(a: Ipv4Addr) -> u32 {
        u32::from_ne_bytes(a.octets())
    }

    pub(crate) fn addr_from_be(a: u32) -> Ipv4Addr {
        Ipv4Addr::from(a.to_ne_bytes())
    }

    impl FrontendKey {
        /// The key of the master entry
        /// ([`proxy_common::lb::MASTER_SLOT`]) or of cluster slot
        /// `backend_slot`.
        pub fn lb4_key(&self, backend_slot: u16) -> Lb4Key {
            self.lb4_key_in(SLOT_SCOPE_CLUSTER, backend_slot)
        }

        /// The key of local slot `backend_slot` (`1..`).
        pub fn lb4_local_key(&self, backend_slot: u16) -> Lb4Key {
            self.lb4_key_in(SLOT_SCOPE_LOCAL, backend_slot)
        }

        fn lb4_key_in(&self, scope: u8, backend_slot: u16) -> Lb4Key {
            Lb4Key {
                addr_be: addr_be(self.addr),
                port_be: self.port.to_be(),
                backend_slot,
                proto: self.proto.number(),
                scope,
                _pad: [0; 2],
            }
        }

        /// `None` for a key this version would not have written.
        pub fn from_lb4_key(k: &Lb4Key) -> Option<Self> {
            Some(Self {
                addr: addr_from_be(k.addr_be),
                port: u16::from_be(k.port_be),
                proto: Protocol::from_number(k.proto)?,
            })
        }
    }

    impl BackendAddr {
        /// The map value; `local` marks an endpoint on this node.
        pub fn lb4_backend(&self, local: bool) -> Lb4Backend {
            Lb4Backend {
                addr_be: addr_be(self.addr),
                port_be: self.port.to_be(),
                proto: self.proto.number(),
                flags: if local {
                    proxy_common::lb::BACKEND_FLAG_LOCAL
                } else {
                    0
                },
            }
        }

        /// The backend a map value names; `None` for a protocol this
        /// version would not have written.
        pub fn from_lb4_backend(b: &Lb4Backend) -> Option<Self> {
            Some(Self {
                addr: addr_from_be(b.addr_be),
                port: u16::from_be(b.port_be),
                proto: Protocol::from_number(b.proto)?,
            })
        }
    }
}

pub(crate) use to_maps::{addr_be, addr_from_be};
