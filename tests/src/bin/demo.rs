//! The demo behind the README's first command: our API server on loopback,
//! a node namespace with a client pod and three backend pods, and the
//! `switchyard` daemon watching the server. The sample app
//! (examples/demo-app.yaml) is applied with kubectl; 30 connections to its
//! ClusterIP show the spread; then a pod is taken out of the EndpointSlice
//! with kubectl and 30 more show the traffic following. Everything is
//! removed at the end.
use std::{collections::BTreeMap, path::Path, time::Duration};

use anyhow::{Context as _, Result, bail};
use testbed::{cluster::Cluster, lab::ClientPlacement, probe::Outcome};

const VIP: &str = "10.96.0.10:80";

fn main() -> Result<()> {
    let c = Cluster::start(3)
        .context("starting the API server, the node and switchyard (needs root)")?;
    println!(
        "API server  https://{} (data in {})",
        c.api.addr,
        c.api.data_dir.display()
    );
    println!(
        "node        namespace {} (switchyard log: {})",
        c.bed.topo.node.name(),
        c.daemon.log.display()
    );
    println!("  client pod {}", c.bed.topo.client.ip);
    for b in &c.bed.topo.backends {
        println!("  pod {:<6} {}", b.name, b.ip);
    }
    let app = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/demo-app.yaml");
    let app = std::fs::read_to_string(&app).with_context(|| app.display().to_string())?;
    println!(
        "\n$ kubectl apply -f examples/demo-app.yaml\n{}",
        c.kubectl.apply(&app)?.trim_end()
    );
    let all: Vec<String> = (1..=3).map(|i| c.backend(i, 8080, "TCP")).collect();
    c.daemon.wait_frontend("10.96.0.10:80/TCP", Some(&all))?;
    println!(
        "\n$ kubectl get service,endpointslice\n{}",
        c.kubectl.run(&["get", "service,endpointslice"])?.trim_end()
    );
    print_inspect(&c)?;
    let first = connections(&c)?;

    // Take b2 out, as a scale-down would.
    let scaled = app.replace(
        "- {addresses: [10.244.1.12], nodeName: node-1, conditions: {ready: true}}\n",
        "",
    );
    println!(
        "\n$ kubectl apply -f - (EndpointSlice web-1 without b2)\n{}",
        c.kubectl.apply(&scaled)?.trim_end()
    );
    let two = [all[0].clone(), all[2].clone()];
    c.daemon.wait_frontend("10.96.0.10:80/TCP", Some(&two))?;
    print_inspect(&c)?;
    let second = connections(&c)?;
    let (status, body) = c.daemon.healthz("/healthz")?;
    println!("\n$ curl {}/healthz\n{status} {body}", c.daemon.healthz);
    std::thread::sleep(Duration::from_millis(100));
    if first.error_count() + second.error_count() > 0
        || first.counts().len() != 3
        || second.counts().contains_key("b2")
    {
        bail!("traffic did not follow the Service and its EndpointSlice");
    }
    println!("\nthe ClusterIP balanced over all three pods, then followed the EndpointSlice");
    Ok(())
}

fn print_inspect(c: &Cluster) -> Result<()> {
    let rows = c.daemon.inspect("services")?;
    println!(
        "\n$ switchyard inspect services --json\n{}",
        serde_json::to_string_pretty(&rows)?
    );
    Ok(())
}

fn connections(c: &Cluster) -> Result<Outcome> {
    let out = c.bed.client(
        ClientPlacement::InNodeCgroup,
        &["tcp", "--target", VIP, "--count", "30"],
    )?;
    println!("\n30 connections from the client pod to ClusterIP {VIP}:");
    let line: Vec<&str> = out.answers.iter().map(String::as_str).collect();
    println!("  {}", line.join(" "));
    let counts: BTreeMap<_, _> = out.counts();
    println!(
        "  answers per pod: {counts:?}; failed connections: {}",
        out.error_count()
    );
    Ok(out)
}
