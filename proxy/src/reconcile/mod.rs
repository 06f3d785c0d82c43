//! Makes the maps hold a [`DesiredTable`], through [`LbMaps`].
//!
//! Invariant, kept after every single write: a frontend visible to the eBPF
//! programs (its master entry exists) is complete — its slots exist, name
//! written backends that carry membership entries, and its source ranges are
//! in place. So writes go backends → memberships → slots → source ranges →
//! master; a shrink lowers the master's counts before stale slots go;
//! removals come last. Every step compares
//! against `observed` (the map contents as last read or written) and is
//! skipped when already done, so a failed pass is simply run again.
//!
//! A pass first plans every frontend, then writes what they all need before
//! their masters one map at a time, each in one batch (`BPF_MAP_UPDATE_BATCH`
//! on the kernel's maps), then the masters in one batch: per frontend the
//! order above still holds. Stale entries then go frontend by frontend. A
//! batch that fails, or new entries that would not fit beside the old
//! ones, leave the rest of the pass to frontend-by-frontend writes.
//!
//! A pass plans only the frontends whose entries may have changed: a
//! frontend last written completely from the same spec, none of whose
//! backends moved on or off the node, is skipped (`applied`). Backends
//! orphaned by the frontends a pass rewrote or removed are found from
//! reference counts; the whole table is swept for orphans only after the
//! maps were (re-)read and after a pass that failed. So a pass costs in
//! proportion to what changed, not to the size of the table.
use std::collections::{BTreeMap, BTreeSet, HashMap};

use proxy_common::{
    config::Node4Config,
    lb::{
        Lb4Backend, Lb4Key, Lb4MemberKey, Lb4Service, MASTER_SLOT, MEMBER_CLUSTER, MEMBER_LOCAL,
        SLOT_SCOPE_CLUSTER, SLOT_SCOPE_LOCAL, SVC_FLAG_AFFINITY, SVC_FLAG_DROP_EMPTY,
        SVC_FLAG_EXT_LOCAL, SVC_FLAG_SOURCE_RANGES,
    },
};
use tracing::{debug, warn};

use crate::{
    datapath::{LbMaps, MapError, SourceRange},
    model::{
        BackendAddr, BackendId, DesiredTable, FrontendId, FrontendKey, FrontendKind, FrontendSpec,
        Ipv4Cidr, addr_be,
    },
};

mod applied;
mod ids;
#[cfg(test)]
mod tests;

use applied::Applied;
use ids::Ids;

/// Why a pass did not (fully) apply.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The maps could not be read.
    #[error("cannot read the current maps")]
    Restore(#[source] MapError),
    /// The table does not fit; nothing was written.
    #[error(
        "the table needs {needed} `{map}` entries but the map holds {capacity}; nothing was applied"
    )]
    Capacity {
        /// The map that is too small.
        map: &'static str,
        /// Entries the table needs.
        needed: usize,
        /// Entries the map holds.
        capacity: u32,
    },
    /// A frontend has more backends than its slots can number; nothing was
    /// applied.
    #[error(
        "frontend {frontend} has {slots} backend slots, at most {max} are possible; nothing was applied"
    )]
    TooManyBackends {
        /// The frontend's name.
        frontend: String,
        /// Slots it needs (both ranges).
        slots: usize,
        /// [`crate::model::MAX_SLOTS_PER_FRONTEND`].
        max: usize,
    },
    /// Some frontends failed; each keeps its previous, consistent state.
    #[error("{} frontend(s) could not be fully written; first: {}: {}", .failed.len(), .failed[0].0, .failed[0].1)]
    Incomplete {
        /// What failed (a frontend's name, or another part), and why.
        failed: Vec<(String, MapError)>,
    },
}

/// Result of reconciler operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What one pass changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// Map entries written.
    pub writes: usize,
    /// Map entries deleted.
    pub deletes: usize,
    /// Conntrack entries of UDP flows whose backend left their frontend.
    pub flushed_flows: usize,
}

/// Memberships removed from the maps whose traffic is still to be cleaned
/// up (see [`Reconciler::defer_conntrack_flush`]).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Departures {
    /// (frontend, backend) memberships whose UDP conntrack entries are to
    /// be flushed (kube-proxy's conntrack cleanup).
    pub memberships: BTreeSet<(FrontendId, BackendId)>,
    /// The UDP backends among them, by address: sockets connected to such a
    /// backend through the socket path must be told (the daemon closes them).
    pub udp_backends: BTreeSet<(FrontendId, BackendAddr)>,
}

impl Departures {
    /// Nothing departed.
    pub fn is_empty(&self) -> bool {
        self.memberships.is_empty() && self.udp_backends.is_empty()
    }
}

/// Entries held by the maps the reconciler writes.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct EntryCounts {
    /// Frontend master entries and slots.
    pub services: usize,
    /// Backends.
    pub backends: usize,
    /// Memberships.
    pub members: usize,
    /// Source ranges.
    pub source_ranges: usize,
}

/// The map contents as this process last read or wrote them.
#[derive(Debug, Default)]
struct Observed {
    services: BTreeMap<Lb4Key, Lb4Service>,
    backends: HashMap<BackendId, Lb4Backend>,
    /// Memberships → `MEMBER_*` bits: ordered by frontend, so one
    /// frontend's members are a range.
    members: BTreeMap<(FrontendId, BackendId), u8>,
    /// Source ranges as `(frontend_id, cidr)`, ordered the same way.
    source_ranges: BTreeSet<SourceRange>,
    node: Node4Config,
}

/// Notes the first `n` of `entries` a batch wrote (`done` = `(n, result)`)
/// through `observe` and in the report; whether the whole batch was written.
fn record<T: Copy, R>(
    (n, result): (usize, Result<(), MapError>),
    entries: &[T],
    mut observe: impl FnMut(T) -> R,
    report: &mut Report,
) -> bool {
    for e in &entries[..n] {
        observe(*e);
    }
    report.writes += n;
    if let Err(e) = result {
        debug!(error = %e, written = n, of = entries.len(), "batch stopped; the rest goes entry by entry");
        return false;
    }
    true
}

/// What one frontend's entries must hold, worked out before any write.
struct Plan {
    frontend_id: FrontendId,
    /// Its backends' entries, cluster range first.
    backends: Vec<(BackendId, Lb4Backend)>,
    /// Each backend's `MEMBER_*` bits.
    ranges: BTreeMap<BackendId, u8>,
    /// Its slots, both scopes.
    slots: Vec<(Lb4Key, Lb4Service)>,
    /// Its master entry.
    master: Lb4Service,
    /// Whether [`Reconciler::make_in_batches`] wrote everything up to and
    /// including the master.
    made: bool,
    /// The maps held nothing of this frontend before the pass: there is
    /// nothing stale to break.
    fresh: bool,
}

/// Keeps the maps equal to a [`DesiredTable`] (see the module docs).
pub struct Reconciler<M> {
    maps: M,
    ids: Ids,
    observed: Observed,
    /// Memberships removed whose traffic is not yet cleaned up; kept across
    /// passes (a failed pass, a failed flush) until flushed or taken.
    departed: Departures,
    /// Whether `apply` leaves the UDP conntrack flush to its caller.
    defer_flush: bool,
    /// What each frontend was last written from (see the module docs).
    applied: Applied,
    /// The next pass sweeps every backend for orphans: the maps were just
    /// read, or a pass failed part-way.
    sweep_due: bool,
}

impl<M: LbMaps> Reconciler<M> {
    /// Adopts what the maps already hold: frontend and backend IDs are
    /// rebuilt from them, so a restart renumbers nothing and live flows keep
    /// their backends.
    pub fn restore(maps: M) -> Result<Self> {
        let mut r = Self {
            maps,
            ids: Ids::default(),
            departed: Departures::default(),
            defer_flush: false,
            observed: Observed::default(),
            applied: Applied::default(),
            sweep_due: true,
        };
        r.refresh()?;
        Ok(r)
    }

    /// Leaves the cleanup of departed memberships to the caller, who takes
    /// them with [`Self::take_departed`] after each pass (whatever its
    /// outcome) instead of `apply` scanning conntrack itself. The daemon
    /// flushes on another thread, so a change's way to the maps never waits
    /// for a scan of up to a million entries, and closes the sockets
    /// connected to departed UDP backends.
    pub fn defer_conntrack_flush(mut self) -> Self {
        self.defer_flush = true;
        self
    }

    /// The memberships removed since the last call, passes that failed
    /// included (with [`Self::defer_conntrack_flush`]; empty otherwise).
    pub fn take_departed(&mut self) -> Departures {
        if self.defer_flush {
            std::mem::take(&mut self.departed)
        } else {
            Departures::default()
        }
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
        let backends: HashMap<_, _> = maps
            .dump_backends()
            .map_err(Error::Restore)?
            .into_iter()
            .collect();
        let members = maps
            .dump_members()
            .map_err(Error::Restore)?
            .into_iter()
            .map(|(m, bits)| ((FrontendId(m.frontend_id), BackendId(m.backend_id)), bits))
            .collect();
        let source_ranges = maps
            .dump_source_ranges()
            .map_err(Error::Restore)?
            .into_iter()
            .collect();
        let node = maps.node().map_err(Error::Restore)?;
        self.ids = Ids::restore(&services, &backends);
        self.applied.clear();
        self.sweep_due = true;
        self.observed = Observed {
            services,
            backends,
            members,
            source_ranges,
            node,
        };
        Ok(())
    }

    /// What the maps hold for `key`, as a spec (named after the key), if it
    /// is programmed.
    pub fn programmed_spec(&self, key: &FrontendKey) -> Option<FrontendSpec> {
        let master = self.observed.services.get(&key.lb4_key(MASTER_SLOT))?;
        let backend_at = |slot: Lb4Key| {
            let slot = self.observed.services.get(&slot)?;
            BackendAddr::from_lb4_backend(self.observed.backends.get(&BackendId(slot.backend_id))?)
        };
        let backends = (1..=master.count)
            .map(|s| backend_at(key.lb4_key(s)))
            .collect::<Option<Vec<_>>>()?;
        let local_backends = if master.flags & SVC_FLAG_EXT_LOCAL != 0 {
            Some(
                (1..=master.local_count)
                    .map(|s| backend_at(key.lb4_local_key(s)))
                    .collect::<Option<Vec<_>>>()?,
            )
        } else {
            None
        };
        let source_ranges = self
            .ranges_of(FrontendId(master.frontend_id))
            .map(|(_, cidr)| cidr)
            .collect();
        Some(FrontendSpec {
            name: key.to_string(),
            kind: FrontendKind::from_flags(master.flags),
            backends,
            local_backends,
            affinity_timeout_s: (master.flags & SVC_FLAG_AFFINITY != 0)
                .then_some(master.affinity_timeout_s),
            drop_when_empty: master.flags & SVC_FLAG_DROP_EMPTY != 0,
            source_ranges,
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

    /// The addresses of the backends programmed (any port and protocol).
    pub fn backend_ips(&self) -> std::collections::HashSet<std::net::Ipv4Addr> {
        self.observed
            .backends
            .values()
            .filter_map(BackendAddr::from_lb4_backend)
            .map(|b| b.addr)
            .collect()
    }

    /// Entries of the maps the reconciler writes, as last read or written.
    pub fn entry_counts(&self) -> EntryCounts {
        EntryCounts {
            services: self.observed.services.len(),
            backends: self.observed.backends.len(),
            members: self.observed.members.len(),
            source_ranges: self.observed.source_ranges.len(),
        }
    }

    /// The maps.
    pub fn maps(&self) -> &M {
        &self.maps
    }

    /// The maps, mutably (tests and the daemon reach the conntrack map).
    pub fn maps_mut(&mut self) -> &mut M {
        &mut self.maps
    }

    /// Frontend ID of a programmed frontend.
    pub fn frontend_id(&self, key: &FrontendKey) -> Option<FrontendId> {
        self.ids.frontend(key)
    }

    /// One reconcile pass. Refuses, before any write, a table that cannot fit.
    /// On `Incomplete`, the frontends that failed keep their previous,
    /// consistent state; run the pass again to retry them.
    pub fn apply(&mut self, desired: &DesiredTable) -> Result<Report> {
        self.check_capacity(desired)?;
        let mut report = Report::default();
        let mut failed = Vec::new();
        if let Err(e) = self.write_node(desired, &mut report) {
            failed.push(("the node entry".to_owned(), e));
        }
        let moved = self.applied.moved_endpoints(&desired.node.local_endpoints);
        // Backends no written frontend wants any more, from this pass's
        // rewrites and removals: the orphan candidates.
        let mut dropped = Vec::new();
        let mut plans = Vec::new();
        for (key, spec) in &desired.frontends {
            if self.applied.is_current(key, spec, &moved) {
                continue;
            }
            match self.plan_frontend(key, spec, desired) {
                Ok(plan) => plans.push((key, spec, plan)),
                Err(e) => {
                    warn!(frontend = %spec.name, key = %key, error = %e, "frontend not written; will retry");
                    self.applied.forget(key, &mut dropped);
                    failed.push((spec.name.clone(), e));
                }
            }
        }
        self.make_in_batches(&mut plans, &mut report);
        for (key, spec, plan) in &plans {
            match self.upsert_frontend(key, spec, plan, &mut report) {
                Ok(()) => self.applied.record(**key, spec, &mut dropped),
                Err(e) => {
                    warn!(frontend = %spec.name, key = %key, error = %e, "frontend not fully written; will retry");
                    self.applied.forget(key, &mut dropped);
                    failed.push((spec.name.clone(), e));
                }
            }
        }
        let stale: Vec<FrontendKey> = self
            .ids
            .frontend_keys()
            .filter(|k| !desired.frontends.contains_key(k))
            .collect();
        for key in stale {
            self.applied.forget(&key, &mut dropped);
            if let Err(e) = self.remove_frontend(&key, &mut report) {
                failed.push((key.to_string(), e));
            }
        }
        if self.sweep_due || !failed.is_empty() {
            let wanted = desired
                .frontends
                .values()
                .flat_map(FrontendSpec::all_backends)
                .copied()
                .collect();
            self.remove_orphans(&wanted, &mut report, &mut failed);
        } else {
            self.remove_dropped(&dropped, &mut report, &mut failed);
        }
        // A failed pass may leave entries no spec accounts for.
        self.sweep_due = !failed.is_empty();
        if !self.defer_flush && !self.departed.memberships.is_empty() {
            match self.maps.flush_udp_flows(&self.departed.memberships) {
                Ok(n) => {
                    report.flushed_flows += n;
                    self.departed = Departures::default();
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
        if let Some(f) = desired
            .frontends
            .values()
            .find(|f| f.slot_count() > crate::model::MAX_SLOTS_PER_FRONTEND)
        {
            return Err(Error::TooManyBackends {
                frontend: f.name.clone(),
                slots: f.slot_count(),
                max: crate::model::MAX_SLOTS_PER_FRONTEND,
            });
        }
        let cap = self.maps.capacity();
        let members = desired.member_count();
        // Distinct backends never outnumber memberships: count them (a sort
        // of every address) only when that bound does not fit.
        let backends = if members <= cap.backends as usize {
            members
        } else {
            desired.backend_count()
        };
        let checks = [
            (
                names::LB4_SERVICES,
                desired.frontends.len() + desired.slot_count(),
                cap.services,
            ),
            (names::LB4_BACKENDS, backends, cap.backends),
            (names::LB4_MEMBERS, members, cap.members),
            (
                names::LB4_SOURCE_RANGES,
                desired.source_range_count(),
                cap.source_ranges,
            ),
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

    fn write_node(&mut self, desired: &DesiredTable, report: &mut Report) -> Result<(), MapError> {
        let want = Node4Config {
            addr_be: desired.node.address.map_or(0, addr_be),
            _pad: 0,
        };
        if self.observed.node != want {
            self.maps.set_node(&want)?;
            self.observed.node = want;
            report.writes += 1;
        }
        Ok(())
    }

    /// Allocates `key`'s IDs and works out what its entries must hold.
    fn plan_frontend(
        &mut self,
        key: &FrontendKey,
        spec: &FrontendSpec,
        desired: &DesiredTable,
    ) -> Result<Plan, MapError> {
        let exhausted = |map| MapError::IdsExhausted { map };
        // A key the IDs do not know has no slots (restore registers every
        // key the services map holds; a key is released only after its
        // entries are deleted), but its new ID may have leftovers.
        let known = self.ids.frontend(key).is_some();
        let frontend_id = self
            .ids
            .frontend_or_allocate(*key)
            .ok_or_else(|| exhausted(proxy_common::map_names::LB4_SERVICES))?;
        let fresh = !known
            && self.members_of(frontend_id).next().is_none()
            && self.ranges_of(frontend_id).next().is_none();
        let local = spec.local_backends.as_deref().unwrap_or_default();
        let mut ids_of = |backends: &[BackendAddr]| -> Result<Vec<BackendId>, MapError> {
            backends
                .iter()
                .map(|b| self.ids.backend_or_allocate(*b))
                .collect::<Option<_>>()
                .ok_or_else(|| exhausted(proxy_common::map_names::LB4_BACKENDS))
        };
        let cluster_ids = ids_of(&spec.backends)?;
        let local_ids = ids_of(local)?;
        let all = cluster_ids.iter().zip(&spec.backends);
        let backends = all
            .chain(local_ids.iter().zip(local))
            .map(|(id, b)| {
                let on_node = desired.node.local_endpoints.contains(&b.addr);
                (*id, b.lb4_backend(on_node))
            })
            .collect();
        let mut ranges: BTreeMap<BackendId, u8> = BTreeMap::new();
        for (ids, bit) in [(&cluster_ids, MEMBER_CLUSTER), (&local_ids, MEMBER_LOCAL)] {
            for id in ids {
                *ranges.entry(*id).or_default() |= bit;
            }
        }
        // Slots 1..=65535: the counts are u16 (`check_capacity` refused more).
        let mut slots = Vec::with_capacity(cluster_ids.len() + local_ids.len());
        for (ids, slot_key) in [
            (
                &cluster_ids,
                FrontendKey::lb4_key as fn(&FrontendKey, u16) -> Lb4Key,
            ),
            (&local_ids, FrontendKey::lb4_local_key),
        ] {
            for (slot, id) in (1..=u16::MAX).zip(ids) {
                let value = Lb4Service {
                    backend_id: id.0,
                    frontend_id: frontend_id.0,
                    ..Lb4Service::default()
                };
                slots.push((slot_key(key, slot), value));
            }
        }
        let mut flags = spec.kind.bits();
        for (on, flag) in [
            (spec.affinity_timeout_s.is_some(), SVC_FLAG_AFFINITY),
            (spec.local_backends.is_some(), SVC_FLAG_EXT_LOCAL),
            (!spec.source_ranges.is_empty(), SVC_FLAG_SOURCE_RANGES),
            (spec.drop_when_empty, SVC_FLAG_DROP_EMPTY),
        ] {
            if on {
                flags |= flag;
            }
        }
        let master = Lb4Service {
            backend_id: 0,
            frontend_id: frontend_id.0,
            affinity_timeout_s: spec.affinity_timeout_s.unwrap_or(0),
            count: cluster_ids.len() as u16,
            local_count: local_ids.len() as u16,
            flags,
            _pad: 0,
        };
        Ok(Plan {
            frontend_id,
            backends,
            ranges,
            slots,
            master,
            made: false,
            fresh,
        })
    }

    /// The member bits a pass writes before the master: a backend moving
    /// between ranges keeps its old bits until the master entry has moved
    /// the ranges too.
    fn member_bits_before(&self, frontend_id: FrontendId, id: BackendId, bits: u8) -> u8 {
        bits | self
            .observed
            .members
            .get(&(frontend_id, id))
            .copied()
            .unwrap_or(0)
    }

    /// Writes the entries every planned frontend needs before its master,
    /// then the masters, each map in one batch (see the module docs: per
    /// frontend this is [`Self::upsert_frontend`]'s order). A batch that
    /// fails stops the rest: [`Self::upsert_frontend`] then writes what is
    /// missing entry by entry, each frontend on its own.
    fn make_in_batches(
        &mut self,
        plans: &mut [(&FrontendKey, &FrontendSpec, Plan)],
        report: &mut Report,
    ) {
        // New entries come before stale ones go, for every frontend at
        // once: batch only what fits beside what is there (a table that
        // changes much of a full map is written frontend by frontend).
        let mut backends: HashMap<BackendId, Lb4Backend> = HashMap::new();
        let (mut members, mut slots) = (Vec::new(), Vec::new());
        let (mut new_backends, mut new_members, mut new_slots) = (0, 0, 0);
        for (_, _, plan) in plans.iter() {
            for (id, b) in &plan.backends {
                match self.observed.backends.get(id) {
                    Some(old) if old == b => {}
                    old => {
                        new_backends += usize::from(old.is_none() && !backends.contains_key(id));
                        backends.insert(*id, *b);
                    }
                }
            }
            // A fresh frontend has no memberships or slots to look up.
            let o = &self.observed;
            for (id, bits) in &plan.ranges {
                let key = (plan.frontend_id, *id);
                let old = (!plan.fresh).then(|| o.members.get(&key)).flatten();
                // `member_bits_before`: old bits stay until the master moves.
                let bits = bits | old.copied().unwrap_or(0);
                if old != Some(&bits) {
                    new_members += usize::from(old.is_none());
                    let key = Lb4MemberKey {
                        backend_id: id.0,
                        frontend_id: plan.frontend_id.0,
                    };
                    members.push((key, bits));
                }
            }
            for (k, v) in &plan.slots {
                let old = (!plan.fresh).then(|| o.services.get(k)).flatten();
                if old != Some(v) {
                    new_slots += usize::from(old.is_none());
                    slots.push((*k, *v));
                }
            }
        }
        let cap = self.maps.capacity();
        let o = &self.observed;
        let fits = o.backends.len() + new_backends <= cap.backends as usize
            && o.members.len() + new_members <= cap.members as usize
            && o.services.len() + new_slots + plans.len() <= cap.services as usize;
        if !fits {
            return;
        }
        let backends: Vec<_> = backends.into_iter().collect();
        let done = self.maps.update_backends(&backends);
        let o = &mut self.observed;
        if !record(done, &backends, |(id, b)| o.backends.insert(id, b), report) {
            return;
        }
        let done = self.maps.update_members(&members);
        let o = &mut self.observed;
        let member = |(k, bits): (Lb4MemberKey, u8)| {
            let key = (FrontendId(k.frontend_id), BackendId(k.backend_id));
            o.members.insert(key, bits)
        };
        if !record(done, &members, member, report) {
            return;
        }
        let done = self.maps.update_services(&slots);
        let o = &mut self.observed;
        if !record(done, &slots, |(k, v)| o.services.insert(k, v), report) {
            return;
        }
        // A frontend whose source ranges are not all in place yet gets its
        // master from `upsert_frontend`, after them.
        let mut masters = Vec::new();
        let mut ready = Vec::new();
        for (i, (key, spec, plan)) in plans.iter().enumerate() {
            let ranges_in_place = spec.source_ranges.iter().all(|cidr| {
                self.observed
                    .source_ranges
                    .contains(&(plan.frontend_id, *cidr))
            });
            if !ranges_in_place {
                continue;
            }
            let k = key.lb4_key(MASTER_SLOT);
            if self.observed.services.get(&k) != Some(&plan.master) {
                masters.push((k, plan.master));
            }
            ready.push(i);
        }
        let done = self.maps.update_services(&masters);
        let o = &mut self.observed;
        if !record(done, &masters, |(k, v)| o.services.insert(k, v), report) {
            return;
        }
        for i in ready {
            plans[i].2.made = true;
        }
    }

    /// Makes `key`'s entries hold `plan`: what [`Self::make_in_batches`] did
    /// not write, entry by entry, then the stale slots, memberships and
    /// source ranges go (break only after make).
    fn upsert_frontend(
        &mut self,
        key: &FrontendKey,
        spec: &FrontendSpec,
        plan: &Plan,
        report: &mut Report,
    ) -> Result<(), MapError> {
        let frontend_id = plan.frontend_id;
        if !plan.made {
            for (id, want) in &plan.backends {
                self.write_backend(*id, *want, report)?;
            }
            for (id, bits) in &plan.ranges {
                let bits = self.member_bits_before(frontend_id, *id, *bits);
                self.write_member(frontend_id, *id, bits, report)?;
            }
            for (slot_key, value) in &plan.slots {
                self.write_service(*slot_key, *value, report)?;
            }
            for cidr in &spec.source_ranges {
                self.write_source_range((frontend_id, *cidr), report)?;
            }
            self.write_service(key.lb4_key(MASTER_SLOT), plan.master, report)?;
        }
        if plan.fresh {
            return Ok(());
        }

        // Break only after make: stale slots, memberships and ranges go last.
        for (id, bits) in &plan.ranges {
            self.write_member(frontend_id, *id, *bits, report)?;
        }
        let (cluster, local) = (plan.master.count, plan.master.local_count);
        let stale_slots: Vec<Lb4Key> = self
            .slots_of(key)
            .filter(|k| {
                let wanted = if k.scope == SLOT_SCOPE_LOCAL {
                    local
                } else {
                    cluster
                };
                k.backend_slot > wanted
            })
            .collect();
        for k in stale_slots {
            self.delete_service(&k, report)?;
        }
        self.delete_members(
            frontend_id,
            |backend_id| !plan.ranges.contains_key(&backend_id),
            report,
        )?;
        let stale_ranges: Vec<SourceRange> = self
            .ranges_of(frontend_id)
            .filter(|(_, cidr)| !spec.source_ranges.contains(cidr))
            .collect();
        for r in stale_ranges {
            self.delete_source_range(&r, report)?;
        }
        Ok(())
    }

    fn remove_frontend(&mut self, key: &FrontendKey, report: &mut Report) -> Result<(), MapError> {
        // The master goes first: the frontend disappears as a whole.
        self.delete_service(&key.lb4_key(MASTER_SLOT), report)?;
        let slots: Vec<Lb4Key> = self.slots_of(key).collect();
        for k in slots {
            self.delete_service(&k, report)?;
        }
        if let Some(frontend_id) = self.ids.frontend(key) {
            self.delete_members(frontend_id, |_| true, report)?;
            let ranges: Vec<SourceRange> = self.ranges_of(frontend_id).collect();
            for r in ranges {
                self.delete_source_range(&r, report)?;
            }
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
        let mut used: BTreeSet<BackendId> = self
            .observed
            .services
            .iter()
            .filter(|(k, _)| k.backend_slot != MASTER_SLOT)
            .map(|(_, v)| BackendId(v.backend_id))
            .collect();
        used.extend(wanted.iter().filter_map(|b| self.ids.backend(b)));
        let orphans: Vec<BackendId> = self
            .observed
            .backends
            .keys()
            .filter(|id| !used.contains(id))
            .copied()
            .collect();
        for id in orphans {
            if let Err(e) = self.delete_backend(id, report) {
                failed.push((id.to_string(), e));
            }
        }
        // IDs allocated for frontends that failed before any write.
        self.ids.forget_unwritten(&self.observed.backends);
    }

    /// Deletes the `dropped` backends that no written frontend wants again.
    /// Only after a pass in which every frontend was written: then the
    /// slots name exactly the backends the written frontends want.
    fn remove_dropped(
        &mut self,
        dropped: &[BackendAddr],
        report: &mut Report,
        failed: &mut Vec<(String, MapError)>,
    ) {
        for addr in dropped {
            let Some(id) = self.ids.backend(addr) else {
                continue;
            };
            if self.applied.wants(addr) || !self.observed.backends.contains_key(&id) {
                continue;
            }
            if let Err(e) = self.delete_backend(id, report) {
                failed.push((id.to_string(), e));
            }
        }
    }

    /// The backend slots (both scopes) the maps hold for `key`.
    fn slots_of<'a>(&'a self, key: &FrontendKey) -> impl Iterator<Item = Lb4Key> + 'a {
        let master = key.lb4_key(MASTER_SLOT);
        // Keys order by address, port, slot, protocol, scope.
        let first = key.lb4_key(1);
        let last = Lb4Key {
            proto: u8::MAX,
            scope: u8::MAX,
            ..key.lb4_key(u16::MAX)
        };
        self.observed
            .services
            .range(first..=last)
            .map(|(k, _)| *k)
            .filter(move |k| {
                Lb4Key {
                    backend_slot: MASTER_SLOT,
                    scope: SLOT_SCOPE_CLUSTER,
                    ..*k
                } == master
            })
    }

    /// The backends the memberships map holds for `frontend_id`.
    fn members_of(&self, frontend_id: FrontendId) -> impl Iterator<Item = BackendId> + '_ {
        self.observed
            .members
            .range((frontend_id, BackendId(0))..=(frontend_id, BackendId(u32::MAX)))
            .map(|((_, backend_id), _)| *backend_id)
    }

    fn ranges_of(&self, frontend_id: FrontendId) -> impl Iterator<Item = SourceRange> + '_ {
        let lowest = Ipv4Cidr {
            addr: std::net::Ipv4Addr::UNSPECIFIED,
            prefix: 0,
        };
        self.observed
            .source_ranges
            .range((frontend_id, lowest)..)
            .take_while(move |(id, _)| *id == frontend_id)
            .copied()
    }

    fn delete_backend(&mut self, id: BackendId, report: &mut Report) -> Result<(), MapError> {
        self.maps.delete_backend(id)?;
        self.observed.backends.remove(&id);
        self.ids.release_backend(id);
        report.deletes += 1;
        Ok(())
    }

    fn write_backend(
        &mut self,
        id: BackendId,
        want: Lb4Backend,
        report: &mut Report,
    ) -> Result<(), MapError> {
        if self.observed.backends.get(&id) != Some(&want) {
            self.maps.update_backend(id, &want)?;
            self.observed.backends.insert(id, want);
            report.writes += 1;
        }
        Ok(())
    }

    /// Deletes the memberships of frontend `frontend_id` whose backend
    /// `doomed` selects, remembering them for the UDP conntrack flush and
    /// the daemon's socket cleanup.
    fn delete_members(
        &mut self,
        frontend_id: FrontendId,
        doomed: impl Fn(BackendId) -> bool,
        report: &mut Report,
    ) -> Result<(), MapError> {
        let members: Vec<BackendId> = self
            .members_of(frontend_id)
            .filter(|b| doomed(*b))
            .collect();
        for backend_id in members {
            self.maps.delete_member(&Lb4MemberKey {
                backend_id: backend_id.0,
                frontend_id: frontend_id.0,
            })?;
            self.observed.members.remove(&(frontend_id, backend_id));
            let addr = self
                .observed
                .backends
                .get(&backend_id)
                .and_then(BackendAddr::from_lb4_backend);
            // Only UDP flows are flushed (kube-proxy clears conntrack for
            // UDP only; TCP flows end on their own): a TCP departure costs
            // no conntrack walk. A backend of unknown protocol is flushed.
            let udp = addr.is_none_or(|a| a.proto == crate::model::Protocol::Udp);
            if udp {
                self.departed.memberships.insert((frontend_id, backend_id));
            }
            if let Some(addr) = addr.filter(|_| udp)
                && self.defer_flush
            {
                self.departed.udp_backends.insert((frontend_id, addr));
            }
            report.deletes += 1;
        }
        Ok(())
    }

    fn write_member(
        &mut self,
        frontend_id: FrontendId,
        backend_id: BackendId,
        bits: u8,
        report: &mut Report,
    ) -> Result<(), MapError> {
        let key = (frontend_id, backend_id);
        if self.observed.members.get(&key) != Some(&bits) {
            let m = Lb4MemberKey {
                backend_id: backend_id.0,
                frontend_id: frontend_id.0,
            };
            self.maps.update_member(&m, bits)?;
            self.observed.members.insert(key, bits);
            report.writes += 1;
        }
        Ok(())
    }

    fn write_source_range(&mut self, r: SourceRange, report: &mut Report) -> Result<(), MapError> {
        if !self.observed.source_ranges.contains(&r) {
            self.maps.update_source_range(&r)?;
            self.observed.source_ranges.insert(r);
            report.writes += 1;
        }
        Ok(())
    }

    fn delete_source_range(
        &mut self,
        r: &SourceRange,
        report: &mut Report,
    ) -> Result<(), MapError> {
        if self.observed.source_ranges.contains(r) {
            self.maps.delete_source_range(r)?;
            self.observed.source_ranges.remove(r);
            report.deletes += 1;
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
