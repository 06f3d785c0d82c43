//! The per-packet paths' conntrack from userspace: reading it for
//! `switchyard inspect`, flushing UDP flows of departed backends, and
//! collecting expired entries.
//!
//! Entries carry their expiry in `CLOCK_MONOTONIC` seconds (what
//! `bpf_ktime_get_coarse_ns` counts); the programs ignore an expired entry,
//! and [`Conntrack::collect_garbage`] removes it so the LRU map keeps room
//! for live flows.
use std::{collections::BTreeSet, path::Path};

use aya::maps::{HashMap, Map, MapData};
use proxy_common::{
    ct::{Ct4Key, Ct4Value},
    map_names as names, proto,
};

use super::{
    MapError, Result,
    aya_maps::{absent_ok, io_error, write_err},
};
use crate::model::{BackendId, FrontendId};

/// The conntrack map, opened on its own file descriptor so that scans can
/// run off the thread that programs the other maps.
pub struct Conntrack {
    map: HashMap<MapData, Ct4Key, Ct4Value>,
}

/// What one garbage-collection pass did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Entries looked at.
    pub scanned: usize,
    /// Entries removed (both entries of each dead flow).
    pub removed: usize,
}

impl Conntrack {
    /// Opens the pinned map `pin_dir/SY_CT4_V2`.
    pub fn from_pins(pin_dir: &Path) -> Result<Self> {
        Self::from_map(super::open_pinned(pin_dir, names::CT4)?)
    }

    /// Wraps a map taken from a loaded object.
    pub fn from_map(map: Map) -> Result<Self> {
        let map = HashMap::try_from(map).map_err(|source| MapError::Layout {
            map: names::CT4,
            source,
        })?;
        Ok(Self { map })
    }

    /// `max_entries` of the map.
    pub fn capacity(&self) -> u32 {
        aya::maps::IterableMap::map(&self.map)
            .info()
            .map_or(0, |i| i.max_entries())
    }

    /// Every entry, each once (see [`Self::scan`]; a cut-short walk
    /// returns what it saw).
    pub fn entries(&self) -> Result<Vec<(Ct4Key, Ct4Value)>> {
        Ok(self.scan()?.entries)
    }

    /// Walks the map. The kernel's walk (`BPF_MAP_GET_NEXT_KEY`) starts
    /// over from the first bucket when the entry it stands on is deleted or
    /// evicted meanwhile, so keys can come twice: each is kept once, and
    /// the walk gives up after visiting twice the map's size, saying so.
    pub fn scan(&self) -> Result<Scan> {
        let max = self.capacity() as usize;
        // Grown as entries come: sized for the capacity, an empty map's
        // walk would allocate tens of MB (a 1M-entry table) each time.
        let mut seen = std::collections::HashSet::new();
        let mut entries = Vec::new();
        let mut visits = 0usize;
        for item in self.map.iter() {
            let (k, v) = item.map_err(|e| MapError::Read {
                map: names::CT4,
                source: io_error(e),
            })?;
            visits += 1;
            if visits > 2 * max {
                return Ok(Scan {
                    entries,
                    complete: false,
                });
            }
            if seen.insert(k) {
                entries.push((k, v));
            }
        }
        Ok(Scan {
            entries,
            complete: true,
        })
    }

    /// The entry at `key`, if any.
    pub fn get(&self, key: &Ct4Key) -> Option<Ct4Value> {
        self.map.get(key, 0).ok()
    }

    /// Writes an entry (tests seed flows with it).
    pub fn insert(&mut self, key: &Ct4Key, value: &Ct4Value) -> Result<()> {
        self.map
            .insert(key, value, 0)
            .map_err(write_err("update", names::CT4, key))
    }

    /// Removes entries; absent ones are fine.
    pub fn remove_all<'a>(&mut self, keys: impl IntoIterator<Item = &'a Ct4Key>) -> Result<usize> {
        let mut n = 0;
        for k in keys {
            absent_ok(self.map.remove(k)).map_err(write_err("delete", names::CT4, k))?;
            n += 1;
        }
        Ok(n)
    }

    /// Removes each of `keys` whose entry, read again now, `still_doomed`
    /// says must go: between a walk and its deletes the programs may have
    /// given the key to a new flow, which must stay. Returns how many went.
    fn remove_if<'a>(
        &mut self,
        keys: impl IntoIterator<Item = &'a Ct4Key>,
        still_doomed: impl Fn(&Ct4Key, &Ct4Value) -> bool,
    ) -> Result<usize> {
        let mut n = 0;
        for k in keys {
            if self.get(k).is_some_and(|v| still_doomed(k, &v)) {
                absent_ok(self.map.remove(k)).map_err(write_err("delete", names::CT4, k))?;
                n += 1;
            }
        }
        Ok(n)
    }

    /// Deletes every UDP entry whose (frontend, backend) pair is in `pairs`
    /// (both entries of a flow carry the pair).
    ///
    /// # Errors
    /// A read error, or a walk cut short by evictions: the caller keeps the
    /// pairs and tries again.
    pub fn flush_udp(&mut self, pairs: &BTreeSet<(FrontendId, BackendId)>) -> Result<usize> {
        let departed = |k: &Ct4Key, v: &Ct4Value| {
            k.proto == proto::UDP
                && pairs.contains(&(FrontendId(v.frontend_id), BackendId(v.backend_id)))
        };
        let scan = self.scan()?;
        let doomed: Vec<Ct4Key> = scan
            .entries
            .iter()
            .filter(|(k, v)| departed(k, v))
            .map(|(k, _)| *k)
            .collect();
        let removed = self.remove_if(&doomed, departed)?;
        if !scan.complete {
            return Err(MapError::Read {
                map: names::CT4,
                source: std::io::Error::other(
                    "the walk kept starting over (entries evicted under it); some flows may remain",
                ),
            });
        }
        Ok(removed)
    }

    /// Removes the flows that expired before `now_s` (see [`dead_flows`]);
    /// a walk cut short collects what it saw.
    pub fn collect_garbage(&mut self, now_s: u32) -> Result<GcReport> {
        let entries = self.scan()?.entries;
        let doomed = dead_flows(&entries, now_s);
        let removed = self.remove_if(&doomed, |_, v| now_s > v.expires_s)?;
        Ok(GcReport {
            scanned: entries.len(),
            removed,
        })
    }
}

/// A walk of the conntrack map.
#[derive(Debug, Default)]
pub struct Scan {
    /// Every entry seen, each once.
    pub entries: Vec<(Ct4Key, Ct4Value)>,
    /// Whether the walk reached the end; `false` when concurrent evictions
    /// kept restarting it (entries may be missing).
    pub complete: bool,
}

/// The entries of flows that are dead at `now_s`: an entry goes once it has
/// expired and its partner has expired too (or is gone). A one-way stream
/// refreshes only one entry; the programs refresh the partner of a UDP
/// entry with it, and a TCP flow always has traffic both ways.
pub fn dead_flows(entries: &[(Ct4Key, Ct4Value)], now_s: u32) -> Vec<Ct4Key> {
    let expired = |v: &Ct4Value| now_s > v.expires_s;
    let by_key: std::collections::HashMap<Ct4Key, &Ct4Value> =
        entries.iter().map(|(k, v)| (*k, v)).collect();
    entries
        .iter()
        .filter(|(k, v)| {
            expired(v)
                && by_key
                    .get(&v.partner_key(k.proto))
                    .is_none_or(|p| expired(p))
        })
        .map(|(k, _)| *k)
        .collect()
}

/// `CLOCK_MONOTONIC` seconds, the clock the programs stamp entries with.
pub fn now_s() -> u32 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC_COARSE)
        .expect("CLOCK_MONOTONIC_COARSE is always available on Linux");
    t.tv_sec() as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use proxy_common::ct::CT_FLAG_REPLY;

    fn key(s: u32, d: u32, sp: u16, dp: u16) -> Ct4Key {
        Ct4Key {
            saddr_be: s,
            daddr_be: d,
            sport_be: sp,
            dport_be: dp,
            proto: proto::UDP,
            _pad: [0; 3],
        }
    }

    /// A flow's two entries: forward keyed (1→2), translated to (1→3),
    /// reply keyed (3→1).
    fn flow(fwd_expires: u32, rev_expires: u32) -> Vec<(Ct4Key, Ct4Value)> {
        let fwd = Ct4Value {
            saddr_be: 1,
            daddr_be: 3,
            sport_be: 10,
            dport_be: 30,
            expires_s: fwd_expires,
            ..Ct4Value::default()
        };
        let rev = Ct4Value {
            saddr_be: 2,
            daddr_be: 1,
            sport_be: 20,
            dport_be: 10,
            expires_s: rev_expires,
            flags: CT_FLAG_REPLY,
            ..Ct4Value::default()
        };
        vec![(key(1, 2, 10, 20), fwd), (key(3, 1, 30, 10), rev)]
    }

    #[test]
    fn a_flow_goes_only_when_both_entries_expired() {
        assert!(
            dead_flows(&flow(100, 100), 100).is_empty(),
            "not yet expired"
        );
        assert_eq!(dead_flows(&flow(99, 99), 100).len(), 2, "both expired");
        assert!(
            dead_flows(&flow(99, 150), 100).is_empty(),
            "the reply entry still lives: the flow stays whole"
        );
        let mut lone = flow(99, 99);
        lone.pop();
        assert_eq!(dead_flows(&lone, 100).len(), 1, "a lone expired entry goes");
    }
}
