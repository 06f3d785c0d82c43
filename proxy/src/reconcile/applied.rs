//! What each frontend was last written from, so that a pass skips the
//! frontends whose entries cannot have changed and finds orphaned backends
//! without walking the whole table.
//!
//! A frontend's entries are a function of its [`FrontendSpec`] and of which
//! of its backends run on this node (`NodeDataplane::local_endpoints`, the
//! `on_node` bit of their backend entries); its IDs are fixed while it is
//! programmed. So a frontend written completely from the same spec, none of
//! whose backends changed sides, needs no planning and no writes.
use std::{
    collections::{BTreeSet, HashMap},
    net::Ipv4Addr,
};

use crate::model::{BackendAddr, FrontendKey, FrontendSpec};

/// Specs of the frontends last written completely, and how many of them
/// want each backend (`FrontendSpec::all_backends`, once per frontend).
#[derive(Debug, Default)]
pub(super) struct Applied {
    specs: HashMap<FrontendKey, FrontendSpec>,
    wanted_by: HashMap<BackendAddr, u32>,
    /// The node's endpoints as of the last pass.
    local_endpoints: BTreeSet<Ipv4Addr>,
}

impl Applied {
    /// Forgets everything: every frontend is planned again (after the maps
    /// were re-read, which may have found them changed behind our back).
    pub(super) fn clear(&mut self) {
        *self = Self::default();
    }

    /// Records the node's endpoints for this pass and returns the addresses
    /// that changed sides since the last one (their backend entries change).
    pub(super) fn moved_endpoints(&mut self, now: &BTreeSet<Ipv4Addr>) -> BTreeSet<Ipv4Addr> {
        let moved = self
            .local_endpoints
            .symmetric_difference(now)
            .copied()
            .collect();
        self.local_endpoints.clone_from(now);
        moved
    }

    /// Whether `key` was last written completely from `spec`, and none of its
    /// backends is among `moved` endpoints.
    pub(super) fn is_current(
        &self,
        key: &FrontendKey,
        spec: &FrontendSpec,
        moved: &BTreeSet<Ipv4Addr>,
    ) -> bool {
        self.specs.get(key) == Some(spec)
            && (moved.is_empty() || !spec.all_backends().any(|b| moved.contains(&b.addr)))
    }

    /// Notes that `key` now holds `spec` completely; `dropped` receives the
    /// backends no recorded frontend wants any more.
    pub(super) fn record(
        &mut self,
        key: FrontendKey,
        spec: &FrontendSpec,
        dropped: &mut Vec<BackendAddr>,
    ) {
        for b in spec.all_backends() {
            *self.wanted_by.entry(*b).or_default() += 1;
        }
        if let Some(old) = self.specs.insert(key, spec.clone()) {
            self.unwant(&old, dropped);
        }
    }

    /// Notes that `key` is gone or not completely written; `dropped` as for
    /// [`Self::record`].
    pub(super) fn forget(&mut self, key: &FrontendKey, dropped: &mut Vec<BackendAddr>) {
        if let Some(old) = self.specs.remove(key) {
            self.unwant(&old, dropped);
        }
    }

    /// Whether a recorded frontend wants `addr`.
    pub(super) fn wants(&self, addr: &BackendAddr) -> bool {
        self.wanted_by.contains_key(addr)
    }

    fn unwant(&mut self, old: &FrontendSpec, dropped: &mut Vec<BackendAddr>) {
        for b in old.all_backends() {
            if let Some(n) = self.wanted_by.get_mut(b) {
                *n -= 1;
                if *n == 0 {
                    self.wanted_by.remove(b);
                    dropped.push(*b);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{FrontendKind, Protocol};

    fn key(port: u16) -> FrontendKey {
        FrontendKey {
            addr: Ipv4Addr::new(10, 96, 0, 1),
            port,
            proto: Protocol::Tcp,
        }
    }

    fn spec(backends: &[u8]) -> FrontendSpec {
        FrontendSpec {
            name: "default/web:http".into(),
            kind: FrontendKind::ClusterIp,
            backends: backends
                .iter()
                .map(|b| BackendAddr {
                    addr: Ipv4Addr::new(10, 1, 0, *b),
                    port: 8080,
                    proto: Protocol::Tcp,
                })
                .collect(),
            ..FrontendSpec::default()
        }
    }

    #[test]
    fn a_frontend_is_current_only_with_the_same_spec_and_no_backend_moved() {
        let mut a = Applied::default();
        let mut dropped = Vec::new();
        a.record(key(80), &spec(&[1, 2]), &mut dropped);
        let none = BTreeSet::new();
        assert!(a.is_current(&key(80), &spec(&[1, 2]), &none));
        assert!(!a.is_current(&key(80), &spec(&[1, 3]), &none));
        assert!(!a.is_current(&key(81), &spec(&[1, 2]), &none));
        let moved = BTreeSet::from([Ipv4Addr::new(10, 1, 0, 2)]);
        assert!(!a.is_current(&key(80), &spec(&[1, 2]), &moved));
        let elsewhere = BTreeSet::from([Ipv4Addr::new(10, 1, 0, 9)]);
        assert!(a.is_current(&key(80), &spec(&[1, 2]), &elsewhere));
    }

    #[test]
    fn a_backend_is_dropped_when_the_last_frontend_wanting_it_lets_go() {
        let mut a = Applied::default();
        let mut dropped = Vec::new();
        a.record(key(80), &spec(&[1, 2]), &mut dropped);
        a.record(key(81), &spec(&[2, 3]), &mut dropped);
        assert!(dropped.is_empty());
        a.record(key(80), &spec(&[1]), &mut dropped);
        assert!(dropped.is_empty(), "81 still wants 2");
        a.forget(&key(81), &mut dropped);
        let addrs: Vec<u8> = dropped.iter().map(|b| b.addr.octets()[3]).collect();
        assert_eq!(addrs, [2, 3]);
        assert!(a.wants(&spec(&[1]).backends[0]));
        assert!(!a.wants(&spec(&[2]).backends[0]));
    }

    #[test]
    fn moved_endpoints_are_those_that_changed_sides() {
        let mut a = Applied::default();
        let ip = |b| Ipv4Addr::new(10, 1, 0, b);
        assert_eq!(
            a.moved_endpoints(&BTreeSet::from([ip(1), ip(2)])),
            BTreeSet::from([ip(1), ip(2)])
        );
        assert_eq!(
            a.moved_endpoints(&BTreeSet::from([ip(2), ip(3)])),
            BTreeSet::from([ip(1), ip(3)])
        );
        assert!(
            a.moved_endpoints(&BTreeSet::from([ip(2), ip(3)]))
                .is_empty()
        );
    }
}
