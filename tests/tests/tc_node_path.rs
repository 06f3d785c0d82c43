//! The north-south translations on crafted packets (BPF_PROG_TEST_RUN):
//! NodePort with source NAT to another node's backend, local backends that
//! keep the client's address, `externalTrafficPolicy: Local`,
//! `loadBalancerSourceRanges`, hairpin, host-network backends (egress of
//! node- and pod-facing interfaces),
//! ICMP errors about source-NATed flows, fragmented datagrams, and flows
//! from outside on a NodePort flow's reply tuple.
use std::collections::BTreeSet;

use switchyard::inspect;
use testbed::{
    packet::{
        Builder, ICMP, TCP_ACK, TCP_RST, TCP_SYN, View, fragments, ipv4, reassembled_checksum_ok,
    },
    prog_test::{
        Harness, Hook, NODE_ADDR, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, assert_checksums, sa,
    },
};

const CLIENT: &str = "192.168.0.200:40000";
const LOCAL_BE: &str = "10.244.1.11:8080";
const REMOTE_BE: &str = "10.244.2.21:8080";
const POD: &str = "10.244.1.10:45000";

const TABLE: &str = "
node: {address: 192.168.0.11, localEndpoints: [10.244.1.11, 192.168.0.11]}
frontends:
  - {name: remote, kind: NodePort, address: 192.168.0.11, port: 30080, backends: [10.244.2.21:8080]}
  - {name: remote-udp, kind: NodePort, address: 192.168.0.11, port: 30080, protocol: UDP, backends: [10.244.2.21:8080]}
  - {name: local, kind: NodePort, address: 192.168.0.11, port: 30081, backends: [10.244.1.11:8080]}
  - {name: etp, kind: NodePort, address: 192.168.0.11, port: 30082, backends: [10.244.1.11:8080, 10.244.2.21:8080], localBackends: [10.244.1.11:8080]}
  - {name: etp-none, kind: NodePort, address: 192.168.0.11, port: 30083, backends: [10.244.2.21:8080], localBackends: []}
  - {name: lb, kind: LoadBalancer, address: 203.0.113.10, port: 80, backends: [10.244.1.11:8080], sourceRanges: [192.168.0.200/32, 10.244.1.10/32]}
  - {name: lb-nodeport, kind: NodePort, address: 192.168.0.11, port: 30084, backends: [10.244.1.11:8080]}
  - {name: empty, kind: NodePort, address: 192.168.0.11, port: 30085, backends: []}
  - {name: itp-local, address: 10.96.0.20, port: 80, backends: [], dropWhenEmpty: true}
  - {name: hostnet, kind: NodePort, address: 192.168.0.11, port: 30086, backends: ['192.168.0.11:10250']}
  - {name: hostnet-cluster-ip, address: 10.96.0.30, port: 443, backends: ['192.168.0.11:6443']}
  - {name: self, address: 10.96.0.10, port: 80, backends: [10.244.1.11:8080]}
  - {name: dns, address: 10.96.0.10, port: 53, protocol: UDP, backends: [10.244.1.11:5353]}
";

fn node_port(port: u16) -> String {
    format!("{NODE_ADDR}:{port}")
}

fn snat_port_ok(p: u16) -> bool {
    (20_000..=29_999).contains(&p)
}

#[test]
fn nodeport_to_a_backend_on_another_node_is_source_natted_and_translated_back() {
    let mut h = Harness::new(TABLE);
    let syn = Builder::tcp(sa(CLIENT), sa(&node_port(30080)), TCP_SYN).build();
    let (verdict, out) = h.run_on(Hook::NodeIn, &syn);
    assert_eq!(
        verdict, TC_ACT_REDIRECT,
        "its source is now the node's: sent out directly, not through routing"
    );
    let v = View::new(&out);
    assert_eq!(v.dst(), sa(REMOTE_BE));
    assert_eq!(v.src_ip().to_string(), NODE_ADDR, "source NAT to the node");
    let nat_port = v.src().port();
    assert!(
        snat_port_ok(nat_port),
        "port {nat_port} outside 20000-29999"
    );
    assert_checksums(&out);
    // Later packets of the flow take the same translation.
    let ack = Builder::tcp(sa(CLIENT), sa(&node_port(30080)), TCP_ACK).build();
    let (_, out) = h.run_on(Hook::NodeIn, &ack);
    assert_eq!(View::new(&out).src().port(), nat_port);
    // The reply comes back from the other node to the node's address.
    let reply = Builder::tcp(sa(REMOTE_BE), v.src(), TCP_SYN | TCP_ACK).build();
    let (verdict, out) = h.run_on(Hook::NodeIn, &reply);
    assert_eq!(
        verdict, TC_ACT_REDIRECT,
        "back out where the request came in"
    );
    let r = View::new(&out);
    assert_eq!(
        r.src(),
        sa(&node_port(30080)),
        "the client sees what it dialled"
    );
    assert_eq!(r.dst(), sa(CLIENT));
    assert_checksums(&out);
    // `switchyard inspect conntrack` shows the source-NAT entry.
    let rows = inspect::conntrack_rows(&h.conntrack(), u32::MAX / 2);
    let row = rows
        .iter()
        .find(|r| r.client == CLIENT)
        .expect("the flow is listed");
    assert!(
        row.snat && row.path == "node" && row.state == "established",
        "{row:?}"
    );
    assert_eq!(row.source_seen, format!("{NODE_ADDR}:{nat_port}"));
    assert_eq!(row.backend, REMOTE_BE);
}

#[test]
fn source_nat_gives_every_flow_its_own_port() {
    let mut h = Harness::new(TABLE);
    let mut ports = BTreeSet::new();
    for i in 0..300u16 {
        // Many clients using the same source port: only the node's port
        // tells their replies apart.
        let client = format!("192.168.0.{}:40000", 100 + i % 100);
        let client = if i < 100 {
            client
        } else {
            format!("192.168.0.{}:{}", 100 + i % 100, 40000 + i)
        };
        let syn = Builder::tcp(sa(&client), sa(&node_port(30080)), TCP_SYN).build();
        let (verdict, out) = h.run_on(Hook::NodeIn, &syn);
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert!(ports.insert(View::new(&out).src().port()), "port reused");
    }
}

#[test]
fn nodeport_to_a_local_backend_keeps_the_client_address() {
    let mut h = Harness::new(TABLE);
    let syn = Builder::tcp(sa(CLIENT), sa(&node_port(30081)), TCP_SYN).build();
    let (verdict, out) = h.run_on(Hook::NodeIn, &syn);
    assert_eq!(verdict, TC_ACT_OK, "routed to the local pod");
    let v = View::new(&out);
    assert_eq!((v.src(), v.dst()), (sa(CLIENT), sa(LOCAL_BE)));
    assert_checksums(&out);
    // The backend's reply leaves through its pod-facing interface.
    let reply = Builder::tcp(sa(LOCAL_BE), sa(CLIENT), TCP_SYN | TCP_ACK).build();
    let (verdict, out) = h.run_on(Hook::Pod, &reply);
    assert_eq!(
        verdict, TC_ACT_REDIRECT,
        "its new source is the node's own address: sent out directly"
    );
    let r = View::new(&out);
    assert_eq!((r.src(), r.dst()), (sa(&node_port(30081)), sa(CLIENT)));
    assert_checksums(&out);
}

/// A NodePort flow to a local backend, then a flow from the same client
/// port straight to that backend (another node's socket-path connection
/// from the port of its NodePort connection): on the backend's side both
/// have the same tuple. Once the NodePort flow is closed its entries must
/// not translate the new flow's replies; while it is live, the new flow's
/// source port is remapped and its replies translated back, and the
/// NodePort flow keeps its own.
#[test]
fn a_flow_from_outside_on_a_node_port_flows_reply_tuple_gets_its_own_replies() {
    let mut h = Harness::new(TABLE);
    let node_port_flow = |h: &mut Harness, client: &str| {
        let syn = Builder::tcp(sa(client), sa(&node_port(30081)), TCP_SYN).build();
        h.run_on(Hook::NodeIn, &syn);
        let syn_ack = Builder::tcp(sa(LOCAL_BE), sa(client), TCP_SYN | TCP_ACK).build();
        h.run_on(Hook::Pod, &syn_ack);
    };
    // Closed (a reset): a direct flow from the port is no one's to
    // translate, and neither are its replies, the SYN-ACK nor what follows.
    node_port_flow(&mut h, CLIENT);
    let rst = Builder::tcp(sa(CLIENT), sa(&node_port(30081)), TCP_RST | TCP_ACK).build();
    h.run_on(Hook::NodeIn, &rst);
    let direct = Builder::tcp(sa(CLIENT), sa(LOCAL_BE), TCP_SYN).build();
    let (verdict, out) = h.run_on(Hook::NodeIn, &direct);
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(out, direct, "nothing holds its reply tuple any more");
    for flags in [TCP_SYN | TCP_ACK, TCP_ACK] {
        let reply = Builder::tcp(sa(LOCAL_BE), sa(CLIENT), flags).build();
        let (verdict, out) = h.run_on(Hook::Pod, &reply);
        assert_eq!(verdict, TC_ACT_OK);
        assert_eq!(out, reply, "a reply of the direct flow was translated");
    }
    // Live: the direct flow is remapped, both get their own replies.
    let client = "192.168.0.200:40001";
    node_port_flow(&mut h, client);
    let direct = Builder::tcp(sa(client), sa(LOCAL_BE), TCP_SYN).build();
    let (verdict, out) = h.run_on(Hook::NodeIn, &direct);
    assert_eq!(verdict, TC_ACT_OK);
    let remapped = View::new(&out).src();
    assert_eq!(remapped.ip(), sa(client).ip(), "only the port is remapped");
    assert!(snat_port_ok(remapped.port()), "remapped to {remapped}");
    assert_checksums(&out);
    let reply = Builder::tcp(sa(LOCAL_BE), remapped, TCP_SYN | TCP_ACK).build();
    let (verdict, out) = h.run_on(Hook::Pod, &reply);
    assert_eq!(verdict, TC_ACT_OK, "routed back to the client as it is");
    let r = View::new(&out);
    assert_eq!((r.src(), r.dst()), (sa(LOCAL_BE), sa(client)));
    assert_checksums(&out);
    let node_port_reply = Builder::tcp(sa(LOCAL_BE), sa(client), TCP_ACK).build();
    let (_, out) = h.run_on(Hook::Pod, &node_port_reply);
    assert_eq!(View::new(&out).src(), sa(&node_port(30081)));
}

#[test]
fn external_traffic_policy_local_serves_outside_clients_from_this_node_only() {
    let mut h = Harness::new(TABLE);
    for i in 0..60u16 {
        let client = format!("192.168.0.200:{}", 41000 + i);
        let syn = Builder::tcp(sa(&client), sa(&node_port(30082)), TCP_SYN).build();
        let (verdict, out) = h.run_on(Hook::NodeIn, &syn);
        assert_eq!(verdict, TC_ACT_OK);
        let v = View::new(&out);
        assert_eq!(v.dst(), sa(LOCAL_BE), "only this node's endpoint");
        assert_eq!(v.src(), sa(&client), "the client's address is kept");
    }
    // Pods use the cluster's endpoints (kube-proxy's short-circuit).
    let mut seen = BTreeSet::new();
    for i in 0..60u16 {
        let pod = format!("10.244.1.10:{}", 42000 + i);
        let syn = Builder::tcp(sa(&pod), sa(&node_port(30082)), TCP_SYN).build();
        let (_, out) = h.run_on(Hook::Pod, &syn);
        seen.insert(View::new(&out).dst());
    }
    assert_eq!(seen, BTreeSet::from([sa(LOCAL_BE), sa(REMOTE_BE)]));
    // No local endpoint: dropped, as kube-proxy drops it (not rejected).
    let syn = Builder::tcp(sa(CLIENT), sa(&node_port(30083)), TCP_SYN).build();
    assert_eq!(h.run_on(Hook::NodeIn, &syn).0, TC_ACT_SHOT);
}

#[test]
fn load_balancer_source_ranges_filter_the_load_balancer_ip_only() {
    let mut h = Harness::new(TABLE);
    let lb = sa("203.0.113.10:80");
    let allowed = Builder::tcp(sa(CLIENT), lb, TCP_SYN).build();
    let (verdict, out) = h.run_on(Hook::NodeIn, &allowed);
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(View::new(&out).dst(), sa(LOCAL_BE));
    let other = Builder::tcp(sa("192.168.0.201:40000"), lb, TCP_SYN).build();
    assert_eq!(
        h.run_on(Hook::NodeIn, &other).0,
        TC_ACT_SHOT,
        "not in the ranges"
    );
    // Pods are filtered by their address too.
    let pod_in = Builder::tcp(sa(POD), lb, TCP_SYN).build();
    assert_eq!(h.run_on(Hook::Pod, &pod_in).0, TC_ACT_OK);
    let pod_out = Builder::tcp(sa("10.244.1.12:45000"), lb, TCP_SYN).build();
    assert_eq!(h.run_on(Hook::Pod, &pod_out).0, TC_ACT_SHOT);
    assert_eq!(h.drops("source_range_denied"), 2, "both refusals counted");
    // The same Service's NodePort is not subject to the ranges.
    let np = Builder::tcp(sa("192.168.0.201:40000"), sa(&node_port(30084)), TCP_SYN).build();
    let (verdict, out) = h.run_on(Hook::NodeIn, &np);
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(View::new(&out).dst(), sa(LOCAL_BE));
    // Ranges follow the Service: opening them to everyone lets the other in.
    h.apply(&TABLE.replace(
        "sourceRanges: [192.168.0.200/32, 10.244.1.10/32]",
        "sourceRanges: [0.0.0.0/0]",
    ));
    let other = Builder::tcp(sa("192.168.0.201:40001"), lb, TCP_SYN).build();
    assert_eq!(h.run_on(Hook::NodeIn, &other).0, TC_ACT_OK);
}

#[test]
fn no_endpoints_rejects_and_a_starved_local_policy_drops() {
    let mut h = Harness::new(TABLE);
    let syn = Builder::tcp(sa(CLIENT), sa(&node_port(30085)), TCP_SYN).build();
    let (verdict, out) = h.run_on(Hook::NodeIn, &syn);
    assert_eq!(verdict, TC_ACT_REDIRECT, "answered where it came from");
    let v = View::new(&out);
    assert_eq!(v.proto(), ICMP);
    assert_eq!(
        &v.l4()[..2],
        &[3, 3],
        "port unreachable: kube-proxy's REJECT"
    );
    let syn = Builder::tcp(sa(POD), sa("10.96.0.20:80"), TCP_SYN).build();
    assert_eq!(h.run_on(Hook::Pod, &syn).0, TC_ACT_SHOT);
    // Each verdict is counted under its reason.
    assert_eq!(h.drops("no_endpoints"), 1);
    assert_eq!(h.drops("no_allowed_endpoints"), 1);
}

#[test]
fn a_pod_reaching_itself_through_its_service_is_source_natted() {
    let mut h = Harness::new(TABLE);
    let me = "10.244.1.11:40000";
    let syn = Builder::tcp(sa(me), sa("10.96.0.10:80"), TCP_SYN).build();
    let (verdict, out) = h.run_on(Hook::Pod, &syn);
    assert_eq!(verdict, TC_ACT_REDIRECT, "back into the pod it came from");
    let v = View::new(&out);
    assert_eq!(v.dst(), sa(LOCAL_BE));
    assert_eq!(
        v.src_ip().to_string(),
        NODE_ADDR,
        "the pod sees the node as its peer"
    );
    assert_checksums(&out);
    let reply = Builder::tcp(sa(LOCAL_BE), v.src(), TCP_SYN | TCP_ACK).build();
    let (_, out) = h.run_on(Hook::Pod, &reply);
    let r = View::new(&out);
    assert_eq!((r.src(), r.dst()), (sa("10.96.0.10:80"), sa(me)));
    assert_checksums(&out);
}

#[test]
fn replies_of_a_host_network_backend_are_translated_on_egress() {
    let mut h = Harness::new(TABLE);
    let syn = Builder::tcp(sa(CLIENT), sa(&node_port(30086)), TCP_SYN).build();
    let (verdict, out) = h.run_on(Hook::NodeIn, &syn);
    assert_eq!(verdict, TC_ACT_OK, "delivered to the node's own process");
    let v = View::new(&out);
    assert_eq!((v.src(), v.dst()), (sa(CLIENT), sa("192.168.0.11:10250")));
    let reply = Builder::tcp(sa("192.168.0.11:10250"), sa(CLIENT), TCP_SYN | TCP_ACK).build();
    let (verdict, out) = h.run_on(Hook::Egress, &reply);
    assert_eq!(verdict, TC_ACT_OK, "already on its way out");
    let r = View::new(&out);
    assert_eq!((r.src(), r.dst()), (sa(&node_port(30086)), sa(CLIENT)));
    assert_checksums(&out);
    // Egress never starts a flow of its own.
    let other = Builder::tcp(sa("192.168.0.11:5000"), sa(&node_port(30080)), TCP_SYN).build();
    assert_eq!(h.run_on(Hook::Egress, &other), (TC_ACT_OK, other.clone()));
}

#[test]
fn replies_of_a_host_network_backend_to_a_pod_are_translated_on_the_pods_egress() {
    let mut h = Harness::new(TABLE);
    let syn = Builder::tcp(sa(POD), sa("10.96.0.30:443"), TCP_SYN).build();
    let (verdict, out) = h.run_on(Hook::Pod, &syn);
    assert_eq!(
        verdict, TC_ACT_OK,
        "a ClusterIP flow is left to the kernel's routing"
    );
    let v = View::new(&out);
    assert_eq!((v.src(), v.dst()), (sa(POD), sa("192.168.0.11:6443")));
    // The node's own process answers: the reply leaves through the pod's
    // interface without crossing any ingress hook.
    let reply = Builder::tcp(sa("192.168.0.11:6443"), sa(POD), TCP_SYN | TCP_ACK).build();
    let (verdict, out) = h.run_on(Hook::Egress, &reply);
    assert_eq!(verdict, TC_ACT_OK);
    let r = View::new(&out);
    assert_eq!((r.src(), r.dst()), (sa("10.96.0.30:443"), sa(POD)));
    assert_checksums(&out);
}

#[test]
fn an_icmp_error_about_a_source_natted_flow_reaches_the_client() {
    let mut h = Harness::new(TABLE);
    let dgram = Builder::udp(sa(CLIENT), sa(&node_port(30080))).build();
    let (_, out) = h.run_on(Hook::NodeIn, &dgram);
    let sent = View::new(&out);
    assert_eq!(sent.dst(), sa(REMOTE_BE));
    // The backend's port is closed: its node answers the node's address.
    let mut icmp = vec![3, 3, 0, 0, 0, 0, 0, 0];
    icmp.extend_from_slice(&out[14..14 + 28]);
    let err = ipv4(*sa(REMOTE_BE).ip(), sent.src_ip(), ICMP, &[], 0, icmp, true);
    let (verdict, out) = h.run_on(Hook::NodeIn, &err);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    let v = View::new(&out);
    assert_eq!(v.dst_ip(), *sa(CLIENT).ip(), "to the client");
    assert_eq!(v.src_ip().to_string(), NODE_ADDR, "from what it dialled");
    let inner = &v.l4()[8..];
    assert_eq!(
        &inner[12..16],
        &sa(CLIENT).ip().octets(),
        "quoting its own datagram"
    );
    assert_eq!(&inner[20..22], &40000u16.to_be_bytes());
    assert_eq!(&inner[16..20], &sa(&node_port(30080)).ip().octets());
    assert_eq!(&inner[22..24], &30080u16.to_be_bytes());
    assert_checksums(&out);
}

#[test]
fn every_fragment_of_a_large_datagram_is_translated() {
    let mut h = Harness::new(TABLE);
    let cases = [
        // (hook, client, frontend, backend, source NAT)
        (Hook::Pod, POD, "10.96.0.10:53", "10.244.1.11:5353", false),
        (Hook::NodeIn, CLIENT, "192.168.0.11:30080", REMOTE_BE, true),
    ];
    for (i, (hook, client, frontend, backend, snat)) in cases.into_iter().enumerate() {
        let mut b = Builder::udp(sa(client), sa(frontend));
        b.payload = (0..2000u32).map(|n| n as u8).collect();
        let (first, later) = fragments(&b.build(), 7 + i as u16, 1480);
        let (_, out1) = h.run_on(hook, &first);
        let (_, out2) = h.run_on(hook, &later);
        let (v1, v2) = (View::new(&out1), View::new(&out2));
        assert_eq!(v1.dst(), sa(backend), "first fragment: {hook:?}");
        assert_eq!(v2.dst_ip(), *sa(backend).ip(), "later fragment: {hook:?}");
        assert_eq!(v1.src_ip(), v2.src_ip());
        if snat {
            assert_eq!(v2.src_ip().to_string(), NODE_ADDR);
        }
        assert!(v1.ip_checksum_ok() && v2.ip_checksum_ok());
        assert!(
            reassembled_checksum_ok(&[&out1, &out2]),
            "the datagram's UDP checksum covers both fragments: {hook:?}"
        );
    }
    // A reply, fragmented by the backend, comes back whole too.
    let mut b = Builder::udp(sa("10.244.1.11:5353"), sa(POD));
    b.payload = vec![9; 2000];
    let (first, later) = fragments(&b.build(), 99, 1480);
    let (_, out1) = h.run_on(Hook::Pod, &first);
    let (_, out2) = h.run_on(Hook::Pod, &later);
    assert_eq!(View::new(&out1).src(), sa("10.96.0.10:53"));
    assert_eq!(View::new(&out2).src_ip(), *sa("10.96.0.10:53").ip());
    assert!(reassembled_checksum_ok(&[&out1, &out2]));
}
