//! Connection tracking of the TC path: one LRU map, two entries per flow.
//!
//! The forward entry is keyed by the tuple the client sent (destination =
//! frontend) and holds the backend; the reply entry is keyed by the tuple the
//! backend sends back and holds the frontend address to restore as source.

/// [`Ct4Key::dir`] of the entry keyed by the client's original tuple.
pub const CT_DIR_FORWARD: u8 = 0;
/// [`Ct4Key::dir`] of the entry keyed by the backend's reply tuple.
pub const CT_DIR_REPLY: u8 = 1;

/// Key of [`crate::map_names::CT4`].
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
#[repr(C)]
pub struct Ct4Key {
    pub saddr_be: u32,
    pub daddr_be: u32,
    pub sport_be: u16,
    pub dport_be: u16,
    pub proto: u8,
    pub dir: u8,
    pub _pad: [u8; 2],
}
const _: () = assert!(size_of::<Ct4Key>() == 16);

/// Value of [`crate::map_names::CT4`]: the address to write into the packet.
///
/// For a forward entry `nat_*` is the backend (new destination); for a reply
/// entry it is the frontend (new source).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Default)]
#[repr(C)]
pub struct Ct4Value {
    pub nat_addr_be: u32,
    pub nat_port_be: u16,
    pub _pad: u16,
    pub backend_id: u32,
    pub rev_nat_id: u32,
    /// `bpf_ktime_get_ns()` when the flow was created.
    pub created_ns: u64,
}
const _: () = assert!(size_of::<Ct4Value>() == 24);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain `#[repr(C)]` integers with explicit padding.
    unsafe impl aya::Pod for super::Ct4Key {}
    unsafe impl aya::Pod for super::Ct4Value {}
}
