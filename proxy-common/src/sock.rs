//! Maps of the socket (cgroup sock_addr) path.

/// Key of [`crate::map_names::SOCK4_REVNAT`] (LRU): a socket and the backend
/// it was sent to, so `recvmsg`/`getpeername` can show the frontend instead.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
#[repr(C)]
pub struct Sock4RevNatKey {
    /// The socket's cookie (`bpf_get_socket_cookie`).
    pub cookie: u64,
    /// The backend's address, network order.
    pub addr_be: u32,
    /// The backend's port, network order.
    pub port_be: u16,
    /// Explicit padding, always 0.
    pub _pad: u16,
}
const _: () = assert!(size_of::<Sock4RevNatKey>() == 16);

/// Value of [`crate::map_names::SOCK4_REVNAT`]: the frontend the socket asked for.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Default)]
#[repr(C)]
pub struct Sock4RevNatValue {
    /// The frontend's address, network order.
    pub addr_be: u32,
    /// The frontend's port, network order.
    pub port_be: u16,
    /// Explicit padding, always 0.
    pub _pad: u16,
    /// The frontend's ID.
    pub frontend_id: u32,
}
const _: () = assert!(size_of::<Sock4RevNatValue>() == 12);

/// Key of [`crate::map_names::SOCK4_FWD`] (LRU): an unconnected UDP socket
/// sending to a frontend. Keeps its datagrams on one backend, as conntrack
/// keeps a UDP flow on one endpoint under kube-proxy.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
#[repr(C)]
pub struct Sock4FwdKey {
    /// The socket's cookie.
    pub cookie: u64,
    /// The frontend's address, network order.
    pub addr_be: u32,
    /// The frontend's port, network order.
    pub port_be: u16,
    /// IP protocol.
    pub proto: u8,
    /// Explicit padding, always 0.
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
