//! The node agent (`sy-node-agent`): kubelet's job, minimal. It registers
//! its Node and renews its Lease, watches the pods bound to it
//! (`spec.nodeName`), and runs each in a network namespace of its own
//! wired to the node (or in the node's, for `hostNetwork`), its containers
//! through an OCI runtime from a local image store, with env, volumes,
//! probes, restarts and graceful termination; it writes their status back
//! and serves `kubectl logs` and `kubectl exec` (proxied by the API server).
//!
//! ```text
//!  sy-apiserver ◄── Node, Lease, pod status ── Agent ── pods watch (spec.nodeName)
//!       │ pods/log, pods/exec                   │ one worker per pod (pod.rs)
//!       ▼                                       ▼
//!  server.rs (containerLogs, exec)      netns.rs · volumes.rs · runtime.rs (runc) · probe.rs
//! ```
//!
//! The agent's own threads stay in the namespace it was started in (where
//! the API server is reachable); `--node-netns` names the node's network
//! namespace, where pod veths, routes and host-network pods live.
pub mod authn;
pub mod env;
pub mod image;
pub mod ipam;
pub mod netns;
pub mod node;
pub mod pod;
pub mod probe;
pub mod runtime;
pub mod server;
pub mod status;
pub mod volumes;

use std::{
    collections::{BTreeMap, HashMap},
    net::Ipv4Addr,
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use kube::{
    Api, Client, ResourceExt as _,
    api::{DeleteParams, Preconditions},
    runtime::{WatchStreamExt as _, reflector, watcher},
};
use tokio::sync::watch;
use tracing::{info, warn};

/// How the agent is set up (the binary's flags).
#[derive(Clone, Debug)]
pub struct Options {
    pub node_name: String,
    /// The node's network namespace (a file: `/run/netns/<name>` or
    /// `/proc/self/ns/net`).
    pub node_netns: PathBuf,
    /// The node's address; default: the first address of the node's
    /// namespace that is neither loopback nor link-local.
    pub node_ip: Option<String>,
    /// Pods, logs, images and the runtime's state live here.
    pub root: PathBuf,
    /// The OCI runtime (`runc`).
    pub runtime: PathBuf,
    /// The cluster DNS Service's address (`--cluster-dns`), if any.
    pub cluster_dns: Option<String>,
    pub cluster_domain: String,
    /// Where the log/exec endpoint listens, and what the Node advertises.
    pub listen: std::net::SocketAddr,
    pub cpu: String,
    pub memory: String,
    pub max_pods: u32,
    pub labels: BTreeMap<String, String>,
    /// Used when node IPAM gives the Node no `podCIDR`.
    pub pod_cidr: Option<String>,
    pub lease_interval: Duration,
    pub status_interval: Duration,
}

/// What the log/exec endpoint knows of a container.
#[derive(Clone, Debug)]
pub struct ContainerView {
    pub name: String,
    /// The runtime's container id.
    pub id: String,
    pub running: bool,
    pub log: PathBuf,
    pub previous_log: Option<PathBuf>,
    pub waiting_reason: Option<String>,
}

/// What the log/exec endpoint knows of a pod.
#[derive(Clone, Debug)]
pub struct PodView {
    pub uid: String,
    pub containers: Vec<ContainerView>,
}

/// The agent's shared state.
pub struct Agent {
    pub opts: Options,
    pub client: Client,
    pub host_ip: String,
    pub runtime: runtime::Runtime,
    pub images: image::ImageStore,
    ipam: Mutex<Option<ipam::Ipam>>,
    services: reflector::Store<Service>,
    services_synced: AtomicBool,
    /// `(namespace, name)` → the pod's containers, for logs and exec.
    pub pods: Mutex<HashMap<(String, String), PodView>>,
    /// Who may use the log/exec endpoint.
    pub gate: authn::Gate,
}

impl Agent {
    /// Every Service the agent has seen (for Service env vars).
    pub fn services(&self) -> Vec<Service> {
        self.services
            .state()
            .iter()
            .map(|s| (**s).clone())
            .collect()
    }

    /// Whether the Service cache has been listed once.
    pub fn services_synced(&self) -> bool {
        self.services_synced.load(Ordering::SeqCst)
    }

    /// The next free pod address; an error until the Node has a podCIDR.
    pub fn allocate_ip(&self) -> Result<Ipv4Addr> {
        match self.ipam.lock().expect("ipam lock").as_mut() {
            Some(i) => i.allocate(),
            None => bail!("node {} has no podCIDR yet", self.opts.node_name),
        }
    }

    /// Takes `ip` (a pod that already had it); false if outside the range
    /// or the range is not known yet.
    pub fn claim_ip(&self, ip: Ipv4Addr) -> bool {
        match self.ipam.lock().expect("ipam lock").as_mut() {
            Some(i) if i.contains(ip) => {
                i.mark(ip);
                true
            }
            _ => false,
        }
    }

    /// Gives a pod address back.
    pub fn release_ip(&self, ip: Ipv4Addr) {
        if let Some(i) = self.ipam.lock().expect("ipam lock").as_mut() {
            i.release(ip);
        }
    }

    /// Records a pod's containers for the log/exec endpoint.
    pub fn update_view(&self, pod: &Pod, containers: &[ContainerView]) {
        self.pods.lock().expect("pods lock").insert(
            (pod.namespace().unwrap_or_default(), pod.name_any()),
            PodView {
                uid: pod.uid().unwrap_or_default(),
                containers: containers.to_vec(),
            },
        );
    }
}

/// Removes what a previous run of the agent left (containers, bundles,
/// pod namespaces and veths): pods are started afresh, as after a reboot.
async fn clean_leftovers(rt: &runtime::Runtime, opts: &Options) {
    for id in rt.list().await.unwrap_or_default() {
        let _ = rt.kill(&id, "KILL").await;
        let _ = rt.delete(&id).await;
    }
    let Ok(dirs) = std::fs::read_dir(opts.root.join("pods")) else {
        return;
    };
    for d in dirs.flatten() {
        let uid = d.file_name().to_string_lossy().into_owned();
        if let Ok(cs) = std::fs::read_dir(d.path().join("containers")) {
            for c in cs.flatten() {
                let _ = runtime::remove_bundle(&c.path());
            }
        }
        if let Ok(vs) = std::fs::read_dir(d.path().join("volumes")) {
            for v in vs.flatten() {
                if runtime::is_mountpoint(&v.path()) {
                    let _ = nix::mount::umount2(&v.path(), nix::mount::MntFlags::MNT_DETACH);
                }
            }
        }
        let host_if = netns::host_if_name(&uid);
        if let Err(e) = netns::unwire_pod(&opts.node_netns, &host_if) {
            warn!(%uid, error = %e, "removing a leftover veth");
        }
        let _ = netns::delete_netns(&format!("sypod-{uid}"));
        let _ = std::fs::remove_dir_all(d.path());
    }
}

/// Runs the agent until an error stops it.
pub async fn run(opts: Options, client: Client) -> Result<()> {
    netns::check_netns(&opts.node_netns)?;
    let host_ip = match &opts.node_ip {
        Some(ip) => ip.clone(),
        None => {
            let ns = opts.node_netns.clone();
            let addrs = tokio::task::spawn_blocking(move || netns::node_addresses(&ns)).await??;
            addrs.first().map(ToString::to_string).with_context(|| {
                format!(
                    "the node namespace {} has no address; pass --node-ip",
                    opts.node_netns.display()
                )
            })?
        }
    };
    std::fs::create_dir_all(&opts.root)?;
    let rt = runtime::Runtime {
        binary: opts.runtime.clone(),
        root: opts.root.join("runc"),
    };
    clean_leftovers(&rt, &opts).await;
    let listener = tokio::net::TcpListener::bind(opts.listen)
        .await
        .with_context(|| format!("listening on {}", opts.listen))?;
    let bound = listener.local_addr()?;
    let info = node::NodeInfo {
        name: opts.node_name.clone(),
        addresses: vec![host_ip.clone()],
        cpu: opts.cpu.clone(),
        memory: opts.memory.clone(),
        max_pods: opts.max_pods,
        labels: opts.labels.clone(),
        endpoint_host: bound.ip().to_string(),
        endpoint_port: bound.port(),
        lease_duration_seconds: 40,
    };
    let node_uid = node::register(&client, &info).await?;
    node::renew_lease(&client, &info, &node_uid).await?;
    info!(node = %opts.node_name, %host_ip, endpoint = %bound, "node registered");
    tokio::spawn(node::heartbeat(
        client.clone(),
        info,
        node_uid,
        opts.lease_interval,
        opts.status_interval,
    ));

    let (services, svc_writer) = reflector::store::<Service>();
    let agent = Arc::new(Agent {
        images: image::ImageStore::new(&opts.root.join("images")),
        opts: opts.clone(),
        client: client.clone(),
        host_ip,
        runtime: rt,
        ipam: Mutex::new(None),
        services,
        services_synced: AtomicBool::new(false),
        pods: Mutex::new(HashMap::new()),
        gate: authn::Gate::default(),
    });
    {
        let a = Arc::clone(&agent);
        let api: Api<Service> = Api::all(client.clone());
        tokio::spawn(async move {
            let mut s = watcher(api, watcher::Config::default())
                .default_backoff()
                .reflect(svc_writer)
                .boxed();
            while let Some(ev) = s.next().await {
                if let Ok(watcher::Event::InitDone) = ev {
                    a.services_synced.store(true, Ordering::SeqCst);
                }
            }
        });
    }
    tokio::spawn(pod_cidr_loop(Arc::clone(&agent)));
    tokio::spawn(server::serve(Arc::clone(&agent), listener));
    pods_loop(agent).await
}

/// Waits for the Node's podCIDR (node IPAM), then sets up the IPAM.
async fn pod_cidr_loop(agent: Arc<Agent>) {
    let nodes: Api<Node> = Api::all(agent.client.clone());
    loop {
        let cidr = match nodes.get_opt(&agent.opts.node_name).await {
            Ok(Some(n)) => n
                .spec
                .and_then(|s| s.pod_cidr)
                .or_else(|| agent.opts.pod_cidr.clone()),
            _ => agent.opts.pod_cidr.clone(),
        };
        if let Some(c) = cidr {
            match ipam::Ipam::new(&c) {
                Ok(i) => {
                    info!(cidr = %c, "pod CIDR");
                    *agent.ipam.lock().expect("ipam lock") = Some(i);
                    return;
                }
                Err(e) => warn!(error = %e, "unusable pod CIDR"),
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Watches the pods bound to this node; one worker task per pod UID.
async fn pods_loop(agent: Arc<Agent>) -> Result<()> {
    let api: Api<Pod> = Api::all(agent.client.clone());
    let cfg = watcher::Config::default().fields(&format!("spec.nodeName={}", agent.opts.node_name));
    let mut events = watcher(api, cfg).default_backoff().boxed();
    let mut workers: HashMap<String, watch::Sender<Option<Pod>>> = HashMap::new();
    let mut listing: Option<Vec<String>> = None;
    while let Some(ev) = events.next().await {
        let ev = match ev {
            Ok(ev) => ev,
            Err(e) => {
                warn!(error = %e, "pod watch");
                continue;
            }
        };
        match ev {
            watcher::Event::Init => listing = Some(Vec::new()),
            watcher::Event::InitApply(p) | watcher::Event::Apply(p) => {
                let uid = p.uid().unwrap_or_default();
                if let Some(l) = listing.as_mut() {
                    l.push(uid.clone());
                }
                workers.retain(|_, tx| !tx.is_closed());
                if let Some(tx) = workers.get(&uid) {
                    let _ = tx.send(Some(p));
                    continue;
                }
                let terminal = matches!(
                    p.status.as_ref().and_then(|s| s.phase.as_deref()),
                    Some("Succeeded" | "Failed")
                );
                if terminal {
                    // Finished before this agent started: nothing runs;
                    // finish a deletion.
                    if p.metadata.deletion_timestamp.is_some() {
                        final_delete(&agent, &p).await;
                    }
                    continue;
                }
                let (tx, rx) = watch::channel(Some(p));
                workers.insert(uid, tx);
                tokio::spawn(pod::run(Arc::clone(&agent), rx));
            }
            watcher::Event::Delete(p) => {
                if let Some(tx) = workers.remove(&p.uid().unwrap_or_default()) {
                    // A DELETED event carrying a graceful mark still gets
                    // its grace period (preStop, SIGTERM); otherwise the
                    // pod was force-deleted.
                    let graceful = p.metadata.deletion_timestamp.is_some()
                        && p.metadata.deletion_grace_period_seconds.unwrap_or(0) > 0;
                    info!(pod = %p.name_any(), graceful, "pod deleted from the API");
                    let _ = tx.send(graceful.then_some(p));
                }
            }
            watcher::Event::InitDone => {
                if let Some(seen) = listing.take() {
                    workers.retain(|uid, tx| {
                        let keep = seen.contains(uid);
                        if !keep {
                            let _ = tx.send(None);
                        }
                        keep
                    });
                }
            }
        }
    }
    bail!("the pod watch ended")
}

async fn final_delete(agent: &Agent, p: &Pod) {
    let api: Api<Pod> = Api::namespaced(agent.client.clone(), &p.namespace().unwrap_or_default());
    let dp = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(Preconditions {
            uid: p.uid(),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    if let Err(e) = api.delete(&p.name_any(), &dp).await
        && !crate::client::is_not_found(&e)
    {
        warn!(pod = %p.name_any(), error = %e, "final delete");
    }
}
