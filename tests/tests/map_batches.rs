//! The reconciler writes the kernel's maps in batches
//! (`BPF_MAP_UPDATE_BATCH`): what they then hold must be exactly what the
//! in-memory maps hold after the same passes written entry by entry, from
//! empty and across a change that grows, shrinks, moves and removes.
use std::collections::BTreeSet;

use switchyard::{
    datapath::{FakeLbMaps, LbMaps, MapSizes, loader::Dataplane},
    model::DesiredTable,
    reconcile::Reconciler,
    table_file,
};

/// `n` frontends of `per` backends each: every fifth a LoadBalancer IP
/// with source ranges, others every third a NodePort with
/// `externalTrafficPolicy: Local` (half its backends local), the rest
/// ClusterIPs. `shift` moves each frontend's backends along.
fn table(n: usize, per: usize, shift: usize) -> DesiredTable {
    let mut y = String::from(
        "node: {address: 192.168.0.11, localEndpoints: [10.128.0.1, 10.128.0.2]}\nfrontends:\n",
    );
    for i in 0..n {
        let be: Vec<String> = (0..per)
            .map(|j| {
                format!(
                    "10.128.{}.{}:8080",
                    (i + j + shift) / 200,
                    (i + j + shift) % 200 + 1
                )
            })
            .collect();
        let (addr, port, extra) = if i % 5 == 0 {
            (
                std::net::Ipv4Addr::from(0xcb00_7100u32 + 1 + (i / 5) as u32).to_string(),
                80,
                ", kind: LoadBalancer, sourceRanges: [192.168.1.0/24, 10.0.0.0/8]".to_owned(),
            )
        } else if i % 3 == 0 {
            (
                "192.168.0.11".to_owned(),
                30000 + i,
                format!(
                    ", kind: NodePort, localBackends: [{}]",
                    be[..per / 2].join(", ")
                ),
            )
        } else {
            (
                std::net::Ipv4Addr::from(0x0a60_0000u32 + 1 + i as u32).to_string(),
                80,
                String::new(),
            )
        };
        y.push_str(&format!(
            "  - {{address: {addr}, port: {port}, backends: [{}]{extra}}}\n",
            be.join(", ")
        ));
    }
    table_file::parse(&y).expect("a valid table")
}

fn contents(m: &impl LbMaps) -> String {
    fn sorted<T: std::fmt::Debug>(entries: Vec<T>) -> BTreeSet<String> {
        entries.iter().map(|e| format!("{e:?}")).collect()
    }
    format!(
        "{:#?}\n{:#?}\n{:#?}\n{:#?}",
        sorted(m.dump_services().unwrap()),
        sorted(m.dump_backends().unwrap()),
        sorted(m.dump_members().unwrap()),
        sorted(m.dump_source_ranges().unwrap()),
    )
}

#[test]
fn batched_writes_leave_the_kernel_maps_as_entry_by_entry_writes_do() {
    testbed::privileges::require();
    // Room for a pass's new entries beside the old ones, so every pass is
    // batched (a pass that does not fit is written frontend by frontend).
    let sizes = MapSizes {
        backend_slots: 16_384,
        ..MapSizes::small()
    };
    let mut dp = Dataplane::load(None, &sizes).expect("load the programs");
    let mut kernel = Reconciler::restore(dp.lb_maps().unwrap()).unwrap();
    let mut memory = Reconciler::restore(FakeLbMaps::new(sizes)).unwrap();
    let passes = [
        table(300, 10, 0),
        // Grows and shrinks frontends, moves backends between them and
        // between ranges, drops the last 50 frontends.
        table(250, 12, 7),
        table(250, 4, 7),
        DesiredTable::default(),
    ];
    for (i, t) in passes.iter().enumerate() {
        let k = kernel
            .apply(t)
            .unwrap_or_else(|e| panic!("pass {i} on the kernel's maps: {e}"));
        let m = memory.apply(t).unwrap();
        assert_eq!(k, m, "pass {i}: the same writes and deletes");
        assert_eq!(
            contents(kernel.maps()),
            contents(memory.maps()),
            "pass {i}: the kernel's maps hold what the table says"
        );
        memory.maps().check_consistent().unwrap();
    }
    let left = kernel.maps();
    assert!(
        left.dump_services().unwrap().is_empty() && left.dump_backends().unwrap().is_empty(),
        "the empty table empties the maps"
    );
}
