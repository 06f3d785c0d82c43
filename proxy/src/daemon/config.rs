//! The daemon's settings: kube-proxy's flags, and the matching subset of a
//! `KubeProxyConfiguration` file (`--config`). A flag given on the command
//! line wins over the file, the file over the defaults. Keys of the file
//! Switchyard does not use are reported, never silently dropped.
use std::{net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::{Context as _, Result, bail};
use serde_yaml::Value;

use proxy_common::config::DatapathConfig;

use crate::{
    attach::HookArgs,
    datapath::{MapSizeArgs, MapSizes, loader::DEFAULT_PIN_ROOT},
    kubeproxy::{ProxyMode, apply::IptablesVariant},
    model::Ipv4Cidr,
    node::NodePortAddresses,
};

/// kube-proxy's default `healthzBindAddress`: `/healthz` and `/livez`.
pub const DEFAULT_HEALTHZ: &str = "0.0.0.0:10256";
/// kube-proxy's default `metricsBindAddress`: `/metrics`.
pub const DEFAULT_METRICS: &str = "127.0.0.1:10249";
/// kube-proxy's default `syncPeriod`: the periodic full resync.
pub const DEFAULT_SYNC_PERIOD: Duration = Duration::from_secs(30);
/// Spacing of syncs once kube-proxy's burst of 2 is spent (a change after a
/// quiet spell syncs at once; see `daemon::pacer`). kube-proxy's 1 s
/// rate-limits iptables-restore; a map write costs microseconds, so
/// Switchyard's only gathers a stream of changes into fewer recomputes.
pub const DEFAULT_MIN_SYNC_PERIOD: Duration = Duration::from_millis(2);

/// Flags of the daemon (`switchyard` with no subcommand).
#[derive(clap::Args, Debug, Default, Clone)]
pub struct DaemonArgs {
    /// A `KubeProxyConfiguration` YAML file; flags override its values.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// kubeconfig of the API server; without it (and without --master),
    /// the in-cluster service account (kube-proxy's order).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// The API server's address (`https://HOST:PORT`), overriding the
    /// kubeconfig's: a node without a Service proxy cannot reach the
    /// `kubernetes` Service's ClusterIP, so a DaemonSet names the real
    /// endpoint (kube-proxy's flag).
    #[arg(long)]
    pub master: Option<String>,
    /// This node's name, as the Node object and EndpointSlices spell it.
    #[arg(long)]
    pub hostname_override: Option<String>,
    /// Pod CIDRs of the cluster (comma-separated).
    #[arg(long)]
    pub cluster_cidr: Option<String>,
    /// Where `/healthz` and `/livez` are served [default: 0.0.0.0:10256].
    #[arg(long)]
    pub healthz_bind_address: Option<String>,
    /// Where `/metrics` is served [default: 127.0.0.1:10249].
    #[arg(long)]
    pub metrics_bind_address: Option<String>,
    /// Periodic full resync, e.g. `30s` [default: 30s].
    #[arg(long, value_parser = parse_duration)]
    pub sync_period: Option<Duration>,
    /// Time changes are gathered before a recompute, e.g. `10ms` [default: 2ms].
    #[arg(long, value_parser = parse_duration)]
    pub min_sync_period: Option<Duration>,
    /// Which node addresses serve NodePorts: comma-separated CIDRs, or
    /// `primary` (the Node's InternalIP) [default: every address of the
    /// node except loopback].
    #[arg(long)]
    pub nodeport_addresses: Option<String>,
    /// Lifetime of an idle established TCP flow on the per-packet paths
    /// [default: 24h].
    #[arg(long = "conntrack-tcp-timeout-established", value_parser = parse_duration)]
    pub tcp_established_timeout: Option<Duration>,
    /// Lifetime of a TCP flow after a FIN one way [default: 1h].
    #[arg(long = "conntrack-tcp-timeout-close-wait", value_parser = parse_duration)]
    pub tcp_close_wait_timeout: Option<Duration>,
    /// Lifetime of an unanswered UDP flow [default: 30s].
    #[arg(long = "conntrack-udp-timeout", value_parser = parse_duration)]
    pub udp_timeout: Option<Duration>,
    /// Lifetime of an answered UDP flow [default: 2m].
    #[arg(long = "conntrack-udp-timeout-stream", value_parser = parse_duration)]
    pub udp_stream_timeout: Option<Duration>,
    /// Ports source NAT may use, `FIRST-LAST` [default: 20000-29999]: keep it
    /// outside the kernel's ephemeral range and the NodePort range.
    #[arg(long)]
    pub snat_port_range: Option<String>,
    /// Which dataplane programs Services: `ebpf` (Switchyard's), or
    /// kube-proxy's own `iptables` or `nftables` rule layouts (the
    /// benchmarks' baseline, and a fallback) [default: ebpf]. The
    /// configuration file's `mode` is not read: a kube-proxy ConfigMap
    /// reused as is says `iptables`.
    #[arg(long)]
    pub proxy_mode: Option<ProxyMode>,
    /// In iptables mode, which iptables: `auto` (as installed), `legacy`
    /// or `nft` [default: auto].
    #[arg(long)]
    pub iptables_variant: Option<IptablesVariant>,
    /// In iptables and nftables modes, masquerade every connection to a
    /// ClusterIP (kube-proxy's `--masquerade-all`).
    #[arg(long)]
    pub masquerade_all: bool,
    /// The hooks: cgroup, pod- and node-facing interfaces, the node's netns.
    #[command(flatten)]
    pub hooks: HookArgs,
    /// Map sizes.
    #[command(flatten)]
    pub sizes: MapSizeArgs,
}

/// Everything the daemon runs with, resolved and validated.
#[derive(Debug, Clone)]
pub struct Settings {
    /// bpffs directory holding the pinned maps and links (`--pin-root`).
    pub pin_root: PathBuf,
    /// The API server's kubeconfig (`--kubeconfig`, else
    /// `clientConnection.kubeconfig`); `None`: `--master` or in-cluster.
    pub kubeconfig: Option<PathBuf>,
    /// `--master`: the API server's address, over the kubeconfig's.
    pub master: Option<String>,
    /// This node's name, compared with endpoints' `nodeName`
    /// (`--hostname-override`, `hostnameOverride`, else the hostname).
    pub node_name: String,
    /// `--cluster-cidr` / `clusterCIDR`, validated (informational).
    pub cluster_cidrs: Vec<Ipv4Cidr>,
    /// Where `/healthz` and `/livez` are served.
    pub healthz: SocketAddr,
    /// Where `/metrics` is served.
    pub metrics: SocketAddr,
    /// Full resync and conntrack garbage collection period (≥ 1 s).
    pub sync_period: Duration,
    /// How long changes are gathered before a recompute (≤ `sync_period`).
    pub min_sync_period: Duration,
    /// Socket-hook cgroup and TC interfaces.
    pub hooks: HookArgs,
    /// Map capacities for maps created by this start.
    pub sizes: MapSizes,
    /// Which node addresses serve NodePorts.
    pub nodeport_addresses: NodePortAddresses,
    /// Conntrack lifetimes and the source-NAT port range.
    pub datapath: DatapathConfig,
    /// Keys of the configuration file that Switchyard does not use.
    pub ignored_keys: Vec<String>,
    /// `--proxy-mode`.
    pub proxy_mode: ProxyMode,
    /// `--iptables-variant`.
    pub iptables_variant: IptablesVariant,
    /// `--masquerade-all`.
    pub masquerade_all: bool,
}

/// The subset of `KubeProxyConfiguration` Switchyard reads.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct FileConfig {
    /// `clientConnection.kubeconfig`.
    pub kubeconfig: Option<PathBuf>,
    /// `hostnameOverride`.
    pub hostname_override: Option<String>,
    /// `clusterCIDR` (comma-separated CIDRs).
    pub cluster_cidr: Option<String>,
    /// `healthzBindAddress` (`IP:port`).
    pub healthz_bind_address: Option<String>,
    /// `metricsBindAddress` (`IP:port`).
    pub metrics_bind_address: Option<String>,
    /// `syncPeriod` (or `iptables.syncPeriod`).
    pub sync_period: Option<Duration>,
    /// `minSyncPeriod` (or `iptables.minSyncPeriod`).
    pub min_sync_period: Option<Duration>,
    /// `nodePortAddresses`: CIDRs, or `primary`.
    pub nodeport_addresses: Option<Vec<String>>,
    /// `detectLocal.interfaceNamePrefix`: the pod interfaces' prefix.
    pub pod_interface_name_prefix: Option<String>,
    /// `conntrack.tcpEstablishedTimeout`.
    pub tcp_established_timeout: Option<Duration>,
    /// `conntrack.tcpCloseWaitTimeout`.
    pub tcp_close_wait_timeout: Option<Duration>,
    /// `conntrack.udpTimeout`.
    pub udp_timeout: Option<Duration>,
    /// `conntrack.udpStreamTimeout`.
    pub udp_stream_timeout: Option<Duration>,
    /// Dotted paths of keys present but not used, e.g. `ipvs.scheduler`.
    pub ignored: Vec<String>,
}

/// Keys that mean something to kube-proxy but nothing to an eBPF dataplane,
/// or to features Switchyard does not have yet: reported as ignored.
/// Anything else unknown is reported as unknown.
const KNOWN_IGNORED: &[&str] = &[
    "bindAddress",
    "bindAddressHardFail",
    "clientConnection.acceptContentTypes",
    "clientConnection.contentType",
    "clientConnection.qps",
    "clientConnection.burst",
    "configSyncPeriod",
    "conntrack",
    "detectLocal",
    "detectLocalMode",
    "enableProfiling",
    "featureGates",
    "iptables",
    "ipvs",
    "logging",
    "mode",
    "nftables",
    "oomScoreAdj",
    "portRange",
    "showHiddenMetricsForVersion",
    "winkernel",
    "windowsRunAsService",
];

impl FileConfig {
    /// Reads a `KubeProxyConfiguration` document.
    ///
    /// # Errors
    /// Not YAML, a wrong `kind` or `apiVersion`, or a key of the wrong type
    /// or format (each error names the key).
    pub fn parse(text: &str) -> Result<Self> {
        let doc: Value = serde_yaml::from_str(text).context("not YAML")?;
        let Value::Mapping(map) = &doc else {
            bail!("expected a KubeProxyConfiguration mapping");
        };
        let str_at = |path: &str| -> Result<Option<String>> {
            let mut v = &doc;
            for part in path.split('.') {
                match v.get(part) {
                    Some(next) => v = next,
                    None => return Ok(None),
                }
            }
            match v {
                Value::Null => Ok(None),
                Value::String(s) => Ok(Some(s.clone())),
                other => bail!("`{path}`: expected a string, found {other:?}"),
            }
        };
        match str_at("kind")?.as_deref() {
            Some("KubeProxyConfiguration") => {}
            other => bail!("`kind`: expected KubeProxyConfiguration, found {other:?}"),
        }
        match str_at("apiVersion")?.as_deref() {
            Some("kubeproxy.config.k8s.io/v1alpha1" | "kubeproxy.config.k8s.io/v1alpha2") => {}
            other => {
                bail!("`apiVersion`: expected kubeproxy.config.k8s.io/v1alpha1, found {other:?}")
            }
        }
        let duration_at = |path: &str| -> Result<Option<Duration>> {
            str_at(path)?
                .map(|s| parse_duration(&s).map_err(|e| anyhow::anyhow!("`{path}`: {e}")))
                .transpose()
        };
        // Newer releases moved the sync periods to the top level; older
        // files have them under `iptables`.
        let sync_period = match duration_at("syncPeriod")? {
            Some(d) => Some(d),
            None => duration_at("iptables.syncPeriod")?,
        };
        let min_sync_period = match duration_at("minSyncPeriod")? {
            Some(d) => Some(d),
            None => duration_at("iptables.minSyncPeriod")?,
        };
        let nodeport_addresses = match doc.get("nodePortAddresses") {
            None | Some(Value::Null) => None,
            Some(Value::Sequence(items)) => Some(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, v)| match v {
                        Value::String(s) => Ok(s.clone()),
                        other => {
                            bail!("`nodePortAddresses[{i}]`: expected a string, found {other:?}")
                        }
                    })
                    .collect::<Result<Vec<_>>>()?,
            ),
            Some(other) => bail!("`nodePortAddresses`: expected a list, found {other:?}"),
        };
        let used = [
            "apiVersion",
            "kind",
            "clientConnection.kubeconfig",
            "hostnameOverride",
            "clusterCIDR",
            "healthzBindAddress",
            "metricsBindAddress",
            "syncPeriod",
            "minSyncPeriod",
            "iptables.syncPeriod",
            "iptables.minSyncPeriod",
            "nodePortAddresses",
            "detectLocal.interfaceNamePrefix",
            "conntrack.tcpEstablishedTimeout",
            "conntrack.tcpCloseWaitTimeout",
            "conntrack.udpTimeout",
            "conntrack.udpStreamTimeout",
        ];
        let mut ignored = Vec::new();
        collect_unused(map, "", &used, &mut ignored);
        Ok(Self {
            kubeconfig: str_at("clientConnection.kubeconfig")?
                .filter(|s| !s.is_empty())
                .map(PathBuf::from),
            hostname_override: str_at("hostnameOverride")?.filter(|s| !s.is_empty()),
            cluster_cidr: str_at("clusterCIDR")?.filter(|s| !s.is_empty()),
            healthz_bind_address: str_at("healthzBindAddress")?.filter(|s| !s.is_empty()),
            metrics_bind_address: str_at("metricsBindAddress")?.filter(|s| !s.is_empty()),
            sync_period,
            min_sync_period,
            nodeport_addresses,
            pod_interface_name_prefix: str_at("detectLocal.interfaceNamePrefix")?
                .filter(|s| !s.is_empty()),
            tcp_established_timeout: duration_at("conntrack.tcpEstablishedTimeout")?,
            tcp_close_wait_timeout: duration_at("conntrack.tcpCloseWaitTimeout")?,
            udp_timeout: duration_at("conntrack.udpTimeout")?,
            udp_stream_timeout: duration_at("conntrack.udpStreamTimeout")?,
            ignored,
        })
    }
}

/// Leaf paths of `map` that are neither used nor parents of used ones,
/// each marked `(ignored)` when known to kube-proxy, `(unknown)` otherwise.
fn collect_unused(map: &serde_yaml::Mapping, prefix: &str, used: &[&str], out: &mut Vec<String>) {
    for (k, v) in map {
        let key = match k {
            Value::String(s) => s.clone(),
            other => format!("{other:?}"),
        };
        let path = if prefix.is_empty() {
            key
        } else {
            format!("{prefix}.{key}")
        };
        if used.contains(&path.as_str()) {
            continue;
        }
        let is_parent = used.iter().any(|u| u.starts_with(&format!("{path}.")));
        match v {
            Value::Mapping(inner) if is_parent => collect_unused(inner, &path, used, out),
            _ if v.is_null() => {}
            _ => {
                let known = KNOWN_IGNORED
                    .iter()
                    .any(|k| path == *k || path.starts_with(&format!("{k}.")));
                out.push(format!(
                    "{path} ({})",
                    if known { "ignored" } else { "unknown" }
                ));
            }
        }
    }
}

impl Settings {
    /// Flags over file over defaults; every value validated here, so a bad
    /// one stops the daemon before it touches anything.
    pub fn resolve(args: &DaemonArgs, pin_root: PathBuf) -> Result<Self> {
        let file = match &args.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read --config `{}`", path.display()))?;
                FileConfig::parse(&text)
                    .with_context(|| format!("--config `{}`", path.display()))?
            }
            None => FileConfig::default(),
        };
        let datapath = datapath_config(args, &file)?;
        let nodeport_addresses = match &args.nodeport_addresses {
            Some(flag) => NodePortAddresses::parse(flag.split(','))
                .map_err(|e| anyhow::anyhow!("--nodeport-addresses: {e}"))?,
            None => match &file.nodeport_addresses {
                Some(list) => NodePortAddresses::parse(list.iter().map(String::as_str))
                    .map_err(|e| anyhow::anyhow!("nodePortAddresses: {e}"))?,
                None => NodePortAddresses::All,
            },
        };
        let (sync_period, min_sync_period) = sync_periods(args, &file)?;
        let node_name = match args.hostname_override.clone().or(file.hostname_override) {
            Some(n) => n,
            None => hostname()?,
        };
        let node_name = node_name.trim().to_ascii_lowercase();
        if node_name.is_empty() {
            bail!("--hostname-override: empty node name");
        }
        let addr = |flag: &str, v: Option<String>, default: &str| -> Result<SocketAddr> {
            let v = v.unwrap_or_else(|| default.to_owned());
            v.parse()
                .with_context(|| format!("{flag}: `{v}` is not an IP:port address"))
        };
        let cluster_cidrs = match args.cluster_cidr.clone().or(file.cluster_cidr) {
            Some(s) => parse_cidrs(&s).context("--cluster-cidr")?,
            None => Vec::new(),
        };
        Ok(Self {
            pin_root,
            kubeconfig: args.kubeconfig.clone().or(file.kubeconfig),
            master: args.master.clone().filter(|m| !m.is_empty()),
            node_name,
            cluster_cidrs,
            healthz: addr(
                "--healthz-bind-address",
                args.healthz_bind_address
                    .clone()
                    .or(file.healthz_bind_address),
                DEFAULT_HEALTHZ,
            )?,
            metrics: addr(
                "--metrics-bind-address",
                args.metrics_bind_address
                    .clone()
                    .or(file.metrics_bind_address),
                DEFAULT_METRICS,
            )?,
            sync_period,
            min_sync_period,
            hooks: HookArgs {
                pod_interface_name_prefix: args
                    .hooks
                    .pod_interface_name_prefix
                    .clone()
                    .or(file.pod_interface_name_prefix.clone()),
                ..args.hooks.clone()
            },
            sizes: args.sizes.into(),
            nodeport_addresses,
            datapath,
            ignored_keys: file.ignored,
            proxy_mode: args.proxy_mode.unwrap_or_default(),
            iptables_variant: args.iptables_variant.unwrap_or_default(),
            masquerade_all: args.masquerade_all,
        })
    }
}

/// `syncPeriod` and `minSyncPeriod` (flags over file over defaults),
/// validated as kube-proxy does (`syncPeriod` positive and at least
/// `minSyncPeriod`), and `syncPeriod` at least a second: it paces
/// conntrack garbage collection, whose clock ticks in seconds.
fn sync_periods(args: &DaemonArgs, file: &FileConfig) -> Result<(Duration, Duration)> {
    let sync = args
        .sync_period
        .or(file.sync_period)
        .unwrap_or(DEFAULT_SYNC_PERIOD);
    let min_sync = args
        .min_sync_period
        .or(file.min_sync_period)
        .unwrap_or(DEFAULT_MIN_SYNC_PERIOD);
    if sync < Duration::from_secs(1) {
        bail!("syncPeriod (--sync-period): {sync:?} is under a second, the conntrack clock's tick");
    }
    if min_sync > sync {
        bail!(
            "minSyncPeriod (--min-sync-period): {min_sync:?} must not exceed syncPeriod ({sync:?})"
        );
    }
    Ok((sync, min_sync))
}

/// Conntrack lifetimes (flags over file over kube-proxy's defaults; 0, as
/// kube-proxy's "leave the kernel's value", keeps the default) and the
/// source-NAT port range.
fn datapath_config(args: &DaemonArgs, file: &FileConfig) -> Result<DatapathConfig> {
    let mut c = DatapathConfig::DEFAULT;
    let seconds = |flag: &str, v: Option<Duration>, default: u32| -> Result<u32> {
        match v {
            None => Ok(default),
            Some(d) if d.is_zero() => Ok(default),
            Some(d) if d < Duration::from_secs(1) => {
                bail!("{flag}: {d:?} is under a second, the conntrack clock's tick")
            }
            Some(d) => Ok(d.as_secs() as u32),
        }
    };
    c.tcp_established_s = seconds(
        "--conntrack-tcp-timeout-established",
        args.tcp_established_timeout
            .or(file.tcp_established_timeout),
        c.tcp_established_s,
    )?;
    c.tcp_close_wait_s = seconds(
        "--conntrack-tcp-timeout-close-wait",
        args.tcp_close_wait_timeout.or(file.tcp_close_wait_timeout),
        c.tcp_close_wait_s,
    )?;
    c.udp_s = seconds(
        "--conntrack-udp-timeout",
        args.udp_timeout.or(file.udp_timeout),
        c.udp_s,
    )?;
    c.udp_stream_s = seconds(
        "--conntrack-udp-timeout-stream",
        args.udp_stream_timeout.or(file.udp_stream_timeout),
        c.udp_stream_s,
    )?;
    if let Some(range) = &args.snat_port_range {
        let (first, last) =
            parse_port_range(range).with_context(|| format!("--snat-port-range: `{range}`"))?;
        c.snat_port_min = first;
        c.snat_port_max = last;
    }
    Ok(c)
}

/// `FIRST-LAST`, both in 1..=65535, FIRST ≤ LAST, at least 16 ports.
pub fn parse_port_range(s: &str) -> Result<(u16, u16)> {
    let (a, b) = s
        .split_once('-')
        .context("expected FIRST-LAST, e.g. 20000-29999")?;
    let port = |p: &str| -> Result<u16> {
        p.trim()
            .parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .with_context(|| format!("`{p}` is not a port (1-65535)"))
    };
    let (first, last) = (port(a)?, port(b)?);
    if last < first || last - first < 15 {
        bail!("the range must hold at least 16 ports, first before last");
    }
    Ok((first, last))
}

/// Default pin root, for the CLI.
pub fn default_pin_root() -> PathBuf {
    PathBuf::from(DEFAULT_PIN_ROOT)
}

fn hostname() -> Result<String> {
    let h = nix::unistd::gethostname().context("no --hostname-override and no hostname")?;
    Ok(h.to_string_lossy().into_owned())
}

/// `10.244.0.0/16,10.245.0.0/16`; IPv6 CIDRs are accepted and left aside.
pub fn parse_cidrs(s: &str) -> Result<Vec<Ipv4Cidr>> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (ip, len) = part
            .split_once('/')
            .with_context(|| format!("`{part}` is not a CIDR (ADDRESS/LENGTH)"))?;
        match ip.parse::<std::net::IpAddr>() {
            Ok(std::net::IpAddr::V4(_)) => {
                let _: u8 = len
                    .parse()
                    .ok()
                    .filter(|l| *l <= 32)
                    .with_context(|| format!("`{part}`: prefix length must be 0..=32"))?;
                out.push(part.parse::<Ipv4Cidr>()?);
            }
            Ok(std::net::IpAddr::V6(_)) => {}
            Err(_) => bail!("`{part}`: `{ip}` is not an IP address"),
        }
    }
    Ok(out)
}

/// Longest period accepted: anything longer is a typo.
const MAX_DURATION: Duration = Duration::from_secs(86_400);

/// Go-style durations as Kubernetes configs write them: `30s`, `1m30s`,
/// `250ms`, `0s`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    if rest.is_empty() {
        return Err("empty duration".into());
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("`{s}`: missing unit (h, m, s, ms)"))?;
        let (num, tail) = rest.split_at(digits);
        let value: f64 = num
            .parse()
            .map_err(|_| format!("`{s}`: `{num}` is not a number"))?;
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, next) = tail.split_at(unit_len);
        let secs = match unit {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return Err(format!("`{s}`: unknown unit `{unit}` (h, m, s, ms)")),
        };
        total = Duration::try_from_secs_f64(value * secs)
            .ok()
            .and_then(|d| total.checked_add(d))
            .filter(|d| *d <= MAX_DURATION)
            .ok_or_else(|| format!("`{s}`: longer than a day"))?;
        rest = next;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_as_kubernetes_writes_them() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert!(parse_duration("30").unwrap_err().contains("missing unit"));
        assert!(
            parse_duration("3d")
                .unwrap_err()
                .contains("unknown unit `d`")
        );
        assert!(
            parse_duration("99999999999999999999h")
                .unwrap_err()
                .contains("longer than a day")
        );
    }

    #[test]
    fn a_kube_proxy_configuration_is_read_and_unused_keys_reported() {
        let text = r#"
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: /var/lib/kube-proxy/kubeconfig.conf
  qps: 5
hostnameOverride: node-7
clusterCIDR: 10.244.0.0/16
healthzBindAddress: 0.0.0.0:10256
metricsBindAddress: 127.0.0.1:10249
mode: iptables
iptables:
  syncPeriod: 15s
  minSyncPeriod: 1s
  masqueradeBit: 14
ipvs:
  scheduler: rr
frobnicate: true
"#;
        let c = FileConfig::parse(text).unwrap();
        assert_eq!(
            c.kubeconfig,
            Some("/var/lib/kube-proxy/kubeconfig.conf".into())
        );
        assert_eq!(c.hostname_override.as_deref(), Some("node-7"));
        assert_eq!(c.sync_period, Some(Duration::from_secs(15)));
        assert_eq!(c.min_sync_period, Some(Duration::from_secs(1)));
        assert_eq!(
            c.ignored,
            [
                "clientConnection.qps (ignored)",
                "mode (ignored)",
                "iptables.masqueradeBit (ignored)",
                "ipvs (ignored)",
                "frobnicate (unknown)",
            ]
        );
    }

    #[test]
    fn bad_configuration_names_the_key() {
        let wrong_kind =
            "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeletConfiguration\n";
        assert!(format!("{:#}", FileConfig::parse(wrong_kind).unwrap_err()).contains("`kind`"));
        let bad = "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nsyncPeriod: soon\n";
        let e = format!("{:#}", FileConfig::parse(bad).unwrap_err());
        assert!(e.contains("`syncPeriod`"), "{e}");
        let args = DaemonArgs {
            hostname_override: Some("n1".into()),
            healthz_bind_address: Some("localhost".into()),
            ..DaemonArgs::default()
        };
        let e = format!(
            "{:#}",
            Settings::resolve(&args, default_pin_root()).unwrap_err()
        );
        assert!(e.contains("--healthz-bind-address: `localhost`"), "{e}");
        let args = DaemonArgs {
            hostname_override: Some("n1".into()),
            cluster_cidr: Some("10.244.0.0/40".into()),
            ..DaemonArgs::default()
        };
        let e = format!(
            "{:#}",
            Settings::resolve(&args, default_pin_root()).unwrap_err()
        );
        assert!(e.contains("prefix length"), "{e}");
    }

    #[test]
    fn north_south_settings_from_the_file_and_flags() {
        let dir = std::env::temp_dir().join(format!("sy-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("kube-proxy.yaml");
        std::fs::write(
            &path,
            r#"
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
hostnameOverride: node-3
nodePortAddresses: ["192.168.0.0/24", "fd00::/64"]
detectLocal:
  interfaceNamePrefix: veth
conntrack:
  tcpEstablishedTimeout: 2h
  tcpCloseWaitTimeout: 0s
  udpTimeout: 45s
  maxPerCore: 32768
"#,
        )
        .unwrap();
        let args = DaemonArgs {
            config: Some(path.clone()),
            snat_port_range: Some("40000-40999".into()),
            ..DaemonArgs::default()
        };
        let s = Settings::resolve(&args, default_pin_root()).unwrap();
        assert_eq!(
            s.nodeport_addresses,
            NodePortAddresses::Cidrs(vec!["192.168.0.0/24".parse().unwrap()])
        );
        assert_eq!(s.hooks.pod_interface_name_prefix.as_deref(), Some("veth"));
        assert_eq!(s.datapath.tcp_established_s, 7200);
        assert_eq!(
            s.datapath.tcp_close_wait_s,
            DatapathConfig::DEFAULT.tcp_close_wait_s,
            "0 keeps the default, as kube-proxy leaves the kernel's"
        );
        assert_eq!(s.datapath.udp_s, 45);
        assert_eq!(
            (s.datapath.snat_port_min, s.datapath.snat_port_max),
            (40000, 40999)
        );
        assert_eq!(s.ignored_keys, ["conntrack.maxPerCore (ignored)"]);
        // A flag wins over the file.
        let args = DaemonArgs {
            config: Some(path),
            nodeport_addresses: Some("primary".into()),
            ..DaemonArgs::default()
        };
        let s = Settings::resolve(&args, default_pin_root()).unwrap();
        assert_eq!(s.nodeport_addresses, NodePortAddresses::Primary);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_north_south_settings_name_the_flag() {
        let resolve = |args: DaemonArgs| {
            format!(
                "{:#}",
                Settings::resolve(
                    &DaemonArgs {
                        hostname_override: Some("n1".into()),
                        ..args
                    },
                    default_pin_root()
                )
                .unwrap_err()
            )
        };
        let e = resolve(DaemonArgs {
            nodeport_addresses: Some("10.0.0.1".into()),
            ..DaemonArgs::default()
        });
        assert!(
            e.contains("--nodeport-addresses") && e.contains("10.0.0.1"),
            "{e}"
        );
        let e = resolve(DaemonArgs {
            snat_port_range: Some("30000-20000".into()),
            ..DaemonArgs::default()
        });
        assert!(e.contains("--snat-port-range"), "{e}");
        let e = resolve(DaemonArgs {
            udp_timeout: Some(Duration::from_millis(100)),
            ..DaemonArgs::default()
        });
        assert!(e.contains("--conntrack-udp-timeout"), "{e}");
    }

    #[test]
    fn sync_periods_are_validated_not_adjusted() {
        let resolve = |sync: u64, min_sync: u64| {
            Settings::resolve(
                &DaemonArgs {
                    hostname_override: Some("n1".into()),
                    sync_period: Some(Duration::from_millis(sync)),
                    min_sync_period: Some(Duration::from_millis(min_sync)),
                    ..DaemonArgs::default()
                },
                default_pin_root(),
            )
            .map_err(|e| format!("{e:#}"))
        };
        let e = resolve(500, 0).unwrap_err();
        assert!(e.contains("syncPeriod") && e.contains("500ms"), "{e}");
        let e = resolve(2_000, 5_000).unwrap_err();
        assert!(e.contains("minSyncPeriod") && e.contains("5s"), "{e}");
        let s = resolve(1_000, 1_000).unwrap();
        assert_eq!(
            (s.sync_period, s.min_sync_period),
            (Duration::from_secs(1), Duration::from_secs(1))
        );
    }
}
