//! Load-balancing maps: frontends (services), backends and session affinity.

/// `backend_slot` of a frontend's master entry.
pub const MASTER_SLOT: u16 = 0;

/// [`Lb4Service::flags`]: `sessionAffinity: ClientIP` is on for this frontend.
pub const SVC_FLAG_AFFINITY: u8 = 1 << 0;

/// Key of [`crate::map_names::LB4_SERVICES`]: one frontend slot.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(C)]
pub struct Lb4Key {
    /// Frontend IPv4 address, network order.
    pub addr_be: u32,
    /// Frontend port, network order.
    pub port_be: u16,
    /// 0 for the master entry, `1..=count` for backend slots.
    pub backend_slot: u16,
    /// IP protocol ([`crate::proto`]).
    pub proto: u8,
    /// Reserved for traffic-policy scopes (external/internal); 0 today.
    pub scope: u8,
    pub _pad: [u8; 2],
}
const _: () = assert!(size_of::<Lb4Key>() == 12);

/// Value of [`crate::map_names::LB4_SERVICES`].
///
/// In the master entry `count` is the number of backend slots, `backend_id`
/// is 0 and `flags`, `affinity_timeout_s` and `rev_nat_id` describe the
/// frontend. In slot `n` only `backend_id` (and `rev_nat_id`) matter.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Default)]
#[repr(C)]
pub struct Lb4Service {
    pub backend_id: u32,
    /// Frontend ID: names the frontend in conntrack and affinity entries.
    pub rev_nat_id: u32,
    /// Session affinity timeout in seconds (master entry only).
    pub affinity_timeout_s: u32,
    pub count: u16,
    pub flags: u8,
    pub _pad: u8,
}
const _: () = assert!(size_of::<Lb4Service>() == 16);

/// Value of [`crate::map_names::LB4_BACKENDS`], keyed by a `u32` backend ID.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Default)]
#[repr(C)]
pub struct Lb4Backend {
    pub addr_be: u32,
    pub port_be: u16,
    pub proto: u8,
    pub flags: u8,
}
const _: () = assert!(size_of::<Lb4Backend>() == 8);

/// [`Lb4AffinityKey::flags`]: `client_id` is a network-namespace cookie
/// (socket path) rather than a client IPv4 address (TC path).
pub const AFF_CLIENT_NETNS: u32 = 1;

/// Key of [`crate::map_names::LB4_AFFINITY`] (LRU): a client of one frontend.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
#[repr(C)]
pub struct Lb4AffinityKey {
    /// Client IPv4 address (network order, zero-extended) or netns cookie.
    pub client_id: u64,
    pub rev_nat_id: u32,
    pub flags: u32,
}
const _: () = assert!(size_of::<Lb4AffinityKey>() == 16);

/// Value of [`crate::map_names::LB4_AFFINITY`].
#[derive(Copy, Clone, Debug, PartialEq, Eq, Default)]
#[repr(C)]
pub struct Lb4AffinityValue {
    pub backend_id: u32,
    pub _pad: u32,
    /// `bpf_ktime_get_ns()` of the last new connection that used this entry.
    pub last_used_ns: u64,
}
const _: () = assert!(size_of::<Lb4AffinityValue>() == 16);

/// Key of [`crate::map_names::LB4_AFF_MATCH`]: present while `backend_id` is a
/// backend of frontend `rev_nat_id`, so an affinity entry naming a removed
/// backend is ignored without scanning the frontend's slots.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(C)]
pub struct Lb4AffMatchKey {
    pub backend_id: u32,
    pub rev_nat_id: u32,
}
const _: () = assert!(size_of::<Lb4AffMatchKey>() == 8);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain `#[repr(C)]` integers with explicit padding; any bit
    // pattern is valid.
    unsafe impl aya::Pod for super::Lb4Key {}
    unsafe impl aya::Pod for super::Lb4Service {}
    unsafe impl aya::Pod for super::Lb4Backend {}
    unsafe impl aya::Pod for super::Lb4AffinityKey {}
    unsafe impl aya::Pod for super::Lb4AffinityValue {}
    unsafe impl aya::Pod for super::Lb4AffMatchKey {}
}
