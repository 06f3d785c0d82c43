//! kube-proxy's nftables mode, rendered: one `nft -f` transaction holding
//! the `ip kube-proxy` table as its proxier lays it out
//! (`pkg/proxy/nftables/proxier.go`).
//!
//! Base chains (`filter-*` at priority dstnat-10, `filter-output-post-dnat`
//! at dstnat+10, `nat-*` at dstnat/srcnat) jump to regular chains that
//! look packets up in verdict maps: `service-ips` (ClusterIP, externalIP,
//! LoadBalancer IP . protocol . port → `goto` a Service chain),
//! `service-nodeports` (protocol . port), `no-endpoint-services` and
//! `no-endpoint-nodeports` (→ `goto reject-chain` or `drop`),
//! `firewall-ips` (→ `goto firewall-…`), and the `cluster-ips` set (reject
//! what reached a ClusterIP on a port no Service has). A Service chain
//! picks an endpoint chain in O(1) with `numgen random mod N vmap`;
//! ClientIP affinity is a dynamic set with a timeout per endpoint.
//!
//! Every sync re-declares and flushes every chain and map it uses (a full
//! sync in kube-proxy's words), deletes chains no longer used, and keeps
//! the affinity sets of endpoints still in use: their elements are the
//! clients' affinity and survive the sync.
use std::{collections::BTreeSet, fmt::Write as _};

use super::{
    RuleConfig,
    names::{nft_endpoint_base, nft_service_base, proto_lower},
};
use crate::{desired::ServicePort, model::BackendAddr};

/// The table kube-proxy owns (family `ip`).
pub const TABLE: &str = "kube-proxy";

/// One transaction and what it leaves in the table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Script {
    /// The `nft -f` input.
    pub text: String,
    /// Per-Service chains the table holds after it.
    pub chains: BTreeSet<String>,
    /// Affinity sets it holds after it.
    pub sets: BTreeSet<String>,
    /// Rules and map elements written.
    pub objects: usize,
}

/// What earlier transactions left in the table (empty at start: the first
/// transaction deletes and recreates the table).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Previous {
    /// Whether the table is known to be ours and current.
    pub table_written: bool,
    /// Per-Service chains it holds.
    pub chains: BTreeSet<String>,
    /// Affinity sets it holds.
    pub sets: BTreeSet<String>,
}

struct Out {
    text: String,
    objects: usize,
}

impl Out {
    fn line(&mut self, l: impl AsRef<str>) {
        self.text.push_str(l.as_ref());
        self.text.push('\n');
    }
    fn rule(&mut self, chain: &str, rule: impl AsRef<str>) {
        let _ = writeln!(self.text, "add rule ip {TABLE} {chain} {}", rule.as_ref());
        self.objects += 1;
    }
    fn element(&mut self, map: &str, element: impl AsRef<str>) {
        let _ = writeln!(
            self.text,
            "add element ip {TABLE} {map} {{ {} }}",
            element.as_ref()
        );
        self.objects += 1;
    }
    /// `add` then `flush`: the chain exists and is empty.
    fn chain(&mut self, name: &str) {
        let _ = writeln!(self.text, "add chain ip {TABLE} {name}");
        let _ = writeln!(self.text, "flush chain ip {TABLE} {name}");
    }
}

/// The base chains: (name, type, hook, priority).
const BASE_CHAINS: [(&str, &str, &str, i32); 8] = [
    ("filter-prerouting", "filter", "prerouting", -110),
    ("filter-input", "filter", "input", -110),
    ("filter-forward", "filter", "forward", -110),
    ("filter-output", "filter", "output", -110),
    ("filter-output-post-dnat", "filter", "output", -90),
    ("nat-prerouting", "nat", "prerouting", -100),
    ("nat-output", "nat", "output", -100),
    ("nat-postrouting", "nat", "postrouting", 100),
];

/// Renders the transaction for `ports`.
pub fn render(ports: &[ServicePort], cfg: &RuleConfig, previous: &Previous) -> Script {
    let mark = format!("{:#x}", 1u32 << cfg.masquerade_bit);
    let mut o = Out {
        text: String::new(),
        objects: 0,
    };
    if !previous.table_written {
        // Start clean: whatever an earlier run left goes, atomically.
        o.line(format!("add table ip {TABLE}"));
        o.line(format!("delete table ip {TABLE}"));
    }
    o.line(format!(
        "add table ip {TABLE} {{ comment \"rules for kube-proxy\" ; }}"
    ));
    for (name, kind, hook, prio) in BASE_CHAINS {
        o.line(format!(
            "add chain ip {TABLE} {name} {{ type {kind} hook {hook} priority {prio} ; }}"
        ));
        o.line(format!("flush chain ip {TABLE} {name}"));
    }
    for c in [
        "nodeport-endpoints-check",
        "service-endpoints-check",
        "firewall-check",
        "services",
        "masquerading",
        "cluster-ips-check",
        "mark-for-masquerade",
        "reject-chain",
    ] {
        o.chain(c);
    }
    let nodeport_ips = cfg.nodeport_addresses.as_ref();
    o.line(format!(
        "add set ip {TABLE} cluster-ips {{ type ipv4_addr ; comment \"Active ClusterIPs\" ; }}"
    ));
    o.line(format!("flush set ip {TABLE} cluster-ips"));
    if nodeport_ips.is_some() {
        o.line(format!(
            "add set ip {TABLE} nodeport-ips {{ type ipv4_addr ; comment \"IPs that accept NodePort traffic\" ; }}"
        ));
        o.line(format!("flush set ip {TABLE} nodeport-ips"));
    }
    for (map, key) in [
        ("service-ips", "ipv4_addr . inet_proto . inet_service"),
        ("service-nodeports", "inet_proto . inet_service"),
        (
            "no-endpoint-services",
            "ipv4_addr . inet_proto . inet_service",
        ),
        ("no-endpoint-nodeports", "inet_proto . inet_service"),
        ("firewall-ips", "ipv4_addr . inet_proto . inet_service"),
    ] {
        o.line(format!(
            "add map ip {TABLE} {map} {{ type {key} : verdict ; }}"
        ));
        o.line(format!("flush map ip {TABLE} {map}"));
    }
    // Jumps from the base chains.
    o.rule("filter-prerouting", "ct state new jump firewall-check");
    o.rule("filter-input", "ct state new jump nodeport-endpoints-check");
    o.rule("filter-input", "ct state new jump service-endpoints-check");
    o.rule(
        "filter-forward",
        "ct state new jump service-endpoints-check",
    );
    o.rule("filter-forward", "ct state new jump cluster-ips-check");
    o.rule("filter-output", "ct state new jump service-endpoints-check");
    o.rule("filter-output", "ct state new jump firewall-check");
    o.rule(
        "filter-output-post-dnat",
        "ct state new jump cluster-ips-check",
    );
    o.rule("nat-prerouting", "jump services");
    o.rule("nat-output", "jump services");
    o.rule("nat-postrouting", "jump masquerading");
    // Fixed rules.
    o.rule("mark-for-masquerade", format!("mark set mark or {mark}"));
    o.rule("masquerading", format!("mark and {mark} == 0 return"));
    o.rule("masquerading", format!("mark set mark xor {mark}"));
    o.rule("masquerading", "masquerade fully-random");
    o.rule("reject-chain", "reject");
    o.rule(
        "cluster-ips-check",
        "ip daddr @cluster-ips reject comment \"Reject traffic to invalid ports of ClusterIPs\"",
    );
    o.rule(
        "service-endpoints-check",
        "ip daddr . meta l4proto . th dport vmap @no-endpoint-services",
    );
    o.rule(
        "firewall-check",
        "ip daddr . meta l4proto . th dport vmap @firewall-ips",
    );
    o.rule(
        "services",
        "ip daddr . meta l4proto . th dport vmap @service-ips",
    );
    match nodeport_ips {
        None => {
            o.rule(
                "nodeport-endpoints-check",
                "ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @no-endpoint-nodeports",
            );
            o.rule(
                "services",
                "fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @service-nodeports",
            );
        }
        Some(addrs) => {
            o.rule(
                "nodeport-endpoints-check",
                "ip daddr @nodeport-ips meta l4proto . th dport vmap @no-endpoint-nodeports",
            );
            o.rule(
                "services",
                "ip daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports",
            );
            for a in addrs.iter().filter(|a| !a.is_loopback()) {
                o.element("nodeport-ips", a.to_string());
            }
        }
    }
    let mut chains = BTreeSet::new();
    let mut sets = BTreeSet::new();
    for sp in ports {
        service_port(sp, cfg, &mut o, &mut chains, &mut sets);
    }
    // Chains and sets no longer used: their map elements are gone (the
    // maps were flushed above), so they can go in the same transaction.
    // Flushed first, all of them: a stale chain may jump to another.
    for c in previous.chains.difference(&chains) {
        o.line(format!("flush chain ip {TABLE} {c}"));
    }
    for c in previous.chains.difference(&chains) {
        o.line(format!("delete chain ip {TABLE} {c}"));
    }
    for s in previous.sets.difference(&sets) {
        o.line(format!("delete set ip {TABLE} {s}"));
    }
    Script {
        text: o.text,
        chains,
        sets,
        objects: o.objects,
    }
}

fn service_port(
    sp: &ServicePort,
    cfg: &RuleConfig,
    o: &mut Out,
    chains: &mut BTreeSet<String>,
    sets: &mut BTreeSet<String>,
) {
    let base = nft_service_base(sp);
    let (svc, local, ext, fw) = (
        format!("service-{base}"),
        format!("local-{base}"),
        format!("external-{base}"),
        format!("firewall-{base}"),
    );
    let proto = proto_lower(sp);
    let (cip, port) = (sp.cluster_ip, sp.port);
    let externally = sp.externally_accessible();
    let has_endpoints = sp.has_any_endpoints;
    let uses_cluster_chain = !sp.cluster.is_empty() && sp.uses_cluster_endpoints();
    let uses_local_chain = !sp.local.is_empty() && sp.uses_local_endpoints();
    let has_internal = sp.has_internal_endpoints();
    let has_external = sp.has_external_endpoints();
    let internal_chain = if sp.internal_local { &local } else { &svc };
    let external_policy_chain = if sp.external_local { &local } else { &svc };
    let uses_ext_chain = has_endpoints && externally;
    let uses_fw = has_endpoints && !sp.load_balancer_ips.is_empty() && !sp.source_ranges.is_empty();
    let verdict = |has: bool| {
        if !has_endpoints {
            Some("goto reject-chain")
        } else if !has {
            Some("drop")
        } else {
            None
        }
    };

    let reachable = sp.reachable_endpoints();
    // Declare every chain and set first: elements and rules refer to them.
    let declare = |o: &mut Out, chains: &mut BTreeSet<String>, name: &str| {
        o.chain(name);
        chains.insert(name.to_owned());
    };
    if uses_cluster_chain {
        declare(o, chains, &svc);
    }
    if uses_local_chain {
        declare(o, chains, &local);
    }
    if uses_ext_chain {
        declare(o, chains, &ext);
    }
    if uses_fw {
        declare(o, chains, &fw);
    }
    for ep in &reachable {
        let eb = nft_endpoint_base(sp, ep);
        declare(o, chains, &format!("endpoint-{eb}"));
        if let Some(timeout) = sp.affinity_timeout_s {
            let set = format!("affinity-{eb}");
            // Not flushed: its elements are the clients' affinity.
            o.line(format!(
                "add set ip {TABLE} {set} {{ type ipv4_addr ; flags dynamic,timeout ; timeout {timeout}s ; }}"
            ));
            sets.insert(set);
        }
    }

    o.element("cluster-ips", cip.to_string());
    if has_internal {
        o.element(
            "service-ips",
            format!("{cip} . {proto} . {port} : goto {internal_chain}"),
        );
    } else if let Some(v) = verdict(has_internal) {
        o.element(
            "no-endpoint-services",
            format!("{cip} . {proto} . {port} : {v}"),
        );
    }
    for ip in sp.external_ips.iter().chain(&sp.load_balancer_ips) {
        if uses_ext_chain {
            o.element(
                "service-ips",
                format!("{ip} . {proto} . {port} : goto {ext}"),
            );
        }
        if let Some(v) = verdict(has_external) {
            o.element(
                "no-endpoint-services",
                format!("{ip} . {proto} . {port} : {v}"),
            );
        }
    }
    if uses_fw {
        for ip in &sp.load_balancer_ips {
            o.element(
                "firewall-ips",
                format!("{ip} . {proto} . {port} : goto {fw}"),
            );
        }
    }
    if let Some(np) = sp.node_port {
        if uses_ext_chain {
            o.element("service-nodeports", format!("{proto} . {np} : goto {ext}"));
        }
        if let Some(v) = verdict(has_external) {
            o.element("no-endpoint-nodeports", format!("{proto} . {np} : {v}"));
        }
    }

    let endpoint_rules = |o: &mut Out, chain: &str, eps: &[BackendAddr]| {
        if has_internal && chain == internal_chain {
            let from = match (&cfg.masquerade_all, &cfg.local_detector) {
                (true, _) => Some(String::new()),
                (false, Some(l)) => Some(format!(" ip saddr != {l}")),
                (false, None) => None,
            };
            if let Some(from) = from {
                o.rule(
                    chain,
                    format!("ip daddr {cip} {proto} dport {port}{from} jump mark-for-masquerade"),
                );
            }
        }
        if sp.affinity_timeout_s.is_some() {
            for ep in eps {
                let eb = nft_endpoint_base(sp, ep);
                o.rule(chain, format!("ip saddr @affinity-{eb} goto endpoint-{eb}"));
            }
        }
        let picks: Vec<String> = eps
            .iter()
            .enumerate()
            .map(|(i, ep)| format!("{i} : goto endpoint-{}", nft_endpoint_base(sp, ep)))
            .collect();
        o.rule(
            chain,
            format!(
                "numgen random mod {} vmap {{ {} }}",
                eps.len(),
                picks.join(" , ")
            ),
        );
    };
    if uses_cluster_chain {
        endpoint_rules(o, &svc, &sp.cluster);
    }
    if uses_local_chain {
        endpoint_rules(o, &local, &sp.local);
    }
    if uses_ext_chain {
        if sp.external_local {
            if let Some(l) = &cfg.local_detector {
                o.rule(&ext, format!("ip saddr {l} goto {svc}"));
            }
            o.rule(&ext, "fib saddr type local jump mark-for-masquerade");
            o.rule(&ext, format!("fib saddr type local goto {svc}"));
        } else {
            o.rule(&ext, "jump mark-for-masquerade");
        }
        if has_external {
            o.rule(&ext, format!("goto {external_policy_chain}"));
        }
    }
    if uses_fw {
        let mut allowed: Vec<String> = sp.source_ranges.iter().map(ToString::to_string).collect();
        if cfg
            .node_ip
            .is_some_and(|ip| sp.source_ranges.iter().any(|c| c.contains(ip)))
        {
            allowed.extend(sp.load_balancer_ips.iter().map(ToString::to_string));
        }
        o.rule(
            &fw,
            format!("ip saddr != {{ {} }} drop", allowed.join(", ")),
        );
    }
    for ep in &reachable {
        let eb = nft_endpoint_base(sp, ep);
        let chain = format!("endpoint-{eb}");
        o.rule(
            &chain,
            format!("ip saddr {} jump mark-for-masquerade", ep.addr),
        );
        if sp.affinity_timeout_s.is_some() {
            o.rule(&chain, format!("update @affinity-{eb} {{ ip saddr }}"));
        }
        o.rule(
            &chain,
            format!("meta l4proto {proto} dnat to {}:{}", ep.addr, ep.port),
        );
    }
}

#[cfg(test)]
mod tests;
