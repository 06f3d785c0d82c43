//! A control plane for controller tests: a real `sy-apiserver` (either
//! store), `sy-controller-manager` and `sy-scheduler` processes, and hollow
//! nodes in this process playing the kubelets (Nodes, Leases, pod status),
//! as upstream's integration tests do.
#![allow(dead_code, reason = "each test file uses a subset")]

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use control_plane::hollow_node::{HollowNode, Options};
use k8s_openapi::api::{
    core::v1::{Pod, Service},
    discovery::v1::EndpointSlice,
};
use kube::{
    Api, Client, Config, ResourceExt as _,
    api::ListParams,
    config::{KubeConfigOptions, Kubeconfig},
};

use super::common::{Backend, Kubectl, Server, kubectl_dispatcher, venv};

/// A controller-manager or scheduler process, killed (by PID) on drop.
pub struct Proc {
    pub child: Child,
    pub log: PathBuf,
}

impl Proc {
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL, as a crash.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

pub struct Plane {
    pub server: Server,
    pub rt: tokio::runtime::Runtime,
    pub client: Client,
    pub nodes: Vec<HollowNode>,
    pub procs: Vec<Proc>,
    pub dir: tempfile::TempDir,
    pub kubectl: Kubectl,
    /// Give nodes a fallback pod CIDR (off when nodeipam hands them out).
    pub fallback_cidrs: bool,
}

impl Plane {
    /// A server on `backend` and `nodes` hollow nodes `node-1`…
    pub fn start(backend: Backend, nodes: usize) -> Self {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_env("TEST_LOG")
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
            )
            .with_test_writer()
            .try_init();
        let dir = tempfile::tempdir().unwrap();
        let server = Server::start_on(backend, &dir.path().join("data"));
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let kubeconfig = server.kubeconfig();
        let client = rt.block_on(async {
            let kc = Kubeconfig::read_from(&kubeconfig).unwrap();
            let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .unwrap();
            Client::try_from(config).unwrap()
        });
        let kubectl = Kubectl::new(kubectl_dispatcher(), &server, &dir.path().join("home"));
        let mut plane = Self {
            server,
            rt,
            client,
            nodes: Vec::new(),
            procs: Vec::new(),
            dir,
            kubectl,
            fallback_cidrs: true,
        };
        for i in 1..=nodes {
            plane.add_node(Options::new(&format!("node-{i}")));
        }
        plane
    }

    /// Registers one more hollow node (a fallback pod CIDR by its index).
    pub fn add_node(&mut self, mut opts: Options) {
        let i = self.nodes.len() + 1;
        if opts.pod_cidr.is_none() && self.fallback_cidrs {
            opts.pod_cidr = Some(format!("10.244.{i}.0/24"));
        }
        opts.renew_interval = Duration::from_secs(1);
        let node = self
            .rt
            .block_on(HollowNode::start(self.client.clone(), opts))
            .expect("hollow node");
        self.nodes.push(node);
    }

    fn spawn(&mut self, bin: &str, name: &str, args: &[&str]) -> usize {
        let log = self
            .dir
            .path()
            .join(format!("{name}-{}.log", self.procs.len()));
        let child = Command::new(bin)
            .arg("--kubeconfig")
            .arg(self.server.kubeconfig())
            .args(args)
            .env(
                "RUST_LOG",
                std::env::var("PLANE_LOG").unwrap_or_else(|_| "info,control_plane=debug".into()),
            )
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("start {bin}: {e}"));
        self.procs.push(Proc { child, log });
        self.procs.len() - 1
    }

    /// Starts `sy-controller-manager` with `args` (no leader election
    /// unless `args` asks for it); returns its index in `procs`.
    pub fn start_manager(&mut self, args: &[&str]) -> usize {
        let mut a: Vec<&str> = Vec::new();
        if !args.iter().any(|x| x.starts_with("--leader-elect")) {
            a.push("--leader-elect=false");
        }
        a.extend_from_slice(args);
        self.spawn(env!("CARGO_BIN_EXE_sy-controller-manager"), "manager", &a)
    }

    /// Starts `sy-scheduler` (no leader election).
    pub fn start_scheduler(&mut self) -> usize {
        self.spawn(
            env!("CARGO_BIN_EXE_sy-scheduler"),
            "scheduler",
            &["--leader-elect=false"],
        )
    }

    /// Every process log, for failure messages.
    pub fn logs(&self) -> String {
        self.procs
            .iter()
            .map(|p| {
                let log = p.log();
                let tail: Vec<&str> = log.lines().rev().take(40).collect();
                format!(
                    "--- {} ---\n{}",
                    p.log.display(),
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Polls `f` every 100 ms until it gives a value, or panics after
    /// `limit` naming `what` (with the processes' logs).
    pub fn wait<T>(&self, what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
        let start = Instant::now();
        loop {
            if let Some(v) = f() {
                return v;
            }
            if start.elapsed() > limit {
                panic!(
                    "timed out after {limit:?} waiting for {what}\n{}",
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Pods in `ns` matching a label selector.
    pub fn pods(&self, ns: &str, selector: &str) -> Vec<Pod> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        self.rt
            .block_on(api.list(&ListParams::default().labels(selector)))
            .unwrap()
            .items
    }

    /// Pods that are not being deleted.
    pub fn live_pods(&self, ns: &str, selector: &str) -> Vec<Pod> {
        self.pods(ns, selector)
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .collect()
    }

    /// The EndpointSlices of a Service (by the service-name label).
    pub fn slices(&self, ns: &str, svc: &str) -> Vec<EndpointSlice> {
        let api: Api<EndpointSlice> = Api::namespaced(self.client.clone(), ns);
        self.rt
            .block_on(
                api.list(
                    &ListParams::default().labels(&format!("kubernetes.io/service-name={svc}")),
                ),
            )
            .unwrap()
            .items
    }

    pub fn service(&self, ns: &str, name: &str) -> Service {
        let api: Api<Service> = Api::namespaced(self.client.clone(), ns);
        self.rt.block_on(api.get(name)).unwrap()
    }

    /// Runs a Python snippet with `kube` bound to the official client's
    /// CoreV1Api on this server; returns stdout.
    pub fn python(&self, body: &str) -> String {
        let script = format!(
            "import sys\nfrom kubernetes import client, config\nconfig.load_kube_config({:?})\nv1 = client.CoreV1Api()\n{body}\n",
            self.server.kubeconfig().display().to_string()
        );
        let out = Command::new(venv().join("bin/python"))
            .arg("-c")
            .arg(&script)
            .output()
            .expect("run python");
        assert!(
            out.status.success(),
            "python failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }
}

/// `(address, ready, serving, terminating, nodeName)` of every endpoint in
/// the slices, sorted by address.
pub fn endpoints(slices: &[EndpointSlice]) -> Vec<(String, bool, bool, bool, String)> {
    let mut out: Vec<_> = slices
        .iter()
        .flat_map(|s| s.endpoints.iter())
        .map(|e| {
            let c = e.conditions.clone().unwrap_or_default();
            (
                e.addresses.first().cloned().unwrap_or_default(),
                c.ready.unwrap_or(false),
                c.serving.unwrap_or(false),
                c.terminating.unwrap_or(false),
                e.node_name.clone().unwrap_or_default(),
            )
        })
        .collect();
    out.sort();
    out
}

/// A pod's IP, if it has one.
pub fn pod_ip(p: &Pod) -> Option<String> {
    p.status.as_ref()?.pod_ip.clone()
}

/// Whether the pod has an IP and `Ready=True`.
pub fn running(p: &Pod) -> bool {
    pod_ip(p).is_some()
        && p.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

pub fn names(pods: &[Pod]) -> Vec<String> {
    let mut n: Vec<String> = pods.iter().map(|p| p.name_any()).collect();
    n.sort();
    n
}

pub fn data_dir(p: &Plane) -> &Path {
    &p.server.data_dir
}
