//! In-memory [`LbMaps`] for tests, and a wrapper that injects failures.
use std::collections::{BTreeMap, BTreeSet};

use proxy_common::{
    config::Node4Config,
    lb::{
        Lb4Backend, Lb4Key, Lb4MemberKey, Lb4Service, MASTER_SLOT, MEMBER_CLUSTER, MEMBER_LOCAL,
        SLOT_SCOPE_CLUSTER, SLOT_SCOPE_LOCAL, SVC_FLAG_SOURCE_RANGES,
    },
    map_names as names,
};

use super::{Capacity, LbMaps, MapError, MapSizes, Result, SourceRange};
use crate::model::{BackendId, FrontendId};

/// Maps held in memory, with the kernel's capacity checks.
#[derive(Clone, Debug, Default)]
pub struct FakeLbMaps {
    /// `SY_LB4_SVC_V2`: masters and slots.
    pub services: BTreeMap<Lb4Key, Lb4Service>,
    /// `SY_LB4_BE`.
    pub backends: BTreeMap<BackendId, Lb4Backend>,
    /// `SY_LB4_MEMBER`: `MEMBER_*` bits per (frontend, backend).
    pub members: BTreeMap<Lb4MemberKey, u8>,
    /// `SY_LB4_SRCRANGE`.
    pub source_ranges: BTreeSet<SourceRange>,
    /// `SY_NODE4`.
    pub node: Node4Config,
    /// Capacities, enforced as the kernel would (`E2BIG`).
    pub sizes: MapSizes,
    /// Every (frontend, backend) pair whose UDP flows were flushed.
    pub flushed: BTreeSet<(FrontendId, BackendId)>,
    /// Flushes that fail (a conntrack scan cut short) before one succeeds.
    pub failing_flushes: u32,
}

/// A state the datapath could observe that would misroute traffic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inconsistency(pub String);

impl FakeLbMaps {
    /// Empty maps of `sizes`.
    pub fn new(sizes: MapSizes) -> Self {
        Self {
            sizes,
            ..Self::default()
        }
    }

    /// Checks what the eBPF programs rely on: every visible frontend (a
    /// master entry) has cluster slots `1..=count` and local slots
    /// `1..=local_count`, each naming an
    /// existing backend with a membership entry, and source ranges when its
    /// flags say it is restricted. Anything else is a half-written frontend.
    pub fn check_consistent(&self) -> Result<(), Inconsistency> {
        for (key, master) in self
            .services
            .iter()
            .filter(|(k, _)| k.backend_slot == MASTER_SLOT)
        {
            if master.flags & SVC_FLAG_SOURCE_RANGES != 0
                && !self
                    .source_ranges
                    .iter()
                    .any(|(id, _)| id.0 == master.frontend_id)
            {
                return Err(Inconsistency(format!(
                    "{key:?} is restricted to source ranges but has none"
                )));
            }
            let cluster = (1..=master.count).map(|s| (SLOT_SCOPE_CLUSTER, s, MEMBER_CLUSTER));
            let local = (1..=master.local_count).map(|s| (SLOT_SCOPE_LOCAL, s, MEMBER_LOCAL));
            for (scope, slot, range) in cluster.chain(local) {
                let slot_key = Lb4Key {
                    backend_slot: slot,
                    scope,
                    ..*key
                };
                let Some(s) = self.services.get(&slot_key) else {
                    return Err(Inconsistency(format!(
                        "{key:?} count {}+{} but slot {slot} of scope {scope} missing",
                        master.count, master.local_count
                    )));
                };
                if !self.backends.contains_key(&BackendId(s.backend_id)) {
                    return Err(Inconsistency(format!(
                        "{key:?} slot {slot} names missing backend {}",
                        s.backend_id
                    )));
                }
                let m = Lb4MemberKey {
                    backend_id: s.backend_id,
                    frontend_id: master.frontend_id,
                };
                if self.members.get(&m).is_none_or(|bits| bits & range == 0) {
                    return Err(Inconsistency(format!(
                        "{key:?} slot {slot} has no membership entry for its range"
                    )));
                }
            }
        }
        Ok(())
    }

    fn full(map: &'static str, key: String) -> MapError {
        MapError::Write {
            op: "update",
            map,
            key,
            source: std::io::Error::from_raw_os_error(libc::E2BIG),
        }
    }
}

impl LbMaps for FakeLbMaps {
    fn update_backend(&mut self, id: BackendId, backend: &Lb4Backend) -> Result<()> {
        if !self.backends.contains_key(&id) && self.backends.len() >= self.sizes.backends as usize {
            return Err(Self::full(names::LB4_BACKENDS, id.0.to_string()));
        }
        self.backends.insert(id, *backend);
        Ok(())
    }

    fn delete_backend(&mut self, id: BackendId) -> Result<()> {
        self.backends.remove(&id);
        Ok(())
    }

    fn update_service(&mut self, key: &Lb4Key, value: &Lb4Service) -> Result<()> {
        let cap = self.sizes.capacity().services as usize;
        if !self.services.contains_key(key) && self.services.len() >= cap {
            return Err(Self::full(names::LB4_SERVICES, format!("{key:?}")));
        }
        self.services.insert(*key, *value);
        Ok(())
    }

    fn delete_service(&mut self, key: &Lb4Key) -> Result<()> {
        self.services.remove(key);
        Ok(())
    }

    fn update_member(&mut self, key: &Lb4MemberKey, ranges: u8) -> Result<()> {
        self.members.insert(*key, ranges);
        Ok(())
    }

    fn delete_member(&mut self, key: &Lb4MemberKey) -> Result<()> {
        self.members.remove(key);
        Ok(())
    }

    fn update_source_range(&mut self, range: &SourceRange) -> Result<()> {
        if !self.source_ranges.contains(range)
            && self.source_ranges.len() >= self.sizes.source_ranges as usize
        {
            return Err(Self::full(names::LB4_SOURCE_RANGES, format!("{range:?}")));
        }
        self.source_ranges.insert(*range);
        Ok(())
    }

    fn delete_source_range(&mut self, range: &SourceRange) -> Result<()> {
        self.source_ranges.remove(range);
        Ok(())
    }

    fn set_node(&mut self, node: &Node4Config) -> Result<()> {
        self.node = *node;
        Ok(())
    }

    fn flush_udp_flows(&mut self, pairs: &BTreeSet<(FrontendId, BackendId)>) -> Result<usize> {
        if self.failing_flushes > 0 {
            self.failing_flushes -= 1;
            return Err(MapError::Read {
                map: names::CT4,
                source: std::io::Error::from_raw_os_error(libc::EINTR),
            });
        }
        self.flushed.extend(pairs.iter().copied());
        Ok(0)
    }

    fn dump_services(&self) -> Result<Vec<(Lb4Key, Lb4Service)>> {
        Ok(self.services.iter().map(|(k, v)| (*k, *v)).collect())
    }

    fn dump_backends(&self) -> Result<Vec<(BackendId, Lb4Backend)>> {
        Ok(self.backends.iter().map(|(k, v)| (*k, *v)).collect())
    }

    fn dump_members(&self) -> Result<Vec<(Lb4MemberKey, u8)>> {
        Ok(self.members.iter().map(|(k, v)| (*k, *v)).collect())
    }

    fn dump_source_ranges(&self) -> Result<Vec<SourceRange>> {
        Ok(self.source_ranges.iter().copied().collect())
    }

    fn node(&self) -> Result<Node4Config> {
        Ok(self.node)
    }

    fn capacity(&self) -> Capacity {
        self.sizes.capacity()
    }
}

/// Wraps [`FakeLbMaps`], failing chosen writes and checking after every
/// successful write that no half-written frontend is visible.
pub struct FaultyLbMaps {
    /// The maps written through.
    pub inner: FakeLbMaps,
    /// Decides, for the n-th write (0-based), whether it fails.
    fail: Box<dyn FnMut(u64) -> bool + Send>,
    writes: u64,
    /// Writes made to fail so far.
    pub failures: u64,
    /// The first inconsistency seen after any write, if one was.
    pub violation: Option<Inconsistency>,
}

impl std::fmt::Debug for FaultyLbMaps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultyLbMaps")
            .field("writes", &self.writes)
            .field("failures", &self.failures)
            .field("violation", &self.violation)
            .finish_non_exhaustive()
    }
}

impl FaultyLbMaps {
    /// Wraps `inner`; `fail(n)` says whether the n-th write (0-based) fails.
    pub fn new(inner: FakeLbMaps, fail: impl FnMut(u64) -> bool + Send + 'static) -> Self {
        Self {
            inner,
            fail: Box::new(fail),
            writes: 0,
            failures: 0,
            violation: None,
        }
    }

    fn write(
        &mut self,
        map: &'static str,
        op: &'static str,
        f: impl FnOnce(&mut FakeLbMaps) -> Result<()>,
    ) -> Result<()> {
        let n = self.writes;
        self.writes += 1;
        if (self.fail)(n) {
            self.failures += 1;
            return Err(MapError::Write {
                op,
                map,
                key: format!("(injected failure of write {n})"),
                source: std::io::Error::from_raw_os_error(libc::ENOMEM),
            });
        }
        f(&mut self.inner)?;
        if self.violation.is_none() {
            self.violation = self.inner.check_consistent().err();
        }
        Ok(())
    }
}

impl LbMaps for FaultyLbMaps {
    fn update_backend(&mut self, id: BackendId, b: &Lb4Backend) -> Result<()> {
        self.write(names::LB4_BACKENDS, "update", |m| m.update_backend(id, b))
    }
    fn delete_backend(&mut self, id: BackendId) -> Result<()> {
        self.write(names::LB4_BACKENDS, "delete", |m| m.delete_backend(id))
    }
    fn update_service(&mut self, k: &Lb4Key, v: &Lb4Service) -> Result<()> {
        self.write(names::LB4_SERVICES, "update", |m| m.update_service(k, v))
    }
    fn delete_service(&mut self, k: &Lb4Key) -> Result<()> {
        self.write(names::LB4_SERVICES, "delete", |m| m.delete_service(k))
    }
    fn update_member(&mut self, k: &Lb4MemberKey, ranges: u8) -> Result<()> {
        self.write(names::LB4_MEMBERS, "update", |m| m.update_member(k, ranges))
    }
    fn delete_member(&mut self, k: &Lb4MemberKey) -> Result<()> {
        self.write(names::LB4_MEMBERS, "delete", |m| m.delete_member(k))
    }
    fn update_source_range(&mut self, r: &SourceRange) -> Result<()> {
        self.write(names::LB4_SOURCE_RANGES, "update", |m| {
            m.update_source_range(r)
        })
    }
    fn delete_source_range(&mut self, r: &SourceRange) -> Result<()> {
        self.write(names::LB4_SOURCE_RANGES, "delete", |m| {
            m.delete_source_range(r)
        })
    }
    fn set_node(&mut self, n: &Node4Config) -> Result<()> {
        self.write(names::NODE4, "update", |m| m.set_node(n))
    }
    fn flush_udp_flows(&mut self, pairs: &BTreeSet<(FrontendId, BackendId)>) -> Result<usize> {
        let mut n = 0;
        self.write(names::CT4, "flush", |m| {
            n = m.flush_udp_flows(pairs)?;
            Ok(())
        })?;
        Ok(n)
    }

    fn dump_services(&self) -> Result<Vec<(Lb4Key, Lb4Service)>> {
        self.inner.dump_services()
    }
    fn dump_backends(&self) -> Result<Vec<(BackendId, Lb4Backend)>> {
        self.inner.dump_backends()
    }
    fn dump_members(&self) -> Result<Vec<(Lb4MemberKey, u8)>> {
        self.inner.dump_members()
    }
    fn dump_source_ranges(&self) -> Result<Vec<SourceRange>> {
        self.inner.dump_source_ranges()
    }
    fn node(&self) -> Result<Node4Config> {
        self.inner.node()
    }
    fn capacity(&self) -> Capacity {
        self.inner.capacity()
    }
}
