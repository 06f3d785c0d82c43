//! `sy-apiserver`: the control plane's API server. With no flags it serves
//! on 127.0.0.1:6443 from an embedded store under the data directory and
//! writes an admin kubeconfig there; `--etcd-servers` stores in etcd instead.
use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use clap::Parser;
use control_plane::{
    api::{ApiServer, Settings, auth::Auth, authz, kubernetes_service, services, tokens},
    pki::Pki,
    serve,
    store::{AnyStore, EmbeddedStore, EtcdStore, Store},
};
use tracing::{info, warn};

#[derive(Parser)]
#[command(
    name = "sy-apiserver",
    version,
    about = "Kubernetes-compatible API server"
)]
struct Args {
    /// Address and port to serve on.
    #[arg(long, default_value = "127.0.0.1:6443")]
    listen: SocketAddr,
    /// Where the embedded store and the admin kubeconfig live.
    #[arg(long, default_value_os_t = default_data_dir())]
    data_dir: PathBuf,
    /// CIDR Service ClusterIPs are allocated from.
    #[arg(long, default_value = "10.96.0.0/12")]
    service_cluster_ip_range: String,
    /// Ports NodePort Services are allocated from.
    #[arg(long, default_value = "30000-32767")]
    service_node_port_range: String,
    /// etcd endpoints to store in instead of the embedded store.
    #[arg(long, value_delimiter = ',')]
    etcd_servers: Vec<String>,
    /// Prefix of every key this server writes in etcd (never share it with
    /// another API server).
    #[arg(long, default_value = "/switchyard")]
    etcd_prefix: String,
    /// Change-log entries kept for watches to resume from; older revisions
    /// answer 410 Expired.
    #[arg(long, default_value_t = 100_000)]
    watch_history: u64,
    /// Seconds between bookmarks on idle watches that allow them.
    #[arg(long, default_value_t = 30)]
    bookmark_interval: u64,
    /// Seconds between compactions of the change log.
    #[arg(long, default_value_t = 60)]
    compaction_interval: u64,
    /// Nodes to issue client certificates and kubeconfigs for.
    #[arg(long, value_delimiter = ',')]
    node_names: Vec<String>,
    /// The address in-cluster clients reach this server at (the
    /// `default/kubernetes` Service's endpoint). Default: the listen
    /// address, or the host's default-route address when listening on all.
    #[arg(long)]
    advertise_address: Option<IpAddr>,
    /// Seconds between repairs of the `default/kubernetes` Service and its
    /// endpoints.
    #[arg(long, default_value_t = 10)]
    kubernetes_service_interval: u64,
}

/// The address of the interface the default route leaves through (no
/// packet is sent: connecting a UDP socket only picks a route).
fn default_route_address() -> Option<IpAddr> {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    socket.connect("192.0.2.1:9").ok()?;
    Some(socket.local_addr().ok()?.ip()).filter(|ip| !ip.is_unspecified())
}

fn default_data_dir() -> PathBuf {
    match std::env::var_os("HOME") {
        Some(home) if !nix_is_root() => PathBuf::from(home).join(".local/share/switchyard"),
        _ => PathBuf::from("/var/lib/switchyard"),
    }
}

fn nix_is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

fn parse_cidr(s: &str) -> Result<(std::net::Ipv4Addr, u8)> {
    let (ip, len) = s
        .split_once('/')
        .with_context(|| format!("`{s}` is not a CIDR (ADDRESS/LENGTH)"))?;
    let ip = ip
        .parse()
        .with_context(|| format!("`{ip}` in `{s}` is not an IPv4 address"))?;
    let len: u8 = len
        .parse()
        .with_context(|| format!("`{len}` in `{s}` is not a prefix length"))?;
    if !(8..=30).contains(&len) {
        bail!("service CIDR `{s}` must have a prefix length between 8 and 30");
    }
    Ok((ip, len))
}

fn parse_ports(s: &str) -> Result<std::ops::RangeInclusive<u16>> {
    let (a, b) = s
        .split_once('-')
        .with_context(|| format!("`{s}` is not a port range (FIRST-LAST)"))?;
    let (a, b): (u16, u16) = (
        a.parse().context("first port")?,
        b.parse().context("last port")?,
    );
    if a == 0 || a > b {
        bail!("port range `{s}` is empty or starts at 0");
    }
    Ok(a..=b)
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr()?;
    let advertise_ip = args.advertise_address.unwrap_or_else(|| {
        if addr.ip().is_unspecified() {
            default_route_address().unwrap_or(IpAddr::from([127, 0, 0, 1]))
        } else {
            addr.ip()
        }
    });
    let settings = Settings {
        bookmark_interval: Duration::from_secs(args.bookmark_interval.max(1)),
        service_cidr: parse_cidr(&args.service_cluster_ip_range)?,
        node_ports: parse_ports(&args.service_node_port_range)?,
        advertise: Some(SocketAddr::new(advertise_ip, addr.port())),
        ..Settings::default()
    };
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("cannot create {}", args.data_dir.display()))?;
    let store = Arc::new(if args.etcd_servers.is_empty() {
        AnyStore::Embedded(
            EmbeddedStore::open(&args.data_dir.join("store.redb")).context("opening the store")?,
        )
    } else {
        let etcd = EtcdStore::connect(&args.etcd_servers, &args.etcd_prefix)
            .await
            .with_context(|| format!("connecting to etcd at {}", args.etcd_servers.join(",")))?;
        // Fail now, not at the first request, if etcd does not answer; an
        // etcd still starting gets a few seconds, as kube-apiserver
        // retries its storage at start.
        let mut attempts = 0;
        loop {
            match etcd.current_revision().await {
                Ok(_) => break,
                Err(e) if attempts < 20 => {
                    attempts += 1;
                    warn!(error = %e, "etcd does not answer yet; retrying");
                    tokio::time::sleep(std::time::Duration::from_millis(250)).await;
                }
                Err(e) => return Err(e).context("etcd does not answer"),
            }
        }
        AnyStore::Etcd(Box::new(etcd))
    });
    // The serving certificate also holds the names in-cluster clients use.
    let mut names = vec![
        addr.ip().to_string(),
        advertise_ip.to_string(),
        services::first_ip(&settings).to_string(),
    ];
    names.extend(
        [
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
        ]
        .map(str::to_owned),
    );
    names.dedup();
    let pki =
        Pki::ensure(&args.data_dir, &names, &args.node_names).context("preparing certificates")?;
    let settings = Settings {
        kubelet_client_token: pki
            .token_of(control_plane::pki::KUBELET_CLIENT)
            .map(str::to_owned),
        ..settings
    };
    let auth = Auth::Required {
        tokens: pki.tokens.clone(),
        signer: Arc::new(tokens::Signer::from_pkcs8(&pki.service_account_key)?),
    };
    let api = ApiServer::new(Arc::clone(&store), settings, auth);
    api.bootstrap()
        .await
        .map_err(|e| anyhow::anyhow!("bootstrapping: {}", e.message))?;
    authz::spawn(Arc::clone(&api));
    kubernetes_service::spawn(
        Arc::clone(&api),
        Duration::from_secs(args.kubernetes_service_interval.max(1)),
    );

    pki.write_kubeconfigs(&args.data_dir, &format!("https://{addr}"), &args.node_names)?;
    let kubeconfig = args.data_dir.join("admin.kubeconfig");
    info!(%addr, kubeconfig = %kubeconfig.display(), data_dir = %args.data_dir.display(), "serving");
    // Machine-readable line for scripts and tests.
    println!("listening on {addr}");

    let (history, every) = (
        args.watch_history,
        Duration::from_secs(args.compaction_interval.max(1)),
    );
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            match store.current_revision().await {
                Ok(rev) if rev > history => {
                    if let Err(e) = store.compact(rev - history).await {
                        warn!(error = %e, "compaction failed");
                    }
                }
                Ok(_) => {}
                Err(e) => warn!(error = %e, "reading the revision failed"),
            }
        }
    });
    let tls = serve::tls_config(&pki)?;
    tokio::select! {
        served = serve::serve_tls(listener, tls, api.router()) => served,
        _ = tokio::signal::ctrl_c() => Ok(()),
    }
}
