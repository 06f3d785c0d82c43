//! [`LbMaps`] on the real eBPF maps, opened from an `Ebpf` or from pins.
use std::{collections::BTreeSet, io, path::Path};

use aya::maps::{
    Array, HashMap, Map, MapData,
    lpm_trie::{Key, LpmTrie},
};
use proxy_common::{
    config::Node4Config,
    lb::{Lb4Backend, Lb4Key, Lb4MemberKey, Lb4Service, Lb4SourceRangeKey, SOURCE_RANGE_ID_BITS},
    map_names as names,
};

use super::{
    Capacity, LbMaps, MapError, Result, SourceRange,
    batch::{self, BatchError},
    conntrack::Conntrack,
    one_by_one,
};
use crate::model::{BackendId, FrontendId, Ipv4Cidr, addr_be, addr_from_be};

/// The maps the reconciler writes, and the conntrack map it flushes.
pub struct AyaLbMaps {
    services: HashMap<MapData, Lb4Key, Lb4Service>,
    backends: HashMap<MapData, u32, Lb4Backend>,
    members: HashMap<MapData, Lb4MemberKey, u8>,
    source_ranges: LpmTrie<MapData, Lb4SourceRangeKey, u8>,
    node: Array<MapData, Node4Config>,
    conntrack: Conntrack,
    capacity: Capacity,
}

/// The maps [`AyaLbMaps`] needs, by name.
const NEEDED: [&str; 6] = [
    names::LB4_SERVICES,
    names::LB4_BACKENDS,
    names::LB4_MEMBERS,
    names::LB4_SOURCE_RANGES,
    names::NODE4,
    names::CT4,
];

impl AyaLbMaps {
    /// Opens the maps pinned in `pin_dir` by [`super::loader`].
    pub fn from_pins(pin_dir: &Path) -> Result<Self> {
        let [a, b, c, d, e, f] = NEEDED.map(|name| super::open_pinned(pin_dir, name));
        Self::from_maps([a?, b?, c?, d?, e?, f?])
    }

    /// Takes the maps out of a loaded object (unpinned use: tests, benchmarks).
    pub fn from_ebpf(ebpf: &mut aya::Ebpf) -> Result<Self> {
        let [a, b, c, d, e, f] =
            NEEDED.map(|name| ebpf.take_map(name).ok_or(MapError::Missing { map: name }));
        Self::from_maps([a?, b?, c?, d?, e?, f?])
    }

    fn from_maps([services, backends, members, ranges, node, conntrack]: [Map; 6]) -> Result<Self> {
        let layout = |map| move |source| MapError::Layout { map, source };
        let services: HashMap<_, Lb4Key, Lb4Service> =
            HashMap::try_from(services).map_err(layout(names::LB4_SERVICES))?;
        let backends: HashMap<_, u32, Lb4Backend> =
            HashMap::try_from(backends).map_err(layout(names::LB4_BACKENDS))?;
        let members: HashMap<_, Lb4MemberKey, u8> =
            HashMap::try_from(members).map_err(layout(names::LB4_MEMBERS))?;
        let source_ranges: LpmTrie<_, Lb4SourceRangeKey, u8> =
            LpmTrie::try_from(ranges).map_err(layout(names::LB4_SOURCE_RANGES))?;
        let node: Array<_, Node4Config> = Array::try_from(node).map_err(layout(names::NODE4))?;
        let conntrack = Conntrack::from_map(conntrack)?;
        let max = |m: &MapData, name| m.info().map(|i| i.max_entries()).map_err(layout(name));
        let capacity = Capacity {
            services: max(services.map(), names::LB4_SERVICES)?,
            backends: max(backends.map(), names::LB4_BACKENDS)?,
            members: max(members.map(), names::LB4_MEMBERS)?,
            source_ranges: max(
                aya::maps::IterableMap::map(&source_ranges),
                names::LB4_SOURCE_RANGES,
            )?,
        };
        Ok(Self {
            services,
            backends,
            members,
            source_ranges,
            node,
            conntrack,
            capacity,
        })
    }

    /// The per-packet paths' conntrack (tests, benchmarks and the daemon's
    /// garbage collector read it).
    pub fn conntrack_mut(&mut self) -> &mut Conntrack {
        &mut self.conntrack
    }
}

trait MapsExt {
    fn map(&self) -> &MapData;
}
impl<K: aya::Pod, V: aya::Pod> MapsExt for HashMap<MapData, K, V> {
    fn map(&self) -> &MapData {
        aya::maps::IterableMap::map(self)
    }
}

pub(super) fn io_error(e: aya::maps::MapError) -> io::Error {
    match e {
        aya::maps::MapError::SyscallError(s) => s.io_error,
        aya::maps::MapError::KeyNotFound => io::Error::from_raw_os_error(libc::ENOENT),
        other => io::Error::other(other.to_string()),
    }
}

pub(super) fn write_err(
    op: &'static str,
    map: &'static str,
    key: impl std::fmt::Debug,
) -> impl FnOnce(aya::maps::MapError) -> MapError {
    move |e| MapError::Write {
        op,
        map,
        key: format!("{key:?}"),
        source: io_error(e),
    }
}

/// Deleting an absent key is success: deletes must be retryable.
pub(super) fn absent_ok(r: Result<(), aya::maps::MapError>) -> Result<(), aya::maps::MapError> {
    match r {
        Err(aya::maps::MapError::KeyNotFound) => Ok(()),
        Err(aya::maps::MapError::SyscallError(s))
            if s.io_error.raw_os_error() == Some(libc::ENOENT) =>
        {
            Ok(())
        }
        other => other,
    }
}

fn dump<K: aya::Pod, V: aya::Pod>(
    map: &HashMap<MapData, K, V>,
    name: &'static str,
) -> Result<Vec<(K, V)>> {
    map.iter()
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| MapError::Read {
            map: name,
            source: io_error(e),
        })
}

fn lpm_key(&(frontend_id, cidr): &SourceRange) -> Key<Lb4SourceRangeKey> {
    Key::new(
        SOURCE_RANGE_ID_BITS + u32::from(cidr.prefix),
        Lb4SourceRangeKey {
            frontend_id_be: frontend_id.0.to_be(),
            addr_be: addr_be(cidr.addr),
        },
    )
}

/// Writes `entries` into `map` in one batch; `None` where the kernel has
/// no batch update (the caller writes them one by one).
fn update_batch<K: aya::Pod + std::fmt::Debug, V: aya::Pod>(
    map: &MapData,
    name: &'static str,
    entries: &[(K, V)],
) -> Option<(usize, Result<()>)> {
    let (keys, values): (Vec<K>, Vec<V>) = entries.iter().copied().unzip();
    match batch::update(map, &keys, &values) {
        (n, Ok(())) => Some((n, Ok(()))),
        (_, Err(BatchError::Unsupported)) => None,
        (n, Err(BatchError::Failed(source))) => Some((
            n,
            Err(MapError::Write {
                op: "update",
                map: name,
                key: format!("{:?}", keys[n.min(keys.len() - 1)]),
                source,
            }),
        )),
    }
}

impl LbMaps for AyaLbMaps {
    fn update_backends(&mut self, entries: &[(BackendId, Lb4Backend)]) -> (usize, Result<()>) {
        let raw: Vec<(u32, Lb4Backend)> = entries.iter().map(|(id, b)| (id.0, *b)).collect();
        update_batch(self.backends.map(), names::LB4_BACKENDS, &raw)
            .unwrap_or_else(|| one_by_one(entries, |(id, b)| self.update_backend(*id, b)))
    }

    fn update_services(&mut self, entries: &[(Lb4Key, Lb4Service)]) -> (usize, Result<()>) {
        update_batch(self.services.map(), names::LB4_SERVICES, entries)
            .unwrap_or_else(|| one_by_one(entries, |(k, v)| self.update_service(k, v)))
    }

    fn update_members(&mut self, entries: &[(Lb4MemberKey, u8)]) -> (usize, Result<()>) {
        update_batch(self.members.map(), names::LB4_MEMBERS, entries)
            .unwrap_or_else(|| one_by_one(entries, |(k, bits)| self.update_member(k, *bits)))
    }

    fn flush_udp_flows(&mut self, pairs: &BTreeSet<(FrontendId, BackendId)>) -> Result<usize> {
        self.conntrack.flush_udp(pairs)
    }

    fn update_backend(&mut self, id: BackendId, backend: &Lb4Backend) -> Result<()> {
        self.backends
            .insert(id.0, backend, 0)
            .map_err(write_err("update", names::LB4_BACKENDS, id))
    }

    fn delete_backend(&mut self, id: BackendId) -> Result<()> {
        absent_ok(self.backends.remove(&id.0)).map_err(write_err("delete", names::LB4_BACKENDS, id))
    }

    fn update_service(&mut self, key: &Lb4Key, value: &Lb4Service) -> Result<()> {
        self.services
            .insert(key, value, 0)
            .map_err(write_err("update", names::LB4_SERVICES, key))
    }

    fn delete_service(&mut self, key: &Lb4Key) -> Result<()> {
        absent_ok(self.services.remove(key)).map_err(write_err("delete", names::LB4_SERVICES, key))
    }

    fn update_member(&mut self, key: &Lb4MemberKey, ranges: u8) -> Result<()> {
        self.members
            .insert(key, ranges, 0)
            .map_err(write_err("update", names::LB4_MEMBERS, key))
    }

    fn delete_member(&mut self, key: &Lb4MemberKey) -> Result<()> {
        absent_ok(self.members.remove(key)).map_err(write_err("delete", names::LB4_MEMBERS, key))
    }

    fn update_source_range(&mut self, range: &SourceRange) -> Result<()> {
        self.source_ranges
            .insert(&lpm_key(range), 1, 0)
            .map_err(write_err("update", names::LB4_SOURCE_RANGES, range))
    }

    fn delete_source_range(&mut self, range: &SourceRange) -> Result<()> {
        absent_ok(self.source_ranges.remove(&lpm_key(range))).map_err(write_err(
            "delete",
            names::LB4_SOURCE_RANGES,
            range,
        ))
    }

    fn set_node(&mut self, node: &Node4Config) -> Result<()> {
        self.node
            .set(0, node, 0)
            .map_err(write_err("update", names::NODE4, node))
    }

    fn dump_services(&self) -> Result<Vec<(Lb4Key, Lb4Service)>> {
        dump(&self.services, names::LB4_SERVICES)
    }

    fn dump_backends(&self) -> Result<Vec<(BackendId, Lb4Backend)>> {
        Ok(dump(&self.backends, names::LB4_BACKENDS)?
            .into_iter()
            .map(|(id, b)| (BackendId(id), b))
            .collect())
    }

    fn dump_members(&self) -> Result<Vec<(Lb4MemberKey, u8)>> {
        dump(&self.members, names::LB4_MEMBERS)
    }

    fn dump_source_ranges(&self) -> Result<Vec<SourceRange>> {
        let read = |e| MapError::Read {
            map: names::LB4_SOURCE_RANGES,
            source: io_error(e),
        };
        let mut out = Vec::new();
        for key in self.source_ranges.keys() {
            let key = key.map_err(read)?;
            let data = key.data();
            let prefix = key
                .prefix_len()
                .saturating_sub(SOURCE_RANGE_ID_BITS)
                .min(32) as u8;
            out.push((
                FrontendId(u32::from_be(data.frontend_id_be)),
                Ipv4Cidr {
                    addr: addr_from_be(data.addr_be),
                    prefix,
                },
            ));
        }
        Ok(out)
    }

    fn node(&self) -> Result<Node4Config> {
        self.node.get(&0, 0).map_err(|e| MapError::Read {
            map: names::NODE4,
            source: io_error(e),
        })
    }

    fn capacity(&self) -> Capacity {
        self.capacity
    }
}
