//! `switchyard inspect`: what the kernel holds, read from the pinned maps,
//! so it works whether or not anything else is running.
use std::{collections::BTreeMap, net::Ipv4Addr, path::Path};

use aya::maps::{HashMap, Map, MapData};
use proxy_common::{
    ct::{
        CT_FLAG_NAT, CT_FLAG_NODE_PATH, CT_FLAG_REPLY, CT_FLAG_SNAT, CT_STATE_FIN_ORIG,
        CT_STATE_FIN_REPLY, CT_STATE_REPLIED, Ct4Key, Ct4Value,
    },
    lb::{
        AFF_CLIENT_NETNS, BACKEND_FLAG_LOCAL, Lb4AffinityKey, Lb4AffinityValue, Lb4Backend, Lb4Key,
        Lb4Service, MASTER_SLOT, SLOT_SCOPE_CLUSTER, SLOT_SCOPE_LOCAL, SVC_FLAG_AFFINITY,
        SVC_FLAG_DROP_EMPTY, SVC_FLAG_EXT_LOCAL,
    },
    map_names as names, proto,
};
use serde::Serialize;

use crate::{
    datapath::{MapError, conntrack::Conntrack},
    model::{BackendAddr, FrontendKey, FrontendKind, Protocol, addr_from_be},
};

/// One frontend, as `inspect services` shows it.
#[derive(Serialize, Debug, PartialEq, Eq)]
pub struct ServiceRow {
    /// `address:port/PROTOCOL`.
    pub frontend: String,
    /// `ClusterIP`, `NodePort`, `ExternalIP` or `LoadBalancer`.
    pub kind: String,
    /// The frontend ID.
    pub id: u32,
    /// Backends every client may use, in slot order.
    pub backends: Vec<String>,
    /// Backends of external traffic under `externalTrafficPolicy: Local`.
    pub local_backends: Option<Vec<String>>,
    /// Session affinity timeout, when on.
    pub affinity_timeout_s: Option<u32>,
    /// `loadBalancerSourceRanges`, when restricted.
    pub source_ranges: Vec<String>,
    /// Without backends: `drop` or `reject`.
    pub when_empty: &'static str,
}

/// One backend.
#[derive(Serialize, Debug)]
pub struct BackendRow {
    /// The backend ID.
    pub id: u32,
    /// `address:port/PROTOCOL`.
    pub backend: String,
    /// Whether the endpoint runs on this node.
    pub local: bool,
}

/// One translated flow of the per-packet paths (its original direction).
#[derive(Serialize, Debug)]
pub struct ConntrackRow {
    /// `TCP` or `UDP`.
    pub protocol: String,
    /// The client, as it sent.
    pub client: String,
    /// Where the client sent (a frontend).
    pub frontend: String,
    /// The source the backend sees: the client, or the node when source-NATed.
    pub source_seen: String,
    /// The backend the flow goes to.
    pub backend: String,
    /// Whether the source is rewritten (`snat`).
    pub snat: bool,
    /// `pod` (from a local pod) or `node` (from outside the node).
    pub path: &'static str,
    /// `new`, `established`, `closing` or `closed`.
    pub state: &'static str,
    /// Seconds until the entry expires without traffic.
    pub expires_in_s: i64,
    /// The frontend ID.
    pub frontend_id: u32,
}

/// One session-affinity entry.
#[derive(Serialize, Debug)]
pub struct AffinityRow {
    /// The client: an address, or `netns:<cookie>` for the socket path.
    pub client: String,
    /// The frontend ID.
    pub frontend_id: u32,
    /// The backend the client sticks to.
    pub backend_id: u32,
    /// Milliseconds since its last new connection.
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
    let ranges = source_ranges(maps_dir)?;
    Ok(service_rows(&svc, &be, &ranges))
}

/// Source ranges by frontend ID, as `a.b.c.d/n`.
fn source_ranges(maps_dir: &Path) -> Result<BTreeMap<u32, Vec<String>>, MapError> {
    use crate::datapath::LbMaps as _;
    let maps = crate::datapath::AyaLbMaps::from_pins(maps_dir)?;
    let mut out: BTreeMap<u32, Vec<String>> = BTreeMap::new();
    for (id, cidr) in maps.dump_source_ranges()? {
        out.entry(id.0).or_default().push(cidr.to_string());
    }
    Ok(out)
}

/// The pure part of [`services`]; `ranges` lists each frontend's source
/// ranges by frontend ID.
pub fn service_rows(
    svc: &BTreeMap<Lb4Key, Lb4Service>,
    be: &BTreeMap<u32, Lb4Backend>,
    ranges: &BTreeMap<u32, Vec<String>>,
) -> Vec<ServiceRow> {
    svc.iter()
        .filter(|(k, _)| k.backend_slot == MASTER_SLOT)
        .map(|(k, m)| {
            let frontend =
                FrontendKey::from_lb4_key(k).map_or_else(|| format!("{k:?}"), |f| f.to_string());
            let slot_backend = |scope: u8, s: u16| {
                let slot = svc.get(&Lb4Key {
                    backend_slot: s,
                    scope,
                    ..*k
                });
                match slot.and_then(|v| be.get(&v.backend_id)) {
                    Some(b) => BackendAddr::from_lb4_backend(b)
                        .map_or_else(|| format!("{b:?}"), |b| b.to_string()),
                    None => format!("<slot {s} missing>"),
                }
            };
            let local_backends = (m.flags & SVC_FLAG_EXT_LOCAL != 0).then(|| {
                (1..=m.local_count)
                    .map(|s| slot_backend(SLOT_SCOPE_LOCAL, s))
                    .collect()
            });
            ServiceRow {
                frontend,
                kind: FrontendKind::from_flags(m.flags).to_string(),
                id: m.frontend_id,
                backends: (1..=m.count)
                    .map(|s| slot_backend(SLOT_SCOPE_CLUSTER, s))
                    .collect(),
                local_backends,
                affinity_timeout_s: (m.flags & SVC_FLAG_AFFINITY != 0)
                    .then_some(m.affinity_timeout_s),
                source_ranges: ranges.get(&m.frontend_id).cloned().unwrap_or_default(),
                when_empty: if m.flags & SVC_FLAG_DROP_EMPTY != 0 {
                    "drop"
                } else {
                    "reject"
                },
            }
        })
        .collect()
}

/// Every backend, by ID.
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
        local: b.flags & BACKEND_FLAG_LOCAL != 0,
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

/// Translated flows of the per-packet paths (original-direction entries;
/// each has a reply twin). Untranslated flows are tracked too, and left out.
pub fn conntrack(maps_dir: &Path) -> Result<Vec<ConntrackRow>, MapError> {
    let ct = Conntrack::from_pins(maps_dir)?;
    let mut rows = conntrack_rows(&ct.entries()?, crate::datapath::conntrack::now_s());
    rows.sort_by(|a, b| (&a.frontend, &a.client).cmp(&(&b.frontend, &b.client)));
    Ok(rows)
}

/// The pure part of [`conntrack`].
pub fn conntrack_rows(entries: &[(Ct4Key, Ct4Value)], now_s: u32) -> Vec<ConntrackRow> {
    entries
        .iter()
        .filter(|(_, v)| v.flags & CT_FLAG_REPLY == 0 && v.flags & CT_FLAG_NAT != 0)
        .map(|(k, v)| ConntrackRow {
            protocol: Protocol::from_number(k.proto)
                .map_or_else(|| k.proto.to_string(), |p| p.to_string()),
            client: endpoint(k.saddr_be, k.sport_be),
            frontend: endpoint(k.daddr_be, k.dport_be),
            source_seen: endpoint(v.saddr_be, v.sport_be),
            backend: endpoint(v.daddr_be, v.dport_be),
            snat: v.flags & CT_FLAG_SNAT != 0,
            path: if v.flags & CT_FLAG_NODE_PATH != 0 {
                "node"
            } else {
                "pod"
            },
            state: state_name(k.proto, v),
            expires_in_s: i64::from(v.expires_s) - i64::from(now_s),
            frontend_id: v.frontend_id,
        })
        .collect()
}

fn state_name(l4: u8, v: &Ct4Value) -> &'static str {
    if v.tcp_closed() && l4 == proto::TCP {
        "closed"
    } else if v.state & (CT_STATE_FIN_ORIG | CT_STATE_FIN_REPLY) != 0 {
        "closing"
    } else if v.state & CT_STATE_REPLIED != 0 {
        "established"
    } else {
        "new"
    }
}

/// Every session-affinity entry.
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
        frontend_id: k.frontend_id,
        backend_id: v.backend_id,
        idle_ms: now.saturating_sub(v.last_used_ns) / 1_000_000,
    })
    .collect();
    Ok(rows)
}
