//! The nftables renderer against kube-proxy's layout.
use super::*;
use crate::{
    kubeproxy::testing::{golden, ports, two_example_services},
    model::Ipv4Cidr,
};

fn config() -> RuleConfig {
    RuleConfig {
        local_detector: Some("10.0.0.0/8".parse::<Ipv4Cidr>().unwrap()),
        ..RuleConfig::default()
    }
}

#[test]
fn the_worked_example_transaction_is_kube_proxys_layout() {
    let ports = ports("kube-proxy/nodeport-example.yaml", None);
    let script = render(&ports, &config(), &Previous::default());
    assert_eq!(script.text, golden("kube-proxy/nodeport-example.nft"));
    assert_eq!(script.next.chains.len(), 4);
}

#[test]
fn a_later_sync_keeps_affinity_sets_and_deletes_stale_chains() {
    let mut ports = ports("kube-proxy/nodeport-example.yaml", None);
    ports[0].affinity_timeout_s = Some(60);
    let first = render(&ports, &config(), &Previous::default());
    assert_eq!(first.next.sets.len(), 2);
    assert!(first.text.contains("add set ip kube-proxy affinity-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80 { type ipv4_addr ; flags dynamic,timeout ; timeout 60s ; }"));
    assert!(first.text.contains("ip saddr @affinity-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80 goto endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80"));
    assert!(
        first
            .text
            .contains("update @affinity-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80 { ip saddr }")
    );
    // One endpoint leaves.
    ports[0].cluster.truncate(1);
    let second = render(&ports, &config(), &first.next);
    assert!(second.partial);
    assert!(!second.text.contains("delete table"));
    assert!(!second.text.contains("flush set ip kube-proxy affinity-"));
    let gone = "endpoint-2ZNDXFAB-ns1/svc1/tcp/p80__10.180.0.2/80";
    let flush = second
        .text
        .find(&format!("flush chain ip kube-proxy {gone}\n"))
        .unwrap();
    let delete = second
        .text
        .find(&format!("delete chain ip kube-proxy {gone}\n"))
        .unwrap();
    assert!(flush < delete);
    assert!(
        second.text.contains(
            "delete set ip kube-proxy affinity-2ZNDXFAB-ns1/svc1/tcp/p80__10.180.0.2/80\n"
        )
    );
    assert!(
        second
            .text
            .contains("numgen random mod 1 vmap { 0 : goto endpoint-5OJB2KTY")
    );
}

#[test]
fn no_endpoints_reject_and_local_policies_drop() {
    let ext = ports("external.yaml", Some("node-a"));
    let script = render(&ext, &config(), &Previous::default());
    // edge (ETP Local) has a local (terminating) endpoint: its LoadBalancer
    // IP goes to the external chain, filtered by source ranges first.
    let edge = crate::kubeproxy::names::nft_service_base(
        ext.iter().find(|p| p.name == "shop/edge").unwrap(),
    );
    assert!(script.text.contains(&format!("add element ip kube-proxy service-ips {{ 203.0.113.10 . tcp . 443 : goto external-{edge} }}")));
    assert!(script.text.contains(&format!("add element ip kube-proxy firewall-ips {{ 203.0.113.10 . tcp . 443 : goto firewall-{edge} }}")));
    assert!(script.text.contains(&format!("add rule ip kube-proxy firewall-{edge} ip saddr != {{ 192.0.2.0/24, 198.51.100.7/32 }} drop")));
    assert!(script.text.contains(&format!(
        "add rule ip kube-proxy external-{edge} ip saddr 10.0.0.0/8 goto service-{edge}"
    )));
    assert!(script.text.contains(&format!(
        "add rule ip kube-proxy external-{edge} goto local-{edge}"
    )));
    for l in script
        .text
        .lines()
        .filter(|l| l.starts_with("add element ip kube-proxy no-endpoint-services {"))
    {
        assert!(
            l.ends_with(": goto reject-chain }") || l.ends_with(": drop }"),
            "{l}"
        );
    }
    let ilocal = ports("internal-local.yaml", Some("node-a"));
    let s = render(&ilocal, &config(), &Previous::default());
    assert!(s.text.contains(
        "add element ip kube-proxy no-endpoint-services { 10.96.1.3 . tcp . 80 : drop }"
    ));
}

/// Two Services, then one endpoint of the first leaves and the second
/// Service goes: the partial sync leaves the base chains and maps alone,
/// deletes the second Service's elements by key and its chains, rewrites
/// the first Service's chains, and adds no element the maps still hold.
#[test]
fn a_partial_sync_writes_only_changed_elements_and_chains() {
    let mut ports = two_example_services();
    let first = render(&ports, &config(), &Previous::default());
    assert!(!first.partial);
    let kept_base = crate::kubeproxy::names::nft_service_base(&ports[0]);
    let gone_base = crate::kubeproxy::names::nft_service_base(&ports[1]);
    // Nothing changed: nothing but an empty transaction.
    let same = render(&ports, &config(), &first.next);
    assert!(same.partial);
    assert_eq!(same.text, "", "{}", same.text);
    assert_eq!(same.objects, first.objects);
    ports[0].cluster.truncate(1);
    ports.pop();
    let second = render(&ports, &config(), &first.next);
    assert!(second.partial);
    let text = &second.text;
    assert!(
        !text.contains("flush map") && !text.contains("add table"),
        "{text}"
    );
    assert!(text.contains("delete element ip kube-proxy service-ips { 172.30.0.42 . tcp . 80 }\n"));
    assert!(text.contains("delete element ip kube-proxy cluster-ips { 172.30.0.42 }\n"));
    assert!(text.contains("delete element ip kube-proxy service-nodeports { tcp . 30081 }\n"));
    assert!(text.contains(&format!("delete chain ip kube-proxy service-{gone_base}\n")));
    assert!(text.contains(&format!("flush chain ip kube-proxy service-{kept_base}\n")));
    assert!(text.contains("numgen random mod 1 vmap"));
    assert!(
        !text.contains("add element"),
        "the kept Service's elements are unchanged: {text}"
    );
    let full = render(&ports, &config(), &Previous::default());
    assert_eq!(second.objects, full.objects);
    assert_eq!(second.next.chains, full.next.chains);
    // A verdict that changes: deleted by key, then added.
    ports[0].cluster.clear();
    ports[0].has_any_endpoints = false;
    let third = render(&ports, &config(), &second.next);
    let del = third
        .text
        .find("delete element ip kube-proxy service-ips { 172.30.0.41 . tcp . 80 }")
        .unwrap();
    let add = third
        .text
        .find("add element ip kube-proxy no-endpoint-services { 172.30.0.41 . tcp . 80 : goto reject-chain }")
        .unwrap();
    assert!(del < add);
}
