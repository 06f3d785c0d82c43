//! `sy-hollow-node`: a kubelet stand-in with no containers (see
//! `control_plane::hollow_node`): registers a Node, renews its Lease, and
//! reports the pods bound to it Running and Ready with an address from the
//! Node's podCIDR. For trying the controllers and the scheduler before the
//! node agent exists; tests and benchmarks use the same code in-process.
use std::{path::PathBuf, time::Duration};

use anyhow::Result;
use clap::Parser;
use control_plane::{
    client,
    controllers::manager::parse_duration,
    hollow_node::{HollowNode, Options},
};

#[derive(Parser)]
#[command(
    name = "sy-hollow-node",
    version,
    about = "A kubelet stand-in without containers"
)]
struct Args {
    /// Kubeconfig of the API server (default: $KUBECONFIG, ~/.kube/config, in-cluster).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// The Node's name.
    #[arg(long)]
    name: String,
    /// Allocatable CPU.
    #[arg(long, default_value = "4")]
    cpu: String,
    /// Allocatable memory.
    #[arg(long, default_value = "8Gi")]
    memory: String,
    /// Most pods.
    #[arg(long, default_value_t = 110)]
    max_pods: u32,
    /// Node labels, `key=value,...`.
    #[arg(long, value_delimiter = ',')]
    node_labels: Vec<String>,
    /// Pod addresses when the Node gets no podCIDR from nodeipam.
    #[arg(long)]
    pod_cidr: Option<String>,
    /// Time between Lease renewals.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    renew_interval: Duration,
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
    let mut opts = Options::new(&args.name);
    opts.cpu = args.cpu;
    opts.memory = args.memory;
    opts.max_pods = args.max_pods;
    opts.pod_cidr = args.pod_cidr;
    opts.renew_interval = args.renew_interval;
    for l in args.node_labels.iter().filter(|l| !l.is_empty()) {
        let (k, v) = l
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("--node-labels: {l:?} is not key=value"))?;
        opts.labels.insert(k.into(), v.into());
    }
    let client = client::connect(args.kubeconfig.as_deref()).await?;
    let _node = HollowNode::start(client, opts).await?;
    tokio::signal::ctrl_c().await?;
    Ok(())
}
