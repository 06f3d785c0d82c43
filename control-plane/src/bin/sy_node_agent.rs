//! `sy-node-agent`: the node agent (see `control_plane::node_agent`), and
//! its image tools: `image import` (OCI layouts, `docker save` tarballs)
//! and `image build` (an OCI layout from Debian's static busybox plus
//! chosen binaries, e.g. the test bed's `netprobe`).
use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};
use control_plane::{client, controllers::manager::parse_duration, node_agent};

#[derive(Parser)]
#[command(
    name = "sy-node-agent",
    version,
    about = "Switchyard's node agent: runs the pods bound to its node"
)]
struct Args {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    /// Kubeconfig of the API server (default: $KUBECONFIG, ~/.kube/config, in-cluster).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// The Node's name.
    #[arg(long, alias = "hostname-override", default_value = "")]
    node_name: String,
    /// The node's network namespace: a name under /run/netns or a path
    /// (default: the agent's own).
    #[arg(long)]
    node_netns: Option<String>,
    /// The node's address (default: the first of the node namespace's).
    #[arg(long)]
    node_ip: Option<String>,
    /// State directory (pods, logs, images, runtime state).
    #[arg(long, default_value = "/var/lib/switchyard/agent")]
    root_dir: PathBuf,
    /// The OCI runtime.
    #[arg(long, default_value = "runc")]
    runtime: PathBuf,
    /// The cluster DNS Service's address for ClusterFirst pods.
    #[arg(long)]
    cluster_dns: Option<String>,
    #[arg(long, default_value = "cluster.local")]
    cluster_domain: String,
    /// Address of the log/exec endpoint the API server proxies to.
    #[arg(long, default_value = "127.0.0.1")]
    address: String,
    /// Its port (0: any free one; the Node advertises the one bound).
    #[arg(long, default_value_t = 10250)]
    port: u16,
    #[arg(long, default_value = "4")]
    cpu: String,
    #[arg(long, default_value = "8Gi")]
    memory: String,
    #[arg(long, default_value_t = 110)]
    max_pods: u32,
    /// Node labels, `key=value,...`.
    #[arg(long, value_delimiter = ',')]
    node_labels: Vec<String>,
    /// Pod addresses when node IPAM gives the Node no podCIDR.
    #[arg(long)]
    pod_cidr: Option<String>,
    /// Time between Lease renewals.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    lease_interval: Duration,
    /// Time between Node status posts.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    status_interval: Duration,
}

#[derive(Subcommand)]
enum Cmd {
    /// Image store tools.
    Image {
        #[command(subcommand)]
        cmd: ImageCmd,
    },
}

#[derive(Subcommand)]
enum ImageCmd {
    /// Imports OCI image layouts (directories or archives) or `docker save` tarballs into the store under --root-dir.
    Import { paths: Vec<PathBuf> },
    /// Writes an OCI image layout: static busybox plus binaries (`HOST_PATH:PATH_IN_IMAGE`) and the libraries they need.
    Build {
        #[arg(long)]
        out: PathBuf,
        #[arg(long)]
        name: String,
        #[arg(long, default_value = "/bin/busybox")]
        busybox: PathBuf,
        #[arg(long = "add")]
        add: Vec<String>,
    },
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
    match args.cmd {
        Some(Cmd::Image {
            cmd: ImageCmd::Import { paths },
        }) => {
            let store = node_agent::image::ImageStore::new(&args.root_dir.join("images"));
            for p in paths {
                for n in store
                    .import(&p)
                    .with_context(|| format!("importing {}", p.display()))?
                {
                    println!("{n}");
                }
            }
            return Ok(());
        }
        Some(Cmd::Image {
            cmd:
                ImageCmd::Build {
                    out,
                    name,
                    busybox,
                    add,
                },
        }) => {
            let mut extra = Vec::new();
            for a in add {
                let (h, i) = a
                    .split_once(':')
                    .with_context(|| format!("--add {a:?} is not HOST_PATH:PATH_IN_IMAGE"))?;
                extra.push((PathBuf::from(h), i.trim_start_matches('/').to_owned()));
            }
            node_agent::image::build_image(&out, &name, &busybox, &extra, &["sh".to_owned()])?;
            println!("{name}");
            return Ok(());
        }
        None => {}
    }
    anyhow::ensure!(!args.node_name.is_empty(), "--node-name is required");
    let mut labels = BTreeMap::new();
    for l in args.node_labels.iter().filter(|l| !l.is_empty()) {
        let (k, v) = l
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("--node-labels: {l:?} is not key=value"))?;
        labels.insert(k.to_owned(), v.to_owned());
    }
    let node_netns = match args.node_netns {
        None => PathBuf::from("/proc/self/ns/net"),
        Some(n) if n.contains('/') => PathBuf::from(n),
        Some(n) => node_agent::netns::netns_path(&n),
    };
    let listen = format!("{}:{}", args.address, args.port)
        .parse()
        .with_context(|| format!("--address {} --port {}", args.address, args.port))?;
    let opts = node_agent::Options {
        node_name: args.node_name,
        node_netns,
        node_ip: args.node_ip,
        root: args.root_dir,
        runtime: args.runtime,
        cluster_dns: args.cluster_dns,
        cluster_domain: args.cluster_domain,
        listen,
        cpu: args.cpu,
        memory: args.memory,
        max_pods: args.max_pods,
        labels,
        pod_cidr: args.pod_cidr,
        lease_interval: args.lease_interval,
        status_interval: args.status_interval,
    };
    let client = client::connect(args.kubeconfig.as_deref()).await?;
    tokio::select! {
        r = node_agent::run(opts, client) => r,
        _ = tokio::signal::ctrl_c() => Ok(()),
    }
}
