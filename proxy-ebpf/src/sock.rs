//! Socket-level load balancing (cgroup v2 sock_addr hooks): the destination
//! of `connect()`/`sendmsg()` is rewritten once, at syscall time, so no
//! packet of the flow needs NAT or conntrack.
use aya_ebpf::{
    EbpfContext as _,
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie, bpf_set_retval},
    programs::SockAddrContext,
};
use proxy_common::{
    lb::{
        AFF_CLIENT_NETNS, Lb4Backend, MEMBER_CLUSTER, SVC_FLAG_DROP_EMPTY, SVC_FLAG_SOURCE_RANGES,
    },
    proto,
    sock::{Sock4FwdKey, Sock4RevNatKey, Sock4RevNatValue},
};

use crate::{
    lb::{self, Client, Frontend},
    maps::{SY_SK4_FWD, SY_SK4_RNAT},
};

/// sock_addr verdicts.
const ALLOW: i32 = 1;
const REJECT: i32 = 0;
const ECONNREFUSED: i32 = 111;

pub fn connect4(ctx: &SockAddrContext) -> i32 {
    translate(ctx, false)
}

pub fn sendmsg4(ctx: &SockAddrContext) -> i32 {
    translate(ctx, true)
}

#[inline(always)]
fn translate(ctx: &SockAddrContext, unconnected: bool) -> i32 {
    // SAFETY: the kernel hands us a valid `bpf_sock_addr` for this run.
    let sa = unsafe { &mut *ctx.sock_addr };
    let proto = sa.protocol as u8;
    if proto != proto::TCP && proto != proto::UDP {
        return ALLOW;
    }
    let (vip_be, vport_be) = (sa.user_ip4, sa.user_port as u16);
    let Some(fe) = lb::lookup_frontend(vip_be, vport_be, proto) else {
        return ALLOW;
    };
    // Two verdicts need the packet's source address, which a socket does not
    // have yet: `loadBalancerSourceRanges`, and kube-proxy's silent DROP for
    // a policy that leaves no endpoint here. The per-packet path decides.
    if fe.has(SVC_FLAG_SOURCE_RANGES) || (fe.master.count == 0 && fe.has(SVC_FLAG_DROP_EMPTY)) {
        return ALLOW;
    }
    if fe.master.count == 0 {
        return refuse();
    }
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let backend = if unconnected {
        sticky_backend(&fe, ctx, cookie, proto)
    } else {
        choose(&fe, ctx)
    };
    let Some((_, be)) = backend else {
        return refuse();
    };
    sa.user_ip4 = be.addr_be;
    sa.user_port = u32::from(be.port_be);
    remember_frontend(cookie, &be, &fe);
    ALLOW
}

/// Connection refused, as kube-proxy's REJECT makes it: the syscall fails
/// with ECONNREFUSED at once instead of timing out.
#[inline(always)]
fn refuse() -> i32 {
    // Since 5.18 a cgroup program may choose the errno of a rejected call.
    unsafe { bpf_set_retval(-ECONNREFUSED) };
    REJECT
}

#[inline(always)]
fn choose(fe: &Frontend, ctx: &SockAddrContext) -> Option<(u32, Lb4Backend)> {
    // The socket path has no source address yet; the network namespace
    // stands for the client (one pod = one netns = one pod IP).
    let client = Client {
        id: unsafe { bpf_get_netns_cookie(ctx.as_ptr()) },
        flags: AFF_CLIENT_NETNS,
    };
    lb::select_backend(fe, fe.cluster_slots(), client)
}

/// Unconnected UDP: keep one socket's datagrams to a frontend on one backend
/// while that backend stays, as conntrack does for a UDP flow.
#[inline(always)]
fn sticky_backend(
    fe: &Frontend,
    ctx: &SockAddrContext,
    cookie: u64,
    proto: u8,
) -> Option<(u32, Lb4Backend)> {
    let key = Sock4FwdKey {
        cookie,
        addr_be: fe.key.addr_be,
        port_be: fe.key.port_be,
        proto,
        _pad: 0,
    };
    if let Some(id) = unsafe { SY_SK4_FWD.get(key).copied() }
        && lb::member_ranges(id, fe.master.frontend_id) & MEMBER_CLUSTER != 0
        && let Some(be) = lb::backend(id)
    {
        return Some((id, be));
    }
    let (id, be) = choose(fe, ctx)?;
    let _ = SY_SK4_FWD.insert(key, id, 0);
    Some((id, be))
}

#[inline(always)]
fn remember_frontend(cookie: u64, be: &Lb4Backend, fe: &Frontend) {
    let key = Sock4RevNatKey {
        cookie,
        addr_be: be.addr_be,
        port_be: be.port_be,
        _pad: 0,
    };
    let value = Sock4RevNatValue {
        addr_be: fe.key.addr_be,
        port_be: fe.key.port_be,
        _pad: 0,
        frontend_id: fe.master.frontend_id,
    };
    // LRU: a full map evicts the oldest socket; only its reverse view is lost.
    let _ = SY_SK4_RNAT.insert(key, value, 0);
}

/// `recvmsg`/`getpeername`: a backend address this socket reached through a
/// frontend is shown to the application as that frontend.
pub fn reverse4(ctx: &SockAddrContext) -> i32 {
    // SAFETY: as in `translate`.
    let sa = unsafe { &mut *ctx.sock_addr };
    let key = Sock4RevNatKey {
        cookie: unsafe { bpf_get_socket_cookie(ctx.as_ptr()) },
        addr_be: sa.user_ip4,
        port_be: sa.user_port as u16,
        _pad: 0,
    };
    if let Some(fe) = unsafe { SY_SK4_RNAT.get(key) } {
        sa.user_ip4 = fe.addr_be;
        sa.user_port = u32::from(fe.port_be);
    }
    ALLOW
}
