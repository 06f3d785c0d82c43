//! [`LbMaps`] on the real eBPF maps, opened from an `Ebpf` or from pins.
use std::{io, path::Path};

use aya::maps::{HashMap, Map, MapData};
use std::collections::BTreeSet;

use proxy_common::{
    ct::{Ct4Key, Ct4Value},
    lb::{Lb4AffMatchKey, Lb4Backend, Lb4Key, Lb4Service},
    map_names as names, proto,
};

use super::{Capacity, LbMaps, MapError, Result};

/// The load-balancing maps the reconciler writes.
pub struct AyaLbMaps {
    services: HashMap<MapData, Lb4Key, Lb4Service>,
    backends: HashMap<MapData, u32, Lb4Backend>,
    aff_match: HashMap<MapData, Lb4AffMatchKey, u8>,
    /// The TC path's conntrack, for flushing UDP flows of departed backends.
    conntrack: HashMap<MapData, Ct4Key, Ct4Value>,
    capacity: Capacity,
}

impl AyaLbMaps {
    /// Opens the maps pinned in `pin_dir` by [`super::loader`].
    pub fn from_pins(pin_dir: &Path) -> Result<Self> {
        let open = |name: &'static str| -> Result<Map> {
            let data = MapData::from_pin(pin_dir.join(name))
                .map_err(|_| MapError::Missing { map: name })?;
            Map::from_map_data(data).map_err(|source| MapError::Layout { map: name, source })
        };
        Self::from_maps(
            open(names::LB4_SERVICES)?,
            open(names::LB4_BACKENDS)?,
            open(names::LB4_AFF_MATCH)?,
            open(names::CT4)?,
        )
    }

    /// Takes the maps out of a loaded object (unpinned use: tests, benchmarks).
    pub fn from_ebpf(ebpf: &mut aya::Ebpf) -> Result<Self> {
        let mut take =
            |name: &'static str| ebpf.take_map(name).ok_or(MapError::Missing { map: name });
        Self::from_maps(
            take(names::LB4_SERVICES)?,
            take(names::LB4_BACKENDS)?,
            take(names::LB4_AFF_MATCH)?,
            take(names::CT4)?,
        )
    }

    fn from_maps(services: Map, backends: Map, aff_match: Map, conntrack: Map) -> Result<Self> {
        let layout = |map| move |source| MapError::Layout { map, source };
        let services: HashMap<_, Lb4Key, Lb4Service> =
            HashMap::try_from(services).map_err(layout(names::LB4_SERVICES))?;
        let backends: HashMap<_, u32, Lb4Backend> =
            HashMap::try_from(backends).map_err(layout(names::LB4_BACKENDS))?;
        let aff_match: HashMap<_, Lb4AffMatchKey, u8> =
            HashMap::try_from(aff_match).map_err(layout(names::LB4_AFF_MATCH))?;
        let conntrack: HashMap<_, Ct4Key, Ct4Value> =
            HashMap::try_from(conntrack).map_err(layout(names::CT4))?;
        let max = |m: &MapData, name| m.info().map(|i| i.max_entries()).map_err(layout(name));
        let capacity = Capacity {
            services: max(services.map(), names::LB4_SERVICES)?,
            backends: max(backends.map(), names::LB4_BACKENDS)?,
            aff_match: max(aff_match.map(), names::LB4_AFF_MATCH)?,
        };
        Ok(Self {
            services,
            backends,
            conntrack,
            aff_match,
            capacity,
        })
    }
}

impl AyaLbMaps {
    /// The TC path's conntrack map (tests and benchmarks inspect and seed it).
    pub fn conntrack_mut(&mut self) -> &mut HashMap<MapData, Ct4Key, Ct4Value> {
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

fn io_error(e: aya::maps::MapError) -> io::Error {
    match e {
        aya::maps::MapError::SyscallError(s) => s.io_error,
        aya::maps::MapError::KeyNotFound => io::Error::from_raw_os_error(libc::ENOENT),
        other => io::Error::other(other.to_string()),
    }
}

fn write_err(
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
fn absent_ok(r: Result<(), aya::maps::MapError>) -> Result<(), aya::maps::MapError> {
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

impl LbMaps for AyaLbMaps {
    fn flush_udp_flows(&mut self, pairs: &BTreeSet<(u32, u32)>) -> Result<usize> {
        // One pass over the table; entries of both directions carry the pair.
        let doomed: Vec<Ct4Key> = self
            .conntrack
            .iter()
            .filter_map(Result::ok)
            .filter(|(k, v)| k.proto == proto::UDP && pairs.contains(&(v.rev_nat_id, v.backend_id)))
            .map(|(k, _)| k)
            .collect();
        for k in &doomed {
            absent_ok(self.conntrack.remove(k)).map_err(write_err("delete", names::CT4, k))?;
        }
        Ok(doomed.len())
    }

    fn update_backend(&mut self, id: u32, backend: &Lb4Backend) -> Result<()> {
        self.backends
            .insert(id, backend, 0)
            .map_err(write_err("update", names::LB4_BACKENDS, id))
    }

    fn delete_backend(&mut self, id: u32) -> Result<()> {
        absent_ok(self.backends.remove(&id)).map_err(write_err("delete", names::LB4_BACKENDS, id))
    }

    fn update_service(&mut self, key: &Lb4Key, value: &Lb4Service) -> Result<()> {
        self.services
            .insert(key, value, 0)
            .map_err(write_err("update", names::LB4_SERVICES, key))
    }

    fn delete_service(&mut self, key: &Lb4Key) -> Result<()> {
        absent_ok(self.services.remove(key)).map_err(write_err("delete", names::LB4_SERVICES, key))
    }

    fn update_aff_match(&mut self, key: &Lb4AffMatchKey) -> Result<()> {
        self.aff_match
            .insert(key, 1, 0)
            .map_err(write_err("update", names::LB4_AFF_MATCH, key))
    }

    fn delete_aff_match(&mut self, key: &Lb4AffMatchKey) -> Result<()> {
        absent_ok(self.aff_match.remove(key)).map_err(write_err(
            "delete",
            names::LB4_AFF_MATCH,
            key,
        ))
    }

    fn dump_services(&self) -> Result<Vec<(Lb4Key, Lb4Service)>> {
        dump(&self.services, names::LB4_SERVICES)
    }

    fn dump_backends(&self) -> Result<Vec<(u32, Lb4Backend)>> {
        dump(&self.backends, names::LB4_BACKENDS)
    }

    fn dump_aff_match(&self) -> Result<Vec<Lb4AffMatchKey>> {
        Ok(dump(&self.aff_match, names::LB4_AFF_MATCH)?
            .into_iter()
            .map(|(k, _)| k)
            .collect())
    }

    fn capacity(&self) -> Capacity {
        self.capacity
    }
}
