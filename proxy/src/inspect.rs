//! `switchyard inspect`: what the kernel holds, read from the pinned maps,
//! so it works whether or not anything else is running.
use std::{collections::BTreeMap, net::Ipv4Addr, path::Path};

use aya::maps::{HashMap, Map, MapData};
use proxy_common::{
    ct::{CT_DIR_FORWARD, Ct4Key, Ct4Value},
    lb::{
        AFF_CLIENT_NETNS, Lb4AffinityKey, Lb4AffinityValue, Lb4Backend, Lb4Key, Lb4Service,
        MASTER_SLOT, SVC_FLAG_AFFINITY,
    },
    map_names as names,
};
use serde::Serialize;

use crate::{
    datapath::MapError,
    model::{BackendAddr, FrontendKey, Protocol, addr_from_be},
};

#[derive(Serialize, Debug, PartialEq, Eq)]
pub struct ServiceRow {
    pub frontend: String,
    pub id: u32,
    pub backends: Vec<String>,
    pub affinity_timeout_s: Option<u32>,
}

#[derive(Serialize, Debug)]
pub struct BackendRow {
    pub id: u32,
    pub backend: String,
}

#[derive(Serialize, Debug)]
pub struct ConntrackRow {
    pub client: String,
    pub frontend: String,
    pub backend: String,
    pub protocol: String,
    pub frontend_id: u32,
    pub age_ms: u64,
}

#[derive(Serialize, Debug)]
pub struct AffinityRow {
    pub client: String,
    pub frontend_id: u32,
    pub backend_id: u32,
    pub idle_ms: u64,
}

fn open<K: aya::Pod, V: aya::Pod>(
    maps_dir: &Path,
    name: &'static str,
) -> Result<HashMap<MapData, K, V>, MapError> {
    let data =
        MapData::from_pin(maps_dir.join(name)).map_err(|_| MapError::Missing { map: name })?;
    let map = Map::from_map_data(data).map_err(|source| MapError::Layout { map: name, source })?;
    HashMap::try_from(map).map_err(|source| MapError::Layout { map: name, source })
}

fn entries<K: aya::Pod, V: aya::Pod>(
    m: &HashMap<MapData, K, V>,
    name: &'static str,
) -> Result<Vec<(K, V)>, MapError> {
    m.iter()
        .collect::<Result<_, _>>()
        .map_err(|e| MapError::Read {
            map: name,
            source: std::io::Error::other(e.to_string()),
        })
}

fn endpoint(addr_be: u32, port_be: u16) -> String {
    format!("{}:{}", addr_from_be(addr_be), u16::from_be(port_be))
}

/// Frontends with their backends in slot order.
pub fn services(maps_dir: &Path) -> Result<Vec<ServiceRow>, MapError> {
    let svc: BTreeMap<Lb4Key, Lb4Service> =
        entries(&open(maps_dir, names::LB4_SERVICES)?, names::LB4_SERVICES)?
            .into_iter()
            .collect();
    let be: BTreeMap<u32, Lb4Backend> =
        entries(&open(maps_dir, names::LB4_BACKENDS)?, names::LB4_BACKENDS)?
            .into_iter()
            .collect();
    Ok(service_rows(&svc, &be))
}

/// The pure part of [`services`].
pub fn service_rows(
    svc: &BTreeMap<Lb4Key, Lb4Service>,
    be: &BTreeMap<u32, Lb4Backend>,
) -> Vec<ServiceRow> {
    svc.iter()
        .filter(|(k, _)| k.backend_slot == MASTER_SLOT)
        .map(|(k, m)| {
            let frontend =
                FrontendKey::from_lb4_key(k).map_or_else(|| format!("{k:?}"), |f| f.to_string());
            let backends = (1..=m.count)
                .map(|s| {
                    let slot = svc.get(&Lb4Key {
                        backend_slot: s,
                        ..*k
                    });
                    match slot.and_then(|v| be.get(&v.backend_id)) {
                        Some(b) => BackendAddr::from_lb4_backend(b)
                            .map_or_else(|| format!("{b:?}"), |b| b.to_string()),
                        None => format!("<slot {s} missing>"),
                    }
                })
                .collect();
            ServiceRow {
                frontend,
                id: m.rev_nat_id,
                backends,
                affinity_timeout_s: (m.flags & SVC_FLAG_AFFINITY != 0)
                    .then_some(m.affinity_timeout_s),
            }
        })
        .collect()
}

pub fn backends(maps_dir: &Path) -> Result<Vec<BackendRow>, MapError> {
    let mut rows: Vec<BackendRow> = entries(
        &open::<u32, Lb4Backend>(maps_dir, names::LB4_BACKENDS)?,
        names::LB4_BACKENDS,
    )?
    .into_iter()
    .map(|(id, b)| BackendRow {
        id,
        backend: BackendAddr::from_lb4_backend(&b)
            .map_or_else(|| format!("{b:?}"), |b| b.to_string()),
    })
    .collect();
    rows.sort_by_key(|r| r.id);
    Ok(rows)
}

fn now_ns() -> u64 {
    // bpf_ktime_get_ns() is CLOCK_MONOTONIC.
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}

/// Flows the TC path tracks (forward entries; each has a reply twin).
pub fn conntrack(maps_dir: &Path) -> Result<Vec<ConntrackRow>, MapError> {
    let now = now_ns();
    let mut rows: Vec<ConntrackRow> =
        entries(&open::<Ct4Key, Ct4Value>(maps_dir, names::CT4)?, names::CT4)?
            .into_iter()
            .filter(|(k, _)| k.dir == CT_DIR_FORWARD)
            .map(|(k, v)| ConntrackRow {
                client: endpoint(k.saddr_be, k.sport_be),
                frontend: endpoint(k.daddr_be, k.dport_be),
                backend: endpoint(v.nat_addr_be, v.nat_port_be),
                protocol: Protocol::from_number(k.proto)
                    .map_or_else(|| k.proto.to_string(), |p| p.to_string()),
                frontend_id: v.rev_nat_id,
                age_ms: now.saturating_sub(v.created_ns) / 1_000_000,
            })
            .collect();
    rows.sort_by(|a, b| (&a.frontend, &a.client).cmp(&(&b.frontend, &b.client)));
    Ok(rows)
}

pub fn affinity(maps_dir: &Path) -> Result<Vec<AffinityRow>, MapError> {
    let now = now_ns();
    let rows = entries(
        &open::<Lb4AffinityKey, Lb4AffinityValue>(maps_dir, names::LB4_AFFINITY)?,
        names::LB4_AFFINITY,
    )?
    .into_iter()
    .map(|(k, v)| AffinityRow {
        client: if k.flags & AFF_CLIENT_NETNS != 0 {
            format!("netns:{}", k.client_id)
        } else {
            Ipv4Addr::from((k.client_id as u32).to_ne_bytes()).to_string()
        },
        frontend_id: k.rev_nat_id,
        backend_id: v.backend_id,
        idle_ms: now.saturating_sub(v.last_used_ns) / 1_000_000,
    })
    .collect();
    Ok(rows)
}
