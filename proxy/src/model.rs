//! Domain types of the desired dataplane, independent of map layouts.
use std::{collections::BTreeMap, fmt, net::Ipv4Addr, str::FromStr};

use proxy_common::proto;

/// `sessionAffinityConfig.clientIP.timeoutSeconds` default, as upstream.
pub const DEFAULT_AFFINITY_TIMEOUT_S: u32 = 10_800;
/// Upper bound upstream validation allows for the affinity timeout (one day).
pub const MAX_AFFINITY_TIMEOUT_S: u32 = 86_400;

/// Transport protocol of a Service port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
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
    pub addr: Ipv4Addr,
    pub port: u16,
    pub proto: Protocol,
}

impl fmt::Display for FrontendKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}/{}", self.addr, self.port, self.proto)
    }
}

/// Where traffic goes: an endpoint address and target port. The protocol is
/// the frontend's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendAddr {
    pub addr: Ipv4Addr,
    pub port: u16,
    pub proto: Protocol,
}

impl fmt::Display for BackendAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}/{}", self.addr, self.port, self.proto)
    }
}

/// What one frontend should do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrontendSpec {
    /// A name for logs and inspection, e.g. `default/web:http`.
    pub name: String,
    /// Backends in slot order, without duplicates. Empty means reject.
    pub backends: Vec<BackendAddr>,
    /// `sessionAffinity: ClientIP` timeout in seconds, if on.
    pub affinity_timeout_s: Option<u32>,
}

/// The whole desired dataplane: what the maps must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DesiredTable {
    pub frontends: BTreeMap<FrontendKey, FrontendSpec>,
}

impl DesiredTable {
    /// Number of backend slots all frontends need.
    pub fn slot_count(&self) -> usize {
        self.frontends.values().map(|f| f.backends.len()).sum()
    }

    /// Distinct backends (shared between frontends).
    pub fn backend_count(&self) -> usize {
        let mut all: Vec<_> = self
            .frontends
            .values()
            .flat_map(|f| f.backends.iter())
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

    use proxy_common::lb::{Lb4Backend, Lb4Key};

    use super::{BackendAddr, FrontendKey, Protocol};

    pub(crate) fn addr_be(a: Ipv4Addr) -> u32 {
        u32::from_ne_bytes(a.octets())
    }

    pub(crate) fn addr_from_be(a: u32) -> Ipv4Addr {
        Ipv4Addr::from(a.to_ne_bytes())
    }

    impl FrontendKey {
        pub fn lb4_key(&self, backend_slot: u16) -> Lb4Key {
            Lb4Key {
                addr_be: addr_be(self.addr),
                port_be: self.port.to_be(),
                backend_slot,
                proto: self.proto.number(),
                scope: 0,
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
        pub fn lb4_backend(&self) -> Lb4Backend {
            Lb4Backend {
                addr_be: addr_be(self.addr),
                port_be: self.port.to_be(),
                proto: self.proto.number(),
                flags: 0,
            }
        }

        pub fn from_lb4_backend(b: &Lb4Backend) -> Option<Self> {
            Some(Self {
                addr: addr_from_be(b.addr_be),
                port: u16::from_be(b.port_be),
                proto: Protocol::from_number(b.proto)?,
            })
        }
    }
}

pub(crate) use to_maps::addr_from_be;
