//! Frontend lookup and backend selection, shared by the socket and TC paths.
use aya_ebpf::{
    helpers::{bpf_get_prandom_u32, bpf_ktime_get_ns},
    maps::lpm_trie::Key,
};
use proxy_common::lb::{
    Lb4AffinityKey, Lb4AffinityValue, Lb4Backend, Lb4Key, Lb4MemberKey, Lb4Service,
    Lb4SourceRangeKey, MASTER_SLOT, MEMBER_CLUSTER, MEMBER_LOCAL, SLOT_SCOPE_CLUSTER,
    SLOT_SCOPE_LOCAL, SOURCE_RANGE_ID_BITS, SVC_FLAG_AFFINITY,
};

use crate::maps::{SY_LB4_AFF, SY_LB4_BE, SY_LB4_MEMBER, SY_LB4_SRCRANGE, SY_LB4_SVC_V2};

const NS_PER_SEC: u64 = 1_000_000_000;

/// A frontend found by address, port and protocol.
pub struct Frontend {
    pub key: Lb4Key,
    pub master: Lb4Service,
}

/// One of a frontend's two slot ranges: slots `1..=count` of `scope`.
#[derive(Clone, Copy)]
pub struct Slots {
    pub scope: u8,
    pub count: u16,
    /// The `MEMBER_*` bit of this range.
    pub member: u8,
}

impl Frontend {
    /// The slots every client may use.
    #[inline(always)]
    pub fn cluster_slots(&self) -> Slots {
        Slots {
            scope: SLOT_SCOPE_CLUSTER,
            count: self.master.count,
            member: MEMBER_CLUSTER,
        }
    }

    /// The slots of external traffic under `externalTrafficPolicy: Local`.
    #[inline(always)]
    pub fn local_slots(&self) -> Slots {
        Slots {
            scope: SLOT_SCOPE_LOCAL,
            count: self.master.local_count,
            member: MEMBER_LOCAL,
        }
    }

    #[inline(always)]
    pub fn has(&self, flag: u16) -> bool {
        self.master.flags & flag != 0
    }
}

/// Who is asking, for `sessionAffinity: ClientIP`.
#[derive(Clone, Copy)]
pub struct Client {
    pub id: u64,
    pub flags: u32,
}

#[inline(always)]
pub fn lookup_frontend(addr_be: u32, port_be: u16, proto: u8) -> Option<Frontend> {
    let key = Lb4Key {
        addr_be,
        port_be,
        backend_slot: MASTER_SLOT,
        proto,
        scope: SLOT_SCOPE_CLUSTER,
        _pad: [0; 2],
    };
    // SAFETY: the value is copied out at once; a concurrent update can only
    // make us see the old or the new master entry, both consistent.
    let master = unsafe { *SY_LB4_SVC_V2.get(key)? };
    Some(Frontend { key, master })
}

#[inline(always)]
pub fn backend(backend_id: u32) -> Option<Lb4Backend> {
    // SAFETY: copied out at once.
    unsafe { SY_LB4_BE.get(backend_id).copied() }
}

/// The slot ranges (`MEMBER_*` bits) `backend_id` is in for frontend
/// `frontend_id`; 0 once it has left the frontend.
#[inline(always)]
pub fn member_ranges(backend_id: u32, frontend_id: u32) -> u8 {
    let key = Lb4MemberKey {
        backend_id,
        frontend_id,
    };
    // SAFETY: copied out at once.
    unsafe { SY_LB4_MEMBER.get(key).copied().unwrap_or(0) }
}

/// `loadBalancerSourceRanges`: whether `saddr_be` may use frontend `fe`.
#[inline(always)]
pub fn source_allowed(fe: &Frontend, saddr_be: u32) -> bool {
    let key = Key::new(
        SOURCE_RANGE_ID_BITS + 32,
        Lb4SourceRangeKey {
            frontend_id_be: fe.master.frontend_id.to_be(),
            addr_be: saddr_be,
        },
    );
    SY_LB4_SRCRANGE.get(&key).is_some()
}

/// Picks a backend among `slots` of `fe` for `client`: the affine one while
/// it is valid and fresh, otherwise a uniformly random slot. Callers have
/// checked that `slots.count > 0`.
#[inline(always)]
pub fn select_backend(fe: &Frontend, slots: Slots, client: Client) -> Option<(u32, Lb4Backend)> {
    let affinity = fe.has(SVC_FLAG_AFFINITY);
    let aff_key = Lb4AffinityKey {
        client_id: client.id,
        frontend_id: fe.master.frontend_id,
        flags: client.flags,
    };
    let now = unsafe { bpf_ktime_get_ns() };
    if affinity && let Some(found) = affine_backend(&aff_key, fe, slots, now) {
        return Some(found);
    }
    let offset = (unsafe { bpf_get_prandom_u32() } % u32::from(slots.count)) as u16;
    let slot_key = Lb4Key {
        backend_slot: offset + 1,
        scope: slots.scope,
        ..fe.key
    };
    // SAFETY: copied out at once.
    let backend_id = unsafe { SY_LB4_SVC_V2.get(slot_key)?.backend_id };
    let be = backend(backend_id)?;
    if affinity {
        let value = Lb4AffinityValue {
            backend_id,
            _pad: 0,
            last_used_ns: now,
        };
        // A full LRU evicts its oldest entry; an error here only costs affinity.
        let _ = SY_LB4_AFF.insert(aff_key, value, 0);
    }
    Some((backend_id, be))
}

#[inline(always)]
fn affine_backend(
    key: &Lb4AffinityKey,
    fe: &Frontend,
    slots: Slots,
    now: u64,
) -> Option<(u32, Lb4Backend)> {
    let entry = SY_LB4_AFF.get_ptr_mut(key)?;
    // SAFETY: the pointer is valid for this program run; racing writers can
    // at worst move `last_used_ns` a little.
    let (backend_id, last_used) = unsafe { ((*entry).backend_id, (*entry).last_used_ns) };
    let timeout = u64::from(fe.master.affinity_timeout_s) * NS_PER_SEC;
    // The affine backend must still be in the slots this client may use.
    if now.saturating_sub(last_used) > timeout
        || member_ranges(backend_id, fe.master.frontend_id) & slots.member == 0
    {
        return None;
    }
    let be = backend(backend_id)?;
    unsafe { (*entry).last_used_ns = now };
    Some((backend_id, be))
}
