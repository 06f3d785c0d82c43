//! Hollow nodes (upstream's kubemark idea): the API side of a kubelet with
//! no containers behind it, for tests and benchmarks of the controllers and
//! the scheduler until the node agent exists.
//!
//! A hollow node registers its Node (capacity, `Ready=True`, the
//! `kubernetes.io/hostname` label), renews its Lease in `kube-node-lease`,
//! and for every pod bound to it: gives it the next address of the Node's
//! `podCIDR` and reports it `Running` with `Ready=True`; finishes graceful
//! deletions (deletes the pod with a zero grace period, as a kubelet does
//! once the containers have stopped). It never overwrites a status it has
//! written once, so a test can mark a pod not ready by writing its status.
//!
//! [`HollowNode::stop`] plays a dead machine: no more Lease renewals and
//! no more pod handling, until [`HollowNode::resume`].
use std::{
    collections::{BTreeMap, HashSet},
    net::Ipv4Addr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::{Context as _, Result};
use futures::StreamExt as _;
use k8s_openapi::{
    api::{
        coordination::v1::{Lease, LeaseSpec},
        core::v1::{Node, NodeCondition, NodeSpec, NodeStatus, Pod},
    },
    apimachinery::pkg::{
        api::resource::Quantity,
        apis::meta::v1::{MicroTime, ObjectMeta, Time},
    },
    jiff::Timestamp,
};
use kube::{
    Api, Client, ResourceExt as _,
    api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions},
    runtime::{WatchStreamExt as _, reflector, watcher},
};
use serde_json::json;
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use crate::client;

/// The address hollow nodes report as theirs (they are all this machine).
const HOST_IP: &str = "127.0.0.1";

/// What the node says of itself.
#[derive(Clone, Debug)]
pub struct Options {
    pub name: String,
    /// Allocatable CPU (a quantity: `4`, `500m`).
    pub cpu: String,
    /// Allocatable memory (`8Gi`).
    pub memory: String,
    /// Most pods (`--max-pods`, 110).
    pub max_pods: u32,
    /// Extra labels (e.g. `topology.kubernetes.io/zone`).
    pub labels: BTreeMap<String, String>,
    /// Pod addresses come from here when the Node has no `podCIDR` (one is
    /// normally given by the nodeipam controller).
    pub pod_cidr: Option<String>,
    /// `leaseDurationSeconds` (kubelet: 40).
    pub lease_duration_seconds: i32,
    /// Time between Lease renewals (kubelet: 10 s).
    pub renew_interval: Duration,
}

impl Options {
    /// Kubelet's defaults for a 4-CPU, 8 GiB node.
    pub fn new(name: &str) -> Self {
        Self {
            name: name.into(),
            cpu: "4".into(),
            memory: "8Gi".into(),
            max_pods: 110,
            labels: BTreeMap::new(),
            pod_cidr: None,
            lease_duration_seconds: 40,
            renew_interval: Duration::from_secs(10),
        }
    }
}

/// A running hollow node; its tasks end when it is dropped.
pub struct HollowNode {
    pub name: String,
    alive: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<()>>,
    client: Client,
}

impl Drop for HollowNode {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn ready_condition(now: Timestamp) -> NodeCondition {
    NodeCondition {
        type_: "Ready".into(),
        status: "True".into(),
        reason: Some("KubeletReady".into()),
        message: Some("kubelet is posting ready status".into()),
        last_heartbeat_time: Some(Time(now)),
        last_transition_time: Some(Time(now)),
    }
}

fn pressure(ty: &str, reason: &str, now: Timestamp) -> NodeCondition {
    NodeCondition {
        type_: ty.into(),
        status: "False".into(),
        reason: Some(reason.into()),
        message: None,
        last_heartbeat_time: Some(Time(now)),
        last_transition_time: Some(Time(now)),
    }
}

impl HollowNode {
    /// Registers the Node (or takes over an existing one of that name) and
    /// starts renewing its Lease and running its pods.
    pub async fn start(client: Client, opts: Options) -> Result<Self> {
        let nodes: Api<Node> = Api::all(client.clone());
        let mut labels = opts.labels.clone();
        labels.insert("kubernetes.io/hostname".into(), opts.name.clone());
        labels.insert("kubernetes.io/os".into(), "linux".into());
        labels.insert("kubernetes.io/arch".into(), "amd64".into());
        let q = |s: &str| Quantity(s.to_owned());
        let resources: BTreeMap<String, Quantity> = [
            ("cpu".to_owned(), q(&opts.cpu)),
            ("memory".to_owned(), q(&opts.memory)),
            ("pods".to_owned(), q(&opts.max_pods.to_string())),
        ]
        .into();
        let node = Node {
            metadata: ObjectMeta {
                name: Some(opts.name.clone()),
                labels: Some(labels),
                ..ObjectMeta::default()
            },
            spec: Some(NodeSpec::default()),
            status: None,
        };
        match nodes.create(&PostParams::default(), &node).await {
            Ok(_) => {}
            Err(e) if client::is_conflict(&e) => {}
            Err(e) => return Err(e).with_context(|| format!("registering node {}", opts.name)),
        }
        let now = Timestamp::now();
        let status = NodeStatus {
            capacity: Some(resources.clone()),
            allocatable: Some(resources),
            conditions: Some(vec![
                pressure("MemoryPressure", "KubeletHasSufficientMemory", now),
                pressure("DiskPressure", "KubeletHasNoDiskPressure", now),
                pressure("PIDPressure", "KubeletHasSufficientPID", now),
                ready_condition(now),
            ]),
            ..NodeStatus::default()
        };
        nodes
            .patch_status(
                &opts.name,
                &PatchParams::default(),
                &Patch::Merge(&json!({ "status": status })),
            )
            .await
            .with_context(|| format!("posting the status of node {}", opts.name))?;
        let alive = Arc::new(AtomicBool::new(true));
        let mut this = Self {
            name: opts.name.clone(),
            alive: Arc::clone(&alive),
            tasks: Vec::new(),
            client: client.clone(),
        };
        renew_lease(&client, &opts).await?;
        this.tasks.push(tokio::spawn(lease_loop(
            client.clone(),
            opts.clone(),
            Arc::clone(&alive),
        )));
        this.tasks.push(tokio::spawn(pod_loop(client, opts, alive)));
        Ok(this)
    }

    /// Plays a dead machine: the Lease is no longer renewed and pods are
    /// no longer handled.
    pub fn stop(&self) {
        self.alive.store(false, Ordering::SeqCst);
    }

    /// Comes back: renews the Lease and posts `Ready=True` again.
    pub async fn resume(&self) -> Result<()> {
        self.alive.store(true, Ordering::SeqCst);
        let nodes: Api<Node> = Api::all(self.client.clone());
        let patch = json!({"status": {"conditions": [ready_condition(Timestamp::now())]}});
        nodes
            .patch_status(
                &self.name,
                &PatchParams::default(),
                &Patch::Strategic(&patch),
            )
            .await?;
        Ok(())
    }
}

async fn renew_lease(client: &Client, opts: &Options) -> Result<()> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let now = MicroTime(Timestamp::now());
    match leases.get_opt(&opts.name).await? {
        Some(mut l) => {
            let spec = l.spec.get_or_insert_with(LeaseSpec::default);
            spec.renew_time = Some(now);
            spec.holder_identity = Some(opts.name.clone());
            spec.lease_duration_seconds = Some(opts.lease_duration_seconds);
            leases
                .replace(&opts.name, &PostParams::default(), &l)
                .await?;
        }
        None => {
            let l = Lease {
                metadata: ObjectMeta {
                    name: Some(opts.name.clone()),
                    namespace: Some("kube-node-lease".into()),
                    owner_references: None,
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(opts.name.clone()),
                    lease_duration_seconds: Some(opts.lease_duration_seconds),
                    renew_time: Some(now),
                    ..LeaseSpec::default()
                }),
            };
            leases.create(&PostParams::default(), &l).await?;
        }
    }
    Ok(())
}

async fn lease_loop(client: Client, opts: Options, alive: Arc<AtomicBool>) {
    loop {
        tokio::time::sleep(opts.renew_interval).await;
        if !alive.load(Ordering::SeqCst) {
            continue;
        }
        if let Err(e) = renew_lease(&client, &opts).await {
            warn!(node = %opts.name, error = %e, "lease renewal failed");
        }
    }
}

/// Hands out pod addresses from a CIDR: .2, .3, … (.1 is the gateway).
struct Ipam {
    base: u32,
    size: u32,
    used: HashSet<u32>,
}

impl Ipam {
    fn new(cidr: &str) -> Option<Self> {
        let (ip, len) = cidr.split_once('/')?;
        let ip: Ipv4Addr = ip.parse().ok()?;
        let len: u32 = len.parse().ok().filter(|l| *l <= 30)?;
        let size = 1u32 << (32 - len);
        Some(Self {
            base: u32::from(ip) & !(size - 1),
            size,
            used: HashSet::new(),
        })
    }

    fn mark(&mut self, ip: &str) {
        if let Ok(a) = ip.parse::<Ipv4Addr>() {
            let a = u32::from(a);
            if a >= self.base && a < self.base + self.size {
                self.used.insert(a - self.base);
            }
        }
    }

    fn next(&mut self) -> Option<String> {
        let off = (2..self.size - 1).find(|o| !self.used.contains(o))?;
        self.used.insert(off);
        Some(Ipv4Addr::from(self.base + off).to_string())
    }
}

async fn pod_loop(client: Client, opts: Options, alive: Arc<AtomicBool>) {
    let pods_all: Api<Pod> = Api::all(client.clone());
    let nodes: Api<Node> = Api::all(client.clone());
    let (store, writer) = reflector::store::<Pod>();
    let cfg = watcher::Config::default().fields(&format!("spec.nodeName={}", opts.name));
    let mut events = watcher(pods_all, cfg)
        .default_backoff()
        .reflect(writer)
        .boxed();
    let mut listed = false;
    let mut ipam: Option<Ipam> = None;
    // Pods whose status we wrote (the cache shows it a little later).
    let mut started: HashSet<String> = HashSet::new();
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    loop {
        tokio::select! {
            ev = events.next() => {
                match ev {
                    None => return,
                    Some(Ok(watcher::Event::InitDone)) => listed = true,
                    Some(Ok(_)) => {}
                    Some(Err(e)) => debug!(node = %opts.name, error = %e, "pod watch"),
                }
            }
            _ = tick.tick() => {}
        }
        if !alive.load(Ordering::SeqCst) || !listed {
            continue;
        }
        // Addresses come from the Node's podCIDR (or the fallback).
        if ipam.is_none() {
            let cidr = match nodes.get_opt(&opts.name).await {
                Ok(Some(n)) => n
                    .spec
                    .and_then(|s| s.pod_cidr)
                    .or_else(|| opts.pod_cidr.clone()),
                _ => opts.pod_cidr.clone(),
            };
            let Some(mut fresh) = cidr.as_deref().and_then(Ipam::new) else {
                continue;
            };
            for p in store.state() {
                if let Some(ip) = p.status.as_ref().and_then(|s| s.pod_ip.as_deref()) {
                    fresh.mark(ip);
                }
            }
            ipam = Some(fresh);
        }
        let pods = store.state();
        let present: HashSet<String> = pods.iter().filter_map(|p| p.uid()).collect();
        started.retain(|u| present.contains(u));
        for pod in pods {
            if let Err(e) = handle(&client, &opts, &mut ipam, &mut started, &pod).await {
                debug!(node = %opts.name, pod = %pod.name_any(), error = %e, "pod not handled yet");
            }
        }
    }
}

async fn handle(
    client: &Client,
    opts: &Options,
    ipam: &mut Option<Ipam>,
    started: &mut HashSet<String>,
    pod: &Pod,
) -> Result<()> {
    let ns = pod.namespace().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
    if pod.metadata.deletion_timestamp.is_some() {
        let dp = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: pod.uid(),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match api.delete(&pod.name_any(), &dp).await {
            Ok(_) => {}
            Err(e) if client::is_not_found(&e) || client::is_conflict(&e) => {}
            Err(e) => return Err(e.into()),
        }
        return Ok(());
    }
    let uid = pod.uid().unwrap_or_default();
    let running = pod.status.as_ref().is_some_and(|s| {
        s.pod_ip.is_some() || matches!(s.phase.as_deref(), Some("Running" | "Succeeded" | "Failed"))
    });
    if running || started.contains(&uid) {
        return Ok(());
    }
    // A host-network pod has the node's address.
    let host_network = pod.spec.as_ref().and_then(|s| s.host_network) == Some(true);
    let ip = if host_network {
        HOST_IP.to_owned()
    } else {
        let Some(ip) = ipam.as_mut().and_then(Ipam::next) else {
            anyhow::bail!("no free pod address on node {}", opts.name);
        };
        ip
    };
    let now = Time(Timestamp::now());
    let cond = |ty: &str| json!({"type": ty, "status": "True", "lastProbeTime": null, "lastTransitionTime": now});
    let containers: Vec<serde_json::Value> = pod
        .spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .map(|c| {
            json!({
                "name": c.name, "image": c.image.clone().unwrap_or_default(), "imageID": "",
                "ready": true, "started": true, "restartCount": 0,
                "containerID": format!("hollow://{}", uuid::Uuid::new_v4()),
                "state": {"running": {"startedAt": now}},
            })
        })
        .collect();
    let status = json!({"status": {
        "phase": "Running",
        "podIP": ip, "podIPs": [{"ip": ip}],
        "hostIP": HOST_IP, "hostIPs": [{"ip": HOST_IP}],
        "startTime": now,
        "conditions": [cond("PodReadyToStartContainers"), cond("Initialized"), cond("ContainersReady"), cond("Ready"), cond("PodScheduled")],
        "containerStatuses": containers,
    }});
    api.patch_status(
        &pod.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&status),
    )
    .await?;
    started.insert(uid);
    Ok(())
}
