//! The ABI between Switchyard's eBPF programs and its userspace: map names,
//! keys, values and the constants both sides interpret.
//!
//! Every type is `#[repr(C)]`, `Copy`, has explicit padding and a compile-time
//! size check, so the eBPF and userspace views of a map entry cannot drift.
//! Addresses and ports are kept in network byte order (`*_be` fields); the
//! conversion happens once, at the userspace map boundary.
//!
//! Layout follows cilium's `lb4_*` maps: a frontend is a set of entries in
//! [`LB4_SERVICES`], slot 0 being the master entry (backend count, flags) and
//! slots `1..=count` each naming a backend by ID in [`LB4_BACKENDS`].
//! When a layout changes, the map gets a new name (`_V2`), never a new meaning.
#![no_std]

pub mod ct;
pub mod lb;
pub mod sock;

/// IP protocol numbers as they appear in the IPv4 header.
pub mod proto {
    pub const ICMP: u8 = 1;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const SCTP: u8 = 132;
}

/// Pinned map names, shared by the eBPF `#[map]` statics and userspace.
/// The kernel keeps 15 characters of an object name.
pub mod map_names {
    pub const LB4_SERVICES: &str = "SY_LB4_SVC";
    pub const LB4_BACKENDS: &str = "SY_LB4_BE";
    pub const LB4_AFFINITY: &str = "SY_LB4_AFF";
    pub const LB4_AFF_MATCH: &str = "SY_LB4_AFFM";
    pub const CT4: &str = "SY_CT4";
    pub const SOCK4_REVNAT: &str = "SY_SK4_RNAT";
    pub const SOCK4_FWD: &str = "SY_SK4_FWD";

    /// Every map Switchyard pins, for cleanup and inspection.
    pub const ALL: [&str; 7] = [
        LB4_SERVICES,
        LB4_BACKENDS,
        LB4_AFFINITY,
        LB4_AFF_MATCH,
        CT4,
        SOCK4_REVNAT,
        SOCK4_FWD,
    ];
}

/// Program names as they appear in the eBPF object.
pub mod program_names {
    pub const CONNECT4: &str = "sy_connect4";
    pub const SENDMSG4: &str = "sy_sendmsg4";
    pub const RECVMSG4: &str = "sy_recvmsg4";
    pub const GETPEERNAME4: &str = "sy_getpeername4";
    pub const TC_INGRESS: &str = "sy_tc_ingress";
}
