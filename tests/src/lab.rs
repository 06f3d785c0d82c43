//! Labs built on a [`NodeTopology`]:
//! - [`Testbed`]: the topology, a server in every backend pod, and the
//!   node's cgroup; the programs are attached by whoever uses it (the CLI
//!   tests and the demo run `switchyard attach`).
//! - [`Lab`]: a testbed with Switchyard's programs loaded in-process (socket
//!   hooks on the node cgroup, TC on every pod-facing interface) and a
//!   reconciler to program them.
use std::path::PathBuf;

use anyhow::{Context as _, Result, bail};
use switchyard::{
    datapath::{AyaLbMaps, MapSizes, loader::Dataplane},
    reconcile::Reconciler,
    table_file,
};

use crate::{
    fs::Cgroup,
    netns::InNetns,
    probe::Outcome,
    proc::{Proc, sibling_binary},
    topology::NodeTopology,
    unique_prefix,
};

/// Port every backend server listens on.
pub const BACKEND_PORT: u16 = 8080;

/// Which datapaths carry the client's traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hooks {
    /// Socket hooks on the node cgroup, TC as fallback: production setup.
    SocketAndTc,
    /// TC alone: the socket hooks are not attached.
    TcOnly,
}

/// Where a client process runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientPlacement {
    /// In the node's cgroup: the socket hooks see it.
    InNodeCgroup,
    /// Outside it: only the TC path can translate its traffic.
    OutsideCgroup,
}

pub struct Testbed {
    // Field order is drop order: servers, then cgroup, then namespaces.
    _servers: Vec<Proc>,
    pub cgroup: Cgroup,
    pub topo: NodeTopology,
    pub prefix: String,
    netprobe: PathBuf,
}

impl Testbed {
    pub fn new(backends: u8) -> Result<Self> {
        let prefix = unique_prefix();
        let topo = NodeTopology::build(&prefix, backends)?;
        let cgroup = Cgroup::new(&prefix)?;
        let netprobe = netprobe()?;
        let mut servers = Vec::new();
        for pod in &topo.backends {
            let port = BACKEND_PORT.to_string();
            let mut p = Proc::spawn_in(
                pod.netns.name(),
                None,
                &netprobe,
                &["serve", "--name", &pod.name, "--port", &port],
            )?;
            let ready = p.read_line()?;
            if ready != "ready" {
                bail!("server in {} said `{ready}`", pod.name);
            }
            servers.push(p);
        }
        Ok(Self {
            _servers: servers,
            cgroup,
            topo,
            prefix,
            netprobe,
        })
    }

    /// `ip:port` of backend `b{i}` (1-based).
    pub fn backend(&self, i: usize) -> String {
        format!("{}:{BACKEND_PORT}", self.topo.backends[i - 1].ip)
    }

    /// Starts `netprobe args…` in the client pod.
    pub fn spawn_client(&self, placement: ClientPlacement, args: &[&str]) -> Result<Proc> {
        let procs = self.cgroup.procs_file();
        let cgroup = (placement == ClientPlacement::InNodeCgroup).then_some(procs.as_path());
        Proc::spawn_in(self.topo.client.netns.name(), cgroup, &self.netprobe, args)
    }

    /// Runs a `netprobe` client to completion and returns what it saw.
    pub fn client(&self, placement: ClientPlacement, args: &[&str]) -> Result<Outcome> {
        let out = self.spawn_client(placement, args)?.finish()?;
        serde_json::from_str(out.trim()).with_context(|| format!("netprobe printed `{out}`"))
    }
}

pub struct Lab {
    // Field order is drop order: maps and programs before the testbed.
    reconciler: Reconciler<AyaLbMaps>,
    /// Keeps the programs loaded and attached for the lab's lifetime.
    _dataplane: Dataplane,
    pub bed: Testbed,
    pub hooks: Hooks,
}

impl Lab {
    pub fn new(hooks: Hooks, backends: u8) -> Result<Self> {
        let bed = Testbed::new(backends)?;
        let mut dataplane = Dataplane::load(None, &MapSizes::small())?;
        {
            let _in_node = InNetns::enter(&bed.topo.node)?;
            for iface in bed.topo.host_ifs() {
                dataplane.attach_tc(iface)?;
            }
        }
        if hooks == Hooks::SocketAndTc {
            dataplane.attach_cgroup(bed.cgroup.path())?;
        }
        let reconciler = Reconciler::restore(dataplane.lb_maps()?)?;
        Ok(Self {
            reconciler,
            _dataplane: dataplane,
            bed,
            hooks,
        })
    }

    pub fn backend(&self, i: usize) -> String {
        self.bed.backend(i)
    }

    /// Applies a table file's text.
    pub fn apply(&mut self, yaml: &str) -> Result<()> {
        let table = table_file::parse(yaml)?;
        self.reconciler.apply(&table)?;
        Ok(())
    }

    /// Starts a client in the client pod, inside the node cgroup.
    pub fn spawn_client(&self, args: &[&str]) -> Result<Proc> {
        self.bed.spawn_client(ClientPlacement::InNodeCgroup, args)
    }

    /// Runs a client in the client pod, inside the node cgroup.
    pub fn client(&self, args: &[&str]) -> Result<Outcome> {
        self.bed.client(ClientPlacement::InNodeCgroup, args)
    }

    /// Conntrack entries (forward and reply) of flows the per-packet path
    /// translated; flows it merely tracked are left out.
    pub fn conntrack_entries(&mut self) -> Result<usize> {
        let entries = self.reconciler.maps_mut().conntrack_mut().entries()?;
        Ok(entries
            .iter()
            .filter(|(_, v)| v.flags & proxy_common::ct::CT_FLAG_NAT != 0)
            .count())
    }
}

/// The `netprobe` binary of this build.
pub fn netprobe() -> Result<PathBuf> {
    match option_env!("CARGO_BIN_EXE_netprobe") {
        Some(p) => Ok(PathBuf::from(p)),
        None => sibling_binary("netprobe"),
    }
}
