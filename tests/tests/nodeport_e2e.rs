//! North-south end to end on a two-node cluster in a box (`multinode`):
//! sy-apiserver, a `switchyard` daemon per node, real TCP/UDP servers in
//! pods, clients in pods (inside the node's cgroup: socket path; outside:
//! per-packet path), in the nodes themselves, and outside the cluster.
//! Tests are named after the upstream e2e tests whose behaviour they check
//! (test/e2e/network: service.go, conntrack.go, networking.go).
use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use serde_json::Value;
use testbed::{
    cluster::{http_get, poll},
    multinode::{Cluster, EXTERNAL_ADDR, POD_BRIDGE, slice_yaml},
    netns::InNetns,
    privileges,
    probe::{Outcome, StreamEvent},
};

const NODE1: &str = "192.168.0.11";
const NODE2: &str = "192.168.0.12";

fn cluster() -> Cluster {
    privileges::require();
    Cluster::start(2, 2).expect("start the two-node cluster")
}

fn ok(out: &Outcome, what: &str) {
    assert_eq!(out.error_count(), 0, "{what}: {out:?}");
    assert_eq!(
        out.peer_mismatch, 0,
        "{what}: the client must see what it dialled: {out:?}"
    );
}

fn names(out: &Outcome) -> BTreeSet<String> {
    out.answers.iter().cloned().collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

fn jsonpath(c: &Cluster, svc: &str, path: &str) -> String {
    c.kubectl
        .run(&["get", "svc", svc, "-o", &format!("jsonpath={{{path}}}")])
        .expect("read the Service")
}

/// Applies a Service `name` with `spec` (YAML lines indented two spaces).
fn service(c: &Cluster, name: &str, spec: &str) {
    c.kubectl
        .apply(&format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n{spec}"
        ))
        .unwrap();
}

/// Applies the slice of Service `svc` on port `http`/TCP 8080 with
/// `endpoints`: (node, pod, ready, serving, terminating).
fn endpoints(
    c: &Cluster,
    svc: &str,
    port: &str,
    proto: &str,
    eps: &[(usize, usize, bool, bool, bool)],
) {
    let list: Vec<_> = eps
        .iter()
        .map(|(n, p, r, s, t)| {
            let node = c.net.node(*n);
            (node.backend(*p).ip, node.name.as_str(), *r, *s, *t)
        })
        .collect();
    c.kubectl
        .apply(&slice_yaml(svc, &format!("{svc}-1"), port, proto, &list))
        .unwrap();
}

fn ready(eps: &[(usize, usize)]) -> Vec<(usize, usize, bool, bool, bool)> {
    eps.iter()
        .map(|(n, p)| (*n, *p, true, true, false))
        .collect()
}

/// `ip:8080/PROTO` of pod `b<p>` of node `n`.
fn backend(c: &Cluster, n: usize, p: usize, proto: &str) -> String {
    format!("{}:8080/{proto}", c.net.node(n).backend(p).ip)
}

/// Waits until node `i`'s daemon routes `frontend` to exactly `backends`.
fn programmed(c: &Cluster, i: usize, frontend: &str, backends: &[String]) {
    c.daemon(i).wait_frontend(frontend, Some(backends)).unwrap();
}

/// Waits until every daemon has the NodePort `port` on its node address
/// routed to `backends` (the cluster set).
fn nodeport_programmed(c: &Cluster, port: &str, proto: &str, backends: &[String]) {
    for (i, addr) in [(1, NODE1), (2, NODE2)] {
        programmed(c, i, &format!("{addr}:{port}/{proto}"), backends);
    }
}

fn tcp(target: &str, count: usize) -> Vec<String> {
    ["tcp", "--target", target, "--count", &count.to_string()]
        .map(str::to_owned)
        .to_vec()
}

/// netprobe `cmd` (`tcp`: one connection; `hold`: one held open) to
/// `target` from source port `port`.
fn one_from_port(cmd: &str, target: &str, port: &str) -> Vec<String> {
    [
        cmd,
        "--target",
        target,
        "--count",
        "1",
        "--source-port",
        port,
    ]
    .map(str::to_owned)
    .to_vec()
}

fn args(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// `web`: NodePort 30080 over n1b1 (node-1) and n2b1 (node-2).
fn web(c: &Cluster, extra_spec: &str) {
    service(
        c,
        "web",
        &format!(
            "  type: NodePort\n  ports: [{{name: http, port: 80, targetPort: 8080, nodePort: 30080}}]\n{extra_spec}"
        ),
    );
    endpoints(c, "web", "http", "TCP", &ready(&[(1, 1), (2, 1)]));
    nodeport_programmed(
        c,
        "30080",
        "TCP",
        &[backend(c, 1, 1, "TCP"), backend(c, 2, 1, "TCP")],
    );
}

/// An HTTP GET from the external namespace.
fn external_get(c: &Cluster, addr: &str, path: &str) -> anyhow::Result<(u16, String)> {
    let _in = InNetns::enter(&c.net.external)?;
    http_get(addr.parse()?, path)
}

#[test]
fn should_be_able_to_create_a_functioning_nodeport_service() {
    let c = cluster();
    web(&c, "");
    let both = set(&["n1b1", "n2b1"]);
    for node in [NODE1, NODE2] {
        let target = format!("{node}:30080");
        // From outside the cluster, through the node-facing path.
        let out = c.net.from_external(&args(&tcp(&target, 40))).unwrap();
        ok(&out, &format!("external → {target}"));
        assert_eq!(names(&out), both, "external → {target}: {out:?}");
        for i in 1..=2 {
            // From pods on every node: socket path and per-packet path.
            for in_cgroup in [true, false] {
                let out = c
                    .net
                    .from_pod(i, 0, in_cgroup, &args(&tcp(&target, 30)))
                    .unwrap();
                ok(
                    &out,
                    &format!("pod on node-{i} (cgroup {in_cgroup}) → {target}"),
                );
                assert_eq!(names(&out), both, "pod on node-{i} → {target}");
            }
            // From the nodes' own processes.
            let out = c.net.from_node(i, &args(&tcp(&target, 30))).unwrap();
            ok(&out, &format!("node-{i} → {target}"));
            assert_eq!(names(&out), both, "node-{i} → {target}");
        }
    }
    let vip = format!("{}:80", jsonpath(&c, "web", ".spec.clusterIP"));
    let out = c.net.from_pod(1, 0, false, &args(&tcp(&vip, 30))).unwrap();
    ok(&out, "pod → ClusterIP");
    assert_eq!(names(&out), both);
    // `switchyard inspect` lists the NodePort frontends.
    let rows = c.daemon(1).inspect("services").unwrap();
    let kinds: BTreeSet<String> = rows
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["frontend"].as_str().unwrap().ends_with(":30080/TCP"))
        .map(|r| r["kind"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(kinds, set(&["NodePort"]));
}

#[test]
fn should_be_able_to_update_service_type_to_nodeport_listening_on_same_port_number_but_different_protocols()
 {
    let c = cluster();
    service(
        &c,
        "mixed",
        "  ports: [{name: tcp, port: 80, protocol: TCP, targetPort: 8080}]\n",
    );
    let n1 = c.net.node(1).backend(1).ip;
    c.kubectl
        .apply(&format!(
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: mixed-1, labels: {{kubernetes.io/service-name: mixed}}}}\naddressType: IPv4\nports: [{{name: tcp, port: 8080, protocol: TCP}}, {{name: udp, port: 8080, protocol: UDP}}]\nendpoints: [{{addresses: ['{n1}'], nodeName: node-1}}]\n"
        ))
        .unwrap();
    let vip = jsonpath(&c, "mixed", ".spec.clusterIP");
    programmed(&c, 2, &format!("{vip}:80/TCP"), &[backend(&c, 1, 1, "TCP")]);
    // ClusterIP → NodePort, then TCP and UDP on the same port (an update,
    // as upstream's test does: a client-side apply merges ports by number);
    // the API server allocates both node ports.
    c.kubectl
        .run(&[
            "patch",
            "svc",
            "mixed",
            "--type=json",
            "-p",
            r#"[{"op":"replace","path":"/spec/type","value":"NodePort"},{"op":"replace","path":"/spec/ports","value":[{"name":"tcp","port":80,"protocol":"TCP","targetPort":8080},{"name":"udp","port":80,"protocol":"UDP","targetPort":8080}]}]"#,
        ])
        .unwrap();
    let tcp_np = jsonpath(&c, "mixed", ".spec.ports[0].nodePort");
    let udp_np = jsonpath(&c, "mixed", ".spec.ports[1].nodePort");
    assert!(
        !tcp_np.is_empty() && !udp_np.is_empty(),
        "two node ports allocated"
    );
    assert_ne!(tcp_np, udp_np);
    nodeport_programmed(&c, &tcp_np, "TCP", &[backend(&c, 1, 1, "TCP")]);
    nodeport_programmed(&c, &udp_np, "UDP", &[backend(&c, 1, 1, "UDP")]);
    for node in [NODE1, NODE2] {
        let out = c
            .net
            .from_external(&args(&tcp(&format!("{node}:{tcp_np}"), 5)))
            .unwrap();
        ok(&out, "TCP node port");
        let out = c
            .net
            .from_external(&[
                "udp",
                "--target",
                &format!("{node}:{udp_np}"),
                "--count",
                "5",
            ])
            .unwrap();
        ok(&out, "UDP node port");
        assert_eq!(names(&out), set(&["n1b1"]));
    }
}

#[test]
fn should_release_nodeports_on_delete() {
    let c = cluster();
    web(&c, "");
    let out = c
        .net
        .from_external(&args(&tcp(&format!("{NODE2}:30080"), 3)))
        .unwrap();
    ok(&out, "before delete");
    c.kubectl.run(&["delete", "svc", "web"]).unwrap();
    for (i, addr) in [(1, NODE1), (2, NODE2)] {
        c.daemon(i)
            .wait_frontend(&format!("{addr}:30080/TCP"), None)
            .unwrap();
    }
    // Nothing serves the port any more: the node's own stack refuses it.
    let out = c
        .net
        .from_external(&args(&tcp(&format!("{NODE2}:30080"), 3)))
        .unwrap();
    assert_eq!(out.errors.get("refused"), Some(&3), "{out:?}");
    // The same port can be used again.
    web(&c, "");
    let out = c
        .net
        .from_external(&args(&tcp(&format!("{NODE2}:30080"), 3)))
        .unwrap();
    ok(&out, "the port reused");
}

#[test]
fn should_be_possible_to_connect_to_a_service_via_externalip_when_the_external_ip_is_not_assigned_to_a_node()
 {
    let c = cluster();
    service(
        &c,
        "eip",
        "  externalIPs: [203.0.113.250]\n  ports: [{name: http, port: 80, targetPort: 8080}]\n",
    );
    endpoints(&c, "eip", "http", "TCP", &ready(&[(1, 1), (2, 1)]));
    let both = [backend(&c, 1, 1, "TCP"), backend(&c, 2, 1, "TCP")];
    for i in 1..=2 {
        programmed(&c, i, "203.0.113.250:80/TCP", &both);
    }
    for in_cgroup in [true, false] {
        let out = c
            .net
            .from_pod(1, 0, in_cgroup, &args(&tcp("203.0.113.250:80", 20)))
            .unwrap();
        ok(&out, &format!("pod (cgroup {in_cgroup}) → externalIP"));
        assert_eq!(names(&out), set(&["n1b1", "n2b1"]));
    }
    // Routed to a node from outside, it is served there too.
    c.net
        .route_external("203.0.113.250".parse().unwrap(), 2)
        .unwrap();
    let out = c
        .net
        .from_external(&args(&tcp("203.0.113.250:80", 20)))
        .unwrap();
    ok(&out, "external → externalIP");
    let rows = c.daemon(1).inspect("services").unwrap();
    let row = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["frontend"] == "203.0.113.250:80/TCP")
        .unwrap();
    assert_eq!(row["kind"], "ExternalIP");
}

/// `lb`: a LoadBalancer Service with ingress IP 203.0.113.10 (routed to
/// node-1 from outside), node port 30100, over n1b1, restricted to `ranges`.
fn load_balancer(c: &Cluster, ranges: &str) {
    service(
        c,
        "lb",
        &format!(
            "  type: LoadBalancer\n  loadBalancerSourceRanges: {ranges}\n  ports: [{{name: http, port: 80, targetPort: 8080, nodePort: 30100}}]\n"
        ),
    );
    c.kubectl
        .run(&[
            "patch",
            "svc",
            "lb",
            "--subresource=status",
            "--type=merge",
            "-p",
            r#"{"status":{"loadBalancer":{"ingress":[{"ip":"203.0.113.10"}]}}}"#,
        ])
        .unwrap();
    endpoints(c, "lb", "http", "TCP", &ready(&[(1, 1)]));
    let want: Vec<String> = ranges
        .trim_matches(|ch| ch == '[' || ch == ']')
        .split(',')
        .map(|s| s.trim().to_owned())
        .collect();
    c.daemon(1)
        .wait_row("203.0.113.10:80/TCP", |r| {
            r["backends"].as_array().is_some_and(|b| b.len() == 1)
                && r["source_ranges"].as_array().is_some_and(|s| {
                    s.iter()
                        .map(|v| v.as_str().unwrap())
                        .eq(want.iter().map(String::as_str))
                })
        })
        .unwrap();
    c.net
        .route_external("203.0.113.10".parse().unwrap(), 1)
        .unwrap();
}

#[test]
fn load_balancer_source_ranges_filter_the_load_balancer_ip_not_the_node_port() {
    let c = cluster();
    load_balancer(&c, "[192.168.0.200/32]");
    let lb = "203.0.113.10:80";
    ok(
        &c.net.from_external(&args(&tcp(lb, 5))).unwrap(),
        "allowed external client",
    );
    // A pod is not in the ranges: dropped (kube-proxy filters every source).
    let out = c.net.from_pod(1, 0, false, &args(&tcp(lb, 1))).unwrap();
    assert_eq!(
        out.errors.get("timeout"),
        Some(&1),
        "pod outside the ranges: {out:?}"
    );
    let out = c.net.from_pod(1, 0, true, &args(&tcp(lb, 1))).unwrap();
    assert_eq!(
        out.errors.get("timeout"),
        Some(&1),
        "socket path defers to the per-packet path: {out:?}"
    );
    // The ranges change: now pods may, the external client may not.
    load_balancer(&c, "[10.244.0.0/16]");
    let out = c.net.from_external(&args(&tcp(lb, 1))).unwrap();
    assert_eq!(out.errors.get("timeout"), Some(&1), "dropped: {out:?}");
    // Each refused SYN (retransmissions too) is counted, by reason.
    let denied: f64 = [1, 2]
        .iter()
        .map(|&i| {
            c.daemon(i)
                .metric(
                    r#"switchyard_datapath_dropped_packets_total{reason="source_range_denied"}"#,
                )
                .unwrap()
        })
        .sum();
    assert!(denied >= 3.0, "{denied} drops counted");
    ok(
        &c.net.from_pod(1, 0, false, &args(&tcp(lb, 5))).unwrap(),
        "pod in the ranges",
    );
    // The Service's node port is not subject to the ranges.
    ok(
        &c.net
            .from_external(&args(&tcp(&format!("{NODE1}:30100"), 5)))
            .unwrap(),
        "node port",
    );
}

/// `edge`: LoadBalancer, externalTrafficPolicy Local, health check node
/// port 32100, node port 30200, endpoints as given.
fn edge(c: &Cluster, eps: &[(usize, usize, bool, bool, bool)]) {
    service(
        c,
        "edge",
        "  type: LoadBalancer\n  externalTrafficPolicy: Local\n  healthCheckNodePort: 32100\n  ports: [{name: http, port: 80, targetPort: 8080, nodePort: 30200}]\n",
    );
    endpoints(c, "edge", "http", "TCP", eps);
}

fn health_check(c: &Cluster, node: &str) -> (u16, Value) {
    let (status, body) = external_get(c, &format!("{node}:32100"), "/anything").unwrap();
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

#[test]
fn external_traffic_policy_local_preserves_the_client_source_ip() {
    let c = cluster();
    edge(&c, &ready(&[(1, 1)]));
    c.daemon(1)
        .wait_row(&format!("{NODE1}:30200/TCP"), |r| {
            r["local_backends"].as_array().is_some_and(|l| l.len() == 1)
        })
        .unwrap();
    c.daemon(2)
        .wait_row(&format!("{NODE2}:30200/TCP"), |r| {
            r["local_backends"].as_array().is_some_and(Vec::is_empty)
                && r["backends"].as_array().is_some_and(|b| b.len() == 1)
        })
        .unwrap();
    let out = c
        .net
        .from_external(&[
            "tcp",
            "--target",
            &format!("{NODE1}:30200"),
            "--count",
            "20",
            "--whoami",
        ])
        .unwrap();
    ok(&out, "external → node-1 (Local)");
    assert_eq!(names(&out), set(&["n1b1"]));
    assert!(
        out.seen_as
            .iter()
            .all(|s| s.starts_with(&format!("{EXTERNAL_ADDR}:"))),
        "source IP preserved: {:?}",
        out.seen_as
    );
    // The node without a local endpoint drops, as kube-proxy does.
    let out = c
        .net
        .from_external(&args(&tcp(&format!("{NODE2}:30200"), 1)))
        .unwrap();
    assert_eq!(out.errors.get("timeout"), Some(&1), "remote node: {out:?}");
    // With ETP Cluster, a backend on the other node sees node-1 instead.
    web(&c, "");
    let out = c
        .net
        .from_external(&[
            "tcp",
            "--target",
            &format!("{NODE1}:30080"),
            "--count",
            "40",
            "--whoami",
        ])
        .unwrap();
    ok(&out, "external → node-1 (Cluster)");
    let seen: BTreeSet<String> = out
        .answers
        .iter()
        .zip(&out.seen_as)
        .map(|(who, seen)| format!("{who} {}", seen.split(':').next().unwrap()))
        .collect();
    assert_eq!(
        seen,
        set(&["n1b1 192.168.0.200", "n2b1 192.168.0.11"]),
        "local backend: client address; remote backend: the node's (SNAT)"
    );
}

#[test]
fn should_fail_health_check_node_port_if_there_are_only_terminating_endpoints() {
    let c = cluster();
    edge(&c, &ready(&[(1, 1)]));
    let answer = |node| {
        let mut last = (0, Value::Null);
        poll(
            Duration::from_secs(10),
            || {
                last = health_check(&c, node);
                Ok(Some(last.clone()))
            },
            String::new,
        )
        .unwrap()
    };
    // Wait for the servers to come up, then check both nodes.
    poll(
        Duration::from_secs(20),
        || {
            let up = external_get(&c, &format!("{NODE1}:32100"), "/").is_ok_and(|r| r.0 == 200);
            Ok(up.then_some(()))
        },
        || c.logs(),
    )
    .unwrap();
    let (status, body) = answer(NODE1);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["service"]["namespace"], "default");
    assert_eq!(body["service"]["name"], "edge");
    assert_eq!(body["localEndpoints"], 1);
    assert_eq!(body["serviceProxyHealthy"], true);
    let (status, body) = answer(NODE2);
    assert_eq!(
        (status, &body["localEndpoints"]),
        (503, &Value::from(0)),
        "{body}"
    );
    // The pod terminates: only a terminating endpoint is left.
    edge(&c, &[(1, 1, false, true, true)]);
    poll(
        Duration::from_secs(20),
        || Ok((health_check(&c, NODE1).0 == 503).then_some(())),
        || c.logs(),
    )
    .unwrap();
    assert_eq!(health_check(&c, NODE1).1["localEndpoints"], 0);
    // …while the NodePort still serves it (terminating fallback).
    let out = c
        .net
        .from_external(&args(&tcp(&format!("{NODE1}:30200"), 5)))
        .unwrap();
    ok(&out, "terminating endpoint still served");
    assert_eq!(names(&out), set(&["n1b1"]));
    // Without the Service, the port closes.
    c.kubectl.run(&["delete", "svc", "edge"]).unwrap();
    poll(
        Duration::from_secs(20),
        || {
            Ok(external_get(&c, &format!("{NODE1}:32100"), "/")
                .is_err()
                .then_some(()))
        },
        || c.logs(),
    )
    .unwrap();
}

#[test]
fn should_fallback_to_terminating_endpoints_when_there_are_no_ready_endpoints_with_externall_traffic_policy_cluster()
 {
    let c = cluster();
    service(
        &c,
        "web",
        "  type: NodePort\n  ports: [{name: http, port: 80, targetPort: 8080, nodePort: 30080}]\n",
    );
    endpoints(&c, "web", "http", "TCP", &[(2, 1, false, true, true)]);
    nodeport_programmed(&c, "30080", "TCP", &[backend(&c, 2, 1, "TCP")]);
    for node in [NODE1, NODE2] {
        let out = c
            .net
            .from_external(&args(&tcp(&format!("{node}:30080"), 5)))
            .unwrap();
        ok(&out, node);
        assert_eq!(names(&out), set(&["n2b1"]));
    }
}

#[test]
fn should_fallback_to_local_terminating_endpoints_when_there_are_no_ready_endpoints_with_external_traffic_policy_local()
 {
    let c = cluster();
    edge(&c, &[(1, 1, false, true, true)]);
    c.daemon(1)
        .wait_row(&format!("{NODE1}:30200/TCP"), |r| {
            r["local_backends"].as_array().is_some_and(|l| l.len() == 1)
        })
        .unwrap();
    c.daemon(2)
        .wait_row(&format!("{NODE2}:30200/TCP"), |r| {
            r["backends"].as_array().is_some_and(|l| l.len() == 1)
        })
        .unwrap();
    // node-1's NodePort works from both nodes' pods, and from outside.
    for i in 1..=2 {
        let out = c
            .net
            .from_pod(i, 0, false, &args(&tcp(&format!("{NODE1}:30200"), 3)))
            .unwrap();
        ok(&out, &format!("pod on node-{i} → node-1"));
    }
    ok(
        &c.net
            .from_external(&args(&tcp(&format!("{NODE1}:30200"), 3)))
            .unwrap(),
        "external → node-1",
    );
    // The remote node's NodePort fails from outside and from node-1's pod.
    let out = c
        .net
        .from_external(&args(&tcp(&format!("{NODE2}:30200"), 1)))
        .unwrap();
    assert_eq!(out.error_count(), 1, "{out:?}");
    let out = c
        .net
        .from_pod(1, 0, false, &args(&tcp(&format!("{NODE2}:30200"), 1)))
        .unwrap();
    assert_eq!(out.error_count(), 1, "{out:?}");
}

/// `sticky`: NodePort 30300 over all four server pods, with `affinity`.
fn sticky(c: &Cluster, affinity: &str, policy: &str) {
    service(
        c,
        "sticky",
        &format!(
            "  type: NodePort\n  externalTrafficPolicy: {policy}\n{affinity}  ports: [{{name: http, port: 80, targetPort: 8080, nodePort: 30300}}]\n"
        ),
    );
    endpoints(
        c,
        "sticky",
        "http",
        "TCP",
        &ready(&[(1, 1), (1, 2), (2, 1), (2, 2)]),
    );
    let on = affinity.contains("ClientIP");
    let local = policy == "Local";
    c.daemon(1)
        .wait_row(&format!("{NODE1}:30300/TCP"), |r| {
            r["backends"].as_array().is_some_and(|b| b.len() == 4)
                && r["affinity_timeout_s"].is_null() != on
                && r["local_backends"].is_null() != local
        })
        .unwrap();
}

#[test]
fn should_have_session_affinity_work_for_nodeport_service() {
    let c = cluster();
    let target = format!("{NODE1}:30300");
    sticky(&c, "  sessionAffinity: ClientIP\n", "Cluster");
    let out = c.net.from_external(&args(&tcp(&target, 30))).unwrap();
    ok(&out, "sticky");
    assert_eq!(names(&out).len(), 1, "one client, one backend: {out:?}");
    // With externalTrafficPolicy Local too (an old upstream regression):
    // sticky, and on this node.
    sticky(&c, "  sessionAffinity: ClientIP\n", "Local");
    let out = c.net.from_external(&args(&tcp(&target, 30))).unwrap();
    ok(&out, "sticky, Local");
    let got = names(&out);
    assert_eq!(got.len(), 1, "{out:?}");
    assert!(got.iter().all(|n| n.starts_with("n1")), "{got:?}");
}

#[test]
fn should_have_session_affinity_timeout_work_for_nodeport_service() {
    let c = cluster();
    let target = format!("{NODE1}:30300");
    sticky(
        &c,
        "  sessionAffinity: ClientIP\n  sessionAffinityConfig: {clientIP: {timeoutSeconds: 2}}\n",
        "Cluster",
    );
    let out = c.net.from_external(&args(&tcp(&target, 20))).unwrap();
    assert_eq!(names(&out).len(), 1, "sticky within the timeout: {out:?}");
    // Spaced beyond the timeout, each connection chooses afresh; eight such
    // choices all landing on one of four backends: 1 in 16,384.
    let out = c
        .net
        .from_external(&[
            "tcp",
            "--target",
            &target,
            "--count",
            "8",
            "--interval-ms",
            "2300",
        ])
        .unwrap();
    ok(&out, "spaced");
    assert!(names(&out).len() > 1, "affinity never expired: {out:?}");
}

#[test]
fn should_be_able_to_switch_session_affinity_for_nodeport_service() {
    let c = cluster();
    let target = format!("{NODE2}:30300");
    sticky(&c, "  sessionAffinity: ClientIP\n", "Cluster");
    assert_eq!(
        names(&c.net.from_external(&args(&tcp(&target, 20))).unwrap()).len(),
        1
    );
    sticky(&c, "  sessionAffinity: None\n", "Cluster");
    c.daemon(2)
        .wait_row(&format!("{NODE2}:30300/TCP"), |r| {
            r["affinity_timeout_s"].is_null()
        })
        .unwrap();
    let out = c.net.from_external(&args(&tcp(&target, 60))).unwrap();
    assert!(names(&out).len() > 1, "spread without affinity: {out:?}");
    sticky(&c, "  sessionAffinity: ClientIP\n", "Cluster");
    c.daemon(2)
        .wait_row(&format!("{NODE2}:30300/TCP"), |r| {
            !r["affinity_timeout_s"].is_null()
        })
        .unwrap();
    assert_eq!(
        names(&c.net.from_external(&args(&tcp(&target, 20))).unwrap()).len(),
        1
    );
}

#[test]
fn should_allow_pods_to_hairpin_back_to_themselves_through_services() {
    let c = cluster();
    service(
        &c,
        "self",
        "  ports: [{name: http, port: 80, targetPort: 8080}]\n",
    );
    endpoints(&c, "self", "http", "TCP", &ready(&[(1, 1)]));
    let vip = format!("{}:80", jsonpath(&c, "self", ".spec.clusterIP"));
    programmed(&c, 1, &format!("{vip}/TCP"), &[backend(&c, 1, 1, "TCP")]);
    for in_cgroup in [false, true] {
        let out = c
            .net
            .from_pod(
                1,
                1,
                in_cgroup,
                &["tcp", "--target", &vip, "--count", "5", "--whoami"],
            )
            .unwrap();
        ok(&out, &format!("hairpin (cgroup {in_cgroup})"));
        assert_eq!(names(&out), set(&["n1b1"]));
        if !in_cgroup {
            assert!(
                out.seen_as
                    .iter()
                    .all(|s| s.starts_with(&format!("{NODE1}:"))),
                "the per-packet path masquerades hairpin traffic to the node: {:?}",
                out.seen_as
            );
        }
    }
}

/// Parses `udp-stream` lines read so far.
fn events(lines: &[String]) -> Vec<StreamEvent> {
    lines
        .iter()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[test]
fn should_be_able_to_preserve_udp_traffic_when_server_pod_cycles_for_a_nodeport_service() {
    let c = cluster();
    service(
        &c,
        "udp",
        "  type: NodePort\n  ports: [{name: dns, port: 53, protocol: UDP, targetPort: 8080, nodePort: 30053}]\n",
    );
    endpoints(&c, "udp", "dns", "UDP", &ready(&[(1, 1)]));
    nodeport_programmed(&c, "30053", "UDP", &[backend(&c, 1, 1, "UDP")]);
    // The client sends from a fixed port (upstream: `nc -u -p 12345`) to
    // node-2, whose backend is on node-1 (source NAT on the way).
    let mut stream = testbed::proc::Proc::spawn_in(
        c.net.external.name(),
        None,
        &testbed::lab::netprobe().unwrap(),
        &[
            "udp-stream",
            "--target",
            &format!("{NODE2}:30053"),
            "--interval-ms",
            "100",
            "--source-port",
            "12345",
        ],
    )
    .unwrap();
    assert_eq!(stream.read_line().unwrap(), "started");
    let mut lines = Vec::new();
    for _ in 0..10 {
        lines.push(stream.read_line().unwrap());
    }
    assert!(
        events(&lines)
            .iter()
            .all(|e| e.answer.as_deref() == Some("n1b1")),
        "{lines:?}"
    );
    // The server pod cycles: another pod (on the other node) takes over.
    endpoints(&c, "udp", "dns", "UDP", &ready(&[(2, 2)]));
    let swapped = Instant::now();
    let mut moved = None;
    while swapped.elapsed() < Duration::from_secs(30) {
        let line = stream.read_line().unwrap();
        let e: StreamEvent = serde_json::from_str(&line).unwrap();
        if e.answer.as_deref() == Some("n2b2") {
            moved = Some(swapped.elapsed());
            break;
        }
    }
    stream.write_line("stop").unwrap();
    let moved = moved.unwrap_or_else(|| panic!("the flow never reached the new pod\n{}", c.logs()));
    // Bounded loosely: the claim is that the flow moves at all (its
    // conntrack entry is flushed); the delay is the watch's, under load.
    assert!(moved < Duration::from_secs(20), "took {moved:?}");
}

#[test]
fn a_direct_connection_after_a_translated_one_from_the_same_port_is_not_hijacked() {
    let c = cluster();
    service(
        &c,
        "one",
        "  ports: [{name: http, port: 80, targetPort: 8080}]\n",
    );
    endpoints(&c, "one", "http", "TCP", &ready(&[(1, 1)]));
    let vip = format!("{}:80", jsonpath(&c, "one", ".spec.clusterIP"));
    programmed(&c, 1, &format!("{vip}/TCP"), &[backend(&c, 1, 1, "TCP")]);
    let direct = c.net.node(1).backend(1).endpoint().to_string();
    for round in 0..3 {
        // Per-packet path (outside the cgroup), closed normally, then the
        // same source port straight to the backend's pod IP.
        let port = (40_100 + round).to_string();
        let through = one_from_port("tcp", &vip, &port);
        let out = c.net.from_pod(1, 0, false, &args(&through)).unwrap();
        ok(&out, "through the ClusterIP");
        let straight = one_from_port("tcp", &direct, &port);
        let out = c.net.from_pod(1, 0, false, &args(&straight)).unwrap();
        ok(&out, "directly, same source port");
        assert_eq!(names(&out), set(&["n1b1"]));
    }
}

/// Holds one connection to Service `name`'s ClusterIP from `port` through
/// one datapath (`held_in_cgroup`: the socket path), then connects
/// `attempts` times from the same port through the other. On the wire both
/// are client:port → n1b1:8080 unless the per-packet path remaps one: every
/// connection must work and the held one stay unharmed.
fn share_a_wire_tuple(name: &str, port: u16, held_in_cgroup: bool, attempts: usize) {
    let c = cluster();
    service(
        &c,
        name,
        "  ports: [{name: http, port: 80, targetPort: 8080}]\n",
    );
    endpoints(&c, name, "http", "TCP", &ready(&[(1, 1)]));
    let vip = format!("{}:80", jsonpath(&c, name, ".spec.clusterIP"));
    programmed(&c, 1, &format!("{vip}/TCP"), &[backend(&c, 1, 1, "TCP")]);
    let port = port.to_string();
    let hold = one_from_port("hold", &vip, &port);
    let mut held = c
        .net
        .spawn_in_pod(1, 0, held_in_cgroup, &args(&hold))
        .unwrap();
    let first: Outcome = serde_json::from_str(&held.read_line().unwrap()).unwrap();
    ok(&first, "held connection");
    for _ in 0..attempts {
        let tcp = one_from_port("tcp", &vip, &port);
        let out = c.net.from_pod(1, 0, !held_in_cgroup, &args(&tcp)).unwrap();
        ok(&out, "the other datapath's flow on the held flow's tuple");
    }
    held.write_line("check").unwrap();
    let check: Outcome = serde_json::from_str(&held.read_line().unwrap()).unwrap();
    ok(&check, "the held connection is unharmed");
    assert_eq!(names(&check), set(&["n1b1"]));
}

#[test]
fn a_socket_path_flow_and_a_per_packet_flow_sharing_a_wire_tuple_both_work() {
    // The per-packet flow comes second: its port is remapped.
    share_a_wire_tuple("one", 40300, true, 1);
}

#[test]
fn a_per_packet_flow_and_a_later_socket_path_flow_sharing_a_wire_tuple_both_work() {
    // The kernel sees another destination for the socket-path connection
    // (the backend, not the ClusterIP), so it allows the port; the
    // per-packet path remaps it, and its replies, translated back where
    // they enter the node, must leave by the client's interface as they are.
    share_a_wire_tuple("two", 40310, false, 3);
}

/// Node-1's own process reaches node-2's NodePort from `port` (node-2
/// translates it, to its own pod n2b1), then node-1's NodePort from the
/// same port (node-1's socket hooks translate it, straight to n2b1). On
/// the wire the second flow's replies have the first flow's reply tuple,
/// which node-2 tracks: that entry must not translate them, whether the
/// first flow is over (`closed`) or still open (then node-2 remaps the
/// second flow's source port, as netfilter's NAT does).
fn a_flow_on_a_node_port_flows_reply_tuple(name: &str, port: u16, closed: bool) {
    let c = cluster();
    service(
        &c,
        name,
        "  type: NodePort\n  ports: [{name: http, port: 80, targetPort: 8080}]\n",
    );
    endpoints(&c, name, "http", "TCP", &ready(&[(2, 1)]));
    let np = jsonpath(&c, name, ".spec.ports[0].nodePort");
    nodeport_programmed(&c, &np, "TCP", &[backend(&c, 2, 1, "TCP")]);
    let (via_node2, via_node1) = (format!("{NODE2}:{np}"), format!("{NODE1}:{np}"));
    for round in 0..3u16 {
        let port = (port + round).to_string();
        let mut held = None;
        if closed {
            let out = c
                .net
                .from_node(1, &args(&one_from_port("tcp", &via_node2, &port)))
                .unwrap();
            ok(&out, "node-1 → node-2's NodePort");
        } else {
            let hold = one_from_port("hold", &via_node2, &port);
            let mut p = c.net.spawn_in_node(1, &args(&hold)).unwrap();
            let first: Outcome = serde_json::from_str(&p.read_line().unwrap()).unwrap();
            ok(&first, "node-1 → node-2's NodePort, held");
            held = Some(p);
        }
        let out = c
            .net
            .from_node(1, &args(&one_from_port("tcp", &via_node1, &port)))
            .unwrap();
        ok(&out, &format!("node-1 → its own NodePort from port {port}"));
        assert_eq!(names(&out), set(&["n2b1"]));
        if let Some(mut p) = held {
            p.write_line("check").unwrap();
            let check: Outcome = serde_json::from_str(&p.read_line().unwrap()).unwrap();
            ok(&check, "the held connection is unharmed");
            assert_eq!(names(&check), set(&["n2b1"]));
        }
    }
}

#[test]
fn a_closed_node_port_flow_does_not_translate_a_later_flow_on_its_reply_tuple() {
    a_flow_on_a_node_port_flows_reply_tuple("closed", 40400, true);
}

#[test]
fn a_live_node_port_flow_and_a_later_flow_on_its_reply_tuple_both_work() {
    a_flow_on_a_node_port_flows_reply_tuple("live", 40410, false);
}

#[test]
fn a_connected_udp_socket_leaves_a_departed_backend() {
    let c = cluster();
    service(
        &c,
        "dns",
        "  ports: [{name: dns, port: 53, protocol: UDP, targetPort: 8080}]\n",
    );
    endpoints(&c, "dns", "dns", "UDP", &ready(&[(1, 1)]));
    let vip = format!("{}:53", jsonpath(&c, "dns", ".spec.clusterIP"));
    programmed(&c, 1, &format!("{vip}/UDP"), &[backend(&c, 1, 1, "UDP")]);
    let netprobe = testbed::lab::netprobe().unwrap();
    let spawn = |target: &str| {
        let mut p = c
            .net
            .spawn_in_pod(
                1,
                0,
                true,
                &[
                    "udp-stream",
                    "--target",
                    target,
                    "--interval-ms",
                    "100",
                    "--connected",
                    "--reconnect",
                ],
            )
            .unwrap();
        assert_eq!(p.read_line().unwrap(), "started");
        p
    };
    let _ = netprobe;
    // A resolver-like client through the ClusterIP, and one connected to
    // the backend pod's own address, which must be left alone.
    let mut via_vip = spawn(&vip);
    let direct_target = c.net.node(1).backend(1).endpoint().to_string();
    let mut direct = spawn(&direct_target);
    for p in [&mut via_vip, &mut direct] {
        for _ in 0..5 {
            let e: StreamEvent = serde_json::from_str(&p.read_line().unwrap()).unwrap();
            assert_eq!(e.answer.as_deref(), Some("n1b1"), "{e:?}");
        }
    }
    // The endpoint is replaced; the old pod keeps running.
    endpoints(&c, "dns", "dns", "UDP", &ready(&[(1, 2)]));
    let swapped = Instant::now();
    let mut old_answers_after = Vec::new();
    let mut moved = None;
    while swapped.elapsed() < Duration::from_secs(10) {
        let e: StreamEvent = serde_json::from_str(&via_vip.read_line().unwrap()).unwrap();
        match e.answer.as_deref() {
            Some("n1b2") => {
                moved = Some(swapped.elapsed());
                break;
            }
            Some("n1b1") => old_answers_after.push(swapped.elapsed()),
            _ => {}
        }
    }
    let moved = moved.unwrap_or_else(|| panic!("the socket stayed on the old pod\n{}", c.logs()));
    assert!(
        moved < Duration::from_secs(8),
        "the connected socket reached the new backend only after {moved:?}"
    );
    // The socket connected to the pod directly was not touched.
    let mut direct_errors = 0;
    for _ in 0..10 {
        let e: StreamEvent = serde_json::from_str(&direct.read_line().unwrap()).unwrap();
        direct_errors += usize::from(e.error.is_some());
        assert_ne!(e.answer.as_deref(), Some("n1b2"));
    }
    assert_eq!(
        direct_errors, 0,
        "a socket connected to the pod itself was closed"
    );
    via_vip.write_line("stop").unwrap();
    direct.write_line("stop").unwrap();
}

#[test]
fn should_be_able_to_handle_large_requests_udp() {
    let c = cluster();
    service(
        &c,
        "big",
        "  type: NodePort\n  ports: [{name: dns, port: 53, protocol: UDP, targetPort: 8080, nodePort: 30054}]\n",
    );
    endpoints(&c, "big", "dns", "UDP", &ready(&[(1, 1), (2, 1)]));
    nodeport_programmed(
        &c,
        "30054",
        "UDP",
        &[backend(&c, 1, 1, "UDP"), backend(&c, 2, 1, "UDP")],
    );
    let vip = format!("{}:53", jsonpath(&c, "big", ".spec.clusterIP"));
    let udp = |target: &str| {
        ["udp", "--target", target, "--count", "20", "--size", "2000"]
            .map(str::to_owned)
            .to_vec()
    };
    // A pod outside the cgroup: the per-packet path, fragments both ways.
    let out = c.net.from_pod(1, 0, false, &args(&udp(&vip))).unwrap();
    ok(&out, "2,000-byte datagrams through the ClusterIP");
    assert_eq!(names(&out), set(&["n1b1", "n2b1"]));
    for node in [NODE1, NODE2] {
        let out = c
            .net
            .from_external(&args(&udp(&format!("{node}:30054"))))
            .unwrap();
        ok(
            &out,
            &format!("2,000-byte datagrams through {node}'s NodePort"),
        );
        assert_eq!(names(&out), set(&["n1b1", "n2b1"]));
    }
}

#[test]
fn pod_interfaces_created_after_the_daemon_started_get_the_per_packet_path() {
    let mut c = cluster();
    service(
        &c,
        "web",
        "  ports: [{name: http, port: 80, targetPort: 8080}]\n",
    );
    endpoints(&c, "web", "http", "TCP", &ready(&[(1, 1), (2, 1)]));
    let vip = format!("{}:80", jsonpath(&c, "web", ".spec.clusterIP"));
    programmed(
        &c,
        1,
        &format!("{vip}/TCP"),
        &[backend(&c, 1, 1, "TCP"), backend(&c, 2, 1, "TCP")],
    );
    let prefix = c.net.prefix.clone();
    let host_if = c.net.nodes[0]
        .add_pod(&prefix, "late", false)
        .unwrap()
        .host_if
        .clone();
    let index = c.net.node(1).pods.len() - 1;
    // Outside the cgroup only the per-packet path can translate it; the
    // node has no route for the ClusterIP.
    poll(
        Duration::from_secs(10),
        || {
            let out = c.net.from_pod(1, index, false, &args(&tcp(&vip, 1)))?;
            Ok((out.error_count() == 0).then_some(()))
        },
        || format!("{host_if} never got the per-packet path\n{}", c.logs()),
    )
    .unwrap();
    let out = c
        .net
        .from_pod(1, index, false, &args(&tcp(&vip, 20)))
        .unwrap();
    ok(&out, "the late pod");
    assert_eq!(names(&out), set(&["n1b1", "n2b1"]));
}

#[test]
fn nodeports_follow_the_nodes_addresses() {
    let c = cluster();
    web(&c, "");
    let node1 = c.net.node(1).netns.name().to_owned();
    // An address added to node-1 serves the NodePort within moments…
    testbed::cmd::ip_in(&node1, &["addr", "add", "192.168.0.21/24", "dev", "eth0"]).unwrap();
    let both = [backend(&c, 1, 1, "TCP"), backend(&c, 2, 1, "TCP")];
    programmed(&c, 1, "192.168.0.21:30080/TCP", &both);
    let out = c
        .net
        .from_external(&args(&tcp("192.168.0.21:30080", 10)))
        .unwrap();
    ok(&out, "the new address");
    // …and stops when it is removed.
    testbed::cmd::ip_in(&node1, &["addr", "del", "192.168.0.21/24", "dev", "eth0"]).unwrap();
    c.daemon(1)
        .wait_frontend("192.168.0.21:30080/TCP", None)
        .unwrap();
    ok(
        &c.net
            .from_external(&args(&tcp(&format!("{NODE1}:30080"), 5)))
            .unwrap(),
        "the other address still serves",
    );
}

/// Pods on a bridge (the bridge CNI's `cni0`, which holds the pods'
/// gateway and so a NodePort address), nodes filtering by reverse path
/// strictly: the per-packet path serves ClusterIPs (local and remote
/// backends, hairpin) and NodePorts, and `cni0` is not taken for a
/// node-facing interface.
#[test]
fn pods_on_a_bridge_get_cluster_ips_nodeports_and_hairpin() {
    privileges::require();
    let c = Cluster::start_bridged(2, 2).expect("start the bridged cluster");
    web(&c, "");
    let vip = format!("{}:80", jsonpath(&c, "web", ".spec.clusterIP"));
    programmed(
        &c,
        1,
        &format!("{vip}/TCP"),
        &[backend(&c, 1, 1, "TCP"), backend(&c, 2, 1, "TCP")],
    );
    // The client pod, outside the cgroup: the per-packet path. Replies of
    // the local backend come back rewritten to the ClusterIP, which strict
    // reverse-path filtering would drop if they met the input path.
    let out = c.net.from_pod(1, 0, false, &args(&tcp(&vip, 40))).unwrap();
    ok(&out, "bridged pod to its ClusterIP");
    assert_eq!(names(&out), set(&["n1b1", "n2b1"]), "both backends answer");
    // Hairpin: a backend reaching itself.
    service(
        &c,
        "self",
        "  ports: [{name: http, port: 80, targetPort: 8080}]\n",
    );
    endpoints(&c, "self", "http", "TCP", &ready(&[(1, 1)]));
    let self_vip = format!("{}:80", jsonpath(&c, "self", ".spec.clusterIP"));
    programmed(
        &c,
        1,
        &format!("{self_vip}/TCP"),
        &[backend(&c, 1, 1, "TCP")],
    );
    let out = c
        .net
        .from_pod(1, 1, false, &args(&tcp(&self_vip, 5)))
        .unwrap();
    ok(&out, "bridged hairpin");
    // From outside, through either node.
    for node in [NODE1, NODE2] {
        let out = c
            .net
            .from_external(&args(&tcp(&format!("{node}:30080"), 20)))
            .unwrap();
        ok(&out, &format!("NodePort on {node}"));
    }
    // cni0 holds a NodePort address, yet got no node-facing programs.
    let links: Vec<String> = std::fs::read_dir(c.bpffs.path().join("node-1").join("links"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        links.iter().any(|l| l == "tc-node-ingress-eth0"),
        "{links:?}"
    );
    assert!(
        !links.iter().any(|l| l.ends_with(POD_BRIDGE)),
        "the pods' bridge is not node-facing: {links:?}"
    );
}
