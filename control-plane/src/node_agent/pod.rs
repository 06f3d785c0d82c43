//! One pod's life on the node, as kubelet's pod worker runs it: the
//! sandbox (network namespace, veth, address, `/etc/hosts`,
//! `resolv.conf`, volumes), each container started through the OCI
//! runtime and restarted under the pod's `restartPolicy` with kubelet's
//! crash-loop back-off, probes driving `ready`/`started` and liveness
//! restarts, the status written back whenever it changes, and graceful
//! termination (preStop, SIGTERM, SIGKILL at the end of the grace period)
//! ending with the final DELETE (grace 0, UID precondition).
use std::{
    collections::{BTreeMap, HashMap},
    net::Ipv4Addr,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use k8s_openapi::{
    api::core::v1::{ConfigMap, Container, Pod, Probe, Secret},
    jiff::Timestamp,
};
use kube::{
    Api, ResourceExt as _,
    api::{DeleteParams, Patch, PatchParams, Preconditions},
};
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use super::{
    Agent, ContainerView,
    env::{self, Sources},
    netns, probe,
    runtime::{self, ContainerSpec},
    status::{self, CState, ContainerStatusIn},
    volumes,
};

/// Kubelet's crash-loop back-off: 10 s doubling to 300 s, reset after a
/// container ran 10 minutes (`pkg/kubelet/kubelet.go`).
pub const BACKOFF_INITIAL: Duration = Duration::from_secs(10);
/// The back-off's cap.
pub const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// Kubelet's floor on what is left of the grace period after preStop.
const MIN_GRACE: Duration = Duration::from_secs(2);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Kind {
    Startup,
    Liveness,
    Readiness,
}

#[derive(Debug, Default)]
struct ProbeState {
    successes: u32,
    failures: u32,
    next_at: Option<Instant>,
    in_flight: bool,
}

struct Ctr {
    spec: Container,
    id: String,
    state: CState,
    last: Option<CState>,
    restarts: i32,
    /// Which run of the container this is (probe results of older runs
    /// are dropped).
    attempt: u64,
    running_since: Option<Instant>,
    next_start: Option<Instant>,
    backoff: Duration,
    ready: bool,
    started: bool,
    probes: HashMap<Kind, ProbeState>,
    image_id: String,
    log: PathBuf,
    previous_log: Option<PathBuf>,
    /// A liveness/startup kill in progress: restart after it exits.
    killing: bool,
}

enum Event {
    Exited {
        idx: usize,
        attempt: u64,
        code: i32,
    },
    Probe {
        idx: usize,
        attempt: u64,
        kind: Kind,
        ok: bool,
        msg: String,
    },
}

/// Runs the pod `rx` carries until it is gone; `None` in `rx` means the
/// pod object vanished (force deletion).
pub async fn run(agent: Arc<Agent>, mut rx: watch::Receiver<Option<Pod>>) {
    let Some(first) = rx.borrow().clone() else {
        return;
    };
    let uid = first.uid().unwrap_or_default();
    let ns = first.namespace().unwrap_or_default();
    let name = first.name_any();
    let (tx, events) = mpsc::unbounded_channel();
    let mut w = Worker::new(Arc::clone(&agent), first, tx, events);
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        enum Input {
            Pod(bool),
            Ev(Option<Event>),
            Tick,
        }
        let input = tokio::select! {
            r = rx.changed() => Input::Pod(r.is_ok()),
            ev = w.events.recv() => Input::Ev(ev),
            _ = tick.tick() => Input::Tick,
        };
        match input {
            Input::Pod(false) => w.vanished = true,
            Input::Pod(true) => match rx.borrow_and_update().clone() {
                Some(p) => w.pod = p,
                None => w.vanished = true,
            },
            Input::Ev(Some(ev)) => w.on_event(ev).await,
            Input::Ev(None) | Input::Tick => {}
        }
        if w.pod.metadata.deletion_timestamp.is_some() || w.vanished {
            info!(pod = %w.label(), vanished = w.vanished, grace = ?w.pod.metadata.deletion_grace_period_seconds, "deletion seen");
            w.terminate(&mut rx).await;
            break;
        }
        w.step().await;
    }
    agent
        .pods
        .lock()
        .expect("pods lock")
        .remove(&(ns.clone(), name.clone()));
    info!(pod = %format!("{ns}/{name}"), %uid, "pod worker done");
}

struct Worker {
    agent: Arc<Agent>,
    pod: Pod,
    vanished: bool,
    /// Set once termination began: exits are final, nothing restarts.
    terminating: bool,
    tx: Option<mpsc::UnboundedSender<Event>>,
    events: mpsc::UnboundedReceiver<Event>,
    ctrs: Vec<Ctr>,
    pod_ip: Option<String>,
    sandbox: bool,
    sandbox_error: Option<String>,
    volumes: BTreeMap<String, volumes::Prepared>,
    start_time: Timestamp,
    last_status: Option<Value>,
    next_sandbox_try: Option<Instant>,
    netns_name: String,
    dir: PathBuf,
}

impl Worker {
    fn new(
        agent: Arc<Agent>,
        pod: Pod,
        tx: mpsc::UnboundedSender<Event>,
        events: mpsc::UnboundedReceiver<Event>,
    ) -> Self {
        let uid = pod.uid().unwrap_or_default();
        let spec = pod.spec.clone().unwrap_or_default();
        let dir = agent.opts.root.join("pods").join(&uid);
        let log_dir = agent.opts.root.join("logs").join(format!(
            "{}_{}_{}",
            pod.namespace().unwrap_or_default(),
            pod.name_any(),
            uid
        ));
        let ctrs = spec
            .containers
            .iter()
            .map(|c| Ctr {
                spec: c.clone(),
                id: format!("{uid}-{}", c.name),
                state: CState::Waiting {
                    reason: "ContainerCreating".into(),
                    message: None,
                },
                last: None,
                restarts: 0,
                attempt: 0,
                running_since: None,
                next_start: None,
                backoff: Duration::ZERO,
                ready: false,
                started: false,
                probes: HashMap::new(),
                image_id: String::new(),
                log: log_dir.join(&c.name).join("0.log"),
                previous_log: None,
                killing: false,
            })
            .collect();
        let pod_ip = pod.status.as_ref().and_then(|s| s.pod_ip.clone());
        let start_time = pod
            .status
            .as_ref()
            .and_then(|s| s.start_time.as_ref())
            .map_or_else(Timestamp::now, |t| t.0);
        Self {
            netns_name: format!("sypod-{uid}"),
            agent,
            pod,
            vanished: false,
            terminating: false,
            tx: Some(tx),
            events,
            ctrs,
            // A pod the agent ran before its restart keeps its address.
            pod_ip,
            sandbox: false,
            sandbox_error: None,
            volumes: BTreeMap::new(),
            start_time,
            last_status: None,
            next_sandbox_try: None,
            dir,
        }
    }

    fn label(&self) -> String {
        format!(
            "{}/{}",
            self.pod.namespace().unwrap_or_default(),
            self.pod.name_any()
        )
    }

    fn host_network(&self) -> bool {
        self.pod.spec.as_ref().and_then(|s| s.host_network) == Some(true)
    }

    fn restart_policy(&self) -> String {
        self.pod
            .spec
            .as_ref()
            .and_then(|s| s.restart_policy.clone())
            .unwrap_or_else(|| "Always".into())
    }

    fn pod_netns(&self) -> PathBuf {
        if self.host_network() {
            self.agent.opts.node_netns.clone()
        } else {
            netns::netns_path(&self.netns_name)
        }
    }

    fn ips(&self) -> Vec<String> {
        self.pod_ip.iter().cloned().collect()
    }

    /// One pass: sandbox, starts and restarts, probes, status.
    async fn step(&mut self) {
        if !self.sandbox {
            if self.next_sandbox_try.is_some_and(|t| Instant::now() < t) {
                return;
            }
            match self.make_sandbox().await {
                Ok(()) => {
                    self.sandbox = true;
                    self.sandbox_error = None;
                }
                Err(e) => {
                    warn!(pod = %self.label(), error = %format!("{e:#}"), "sandbox not ready");
                    self.sandbox_error = Some(format!("{e:#}"));
                    self.next_sandbox_try = Some(Instant::now() + Duration::from_secs(2));
                    for c in &mut self.ctrs {
                        c.state = CState::Waiting {
                            reason: "ContainerCreating".into(),
                            message: Some(format!("{e:#}")),
                        };
                    }
                    self.publish().await;
                    return;
                }
            }
        }
        let now = Instant::now();
        for i in 0..self.ctrs.len() {
            let due = match &self.ctrs[i].state {
                CState::Waiting { .. } => self.ctrs[i].next_start.is_none_or(|t| now >= t),
                _ => false,
            };
            if due && !self.ctrs[i].killing {
                self.start(i).await;
            }
        }
        self.probes();
        self.refresh_tokens().await;
        self.publish().await;
    }

    async fn make_sandbox(&mut self) -> Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        if self.host_network() {
            self.pod_ip = Some(self.agent.host_ip.clone());
        } else {
            let kept = self
                .pod_ip
                .as_deref()
                .and_then(|s| s.parse::<Ipv4Addr>().ok());
            let ip = match kept {
                Some(ip) if self.agent.claim_ip(ip) => ip,
                _ => {
                    let ip = self.agent.allocate_ip()?;
                    self.pod_ip = Some(ip.to_string());
                    ip
                }
            };
            let name = self.netns_name.clone();
            let node_ns = self.agent.opts.node_netns.clone();
            let host_if = netns::host_if_name(&self.pod.uid().unwrap_or_default());
            tokio::task::spawn_blocking(move || -> Result<()> {
                let path = netns::create_netns(&name)?;
                netns::wire_pod(&node_ns, &path, &host_if, ip)
            })
            .await??;
        }
        self.write_etc_files()?;
        let ips = self.ips();
        for v in self
            .pod
            .spec
            .clone()
            .unwrap_or_default()
            .volumes
            .iter()
            .flatten()
        {
            let p = volumes::prepare(
                &self.agent.client,
                &self.pod,
                v,
                &self.dir,
                &ips,
                &self.agent.host_ip,
            )
            .await
            .with_context(|| format!("volume {}", v.name))?;
            self.volumes.insert(v.name.clone(), p);
        }
        Ok(())
    }

    fn write_etc_files(&self) -> Result<()> {
        let spec = self.pod.spec.clone().unwrap_or_default();
        let hostname = self.hostname();
        let mut hosts = String::new();
        if self.host_network() {
            hosts.push_str("# Kubernetes-managed hosts file (host network).\n");
            hosts.push_str(&std::fs::read_to_string("/etc/hosts").unwrap_or_default());
        } else {
            hosts.push_str("# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n");
            if let Some(ip) = &self.pod_ip {
                match spec.subdomain.as_deref().filter(|s| !s.is_empty()) {
                    Some(sub) => hosts.push_str(&format!(
                        "{ip}\t{hostname}.{sub}.{}.svc.{}\t{hostname}\n",
                        self.pod.namespace().unwrap_or_default(),
                        self.agent.opts.cluster_domain
                    )),
                    None => hosts.push_str(&format!("{ip}\t{hostname}\n")),
                }
            }
        }
        if let Some(aliases) = &spec.host_aliases {
            hosts.push_str("\n# Entries added by HostAliases.\n");
            for a in aliases {
                hosts.push_str(&format!(
                    "{}\t{}\n",
                    a.ip,
                    a.hostnames.clone().unwrap_or_default().join("\t")
                ));
            }
        }
        std::fs::write(self.dir.join("etc-hosts"), hosts)?;
        std::fs::write(self.dir.join("etc-hostname"), format!("{hostname}\n"))?;
        std::fs::write(self.dir.join("resolv.conf"), self.resolv_conf())?;
        Ok(())
    }

    /// kubelet's dnsPolicy rules (`pkg/kubelet/network/dns`): ClusterFirst
    /// (not on the host network) uses the cluster DNS with the namespace's
    /// search path and `ndots:5`; otherwise the node's resolv.conf.
    fn resolv_conf(&self) -> String {
        let spec = self.pod.spec.clone().unwrap_or_default();
        let policy = spec
            .dns_policy
            .clone()
            .unwrap_or_else(|| "ClusterFirst".into());
        let cluster_first = match policy.as_str() {
            "ClusterFirst" => !self.host_network(),
            "ClusterFirstWithHostNet" => true,
            _ => false,
        };
        let host = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        let mut servers: Vec<String> = Vec::new();
        let mut search: Vec<String> = Vec::new();
        let mut options: Vec<String> = Vec::new();
        match (policy.as_str(), cluster_first, &self.agent.opts.cluster_dns) {
            ("None", _, _) => {}
            (_, true, Some(dns)) => {
                let d = &self.agent.opts.cluster_domain;
                let ns = self.pod.namespace().unwrap_or_default();
                servers.push(dns.clone());
                search.extend([format!("{ns}.svc.{d}"), format!("svc.{d}"), d.clone()]);
                options.push("ndots:5".into());
            }
            _ => return host,
        }
        if let Some(c) = &spec.dns_config {
            servers.extend(c.nameservers.clone().unwrap_or_default());
            search.extend(c.searches.clone().unwrap_or_default());
            for o in c.options.iter().flatten() {
                let v = match &o.value {
                    Some(v) => format!("{}:{v}", o.name.clone().unwrap_or_default()),
                    None => o.name.clone().unwrap_or_default(),
                };
                options.retain(|x| x.split(':').next() != o.name.as_deref());
                options.push(v);
            }
        }
        search.dedup();
        let mut out = String::new();
        for s in servers.iter().take(3) {
            out.push_str(&format!("nameserver {s}\n"));
        }
        if !search.is_empty() {
            out.push_str(&format!("search {}\n", search.join(" ")));
        }
        if !options.is_empty() {
            out.push_str(&format!("options {}\n", options.join(" ")));
        }
        out
    }

    fn hostname(&self) -> String {
        if self.host_network() {
            return self.agent.opts.node_name.clone();
        }
        let spec = self.pod.spec.clone().unwrap_or_default();
        let h = spec
            .hostname
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| self.pod.name_any());
        let h: String = h.chars().take(63).collect();
        h.trim_end_matches(['-', '.']).to_owned()
    }

    async fn fetch_sources(&self, c: &Container) -> Result<Sources> {
        let ns = self.pod.namespace().unwrap_or_default();
        let (cms, secrets) = env::referenced(c);
        let mut s = Sources::default();
        let cm_api: Api<ConfigMap> = Api::namespaced(self.agent.client.clone(), &ns);
        for n in cms {
            if let Some(cm) = cm_api.get_opt(&n).await? {
                let mut d = cm.data.unwrap_or_default();
                for (k, v) in cm.binary_data.unwrap_or_default() {
                    d.insert(k, String::from_utf8_lossy(&v.0).into_owned());
                }
                s.config_maps.insert(n, d);
            }
        }
        let sec_api: Api<Secret> = Api::namespaced(self.agent.client.clone(), &ns);
        for n in secrets {
            if let Some(sec) = sec_api.get_opt(&n).await? {
                let mut d: BTreeMap<String, String> = sec
                    .data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
                    .collect();
                d.extend(sec.string_data.unwrap_or_default());
                s.secrets.insert(n, d);
            }
        }
        Ok(s)
    }

    /// Starts container `i` (a new run: fresh writable layer, new log file).
    async fn start(&mut self, i: usize) {
        match self.try_start(i).await {
            Ok(()) => {}
            Err((reason, e)) => {
                let msg = format!("{e:#}");
                debug!(pod = %self.label(), container = %self.ctrs[i].spec.name, error = %msg, "start failed");
                let c = &mut self.ctrs[i];
                c.state = CState::Waiting {
                    reason: reason.into(),
                    message: Some(msg),
                };
                c.next_start = Some(Instant::now() + Duration::from_secs(2));
            }
        }
    }

    async fn try_start(&mut self, i: usize) -> Result<(), (&'static str, anyhow::Error)> {
        let c = self.ctrs[i].spec.clone();
        let image_name = c.image.clone().unwrap_or_default();
        let store = self.agent.images.clone();
        let image = tokio::task::spawn_blocking(move || store.resolve(&image_name))
            .await
            .map_err(|e| ("ErrImageNeverPull", e.into()))?
            .map_err(|e| ("ErrImageNeverPull", e))?;
        // Service variables need the Service cache (kubelet waits for it too).
        if !self.agent.services_synced() {
            return Err((
                "CreateContainerConfigError",
                anyhow::anyhow!(
                    "services have not yet been read at least once, cannot construct envvars"
                ),
            ));
        }
        let sources = self
            .fetch_sources(&c)
            .await
            .map_err(|e| ("CreateContainerConfigError", e))?;
        let spec = self.pod.spec.clone().unwrap_or_default();
        let svc_env = env::service_env(
            &self.pod.namespace().unwrap_or_default(),
            spec.enable_service_links != Some(false),
            &self.agent.services(),
        );
        let ips = self.ips();
        let user_env =
            env::container_env(&self.pod, &c, &sources, &svc_env, &ips, &self.agent.host_ip)
                .map_err(|e| ("CreateContainerConfigError", e))?;
        let lookup: HashMap<String, String> = user_env.iter().cloned().collect();
        let expand = |s: &String| env::expand(s, &|n| lookup.get(n).cloned());
        let (entry, cmd) = match (&c.command, &c.args) {
            (Some(cmd), Some(args)) => (
                cmd.iter().map(expand).collect(),
                args.iter().map(expand).collect(),
            ),
            (Some(cmd), None) => (cmd.iter().map(expand).collect(), Vec::new()),
            (None, Some(args)) => (
                image.config.entrypoint.clone(),
                args.iter().map(expand).collect(),
            ),
            (None, None) => (image.config.entrypoint.clone(), image.config.cmd.clone()),
        };
        let args: Vec<String> = entry.into_iter().chain(cmd).collect();
        if args.is_empty() {
            return Err((
                "CreateContainerError",
                anyhow::anyhow!("no command specified"),
            ));
        }
        let mut env_list = image.config.env.clone();
        env_list.push(format!("HOSTNAME={}", self.hostname()));
        env_list.extend(user_env.iter().map(|(k, v)| format!("{k}={v}")));
        let mut mounts = volumes::container_mounts(&c, &self.volumes)
            .map_err(|e| ("CreateContainerConfigError", e))?;
        for (file, dest) in [
            ("etc-hosts", "/etc/hosts"),
            ("resolv.conf", "/etc/resolv.conf"),
            ("etc-hostname", "/etc/hostname"),
        ] {
            if !mounts.iter().any(|m| m.destination == dest) {
                mounts.push(runtime::BindMount {
                    source: self.dir.join(file),
                    destination: dest.into(),
                    read_only: false,
                });
            }
        }
        let sc = c.security_context.clone().unwrap_or_default();
        let (uid, gid) = parse_user(
            image.config.user.as_deref(),
            sc.run_as_user,
            sc.run_as_group,
        )
        .map_err(|e| ("CreateContainerConfigError", e))?;
        let cspec = ContainerSpec {
            args,
            env: env_list,
            cwd: c
                .working_dir
                .clone()
                .or(image.config.working_dir.clone())
                .unwrap_or_else(|| "/".into()),
            hostname: self.hostname(),
            netns: self.pod_netns(),
            mounts,
            uid,
            gid,
            read_only_root: sc.read_only_root_filesystem == Some(true),
            add_caps: sc.capabilities.and_then(|c| c.add).unwrap_or_default(),
            privileged: sc.privileged == Some(true),
        };
        let ctr = &mut self.ctrs[i];
        let bundle = self.dir.join("containers").join(&c.name);
        let rt = self.agent.runtime.clone();
        let (b2, rootfs, s2) = (bundle.clone(), image.rootfs.clone(), cspec.clone());
        tokio::task::spawn_blocking(move || -> Result<()> {
            runtime::remove_bundle(&b2)?;
            rt.prepare_bundle(&b2, &rootfs, &s2)
        })
        .await
        .map_err(|e| ("CreateContainerError", e.into()))?
        .map_err(|e| ("CreateContainerError", e))?;
        if ctr.attempt > 0 {
            ctr.previous_log = Some(ctr.log.clone());
            ctr.log = ctr.log.with_file_name(format!("{}.log", ctr.restarts));
        }
        let mut child = self
            .agent
            .runtime
            .start(&ctr.id, &bundle, &ctr.log)
            .await
            .map_err(|e| ("RunContainerError", e))?;
        ctr.attempt += 1;
        ctr.image_id = image.digest.clone();
        ctr.state = CState::Running {
            started_at: Timestamp::now(),
        };
        ctr.running_since = Some(Instant::now());
        ctr.next_start = None;
        ctr.ready = false;
        ctr.started = false;
        ctr.probes.clear();
        let (idx, attempt) = (i, ctr.attempt);
        let tx = self.tx.clone().expect("sender set");
        tokio::spawn(async move {
            let code = match child.wait().await {
                Ok(s) => s.code().unwrap_or(137),
                Err(_) => 137,
            };
            let _ = tx.send(Event::Exited { idx, attempt, code });
        });
        info!(pod = %self.label(), container = %c.name, "container started");
        self.agent.update_view(&self.pod, &self.ctrs_view());
        Ok(())
    }

    fn ctrs_view(&self) -> Vec<ContainerView> {
        self.ctrs
            .iter()
            .map(|c| ContainerView {
                name: c.spec.name.clone(),
                id: c.id.clone(),
                running: matches!(c.state, CState::Running { .. }),
                log: c.log.clone(),
                previous_log: c.previous_log.clone(),
                waiting_reason: match &c.state {
                    CState::Waiting { reason, .. } => Some(reason.clone()),
                    _ => None,
                },
            })
            .collect()
    }

    async fn on_event(&mut self, ev: Event) {
        match ev {
            Event::Exited { idx, attempt, code } => {
                let policy = self.restart_policy();
                let c = &mut self.ctrs[idx];
                if attempt != c.attempt {
                    return;
                }
                let started_at = match &c.state {
                    CState::Running { started_at } => Some(*started_at),
                    _ => None,
                };
                let ran = c.running_since.map(|s| s.elapsed()).unwrap_or_default();
                let term = CState::Terminated {
                    exit_code: code,
                    reason: if code == 0 {
                        "Completed".into()
                    } else {
                        "Error".into()
                    },
                    started_at,
                    finished_at: Timestamp::now(),
                };
                c.ready = false;
                let restart = !self.terminating
                    && match policy.as_str() {
                        "Never" => false,
                        "OnFailure" => code != 0 || c.killing,
                        _ => true,
                    };
                c.killing = false;
                info!(pod = %format!("{}/{}", self.pod.namespace().unwrap_or_default(), self.pod.name_any()),
                      container = %c.spec.name, code, restart, "container exited");
                if restart {
                    // kubelet: the first restart is immediate, then 10 s
                    // doubling to 5 min; a long run resets it.
                    if ran > 2 * BACKOFF_MAX {
                        c.backoff = Duration::ZERO;
                    }
                    c.next_start = Some(Instant::now() + c.backoff);
                    c.backoff = if c.backoff.is_zero() {
                        BACKOFF_INITIAL
                    } else {
                        (c.backoff * 2).min(BACKOFF_MAX)
                    };
                    c.restarts += 1;
                    c.last = Some(term);
                    c.state = CState::Waiting {
                        reason: "CrashLoopBackOff".into(),
                        message: Some(format!(
                            "back-off {}s restarting failed container={} pod={}_{}({})",
                            c.backoff.as_secs(),
                            c.spec.name,
                            self.pod.name_any(),
                            self.pod.namespace().unwrap_or_default(),
                            self.pod.uid().unwrap_or_default()
                        )),
                    };
                } else {
                    c.state = term;
                }
                self.agent.update_view(&self.pod, &self.ctrs_view());
            }
            Event::Probe {
                idx,
                attempt,
                kind,
                ok,
                msg,
            } => {
                let grace = self.grace();
                let c = &mut self.ctrs[idx];
                if attempt != c.attempt || !matches!(c.state, CState::Running { .. }) {
                    return;
                }
                let Some(p) = probe_of(&c.spec, kind) else {
                    return;
                };
                let t = probe::timing(&p);
                let st = c.probes.entry(kind).or_default();
                st.in_flight = false;
                st.next_at = Some(Instant::now() + t.period);
                if ok {
                    st.successes += 1;
                    st.failures = 0;
                } else {
                    st.failures += 1;
                    st.successes = 0;
                    debug!(container = %c.spec.name, ?kind, %msg, "probe failed");
                }
                let (s, f) = (st.successes, st.failures);
                match kind {
                    Kind::Readiness => {
                        if s >= t.success_threshold {
                            c.ready = true;
                        } else if f >= t.failure_threshold {
                            c.ready = false;
                        }
                    }
                    Kind::Startup => {
                        if ok {
                            c.started = true;
                        } else if f >= t.failure_threshold {
                            self.kill_for_restart(idx, grace, "startup probe failed");
                        }
                    }
                    Kind::Liveness => {
                        if f >= t.failure_threshold {
                            self.kill_for_restart(idx, grace, "liveness probe failed");
                        }
                    }
                }
            }
        }
    }

    fn grace(&self) -> Duration {
        let g = self
            .pod
            .metadata
            .deletion_grace_period_seconds
            .or(self
                .pod
                .spec
                .as_ref()
                .and_then(|s| s.termination_grace_period_seconds))
            .unwrap_or(30);
        Duration::from_secs(g.max(0) as u64)
    }

    /// Stops a container so that it restarts (liveness/startup failures).
    fn kill_for_restart(&mut self, idx: usize, grace: Duration, why: &str) {
        let c = &mut self.ctrs[idx];
        if c.killing {
            return;
        }
        info!(container = %c.spec.name, why, "killing container");
        c.killing = true;
        c.ready = false;
        let (rt, id) = (self.agent.runtime.clone(), c.id.clone());
        tokio::spawn(async move {
            let _ = rt.kill(&id, "TERM").await;
            tokio::time::sleep(grace.max(MIN_GRACE)).await;
            let _ = rt.kill(&id, "KILL").await;
        });
    }

    fn probes(&mut self) {
        let now = Instant::now();
        let Some(tx) = self.tx.clone() else { return };
        let target = probe::Target {
            node_netns: self.agent.opts.node_netns.clone(),
            pod_ip: self.pod_ip.clone().unwrap_or_default(),
        };
        for (idx, c) in self.ctrs.iter_mut().enumerate() {
            if !matches!(c.state, CState::Running { .. }) || c.killing {
                continue;
            }
            let since = c.running_since.unwrap_or(now);
            let has_startup = c.spec.startup_probe.is_some();
            if !has_startup {
                c.started = true;
            }
            for kind in [Kind::Startup, Kind::Liveness, Kind::Readiness] {
                let Some(p) = probe_of(&c.spec, kind) else {
                    if kind == Kind::Readiness && c.started {
                        c.ready = true;
                    }
                    continue;
                };
                // Liveness and readiness wait for the startup probe.
                if kind == Kind::Startup && c.started {
                    continue;
                }
                if kind != Kind::Startup && !c.started {
                    continue;
                }
                let t = probe::timing(&p);
                let st = c.probes.entry(kind).or_default();
                if st.in_flight
                    || now < since + t.initial_delay
                    || st.next_at.is_some_and(|n| now < n)
                {
                    continue;
                }
                st.in_flight = true;
                let (tx, spec, id, rt, target, attempt) = (
                    tx.clone(),
                    c.spec.clone(),
                    c.id.clone(),
                    self.agent.runtime.clone(),
                    target.clone(),
                    c.attempt,
                );
                tokio::spawn(async move {
                    let r = probe::run(&p, &spec, &id, &rt, &target).await;
                    let _ = tx.send(Event::Probe {
                        idx,
                        attempt,
                        kind,
                        ok: r.is_ok(),
                        msg: r.err().map(|e| format!("{e:#}")).unwrap_or_default(),
                    });
                });
            }
        }
    }

    async fn refresh_tokens(&mut self) {
        let due: Vec<String> = self
            .volumes
            .iter()
            .filter(|(_, p)| p.refresh_at.is_some_and(|t| Instant::now() >= t))
            .map(|(n, _)| n.clone())
            .collect();
        for name in due {
            let Some(v) = self
                .pod
                .spec
                .as_ref()
                .and_then(|s| s.volumes.as_ref())
                .and_then(|vs| vs.iter().find(|v| v.name == name))
                .cloned()
            else {
                continue;
            };
            match volumes::prepare(
                &self.agent.client,
                &self.pod,
                &v,
                &self.dir,
                &self.ips(),
                &self.agent.host_ip,
            )
            .await
            {
                Ok(p) => {
                    self.volumes.insert(name, p);
                }
                Err(e) => {
                    warn!(pod = %self.label(), volume = %name, error = %e, "token refresh failed")
                }
            }
        }
    }

    fn status_json(&self) -> Value {
        let inputs: Vec<ContainerStatusIn> = self
            .ctrs
            .iter()
            .map(|c| ContainerStatusIn {
                name: c.spec.name.clone(),
                image: c.spec.image.clone().unwrap_or_default(),
                image_id: c.image_id.clone(),
                container_id: (c.attempt > 0).then(|| format!("runc://{}", c.id)),
                state: c.state.clone(),
                last: c.last.clone(),
                ready: c.ready && matches!(c.state, CState::Running { .. }),
                started: c.started && matches!(c.state, CState::Running { .. }),
                restart_count: c.restarts,
            })
            .collect();
        status::pod_status(
            &self.pod,
            &inputs,
            &self.restart_policy(),
            self.sandbox,
            self.pod_ip.as_deref(),
            &self.agent.host_ip,
            self.start_time,
        )
    }

    /// Writes the status when it changed (a strategic merge patch with the
    /// pod's UID as precondition, as kubelet's status manager does).
    async fn publish(&mut self) {
        let st = self.status_json();
        if self.last_status.as_ref() == Some(&st) {
            return;
        }
        let api: Api<Pod> = Api::namespaced(
            self.agent.client.clone(),
            &self.pod.namespace().unwrap_or_default(),
        );
        let body = status::with_transition_times(&st, self.pod.status.as_ref());
        let patch = json!({"metadata": {"uid": self.pod.uid()}, "status": body});
        match api
            .patch_status(
                &self.pod.name_any(),
                &PatchParams::default(),
                &Patch::Strategic(&patch),
            )
            .await
        {
            Ok(p) => {
                self.pod.status = p.status;
                self.last_status = Some(st);
            }
            Err(e) => debug!(pod = %self.label(), error = %e, "status update failed"),
        }
        self.agent.update_view(&self.pod, &self.ctrs_view());
    }

    /// Graceful termination, then the final DELETE. A later, shorter grace
    /// period (a second DELETE) or the pod's removal from the API brings
    /// the SIGKILL forward, as kubelet does.
    async fn terminate(&mut self, rx: &mut watch::Receiver<Option<Pod>>) {
        self.terminating = true;
        let grace = if self.vanished {
            Duration::from_secs(1)
        } else {
            self.grace()
        };
        info!(pod = %self.label(), ?grace, "terminating pod");
        let deadline = Instant::now() + grace;
        let mut stops = Vec::new();
        for c in &self.ctrs {
            if !matches!(c.state, CState::Running { .. }) {
                continue;
            }
            let (rt, id, spec) = (self.agent.runtime.clone(), c.id.clone(), c.spec.clone());
            let target = probe::Target {
                node_netns: self.agent.opts.node_netns.clone(),
                pod_ip: self.pod_ip.clone().unwrap_or_default(),
            };
            stops.push(tokio::spawn(async move {
                if let Some(pre) = spec.lifecycle.as_ref().and_then(|l| l.pre_stop.as_ref()) {
                    let as_probe = Probe {
                        exec: pre.exec.clone(),
                        http_get: pre.http_get.clone(),
                        tcp_socket: pre.tcp_socket.clone(),
                        timeout_seconds: Some(grace.as_secs().max(1) as i32),
                        ..Probe::default()
                    };
                    let left = deadline.saturating_duration_since(Instant::now());
                    if let Some(s) = &pre.sleep {
                        tokio::time::sleep(Duration::from_secs(s.seconds.max(0) as u64).min(left))
                            .await;
                    } else if let Err(e) =
                        tokio::time::timeout(left, probe::run(&as_probe, &spec, &id, &rt, &target))
                            .await
                            .unwrap_or(Ok(()))
                    {
                        warn!(container = %spec.name, error = %e, "preStop hook failed");
                    }
                }
                let _ = rt.kill(&id, "TERM").await;
                deadline.max(Instant::now() + MIN_GRACE)
            }));
        }
        let mut kill_at = Instant::now();
        for s in stops {
            if let Ok(t) = s.await {
                kill_at = kill_at.max(t);
            }
        }
        // Wait for the exits; SIGKILL whatever is left at the deadline.
        let mut killed = false;
        loop {
            let running = self
                .ctrs
                .iter()
                .any(|c| matches!(c.state, CState::Running { .. }));
            if !running {
                break;
            }
            if !killed && rx.has_changed().unwrap_or(false) {
                let newer = rx.borrow_and_update().clone();
                let shorter = match &newer {
                    Some(p) => p
                        .metadata
                        .deletion_grace_period_seconds
                        .filter(|g| Duration::from_secs(g.max(&0).unsigned_abs()) < grace)
                        .map(|g| Instant::now() + Duration::from_secs(g.max(0).unsigned_abs())),
                    None => Some(Instant::now()),
                };
                if let Some(at) = shorter {
                    info!(pod = %self.label(), "grace period shortened");
                    kill_at = kill_at.min(at);
                }
                if let Some(p) = newer {
                    self.pod = p;
                }
            }
            if Instant::now() >= kill_at && !killed {
                killed = true;
                for c in &self.ctrs {
                    if matches!(c.state, CState::Running { .. }) {
                        let _ = self.agent.runtime.kill(&c.id, "KILL").await;
                    }
                }
            }
            if Instant::now() >= kill_at + Duration::from_secs(10) {
                warn!(pod = %self.label(), "containers did not exit after SIGKILL");
                break;
            }
            if let Ok(Some(ev @ Event::Exited { .. })) =
                tokio::time::timeout(Duration::from_millis(200), self.events.recv()).await
            {
                self.on_event(ev).await;
            }
        }
        for c in &mut self.ctrs {
            if let CState::Waiting { .. } = c.state {
                c.next_start = Some(Instant::now() + Duration::from_secs(3600));
            }
        }
        self.teardown().await;
        if !self.vanished {
            self.publish().await;
            let api: Api<Pod> = Api::namespaced(
                self.agent.client.clone(),
                &self.pod.namespace().unwrap_or_default(),
            );
            let dp = DeleteParams {
                grace_period_seconds: Some(0),
                preconditions: Some(Preconditions {
                    uid: self.pod.uid(),
                    resource_version: None,
                }),
                ..DeleteParams::default()
            };
            if let Err(e) = api.delete(&self.pod.name_any(), &dp).await
                && !crate::client::is_not_found(&e)
                && !crate::client::is_conflict(&e)
            {
                warn!(pod = %self.label(), error = %e, "final delete failed");
            }
        }
    }

    async fn teardown(&mut self) {
        for c in &self.ctrs {
            let _ = self.agent.runtime.delete(&c.id).await;
            let b = self.dir.join("containers").join(&c.spec.name);
            if let Err(e) = tokio::task::spawn_blocking(move || runtime::remove_bundle(&b)).await {
                warn!(error = %e, "bundle removal");
            }
        }
        for p in self.volumes.values() {
            if p.path.starts_with(&self.dir) && runtime::is_mountpoint(&p.path) {
                let _ = nix::mount::umount2(&p.path, nix::mount::MntFlags::MNT_DETACH);
            }
        }
        if !self.host_network() {
            let (node_ns, host_if, name) = (
                self.agent.opts.node_netns.clone(),
                netns::host_if_name(&self.pod.uid().unwrap_or_default()),
                self.netns_name.clone(),
            );
            let r = tokio::task::spawn_blocking(move || -> Result<()> {
                netns::unwire_pod(&node_ns, &host_if)?;
                netns::delete_netns(&name)
            })
            .await;
            if let Ok(Err(e)) | Err(e) = r.map_err(anyhow::Error::from) {
                warn!(pod = %self.label(), error = %e, "network teardown");
            }
            if let Some(ip) = self.pod_ip.as_deref().and_then(|s| s.parse().ok()) {
                self.agent.release_ip(ip);
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn probe_of(c: &Container, kind: Kind) -> Option<Probe> {
    match kind {
        Kind::Startup => c.startup_probe.clone(),
        Kind::Liveness => c.liveness_probe.clone(),
        Kind::Readiness => c.readiness_probe.clone(),
    }
}

/// The uid/gid a container runs as: `securityContext` first, else the
/// image's numeric `User` (`uid[:gid]`); names are refused.
pub fn parse_user(
    image_user: Option<&str>,
    run_as_user: Option<i64>,
    run_as_group: Option<i64>,
) -> Result<(u32, u32)> {
    let (mut uid, mut gid) = (0u32, 0u32);
    if let Some(u) = image_user {
        let (a, b) = u.split_once(':').map_or((u, None), |(a, b)| (a, Some(b)));
        uid = a
            .parse()
            .with_context(|| format!("image user `{u}` is not numeric"))?;
        if let Some(b) = b {
            gid = b
                .parse()
                .with_context(|| format!("image group `{b}` is not numeric"))?;
        }
    }
    if let Some(u) = run_as_user {
        uid = u32::try_from(u).context("runAsUser out of range")?;
    }
    if let Some(g) = run_as_group {
        gid = u32::try_from(g).context("runAsGroup out of range")?;
    }
    Ok((uid, gid))
}
