//! Maps of the socket (cgroup sock_addr) path.

/// Key of [`crate::map_names::SOCK4_REVNAT`] (LRU): a socket and the backend
/// it was sent to, so `recvmsg`/`getpeername` can show the frontend instead.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
#[repr(C)]
pub struct Sock4RevNatKey {
    pub cookie: u64,
    pub addr_be: u32,
    pub port_be: u16,
    pub _pad: u16,
}
const _: () = assert!(size_of::<Sock4RevNatKey>() == 16);

/// Value of [`crate::map_names::SOCK4_REVNAT`]: the frontend the socket asked for.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Default)]
#[repr(C)]
pub struct Sock4RevNatValue {
    pub addr_be: u32,
    pub port_be: u16,
    pub _pad: u16,
    pub rev_nat_id: u32,
}
const _: () = assert!(size_of::<Sock4RevNatValue>() == 12);

/// Key of [`crate::map_names::SOCK4_FWD`] (LRU): an unconnected UDP socket
/// sending to a frontend. Keeps its datagrams on one backend, as conntrack
/// keeps a UDP flow on one endpoint under kube-proxy.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
#[repr(C)]
pub struct Sock4FwdKey {
    pub cookie: u64,
    pub addr_be: u32,
    pub port_be: u16,
    pub proto: u8,
    pub _pad: u8,
}
const _: () = assert!(size_of::<Sock4FwdKey>() == 16);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain `#[repr(C)]` integers with explicit padding.
    unsafe impl aya::Pod for super::Sock4RevNatKey {}
    unsafe impl aya::Pod for super::Sock4RevNatValue {}
    unsafe impl aya::Pod for super::Sock4FwdKey {}
}
