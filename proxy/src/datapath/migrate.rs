//! Upgrades across a map layout change. When this version finds maps an
//! earlier one pinned under names it no longer uses (`map_names::OBSOLETE`,
//! layouts in `proxy_common::legacy`), it carries their contents into its
//! own maps instead of starting empty, so an upgrade keeps every frontend
//! visible from the first packet the new programs see, and keeps the
//! per-packet flows on their backends:
//!
//! - services v1 → v2: the same slots, no local slots, the affinity flag;
//!   frontends of version 1 are ClusterIPs;
//! - memberships: the same pairs, in the cluster range;
//! - conntrack v1 → v2: each original-direction entry becomes a
//!   destination rewrite, each reply entry a source rewrite, both taken as
//!   established flows (version 1 tracked no state).
//!
//! Nothing carried over replaces an entry already there, so an interrupted
//! upgrade is simply run again. Memberships go first, then backend slots,
//! then masters: a frontend the new programs can see is complete. Once
//! both are carried, the old services and memberships pins are removed at
//! once (the old programs keep their maps through their own references),
//! so a later start never carries them over state this version has changed
//! since. Run before the new programs attach, and conntrack once more right
//! after (flows the old programs made meanwhile), before the old conntrack
//! pin is removed.
use std::path::Path;

use aya::maps::{HashMap, Map, MapData};
use proxy_common::{
    config::DatapathConfig,
    ct::{CT_FLAG_NAT, CT_FLAG_REPLY, CT_STATE_OPENED, CT_STATE_REPLIED, Ct4Key, Ct4Value},
    lb::{
        Lb4Key, Lb4MemberKey, Lb4Service, MASTER_SLOT, MEMBER_CLUSTER, SVC_FLAG_AFFINITY,
        SVC_KIND_CLUSTER_IP, SVC_KIND_SHIFT,
    },
    legacy::{CT_V1_DIR_FORWARD, Ct4KeyV1, Ct4ValueV1, Lb4ServiceV1},
    map_names as names, proto,
};

use super::{MapError, Result, aya_maps::write_err, conntrack::now_s};

/// What an upgrade carried over.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Carried {
    /// Frontend entries (masters and slots).
    pub services: usize,
    /// Memberships.
    pub members: usize,
    /// Conntrack entries.
    pub conntrack: usize,
}

impl Carried {
    /// Whether anything was carried over.
    pub fn any(&self) -> bool {
        self.services + self.members + self.conntrack > 0
    }
}

fn open<K: aya::Pod, V: aya::Pod>(
    dir: &Path,
    name: &'static str,
) -> Result<Option<HashMap<MapData, K, V>>> {
    let path = dir.join(name);
    if !path.exists() {
        return Ok(None);
    }
    let data = MapData::from_pin(&path).map_err(|_| MapError::Missing { map: name })?;
    let map = Map::from_map_data(data).map_err(|source| MapError::Layout { map: name, source })?;
    HashMap::try_from(map)
        .map(Some)
        .map_err(|source| MapError::Layout { map: name, source })
}

fn entries<K: aya::Pod, V: aya::Pod>(
    m: &HashMap<MapData, K, V>,
    name: &'static str,
) -> Result<Vec<(K, V)>> {
    m.iter()
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| MapError::Read {
            map: name,
            source: super::aya_maps::io_error(e),
        })
}

/// Inserts unless the key exists: `Ok(true)` when inserted.
fn insert_new<K: aya::Pod + std::fmt::Debug, V: aya::Pod>(
    map: &mut HashMap<MapData, K, V>,
    name: &'static str,
    k: K,
    v: V,
) -> Result<bool> {
    const BPF_NOEXIST: u64 = 1;
    match map.insert(k, v, BPF_NOEXIST) {
        Ok(()) => Ok(true),
        Err(aya::maps::MapError::SyscallError(e))
            if e.io_error.raw_os_error() == Some(libc::EEXIST) =>
        {
            Ok(false)
        }
        Err(e) => Err(write_err("update", name, &k)(e)),
    }
}

/// Carries version-1 memberships and services over into this version's
/// maps pinned in `dir`, removes their old pins, and carries version-1
/// conntrack over.
pub fn carry_over(dir: &Path, config: &DatapathConfig) -> Result<Carried> {
    let mut carried = Carried::default();
    let old_members = open::<Lb4MemberKey, u8>(dir, names::LB4_MEMBERS_V1)?;
    if let (Some(old), Some(mut new)) = (
        &old_members,
        open::<Lb4MemberKey, u8>(dir, names::LB4_MEMBERS)?,
    ) {
        for (k, _) in entries(old, names::LB4_MEMBERS_V1)? {
            if insert_new(&mut new, names::LB4_MEMBERS, k, MEMBER_CLUSTER)? {
                carried.members += 1;
            }
        }
    }
    let old_services = open::<Lb4Key, Lb4ServiceV1>(dir, names::LB4_SERVICES_V1)?;
    if let (Some(old), Some(mut new)) = (
        &old_services,
        open::<Lb4Key, Lb4Service>(dir, names::LB4_SERVICES)?,
    ) {
        let mut all = entries(old, names::LB4_SERVICES_V1)?;
        // Slots before masters.
        all.sort_by_key(|(k, _)| k.backend_slot == MASTER_SLOT);
        for (k, v) in all {
            let flags = if v.flags & 1 != 0 {
                SVC_FLAG_AFFINITY
            } else {
                0
            } | (SVC_KIND_CLUSTER_IP << SVC_KIND_SHIFT);
            let value = Lb4Service {
                backend_id: v.backend_id,
                frontend_id: v.rev_nat_id,
                affinity_timeout_s: v.affinity_timeout_s,
                count: v.count,
                local_count: 0,
                flags,
                _pad: 0,
            };
            if insert_new(&mut new, names::LB4_SERVICES, k, value)? {
                carried.services += 1;
            }
        }
    }
    for (present, name) in [
        (old_members.is_some(), names::LB4_MEMBERS_V1),
        (old_services.is_some(), names::LB4_SERVICES_V1),
    ] {
        if present {
            let path = dir.join(name);
            std::fs::remove_file(&path).map_err(|source| MapError::Write {
                op: "unpin",
                map: name,
                key: path.display().to_string(),
                source,
            })?;
        }
    }
    carried.conntrack = carry_conntrack(dir, config)?;
    Ok(carried)
}

/// Carries version-1 conntrack entries over, never replacing an entry of
/// this version's.
pub fn carry_conntrack(dir: &Path, config: &DatapathConfig) -> Result<usize> {
    let (Some(old), Some(mut new)) = (
        open::<Ct4KeyV1, Ct4ValueV1>(dir, names::CT4_V1)?,
        open::<Ct4Key, Ct4Value>(dir, names::CT4)?,
    ) else {
        return Ok(0);
    };
    let now = now_s();
    let mut n = 0;
    for (k, v) in entries(&old, names::CT4_V1)? {
        let (key, value) = convert_flow(&k, &v, now, config);
        // BPF_NOEXIST: an entry the new programs made wins.
        if new.insert(key, value, 1).is_ok() {
            n += 1;
        }
    }
    Ok(n)
}

/// One version-1 conntrack entry in this version's layout.
pub fn convert_flow(
    k: &Ct4KeyV1,
    v: &Ct4ValueV1,
    now_s: u32,
    config: &DatapathConfig,
) -> (Ct4Key, Ct4Value) {
    let key = Ct4Key {
        saddr_be: k.saddr_be,
        daddr_be: k.daddr_be,
        sport_be: k.sport_be,
        dport_be: k.dport_be,
        proto: k.proto,
        _pad: [0; 3],
    };
    let forward = k.dir == CT_V1_DIR_FORWARD;
    let lifetime = if k.proto == proto::TCP {
        config.tcp_established_s
    } else {
        config.udp_stream_s
    };
    let (saddr_be, sport_be, daddr_be, dport_be) = if forward {
        (k.saddr_be, k.sport_be, v.nat_addr_be, v.nat_port_be)
    } else {
        (v.nat_addr_be, v.nat_port_be, k.daddr_be, k.dport_be)
    };
    let value = Ct4Value {
        saddr_be,
        daddr_be,
        sport_be,
        dport_be,
        backend_id: v.backend_id,
        frontend_id: v.rev_nat_id,
        expires_s: now_s.saturating_add(lifetime),
        ifindex: 0,
        flags: CT_FLAG_NAT | if forward { 0 } else { CT_FLAG_REPLY },
        state: CT_STATE_OPENED | CT_STATE_REPLIED,
        _pad: [0; 2],
    };
    (key, value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_version_1_flow_becomes_two_partner_entries() {
        let (client, vip, backend) = (0x0a00_0001u32, 0x0a60_000au32, 0x0af4_010bu32);
        let fwd_v1 = Ct4KeyV1 {
            saddr_be: client,
            daddr_be: vip,
            sport_be: 40000u16.to_be(),
            dport_be: 80u16.to_be(),
            proto: proto::TCP,
            dir: 0,
            _pad: [0; 2],
        };
        let fwd_val = Ct4ValueV1 {
            nat_addr_be: backend,
            nat_port_be: 8080u16.to_be(),
            backend_id: 3,
            rev_nat_id: 7,
            ..Ct4ValueV1::default()
        };
        let rev_v1 = Ct4KeyV1 {
            saddr_be: backend,
            daddr_be: client,
            sport_be: 8080u16.to_be(),
            dport_be: 40000u16.to_be(),
            dir: 1,
            ..fwd_v1
        };
        let rev_val = Ct4ValueV1 {
            nat_addr_be: vip,
            nat_port_be: 80u16.to_be(),
            ..fwd_val
        };
        let c = DatapathConfig::DEFAULT;
        let (fk, fv) = convert_flow(&fwd_v1, &fwd_val, 100, &c);
        let (rk, rv) = convert_flow(&rev_v1, &rev_val, 100, &c);
        assert_eq!((fv.daddr_be, u16::from_be(fv.dport_be)), (backend, 8080));
        assert_eq!((fv.saddr_be, fv.sport_be), (client, 40000u16.to_be()));
        assert_eq!((rv.saddr_be, u16::from_be(rv.sport_be)), (vip, 80));
        assert_eq!(
            fv.partner_key(proto::TCP),
            rk,
            "the forward entry names the reply's key"
        );
        assert_eq!(rv.partner_key(proto::TCP), fk, "and back");
        assert_eq!(fv.expires_s, 100 + c.tcp_established_s);
        assert_ne!(rv.flags & CT_FLAG_REPLY, 0);
    }
}
