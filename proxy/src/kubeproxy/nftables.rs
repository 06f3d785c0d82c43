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
//! A full sync (the first, one after a failure or a config change, or one
//! asked for) re-declares and flushes every chain and map it uses; a
//! partial one, as kube-proxy's, leaves the base chains and maps as they
//! are, writes only the map and set elements that changed (deleted by key,
//! then added) and re-declares and refills only the chains of
//! ServicePorts that changed since the last sync. Both delete chains no
//! longer used and keep the affinity sets of endpoints still in use: their
//! elements are the clients' affinity and survive the sync.
use std::{
    collections::{BTreeSet, HashMap, HashSet},
    fmt::Write as _,
};

use super::{
    RuleConfig,
    names::{nft_endpoint_base, nft_service_base, proto_lower},
};
use crate::{desired::ServicePort, model::BackendAddr};

/// The table kube-proxy owns (family `ip`).
pub const TABLE: &str = "kube-proxy";

/// One transaction and what it leaves in the table.
#[derive(Clone, Debug, Default)]
pub struct Script {
    /// The `nft -f` input.
    pub text: String,
    /// Rules and map and set elements in the table once it is applied
    /// (written or kept).
    pub objects: usize,
    /// Whether it is a partial sync.
    pub partial: bool,
    /// What the table holds after it: the `previous` of the next sync.
    pub next: Previous,
}

/// What earlier transactions left in the table (empty at start: the first
/// transaction deletes and recreates the table).
#[derive(Clone, Debug, Default)]
pub struct Previous {
    /// Whether the table is known to be ours.
    pub table_written: bool,
    /// Per-Service chains it holds.
    pub chains: BTreeSet<String>,
    /// Affinity sets it holds.
    pub sets: BTreeSet<String>,
    /// What the last transaction rendered; `None`: the next one is a full
    /// sync.
    written: Option<Written>,
}

#[derive(Clone, Debug)]
struct Written {
    cfg: RuleConfig,
    /// By chain base name.
    ports: HashMap<String, ServicePort>,
    /// Every map and set element of the Services: (map, element).
    elements: HashSet<(&'static str, String)>,
}

impl Previous {
    /// The same table, but the next sync is a full one.
    #[must_use]
    pub fn for_full_sync(self) -> Self {
        Self {
            written: None,
            ..self
        }
    }
}

#[derive(Default)]
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
    /// Takes `other`'s text and objects, leaving it empty.
    fn append(&mut self, other: &mut Out) {
        self.text.push_str(&other.text);
        self.objects += other.objects;
        other.clear();
    }
    fn clear(&mut self) {
        self.text.clear();
        self.objects = 0;
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

/// The table, its base and fixed chains, maps and sets (flushed), and
/// their fixed rules: what a full sync writes before the Services. An
/// unknown table (`!table_written`) is deleted first.
fn header(o: &mut Out, cfg: &RuleConfig, table_written: bool) {
    let mark = format!("{:#x}", 1u32 << cfg.masquerade_bit);
    if !table_written {
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
}

/// Renders the transaction for `ports` after `previous`: a partial sync
/// when `previous` knows what it rendered with the same `cfg`, else a
/// full one.
pub fn render(ports: &[ServicePort], cfg: &RuleConfig, previous: &Previous) -> Script {
    let kept = previous
        .written
        .as_ref()
        .filter(|w| previous.table_written && w.cfg == *cfg);
    let mut head = Out::default();
    header(&mut head, cfg, previous.table_written);
    // Rules and elements in the table once applied, written or kept.
    let mut objects = head.objects;
    let mut o = Out::default();
    if kept.is_none() {
        o.append(&mut head);
    }
    let mut chains = BTreeSet::new();
    let mut sets = BTreeSet::new();
    let mut written = HashMap::with_capacity(ports.len());
    let mut elements = HashSet::new();
    let (mut decl, mut rules, mut own) = (Out::default(), Out::default(), Vec::new());
    let mut body = Out::default();
    for sp in ports {
        let base = nft_service_base(sp);
        service_port(
            sp,
            &base,
            cfg,
            &mut decl,
            &mut rules,
            &mut own,
            &mut chains,
            &mut sets,
        );
        let unchanged = kept.is_some_and(|w| w.ports.get(&base) == Some(sp));
        objects += rules.objects + own.len();
        if unchanged {
            decl.clear();
            rules.clear();
        } else {
            body.append(&mut decl);
            for (map, element) in &own {
                // A partial sync adds only what the maps do not hold yet.
                if kept.is_none_or(|w| !w.elements.contains(&(*map, element.clone()))) {
                    body.element(map, element);
                }
            }
            body.append(&mut rules);
        }
        elements.extend(own.drain(..));
        written.insert(base, sp.clone());
    }
    // Elements no Service has any more (or with another verdict now),
    // deleted by key before anything is added.
    if let Some(w) = kept {
        for (map, element) in w.elements.difference(&elements) {
            let key = element.split(" : ").next().unwrap_or(element);
            o.line(format!("delete element ip {TABLE} {map} {{ {key} }}"));
        }
    }
    o.append(&mut body);
    // Chains and sets no longer used: their map elements are gone (the
    // maps were flushed, or the elements deleted, above), so they can go in
    // the same transaction.
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
        objects,
        partial: kept.is_some(),
        next: Previous {
            table_written: true,
            chains,
            sets,
            written: Some(Written {
                cfg: cfg.clone(),
                ports: written,
                elements,
            }),
        },
    }
}

/// One ServicePort (chain base name `base`): its chain and set
/// declarations into `decl`, its map and set elements into `els` as (map,
/// element), the rules of its chains into `o`.
#[allow(clippy::too_many_arguments)]
fn service_port(
    sp: &ServicePort,
    base: &str,
    cfg: &RuleConfig,
    decl: &mut Out,
    o: &mut Out,
    els: &mut Vec<(&'static str, String)>,
    chains: &mut BTreeSet<String>,
    sets: &mut BTreeSet<String>,
) {
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
        declare(decl, chains, &svc);
    }
    if uses_local_chain {
        declare(decl, chains, &local);
    }
    if uses_ext_chain {
        declare(decl, chains, &ext);
    }
    if uses_fw {
        declare(decl, chains, &fw);
    }
    for ep in &reachable {
        let eb = nft_endpoint_base(sp, ep);
        declare(decl, chains, &format!("endpoint-{eb}"));
        if let Some(timeout) = sp.affinity_timeout_s {
            let set = format!("affinity-{eb}");
            // Not flushed: its elements are the clients' affinity.
            decl.line(format!(
                "add set ip {TABLE} {set} {{ type ipv4_addr ; flags dynamic,timeout ; timeout {timeout}s ; }}"
            ));
            sets.insert(set);
        }
    }

    els.push(("cluster-ips", cip.to_string()));
    if has_internal {
        els.push((
            "service-ips",
            format!("{cip} . {proto} . {port} : goto {internal_chain}"),
        ));
    } else if let Some(v) = verdict(has_internal) {
        els.push((
            "no-endpoint-services",
            format!("{cip} . {proto} . {port} : {v}"),
        ));
    }
    for ip in sp.external_ips.iter().chain(&sp.load_balancer_ips) {
        if uses_ext_chain {
            els.push((
                "service-ips",
                format!("{ip} . {proto} . {port} : goto {ext}"),
            ));
        }
        if let Some(v) = verdict(has_external) {
            els.push((
                "no-endpoint-services",
                format!("{ip} . {proto} . {port} : {v}"),
            ));
        }
    }
    if uses_fw {
        for ip in &sp.load_balancer_ips {
            els.push((
                "firewall-ips",
                format!("{ip} . {proto} . {port} : goto {fw}"),
            ));
        }
    }
    if let Some(np) = sp.node_port {
        if uses_ext_chain {
            els.push(("service-nodeports", format!("{proto} . {np} : goto {ext}")));
        }
        if let Some(v) = verdict(has_external) {
            els.push(("no-endpoint-nodeports", format!("{proto} . {np} : {v}")));
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
