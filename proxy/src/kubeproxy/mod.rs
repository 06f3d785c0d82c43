//! kube-proxy's own rule layouts, from the same pure desired computation
//! as the eBPF dataplane (`desired::compute` → [`ServicePort`]s):
//! `switchyard --proxy-mode iptables|nftables`. They are the baseline of
//! every benchmark (the same Services programmed the way kube-proxy
//! programs them) and a fallback for kernels without the eBPF features.
//!
//! [`iptables`] and [`nftables`] are pure renderers; [`apply`] runs the
//! real `iptables-restore` / `nft` (in the node's network namespace when
//! one is named) and keeps what a later sync must delete.
use std::net::Ipv4Addr;

pub use crate::desired::ServicePort;
use crate::model::Ipv4Cidr;

pub mod apply;
pub mod iptables;
pub mod names;
pub mod nftables;
#[cfg(test)]
mod testing;

/// Which kernel interface programs Services (kube-proxy's `--proxy-mode`;
/// `ebpf` is Switchyard's own).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ProxyMode {
    /// Socket hooks and TC programs with pinned maps.
    #[default]
    Ebpf,
    /// kube-proxy's iptables layout through `iptables-restore`.
    Iptables,
    /// kube-proxy's nftables layout through `nft`.
    Nftables,
}

impl std::str::FromStr for ProxyMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "" | "ebpf" => Ok(Self::Ebpf),
            "iptables" => Ok(Self::Iptables),
            "nftables" => Ok(Self::Nftables),
            other => Err(format!(
                "`{other}` (expected ebpf, iptables or nftables; ipvs and kernelspace are not supported)"
            )),
        }
    }
}

impl ProxyMode {
    /// The mode's name as `--proxy-mode` spells it.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Ebpf => "ebpf",
            Self::Iptables => "iptables",
            Self::Nftables => "nftables",
        }
    }
}

/// What kube-proxy's rules depend on besides the Services.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleConfig {
    /// `iptables.masqueradeBit` (default 14: mark 0x4000).
    pub masquerade_bit: u8,
    /// `masqueradeAll`: masquerade every ClusterIP connection.
    pub masquerade_all: bool,
    /// The local-traffic detector (`detectLocalMode: ClusterCIDR`): traffic
    /// from outside it to a ClusterIP is masqueraded, traffic from inside
    /// it to an external address skips `externalTrafficPolicy`.
    pub local_detector: Option<Ipv4Cidr>,
    /// `nodePortAddresses` resolved to addresses; `None`: every local
    /// address (kube-proxy's default when unset).
    pub nodeport_addresses: Option<Vec<Ipv4Addr>>,
    /// `iptables.localhostNodePorts` (iptables mode only; it needs
    /// `route_localnet`, which Switchyard does not set, so the daemon
    /// turns it off).
    pub localhost_nodeports: bool,
    /// The node's address (a LoadBalancer IP's source ranges that hold it
    /// also admit the LoadBalancer IP as a source).
    pub node_ip: Option<Ipv4Addr>,
}

impl Default for RuleConfig {
    fn default() -> Self {
        Self {
            masquerade_bit: 14,
            masquerade_all: false,
            local_detector: None,
            nodeport_addresses: None,
            localhost_nodeports: false,
            node_ip: None,
        }
    }
}
