//! Frontend and backend ID allocation, rebuilt from the maps. IDs are
//! taken from above the largest in use, and from gaps once the top is
//! reached: whatever the pinned maps hold (a foreign or corrupt entry with
//! ID `u32::MAX` included), allocation never panics.
use std::collections::{BTreeMap, BTreeSet, HashMap};

use proxy_common::lb::{Lb4Backend, Lb4Key, Lb4Service};

use crate::model::{BackendAddr, BackendId, FrontendId, FrontendKey};

#[derive(Debug, Default)]
pub(super) struct Ids {
    frontends: BTreeMap<FrontendKey, FrontendId>,
    /// Every frontend ID the maps hold, foreign entries' included.
    frontend_ids: BTreeSet<u32>,
    backends: HashMap<BackendAddr, BackendId>,
    backend_addrs: HashMap<BackendId, BackendAddr>,
    /// Every backend ID the maps hold.
    backend_ids: BTreeSet<u32>,
    next_frontend: u32,
    next_backend: u32,
}

/// The first ID after `last` that `taken` does not hold, wrapping to 1
/// past `u32::MAX`; `None` when every non-zero ID is taken.
fn free_id(taken: &BTreeSet<u32>, last: u32) -> Option<u32> {
    let start = last.checked_add(1).unwrap_or(1).max(1);
    let first_gap = |from: u32, to: u32| {
        let mut want = from;
        for id in taken.range(from..=to) {
            if *id != want {
                return Some(want);
            }
            want = want.checked_add(1)?;
        }
        (want <= to).then_some(want)
    };
    first_gap(start, u32::MAX).or_else(|| first_gap(1, start.saturating_sub(1)))
}

impl Ids {
    /// IDs as the maps hold them. A frontend seen only through slots (left
    /// half-written by a crashed writer) is known too, so it gets cleaned up.
    pub(super) fn restore(
        services: &BTreeMap<Lb4Key, Lb4Service>,
        backends: &HashMap<BackendId, Lb4Backend>,
    ) -> Self {
        let mut ids = Self::default();
        for (k, v) in services {
            if let Some(key) = FrontendKey::from_lb4_key(k) {
                ids.frontends
                    .entry(key)
                    .or_insert(FrontendId(v.frontend_id));
            }
            ids.frontend_ids.insert(v.frontend_id);
            ids.next_frontend = ids.next_frontend.max(v.frontend_id);
        }
        for (id, b) in backends {
            if let Some(addr) = BackendAddr::from_lb4_backend(b) {
                // Two entries for one address (a foreign writer): the
                // lowest ID is the address's, whatever the dump's order.
                let adopted = ids.backends.entry(addr).or_insert(*id);
                *adopted = (*adopted).min(*id);
                ids.backend_addrs.insert(*id, addr);
            }
            ids.backend_ids.insert(id.0);
            ids.next_backend = ids.next_backend.max(id.0);
        }
        ids
    }

    pub(super) fn frontend(&self, key: &FrontendKey) -> Option<FrontendId> {
        self.frontends.get(key).copied()
    }

    pub(super) fn backend(&self, addr: &BackendAddr) -> Option<BackendId> {
        self.backends.get(addr).copied()
    }

    pub(super) fn frontend_keys(&self) -> impl Iterator<Item = FrontendKey> + '_ {
        self.frontends.keys().copied()
    }

    /// `None` when no ID is free.
    pub(super) fn frontend_or_allocate(&mut self, key: FrontendKey) -> Option<FrontendId> {
        if let Some(id) = self.frontends.get(&key) {
            return Some(*id);
        }
        let id = free_id(&self.frontend_ids, self.next_frontend)?;
        self.next_frontend = id;
        self.frontend_ids.insert(id);
        self.frontends.insert(key, FrontendId(id));
        Some(FrontendId(id))
    }

    /// `None` when no ID is free.
    pub(super) fn backend_or_allocate(&mut self, addr: BackendAddr) -> Option<BackendId> {
        if let Some(id) = self.backends.get(&addr) {
            return Some(*id);
        }
        let id = BackendId(free_id(&self.backend_ids, self.next_backend)?);
        self.next_backend = id.0;
        self.backend_ids.insert(id.0);
        self.backends.insert(addr, id);
        self.backend_addrs.insert(id, addr);
        Some(id)
    }

    pub(super) fn release_frontend(&mut self, key: &FrontendKey) {
        if let Some(id) = self.frontends.remove(key) {
            self.frontend_ids.remove(&id.0);
        }
    }

    pub(super) fn release_backend(&mut self, id: BackendId) {
        self.backend_ids.remove(&id.0);
        if let Some(addr) = self.backend_addrs.remove(&id)
            && self.backends.get(&addr) == Some(&id)
        {
            self.backends.remove(&addr);
        }
    }

    /// Drops backend IDs allocated in a pass whose writes failed before the
    /// backend reached the map.
    pub(super) fn forget_unwritten(&mut self, written: &HashMap<BackendId, Lb4Backend>) {
        let unwritten: Vec<BackendId> = self
            .backend_addrs
            .keys()
            .filter(|id| !written.contains_key(id))
            .copied()
            .collect();
        for id in unwritten {
            self.release_backend(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::free_id;

    #[test]
    fn free_ids_come_from_above_then_from_gaps() {
        let taken = |v: &[u32]| v.iter().copied().collect();
        assert_eq!(free_id(&taken(&[]), 0), Some(1));
        assert_eq!(free_id(&taken(&[1, 2, 3]), 3), Some(4));
        assert_eq!(free_id(&taken(&[1, 2, 4, u32::MAX]), u32::MAX), Some(3));
        assert_eq!(free_id(&taken(&[u32::MAX]), u32::MAX), Some(1));
        assert_eq!(
            free_id(&taken(&[5, 6]), 4),
            Some(7),
            "4 is the last one handed out"
        );
    }
}
