//! `bench-services`: Switchyard against kube-proxy's iptables (legacy and
//! nf_tables) and nftables modes, with N Services × 10 endpoints
//! programmed, side by side in one run.
//!
//! Each mode has a node of its own (a node namespace, a client pod, the same
//! ten backend pods at the same addresses), so all modes are programmed at
//! once and every measurement round visits every mode in turn (drift on a
//! noisy machine hits all alike):
//!
//! - `floor`: no Service rules at all; the client connects to the pods
//!   directly (the floor of any proxy);
//! - `iptables-legacy`, `iptables-nft`, `nftables`: kube-proxy's layouts,
//!   rendered by `switchyard::kubeproxy` from the same desired computation
//!   and loaded with the real tools (one restore/transaction from empty);
//! - `switchyard-socket` (cgroup `connect4` hook) and `switchyard-tc` (the
//!   per-packet path; the client outside the hooked cgroup), from one set
//!   of maps written by the reconciler.
//!
//! Per N: time to program from empty (a full restore/transaction for
//! kube-proxy's modes) and to apply one endpoint change (their partial
//! sync: the top-level chains and the changed Service's chains for
//! iptables, the changed elements and chains for nftables; the maps'
//! change is the reconciler's diff),
//! then `--rounds` rounds of `--connects` connections per mode and target:
//! the ClusterIP of a Service last in iptables' list, of one at a random
//! position, a pod directly (pod-to-pod traffic with N Services
//! programmed), and the last Service's NodePort from a client outside the
//! node (one Service in [`NODEPORT_EVERY`] is `type: NodePort`). Connection
//! rate (connections/s, each waits for the server's greeting) and connect()
//! latency p50/p99.
//!
//! Kernel memory: what each mode holds for N Services × 10 endpoints, and,
//! from a second load of N Services × 1 endpoint, split into a per-Service
//! and a per-endpoint share.
//!
//! Writes `<out>/services-connections.csv`, `<out>/services-programming.csv`,
//! `<out>/services-memory.csv`, PNG plots, and a Markdown table to stdout
//! (and to `--table-out`).
//!
//! Run as root: `cargo run --release -p switchyard-tests --bin bench-services`.
use std::{
    collections::BTreeMap,
    fmt::Write as _,
    io::Write as _,
    path::PathBuf,
    process::{Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use clap::Parser;
use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use switchyard::{
    datapath::{MapSizes, loader::Dataplane},
    desired::{self, NodeContext, ServicePort},
    kubeproxy::{RuleConfig, apply::IptablesVariant, iptables, nftables},
    model::DesiredTable,
    reconcile::{EntryCounts, Reconciler},
};
use testbed::{
    kmem::{self, MapMemory, MemCgroup},
    lab::{self, ClientPlacement, Testbed},
    netns::{InNetns, Netns},
    plot, privileges,
    proc::Proc,
    topology::{NODE_EXTERNAL_IF, NODE_EXTERNAL_IP},
};

#[derive(Parser)]
struct Args {
    /// Service counts (comma-separated).
    #[arg(long, default_value = "1,1000,10000", value_delimiter = ',')]
    services: Vec<usize>,
    /// Add 50,000 Services.
    #[arg(long)]
    full: bool,
    /// Measurement rounds per N (each visits every mode).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Connections per mode, target and round (2,000 take about 0.2 s: a
    /// scheduling hiccup of a few ms is lost in it).
    #[arg(long, default_value_t = 2000)]
    connects: usize,
    /// Give up programming a mode after this many seconds (its row then
    /// says so, it is not measured at that N and not tried at larger N)
    /// [default: 120, 300 with `--full`].
    #[arg(long)]
    program_timeout: Option<u64>,
    /// Where CSVs and plots go.
    #[arg(long, default_value = "docs/bench")]
    out: PathBuf,
    /// Also write the Markdown table here.
    #[arg(long)]
    table_out: Option<PathBuf>,
}

impl Args {
    /// `--program-timeout`, or its default for this size.
    fn program_timeout_s(&self) -> u64 {
        self.program_timeout
            .unwrap_or(if self.full { 300 } else { 120 })
    }
}

const ENDPOINTS: usize = 10;
/// Switchyard's programming from empty is timed this many times (median).
const PROGRAM_ROUNDS: usize = 3;
const VIP_LAST: &str = "10.100.0.1";
const VIP_MID: &str = "10.100.0.2";
const PORT: u16 = 80;
/// One Service in this many is `type: NodePort` (besides the last and the
/// random-position one): the default NodePort range, 30000–32767, holds
/// 2,768 ports, so a cluster cannot give each of 50,000 Services one.
const NODEPORT_EVERY: usize = 20;
const NODE_PORT_LAST: u16 = 32700;
const NODE_PORT_RANDOM: u16 = 32701;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Mode {
    Floor,
    IptablesLegacy,
    IptablesNft,
    Nftables,
    SwitchyardSocket,
    SwitchyardTc,
}

impl Mode {
    const ALL: [Mode; 6] = [
        Mode::Floor,
        Mode::IptablesLegacy,
        Mode::IptablesNft,
        Mode::Nftables,
        Mode::SwitchyardSocket,
        Mode::SwitchyardTc,
    ];
    fn name(self) -> &'static str {
        match self {
            Mode::Floor => "floor (no rules)",
            Mode::IptablesLegacy => "iptables-legacy",
            Mode::IptablesNft => "iptables-nft",
            Mode::Nftables => "nftables",
            Mode::SwitchyardSocket => "switchyard socket",
            Mode::SwitchyardTc => "switchyard per-packet",
        }
    }
    fn placement(self) -> ClientPlacement {
        if self == Mode::SwitchyardSocket {
            ClientPlacement::InNodeCgroup
        } else {
            ClientPlacement::OutsideCgroup
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Target {
    Last,
    Random,
    Pod,
    /// The last Service's NodePort from the external namespace; the floor
    /// dials the pod from there (routing only).
    NodePort,
}

impl Target {
    const ALL: [Target; 4] = [Target::Last, Target::Random, Target::Pod, Target::NodePort];
    fn name(self) -> &'static str {
        match self {
            Target::Last => "ClusterIP, last Service",
            Target::Random => "ClusterIP, random position",
            Target::Pod => "pod to pod",
            Target::NodePort => "NodePort from outside, last Service",
        }
    }
    /// Whether `mode` is measured on this target with `n` Services: the
    /// floor has no Service to dial (only pods, from inside and outside),
    /// one Service has no random position, and NodePorts are served by
    /// Switchyard's per-packet path alone (the socket hooks see only the
    /// node's own sockets).
    fn applies(self, mode: Mode, n: usize) -> bool {
        match (self, mode) {
            (Target::Last | Target::Random, Mode::Floor) => false,
            (Target::Random, _) => n >= 3,
            (Target::NodePort, Mode::SwitchyardSocket) => false,
            _ => true,
        }
    }
    /// The floor this target is compared with: a pod dialled from the same
    /// client, with no Service rules in the path.
    fn floor(self) -> Target {
        match self {
            Target::NodePort => Target::NodePort,
            _ => Target::Pod,
        }
    }
}

/// One measurement cell: connections over all rounds.
#[derive(Default, Clone)]
struct Conns {
    connect_ns: Vec<u64>,
    total_ns: u64,
}

impl Conns {
    fn rate(&self) -> f64 {
        self.connect_ns.len() as f64 / (self.total_ns as f64 / 1e9)
    }
    fn pct(&self, q: f64) -> f64 {
        let mut v = self.connect_ns.clone();
        v.sort_unstable();
        v[((v.len() as f64 - 1.0) * q) as usize] as f64 / 1000.0
    }
}

#[derive(Clone, Default)]
struct Programming {
    /// Seconds to program from empty; `None`: timed out.
    program_s: Option<f64>,
    /// Seconds to apply one endpoint change.
    change_s: Option<f64>,
    /// Kernel memory the rules hold after programming from empty (bytes,
    /// memcg-charged; see `testbed::kmem`); `None` where not measured.
    kmem_bytes: Option<u64>,
    /// The same for N Services × 1 endpoint (loaded after the traffic
    /// rounds, from empty), which splits the figure above into a share per
    /// Service and per endpoint.
    kmem_one_endpoint: Option<u64>,
    /// Seconds to load the same rules from empty another way, where the
    /// mode's own way timed out (iptables-nft: [`Restore::ListFirst`]).
    workaround_s: Option<f64>,
}

fn main() -> Result<()> {
    privileges::require();
    let mut args = Args::parse();
    if args.full && !args.services.contains(&50_000) {
        args.services.push(50_000);
    }
    // Ascending: a mode that gives up is not tried at larger N.
    args.services.sort_unstable();
    args.services.dedup();
    if args
        .services
        .iter()
        .any(|&n| n / NODEPORT_EVERY >= usize::from(NODE_PORT_LAST - 30000))
    {
        bail!(
            "at most {} Services: one in {NODEPORT_EVERY} gets a NodePort below {NODE_PORT_LAST}",
            usize::from(NODE_PORT_LAST - 30000) * NODEPORT_EVERY - 1
        );
    }
    let max_n = *args.services.iter().max().context("--services")?;
    let beds: BTreeMap<Mode, Testbed> = Mode::ALL
        .iter()
        .map(|m| Ok((*m, Testbed::new(ENDPOINTS as u8)?)))
        .collect::<Result<_>>()?;
    // Every node has a link to a client outside the cluster.
    let externals: BTreeMap<Mode, Netns> = beds
        .iter()
        .map(|(m, b)| Ok((*m, b.topo.add_external(&b.prefix)?)))
        .collect::<Result<_>>()?;
    // One set of maps: socket hooks on one node's cgroup, TC on another's
    // pod interfaces and its external link.
    // Frontends: every ClusterIP, and the NodePorts (one Service in
    // NODEPORT_EVERY, and the two measured ones); a slot per endpoint each.
    let frontends = max_n + max_n / NODEPORT_EVERY + 16;
    let sizes = MapSizes {
        frontends: (frontends as u32).max(1024),
        backends: (max_n * ENDPOINTS) as u32 + 1024,
        backend_slots: (frontends * ENDPOINTS) as u32 + 1024,
        ..MapSizes::default()
    };
    let mut dp = Dataplane::load(None, &sizes)?;
    dp.attach_cgroup(beds[&Mode::SwitchyardSocket].cgroup.path())?;
    {
        let tc = &beds[&Mode::SwitchyardTc];
        let _in = InNetns::enter(&tc.topo.node)?;
        for iface in tc.topo.host_ifs() {
            dp.attach_tc(iface)?;
        }
        dp.attach_node_iface(NODE_EXTERNAL_IF)?;
    }
    let mut reconciler = Reconciler::restore(dp.lb_maps()?)?;
    let maps = kmem::bpf_maps()?;
    let backends: Vec<String> = beds[&Mode::Floor]
        .topo
        .backends
        .iter()
        .map(|p| p.ip.to_string())
        .collect();
    let pod_target = beds[&Mode::Floor].backend(1);
    std::fs::create_dir_all(&args.out)?;

    let mut conns: BTreeMap<(usize, Mode, Target), Conns> = BTreeMap::new();
    let mut programming: BTreeMap<(usize, Mode), Programming> = BTreeMap::new();
    let mut entries: BTreeMap<usize, EntryCounts> = BTreeMap::new();
    let mut entries_one: BTreeMap<usize, EntryCounts> = BTreeMap::new();
    // The smallest N at which each mode's own programming gave up.
    let mut gave_up: BTreeMap<Mode, usize> = BTreeMap::new();
    let cfg = RuleConfig {
        local_detector: Some("10.244.0.0/16".parse()?),
        ..RuleConfig::default()
    };
    for &n in &args.services {
        eprintln!("N = {n}: computing the table");
        let (table, ports) = compute(n, &backends, ENDPOINTS, ENDPOINTS)?;
        // One endpoint change: the last Service loses one of its endpoints.
        let (changed_table, changed_ports) = compute(n, &backends, ENDPOINTS, ENDPOINTS - 1)?;
        let timeout = Duration::from_secs(args.program_timeout_s());
        let mut programmed: Vec<Mode> = vec![Mode::Floor];
        for mode in Mode::ALL.iter().copied().skip(1) {
            let ns = beds[&mode].topo.node.name().to_owned();
            // A mode that gave up at a smaller N would give up again: its
            // own way is not tried (iptables-nft still loads the fast way).
            let earlier = gave_up.get(&mode).copied();
            let p = match mode {
                Mode::IptablesLegacy | Mode::Nftables if earlier.is_some() => {
                    Programming::default()
                }
                Mode::IptablesLegacy | Mode::IptablesNft => {
                    let how = earlier.map_or(Restore::AsKubeProxy, |_| Restore::ListFirst);
                    program_iptables(
                        &ns,
                        variant(mode),
                        &ports,
                        &changed_ports,
                        &cfg,
                        timeout,
                        how,
                    )?
                }
                Mode::Nftables => program_nftables(&ns, &ports, &changed_ports, &cfg, timeout)?,
                Mode::SwitchyardSocket => {
                    // From empty, the median of PROGRAM_ROUNDS (a pass of
                    // a fraction of a second is at the mercy of one
                    // scheduling hiccup on a shared machine; kube-proxy's
                    // modes take seconds and are timed once).
                    let mut rounds = Vec::with_capacity(PROGRAM_ROUNDS);
                    for _ in 0..PROGRAM_ROUNDS {
                        reconciler.apply(&DesiredTable::default())?;
                        let started = Instant::now();
                        reconciler.apply(&table)?;
                        rounds.push(started.elapsed().as_secs_f64());
                    }
                    rounds.sort_by(f64::total_cmp);
                    let program_s = rounds[rounds.len() / 2];
                    entries.insert(n, reconciler.entry_counts());
                    let started = Instant::now();
                    reconciler.apply(&changed_table)?;
                    let change_s = started.elapsed().as_secs_f64();
                    reconciler.apply(&table)?;
                    Programming {
                        program_s: Some(program_s),
                        change_s: Some(change_s),
                        // Preallocated maps: by capacity, in the table's
                        // memory section.
                        kmem_bytes: None,
                        kmem_one_endpoint: None,
                        workaround_s: None,
                    }
                }
                // The same maps serve both eBPF paths.
                Mode::SwitchyardTc => programming[&(n, Mode::SwitchyardSocket)].clone(),
                Mode::Floor => unreachable!(),
            };
            eprintln!(
                "N = {n}: {} programmed in {:?} s, change {:?} s",
                mode.name(),
                p.program_s,
                p.change_s
            );
            if p.program_s.is_none() && mode != Mode::SwitchyardTc {
                gave_up.entry(mode).or_insert(n);
            }
            if p.program_s.is_some() || p.workaround_s.is_some() {
                programmed.push(mode);
            }
            programming.insert((n, mode), p);
        }
        for round in 0..args.rounds {
            eprintln!("N = {n}: round {}", round + 1);
            for &mode in &programmed {
                for target in Target::ALL {
                    if !target.applies(mode, n) {
                        continue;
                    }
                    let dest = match (mode, target) {
                        (_, Target::Pod) | (Mode::Floor, _) => pod_target.clone(),
                        (_, Target::Last) => format!("{VIP_LAST}:{PORT}"),
                        (_, Target::Random) => format!("{VIP_MID}:{PORT}"),
                        (_, Target::NodePort) => format!("{NODE_EXTERNAL_IP}:{NODE_PORT_LAST}"),
                    };
                    let from = if target == Target::NodePort {
                        Client::External(&externals[&mode])
                    } else {
                        Client::Pod(&beds[&mode], mode.placement())
                    };
                    // One warm-up connection (neighbour entries, caches).
                    connect(&from, &dest, 1)?;
                    let got = connect(&from, &dest, args.connects)
                        .with_context(|| format!("N = {n}, {}, {}", mode.name(), target.name()))?;
                    let cell = conns.entry((n, mode, target)).or_default();
                    cell.connect_ns.extend(got.connect_ns);
                    cell.total_ns += got.total_ns;
                }
            }
        }
        // Empty every mode; then N Services × 1 endpoint from empty, for
        // the memory each endpoint holds; and empty again for the next N.
        for mode in [Mode::IptablesLegacy, Mode::IptablesNft, Mode::Nftables] {
            let ns = beds[&mode].topo.node.name().to_owned();
            cleanup(&ns, mode)?;
            if !programmed.contains(&mode) {
                continue;
            }
            let (_, one_ports) = compute(n, &backends, 1, 1)?;
            let kmem = match mode {
                Mode::Nftables => load_nftables(&ns, &one_ports, &cfg, timeout)?.0,
                // Only the memory counts here: iptables-nft is fed the
                // fast way (the same rules; see `Restore::ListFirst`).
                Mode::IptablesNft => {
                    load_iptables(
                        &ns,
                        variant(mode),
                        &one_ports,
                        &cfg,
                        timeout,
                        Restore::ListFirst,
                    )?
                    .0
                }
                _ => {
                    load_iptables(
                        &ns,
                        variant(mode),
                        &one_ports,
                        &cfg,
                        timeout,
                        Restore::AsKubeProxy,
                    )?
                    .0
                }
            };
            cleanup(&ns, mode)?;
            if let Some(p) = programming.get_mut(&(n, mode)) {
                p.kmem_one_endpoint = kmem.map(|(_, bytes)| bytes);
            }
        }
        let (one_table, _) = compute(n, &backends, 1, 1)?;
        reconciler.apply(&one_table)?;
        entries_one.insert(n, reconciler.entry_counts());
        reconciler.apply(&DesiredTable::default())?;
    }
    let mut table = report(&args, &conns, &programming, &gave_up)?;
    table.push_str(&memory_report(
        &args,
        &maps,
        [&entries, &entries_one],
        &programming,
        &gave_up,
    )?);
    print!("{table}");
    if let Some(path) = &args.table_out {
        std::fs::write(path, &table)?;
    }
    Ok(())
}

/// N Services (two of them with the real backends: one sorting last, one at
/// a random position) × `per` endpoints, except that the last one has
/// `last_per` (fewer: one endpoint change), through `desired::compute` for a
/// node whose NodePorts are on [`NODE_EXTERNAL_IP`]. The last, the random
/// one and one in [`NODEPORT_EVERY`] are `type: NodePort`
/// (`externalTrafficPolicy: Cluster`).
fn compute(
    n: usize,
    backends: &[String],
    per: usize,
    last_per: usize,
) -> Result<(DesiredTable, Vec<ServicePort>)> {
    let mut services = Vec::with_capacity(n);
    let mut slices = Vec::with_capacity(n);
    let random = if n > 2 { (n * 7919) % (n - 1) } else { 0 };
    for i in 0..n {
        let (name, vip, eps): (String, String, Vec<String>) = if i + 1 == n {
            (
                "zz-last".into(),
                VIP_LAST.into(),
                backends[..last_per].to_vec(),
            )
        } else if i == random && n > 1 {
            (
                format!("svc-{i:06}-random"),
                VIP_MID.into(),
                backends[..per].to_vec(),
            )
        } else {
            let vip = std::net::Ipv4Addr::from(0x0a60_0000u32 + 1 + i as u32);
            let eps = (0..per)
                .map(|j| {
                    std::net::Ipv4Addr::from(0x0a80_0000u32 + 1 + (i * ENDPOINTS + j) as u32)
                        .to_string()
                })
                .collect();
            (format!("svc-{i:06}"), vip.to_string(), eps)
        };
        let node_port = if i + 1 == n {
            Some(NODE_PORT_LAST)
        } else if i == random && n > 1 {
            Some(NODE_PORT_RANDOM)
        } else {
            (i % NODEPORT_EVERY == 0).then(|| 30000 + (i / NODEPORT_EVERY) as u16)
        };
        let mut port = serde_json::json!({"name": "http", "port": PORT, "protocol": "TCP", "targetPort": 8080});
        let mut spec = serde_json::json!({"clusterIP": vip});
        if let Some(np) = node_port {
            port["nodePort"] = np.into();
            spec["type"] = "NodePort".into();
        }
        spec["ports"] = serde_json::json!([port]);
        services.push(Arc::new(serde_json::from_value::<Service>(
            serde_json::json!({
                "metadata": {"namespace": "bench", "name": name},
                "spec": spec
            }),
        )?));
        let endpoints: Vec<serde_json::Value> = eps
            .iter()
            .map(|a| serde_json::json!({"addresses": [a], "conditions": {"ready": true}}))
            .collect();
        slices.push(Arc::new(serde_json::from_value::<EndpointSlice>(serde_json::json!({
            "metadata": {"namespace": "bench", "name": format!("{name}-1"), "labels": {"kubernetes.io/service-name": name}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": endpoints
        }))?));
    }
    let node = NodeContext {
        nodeport_addresses: vec![NODE_EXTERNAL_IP],
        address: Some(NODE_EXTERNAL_IP),
        ..NodeContext::default()
    };
    let out = desired::compute(&services, &slices, &node);
    if !out.skipped.is_empty() {
        bail!("invalid bench objects: {:?}", &out.skipped[..1]);
    }
    Ok((out.table, out.service_ports))
}

/// Runs `tool args` in `ns` with `stdin` (inside `memcg` when given),
/// killed after `timeout`; the elapsed seconds, or `None` on timeout.
fn timed(
    ns: &str,
    tool: &str,
    args: &[&str],
    stdin: &str,
    timeout: Duration,
    memcg: Option<&MemCgroup>,
) -> Result<Option<f64>> {
    let started = Instant::now();
    let mut child = memcg
        .map_or_else(|| Command::new("ip"), |m| m.command("ip"))
        .args(["netns", "exec", ns, tool])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut input = child.stdin.take().context("stdin")?;
    let text = stdin.to_owned();
    let writer = std::thread::spawn(move || input.write_all(text.as_bytes()));
    loop {
        if let Some(status) = child.try_wait()? {
            let elapsed = started.elapsed().as_secs_f64();
            let _ = writer.join();
            if !status.success() {
                let mut err = String::new();
                std::io::Read::read_to_string(
                    &mut child.stderr.take().context("stderr")?,
                    &mut err,
                )?;
                bail!("{tool} in {ns} failed ({status}): {}", err.trim());
            }
            return Ok(Some(elapsed));
        }
        if started.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn program_iptables(
    ns: &str,
    variant: IptablesVariant,
    ports: &[ServicePort],
    changed: &[ServicePort],
    cfg: &RuleConfig,
    timeout: Duration,
    how: Restore,
) -> Result<Programming> {
    let (loaded, previous) = match how {
        Restore::AsKubeProxy => load_iptables(ns, variant, ports, cfg, timeout, how)?,
        // Known to give up: straight to the fast way below.
        Restore::ListFirst => (None, iptables::render(ports, cfg, &Default::default()).next),
    };
    // Where kube-proxy's own restore did not finish (iptables-nft), the
    // same rules loaded the fast way, so that their traffic can still be
    // measured.
    let (rules_in, workaround_s) = match loaded {
        None if variant == IptablesVariant::Nft => {
            cleanup(ns, Mode::IptablesNft)?;
            let (fast, _) = load_iptables(ns, variant, ports, cfg, timeout, Restore::ListFirst)?;
            (fast, fast.map(|(s, _)| s))
        }
        _ => (loaded, None),
    };
    let (tool, args) = iptables_restore(variant);
    let change_s = match rules_in {
        Some(_) => {
            // A partial sync, as kube-proxy's for one changed Service.
            let next = iptables::render(changed, cfg, &previous);
            let s = timed(ns, tool, &args, &next.text, timeout, None)?;
            // Back to the full table for the traffic measurements.
            let back = iptables::render(ports, cfg, &next.next);
            if timed(ns, tool, &args, &back.text, timeout, None)?.is_none() {
                bail!("{tool} in {ns}: restoring the full table took over {timeout:?}");
            }
            s
        }
        None => None,
    };
    Ok(Programming {
        program_s: loaded.map(|(s, _)| s),
        workaround_s,
        change_s,
        kmem_bytes: rules_in.map(|(_, b)| b),
        kmem_one_endpoint: None,
    })
}

/// How a restore from empty is fed to `iptables-restore`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Restore {
    /// kube-proxy's payload as it is.
    AsKubeProxy,
    /// The same payload with a `-S` line first in `*nat`
    /// ([`iptables::listing_first`], as Switchyard's own iptables mode
    /// sends full syncs on iptables-nft; the listing goes to /dev/null):
    /// the same rules, loaded fast by iptables-nft. With
    /// `--noflush`, iptables-nft 1.8.9 puts every chain the input names
    /// into a sorted linked list before it fetches them one by one — a walk
    /// per command over some 110,000 chains at 10,000 Services × 10
    /// endpoints, quadratic in all. A command naming no chain makes it
    /// fetch all chains in one dump instead (measured at 4,000 Services:
    /// 247 s as kube-proxy feeds it, 2.5 s this way; `iptables-nft-save`
    /// prints the same rules after both).
    ListFirst,
}

/// kube-proxy's restore command for `variant`: `--noflush` (chains it
/// does not name are kept), `--counters`, waiting 5 s for the xtables lock.
fn iptables_restore(variant: IptablesVariant) -> (&'static str, [&'static str; 4]) {
    let tool = match variant {
        IptablesVariant::Legacy => "iptables-legacy-restore",
        _ => "iptables-nft-restore",
    };
    (tool, ["-w", "5", "--noflush", "--counters"])
}

/// Runs `tool args` in `ns` with `stdin` inside a fresh memory cgroup:
/// the elapsed seconds and the kernel memory still charged when the tool
/// has exited, or `None` on timeout (a load killed half way is not worth
/// counting).
fn timed_in_memcg(
    ns: &str,
    tool: &str,
    args: &[&str],
    stdin: &str,
    timeout: Duration,
) -> Result<Option<(f64, u64)>> {
    let memcg = MemCgroup::new(&format!("{ns}-kmem"))?;
    match timed(ns, tool, args, stdin, timeout, Some(&memcg))? {
        Some(s) => Ok(Some((s, memcg.kernel_bytes()?))),
        None => Ok(None),
    }
}

/// kube-proxy's first sync of `ports` into an empty `ns`: the jumps and
/// top-level chains (untimed), then one restore of everything. Seconds and
/// kernel bytes (`None`: timed out), and what the next partial sync starts
/// from.
fn load_iptables(
    ns: &str,
    variant: IptablesVariant,
    ports: &[ServicePort],
    cfg: &RuleConfig,
    timeout: Duration,
    how: Restore,
) -> Result<(Option<(f64, u64)>, iptables::Previous)> {
    let mut rules = switchyard::kubeproxy::apply::IptablesRules::new(Some(ns.to_owned()), variant)?;
    rules.sync(&[], cfg, true)?;
    let (tool, args) = iptables_restore(variant);
    let mut payload = iptables::render(ports, cfg, &Default::default());
    if how == Restore::ListFirst {
        payload.text = iptables::listing_first(&payload.text);
    }
    let loaded = timed_in_memcg(ns, tool, &args, &payload.text, timeout)?;
    Ok((loaded, payload.next))
}

/// kube-proxy's first nftables transaction of `ports` into an empty `ns`;
/// as [`load_iptables`].
fn load_nftables(
    ns: &str,
    ports: &[ServicePort],
    cfg: &RuleConfig,
    timeout: Duration,
) -> Result<(Option<(f64, u64)>, nftables::Previous)> {
    let first = nftables::render(ports, cfg, &nftables::Previous::default());
    let loaded = timed_in_memcg(ns, "nft", &["-f", "-"], &first.text, timeout)?;
    Ok((loaded, first.next))
}

fn variant(mode: Mode) -> IptablesVariant {
    match mode {
        Mode::IptablesLegacy => IptablesVariant::Legacy,
        _ => IptablesVariant::Nft,
    }
}

/// Removes every rule `mode` (one of kube-proxy's) left in `ns`.
fn cleanup(ns: &str, mode: Mode) -> Result<()> {
    use switchyard::kubeproxy::{ProxyMode, apply};
    match mode {
        Mode::Nftables => apply::cleanup(Some(ns), ProxyMode::Nftables, IptablesVariant::Auto),
        _ => apply::cleanup(Some(ns), ProxyMode::Iptables, variant(mode)),
    }
}

fn program_nftables(
    ns: &str,
    ports: &[ServicePort],
    changed: &[ServicePort],
    cfg: &RuleConfig,
    timeout: Duration,
) -> Result<Programming> {
    let (loaded, previous) = load_nftables(ns, ports, cfg, timeout)?;
    let change_s = match loaded {
        Some(_) => {
            // A partial sync, as kube-proxy's for one changed Service.
            let next = nftables::render(changed, cfg, &previous);
            let s = timed(ns, "nft", &["-f", "-"], &next.text, timeout, None)?;
            let back = nftables::render(ports, cfg, &next.next);
            if timed(ns, "nft", &["-f", "-"], &back.text, timeout, None)?.is_none() {
                bail!("nft in {ns}: restoring the full table took over {timeout:?}");
            }
            s
        }
        None => None,
    };
    Ok(Programming {
        program_s: loaded.map(|(s, _)| s),
        change_s,
        kmem_bytes: loaded.map(|(_, b)| b),
        kmem_one_endpoint: None,
        workaround_s: None,
    })
}

/// Where a measuring client runs.
enum Client<'a> {
    /// The node's client pod, inside or outside the hooked cgroup.
    Pod(&'a Testbed, ClientPlacement),
    /// The namespace outside the node.
    External(&'a Netns),
}

fn connect(from: &Client, target: &str, count: usize) -> Result<Conns> {
    let count = count.to_string();
    let args = ["connect-latency", "--target", target, "--count", &count];
    let client = match from {
        Client::Pod(bed, placement) => bed.spawn_client(*placement, &args)?,
        Client::External(ns) => Proc::spawn_in(ns.name(), None, &lab::netprobe()?, &args)?,
    };
    let out = client.finish()?;
    let v: serde_json::Value =
        serde_json::from_str(out.trim()).with_context(|| format!("netprobe printed `{out}`"))?;
    Ok(Conns {
        connect_ns: serde_json::from_value(v["connect_ns"].clone())?,
        total_ns: serde_json::from_value(v["total_ns"].clone())?,
    })
}

/// Why a mode has no figure at `n`: it gave up there, or at a smaller N and
/// was not tried again.
fn not_programmed(args: &Args, gave_up: &BTreeMap<Mode, usize>, mode: Mode, n: usize) -> String {
    match gave_up.get(&mode) {
        Some(&at) if at < n => format!("not tried (gave up at {at})"),
        _ => format!("not programmed within {} s", args.program_timeout_s()),
    }
}

fn fmt_s(v: Option<f64>, timeout: u64) -> String {
    v.map_or_else(|| format!("> {timeout} (gave up)"), |s| format!("{s:.3}"))
}

/// The minimum spacing of sync starts once a burst is spent, in seconds. A
/// change arriving just after a sync started waits for the next one, which
/// starts this long after it or when it ends, whichever is later: with a
/// sync of c seconds, up to max(c, period) + c from change to rules. kube-proxy's
/// `minSyncPeriod` defaults to 1 s (its `BoundedFrequencyRunner` lets a burst
/// of 2 through at once, so a lone change does not wait); Switchyard's
/// daemon paces the same way with its own default.
fn min_sync_period(mode: Mode) -> f64 {
    match mode {
        Mode::SwitchyardSocket | Mode::SwitchyardTc => {
            switchyard::daemon::config::DEFAULT_MIN_SYNC_PERIOD.as_secs_f64()
        }
        _ => 1.0,
    }
}

/// CSVs, plots, and the Markdown table.
fn report(
    args: &Args,
    conns: &BTreeMap<(usize, Mode, Target), Conns>,
    programming: &BTreeMap<(usize, Mode), Programming>,
    gave_up: &BTreeMap<Mode, usize>,
) -> Result<String> {
    let mut csv = String::from(
        "services,mode,target,connections,conns_per_s,connect_p50_us,connect_p99_us\n",
    );
    for ((n, mode, target), c) in conns {
        let _ = writeln!(
            csv,
            "{n},{},{},{},{:.1},{:.1},{:.1}",
            mode.name(),
            target.name(),
            c.connect_ns.len(),
            c.rate(),
            c.pct(0.5),
            c.pct(0.99)
        );
    }
    std::fs::write(args.out.join("services-connections.csv"), &csv)?;
    let mut pcsv = String::from("services,mode,program_s,change_s,program_s_list_first\n");
    for ((n, mode), p) in programming {
        let f = |v: Option<f64>| v.map_or_else(String::new, |s| format!("{s:.4}"));
        let _ = writeln!(
            pcsv,
            "{n},{},{},{},{}",
            mode.name(),
            f(p.program_s),
            f(p.change_s),
            f(p.workaround_s)
        );
    }
    std::fs::write(args.out.join("services-programming.csv"), &pcsv)?;

    // Plots: one line per mode, against N on a log axis.
    let series = |target: Target, value: fn(&Conns) -> f64| -> Vec<(String, Vec<(f64, f64)>)> {
        Mode::ALL
            .iter()
            .map(|m| {
                let pts = args
                    .services
                    .iter()
                    .filter_map(|n| {
                        // The floor's line is its own target's (a pod).
                        let t = if *m == Mode::Floor {
                            target.floor()
                        } else {
                            target
                        };
                        conns.get(&(*n, *m, t)).map(|c| (*n as f64, value(c)))
                    })
                    .collect();
                (m.name().to_owned(), pts)
            })
            .collect()
    };
    type Plot = (
        &'static str,
        &'static str,
        &'static str,
        Target,
        fn(&Conns) -> f64,
    );
    let plots: [Plot; 4] = [
        (
            "services-conns-per-s.png",
            "New connections/s to a ClusterIP (last Service)",
            "connections/s",
            Target::Last,
            Conns::rate,
        ),
        (
            "services-connect-p99.png",
            "connect() p99 to a ClusterIP (last Service), µs",
            "µs",
            Target::Last,
            |c| c.pct(0.99),
        ),
        (
            "services-pod-to-pod.png",
            "Pod-to-pod new connections/s with N Services programmed",
            "connections/s",
            Target::Pod,
            Conns::rate,
        ),
        (
            "services-nodeport.png",
            "New connections/s to a NodePort from outside (last Service)",
            "connections/s",
            Target::NodePort,
            Conns::rate,
        ),
    ];
    for (file, title, y, target, value) in plots {
        plot::lines(
            &args.out.join(file),
            title,
            "Services (x10 endpoints)",
            y,
            &series(target, value),
        )?;
    }

    let mut t = String::new();
    let _ = writeln!(
        t,
        "#### New connections (each waits for the server's greeting; {} rounds × {} per cell)\n",
        args.rounds, args.connects
    );
    let _ = writeln!(
        t,
        "| Services | target | mode | conns/s | vs floor | vs iptables-legacy | vs iptables-nft | p50 µs | p99 µs |"
    );
    let _ = writeln!(t, "|---|---|---|---|---|---|---|---|---|");
    for &n in &args.services {
        for target in Target::ALL {
            let floor = conns
                .get(&(n, Mode::Floor, target.floor()))
                .map(Conns::rate);
            let base = |m: Mode| conns.get(&(n, m, target)).map(Conns::rate);
            for mode in Mode::ALL {
                if !target.applies(mode, n) {
                    continue;
                }
                let Some(c) = conns.get(&(n, mode, target)) else {
                    let _ = writeln!(
                        t,
                        "| {n} | {} | {} | {} | | | | | |",
                        target.name(),
                        mode.name(),
                        not_programmed(args, gave_up, mode, n)
                    );
                    continue;
                };
                let ratio = |b: Option<f64>| {
                    b.map_or_else(|| "–".to_owned(), |b| format!("{:.2}x", c.rate() / b))
                };
                let _ = writeln!(
                    t,
                    "| {n} | {} | {} | {:.0} | {} | {} | {} | {:.0} | {:.0} |",
                    target.name(),
                    mode.name(),
                    c.rate(),
                    ratio(floor),
                    ratio(base(Mode::IptablesLegacy)),
                    ratio(base(Mode::IptablesNft)),
                    c.pct(0.5),
                    c.pct(0.99)
                );
            }
        }
    }
    let _ = writeln!(
        t,
        "\n#### Programming N Services × {ENDPOINTS} endpoints from empty, and one endpoint change (s)\n"
    );
    let _ = writeln!(
        t,
        "| Services | mode | program | vs switchyard | one endpoint change | vs switchyard | a change in a stream of changes, with the min sync period |"
    );
    let _ = writeln!(t, "|---|---|---|---|---|---|---|");
    for &n in &args.services {
        let sy = programming
            .get(&(n, Mode::SwitchyardSocket))
            .cloned()
            .unwrap_or_default();
        for mode in [
            Mode::SwitchyardSocket,
            Mode::IptablesLegacy,
            Mode::IptablesNft,
            Mode::Nftables,
        ] {
            let p = programming.get(&(n, mode)).cloned().unwrap_or_default();
            let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
                (Some(a), Some(b)) if b > 0.0 => format!("{:.1}x", a / b),
                _ => "–".to_owned(),
            };
            let name = if mode == Mode::SwitchyardSocket {
                "switchyard (maps)"
            } else {
                mode.name()
            };
            let _ = writeln!(
                t,
                "| {n} | {name} | {} | {} | {} | {} | {} |",
                match (p.program_s, p.workaround_s, gave_up.get(&mode)) {
                    (None, w, Some(&at)) if at < n => format!(
                        "> {} (gave up at {at}, not tried again){}",
                        args.program_timeout_s(),
                        match (mode, w) {
                            (_, Some(w)) => format!("; {w:.3} with `-S` first"),
                            (Mode::IptablesNft, None) =>
                                "; with `-S` first, gave up too".to_owned(),
                            _ => String::new(),
                        }
                    ),
                    (None, Some(w), _) => format!(
                        "{}; {w:.3} with `-S` first",
                        fmt_s(None, args.program_timeout_s())
                    ),
                    (None, None, _) if mode == Mode::IptablesNft => format!(
                        "{}; with `-S` first, gave up too",
                        fmt_s(None, args.program_timeout_s())
                    ),
                    (s, _, _) => fmt_s(s, args.program_timeout_s()),
                },
                match (p.program_s, sy.program_s) {
                    (None, Some(sy)) if p.workaround_s.is_some() && sy > 0.0 =>
                        format!("> {:.0}x", args.program_timeout_s() as f64 / sy),
                    (a, b) => ratio(a, b),
                },
                fmt_s(p.change_s, args.program_timeout_s()),
                ratio(p.change_s, sy.change_s),
                p.change_s.map_or_else(
                    || "–".to_owned(),
                    |c| format!("up to {:.3}", c.max(min_sync_period(mode)) + c)
                ),
            );
        }
    }
    if programming.values().any(|p| p.workaround_s.is_some()) {
        let _ = writeln!(
            t,
            "\nWhere iptables-nft gave up, the same rules were loaded with a `-S` line first in `*nat` so that their traffic could be measured: with `--noflush`, iptables-nft 1.8.9 queues every chain the input names in a sorted list, a walk per command (quadratic: 247 s at 4,000 Services × 10, measured apart from this run); a command that names no chain makes it fetch all chains at once instead, and `iptables-nft-save` then prints the same rules. kube-proxy sends its payload as it is."
        );
    }
    Ok(t)
}

/// Kernel memory per mode and N (CSV and Markdown): for the maps, the
/// entries in use at the kernel's own per-entry accounting (`memlock` over
/// capacity; the maps are preallocated, so a daemon holds its capacity
/// whatever it uses, and that total is stated too); for kube-proxy's
/// modes, the memcg kernel charge left by the restore from empty.
///
/// `entries` holds the map entry counts at `[10 endpoints, 1 endpoint]` per
/// Service; with the one-endpoint charges in `programming`, each total
/// m(E) ≈ N·(s + E·e) splits into a share per endpoint, e = (m(10) −
/// m(1)) / 9N, and one per Service, s = m(1)/N − e.
fn memory_report(
    args: &Args,
    maps: &[MapMemory],
    entries: [&BTreeMap<usize, EntryCounts>; 2],
    programming: &BTreeMap<(usize, Mode), Programming>,
    gave_up: &BTreeMap<Mode, usize>,
) -> Result<String> {
    use proxy_common::map_names::{LB4_BACKENDS, LB4_MEMBERS, LB4_SERVICES};
    let per_entry = |name: &str| -> Result<f64> {
        let m = maps
            .iter()
            .find(|m| m.name == name)
            .with_context(|| format!("no map named {name} open in this process"))?;
        Ok(m.bytes_per_entry())
    };
    let (svc, be, member) = (
        per_entry(LB4_SERVICES)?,
        per_entry(LB4_BACKENDS)?,
        per_entry(LB4_MEMBERS)?,
    );
    let maps_bytes = |c: &EntryCounts| {
        c.services as f64 * svc + c.backends as f64 * be + c.members as f64 * member
    };
    let capacity: u64 = maps.iter().map(|m| m.memlock).sum();
    let mut csv = String::from(
        "services,mode,kernel_bytes,kernel_bytes_one_endpoint,bytes_per_service,bytes_per_endpoint\n",
    );
    let mut t = String::new();
    let _ = writeln!(
        t,
        "\n#### Kernel memory held for N Services × {ENDPOINTS} endpoints (MiB), and its share per Service and per endpoint\n"
    );
    let _ = writeln!(
        t,
        "Maps: entries in use × the kernel's `memlock` per entry of capacity ({svc:.0} B per frontend or slot, {be:.0} B per backend, {member:.0} B per membership). This run's maps are preallocated for its largest N: {:.1} MiB for every map the dataplane holds, conntrack included. kube-proxy's modes: the kernel memory charged to a fresh memory cgroup by the restore from empty (iptables-legacy's per-CPU rule counters are not charged, so its figure is a lower bound). The shares come from a second load of N Services × 1 endpoint: per endpoint (m(10) − m(1)) / 9N, per Service m(1)/N less one endpoint, so the Service's share also carries the ruleset's fixed cost spread over N (it shrinks as N grows); below 1,000 Services the charges are too few pages to split.\n",
        capacity as f64 / 1048576.0
    );
    let _ = writeln!(
        t,
        "| Services | mode | kernel memory | all-in per Service (KiB) | per Service, alone (B) | per endpoint (B) | vs switchyard |"
    );
    let _ = writeln!(t, "|---|---|---|---|---|---|---|");
    for &n in &args.services {
        let sy = |i: usize| entries[i].get(&n).map(maps_bytes);
        let rules = |mode: Mode| {
            let p = programming.get(&(n, mode));
            (
                mode,
                p.and_then(|p| p.kmem_bytes).map(|b| b as f64),
                p.and_then(|p| p.kmem_one_endpoint).map(|b| b as f64),
            )
        };
        let rows = [
            (Mode::SwitchyardSocket, sy(0), sy(1)),
            rules(Mode::IptablesLegacy),
            rules(Mode::IptablesNft),
            rules(Mode::Nftables),
        ];
        let sy_bytes = sy(0);
        for (mode, bytes, one) in rows {
            let name = if mode == Mode::SwitchyardSocket {
                "switchyard (maps)"
            } else {
                mode.name()
            };
            let Some(bytes) = bytes else {
                let _ = writeln!(
                    t,
                    "| {n} | {name} | {} | – | – | – | – |",
                    not_programmed(args, gave_up, mode, n)
                );
                continue;
            };
            // The split: per endpoint, then what a Service holds besides.
            let split = one.filter(|_| n >= 1000).map(|one| {
                let e = (bytes - one) / ((ENDPOINTS - 1) * n) as f64;
                (one / n as f64 - e, e)
            });
            let (s_csv, e_csv) = split.map_or((String::new(), String::new()), |(s, e)| {
                (format!("{s:.0}"), format!("{e:.0}"))
            });
            let one_csv = one.map_or_else(String::new, |b| format!("{b:.0}"));
            let _ = writeln!(csv, "{n},{name},{bytes:.0},{one_csv},{s_csv},{e_csv}");
            let ratio = sy_bytes
                .filter(|s| *s > 0.0)
                .map_or_else(|| "–".to_owned(), |s| format!("{:.1}x", bytes / s));
            let (s_md, e_md) = split.map_or(("–".to_owned(), "–".to_owned()), |(s, e)| {
                (format!("{s:.0}"), format!("{e:.0}"))
            });
            let _ = writeln!(
                t,
                "| {n} | {name} | {:.2} | {:.2} | {s_md} | {e_md} | {ratio} |",
                bytes / 1048576.0,
                bytes / n as f64 / 1024.0,
            );
        }
    }
    std::fs::write(args.out.join("services-memory.csv"), &csv)?;
    Ok(t)
}
