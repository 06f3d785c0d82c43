//! `bench-cluster`: the cluster in a box, measured end to end (run as root;
//! `sy-cluster`, `switchyard` and the other components are siblings of this
//! binary: `cargo build --release --bins`).
//!
//! - **Up**: `sy-cluster up --nodes N` until it reports the box ready (every
//!   Node Ready with a podCIDR, every daemon healthy, DNS ready), and
//!   `sy-cluster down` after the run.
//! - **Pods**: `--pods-per-node` × N pods (the test image's `netprobe
//!   serve`) behind one Service, created through the API `--in-flight` at a
//!   time. Per pod, from its create request: `Running` and `Ready` as a pod
//!   watch sees them, and its IP in every node's Switchyard maps (polled
//!   every 50 ms with `switchyard inspect backends`). The baseline is the
//!   watch seeing `Ready`: what comes after it (the EndpointSlice
//!   controller, the daemons' watches and map writes) is what the ratio
//!   shows, split at the moment a watch sees the pod a ready endpoint of
//!   the Service's EndpointSlices.
//! - **Node agents**: CPU seconds (`/proc/<pid>/stat`) while the pods start
//!   and over 10 s idle after, against everything in the node's cgroup
//!   (runc, the containers, the daemon: `cpu.stat`); resident memory
//!   (`VmRSS`) before and at `--pods-per-node`.
use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::Command,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use clap::Parser;
use control_plane::client;
use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::{
    core::v1::{Pod, Service},
    discovery::v1::EndpointSlice,
};
use kube::{
    Api,
    api::PostParams,
    runtime::{WatchStreamExt as _, watcher},
};
use serde::Deserialize;
use serde_json::json;

#[derive(Parser)]
#[command(
    name = "bench-cluster",
    about = "The cluster in a box: up, pods to the dataplane, node-agent footprint"
)]
struct Args {
    /// Nodes of the box.
    #[arg(long, default_value_t = 2)]
    nodes: usize,
    /// Pods per node (the node agent admits 110).
    #[arg(long, default_value_t = 100)]
    pods_per_node: usize,
    /// Pod create requests in flight.
    #[arg(long, default_value_t = 8)]
    in_flight: usize,
    /// Seconds to wait for every pod to reach the dataplane.
    #[arg(long, default_value_t = 900)]
    timeout: u64,
}

/// What `sy-cluster up` recorded in its state file (the fields read here).
#[derive(Deserialize)]
struct StateFile {
    processes: Vec<ProcRec>,
    nodes: Vec<NodeRec>,
    kubeconfig: Option<PathBuf>,
}

#[derive(Deserialize)]
struct ProcRec {
    name: String,
    pid: i32,
}

#[derive(Deserialize)]
struct NodeRec {
    name: String,
    cgroup: PathBuf,
    pin_root: PathBuf,
}

/// A box made by `sy-cluster up` in a state directory of its own, taken
/// down (and the directory removed) on drop.
struct BoxCluster {
    sy_cluster: PathBuf,
    dir: PathBuf,
}

impl BoxCluster {
    fn sy(&self, args: &[&str]) -> Result<String> {
        let out = Command::new(&self.sy_cluster)
            .arg("--state-dir")
            .arg(&self.dir)
            .args(args)
            .output()
            .context("running sy-cluster")?;
        if !out.status.success() {
            bail!(
                "sy-cluster {} failed ({}): {}{}\nlogs: {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                self.dir.join("logs").display()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn state(&self) -> Result<StateFile> {
        let p = self.dir.join("state.json");
        serde_json::from_slice(&std::fs::read(&p).with_context(|| format!("{}", p.display()))?)
            .with_context(|| format!("parsing {}", p.display()))
    }
}

impl Drop for BoxCluster {
    fn drop(&mut self) {
        if let Err(e) = self.sy(&["down"]) {
            eprintln!("{e:#}");
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn sibling(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let path = exe.parent().context("no binary directory")?.join(name);
    if !path.exists() {
        bail!(
            "{} not found next to bench-cluster (cargo build --release --bins)",
            path.display()
        );
    }
    Ok(path)
}

/// CPU seconds used by process `pid` (utime + stime; USER_HZ is 100).
fn cpu_seconds(pid: i32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    let rest = stat.rsplit_once(") ").map(|(_, r)| r).unwrap_or_default();
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    Ok((ticks(11) + ticks(12)) / 100.0)
}

/// Resident memory of process `pid`, in MiB.
fn rss_mib(pid: i32) -> Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .context("no VmRSS")?;
    Ok(kb / 1024.0)
}

/// CPU seconds used by everything in cgroup `dir` (`cpu.stat` usage_usec).
fn cgroup_cpu_seconds(dir: &Path) -> Result<f64> {
    let p = dir.join("cpu.stat");
    let stat = std::fs::read_to_string(&p).with_context(|| format!("{}", p.display()))?;
    let usec = stat
        .lines()
        .find_map(|l| l.strip_prefix("usage_usec "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .context("no usage_usec")?;
    Ok(usec / 1e6)
}

/// The backend addresses in the maps under `pin_root`.
fn backends_in_maps(switchyard: &Path, pin_root: &Path) -> Result<Vec<String>> {
    let out = Command::new(switchyard)
        .arg("--pin-root")
        .arg(pin_root)
        .args(["inspect", "backends", "--json"])
        .output()?;
    if !out.status.success() {
        bail!(
            "switchyard inspect backends: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout)?;
    Ok(rows
        .iter()
        .filter_map(|r| Some(r["backend"].as_str()?.split(':').next()?.to_owned()))
        .collect())
}

/// What the run saw of one pod.
#[derive(Default, Clone)]
struct PodTimes {
    created: Option<Instant>,
    running: Option<Instant>,
    ready: Option<Instant>,
    ip: Option<String>,
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Sorted milliseconds from `from` to `to` of every pod that has both.
fn spans(
    pods: &HashMap<String, PodTimes>,
    from: impl Fn(&PodTimes) -> Option<Instant>,
    to: impl Fn(&PodTimes) -> Option<Instant>,
) -> Vec<f64> {
    let mut v: Vec<f64> = pods
        .values()
        .filter_map(|p| Some(to(p)?.checked_duration_since(from(p)?)?.as_secs_f64() * 1e3))
        .collect();
    v.sort_by(f64::total_cmp);
    v
}

fn pod_manifest(name: &str) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "bench"}},
        "spec": {"containers": [{
            "name": "serve",
            "image": "switchyard/testbed:1",
            "command": ["/bin/netprobe", "serve", "--name", name, "--port", "8080"],
        }]},
    }))
    .expect("a valid pod")
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    if !nix::unistd::geteuid().is_root() {
        bail!("bench-cluster makes namespaces and cgroups: run it as root");
    }
    let switchyard = sibling("switchyard")?;
    let dir = std::env::temp_dir().join(format!("bench-cluster-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let cluster = BoxCluster {
        sy_cluster: sibling("sy-cluster")?,
        dir,
    };
    let nodes = args.nodes.to_string();
    let started = Instant::now();
    cluster.sy(&["up", "--nodes", &nodes, "--prefix", "syb"])?;
    let up_s = started.elapsed().as_secs_f64();
    eprintln!("up in {up_s:.2} s");
    let state = cluster.state()?;
    let pid_of = |name: &str| {
        state
            .processes
            .iter()
            .find(|p| p.name == name)
            .map(|p| p.pid)
            .with_context(|| format!("no process {name} in the state file"))
    };
    let agents: Vec<i32> = state
        .nodes
        .iter()
        .map(|n| pid_of(&format!("sy-node-agent {}", n.name)))
        .collect::<Result<_>>()?;
    let kubeconfig = state.kubeconfig.clone().context("no kubeconfig")?;
    let client = client::connect(Some(&kubeconfig)).await?;
    let pods_api: Api<Pod> = Api::namespaced(client.clone(), "default");
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    services
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": "bench"},
                "spec": {"selector": {"app": "bench"}, "ports": [{"port": 80, "targetPort": 8080}]},
            }))?,
        )
        .await?;

    // Running, Ready and the IP of every pod, as a watch sees them.
    let pods: Arc<Mutex<HashMap<String, PodTimes>>> = Arc::default();
    let seen = Arc::clone(&pods);
    let watch = tokio::spawn(
        watcher(
            pods_api.clone(),
            watcher::Config::default().labels("app=bench"),
        )
        .applied_objects()
        .try_for_each(move |pod| {
            let now = Instant::now();
            let name = pod.metadata.name.clone().unwrap_or_default();
            let status = pod.status.unwrap_or_default();
            let mut pods = seen.lock().expect("lock");
            let t = pods.entry(name).or_default();
            if t.running.is_none() && status.phase.as_deref() == Some("Running") {
                t.running = Some(now);
            }
            let ready = status
                .conditions
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            if t.ready.is_none() && ready {
                t.ready = Some(now);
            }
            if t.ip.is_none() {
                t.ip = status.pod_ip;
            }
            futures::future::ready(Ok(()))
        }),
    );
    // When each IP is first a ready endpoint in the Service's slices.
    let in_slices: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let slices_seen = Arc::clone(&in_slices);
    let slice_watch = tokio::spawn(
        watcher(
            Api::<EndpointSlice>::namespaced(client.clone(), "default"),
            watcher::Config::default().labels("kubernetes.io/service-name=bench"),
        )
        .applied_objects()
        .try_for_each(move |slice| {
            let now = Instant::now();
            let mut seen = slices_seen.lock().expect("lock");
            for ep in &slice.endpoints {
                if ep.conditions.as_ref().and_then(|c| c.ready) == Some(true) {
                    for ip in &ep.addresses {
                        seen.entry(ip.clone()).or_insert(now);
                    }
                }
            }
            futures::future::ready(Ok(()))
        }),
    );
    // When each IP is first in every node's maps.
    let in_maps: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let poller = {
        let (in_maps, stop) = (Arc::clone(&in_maps), Arc::clone(&stop));
        let roots: Vec<PathBuf> = state.nodes.iter().map(|n| n.pin_root.clone()).collect();
        let switchyard = switchyard.clone();
        std::thread::spawn(move || -> Result<()> {
            while !stop.load(Ordering::Relaxed) {
                let mut counts: HashMap<String, usize> = HashMap::new();
                for root in &roots {
                    for ip in backends_in_maps(&switchyard, root)? {
                        *counts.entry(ip).or_default() += 1;
                    }
                }
                let now = Instant::now();
                let mut m = in_maps.lock().expect("lock");
                for (ip, n) in counts {
                    if n == roots.len() {
                        m.entry(ip).or_insert(now);
                    }
                }
                drop(m);
                std::thread::sleep(Duration::from_millis(50));
            }
            Ok(())
        })
    };

    let agent_cpu0: Vec<f64> = agents
        .iter()
        .map(|p| cpu_seconds(*p))
        .collect::<Result<_>>()?;
    let agent_rss0: Vec<f64> = agents.iter().map(|p| rss_mib(*p)).collect::<Result<_>>()?;
    let node_cpu0: Vec<f64> = state
        .nodes
        .iter()
        .map(|n| cgroup_cpu_seconds(&n.cgroup))
        .collect::<Result<_>>()?;
    let total = args.nodes * args.pods_per_node;
    eprintln!("creating {total} pods");
    let scale_started = Instant::now();
    futures::stream::iter((0..total).map(|i| {
        let (pods, api) = (Arc::clone(&pods), pods_api.clone());
        async move {
            let name = format!("bench-{i:04}");
            pods.lock()
                .expect("lock")
                .entry(name.clone())
                .or_default()
                .created = Some(Instant::now());
            api.create(&PostParams::default(), &pod_manifest(&name))
                .await
                .with_context(|| format!("creating pod {name}"))
        }
    }))
    .buffer_unordered(args.in_flight)
    .try_collect::<Vec<_>>()
    .await?;
    // Until every pod's IP is in every node's maps.
    let deadline = Instant::now() + Duration::from_secs(args.timeout);
    loop {
        let done = {
            let pods = pods.lock().expect("lock");
            let maps = in_maps.lock().expect("lock");
            pods.values()
                .filter(|p| p.ip.as_ref().is_some_and(|ip| maps.contains_key(ip)))
                .count()
        };
        if done == total {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "{done} of {total} pods reached the dataplane within {} s",
                args.timeout
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let scale_s = scale_started.elapsed().as_secs_f64();
    let agent_cpu1: Vec<f64> = agents
        .iter()
        .map(|p| cpu_seconds(*p))
        .collect::<Result<_>>()?;
    let agent_rss1: Vec<f64> = agents.iter().map(|p| rss_mib(*p)).collect::<Result<_>>()?;
    let node_cpu1: Vec<f64> = state
        .nodes
        .iter()
        .map(|n| cgroup_cpu_seconds(&n.cgroup))
        .collect::<Result<_>>()?;
    stop.store(true, Ordering::Relaxed);
    poller.join().expect("poller")?;
    // Idle at full load.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let agent_cpu2: Vec<f64> = agents
        .iter()
        .map(|p| cpu_seconds(*p))
        .collect::<Result<_>>()?;
    watch.abort();
    slice_watch.abort();

    let pods = pods.lock().expect("lock").clone();
    let maps = in_maps.lock().expect("lock").clone();
    let slices = in_slices.lock().expect("lock").clone();
    let in_dataplane = |p: &PodTimes| maps.get(p.ip.as_ref()?).copied();
    let in_slice = |p: &PodTimes| slices.get(p.ip.as_ref()?).copied();
    let running = spans(&pods, |p| p.created, |p| p.running);
    let ready = spans(&pods, |p| p.created, |p| p.ready);
    let dataplane = spans(&pods, |p| p.created, in_dataplane);
    let after_ready = spans(&pods, |p| p.ready, in_dataplane);
    let ready_to_slice = spans(&pods, |p| p.ready, in_slice);
    let slice_to_maps = spans(&pods, in_slice, in_dataplane);
    let down_started = Instant::now();
    drop(cluster);
    let down_s = down_started.elapsed().as_secs_f64();

    let n = args.nodes;
    println!(
        "#### Cluster in a box: {n} nodes, {} pods per node (bench-cluster)\n",
        args.pods_per_node
    );
    println!("| figure | value |\n|---|---|");
    println!("| `sy-cluster up` → ready (s) | {up_s:.2} |");
    println!("| `sy-cluster down` (s) | {down_s:.2} |");
    println!(
        "| {total} pods created → all in every node's maps (s) | {scale_s:.1} ({:.1} pods/s) |",
        total as f64 / scale_s
    );
    println!(
        "\n| per pod, from its create request (ms) | p50 | p99 | p50 vs Ready | p99 vs Ready |"
    );
    println!("|---|---|---|---|---|");
    let (r50, r99) = (pct(&ready, 0.5), pct(&ready, 0.99));
    for (what, v) in [
        ("Running (watch)", &running),
        ("Ready (watch; the baseline)", &ready),
        ("IP in every node's maps", &dataplane),
    ] {
        println!(
            "| {what} | {:.0} | {:.0} | {:.2}x | {:.2}x |",
            pct(v, 0.5),
            pct(v, 0.99),
            pct(v, 0.5) / r50,
            pct(v, 0.99) / r99
        );
    }
    for (what, v) in [
        ("Ready → in every node's maps", &after_ready),
        (
            "… of which Ready → ready in the EndpointSlice (watch)",
            &ready_to_slice,
        ),
        ("… and EndpointSlice → in every node's maps", &slice_to_maps),
    ] {
        println!("| {what} | {:.0} | {:.0} | | |", pct(v, 0.5), pct(v, 0.99));
    }
    println!(
        "\n| node | agent CPU while its pods started (s) | node cgroup CPU, same time (s) | agent share | agent CPU idle at {} pods (%) | agent RSS before → after (MiB) | per pod (KiB) |",
        args.pods_per_node
    );
    println!("|---|---|---|---|---|---|---|");
    for (i, node) in state.nodes.iter().enumerate() {
        let agent = agent_cpu1[i] - agent_cpu0[i];
        let whole = node_cpu1[i] - node_cpu0[i];
        println!(
            "| {} | {agent:.2} | {whole:.2} | {:.2}x | {:.2} | {:.1} → {:.1} | {:.0} |",
            node.name,
            agent / whole,
            (agent_cpu2[i] - agent_cpu1[i]) / 10.0 * 100.0,
            agent_rss0[i],
            agent_rss1[i],
            (agent_rss1[i] - agent_rss0[i]) * 1024.0 / args.pods_per_node as f64
        );
    }
    Ok(())
}
