//! Address and port rewrites with incremental checksum updates.
//!
//! The kernel helpers are used for every write: they keep the skb's checksum
//! state right whether the transport checksum is complete or still partial
//! (offloaded on veth), which a hand-written update could not.
use aya_ebpf::programs::TcContext;
use proxy_common::proto;

use crate::packet::{Fragment, IP_CSUM_OFF, IP_DADDR_OFF, IP_SADDR_OFF, Ipv4, l4_csum_off};

// Flags of bpf_l3/l4_csum_replace (include/uapi/linux/bpf.h).
const BPF_F_PSEUDO_HDR: u64 = 1 << 4;
const BPF_F_MARK_MANGLED_0: u64 = 1 << 5;

/// The addresses and ports of a TCP/UDP packet, network order.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Tuple {
    pub saddr_be: u32,
    pub daddr_be: u32,
    pub sport_be: u16,
    pub dport_be: u16,
}

/// Rewrites the packet's tuple from `from` to `to`, touching only what
/// differs. A later fragment has no transport header: only its addresses
/// change (the first fragment carried the checksum update for the whole
/// datagram). `Err` means the packet must be dropped, as a half-rewritten
/// packet would be corrupt.
#[inline(always)]
pub fn rewrite(ctx: &TcContext, ip: &Ipv4, from: &Tuple, to: &Tuple) -> Result<(), ()> {
    let has_l4 = ip.fragment != Fragment::Later;
    let csum_off = ip.l4_off + l4_csum_off(ip.proto);
    // A zero UDP checksum means "none" and must stay zero.
    let mangled = if ip.proto == proto::UDP {
        BPF_F_MARK_MANGLED_0
    } else {
        0
    };
    let addrs = [
        (from.saddr_be, to.saddr_be, IP_SADDR_OFF),
        (from.daddr_be, to.daddr_be, IP_DADDR_OFF),
    ];
    for (old, new, off) in addrs {
        if old == new {
            continue;
        }
        let (old, new64) = (u64::from(old), u64::from(new));
        if has_l4 {
            ctx.skb
                .l4_csum_replace(csum_off, old, new64, BPF_F_PSEUDO_HDR | mangled | 4)
                .map_err(|_| ())?;
        }
        ctx.skb
            .l3_csum_replace(ip.l3_off + IP_CSUM_OFF, old, new64, 4)
            .map_err(|_| ())?;
        ctx.skb.store(ip.l3_off + off, &new, 0).map_err(|_| ())?;
    }
    if !has_l4 {
        return Ok(());
    }
    let ports = [
        (from.sport_be, to.sport_be, 0),
        (from.dport_be, to.dport_be, 2),
    ];
    for (old, new, off) in ports {
        if old == new {
            continue;
        }
        ctx.skb
            .l4_csum_replace(csum_off, u64::from(old), u64::from(new), mangled | 2)
            .map_err(|_| ())?;
        ctx.skb.store(ip.l4_off + off, &new, 0).map_err(|_| ())?;
    }
    Ok(())
}
