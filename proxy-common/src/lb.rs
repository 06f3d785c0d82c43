//! Load-balancing maps: frontends, backends, memberships, session affinity
//! and `loadBalancerSourceRanges`.
//!
//! A frontend (one Service IP, port and protocol) is a set of entries in
//! [`crate::map_names::LB4_SERVICES`]: slot [`MASTER_SLOT`] describes it, slots
//! `1..=count` of scope [`SLOT_SCOPE_CLUSTER`] name the backends every client
//! may use (the "cluster" set) and slots `1..=local_count` of scope
//! [`SLOT_SCOPE_LOCAL`] the backends external traffic uses under
//! `externalTrafficPolicy: Local` (this node's endpoints). The two ranges
//! live in separate key spaces so that resizing one never moves the other:
//! while the master entry still holds the old counts, every slot either
//! range can reach names a backend of that range.

/// `backend_slot` of a frontend's master entry.
pub const MASTER_SLOT: u16 = 0;

/// [`Lb4Key::scope`] of the master entry and the cluster slots.
pub const SLOT_SCOPE_CLUSTER: u8 = 0;
/// [`Lb4Key::scope`] of the local slots (`externalTrafficPolicy: Local`).
pub const SLOT_SCOPE_LOCAL: u8 = 1;

/// [`Lb4Service::flags`]: `sessionAffinity: ClientIP` is on for this frontend.
pub const SVC_FLAG_AFFINITY: u16 = 1 << 0;
/// [`Lb4Service::flags`]: traffic from outside the node (the node-facing
/// path) uses the local slots, `externalTrafficPolicy: Local`. Pods and the
/// node itself keep using the cluster slots, as kube-proxy's "short-circuit"
/// rules make them.
pub const SVC_FLAG_EXT_LOCAL: u16 = 1 << 1;
/// [`Lb4Service::flags`]: only sources in [`crate::map_names::LB4_SOURCE_RANGES`]
/// for this frontend may use it (`loadBalancerSourceRanges`).
pub const SVC_FLAG_SOURCE_RANGES: u16 = 1 << 2;
/// [`Lb4Service::flags`]: with no cluster slots, drop instead of rejecting:
/// the Service has endpoints, but none this policy may use
/// (`internalTrafficPolicy: Local` without a local endpoint; kube-proxy's DROP).
pub const SVC_FLAG_DROP_EMPTY: u16 = 1 << 3;
/// [`Lb4Service::flags`]: bits 8..=9 say what kind of address the frontend
/// is (one of the `SVC_KIND_*` values), for inspection.
pub const SVC_KIND_SHIFT: u16 = 8;
/// Mask of the kind bits, after shifting by [`SVC_KIND_SHIFT`].
pub const SVC_KIND_MASK: u16 = 0b11;
/// The Service's `clusterIP`.
pub const SVC_KIND_CLUSTER_IP: u16 = 0;
/// A node address at a `nodePort`.
pub const SVC_KIND_NODE_PORT: u16 = 1;
/// One of `spec.externalIPs`.
pub const SVC_KIND_EXTERNAL_IP: u16 = 2;
/// One of `status.loadBalancer.ingress[].ip`.
pub const SVC_KIND_LOAD_BALANCER: u16 = 3;

/// Key of [`crate::map_names::LB4_SERVICES`]: one slot of one frontend.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(C)]
pub struct Lb4Key {
    /// Frontend IPv4 address, network order.
    pub addr_be: u32,
    /// Frontend port, network order.
    pub port_be: u16,
    /// [`MASTER_SLOT`] for the master entry, `1..` for backend slots.
    pub backend_slot: u16,
    /// IP protocol ([`crate::proto`]).
    pub proto: u8,
    /// Which slot range: [`SLOT_SCOPE_CLUSTER`] (also the master entry's)
    /// or [`SLOT_SCOPE_LOCAL`].
    pub scope: u8,
    /// Explicit padding, always 0.
    pub _pad: [u8; 2],
}
const _: () = assert!(size_of::<Lb4Key>() == 12);

/// Value of [`crate::map_names::LB4_SERVICES`].
///
/// In the master entry `backend_id` is 0, `count` and `local_count` size the
/// two slot ranges, and `flags` and `affinity_timeout_s` describe the
/// frontend. In a backend slot only `backend_id` and `frontend_id` matter.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Default)]
#[repr(C)]
pub struct Lb4Service {
    /// The backend a slot names (key of [`crate::map_names::LB4_BACKENDS`]).
    pub backend_id: u32,
    /// The frontend's ID: names it in conntrack, membership and affinity entries.
    pub frontend_id: u32,
    /// Session affinity timeout in seconds (master entry only).
    pub affinity_timeout_s: u32,
    /// Backends every client may use: cluster slots `1..=count`.
    pub count: u16,
    /// Backends of external traffic under [`SVC_FLAG_EXT_LOCAL`]: local
    /// slots `1..=local_count`.
    pub local_count: u16,
    /// `SVC_FLAG_*` bits and the kind (master entry only).
    pub flags: u16,
    /// Explicit padding, always 0.
    pub _pad: u16,
}
const _: () = assert!(size_of::<Lb4Service>() == 20);

/// [`Lb4Backend::flags`]: the endpoint runs on this node, so traffic from
/// outside reaches it, and its replies come back, without source NAT.
pub const BACKEND_FLAG_LOCAL: u8 = 1 << 0;

/// Value of [`crate::map_names::LB4_BACKENDS`], keyed by a `u32` backend ID.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Default)]
#[repr(C)]
pub struct Lb4Backend {
    /// Endpoint IPv4 address, network order.
    pub addr_be: u32,
    /// Endpoint (target) port, network order.
    pub port_be: u16,
    /// IP protocol ([`crate::proto`]).
    pub proto: u8,
    /// `BACKEND_FLAG_*` bits.
    pub flags: u8,
}
const _: () = assert!(size_of::<Lb4Backend>() == 8);

/// [`Lb4AffinityKey::flags`]: `client_id` is a network-namespace cookie
/// (socket path) rather than a client IPv4 address (per-packet paths).
pub const AFF_CLIENT_NETNS: u32 = 1;

/// Key of [`crate::map_names::LB4_AFFINITY`] (LRU): a client of one frontend.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
#[repr(C)]
pub struct Lb4AffinityKey {
    /// Client IPv4 address (network order, zero-extended) or netns cookie.
    pub client_id: u64,
    /// The frontend ([`Lb4Service::frontend_id`]).
    pub frontend_id: u32,
    /// `AFF_CLIENT_*` bits: what `client_id` is.
    pub flags: u32,
}
const _: () = assert!(size_of::<Lb4AffinityKey>() == 16);

/// Value of [`crate::map_names::LB4_AFFINITY`].
#[derive(Copy, Clone, Debug, PartialEq, Eq, Default)]
#[repr(C)]
pub struct Lb4AffinityValue {
    /// The backend this client sticks to.
    pub backend_id: u32,
    /// Explicit padding, always 0.
    pub _pad: u32,
    /// `bpf_ktime_get_ns()` of the last new connection that used this entry.
    pub last_used_ns: u64,
}
const _: () = assert!(size_of::<Lb4AffinityValue>() == 16);

/// Value bit of [`crate::map_names::LB4_MEMBERS`]: the backend is in the
/// frontend's cluster slots.
pub const MEMBER_CLUSTER: u8 = 1 << 0;
/// Value bit of [`crate::map_names::LB4_MEMBERS`]: the backend is in the
/// frontend's local slots (`externalTrafficPolicy: Local`).
pub const MEMBER_LOCAL: u8 = 1 << 1;

/// Key of [`crate::map_names::LB4_MEMBERS`], whose value holds the
/// `MEMBER_*` bits of the slot ranges `backend_id` is in for frontend
/// `frontend_id`: so an affinity entry or a socket naming a backend that
/// left (that range) is noticed without scanning the frontend's slots.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(C)]
pub struct Lb4MemberKey {
    /// The backend.
    pub backend_id: u32,
    /// The frontend.
    pub frontend_id: u32,
}
const _: () = assert!(size_of::<Lb4MemberKey>() == 8);

/// Key data of [`crate::map_names::LB4_SOURCE_RANGES`] (an LPM trie): the
/// frontend, always matched whole (the first 32 bits of the prefix), then a
/// client address prefix. A lookup uses prefix length 64 and the client's
/// address; an entry for CIDR `a/n` has prefix length `32 + n`.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(C)]
pub struct Lb4SourceRangeKey {
    /// The frontend, big-endian so that the trie compares it bytewise.
    pub frontend_id_be: u32,
    /// Allowed source network, network order.
    pub addr_be: u32,
}
const _: () = assert!(size_of::<Lb4SourceRangeKey>() == 8);

/// Prefix length of [`Lb4SourceRangeKey`] that covers the frontend ID.
pub const SOURCE_RANGE_ID_BITS: u32 = 32;

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain `#[repr(C)]` integers with explicit padding; any bit
    // pattern is valid.
    unsafe impl aya::Pod for super::Lb4Key {}
    unsafe impl aya::Pod for super::Lb4Service {}
    unsafe impl aya::Pod for super::Lb4Backend {}
    unsafe impl aya::Pod for super::Lb4AffinityKey {}
    unsafe impl aya::Pod for super::Lb4AffinityValue {}
    unsafe impl aya::Pod for super::Lb4MemberKey {}
    unsafe impl aya::Pod for super::Lb4SourceRangeKey {}
}
