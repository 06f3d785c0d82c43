//! ICMP errors about translated flows, e.g. a backend's port-unreachable for
//! a UDP datagram it got through a frontend: the client must see an error
//! about the frontend it talked to, or its socket never learns of it.
use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    programs::TcContext,
};
use proxy_common::{
    ct::{CT_DIR_REPLY, Ct4Key},
    proto,
};

use crate::{
    maps::SY_CT4,
    packet::{IP_CSUM_OFF, IP_DADDR_OFF, IP_SADDR_OFF, Ipv4, ptr_at},
};

const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_TIME_EXCEEDED: u8 = 11;
const ICMP_HLEN: usize = 8;

/// Rewrites an ICMP error whose quoted packet is a backend's view of a
/// translated flow. Anything else passes unchanged.
pub fn translate_error(ctx: &TcContext, ip: &Ipv4) -> i32 {
    match try_translate(ctx, ip) {
        Ok(()) => TC_ACT_OK,
        Err(()) => TC_ACT_SHOT,
    }
}

#[inline(always)]
fn try_translate(ctx: &TcContext, ip: &Ipv4) -> Result<(), ()> {
    let Some(hdr) = ptr_at::<[u8; ICMP_HLEN]>(ctx, ip.l4_off) else {
        return Ok(());
    };
    let icmp_type = unsafe { (*hdr)[0] };
    if icmp_type != ICMP_DEST_UNREACH && icmp_type != ICMP_TIME_EXCEEDED {
        return Ok(());
    }
    let inner_off = ip.l4_off + ICMP_HLEN;
    // Quoted header without options, followed by at least the ports.
    let Some(inner) = ptr_at::<[u8; 24]>(ctx, inner_off) else {
        return Ok(());
    };
    let inner = unsafe { &*inner };
    let inner_proto = inner[9];
    if inner[0] != 0x45 || (inner_proto != proto::TCP && inner_proto != proto::UDP) {
        return Ok(());
    }
    let inner_saddr = u32::from_ne_bytes([inner[12], inner[13], inner[14], inner[15]]);
    let inner_daddr = u32::from_ne_bytes([inner[16], inner[17], inner[18], inner[19]]);
    let inner_sport = u16::from_ne_bytes([inner[20], inner[21]]);
    let inner_dport = u16::from_ne_bytes([inner[22], inner[23]]);
    // The quoted packet went client -> backend; its reply entry is keyed by
    // the backend -> client tuple.
    let key = Ct4Key {
        saddr_be: inner_daddr,
        daddr_be: inner_saddr,
        sport_be: inner_dport,
        dport_be: inner_sport,
        proto: inner_proto,
        dir: CT_DIR_REPLY,
        _pad: [0; 2],
    };
    let Some(ct) = (unsafe { SY_CT4.get(key).copied() }) else {
        return Ok(());
    };
    let (vip, vport) = (ct.nat_addr_be, ct.nat_port_be);
    let icmp_csum = ip.l4_off + 2;
    // The quoted header's own checksum is updated with it, so its sum, and
    // thus the ICMP checksum, changes only by the port.
    let (old_a, new_a) = (u64::from(inner_daddr), u64::from(vip));
    ctx.skb
        .l3_csum_replace(inner_off + IP_CSUM_OFF, old_a, new_a, 4)
        .map_err(|_| ())?;
    ctx.skb
        .store(inner_off + IP_DADDR_OFF, &vip, 0)
        .map_err(|_| ())?;
    ctx.skb
        .l4_csum_replace(icmp_csum, u64::from(inner_dport), u64::from(vport), 2)
        .map_err(|_| ())?;
    ctx.skb
        .store(inner_off + 20 + 2, &vport, 0)
        .map_err(|_| ())?;
    // An error sent by the backend itself comes from the frontend, as the
    // client knows it; one from a router on the way keeps its source.
    if ip.saddr_be == inner_daddr {
        ctx.skb
            .l3_csum_replace(ip.l3_off + IP_CSUM_OFF, old_a, new_a, 4)
            .map_err(|_| ())?;
        ctx.skb
            .store(ip.l3_off + IP_SADDR_OFF, &vip, 0)
            .map_err(|_| ())?;
    }
    Ok(())
}
