//! Makes the maps hold a [`DesiredTable`], through [`LbMaps`].
//!
//! Invariant, kept after every single write: a frontend visible to the eBPF
//! programs (its master entry exists) is complete — slots `1..=count` exist,
//! name written backends and carry affinity-match entries. So writes go
//! backends → affinity-match → slots → master; a shrink lowers the master's
//! count before stale slots go; removals come last. Every step compares
//! against `observed` (the map contents as last read or written) and is
//! skipped when already done, so a failed pass is simply run again.
use std::collections::{BTreeMap, BTreeSet};

use proxy_common::lb::{
    Lb4AffMatchKey, Lb4Backend, Lb4Key, Lb4Service, MASTER_SLOT, SVC_FLAG_AFFINITY,
};
use tracing::{debug, warn};

use crate::{
    datapath::{LbMaps, MapError},
    model::{BackendAddr, DesiredTable, FrontendKey, FrontendSpec},
};

mod ids;
#[cfg(test)]
mod tests;

use ids::Ids;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read the current maps")]
    Restore(#[source] MapError),
    #[error(
        "the table needs {needed} `{map}` entries but the map holds {capacity}; nothing was applied"
    )]
    Capacity {
        map: &'static str,
        needed: usize,
        capacity: u32,
    },
    #[error("{} frontend(s) could not be fully written; first: {}: {}", .failed.len(), .failed[0].0, .failed[0].1)]
    Incomplete { failed: Vec<(String, MapError)> },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What one pass changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    pub writes: usize,
    pub deletes: usize,
    /// Conntrack entries of UDP flows whose backend left their frontend.
    pub flushed_flows: usize,
}

/// Entries held by the maps the reconciler writes.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct EntryCounts {
    pub services: usize,
    pub backends: usize,
    pub aff_match: usize,
}

/// The map contents as this process last read or wrote them.
#[derive(Debug, Default)]
struct Observed {
    services: BTreeMap<Lb4Key, Lb4Service>,
    backends: BTreeMap<u32, Lb4Backend>,
    /// Affinity-match entries as `(rev_nat_id, backend_id)`: ordered by
    /// frontend, so one frontend's members are a range.
    aff_match: BTreeSet<(u32, u32)>,
}

pub struct Reconciler<M> {
    maps: M,
    ids: Ids,
    observed: Observed,
    /// (frontend, backend) memberships removed whose UDP flows are not yet
    /// flushed; kept across passes so a failed flush is retried.
    departed: BTreeSet<(u32, u32)>,
}

impl<M: LbMaps> Reconciler<M> {
    /// Adopts what the maps already hold: frontend and backend IDs are
    /// rebuilt from them, so a restart renumbers nothing and live flows keep
    /// their backends.
    pub fn restore(maps: M) -> Result<Self> {
        let mut r = Self {
            maps,
            ids: Ids::default(),
            departed: BTreeSet::new(),
            observed: Observed::default(),
        };
        r.refresh()?;
        Ok(r)
    }

    /// Re-reads the maps, forgetting what this process believed they hold:
    /// the next pass repairs anything changed behind its back.
    pub fn refresh(&mut self) -> Result<()> {
        let maps = &self.maps;
        let services: BTreeMap<_, _> = maps
            .dump_services()
            .map_err(Error::Restore)?
            .into_iter()
            .collect();
        let backends: BTreeMap<_, _> = maps
            .dump_backends()
            .map_err(Error::Restore)?
            .into_iter()
            .collect();
        let aff_match = maps
            .dump_aff_match()
            .map_err(Error::Restore)?
            .into_iter()
            .map(|m| (m.rev_nat_id, m.backend_id))
            .collect();
        self.ids = Ids::restore(&services, &backends);
        self.observed = Observed {
            services,
            backends,
            aff_match,
        };
        Ok(())
    }

    /// What the maps hold for `key`, as a spec (named after the key), if it
    /// is programmed.
    pub fn programmed_spec(&self, key: &FrontendKey) -> Option<FrontendSpec> {
        let master = self.observed.services.get(&key.lb4_key(MASTER_SLOT))?;
        let backends = (1..=master.count)
            .map(|slot| {
                let slot = self.observed.services.get(&key.lb4_key(slot))?;
                BackendAddr::from_lb4_backend(self.observed.backends.get(&slot.backend_id)?)
            })
            .collect::<Option<Vec<_>>>()?;
        Some(FrontendSpec {
            name: key.to_string(),
            backends,
            affinity_timeout_s: (master.flags & SVC_FLAG_AFFINITY != 0)
                .then_some(master.affinity_timeout_s),
        })
    }

    /// Frontends programmed.
    pub fn frontend_count(&self) -> usize {
        self.ids.frontend_keys().count()
    }

    /// Distinct backends programmed.
    pub fn backend_count(&self) -> usize {
        self.observed.backends.len()
    }

    /// Entries of the maps the reconciler writes, as last read or written.
    pub fn entry_counts(&self) -> EntryCounts {
        EntryCounts {
            services: self.observed.services.len(),
            backends: self.observed.backends.len(),
            aff_match: self.observed.aff_match.len(),
        }
    }

    pub fn maps(&self) -> &M {
        &self.maps
    }

    pub fn maps_mut(&mut self) -> &mut M {
        &mut self.maps
    }

    /// Frontend ID (`rev_nat_id`) of a programmed frontend.
    pub fn frontend_id(&self, key: &FrontendKey) -> Option<u32> {
        self.ids.frontend(key)
    }

    /// One reconcile pass. Refuses, before any write, a table that cannot fit.
    /// On `Incomplete`, the frontends that failed keep their previous,
    /// consistent state; run the pass again to retry them.
    pub fn apply(&mut self, desired: &DesiredTable) -> Result<Report> {
        self.check_capacity(desired)?;
        let mut report = Report::default();
        let mut failed = Vec::new();
        let mut wanted_backends = BTreeSet::new();
        for (key, spec) in &desired.frontends {
            wanted_backends.extend(spec.backends.iter().copied());
            if let Err(e) = self.upsert_frontend(key, spec, &mut report) {
                warn!(frontend = %spec.name, key = %key, error = %e, "frontend not fully written; will retry");
                failed.push((spec.name.clone(), e));
            }
        }
        let stale: Vec<FrontendKey> = self
            .ids
            .frontend_keys()
            .filter(|k| !desired.frontends.contains_key(k))
            .collect();
        for key in stale {
            if let Err(e) = self.remove_frontend(&key, &mut report) {
                failed.push((key.to_string(), e));
            }
        }
        self.remove_orphans(&wanted_backends, &mut report, &mut failed);
        if !self.departed.is_empty() {
            match self.maps.flush_udp_flows(&self.departed) {
                Ok(n) => {
                    report.flushed_flows += n;
                    self.departed.clear();
                }
                Err(e) => failed.push(("UDP flows of departed backends".into(), e)),
            }
        }
        if failed.is_empty() {
            Ok(report)
        } else {
            Err(Error::Incomplete { failed })
        }
    }

    /// Runs [`Self::apply`] until it succeeds or `attempts` passes failed,
    /// sleeping `backoff` (doubled each time) between passes.
    pub fn apply_with_retry(
        &mut self,
        desired: &DesiredTable,
        attempts: u32,
        mut backoff: std::time::Duration,
    ) -> Result<Report> {
        let mut total = Report::default();
        for attempt in 1..=attempts {
            match self.apply(desired) {
                Ok(r) => {
                    total.writes += r.writes;
                    total.deletes += r.deletes;
                    total.flushed_flows += r.flushed_flows;
                    return Ok(total);
                }
                Err(Error::Incomplete { failed }) if attempt < attempts => {
                    debug!(
                        attempt,
                        failed = failed.len(),
                        "reconcile pass incomplete, retrying"
                    );
                    std::thread::sleep(backoff);
                    backoff = backoff.saturating_mul(2);
                }
                Err(e) => return Err(e),
            }
        }
        unreachable!("the last attempt returns")
    }

    fn check_capacity(&self, desired: &DesiredTable) -> Result<()> {
        use proxy_common::map_names as names;
        let cap = self.maps.capacity();
        let slots = desired.slot_count();
        let checks = [
            (
                names::LB4_SERVICES,
                desired.frontends.len() + slots,
                cap.services,
            ),
            (names::LB4_BACKENDS, desired.backend_count(), cap.backends),
            (names::LB4_AFF_MATCH, slots, cap.aff_match),
        ];
        for (map, needed, capacity) in checks {
            if needed > capacity as usize {
                return Err(Error::Capacity {
                    map,
                    needed,
                    capacity,
                });
            }
        }
        Ok(())
    }

    fn upsert_frontend(
        &mut self,
        key: &FrontendKey,
        spec: &FrontendSpec,
        report: &mut Report,
    ) -> Result<(), MapError> {
        let rev_nat_id = self.ids.frontend_or_allocate(*key);
        let ids: Vec<u32> = spec
            .backends
            .iter()
            .map(|b| self.ids.backend_or_allocate(*b))
            .collect();

        for (id, b) in ids.iter().zip(&spec.backends) {
            self.write_backend(*id, b, report)?;
        }
        for id in &ids {
            self.write_aff_match(
                Lb4AffMatchKey {
                    backend_id: *id,
                    rev_nat_id,
                },
                report,
            )?;
        }
        // Slots 1..=65535: the count is a u16 (the desired table never has more).
        for (slot, id) in (1..=u16::MAX).zip(&ids) {
            let value = Lb4Service {
                backend_id: *id,
                rev_nat_id,
                ..Lb4Service::default()
            };
            self.write_service(key.lb4_key(slot), value, report)?;
        }
        let master = Lb4Service {
            backend_id: 0,
            rev_nat_id,
            affinity_timeout_s: spec.affinity_timeout_s.unwrap_or(0),
            count: ids.len() as u16,
            flags: if spec.affinity_timeout_s.is_some() {
                SVC_FLAG_AFFINITY
            } else {
                0
            },
            _pad: 0,
        };
        self.write_service(key.lb4_key(MASTER_SLOT), master, report)?;

        // Break only after make: stale slots and memberships go last.
        let stale_slots: Vec<Lb4Key> = self
            .slots_of(key)
            .filter(|k| usize::from(k.backend_slot) > ids.len())
            .collect();
        for k in stale_slots {
            self.delete_service(&k, report)?;
        }
        let wanted: BTreeSet<u32> = ids.iter().copied().collect();
        self.delete_members(
            rev_nat_id,
            |backend_id| !wanted.contains(&backend_id),
            report,
        )?;
        Ok(())
    }

    fn remove_frontend(&mut self, key: &FrontendKey, report: &mut Report) -> Result<(), MapError> {
        // The master goes first: the frontend disappears as a whole.
        self.delete_service(&key.lb4_key(MASTER_SLOT), report)?;
        let slots: Vec<Lb4Key> = self.slots_of(key).collect();
        for k in slots {
            self.delete_service(&k, report)?;
        }
        if let Some(rev_nat_id) = self.ids.frontend(key) {
            self.delete_members(rev_nat_id, |_| true, report)?;
        }
        self.ids.release_frontend(key);
        Ok(())
    }

    /// Deletes backends that no slot names and no desired frontend wants (a
    /// frontend that failed mid-write keeps the backends it already wrote).
    fn remove_orphans(
        &mut self,
        wanted: &BTreeSet<BackendAddr>,
        report: &mut Report,
        failed: &mut Vec<(String, MapError)>,
    ) {
        let mut used: BTreeSet<u32> = self
            .observed
            .services
            .iter()
            .filter(|(k, _)| k.backend_slot != MASTER_SLOT)
            .map(|(_, v)| v.backend_id)
            .collect();
        used.extend(wanted.iter().filter_map(|b| self.ids.backend(b)));
        let orphans: Vec<u32> = self
            .observed
            .backends
            .keys()
            .filter(|id| !used.contains(id))
            .copied()
            .collect();
        for id in orphans {
            match self.maps.delete_backend(id) {
                Ok(()) => {
                    self.observed.backends.remove(&id);
                    self.ids.release_backend(id);
                    report.deletes += 1;
                }
                Err(e) => failed.push((format!("backend {id}"), e)),
            }
        }
        // IDs allocated for frontends that failed before any write.
        self.ids.forget_unwritten(&self.observed.backends);
    }

    fn slots_of<'a>(&'a self, key: &FrontendKey) -> impl Iterator<Item = Lb4Key> + 'a {
        let master = key.lb4_key(MASTER_SLOT);
        let first = key.lb4_key(1);
        let last = key.lb4_key(u16::MAX);
        self.observed
            .services
            .range(first..=last)
            .map(|(k, _)| *k)
            .filter(move |k| {
                Lb4Key {
                    backend_slot: MASTER_SLOT,
                    ..*k
                } == master
            })
    }

    fn write_backend(
        &mut self,
        id: u32,
        b: &BackendAddr,
        report: &mut Report,
    ) -> Result<(), MapError> {
        let want = b.lb4_backend();
        if self.observed.backends.get(&id) != Some(&want) {
            self.maps.update_backend(id, &want)?;
            self.observed.backends.insert(id, want);
            report.writes += 1;
        }
        Ok(())
    }

    /// Deletes the affinity-match entries of frontend `rev_nat_id` whose
    /// backend `doomed` selects.
    fn delete_members(
        &mut self,
        rev_nat_id: u32,
        doomed: impl Fn(u32) -> bool,
        report: &mut Report,
    ) -> Result<(), MapError> {
        let members: Vec<u32> = self
            .observed
            .aff_match
            .range((rev_nat_id, 0)..=(rev_nat_id, u32::MAX))
            .map(|(_, backend_id)| *backend_id)
            .filter(|b| doomed(*b))
            .collect();
        for backend_id in members {
            self.maps.delete_aff_match(&Lb4AffMatchKey {
                backend_id,
                rev_nat_id,
            })?;
            self.observed.aff_match.remove(&(rev_nat_id, backend_id));
            self.departed.insert((rev_nat_id, backend_id));
            report.deletes += 1;
        }
        Ok(())
    }

    fn write_aff_match(&mut self, m: Lb4AffMatchKey, report: &mut Report) -> Result<(), MapError> {
        if !self
            .observed
            .aff_match
            .contains(&(m.rev_nat_id, m.backend_id))
        {
            self.maps.update_aff_match(&m)?;
            self.observed.aff_match.insert((m.rev_nat_id, m.backend_id));
            report.writes += 1;
        }
        Ok(())
    }

    fn write_service(
        &mut self,
        key: Lb4Key,
        want: Lb4Service,
        report: &mut Report,
    ) -> Result<(), MapError> {
        if self.observed.services.get(&key) != Some(&want) {
            self.maps.update_service(&key, &want)?;
            self.observed.services.insert(key, want);
            report.writes += 1;
        }
        Ok(())
    }

    fn delete_service(&mut self, key: &Lb4Key, report: &mut Report) -> Result<(), MapError> {
        if self.observed.services.contains_key(key) {
            self.maps.delete_service(key)?;
            self.observed.services.remove(key);
            report.deletes += 1;
        }
        Ok(())
    }
}
