//! Map definitions and the load-time configuration. Names are those of
//! `proxy_common::map_names`; sizes here are placeholders that userspace
//! overrides at load time (see `switchyard::datapath::MapSizes`).
use aya_ebpf::{
    Global,
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray},
};
use proxy_common::{
    config::{DatapathConfig, Node4Config},
    ct::{Ct4Key, Ct4Value, Frag4Key, Frag4Value},
    lb::{
        Lb4AffinityKey, Lb4AffinityValue, Lb4Backend, Lb4Key, Lb4MemberKey, Lb4Service,
        Lb4SourceRangeKey,
    },
    sock::{Sock4FwdKey, Sock4RevNatKey, Sock4RevNatValue},
};

#[map]
pub static SY_LB4_SVC_V2: HashMap<Lb4Key, Lb4Service> = HashMap::with_max_entries(1, 0);

#[map]
pub static SY_LB4_BE: HashMap<u32, Lb4Backend> = HashMap::with_max_entries(1, 0);

#[map]
pub static SY_LB4_AFF: LruHashMap<Lb4AffinityKey, Lb4AffinityValue> =
    LruHashMap::with_max_entries(1, 0);

#[map]
pub static SY_LB4_MEMBER: HashMap<Lb4MemberKey, u8> = HashMap::with_max_entries(1, 0);

/// BPF_F_NO_PREALLOC: the kernel requires it of LPM tries.
const BPF_F_NO_PREALLOC: u32 = 1;

#[map]
pub static SY_LB4_SRCRANGE: LpmTrie<Lb4SourceRangeKey, u8> =
    LpmTrie::with_max_entries(1, BPF_F_NO_PREALLOC);

#[map]
pub static SY_CT4_V2: LruHashMap<Ct4Key, Ct4Value> = LruHashMap::with_max_entries(1, 0);

#[map]
pub static SY_FRAG4: LruHashMap<Frag4Key, Frag4Value> = LruHashMap::with_max_entries(1, 0);

#[map]
pub static SY_NODE4: Array<Node4Config> = Array::with_max_entries(1, 0);

#[map]
pub static SY_SK4_RNAT: LruHashMap<Sock4RevNatKey, Sock4RevNatValue> =
    LruHashMap::with_max_entries(1, 0);

#[map]
pub static SY_SK4_FWD: LruHashMap<Sock4FwdKey, u32> = LruHashMap::with_max_entries(1, 0);

#[map]
pub static SY_IF_REDIRECT: HashMap<u32, u32> = HashMap::with_max_entries(1, 0);

/// The interface to redirect to in place of `ifindex`: its bridge, when it
/// is a pod's bridge port (the bridge resolves the pod's address; the port
/// cannot).
#[inline(always)]
pub fn redirect_target(ifindex: u32) -> u32 {
    // SAFETY: copied out at once.
    unsafe { SY_IF_REDIRECT.get(&ifindex).copied() }.unwrap_or(ifindex)
}

#[map]
pub static SY_STATS4: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Counts one packet under `stat` (a `proxy_common::stats::STAT_*`).
#[inline(always)]
pub fn count(stat: u32) {
    if let Some(c) = SY_STATS4.get_ptr_mut(stat) {
        // SAFETY: this CPU's slot; programs do not migrate mid-run.
        unsafe { *c += 1 };
    }
}

/// Set by the loader (`proxy_common::global_names::CONFIG`); read-only.
#[unsafe(no_mangle)]
static SY_CONFIG: Global<DatapathConfig> = Global::new(DatapathConfig::DEFAULT);

/// The load-time configuration.
#[inline(always)]
pub fn config() -> DatapathConfig {
    SY_CONFIG.load()
}

/// The node's address for source NAT, 0 while unknown.
#[inline(always)]
pub fn node_addr_be() -> u32 {
    SY_NODE4.get(0).map_or(0, |n| n.addr_be)
}
