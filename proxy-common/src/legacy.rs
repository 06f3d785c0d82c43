//! Layouts of maps an earlier version pinned under names this version no
//! longer uses, so an upgrade can carry their contents over instead of
//! starting empty (see `switchyard::datapath::migrate`). Nothing new is
//! ever written in these layouts.

/// Version 1 of the services map (`SY_LB4_SVC`), keyed by
/// [`crate::lb::Lb4Key`]: no local slots, 8-bit flags.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Default)]
#[repr(C)]
pub struct Lb4ServiceV1 {
    /// The backend a slot names.
    pub backend_id: u32,
    /// The frontend's ID.
    pub rev_nat_id: u32,
    /// Session affinity timeout in seconds (master entry only).
    pub affinity_timeout_s: u32,
    /// Backend slots.
    pub count: u16,
    /// Bit 0: session affinity.
    pub flags: u8,
    /// Explicit padding.
    pub _pad: u8,
}
const _: () = assert!(size_of::<Lb4ServiceV1>() == 16);

/// [`Ct4KeyV1::dir`] of an original-direction entry.
pub const CT_V1_DIR_FORWARD: u8 = 0;

/// Version 1 of the conntrack key (`SY_CT4`): the direction was part of the
/// key, and only Service flows were tracked.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
#[repr(C)]
pub struct Ct4KeyV1 {
    /// Source address, network order.
    pub saddr_be: u32,
    /// Destination address, network order.
    pub daddr_be: u32,
    /// Source port, network order.
    pub sport_be: u16,
    /// Destination port, network order.
    pub dport_be: u16,
    /// IP protocol.
    pub proto: u8,
    /// 0: original direction (rewrite the destination); 1: reply (rewrite the source).
    pub dir: u8,
    /// Explicit padding.
    pub _pad: [u8; 2],
}
const _: () = assert!(size_of::<Ct4KeyV1>() == 16);

/// Version 1 of the conntrack value: one address and port to write.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Default)]
#[repr(C)]
pub struct Ct4ValueV1 {
    /// The new destination (original direction) or source (reply).
    pub nat_addr_be: u32,
    /// Its port.
    pub nat_port_be: u16,
    /// Explicit padding.
    pub _pad: u16,
    /// The flow's backend.
    pub backend_id: u32,
    /// The flow's frontend.
    pub rev_nat_id: u32,
    /// `bpf_ktime_get_ns()` when the flow was created.
    pub created_ns: u64,
}
const _: () = assert!(size_of::<Ct4ValueV1>() == 24);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain `#[repr(C)]` integers with explicit padding.
    unsafe impl aya::Pod for super::Lb4ServiceV1 {}
    unsafe impl aya::Pod for super::Ct4KeyV1 {}
    unsafe impl aya::Pod for super::Ct4ValueV1 {}
}
