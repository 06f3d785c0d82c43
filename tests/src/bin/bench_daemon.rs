//! `bench-daemon`: how fast the daemon turns API changes into map entries,
//! each figure beside a baseline measured in the same run.
//!
//! 1. EndpointSlice change → map write (p50/p99): a slice is replaced at the
//!    API server (kube-rs) and the pinned map polled until it holds the new
//!    backends. Baseline: the same change reaching a plain kube-rs watcher
//!    in this process, i.e. the floor of any watch-based proxy. Measured
//!    twice: a TCP Service with conntrack empty, and a UDP Service (each
//!    change removes a backend, so its UDP flows are flushed) with the
//!    conntrack map full (1,048,576 entries): the flush scans it on another
//!    thread, and the change's latency must not show it.
//! 2. Programming N Services × M endpoints on an empty node: objects are
//!    created first, then the daemon starts from empty pins; time until all
//!    frontends are in the maps (and the single sync's share of it).
//!    Baseline: kube-proxy's iptables-mode restore payload for the same
//!    objects (rendered by `switchyard::kubeproxy`), loaded with one
//!    `iptables-restore --noflush` into a fresh namespace.
//!
//! Run as root: `cargo run --release -p switchyard-tests --bin bench-daemon`.
use std::{
    collections::BTreeMap,
    path::Path,
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use clap::Parser;
use futures::{StreamExt as _, TryStreamExt as _, stream};
use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use kube::{
    Api, Client, Config,
    api::PostParams,
    config::{KubeConfigOptions, Kubeconfig},
    runtime::watcher,
};
use nix::sys::signal::Signal;
use switchyard::{
    datapath::MapSizes,
    desired::{self, NodeContext},
    kubeproxy::{RuleConfig, iptables},
};
use testbed::{
    cluster::{ApiServer, Daemon, TempDir},
    fs::PrivateBpffs,
    netns::Netns,
    privileges, unique_prefix,
};

#[derive(Parser)]
struct Args {
    /// Slice changes timed in part 1.
    #[arg(long, default_value_t = 200)]
    changes: usize,
    /// Services in part 2.
    #[arg(long, default_value_t = 10_000)]
    services: usize,
    /// Endpoints per Service in part 2.
    #[arg(long, default_value_t = 10)]
    endpoints: usize,
    /// Give up on the iptables-restore baseline after this many seconds
    /// (the row then reports a lower bound).
    #[arg(long, default_value_t = 900)]
    iptables_timeout: u64,
}

const NS: &str = "bench";

/// ClusterIP of Service `i`: from 10.96.1.0 up, clear of 10.96.0.1 (the
/// `kubernetes` Service's, which the API server allocates itself).
fn service_ip(i: usize) -> std::net::Ipv4Addr {
    (0x0a60_0100u32 + i as u32).into()
}

/// Address of endpoint `j` of Service `i` (`per_service` each): unique
/// across the table, in 10.128.0.0/10.
fn endpoint_ip(i: usize, j: usize, per_service: usize) -> std::net::Ipv4Addr {
    (0x0a80_0000u32 + 1 + (i * per_service + j) as u32).into()
}

/// Service `i` and its slice, as `create_table` sends them.
fn table_objects(i: usize, m: usize) -> Result<(Service, EndpointSlice)> {
    let name = format!("svc-{i}");
    let ips: Vec<_> = (0..m).map(|j| endpoint_ip(i, j, m)).collect();
    Ok((
        service_obj(&name, service_ip(i), "TCP")?,
        slice_obj(&format!("{name}-1"), &name, &ips, "TCP")?,
    ))
}

fn main() -> Result<()> {
    privileges::require();
    let args = Args::parse();
    let prefix = unique_prefix();
    let dir = TempDir::new(&prefix, "bench-daemon")?;
    let bpffs = PrivateBpffs::new(&prefix)?;
    let api_dir = dir.path().join("apiserver");
    std::fs::create_dir_all(&api_dir)?;
    let api = ApiServer::start(&api_dir, 0)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let client = rt.block_on(client(&api.kubeconfig()))?;
    rt.block_on(namespace(&client))?;
    let pin_root = bpffs.path().join("switchyard");
    let daemon_args = |services: usize, endpoints: usize| {
        let fit = |n: usize| u32::try_from(n + n / 10 + 1024).unwrap_or(u32::MAX);
        let sizes = MapSizes {
            frontends: fit(services),
            backends: fit(services * endpoints),
            backend_slots: fit(services * endpoints),
            ..MapSizes::small()
        };
        Daemon::base_args(&pin_root, &api.kubeconfig(), "bench-node", &sizes)
    };

    // Part 1: change → map write.
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    // Rows are printed as they are measured: a long baseline loses nothing.
    println!("| measurement | Switchyard | baseline | ratio |");
    println!("|---|---|---|---|");
    let full_ct = MapSizes::default().conntrack;
    for (what, proto, vip, fill) in [
        ("", "TCP", "10.96.200.1", 0),
        (", UDP, conntrack full", "UDP", "10.96.200.2", full_ct),
    ] {
        let mut sizes = daemon_args(16, 16)?;
        if fill > 0 {
            let i = sizes
                .iter()
                .position(|a| a == "--max-conntrack")
                .context("flag")?;
            sizes[i + 1] = fill.to_string();
        }
        let mut daemon = Daemon::start(sizes, &dir.path().join(format!("daemon-1{proto}.log")))?;
        daemon.wait_healthy(Duration::from_secs(30))?;
        if fill > 0 {
            fill_conntrack(&pin_root.join("maps"), fill)?;
        }
        let (to_map, to_watch) = rt.block_on(change_latency(
            &client,
            &pin_root,
            args.changes,
            proto,
            vip.parse()?,
        ))?;
        daemon.stop(Signal::SIGTERM)?;
        cleanup(&pin_root)?;
        for (label, q) in [("p50", 0.5), ("p99", 0.99)] {
            let (a, b) = (percentile(&to_map, q), percentile(&to_watch, q));
            println!(
                "| EndpointSlice change → map write{what}, {label} (ms, {} changes) | {:.2} | {:.2} (change → kube-rs watcher) | {:.2}x |",
                to_map.len(),
                ms(a),
                ms(b),
                ms(a) / ms(b)
            );
        }
    }

    // Part 2: N × M from an empty node.
    let (n, m) = (args.services, args.endpoints);
    let created = Instant::now();
    rt.block_on(create_table(&client, n, m))?;
    eprintln!(
        "created {n} Services and {n} EndpointSlices in {:.1}s",
        created.elapsed().as_secs_f64()
    );
    let log = dir.path().join("daemon-2.log");
    let started = Instant::now();
    let mut daemon = Daemon::start(daemon_args(n, m)?, &log)?;
    let target = (n + 3) as f64; // + the Services of part 1 and default/kubernetes
    loop {
        if daemon
            .metric("switchyard_programmed_frontends")
            .unwrap_or(0.0)
            >= target
        {
            break;
        }
        if started.elapsed() > Duration::from_secs(600) {
            bail!("not programmed after 10 minutes:\n{}", daemon.log());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let programmed = started.elapsed();
    let sync = longest_sync(&std::fs::read_to_string(&log)?);
    let rss = peak_rss_kib(daemon.pid())?;
    daemon.stop(Signal::SIGTERM)?;
    cleanup(&pin_root)?;
    println!(
        "| daemon peak RSS with {n} × {m} (MiB) | {:.1} | | |",
        rss as f64 / 1024.0
    );
    let (iptables, finished) =
        iptables_restore_time(&prefix, n, m, Duration::from_secs(args.iptables_timeout))?;
    let base = if finished {
        format!("{:.2}", iptables.as_secs_f64())
    } else {
        format!("> {:.0}", iptables.as_secs_f64())
    };
    let ratio = |d: Duration| {
        let r = d.as_secs_f64() / iptables.as_secs_f64();
        if finished {
            format!("{r:.3}x")
        } else {
            format!("< {r:.3}x")
        }
    };
    println!(
        "| {n} Services × {m} endpoints, daemon start → all in maps (s) | {:.2} | {base} (iptables-restore of kube-proxy's payload) | {} |",
        programmed.as_secs_f64(),
        ratio(programmed)
    );
    println!(
        "| {n} Services × {m} endpoints, the sync alone: compute + map writes (s) | {:.2} | {base} (iptables-restore) | {} |",
        sync.as_secs_f64(),
        ratio(sync)
    );
    Ok(())
}

async fn client(kubeconfig: &Path) -> Result<Client> {
    let kc = Kubeconfig::read_from(kubeconfig)?;
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
    Ok(Client::try_from(config)?)
}

async fn namespace(client: &Client) -> Result<()> {
    let api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    let ns = serde_json::from_value(serde_json::json!({"metadata": {"name": NS}}))?;
    api.create(&PostParams::default(), &ns).await?;
    Ok(())
}

fn service_obj(name: &str, vip: std::net::Ipv4Addr, proto: &str) -> Result<Service> {
    Ok(serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "namespace": NS},
        "spec": {"clusterIP": vip.to_string(), "ports": [{"name": "http", "port": 80, "protocol": proto, "targetPort": 8080}]}
    }))?)
}

/// Fills the pinned conntrack map with `n` UDP flows (random tuples, no
/// Service's), as a busy node's would be.
fn fill_conntrack(maps: &Path, n: u32) -> Result<()> {
    use proxy_common::ct::{CT_STATE_OPENED, Ct4Key, Ct4Value};
    let mut ct = switchyard::datapath::conntrack::Conntrack::from_pins(maps)?;
    let expires_s = switchyard::datapath::conntrack::now_s() + 3600;
    for i in 0..n {
        let key = Ct4Key {
            saddr_be: (0x0a80_0000u32 + (i >> 8)).to_be(),
            daddr_be: 0x0ac8_0001u32.to_be(),
            sport_be: (1024 + (i & 0xff) as u16).to_be(),
            dport_be: 53u16.to_be(),
            proto: 17,
            _pad: [0; 3],
        };
        let value = Ct4Value {
            saddr_be: key.saddr_be,
            daddr_be: key.daddr_be,
            sport_be: key.sport_be,
            dport_be: key.dport_be,
            expires_s,
            state: CT_STATE_OPENED,
            ..Ct4Value::default()
        };
        ct.insert(&key, &value)?;
    }
    Ok(())
}

fn slice_obj(
    name: &str,
    service: &str,
    ips: &[std::net::Ipv4Addr],
    proto: &str,
) -> Result<EndpointSlice> {
    let endpoints: Vec<_> = ips
        .iter()
        .map(|ip| serde_json::json!({"addresses": [ip.to_string()], "conditions": {"ready": true}}))
        .collect();
    Ok(serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "namespace": NS, "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": proto}],
        "endpoints": endpoints
    }))?)
}

/// Replaces a slice `changes` times; for each, the time from sending the
/// change to (a) the maps holding it and (b) a watcher seeing it.
async fn change_latency(
    client: &Client,
    pin_root: &Path,
    changes: usize,
    proto: &str,
    vip: std::net::Ipv4Addr,
) -> Result<(Vec<Duration>, Vec<Duration>)> {
    let services: Api<Service> = Api::namespaced(client.clone(), NS);
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), NS);
    let name = format!("latency-{}", proto.to_lowercase());
    let slice_name = format!("{name}-1");
    services
        .create(&PostParams::default(), &service_obj(&name, vip, proto)?)
        .await?;
    let ip = |k: usize| std::net::Ipv4Addr::from(0x0a01_0000u32 + k as u32);
    let mut slice = slices
        .create(
            &PostParams::default(),
            &slice_obj(&slice_name, &name, &[ip(0), ip(1)], proto)?,
        )
        .await?;
    // The baseline watcher: arrival time per resourceVersion.
    let seen: Arc<Mutex<BTreeMap<String, Instant>>> = Arc::default();
    let seen_w = Arc::clone(&seen);
    let watch_api = slices.clone();
    tokio::spawn(async move {
        let mut s = std::pin::pin!(watcher(watch_api, watcher::Config::default()));
        while let Ok(Some(ev)) = s.try_next().await {
            if let watcher::Event::Apply(o) = ev
                && let Some(rv) = o.metadata.resource_version
            {
                seen_w
                    .lock()
                    .unwrap()
                    .entry(rv)
                    .or_insert_with(Instant::now);
            }
        }
    });
    let maps = pin_root.join("maps");
    let frontend = format!("{vip}:80/{proto}");
    let wait_map = |want: String| -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let rows = switchyard::inspect::services(&maps)?;
            if rows
                .iter()
                .any(|r| r.frontend == frontend && r.backends.contains(&want))
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{want} never reached the maps");
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    };
    wait_map(format!("{}:8080/{proto}", ip(1)))?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (mut to_map, mut to_watch) = (Vec::new(), Vec::new());
    for k in 2..changes + 2 {
        let mut next = slice.clone();
        next.endpoints[1].addresses = vec![ip(k).to_string()];
        let sent = Instant::now();
        slice = slices
            .replace(&slice_name, &PostParams::default(), &next)
            .await?;
        tokio::task::block_in_place(|| wait_map(format!("{}:8080/{proto}", ip(k))))?;
        to_map.push(sent.elapsed());
        let rv = slice
            .metadata
            .resource_version
            .clone()
            .context("resourceVersion")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        let arrived = loop {
            if let Some(t) = seen.lock().unwrap().get(&rv) {
                break *t;
            }
            if Instant::now() > deadline {
                bail!("the watcher never saw {rv}");
            }
            tokio::time::sleep(Duration::from_micros(200)).await;
        };
        to_watch.push(arrived.duration_since(sent));
        // Let the system settle between samples.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    to_map.sort();
    to_watch.sort();
    Ok((to_map, to_watch))
}

async fn create_table(client: &Client, n: usize, m: usize) -> Result<()> {
    let services: Api<Service> = Api::namespaced(client.clone(), NS);
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), NS);
    stream::iter(0..n)
        .map(|i| {
            let (services, slices) = (services.clone(), slices.clone());
            async move {
                let (service, slice) = table_objects(i, m)?;
                services.create(&PostParams::default(), &service).await?;
                slices.create(&PostParams::default(), &slice).await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(16)
        .try_collect::<()>()
        .await
}

fn cleanup(pin_root: &Path) -> Result<()> {
    let out = Command::new(testbed::proc::sibling_binary("switchyard")?)
        .arg("--pin-root")
        .arg(pin_root)
        .arg("cleanup")
        .output()?;
    if !out.status.success() {
        bail!("cleanup: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// The longest `maps synced … elapsed_ms=X` the daemon logged.
fn longest_sync(log: &str) -> Duration {
    log.lines()
        .filter(|l| l.contains("maps synced"))
        .filter_map(|l| {
            l.split("elapsed_ms=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse::<f64>()
                .ok()
        })
        .fold(Duration::ZERO, |a, ms| {
            a.max(Duration::from_secs_f64(ms / 1e3))
        })
}

fn peak_rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("VmHWM")
}

/// kube-proxy's iptables-mode restore payload for the objects
/// `create_table(n, m)` makes, as its first (full) sync writes it.
fn kube_proxy_payload(n: usize, m: usize) -> Result<String> {
    let mut services = Vec::with_capacity(n);
    let mut slices = Vec::with_capacity(n);
    for i in 0..n {
        let (service, slice) = table_objects(i, m)?;
        services.push(Arc::new(service));
        slices.push(Arc::new(slice));
    }
    let out = desired::compute(&services, &slices, &NodeContext::default());
    if !out.skipped.is_empty() {
        bail!("invalid bench objects: {:?}", &out.skipped[..1]);
    }
    let cfg = RuleConfig {
        local_detector: Some("10.128.0.0/10".parse()?),
        ..RuleConfig::default()
    };
    Ok(iptables::render(&out.service_ports, &cfg, &Default::default()).text)
}

/// One `iptables-restore --noflush` of kube-proxy's payload for the same
/// table, in a fresh network namespace.
/// Returns the time taken and whether it finished within `limit` (if not,
/// the process is ended by its PID and the limit is a lower bound).
fn iptables_restore_time(
    prefix: &str,
    n: usize,
    m: usize,
    limit: Duration,
) -> Result<(Duration, bool)> {
    let ns = Netns::new(&format!("{prefix}-ipt"))?;
    let payload = kube_proxy_payload(n, m)?;
    let started = Instant::now();
    let mut child = Command::new("ip")
        .args([
            "netns",
            "exec",
            ns.name(),
            "iptables-restore",
            "--noflush",
            "-w",
            "5",
        ])
        .stdin(Stdio::piped())
        .spawn()?;
    std::io::Write::write_all(
        &mut child.stdin.take().context("stdin")?,
        payload.as_bytes(),
    )?;
    loop {
        if let Some(status) = child.try_wait()? {
            let took = started.elapsed();
            if !status.success() {
                bail!("iptables-restore failed ({status})");
            }
            return Ok((took, true));
        }
        if started.elapsed() > limit {
            child.kill()?;
            child.wait()?;
            return Ok((started.elapsed(), false));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}
