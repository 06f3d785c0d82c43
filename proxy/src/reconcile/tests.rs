use std::net::Ipv4Addr;

use proxy_common::lb::MASTER_SLOT;

use super::*;
use crate::{
    datapath::{FakeLbMaps, FaultyLbMaps, MapSizes},
    model::Protocol,
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

/// The backends the maps route `key` to, in slot order.
fn routed(maps: &FakeLbMaps, key: &FrontendKey) -> Vec<String> {
    let Some(master) = maps.services.get(&key.lb4_key(MASTER_SLOT)) else {
        return Vec::new();
    };
    (1..=master.count)
        .map(|s| {
            let id = maps.services[&key.lb4_key(s)].backend_id;
            BackendAddr::from_lb4_backend(&maps.backends[&id])
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
    assert_eq!(r.maps().aff_match.len(), 3);
    assert_eq!(r.maps().services.len(), 2 + 2 + 1);
    // The departed backend's UDP flows, and only its, were flushed.
    let web_id = r.frontend_id(&key()).unwrap();
    let gone = r.maps().flushed.iter().copied().collect::<Vec<_>>();
    assert_eq!(gone.len(), 1, "{gone:?}");
    assert_eq!(gone[0].0, web_id);
    assert!(
        !r.maps().backends.contains_key(&gone[0].1),
        "it was the removed backend"
    );
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
    assert!(maps.backends.is_empty() && maps.aff_match.is_empty());
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
        }
        assert_eq!(r.maps().inner.services.len(), clean.maps().services.len());
        assert_eq!(r.maps().inner.backends.len(), clean.maps().backends.len());
        assert_eq!(r.maps().inner.aff_match.len(), clean.maps().aff_match.len());
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
        r.maps().services.len() + r.maps().backends.len() + r.maps().aff_match.len()
    );
    r.maps().check_consistent().unwrap();
    assert_eq!(r.apply(&desired).unwrap(), Report::default());
}
