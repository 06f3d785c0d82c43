//! `sy-dns`: cluster DNS, a client of the API server watching Namespaces,
//! Services and EndpointSlices, answering over UDP and TCP. See docs/dns.md.
use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    sync::{Arc, RwLock},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use clap::Parser;
use control_plane::{
    client,
    controllers::manager::parse_duration,
    dns::{
        DEFAULT_CLUSTER_DOMAIN, health,
        lookup::{DEFAULT_TTL, Zone},
        resolv_conf,
        server::{self, ClusterDnsHandler, SharedSnapshot},
        snapshot::Snapshot,
        watch,
    },
};
use tracing::{info, warn};

#[derive(Parser)]
#[command(name = "sy-dns", version, about = "Cluster DNS for Services and pods")]
struct Args {
    /// Kubeconfig of the API server (default: $KUBECONFIG, ~/.kube/config, in-cluster).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// The cluster domain served (the kubelet's `clusterDomain`).
    #[arg(long, default_value = DEFAULT_CLUSTER_DOMAIN)]
    cluster_domain: String,
    /// Address for UDP and TCP (port 0: any free port; the bound address is printed).
    #[arg(long, default_value = "0.0.0.0:53")]
    listen: SocketAddr,
    /// Name servers for names outside the cluster domain (address or
    /// address:port; repeatable, tried in order). Without any, such names
    /// are REFUSED.
    #[arg(long = "upstream", value_parser = parse_upstream)]
    upstreams: Vec<SocketAddr>,
    /// Add the `nameserver`s of this resolv.conf as upstreams, after the
    /// `--upstream`s (CoreDNS' `forward . /etc/resolv.conf`; a pod with
    /// `dnsPolicy: Default` has the node's there).
    #[arg(long)]
    upstream_resolv_conf: Option<PathBuf>,
    /// TTL of answers, seconds (CoreDNS' default 5; 0-3600).
    #[arg(long, default_value_t = DEFAULT_TTL)]
    ttl: u32,
    /// Serve `/health` and `/ready` here (CoreDNS: :8080 and :8181).
    #[arg(long)]
    health_listen: Option<SocketAddr>,
    /// Serve `/ready` (and `/health`) here too.
    #[arg(long)]
    ready_listen: Option<SocketAddr>,
    /// How long to wait for the first sync before serving (CoreDNS: 5s);
    /// until it, missing cluster names are SERVFAIL.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    startup_timeout: Duration,
}

fn parse_upstream(s: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    s.parse::<IpAddr>()
        .map(|ip| SocketAddr::new(ip, 53))
        .map_err(|_| format!("--upstream {s:?}: expected an IP address or address:port"))
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
    if args.ttl > 3600 {
        bail!("--ttl {}: must be 0 to 3600 seconds", args.ttl);
    }
    let zone = Zone::new(&args.cluster_domain, args.ttl)
        .map_err(|e| anyhow::anyhow!("--cluster-domain: {e}"))?;
    let mut upstreams = args.upstreams.clone();
    if let Some(path) = &args.upstream_resolv_conf {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("--upstream-resolv-conf {}", path.display()))?;
        for ns in resolv_conf::parse_host_resolv_conf(&text).0 {
            let addr = parse_upstream(&ns).map_err(|e| {
                anyhow::anyhow!(
                    "--upstream-resolv-conf {}: nameserver {ns:?}: {e}",
                    path.display()
                )
            })?;
            upstreams.push(addr);
        }
    }
    let client = client::connect(args.kubeconfig.as_deref()).await?;
    let snapshot: SharedSnapshot = Arc::new(RwLock::new(Arc::new(Snapshot::default())));
    let mut watching = tokio::spawn(watch::run(client, Arc::clone(&snapshot)));

    let started = tokio::time::Instant::now();
    while !snapshot.read().map(|s| s.synced).unwrap_or(false) {
        if started.elapsed() >= args.startup_timeout {
            warn!("starting with unsynced caches");
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let handler = ClusterDnsHandler::new(zone, Arc::clone(&snapshot), upstreams.clone());
    let (addr, mut dns) = server::bind(args.listen, handler).await?;
    for listen in [args.health_listen, args.ready_listen]
        .into_iter()
        .flatten()
    {
        let (at, serve) = health::bind(listen, Arc::clone(&snapshot)).await?;
        info!(%at, "health and readiness endpoints");
        tokio::spawn(serve);
    }
    info!(%addr, domain = %args.cluster_domain, upstreams = ?upstreams, "serving DNS over UDP and TCP");
    // Tests and scripts read the bound address from the first line.
    println!("listening on {addr}");

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("SIGTERM handler")?;
    tokio::select! {
        r = &mut watching => {
            r.context("the watch task panicked")??;
            bail!("the watch ended");
        }
        r = dns.block_until_done() => r.context("the DNS server stopped")?,
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    let _ = dns.shutdown_gracefully().await;
    Ok(())
}
