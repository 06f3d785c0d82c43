//! `sy-scheduler`: binds pending pods to nodes (kube-scheduler's default
//! profile without preemption), leader-elected on the Lease
//! `kube-system/kube-scheduler`. See docs/control-plane.md.
use std::{path::PathBuf, time::Duration};

use anyhow::Result;
use clap::Parser;
use control_plane::{
    client::{self, leader},
    controllers::{Shared, manager::parse_duration},
    scheduler,
};
use tracing::info;

#[derive(Parser)]
#[command(name = "sy-scheduler", version, about = "Binds pending pods to nodes")]
struct Args {
    /// Kubeconfig of the API server (default: $KUBECONFIG, ~/.kube/config, in-cluster).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// The `schedulerName` served.
    #[arg(long, default_value = "default-scheduler")]
    scheduler_name: String,
    /// Hold a Lease before acting, so that only one copy acts.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    leader_elect: bool,
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    leader_elect_lease_duration: Duration,
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    leader_elect_renew_deadline: Duration,
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    leader_elect_retry_period: Duration,
    #[arg(long, default_value = "kube-scheduler")]
    leader_elect_resource_name: String,
    #[arg(long, default_value = "kube-system")]
    leader_elect_resource_namespace: String,
    /// This copy's identity in the Lease (default `<hostname>_<uuid>`).
    #[arg(long)]
    leader_elect_identity: Option<String>,
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
    let client = client::connect(args.kubeconfig.as_deref()).await?;
    let settings = scheduler::Settings {
        scheduler_name: args.scheduler_name,
    };
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    };
    let work = scheduler::run(Shared::new(client.clone()), settings);
    if !args.leader_elect {
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
    info!(identity = %lease.identity, "waiting for leadership");
    leader::run_leading(client, lease, work, shutdown).await
}
