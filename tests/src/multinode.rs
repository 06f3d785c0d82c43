//! A cluster of several nodes in a box, for north-south tests: each node a
//! network namespace with its own pods, pod CIDR, cgroup and `switchyard`
//! daemon; the nodes joined by an underlay bridge in a namespace of its own;
//! an `external` namespace on the underlay playing a client outside the
//! cluster. Nothing is created in the root network namespace, and every
//! address lives only inside these namespaces.
//!
//! ```text
//!                   underlay netns: bridge br0
//!        ┌──────────────────┼──────────────────┬─────────────────┐
//!   node-1: eth0        node-2: eth0       (node-3 …)      external: eth0
//!   192.168.0.11/24     192.168.0.12/24                    192.168.0.200/24
//!   pods 10.244.1.0/24  pods 10.244.2.0/24
//!   routes 10.244.2.0/24 via 192.168.0.12, …
//! ```
//! Node `i`'s pods are `c` (a client, 10.244.i.10) and `b1…bn` (servers,
//! 10.244.i.11…, named `n<i>b<k>`), behind veths `h0…hn` — the daemon finds
//! them by the `h` prefix, and its NodePort interface (eth0) by its address.
//! With [`PodNetwork::Bridge`] the pods' veths are instead ports of a bridge
//! `cni0` holding 10.244.i.1/24 (the bridge CNI plugin's layout, flannel's
//! too), and the nodes filter by reverse path strictly.
//! The API server runs on loopback in the root namespace, as in
//! [`crate::cluster`]; the daemons run there too and reach into their node
//! with `--node-netns`.
use std::{
    net::{Ipv4Addr, SocketAddrV4},
    path::Path,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use switchyard::datapath::MapSizes;

use crate::{
    cluster::{ApiServer, Daemon, Kubectl, TempDir},
    cmd::{ip_in, sysctl_in},
    fs::{Cgroup, PrivateBpffs},
    lab::{BACKEND_PORT, netprobe},
    netns::Netns,
    probe::Outcome,
    proc::Proc,
    unique_prefix,
};

/// The external client's address.
pub const EXTERNAL_ADDR: Ipv4Addr = Ipv4Addr::new(192, 168, 0, 200);
/// Every pod's default gateway, held by its node.
const GATEWAY: &str = "169.254.1.1";

/// How pods are wired to their node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PodNetwork {
    /// A veth per pod with a /32 route, a link-local gateway (Calico's
    /// and Cilium's layout).
    PointToPoint,
    /// Veths enslaved to the bridge `cni0` (the bridge plugin's layout).
    Bridge,
}

/// The bridge of [`PodNetwork::Bridge`].
pub const POD_BRIDGE: &str = "cni0";

/// A pod: its namespace and the node end of its veth.
pub struct Pod {
    // The server goes before the namespace it runs in.
    server: Option<Proc>,
    pub name: String,
    pub ip: Ipv4Addr,
    pub host_if: String,
    pub netns: Netns,
}

/// One node of the box.
pub struct Node {
    // Field order is drop order: servers and pods, then the node.
    pub pods: Vec<Pod>,
    pub cgroup: Cgroup,
    pub netns: Netns,
    /// `node-<i>`.
    pub name: String,
    /// 1-based.
    pub index: u8,
    /// Its underlay address, 192.168.0.(10+i).
    pub addr: Ipv4Addr,
    /// How its pods are wired.
    pub pod_network: PodNetwork,
}

impl Node {
    /// The node's client pod (`c`, outside or inside its cgroup per call).
    pub fn client(&self) -> &Pod {
        &self.pods[0]
    }

    /// Server pod `b<k>` (1-based).
    pub fn backend(&self, k: usize) -> &Pod {
        &self.pods[k]
    }

    /// The pod-facing veth names, for the daemon's prefix.
    pub const POD_IF_PREFIX: &'static str = "h";

    /// Adds a pod while everything runs (as a node agent would): a new
    /// namespace, veth and route, and a server named `name`.
    pub fn add_pod(&mut self, prefix: &str, name: &str, serve: bool) -> Result<&Pod> {
        let k = self.pods.len() as u8;
        let pod = make_pod(self, prefix, name, k, serve)?;
        self.pods.push(pod);
        Ok(self.pods.last().expect("just pushed"))
    }
}

/// The whole box, without the control plane.
pub struct Network {
    // Drop order: external client and nodes, then the underlay.
    pub external: Netns,
    pub nodes: Vec<Node>,
    pub underlay: Netns,
    pub prefix: String,
}

impl Network {
    /// `nodes` nodes with `backends` server pods each, point-to-point.
    pub fn build(nodes: u8, backends: u8) -> Result<Self> {
        Self::build_with(nodes, backends, PodNetwork::PointToPoint)
    }

    /// `nodes` nodes with `backends` server pods each, wired as `pods`.
    pub fn build_with(nodes: u8, backends: u8, pods: PodNetwork) -> Result<Self> {
        let prefix = unique_prefix();
        let underlay = Netns::new(&format!("{prefix}-ul"))?;
        let u = underlay.name().to_owned();
        ip_in(&u, &["link", "add", "br0", "type", "bridge"])?;
        ip_in(&u, &["link", "set", "br0", "up"])?;
        let mut built = Vec::new();
        for i in 1..=nodes {
            let ns = Netns::new(&format!("{prefix}-n{i}"))?;
            let addr = Ipv4Addr::new(192, 168, 0, 10 + i);
            plug(&u, &ns, &format!("p{i}"), addr)?;
            let n = ns.name().to_owned();
            sysctl_in(&n, "net.ipv4.ip_forward", "1")?;
            // Bridged nodes filter strictly, as RHEL's defaults do: replies
            // rewritten to a frontend must never meet the input path's check.
            let rp_filter = if pods == PodNetwork::Bridge { "1" } else { "0" };
            sysctl_in(&n, "net.ipv4.conf.all.rp_filter", rp_filter)?;
            sysctl_in(&n, "net.ipv4.conf.default.rp_filter", rp_filter)?;
            // A node answering for its pods on the shared underlay must not
            // tell the others to route around it.
            sysctl_in(&n, "net.ipv4.conf.all.send_redirects", "0")?;
            if pods == PodNetwork::Bridge {
                ip_in(&n, &["link", "add", POD_BRIDGE, "type", "bridge"])?;
                let gw = format!("10.244.{i}.1/24");
                ip_in(&n, &["addr", "add", &gw, "dev", POD_BRIDGE])?;
                ip_in(&n, &["link", "set", POD_BRIDGE, "up"])?;
            } else {
                ip_in(
                    &n,
                    &["addr", "add", &format!("10.244.{i}.1/32"), "dev", "lo"],
                )?;
                ip_in(&n, &["addr", "add", &format!("{GATEWAY}/32"), "dev", "lo"])?;
            }
            for j in 1..=nodes {
                if j != i {
                    ip_in(
                        &n,
                        &[
                            "route",
                            "add",
                            &format!("10.244.{j}.0/24"),
                            "via",
                            &format!("192.168.0.{}", 10 + j),
                        ],
                    )?;
                }
            }
            let mut node = Node {
                pods: Vec::new(),
                cgroup: Cgroup::new(&format!("{prefix}-n{i}"))?,
                netns: ns,
                name: format!("node-{i}"),
                index: i,
                addr,
                pod_network: pods,
            };
            node.add_pod(&prefix, "c", false)?;
            for k in 1..=backends {
                node.add_pod(&prefix, &format!("n{i}b{k}"), true)?;
            }
            built.push(node);
        }
        let external = Netns::new(&format!("{prefix}-ext"))?;
        plug(&u, &external, "pext", EXTERNAL_ADDR)?;
        Ok(Self {
            external,
            nodes: built,
            underlay,
            prefix,
        })
    }

    /// Node `i` (1-based).
    pub fn node(&self, i: usize) -> &Node {
        &self.nodes[i - 1]
    }

    /// Routes `addr` (an externalIP or LoadBalancer IP) from the external
    /// namespace to node `i`, as a router or cloud load balancer would.
    pub fn route_external(&self, addr: Ipv4Addr, i: usize) -> Result<()> {
        ip_in(
            self.external.name(),
            &[
                "route",
                "replace",
                &format!("{addr}/32"),
                "via",
                &self.node(i).addr.to_string(),
            ],
        )?;
        Ok(())
    }

    /// Runs `netprobe args…` in the external namespace; its outcome.
    pub fn from_external(&self, args: &[&str]) -> Result<Outcome> {
        outcome(Proc::spawn_in(
            self.external.name(),
            None,
            &netprobe()?,
            args,
        )?)
    }

    /// Runs `netprobe args…` in pod `pod` of node `i`, inside the node's
    /// cgroup (socket path) or not (per-packet path).
    pub fn from_pod(
        &self,
        i: usize,
        pod: usize,
        in_cgroup: bool,
        args: &[&str],
    ) -> Result<Outcome> {
        outcome(self.spawn_in_pod(i, pod, in_cgroup, args)?)
    }

    /// Starts `netprobe args…` in a pod, as [`Self::from_pod`].
    pub fn spawn_in_pod(
        &self,
        i: usize,
        pod: usize,
        in_cgroup: bool,
        args: &[&str],
    ) -> Result<Proc> {
        let node = self.node(i);
        let procs = node.cgroup.procs_file();
        let cg = in_cgroup.then_some(procs.as_path());
        Proc::spawn_in(node.pods[pod].netns.name(), cg, &netprobe()?, args)
    }

    /// Runs `netprobe args…` as a process of node `i` itself (its
    /// namespace and cgroup: the socket path).
    pub fn from_node(&self, i: usize, args: &[&str]) -> Result<Outcome> {
        outcome(self.spawn_in_node(i, args)?)
    }

    /// Starts `netprobe args…` as a process of node `i`, as
    /// [`Self::from_node`].
    pub fn spawn_in_node(&self, i: usize, args: &[&str]) -> Result<Proc> {
        let node = self.node(i);
        let procs = node.cgroup.procs_file();
        Proc::spawn_in(node.netns.name(), Some(&procs), &netprobe()?, args)
    }
}

fn outcome(p: Proc) -> Result<Outcome> {
    let out = p.finish()?;
    serde_json::from_str(out.trim()).with_context(|| format!("netprobe printed `{out}`"))
}

/// A veth from `ns` (its `eth0`, holding `addr`/24) to the underlay bridge.
fn plug(underlay: &str, ns: &Netns, port: &str, addr: Ipv4Addr) -> Result<()> {
    ip_in(
        underlay,
        &[
            "link",
            "add",
            port,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            ns.name(),
        ],
    )?;
    ip_in(underlay, &["link", "set", port, "master", "br0", "up"])?;
    ip_in(
        ns.name(),
        &["addr", "add", &format!("{addr}/24"), "dev", "eth0"],
    )?;
    ip_in(ns.name(), &["link", "set", "eth0", "up"])?;
    Ok(())
}

fn make_pod(node: &Node, prefix: &str, name: &str, k: u8, serve: bool) -> Result<Pod> {
    let ip = Ipv4Addr::new(10, 244, node.index, 10 + k);
    let netns = Netns::new(&format!("{prefix}-n{}p{k}", node.index))?;
    let (nn, pn) = (node.netns.name(), netns.name());
    let host_if = format!("{}{k}", Node::POD_IF_PREFIX);
    ip_in(
        nn,
        &[
            "link", "add", &host_if, "type", "veth", "peer", "name", "eth0", "netns", pn,
        ],
    )?;
    if node.pod_network == PodNetwork::Bridge {
        let gateway = format!("10.244.{}.1", node.index);
        ip_in(pn, &["addr", "add", &format!("{ip}/24"), "dev", "eth0"])?;
        ip_in(pn, &["link", "set", "eth0", "up"])?;
        ip_in(pn, &["route", "add", "default", "via", &gateway])?;
        ip_in(nn, &["link", "set", &host_if, "master", POD_BRIDGE, "up"])?;
    } else {
        ip_in(pn, &["addr", "add", &format!("{ip}/32"), "dev", "eth0"])?;
        ip_in(pn, &["link", "set", "eth0", "up"])?;
        ip_in(
            pn,
            &["route", "add", GATEWAY, "dev", "eth0", "scope", "link"],
        )?;
        ip_in(
            pn,
            &["route", "add", "default", "via", GATEWAY, "dev", "eth0"],
        )?;
        ip_in(nn, &["link", "set", &host_if, "up"])?;
        ip_in(nn, &["route", "add", &format!("{ip}/32"), "dev", &host_if])?;
    }
    let server = if serve {
        let port = BACKEND_PORT.to_string();
        let mut p = Proc::spawn_in(
            pn,
            None,
            &netprobe()?,
            &["serve", "--name", name, "--port", &port],
        )?;
        let ready = p.read_line()?;
        if ready != "ready" {
            bail!("server in {name} said `{ready}`");
        }
        Some(p)
    } else {
        None
    };
    Ok(Pod {
        server,
        name: name.to_owned(),
        ip,
        host_if,
        netns,
    })
}

impl Pod {
    /// `ip:8080`, where its server listens.
    pub fn endpoint(&self) -> SocketAddrV4 {
        SocketAddrV4::new(self.ip, BACKEND_PORT)
    }

    /// Stops its server (the pod stays): the endpoint answers nothing.
    pub fn stop_server(&mut self) {
        self.server = None;
    }
}

/// The box with its control plane: the API server, the Nodes registered
/// (as kubelets would register them, with their InternalIP), and a
/// `switchyard` daemon per node.
pub struct Cluster {
    // Drop order: daemons and the API server, then pins, then the network.
    pub daemons: Vec<Daemon>,
    pub api: ApiServer,
    pub kubectl: Kubectl,
    pub bpffs: PrivateBpffs,
    pub net: Network,
    pub dir: TempDir,
}

impl Cluster {
    /// `nodes` nodes with `backends` server pods each, Nodes registered,
    /// every daemon healthy.
    pub fn start(nodes: u8, backends: u8) -> Result<Self> {
        Self::start_with(nodes, backends, |_, _| {})
    }

    /// The same, with each daemon's flags adjusted by `edit(node, args)`.
    pub fn start_with(
        nodes: u8,
        backends: u8,
        edit: impl Fn(&Node, &mut Vec<String>),
    ) -> Result<Self> {
        Self::start_on(Network::build(nodes, backends)?, edit)
    }

    /// The same on pods bridged by `cni0` ([`PodNetwork::Bridge`]).
    pub fn start_bridged(nodes: u8, backends: u8) -> Result<Self> {
        Self::start_on(
            Network::build_with(nodes, backends, PodNetwork::Bridge)?,
            |_, _| {},
        )
    }

    fn start_on(net: Network, edit: impl Fn(&Node, &mut Vec<String>)) -> Result<Self> {
        let dir = TempDir::new(&net.prefix, "cluster")?;
        let bpffs = PrivateBpffs::new(&net.prefix)?;
        let api_dir = dir.path().join("apiserver");
        std::fs::create_dir_all(&api_dir)?;
        let api = ApiServer::start(&api_dir, 0)?;
        let kubectl = Kubectl::new(&api.kubeconfig(), &dir.path().join("home"))?;
        for node in &net.nodes {
            kubectl.apply(&node_yaml(node))?;
        }
        let mut daemons = Vec::new();
        for node in &net.nodes {
            let mut args = daemon_args(node, &api.kubeconfig(), bpffs.path())?;
            edit(node, &mut args);
            let log = dir.path().join(format!("switchyard-{}.log", node.name));
            daemons.push(Daemon::start(args, &log)?);
        }
        for d in &mut daemons {
            d.wait_healthy(Duration::from_secs(30))?;
        }
        Ok(Self {
            daemons,
            api,
            kubectl,
            bpffs,
            net,
            dir,
        })
    }

    /// The daemon of node `i` (1-based).
    pub fn daemon(&self, i: usize) -> &Daemon {
        &self.daemons[i - 1]
    }

    /// Waits until every daemon's maps hold `frontend` with `backends`.
    pub fn wait_frontend_everywhere(
        &self,
        frontend: &str,
        backends: Option<&[String]>,
    ) -> Result<()> {
        for d in &self.daemons {
            d.wait_frontend(frontend, backends)?;
        }
        Ok(())
    }

    /// Every daemon's log, for failure messages.
    pub fn logs(&self) -> String {
        self.daemons
            .iter()
            .map(|d| d.log())
            .collect::<Vec<_>>()
            .join("\n-----\n")
    }
}

/// A Node object as a kubelet registers it.
pub fn node_yaml(node: &Node) -> String {
    format!(
        "apiVersion: v1\nkind: Node\nmetadata:\n  name: {}\nspec:\n  podCIDR: 10.244.{}.0/24\nstatus:\n  addresses:\n  - {{type: InternalIP, address: {}}}\n  - {{type: Hostname, address: {}}}\n",
        node.name, node.index, node.addr, node.name
    )
}

/// Flags of node `node`'s daemon: its pins, its namespace, its cgroup, its
/// pods by prefix; NodePort addresses by default (all of the node's).
fn daemon_args(node: &Node, kubeconfig: &Path, bpffs: &Path) -> Result<Vec<String>> {
    let pin_root = bpffs.join(&node.name);
    let mut args = Daemon::base_args(&pin_root, kubeconfig, &node.name, &MapSizes::small())?;
    args.extend(
        [
            "--cluster-cidr",
            "10.244.0.0/16",
            "--cgroup-path",
            &node.cgroup.path().display().to_string(),
            "--node-netns",
            node.netns.name(),
            "--pod-interface-name-prefix",
            Node::POD_IF_PREFIX,
        ]
        .map(str::to_owned),
    );
    Ok(args)
}

/// An EndpointSlice for Service `svc` with `endpoints` as
/// (address, node name, ready, serving, terminating), on port 8080
/// (`port_name`, `protocol`).
pub fn slice_yaml(
    svc: &str,
    slice: &str,
    port_name: &str,
    protocol: &str,
    endpoints: &[(Ipv4Addr, &str, bool, bool, bool)],
) -> String {
    let mut y = format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {slice}\n  labels: {{kubernetes.io/service-name: {svc}}}\naddressType: IPv4\nports:\n- {{name: '{port_name}', port: {BACKEND_PORT}, protocol: {protocol}}}\nendpoints:\n"
    );
    if endpoints.is_empty() {
        y = y.replace("endpoints:\n", "endpoints: []\n");
    }
    for (ip, node, ready, serving, terminating) in endpoints {
        y.push_str(&format!(
            "- {{addresses: ['{ip}'], nodeName: {node}, conditions: {{ready: {ready}, serving: {serving}, terminating: {terminating}}}}}\n"
        ));
    }
    y
}
