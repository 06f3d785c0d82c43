//! A pod's `/etc/resolv.conf`, as the kubelet forms it
//! (`pkg/kubelet/network/dns/dns.go`, `GetPodDNS`): pure, for the node
//! agent to write into each pod.
use std::net::IpAddr;

use k8s_openapi::api::core::v1::PodDNSConfig;

/// The options every cluster-first pod gets (kubelet's `defaultDNSOptions`).
pub const DEFAULT_OPTIONS: &[&str] = &["ndots:5"];
/// At most this many nameservers (`validation.MaxDNSNameservers`).
pub const MAX_NAMESERVERS: usize = 3;
/// At most this many search domains (`MaxDNSSearchPathsExpanded`).
pub const MAX_SEARCH_PATHS: usize = 32;
/// At most this many characters in the search line
/// (`MaxDNSSearchListCharsExpanded`).
pub const MAX_SEARCH_CHARS: usize = 2048;
/// A longer search domain is dropped (glibc aborts on one over 255).
const MAX_DOMAIN_LEN: usize = 253;

/// What a pod's DNS settings are formed from.
#[derive(Clone, Copy, Debug)]
pub struct PodDnsInput<'a> {
    /// The pod's namespace (the first search domain is `<ns>.svc.<zone>`).
    pub namespace: &'a str,
    /// The kubelet's `clusterDomain`, e.g. `cluster.local`; empty: no
    /// cluster search domains.
    pub cluster_domain: &'a str,
    /// The kubelet's `clusterDNS`: the DNS Service's IPs (10.96.0.10).
    /// Empty: cluster-first pods fall back to `Default` (upstream's
    /// `MissingClusterDNS` event; reported in [`PodResolvConf::warnings`]).
    pub cluster_dns: &'a [IpAddr],
    /// `spec.dnsPolicy`: `ClusterFirst` (also when `None`),
    /// `ClusterFirstWithHostNet`, `Default` or `None`.
    pub dns_policy: Option<&'a str>,
    /// `spec.hostNetwork`: `ClusterFirst` then means `Default`.
    pub host_network: bool,
    /// `spec.dnsConfig`, appended to what the policy gives.
    pub dns_config: Option<&'a PodDNSConfig>,
    /// The node's resolv.conf text (`Default` pods get its settings, and
    /// cluster-first pods its search domains after the cluster's).
    pub host_resolv_conf: &'a str,
}

/// A pod's resolver settings.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodResolvConf {
    /// `nameserver` lines, in order (at most [`MAX_NAMESERVERS`]).
    pub nameservers: Vec<String>,
    /// The `search` list, in order.
    pub searches: Vec<String>,
    /// The `options` line's entries (`ndots:5`).
    pub options: Vec<String>,
    /// What the kubelet would report as `DNSConfigForming` or
    /// `MissingClusterDNS` Warning events on the pod.
    pub warnings: Vec<String>,
}

/// An unusable input.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ResolvConfError {
    /// `spec.dnsPolicy` is none of the four policies.
    #[error(
        "spec.dnsPolicy: unsupported value {0:?}: supported values: \"ClusterFirst\", \"ClusterFirstWithHostNet\", \"Default\", \"None\""
    )]
    UnknownPolicy(String),
}

impl PodResolvConf {
    /// The file's text: `search`, then one `nameserver` line each, then
    /// `options` (the layout container runtimes write).
    pub fn render(&self) -> String {
        let mut out = String::new();
        if !self.searches.is_empty() {
            out.push_str("search ");
            out.push_str(&self.searches.join(" "));
            out.push('\n');
        }
        for ns in &self.nameservers {
            out.push_str("nameserver ");
            out.push_str(ns);
            out.push('\n');
        }
        if !self.options.is_empty() {
            out.push_str("options ");
            out.push_str(&self.options.join(" "));
            out.push('\n');
        }
        out
    }
}

/// Parsed resolv.conf: nameservers accumulate, the last `search` and the
/// last `options` line win (kubelet's `parseResolvConf`; trailing dots of
/// search domains are dropped).
pub fn parse_host_resolv_conf(text: &str) -> (Vec<String>, Vec<String>, Vec<String>) {
    let (mut servers, mut searches, mut options) = (vec![], vec![], vec![]);
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        let mut fields = line.split_whitespace();
        match fields.next() {
            Some("nameserver") => servers.extend(fields.next().map(str::to_owned)),
            Some("search") => {
                searches = fields.map(|s| s.trim_end_matches('.').to_owned()).collect();
            }
            Some("options") => options = fields.map(str::to_owned).collect(),
            _ => {}
        }
    }
    (servers, searches, options)
}

/// Forms a pod's resolv.conf as the kubelet does:
///
/// - `ClusterFirst` (not host network) and `ClusterFirstWithHostNet`:
///   nameservers = `cluster_dns`; search = `<ns>.svc.<zone> svc.<zone>
///   <zone>` then the host's, without duplicates; options `ndots:5`.
/// - `Default` (and `ClusterFirst` with host network, or without
///   `cluster_dns`): the host's nameservers, search and options.
/// - `None`: nothing but `dnsConfig`.
///
/// Then `dnsConfig` nameservers and searches are appended (duplicates
/// dropped) and its options merged by name, the pod's value winning. Last,
/// the limits: 3 nameservers, 32 search domains of at most 253 characters
/// and 2048 characters in all (extra ones dropped, with a warning).
///
/// Errors only on an unknown `dnsPolicy` (the API server refuses those).
pub fn resolv_conf(input: &PodDnsInput<'_>) -> Result<PodResolvConf, ResolvConfError> {
    let (host_servers, host_search, host_options) = parse_host_resolv_conf(input.host_resolv_conf);
    let policy = input.dns_policy.unwrap_or("ClusterFirst");
    let mut conf = PodResolvConf::default();
    let mut host_like = false;
    match policy {
        "None" => {}
        "ClusterFirstWithHostNet" => host_like = !cluster_first(input, &host_search, &mut conf),
        "ClusterFirst" if !input.host_network => {
            host_like = !cluster_first(input, &host_search, &mut conf);
        }
        "ClusterFirst" | "Default" => host_like = true,
        other => return Err(ResolvConfError::UnknownPolicy(other.to_owned())),
    }
    if host_like {
        conf.nameservers = host_servers;
        conf.searches = host_search;
        conf.options = host_options;
    }
    if let Some(extra) = input.dns_config {
        for ns in extra.nameservers.iter().flatten() {
            push_unique(&mut conf.nameservers, ns);
        }
        for s in extra.searches.iter().flatten() {
            push_unique(&mut conf.searches, s);
        }
        for opt in extra.options.iter().flatten() {
            let Some(name) = opt.name.as_deref() else {
                continue;
            };
            let rendered = match opt.value.as_deref() {
                Some(v) if !v.is_empty() => format!("{name}:{v}"),
                _ => name.to_owned(),
            };
            let same = |o: &String| o.split(':').next() == Some(name);
            match conf.options.iter_mut().find(|o| same(o)) {
                Some(existing) => *existing = rendered,
                None => conf.options.push(rendered),
            }
        }
    }
    fit_limits(&mut conf);
    Ok(conf)
}

/// Cluster-first settings; false when there is no cluster DNS (the
/// caller then falls back to the host's).
fn cluster_first(
    input: &PodDnsInput<'_>,
    host_search: &[String],
    conf: &mut PodResolvConf,
) -> bool {
    if input.cluster_dns.is_empty() {
        conf.warnings.push(format!(
            "MissingClusterDNS: kubelet does not have ClusterDNS IP configured and cannot create Pod using \"{}\" policy. Falling back to \"Default\" policy.",
            input.dns_policy.unwrap_or("ClusterFirst")
        ));
        return false;
    }
    conf.nameservers = input.cluster_dns.iter().map(IpAddr::to_string).collect();
    let zone = input.cluster_domain.trim_end_matches('.');
    if !zone.is_empty() {
        for s in [
            format!("{}.svc.{zone}", input.namespace),
            format!("svc.{zone}"),
            zone.to_owned(),
        ] {
            push_unique(&mut conf.searches, &s);
        }
    }
    for s in host_search {
        push_unique(&mut conf.searches, s);
    }
    conf.options = DEFAULT_OPTIONS.iter().map(|s| (*s).to_owned()).collect();
    true
}

fn push_unique(list: &mut Vec<String>, item: &str) {
    if !list.iter().any(|x| x == item) {
        list.push(item.to_owned());
    }
}

/// kubelet's `formDNSConfigFitsLimits`.
fn fit_limits(conf: &mut PodResolvConf) {
    if conf.nameservers.len() > MAX_NAMESERVERS {
        conf.nameservers.truncate(MAX_NAMESERVERS);
        conf.warnings.push(format!(
            "DNSConfigForming: Nameserver limits were exceeded, some nameservers have been omitted, the applied nameserver line is: {}",
            conf.nameservers.join(" ")
        ));
    }
    let mut exceeded = false;
    if conf.searches.len() > MAX_SEARCH_PATHS {
        conf.searches.truncate(MAX_SEARCH_PATHS);
        exceeded = true;
    }
    let before = conf.searches.len();
    conf.searches.retain(|s| s.len() <= MAX_DOMAIN_LEN);
    exceeded |= conf.searches.len() != before;
    while conf.searches.join(" ").len() > MAX_SEARCH_CHARS {
        conf.searches.pop();
        exceeded = true;
    }
    if exceeded {
        conf.warnings.push(format!(
            "DNSConfigForming: Search Line limits were exceeded, some search paths have been omitted, the applied search line is: {}",
            conf.searches.join(" ")
        ));
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::PodDNSConfigOption;

    use super::*;

    const HOST: &str = "# generated\nnameserver 192.0.2.53\nnameserver 192.0.2.54\nsearch corp.example. lab.example\noptions timeout:2 attempts:3\n";

    fn input<'a>(policy: Option<&'a str>, dns: &'a [IpAddr]) -> PodDnsInput<'a> {
        PodDnsInput {
            namespace: "default",
            cluster_domain: "cluster.local",
            cluster_dns: dns,
            dns_policy: policy,
            host_network: false,
            dns_config: None,
            host_resolv_conf: HOST,
        }
    }

    #[test]
    fn cluster_first_is_what_pods_of_default_get() {
        let dns = ["10.96.0.10".parse().unwrap()];
        let conf = resolv_conf(&input(None, &dns)).unwrap();
        assert_eq!(
            conf.render(),
            "search default.svc.cluster.local svc.cluster.local cluster.local corp.example lab.example\nnameserver 10.96.0.10\noptions ndots:5\n"
        );
        assert!(conf.warnings.is_empty());
        let empty_host = PodDnsInput {
            host_resolv_conf: "",
            ..input(Some("ClusterFirst"), &dns)
        };
        assert_eq!(
            resolv_conf(&empty_host).unwrap().render(),
            "search default.svc.cluster.local svc.cluster.local cluster.local\nnameserver 10.96.0.10\noptions ndots:5\n"
        );
    }

    #[test]
    fn host_network_and_default_take_the_hosts() {
        let dns = ["10.96.0.10".parse().unwrap()];
        let host_net = PodDnsInput {
            host_network: true,
            ..input(Some("ClusterFirst"), &dns)
        };
        let want = "search corp.example lab.example\nnameserver 192.0.2.53\nnameserver 192.0.2.54\noptions timeout:2 attempts:3\n";
        assert_eq!(resolv_conf(&host_net).unwrap().render(), want);
        assert_eq!(
            resolv_conf(&input(Some("Default"), &dns)).unwrap().render(),
            want
        );
        let with_host_net = PodDnsInput {
            host_network: true,
            ..input(Some("ClusterFirstWithHostNet"), &dns)
        };
        assert!(
            resolv_conf(&with_host_net)
                .unwrap()
                .render()
                .contains("nameserver 10.96.0.10\n")
        );
        // No cluster DNS: the host's, with the kubelet's warning.
        let conf = resolv_conf(&input(None, &[])).unwrap();
        assert_eq!(conf.render(), want);
        assert!(conf.warnings[0].starts_with("MissingClusterDNS"));
    }

    #[test]
    fn none_uses_dns_config_and_options_merge_by_name() {
        let cfg = PodDNSConfig {
            nameservers: Some(vec!["1.1.1.1".into()]),
            searches: Some(vec!["resolv.conf.local".into()]),
            options: Some(vec![PodDNSConfigOption {
                name: Some("ndots".into()),
                value: Some("2".into()),
            }]),
        };
        let dns = ["10.96.0.10".parse().unwrap()];
        let none = PodDnsInput {
            dns_config: Some(&cfg),
            ..input(Some("None"), &dns)
        };
        assert_eq!(
            resolv_conf(&none).unwrap().render(),
            "search resolv.conf.local\nnameserver 1.1.1.1\noptions ndots:2\n"
        );
        let merged = PodDnsInput {
            dns_config: Some(&cfg),
            host_resolv_conf: "",
            ..input(None, &dns)
        };
        let conf = resolv_conf(&merged).unwrap();
        assert_eq!(conf.nameservers, ["10.96.0.10", "1.1.1.1"]);
        assert_eq!(conf.options, ["ndots:2"], "the pod's value wins");
        assert_eq!(conf.searches.last().unwrap(), "resolv.conf.local");
    }

    #[test]
    fn limits_drop_extras_with_a_warning() {
        let cfg = PodDNSConfig {
            nameservers: Some(vec!["1.1.1.1".into(), "1.0.0.1".into(), "8.8.8.8".into()]),
            searches: Some((0..40).map(|i| format!("d{i}.example")).collect()),
            options: None,
        };
        let dns = ["10.96.0.10".parse().unwrap()];
        let conf = resolv_conf(&PodDnsInput {
            dns_config: Some(&cfg),
            host_resolv_conf: "",
            ..input(None, &dns)
        })
        .unwrap();
        assert_eq!(conf.nameservers.len(), 3);
        assert_eq!(conf.searches.len(), 32);
        assert_eq!(conf.warnings.len(), 2);
        let long = PodDNSConfig {
            searches: Some((0..20).map(|i| format!("{i}{}", "x".repeat(120))).collect()),
            ..PodDNSConfig::default()
        };
        let conf = resolv_conf(&PodDnsInput {
            dns_config: Some(&long),
            ..input(Some("None"), &dns)
        })
        .unwrap();
        assert!(conf.searches.join(" ").len() <= MAX_SEARCH_CHARS);
        assert_eq!(conf.searches.len(), 16);
    }

    #[test]
    fn unknown_policy_is_an_error_naming_the_field() {
        let err = resolv_conf(&input(Some("Cluster"), &[])).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("spec.dnsPolicy: unsupported value \"Cluster\"")
        );
    }
}
