//! Fragmented datagrams: only the first fragment carries the ports, so its
//! ports are remembered by (source, destination, IP ID, protocol) and every
//! later fragment is looked up in conntrack with them, and translated as
//! the first one was. Fragments arriving before the first are passed
//! untouched.
use proxy_common::ct::{Frag4Key, Frag4Value};

use crate::{
    maps::SY_FRAG4,
    packet::{Ipv4, Ports},
};

#[inline(always)]
fn key(ip: &Ipv4) -> Frag4Key {
    Frag4Key {
        saddr_be: ip.saddr_be,
        daddr_be: ip.daddr_be,
        id_be: ip.id_be,
        proto: ip.proto,
        _pad: 0,
    }
}

/// Remembers the ports of a first fragment.
#[inline(always)]
pub fn remember(ip: &Ipv4, ports: &Ports) {
    let value = Frag4Value {
        sport_be: ports.sport_be,
        dport_be: ports.dport_be,
    };
    // LRU: a full map forgets the oldest datagram, whose later fragments
    // then pass untranslated.
    let _ = SY_FRAG4.insert(&key(ip), &value, 0);
}

/// The ports of a later fragment's datagram, if its first fragment was seen.
#[inline(always)]
pub fn ports_of(ip: &Ipv4) -> Option<Ports> {
    // SAFETY: copied out at once.
    let v = unsafe { SY_FRAG4.get(&key(ip)).copied()? };
    Some(Ports {
        sport_be: v.sport_be,
        dport_be: v.dport_be,
        tcp_flags: 0,
    })
}
