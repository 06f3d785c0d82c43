//! `sy-cluster up`: the namespaces, cgroups, bpffs and processes of a
//! cluster, each recorded in the state file before it is made.
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use k8s_openapi::api::core::v1::{Namespace, Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::{Api, Client, api::PostParams};
use tokio::runtime::Runtime;

use crate::{
    state::{self, CP_ADDR, EXT_ADDR, NodeRec, State, is_same_running, node_addr},
    sys::{self, http_get, ip_in, sibling, spawn, sysctl_in, tcp_ok},
};

/// The image every node imports: Debian's busybox-static plus `netprobe`.
pub const IMAGE: &str = "switchyard/testbed:1";
/// The pods' address range (node IPAM gives each node a /24 of it).
pub const CLUSTER_CIDR: &str = "10.244.0.0/16";
/// The Service range and the DNS Service's address in it.
pub const SERVICE_CIDR: &str = "10.96.0.0/12";
pub const DNS_IP: &str = "10.96.0.10";
/// The API server's port on the underlay.
pub const API_PORT: u16 = 6443;

/// What `up` is asked for.
pub struct UpOpts {
    pub nodes: u8,
    pub etcd: bool,
    pub state_dir: PathBuf,
    pub prefix: String,
    /// How long each component may take to become ready.
    pub timeout: Duration,
}

/// Brings a cluster up; on error everything made so far stays recorded
/// for `down` (and its logs for reading).
pub fn up(o: &UpOpts, rt: &Runtime) -> Result<State> {
    state::check_prefix(&o.prefix)?;
    anyhow::ensure!(
        (1..=50).contains(&o.nodes),
        "--nodes {}: between 1 and 50",
        o.nodes
    );
    preflight(o)?;
    if State::load(&o.state_dir)?.is_some() {
        bail!(
            "{} exists: a cluster is up there (or was not brought down); run `sy-cluster down --state-dir {}` first",
            State::path(&o.state_dir).display(),
            o.state_dir.display()
        );
    }
    for suffix in ["ul", "cp", "ext", "n1"] {
        let ns = format!("{}-{suffix}", o.prefix);
        anyhow::ensure!(
            !control_plane::node_agent::netns::netns_path(&ns).exists(),
            "network namespace {ns} exists already: another cluster uses prefix `{}` (choose --prefix)",
            o.prefix
        );
    }
    let created = !o.state_dir.exists();
    if !created
        && std::fs::read_dir(&o.state_dir)
            .with_context(|| format!("reading {}", o.state_dir.display()))?
            .next()
            .is_some()
    {
        bail!(
            "--state-dir {} is not empty; give a new or empty directory",
            o.state_dir.display()
        );
    }
    std::fs::create_dir_all(o.state_dir.join("logs"))
        .with_context(|| format!("creating {}", o.state_dir.display()))?;
    let st = State {
        prefix: o.prefix.clone(),
        state_dir: std::fs::canonicalize(&o.state_dir)?,
        created_state_dir: created,
        etcd: o.etcd,
        ..State::default()
    };
    st.save()?;
    let mut b = Builder {
        st,
        timeout: o.timeout,
    };
    b.build(o, rt)?;
    Ok(b.st)
}

fn preflight(o: &UpOpts) -> Result<()> {
    anyhow::ensure!(
        nix::unistd::geteuid().is_root(),
        "sy-cluster needs root (network namespaces, cgroups, mounts, eBPF)"
    );
    for bin in [
        "sy-apiserver",
        "sy-controller-manager",
        "sy-scheduler",
        "sy-dns",
        "sy-node-agent",
        "switchyard",
        "netprobe",
    ] {
        sibling(bin)?;
    }
    let runc = std::process::Command::new("runc").arg("--version").output();
    anyhow::ensure!(
        runc.is_ok_and(|o| o.status.success()),
        "runc is not installed (scripts/setup.sh installs it)"
    );
    anyhow::ensure!(
        Path::new("/bin/busybox").exists(),
        "/bin/busybox is missing: install busybox-static (scripts/setup.sh does)"
    );
    if o.etcd {
        let etcd = std::process::Command::new("etcd").arg("--version").output();
        anyhow::ensure!(
            etcd.is_ok_and(|o| o.status.success()),
            "--etcd: etcd is not installed (scripts/setup.sh installs etcd-server)"
        );
    }
    sys::cgroup2_root()?;
    Ok(())
}

struct Builder {
    st: State,
    timeout: Duration,
}

impl Builder {
    fn dir(&self) -> PathBuf {
        self.st.state_dir.clone()
    }

    fn log(&self, name: &str) -> PathBuf {
        self.dir().join("logs").join(format!("{name}.log"))
    }

    /// Records then creates a network namespace.
    fn netns(&mut self, name: &str) -> Result<()> {
        self.st.netns.push(name.to_owned());
        self.st.save()?;
        control_plane::node_agent::netns::create_netns(name)
            .with_context(|| format!("creating network namespace {name}"))?;
        Ok(())
    }

    /// A veth from namespace `ns` (its `eth0`, `addr`/24) to the underlay bridge.
    fn plug(&self, ns: &str, port: &str, addr: std::net::Ipv4Addr) -> Result<()> {
        let ul = format!("{}-ul", self.st.prefix);
        ip_in(
            &ul,
            &[
                "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns,
            ],
        )?;
        ip_in(&ul, &["link", "set", port, "master", "br0", "up"])?;
        ip_in(ns, &["addr", "add", &format!("{addr}/24"), "dev", "eth0"])?;
        ip_in(ns, &["link", "set", "eth0", "up"])
    }

    /// Records then creates a cgroup directory.
    fn cgroup(&mut self, path: &Path) -> Result<()> {
        self.st.cgroups.push(path.to_owned());
        self.st.save()?;
        std::fs::create_dir(path).with_context(|| format!("creating cgroup {}", path.display()))
    }

    /// Starts a component and records it.
    fn start(
        &mut self,
        name: &str,
        netns: Option<&str>,
        cgroup: Option<&Path>,
        program: &Path,
        args: &[String],
    ) -> Result<()> {
        let log = self.log(&name.replace(' ', "-"));
        let (rec, _child) = spawn(
            name,
            netns,
            cgroup,
            program,
            args,
            &[("RUST_LOG", "info")],
            &log,
        )?;
        // The child is not waited for: its zombie (until we exit) reads as dead.
        self.st.processes.push(rec);
        self.st.save()
    }

    /// Polls `f` every 200 ms until it gives a value; fails after the
    /// timeout, or as soon as a recorded process has exited, naming its log.
    fn wait<T>(&self, what: &str, mut f: impl FnMut() -> Result<Option<T>>) -> Result<T> {
        let start = Instant::now();
        let mut last = String::new();
        loop {
            for p in &self.st.processes {
                if !is_same_running(p) {
                    bail!(
                        "{} exited while waiting for {what}; its log {}:\n{}",
                        p.name,
                        p.log.display(),
                        sys::tail(&p.log, 20)
                    );
                }
            }
            match f() {
                Ok(Some(v)) => return Ok(v),
                Ok(None) => {}
                Err(e) => last = format!("{e:#}"),
            }
            if start.elapsed() > self.timeout {
                let logs: Vec<String> = self
                    .st
                    .processes
                    .iter()
                    .map(|p| p.log.display().to_string())
                    .collect();
                bail!(
                    "{what}: not within {:?}{}; logs: {}",
                    self.timeout,
                    if last.is_empty() {
                        String::new()
                    } else {
                        format!(" (last error: {last})")
                    },
                    logs.join(", ")
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn build(&mut self, o: &UpOpts, rt: &Runtime) -> Result<()> {
        let p = self.st.prefix.clone();
        let dir = self.dir();
        let (ul, cp, ext) = (format!("{p}-ul"), self.st.cp_netns(), self.st.ext_netns());

        // The underlay, the control-plane and external namespaces.
        self.netns(&ul)?;
        ip_in(&ul, &["link", "add", "br0", "type", "bridge"])?;
        ip_in(&ul, &["link", "set", "br0", "up"])?;
        self.netns(&cp)?;
        self.plug(&cp, "cp", CP_ADDR)?;
        self.netns(&ext)?;
        self.plug(&ext, "ext", EXT_ADDR)?;

        // The cgroup subtree and the bpffs the daemons pin under.
        let cg = sys::cgroup2_root()?.join(format!("{p}-cluster"));
        self.cgroup(&cg)?;
        let bpf = dir.join("bpf");
        std::fs::create_dir_all(&bpf)?;
        self.st.mounts.push(bpf.clone());
        self.st.save()?;
        sys::run("mount", &["-t", "bpf", "bpf", &bpf.to_string_lossy()])?;

        // Node namespaces: forwarding on, no redirects on the shared underlay.
        for i in 1..=o.nodes {
            let ns = format!("{p}-n{i}");
            self.netns(&ns)?;
            self.plug(&ns, &format!("n{i}"), node_addr(i))?;
            sysctl_in(&ns, "net.ipv4.ip_forward", "1")?;
            sysctl_in(&ns, "net.ipv4.conf.all.rp_filter", "0")?;
            sysctl_in(&ns, "net.ipv4.conf.default.rp_filter", "0")?;
            sysctl_in(&ns, "net.ipv4.conf.all.send_redirects", "0")?;
            let node_cg = cg.join(format!("node-{i}"));
            self.cgroup(&node_cg)?;
            self.st.nodes.push(NodeRec {
                name: format!("node-{i}"),
                netns: ns,
                addr: node_addr(i),
                cgroup: node_cg,
                pin_root: bpf.join(format!("node-{i}")),
                agent_root: dir.join("nodes").join(format!("node-{i}")),
            });
            self.st.save()?;
        }
        sysctl_in(&cp, "net.ipv4.conf.all.rp_filter", "0")?;

        // etcd and the API server, inside the control-plane namespace.
        let api_dir = dir.join("apiserver");
        let mut api_args: Vec<String> = vec![
            "--listen".into(),
            format!("{CP_ADDR}:{API_PORT}"),
            "--advertise-address".into(),
            CP_ADDR.to_string(),
            "--data-dir".into(),
            api_dir.display().to_string(),
            "--service-cluster-ip-range".into(),
            SERVICE_CIDR.into(),
        ];
        if o.etcd {
            let url = "http://127.0.0.1:2379";
            let peer = "http://127.0.0.1:2380";
            let args: Vec<String> = [
                "--name",
                "default",
                "--data-dir",
                &dir.join("etcd").display().to_string(),
                "--listen-client-urls",
                url,
                "--advertise-client-urls",
                url,
                "--listen-peer-urls",
                peer,
                "--initial-advertise-peer-urls",
                peer,
                "--initial-cluster",
                &format!("default={peer}"),
            ]
            .map(str::to_owned)
            .to_vec();
            self.start("etcd", Some(&cp), None, Path::new("etcd"), &args)?;
            let c = cp.clone();
            self.wait("etcd to answer /health", || {
                let (code, body) = http_get(&c, "127.0.0.1:2379".parse()?, "/health")?;
                Ok((code == 200 && body.contains("true")).then_some(()))
            })?;
            api_args.extend(["--etcd-servers".into(), url.into()]);
        }
        self.start(
            "sy-apiserver",
            Some(&cp),
            None,
            &sibling("sy-apiserver")?,
            &api_args,
        )?;
        let admin = api_dir.join("admin.kubeconfig");
        let api_addr = SocketAddr::from((CP_ADDR, API_PORT));
        {
            let (c, a) = (cp.clone(), admin.clone());
            self.wait("sy-apiserver to listen", || {
                Ok((a.exists() && tcp_ok(&c, api_addr)).then_some(()))
            })?;
        }
        self.st.admin_kubeconfig = Some(admin.clone());
        self.st.save()?;

        // The relay on the root namespace's loopback, and its kubeconfig.
        let port_file = dir.join("apiserver.port");
        let relay_args: Vec<String> = vec![
            "relay".into(),
            "--netns".into(),
            cp.clone(),
            "--upstream".into(),
            api_addr.to_string(),
            "--port-file".into(),
            port_file.display().to_string(),
        ];
        self.start("relay", None, None, &std::env::current_exe()?, &relay_args)?;
        let port: u16 = self.wait("the API relay's port", || {
            Ok(std::fs::read_to_string(&port_file)
                .ok()
                .and_then(|s| s.trim().parse().ok()))
        })?;
        let kubeconfig = dir.join("kubeconfig");
        write_kubeconfig(&admin, &kubeconfig, &format!("https://127.0.0.1:{port}"))?;
        self.st.kubeconfig = Some(kubeconfig.clone());
        self.st.save()?;
        let client = rt.block_on(client_for(&kubeconfig))?;
        self.wait(
            "the API server to serve (namespace default, through the relay)",
            || {
                let ns: Api<Namespace> = Api::all(client.clone());
                Ok(rt.block_on(ns.get_opt("default"))?.map(|_| ()))
            },
        )?;

        // Controllers, scheduler, DNS: clients of the API server on the underlay.
        let kc = admin.display().to_string();
        let cm_args: Vec<String> = [
            "--kubeconfig",
            &kc,
            "--allocate-node-cidrs=true",
            "--cluster-cidr",
            CLUSTER_CIDR,
            "--service-cluster-ip-range",
            SERVICE_CIDR,
        ]
        .map(str::to_owned)
        .to_vec();
        self.start(
            "sy-controller-manager",
            Some(&cp),
            None,
            &sibling("sy-controller-manager")?,
            &cm_args,
        )?;
        self.start(
            "sy-scheduler",
            Some(&cp),
            None,
            &sibling("sy-scheduler")?,
            &["--kubeconfig".into(), kc.clone()],
        )?;
        let dns_args: Vec<String> = vec![
            "--kubeconfig".into(),
            kc.clone(),
            "--listen".into(),
            format!("{CP_ADDR}:53"),
            "--health-listen".into(),
            format!("{CP_ADDR}:8080"),
            "--ready-listen".into(),
            format!("{CP_ADDR}:8181"),
        ];
        self.start("sy-dns", Some(&cp), None, &sibling("sy-dns")?, &dns_args)?;
        rt.block_on(dns_service(&client))?;

        // The image, built once and imported by every node.
        let image = dir.join("image");
        let netprobe = sibling("netprobe")?;
        let agent = sibling("sy-node-agent")?;
        sys::run(
            &agent.to_string_lossy(),
            &[
                "image",
                "build",
                "--out",
                &image.to_string_lossy(),
                "--name",
                IMAGE,
                "--add",
                &format!("{}:/bin/netprobe", netprobe.display()),
            ],
        )?;
        let switchyard = sibling("switchyard")?;
        for n in self.st.nodes.clone() {
            std::fs::create_dir_all(&n.agent_root)?;
            sys::run(
                &agent.to_string_lossy(),
                &[
                    "--root-dir",
                    &n.agent_root.to_string_lossy(),
                    "image",
                    "import",
                    &image.to_string_lossy(),
                ],
            )?;
            let agent_args: Vec<String> = [
                "--kubeconfig",
                &kc,
                "--node-name",
                &n.name,
                "--node-netns",
                &n.netns,
                "--root-dir",
                &n.agent_root.to_string_lossy(),
                "--address",
                &n.addr.to_string(),
                "--port",
                "10250",
                "--cluster-dns",
                DNS_IP,
                "--lease-interval",
                "5s",
            ]
            .map(str::to_owned)
            .to_vec();
            self.start(
                &format!("sy-node-agent {}", n.name),
                Some(&n.netns),
                Some(&n.cgroup),
                &agent,
                &agent_args,
            )?;
            let daemon_args: Vec<String> = [
                "--kubeconfig",
                &kc,
                "--hostname-override",
                &n.name,
                "--node-netns",
                &n.netns,
                "--cgroup-path",
                &n.cgroup.to_string_lossy(),
                "--pod-interface-name-prefix",
                "veth",
                "--cluster-cidr",
                CLUSTER_CIDR,
                "--pin-root",
                &n.pin_root.to_string_lossy(),
                "--healthz-bind-address",
                "127.0.0.1:10256",
                "--metrics-bind-address",
                "127.0.0.1:10249",
                "--max-frontends",
                "1024",
                "--max-backends",
                "4096",
                "--max-backend-slots",
                "4096",
                "--max-conntrack",
                "16384",
                "--max-affinity",
                "4096",
                "--max-sockets",
                "4096",
            ]
            .map(str::to_owned)
            .to_vec();
            self.start(
                &format!("switchyard {}", n.name),
                Some(&n.netns),
                Some(&n.cgroup),
                &switchyard,
                &daemon_args,
            )?;
        }

        // Nodes registered, Ready, given a pod CIDR; then the routes to
        // each node's pods (a cloud route controller's job).
        let mut cidrs = Vec::new();
        for n in self.st.nodes.clone() {
            let api: Api<Node> = Api::all(client.clone());
            let cidr = self.wait(&format!("Node {} Ready with a podCIDR", n.name), || {
                let Some(node) = rt.block_on(api.get_opt(&n.name))? else {
                    return Ok(None);
                };
                let ready = node
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
                Ok(node.spec.and_then(|s| s.pod_cidr).filter(|_| ready))
            })?;
            cidrs.push(cidr);
        }
        for (i, n) in self.st.nodes.iter().enumerate() {
            for (j, m) in self.st.nodes.iter().enumerate() {
                if i != j {
                    ip_in(
                        &n.netns,
                        &["route", "replace", &cidrs[j], "via", &m.addr.to_string()],
                    )?;
                }
            }
            ip_in(
                &cp,
                &["route", "replace", &cidrs[i], "via", &n.addr.to_string()],
            )?;
        }
        for n in self.st.nodes.clone() {
            let ns = n.netns.clone();
            self.wait(&format!("switchyard on {} to be healthy", n.name), || {
                let (code, _) = http_get(&ns, "127.0.0.1:10256".parse()?, "/healthz")?;
                Ok((code == 200).then_some(()))
            })?;
        }
        let c = cp.clone();
        self.wait("sy-dns to be ready", || {
            let (code, _) = http_get(&c, SocketAddr::from((CP_ADDR, 8181)), "/ready")?;
            Ok((code == 200).then_some(()))
        })?;
        Ok(())
    }
}

/// A kube client from a kubeconfig file.
pub async fn client_for(kubeconfig: &Path) -> Result<Client> {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig)
        .with_context(|| format!("reading {}", kubeconfig.display()))?;
    let cfg = kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
        .await?;
    Ok(Client::try_from(cfg)?)
}

/// Copies kubeconfig `from` to `to` with every cluster's server set to `server`.
fn write_kubeconfig(from: &Path, to: &Path, server: &str) -> Result<()> {
    let mut v: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(from).with_context(|| format!("reading {}", from.display()))?,
    )?;
    if let Some(clusters) = v.get_mut("clusters").and_then(|c| c.as_sequence_mut()) {
        for c in clusters {
            if let Some(cl) = c.get_mut("cluster").and_then(|c| c.as_mapping_mut()) {
                cl.insert("server".into(), server.into());
            }
        }
    }
    std::fs::write(to, serde_yaml::to_string(&v)?)
        .with_context(|| format!("writing {}", to.display()))?;
    Ok(())
}

/// `kube-system/kube-dns` at 10.96.0.10 without a selector, and its
/// EndpointSlice naming sy-dns on the control-plane namespace's address
/// (sy-dns runs there as a process, not as a pod).
async fn dns_service(client: &Client) -> Result<()> {
    let svc: Service = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "kube-dns", "namespace": "kube-system",
                     "labels": {"k8s-app": "kube-dns", "kubernetes.io/name": "CoreDNS"}},
        "spec": {"clusterIP": DNS_IP, "ports": [
            {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
            {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53}]}
    }))?;
    let slice: EndpointSlice = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "kube-dns-sy-cluster", "namespace": "kube-system",
                     "labels": {"kubernetes.io/service-name": "kube-dns",
                                "endpointslice.kubernetes.io/managed-by": "sy-cluster"}},
        "addressType": "IPv4",
        "ports": [{"name": "dns", "port": 53, "protocol": "UDP"},
                  {"name": "dns-tcp", "port": 53, "protocol": "TCP"}],
        "endpoints": [{"addresses": [CP_ADDR.to_string()],
                       "conditions": {"ready": true, "serving": true, "terminating": false}}]
    }))?;
    let pp = PostParams::default();
    Api::<Service>::namespaced(client.clone(), "kube-system")
        .create(&pp, &svc)
        .await
        .context("creating Service kube-system/kube-dns")?;
    Api::<EndpointSlice>::namespaced(client.clone(), "kube-system")
        .create(&pp, &slice)
        .await
        .context("creating EndpointSlice kube-system/kube-dns-sy-cluster")?;
    Ok(())
}
