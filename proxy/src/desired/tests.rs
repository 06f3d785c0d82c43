//! [`compute`] from real YAML under `proxy/testdata/`.
use std::{path::Path, sync::Arc};

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use serde::Deserialize as _;

use super::*;
use crate::{datapath::Capacity, model::FrontendKey};

pub(crate) fn load(file: &str) -> (Vec<Arc<Service>>, Vec<Arc<EndpointSlice>>) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata")
        .join(file);
    let text = std::fs::read_to_string(&path).unwrap();
    let (mut services, mut slices) = (Vec::new(), Vec::new());
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let value = serde_yaml::Value::deserialize(doc).unwrap();
        match value["kind"].as_str() {
            Some("Service") => services.push(Arc::new(serde_yaml::from_value(value).unwrap())),
            Some("EndpointSlice") => slices.push(Arc::new(serde_yaml::from_value(value).unwrap())),
            other => panic!("{file}: unexpected kind {other:?}"),
        }
    }
    (services, slices)
}

fn compute_file(file: &str, node: Option<&str>) -> Outcome {
    let (services, slices) = load(file);
    compute(
        &services,
        &slices,
        &NodeContext {
            name: node.map(str::to_owned),
            ..NodeContext::default()
        },
    )
}

/// The table as `frontend name backends… [affinity]` lines.
fn lines(out: &Outcome) -> Vec<String> {
    out.table
        .frontends
        .iter()
        .map(|(k, f)| {
            let backends: Vec<String> = f
                .backends
                .iter()
                .map(|b| format!("{}:{}", b.addr, b.port))
                .collect();
            let mut line = format!("{k} {} [{}]", f.name, backends.join(" "));
            if f.kind != crate::model::FrontendKind::ClusterIp {
                line.push_str(&format!(" {}", f.kind));
            }
            if let Some(local) = &f.local_backends {
                let local: Vec<String> = local
                    .iter()
                    .map(|b| format!("{}:{}", b.addr, b.port))
                    .collect();
                line.push_str(&format!(" local=[{}]", local.join(" ")));
            }
            if let Some(t) = f.affinity_timeout_s {
                line.push_str(&format!(" affinity={t}s"));
            }
            if !f.source_ranges.is_empty() {
                let r: Vec<String> = f.source_ranges.iter().map(ToString::to_string).collect();
                line.push_str(&format!(" sources={}", r.join(",")));
            }
            if f.drop_when_empty {
                line.push_str(" drop");
            }
            line
        })
        .collect()
}

#[test]
fn multi_port_service_with_named_target_port_and_merged_slices() {
    let out = compute_file("multi-port.yaml", Some("node-a"));
    assert_eq!(
        lines(&out),
        [
            "10.96.0.10:80/TCP shop/web:http [10.244.1.11:8080 10.244.1.12:8080 10.244.2.9:8080]",
            "10.96.0.10:9090/TCP shop/web:metrics [10.244.1.11:9091 10.244.1.12:9091 10.244.2.9:9091]",
        ]
    );
    assert!(out.skipped.is_empty(), "{:?}", out.skipped);
}

#[test]
fn terminating_endpoints_are_a_fallback_only() {
    let out = compute_file("terminating.yaml", None);
    assert_eq!(
        lines(&out),
        [
            "10.96.0.20:443/TCP default/api [10.244.1.21:8443]",
            "10.96.0.21:6379/TCP default/cache [10.244.1.32:6379]",
        ]
    );
}

#[test]
fn internal_traffic_policy_local_keeps_this_nodes_endpoints() {
    let out = compute_file("internal-local.yaml", Some("node-a"));
    assert_eq!(
        lines(&out),
        [
            "10.96.1.1:514/UDP obs/logs [10.244.1.41:5514]",
            "10.96.1.2:80/TCP obs/metrics [10.244.1.42:8080]",
            "10.96.1.3:80/TCP obs/audit [] drop",
        ]
    );
    assert_eq!(out.no_local_endpoints, (1, 0));
    // On node-b, each Service has a ready local endpoint.
    let out = compute_file("internal-local.yaml", Some("node-b"));
    assert_eq!(
        lines(&out),
        [
            "10.96.1.1:514/UDP obs/logs [10.244.2.41:5514]",
            "10.96.1.2:80/TCP obs/metrics [10.244.2.42:8080]",
            "10.96.1.3:80/TCP obs/audit [10.244.2.43:8080]",
        ]
    );
    assert_eq!(out.no_local_endpoints, (0, 0));
}

#[test]
fn affinity_and_every_protocol() {
    let out = compute_file("affinity-protocols.yaml", None);
    assert_eq!(
        lines(&out),
        [
            "10.96.0.53:53/TCP kube-system/dns:dns-tcp [10.244.1.53:5354] affinity=60s",
            "10.96.0.53:53/UDP kube-system/dns:dns [10.244.1.53:5353] affinity=60s",
            "10.96.0.60:3868/SCTP telco/signalling:sctp [10.244.1.60:3868] affinity=10800s",
        ]
    );
}

#[test]
fn services_that_are_not_a_proxys_business_are_left_alone() {
    let out = compute_file("not-ours.yaml", None);
    assert!(out.table.frontends.is_empty(), "{:?}", lines(&out));
    assert!(out.skipped.is_empty(), "{:?}", out.skipped);
}

#[test]
fn invalid_objects_are_skipped_by_name_and_the_rest_applies() {
    let out = compute_file("invalid.yaml", None);
    assert_eq!(
        lines(&out),
        [
            "10.96.0.80:80/TCP default/good [10.244.1.80:8080]",
            "10.96.0.84:80/TCP default/partly [10.244.1.84:8080]",
        ]
    );
    let skipped: Vec<String> = out.skipped.iter().map(ToString::to_string).collect();
    assert_eq!(
        skipped,
        [
            "Service default/bad-affinity: spec.sessionAffinityConfig.clientIP.timeoutSeconds: 0 is outside 1..=86400",
            "Service default/bad-ip: spec.clusterIPs[0]: `10.96.0.300` is not an IP address",
            "Service default/bad-port: spec.ports[0].port: 70000 is outside 1..=65535",
            "Service default/bad-proto: spec.ports[1].protocol: `ICMP` (expected TCP, UDP or SCTP)",
            "EndpointSlice default/partly-bad-addr: endpoints[1].addresses[0]: `10.244.1.x` is not an IPv4 address",
            "EndpointSlice default/partly-bad-proto: ports[0].protocol: `FOO` (expected TCP, UDP or SCTP)",
        ]
    );
}

#[test]
fn a_frontend_claimed_twice_goes_to_the_first_service_by_name() {
    let (mut services, slices) = load("terminating.yaml");
    let mut clash = (*services[0]).clone();
    clash.metadata.name = Some("zz-clash".into());
    services.push(Arc::new(clash));
    let out = compute(&services, &slices, &NodeContext::default());
    assert_eq!(out.table.frontends.len(), 2);
    assert_eq!(
        out.skipped
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        [
            "Service default/zz-clash: ClusterIP frontend 10.96.0.20:443/TCP already belongs to default/api (ClusterIP)"
        ]
    );
}

#[test]
fn the_table_is_fitted_whole_with_headroom_and_programmed_frontends_first() {
    let out = compute_file("multi-port.yaml", None);
    let metrics_key = FrontendKey {
        addr: "10.96.0.10".parse().unwrap(),
        port: 9090,
        proto: crate::model::Protocol::Tcp,
    };
    let programmed = |k: &FrontendKey| (*k == metrics_key).then(|| out.table.frontends[k].clone());
    // Each web frontend needs 1 master + 3 slots; the largest one (4) is
    // kept free for transitions, so 10 entries leave room for one.
    let cap = Capacity {
        services: 10,
        backends: 100,
        members: 100,
        source_ranges: 100,
    };
    let fitted = fit_to_capacity(out.table.clone(), cap, programmed);
    assert_eq!(fitted.left_out, ["shop/web:http"]);
    assert_eq!(
        fitted.table.frontends.keys().copied().collect::<Vec<_>>(),
        [metrics_key]
    );
    let all = fit_to_capacity(
        out.table.clone(),
        Capacity {
            services: 12,
            ..cap
        },
        |_| None,
    );
    assert!(all.left_out.is_empty());
    assert_eq!(all.table, out.table);

    // A programmed frontend whose new endpoints do not fit keeps its old ones.
    let mut small = out.table.frontends[&metrics_key].clone();
    small.backends.truncate(1);
    let fitted = fit_to_capacity(out.table.clone(), Capacity { services: 6, ..cap }, |k| {
        (*k == metrics_key).then(|| small.clone())
    });
    assert_eq!(fitted.kept_previous, ["shop/web:metrics"]);
    assert_eq!(fitted.left_out, ["shop/web:http"]);
    assert_eq!(
        fitted.table.frontends[&metrics_key].backends,
        small.backends
    );
    assert_eq!(
        fitted.table.frontends[&metrics_key].name,
        "shop/web:metrics"
    );
}

#[test]
fn an_endpoint_listed_twice_takes_its_most_usable_listing_in_any_order() {
    let (services, slices) = load("terminating.yaml");
    // api-1 lists 10.244.1.21 serving+terminating; a second slice lists it
    // as not serving. Either order, it stays a (fallback) backend.
    let mut twin = (*slices[0]).clone();
    twin.metadata.name = Some("api-2".into());
    twin.endpoints.truncate(1);
    twin.endpoints[0].conditions = Some(Default::default());
    twin.endpoints[0].conditions.as_mut().unwrap().ready = Some(false);
    twin.endpoints[0].conditions.as_mut().unwrap().serving = Some(false);
    for order in [0, 1] {
        let mut all = slices.clone();
        all.insert(order, Arc::new(twin.clone()));
        let out = compute(&services, &all, &NodeContext::default());
        assert_eq!(
            lines(&out)[0],
            "10.96.0.20:443/TCP default/api [10.244.1.21:8443]"
        );
    }
}

#[test]
fn a_port_with_more_endpoints_than_slots_skips_the_service() {
    let (services, slices) = load("terminating.yaml");
    let mut big = (*slices[1]).clone();
    let template = big.endpoints[1].clone();
    big.endpoints = (0..=u16::MAX as u32)
        .map(|i| {
            let mut e = template.clone();
            e.addresses = vec![std::net::Ipv4Addr::from(0x0a80_0000 + i).to_string()];
            e
        })
        .collect();
    let out = compute(
        &services,
        &[Arc::clone(&slices[0]), Arc::new(big)],
        &NodeContext::default(),
    );
    assert_eq!(
        lines(&out),
        ["10.96.0.20:443/TCP default/api [10.244.1.21:8443]"]
    );
    assert_eq!(
        out.skipped
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        [
            "Service default/cache: port default/cache: 65536 endpoints, at most 65535 per port are supported"
        ]
    );
}

#[test]
fn north_south_frontends_with_both_traffic_policies() {
    let (services, slices) = load("external.yaml");
    let node = NodeContext {
        name: Some("node-a".into()),
        nodeport_addresses: vec![
            "192.168.0.11".parse().unwrap(),
            "10.0.0.11".parse().unwrap(),
        ],
        address: Some("192.168.0.11".parse().unwrap()),
    };
    let out = compute(&services, &slices, &node);
    assert!(out.skipped.is_empty(), "{:?}", out.skipped);
    assert_eq!(
        lines(&out),
        [
            "10.0.0.11:30080/TCP shop/web:http [10.244.1.21:8080 10.244.2.21:8080] NodePort",
            "10.0.0.11:30081/UDP shop/web:dns [10.244.1.21:8080 10.244.2.21:8080] NodePort",
            "10.0.0.11:30443/TCP shop/edge [10.244.2.31:8443 10.244.2.32:8443] NodePort local=[10.244.1.31:8443] affinity=10800s",
            "10.96.2.1:80/TCP shop/web:http [10.244.1.21:8080 10.244.2.21:8080]",
            "10.96.2.1:80/UDP shop/web:dns [10.244.1.21:8080 10.244.2.21:8080]",
            "10.96.2.2:443/TCP shop/edge [10.244.2.31:8443 10.244.2.32:8443] affinity=10800s",
            "10.96.2.3:8000/TCP shop/legacy [10.244.2.41:8000]",
            "10.96.2.4:5432/TCP shop/internal-lb [10.244.1.51:5432 10.244.1.52:5432]",
            "192.168.0.11:30080/TCP shop/web:http [10.244.1.21:8080 10.244.2.21:8080] NodePort",
            "192.168.0.11:30081/UDP shop/web:dns [10.244.1.21:8080 10.244.2.21:8080] NodePort",
            "192.168.0.11:30443/TCP shop/edge [10.244.2.31:8443 10.244.2.32:8443] NodePort local=[10.244.1.31:8443] affinity=10800s",
            "203.0.113.10:443/TCP shop/edge [10.244.2.31:8443 10.244.2.32:8443] LoadBalancer local=[10.244.1.31:8443] affinity=10800s sources=192.0.2.0/24,198.51.100.7/32",
            "203.0.113.20:5432/TCP shop/internal-lb [10.244.1.51:5432 10.244.1.52:5432] LoadBalancer local=[10.244.1.51:5432 10.244.1.52:5432]",
            "203.0.113.250:8000/TCP shop/legacy [10.244.2.41:8000] ExternalIP",
        ]
    );
    // Health checks: the terminating endpoint does not count.
    let hc: Vec<(u16, &str, usize)> = out
        .health_checks
        .iter()
        .map(|(p, h)| (*p, h.name.as_str(), h.local_endpoints))
        .collect();
    assert_eq!(hc, [(32000, "edge", 0), (32001, "internal-lb", 2)]);
    assert_eq!(out.table.node.address, node.address);
    let local: Vec<String> = out
        .table
        .node
        .local_endpoints
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        local,
        ["10.244.1.21", "10.244.1.31", "10.244.1.51", "10.244.1.52"]
    );
    // From node-b, `edge` has ready local endpoints; `internal-lb` none,
    // counted as an external policy without local endpoints.
    let out = compute(
        &services,
        &slices,
        &NodeContext {
            name: Some("node-b".into()),
            ..node
        },
    );
    let edge_lb = out.table.frontends[&FrontendKey {
        addr: "203.0.113.10".parse().unwrap(),
        port: 443,
        proto: crate::model::Protocol::Tcp,
    }]
        .clone();
    assert_eq!(edge_lb.local_backends.unwrap().len(), 2);
    assert_eq!(out.health_checks[&32000].local_endpoints, 2);
    assert_eq!(out.health_checks[&32001].local_endpoints, 0);
    assert_eq!(out.no_local_endpoints, (0, 1));
}

#[test]
fn invalid_north_south_fields_skip_the_service_by_name() {
    let (mut services, slices) = load("external.yaml");
    let mut bad = (*services[1]).clone();
    bad.spec.as_mut().unwrap().load_balancer_source_ranges = Some(vec!["10.0.0.0/40".into()]);
    services[1] = Arc::new(bad);
    let mut bad = (*services[2]).clone();
    bad.spec.as_mut().unwrap().external_ips = Some(vec!["not-an-ip".into()]);
    services[2] = Arc::new(bad);
    let out = compute(&services, &slices, &NodeContext::default());
    let skipped: Vec<String> = out.skipped.iter().map(ToString::to_string).collect();
    assert_eq!(
        skipped,
        [
            "Service shop/edge: spec.loadBalancerSourceRanges[0]: `10.0.0.0/40` is not an IPv4 CIDR (ADDRESS/0..32)",
            "Service shop/legacy: spec.externalIPs[0]: `not-an-ip` is not an IP address",
        ]
    );
    assert!(
        out.table
            .frontends
            .values()
            .all(|f| f.name.starts_with("shop/web") || f.name == "shop/internal-lb")
    );
}
