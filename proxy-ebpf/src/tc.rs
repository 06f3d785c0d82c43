//! The per-packet paths. Three hooks share one pipeline:
//!
//! - pod-facing ingress ([`Hook::Pod`]): traffic leaving local pods. Service
//!   traffic the socket hooks did not translate (pods outside the node's
//!   cgroup) is DNATed with the cluster's endpoints; a pod reaching itself
//!   is also source-NATed to the node (hairpin); replies of local backends
//!   are translated back.
//! - node-facing ingress ([`Hook::NodeIn`]): traffic from outside the node.
//!   NodePorts, externalIPs and LoadBalancer IPs (and ClusterIPs routed to
//!   the node) are DNATed with `externalTrafficPolicy` and
//!   `loadBalancerSourceRanges` applied, and source-NATed to the node when
//!   the backend is on another node; replies from other nodes are
//!   translated back.
//! - egress of both kinds ([`Hook::Egress`]): replies of the node's own
//!   processes (host-network backends) to flows translated on the way in,
//!   from pods or from outside. Forwarded packets (`ingress_ifindex` set)
//!   pass untouched: their ingress hook handled them.
//!
//! Every Service flow, and every other TCP and UDP flow of a local pod, is
//! tracked (`ct`), so the first packet of a flow decides its translation
//! and each later packet — each fragment too — costs one conntrack lookup.
use aya_ebpf::{
    EbpfContext as _,
    bindings::{
        BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS, TC_ACT_OK, TC_ACT_SHOT,
        bpf_fib_lookup as FibParams,
    },
    helpers::{bpf_fib_lookup, bpf_redirect_neigh},
    programs::TcContext,
};
use proxy_common::{
    ct::{
        CT_FLAG_NAT, CT_FLAG_NODE_PATH, CT_FLAG_REPLY, CT_FLAG_SNAT, CT_STATE_OPENED,
        CT_STATE_REPLIED, Ct4Key, Ct4Value,
    },
    lb::{BACKEND_FLAG_LOCAL, SVC_FLAG_DROP_EMPTY, SVC_FLAG_EXT_LOCAL, SVC_FLAG_SOURCE_RANGES},
    proto,
    stats::{
        STAT_NO_ALLOWED_ENDPOINTS, STAT_NO_ENDPOINTS, STAT_NO_ROUTE_TO_BACKEND,
        STAT_REWRITE_FAILED, STAT_SLOT_WITHOUT_BACKEND, STAT_SOURCE_RANGE_DENIED,
    },
};

use crate::{
    ct::{self, Hit},
    frag, icmp,
    lb::{self, Client, Frontend},
    maps::{self, SY_CT4_V2},
    nat::{self, Tuple},
    packet::{self, Fragment, Ipv4, Ports},
    reject,
};

pub const PASS: i32 = TC_ACT_OK;
pub const DROP: i32 = TC_ACT_SHOT;
const AF_INET: u8 = 2;

/// Which hook a program serves.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    Pod,
    NodeIn,
    Egress,
}

#[inline(always)]
pub fn run(ctx: &TcContext, hook: Hook) -> i32 {
    match try_run(ctx, hook) {
        Ok(action) | Err(action) => action,
    }
}

#[inline(always)]
fn try_run(ctx: &TcContext, hook: Hook) -> Result<i32, i32> {
    // Egress is for what the node itself sends. A forwarded packet was
    // translated, if at all, where it entered; its tuple, translated, can be
    // the reply key of another flow (a socket-path connection on the same
    // wire tuple as a per-packet one, whose own source port was remapped),
    // and looking it up again would hand it to that flow.
    if hook == Hook::Egress && unsafe { (*ctx.skb.skb).ingress_ifindex } != 0 {
        return Ok(PASS);
    }
    let Some(ip) = packet::parse_ipv4(ctx) else {
        return Ok(PASS);
    };
    match ip.proto {
        proto::TCP | proto::UDP => {}
        proto::ICMP => return Ok(icmp::translate_error(ctx, &ip, hook != Hook::Egress)),
        _ => return Ok(PASS),
    }
    let ports = match ip.fragment {
        Fragment::Later => frag::ports_of(&ip).ok_or(PASS)?,
        _ => packet::parse_ports(ctx, ip.l4_off, ip.proto).ok_or(PASS)?,
    };
    if ip.fragment == Fragment::First {
        frag::remember(&ip, &ports);
    }
    let key = Ct4Key {
        saddr_be: ip.saddr_be,
        daddr_be: ip.daddr_be,
        sport_be: ports.sport_be,
        dport_be: ports.dport_be,
        proto: ip.proto,
        _pad: [0; 3],
    };
    let now = ct::now_s();
    if let Some(entry) = SY_CT4_V2.get_ptr_mut(&key) {
        let has_l4 = ip.fragment != Fragment::Later;
        match ct::on_packet(&key, entry, &ports, has_l4, now) {
            Hit::Use(v) => return apply(ctx, &ip, &key, &v, hook != Hook::Egress),
            Hit::Pass => return Ok(PASS),
            Hit::Stale(v) => ct::forget(&key, &v),
        }
    }
    // Egress only translates flows tracked on the way in; a later fragment
    // without its flow has nothing to go by.
    if hook == Hook::Egress || ip.fragment == Fragment::Later {
        return Ok(PASS);
    }
    if let Some(fe) = lb::lookup_frontend(ip.daddr_be, ports.dport_be, ip.proto) {
        return service_flow(ctx, &ip, &ports, &key, &fe, hook == Hook::NodeIn, now);
    }
    // From outside, a flow that is no Service's is left alone unless its
    // reply tuple is held by a translated flow (`ct::reply_tuple_held`).
    if hook == Hook::NodeIn
        && !((ip.proto != proto::TCP || ports.syn_only()) && ct::reply_tuple_held(&key, now))
    {
        return Ok(PASS);
    }
    untranslated_flow(ctx, &ip, &ports, &key, now)
}

/// Translates a packet as its conntrack entry says, and redirects it when
/// its new source is an address of the node (the input path would drop it
/// as martian).
#[inline(always)]
fn apply(
    ctx: &TcContext,
    ip: &Ipv4,
    key: &Ct4Key,
    v: &Ct4Value,
    may_redirect: bool,
) -> Result<i32, i32> {
    if v.flags & CT_FLAG_NAT != 0 {
        let from = Tuple {
            saddr_be: key.saddr_be,
            daddr_be: key.daddr_be,
            sport_be: key.sport_be,
            dport_be: key.dport_be,
        };
        let to = Tuple {
            saddr_be: v.saddr_be,
            daddr_be: v.daddr_be,
            sport_be: v.sport_be,
            dport_be: v.dport_be,
        };
        nat::rewrite(ctx, ip, &from, &to).map_err(|()| {
            maps::count(STAT_REWRITE_FAILED);
            DROP
        })?;
    }
    if may_redirect && v.ifindex != 0 {
        return Ok(unsafe { bpf_redirect_neigh(v.ifindex, core::ptr::null_mut(), 0, 0) } as i32);
    }
    Ok(PASS)
}

/// The first packet of a flow to a frontend.
#[inline(always)]
fn service_flow(
    ctx: &TcContext,
    ip: &Ipv4,
    ports: &Ports,
    key: &Ct4Key,
    fe: &Frontend,
    node_path: bool,
    now: u32,
) -> Result<i32, i32> {
    // kube-proxy filters LoadBalancer IPs by source for every client, pods
    // included (the socket path leaves such frontends to this path).
    if fe.has(SVC_FLAG_SOURCE_RANGES) && !lb::source_allowed(fe, ip.saddr_be) {
        maps::count(STAT_SOURCE_RANGE_DENIED);
        return Err(DROP);
    }
    let external_local = node_path && fe.has(SVC_FLAG_EXT_LOCAL);
    let slots = if external_local {
        fe.local_slots()
    } else {
        fe.cluster_slots()
    };
    if slots.count == 0 {
        // kube-proxy: REJECT when the Service has no endpoints at all, DROP
        // when it has some but the traffic policy allows none of them here.
        let drop = if external_local {
            fe.master.count > 0
        } else {
            fe.has(SVC_FLAG_DROP_EMPTY)
        };
        return Ok(if drop {
            maps::count(STAT_NO_ALLOWED_ENDPOINTS);
            DROP
        } else {
            maps::count(STAT_NO_ENDPOINTS);
            reject::port_unreachable(ctx, ip)
        });
    }
    let client = Client {
        id: u64::from(ip.saddr_be),
        flags: 0,
    };
    // No backend behind a slot means the maps are mid-update by a crashed
    // writer; dropping lets the client retry rather than leak the VIP.
    let (backend_id, be) = lb::select_backend(fe, slots, client).ok_or_else(|| {
        maps::count(STAT_SLOT_WITHOUT_BACKEND);
        DROP
    })?;
    let ingress = unsafe { (*ctx.skb.skb).ifindex };
    let back = maps::redirect_target(ingress);
    let node_addr = maps::node_addr_be();
    // A pod reaching itself must see the node as the peer (kube-proxy's
    // hairpin masquerade); traffic from outside to a backend on another
    // node must come back through this node to be translated back.
    let hairpin = !node_path && be.addr_be == ip.saddr_be;
    let remote = node_path && be.flags & BACKEND_FLAG_LOCAL == 0;
    let snat = node_addr != 0 && (hairpin || remote);
    let path = if node_path { CT_FLAG_NODE_PATH } else { 0 };
    let mut state = CT_STATE_OPENED;
    if ip.proto == proto::TCP && !ports.syn_only() {
        // Picked up mid-stream (e.g. tracked by an older version): as
        // netfilter does, take it as established.
        state |= CT_STATE_REPLIED;
    }
    let expires_s = now.wrapping_add(ct::lifetime(ip.proto, state));
    let mut fwd = Ct4Value {
        saddr_be: if snat { node_addr } else { ip.saddr_be },
        daddr_be: be.addr_be,
        sport_be: ports.sport_be,
        dport_be: be.port_be,
        backend_id,
        frontend_id: fe.master.frontend_id,
        expires_s,
        ifindex: 0,
        flags: CT_FLAG_NAT | path,
        state,
        _pad: [0; 2],
    };
    if snat {
        fwd.flags |= CT_FLAG_SNAT;
        fwd.ifindex = if hairpin {
            back
        } else {
            egress_ifindex(ctx, node_addr, be.addr_be, ingress).ok_or_else(|| {
                maps::count(STAT_NO_ROUTE_TO_BACKEND);
                DROP
            })?
        };
    }
    // Replies go straight back out where the request came in: their new
    // source (a frontend) may be an address of the node, and is none the
    // kernel's reverse-path filter would accept on the backend's side. A
    // pod interface that is a bridge port is replaced by its bridge.
    let mut rev = Ct4Value {
        saddr_be: ip.daddr_be,
        daddr_be: ip.saddr_be,
        sport_be: ports.dport_be,
        dport_be: ports.sport_be,
        ifindex: back,
        flags: CT_FLAG_REPLY | CT_FLAG_NAT | path,
        ..fwd
    };
    let fwd = ct::track(key, &mut fwd, &mut rev, snat, now).map_err(|()| DROP)?;
    apply(ctx, ip, key, &fwd, true)
}

/// The first packet of a flow from a local pod that is no Service's:
/// tracked untranslated, unless its reply tuple belongs to a live
/// translated flow, in which case its source port is remapped. Traffic from
/// outside the node that is no Service's is tracked only on such a clash
/// (`ct::reply_tuple_held`): tracking it all would let anyone on the network fill
/// the conntrack map, and translated flows only ever need tuples that lead
/// to this node's pods or the node.
#[inline(always)]
fn untranslated_flow(
    ctx: &TcContext,
    ip: &Ipv4,
    ports: &Ports,
    key: &Ct4Key,
    now: u32,
) -> Result<i32, i32> {
    // A TCP flow starts with a SYN; anything else is mid-stream or an answer.
    if ip.proto == proto::TCP && !ports.syn_only() {
        return Ok(PASS);
    }
    let mut fwd = Ct4Value {
        saddr_be: key.saddr_be,
        daddr_be: key.daddr_be,
        sport_be: key.sport_be,
        dport_be: key.dport_be,
        backend_id: 0,
        frontend_id: 0,
        expires_s: now.wrapping_add(ct::lifetime(ip.proto, CT_STATE_OPENED)),
        ifindex: 0,
        flags: 0,
        state: CT_STATE_OPENED,
        _pad: [0; 2],
    };
    let mut rev = Ct4Value {
        saddr_be: key.daddr_be,
        daddr_be: key.saddr_be,
        sport_be: key.dport_be,
        dport_be: key.sport_be,
        flags: CT_FLAG_REPLY,
        ..fwd
    };
    let fwd = ct::track(key, &mut fwd, &mut rev, false, now).map_err(|()| DROP)?;
    apply(ctx, ip, key, &fwd, false)
}

/// The interface the kernel would forward a packet from `src` to `dst` out
/// of (a node forwards for its pods, so forwarding is on).
#[inline(always)]
fn egress_ifindex(ctx: &TcContext, src_be: u32, dst_be: u32, ingress: u32) -> Option<u32> {
    // SAFETY: a plain C struct; all-zero is a valid start.
    let mut p: FibParams = unsafe { core::mem::zeroed() };
    p.family = AF_INET;
    p.ifindex = ingress;
    p.__bindgen_anon_3.ipv4_src = src_be;
    p.__bindgen_anon_4.ipv4_dst = dst_be;
    let r = unsafe { bpf_fib_lookup(ctx.as_ptr(), &mut p, size_of::<FibParams>() as i32, 0) };
    (r == i64::from(BPF_FIB_LKUP_RET_SUCCESS) || r == i64::from(BPF_FIB_LKUP_RET_NO_NEIGH))
        .then_some(p.ifindex)
}
