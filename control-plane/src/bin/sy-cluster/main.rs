//! `sy-cluster`: a whole Switchyard cluster in a box, with one command.
//!
//! `up` makes an underlay bridge in a namespace of its own, a control-plane
//! namespace (`<prefix>-cp`, 192.168.0.2: sy-apiserver, optionally etcd,
//! sy-controller-manager, sy-scheduler, sy-dns), one namespace per node
//! (`<prefix>-n<i>`, 192.168.0.(10+i): a cgroup of its own, `sy-node-agent`
//! and the `switchyard` daemon), an external client's namespace
//! (`<prefix>-ext`, 192.168.0.200), a bpffs under the state directory, and
//! a loopback relay for kubectl in the root namespace. Every namespace,
//! cgroup, mount and process is recorded in `<state-dir>/state.json`
//! before (or as) it is made; `down` removes them from that file, ending
//! only recorded processes still running as themselves (PID and start
//! time). `status` shows each component, the Nodes and the pods.
//! See docs/cluster.md.
mod down;
mod relay;
mod state;
mod status;
mod sys;
mod up;

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};
use control_plane::controllers::manager::parse_duration;

use crate::state::State;

#[derive(Parser)]
#[command(
    name = "sy-cluster",
    version,
    about = "A Switchyard cluster in a box: control plane, nodes with pods, the eBPF dataplane"
)]
struct Cli {
    /// Where the cluster's state file, logs, kubeconfig and data live.
    #[arg(long, global = true, default_value = "/var/lib/switchyard/cluster")]
    state_dir: PathBuf,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Starts a cluster.
    Up {
        /// Number of nodes (1–50).
        #[arg(long, default_value_t = 3)]
        nodes: u8,
        /// Store in an etcd of the cluster's own (Debian's etcd-server) instead of the embedded store.
        #[arg(long)]
        etcd: bool,
        /// Prefix of the network namespaces and the cgroup (`<prefix>-cp`, `<prefix>-n1`, …).
        #[arg(long, default_value = "sy")]
        prefix: String,
        /// How long each component may take to become ready.
        #[arg(long, default_value = "60s", value_parser = parse_duration)]
        timeout: Duration,
    },
    /// Removes everything `up` made (also after a crash of either).
    Down,
    /// Shows each component, the Nodes and the pods.
    Status,
    /// (internal) The API server's relay on the root namespace's loopback.
    #[command(hide = true)]
    Relay {
        #[arg(long)]
        netns: String,
        #[arg(long)]
        upstream: SocketAddr,
        #[arg(long, default_value_t = 0)]
        port: u16,
        #[arg(long)]
        port_file: PathBuf,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    match cli.cmd {
        Cmd::Up {
            nodes,
            etcd,
            prefix,
            timeout,
        } => {
            let opts = up::UpOpts {
                nodes,
                etcd,
                state_dir: cli.state_dir.clone(),
                prefix,
                timeout,
            };
            match up::up(&opts, &rt) {
                Ok(st) => {
                    print_usage(&st);
                    Ok(())
                }
                Err(e) => {
                    if State::load(&cli.state_dir).ok().flatten().is_some() {
                        eprintln!(
                            "sy-cluster up failed; what was made is recorded in {}: read the logs in {}, then run `sy-cluster down --state-dir {}`",
                            State::path(&cli.state_dir).display(),
                            cli.state_dir.join("logs").display(),
                            cli.state_dir.display()
                        );
                    }
                    Err(e)
                }
            }
        }
        Cmd::Down => match State::load(&cli.state_dir)? {
            None => {
                println!(
                    "no cluster state at {}: nothing to bring down",
                    State::path(&cli.state_dir).display()
                );
                Ok(())
            }
            Some(st) => {
                down::down(&st)?;
                println!("cluster `{}` is down", st.prefix);
                Ok(())
            }
        },
        Cmd::Status => {
            let st = State::load(&cli.state_dir)?.with_context(|| {
                format!(
                    "no cluster state at {}",
                    State::path(&cli.state_dir).display()
                )
            })?;
            status::status(&st, &rt)
        }
        Cmd::Relay {
            netns,
            upstream,
            port,
            port_file,
        } => relay::run(&netns, upstream, port, &port_file),
    }
}

fn print_usage(st: &State) {
    let kc = st.kubeconfig.clone().unwrap_or_default();
    let dir = st.state_dir.display();
    let nodes: Vec<String> = st
        .nodes
        .iter()
        .map(|n| format!("{} {}", n.name, n.addr))
        .collect();
    println!(
        "cluster `{}` is up: {} (state {dir}/state.json)

  export KUBECONFIG={}
  kubectl get nodes,pods -A -o wide
  # from outside the cluster, a NodePort on any node's address:
  ip netns exec {} curl http://{}:NODEPORT/
  # a shell on a node:          ip netns exec {} sh
  # logs:                       {dir}/logs/
  sy-cluster status --state-dir {dir}
  sy-cluster down --state-dir {dir}",
        st.prefix,
        nodes.join(", "),
        kc.display(),
        st.ext_netns(),
        st.nodes
            .first()
            .map(|n| n.addr.to_string())
            .unwrap_or_default(),
        st.nodes
            .first()
            .map(|n| n.netns.clone())
            .unwrap_or_default(),
    );
}
