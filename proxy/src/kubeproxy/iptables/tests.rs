//! The iptables renderer against kube-proxy's worked example and the rules
//! its proxier writes for each policy.
use std::collections::BTreeSet;

use super::*;
use crate::{
    kubeproxy::testing::{golden, ports, two_example_services},
    model::Ipv4Cidr,
};

fn example_config() -> RuleConfig {
    RuleConfig {
        local_detector: Some("10.0.0.0/8".parse::<Ipv4Cidr>().unwrap()),
        localhost_nodeports: true,
        ..RuleConfig::default()
    }
}

fn rules_of(payload: &Payload, chain_prefix: &str) -> Vec<String> {
    payload
        .text
        .lines()
        .filter(|l| l.starts_with(&format!("-A {chain_prefix}")))
        .map(str::to_owned)
        .collect()
}

/// kube-proxy's NodePort example, byte for byte (marks as iptables-save
/// prints them).
#[test]
fn the_worked_example_payload_is_kube_proxys() {
    let ports = ports("kube-proxy/nodeport-example.yaml", None);
    let payload = render(&ports, &example_config(), &Previous::default());
    assert_eq!(payload.text, golden("kube-proxy/nodeport-example.iptables"));
    assert_eq!(payload.rules, 20);
    assert_eq!(payload.next.chains.len(), 4);
}

#[test]
fn client_ip_affinity_checks_recent_lists_before_the_probabilities() {
    let mut ports = ports("kube-proxy/nodeport-example.yaml", None);
    ports[0].affinity_timeout_s = Some(10800);
    let payload = render(&ports, &example_config(), &Previous::default());
    let svc = rules_of(&payload, "KUBE-SVC-XPGD46QRK7WJZT7O");
    assert_eq!(
        svc[1],
        "-A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment \"ns1/svc1:p80 -> 10.180.0.1:80\" -m recent --name KUBE-SEP-SXIVWICOYRO3J4NJ --rcheck --seconds 10800 --reap -j KUBE-SEP-SXIVWICOYRO3J4NJ"
    );
    assert!(svc[3].contains("--probability 0.5000000000"));
    assert!(payload.text.contains(
        "-A KUBE-SEP-SXIVWICOYRO3J4NJ -m comment --comment ns1/svc1:p80 -m recent --name KUBE-SEP-SXIVWICOYRO3J4NJ --set -m tcp -p tcp -j DNAT --to-destination 10.180.0.1:80"
    ));
}

/// internalTrafficPolicy: Local on node-a: the ClusterIP goes to the SVL
/// chain; with no local endpoint while others exist, filter DROPs.
#[test]
fn internal_traffic_policy_local_uses_svl_or_drops() {
    let ports = ports("internal-local.yaml", Some("node-a"));
    let payload = render(&ports, &RuleConfig::default(), &Previous::default());
    let logs = ports.iter().find(|p| p.name == "obs/logs").unwrap();
    let h = crate::kubeproxy::names::iptables_service_hash(logs);
    assert!(payload.text.contains(&format!(
        "-A KUBE-SERVICES -m comment --comment \"obs/logs cluster IP\" -m udp -p udp -d 10.96.1.1 --dport 514 -j KUBE-SVL-{h}"
    )));
    // No SVC chain: the cluster's endpoints are not used.
    assert!(!payload.text.contains(&format!(":KUBE-SVC-{h}")));
    assert!(payload.text.contains(
        "-A KUBE-SERVICES -m comment --comment \"obs/audit has no local endpoints\" -m tcp -p tcp -d 10.96.1.3 --dport 80 -j DROP"
    ));
}

/// externalTrafficPolicy: Local with source ranges: the EXT chain's
/// short-circuits, the FW chain and the KUBE-PROXY-FIREWALL drop, the
/// health-check ACCEPT; a Service with no endpoints is REJECTed.
#[test]
fn external_policies_firewall_and_reject() {
    let ports = ports("external.yaml", Some("node-a"));
    let cfg = RuleConfig {
        local_detector: Some("10.244.0.0/16".parse().unwrap()),
        node_ip: Some("192.168.0.11".parse().unwrap()),
        ..RuleConfig::default()
    };
    let payload = render(&ports, &cfg, &Previous::default());
    let edge = ports.iter().find(|p| p.name == "shop/edge").unwrap();
    let h = crate::kubeproxy::names::iptables_service_hash(edge);
    let ext = rules_of(&payload, &format!("KUBE-EXT-{h}"));
    assert_eq!(ext.len(), 4, "{ext:#?}");
    assert!(ext[0].contains("-s 10.244.0.0/16 -j KUBE-SVC-"));
    assert!(ext[1].contains("--src-type LOCAL -j KUBE-MARK-MASQ"));
    assert!(ext[3].ends_with(&format!("-j KUBE-SVL-{h}")));
    let fw = rules_of(&payload, &format!("KUBE-FW-{h}"));
    assert!(fw[0].ends_with(&format!("-s 192.0.2.0/24 -j KUBE-EXT-{h}")));
    assert!(fw[1].ends_with(&format!("-s 198.51.100.7/32 -j KUBE-EXT-{h}")));
    assert_eq!(fw.len(), 3, "the node is in no range: no LB-IP source rule");
    assert!(payload.text.contains(&format!(
        "-A KUBE-PROXY-FIREWALL -m comment --comment \"shop/edge traffic not accepted by KUBE-FW-{h}\" -m tcp -p tcp -d 203.0.113.10 --dport 443 -j DROP"
    )));
    assert!(payload.text.contains(
        "-A KUBE-NODEPORTS -m comment --comment \"shop/edge health check node port\" -m tcp -p tcp --dport 32000 -j ACCEPT"
    ));
    assert!(payload.text.contains(&format!(
        "-A KUBE-SERVICES -m comment --comment \"shop/edge loadbalancer IP\" -m tcp -p tcp -d 203.0.113.10 --dport 443 -j KUBE-FW-{h}"
    )));
    // Every REJECT names a Service with no endpoints at all.
    for l in payload.text.lines().filter(|l| l.ends_with("-j REJECT")) {
        assert!(l.contains("has no endpoints"), "{l}");
    }
}

#[test]
fn large_clusters_drop_endpoint_comments_and_stale_chains_are_deleted() {
    let mut ports = ports("kube-proxy/nodeport-example.yaml", None);
    let template = ports[0].clone();
    ports[0].cluster = (0..1001u32)
        .map(|i| crate::model::BackendAddr {
            addr: std::net::Ipv4Addr::from(0x0ab4_0000 + i),
            port: 80,
            proto: crate::model::Protocol::Tcp,
        })
        .collect();
    let stale: BTreeSet<String> = [
        "KUBE-SEP-GONE".to_owned(),
        "KUBE-SVC-XPGD46QRK7WJZT7O".to_owned(),
    ]
    .into();
    let payload = render(
        &ports,
        &RuleConfig::default(),
        &Previous::chains_in_kernel(stale),
    );
    assert!(!payload.text.contains("-> 10.180"));
    let seps = rules_of(&payload, "KUBE-SEP-");
    assert_eq!(seps.len(), 2002);
    assert!(seps.iter().all(|l| !l.contains("--comment")));
    assert!(payload.text.contains(":KUBE-SEP-GONE - [0:0]\n"));
    assert!(payload.text.contains("-X KUBE-SEP-GONE\n"));
    assert!(!payload.text.contains("-X KUBE-SVC-XPGD46QRK7WJZT7O"));
    // Below the threshold the comments come back.
    let small = render(&[template], &RuleConfig::default(), &Previous::default());
    assert!(
        small
            .text
            .contains("--comment \"ns1/svc1:p80 -> 10.180.0.1:80\"")
    );
}

#[test]
fn nodeport_addresses_restrict_the_tail_rule() {
    let ports = ports("kube-proxy/nodeport-example.yaml", None);
    let cfg = RuleConfig {
        nodeport_addresses: Some(vec![
            "192.168.0.11".parse().unwrap(),
            "127.0.0.1".parse().unwrap(),
        ]),
        ..RuleConfig::default()
    };
    let payload = render(&ports, &cfg, &Previous::default());
    let tail: Vec<&str> = payload
        .text
        .lines()
        .filter(|l| l.contains("NOTE: this must be the last rule"))
        .collect();
    assert_eq!(
        tail.len(),
        1,
        "loopback skipped without localhost NodePorts: {tail:?}"
    );
    assert!(tail[0].ends_with("-d 192.168.0.11 -j KUBE-NODEPORTS"));
    let all = render(&ports, &RuleConfig::default(), &Previous::default());
    assert!(
        all.text
            .contains("-m addrtype --dst-type LOCAL ! -d 127.0.0.0/8 -j KUBE-NODEPORTS")
    );
}

#[test]
fn chains_left_by_an_earlier_run_are_read_from_iptables_save() {
    let save = "*nat\n:PREROUTING ACCEPT [0:0]\n:KUBE-SERVICES - [0:0]\n:KUBE-SVC-AAAA - [0:0]\n:KUBE-SEP-BBBB - [0:0]\n:KUBE-MARK-MASQ - [0:0]\nCOMMIT\n";
    assert_eq!(
        service_chains_in(save),
        BTreeSet::from(["KUBE-SEP-BBBB".to_owned(), "KUBE-SVC-AAAA".to_owned()])
    );
}

/// Cleanup declares (so flushes) every chain before deleting any, per table.
#[test]
fn cleanup_flushes_every_chain_before_deleting_any() {
    let nat = ["KUBE-SERVICES".to_owned(), "KUBE-SVC-X".to_owned()];
    let filter = ["KUBE-FORWARD".to_owned()];
    assert_eq!(
        cleanup_payload(&[("nat", &nat), ("filter", &filter)]),
        "*nat\n:KUBE-SERVICES - [0:0]\n:KUBE-SVC-X - [0:0]\n-X KUBE-SERVICES\n-X KUBE-SVC-X\nCOMMIT\n\
         *filter\n:KUBE-FORWARD - [0:0]\n-X KUBE-FORWARD\nCOMMIT\n"
    );
}

/// The listing goes first in `*nat` only, once, and the payload is
/// otherwise the same; a payload without `*nat` is left as it is.
#[test]
fn listing_first_lists_the_nat_table_before_its_first_command() {
    let nat = ["KUBE-SVC-X".to_owned()];
    let filter = ["KUBE-FORWARD".to_owned()];
    let both = cleanup_payload(&[("filter", &filter), ("nat", &nat)]);
    assert_eq!(
        listing_first(&both),
        "*filter\n:KUBE-FORWARD - [0:0]\n-X KUBE-FORWARD\nCOMMIT\n\
         *nat\n-S\n:KUBE-SVC-X - [0:0]\n-X KUBE-SVC-X\nCOMMIT\n"
    );
    let filter_only = cleanup_payload(&[("filter", &filter)]);
    assert_eq!(listing_first(&filter_only), filter_only);
    let full = render(
        &two_example_services(),
        &example_config(),
        &Previous::default(),
    );
    let listed = listing_first(&full.text);
    assert_eq!(listed.matches("\n-S\n").count(), 1);
    assert_eq!(listed.replacen("*nat\n-S\n", "*nat\n", 1), full.text);
}

/// Two Services, then one endpoint of the first leaves: the partial sync
/// rewrites the top-level chains with both Services' capture rules, the
/// first Service's chains, and deletes the departed endpoint's chain; the
/// second Service's chains are left out (the kernel keeps them). The rule
/// count is the full sync's.
#[test]
fn a_partial_sync_rewrites_only_the_changed_services_chains() {
    let mut ports = two_example_services();
    let cfg = example_config();
    let first = render(&ports, &cfg, &Previous::default());
    assert!(!first.partial);
    let [changed, kept] =
        [&ports[0], &ports[1]].map(crate::kubeproxy::names::iptables_service_hash);
    let gone = crate::kubeproxy::names::iptables_endpoint_chain(&ports[0], &ports[0].cluster[1]);
    ports[0].cluster.truncate(1);
    let second = render(&ports, &cfg, &first.next);
    assert!(second.partial);
    let text = &second.text;
    assert!(text.contains(&format!(":KUBE-SVC-{changed} - [0:0]")));
    assert!(text.contains(&format!("-A KUBE-SVC-{changed} ")));
    assert!(!text.contains(&format!(
        "KUBE-SVC-{changed} -m comment --comment \"ns1/svc1:p80 -> 10.180.0.2:80\""
    )));
    assert!(text.contains(&format!(":{gone} - [0:0]\n")) && text.contains(&format!("-X {gone}\n")));
    assert!(!text.contains(&format!(":KUBE-SVC-{kept}")), "{text}");
    assert!(!text.contains(&format!("-A KUBE-SVC-{kept}")));
    assert!(!text.contains(&format!(":KUBE-EXT-{kept}")));
    assert!(
        text.contains(&format!("--dport 80 -j KUBE-SVC-{kept}")),
        "capture rules stay"
    );
    assert!(text.contains(&format!("--dport 30081 -j KUBE-EXT-{kept}")));
    assert!(second.next.chains.contains(&format!("KUBE-SVC-{kept}")));
    let full = render(&ports, &cfg, &Previous::default());
    assert_eq!(second.rules, full.rules);
    assert_eq!(second.next.chains, full.next.chains);
    // Nothing changed: only the top-level chains.
    let third = render(&ports, &cfg, &second.next);
    assert!(third.partial && !third.text.contains(":KUBE-SVC-"));
    // Another config, or a full sync asked for: everything again.
    let other_cfg = RuleConfig {
        masquerade_all: true,
        ..cfg.clone()
    };
    assert!(!render(&ports, &other_cfg, &second.next).partial);
    let again = render(&ports, &cfg, &second.next.clone().for_full_sync());
    assert!(!again.partial && again.text.contains(&format!(":KUBE-SVC-{kept}")));
}
