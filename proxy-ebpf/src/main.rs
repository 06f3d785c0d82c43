//! Switchyard's eBPF object: Service load balancing at the socket layer
//! (cgroup sock_addr hooks) and per packet (TC) for what the socket layer
//! did not see. Every entry point is a thin wrapper; the logic lives in the
//! modules below. See docs/architecture.md for the data paths.
#![no_std]
#![no_main]

mod csum;
mod ct;
mod frag;
mod icmp;
mod lb;
mod maps;
mod nat;
mod packet;
mod reject;
mod sock;
mod tc;

use aya_ebpf::{
    macros::{cgroup_sock_addr, classifier},
    programs::{SockAddrContext, TcContext},
};

/// `connect()` on TCP and UDP sockets: rewrite a frontend to a backend.
#[cgroup_sock_addr(connect4)]
pub fn sy_connect4(ctx: SockAddrContext) -> i32 {
    sock::connect4(&ctx)
}

/// `sendmsg()` on unconnected UDP sockets: rewrite a frontend to a backend.
#[cgroup_sock_addr(sendmsg4)]
pub fn sy_sendmsg4(ctx: SockAddrContext) -> i32 {
    sock::sendmsg4(&ctx)
}

/// `recvmsg()` on UDP sockets: show the frontend as the datagram's source.
#[cgroup_sock_addr(recvmsg4)]
pub fn sy_recvmsg4(ctx: SockAddrContext) -> i32 {
    sock::reverse4(&ctx)
}

/// `getpeername()`: show the frontend as the peer.
#[cgroup_sock_addr(getpeername4)]
pub fn sy_getpeername4(ctx: SockAddrContext) -> i32 {
    sock::reverse4(&ctx)
}

/// Ingress of pod-facing interfaces: traffic leaving local pods.
#[classifier]
pub fn sy_tc_ingress(ctx: TcContext) -> i32 {
    tc::run(&ctx, tc::Hook::Pod)
}

/// Ingress of node-facing interfaces: traffic from outside the node.
#[classifier]
pub fn sy_tc_node_in(ctx: TcContext) -> i32 {
    tc::run(&ctx, tc::Hook::NodeIn)
}

/// Egress of pod- and node-facing interfaces: replies of the node's own
/// processes (host-network backends).
#[classifier]
pub fn sy_tc_egress(ctx: TcContext) -> i32 {
    tc::run(&ctx, tc::Hook::Egress)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
