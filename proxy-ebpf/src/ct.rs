//! Conntrack of the per-packet paths (layout: `proxy_common::ct`): what a
//! packet of a tracked flow does to its entries, and tracking a new flow.
//!
//! TCP state follows the flags each direction sends, with lifetimes like
//! Cilium's and netfilter's (`DatapathConfig`): a SYN retransmission keeps
//! its backend; a SYN on a closed flow, or toward a backend that has left,
//! starts a new flow, and a SYN-ACK on one ends it; an expired entry
//! translates nothing. A new flow never takes over the wire tuple of a live
//! one: its source port is remapped.
use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{bpf_get_prandom_u32, bpf_ktime_get_coarse_ns},
};
use proxy_common::{
    ct::{
        CT_FLAG_NAT, CT_FLAG_NODE_PATH, CT_FLAG_REPLY, CT_FLAG_SNAT, CT_STATE_FIN_ORIG,
        CT_STATE_FIN_REPLY, CT_STATE_REPLIED, CT_STATE_RST, Ct4Key, Ct4Value,
    },
    proto,
    stats::STAT_NO_FREE_TUPLE,
};

use crate::{
    lb,
    maps::{self, SY_CT4_V2, config},
    packet::{Ports, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
};

/// Random source ports a new flow that needs a free one tries first.
const SNAT_RANDOM_TRIES: u32 = 8;
/// Ports tried after the last random one, in order, before giving up.
const SNAT_PROBES: u32 = 8;

/// `CLOCK_MONOTONIC` seconds, as userspace reads them for garbage collection.
#[inline(always)]
pub fn now_s() -> u32 {
    (unsafe { bpf_ktime_get_coarse_ns() } / 1_000_000_000) as u32
}

/// How long a flow in `state` lives after its last packet.
#[inline(always)]
pub fn lifetime(l4_proto: u8, state: u8) -> u32 {
    let c = config();
    if l4_proto == proto::TCP {
        let both_fin = CT_STATE_FIN_ORIG | CT_STATE_FIN_REPLY;
        if state & CT_STATE_RST != 0 || state & both_fin == both_fin {
            c.tcp_close_s
        } else if state & both_fin != 0 {
            c.tcp_close_wait_s
        } else if state & CT_STATE_REPLIED != 0 {
            c.tcp_established_s
        } else {
            c.tcp_syn_s
        }
    } else if state & CT_STATE_REPLIED != 0 {
        c.udp_stream_s
    } else {
        c.udp_s
    }
}

/// What to do with a packet whose tuple has an entry.
pub enum Hit {
    /// Translate it as the entry says.
    Use(Ct4Value),
    /// Let it pass untouched: it belongs to no flow the entry describes.
    Pass,
    /// The entry is dead for this packet: forget the flow, treat the packet
    /// as the start of a new one.
    Stale(Ct4Value),
}

/// How an entry's partner (the flow's other entry) stands.
enum Partner {
    /// It exists and names this entry back.
    Linked(*mut Ct4Value),
    /// It is gone (evicted from the LRU, or forgotten).
    Missing,
    /// Its key now belongs to another flow.
    Foreign,
}

#[inline(always)]
fn partner(key: &Ct4Key, e: &Ct4Value) -> Partner {
    match SY_CT4_V2.get_ptr_mut(&e.partner_key(key.proto)) {
        // SAFETY: a map value pointer, read at once.
        Some(p) if unsafe { (*p).partner_key(key.proto) } == *key => Partner::Linked(p),
        Some(_) => Partner::Foreign,
        None => Partner::Missing,
    }
}

/// Applies a packet to its entry: TCP flags move the flow's state (in both
/// entries), traffic refreshes the lifetime (at most one write a second).
///
/// At each such write the flow's links are checked too, since an LRU map
/// can evict one entry of a pair: an original-direction entry whose reply
/// entry is gone or taken over no longer owns its translated tuple, so the
/// flow starts over (and gets a free tuple); a reply entry whose original
/// entry names another reply is a leftover. A reply entry whose original
/// entry alone was evicted keeps translating (the original direction's next
/// packet adopts it again, see [`track`]). A UDP flow whose backend has
/// left its frontend starts over too, should the daemon's flush lag.
#[inline(always)]
pub fn on_packet(key: &Ct4Key, entry: *mut Ct4Value, ports: &Ports, has_l4: bool, now: u32) -> Hit {
    // SAFETY: a map value pointer, valid for this program run.
    let e = unsafe { *entry };
    if now > e.expires_s {
        return Hit::Stale(e);
    }
    let reply = e.flags & CT_FLAG_REPLY != 0;
    let mut state = e.state;
    if key.proto == proto::TCP && has_l4 {
        let f = ports.tcp_flags;
        if f & TCP_SYN != 0 && f & TCP_ACK == 0 {
            if e.tcp_closed() {
                return Hit::Stale(e);
            }
            // A SYN from the answering side of a live flow is not ours to
            // translate; a retransmitted SYN keeps its backend while that
            // backend is still a member of the frontend.
            if reply {
                return Hit::Pass;
            }
            if e.backend_id != 0 && lb::member_ranges(e.backend_id, e.frontend_id) == 0 {
                return Hit::Stale(e);
            }
        } else if f & TCP_SYN != 0 {
            // A SYN-ACK on a closed flow answers a new connection on the
            // closed flow's tuple: the old flow is over, and translating
            // the new one's later packets as it would break them.
            if e.tcp_closed() {
                forget(key, &e);
                return Hit::Pass;
            }
            if reply {
                state |= CT_STATE_REPLIED;
            }
        }
        if f & TCP_RST != 0 {
            state |= CT_STATE_RST;
        }
        if f & TCP_FIN != 0 {
            state |= if reply {
                CT_STATE_FIN_REPLY
            } else {
                CT_STATE_FIN_ORIG
            };
        }
    } else if key.proto == proto::UDP && reply {
        state |= CT_STATE_REPLIED;
    }
    let expires = now.wrapping_add(lifetime(key.proto, state));
    let changed = state != e.state;
    if !changed && expires <= e.expires_s {
        return Hit::Use(e);
    }
    match partner(key, &e) {
        Partner::Linked(p) => {
            // A one-way UDP stream keeps its reply entry alive too.
            if changed || key.proto == proto::UDP {
                set(p, state, expires);
            }
        }
        Partner::Foreign => return Hit::Stale(e),
        Partner::Missing if !reply => return Hit::Stale(e),
        Partner::Missing => {}
    }
    if !reply
        && key.proto == proto::UDP
        && e.backend_id != 0
        && lb::member_ranges(e.backend_id, e.frontend_id) == 0
    {
        return Hit::Stale(e);
    }
    set(entry, state, expires);
    Hit::Use(Ct4Value { state, ..e })
}

#[inline(always)]
fn set(entry: *mut Ct4Value, state: u8, expires_s: u32) {
    // SAFETY: map value pointers; racing writers only ever move a flow
    // forward, and a lost refresh costs at most an early expiry.
    unsafe {
        (*entry).state = state;
        (*entry).expires_s = expires_s;
    }
}

/// Forgets a flow: the entry at `key`, and its partner if the partner
/// still names it (a partner's key may belong to another flow by now).
#[inline(always)]
pub fn forget(key: &Ct4Key, value: &Ct4Value) {
    if let Partner::Linked(_) = partner(key, value) {
        let _ = SY_CT4_V2.remove(&value.partner_key(key.proto));
    }
    let _ = SY_CT4_V2.remove(key);
}

/// Tracks a new flow: `fwd` (keyed by `key`) holds the original direction's
/// translated tuple, `rev` the tuple replies are turned back into. The reply
/// entry is keyed by the reverse of `fwd`'s tuple; when that key belongs to
/// a live flow, or when `node_snat` asks for a port of the source-NAT range,
/// the source port is chosen from the configured range instead: first
/// [`SNAT_RANDOM_TRIES`] random ports, then the [`SNAT_PROBES`] ports after
/// the last of them (so a small or crowded range is still searched). The
/// reply entry goes in first: a reply can only exist once the original
/// packet has left. Returns the entry the packet must follow: `fwd`, or the
/// entry another CPU tracked the same flow with a moment earlier.
#[inline(always)]
pub fn track(
    key: &Ct4Key,
    fwd: &mut Ct4Value,
    rev: &mut Ct4Value,
    node_snat: bool,
    now: u32,
) -> Result<Ct4Value, ()> {
    let c = config();
    let span = u32::from(c.snat_port_max.saturating_sub(c.snat_port_min)) + 1;
    let mut offset = 0u32;
    for attempt in 0..SNAT_RANDOM_TRIES + SNAT_PROBES {
        if node_snat || attempt > 0 {
            offset = if attempt < SNAT_RANDOM_TRIES {
                (unsafe { bpf_get_prandom_u32() }) % span
            } else {
                (offset + 1) % span
            };
            fwd.sport_be = (c.snat_port_min + offset as u16).to_be();
            fwd.flags |= CT_FLAG_NAT | CT_FLAG_SNAT;
            rev.flags |= CT_FLAG_NAT;
        }
        let reply_key = fwd.partner_key(key.proto);
        if claim(&reply_key, rev, key, now) {
            if SY_CT4_V2.insert(key, &*fwd, u64::from(BPF_NOEXIST)).is_ok() {
                return Ok(*fwd);
            }
            // Another CPU tracked this flow first: follow its entry, and
            // take back our reply entry unless it is the same one.
            // SAFETY: copied out at once.
            let winner = unsafe { SY_CT4_V2.get(key).copied() };
            if winner.is_none_or(|w| w.partner_key(key.proto) != reply_key) {
                let _ = SY_CT4_V2.remove(&reply_key);
            }
            return winner.ok_or(());
        }
    }
    maps::count(STAT_NO_FREE_TUPLE);
    Err(())
}

/// Whether the flow of entry `e` (of L4 protocol `l4_proto`) is over: its
/// lifetime has passed, or it is a closed TCP flow. Its tuples are free.
#[inline(always)]
pub fn is_dead(e: &Ct4Value, l4_proto: u8, now: u32) -> bool {
    now > e.expires_s || (l4_proto == proto::TCP && e.tcp_closed())
}

/// For the first packet (a TCP SYN, a UDP datagram) of a flow from outside
/// the node that is no Service's, keyed `key`: whether its reply tuple is
/// the reply key of a live flow translated on a node-facing hook, so the new flow must be tracked
/// with a remapped source port (as netfilter's NAT does for a tuple in
/// use). A dead flow there (closed, expired) is forgotten instead, so it
/// cannot translate the new flow's replies. Another node's socket-path
/// connection to a pod here, from the port its earlier NodePort connection
/// to this node used, is such a flow. Only first packets pay the lookup.
#[inline(always)]
pub fn reply_tuple_held(key: &Ct4Key, now: u32) -> bool {
    let reply_key = key.reversed();
    let Some(held) = SY_CT4_V2.get_ptr(&reply_key) else {
        return false;
    };
    // SAFETY: a map value pointer, read at once.
    let held = unsafe { *held };
    if !is_dead(&held, key.proto, now) {
        // Only a flow that came from outside too: a local pod's flow whose
        // tuple a node-facing hook sees again (a bridge holding the pods'
        // gateway) is that very flow, already translated.
        return held.flags & CT_FLAG_NODE_PATH != 0;
    }
    forget(&reply_key, &held);
    false
}

/// Inserts the reply entry `value` at `key` for the flow whose original
/// entry is keyed `fwd_key`, unless another live flow holds the key. A dead
/// entry (expired, or a closed TCP flow) is forgotten first; an entry of
/// this very flow, left when its original entry was evicted, is adopted
/// (replaced).
#[inline(always)]
fn claim(key: &Ct4Key, value: &Ct4Value, fwd_key: &Ct4Key, now: u32) -> bool {
    if SY_CT4_V2.insert(key, value, u64::from(BPF_NOEXIST)).is_ok() {
        return true;
    }
    // SAFETY: copied out at once.
    if let Some(old) = unsafe { SY_CT4_V2.get(key).copied() } {
        if old.partner_key(key.proto) == *fwd_key {
            return SY_CT4_V2.insert(key, value, 0).is_ok();
        }
        if !is_dead(&old, key.proto, now) {
            return false;
        }
        forget(key, &old);
    }
    SY_CT4_V2.insert(key, value, u64::from(BPF_NOEXIST)).is_ok()
}
