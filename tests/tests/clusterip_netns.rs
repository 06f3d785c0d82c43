//! ClusterIP end to end in network namespaces: a node with a client pod and
//! three backend pods running real TCP/UDP servers. Every scenario runs twice:
//! with the socket hooks on the node's cgroup (TC as fallback), and with TC
//! alone, so each datapath is proven by itself.
use std::{collections::BTreeSet, time::Duration};

use testbed::{
    lab::{Hooks, Lab},
    privileges,
    probe::Outcome,
};

const VIP: &str = "10.96.0.10:80";
const VIP_UDP: &str = "10.96.0.10:53";

fn lab(hooks: Hooks) -> Lab {
    privileges::require();
    Lab::new(hooks, 3).expect("build the lab")
}

/// A TCP frontend on VIP and a UDP one on VIP_UDP, both over `backends`.
fn table(lab: &Lab, backends: &[usize], extra: &str) -> String {
    let list: Vec<String> = backends.iter().map(|i| lab.backend(*i)).collect();
    let list = list.join(", ");
    format!(
        "frontends:\n  - {{name: web, address: 10.96.0.10, port: 80, backends: [{list}]{extra}}}\n  - {{name: dns, address: 10.96.0.10, port: 53, protocol: UDP, backends: [{list}]{extra}}}\n"
    )
}

fn assert_balanced(out: &Outcome, total: usize) {
    assert_eq!(out.error_count(), 0, "{out:?}");
    assert_eq!(
        out.peer_mismatch, 0,
        "the client must see the frontend as its peer: {out:?}"
    );
    let counts = out.counts();
    assert_eq!(counts.len(), 3, "every backend answers: {counts:?}");
    for (backend, n) in &counts {
        assert!(
            *n * 5 >= total,
            "{backend} got {n} of {total} (< 20%): {counts:?}"
        );
    }
}

fn tcp_spreads(hooks: Hooks) {
    let mut lab = lab(hooks);
    lab.apply(&table(&lab, &[1, 2, 3], "")).unwrap();
    let out = lab
        .client(&["tcp", "--target", VIP, "--count", "300"])
        .unwrap();
    assert_balanced(&out, 300);
    assert_datapath(&mut lab, hooks);
}

/// With socket hooks on, connections never reach the per-packet path (no
/// conntrack entry); with TC alone, every flow is tracked there.
fn assert_datapath(lab: &mut Lab, hooks: Hooks) {
    let tracked = lab.conntrack_entries().unwrap();
    match hooks {
        Hooks::SocketAndTc => assert_eq!(
            tracked, 0,
            "the socket hooks should have translated every flow"
        ),
        Hooks::TcOnly => assert!(tracked > 0, "the TC path tracked no flow"),
    }
}

fn udp_spreads(hooks: Hooks) {
    let mut lab = lab(hooks);
    lab.apply(&table(&lab, &[1, 2, 3], "")).unwrap();
    let out = lab
        .client(&["udp", "--target", VIP_UDP, "--count", "300"])
        .unwrap();
    assert_balanced(&out, 300);
    let out = lab
        .client(&["udp", "--target", VIP_UDP, "--count", "300", "--connected"])
        .unwrap();
    assert_balanced(&out, 300);
    assert_datapath(&mut lab, hooks);
}

fn affinity_sticks_then_expires(hooks: Hooks) {
    let mut lab = lab(hooks);
    lab.apply(&table(
        &lab,
        &[1, 2, 3],
        ", sessionAffinity: ClientIP, affinityTimeoutSeconds: 1",
    ))
    .unwrap();
    let out = lab
        .client(&["tcp", "--target", VIP, "--count", "50"])
        .unwrap();
    assert_eq!(out.error_count(), 0, "{out:?}");
    assert_eq!(
        out.counts().len(),
        1,
        "50 connections from one client, one backend: {:?}",
        out.counts()
    );
    // Each connection after more than the timeout without traffic chooses
    // afresh; twelve such choices landing on one backend of three would
    // happen by chance once in 177,147 runs.
    let spaced = lab
        .client(&[
            "tcp",
            "--target",
            VIP,
            "--count",
            "12",
            "--interval-ms",
            "1300",
        ])
        .unwrap();
    assert_eq!(spaced.error_count(), 0, "{spaced:?}");
    assert!(
        spaced.counts().len() > 1,
        "affinity never expired: {:?}",
        spaced.answers
    );
}

fn removed_backend_gets_no_new_connections(hooks: Hooks) {
    let mut lab = lab(hooks);
    lab.apply(&table(&lab, &[1, 2, 3], "")).unwrap();
    let mut held = lab
        .spawn_client(&["hold", "--target", VIP, "--count", "30"])
        .unwrap();
    let before: Outcome = serde_json::from_str(&held.read_line().unwrap()).unwrap();
    assert_eq!(before.error_count(), 0, "{before:?}");

    lab.apply(&table(&lab, &[1, 2], "")).unwrap();
    let after = lab
        .client(&["tcp", "--target", VIP, "--count", "100"])
        .unwrap();
    assert_eq!(after.error_count(), 0, "{after:?}");
    let who: BTreeSet<_> = after.counts().into_keys().collect();
    assert_eq!(
        who,
        BTreeSet::from(["b1".to_owned(), "b2".to_owned()]),
        "b3 was removed"
    );

    held.write_line("check").unwrap();
    let check: Outcome = serde_json::from_str(&held.read_line().unwrap()).unwrap();
    assert_eq!(
        check.error_count(),
        0,
        "established connections broke: {check:?}"
    );
    assert_eq!(
        check.answers, before.answers,
        "each established connection kept its backend"
    );
}

fn no_backends_is_refused_at_once(hooks: Hooks) {
    let mut lab = lab(hooks);
    lab.apply(&table(&lab, &[], "")).unwrap();
    let tcp = lab
        .client(&["tcp", "--target", VIP, "--count", "5"])
        .unwrap();
    assert_eq!(tcp.errors.get("refused"), Some(&5), "{tcp:?}");
    let udp = lab
        .client(&["udp", "--target", VIP_UDP, "--count", "5", "--connected"])
        .unwrap();
    assert_eq!(udp.errors.get("refused"), Some(&5), "{udp:?}");
    let slowest = Duration::from_millis(tcp.slowest_error_ms.max(udp.slowest_error_ms));
    // A timeout would take the client's full 2 s; a refusal is immediate.
    assert!(
        slowest < Duration::from_millis(1000),
        "refusal took {slowest:?}, not immediate"
    );
    // Backends arriving later are used at once.
    lab.apply(&table(&lab, &[2], "")).unwrap();
    let ok = lab
        .client(&["tcp", "--target", VIP, "--count", "5"])
        .unwrap();
    assert_eq!(ok.counts().get("b2"), Some(&5), "{ok:?}");
}

/// A UDP "flow" (one client port) whose backend leaves the frontend moves to
/// another backend with its next datagram: its conntrack entries are flushed,
/// as kube-proxy flushes conntrack for a removed UDP endpoint.
fn udp_flow_leaves_a_removed_backend(hooks: Hooks) {
    let mut lab = lab(hooks);
    lab.apply(&table(&lab, &[1, 2, 3], "")).unwrap();
    let flow = [
        "udp",
        "--target",
        VIP_UDP,
        "--count",
        "5",
        "--source-port",
        "40053",
    ];
    let before = lab.client(&flow).unwrap();
    assert_eq!(before.error_count(), 0, "{before:?}");
    let pinned: Vec<String> = before.counts().into_keys().collect();
    if hooks == Hooks::TcOnly {
        assert_eq!(pinned.len(), 1, "one UDP flow, one backend: {pinned:?}");
    }
    let gone: usize = pinned[0][1..].parse().unwrap();
    let rest: Vec<usize> = (1..=3).filter(|i| *i != gone).collect();
    lab.apply(&table(&lab, &rest, "")).unwrap();
    let after = lab.client(&flow).unwrap();
    assert_eq!(after.error_count(), 0, "{after:?}");
    assert!(
        !after.counts().contains_key(&pinned[0]),
        "the flow stayed on removed {}: {after:?}",
        pinned[0]
    );
}

macro_rules! both_datapaths {
    ($($name:ident),* $(,)?) => {
        mod socket_and_tc {
            $(#[test] fn $name() { super::$name(super::Hooks::SocketAndTc) })*
        }
        mod tc_only {
            $(#[test] fn $name() { super::$name(super::Hooks::TcOnly) })*
        }
    };
}

both_datapaths!(
    tcp_spreads,
    udp_spreads,
    affinity_sticks_then_expires,
    removed_backend_gets_no_new_connections,
    no_backends_is_refused_at_once,
    udp_flow_leaves_a_removed_backend,
);
