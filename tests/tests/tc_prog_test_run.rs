//! The TC program run by the kernel on crafted packets (BPF_PROG_TEST_RUN,
//! v4.12+): DNAT, conntrack, reverse NAT, checksums, reject, affinity, ICMP
//! errors, and malformed input. Maps are programmed through the real
//! reconciler, as the daemon would.
use std::net::Ipv4Addr;

use switchyard::datapath::{MapSizes, loader::Dataplane};
use testbed::{
    packet::{Builder, ICMP, TCP_ACK, TCP_SYN, View, checksum, ipv4},
    privileges,
    prog_test::{Harness, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, assert_checksums, sa},
};

const VIP: &str = "10.96.0.10:80";
const CLIENT: &str = "10.244.1.10:40000";
const BACKENDS: [&str; 3] = ["10.244.1.11:8080", "10.244.1.12:8080", "10.244.1.13:8080"];

fn web(backends: &[&str], extra: &str) -> String {
    let list = backends.join(", ");
    format!(
        "frontends:\n  - {{address: 10.96.0.10, port: 80, backends: [{list}]{extra}}}\n  - {{address: 10.96.0.10, port: 53, protocol: UDP, backends: [{list}]{extra}}}\n"
    )
}

fn syn(client: &str) -> Vec<u8> {
    Builder::tcp(sa(client), sa(VIP), TCP_SYN).build()
}

#[test]
fn tc_lb4_dnat_first_packet_to_a_backend() {
    let mut h = Harness::new(&web(&BACKENDS, ""));
    let (verdict, out) = h.run(&syn(CLIENT));
    assert_eq!(verdict, TC_ACT_OK);
    let v = View::new(&out);
    assert_eq!(v.src(), sa(CLIENT), "source untouched");
    assert!(
        BACKENDS.iter().any(|b| sa(b) == v.dst()),
        "DNAT to a backend, got {}",
        v.dst()
    );
    assert_checksums(&out);
}

#[test]
fn tc_lb4_later_packets_keep_their_backend_and_replies_are_reverse_natted() {
    let mut h = Harness::new(&web(&BACKENDS, ""));
    let (_, first) = h.run(&syn(CLIENT));
    let backend = View::new(&first).dst();
    for i in 0..30 {
        let mut b = Builder::tcp(sa(CLIENT), sa(VIP), TCP_ACK);
        b.payload = vec![i; 100 + usize::from(i)];
        let (verdict, out) = h.run(&b.build());
        assert_eq!(verdict, TC_ACT_OK);
        assert_eq!(
            View::new(&out).dst(),
            backend,
            "packet {i} of the flow moved"
        );
        assert_checksums(&out);
    }
    let reply = Builder::tcp(backend, sa(CLIENT), TCP_SYN | TCP_ACK).build();
    let (verdict, out) = h.run(&reply);
    assert_eq!(
        verdict, TC_ACT_REDIRECT,
        "replies go straight back out where the request came in"
    );
    let v = View::new(&out);
    assert_eq!(v.src(), sa(VIP), "reply source restored to the frontend");
    assert_eq!(v.dst(), sa(CLIENT));
    assert_checksums(&out);
}

#[test]
fn tc_lb4_udp_translation_keeps_checksums_and_a_zero_checksum_stays_zero() {
    let mut h = Harness::new(&web(&BACKENDS, ""));
    let vip53 = sa("10.96.0.10:53");
    let (verdict, out) = h.run(&Builder::udp(sa(CLIENT), vip53).build());
    assert_eq!(verdict, TC_ACT_OK);
    let backend = View::new(&out).dst();
    assert!(BACKENDS.iter().any(|b| sa(b) == backend));
    assert_checksums(&out);
    let (_, back) = h.run(&Builder::udp(backend, sa(CLIENT)).build());
    assert_eq!(View::new(&back).src(), vip53);
    assert_checksums(&back);

    // RFC 768: a UDP checksum of zero means "none" and must not be invented.
    let mut pkt = Builder::udp(sa("10.244.1.10:40001"), vip53).build();
    let l4 = 14 + 20;
    pkt[l4 + 6..l4 + 8].fill(0);
    let (_, out) = h.run(&pkt);
    assert_eq!(&out[l4 + 6..l4 + 8], &[0, 0]);
    assert_ne!(View::new(&out).dst(), vip53, "still translated");
}

#[test]
fn tc_lb4_spreads_new_flows_uniformly() {
    let mut h = Harness::new(&web(&BACKENDS, ""));
    let mut counts = std::collections::BTreeMap::new();
    for port in 0..3000u16 {
        let (_, out) = h.run(&syn(&format!("10.244.1.10:{}", 20000 + port)));
        *counts.entry(View::new(&out).dst()).or_insert(0) += 1;
    }
    assert_eq!(counts.len(), 3, "{counts:?}");
    assert!(counts.values().all(|n| *n > 800), "not uniform: {counts:?}");
}

#[test]
fn tc_lb4_no_backends_answers_icmp_port_unreachable() {
    let mut h = Harness::new(&web(&[], ""));
    for pkt in [
        syn(CLIENT),
        Builder::udp(sa(CLIENT), sa("10.96.0.10:53")).build(),
    ] {
        let (verdict, out) = h.run(&pkt);
        assert_eq!(
            verdict, TC_ACT_REDIRECT,
            "sent back out of the interface it came in on"
        );
        let v = View::new(&out);
        assert_eq!(v.proto(), ICMP);
        assert_eq!(
            (v.src_ip(), v.dst_ip()),
            (Ipv4Addr::new(10, 96, 0, 10), Ipv4Addr::new(10, 244, 1, 10))
        );
        assert_eq!(
            &v.l4()[..2],
            &[3, 3],
            "destination unreachable / port unreachable"
        );
        assert_eq!(
            &v.l4()[8..36],
            &pkt[14..42],
            "quotes the original header and 8 bytes"
        );
        assert_eq!(&out[..6], &pkt[6..12], "to the sender's MAC");
        assert_checksums(&out);
    }
}

#[test]
fn tc_lb4_affinity_keeps_a_client_on_one_backend() {
    let mut h = Harness::new(&web(&BACKENDS, ", sessionAffinity: ClientIP"));
    let mut seen = std::collections::BTreeSet::new();
    for port in 0..50u16 {
        let (_, out) = h.run(&syn(&format!("10.244.1.10:{}", 30000 + port)));
        seen.insert(View::new(&out).dst());
    }
    assert_eq!(seen.len(), 1, "one client, one backend: {seen:?}");
    // Other clients are spread independently.
    let mut others = std::collections::BTreeSet::new();
    for c in 20..80u8 {
        let (_, out) = h.run(&syn(&format!("10.244.2.{c}:30000")));
        others.insert(View::new(&out).dst());
    }
    assert_eq!(others.len(), 3, "{others:?}");
    // When the affine backend leaves the frontend, the client moves on.
    let gone = *seen.iter().next().unwrap();
    let rest: Vec<String> = BACKENDS
        .iter()
        .filter(|b| sa(b) != gone)
        .map(|s| (*s).to_owned())
        .collect();
    let rest: Vec<&str> = rest.iter().map(String::as_str).collect();
    h.apply(&web(&rest, ", sessionAffinity: ClientIP"));
    let (_, out) = h.run(&syn("10.244.1.10:31000"));
    assert_ne!(View::new(&out).dst(), gone);
}

#[test]
fn tc_lb4_new_syn_on_a_reused_tuple_leaves_a_removed_backend() {
    let mut h = Harness::new(&web(&BACKENDS, ""));
    let (_, out) = h.run(&syn(CLIENT));
    let first = View::new(&out).dst();
    let rest: Vec<&str> = BACKENDS
        .iter()
        .copied()
        .filter(|b| sa(b) != first)
        .collect();
    h.apply(&web(&rest, ""));
    // The established flow keeps its backend (as conntrack does for TCP)…
    let (_, out) = h.run(&Builder::tcp(sa(CLIENT), sa(VIP), TCP_ACK).build());
    assert_eq!(View::new(&out).dst(), first);
    // …but a new connection on the same tuple picks a current backend.
    for _ in 0..20 {
        let (_, out) = h.run(&syn(CLIENT));
        assert_ne!(View::new(&out).dst(), first);
    }
}

#[test]
fn tc_lb4_non_service_traffic_is_untouched() {
    let mut h = Harness::new(&web(&BACKENDS, ""));
    let direct = Builder::tcp(sa(CLIENT), sa("10.244.1.11:8080"), TCP_SYN).build();
    let other_port = Builder::tcp(sa(CLIENT), sa("10.96.0.10:81"), TCP_SYN).build();
    let mut arp = syn(CLIENT);
    arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    let mut ipv6 = syn(CLIENT);
    ipv6[12..14].copy_from_slice(&0x86ddu16.to_be_bytes());
    for pkt in [direct, other_port, arp, ipv6] {
        let (verdict, out) = h.run(&pkt);
        assert_eq!(verdict, TC_ACT_OK);
        assert_eq!(out, pkt);
    }
}

#[test]
fn tc_lb4_malformed_and_fragmented_packets_pass_without_harm() {
    let mut h = Harness::new(&web(&BACKENDS, ""));
    let good = syn(CLIENT);
    let mut cases: Vec<(&str, Vec<u8>)> = vec![
        // (BPF_PROG_TEST_RUN itself refuses IPv4 frames shorter than 20 bytes of header.)
        ("no transport header", good[..34].to_vec()),
        ("truncated TCP header", good[..14 + 20 + 10].to_vec()),
    ];
    let mut long_ihl = good[..14 + 20 + 8].to_vec();
    long_ihl[14] = 0x4f;
    cases.push(("IHL pointing past the packet", long_ihl));
    let mut bad_ihl = good.clone();
    bad_ihl[14] = 0x44;
    cases.push(("IHL below 5", bad_ihl));
    let mut v6_in_v4 = good.clone();
    v6_in_v4[14] = 0x65;
    cases.push(("IP version 6 in an IPv4 frame", v6_in_v4));
    let mut frag = Builder::tcp(sa(CLIENT), sa(VIP), TCP_SYN);
    frag.frag = 0x0010; // offset 128, its first fragment never seen
    cases.push(("a later fragment of an unknown datagram", frag.build()));
    for (what, pkt) in cases {
        let (verdict, out) = h.run(&pkt);
        assert_eq!(verdict, TC_ACT_OK, "{what}");
        assert_eq!(out, pkt, "{what} must pass unchanged");
    }
    // IP options move the transport header; the translation follows it.
    let mut opts = Builder::tcp(sa("10.244.1.10:40002"), sa(VIP), TCP_SYN);
    opts.ip_options = vec![1, 1, 1, 0];
    let (verdict, out) = h.run(&opts.build());
    assert_eq!(verdict, TC_ACT_OK);
    let v = View::new(&out);
    assert_eq!(v.ihl, 24);
    assert!(BACKENDS.iter().any(|b| sa(b) == v.dst()), "{:?}", v.dst());
    assert_checksums(&out);
}

#[test]
fn tc_lb4_icmp_error_from_a_backend_is_rewritten_to_the_frontend() {
    let mut h = Harness::new(&web(&BACKENDS, ""));
    let vip53 = sa("10.96.0.10:53");
    let (_, out) = h.run(&Builder::udp(sa(CLIENT), vip53).build());
    let backend = View::new(&out).dst();
    // The backend's kernel quotes the datagram as it received it.
    let quoted = &out[14..14 + 28];
    let mut icmp = vec![3, 3, 0, 0, 0, 0, 0, 0];
    icmp.extend_from_slice(quoted);
    let err = ipv4(*backend.ip(), *sa(CLIENT).ip(), ICMP, &[], 0, icmp, true);
    let (verdict, out) = h.run(&err);
    assert_eq!(
        verdict, TC_ACT_REDIRECT,
        "to the client, like the flow's replies"
    );
    let v = View::new(&out);
    assert_eq!(v.src_ip(), *vip53.ip(), "error comes from the frontend");
    let inner = &v.l4()[8..];
    assert_eq!(
        &inner[16..20],
        &vip53.ip().octets(),
        "quoted destination is the frontend"
    );
    assert_eq!(
        &inner[22..24],
        &53u16.to_be_bytes(),
        "quoted port is the frontend's"
    );
    assert_eq!(checksum(&inner[..20]), 0, "quoted IPv4 header checksum");
    assert_checksums(&out);
    // An ICMP error about an unknown flow passes unchanged.
    let mut icmp = vec![3, 3, 0, 0, 0, 0, 0, 0];
    icmp.extend_from_slice(&Builder::udp(sa("10.244.9.9:1"), sa("10.244.9.8:2")).build()[14..42]);
    let stray = ipv4(
        Ipv4Addr::new(10, 244, 9, 8),
        Ipv4Addr::new(10, 244, 9, 9),
        ICMP,
        &[],
        0,
        icmp,
        true,
    );
    assert_eq!(h.run(&stray), (TC_ACT_OK, stray.clone()));
}

#[test]
fn tc_lb4_reject_drops_packets_with_ip_options_instead_of_misquoting() {
    let mut h = Harness::new(&web(&[], ""));
    let mut b = Builder::tcp(sa(CLIENT), sa(VIP), TCP_SYN);
    b.ip_options = vec![1, 1, 1, 0];
    assert_eq!(h.run(&b.build()).0, TC_ACT_SHOT);
}

#[test]
fn default_map_sizes_load_in_the_kernel() {
    privileges::require();
    let sizes = MapSizes::default();
    assert!(sizes.frontends >= 65_536 && sizes.backends >= 262_144 && sizes.conntrack >= 1_048_576);
    let mut dp = Dataplane::load(None, &sizes).expect("load with default sizes");
    use switchyard::datapath::LbMaps as _;
    let mut maps = dp.lb_maps().unwrap();
    assert_eq!(maps.capacity(), sizes.capacity());
    let ct = maps.conntrack_mut();
    assert_eq!(ct.capacity(), sizes.conntrack);
}
