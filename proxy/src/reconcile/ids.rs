//! Frontend (ID) and backend ID allocation, rebuilt from the maps.
use std::collections::BTreeMap;

use proxy_common::lb::{Lb4Backend, Lb4Key, Lb4Service};

use crate::model::{BackendAddr, FrontendKey};

#[derive(Debug, Default)]
pub(super) struct Ids {
    frontends: BTreeMap<FrontendKey, u32>,
    backends: BTreeMap<BackendAddr, u32>,
    backend_addrs: BTreeMap<u32, BackendAddr>,
    next_frontend: u32,
    next_backend: u32,
}

impl Ids {
    /// IDs as the maps hold them. A frontend seen only through slots (left
    /// half-written by a crashed writer) is known too, so it gets cleaned up.
    pub(super) fn restore(
        services: &BTreeMap<Lb4Key, Lb4Service>,
        backends: &BTreeMap<u32, Lb4Backend>,
    ) -> Self {
        let mut ids = Self::default();
        for (k, v) in services {
            if let Some(key) = FrontendKey::from_lb4_key(k) {
                ids.frontends.entry(key).or_insert(v.frontend_id);
            }
            ids.next_frontend = ids.next_frontend.max(v.frontend_id);
        }
        for (id, b) in backends {
            if let Some(addr) = BackendAddr::from_lb4_backend(b) {
                ids.backends.entry(addr).or_insert(*id);
                ids.backend_addrs.insert(*id, addr);
            }
            ids.next_backend = ids.next_backend.max(*id);
        }
        ids
    }

    pub(super) fn frontend(&self, key: &FrontendKey) -> Option<u32> {
        self.frontends.get(key).copied()
    }

    pub(super) fn backend(&self, addr: &BackendAddr) -> Option<u32> {
        self.backends.get(addr).copied()
    }

    pub(super) fn frontend_keys(&self) -> impl Iterator<Item = FrontendKey> + '_ {
        self.frontends.keys().copied()
    }

    pub(super) fn frontend_or_allocate(&mut self, key: FrontendKey) -> u32 {
        let next = &mut self.next_frontend;
        *self.frontends.entry(key).or_insert_with(|| {
            *next = next.checked_add(1).expect("u32 frontend IDs exhausted");
            *next
        })
    }

    pub(super) fn backend_or_allocate(&mut self, addr: BackendAddr) -> u32 {
        if let Some(id) = self.backends.get(&addr) {
            return *id;
        }
        self.next_backend = self
            .next_backend
            .checked_add(1)
            .expect("u32 backend IDs exhausted");
        let id = self.next_backend;
        self.backends.insert(addr, id);
        self.backend_addrs.insert(id, addr);
        id
    }

    pub(super) fn release_frontend(&mut self, key: &FrontendKey) {
        self.frontends.remove(key);
    }

    pub(super) fn release_backend(&mut self, id: u32) {
        if let Some(addr) = self.backend_addrs.remove(&id)
            && self.backends.get(&addr) == Some(&id)
        {
            self.backends.remove(&addr);
        }
    }

    /// Drops backend IDs allocated in a pass whose writes failed before the
    /// backend reached the map.
    pub(super) fn forget_unwritten(&mut self, written: &BTreeMap<u32, Lb4Backend>) {
        let unwritten: Vec<u32> = self
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
