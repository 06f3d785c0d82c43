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
    prog_test::{Harness, Hook, TC_ACT_OK, TC_ACT_SHOT, assert_checksums, key_of, sa},
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

// An LRU map can evict one entry of a flow's pair. What is left must never
// let two flows share a wire tuple, nor make one flow's packets change
// another's entries.

/// A node with one remote UDP NodePort backend and a source-NAT range of a
/// single port, so every source-NATed flow wants the same wire tuple.
const ONE_PORT_TABLE: &str = "
node: {address: 192.168.0.11, localEndpoints: [10.244.1.11]}
frontends:
  - {name: remote-udp, kind: NodePort, address: 192.168.0.11, port: 30080, protocol: UDP, backends: [10.244.2.21:8080]}
";

fn one_port_harness() -> Harness {
    testbed::privileges::require();
    let mut c = DatapathConfig::DEFAULT;
    c.snat_port_min = 20000;
    c.snat_port_max = 20000;
    Harness::with_config(ONE_PORT_TABLE, &c).expect("harness")
}

/// Makes `pkt`'s entry look written more than a second ago, so its next
/// packet refreshes it (and checks its links).
fn age(h: &mut Harness, pkt: &[u8]) {
    let key = key_of(pkt);
    let ct = h.reconciler().maps_mut().conntrack_mut();
    let mut v = ct.get(&key).expect("entry to age");
    v.expires_s -= 2;
    ct.insert(&key, &v).expect("write conntrack");
}

fn evict(h: &mut Harness, pkt: &[u8]) {
    let key = key_of(pkt);
    h.reconciler()
        .maps_mut()
        .conntrack_mut()
        .remove_all([&key])
        .expect("evict");
}

#[test]
fn a_flow_whose_reply_entry_was_evicted_gives_up_its_wire_tuple() {
    let mut c = DatapathConfig::DEFAULT;
    c.snat_port_min = 20000;
    c.snat_port_max = 20001;
    testbed::privileges::require();
    let mut h = Harness::with_config(ONE_PORT_TABLE, &c).expect("harness");
    let backend = "10.244.2.21:8080";
    let c1 = Builder::udp(sa("192.168.0.200:40000"), sa("192.168.0.11:30080")).build();
    let (_, o1) = h.run_on(Hook::NodeIn, &c1);
    let w1 = View::new(&o1).src();
    evict(&mut h, &Builder::udp(sa(backend), w1).build());
    // Another client now gets client 1's old wire tuple...
    let c2 = Builder::udp(sa("192.168.0.201:40000"), sa("192.168.0.11:30080")).build();
    let mut w2 = w1;
    for _ in 0..64 {
        // (the port is random among two; retry from scratch until it collides)
        let (_, o2) = h.run_on(Hook::NodeIn, &c2);
        w2 = View::new(&o2).src();
        if w2 == w1 {
            break;
        }
        let e = h.entry_of(&c2).unwrap();
        h.reconciler()
            .maps_mut()
            .conntrack_mut()
            .remove_all([&key_of(&c2), &e.partner_key(17)])
            .unwrap();
    }
    assert_eq!(w2, w1, "client 2 never drew the freed port");
    // ...and client 1's next refresh moves it to another.
    age(&mut h, &c1);
    let (_, o1b) = h.run_on(Hook::NodeIn, &c1);
    let w1b = View::new(&o1b).src();
    assert_ne!(w1b, w2, "two clients' datagrams share one wire tuple");
    for (wire, client) in [(w2, "192.168.0.201:40000"), (w1b, "192.168.0.200:40000")] {
        let reply = Builder::udp(sa(backend), wire).build();
        let (_, back) = h.run_on(Hook::NodeIn, &reply);
        assert_eq!(
            View::new(&back).dst(),
            sa(client),
            "reply to {wire} misdelivered"
        );
    }
}

#[test]
fn a_flow_whose_forward_entry_was_evicted_adopts_its_reply_entry() {
    let mut h = Harness::new(&table(&[B1]));
    h.run(&tcp(CLIENT, VIP, TCP_SYN));
    h.run(&tcp(B1, CLIENT, TCP_SYN | TCP_ACK));
    let ack = tcp(CLIENT, VIP, TCP_ACK);
    evict(&mut h, &ack);
    let (_, out) = h.run(&ack);
    let w = View::new(&out);
    assert_eq!(
        (w.src(), w.dst()),
        (sa(CLIENT), sa(B1)),
        "the flow's own tuple was remapped"
    );
    let (_, back) = h.run(&tcp(B1, CLIENT, TCP_ACK));
    assert_eq!(
        View::new(&back).src(),
        sa(VIP),
        "replies still come from the frontend"
    );
}

#[test]
fn forgetting_a_stale_flow_never_deletes_another_flows_entry() {
    let mut h = one_port_harness();
    let c1 = Builder::udp(sa("192.168.0.200:40000"), sa("192.168.0.11:30080")).build();
    let (_, o1) = h.run_on(Hook::NodeIn, &c1);
    let w1 = View::new(&o1).src();
    evict(&mut h, &Builder::udp(sa("10.244.2.21:8080"), w1).build());
    let c2 = Builder::udp(sa("192.168.0.201:40000"), sa("192.168.0.11:30080")).build();
    let (_, o2) = h.run_on(Hook::NodeIn, &c2);
    assert_eq!(View::new(&o2).src(), w1, "the only port went to client 2");
    // Client 1's forward entry expires; its next datagram forgets it, and
    // must leave client 2's reply entry (its old partner's key) alone. The
    // only port is taken, so that datagram is dropped, and counted.
    let mut v = h.entry_of(&c1).unwrap();
    v.expires_s = 1;
    h.reconciler()
        .maps_mut()
        .conntrack_mut()
        .insert(&key_of(&c1), &v)
        .unwrap();
    let before = h.drops("no_free_tuple");
    assert_eq!(h.run_on(Hook::NodeIn, &c1).0, TC_ACT_SHOT);
    assert_eq!(h.drops("no_free_tuple"), before + 1, "the drop is counted");
    let reply = Builder::udp(sa("10.244.2.21:8080"), w1).build();
    let (_, back) = h.run_on(Hook::NodeIn, &reply);
    assert_eq!(
        View::new(&back).dst(),
        sa("192.168.0.201:40000"),
        "client 2's reply went elsewhere"
    );
}

#[test]
fn a_small_source_nat_range_is_searched_before_a_flow_is_dropped() {
    // Eight ports, eight clients: random draws alone would collide, the
    // probe after them finds the last free ports.
    testbed::privileges::require();
    let mut c = DatapathConfig::DEFAULT;
    c.snat_port_min = 20000;
    c.snat_port_max = 20007;
    let mut h = Harness::with_config(ONE_PORT_TABLE, &c).expect("harness");
    let mut ports = BTreeSet::new();
    for i in 0..8 {
        let c = Builder::udp(
            sa(&format!("192.168.0.{}:40000", 200 + i)),
            sa("192.168.0.11:30080"),
        )
        .build();
        let (verdict, out) = h.run_on(Hook::NodeIn, &c);
        assert_ne!(
            verdict, TC_ACT_SHOT,
            "client {i} dropped with free ports left"
        );
        ports.insert(View::new(&out).src().port());
    }
    assert_eq!(
        ports.len(),
        8,
        "every client has a port of its own: {ports:?}"
    );
    let ninth = Builder::udp(sa("192.168.0.250:40000"), sa("192.168.0.11:30080")).build();
    assert_eq!(
        h.run_on(Hook::NodeIn, &ninth).0,
        TC_ACT_SHOT,
        "the range is full"
    );
    assert_eq!(h.drops("no_free_tuple"), 1);
}

#[test]
fn traffic_from_outside_that_is_no_services_is_not_tracked() {
    let mut h = Harness::new(&table(&[B1]));
    // A pod's flow, translated at its interface, then seen again on a
    // node-facing hook (a bridge holding the pods' gateway): untouched.
    let (_, out) = h.run(&tcp(CLIENT, VIP, TCP_SYN));
    let (verdict, again) = h.run_on(Hook::NodeIn, &out);
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(
        again, out,
        "a node-facing hook rewrote the pod's translated flow"
    );
    // Datagrams from anywhere to anything that is no Service leave no entry.
    let before = h.conntrack().len();
    for i in 0..16 {
        let d = Builder::udp(sa(&format!("198.51.100.{i}:5000")), sa("10.244.1.11:9")).build();
        assert_eq!(h.run_on(Hook::NodeIn, &d).0, TC_ACT_OK);
    }
    assert_eq!(
        h.conntrack().len(),
        before,
        "outside traffic filled conntrack"
    );
}

/// A socket-path connection (direct to the backend) from the port of a
/// live per-packet flow to the same backend: its source port is remapped,
/// and its replies, translated back where they enter the node (the
/// backend's interface), leave by the client's interface untouched. Looked
/// up again there, their tuple is the per-packet flow's reply key, and they
/// would reach the client as from the ClusterIP, resetting the other flow.
#[test]
fn a_reply_translated_where_it_entered_is_not_translated_again_where_it_leaves() {
    let mut h = Harness::new(&table(&[B1]));
    let via_vip = tcp(CLIENT, VIP, TCP_SYN);
    h.run(&via_vip);
    h.run(&tcp(B1, CLIENT, TCP_SYN | TCP_ACK));
    h.run(&tcp(CLIENT, VIP, TCP_ACK));
    let held = h.entry_of(&via_vip).expect("the per-packet flow");
    let (_, syn) = h.run(&tcp(CLIENT, B1, TCP_SYN));
    let remapped = View::new(&syn).src();
    assert_ne!(remapped.port(), 40000, "the direct flow's port is remapped");
    let (_, reply) = h.run(&tcp(B1, &remapped.to_string(), TCP_SYN | TCP_ACK));
    let back = View::new(&reply);
    assert_eq!((back.src(), back.dst()), (sa(B1), sa(CLIENT)));
    // Forwarded out of the client's interface (ingress_ifindex set).
    let (verdict, out) = h.run_forwarded(Hook::Egress, &reply, 7);
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(out, reply, "a forwarded packet leaves as it came");
    assert_eq!(
        h.entry_of(&via_vip),
        Some(held),
        "the per-packet flow is untouched"
    );
    // Sent by the node itself (a host-network backend's reply), the same
    // tuple is the per-packet flow's, translated back to the ClusterIP.
    let (_, out) = h.run_on(Hook::Egress, &tcp(B1, CLIENT, TCP_ACK));
    assert_eq!(View::new(&out).src(), sa(VIP));
}
