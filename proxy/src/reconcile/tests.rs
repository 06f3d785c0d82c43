use std::net::Ipv4Addr;

use proxy_common::lb::MASTER_SLOT;

use super::*;
use crate::{
    datapath::{FakeLbMaps, FaultyLbMaps, MapSizes},
    model::{BackendId, FrontendKind, Protocol},
    table_file,
};

fn table(yaml: &str) -> DesiredTable {
    table_file::parse(yaml).unwrap()
}

fn web(backends: &[&str]) -> DesiredTable {
    let list = backends
        .iter()
        .map(|b| format!("\"{b}\""))
        .collect::<Vec<_>>()
        .join(", ");
    table(&format!(
        "frontends:\n  - {{name: web, address: 10.96.0.10, port: 80, backends: [{list}]}}\n  - {{name: dns, address: 10.96.0.53, port: 53, protocol: UDP, sessionAffinity: ClientIP, affinityTimeoutSeconds: 30, backends: [10.244.2.2:53]}}\n"
    ))
}

fn key() -> FrontendKey {
    FrontendKey {
        addr: Ipv4Addr::new(10, 96, 0, 10),
        port: 80,
        proto: Protocol::Tcp,
    }
}

/// The backends the maps route `key` to, in slot order (both ranges).
fn routed(maps: &FakeLbMaps, key: &FrontendKey) -> Vec<String> {
    let Some(master) = maps.services.get(&key.lb4_key(MASTER_SLOT)) else {
        return Vec::new();
    };
    let cluster = (1..=master.count).map(|s| key.lb4_key(s));
    let local = (1..=master.local_count).map(|s| key.lb4_local_key(s));
    cluster
        .chain(local)
        .map(|slot| {
            let id = maps.services[&slot].backend_id;
            BackendAddr::from_lb4_backend(&maps.backends[&BackendId(id)])
                .unwrap()
                .to_string()
        })
        .collect()
}

#[test]
fn writes_a_table_and_is_idempotent() {
    let mut r = Reconciler::restore(FakeLbMaps::new(MapSizes::small())).unwrap();
    let desired = web(&["10.244.1.2:8080", "10.244.1.3:8080", "10.244.1.4:8080"]);
    let first = r.apply(&desired).unwrap();
    // 4 backends + 4 memberships + 4 slots + 2 masters.
    assert_eq!(
        first,
        Report {
            writes: 14,
            ..Report::default()
        }
    );
    r.maps().check_consistent().unwrap();
    assert_eq!(
        routed(r.maps(), &key()),
        [
            "10.244.1.2:8080/TCP",
            "10.244.1.3:8080/TCP",
            "10.244.1.4:8080/TCP"
        ]
    );
    let dns = r
        .maps()
        .services
        .values()
        .find(|v| v.flags & SVC_FLAG_AFFINITY != 0)
        .unwrap();
    assert_eq!(dns.affinity_timeout_s, 30);
    assert_eq!(
        r.apply(&desired).unwrap(),
        Report::default(),
        "second pass writes nothing"
    );
}

#[test]
fn shrinking_removes_backend_slot_and_membership_last() {
    let mut r = Reconciler::restore(FakeLbMaps::new(MapSizes::small())).unwrap();
    r.apply(&web(&[
        "10.244.1.2:8080",
        "10.244.1.3:8080",
        "10.244.1.4:8080",
    ]))
    .unwrap();
    r.apply(&web(&["10.244.1.2:8080", "10.244.1.4:8080"]))
        .unwrap();
    r.maps().check_consistent().unwrap();
    assert_eq!(
        routed(r.maps(), &key()),
        ["10.244.1.2:8080/TCP", "10.244.1.4:8080/TCP"]
    );
    assert_eq!(r.maps().backends.len(), 3, "web's two plus dns's one");
    assert_eq!(r.maps().members.len(), 3);
    assert_eq!(r.maps().services.len(), 2 + 2 + 1);
    // web is TCP: no conntrack flush (UDP departures are flushed, below).
    assert!(r.maps().flushed.is_empty(), "{:?}", r.maps().flushed);
}

#[test]
fn removed_frontend_and_its_backends_disappear_and_empty_frontend_stays_visible() {
    let mut r = Reconciler::restore(FakeLbMaps::new(MapSizes::small())).unwrap();
    r.apply(&web(&["10.244.1.2:8080"])).unwrap();
    r.apply(&table("frontends:\n  - {address: 10.96.0.10, port: 80}\n"))
        .unwrap();
    let maps = r.maps();
    maps.check_consistent().unwrap();
    assert_eq!(
        maps.services.len(),
        1,
        "only web's master, count 0 (reject)"
    );
    assert_eq!(maps.services[&key().lb4_key(MASTER_SLOT)].count, 0);
    assert!(maps.backends.is_empty() && maps.members.is_empty());
    r.apply(&DesiredTable::default()).unwrap();
    assert!(r.maps().services.is_empty());
}

#[test]
fn restart_adopts_ids_instead_of_renumbering() {
    let mut r = Reconciler::restore(FakeLbMaps::new(MapSizes::small())).unwrap();
    let desired = web(&["10.244.1.2:8080", "10.244.1.3:8080"]);
    r.apply(&desired).unwrap();
    let before = r.maps().clone();
    let id = r.frontend_id(&key()).unwrap();

    let mut restarted = Reconciler::restore(before.clone()).unwrap();
    assert_eq!(restarted.frontend_id(&key()), Some(id));
    assert_eq!(
        restarted.apply(&desired).unwrap(),
        Report::default(),
        "nothing to rewrite"
    );
    let grown = web(&["10.244.1.2:8080", "10.244.1.3:8080", "10.244.1.9:8080"]);
    restarted.apply(&grown).unwrap();
    let after = restarted.maps();
    for (k, v) in &before.backends {
        assert_eq!(
            after.backends.get(k),
            Some(v),
            "existing backend IDs keep their meaning"
        );
    }
    assert_eq!(after.backends.len(), before.backends.len() + 1);
}

/// A NodePort with `externalTrafficPolicy: Local` and a LoadBalancer IP
/// restricted to `ranges`, on a node with 10.244.1.0/24 local.
fn north_south(cluster: &[&str], local: &[&str], ranges: &str) -> DesiredTable {
    let list = |l: &[&str]| l.join(", ");
    table(&format!(
        "node: {{address: 192.168.0.11, localEndpoints: [10.244.1.5, 10.244.1.6]}}\nfrontends:\n  - {{name: np, kind: NodePort, address: 192.168.0.11, port: 30443, backends: [{}], localBackends: [{}]}}\n  - {{name: lb, kind: LoadBalancer, address: 203.0.113.10, port: 443, backends: [{}], sourceRanges: {ranges}}}\n",
        list(cluster),
        list(local),
        list(cluster)
    ))
}

#[test]
fn north_south_frontends_write_both_ranges_flags_and_the_node() {
    use proxy_common::lb::{
        BACKEND_FLAG_LOCAL, SVC_FLAG_EXT_LOCAL, SVC_FLAG_SOURCE_RANGES, SVC_KIND_SHIFT,
    };
    let mut r = Reconciler::restore(FakeLbMaps::new(MapSizes::small())).unwrap();
    let desired = north_south(
        &["10.244.1.5:8443", "10.244.2.5:8443"],
        &["10.244.1.5:8443"],
        "[192.0.2.0/24]",
    );
    r.apply(&desired).unwrap();
    let np = FrontendKey {
        addr: Ipv4Addr::new(192, 168, 0, 11),
        port: 30443,
        proto: Protocol::Tcp,
    };
    let maps = r.maps();
    let master = maps.services[&np.lb4_key(MASTER_SLOT)];
    assert_eq!((master.count, master.local_count), (2, 1));
    assert_ne!(master.flags & SVC_FLAG_EXT_LOCAL, 0);
    assert_eq!(
        FrontendKind::from_flags(master.flags),
        FrontendKind::NodePort
    );
    assert_eq!(
        routed(maps, &np),
        [
            "10.244.1.5:8443/TCP",
            "10.244.2.5:8443/TCP",
            "10.244.1.5:8443/TCP"
        ]
    );
    assert_eq!(maps.node.addr_be, addr_be(Ipv4Addr::new(192, 168, 0, 11)));
    let local: Vec<bool> = maps
        .backends
        .values()
        .map(|b| b.flags & BACKEND_FLAG_LOCAL != 0)
        .collect();
    assert_eq!(local, [true, false], "10.244.1.5 is on this node");
    let lb = FrontendKey {
        addr: Ipv4Addr::new(203, 0, 113, 10),
        port: 443,
        proto: Protocol::Tcp,
    };
    let lb_master = maps.services[&lb.lb4_key(MASTER_SLOT)];
    assert_ne!(lb_master.flags & SVC_FLAG_SOURCE_RANGES, 0);
    assert_eq!(lb_master.flags >> SVC_KIND_SHIFT, 3, "LoadBalancer");
    assert_eq!(maps.source_ranges.len(), 1);
    // What the maps hold reads back as the spec that was written.
    let spec = r.programmed_spec(&np).unwrap();
    assert_eq!(spec.local_backends, desired.frontends[&np].local_backends);
    assert_eq!(
        r.programmed_spec(&lb).unwrap().source_ranges,
        desired.frontends[&lb].source_ranges
    );
    // Lifting the restriction removes the ranges after the flag.
    r.apply(&north_south(&["10.244.2.5:8443"], &[], "[]"))
        .unwrap();
    let maps = r.maps();
    assert!(maps.source_ranges.is_empty());
    assert_eq!(
        maps.services[&lb.lb4_key(MASTER_SLOT)].flags & SVC_FLAG_SOURCE_RANGES,
        0
    );
    let master = maps.services[&np.lb4_key(MASTER_SLOT)];
    assert_eq!((master.count, master.local_count), (1, 0));
    assert_eq!(maps.services.len(), 4, "two masters, one slot each");
}

#[test]
fn capacity_is_checked_before_any_write() {
    let sizes = MapSizes {
        frontends: 1,
        backend_slots: 2,
        ..MapSizes::small()
    };
    let mut r = Reconciler::restore(FakeLbMaps::new(sizes)).unwrap();
    let err = r
        .apply(&web(&["10.244.1.2:8080", "10.244.1.3:8080"]))
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Capacity {
                needed: 5,
                capacity: 3,
                ..
            }
        ),
        "{err}"
    );
    assert!(
        r.maps().services.is_empty() && r.maps().backends.is_empty(),
        "nothing written"
    );
}

/// Drives a sequence of tables through maps that fail writes, retrying each
/// until it converges, and checks after every write that no half-written
/// frontend was ever visible.
fn converge_through_faults(fail: impl FnMut(u64) -> bool + Send + 'static) {
    let tables = [
        web(&["10.244.1.2:8080", "10.244.1.3:8080", "10.244.1.4:8080"]),
        web(&["10.244.1.3:8080"]),
        web(&[
            "10.244.1.5:8080",
            "10.244.1.6:8080",
            "10.244.1.3:8080",
            "10.244.1.7:8080",
        ]),
        table("frontends:\n  - {address: 10.96.0.99, port: 443, backends: [10.244.1.5:8443]}\n"),
        north_south(
            &["10.244.1.5:8443", "10.244.2.5:8443"],
            &["10.244.1.5:8443"],
            "[192.0.2.0/24]",
        ),
        north_south(&["10.244.2.5:8443"], &[], "[192.0.2.0/24, 198.51.100.0/24]"),
        north_south(
            &["10.244.1.6:8443", "10.244.2.5:8443"],
            &["10.244.1.6:8443"],
            "[]",
        ),
        DesiredTable::default(),
    ];
    let faulty = FaultyLbMaps::new(FakeLbMaps::new(MapSizes::small()), fail);
    let mut r = Reconciler::restore(faulty).unwrap();
    for desired in &tables {
        let mut passes = 0;
        while let Err(e) = r.apply(desired) {
            assert!(matches!(e, Error::Incomplete { .. }), "{e}");
            passes += 1;
            assert!(passes < 100, "no convergence: {e}");
        }
        let mut clean = Reconciler::restore(FakeLbMaps::new(MapSizes::small())).unwrap();
        clean.apply(desired).unwrap();
        for k in desired.frontends.keys() {
            assert_eq!(routed(&r.maps().inner, k), routed(clean.maps(), k));
            let (got, want) = (
                r.programmed_spec(k).unwrap(),
                clean.programmed_spec(k).unwrap(),
            );
            assert_eq!(got.source_ranges, want.source_ranges);
            assert_eq!(got.local_backends, want.local_backends);
        }
        assert_eq!(r.maps().inner.services.len(), clean.maps().services.len());
        assert_eq!(r.maps().inner.backends.len(), clean.maps().backends.len());
        assert_eq!(r.maps().inner.members.len(), clean.maps().members.len());
        assert_eq!(
            r.maps().inner.source_ranges.len(),
            clean.maps().source_ranges.len()
        );
        assert_eq!(r.maps().inner.node, clean.maps().node);
    }
    let maps = r.maps();
    assert!(maps.failures > 0, "the test injected failures");
    assert_eq!(maps.violation, None, "a half-written frontend was visible");
}

#[test]
fn failed_writes_are_retried_without_exposing_half_written_frontends() {
    converge_through_faults(|n| n % 3 == 1);
}

#[test]
fn bursts_of_failures_converge() {
    // Pseudo-random bursts (xorshift): about 40% of writes fail.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    converge_through_faults(move |_| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % 5 < 2
    });
}

#[test]
fn every_single_write_failure_point_is_safe() {
    // Fail exactly the n-th write of the sequence, for each n.
    for n in 0..40 {
        converge_through_faults(move |i| i == n);
    }
}

#[test]
fn a_large_table_is_written_consistently_and_then_left_alone() {
    // 10k frontends x 10 backends, as the daemon benchmark will program.
    let mut yaml = String::from("frontends:\n");
    for f in 0..10_000u32 {
        let (a, b) = (f / 250, f % 250);
        yaml.push_str(&format!(
            "  - {{address: 10.96.{a}.{b}, port: 80, backends: ["
        ));
        for e in 0..10u32 {
            yaml.push_str(&format!(
                "10.{}.{}.{}:8080, ",
                100 + f / 65536,
                (f / 256) % 256,
                (f % 256 + e * 7) % 256
            ));
        }
        yaml.push_str("]}\n");
    }
    let desired = table(&yaml);
    let mut r = Reconciler::restore(FakeLbMaps::new(MapSizes::default())).unwrap();
    let first = r.apply(&desired).unwrap();
    assert_eq!(r.maps().services.len(), 10_000 * 11);
    assert_eq!(
        first.writes,
        r.maps().services.len() + r.maps().backends.len() + r.maps().members.len()
    );
    r.maps().check_consistent().unwrap();
    assert_eq!(r.apply(&desired).unwrap(), Report::default());
}

#[test]
fn a_frontend_with_more_backends_than_slots_is_refused_before_any_write() {
    let mut r = Reconciler::restore(FakeLbMaps::new(MapSizes {
        backends: 70_000,
        backend_slots: 70_000,
        ..MapSizes::small()
    }))
    .unwrap();
    let mut desired = web(&["10.244.1.2:8080"]);
    let spec = desired.frontends.get_mut(&key()).unwrap();
    spec.backends = (0..65_536u32)
        .map(|i| BackendAddr {
            addr: Ipv4Addr::from(0x0a80_0000 + i),
            port: 8080,
            proto: Protocol::Tcp,
        })
        .collect();
    let err = r.apply(&desired).unwrap_err();
    assert!(
        matches!(
            err,
            Error::TooManyBackends {
                slots: 65_536,
                max: 65_535,
                ..
            }
        ),
        "{err}"
    );
    assert!(
        r.maps().services.is_empty() && r.maps().backends.is_empty(),
        "nothing written"
    );
}

#[test]
fn pinned_state_with_the_largest_ids_is_adopted_without_a_panic() {
    use proxy_common::lb::{Lb4Backend, Lb4Service};
    // A foreign (or corrupt) frontend and backend holding ID u32::MAX.
    let mut maps = FakeLbMaps::new(MapSizes::small());
    let foreign = FrontendKey {
        addr: Ipv4Addr::new(10, 96, 9, 9),
        port: 9,
        proto: Protocol::Tcp,
    };
    maps.services.insert(
        foreign.lb4_key(MASTER_SLOT),
        Lb4Service {
            frontend_id: u32::MAX,
            ..Lb4Service::default()
        },
    );
    maps.backends.insert(
        BackendId(u32::MAX),
        Lb4Backend {
            addr_be: 0x0101_0101,
            port_be: 80u16.to_be(),
            proto: 6,
            flags: 0,
        },
    );
    let mut r = Reconciler::restore(maps).unwrap();
    r.apply(&web(&["10.244.1.2:8080", "10.244.1.3:8080"]))
        .unwrap();
    let id = r.frontend_id(&key()).unwrap();
    assert!(id.0 >= 1 && id.0 < u32::MAX, "{id}");
    assert_eq!(routed(r.maps(), &key()).len(), 2);
    assert!(r.maps().check_consistent().is_ok());
    assert!(
        !r.maps().backends.contains_key(&BackendId(u32::MAX)),
        "the foreign backend, referenced by nothing, is cleaned up"
    );
}

#[test]
fn a_failed_udp_flush_is_reported_and_retried() {
    let mut maps = FakeLbMaps::new(MapSizes::small());
    maps.failing_flushes = 1;
    let mut r = Reconciler::restore(maps).unwrap();
    let dns = |backend: &str| {
        table(&format!(
            "frontends:\n  - {{name: dns, address: 10.96.0.53, port: 53, protocol: UDP, backends: [{backend}]}}\n"
        ))
    };
    r.apply(&dns("10.244.2.2:53")).unwrap();
    let err = r.apply(&dns("10.244.2.3:53")).unwrap_err();
    assert!(
        matches!(&err, Error::Incomplete { failed } if failed[0].0.contains("UDP flows")),
        "the cut-short scan is an error: {err}"
    );
    assert!(r.maps().flushed.is_empty());
    // The next pass flushes what the failed one left.
    r.apply(&dns("10.244.2.3:53")).unwrap();
    assert_eq!(r.maps().flushed.len(), 1, "{:?}", r.maps().flushed);
}

#[test]
fn a_deferred_flush_hands_every_departed_membership_to_the_caller() {
    let mut maps = FakeLbMaps::new(MapSizes::small());
    maps.failing_flushes = 10;
    let mut r = Reconciler::restore(maps).unwrap().defer_conntrack_flush();
    let dns = |backend: &str| {
        table(&format!(
            "frontends:\n  - {{name: dns, address: 10.96.0.53, port: 53, protocol: UDP, backends: [{backend}]}}\n"
        ))
    };
    r.apply(&dns("10.244.2.2:53")).unwrap();
    assert!(r.take_departed().is_empty());
    // The pass itself never scans conntrack (the failing fake is not called).
    r.apply(&dns("10.244.2.3:53")).unwrap();
    let departed = r.take_departed();
    assert_eq!(departed.memberships.len(), 1, "{departed:?}");
    let udp: Vec<String> = departed
        .udp_backends
        .iter()
        .map(|(_, b)| b.to_string())
        .collect();
    assert_eq!(
        udp,
        ["10.244.2.2:53/UDP"],
        "the backend whose sockets must go"
    );
    assert!(r.take_departed().is_empty(), "handed over once");
    assert!(r.maps().flushed.is_empty());
}

#[test]
fn a_tcp_departure_needs_no_conntrack_flush() {
    let mut maps = FakeLbMaps::new(MapSizes::small());
    maps.failing_flushes = 10;
    let mut r = Reconciler::restore(maps).unwrap().defer_conntrack_flush();
    let web = |backends: &str| {
        table(&format!(
            "frontends:\n  - {{name: web, address: 10.96.0.80, port: 80, protocol: TCP, backends: [{backends}]}}\n"
        ))
    };
    r.apply(&web("10.244.2.2:8080, 10.244.2.3:8080")).unwrap();
    r.apply(&web("10.244.2.2:8080")).unwrap();
    let departed = r.take_departed();
    assert!(departed.is_empty(), "{departed:?}");
    // Without deferral the pass flushes nothing either (the fake would fail).
    let mut r = Reconciler::restore(r.maps().clone()).unwrap();
    r.apply(&web("10.244.2.3:8080")).unwrap();
    assert!(r.maps().flushed.is_empty());
}

#[test]
fn departures_of_a_failed_pass_are_still_handed_over() {
    use std::sync::{
        Arc,
        atomic::{AtomicI64, Ordering},
    };
    let udp = |b: &[&str]| {
        let list = b.join(", ");
        table(&format!(
            "frontends:\n  - {{name: dns, address: 10.96.0.53, port: 53, protocol: UDP, backends: [{list}]}}\n"
        ))
    };
    // The write to fail, counted from the start; -1: none.
    let fail_at = Arc::new(AtomicI64::new(-1));
    let seen = Arc::new(AtomicI64::new(0));
    let (f, c) = (Arc::clone(&fail_at), Arc::clone(&seen));
    let faulty = FaultyLbMaps::new(FakeLbMaps::new(MapSizes::small()), move |_| {
        c.fetch_add(1, Ordering::SeqCst) == f.load(Ordering::SeqCst)
    });
    let mut r = Reconciler::restore(faulty).unwrap().defer_conntrack_flush();
    r.apply(&udp(&["10.244.1.2:53", "10.244.1.3:53"])).unwrap();
    assert!(r.take_departed().is_empty());
    // Removing one backend: master, stale slot, membership, then the
    // orphaned backend, whose delete fails: the pass is incomplete.
    fail_at.store(seen.load(Ordering::SeqCst) + 3, Ordering::SeqCst);
    let result = r.apply(&udp(&["10.244.1.2:53"]));
    assert!(
        matches!(result, Err(Error::Incomplete { .. })),
        "{result:?}"
    );
    let departed = r.take_departed();
    assert_eq!(departed.memberships.len(), 1, "{departed:?}");
    assert_eq!(departed.udp_backends.len(), 1, "{departed:?}");
}

#[test]
fn growing_the_cluster_range_never_puts_a_remote_backend_in_a_local_slot() {
    // Cluster [1.5, 2.5], local [1.5] grows to cluster [1.5, 1.6, 2.5],
    // local [1.5, 1.6]: while the master still holds the old counts, every
    // slot of each range must name a backend of that range.
    let faulty = FaultyLbMaps::new(FakeLbMaps::new(MapSizes::small()), |_| false);
    let mut r = Reconciler::restore(faulty).unwrap();
    r.apply(&north_south(
        &["10.244.1.5:8443", "10.244.2.5:8443"],
        &["10.244.1.5:8443"],
        "[]",
    ))
    .unwrap();
    r.apply(&north_south(
        &["10.244.1.5:8443", "10.244.1.6:8443", "10.244.2.5:8443"],
        &["10.244.1.5:8443", "10.244.1.6:8443"],
        "[]",
    ))
    .unwrap();
    assert_eq!(
        r.maps().violation,
        None,
        "a slot named a backend outside its range"
    );
    r.apply(&north_south(&["10.244.2.5:8443"], &[], "[]"))
        .unwrap();
    assert_eq!(
        r.maps().violation,
        None,
        "shrinking exposed a half-written range"
    );
    let scopes: Vec<u8> = r.maps().inner.services.keys().map(|k| k.scope).collect();
    assert_eq!(
        scopes,
        [proxy_common::lb::SLOT_SCOPE_CLUSTER; 4],
        "two masters and one cluster slot each remain; the local slots are gone"
    );
}

/// What the maps hold, free of ID numbering: each frontend as a spec, every
/// backend entry as (address, flags), and the entry counts.
type Contents = (
    BTreeMap<FrontendKey, FrontendSpec>,
    Vec<(BackendAddr, u8)>,
    EntryCounts,
);

fn contents<M: LbMaps>(r: &Reconciler<M>, backends: &BTreeMap<BackendId, Lb4Backend>) -> Contents {
    let specs = r
        .ids
        .frontend_keys()
        .filter_map(|k| Some((k, r.programmed_spec(&k)?)))
        .collect();
    let mut entries: Vec<(BackendAddr, u8)> = backends
        .values()
        .map(|b| (BackendAddr::from_lb4_backend(b).unwrap(), b.flags))
        .collect();
    entries.sort();
    (specs, entries, r.entry_counts())
}

/// A pseudo-random successor of `prev` over a small pool of frontends and
/// backends: passes share backends between frontends, move endpoints on and
/// off the node, and add, change, keep and remove frontends.
fn random_table(prev: &DesiredTable, next: &mut impl FnMut() -> u64) -> DesiredTable {
    let backend = |i: u64| BackendAddr {
        addr: Ipv4Addr::new(10, 244, 1, 1 + i as u8),
        port: 8080,
        proto: Protocol::Tcp,
    };
    let pick = |bits: u64| -> Vec<BackendAddr> {
        (0..8).filter(|i| bits >> i & 1 == 1).map(backend).collect()
    };
    let mut t = prev.clone();
    t.node.address = Some(Ipv4Addr::new(192, 168, 0, 11));
    if next().is_multiple_of(3) {
        t.node.local_endpoints = pick(next() & 0x0f).iter().map(|b| b.addr).collect();
    }
    for f in 0..6u8 {
        let key = FrontendKey {
            addr: Ipv4Addr::new(10, 96, 0, 1 + f),
            port: 80,
            proto: Protocol::Tcp,
        };
        match next() % 8 {
            0 => {
                t.frontends.remove(&key);
                continue;
            }
            1..=4 if t.frontends.contains_key(&key) => continue, // unchanged
            _ => {}
        }
        let kinds = [
            FrontendKind::ClusterIp,
            FrontendKind::NodePort,
            FrontendKind::LoadBalancer,
        ];
        let kind = kinds[usize::from(f % 3)];
        let backends = pick(next() & 0xff);
        let local_backends = (kind == FrontendKind::NodePort).then(|| {
            backends
                .iter()
                .filter(|b| t.node.local_endpoints.contains(&b.addr))
                .copied()
                .collect()
        });
        let source_ranges = if kind == FrontendKind::LoadBalancer && next().is_multiple_of(2) {
            vec!["192.0.2.0/24".parse().unwrap()]
        } else {
            Vec::new()
        };
        let spec = FrontendSpec {
            name: format!("default/svc-{f}:http"),
            kind,
            backends,
            local_backends,
            affinity_timeout_s: (next().is_multiple_of(3)).then_some(30),
            drop_when_empty: false,
            source_ranges,
        };
        t.frontends.insert(key, spec);
    }
    t
}

/// xorshift64: the same sequence from the same seed.
fn xorshift(mut x: u64) -> impl FnMut() -> u64 {
    move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    }
}

/// 300 random passes, the n-th write failing when `fail(n)`; after each,
/// the maps must be what a reconciler that has just read them leaves alone
/// and what a reconciler writing from empty maps writes.
fn incremental_passes_match_full_ones(fail: impl FnMut(u64) -> bool + Send + 'static) {
    let mut next = xorshift(0x2545_f491_4f6c_dd1d);
    let faulty = FaultyLbMaps::new(FakeLbMaps::new(MapSizes::small()), fail);
    let mut incremental = Reconciler::restore(faulty).unwrap();
    let (mut skipped, mut desired) = (0, DesiredTable::default());
    for pass in 0..300 {
        let prev = std::mem::take(&mut desired);
        desired = random_table(&prev, &mut next);
        skipped += desired
            .frontends
            .iter()
            .filter(|(k, s)| prev.frontends.get(k) == Some(s))
            .count();
        let mut attempts = 0;
        while let Err(e) = incremental.apply(&desired) {
            attempts += 1;
            assert!(attempts < 100, "pass {pass}: no convergence: {e}");
        }
        // A reconciler that has just read the maps plans every frontend and
        // sweeps every backend: its pass must find nothing left to do.
        let mut full = Reconciler::restore(incremental.maps().inner.clone()).unwrap();
        assert_eq!(
            full.apply(&desired).unwrap(),
            Report::default(),
            "pass {pass}: the incremental pass left work undone"
        );
        let mut clean = Reconciler::restore(FakeLbMaps::new(MapSizes::small())).unwrap();
        clean.apply(&desired).unwrap();
        assert_eq!(
            contents(&incremental, &incremental.maps().inner.backends),
            contents(&clean, &clean.maps().backends),
            "pass {pass}"
        );
        incremental.maps().inner.check_consistent().unwrap();
    }
    assert!(
        skipped > 300,
        "the passes kept frontends unchanged: {skipped}"
    );
    assert_eq!(
        incremental.maps().violation,
        None,
        "a half-written frontend was visible"
    );
}

#[test]
fn skipping_unchanged_frontends_leaves_the_maps_as_a_full_pass_would() {
    incremental_passes_match_full_ones(|_| false);
}

#[test]
fn skipping_unchanged_frontends_converges_like_a_full_pass_through_failures() {
    let mut next = xorshift(0x9e37_79b9_7f4a_7c15);
    incremental_passes_match_full_ones(move |_| next().is_multiple_of(40));
}

#[test]
fn an_endpoint_moving_onto_the_node_rewrites_the_backend_of_an_unchanged_frontend() {
    use proxy_common::lb::BACKEND_FLAG_LOCAL;
    let yaml = |local: &str| {
        format!(
            "node: {{address: 192.168.0.11, localEndpoints: [{local}]}}\nfrontends:\n  - {{name: web, address: 10.96.0.10, port: 80, backends: [10.244.1.5:8080, 10.244.1.6:8080]}}\n"
        )
    };
    let mut r = Reconciler::restore(FakeLbMaps::new(MapSizes::small())).unwrap();
    r.apply(&table(&yaml("10.244.1.5"))).unwrap();
    let report = r.apply(&table(&yaml("10.244.1.6"))).unwrap();
    assert_eq!(report.writes, 2, "both backend entries change sides");
    let local: Vec<String> = r
        .maps()
        .backends
        .values()
        .filter(|b| b.flags & BACKEND_FLAG_LOCAL != 0)
        .map(|b| BackendAddr::from_lb4_backend(b).unwrap().to_string())
        .collect();
    assert_eq!(local, ["10.244.1.6:8080/TCP"]);
}

#[test]
fn maps_changed_behind_the_reconcilers_back_are_repaired_after_a_refresh() {
    let desired = web(&["10.244.1.2:8080", "10.244.1.3:8080"]);
    let mut r = Reconciler::restore(FakeLbMaps::new(MapSizes::small())).unwrap();
    r.apply(&desired).unwrap();
    // Someone deletes a slot and a backend the reconciler wrote.
    let slot = key().lb4_key(2);
    let id = BackendId(r.maps().services[&slot].backend_id);
    r.maps_mut().services.remove(&slot);
    r.maps_mut().backends.remove(&id);
    r.refresh().unwrap();
    // The backend comes back under a new ID: backend, membership and slot.
    let report = r.apply(&desired).unwrap();
    assert_eq!(report.writes, 3);
    r.maps().check_consistent().unwrap();
    assert_eq!(
        routed(r.maps(), &key()),
        ["10.244.1.2:8080/TCP", "10.244.1.3:8080/TCP"]
    );
}
