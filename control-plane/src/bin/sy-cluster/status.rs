//! `sy-cluster status`: each recorded process (running or not), and from
//! the API server: the Nodes (Ready, pod CIDR) and the pods.
use anyhow::Result;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::{Api, api::ListParams};
use tokio::runtime::Runtime;

use crate::{
    state::{State, is_same_running},
    up::client_for,
};

/// Prints the status; an error when some component is not running.
pub fn status(st: &State, rt: &Runtime) -> Result<()> {
    println!(
        "cluster `{}` (state {})",
        st.prefix,
        State::path(&st.state_dir).display()
    );
    let mut down = Vec::new();
    println!("{:<28} {:>8}  {:<12} LOG", "COMPONENT", "PID", "STATE");
    for p in &st.processes {
        let running = is_same_running(p);
        if !running {
            down.push(p.name.clone());
        }
        println!(
            "{:<28} {:>8}  {:<12} {}",
            p.name,
            p.pid,
            if running { "running" } else { "not running" },
            p.log.display()
        );
    }
    if let Some(kc) = &st.kubeconfig {
        match rt.block_on(api_status(kc)) {
            Ok(s) => print!("{s}"),
            Err(e) => println!("API server not reachable through {}: {e:#}", kc.display()),
        }
    }
    if !down.is_empty() {
        anyhow::bail!("not running: {}", down.join(", "));
    }
    Ok(())
}

async fn api_status(kubeconfig: &std::path::Path) -> Result<String> {
    let client = client_for(kubeconfig).await?;
    let mut out = format!(
        "\n{:<10} {:<8} {:<16} {:<14}\n",
        "NODE", "READY", "POD CIDR", "ADDRESS"
    );
    for n in Api::<Node>::all(client.clone())
        .list(&ListParams::default())
        .await?
    {
        let status = n.status.unwrap_or_default();
        let ready = status
            .conditions
            .unwrap_or_default()
            .into_iter()
            .find(|c| c.type_ == "Ready")
            .map_or("Unknown".to_owned(), |c| c.status);
        let addr = status
            .addresses
            .unwrap_or_default()
            .into_iter()
            .find(|a| a.type_ == "InternalIP")
            .map(|a| a.address)
            .unwrap_or_default();
        out.push_str(&format!(
            "{:<10} {:<8} {:<16} {:<14}\n",
            n.metadata.name.unwrap_or_default(),
            ready,
            n.spec.and_then(|s| s.pod_cidr).unwrap_or_default(),
            addr
        ));
    }
    out.push_str(&format!(
        "\n{:<40} {:<10} {:<6} {:<8} {:<12}\n",
        "POD", "PHASE", "READY", "NODE", "IP"
    ));
    for p in Api::<Pod>::all(client).list(&ListParams::default()).await? {
        let ns = p.metadata.namespace.clone().unwrap_or_default();
        let name = p.metadata.name.clone().unwrap_or_default();
        let status = p.status.unwrap_or_default();
        let ready = status
            .conditions
            .unwrap_or_default()
            .into_iter()
            .find(|c| c.type_ == "Ready")
            .is_some_and(|c| c.status == "True");
        out.push_str(&format!(
            "{:<40} {:<10} {:<6} {:<8} {:<12}\n",
            format!("{ns}/{name}"),
            status.phase.unwrap_or_default(),
            ready,
            p.spec.and_then(|s| s.node_name).unwrap_or_default(),
            status.pod_ip.unwrap_or_default()
        ));
    }
    Ok(out)
}
