//! The ABI between Switchyard's eBPF programs and its userspace: map names,
//! keys, values, globals and the constants both sides interpret.
//!
//! Every type is `#[repr(C)]`, `Copy`, has explicit padding and a compile-time
//! size check, so the eBPF and userspace views of a map entry cannot drift.
//! Addresses and ports are kept in network byte order (`*_be` fields); the
//! conversion happens once, at the userspace map boundary.
//!
//! Layout follows cilium's `lb4_*` maps: a frontend is a set of entries in
//! [`map_names::LB4_SERVICES`], slot 0 being the master entry (backend counts,
//! flags) and the other slots each naming a backend by ID in
//! [`map_names::LB4_BACKENDS`]. When a layout changes, the map gets a new name
//! (`_V2`), never a new meaning.
#![no_std]
#![warn(missing_docs)]

pub mod config;
pub mod ct;
pub mod lb;
pub mod legacy;
pub mod sock;
pub mod stats;

/// IP protocol numbers as they appear in the IPv4 header.
pub mod proto {
    /// ICMP.
    pub const ICMP: u8 = 1;
    /// TCP.
    pub const TCP: u8 = 6;
    /// UDP.
    pub const UDP: u8 = 17;
    /// SCTP.
    pub const SCTP: u8 = 132;
}

/// Pinned map names, shared by the eBPF `#[map]` statics and userspace.
/// The kernel keeps 15 characters of an object name.
pub mod map_names {
    /// Frontends and their backend slots ([`crate::lb::Lb4Key`] → [`crate::lb::Lb4Service`]).
    pub const LB4_SERVICES: &str = "SY_LB4_SVC_V2";
    /// Backends by ID (`u32` → [`crate::lb::Lb4Backend`]).
    pub const LB4_BACKENDS: &str = "SY_LB4_BE";
    /// Session affinity, LRU ([`crate::lb::Lb4AffinityKey`] → [`crate::lb::Lb4AffinityValue`]).
    pub const LB4_AFFINITY: &str = "SY_LB4_AFF";
    /// Which backends belong to which frontend, and in which slot ranges
    /// ([`crate::lb::Lb4MemberKey`] → `MEMBER_*` bits).
    pub const LB4_MEMBERS: &str = "SY_LB4_MEMBER";
    /// `loadBalancerSourceRanges`, an LPM trie ([`crate::lb::Lb4SourceRangeKey`] → `u8`).
    pub const LB4_SOURCE_RANGES: &str = "SY_LB4_SRCRANGE";
    /// Conntrack of the per-packet paths, LRU ([`crate::ct::Ct4Key`] → [`crate::ct::Ct4Value`]).
    pub const CT4: &str = "SY_CT4_V2";
    /// Ports of fragmented datagrams, LRU ([`crate::ct::Frag4Key`] → [`crate::ct::Frag4Value`]).
    pub const FRAG4: &str = "SY_FRAG4";
    /// The node's address for source NAT, an array of one ([`crate::config::Node4Config`]).
    pub const NODE4: &str = "SY_NODE4";
    /// Sockets the socket path translated, LRU ([`crate::sock::Sock4RevNatKey`] → [`crate::sock::Sock4RevNatValue`]).
    pub const SOCK4_REVNAT: &str = "SY_SK4_RNAT";
    /// Backends of unconnected UDP sockets, LRU ([`crate::sock::Sock4FwdKey`] → `u32`).
    pub const SOCK4_FWD: &str = "SY_SK4_FWD";
    /// Where to send a packet redirected to a pod interface that is a
    /// bridge port: interface index `u32` → the bridge's index `u32`
    /// (written by the daemon's attacher; an interface missing here is its
    /// own target).
    pub const IF_REDIRECT: &str = "SY_IF_REDIRECT";
    /// Packet counters of the per-packet paths, per CPU (`u32` → `u64`, see [`crate::stats`]).
    pub const STATS4: &str = "SY_STATS4";

    /// Every map Switchyard pins, for cleanup and inspection.
    pub const ALL: [&str; 12] = [
        LB4_SERVICES,
        LB4_BACKENDS,
        LB4_AFFINITY,
        LB4_MEMBERS,
        LB4_SOURCE_RANGES,
        CT4,
        FRAG4,
        NODE4,
        SOCK4_REVNAT,
        SOCK4_FWD,
        IF_REDIRECT,
        STATS4,
    ];

    /// Version 1 of [`LB4_SERVICES`] ([`crate::legacy::Lb4ServiceV1`]).
    pub const LB4_SERVICES_V1: &str = "SY_LB4_SVC";
    /// Version 1 of [`LB4_MEMBERS`] (same key, value always 1).
    pub const LB4_MEMBERS_V1: &str = "SY_LB4_AFFM";
    /// Version 1 of [`CT4`] ([`crate::legacy::Ct4KeyV1`] → [`crate::legacy::Ct4ValueV1`]).
    pub const CT4_V1: &str = "SY_CT4";

    /// Maps earlier versions pinned under names this version no longer
    /// uses (their layout changed): their contents are carried over, and
    /// their pins removed once the new programs run.
    pub const OBSOLETE: [&str; 3] = [LB4_SERVICES_V1, LB4_MEMBERS_V1, CT4_V1];
}

/// Globals of the eBPF object, set at load time.
pub mod global_names {
    /// A [`crate::config::DatapathConfig`].
    pub const CONFIG: &str = "SY_CONFIG";
}

/// Program names as they appear in the eBPF object.
pub mod program_names {
    /// cgroup `connect4`.
    pub const CONNECT4: &str = "sy_connect4";
    /// cgroup `sendmsg4`.
    pub const SENDMSG4: &str = "sy_sendmsg4";
    /// cgroup `recvmsg4`.
    pub const RECVMSG4: &str = "sy_recvmsg4";
    /// cgroup `getpeername4`.
    pub const GETPEERNAME4: &str = "sy_getpeername4";
    /// TC ingress of pod-facing interfaces.
    pub const TC_INGRESS: &str = "sy_tc_ingress";
    /// TC ingress of node-facing interfaces (NodePort and other traffic from outside).
    pub const TC_NODE_INGRESS: &str = "sy_tc_node_in";
    /// TC egress of pod- and node-facing interfaces (replies of the node's
    /// own processes to translated flows).
    pub const TC_EGRESS: &str = "sy_tc_egress";
}
