//! kube-proxy's partial syncs, in the kernel: a random run of Service and
//! endpoint changes is applied with partial syncs (`iptables-restore
//! --noflush` of the changed chains only, or an `nft` transaction of the
//! changed elements and chains) in one namespace, and with a full sync in
//! another; after every step both kernels must hold the same rules, as
//! `iptables-save` and `nft -j list table` print them.
use std::collections::BTreeMap;

use serde_json::Value;
use switchyard::{
    desired::ServicePort,
    kubeproxy::{
        RuleConfig,
        apply::{IptablesRules, IptablesVariant, NftablesRules},
    },
    model::{BackendAddr, Protocol},
};
use testbed::{cmd::run, netns::Netns, privileges};

const SERVICES: u8 = 10;
const STEPS: usize = 40;

/// xorshift64: a reproducible run per seed, no dependency.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

fn endpoint(i: u64, proto: Protocol) -> BackendAddr {
    BackendAddr {
        addr: std::net::Ipv4Addr::new(10, 244, 1, 1 + i as u8),
        port: 8080,
        proto,
    }
}

/// A random ServicePort number `n`.
fn random_port(rng: &mut Rng, n: u8) -> ServicePort {
    let proto = if rng.chance(25) {
        Protocol::Udp
    } else {
        Protocol::Tcp
    };
    let mut cluster: Vec<BackendAddr> = (0..6)
        .filter(|_| rng.chance(40))
        .map(|i| endpoint(i, proto))
        .collect();
    cluster.sort_by_key(|b| format!("{}:{}", b.addr, b.port));
    let local = cluster.iter().copied().filter(|_| rng.chance(50)).collect();
    let node_port = rng.chance(50).then_some(30000 + u16::from(n));
    ServicePort {
        name: format!("ns{n}/svc{n}:p"),
        proto,
        cluster_ip: std::net::Ipv4Addr::new(10, 96, 0, n + 1),
        port: 80,
        node_port,
        external_ips: if rng.chance(20) {
            vec![std::net::Ipv4Addr::new(203, 0, 113, n + 1)]
        } else {
            vec![]
        },
        external_local: node_port.is_some() && rng.chance(30),
        internal_local: rng.chance(15),
        affinity_timeout_s: rng.chance(25).then_some(60),
        // Ready (or serving and terminating) endpoints anywhere.
        has_any_endpoints: !cluster.is_empty(),
        cluster,
        local,
        ..ServicePort::default()
    }
}

/// `iptables-save` of both tables, chains sorted, each chain's rules in
/// order, counters left out.
fn iptables_rules(ns: &str, variant: &str) -> BTreeMap<String, Vec<String>> {
    let save = run(
        "ip",
        &["netns", "exec", ns, &format!("iptables-{variant}-save")],
    )
    .unwrap();
    let mut chains = BTreeMap::new();
    let mut table = String::new();
    for line in save.lines() {
        if let Some(t) = line.strip_prefix('*') {
            table = t.to_owned();
        } else if let Some(decl) = line.strip_prefix(':') {
            let name = decl.split(' ').next().unwrap();
            chains
                .entry(format!("{table} {name}"))
                .or_insert_with(Vec::new);
        } else if let Some(rule) = line.strip_prefix("-A ") {
            let name = rule.split(' ').next().unwrap();
            chains
                .entry(format!("{table} {name}"))
                .or_insert_with(Vec::new)
                .push(rule.to_owned());
        }
    }
    chains
}

/// `nft -j list table ip kube-proxy` without handles: each chain's rules
/// in order, map and set elements sorted.
fn nft_rules(ns: &str) -> BTreeMap<String, String> {
    let out = run(
        "ip",
        &[
            "netns",
            "exec",
            ns,
            "nft",
            "-j",
            "list",
            "table",
            "ip",
            "kube-proxy",
        ],
    )
    .unwrap();
    let v: Value = serde_json::from_str(&out).unwrap();
    let mut objects = BTreeMap::new();
    let mut per_chain: BTreeMap<String, usize> = BTreeMap::new();
    for item in v["nftables"].as_array().unwrap() {
        let (kind, body) = item.as_object().unwrap().iter().next().unwrap();
        let mut body = body.clone();
        body.as_object_mut().unwrap().remove("handle");
        let key = match kind.as_str() {
            "rule" => {
                let chain = body["chain"].as_str().unwrap().to_owned();
                let n = per_chain.entry(chain.clone()).or_default();
                *n += 1;
                format!("rule {chain} #{n}")
            }
            "map" | "set" => {
                if let Some(elem) = body.get_mut("elem").and_then(Value::as_array_mut) {
                    elem.sort_by_key(ToString::to_string);
                }
                format!("{kind} {}", body["name"].as_str().unwrap())
            }
            "metainfo" => continue,
            other => format!("{other} {}", body["name"].as_str().unwrap_or("")),
        };
        objects.insert(key, body.to_string());
    }
    objects
}

fn config() -> RuleConfig {
    RuleConfig {
        local_detector: Some("10.244.0.0/16".parse().unwrap()),
        ..RuleConfig::default()
    }
}

/// The run for `seed`: (step, the ServicePorts after it).
fn changes(seed: u64) -> Vec<Vec<ServicePort>> {
    let mut rng = Rng(seed);
    let mut ports = BTreeMap::new();
    for n in 0..SERVICES {
        if rng.chance(70) {
            ports.insert(n, random_port(&mut rng, n));
        }
    }
    let mut steps = vec![ports.values().cloned().collect()];
    for _ in 0..STEPS {
        // One Service at a time, as most syncs see it; now and then two.
        for _ in 0..1 + usize::from(rng.chance(20)) {
            let n = rng.below(u64::from(SERVICES)) as u8;
            match ports.get_mut(&n) {
                Some(sp) if rng.chance(50) && !sp.cluster.is_empty() => {
                    // One endpoint leaves (kept sorted, local ones too).
                    let gone = sp
                        .cluster
                        .remove(rng.below(sp.cluster.len() as u64) as usize);
                    sp.local.retain(|b| *b != gone);
                    sp.has_any_endpoints = !sp.cluster.is_empty();
                }
                Some(_) if rng.chance(30) => {
                    ports.remove(&n);
                }
                _ => {
                    ports.insert(n, random_port(&mut rng, n));
                }
            }
        }
        steps.push(ports.values().cloned().collect());
    }
    steps
}

fn iptables_partial_syncs_match_full_syncs(variant: IptablesVariant, name: &str, seed: u64) {
    privileges::require();
    let pid = std::process::id();
    let partial_ns = Netns::new(&format!("sy{pid}-ipt-{name}-p")).unwrap();
    let full_ns = Netns::new(&format!("sy{pid}-ipt-{name}-f")).unwrap();
    let cfg = config();
    let mut partial = IptablesRules::new(Some(partial_ns.name().to_owned()), variant).unwrap();
    let mut full = IptablesRules::new(Some(full_ns.name().to_owned()), variant).unwrap();
    let mut partial_syncs = 0;
    for (step, ports) in changes(seed).iter().enumerate() {
        let applied = partial.sync(ports, &cfg, false).unwrap();
        partial_syncs += usize::from(applied.partial);
        let reference = full.sync(ports, &cfg, true).unwrap();
        assert!(!reference.partial);
        assert_eq!(
            applied.objects, reference.objects,
            "step {step}: rule count"
        );
        let (got, want) = (
            iptables_rules(partial_ns.name(), name),
            iptables_rules(full_ns.name(), name),
        );
        assert!(
            got == want,
            "step {step}: partial syncs left other rules than a full sync\npartial: {got:#?}\nfull: {want:#?}"
        );
    }
    assert_eq!(
        partial_syncs, STEPS,
        "every sync after the first is partial"
    );
}

#[test]
fn iptables_legacy_partial_syncs_leave_what_full_syncs_leave() {
    iptables_partial_syncs_match_full_syncs(IptablesVariant::Legacy, "legacy", 0x5eed_0001);
}

#[test]
fn iptables_nft_partial_syncs_leave_what_full_syncs_leave() {
    iptables_partial_syncs_match_full_syncs(IptablesVariant::Nft, "nft", 0x5eed_0002);
}

#[test]
fn nftables_partial_syncs_leave_what_full_syncs_leave() {
    privileges::require();
    let pid = std::process::id();
    let partial_ns = Netns::new(&format!("sy{pid}-nft-p")).unwrap();
    let full_ns = Netns::new(&format!("sy{pid}-nft-f")).unwrap();
    let cfg = config();
    let mut partial = NftablesRules::new(Some(partial_ns.name().to_owned()));
    let mut partial_syncs = 0;
    for (step, ports) in changes(0x5eed_0003).iter().enumerate() {
        let applied = partial.sync(ports, &cfg, false).unwrap();
        partial_syncs += usize::from(applied.partial);
        // The reference: a table written from scratch.
        let reference = NftablesRules::new(Some(full_ns.name().to_owned()))
            .sync(ports, &cfg, true)
            .unwrap();
        assert_eq!(
            applied.objects, reference.objects,
            "step {step}: object count"
        );
        let (got, want) = (nft_rules(partial_ns.name()), nft_rules(full_ns.name()));
        if got != want {
            let differ: Vec<_> = got
                .keys()
                .chain(want.keys())
                .filter(|k| got.get(*k) != want.get(*k))
                .map(|k| {
                    format!(
                        "{k}:\n  partial {:?}\n  full    {:?}",
                        got.get(k),
                        want.get(k)
                    )
                })
                .collect();
            panic!(
                "step {step}: partial syncs left another table than a full sync:\n{}",
                differ.join("\n")
            );
        }
    }
    assert_eq!(
        partial_syncs, STEPS,
        "every sync after the first is partial"
    );
}

/// On iptables-nft, full syncs (and `bench-services`' largest loads) go
/// with a `-S` line first in `*nat` (iptables-nft 1.8.9's `--noflush`
/// restore is quadratic in the chains it names; a command naming no chain
/// avoids that). That is sound only if the kernel then holds the same rules
/// as after kube-proxy's payload as it is, which this loads by hand.
#[test]
fn iptables_nft_full_syncs_list_first_and_load_the_same_rules() {
    use std::io::Write as _;
    privileges::require();
    let pid = std::process::id();
    let as_kube_proxy = Netns::new(&format!("sy{pid}-ipt-nft-k")).unwrap();
    let list_first = Netns::new(&format!("sy{pid}-ipt-nft-s")).unwrap();
    let cfg = config();
    let ports = changes(0x5eed_0004).swap_remove(0);
    assert!(ports.len() > 3, "a run with Services to load");
    let mut rules =
        IptablesRules::new(Some(list_first.name().to_owned()), IptablesVariant::Nft).unwrap();
    assert!(rules.lists_first(), "iptables-nft's full syncs list first");
    rules.sync(&ports, &cfg, true).unwrap();
    // The jumps as the first sync makes them, then kube-proxy's payload as
    // it is, by hand.
    let mut reference =
        IptablesRules::new(Some(as_kube_proxy.name().to_owned()), IptablesVariant::Nft).unwrap();
    reference.sync(&[], &cfg, true).unwrap();
    let payload = switchyard::kubeproxy::iptables::render(&ports, &cfg, &Default::default());
    assert_ne!(
        switchyard::kubeproxy::iptables::listing_first(&payload.text),
        payload.text,
        "the payload has a *nat table"
    );
    let mut child = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            as_kube_proxy.name(),
            "iptables-nft-restore",
        ])
        .args(["-w", "5", "--noflush", "--counters"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(payload.text.as_bytes())
        .unwrap();
    assert!(
        child.wait().unwrap().success(),
        "iptables-nft-restore failed"
    );
    let (got, want) = (
        iptables_rules(list_first.name(), "nft"),
        iptables_rules(as_kube_proxy.name(), "nft"),
    );
    assert!(
        want.keys().any(|c| c.contains("KUBE-SEP-")),
        "the reference holds endpoint chains"
    );
    assert!(
        got == want,
        "different rules\nwith -S: {got:#?}\nas kube-proxy: {want:#?}"
    );
}
