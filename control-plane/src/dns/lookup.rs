//! Answers one question from a [`Snapshot`]: pure, no I/O.
//!
//! The names and records are those of the Kubernetes DNS specification
//! (schema 1.1.0) as CoreDNS' `kubernetes` plugin serves them (its
//! `parseRequest`, `findServices`, `findPods` with `pods insecure`,
//! `serviceRecordForIP`, and the NXDOMAIN/NODATA split of its handler):
//!
//! | name | records |
//! |---|---|
//! | `<svc>.<ns>.svc.<zone>` | A/AAAA: ClusterIPs; headless: ready endpoints' addresses; ExternalName: CNAME |
//! | `<ep>.<svc>.<ns>.svc.<zone>` | A/AAAA of the endpoint labelled `<ep>` (its hostname, else its dashed address) |
//! | `_<port>._<proto>.<svc>.<ns>.svc.<zone>` | SRV per matching port (ClusterIP: target the Service; headless: one per endpoint) |
//! | `<a-b-c-d>.<ns>.pod.<zone>` | A (or AAAA for a dashed IPv6 address) when the namespace exists |
//! | `dns-version.<zone>` | TXT `1.1.0` |
//! | `d.c.b.a.in-addr.arpa`, nibbles `.ip6.arpa` | PTR of a ClusterIP, else of ready endpoint addresses |
//!
//! A name that exists without the asked type is NODATA (NOERROR, no
//! answer); a name that does not exist is NXDOMAIN; both carry the zone's
//! SOA in the authority section (added by the server).
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use hickory_server::proto::rr::{
    Name, RData, Record, RecordType,
    rdata::{A, AAAA, CNAME, NS, PTR, SOA, SRV, TXT},
};

use super::snapshot::{EndpointRecord, Port, ReverseTarget, ServiceKind, Snapshot};

/// The schema version `dns-version.<zone>` publishes.
pub const SCHEMA_VERSION: &str = "1.1.0";
/// TTL of the `dns-version` TXT record (CoreDNS: 28800 s).
pub const DNS_VERSION_TTL: u32 = 28_800;
/// CoreDNS' default TTL for the `kubernetes` plugin's answers, in seconds.
pub const DEFAULT_TTL: u32 = 5;
/// How many in-zone CNAME hops an answer follows.
const MAX_CHASE: usize = 8;

/// The zone served and how.
#[derive(Clone, Debug)]
pub struct Zone {
    /// The cluster domain, fully qualified and lower-case (`cluster.local.`).
    pub domain: Name,
    /// TTL of every answer, seconds.
    pub ttl: u32,
}

impl Zone {
    /// A zone for `domain` (`cluster.local`, a trailing dot optional).
    ///
    /// Errors when `domain` is not a valid domain name or is the root.
    pub fn new(domain: &str, ttl: u32) -> Result<Self, String> {
        let mut name = Name::from_ascii(domain)
            .map_err(|e| format!("cluster domain {domain:?} is not a domain name: {e}"))?;
        name.set_fqdn(true);
        if name.is_root() {
            return Err("the cluster domain cannot be the root".into());
        }
        Ok(Self {
            domain: name.to_lowercase(),
            ttl,
        })
    }

    /// `<labels…>.<zone>.`
    fn name(&self, labels: &[&str]) -> Name {
        let mut n =
            Name::from_labels(labels.iter().map(|l| l.as_bytes())).unwrap_or_else(|_| Name::root());
        n.set_fqdn(false);
        n.append_domain(&self.domain)
            .unwrap_or_else(|_| self.domain.clone())
    }

    /// The zone's SOA record as CoreDNS writes it: `ns.dns.<zone>.
    /// hostmaster.<zone>.`, refresh 7200, retry 1800, expire 86400,
    /// minimum = TTL. `apex` is the zone the record is for (the cluster
    /// domain or a reverse zone).
    pub fn soa(&self, apex: &Name, serial: u32) -> Record {
        let rdata = SOA::new(
            self.name(&["ns", "dns"]),
            self.name(&["hostmaster"]),
            serial,
            7200,
            1800,
            86400,
            self.ttl,
        );
        Record::from_rdata(apex.clone(), self.ttl, RData::SOA(rdata))
    }
}

/// What to answer.
#[derive(Clone, Debug, PartialEq)]
pub enum Resolution {
    /// NOERROR with records. `chase` names an ExternalName target outside
    /// the zone that the server may resolve upstream (and append).
    Answer {
        /// The answer section.
        answers: Vec<Record>,
        /// The additional section (SRV targets' addresses).
        additionals: Vec<Record>,
        /// An ExternalName's out-of-zone target, for the upstream.
        chase: Option<Name>,
    },
    /// NOERROR, no answer; SOA of `apex` in the authority section.
    NoData {
        /// The zone whose SOA goes in the authority section.
        apex: Name,
    },
    /// NXDOMAIN; SOA of `apex` in the authority section.
    NxDomain {
        /// The zone whose SOA goes in the authority section.
        apex: Name,
    },
    /// SERVFAIL: the name would be NXDOMAIN but the caches have not listed
    /// yet (CoreDNS before its first sync).
    ServFail,
    /// REFUSED: zone transfers.
    Refused,
    /// Not in the cluster domain or the reverse zones: forward or REFUSED.
    Outside,
    /// A reverse name of no Service or endpoint: forward (kubeadm's
    /// `fallthrough in-addr.arpa ip6.arpa`), else NXDOMAIN of `apex`.
    UnknownReverse {
        /// `in-addr.arpa.` or `ip6.arpa.`.
        apex: Name,
    },
}

/// The host part of a found record.
#[derive(Clone, Debug)]
enum Host {
    Ip(IpAddr),
    Alias(Name),
}

/// One found entry (CoreDNS' `msg.Service`).
#[derive(Clone, Debug)]
struct Item {
    /// The name SRV records point at and additional records carry.
    target: Name,
    host: Host,
    port: Option<u16>,
}

/// Why a name does not exist.
struct Missing;

/// Answers `qname`/`qtype` from `snap`.
pub fn resolve(snap: &Snapshot, zone: &Zone, qname: &Name, qtype: RecordType) -> Resolution {
    resolve_depth(snap, zone, qname, qtype, 0)
}

fn resolve_depth(
    snap: &Snapshot,
    zone: &Zone,
    qname: &Name,
    qtype: RecordType,
    depth: usize,
) -> Resolution {
    let mut lower = qname.to_lowercase();
    lower.set_fqdn(true);
    if !zone.domain.zone_of(&lower) {
        return match reverse_apex(&lower) {
            Some(apex) => reverse(snap, zone, qname, &lower, qtype, apex),
            None => Resolution::Outside,
        };
    }
    if matches!(qtype, RecordType::AXFR | RecordType::IXFR) {
        return Resolution::Refused;
    }
    let extra = lower.num_labels() - zone.domain.num_labels();
    let labels: Vec<String> = lower
        .iter()
        .take(extra as usize)
        .map(|l| String::from_utf8_lossy(l).into_owned())
        .collect();
    let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
    let apex = zone.domain.clone();
    let nodata = || Resolution::NoData { apex: apex.clone() };
    let nxdomain = || {
        if snap.synced {
            Resolution::NxDomain { apex: apex.clone() }
        } else {
            Resolution::ServFail
        }
    };
    match labels.as_slice() {
        [] => {
            return match qtype {
                RecordType::SOA => answer(vec![zone.soa(qname, snap.serial)], vec![], None),
                RecordType::NS => {
                    let ns = zone.name(&["ns", "dns"]);
                    let add = dns_service_ips(snap)
                        .into_iter()
                        .map(|ip| address(&ns, ip, zone.ttl))
                        .collect();
                    let rec = Record::from_rdata(qname.clone(), zone.ttl, RData::NS(NS(ns)));
                    answer(vec![rec], add, None)
                }
                _ => nodata(),
            };
        }
        ["dns-version"] if qtype == RecordType::TXT => {
            let txt = TXT::new(vec![SCHEMA_VERSION.to_owned()]);
            let rec = Record::from_rdata(qname.clone(), DNS_VERSION_TTL, RData::TXT(txt));
            return answer(vec![rec], vec![], None);
        }
        ["ns", "dns"] => {
            // The name the SOA and NS records give: the DNS Service.
            let recs: Vec<Record> = dns_service_ips(snap)
                .into_iter()
                .filter(|ip| family_matches(*ip, qtype))
                .map(|ip| address(qname, ip, zone.ttl))
                .collect();
            return if recs.is_empty() {
                nodata()
            } else {
                answer(recs, vec![], None)
            };
        }
        _ => {}
    }
    let items = match find(snap, zone, &labels, qname) {
        Ok(items) => items,
        Err(Missing) => return nxdomain(),
    };
    if items.is_empty() {
        return nodata();
    }
    match qtype {
        RecordType::A | RecordType::AAAA | RecordType::CNAME => {
            if let Some(target) = items.iter().find_map(|i| match &i.host {
                Host::Alias(n) => Some(n.clone()),
                Host::Ip(_) => None,
            }) {
                let cname = Record::from_rdata(
                    qname.clone(),
                    zone.ttl,
                    RData::CNAME(CNAME(target.clone())),
                );
                if qtype == RecordType::CNAME {
                    return answer(vec![cname], vec![], None);
                }
                let mut answers = vec![cname];
                // An in-zone target is answered here (CoreDNS does the
                // same); another is left to the server's upstream.
                if zone.domain.zone_of(&target.to_lowercase()) {
                    if depth < MAX_CHASE
                        && let Resolution::Answer { answers: more, .. } =
                            resolve_depth(snap, zone, &target, qtype, depth + 1)
                    {
                        answers.extend(more);
                    }
                    return answer(answers, vec![], None);
                }
                return answer(answers, vec![], Some(target));
            }
            if qtype == RecordType::CNAME {
                return nodata();
            }
            let mut recs: Vec<Record> = Vec::new();
            let mut seen: Vec<IpAddr> = Vec::new();
            for item in &items {
                if let Host::Ip(ip) = item.host
                    && family_matches(ip, qtype)
                    && !seen.contains(&ip)
                {
                    seen.push(ip);
                    recs.push(address(qname, ip, zone.ttl));
                }
            }
            if recs.is_empty() {
                nodata()
            } else {
                answer(recs, vec![], None)
            }
        }
        RecordType::SRV => srv(zone, qname, &items),
        _ => nodata(),
    }
}

/// SRV records for the items with a port (ExternalName aliases have
/// none): priority 0, weight ⌊100/N⌋ (at least 1), the targets' addresses
/// in the additional section.
fn srv(zone: &Zone, qname: &Name, items: &[Item]) -> Resolution {
    let mut targets: Vec<(Name, u16)> = Vec::new();
    let mut additionals: Vec<Record> = Vec::new();
    let mut seen_add: Vec<(Name, IpAddr)> = Vec::new();
    for item in items {
        let (Host::Ip(ip), Some(port)) = (&item.host, item.port) else {
            continue;
        };
        if !targets.contains(&(item.target.clone(), port)) {
            targets.push((item.target.clone(), port));
        }
        if !seen_add.contains(&(item.target.clone(), *ip)) {
            seen_add.push((item.target.clone(), *ip));
            additionals.push(address(&item.target, *ip, zone.ttl));
        }
    }
    if targets.is_empty() {
        return Resolution::NoData {
            apex: zone.domain.clone(),
        };
    }
    let weight = u16::try_from(100 / targets.len()).unwrap_or(1).max(1);
    let answers = targets
        .into_iter()
        .map(|(target, port)| {
            Record::from_rdata(
                qname.clone(),
                zone.ttl,
                RData::SRV(SRV::new(0, weight, port, target)),
            )
        })
        .collect();
    answer(answers, additionals, None)
}

/// The entries a forward name stands for: `Ok(empty)` when the name
/// exists without records of its own (a namespace), `Err` when it does not
/// exist. `labels` are the lower-cased labels left of the zone.
fn find(snap: &Snapshot, zone: &Zone, labels: &[&str], qname: &Name) -> Result<Vec<Item>, Missing> {
    let Some((kind, rest)) = labels.split_last() else {
        return Ok(vec![]);
    };
    if *kind != "svc" && *kind != "pod" {
        return Err(Missing);
    }
    let Some((namespace, rest)) = rest.split_last() else {
        return Ok(vec![]); // `svc.<zone>`, `pod.<zone>`
    };
    if !snap.namespaces.contains(*namespace) {
        return Err(Missing);
    }
    let Some((name, rest)) = rest.split_last() else {
        return Ok(vec![]); // `<ns>.svc.<zone>`
    };
    if *kind == "pod" {
        if !rest.is_empty() {
            return Err(Missing);
        }
        let ip = pod_ip(name).ok_or(Missing)?;
        return Ok(vec![Item {
            target: qname.clone(),
            host: Host::Ip(ip),
            port: None,
        }]);
    }
    let (endpoint, port, protocol) = match rest {
        [] => (None, "", ""),
        [ep] => (Some(*ep), "", ""),
        [port, proto] => (None, strip_underscore(port), strip_underscore(proto)),
        _ => return Err(Missing),
    };
    let svc = snap.service(namespace, name).ok_or(Missing)?;
    let svc_name = zone.name(&[name, namespace, "svc"]);
    let mut items = Vec::new();
    match &svc.kind {
        ServiceKind::ExternalName(target) => {
            if endpoint.is_some() || !port.is_empty() || !protocol.is_empty() {
                return Err(Missing);
            }
            let mut alias = Name::from_ascii(target).map_err(|_| Missing)?;
            alias.set_fqdn(true);
            items.push(Item {
                target: svc_name,
                host: Host::Alias(alias),
                port: None,
            });
        }
        kind if *kind == ServiceKind::Headless || endpoint.is_some() => {
            for ep in snap.endpoints_of(namespace, name) {
                if endpoint.is_some_and(|e| e != ep.label) {
                    continue;
                }
                items.extend(endpoint_items(zone, ep, name, namespace, port, protocol));
            }
        }
        ServiceKind::ClusterIp(ips) => {
            for p in svc.ports.iter().filter(|p| port_matches(p, port, protocol)) {
                for ip in ips {
                    items.push(Item {
                        target: svc_name.clone(),
                        host: Host::Ip(*ip),
                        port: p.port,
                    });
                }
            }
        }
        ServiceKind::Headless => unreachable!("matched above"),
    }
    if items.is_empty() {
        return Err(Missing);
    }
    Ok(items)
}

fn endpoint_items(
    zone: &Zone,
    ep: &EndpointRecord,
    service: &str,
    namespace: &str,
    port: &str,
    protocol: &str,
) -> Vec<Item> {
    let target = zone.name(&[&ep.label, service, namespace, "svc"]);
    ep.ports
        .iter()
        .filter(|p| port_matches(p, port, protocol))
        .map(|p| Item {
            target: target.clone(),
            host: Host::Ip(ep.ip),
            port: p.port,
        })
        .collect()
}

/// CoreDNS' `matchPortAndProtocol`: an empty query part matches any.
fn port_matches(p: &Port, port: &str, protocol: &str) -> bool {
    (port.is_empty() || p.name.eq_ignore_ascii_case(port))
        && (protocol.is_empty() || p.protocol.eq_ignore_ascii_case(protocol))
}

fn strip_underscore(s: &str) -> &str {
    s.strip_prefix('_').unwrap_or(s)
}

/// `a-b-c-d` → a.b.c.d; with other than three dashes, or `--`, an IPv6
/// address with `:` for `-` (CoreDNS' `findPods`).
pub fn pod_ip(label: &str) -> Option<IpAddr> {
    if label.matches('-').count() == 3 && !label.contains("--") {
        label
            .replace('-', ".")
            .parse::<Ipv4Addr>()
            .ok()
            .map(IpAddr::V4)
    } else {
        label
            .replace('-', ":")
            .parse::<Ipv6Addr>()
            .ok()
            .map(IpAddr::V6)
    }
}

/// `in-addr.arpa.` or `ip6.arpa.` when `name` is under one of them.
fn reverse_apex(name: &Name) -> Option<Name> {
    ["in-addr.arpa.", "ip6.arpa."]
        .into_iter()
        .filter_map(|z| Name::from_ascii(z).ok())
        .find(|z| z.zone_of(name))
}

/// The address a full reverse name stands for.
pub fn reverse_ip(lower: &Name) -> Option<IpAddr> {
    let labels: Vec<&[u8]> = lower.iter().collect();
    let n = labels.len();
    if n == 6 && labels[4] == b"in-addr" {
        let mut octets = [0u8; 4];
        for (i, l) in labels[..4].iter().rev().enumerate() {
            let s = std::str::from_utf8(l).ok()?;
            if s.len() > 1 && s.starts_with('0') {
                return None;
            }
            octets[i] = s.parse().ok()?;
        }
        return Some(IpAddr::V4(Ipv4Addr::from(octets)));
    }
    if n == 34 && labels[32] == b"ip6" {
        let mut value: u128 = 0;
        for l in labels[..32].iter().rev() {
            let [c] = l else { return None };
            let digit = (*c as char).to_digit(16)?;
            value = (value << 4) | u128::from(digit);
        }
        return Some(IpAddr::V6(Ipv6Addr::from(value)));
    }
    None
}

fn reverse(
    snap: &Snapshot,
    zone: &Zone,
    qname: &Name,
    lower: &Name,
    qtype: RecordType,
    apex: Name,
) -> Resolution {
    let Some(ip) = reverse_ip(lower) else {
        return Resolution::UnknownReverse { apex };
    };
    let targets: Vec<&ReverseTarget> = match snap.cluster_ips.get(&ip) {
        Some(t) => vec![t],
        None => snap
            .endpoint_ips
            .get(&ip)
            .map(|set| set.iter().collect())
            .unwrap_or_default(),
    };
    if targets.is_empty() {
        return Resolution::UnknownReverse { apex };
    }
    if qtype != RecordType::PTR {
        return Resolution::NoData { apex };
    }
    let answers = targets
        .into_iter()
        .map(|t| {
            let name = match &t.endpoint {
                Some(ep) => zone.name(&[ep, &t.service, &t.namespace, "svc"]),
                None => zone.name(&[&t.service, &t.namespace, "svc"]),
            };
            Record::from_rdata(qname.clone(), zone.ttl, RData::PTR(PTR(name)))
        })
        .collect();
    answer(answers, vec![], None)
}

/// The ClusterIPs of `kube-system/kube-dns`, the name server's own Service.
fn dns_service_ips(snap: &Snapshot) -> Vec<IpAddr> {
    match snap.service("kube-system", "kube-dns").map(|s| &s.kind) {
        Some(ServiceKind::ClusterIp(ips)) => ips.clone(),
        _ => vec![],
    }
}

fn family_matches(ip: IpAddr, qtype: RecordType) -> bool {
    matches!(
        (ip, qtype),
        (IpAddr::V4(_), RecordType::A) | (IpAddr::V6(_), RecordType::AAAA)
    )
}

fn address(name: &Name, ip: IpAddr, ttl: u32) -> Record {
    let rdata = match ip {
        IpAddr::V4(v4) => RData::A(A(v4)),
        IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
    };
    Record::from_rdata(name.clone(), ttl, rdata)
}

fn answer(answers: Vec<Record>, additionals: Vec<Record>, chase: Option<Name>) -> Resolution {
    Resolution::Answer {
        answers,
        additionals,
        chase,
    }
}

#[cfg(test)]
mod tests;
