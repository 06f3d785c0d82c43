//! End to end: our API server on loopback, a node with pods, and the
//! `switchyard` daemon watching the server. Services and EndpointSlices are
//! written with kubectl and with the official Python client; traffic from
//! the client pod must follow every change.
use std::time::Duration;

use testbed::{
    cluster::{Cluster, python},
    lab::ClientPlacement,
    privileges,
    probe::Outcome,
};

const VIP: &str = "10.96.0.10";

fn service(name: &str, vip: &str, port_name: &str, extra_spec: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  clusterIP: {vip}\n  ports:\n  - {{name: {port_name}, port: 80, protocol: TCP, targetPort: {port_name}}}\n{extra_spec}"
    )
}

/// An EndpointSlice of Service `svc` with `endpoints` as
/// `(pod ip, ready, serving, terminating)`.
fn slice(svc: &str, port_name: &str, endpoints: &[(String, bool, bool, bool)]) -> String {
    let mut eps = String::new();
    for (ip, ready, serving, terminating) in endpoints {
        eps.push_str(&format!(
            "- addresses: [{ip}]\n  nodeName: node-1\n  conditions: {{ready: {ready}, serving: {serving}, terminating: {terminating}}}\n"
        ));
    }
    if endpoints.is_empty() {
        eps.push_str("[]\n");
    }
    format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {svc}-1\n  namespace: default\n  labels: {{kubernetes.io/service-name: {svc}}}\naddressType: IPv4\nports:\n- {{name: {port_name}, port: 8080, protocol: TCP}}\nendpoints:{}{eps}",
        if endpoints.is_empty() { " " } else { "\n" }
    )
}

fn ready(c: &Cluster, pods: &[usize]) -> Vec<(String, bool, bool, bool)> {
    pods.iter()
        .map(|i| (c.pod_ip(*i), true, true, false))
        .collect()
}

fn backends(c: &Cluster, pods: &[usize]) -> Vec<String> {
    pods.iter().map(|i| c.backend(*i, 8080, "TCP")).collect()
}

fn connect(c: &Cluster, target: &str, count: usize) -> Outcome {
    let count = count.to_string();
    c.bed
        .client(
            ClientPlacement::InNodeCgroup,
            &["tcp", "--target", target, "--count", &count],
        )
        .unwrap()
}

/// Every connection answered, by exactly the pods `names`, each taking at
/// least a fifth of a fair share.
fn assert_spread(out: &Outcome, names: &[&str], total: usize) {
    assert_eq!(out.error_count(), 0, "{out:?}");
    let counts = out.counts();
    let got: Vec<&str> = counts.keys().map(String::as_str).collect();
    assert_eq!(got, names, "{out:?}");
    for (name, n) in &counts {
        assert!(
            *n >= total / names.len() / 5,
            "{name} took only {n} of {total}: {counts:?}"
        );
    }
}

/// Applies `yaml` with kubectl and waits until frontend `fe` has exactly
/// the backends of pods `pods` on port 8080.
fn converge(c: &Cluster, yaml: &str, fe: &str, pods: &[usize]) {
    c.kubectl.apply(yaml).unwrap();
    c.daemon
        .wait_frontend(fe, Some(&backends(c, pods)))
        .unwrap();
}

#[test]
fn traffic_follows_kubectl_creates_scales_deletes_and_terminating_fallback() {
    privileges::require();
    let c = Cluster::start(3).unwrap();
    let fe = format!("{VIP}:80/TCP");
    let target = format!("{VIP}:80");
    let web = |endpoints: &[(String, bool, bool, bool)]| slice("web", "http", endpoints);

    // Named targetPort `http`, resolved through the slice's port.
    let both = format!(
        "{}---\n{}",
        service("web", VIP, "http", ""),
        web(&ready(&c, &[1]))
    );
    converge(&c, &both, &fe, &[1]);
    assert_spread(&connect(&c, &target, 20), &["b1"], 20);

    // Scale up, then down.
    converge(&c, &web(&ready(&c, &[1, 2, 3])), &fe, &[1, 2, 3]);
    assert_spread(&connect(&c, &target, 90), &["b1", "b2", "b3"], 90);
    converge(&c, &web(&ready(&c, &[2])), &fe, &[2]);
    assert_spread(&connect(&c, &target, 20), &["b2"], 20);

    // No endpoints: refused at once, as kube-proxy's REJECT.
    converge(&c, &web(&[]), &fe, &[]);
    let out = connect(&c, &target, 3);
    assert_eq!(out.errors.get("refused"), Some(&3), "{out:?}");

    // Only terminating endpoints: the serving one takes the traffic.
    let ip = |i: usize| c.pod_ip(i);
    let terminating = [(ip(1), false, true, true), (ip(3), false, false, true)];
    converge(&c, &web(&terminating), &fe, &[1]);
    assert_spread(&connect(&c, &target, 20), &["b1"], 20);

    // Deleted: the frontend leaves the maps; recreated: it comes back.
    converge(&c, &web(&ready(&c, &[3])), &fe, &[3]);
    c.kubectl.run(&["delete", "service", "web"]).unwrap();
    c.daemon.wait_frontend(&fe, None).unwrap();
    converge(&c, &service("web", VIP, "http", ""), &fe, &[3]);
    assert_spread(&connect(&c, &target, 20), &["b3"], 20);

    // Health and metrics as kube-proxy's.
    let (status, body) = c.daemon.healthz("/healthz").unwrap();
    assert_eq!(status, 200, "{body}");
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(
        body["lastUpdated"]
            .as_str()
            .is_some_and(|s| s.ends_with('Z')),
        "{body}"
    );
    assert_eq!(body["nodeEligible"], true);
    assert!(c.daemon.metric("switchyard_programmed_frontends").unwrap() >= 1.0);
    assert!(
        c.daemon
            .metric("kubeproxy_sync_proxy_rules_duration_seconds_count")
            .unwrap()
            >= 6.0
    );
}

/// Python client: create, rename a port (Service first, then its slice),
/// and switch session affinity on and off.
#[test]
fn traffic_follows_python_client_port_renames_and_affinity_switches() {
    privileges::require();
    let c = Cluster::start(3).unwrap();
    let vip = "10.96.0.20";
    let fe = format!("{vip}:80/TCP");
    let target = format!("{vip}:80");
    let ips: Vec<String> = (1..=3).map(|i| c.pod_ip(i)).collect();
    let kubeconfig = c.api.kubeconfig();
    let script = |body: &str| {
        let prelude = "from kubernetes import client, config\nconfig.load_kube_config()\ncore = client.CoreV1Api()\ndisc = client.DiscoveryV1Api()\n";
        python(&kubeconfig, &format!("{prelude}{body}")).unwrap()
    };
    script(&format!(
        r#"
core.create_namespaced_service("default", client.V1Service(
    metadata=client.V1ObjectMeta(name="api"),
    spec=client.V1ServiceSpec(cluster_ip="{vip}", ports=[client.V1ServicePort(name="web", port=80, target_port="web")])))
disc.create_namespaced_endpoint_slice("default", client.V1EndpointSlice(
    metadata=client.V1ObjectMeta(name="api-1", labels={{"kubernetes.io/service-name": "api"}}),
    address_type="IPv4",
    ports=[client.DiscoveryV1EndpointPort(name="web", port=8080, protocol="TCP")],
    endpoints=[client.V1Endpoint(addresses=[ip], conditions=client.V1EndpointConditions(ready=True)) for ip in {ips:?}]))
"#
    ));
    c.daemon
        .wait_frontend(&fe, Some(&backends(&c, &[1, 2, 3])))
        .unwrap();
    assert_spread(&connect(&c, &target, 60), &["b1", "b2", "b3"], 60);

    // The Service's port is renamed first: no slice port matches, so the
    // frontend has no endpoints until the slice follows.
    script(
        r#"core.patch_namespaced_service("api", "default", [{"op": "replace", "path": "/spec/ports/0/name", "value": "http"}])"#,
    );
    c.daemon.wait_frontend(&fe, Some(&[])).unwrap();
    script(
        r#"disc.patch_namespaced_endpoint_slice("api-1", "default", [{"op": "replace", "path": "/ports/0/name", "value": "http"}])"#,
    );
    c.daemon
        .wait_frontend(&fe, Some(&backends(&c, &[1, 2, 3])))
        .unwrap();

    // None → ClientIP: every connection of the pod lands on one backend.
    script(
        r#"core.patch_namespaced_service("api", "default", {"spec": {"sessionAffinity": "ClientIP", "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 600}}}})"#,
    );
    wait_affinity(&c, &fe, Some(600));
    let out = connect(&c, &target, 30);
    assert_eq!((out.error_count(), out.counts().len()), (0, 1), "{out:?}");
    // ClientIP → None: spread again.
    script(
        r#"core.patch_namespaced_service("api", "default", {"spec": {"sessionAffinity": "None"}})"#,
    );
    wait_affinity(&c, &fe, None);
    assert_spread(&connect(&c, &target, 60), &["b1", "b2", "b3"], 60);
}

fn wait_affinity(c: &Cluster, fe: &str, want: Option<u64>) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let rows = c.daemon.inspect("services").unwrap();
        let row = rows
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["frontend"] == fe)
            .cloned();
        let got = row.as_ref().and_then(|r| r["affinity_timeout_s"].as_u64());
        if row.is_some() && got == want {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "affinity of {fe} is {got:?}, expected {want:?}\n{}",
            c.daemon.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Bad objects are skipped by name and counted; the rest applies. When the
/// maps are full, whole frontends are left out and reported (log, metric,
/// Node event).
#[test]
fn bad_objects_are_skipped_and_full_maps_are_reported() {
    privileges::require();
    // Room for two frontends of two backends each (3 service entries and
    // 2 slots each), besides the headroom of one frontend kept for changes
    // and the API server's own `default/kubernetes` (2 entries, 1 slot).
    let c = Cluster::start_with(3, |args| {
        for (flag, value) in [("--max-frontends", "4"), ("--max-backend-slots", "7")] {
            let i = args.iter().position(|a| a == flag).unwrap();
            args[i + 1] = value.to_owned();
        }
    })
    .unwrap();
    let ip = |i: usize| c.pod_ip(i);
    let mut bad_slice = slice("good", "http", &ready(&c, &[1]));
    bad_slice = bad_slice.replace("name: good-1", "name: good-bad");
    // Multicast: the API server takes it (upstream refuses only 224.0.0.0/24),
    // the daemon cannot send to it.
    bad_slice = bad_slice.replace(&ip(1), "239.1.2.3");
    c.kubectl
        .apply(&format!(
            "{}---\n{}---\n{}",
            service("good", "10.96.0.30", "http", ""),
            slice("good", "http", &ready(&c, &[1, 2])),
            bad_slice,
        ))
        .unwrap();
    c.daemon
        .wait_frontend("10.96.0.30:80/TCP", Some(&backends(&c, &[1, 2])))
        .unwrap();
    assert_eq!(
        c.daemon
            .metric("switchyard_invalid_objects{kind=\"EndpointSlice\"}")
            .unwrap(),
        1.0
    );
    let log = c.daemon.log();
    assert!(
        log.contains("default/good-bad") && log.contains("`239.1.2.3` cannot be an endpoint"),
        "the warning names the slice and the problem:\n{log}"
    );
    assert_spread(&connect(&c, "10.96.0.30:80", 40), &["b1", "b2"], 40);

    // Three more Services of two endpoints: one fits, two do not.
    let mut docs = Vec::new();
    for (n, vip) in [
        ("more-a", "10.96.0.31"),
        ("more-b", "10.96.0.32"),
        ("more-c", "10.96.0.33"),
    ] {
        docs.push(service(n, vip, "http", ""));
        docs.push(slice(n, "http", &ready(&c, &[2, 3])));
    }
    c.kubectl.apply(&docs.join("---\n")).unwrap();
    c.daemon
        .wait_frontend("10.96.0.31:80/TCP", Some(&backends(&c, &[2, 3])))
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while c
        .daemon
        .metric("switchyard_frontends_not_programmed{reason=\"map_full\"}")
        .unwrap()
        != 2.0
    {
        assert!(
            std::time::Instant::now() < deadline,
            "{}",
            c.daemon.metrics_text().unwrap()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    for vip in ["10.96.0.32", "10.96.0.33"] {
        assert_eq!(
            c.daemon.frontend(&format!("{vip}:80/TCP")).unwrap(),
            None,
            "no partial frontend"
        );
    }
    // The programmed ones are untouched and still whole.
    c.daemon
        .wait_frontend("10.96.0.30:80/TCP", Some(&backends(&c, &[1, 2])))
        .unwrap();
    let events = loop {
        let out = c
            .kubectl
            .run(&["get", "events", "-n", "default", "-o", "json"])
            .unwrap();
        if out.contains("FrontendsNotProgrammed") {
            break out;
        }
        assert!(std::time::Instant::now() < deadline, "no Node event: {out}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        events.contains("default/more-b") && events.contains("default/more-c"),
        "{events}"
    );
    assert!(c.daemon.log().contains("maps are full"));

    // Full maps can still change: a programmed frontend swaps a backend.
    c.kubectl
        .apply(&slice("good", "http", &ready(&c, &[1, 3])))
        .unwrap();
    c.daemon
        .wait_frontend("10.96.0.30:80/TCP", Some(&backends(&c, &[1, 3])))
        .unwrap();
    assert_spread(&connect(&c, "10.96.0.30:80", 40), &["b1", "b3"], 40);
}

/// A UDP Service through the per-packet path: when the backend a flow is
/// pinned to leaves the EndpointSlice, the flow's conntrack is flushed and
/// its next datagram goes to a remaining backend. The daemon runs from a
/// `KubeProxyConfiguration` (unused keys reported) with JSON logs.
#[test]
fn udp_flows_leave_a_removed_backend_and_config_file_and_json_logs() {
    privileges::require();
    let config_dir = std::env::temp_dir().join(format!("sy{}-udp-config", std::process::id()));
    std::fs::create_dir_all(&config_dir).unwrap();
    let config = config_dir.join("config.conf");
    std::fs::write(
        &config,
        "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nmode: iptables\nsyncPeriod: 10s\nclusterCIDR: 10.244.0.0/16\nfrobnicate: true\n",
    )
    .unwrap();
    let c = Cluster::start_with(3, |args| {
        args.extend(["--config".into(), config.display().to_string()]);
        args.extend(["--log-format".into(), "json".into()]);
    })
    .unwrap();
    let _ = std::fs::remove_dir_all(&config_dir);
    let ips: Vec<String> = (1..=3).map(|i| c.pod_ip(i)).collect();
    let slice_of = |pods: &[usize]| {
        let eps: String = pods
            .iter()
            .map(|i| format!("- addresses: [{}]\n", ips[i - 1]))
            .collect();
        format!(
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: dns-1, namespace: default, labels: {{kubernetes.io/service-name: dns}}}}\naddressType: IPv4\nports: [{{name: dns, port: 8080, protocol: UDP}}]\nendpoints:\n{eps}"
        )
    };
    let svc = "apiVersion: v1\nkind: Service\nmetadata: {name: dns, namespace: default}\nspec:\n  clusterIP: 10.96.0.70\n  ports: [{name: dns, port: 53, protocol: UDP, targetPort: 8080}]\n";
    let fe = "10.96.0.70:53/UDP";
    let udp = |pods: &[usize]| {
        pods.iter()
            .map(|i| c.backend(*i, 8080, "UDP"))
            .collect::<Vec<_>>()
    };
    c.kubectl
        .apply(&format!("{svc}---\n{}", slice_of(&[1, 2, 3])))
        .unwrap();
    c.daemon.wait_frontend(fe, Some(&udp(&[1, 2, 3]))).unwrap();

    // One flow (fixed source port) from outside the cgroup: the TC path.
    let flow = [
        "udp",
        "--target",
        "10.96.0.70:53",
        "--count",
        "5",
        "--source-port",
        "40053",
    ];
    let before = c.bed.client(ClientPlacement::OutsideCgroup, &flow).unwrap();
    assert_eq!(before.error_count(), 0, "{before:?}");
    let pinned: Vec<String> = before.counts().into_keys().collect();
    assert_eq!(pinned.len(), 1, "one UDP flow, one backend: {before:?}");
    let gone: usize = pinned[0][1..].parse().unwrap();
    let rest: Vec<usize> = (1..=3).filter(|i| *i != gone).collect();
    c.kubectl.apply(&slice_of(&rest)).unwrap();
    c.daemon.wait_frontend(fe, Some(&udp(&rest))).unwrap();
    let after = c.bed.client(ClientPlacement::OutsideCgroup, &flow).unwrap();
    assert_eq!(after.error_count(), 0, "{after:?}");
    assert!(
        !after.counts().contains_key(&pinned[0]),
        "the flow stayed on removed {}: {after:?}",
        pinned[0]
    );
    assert!(
        c.daemon
            .metric("switchyard_udp_flows_flushed_total")
            .unwrap()
            >= 1.0
    );

    // Every log line is a JSON object; the configuration's unused keys are
    // named, the ones kube-proxy knows marked as such.
    let log = c.daemon.log();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let unused: Vec<&str> = lines
        .iter()
        .filter(|l| l["fields"]["message"] == "configuration key not used by switchyard")
        .filter_map(|l| l["fields"]["key"].as_str())
        .collect();
    assert_eq!(unused, ["mode (ignored)", "frobnicate (unknown)"], "{log}");
}
