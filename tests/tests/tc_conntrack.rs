//! Conntrack of the per-packet paths on crafted packets
//! (BPF_PROG_TEST_RUN): TCP state from the flags each way, lifetimes,
//! expiry and garbage collection, and the rule that a flow's state never
//! changes another flow's verdict — a retransmitted SYN keeps its backend,
//! a direct connection reusing a closed translated flow's tuple is left
//! alone, and two live flows that would share a wire tuple get distinct
//! source ports.
use std::collections::BTreeSet;

use proxy_common::{
    config::DatapathConfig,
    ct::{CT_STATE_FIN_ORIG, CT_STATE_FIN_REPLY, CT_STATE_OPENED, CT_STATE_REPLIED, CT_STATE_RST},
};
use switchyard::datapath::conntrack::now_s;
use testbed::{
    packet::{Builder, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN, View},
    prog_test::{Harness, TC_ACT_OK, assert_checksums, key_of, sa},
};

const VIP: &str = "10.96.0.10:80";
const VIP_UDP: &str = "10.96.0.10:53";
const CLIENT: &str = "10.244.1.10:40000";
const B1: &str = "10.244.1.11:8080";
const BACKENDS: [&str; 3] = [B1, "10.244.1.12:8080", "10.244.1.13:8080"];

fn table(backends: &[&str]) -> String {
    let list = backends.join(", ");
    format!(
        "frontends:\n  - {{address: 10.96.0.10, port: 80, backends: [{list}]}}\n  - {{address: 10.96.0.10, port: 53, protocol: UDP, backends: [{list}]}}\n"
    )
}

fn tcp(from: &str, to: &str, flags: u8) -> Vec<u8> {
    Builder::tcp(sa(from), sa(to), flags).build()
}

#[test]
fn tcp_state_follows_the_flags_of_both_directions() {
    let mut h = Harness::new(&table(&[B1]));
    let c = DatapathConfig::DEFAULT;
    let syn = tcp(CLIENT, VIP, TCP_SYN);
    h.run(&syn);
    let fwd = h.entry_of(&syn).expect("forward entry");
    assert_eq!(fwd.state, CT_STATE_OPENED);
    let lives = |v: &proxy_common::ct::Ct4Value, want: u32| {
        let left = i64::from(v.expires_s) - i64::from(now_s());
        assert!(
            (i64::from(want) - 2..=i64::from(want)).contains(&left),
            "expires in {left} s, expected {want} s (state {:#x})",
            v.state
        );
    };
    lives(&fwd, c.tcp_syn_s);
    let syn_ack = tcp(B1, CLIENT, TCP_SYN | TCP_ACK);
    h.run(&syn_ack);
    for pkt in [&syn, &syn_ack] {
        let e = h.entry_of(pkt).expect("both entries");
        assert_eq!(e.state, CT_STATE_OPENED | CT_STATE_REPLIED, "established");
        lives(&e, c.tcp_established_s);
    }
    h.run(&tcp(CLIENT, VIP, TCP_FIN | TCP_ACK));
    let e = h.entry_of(&syn_ack).unwrap();
    assert_ne!(e.state & CT_STATE_FIN_ORIG, 0);
    lives(&e, c.tcp_close_wait_s);
    h.run(&tcp(B1, CLIENT, TCP_FIN | TCP_ACK));
    for pkt in [&syn, &syn_ack] {
        let e = h.entry_of(pkt).unwrap();
        assert_ne!(e.state & CT_STATE_FIN_REPLY, 0);
        lives(&e, c.tcp_close_s);
    }
    // A RST closes a flow at once.
    let other = tcp("10.244.1.10:40001", VIP, TCP_SYN);
    h.run(&other);
    h.run(&tcp("10.244.1.10:40001", VIP, TCP_RST));
    let e = h.entry_of(&other).unwrap();
    assert_ne!(e.state & CT_STATE_RST, 0);
    lives(&e, c.tcp_close_s);
}

#[test]
fn a_retransmitted_syn_keeps_its_backend() {
    let mut h = Harness::new(&table(&BACKENDS));
    for i in 0..30u16 {
        let client = format!("10.244.1.10:{}", 41000 + i);
        let syn = tcp(&client, VIP, TCP_SYN);
        let (_, out) = h.run(&syn);
        let first = View::new(&out).dst();
        // The SYN-ACK was lost or slow: the client sends its SYN again…
        for _ in 0..3 {
            let (_, again) = h.run(&syn);
            assert_eq!(View::new(&again).dst(), first, "a retransmission moved");
        }
        // …also after the SYN-ACK passed the node but not the client.
        h.run(&tcp(&first.to_string(), &client, TCP_SYN | TCP_ACK));
        let (_, again) = h.run(&syn);
        assert_eq!(View::new(&again).dst(), first);
    }
}

#[test]
fn a_syn_after_the_flow_ended_chooses_afresh() {
    let mut h = Harness::new(&table(&BACKENDS));
    let syn = tcp(CLIENT, VIP, TCP_SYN);
    let mut seen = BTreeSet::new();
    for _ in 0..40 {
        let (_, out) = h.run(&syn);
        seen.insert(View::new(&out).dst());
        h.run(&tcp(CLIENT, VIP, TCP_RST | TCP_ACK));
    }
    assert!(
        seen.len() > 1,
        "every new connection on the tuple stuck: {seen:?}"
    );
}

#[test]
fn a_direct_connection_reusing_a_closed_translated_flows_tuple_is_left_alone() {
    let mut h = Harness::new(&table(&[B1]));
    // A connection through the ClusterIP, closed normally.
    for (from, to, flags) in [
        (CLIENT, VIP, TCP_SYN),
        (B1, CLIENT, TCP_SYN | TCP_ACK),
        (CLIENT, VIP, TCP_ACK),
        (CLIENT, VIP, TCP_FIN | TCP_ACK),
        (B1, CLIENT, TCP_FIN | TCP_ACK),
        (CLIENT, VIP, TCP_ACK),
    ] {
        h.run(&tcp(from, to, flags));
    }
    // Seconds later the client connects to the backend's pod IP directly,
    // and its kernel picks the same source port.
    let direct = tcp(CLIENT, B1, TCP_SYN);
    assert_eq!(h.run(&direct), (TC_ACT_OK, direct.clone()));
    let answer = tcp(B1, CLIENT, TCP_SYN | TCP_ACK);
    assert_eq!(
        h.run(&answer),
        (TC_ACT_OK, answer.clone()),
        "the backend's SYN-ACK must reach the client as the backend's"
    );
    let ack = tcp(CLIENT, B1, TCP_ACK);
    assert_eq!(h.run(&ack), (TC_ACT_OK, ack.clone()));
}

#[test]
fn an_expired_flow_translates_nothing() {
    let mut h = Harness::new(&table(&[B1]));
    let dgram = Builder::udp(sa(CLIENT), sa(VIP_UDP)).build();
    let (_, out) = h.run(&dgram);
    let backend = View::new(&out).dst();
    // The flow idles past its lifetime.
    let past = now_s() - 1;
    h.edit_conntrack(|v| v.expires_s = past);
    let late = Builder::udp(backend, sa(CLIENT)).build();
    let (_, out) = h.run(&late);
    assert_eq!(
        View::new(&out).src(),
        backend,
        "a dead flow's reply is not translated"
    );
    // The client's next datagram starts a new flow.
    let (_, out) = h.run(&dgram);
    assert_eq!(View::new(&out).dst(), backend);
    assert!(h.entry_of(&dgram).unwrap().expires_s > now_s());
}

#[test]
fn garbage_collection_removes_dead_flows_and_keeps_live_ones() {
    let mut h = Harness::new(&table(&[B1]));
    let live = Builder::udp(sa(CLIENT), sa(VIP_UDP)).build();
    let dead = Builder::udp(sa("10.244.1.10:40001"), sa(VIP_UDP)).build();
    h.run(&live);
    h.run(&dead);
    let dead_key = key_of(&dead);
    let past = now_s() - 1;
    // Age the second flow (both its entries; they share the frontend and
    // backend, so tell them by the client's port).
    h.edit_conntrack(|v| {
        if v.sport_be == dead_key.sport_be || v.dport_be == dead_key.sport_be {
            v.expires_s = past;
        }
    });
    let report = h
        .reconciler()
        .maps_mut()
        .conntrack_mut()
        .collect_garbage(now_s())
        .unwrap();
    assert_eq!(
        report.removed, 2,
        "both entries of the dead flow: {report:?}"
    );
    assert!(h.entry_of(&live).is_some());
    assert!(h.entry_of(&dead).is_none());
    assert_eq!(h.conntrack().len(), 2, "the live flow's two entries remain");
}

#[test]
fn a_udp_flow_that_is_answered_lives_longer() {
    let mut h = Harness::new(&table(&[B1]));
    let c = DatapathConfig::DEFAULT;
    let dgram = Builder::udp(sa(CLIENT), sa(VIP_UDP)).build();
    let (_, out) = h.run(&dgram);
    let e = h.entry_of(&dgram).unwrap();
    assert_eq!(e.state, CT_STATE_OPENED);
    assert!(e.expires_s <= now_s() + c.udp_s);
    h.run(&Builder::udp(View::new(&out).dst(), sa(CLIENT)).build());
    let e = h.entry_of(&dgram).unwrap();
    assert_ne!(e.state & CT_STATE_REPLIED, 0);
    assert!(e.expires_s > now_s() + c.udp_s, "a stream's lifetime");
}

/// The same wire tuple wanted by two live flows: a direct connection and a
/// translated one from the same source port to the same backend (a pod
/// whose sockets take both paths). Whichever comes second gets another
/// source port; both keep working.
#[test]
fn two_live_flows_never_share_a_wire_tuple() {
    for direct_first in [true, false] {
        let mut h = Harness::new(&table(&[B1]));
        let direct = tcp(CLIENT, B1, TCP_SYN);
        let via_vip = tcp(CLIENT, VIP, TCP_SYN);
        let (first, second) = if direct_first {
            (&direct, &via_vip)
        } else {
            (&via_vip, &direct)
        };
        let (_, out1) = h.run(first);
        h.run(&tcp(B1, CLIENT, TCP_SYN | TCP_ACK)); // answers the first
        let (_, out2) = h.run(second);
        let (w1, w2) = (View::new(&out1), View::new(&out2));
        assert_eq!(w1.dst(), sa(B1));
        assert_eq!(w2.dst(), sa(B1));
        assert_eq!(w1.src(), sa(CLIENT), "the first flow keeps its tuple");
        assert_eq!(w2.src_ip(), *sa(CLIENT).ip(), "the address is kept");
        assert_ne!(w2.src().port(), 40000, "the second flow's port is remapped");
        assert_checksums(&out2);
        // Each flow's replies reach the client as that flow's.
        let reply2 = tcp(B1, &w2.src().to_string(), TCP_SYN | TCP_ACK);
        let (_, back) = h.run(&reply2);
        let b = View::new(&back);
        let expect_src = if direct_first { sa(VIP) } else { sa(B1) };
        assert_eq!((b.src(), b.dst()), (expect_src, sa(CLIENT)));
        assert_checksums(&back);
        let reply1 = tcp(B1, CLIENT, TCP_ACK);
        let (_, back) = h.run(&reply1);
        let expect_src = if direct_first { sa(B1) } else { sa(VIP) };
        assert_eq!(View::new(&back).src(), expect_src);
    }
}
