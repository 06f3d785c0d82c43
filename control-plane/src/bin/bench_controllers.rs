//! `bench-controllers`: the controllers' costs, each next to a baseline
//! taken in the same run. It starts `sy-apiserver`, `sy-controller-manager`
//! (every controller) and `sy-scheduler` (siblings of this binary) and plays
//! `--nodes` kubelets with hollow nodes in this process.
//!
//! - **Readiness → slice**: a pod's `Ready` condition flipped `--changes`
//!   times; p50/p99 from the status write until the EndpointSlice shows the
//!   endpoint's new `ready`, against a plain pod watcher seeing the status
//!   change (the least any consumer can wait).
//! - **Scale 0 → `--scale`**: a Deployment behind a Service scaled up; time
//!   until every pod is bound and until every pod is a ready endpoint in the
//!   slices, against creating as many bare pods through the API (8 in
//!   flight, not scheduled).
//! - **At `--pods` pods**: CPU seconds of the controller manager, the
//!   scheduler and the API server (from `/proc/<pid>/stat`, processes this
//!   program started) while scaling there and over 10 s idle after, and
//!   their resident memory (`VmRSS`) — the API server's being the baseline.
use std::{
    collections::HashMap,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use clap::Parser;
use control_plane::{
    client,
    hollow_node::{HollowNode, Options},
    local_etcd::LocalEtcd,
};
use futures::{StreamExt as _, future::join_all};
use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::{Pod, Service},
    discovery::v1::EndpointSlice,
};
use kube::{
    Api, Client, ResourceExt as _,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
    runtime::{WatchStreamExt as _, watcher},
};
use serde_json::json;

#[derive(Parser)]
#[command(
    name = "bench-controllers",
    about = "Controller latency, scale-up time and footprint"
)]
struct Args {
    /// Readiness changes measured.
    #[arg(long, default_value_t = 200)]
    changes: usize,
    /// Pods in the scale-up measurement.
    #[arg(long, default_value_t = 1000)]
    scale: usize,
    /// Pods at which CPU and memory are taken.
    #[arg(long, default_value_t = 10_000)]
    pods: usize,
    /// Hollow nodes.
    #[arg(long, default_value_t = 20)]
    nodes: usize,
    /// `embedded` or `etcd` (an etcd from Debian's `etcd-server`, started for the run).
    #[arg(long, default_value = "embedded")]
    backend: String,
}

/// A process this program started, killed (by PID) on drop.
struct Proc {
    child: Child,
    name: &'static str,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// CPU seconds used so far (utime + stime; USER_HZ is 100 on Linux).
    fn cpu_seconds(&self) -> Result<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid()))
            .with_context(|| format!("reading /proc/{}/stat of {}", self.pid(), self.name))?;
        // Fields after the parenthesised command name; utime and stime are
        // the 14th and 15th fields of the line.
        let rest = stat.rsplit_once(") ").map(|(_, r)| r).unwrap_or_default();
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        Ok((ticks(11) + ticks(12)) / 100.0)
    }

    /// Resident memory in MiB.
    fn rss_mib(&self) -> Result<f64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .with_context(|| format!("reading /proc/{}/status of {}", self.pid(), self.name))?;
        let kb = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
            .unwrap_or(0.0);
        Ok(kb / 1024.0)
    }
}

fn sibling(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let path = exe.parent().context("no binary directory")?.join(name);
    if !path.exists() {
        bail!(
            "{} not found next to bench-controllers (build the control-plane binaries first)",
            path.display()
        );
    }
    Ok(path)
}

fn start_server(dir: &Path, etcd: Option<&str>) -> Result<(Proc, PathBuf)> {
    let mut cmd = Command::new(sibling("sy-apiserver")?);
    cmd.args(["--listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(dir.join("data"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.join("apiserver.log"))?);
    if let Some(e) = etcd {
        cmd.args(["--etcd-servers", e]);
    }
    let mut child = cmd.spawn().context("starting sy-apiserver")?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().context("no stdout")?).read_line(&mut line)?;
    if !line.starts_with("listening on ") {
        bail!("sy-apiserver said {line:?}");
    }
    Ok((
        Proc {
            child,
            name: "sy-apiserver",
        },
        dir.join("data/admin.kubeconfig"),
    ))
}

fn start(name: &'static str, kubeconfig: &Path, dir: &Path) -> Result<Proc> {
    let child = Command::new(sibling(name)?)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .arg("--leader-elect=false")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join(format!("{name}.log")))?)
        .spawn()
        .with_context(|| format!("starting {name}"))?;
    Ok(Proc { child, name })
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let dir = std::env::temp_dir().join(format!("sy-bench-controllers-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let result = run(&args, &dir).await;
    if result.is_err() {
        eprintln!("logs kept in {}", dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

async fn run(args: &Args, dir: &Path) -> Result<()> {
    let etcd = match args.backend.as_str() {
        "embedded" => None,
        "etcd" => Some(LocalEtcd::start()?),
        other => bail!("--backend `{other}`: expected embedded or etcd"),
    };
    let (server, kubeconfig) = start_server(dir, etcd.as_ref().map(|e| e.endpoint.as_str()))?;
    let client = client::connect(Some(&kubeconfig)).await?;
    let manager = start("sy-controller-manager", &kubeconfig, dir)?;
    let scheduler = start("sy-scheduler", &kubeconfig, dir)?;
    let mut nodes = Vec::new();
    let per_node = (args.pods.max(args.scale) / args.nodes.max(1) + 100) as u32;
    for i in 0..args.nodes {
        let mut o = Options::new(&format!("node-{i}"));
        o.max_pods = per_node;
        o.pod_cidr = Some(format!("10.{}.{}.0/20", 64 + i / 16, (i % 16) * 16));
        // A separate client per node, as kubelets have.
        let c = client::connect(Some(&kubeconfig)).await?;
        nodes.push(HollowNode::start(c, o).await?);
    }
    println!(
        "bench-controllers: {} hollow nodes, backend {}, {} CPUs",
        args.nodes,
        args.backend,
        std::thread::available_parallelism().map_or(0, usize::from)
    );

    readiness(&client, args.changes).await?;
    scale_up(&client, args.scale).await?;
    footprint(&client, args.pods, &server, &manager, &scheduler).await?;
    drop(nodes);
    Ok(())
}

fn service(name: &str) -> Service {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"selector": {"app": name}, "ports": [{"port": 80, "targetPort": 8080}]},
    }))
    .expect("a Service")
}

fn deployment(name: &str, replicas: usize) -> Deployment {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "strategy": {"type": "Recreate"},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "c", "image": "registry.example/c:1",
                    "ports": [{"containerPort": 8080}]}]},
            },
        },
    }))
    .expect("a Deployment")
}

/// Per pod name: whether its endpoint is ready, from the Service's slices.
fn slice_readiness(slices: &[Arc<EndpointSlice>]) -> HashMap<String, bool> {
    let mut out = HashMap::new();
    for s in slices {
        for e in &s.endpoints {
            if let Some(name) = e.target_ref.as_ref().and_then(|t| t.name.clone()) {
                let ready = e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(false);
                out.insert(name, ready);
            }
        }
    }
    out
}

/// Watches the slices of Service `svc`, keeping the readiness of each pod's
/// endpoint and when it last changed.
fn watch_slices(client: &Client, svc: &str) -> Arc<Mutex<HashMap<String, (bool, Instant)>>> {
    let state: Arc<Mutex<HashMap<String, (bool, Instant)>>> = Arc::default();
    let api: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    let cfg = watcher::Config::default().labels(&format!("kubernetes.io/service-name={svc}"));
    let (reader, writer) = kube::runtime::reflector::store();
    let st = Arc::clone(&state);
    tokio::spawn(async move {
        let mut events = kube::runtime::reflector(writer, watcher(api, cfg))
            .default_backoff()
            .boxed();
        while let Some(e) = events.next().await {
            if e.is_err() {
                continue;
            }
            let now = Instant::now();
            let cur = slice_readiness(&reader.state());
            let mut s = st.lock().expect("state");
            s.retain(|k, _| cur.contains_key(k));
            for (name, ready) in cur {
                match s.get(&name) {
                    Some((r, _)) if *r == ready => {}
                    _ => {
                        s.insert(name, (ready, now));
                    }
                }
            }
        }
    });
    state
}

/// Watches pods labelled `app=<app>`: Ready, bound, and when Ready changed.
#[derive(Clone, Default)]
struct PodView {
    ready: HashMap<String, (bool, Instant)>,
    bound: HashMap<String, bool>,
}

fn watch_pods(client: &Client, app: &str) -> Arc<Mutex<PodView>> {
    let state: Arc<Mutex<PodView>> = Arc::default();
    let api: Api<Pod> = Api::namespaced(client.clone(), "default");
    let cfg = watcher::Config::default().labels(&format!("app={app}"));
    let st = Arc::clone(&state);
    tokio::spawn(async move {
        let mut events = watcher(api, cfg).default_backoff().boxed();
        while let Some(e) = events.next().await {
            let now = Instant::now();
            let mut s = st.lock().expect("state");
            let mut apply = |p: &Pod| {
                let name = p.name_any();
                let ready = p
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
                if s.ready.get(&name).is_none_or(|(r, _)| *r != ready) {
                    s.ready.insert(name.clone(), (ready, now));
                }
                let bound = p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some();
                s.bound.insert(name, bound);
            };
            match e {
                Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) => apply(&p),
                Ok(watcher::Event::Delete(p)) => {
                    s.ready.remove(&p.name_any());
                    s.bound.remove(&p.name_any());
                }
                _ => {}
            }
        }
    });
    state
}

async fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) -> Result<Duration> {
    let start = Instant::now();
    while !f() {
        if start.elapsed() > limit {
            bail!("timed out after {limit:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Ok(start.elapsed())
}

async fn readiness(client: &Client, changes: usize) -> Result<()> {
    const N: usize = 10;
    let svcs: Api<Service> = Api::namespaced(client.clone(), "default");
    let deps: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    svcs.create(&PostParams::default(), &service("lat")).await?;
    let slices = watch_slices(client, "lat");
    let view = watch_pods(client, "lat");
    deps.create(&PostParams::default(), &deployment("lat", N))
        .await?;
    wait_for(
        "10 ready endpoints of lat",
        Duration::from_secs(120),
        || {
            let s = slices.lock().expect("state");
            s.len() == N && s.values().all(|(r, _)| *r)
        },
    )
    .await?;
    let names: Vec<String> = slices.lock().expect("state").keys().cloned().collect();
    let (mut base, mut ours) = (Vec::new(), Vec::new());
    for i in 0..changes {
        let name = &names[i % N];
        let pod = pods.get_status(name).await?;
        let ready = !view.lock().expect("state").ready[name].0;
        let status = if ready { "True" } else { "False" };
        let mut conditions = serde_json::to_value(
            pod.status
                .as_ref()
                .and_then(|s| s.conditions.clone())
                .unwrap_or_default(),
        )?;
        for c in conditions.as_array_mut().into_iter().flatten() {
            if c["type"] == "Ready" || c["type"] == "ContainersReady" {
                c["status"] = json!(status);
                c["lastTransitionTime"] = json!(
                    k8s_openapi::jiff::Timestamp::now()
                        .round(k8s_openapi::jiff::Unit::Second)?
                        .to_string()
                );
            }
        }
        let t0 = Instant::now();
        pods.patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(&json!({"status": {"conditions": conditions}})),
        )
        .await?;
        wait_for("the pod watcher", Duration::from_secs(30), || {
            view.lock()
                .expect("state")
                .ready
                .get(name)
                .is_some_and(|(r, _)| *r == ready)
        })
        .await?;
        wait_for("the slice", Duration::from_secs(30), || {
            slices
                .lock()
                .expect("state")
                .get(name)
                .is_some_and(|(r, _)| *r == ready)
        })
        .await?;
        let seen = view.lock().expect("state").ready[name].1;
        let sliced = slices.lock().expect("state")[name].1;
        base.push(ms(seen.saturating_duration_since(t0)));
        ours.push(ms(sliced.saturating_duration_since(t0)));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    base.sort_by(f64::total_cmp);
    ours.sort_by(f64::total_cmp);
    println!("\nreadiness change → EndpointSlice ({changes} changes)");
    println!(
        "  slice updated        p50 {:7.2} ms  p99 {:7.2} ms",
        pct(&ours, 0.5),
        pct(&ours, 0.99)
    );
    println!(
        "  baseline: pod watch  p50 {:7.2} ms  p99 {:7.2} ms",
        pct(&base, 0.5),
        pct(&base, 0.99)
    );
    println!(
        "  ratio                p50 {:7.2}x    p99 {:7.2}x",
        pct(&ours, 0.5) / pct(&base, 0.5),
        pct(&ours, 0.99) / pct(&base, 0.99)
    );
    deps.delete("lat", &DeleteParams::foreground()).await?;
    Ok(())
}

async fn scale_up(client: &Client, n: usize) -> Result<()> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    // Baseline: n bare pods through the API, 8 in flight, left unscheduled.
    let bare = |i: usize| -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": format!("bare-{i}"), "labels": {"bench": "bare"}},
            "spec": {"schedulerName": "nobody",
                "containers": [{"name": "c", "image": "registry.example/c:1"}]},
        }))
        .expect("a Pod")
    };
    let t0 = Instant::now();
    let pp = PostParams::default();
    for chunk in (0..n).collect::<Vec<_>>().chunks(8) {
        let batch: Vec<Pod> = chunk.iter().map(|i| bare(*i)).collect();
        for r in join_all(batch.iter().map(|p| pods.create(&pp, p))).await {
            r?;
        }
    }
    let baseline = t0.elapsed();
    pods.delete_collection(
        &DeleteParams::default(),
        &ListParams::default().labels("bench=bare"),
    )
    .await?;

    let svcs: Api<Service> = Api::namespaced(client.clone(), "default");
    let deps: Api<Deployment> = Api::namespaced(client.clone(), "default");
    svcs.create(&PostParams::default(), &service("big")).await?;
    let slices = watch_slices(client, "big");
    let view = watch_pods(client, "big");
    deps.create(&PostParams::default(), &deployment("big", 0))
        .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let t0 = Instant::now();
    set_replicas(&deps, "big", n).await?;
    let limit = Duration::from_secs(600);
    wait_for("every pod bound", limit, || {
        let v = view.lock().expect("state");
        v.bound.values().filter(|b| **b).count() >= n
    })
    .await?;
    let bound = t0.elapsed();
    wait_for("every pod a ready endpoint", limit, || {
        let s = slices.lock().expect("state");
        s.values().filter(|(r, _)| *r).count() >= n
    })
    .await?;
    let sliced = t0.elapsed();
    println!(
        "\nDeployment scaled 0 → {n} pods ({} s to create them bare)",
        fmt_s(baseline)
    );
    println!(
        "  all bound            {:>8} s  ({:.2}x the bare creates)",
        fmt_s(bound),
        bound.as_secs_f64() / baseline.as_secs_f64()
    );
    println!(
        "  all ready in slices  {:>8} s  ({:.2}x the bare creates)",
        fmt_s(sliced),
        sliced.as_secs_f64() / baseline.as_secs_f64()
    );
    Ok(())
}

/// Scales Deployment `name` to `n` replicas (a merge patch, as `kubectl
/// scale` writes it).
async fn set_replicas(deps: &Api<Deployment>, name: &str, n: usize) -> Result<()> {
    deps.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(&json!({"spec": {"replicas": n}})),
    )
    .await?;
    Ok(())
}

fn fmt_s(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64())
}

async fn footprint(
    client: &Client,
    n: usize,
    server: &Proc,
    manager: &Proc,
    scheduler: &Proc,
) -> Result<()> {
    let procs = [manager, scheduler, server];
    let before: Vec<f64> = procs
        .iter()
        .map(|p| p.cpu_seconds())
        .collect::<Result<_>>()?;
    let deps: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let slices = watch_slices(client, "big");
    let t0 = Instant::now();
    set_replicas(&deps, "big", n).await?;
    wait_for(
        &format!("{n} ready endpoints"),
        Duration::from_secs(1800),
        || {
            let s = slices.lock().expect("state");
            s.values().filter(|(r, _)| *r).count() >= n
        },
    )
    .await?;
    let took = t0.elapsed();
    let scaled: Vec<f64> = procs
        .iter()
        .map(|p| p.cpu_seconds())
        .collect::<Result<_>>()?;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let idle: Vec<f64> = procs
        .iter()
        .map(|p| p.cpu_seconds())
        .collect::<Result<_>>()?;
    let rss: Vec<f64> = procs.iter().map(|p| p.rss_mib()).collect::<Result<_>>()?;
    println!(
        "\nat {n} pods (scaled up in {} s; CPU seconds while scaling, CPU % over 10 s idle, RSS)",
        fmt_s(took)
    );
    let names = [
        "sy-controller-manager",
        "sy-scheduler",
        "sy-apiserver (baseline)",
    ];
    for (i, name) in names.iter().enumerate() {
        println!(
            "  {name:<24} {:8.2} s  {:6.2} %  {:8.1} MiB  ({:.2}x / {:.2}x the API server)",
            scaled[i] - before[i],
            (idle[i] - scaled[i]) * 10.0,
            rss[i],
            (scaled[i] - before[i]) / (scaled[2] - before[2]),
            rss[i] / rss[2],
        );
    }
    Ok(())
}
