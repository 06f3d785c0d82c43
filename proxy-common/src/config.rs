//! Settings of the eBPF programs: fixed at load time ([`DatapathConfig`], a
//! read-only global) or changed while running ([`Node4Config`], a map).

/// Conntrack lifetimes and the source-NAT port range, set when the object is
/// loaded (the global [`crate::global_names::CONFIG`]). Lifetimes are in
/// seconds; an entry lives that long after the last packet that refreshed it.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct DatapathConfig {
    /// TCP flow whose SYN has not been answered (Cilium: 60 s).
    pub tcp_syn_s: u32,
    /// Established TCP flow (kube-proxy's `conntrack.tcpEstablishedTimeout`, 24 h).
    pub tcp_established_s: u32,
    /// TCP flow after a FIN one way (kube-proxy's `conntrack.tcpCloseWaitTimeout`, 1 h).
    pub tcp_close_wait_s: u32,
    /// TCP flow after a RST or a FIN each way (Cilium: 10 s).
    pub tcp_close_s: u32,
    /// UDP flow not yet answered (netfilter's `nf_conntrack_udp_timeout`, 30 s).
    pub udp_s: u32,
    /// UDP flow answered at least once (netfilter's `nf_conntrack_udp_timeout_stream`, 120 s).
    pub udp_stream_s: u32,
    /// First port source NAT may use, host order.
    pub snat_port_min: u16,
    /// Last port source NAT may use, host order.
    pub snat_port_max: u16,
}
const _: () = assert!(size_of::<DatapathConfig>() == 28);

impl DatapathConfig {
    /// The defaults: kube-proxy's and netfilter's lifetimes, and source NAT
    /// on ports 20000-29999, below the kernel's ephemeral range (32768+) and
    /// the NodePort range (30000-32767), so translated flows never collide
    /// with the node's own connections.
    pub const DEFAULT: Self = Self {
        tcp_syn_s: 60,
        tcp_established_s: 86_400,
        tcp_close_wait_s: 3_600,
        tcp_close_s: 10,
        udp_s: 30,
        udp_stream_s: 120,
        snat_port_min: 20_000,
        snat_port_max: 29_999,
    };
}

/// Value of [`crate::map_names::NODE4`] (an array of one): what the programs
/// know of the node they run on.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Default)]
#[repr(C)]
pub struct Node4Config {
    /// The node's address that source NAT and hairpin traffic use, network
    /// order; 0 when unknown (then no source NAT is done).
    pub addr_be: u32,
    /// Explicit padding, always 0.
    pub _pad: u32,
}
const _: () = assert!(size_of::<Node4Config>() == 8);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain `#[repr(C)]` integers with explicit padding.
    unsafe impl aya::Pod for super::DatapathConfig {}
    unsafe impl aya::Pod for super::Node4Config {}
}
