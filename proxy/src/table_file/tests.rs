use super::*;

fn problems(text: &str) -> Vec<String> {
    match parse(text) {
        Err(Error::Invalid { problems, .. }) => problems.iter().map(ToString::to_string).collect(),
        other => panic!("expected validation problems, got {other:?}"),
    }
}

#[test]
fn parses_a_valid_table() {
    let table = parse(
        "frontends:
  - name: default/web:http
    address: 10.96.0.10
    port: 80
    backends: [10.244.1.2:8080, 10.244.1.3:8080, 10.244.1.2:8080]
  - address: 10.96.0.11
    port: 53
    protocol: UDP
    sessionAffinity: ClientIP
",
    )
    .unwrap();
    assert_eq!(table.frontends.len(), 2);
    let (key, web) = table.frontends.iter().next().unwrap();
    assert_eq!(key.to_string(), "10.96.0.10:80/TCP");
    assert_eq!(web.name, "default/web:http");
    assert_eq!(web.backends.len(), 2, "duplicate backend merged");
    assert_eq!(web.affinity_timeout_s, None);
    let dns = table.frontends.values().nth(1).unwrap();
    assert_eq!(dns.name, "10.96.0.11:53/UDP");
    assert_eq!(dns.affinity_timeout_s, Some(DEFAULT_AFFINITY_TIMEOUT_S));
    assert!(dns.backends.is_empty());
}

#[test]
fn names_entry_and_field_of_every_problem() {
    let p = problems(
        "frontends:
  - name: ok
    address: 10.96.0.10
    port: 80
  - name: bad-addr
    address: 10.96.0.300
    port: 80
  - name: bad-port
    address: 10.96.0.12
    port: 0
  - name: bad-proto
    address: 10.96.0.13
    port: 80
    protocol: ICMP
  - name: dup
    address: 10.96.0.10
    port: 80
  - name: bad-backend
    address: 10.96.0.14
    port: 80
    backends: [10.244.1.2:8080, 10.244.1.3:0, nonsense]
",
    );
    assert_eq!(
        p,
        [
            "frontends[1] (bad-addr).address: `10.96.0.300` is not an IPv4 address",
            "frontends[2] (bad-port).port: port 0 is not a valid port (1-65535)",
            "frontends[3] (bad-proto).protocol: unknown protocol `ICMP` (expected TCP, UDP or SCTP)",
            "frontends[4] (dup).address: duplicate frontend 10.96.0.10:80/TCP, first defined by frontends[0]",
            "frontends[5] (bad-backend).backends[1]: port 0 is not a valid port (1-65535)",
            "frontends[5] (bad-backend).backends[2]: `nonsense` is not ADDRESS:PORT",
        ]
    );
}

#[test]
fn same_address_and_port_with_other_protocol_is_not_a_duplicate() {
    let t = parse(
        "frontends:
  - {address: 10.96.0.10, port: 53, protocol: TCP}
  - {address: 10.96.0.10, port: 53, protocol: UDP}
",
    )
    .unwrap();
    assert_eq!(t.frontends.len(), 2);
}

#[test]
fn rejects_affinity_timeout_out_of_range_and_unknown_keys() {
    let p = problems(
        "frontends:
  - {address: 10.96.0.10, port: 80, sessionAffinity: ClientIP, affinityTimeoutSeconds: 0}
  - {address: 10.96.0.11, port: 80, sessionAffinity: Sticky}
  - {address: 10.96.0.12, port: 80, affinityTimeoutSeconds: 5}
",
    );
    assert_eq!(p.len(), 3, "{p:?}");
    assert!(p[0].contains("affinityTimeoutSeconds"), "{p:?}");
    assert!(p[1].contains("sessionAffinity: `Sticky`"), "{p:?}");
    assert!(p[2].contains("not ClientIP"), "{p:?}");
    let err = parse("frontends:\n  - {address: 10.96.0.10, port: 80, colour: blue}\n").unwrap_err();
    assert!(err.to_string().contains("colour"), "{err}");
}

#[test]
fn missing_fields_are_named() {
    let p = problems("frontends:\n  - name: x\n");
    assert_eq!(
        p,
        [
            "frontends[0] (x).address: missing",
            "frontends[0] (x).port: missing"
        ]
    );
}

#[test]
fn north_south_entries_and_the_node_section() {
    let t = parse(
        "node: {address: 192.168.0.11, localEndpoints: [10.244.1.2]}
frontends:
  - {address: 192.168.0.11, port: 30080, kind: NodePort, backends: [10.244.1.2:80, 10.244.2.2:80], localBackends: [10.244.1.2:80]}
  - {address: 203.0.113.1, port: 80, kind: LoadBalancer, backends: [10.244.2.2:80], sourceRanges: [192.0.2.7/24]}
  - {address: 10.96.0.9, port: 80, dropWhenEmpty: true}
",
    )
    .unwrap();
    assert_eq!(t.node.address, Some("192.168.0.11".parse().unwrap()));
    assert_eq!(t.node.local_endpoints.len(), 1);
    let specs: Vec<&FrontendSpec> = t.frontends.values().collect();
    assert_eq!(specs[0].kind, crate::model::FrontendKind::ClusterIp);
    assert!(specs[0].drop_when_empty);
    assert_eq!(specs[1].kind, crate::model::FrontendKind::NodePort);
    assert_eq!(specs[1].local_backends.as_ref().map(Vec::len), Some(1));
    assert_eq!(
        specs[2].source_ranges[0].to_string(),
        "192.0.2.0/24",
        "host bits cleared, as Go's ParseCIDR does"
    );
}

#[test]
fn north_south_problems_are_named_by_entry_and_field() {
    let p = problems(
        "node: {address: 10.0.0.300, localEndpoints: [x]}
frontends:
  - {address: 10.96.0.10, port: 80, localBackends: [10.244.1.2:80]}
  - {address: 192.168.0.11, port: 30080, kind: NodePort, sourceRanges: [10.0.0.0/8]}
  - {address: 203.0.113.1, port: 80, kind: LoadBalancer, sourceRanges: [10.0.0.0/33]}
  - {address: 203.0.113.2, port: 80, kind: Ingress}
",
    );
    assert_eq!(
        p,
        [
            "node.address: `10.0.0.300` is not an IPv4 address",
            "node.localEndpoints[0]: `x` is not an IPv4 address",
            "frontends[0].localBackends: only external kinds (NodePort, ExternalIP, LoadBalancer) have an external traffic policy",
            "frontends[1].sourceRanges: only LoadBalancer frontends have source ranges",
            "frontends[2].sourceRanges[0]: `10.0.0.0/33` is not an IPv4 CIDR (ADDRESS/0..32)",
            "frontends[3].kind: `Ingress` is not one of ClusterIP, NodePort, ExternalIP, LoadBalancer",
        ]
    );
}
