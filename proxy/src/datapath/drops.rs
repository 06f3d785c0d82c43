//! The per-packet paths' drop counters ([`proxy_common::stats`]) from
//! userspace: the daemon exports them as
//! `switchyard_datapath_dropped_packets_total{reason}`, tests read them.
use std::path::Path;

use aya::maps::{Map, MapData, PerCpuArray};
use proxy_common::{
    map_names as names,
    stats::{STAT_COUNT, STAT_NAMES},
};

use super::{MapError, Result, aya_maps::io_error};

/// The counters map, on its own file descriptor.
pub struct DropCounters {
    map: PerCpuArray<MapData, u64>,
}

impl std::fmt::Debug for DropCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DropCounters").finish_non_exhaustive()
    }
}

impl DropCounters {
    /// Opens the pinned map `pin_dir/SY_STATS4`.
    pub fn from_pins(pin_dir: &Path) -> Result<Self> {
        Self::from_map(super::open_pinned(pin_dir, names::STATS4)?)
    }

    /// Wraps a map taken from a loaded object.
    pub fn from_map(map: Map) -> Result<Self> {
        let map = PerCpuArray::try_from(map).map_err(|source| MapError::Layout {
            map: names::STATS4,
            source,
        })?;
        Ok(Self { map })
    }

    /// Every counter summed over the CPUs, as `(reason, packets)` in
    /// `STAT_*` order. Counters only grow (until the pinned map is removed).
    pub fn read(&self) -> Result<[(&'static str, u64); STAT_COUNT as usize]> {
        let mut out = STAT_NAMES.map(|n| (n, 0));
        for (i, slot) in out.iter_mut().enumerate() {
            let per_cpu = self.map.get(&(i as u32), 0).map_err(|e| MapError::Read {
                map: names::STATS4,
                source: io_error(e),
            })?;
            slot.1 = per_cpu.iter().sum();
        }
        Ok(out)
    }

    /// The counter named `reason` (one of [`STAT_NAMES`]).
    pub fn get(&self, reason: &str) -> Result<u64> {
        Ok(self
            .read()?
            .iter()
            .find(|(n, _)| *n == reason)
            .map_or(0, |(_, v)| *v))
    }
}
