//! `bench-nodeport`: a NodePort from outside the cluster, Switchyard
//! against kube-proxy's iptables mode, on the same two-node box in the same
//! run, rounds interleaved.
//!
//! The client is the `external` namespace; it dials node-1's NodePort.
//! - *ETP Cluster, remote backend*: the only endpoint is on node-2, so
//!   node-1 translates the destination and the source (Switchyard: DNAT +
//!   SNAT in TC and a redirect; iptables: DNAT + MASQUERADE).
//! - *ETP Local*: the endpoint is on node-1 and the client's address is
//!   kept (DNAT only).
//! - *floor*: the same backend dialled by its pod address, routed through
//!   node-1 with no Service translation at all.
//!
//! Figures: new connections per second and connect latency (p50/p99) from
//! `netprobe connect-latency` (each connection waits for the server's
//! greeting, then is reset); iperf3 throughput through the NodePort and the
//! machine's CPU time per Gbit transferred (all cores, from /proc/stat).
//!
//! Run as root: `cargo run --release -p switchyard-tests --bin bench-nodeport`.
use std::{net::Ipv4Addr, time::Duration};

use anyhow::{Context as _, Result};
use clap::Parser;
use switchyard::{
    datapath::{AyaLbMaps, MapSizes, loader::Dataplane},
    desired::ServicePort,
    kubeproxy::{
        ProxyMode, RuleConfig,
        apply::{self, IptablesRules, IptablesVariant},
    },
    model::{BackendAddr, Protocol},
    reconcile::Reconciler,
    table_file,
};
use testbed::{
    cmd::{ip_in, run},
    lab::netprobe,
    multinode::{Network, Node},
    netns::InNetns,
    proc::Proc,
};

#[derive(Parser)]
struct Args {
    /// connect() calls per round, mode and scenario.
    #[arg(long, default_value_t = 2000)]
    connects: usize,
    /// Interleaved rounds (medians of the rates; latencies pooled).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Seconds of each iperf3 run.
    #[arg(long, default_value_t = 5)]
    iperf_seconds: u32,
}

const NODE_PORT: u16 = 30080;
const IPERF_NODE_PORT: u16 = 30520;
const IPERF_PORT: u16 = 5201;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Scenario {
    ClusterRemote,
    Local,
}

impl Scenario {
    fn label(self) -> &'static str {
        match self {
            Self::ClusterRemote => "ETP Cluster, backend on the other node",
            Self::Local => "ETP Local, backend on this node",
        }
    }

    /// The server pod: node-2's for the remote case, node-1's otherwise.
    fn backend(self, net: &Network) -> Ipv4Addr {
        match self {
            Self::ClusterRemote => net.node(2).backend(1).ip,
            Self::Local => net.node(1).backend(1).ip,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Switchyard,
    Iptables,
    Floor,
}

#[derive(Default)]
struct Figures {
    rates: Vec<f64>,
    /// Connects that needed a SYN retransmission (over 200 ms).
    retransmitted: usize,
    latencies_ns: Vec<u64>,
    gbits: Vec<f64>,
    cpu_s_per_gbit: Vec<f64>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let net = Network::build(2, 1)?;
    // The floor dials pods directly: the external client needs a route.
    ip_in(
        net.external.name(),
        &[
            "route",
            "add",
            "10.244.0.0/16",
            "via",
            &net.node(1).addr.to_string(),
        ],
    )?;
    let _iperf: Vec<Proc> = [1, 2]
        .into_iter()
        .map(|i| {
            let pod = net.node(i).backend(1);
            Proc::spawn_in(
                pod.netns.name(),
                None,
                std::path::Path::new("iperf3"),
                &["-s", "-p", &IPERF_PORT.to_string()],
            )
        })
        .collect::<Result<_>>()?;
    std::thread::sleep(Duration::from_millis(300));
    let iptables = iptables_version()?;
    let mut results = std::collections::BTreeMap::new();
    for round in 0..args.rounds {
        for scenario in [Scenario::ClusterRemote, Scenario::Local] {
            for mode in [Mode::Switchyard, Mode::Iptables, Mode::Floor] {
                let fig: &mut Figures = results.entry((scenario as u8, mode as u8)).or_default();
                let _setup = Setup::install(&net, mode, scenario)?;
                let target = match mode {
                    Mode::Floor => format!("{}:8080", scenario.backend(&net)),
                    _ => format!("{}:{NODE_PORT}", net.node(1).addr),
                };
                let (rate, lat) = connects(&net, &target, args.connects)?;
                // A connect that took over 200 ms waited for a retransmitted
                // SYN: a dropped packet, not a slow path.
                let retransmitted = lat.iter().filter(|&&ns| ns > 200_000_000).count();
                fig.retransmitted += retransmitted;
                fig.rates.push(rate);
                fig.latencies_ns.extend(lat);
                let iperf_target = match mode {
                    Mode::Floor => (scenario.backend(&net), IPERF_PORT),
                    _ => (net.node(1).addr, IPERF_NODE_PORT),
                };
                let (gbits, cpu) = iperf(&net, iperf_target, args.iperf_seconds)?;
                fig.gbits.push(gbits);
                fig.cpu_s_per_gbit.push(cpu);
                eprintln!(
                    "round {round} {scenario:?} {mode:?}: {rate:.0} conn/s ({retransmitted} connects over 200 ms), {gbits:.2} Gbit/s, {cpu:.3} CPU-s/Gbit"
                );
            }
        }
    }
    println!(
        "iptables mode: `{iptables}`; {} rounds interleaved\n",
        args.rounds
    );
    println!(
        "| NodePort from outside | Switchyard | kube-proxy iptables | ratio | floor (routing only) |"
    );
    println!("|---|---|---|---|---|");
    for scenario in [Scenario::ClusterRemote, Scenario::Local] {
        let get = |m: Mode| &results[&(scenario as u8, m as u8)];
        let (s, i, f) = (get(Mode::Switchyard), get(Mode::Iptables), get(Mode::Floor));
        type Row = (&'static str, fn(&Figures) -> f64, bool);
        let rows: [Row; 6] = [
            ("new connections/s", |f| median(&f.rates), true),
            (
                "connects that waited for a SYN retransmission",
                |f| f.retransmitted as f64,
                false,
            ),
            ("connect p50 (µs)", |f| pct(&f.latencies_ns, 0.50), false),
            ("connect p99 (µs)", |f| pct(&f.latencies_ns, 0.99), false),
            ("iperf3 throughput (Gbit/s)", |f| median(&f.gbits), true),
            (
                "CPU per Gbit (CPU-s/Gbit)",
                |f| median(&f.cpu_s_per_gbit),
                false,
            ),
        ];
        for (what, value, higher_is_better) in rows {
            let (sv, iv, fv) = (value(s), value(i), value(f));
            let ratio = if higher_is_better { sv / iv } else { iv / sv };
            let ratio = if ratio.is_finite() {
                format!(
                    "{ratio:.2}x {}",
                    if higher_is_better { "more" } else { "less" }
                )
            } else {
                "—".to_owned()
            };
            println!(
                "| {}: {what} | {sv:.2} | {iv:.2} | {ratio} | {fv:.2} |",
                scenario.label(),
            );
        }
    }
    Ok(())
}

/// Whatever a mode installs on the nodes, removed on drop (Switchyard's
/// programs and maps live as long as the value).
enum Setup {
    Switchyard(#[allow(dead_code)] Vec<(Dataplane, Reconciler<AyaLbMaps>)>),
    Iptables(String),
    Floor,
}

impl Setup {
    fn install(net: &Network, mode: Mode, scenario: Scenario) -> Result<Self> {
        let backend = scenario.backend(net);
        let local = scenario == Scenario::Local;
        match mode {
            Mode::Floor => Ok(Self::Floor),
            Mode::Iptables => {
                // kube-proxy's first sync on node-1: its jumps, then one
                // restore of the rules it renders for these Services.
                let node = net.node(1).netns.name().to_owned();
                let on_node_1 = net.node(1).pods.iter().any(|p| p.ip == backend);
                let ports = nodeport_services(backend, on_node_1, local);
                let cfg = RuleConfig {
                    local_detector: Some("10.244.0.0/16".parse()?),
                    ..RuleConfig::default()
                };
                IptablesRules::new(Some(node.clone()), IptablesVariant::Auto)?
                    .sync(&ports, &cfg, true)?;
                Ok(Self::Iptables(node))
            }
            Mode::Switchyard => {
                let mut planes = Vec::new();
                for node in &net.nodes {
                    planes.push(switchyard_on(node, backend, local)?);
                }
                Ok(Self::Switchyard(planes))
            }
        }
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        if let Self::Iptables(node) = self {
            // No rule and no flow left behind for the next mode.
            let _ = apply::cleanup(Some(node), ProxyMode::Iptables, IptablesVariant::Auto);
            let _ = run("ip", &["netns", "exec", node, "conntrack", "-F"]);
        }
    }
}

/// Switchyard's programs on `node` (unpinned: they go with the value),
/// programmed as its daemon would for the one Service.
fn switchyard_on(
    node: &Node,
    backend: Ipv4Addr,
    local_policy: bool,
) -> Result<(Dataplane, Reconciler<AyaLbMaps>)> {
    let mut dp = Dataplane::load(None, &MapSizes::small())?;
    {
        let _in = InNetns::enter(&node.netns)?;
        dp.attach_node_iface("eth0")?;
        for pod in &node.pods {
            dp.attach_tc(&pod.host_if)?;
        }
    }
    let mut reconciler = Reconciler::restore(dp.lb_maps()?)?;
    let on_this_node = node.pods.iter().any(|p| p.ip == backend);
    let local = if on_this_node {
        format!("[{backend}:8080]")
    } else {
        "[]".into()
    };
    let locals: Vec<String> = node.pods.iter().map(|p| p.ip.to_string()).collect();
    let mut table = format!(
        "node: {{address: {}, localEndpoints: [{}]}}\nfrontends:\n",
        node.addr,
        locals.join(", ")
    );
    for (np, target) in [(NODE_PORT, 8080), (IPERF_NODE_PORT, IPERF_PORT)] {
        let local = local.replace("8080", &target.to_string());
        table.push_str(&format!(
            "  - {{kind: NodePort, address: {}, port: {np}, backends: ['{backend}:{target}']{}}}\n",
            node.addr,
            if local_policy {
                format!(", localBackends: {local}")
            } else {
                String::new()
            }
        ));
    }
    reconciler.apply(&table_file::parse(&table)?)?;
    Ok((dp, reconciler))
}

/// The benchmark's two NodePort Services (connections and iperf3), each
/// with the one endpoint `backend` (`on_node_1`: local to the node the
/// client dials), under `externalTrafficPolicy: Local` (`local`) or
/// `Cluster`, as kube-proxy's proxier sees them.
fn nodeport_services(backend: Ipv4Addr, on_node_1: bool, local: bool) -> Vec<ServicePort> {
    [(NODE_PORT, 8080), (IPERF_NODE_PORT, IPERF_PORT)]
        .into_iter()
        .enumerate()
        .map(|(i, (node_port, target))| {
            let endpoint = BackendAddr {
                addr: backend,
                port: target,
                proto: Protocol::Tcp,
            };
            ServicePort {
                name: format!("bench/np-{i}:http"),
                cluster_ip: Ipv4Addr::new(10, 96, 0, 10 + i as u8),
                port: 80,
                node_port: Some(node_port),
                external_local: local,
                cluster: vec![endpoint],
                local: if on_node_1 { vec![endpoint] } else { vec![] },
                has_any_endpoints: true,
                ..ServicePort::default()
            }
        })
        .collect()
}

fn iptables_version() -> Result<String> {
    Ok(run("iptables", &["--version"])?.trim().to_owned())
}

/// (connections per second, per-connection latencies in ns).
fn connects(net: &Network, target: &str, count: usize) -> Result<(f64, Vec<u64>)> {
    let out = Proc::spawn_in(
        net.external.name(),
        None,
        &netprobe()?,
        &[
            "connect-latency",
            "--target",
            target,
            "--count",
            &count.to_string(),
        ],
    )?
    .finish()?;
    let v: serde_json::Value = serde_json::from_str(out.trim())?;
    let lat: Vec<u64> = serde_json::from_value(v["connect_ns"].clone())?;
    let total_s = v["total_ns"].as_f64().context("total_ns")? / 1e9;
    Ok((count as f64 / total_s, lat))
}

/// Busy CPU time of the whole machine, in seconds (/proc/stat, USER_HZ 100).
fn busy_cpu_s() -> Result<f64> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let cpu: Vec<u64> = stat
        .lines()
        .next()
        .context("/proc/stat")?
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    let total: u64 = cpu.iter().sum();
    let idle = cpu.get(3).copied().unwrap_or(0) + cpu.get(4).copied().unwrap_or(0);
    Ok((total - idle) as f64 / 100.0)
}

/// iperf3 from outside to `(addr, port)`: (Gbit/s received, CPU-s per Gbit).
fn iperf(net: &Network, (addr, port): (Ipv4Addr, u16), seconds: u32) -> Result<(f64, f64)> {
    let cpu_before = busy_cpu_s()?;
    let out = run(
        "ip",
        &[
            "netns",
            "exec",
            net.external.name(),
            "iperf3",
            "-c",
            &addr.to_string(),
            "-p",
            &port.to_string(),
            "-t",
            &seconds.to_string(),
            "-J",
        ],
    )?;
    let cpu = busy_cpu_s()? - cpu_before;
    let v: serde_json::Value = serde_json::from_str(&out)?;
    let bps = v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .with_context(|| format!("iperf3 gave no result: {out}"))?;
    let gbit_total = bps * f64::from(seconds) / 1e9;
    Ok((bps / 1e9, cpu / gbit_total))
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn pct(ns: &[u64], q: f64) -> f64 {
    let mut v = ns.to_vec();
    v.sort_unstable();
    v[((v.len() as f64 - 1.0) * q) as usize] as f64 / 1000.0
}
