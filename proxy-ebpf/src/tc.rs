//! The per-packet path, on the ingress of pod-facing interfaces: Service
//! traffic that the socket hooks did not translate (pods outside the node's
//! cgroup, hooks off) is DNATed here, and its replies reverse-NATed.
//!
//! Each flow has two conntrack entries (see `proxy_common::ct`): the forward
//! entry keeps every packet of the flow on the backend chosen for its first
//! packet; the reply entry restores the frontend as the replies' source.
use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    helpers::bpf_ktime_get_ns,
    programs::TcContext,
};
use proxy_common::{
    ct::{CT_DIR_FORWARD, CT_DIR_REPLY, Ct4Key, Ct4Value},
    proto,
};

use crate::{
    icmp,
    lb::{self, Client},
    maps::SY_CT4,
    nat::{self, Rewrite, Side},
    packet::{self, Ipv4, Ports},
    reject,
};

const PASS: i32 = TC_ACT_OK;
const DROP: i32 = TC_ACT_SHOT;

pub fn ingress(ctx: &TcContext) -> i32 {
    match try_ingress(ctx) {
        Ok(action) | Err(action) => action,
    }
}

fn try_ingress(ctx: &TcContext) -> Result<i32, i32> {
    let Some(ip) = packet::parse_ipv4(ctx) else {
        return Ok(PASS);
    };
    match ip.proto {
        proto::TCP | proto::UDP => {}
        proto::ICMP => return Ok(icmp::translate_error(ctx, &ip)),
        _ => return Ok(PASS),
    }
    let Some(ports) = packet::parse_ports(ctx, ip.l4_off, ip.proto) else {
        return Ok(PASS);
    };
    let forward = Ct4Key {
        saddr_be: ip.saddr_be,
        daddr_be: ip.daddr_be,
        sport_be: ports.sport_be,
        dport_be: ports.dport_be,
        proto: ip.proto,
        dir: CT_DIR_FORWARD,
        _pad: [0; 2],
    };
    // A new SYN on a reused tuple picks a backend afresh, so a stale entry
    // cannot pin a new connection to a backend that has gone.
    if !ports.tcp_syn_only
        && let Some(ct) = unsafe { SY_CT4.get(forward).copied() }
    {
        return translate(ctx, &ip, &ports, Side::Destination, &ct);
    }
    let reply = Ct4Key {
        dir: CT_DIR_REPLY,
        ..forward
    };
    if let Some(ct) = unsafe { SY_CT4.get(reply).copied() } {
        return translate(ctx, &ip, &ports, Side::Source, &ct);
    }
    new_flow(ctx, &ip, &ports, &forward)
}

fn new_flow(ctx: &TcContext, ip: &Ipv4, ports: &Ports, forward: &Ct4Key) -> Result<i32, i32> {
    let Some(fe) = lb::lookup_frontend(ip.daddr_be, ports.dport_be, ip.proto) else {
        return Ok(PASS);
    };
    if fe.master.count == 0 {
        return Ok(reject::port_unreachable(ctx, ip));
    }
    let client = Client {
        id: u64::from(ip.saddr_be),
        flags: 0,
    };
    // No backend behind a slot means the maps are mid-update by a crashed
    // writer; dropping lets the client retry rather than leak the VIP.
    let (backend_id, be) = lb::select_backend(&fe, client).ok_or(DROP)?;
    let created_ns = unsafe { bpf_ktime_get_ns() };
    let reply_key = Ct4Key {
        saddr_be: be.addr_be,
        daddr_be: ip.saddr_be,
        sport_be: be.port_be,
        dport_be: ports.sport_be,
        proto: ip.proto,
        dir: CT_DIR_REPLY,
        _pad: [0; 2],
    };
    let reply_val = Ct4Value {
        nat_addr_be: ip.daddr_be,
        nat_port_be: ports.dport_be,
        _pad: 0,
        backend_id,
        rev_nat_id: fe.master.rev_nat_id,
        created_ns,
    };
    let forward_val = Ct4Value {
        nat_addr_be: be.addr_be,
        nat_port_be: be.port_be,
        ..reply_val
    };
    // Reply entry first: a reply can only exist once the forward packet left.
    SY_CT4.insert(reply_key, reply_val, 0).map_err(|_| DROP)?;
    SY_CT4.insert(forward, forward_val, 0).map_err(|_| DROP)?;
    translate(ctx, ip, ports, Side::Destination, &forward_val)
}

#[inline(always)]
fn translate(
    ctx: &TcContext,
    ip: &Ipv4,
    ports: &Ports,
    side: Side,
    ct: &Ct4Value,
) -> Result<i32, i32> {
    let (old_addr_be, old_port_be) = match side {
        Side::Source => (ip.saddr_be, ports.sport_be),
        Side::Destination => (ip.daddr_be, ports.dport_be),
    };
    let rw = Rewrite {
        side,
        old_addr_be,
        new_addr_be: ct.nat_addr_be,
        old_port_be,
        new_port_be: ct.nat_port_be,
    };
    nat::rewrite(ctx, ip.l3_off, ip.l4_off, ip.proto, &rw).map_err(|()| DROP)?;
    Ok(PASS)
}
