//! Connection tracking of the per-packet paths: one LRU map, two entries per
//! flow, every TCP and UDP flow that crosses a hooked interface.
//!
//! An entry is keyed by a packet's tuple as it arrives at a hook and holds
//! the tuple to rewrite it to. The original-direction entry is keyed by what
//! the client sent (for a Service flow: destination = frontend) and holds the
//! translated tuple (destination = backend, source = the node when source
//! NAT applies); the reply-direction entry is keyed by what the backend sends
//! back and holds the tuple the client expects. Flows that are not a
//! Service's are tracked too, untranslated: so a translated flow can never
//! take over the wire tuple of a live flow (its source port is remapped
//! instead, as netfilter's NAT does), and a stale entry can never translate
//! another flow's packets.
//!
//! The two entries name each other: an entry's partner is keyed by the
//! reverse of its translated tuple.

/// [`Ct4Value::flags`]: this is the reply-direction entry.
pub const CT_FLAG_REPLY: u8 = 1 << 0;
/// [`Ct4Value::flags`]: packets matching this entry are rewritten.
pub const CT_FLAG_NAT: u8 = 1 << 1;
/// [`Ct4Value::flags`]: the flow's source is rewritten (to the node's address
/// or to another port) on its way to the backend.
pub const CT_FLAG_SNAT: u8 = 1 << 2;
/// [`Ct4Value::flags`]: the flow entered the node on a node-facing
/// interface (NodePort, externalIPs, LoadBalancer IPs, pod traffic from
/// other nodes).
pub const CT_FLAG_NODE_PATH: u8 = 1 << 3;

/// [`Ct4Value::state`]: the original direction opened the flow (a TCP SYN,
/// or any UDP datagram).
pub const CT_STATE_OPENED: u8 = 1 << 0;
/// [`Ct4Value::state`]: the reply direction has answered (SYN-ACK, or a UDP
/// datagram back): the flow is established.
pub const CT_STATE_REPLIED: u8 = 1 << 1;
/// [`Ct4Value::state`]: the original direction sent a FIN.
pub const CT_STATE_FIN_ORIG: u8 = 1 << 2;
/// [`Ct4Value::state`]: the reply direction sent a FIN.
pub const CT_STATE_FIN_REPLY: u8 = 1 << 3;
/// [`Ct4Value::state`]: either direction sent a RST.
pub const CT_STATE_RST: u8 = 1 << 4;

/// Key of [`crate::map_names::CT4`]: a packet's tuple at the hook.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(C)]
pub struct Ct4Key {
    /// Source address, network order.
    pub saddr_be: u32,
    /// Destination address, network order.
    pub daddr_be: u32,
    /// Source port, network order.
    pub sport_be: u16,
    /// Destination port, network order.
    pub dport_be: u16,
    /// IP protocol ([`crate::proto`]): TCP or UDP.
    pub proto: u8,
    /// Explicit padding, always 0.
    pub _pad: [u8; 3],
}
const _: () = assert!(size_of::<Ct4Key>() == 16);

/// Value of [`crate::map_names::CT4`].
#[derive(Copy, Clone, Debug, PartialEq, Eq, Default)]
#[repr(C)]
pub struct Ct4Value {
    /// Source address after translation, network order.
    pub saddr_be: u32,
    /// Destination address after translation, network order.
    pub daddr_be: u32,
    /// Source port after translation, network order.
    pub sport_be: u16,
    /// Destination port after translation, network order.
    pub dport_be: u16,
    /// The backend of a Service flow, 0 otherwise.
    pub backend_id: u32,
    /// The frontend of a Service flow, 0 otherwise.
    pub frontend_id: u32,
    /// `CLOCK_MONOTONIC` second after which the entry is dead; refreshed by
    /// traffic, by at most one write per second.
    pub expires_s: u32,
    /// Interface to redirect matching packets to (0: let the kernel route),
    /// for packets whose source becomes a local address of the node, which
    /// the kernel's input path would drop as martian.
    pub ifindex: u32,
    /// `CT_FLAG_*` bits.
    pub flags: u8,
    /// `CT_STATE_*` bits, the same in both entries of a flow.
    pub state: u8,
    /// Explicit padding, always 0.
    pub _pad: [u8; 2],
}
const _: () = assert!(size_of::<Ct4Value>() == 32);

impl Ct4Key {
    /// The tuple of the other direction: what a reply to this packet carries.
    pub const fn reversed(&self) -> Ct4Key {
        Ct4Key {
            saddr_be: self.daddr_be,
            daddr_be: self.saddr_be,
            sport_be: self.dport_be,
            dport_be: self.sport_be,
            proto: self.proto,
            _pad: [0; 3],
        }
    }
}

impl Ct4Value {
    /// The key of the flow's other entry: the reverse of this entry's
    /// translated tuple.
    pub const fn partner_key(&self, proto: u8) -> Ct4Key {
        Ct4Key {
            saddr_be: self.daddr_be,
            daddr_be: self.saddr_be,
            sport_be: self.dport_be,
            dport_be: self.sport_be,
            proto,
            _pad: [0; 3],
        }
    }

    /// Whether a TCP flow has ended (a RST, or a FIN each way): a new
    /// connection may take its tuple, as a SYN in netfilter's TIME_WAIT does.
    pub const fn tcp_closed(&self) -> bool {
        self.state & CT_STATE_RST != 0
            || self.state & (CT_STATE_FIN_ORIG | CT_STATE_FIN_REPLY)
                == (CT_STATE_FIN_ORIG | CT_STATE_FIN_REPLY)
    }
}

/// Key of [`crate::map_names::FRAG4`] (LRU): a fragmented datagram.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
#[repr(C)]
pub struct Frag4Key {
    /// Source address, network order.
    pub saddr_be: u32,
    /// Destination address, network order.
    pub daddr_be: u32,
    /// The IPv4 identification field, network order.
    pub id_be: u16,
    /// IP protocol.
    pub proto: u8,
    /// Explicit padding, always 0.
    pub _pad: u8,
}
const _: () = assert!(size_of::<Frag4Key>() == 12);

/// Value of [`crate::map_names::FRAG4`]: the ports of the datagram's first
/// fragment, which later fragments lack, so that every fragment is
/// translated as the first one was.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Default)]
#[repr(C)]
pub struct Frag4Value {
    /// Source port, network order.
    pub sport_be: u16,
    /// Destination port, network order.
    pub dport_be: u16,
}
const _: () = assert!(size_of::<Frag4Value>() == 4);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain `#[repr(C)]` integers with explicit padding.
    unsafe impl aya::Pod for super::Ct4Key {}
    unsafe impl aya::Pod for super::Ct4Value {}
    unsafe impl aya::Pod for super::Frag4Key {}
    unsafe impl aya::Pod for super::Frag4Value {}
}
