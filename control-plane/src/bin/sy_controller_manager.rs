//! `sy-controller-manager`: the control plane's controllers in one process
//! (kube-controller-manager's flags where they exist), leader-elected on
//! the Lease `kube-system/kube-controller-manager` so that of several
//! copies only one acts. See docs/control-plane.md.
use std::{path::PathBuf, time::Duration};

use anyhow::Result;
use clap::Parser;
use control_plane::{
    client::{self, leader},
    controllers::{Shared, manager},
};
use tracing::info;

#[derive(Parser)]
#[command(
    name = "sy-controller-manager",
    version,
    about = "Kubernetes controllers over the API"
)]
struct Args {
    /// Kubeconfig of the API server (default: $KUBECONFIG, ~/.kube/config, in-cluster).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Controllers to run: `*` for all, `name` to add one, `-name` to leave one out.
    #[arg(long, value_delimiter = ',', default_value = "*")]
    controllers: Vec<String>,
    /// Hold a Lease before acting, so that only one copy acts.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    leader_elect: bool,
    /// How long a leader's claim lasts without renewal.
    #[arg(long, default_value = "15s", value_parser = manager::parse_duration)]
    leader_elect_lease_duration: Duration,
    /// How long a leader keeps trying to renew before it stops.
    #[arg(long, default_value = "10s", value_parser = manager::parse_duration)]
    leader_elect_renew_deadline: Duration,
    /// Time between attempts to acquire or renew.
    #[arg(long, default_value = "2s", value_parser = manager::parse_duration)]
    leader_elect_retry_period: Duration,
    /// The Lease's name.
    #[arg(long, default_value = "kube-controller-manager")]
    leader_elect_resource_name: String,
    /// The Lease's namespace.
    #[arg(long, default_value = "kube-system")]
    leader_elect_resource_namespace: String,
    /// This copy's identity in the Lease (default `<hostname>_<uuid>`).
    #[arg(long)]
    leader_elect_identity: Option<String>,
    /// Most endpoints in one EndpointSlice.
    #[arg(long, default_value_t = 100)]
    max_endpoints_per_slice: usize,
    /// Services synced at once by the EndpointSlice controller.
    #[arg(long, default_value_t = 5)]
    concurrent_service_endpoint_syncs: u16,
    /// ReplicaSets (and ReplicationControllers) synced at once.
    #[arg(long, default_value_t = 5)]
    concurrent_replicaset_syncs: u16,
    /// Jobs synced at once.
    #[arg(long, default_value_t = 5)]
    concurrent_job_syncs: u16,
    /// Objects the garbage collector syncs at once, per resource.
    #[arg(long, default_value_t = 5)]
    concurrent_gc_syncs: u16,
    /// Terminating namespaces emptied at once.
    #[arg(long, default_value_t = 10)]
    concurrent_namespace_syncs: u16,
    /// Most endpoints the mirroring controller puts in one slice.
    #[arg(long, default_value_t = 1000)]
    mirroring_max_endpoints_per_subset: usize,
    /// Endpoints objects mirrored at once.
    #[arg(long, default_value_t = 5)]
    mirroring_concurrent_service_endpoint_syncs: u16,
    /// How often each Node's health is checked.
    #[arg(long, default_value = "5s", value_parser = manager::parse_duration)]
    node_monitor_period: Duration,
    /// How long a Node may stay silent before it is marked Unknown.
    #[arg(long, default_value = "50s", value_parser = manager::parse_duration)]
    node_monitor_grace_period: Duration,
    /// The same, for a Node that never posted Ready.
    #[arg(long, default_value = "60s", value_parser = manager::parse_duration)]
    node_startup_grace_period: Duration,
    /// Give every Node a podCIDR from --cluster-cidr.
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set)]
    allocate_node_cidrs: bool,
    /// The pod address range nodes' podCIDRs are cut from.
    #[arg(long)]
    cluster_cidr: Option<String>,
    /// The prefix length of each node's podCIDR.
    #[arg(long, default_value_t = 24)]
    node_cidr_mask_size: u8,
    /// The Service range, never given to nodes.
    #[arg(long)]
    service_cluster_ip_range: Option<String>,
    /// A CA bundle published in every namespace as ConfigMap kube-root-ca.crt.
    #[arg(long)]
    root_ca_file: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let names = manager::select(&args.controllers)?;
    let client = client::connect(args.kubeconfig.as_deref()).await?;
    let mut settings = manager::Settings::default();
    settings.endpointslice.max_endpoints_per_slice = args.max_endpoints_per_slice;
    settings.endpointslice.concurrent_syncs = args.concurrent_service_endpoint_syncs;
    settings.replicaset_workers = args.concurrent_replicaset_syncs;
    settings.job_workers = args.concurrent_job_syncs;
    settings.gc_workers = args.concurrent_gc_syncs;
    settings.namespace_workers = args.concurrent_namespace_syncs;
    settings.mirroring.max_endpoints_per_subset = args.mirroring_max_endpoints_per_subset;
    settings.mirroring.concurrent_syncs = args.mirroring_concurrent_service_endpoint_syncs;
    settings.nodelifecycle.monitor_period = args.node_monitor_period;
    settings.nodelifecycle.grace_period = args.node_monitor_grace_period;
    settings.nodelifecycle.startup_grace_period = args.node_startup_grace_period;
    if let Some(path) = args.root_ca_file.as_ref() {
        settings.root_ca = Some(
            std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("--root-ca-file {}: {e}", path.display()))?,
        );
    }
    if args.allocate_node_cidrs {
        let Some(cidr) = args.cluster_cidr.as_deref() else {
            anyhow::bail!("--allocate-node-cidrs needs --cluster-cidr");
        };
        settings.nodeipam = Some(control_plane::controllers::nodeipam::Settings::new(
            cidr,
            args.node_cidr_mask_size,
            args.service_cluster_ip_range.as_deref(),
        )?);
    }
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    };
    let shared = Shared::new(client.clone());
    let work = manager::run(shared, &names, settings);
    if !args.leader_elect {
        info!(controllers = ?names, "running without leader election");
        tokio::select! {
            r = work => r?,
            () = shutdown => {}
        }
        return Ok(());
    }
    let mut lease = leader::LeaseConfig::new(
        &args.leader_elect_resource_namespace,
        &args.leader_elect_resource_name,
    );
    if let Some(id) = args.leader_elect_identity {
        lease.identity = id;
    }
    lease.lease_duration = args.leader_elect_lease_duration;
    lease.renew_deadline = args.leader_elect_renew_deadline;
    lease.retry_period = args.leader_elect_retry_period;
    info!(identity = %lease.identity, controllers = ?names, "waiting for leadership");
    leader::run_leading(client, lease, work, shutdown).await
}
