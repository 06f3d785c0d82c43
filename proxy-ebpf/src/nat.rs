//! Address and port rewrites with incremental checksum updates.
//!
//! The kernel helpers are used for every write: they keep the skb's checksum
//! state right whether the transport checksum is complete or still partial
//! (offloaded on veth), which a hand-written update could not.
use aya_ebpf::programs::TcContext;
use proxy_common::proto;

use crate::packet::{IP_CSUM_OFF, l4_csum_off};

// Flags of bpf_l3/l4_csum_replace (include/uapi/linux/bpf.h).
const BPF_F_PSEUDO_HDR: u64 = 1 << 4;
const BPF_F_MARK_MANGLED_0: u64 = 1 << 5;

/// Which end of the flow is rewritten.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Source,
    Destination,
}

/// A rewrite of one end of an IPv4 TCP/UDP packet.
pub struct Rewrite {
    pub side: Side,
    pub old_addr_be: u32,
    pub new_addr_be: u32,
    pub old_port_be: u16,
    pub new_port_be: u16,
}

/// Applies `rw` to the packet; `Err` means the packet must be dropped, as a
/// half-rewritten packet would be corrupt.
#[inline(always)]
pub fn rewrite(
    ctx: &TcContext,
    l3_off: usize,
    l4_off: usize,
    l4_proto: u8,
    rw: &Rewrite,
) -> Result<(), ()> {
    let (addr_off, port_off) = match rw.side {
        Side::Source => (l3_off + 12, l4_off),
        Side::Destination => (l3_off + 16, l4_off + 2),
    };
    let csum_off = l4_off + l4_csum_off(l4_proto);
    // A zero UDP checksum means "none" and must stay zero.
    let mangled = if l4_proto == proto::UDP {
        BPF_F_MARK_MANGLED_0
    } else {
        0
    };
    let (old_a, new_a) = (u64::from(rw.old_addr_be), u64::from(rw.new_addr_be));
    let (old_p, new_p) = (u64::from(rw.old_port_be), u64::from(rw.new_port_be));
    ctx.skb
        .l4_csum_replace(csum_off, old_a, new_a, BPF_F_PSEUDO_HDR | mangled | 4)
        .map_err(|_| ())?;
    if old_p != new_p {
        ctx.skb
            .l4_csum_replace(csum_off, old_p, new_p, mangled | 2)
            .map_err(|_| ())?;
        ctx.skb
            .store(port_off, &rw.new_port_be, 0)
            .map_err(|_| ())?;
    }
    ctx.skb
        .l3_csum_replace(l3_off + IP_CSUM_OFF, old_a, new_a, 4)
        .map_err(|_| ())?;
    ctx.skb
        .store(addr_off, &rw.new_addr_be, 0)
        .map_err(|_| ())?;
    Ok(())
}
