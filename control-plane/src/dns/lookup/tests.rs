use hickory_server::proto::rr::RData;

use super::*;
use crate::dns::snapshot::Snapshot;

fn yaml<T: serde::de::DeserializeOwned>(s: &str) -> T {
    serde_yaml::from_str(s).unwrap()
}

fn snapshot() -> Snapshot {
    let namespaces: Vec<k8s_openapi::api::core::v1::Namespace> = vec![
        yaml("metadata: {name: default}"),
        yaml("metadata: {name: kube-system}"),
    ];
    let services: Vec<k8s_openapi::api::core::v1::Service> = vec![
        yaml(
            "metadata: {name: web, namespace: default}\nspec: {clusterIP: 10.96.0.20, clusterIPs: [10.96.0.20], ports: [{name: http, port: 80, protocol: TCP}, {name: dns, port: 53, protocol: UDP}, {port: 9000, protocol: TCP}]}",
        ),
        yaml(
            "metadata: {name: db, namespace: default}\nspec: {clusterIP: None, ports: [{name: pg, port: 5432}]}",
        ),
        yaml("metadata: {name: empty, namespace: default}\nspec: {clusterIP: None}"),
        yaml(
            "metadata: {name: ext, namespace: default}\nspec: {type: ExternalName, externalName: foo.example.com}",
        ),
        yaml(
            "metadata: {name: alias, namespace: default}\nspec: {type: ExternalName, externalName: web.default.svc.cluster.local}",
        ),
        yaml(
            "metadata: {name: kube-dns, namespace: kube-system}\nspec: {clusterIP: 10.96.0.10, ports: [{name: dns, port: 53, protocol: UDP}]}",
        ),
    ];
    let slices: Vec<k8s_openapi::api::discovery::v1::EndpointSlice> = vec![
        yaml(
            "metadata: {name: db-x, namespace: default, labels: {kubernetes.io/service-name: db}}\naddressType: IPv4\nports: [{name: pg, port: 5432, protocol: TCP}]\nendpoints:\n- {addresses: [10.244.1.5], hostname: db-0}\n- {addresses: [10.244.1.6]}\n- {addresses: [10.244.1.7], conditions: {ready: false}}\n",
        ),
        yaml(
            "metadata: {name: web-x, namespace: default, labels: {kubernetes.io/service-name: web}}\naddressType: IPv4\nports: [{name: http, port: 8080, protocol: TCP}]\nendpoints:\n- {addresses: [10.244.2.9]}\n",
        ),
    ];
    Snapshot::build(&namespaces, &services, &slices, 42)
}

fn zone() -> Zone {
    Zone::new("cluster.local", DEFAULT_TTL).unwrap()
}

fn q(name: &str, t: RecordType) -> Resolution {
    resolve(&snapshot(), &zone(), &Name::from_ascii(name).unwrap(), t)
}

/// The answers' data as text, in order.
fn answers(r: &Resolution) -> Vec<String> {
    match r {
        Resolution::Answer { answers, .. } => answers.iter().map(|a| a.data.to_string()).collect(),
        other => panic!("expected an answer, got {other:?}"),
    }
}

fn additionals(r: &Resolution) -> Vec<String> {
    match r {
        Resolution::Answer { additionals, .. } => additionals
            .iter()
            .map(|a| format!("{} {}", a.name, a.data))
            .collect(),
        other => panic!("expected an answer, got {other:?}"),
    }
}

fn is_nxdomain(r: &Resolution) -> bool {
    matches!(r, Resolution::NxDomain { .. })
}

fn is_nodata(r: &Resolution) -> bool {
    matches!(r, Resolution::NoData { .. })
}

#[test]
fn cluster_ip_service_a_and_nodata_for_other_types() {
    assert_eq!(
        answers(&q("web.default.svc.cluster.local.", RecordType::A)),
        ["10.96.0.20"]
    );
    assert_eq!(
        answers(&q("WEB.Default.SVC.cluster.LOCAL.", RecordType::A)),
        ["10.96.0.20"]
    );
    let r = q("web.default.svc.cluster.local.", RecordType::A);
    let Resolution::Answer { answers, .. } = &r else {
        unreachable!()
    };
    assert_eq!(answers[0].ttl, 5);
    assert!(is_nodata(&q(
        "web.default.svc.cluster.local.",
        RecordType::AAAA
    )));
    assert!(is_nodata(&q(
        "web.default.svc.cluster.local.",
        RecordType::TXT
    )));
    assert!(is_nodata(&q(
        "web.default.svc.cluster.local.",
        RecordType::MX
    )));
    assert!(is_nxdomain(&q(
        "nope.default.svc.cluster.local.",
        RecordType::A
    )));
    assert!(is_nxdomain(&q(
        "nope.default.svc.cluster.local.",
        RecordType::AAAA
    )));
    assert!(is_nxdomain(&q(
        "web.nons.svc.cluster.local.",
        RecordType::A
    )));
}

#[test]
fn zone_structure_names_are_nodata_or_nxdomain() {
    assert!(is_nodata(&q("cluster.local.", RecordType::A)));
    assert!(is_nodata(&q("svc.cluster.local.", RecordType::A)));
    assert!(is_nodata(&q("pod.cluster.local.", RecordType::A)));
    assert!(is_nodata(&q("default.svc.cluster.local.", RecordType::A)));
    assert!(is_nxdomain(&q("nons.svc.cluster.local.", RecordType::A)));
    assert!(is_nxdomain(&q("web.default.cluster.local.", RecordType::A)));
    assert!(is_nxdomain(&q(
        "a.b.web.default.svc.cluster.local.",
        RecordType::A
    )));
    assert_eq!(
        answers(&q("dns-version.cluster.local.", RecordType::TXT)),
        ["1.1.0"]
    );
    let soa = q("cluster.local.", RecordType::SOA);
    assert_eq!(
        answers(&soa),
        ["ns.dns.cluster.local. hostmaster.cluster.local. 42 7200 1800 86400 5"]
    );
    assert_eq!(
        answers(&q("cluster.local.", RecordType::NS)),
        ["ns.dns.cluster.local."]
    );
    assert_eq!(
        answers(&q("ns.dns.cluster.local.", RecordType::A)),
        ["10.96.0.10"]
    );
}

#[test]
fn srv_for_named_ports_of_a_cluster_ip_service() {
    let r = q("_http._tcp.web.default.svc.cluster.local.", RecordType::SRV);
    assert_eq!(answers(&r), ["0 100 80 web.default.svc.cluster.local."]);
    assert_eq!(
        additionals(&r),
        ["web.default.svc.cluster.local. 10.96.0.20"]
    );
    assert_eq!(
        answers(&q(
            "_dns._udp.web.default.svc.cluster.local.",
            RecordType::SRV
        )),
        ["0 100 53 web.default.svc.cluster.local."]
    );
    // Wrong protocol, unknown port name: no such name.
    assert!(is_nxdomain(&q(
        "_http._udp.web.default.svc.cluster.local.",
        RecordType::SRV
    )));
    assert!(is_nxdomain(&q(
        "_nope._tcp.web.default.svc.cluster.local.",
        RecordType::SRV
    )));
    // The Service name itself: every port (CoreDNS), weights shared.
    assert_eq!(
        answers(&q("web.default.svc.cluster.local.", RecordType::SRV)),
        [
            "0 33 80 web.default.svc.cluster.local.",
            "0 33 53 web.default.svc.cluster.local.",
            "0 33 9000 web.default.svc.cluster.local."
        ]
    );
}

#[test]
fn headless_service_publishes_ready_endpoints() {
    assert_eq!(
        answers(&q("db.default.svc.cluster.local.", RecordType::A)),
        ["10.244.1.5", "10.244.1.6"]
    );
    assert_eq!(
        answers(&q("db-0.db.default.svc.cluster.local.", RecordType::A)),
        ["10.244.1.5"]
    );
    assert_eq!(
        answers(&q(
            "10-244-1-6.db.default.svc.cluster.local.",
            RecordType::A
        )),
        ["10.244.1.6"]
    );
    // Not ready: not published.
    assert!(is_nxdomain(&q(
        "10-244-1-7.db.default.svc.cluster.local.",
        RecordType::A
    )));
    // No endpoints at all: NXDOMAIN (the specification).
    assert!(is_nxdomain(&q(
        "empty.default.svc.cluster.local.",
        RecordType::A
    )));
    let r = q("_pg._tcp.db.default.svc.cluster.local.", RecordType::SRV);
    assert_eq!(
        answers(&r),
        [
            "0 50 5432 db-0.db.default.svc.cluster.local.",
            "0 50 5432 10-244-1-6.db.default.svc.cluster.local."
        ]
    );
    assert_eq!(
        additionals(&r),
        [
            "db-0.db.default.svc.cluster.local. 10.244.1.5",
            "10-244-1-6.db.default.svc.cluster.local. 10.244.1.6"
        ]
    );
    // An endpoint name under a ClusterIP Service answers too (CoreDNS).
    assert_eq!(
        answers(&q(
            "10-244-2-9.web.default.svc.cluster.local.",
            RecordType::A
        )),
        ["10.244.2.9"]
    );
}

#[test]
fn external_name_is_a_cname() {
    let r = q("ext.default.svc.cluster.local.", RecordType::A);
    assert_eq!(answers(&r), ["foo.example.com."]);
    let Resolution::Answer { chase, .. } = &r else {
        unreachable!()
    };
    assert_eq!(
        chase.as_ref().map(ToString::to_string).as_deref(),
        Some("foo.example.com.")
    );
    assert_eq!(
        answers(&q("ext.default.svc.cluster.local.", RecordType::CNAME)),
        ["foo.example.com."]
    );
    assert!(is_nodata(&q(
        "ext.default.svc.cluster.local.",
        RecordType::SRV
    )));
    assert!(is_nxdomain(&q(
        "_http._tcp.ext.default.svc.cluster.local.",
        RecordType::SRV
    )));
    // An in-zone target is followed here.
    assert_eq!(
        answers(&q("alias.default.svc.cluster.local.", RecordType::A)),
        ["web.default.svc.cluster.local.", "10.96.0.20"]
    );
    assert!(is_nodata(&q(
        "web.default.svc.cluster.local.",
        RecordType::CNAME
    )));
}

#[test]
fn pod_records_insecure() {
    assert_eq!(
        answers(&q("10-244-1-9.default.pod.cluster.local.", RecordType::A)),
        ["10.244.1.9"]
    );
    assert!(is_nodata(&q(
        "10-244-1-9.default.pod.cluster.local.",
        RecordType::AAAA
    )));
    assert_eq!(
        answers(&q("fd00--9.default.pod.cluster.local.", RecordType::AAAA)),
        ["fd00::9"]
    );
    assert!(is_nxdomain(&q(
        "10-244-1-9.nons.pod.cluster.local.",
        RecordType::A
    )));
    assert!(is_nxdomain(&q(
        "not-an-ip.default.pod.cluster.local.",
        RecordType::A
    )));
}

#[test]
fn ptr_for_cluster_ips_and_endpoints() {
    assert_eq!(
        answers(&q("20.0.96.10.in-addr.arpa.", RecordType::PTR)),
        ["web.default.svc.cluster.local."]
    );
    assert_eq!(
        answers(&q("5.1.244.10.in-addr.arpa.", RecordType::PTR)),
        ["db-0.db.default.svc.cluster.local."]
    );
    assert!(is_nodata(&q("20.0.96.10.in-addr.arpa.", RecordType::A)));
    assert!(matches!(
        q("99.0.96.10.in-addr.arpa.", RecordType::PTR),
        Resolution::UnknownReverse { .. }
    ));
    assert!(matches!(
        q("96.10.in-addr.arpa.", RecordType::PTR),
        Resolution::UnknownReverse { .. }
    ));
    assert_eq!(
        reverse_ip(&Name::from_ascii("5.1.244.10.in-addr.arpa.").unwrap()),
        Some("10.244.1.5".parse().unwrap())
    );
    let v6 = "9.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa.";
    assert_eq!(
        reverse_ip(&Name::from_ascii(v6).unwrap()),
        Some("fd00::9".parse().unwrap())
    );
}

#[test]
fn outside_names_and_transfers() {
    assert_eq!(q("example.com.", RecordType::A), Resolution::Outside);
    assert_eq!(
        q("cluster.local.example.com.", RecordType::A),
        Resolution::Outside
    );
    assert_eq!(q("cluster.local.", RecordType::AXFR), Resolution::Refused);
}

#[test]
fn unsynced_caches_answer_servfail_not_nxdomain() {
    let snap = Snapshot::default();
    let r = resolve(
        &snap,
        &zone(),
        &Name::from_ascii("web.default.svc.cluster.local.").unwrap(),
        RecordType::A,
    );
    assert_eq!(r, Resolution::ServFail);
}

#[test]
fn other_cluster_domains() {
    let z = Zone::new("corp.internal", 30).unwrap();
    let r = resolve(
        &snapshot(),
        &z,
        &Name::from_ascii("web.default.svc.corp.internal").unwrap(),
        RecordType::A,
    );
    assert_eq!(answers(&r), ["10.96.0.20"]);
    assert_eq!(
        resolve(
            &snapshot(),
            &z,
            &Name::from_ascii("web.default.svc.cluster.local.").unwrap(),
            RecordType::A
        ),
        Resolution::Outside
    );
    assert!(Zone::new(".", 5).is_err());
    let _ = RData::A(A("1.2.3.4".parse().unwrap()));
}
