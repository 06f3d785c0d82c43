//! `deploy/` as a node runs it: the DaemonSet's own command line and
//! ConfigMap, on a node with empty maps and no other Service proxy, where
//! nothing routes the `kubernetes` ClusterIP. The daemon must find the API
//! server through the ConfigMap's kubeconfig (the control plane's real
//! endpoint, with the pod's service-account token, under deploy/'s RBAC),
//! program the `kubernetes` Service, and make it reachable from pods (the
//! per-packet path) and from the node's own processes (the socket path).
//!
//! The daemon runs as the pod would: in the node's network namespace (host
//! network) and a private mount namespace holding the DaemonSet's mounts —
//! the ConfigMap at `/var/lib/switchyard`, the service account at
//! `/var/run/secrets/kubernetes.io/serviceaccount`, a bpffs of the test's at
//! `/sys/fs/bpf`, and the node's cgroup (never the machine's root) at
//! `/run/switchyard/cgroupv2`. The API server listens on loopback in the
//! root namespace; a relay in the `external` namespace (192.168.0.200)
//! plays the control plane's endpoint (a cluster member: it routes the pod
//! network).
use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    path::Path,
    time::Duration,
};

use anyhow::{Context as _, Result};
use serde_json::Value;
use serde_yaml::Value as Yaml;
use testbed::{
    cluster::{ApiServer, Kubectl, TempDir, free_port, http_get, poll},
    fs::PrivateBpffs,
    multinode::{EXTERNAL_ADDR, Network, node_yaml},
    netns::InNetns,
    privileges,
    proc::{Proc, sibling_binary},
    relay::Relay,
};

/// deploy/ as shipped.
fn deploy_file(name: &str) -> Yaml {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(name);
    let text = std::fs::read_to_string(&path).expect("read deploy/");
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The container's command line, `$(NODE_NAME)` expanded as the kubelet would.
fn daemonset_command(node: &str) -> Vec<String> {
    let ds = deploy_file("daemonset.yaml");
    let c = &ds["spec"]["template"]["spec"]["containers"][0];
    let strings = |v: &Yaml| -> Vec<String> {
        v.as_sequence()
            .expect("a list")
            .iter()
            .map(|s| s.as_str().expect("a string").replace("$(NODE_NAME)", node))
            .collect()
    };
    let mut cmd = strings(&c["command"]);
    cmd.extend(strings(&c["args"]));
    cmd
}

/// Starts the DaemonSet's command in `netns` inside a private mount
/// namespace with the pod's mounts, binding `mounts` (host dir → path in
/// the pod) over tmpfs-backed directories.
fn start_as_pod(
    netns: &str,
    command: &[String],
    mounts: &[(&Path, &str)],
    log: &Path,
) -> Result<Proc> {
    let switchyard = sibling_binary("switchyard")?;
    let mut script =
        String::from("set -e\nmount -t tmpfs tmpfs /run\nmount -t tmpfs tmpfs /var/lib\n");
    for (from, to) in mounts {
        script.push_str(&format!(
            "mkdir -p '{to}'\nmount --bind '{}' '{to}'\n",
            from.display()
        ));
    }
    // The image's binary is this build's.
    assert_eq!(command[0], "/usr/local/bin/switchyard", "{command:?}");
    script.push_str("exec \"$@\"\n");
    let mut args = vec![
        format!("--net=/run/netns/{netns}"),
        "unshare".to_owned(),
        "--mount".to_owned(),
        "--propagation".to_owned(),
        "private".to_owned(),
        "sh".to_owned(),
        "-c".to_owned(),
        script,
        "sh".to_owned(),
        switchyard.display().to_string(),
    ];
    args.extend(command[1..].iter().cloned());
    Proc::spawn_logged(Path::new("/usr/bin/nsenter"), &args, log)
}

/// `curl` inside a pod or the node, against the `kubernetes` Service's
/// ClusterIP, verifying the server's certificate: the answer's body.
fn curl_version(
    netns: &str,
    cgroup_procs: Option<&Path>,
    ca: &Path,
    token: &str,
) -> Result<String> {
    let p = Proc::spawn_in(
        netns,
        cgroup_procs,
        Path::new("/usr/bin/curl"),
        &[
            "--silent",
            "--show-error",
            "--fail",
            "--max-time",
            "5",
            "--cacert",
            &ca.display().to_string(),
            "--header",
            &format!("Authorization: Bearer {token}"),
            "https://10.96.0.1:443/version",
        ],
    )?;
    p.finish()
}

#[test]
fn the_daemonset_reaches_the_api_server_on_a_node_without_a_proxy() {
    privileges::require();
    let net = Network::build(1, 1).expect("the node");
    let node = net.node(1);
    let dir = TempDir::new(&net.prefix, "deploy").unwrap();
    let port = free_port().unwrap();
    let api_dir = dir.path().join("apiserver");
    std::fs::create_dir_all(&api_dir).unwrap();
    // In-cluster clients reach the API server at the control plane's
    // endpoint: the default/kubernetes Service's endpoint.
    let api = ApiServer::start_with(
        &api_dir,
        port,
        &["--advertise-address", &EXTERNAL_ADDR.to_string()],
    )
    .unwrap();
    let endpoint = SocketAddr::V4(SocketAddrV4::new(EXTERNAL_ADDR, port));
    let _control_plane = Relay::start_in(&net.external, endpoint, api.addr).unwrap();
    // A control-plane node routes the pod network, as the CNI makes it.
    testbed::cmd::ip_in(
        net.external.name(),
        &[
            "route",
            "add",
            "10.244.1.0/24",
            "via",
            &node.addr.to_string(),
        ],
    )
    .unwrap();
    let kubectl = Kubectl::new(&api.kubeconfig(), &dir.path().join("home")).unwrap();
    kubectl.apply(&node_yaml(node)).unwrap();
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
    for f in ["rbac.yaml", "configmap.yaml"] {
        kubectl
            .run(&["apply", "-f", &deploy.join(f).display().to_string()])
            .unwrap();
    }

    // The pod's service account, as the kubelet projects it.
    let sa = dir.path().join("serviceaccount");
    std::fs::create_dir_all(&sa).unwrap();
    let token = kubectl
        .run(&["create", "token", "switchyard", "-n", "kube-system"])
        .unwrap();
    let token = token.trim();
    std::fs::write(sa.join("token"), token).unwrap();
    std::fs::copy(api_dir.join("pki").join("ca.crt"), sa.join("ca.crt")).unwrap();
    std::fs::write(sa.join("namespace"), "kube-system").unwrap();
    // The ConfigMap as the kubelet mounts it, with the two values the
    // operator sets (deploy/README.md): the control plane's endpoint and
    // the CNI's pod interface prefix.
    let config = dir.path().join("config");
    std::fs::create_dir_all(&config).unwrap();
    let cm = deploy_file("configmap.yaml");
    for (key, from, to) in [
        (
            "kubeconfig.conf",
            "https://CONTROL_PLANE_ENDPOINT:6443".to_owned(),
            format!("https://{endpoint}"),
        ),
        (
            "config.conf",
            "interfaceNamePrefix: veth".to_owned(),
            format!(
                "interfaceNamePrefix: {}",
                testbed::multinode::Node::POD_IF_PREFIX
            ),
        ),
    ] {
        let text = cm["data"][key].as_str().expect("ConfigMap key");
        assert!(text.contains(&from), "{key} has no `{from}`");
        std::fs::write(config.join(key), text.replace(&from, &to)).unwrap();
    }

    let bpffs = PrivateBpffs::new(&net.prefix).unwrap();
    let log = dir.path().join("switchyard.log");
    let command = daemonset_command(&node.name);
    let mounts = [
        (config.as_path(), "/var/lib/switchyard"),
        (sa.as_path(), "/run/secrets/kubernetes.io/serviceaccount"),
        (bpffs.path(), "/sys/fs/bpf"),
        (node.cgroup.path(), "/run/switchyard/cgroupv2"),
    ];
    let mut daemon = start_as_pod(node.netns.name(), &command, &mounts, &log).unwrap();
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();

    // Healthy on the DaemonSet's probe port, in the node's namespace.
    poll(
        Duration::from_secs(30),
        || {
            if let Some(status) = daemon.exited() {
                anyhow::bail!("the daemon exited ({status})");
            }
            let _in = InNetns::enter(&node.netns)?;
            let healthz = SocketAddr::from((Ipv4Addr::LOCALHOST, 10256));
            Ok(matches!(http_get(healthz, "/healthz"), Ok((200, _))).then_some(()))
        },
        || format!("the DaemonSet's daemon is not healthy:\n{}", read_log()),
    )
    .unwrap();

    // The kubernetes Service is programmed, toward the control plane.
    let pin_root = bpffs.path().join("switchyard");
    let inspect = || -> Result<Value> {
        let out = std::process::Command::new(sibling_binary("switchyard")?)
            .arg("--pin-root")
            .arg(&pin_root)
            .args(["inspect", "services", "--json"])
            .output()?;
        serde_json::from_slice(&out.stdout).context("inspect output")
    };
    poll(
        Duration::from_secs(10),
        || {
            let services = inspect()?;
            Ok(services
                .as_array()
                .into_iter()
                .flatten()
                .find(|s| s["frontend"] == "10.96.0.1:443/TCP")
                .map(|s| s["backends"].clone()))
        },
        || format!("default/kubernetes not programmed:\n{}", read_log()),
    )
    .map(|backends| assert_eq!(backends[0], format!("{endpoint}/TCP")))
    .unwrap();

    // Nothing but Switchyard routes the ClusterIP on this node.
    let routes = testbed::cmd::ip_in(node.netns.name(), &["route", "get", "10.96.0.1"]);
    assert!(
        routes.is_err(),
        "the node has a route to 10.96.0.1: {routes:?}"
    );

    // A pod (the per-packet path) and the node itself (the socket path)
    // reach the API server through the ClusterIP, TLS verified against the
    // names in-cluster clients use.
    let ca = sa.join("ca.crt");
    let pod = node.client().netns.name();
    let body = curl_version(pod, None, &ca, token).unwrap();
    let v: Value = serde_json::from_str(&body).unwrap();
    assert!(v["gitVersion"].as_str().is_some(), "{body}");
    let procs = node.cgroup.procs_file();
    let body = curl_version(node.netns.name(), Some(&procs), &ca, token).unwrap();
    assert!(body.contains("gitVersion"), "{body}");
    drop(daemon.signal_and_wait(nix::sys::signal::Signal::SIGTERM, Duration::from_secs(10)));
    let cleanup = std::process::Command::new(sibling_binary("switchyard").unwrap())
        .arg("--pin-root")
        .arg(&pin_root)
        .arg("cleanup")
        .status()
        .unwrap();
    assert!(cleanup.success());
}
