//! kube-proxy's iptables mode, rendered: the `iptables-restore` payload
//! its proxier writes on a sync (`pkg/proxy/iptables/proxier.go`,
//! `syncProxyRules`), and the jump rules it keeps in the built-in chains.
//!
//! Layout (filter and nat tables): top-level chains re-declared (and so
//! flushed) on every sync; per ServicePort `KUBE-SVC-h` (cluster policy),
//! `KUBE-SVL-h` (local policy), `KUBE-EXT-h` (NodePort, externalIPs,
//! LoadBalancer IPs), `KUBE-FW-h` (`loadBalancerSourceRanges`), one
//! `KUBE-SEP-e` per endpoint; load balancing by `statistic` probabilities
//! 1/n, 1/(n-1), …; ClientIP affinity by the `recent` module; masquerade
//! by the mark bit (default 14: 0x4000) and `KUBE-POSTROUTING`. Past 1,000
//! endpoints in total kube-proxy is in large-cluster mode and leaves the
//! comments out of endpoint rules; so does this.
//!
//! Syncs are full or partial, as kube-proxy's: a full sync rewrites every
//! chain in use; a partial one (the config and large-cluster mode
//! unchanged) rewrites the top-level chains completely, with every
//! Service's capture rules, but leaves out the SVC/SVL/EXT/FW/SEP chains of
//! ServicePorts that are the same as at the last sync, so the kernel keeps
//! them (kube-proxy's `MinimizeIPTablesRestore`). Chains no longer used
//! are flushed and deleted (`-X`) in the same payload.
use std::{
    collections::{BTreeSet, HashMap},
    fmt::Write as _,
};

use super::{
    RuleConfig,
    names::{iptables_endpoint_chain, iptables_service_hash, proto_lower},
};
use crate::{desired::ServicePort, model::BackendAddr};

/// kube-proxy's large-cluster threshold (`largeClusterEndpointsThreshold`).
pub const LARGE_CLUSTER_ENDPOINTS: usize = 1000;

/// The chain prefixes kube-proxy owns per ServicePort; a chain with one
/// of them that is not in use any more is stale.
pub const SERVICE_CHAIN_PREFIXES: [&str; 5] = [
    "KUBE-SVC-",
    "KUBE-SVL-",
    "KUBE-EXT-",
    "KUBE-FW-",
    "KUBE-SEP-",
];

/// The filter table's top-level chains, re-declared (so flushed) by
/// every payload.
pub const FILTER_CHAINS: [&str; 5] = [
    "KUBE-SERVICES",
    "KUBE-EXTERNAL-SERVICES",
    "KUBE-FORWARD",
    "KUBE-NODEPORTS",
    "KUBE-PROXY-FIREWALL",
];

/// The nat table's top-level chains, likewise.
pub const NAT_CHAINS: [&str; 4] = [
    "KUBE-SERVICES",
    "KUBE-NODEPORTS",
    "KUBE-POSTROUTING",
    "KUBE-MARK-MASQ",
];

/// kubelet's anti-martian chain, written with localhost NodePorts.
pub const FIREWALL_CHAIN: &str = "KUBE-FIREWALL";

const NODEPORTS_TAIL_COMMENT: &str =
    "\"kubernetes service nodeports; NOTE: this must be the last rule in this chain\"";

/// One restore payload and what it leaves in use.
#[derive(Clone, Debug, Default)]
pub struct Payload {
    /// `*filter … COMMIT *nat … COMMIT`, for `iptables-restore --noflush`.
    pub text: String,
    /// Rules in kube-proxy's chains once it is applied (filter + nat,
    /// written or kept), kube-proxy's `sync_proxy_rules_iptables_total`.
    pub rules: usize,
    /// Whether Service chains unchanged since the last sync were left out.
    pub partial: bool,
    /// What the kernel holds once the payload is applied: the `previous`
    /// of the next sync.
    pub next: Previous,
}

/// What earlier syncs left in the kernel, as the next sync needs it.
#[derive(Clone, Debug, Default)]
pub struct Previous {
    /// nat chains with a service prefix (deleted unless still in use).
    pub chains: BTreeSet<String>,
    /// The rendering those chains came from; `None` (a start, a failed
    /// restore, a periodic full sync): the next sync is a full one.
    written: Option<Written>,
}

#[derive(Clone, Debug)]
struct Written {
    cfg: RuleConfig,
    large: bool,
    /// By service chain hash.
    ports: HashMap<String, ServicePort>,
}

impl Previous {
    /// Chains found in the kernel (`iptables-save`), of unknown content:
    /// the next sync is a full one.
    pub fn chains_in_kernel(chains: BTreeSet<String>) -> Self {
        Self {
            chains,
            written: None,
        }
    }

    /// The same chains, but the next sync is a full one.
    #[must_use]
    pub fn for_full_sync(self) -> Self {
        Self::chains_in_kernel(self.chains)
    }
}

/// A jump from a built-in chain into kube-proxy's chains, kept outside the
/// restore payload because kube-proxy does not own the built-in chains
/// (ensured with `-C`, inserted at position 1 with `-I` when missing).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Jump {
    /// `filter` or `nat`.
    pub table: &'static str,
    /// The built-in chain.
    pub chain: &'static str,
    /// The chain jumped to (created first when missing).
    pub target: &'static str,
    /// The rule's arguments after `-A chain`.
    pub args: Vec<String>,
}

/// The jump rules, in the order kube-proxy ensures them.
pub fn jumps() -> Vec<Jump> {
    let new = ["-m", "conntrack", "--ctstate", "NEW"];
    let mk = |table: &'static str,
              chain: &'static str,
              target: &'static str,
              extra: &[&str],
              comment: &str| {
        let mut args: Vec<String> = extra.iter().map(|s| (*s).to_owned()).collect();
        args.extend(["-m", "comment", "--comment", comment].map(str::to_owned));
        args.extend(["-j".to_owned(), target.to_owned()]);
        Jump {
            table,
            chain,
            target,
            args,
        }
    };
    vec![
        mk(
            "filter",
            "INPUT",
            "KUBE-EXTERNAL-SERVICES",
            &new,
            "kubernetes externally-visible service portals",
        ),
        mk(
            "filter",
            "FORWARD",
            "KUBE-EXTERNAL-SERVICES",
            &new,
            "kubernetes externally-visible service portals",
        ),
        mk(
            "filter",
            "INPUT",
            "KUBE-NODEPORTS",
            &[],
            "kubernetes health check service ports",
        ),
        mk(
            "filter",
            "FORWARD",
            "KUBE-SERVICES",
            &new,
            "kubernetes service portals",
        ),
        mk(
            "filter",
            "OUTPUT",
            "KUBE-SERVICES",
            &new,
            "kubernetes service portals",
        ),
        mk(
            "filter",
            "FORWARD",
            "KUBE-FORWARD",
            &[],
            "kubernetes forwarding rules",
        ),
        mk(
            "filter",
            "INPUT",
            "KUBE-PROXY-FIREWALL",
            &new,
            "kubernetes load balancer firewall",
        ),
        mk(
            "filter",
            "OUTPUT",
            "KUBE-PROXY-FIREWALL",
            &new,
            "kubernetes load balancer firewall",
        ),
        mk(
            "filter",
            "FORWARD",
            "KUBE-PROXY-FIREWALL",
            &new,
            "kubernetes load balancer firewall",
        ),
        mk(
            "nat",
            "OUTPUT",
            "KUBE-SERVICES",
            &[],
            "kubernetes service portals",
        ),
        mk(
            "nat",
            "PREROUTING",
            "KUBE-SERVICES",
            &[],
            "kubernetes service portals",
        ),
        mk(
            "nat",
            "POSTROUTING",
            "KUBE-POSTROUTING",
            &[],
            "kubernetes postrouting rules",
        ),
    ]
}

/// Line buffer counting rules (`-A` lines). While `keep_own` is set, a
/// Service's own chains and rules ([`Self::own_chain`], [`Self::own`]) are
/// counted but left out: the kernel keeps them from the last sync.
#[derive(Default)]
struct Lines {
    text: String,
    rules: usize,
    keep_own: bool,
}

impl Lines {
    fn rule(&mut self, line: impl AsRef<str>) {
        self.text.push_str(line.as_ref());
        self.text.push('\n');
        self.rules += 1;
    }
    fn chain(&mut self, name: &str) {
        let _ = writeln!(self.text, ":{name} - [0:0]");
    }
    /// A rule in one of the Service's own chains.
    fn own(&mut self, line: impl AsRef<str>) {
        if self.keep_own {
            self.rules += 1;
        } else {
            self.rule(line);
        }
    }
    /// One of the Service's own chains.
    fn own_chain(&mut self, name: &str) {
        if !self.keep_own {
            self.chain(name);
        }
    }
}

/// `"text"` as kube-proxy quotes comments holding spaces.
fn quoted(s: &str) -> String {
    format!("\"{s}\"")
}

/// `-m proto -p proto`.
fn proto_match(sp: &ServicePort) -> String {
    let p = proto_lower(sp);
    format!("-m {p} -p {p}")
}

/// Renders the payload for `ports` after `previous`: a partial sync when
/// `previous` knows what it rendered with the same `cfg` and large-cluster
/// mode, else a full one.
pub fn render(ports: &[ServicePort], cfg: &RuleConfig, previous: &Previous) -> Payload {
    let mark = format!("{:#x}", 1u32 << cfg.masquerade_bit);
    let total_endpoints: usize = ports.iter().map(|sp| sp.reachable_endpoints().len()).sum();
    let large = total_endpoints > LARGE_CLUSTER_ENDPOINTS;
    let kept = previous
        .written
        .as_ref()
        .filter(|w| w.large == large && w.cfg == *cfg);
    let (mut filter_chains, mut filter) = (Lines::default(), Lines::default());
    let (mut nat_chains, mut nat) = (Lines::default(), Lines::default());
    for c in FILTER_CHAINS {
        filter_chains.chain(c);
    }
    for c in NAT_CHAINS {
        nat_chains.chain(c);
    }
    nat.rule(format!(
        "-A KUBE-POSTROUTING -m mark ! --mark {mark}/{mark} -j RETURN"
    ));
    nat.rule(format!("-A KUBE-POSTROUTING -j MARK --xor-mark {mark}"));
    nat.rule(
        "-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully",
    );
    nat.rule(format!("-A KUBE-MARK-MASQ -j MARK --or-mark {mark}"));
    if cfg.localhost_nodeports {
        filter_chains.chain(FIREWALL_CHAIN);
        filter.rule(
            "-A KUBE-FIREWALL -m comment --comment \"block incoming localnet connections\" -d 127.0.0.0/8 ! -s 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP",
        );
    }
    let mut in_use = BTreeSet::new();
    let mut written = HashMap::with_capacity(ports.len());
    for sp in ports {
        let h = iptables_service_hash(sp);
        let unchanged = kept.is_some_and(|w| w.ports.get(&h) == Some(sp));
        nat_chains.keep_own = unchanged;
        nat.keep_own = unchanged;
        service_port(
            sp,
            &h,
            cfg,
            large,
            &mut filter,
            &mut nat_chains,
            &mut nat,
            &mut in_use,
        );
        written.insert(h, sp.clone());
    }
    nat_chains.keep_own = false;
    nat.keep_own = false;
    // The tail: NodePorts on local addresses (or the chosen ones).
    match &cfg.nodeport_addresses {
        None => nat.rule(format!(
            "-A KUBE-SERVICES -m comment --comment {NODEPORTS_TAIL_COMMENT} -m addrtype --dst-type LOCAL {}-j KUBE-NODEPORTS",
            if cfg.localhost_nodeports {
                ""
            } else {
                "! -d 127.0.0.0/8 "
            }
        )),
        Some(addrs) => {
            for a in addrs {
                if a.is_loopback() && !cfg.localhost_nodeports {
                    continue;
                }
                nat.rule(format!(
                    "-A KUBE-SERVICES -m comment --comment {NODEPORTS_TAIL_COMMENT} -d {a} -j KUBE-NODEPORTS"
                ));
            }
        }
    }
    filter.rule("-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP");
    filter.rule(format!(
        "-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding rules\" -m mark --mark {mark}/{mark} -j ACCEPT"
    ));
    filter.rule(
        "-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding conntrack rule\" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
    );
    // Stale chains: declared (flushed), then deleted.
    let mut deletes = String::new();
    for c in previous.chains.difference(&in_use) {
        nat_chains.chain(c);
        let _ = writeln!(deletes, "-X {c}");
    }
    let text = format!(
        "*filter\n{}{}COMMIT\n*nat\n{}{}{deletes}COMMIT\n",
        filter_chains.text, filter.text, nat_chains.text, nat.text
    );
    Payload {
        text,
        rules: filter.rules + nat.rules,
        partial: kept.is_some(),
        next: Previous {
            chains: in_use,
            written: Some(Written {
                cfg: cfg.clone(),
                large,
                ports: written,
            }),
        },
    }
}

/// The filter verdict for traffic without (local) endpoints: (target, comment).
struct NoEndpoints {
    internal: Option<(&'static str, String)>,
    external: Option<(&'static str, String)>,
}

fn no_endpoints(sp: &ServicePort) -> NoEndpoints {
    let name = &sp.name;
    if !sp.has_any_endpoints {
        let reject = ("REJECT", quoted(&format!("{name} has no endpoints")));
        return NoEndpoints {
            internal: Some(reject.clone()),
            external: Some(reject),
        };
    }
    let drop = ("DROP", quoted(&format!("{name} has no local endpoints")));
    NoEndpoints {
        internal: (!sp.has_internal_endpoints()).then(|| drop.clone()),
        external: (!sp.has_external_endpoints()).then_some(drop),
    }
}

#[allow(clippy::too_many_lines)]
/// The rules of one ServicePort (chain hash `h`): capture rules in the
/// top-level chains (`rule`), its own chains (`own_chain`, `own`).
#[allow(clippy::too_many_arguments)]
fn service_port(
    sp: &ServicePort,
    h: &str,
    cfg: &RuleConfig,
    large: bool,
    filter: &mut Lines,
    nat_chains: &mut Lines,
    nat: &mut Lines,
    in_use: &mut BTreeSet<String>,
) {
    let (svc, svl, ext, fw) = (
        format!("KUBE-SVC-{h}"),
        format!("KUBE-SVL-{h}"),
        format!("KUBE-EXT-{h}"),
        format!("KUBE-FW-{h}"),
    );
    let name = &sp.name;
    let p = proto_match(sp);
    let has_endpoints = sp.has_any_endpoints;
    let uses_cluster_chain = !sp.cluster.is_empty() && sp.uses_cluster_endpoints();
    let uses_local_chain = !sp.local.is_empty() && sp.uses_local_endpoints();
    let internal_chain = if sp.internal_local { &svl } else { &svc };
    let external_policy_chain = if sp.external_local { &svl } else { &svc };
    let verdicts = no_endpoints(sp);
    let has_internal = sp.has_internal_endpoints();
    let has_external = sp.has_external_endpoints();
    let uses_ext_chain = has_endpoints && sp.externally_accessible();
    let uses_fw_chain =
        has_endpoints && !sp.load_balancer_ips.is_empty() && !sp.source_ranges.is_empty();
    let lb_chain = if uses_fw_chain { &fw } else { &ext };
    let (cip, port) = (sp.cluster_ip, sp.port);

    // Capture the ClusterIP.
    match &verdicts.internal {
        None if has_internal => nat.rule(format!(
            "-A KUBE-SERVICES -m comment --comment {} {p} -d {cip} --dport {port} -j {internal_chain}",
            quoted(&format!("{name} cluster IP"))
        )),
        Some((target, comment)) => filter.rule(format!(
            "-A KUBE-SERVICES -m comment --comment {comment} {p} -d {cip} --dport {port} -j {target}"
        )),
        None => {}
    }
    // externalIPs.
    for eip in &sp.external_ips {
        if has_endpoints {
            nat.rule(format!(
                "-A KUBE-SERVICES -m comment --comment {} {p} -d {eip} --dport {port} -j {ext}",
                quoted(&format!("{name} external IP"))
            ));
        }
        if let Some((target, comment)) = &verdicts.external {
            filter.rule(format!(
                "-A KUBE-EXTERNAL-SERVICES -m comment --comment {comment} {p} -d {eip} --dport {port} -j {target}"
            ));
        }
    }
    // LoadBalancer IPs.
    for lb in &sp.load_balancer_ips {
        if has_endpoints {
            nat.rule(format!(
                "-A KUBE-SERVICES -m comment --comment {} {p} -d {lb} --dport {port} -j {lb_chain}",
                quoted(&format!("{name} loadbalancer IP"))
            ));
        }
        if uses_fw_chain {
            filter.rule(format!(
                "-A KUBE-PROXY-FIREWALL -m comment --comment {} {p} -d {lb} --dport {port} -j DROP",
                quoted(&format!("{name} traffic not accepted by {fw}"))
            ));
        }
    }
    if let Some((target, comment)) = &verdicts.external {
        for lb in &sp.load_balancer_ips {
            filter.rule(format!(
                "-A KUBE-EXTERNAL-SERVICES -m comment --comment {comment} {p} -d {lb} --dport {port} -j {target}"
            ));
        }
    }
    // NodePort.
    if let Some(np) = sp.node_port {
        if has_endpoints {
            nat.rule(format!(
                "-A KUBE-NODEPORTS -m comment --comment {name} {p} --dport {np} -j {ext}"
            ));
        }
        if let Some((target, comment)) = &verdicts.external {
            filter.rule(format!(
                "-A KUBE-EXTERNAL-SERVICES -m comment --comment {comment} -m addrtype --dst-type LOCAL {p} --dport {np} -j {target}"
            ));
        }
    }
    if let Some(hc) = sp.health_check_node_port {
        filter.rule(format!(
            "-A KUBE-NODEPORTS -m comment --comment {} -m tcp -p tcp --dport {hc} -j ACCEPT",
            quoted(&format!("{name} health check node port"))
        ));
    }

    // Internal traffic: masquerade what does not come from a pod.
    if has_internal {
        let args = format!(
            "-m comment --comment {} {p} -d {cip} --dport {port}",
            quoted(&format!("{name} cluster IP"))
        );
        if cfg.masquerade_all {
            nat.own(format!("-A {internal_chain} {args} -j KUBE-MARK-MASQ"));
        } else if let Some(local) = &cfg.local_detector {
            nat.own(format!(
                "-A {internal_chain} {args} ! -s {local} -j KUBE-MARK-MASQ"
            ));
        }
    }
    if uses_ext_chain {
        nat_chains.own_chain(&ext);
        in_use.insert(ext.clone());
        if sp.external_local {
            if let Some(local) = &cfg.local_detector {
                nat.own(format!(
                    "-A {ext} -m comment --comment {} -s {local} -j {svc}",
                    quoted(&format!("pod traffic for {name} external destinations"))
                ));
            }
            nat.own(format!(
                "-A {ext} -m comment --comment {} -m addrtype --src-type LOCAL -j KUBE-MARK-MASQ",
                quoted(&format!(
                    "masquerade LOCAL traffic for {name} external destinations"
                ))
            ));
            nat.own(format!(
                "-A {ext} -m comment --comment {} -m addrtype --src-type LOCAL -j {svc}",
                quoted(&format!(
                    "route LOCAL traffic for {name} external destinations"
                ))
            ));
        } else {
            nat.own(format!(
                "-A {ext} -m comment --comment {} -j KUBE-MARK-MASQ",
                quoted(&format!(
                    "masquerade traffic for {name} external destinations"
                ))
            ));
        }
        if has_external {
            nat.own(format!("-A {ext} -j {external_policy_chain}"));
        }
    }
    if uses_fw_chain {
        nat_chains.own_chain(&fw);
        in_use.insert(fw.clone());
        let args = format!(
            "-A {fw} -m comment --comment {}",
            quoted(&format!("{name} loadbalancer IP"))
        );
        let mut allow_from_node = false;
        for cidr in &sp.source_ranges {
            nat.own(format!("{args} -s {cidr} -j {ext}"));
            allow_from_node |= cfg.node_ip.is_some_and(|ip| cidr.contains(ip));
        }
        if allow_from_node {
            for lb in &sp.load_balancer_ips {
                nat.own(format!("{args} -s {lb} -j {ext}"));
            }
        }
        nat.own(format!(
            "-A {fw} -m comment --comment {}",
            quoted(&format!(
                "other traffic to {name} will be dropped by KUBE-PROXY-FIREWALL"
            ))
        ));
    }
    let comment = |c: String| {
        if large {
            String::new()
        } else {
            format!("-m comment --comment {c} ")
        }
    };
    let endpoint_rules = |nat: &mut Lines, chain: &str, eps: &[BackendAddr]| {
        if let Some(timeout) = sp.affinity_timeout_s {
            for ep in eps {
                let sep = iptables_endpoint_chain(sp, ep);
                nat.own(format!(
                    "-A {chain} {}-m recent --name {sep} --rcheck --seconds {timeout} --reap -j {sep}",
                    comment(quoted(&format!("{name} -> {}:{}", ep.addr, ep.port)))
                ));
            }
        }
        let n = eps.len();
        for (i, ep) in eps.iter().enumerate() {
            let sep = iptables_endpoint_chain(sp, ep);
            let pick = if i + 1 < n {
                format!(
                    "-m statistic --mode random --probability {:.10} ",
                    1.0 / (n - i) as f64
                )
            } else {
                String::new()
            };
            nat.own(format!(
                "-A {chain} {}{pick}-j {sep}",
                comment(quoted(&format!("{name} -> {}:{}", ep.addr, ep.port)))
            ));
        }
    };
    if uses_cluster_chain {
        nat_chains.own_chain(&svc);
        in_use.insert(svc.clone());
        endpoint_rules(nat, &svc, &sp.cluster);
    }
    if uses_local_chain {
        nat_chains.own_chain(&svl);
        in_use.insert(svl.clone());
        endpoint_rules(nat, &svl, &sp.local);
    }
    for ep in sp.reachable_endpoints() {
        let sep = iptables_endpoint_chain(sp, &ep);
        nat_chains.own_chain(&sep);
        in_use.insert(sep.clone());
        let c = comment(name.clone());
        nat.own(format!("-A {sep} {c}-s {} -j KUBE-MARK-MASQ", ep.addr));
        let recent = if sp.affinity_timeout_s.is_some() {
            format!("-m recent --name {sep} --set ")
        } else {
            String::new()
        };
        nat.own(format!(
            "-A {sep} {c}{recent}{p} -j DNAT --to-destination {}:{}",
            ep.addr, ep.port
        ));
    }
}

/// Service chains named in `iptables-save -t nat` output: what earlier
/// syncs (or an earlier kube-proxy) left.
pub fn service_chains_in(save: &str) -> BTreeSet<String> {
    save.lines()
        .filter_map(|l| l.strip_prefix(':'))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| SERVICE_CHAIN_PREFIXES.iter().any(|p| c.starts_with(p)))
        .map(str::to_owned)
        .collect()
}

/// `payload` with one `-S` line first in its `*nat` table (unchanged
/// when it has none): the same rules, loaded fast by iptables-nft.
///
/// With `--noflush`, iptables-nft 1.8.9 records every chain its input
/// names in a sorted linked list (a walk per command) and then fetches
/// each chain from the kernel alone: quadratic in the chains, 247 s for
/// kube-proxy's full payload at 4,000 Services × 10 endpoints on a 2-core
/// machine. A command that names no chain, such as `-S`, makes it fetch
/// the whole table in one dump instead (2.5 s there). iptables-legacy
/// gains nothing from it. The listing goes to the restore's stdout.
pub fn listing_first(payload: &str) -> String {
    payload.replacen("*nat\n", "*nat\n-S\n", 1)
}

/// One `iptables-restore --noflush` payload that removes `chains` per
/// table (`(table, chains)`): each chain declared (which flushes it, so no
/// chain in the set still jumps to another) and then deleted, as
/// kube-proxy's cleanup does, in one transaction per table instead of two
/// `iptables` runs per chain. The jumps into the chains from the built-in
/// chains must be gone first, or the deletes fail and nothing changes.
pub fn cleanup_payload(tables: &[(&str, &[String])]) -> String {
    let mut out = String::new();
    for (table, chains) in tables {
        out.push_str(&format!("*{table}\n"));
        for c in chains.iter() {
            out.push_str(&format!(":{c} - [0:0]\n"));
        }
        for c in chains.iter() {
            out.push_str(&format!("-X {c}\n"));
        }
        out.push_str("COMMIT\n");
    }
    out
}

#[cfg(test)]
mod tests;
