//! `switchyard --proxy-mode iptables|nftables`: kube-proxy's own rule
//! layouts, programmed through the real `iptables-restore` (legacy and
//! nf_tables variants) and `nft` in the node's namespace from Services and
//! EndpointSlices written with kubectl, must serve the same traffic the
//! eBPF dataplane serves: a ClusterIP spread over its endpoints, REJECT
//! with no endpoints, ClientIP affinity, a NodePort on the node's address,
//! and the rules gone from the kernel when the Service goes.
use std::time::Duration;

use testbed::{
    cluster::{Cluster, poll},
    cmd,
    lab::ClientPlacement,
    privileges,
    probe::Outcome,
    topology::NODE_IP,
};

const VIP: &str = "10.96.0.20";

fn manifests(c: &Cluster, pods: &[usize], extra_spec: &str) -> String {
    let mut eps = String::new();
    for i in pods {
        eps.push_str(&format!(
            "- addresses: [{}]\n  nodeName: node-1\n  conditions: {{ready: true}}\n",
            c.pod_ip(*i)
        ));
    }
    if pods.is_empty() {
        eps.push_str(" []\n");
    }
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: default}}\nspec:\n  type: NodePort\n  clusterIP: {VIP}\n  ports:\n  - {{name: http, port: 80, protocol: TCP, targetPort: 8080, nodePort: 30080}}\n{extra_spec}---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: web-1\n  namespace: default\n  labels: {{kubernetes.io/service-name: web}}\naddressType: IPv4\nports:\n- {{name: http, port: 8080, protocol: TCP}}\nendpoints:{}{eps}",
        if pods.is_empty() { "" } else { "\n" }
    )
}

fn connect(c: &Cluster, target: &str, count: usize) -> Outcome {
    c.bed
        .client(
            ClientPlacement::OutsideCgroup,
            &["tcp", "--target", target, "--count", &count.to_string()],
        )
        .unwrap()
}

/// Waits until `count` connections to `target` are answered by exactly
/// `names` (or, with no names, all refused).
fn wait_for(c: &Cluster, target: &str, names: &[&str], count: usize) -> Outcome {
    let last = std::cell::RefCell::new(None);
    poll(
        Duration::from_secs(20),
        || {
            let out = connect(c, target, count);
            let done = if names.is_empty() {
                out.errors.get("refused") == Some(&count)
            } else {
                out.error_count() == 0
                    && out.counts().keys().map(String::as_str).collect::<Vec<_>>() == names
            };
            *last.borrow_mut() = Some(out.clone());
            Ok(done.then_some(out))
        },
        || format!("{target}: wanted {names:?}, last saw {:?}", last.borrow()),
    )
    .unwrap()
}

/// The daemon's flags without the eBPF hooks, in `mode`.
fn start(mode: &str, variant: Option<&str>) -> Cluster {
    Cluster::start_with(3, |args| {
        let mut kept = Vec::new();
        let mut it = args.drain(..);
        while let Some(a) = it.next() {
            if a == "--cgroup-path" || a == "--tc-iface" {
                it.next();
                continue;
            }
            kept.push(a);
        }
        drop(it);
        *args = kept;
        args.extend(["--proxy-mode".to_owned(), mode.to_owned()]);
        if let Some(v) = variant {
            args.extend(["--iptables-variant".to_owned(), v.to_owned()]);
        }
        args.extend(["--min-sync-period".to_owned(), "100ms".to_owned()]);
    })
    .unwrap()
}

/// What the kernel holds, as the mode's own tool lists it.
fn kernel_rules(c: &Cluster, mode: &str, variant: Option<&str>) -> String {
    try_kernel_rules(c, mode, variant).unwrap()
}

fn try_kernel_rules(c: &Cluster, mode: &str, variant: Option<&str>) -> anyhow::Result<String> {
    let ns = c.bed.topo.node.name();
    let exec = |args: &[&str]| {
        let mut all = vec!["netns", "exec", ns];
        all.extend(args);
        cmd::run("ip", &all)
    };
    match mode {
        "nftables" => exec(&["nft", "list", "table", "ip", "kube-proxy"]),
        _ => {
            let save = match variant {
                Some("legacy") => "iptables-legacy-save",
                Some("nft") => "iptables-nft-save",
                _ => "iptables-save",
            };
            exec(&[save])
        }
    }
}

fn serves_like_kube_proxy(mode: &str, variant: Option<&str>) {
    privileges::require();
    let c = start(mode, variant);
    // A real node routes everything somewhere (its uplink): unanswered
    // Service traffic then reaches the filter hooks that REJECT it. Here
    // the uplink is a veth pair inside the node's namespace.
    let ns = c.bed.topo.node.name();
    for args in [
        &[
            "link", "add", "uplink0", "type", "veth", "peer", "name", "uplink1",
        ][..],
        &["link", "set", "uplink0", "up"],
        &["link", "set", "uplink1", "up"],
        &["route", "add", "default", "dev", "uplink0"],
    ] {
        cmd::ip_in(ns, args).unwrap();
    }
    let cluster_ip = format!("{VIP}:80");
    let node_port = format!("{NODE_IP}:30080");

    c.kubectl.apply(&manifests(&c, &[1, 2], "")).unwrap();
    let out = wait_for(&c, &cluster_ip, &["b1", "b2"], 60);
    for (name, n) in out.counts() {
        assert!(n >= 6, "{name} took {n} of 60: {out:?}");
    }
    wait_for(&c, &node_port, &["b1", "b2"], 40);
    let rules = kernel_rules(&c, mode, variant);
    // The Service's chains: nftables names carry `ns/name/proto/port`,
    // iptables rules the `ns/name:port` comment.
    let chain = match mode {
        "nftables" => "default/web/tcp/http",
        _ => "default/web:http",
    };
    assert!(rules.contains(chain), "{rules}");

    // Scaled to one endpoint, then none: REJECT, as kube-proxy answers.
    c.kubectl.apply(&manifests(&c, &[3], "")).unwrap();
    wait_for(&c, &cluster_ip, &["b3"], 10);
    c.kubectl.apply(&manifests(&c, &[], "")).unwrap();
    wait_for(&c, &cluster_ip, &[], 3);
    wait_for(&c, &node_port, &[], 3);

    // ClientIP affinity: every connection of the client to one backend.
    let affinity = "  sessionAffinity: ClientIP\n";
    c.kubectl
        .apply(&manifests(&c, &[1, 2, 3], affinity))
        .unwrap();
    poll(
        Duration::from_secs(20),
        || {
            let out = connect(&c, &cluster_ip, 30);
            Ok((out.error_count() == 0 && out.counts().len() == 1).then_some(()))
        },
        || "affinity never pinned the client to one backend".to_owned(),
    )
    .unwrap();

    // Deleted: the Service's rules leave the kernel.
    c.kubectl.run(&["delete", "service", "web"]).unwrap();
    poll(
        Duration::from_secs(20),
        || Ok((!kernel_rules(&c, mode, variant).contains(chain)).then_some(())),
        || format!("{chain} chains left:\n{}", kernel_rules(&c, mode, variant)),
    )
    .unwrap();

    // `switchyard cleanup --proxy-mode …` removes the mode's rules whole.
    let mut args = vec!["--proxy-mode", mode, "--tc-netns", ns];
    if let Some(v) = variant {
        args.extend(["--iptables-variant", v]);
    }
    args.push("cleanup");
    let bin = testbed::proc::sibling_binary("switchyard").unwrap();
    cmd::run(bin.to_str().unwrap(), &args).unwrap();
    let left = kernel_rules_or_none(&c, mode, variant);
    assert!(
        !left.contains("KUBE-") && !left.contains("table ip kube-proxy"),
        "{left}"
    );
}

/// [`kernel_rules`], or empty when the table is gone.
fn kernel_rules_or_none(c: &Cluster, mode: &str, variant: Option<&str>) -> String {
    try_kernel_rules(c, mode, variant).unwrap_or_default()
}

#[test]
fn iptables_legacy_mode_serves_cluster_ips_node_ports_and_affinity() {
    serves_like_kube_proxy("iptables", Some("legacy"));
}

#[test]
fn iptables_nft_mode_serves_cluster_ips_node_ports_and_affinity() {
    serves_like_kube_proxy("iptables", Some("nft"));
}

#[test]
fn nftables_mode_serves_cluster_ips_node_ports_and_affinity() {
    serves_like_kube_proxy("nftables", None);
}
