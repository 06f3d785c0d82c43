//! Reject for a frontend with no backends, as kube-proxy's `-j REJECT`
//! (icmp-port-unreachable) does: the packet is turned into an ICMP
//! destination-unreachable/port-unreachable and sent back where it came from.
//! A TCP client sees ECONNREFUSED at once, a UDP client on its next call.
use aya_ebpf::{
    bindings::TC_ACT_SHOT,
    helpers::{bpf_redirect, bpf_skb_change_tail},
    programs::TcContext,
};

use crate::{
    csum::{Words, checksum},
    packet::{ETH_HLEN, Ipv4, ptr_at},
};

const IPV4_HLEN: usize = 20;
const ICMP_HLEN: usize = 8;
/// RFC 792: the original IP header plus the first 8 bytes of its payload.
const QUOTE_LEN: usize = IPV4_HLEN + 8;
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_PORT_UNREACH: u8 = 3;

pub fn port_unreachable(ctx: &TcContext, ip: &Ipv4) -> i32 {
    match build(ctx, ip) {
        Ok(()) => {
            let ifindex = unsafe { (*ctx.skb.skb).ifindex };
            unsafe { bpf_redirect(ifindex, 0) as i32 }
        }
        Err(()) => TC_ACT_SHOT,
    }
}

#[inline(always)]
fn build(ctx: &TcContext, ip: &Ipv4) -> Result<(), ()> {
    // Packets with IP options are dropped instead: the quote would need a
    // variable length, and such packets to a Service IP do not occur in practice.
    if ip.l4_off != ip.l3_off + IPV4_HLEN {
        return Err(());
    }
    let eth: [u8; ETH_HLEN] = unsafe { *ptr_at::<[u8; ETH_HLEN]>(ctx, 0).ok_or(())? };
    let quote: [u8; QUOTE_LEN] = unsafe { *ptr_at::<[u8; QUOTE_LEN]>(ctx, ip.l3_off).ok_or(())? };

    let mut mac = [0u8; ETH_HLEN];
    mac[..6].copy_from_slice(&eth[6..12]);
    mac[6..12].copy_from_slice(&eth[..6]);
    mac[12..].copy_from_slice(&eth[12..]);

    let total_len = (IPV4_HLEN + ICMP_HLEN + QUOTE_LEN) as u16;
    let mut iph = Words([0u8; IPV4_HLEN]);
    iph.0[0] = 0x45;
    iph.0[2..4].copy_from_slice(&total_len.to_be_bytes());
    iph.0[8] = 64; // TTL
    iph.0[9] = proxy_common::proto::ICMP;
    iph.0[12..16].copy_from_slice(&ip.daddr_be.to_ne_bytes());
    iph.0[16..20].copy_from_slice(&ip.saddr_be.to_ne_bytes());
    let c = checksum(&mut iph);
    iph.0[10..12].copy_from_slice(&c);

    let mut icmp = Words([0u8; ICMP_HLEN + QUOTE_LEN]);
    icmp.0[0] = ICMP_DEST_UNREACH;
    icmp.0[1] = ICMP_PORT_UNREACH;
    icmp.0[ICMP_HLEN..].copy_from_slice(&quote);
    let c = checksum(&mut icmp);
    icmp.0[2..4].copy_from_slice(&c);

    let new_len = (ETH_HLEN + usize::from(total_len)) as u32;
    if unsafe { bpf_skb_change_tail(ctx.skb.skb, new_len, 0) } != 0 {
        return Err(());
    }
    ctx.skb.store(0, &mac, 0).map_err(|_| ())?;
    ctx.skb.store(ETH_HLEN, &iph.0, 0).map_err(|_| ())?;
    ctx.skb
        .store(ETH_HLEN + IPV4_HLEN, &icmp.0, 0)
        .map_err(|_| ())?;
    Ok(())
}
