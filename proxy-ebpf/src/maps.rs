//! Map definitions. Names are those of `proxy_common::map_names`; sizes here
//! are placeholders that userspace overrides at load time from configuration
//! (see `switchyard::datapath::MapSizes`).
use aya_ebpf::{
    macros::map,
    maps::{HashMap, LruHashMap},
};
use proxy_common::{
    ct::{Ct4Key, Ct4Value},
    lb::{Lb4AffMatchKey, Lb4AffinityKey, Lb4AffinityValue, Lb4Backend, Lb4Key, Lb4Service},
    sock::{Sock4FwdKey, Sock4RevNatKey, Sock4RevNatValue},
};

#[map]
pub static SY_LB4_SVC: HashMap<Lb4Key, Lb4Service> = HashMap::with_max_entries(1, 0);

#[map]
pub static SY_LB4_BE: HashMap<u32, Lb4Backend> = HashMap::with_max_entries(1, 0);

#[map]
pub static SY_LB4_AFF: LruHashMap<Lb4AffinityKey, Lb4AffinityValue> =
    LruHashMap::with_max_entries(1, 0);

#[map]
pub static SY_LB4_AFFM: HashMap<Lb4AffMatchKey, u8> = HashMap::with_max_entries(1, 0);

#[map]
pub static SY_CT4: LruHashMap<Ct4Key, Ct4Value> = LruHashMap::with_max_entries(1, 0);

#[map]
pub static SY_SK4_RNAT: LruHashMap<Sock4RevNatKey, Sock4RevNatValue> =
    LruHashMap::with_max_entries(1, 0);

#[map]
pub static SY_SK4_FWD: LruHashMap<Sock4FwdKey, u32> = LruHashMap::with_max_entries(1, 0);
