//! ICMP errors about translated flows. The quoted packet is one of the
//! flow's, as seen on one side of the translation; the error must reach the
//! other side about the packet that side sent, or its socket never learns
//! of it. E.g. a backend's port-unreachable for a datagram it got through a
//! frontend must reach the client as an error about the frontend; a
//! client's error about a frontend's reply must reach the backend.
use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    helpers::bpf_redirect_neigh,
    programs::TcContext,
};
use proxy_common::{
    ct::{CT_FLAG_NAT, Ct4Key},
    proto,
};

use crate::{
    ct,
    maps::SY_CT4_V2,
    packet::{IP_CSUM_OFF, IP_DADDR_OFF, IP_SADDR_OFF, Ipv4, ptr_at},
};

const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_TIME_EXCEEDED: u8 = 11;
const ICMP_HLEN: usize = 8;
const IPV4_HLEN: usize = 20;
/// The fragment-offset bits of the IPv4 flags/offset field.
const FRAG_OFFSET_MASK: u16 = 0x1fff;

/// Rewrites an ICMP error whose quoted packet belongs to a translated flow.
/// Anything else passes unchanged.
pub fn translate_error(ctx: &TcContext, ip: &Ipv4, may_redirect: bool) -> i32 {
    match try_translate(ctx, ip) {
        Ok(Some(ifindex)) if may_redirect && ifindex != 0 => unsafe {
            bpf_redirect_neigh(ifindex, core::ptr::null_mut(), 0, 0) as i32
        },
        Ok(_) => TC_ACT_OK,
        Err(()) => TC_ACT_SHOT,
    }
}

/// `Ok(Some(ifindex))` when translated (the entry's redirect target).
#[inline(always)]
fn try_translate(ctx: &TcContext, ip: &Ipv4) -> Result<Option<u32>, ()> {
    let Some(hdr) = ptr_at::<[u8; ICMP_HLEN]>(ctx, ip.l4_off) else {
        return Ok(None);
    };
    let icmp_type = unsafe { (*hdr)[0] };
    if icmp_type != ICMP_DEST_UNREACH && icmp_type != ICMP_TIME_EXCEEDED {
        return Ok(None);
    }
    let inner_off = ip.l4_off + ICMP_HLEN;
    // Quoted header without options, followed by at least the ports.
    let Some(inner) = ptr_at::<[u8; IPV4_HLEN + 4]>(ctx, inner_off) else {
        return Ok(None);
    };
    let inner = unsafe { &*inner };
    let inner_proto = inner[9];
    if inner[0] != 0x45 || (inner_proto != proto::TCP && inner_proto != proto::UDP) {
        return Ok(None);
    }
    // A later fragment quotes payload where the ports would be.
    if u16::from_be_bytes([inner[6], inner[7]]) & FRAG_OFFSET_MASK != 0 {
        return Ok(None);
    }
    let q_saddr = u32::from_ne_bytes([inner[12], inner[13], inner[14], inner[15]]);
    let q_daddr = u32::from_ne_bytes([inner[16], inner[17], inner[18], inner[19]]);
    let q_sport = u16::from_ne_bytes([inner[20], inner[21]]);
    let q_dport = u16::from_ne_bytes([inner[22], inner[23]]);
    // The quoted packet went one way; the entry of the other direction is
    // keyed by its reverse, and translates that direction into the tuple
    // whose reverse the error's recipient sent.
    let key = Ct4Key {
        saddr_be: q_daddr,
        daddr_be: q_saddr,
        sport_be: q_dport,
        dport_be: q_sport,
        proto: inner_proto,
        _pad: [0; 3],
    };
    let Some(ct) = (unsafe { SY_CT4_V2.get(key).copied() }) else {
        return Ok(None);
    };
    if ct.flags & CT_FLAG_NAT == 0 || ct::now_s() > ct.expires_s {
        return Ok(None);
    }
    // New quoted tuple: the reverse of the entry's translated tuple.
    let (n_saddr, n_daddr, n_sport, n_dport) = (ct.daddr_be, ct.saddr_be, ct.dport_be, ct.sport_be);
    let icmp_csum = ip.l4_off + 2;
    let inner_csum = inner_off + IP_CSUM_OFF;
    // The quoted header's own checksum is updated with each address, so its
    // sum, and thus the ICMP checksum, changes only by the ports.
    for (old, new, off) in [
        (q_saddr, n_saddr, IP_SADDR_OFF),
        (q_daddr, n_daddr, IP_DADDR_OFF),
    ] {
        if old != new {
            ctx.skb
                .l3_csum_replace(inner_csum, u64::from(old), u64::from(new), 4)
                .map_err(|_| ())?;
            ctx.skb.store(inner_off + off, &new, 0).map_err(|_| ())?;
        }
    }
    for (old, new, off) in [(q_sport, n_sport, 0), (q_dport, n_dport, 2)] {
        if old != new {
            ctx.skb
                .l4_csum_replace(icmp_csum, u64::from(old), u64::from(new), 2)
                .map_err(|_| ())?;
            ctx.skb
                .store(inner_off + IPV4_HLEN + off, &new, 0)
                .map_err(|_| ())?;
        }
    }
    // The error goes to whoever sent the quoted packet, now its other side;
    // one sent by the quoted packet's destination itself comes from that
    // side's view of it. An error from a router on the way keeps its source.
    let outer_csum = ip.l3_off + IP_CSUM_OFF;
    if ip.daddr_be == q_saddr && n_saddr != q_saddr {
        ctx.skb
            .l3_csum_replace(outer_csum, u64::from(q_saddr), u64::from(n_saddr), 4)
            .map_err(|_| ())?;
        ctx.skb
            .store(ip.l3_off + IP_DADDR_OFF, &n_saddr, 0)
            .map_err(|_| ())?;
    }
    if ip.saddr_be == q_daddr && n_daddr != q_daddr {
        ctx.skb
            .l3_csum_replace(outer_csum, u64::from(q_daddr), u64::from(n_daddr), 4)
            .map_err(|_| ())?;
        ctx.skb
            .store(ip.l3_off + IP_SADDR_OFF, &n_daddr, 0)
            .map_err(|_| ())?;
    }
    Ok(Some(ct.ifindex))
}
