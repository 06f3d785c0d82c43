//! Where the programs go, and putting them there: shared by
//! `switchyard attach` and the daemon, so both take the same flags.
use std::path::{Path, PathBuf};

use anyhow::Result;
use tracing::info;

use crate::{
    datapath::{MapSizes, loader::Dataplane},
    netns::with_netns,
};

/// The hooks to attach to.
#[derive(clap::Args, Debug, Default, Clone)]
pub struct HookArgs {
    /// cgroup v2 directory whose processes get socket-level load balancing
    /// (the host's cgroup2 root on a node).
    #[arg(long)]
    pub cgroup_path: Option<PathBuf>,
    /// Pod-facing interface whose ingress gets the per-packet path (repeatable).
    #[arg(long = "tc-iface")]
    pub tc_ifaces: Vec<String>,
    /// Pod-facing interfaces by name prefix, e.g. `veth` or `cali`: each
    /// one gets the per-packet path, including those created later
    /// (kube-proxy's flag of the same name).
    #[arg(long)]
    pub pod_interface_name_prefix: Option<String>,
    /// Node-facing interface that gets the NodePort programs (repeatable);
    /// the daemon also picks every interface holding a NodePort address.
    #[arg(long = "node-iface")]
    pub node_ifaces: Vec<String>,
    /// The node's network namespace (a /run/netns name or a path), where its
    /// interfaces, addresses and health-check ports live [default: this
    /// process's].
    #[arg(long = "node-netns", alias = "tc-netns")]
    pub tc_netns: Option<String>,
}

impl HookArgs {
    /// Whether no hook at all is named.
    pub fn is_empty(&self) -> bool {
        self.cgroup_path.is_none()
            && self.tc_ifaces.is_empty()
            && self.node_ifaces.is_empty()
            && self.pod_interface_name_prefix.is_none()
    }

    /// Whether `name` is a pod-facing interface.
    pub fn is_pod_iface(&self, name: &str) -> bool {
        self.tc_ifaces.iter().any(|i| i == name)
            || self
                .pod_interface_name_prefix
                .as_deref()
                .is_some_and(|p| !p.is_empty() && name.starts_with(p))
    }
}

/// Loads the programs (adopting the maps pinned under `pin_root`) and
/// attaches them to `hooks`. A second call, e.g. by a restarted daemon, is
/// make before break: there is never a moment without programs.
pub fn load_and_attach(pin_root: &Path, sizes: &MapSizes, hooks: &HookArgs) -> Result<Dataplane> {
    let mut dp = Dataplane::load(Some(pin_root), sizes)?;
    if let Some(cg) = &hooks.cgroup_path {
        dp.attach_cgroup(cg)?;
        info!(cgroup = %cg.display(), "socket hooks attached");
    }
    let attach_tc = |dp: &mut Dataplane| -> Result<()> {
        for iface in &hooks.tc_ifaces {
            dp.attach_tc(iface)?;
            info!(iface, "tc ingress attached");
        }
        for iface in &hooks.node_ifaces {
            dp.attach_node_iface(iface)?;
            info!(iface, "node-facing tc ingress and egress attached");
        }
        Ok(())
    };
    match &hooks.tc_netns {
        Some(ns) => with_netns(ns, || attach_tc(&mut dp))?,
        None => attach_tc(&mut dp)?,
    }
    let obsolete = dp.remove_obsolete_maps()?;
    if obsolete > 0 {
        info!(
            maps = obsolete,
            "removed the pins of an older version's maps"
        );
    }
    Ok(dp)
}
