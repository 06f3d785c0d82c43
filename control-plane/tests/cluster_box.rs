//! `sy-cluster`, the cluster in a box, end to end: `up --nodes 2` (every
//! real part: sy-apiserver, controller manager, scheduler, sy-dns,
//! sy-node-agent with runc, the switchyard daemon), the front end and
//! back end of examples/frontend-backend/ applied with kubectl, traffic
//! by DNS name, Service variables, ClusterIP and NodePort from the
//! external namespace; then `down` must leave nothing: no namespace with
//! the cluster's prefix, no pod namespace, cgroup, mount, process or
//! state file. Upstream's e2e behaviours on the box: Services up, down and
//! recreated; session affinity through a ClusterIP and a NodePort;
//! multiport endpoints; readiness failure leaving traffic; graceful
//! termination keeping established connections; the proxy and the API
//! server restarted; DNS asked from a real pod; a stopped node's pods
//! recreated elsewhere. Each test uses a prefix
//! of its own, so tests run side by side. Needs root, runc, busybox-static, dig, and every binary built
//! (`cargo build --bins`).
use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    time::{Duration, Instant},
};

const SY_CLUSTER: &str = env!("CARGO_BIN_EXE_sy-cluster");

fn bin_dir() -> PathBuf {
    Path::new(SY_CLUSTER).parent().unwrap().to_owned()
}

fn kubectl_bin() -> PathBuf {
    let venv = std::env::var_os("SWITCHYARD_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME"))
                .join(".local/share/switchyard/venv")
        });
    let k = venv.join("bin/kubectl");
    assert!(
        k.exists(),
        "{} is missing: run scripts/setup.sh",
        k.display()
    );
    k
}

fn preflight() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the cluster-in-a-box tests need root (namespaces, cgroups, mounts, eBPF)"
    );
    for b in ["switchyard", "netprobe"] {
        assert!(
            bin_dir().join(b).exists(),
            "{b} is not built: run `cargo build --bins` first"
        );
    }
}

/// A cluster brought up by `sy-cluster`; `down` on drop if a test failed
/// before its own `down`.
struct Box {
    prefix: String,
    dir: tempfile::TempDir,
    home: tempfile::TempDir,
}

impl Box {
    fn up(tag: &str, extra: &[&str]) -> Self {
        preflight();
        let prefix = format!("sc{tag}{}", std::process::id() % 100_000);
        let dir = tempfile::tempdir().unwrap();
        let home = tempfile::tempdir().unwrap();
        let b = Box { prefix, dir, home };
        let out = b.sy(&[&["up", "--nodes", "2", "--prefix", &b.prefix], extra].concat());
        assert!(
            out.status.success(),
            "sy-cluster up failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.contains(&format!(
                "export KUBECONFIG={}",
                b.state().join("kubeconfig").display()
            )),
            "{stdout}"
        );
        b
    }

    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn sy(&self, args: &[&str]) -> Output {
        Command::new(SY_CLUSTER)
            .arg("--state-dir")
            .arg(self.state())
            .args(args)
            .output()
            .unwrap()
    }

    fn kubectl(&self, args: &[&str]) -> String {
        let out = Command::new(kubectl_bin())
            .env("KUBECONFIG", self.state().join("kubeconfig"))
            .env("HOME", self.home.path())
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// kubectl with `input` on its stdin.
    fn kubectl_stdin(&self, args: &[&str], input: &str) -> String {
        use std::io::Write as _;
        let mut child = Command::new(kubectl_bin())
            .env("KUBECONFIG", self.state().join("kubeconfig"))
            .env("HOME", self.home.path())
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}
{input}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs `cmd` in namespace `ns` (and cgroup `cgroup`: the socket path).
    fn run_in(&self, ns: &str, cgroup: Option<&Path>, cmd: &str) -> String {
        // The cgroup is joined before `ip netns exec`, which remounts /sys.
        let join = cgroup
            .map(|cg| format!("echo $$ > {}/cgroup.procs && ", cg.display()))
            .unwrap_or_default();
        let out = Command::new("sh")
            .args(["-c", &format!("{join}exec ip netns exec {ns} {cmd}")])
            .output()
            .unwrap();
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    fn logs(&self) -> String {
        let mut s = String::new();
        if let Ok(d) = std::fs::read_dir(self.state().join("logs")) {
            for e in d.flatten() {
                let l = std::fs::read_to_string(e.path()).unwrap_or_default();
                // Backtrace frames would crowd the error out of the tail.
                let frame = |l: &&str| {
                    let t = l.trim_start();
                    t.starts_with("at ")
                        || t.split_once(": ")
                            .is_some_and(|(n, _)| n.parse::<u32>().is_ok())
                };
                let lines: Vec<&str> = l.lines().filter(|l| !frame(l)).collect();
                s.push_str(&format!(
                    "\n--- {} ---\n{}",
                    e.path().display(),
                    lines[lines.len().saturating_sub(30)..].join("\n")
                ));
            }
        }
        s
    }

    fn state_json(&self) -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(self.state().join("state.json")).unwrap()).unwrap()
    }

    /// `down`, then checks nothing the cluster made is left.
    fn down_and_check(&self, pod_uids: &[String]) {
        let st = self.state_json();
        let out = self.sy(&["down"]);
        assert!(
            out.status.success(),
            "sy-cluster down: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let netns: Vec<String> = std::fs::read_dir("/run/netns")
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        let ours: Vec<&String> = netns
            .iter()
            .filter(|n| {
                n.starts_with(&format!("{}-", self.prefix))
                    || pod_uids.iter().any(|u| **n == format!("sypod-{u}"))
            })
            .collect();
        assert!(ours.is_empty(), "namespaces left: {ours:?}");
        for cg in st["cgroups"].as_array().unwrap() {
            let cg = cg.as_str().unwrap();
            assert!(!Path::new(cg).exists(), "cgroup left: {cg}");
        }
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let state = self.state();
        let state = state.to_string_lossy();
        assert!(
            !mounts.contains(state.as_ref()),
            "mounts left under {state}:\n{mounts}"
        );
        for p in st["processes"].as_array().unwrap() {
            let pid = p["pid"].as_i64().unwrap();
            let start = p["start_time"].as_u64().unwrap();
            let still = std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
                let rest = &s[s.rfind(')').unwrap() + 1..];
                let f: Vec<&str> = rest.split_whitespace().collect();
                f[0] != "Z" && f[19].parse::<u64>().ok() == Some(start)
            });
            assert!(!still, "process left: {p}");
        }
        assert!(!self.state().exists(), "{} is left", self.state().display());
    }
}

impl Drop for Box {
    fn drop(&mut self) {
        if self.state().join("state.json").exists() {
            let _ = self.sy(&["down"]);
        }
    }
}

fn wait<T>(what: &str, logs: impl Fn() -> String, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "{what} did not happen{}",
            logs()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn example(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/frontend-backend")
        .join(name)
        .display()
        .to_string()
}

#[test]
fn up_runs_the_application_reachable_by_dns_clusterip_and_nodeport_and_down_leaves_nothing() {
    let b = Box::up("a", &[]);
    let status = b.sy(&["status"]);
    let status_out = String::from_utf8_lossy(&status.stdout).into_owned();
    assert!(status.status.success(), "status: {status_out}");
    for c in [
        "sy-apiserver",
        "sy-controller-manager",
        "sy-scheduler",
        "sy-dns",
        "sy-node-agent node-2",
        "switchyard node-2",
    ] {
        assert!(status_out.contains(c), "{status_out}");
    }
    assert!(status_out.contains("node-1     True"), "{status_out}");

    b.kubectl(&["apply", "-f", &example("backend.yaml")]);
    b.kubectl(&["apply", "-f", &example("frontend.yaml")]);
    wait(
        "3 backend and 2 frontend pods Running and Ready",
        || b.logs(),
        || {
            let out = b.kubectl(&[
            "get", "pods", "-l", "app=demo", "-o",
            r#"jsonpath={range .items[*]}{.status.phase}/{.status.conditions[?(@.type=="Ready")].status} {end}"#,
        ]);
            (out.split_whitespace()
                .filter(|s| *s == "Running/True")
                .count()
                == 5)
                .then_some(())
        },
    );
    let uids: Vec<String> = b
        .kubectl(&[
            "get",
            "pods",
            "-A",
            "-o",
            "jsonpath={.items[*].metadata.uid}",
        ])
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    let st = b.state_json();
    let node1_cg = PathBuf::from(st["nodes"][0]["cgroup"].as_str().unwrap());
    let n1 = format!("{}-n1", b.prefix);
    let ext = format!("{}-ext", b.prefix);

    // DNS: the cluster DNS Service answers the back end's name from a node.
    let cluster_ip = b.kubectl(&[
        "get",
        "svc",
        "backend-service",
        "-o",
        "jsonpath={.spec.clusterIP}",
    ]);
    let dig = b.run_in(
        &n1,
        Some(&node1_cg),
        "dig +short +time=2 +tries=3 @10.96.0.10 backend-service.default.svc.cluster.local",
    );
    assert_eq!(
        dig.trim(),
        cluster_ip,
        "dig from node-1:\n{dig}{}",
        b.logs()
    );

    // ClusterIP from a node (socket path): every back end answers.
    let netprobe = bin_dir().join("netprobe");
    let out = b.run_in(
        &n1,
        Some(&node1_cg),
        &format!(
            "{} tcp --target {cluster_ip}:8080 --count 30",
            netprobe.display()
        ),
    );
    let v: serde_json::Value =
        serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    let answers: std::collections::BTreeSet<&str> = v["answers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(answers.len(), 3, "ClusterIP answers: {out}");
    assert!(v["errors"].as_object().unwrap().is_empty(), "{out}");

    // NodePort from outside, on both nodes: the front end reaches the back
    // end by DNS name (30080) and by Service variables (30081).
    for (node, port) in [("192.168.0.11", 30080), ("192.168.0.12", 30081)] {
        let out = b.run_in(
            &ext,
            None,
            &format!(
                "{} tcp --target {node}:{port} --count 12",
                netprobe.display()
            ),
        );
        let v: serde_json::Value =
            serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
        let answers: Vec<&str> = v["answers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        assert_eq!(answers.len(), 12, "{node}:{port}: {out}{}", b.logs());
        for a in &answers {
            let (front, back) = a.split_once('>').unwrap_or_else(|| panic!("{a}"));
            assert!(front.starts_with("v1/frontend-"), "{a}");
            assert_eq!(front.ends_with("/env"), port == 30081, "{a}");
            assert!(back.starts_with("backend-"), "{a}");
        }
        let backs: std::collections::BTreeSet<&str> = answers
            .iter()
            .map(|a| a.split_once('>').unwrap().1)
            .collect();
        assert!(
            backs.len() >= 2,
            "one back end answered everything: {answers:?}"
        );
    }
    // And with an HTTP client.
    let curl = b.run_in(&ext, None, "curl -s -m 5 http://192.168.0.12:30080/");
    assert!(
        curl.starts_with("v1/frontend-") && curl.contains(">backend-"),
        "curl: {curl}"
    );

    b.down_and_check(&uids);
}

#[test]
fn down_after_a_crash_removes_everything_and_spares_reused_pids() {
    let b = Box::up("b", &["--etcd"]);
    b.kubectl(&[
        "create",
        "deployment",
        "one",
        "--image=switchyard/testbed:1",
        "--",
        "/bin/netprobe",
        "serve",
        "--name",
        "one",
        "--port",
        "8080",
    ]);
    wait(
        "a pod Running",
        || b.logs(),
        || {
            b.kubectl(&["get", "pods", "-o", "jsonpath={.items[*].status.phase}"])
                .contains("Running")
                .then_some(())
        },
    );
    let uids: Vec<String> = b
        .kubectl(&["get", "pods", "-o", "jsonpath={.items[*].metadata.uid}"])
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    // A crash: the API server and node-1's agent die at once (their pods
    // and namespaces stay behind), and one record names a process that is
    // no longer the one started (same PID, other start time): ours to keep.
    let mut st = b.state_json();
    for p in st["processes"].as_array().unwrap() {
        let name = p["name"].as_str().unwrap();
        if name == "sy-apiserver" || name == "sy-node-agent node-1" {
            kill_and_wait(&b, name, p["pid"].as_i64().unwrap());
        }
    }
    let mut bystander = Command::new("sleep").arg("60").spawn().unwrap();
    st["processes"].as_array_mut().unwrap().push(serde_json::json!({
        "name": "impostor", "pid": bystander.id(), "start_time": 1, "log": "/dev/null", "netns": ""
    }));
    std::fs::write(
        b.state().join("state.json"),
        serde_json::to_vec(&st).unwrap(),
    )
    .unwrap();
    let status = b.sy(&["status"]);
    assert!(
        !status.status.success(),
        "status must report the dead components"
    );
    let err = String::from_utf8_lossy(&status.stderr);
    assert!(err.contains("sy-apiserver"), "{err}");
    b.down_and_check(&uids);
    assert!(
        bystander.try_wait().unwrap().is_none(),
        "a process not ours was signalled"
    );
    let _ = bystander.kill();
    let _ = bystander.wait();
}

/// A Deployment `name` of `replicas` pods answering with their own names
/// on 8080, and a Service `name` (port 80) over it; `service_extra` goes
/// under the Service's `spec`.
fn serve(b: &Box, name: &str, replicas: u32, service_extra: &str) {
    let spec = format!(
        "      containers:\n{}",
        serve_container("serve", 8080, "", "")
    );
    deploy(b, name, replicas, &spec);
    b.kubectl_stdin(&["apply", "-f", "-"], &service_yaml(name, service_extra));
}

/// SIGKILLs process `pid` (component `name` of the box) and waits until it
/// is gone: SIGKILL takes effect when the process next runs, and until
/// then it still looks alive to `status`.
fn kill_and_wait(b: &Box, name: &str, pid: i64) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
    wait(
        &format!("{name} gone"),
        || b.logs(),
        || {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let state = stat
                .rfind(')')
                .and_then(|i| stat[i + 1..].split_whitespace().next());
            // A zombie leader's other threads may still be exiting, holding
            // its sockets and locks (a restart would find its port taken).
            let threads = std::fs::read_dir(format!("/proc/{pid}/task")).map_or(0, Iterator::count);
            (matches!(state, None | Some("Z" | "X")) && threads <= 1).then_some(())
        },
    );
}

fn service_yaml(name: &str, extra: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n  selector: {{app: {name}}}\n  ports: [{{port: 80, targetPort: 8080}}]\n{extra}"
    )
}

/// The names of pods `app=name`.
fn pod_names(b: &Box, name: &str) -> std::collections::BTreeSet<String> {
    b.kubectl(&[
        "get",
        "pods",
        "-l",
        &format!("app={name}"),
        "-o",
        "jsonpath={.items[*].metadata.name}",
    ])
    .split_whitespace()
    .map(str::to_owned)
    .collect()
}

/// `count` connections to `target` with netprobe from namespace `ns` (and
/// cgroup `cgroup`): who answered each, and how many failed.
fn connect(
    b: &Box,
    ns: &str,
    cgroup: Option<&Path>,
    target: &str,
    count: usize,
) -> (Vec<String>, u64) {
    let out = b.run_in(
        ns,
        cgroup,
        &format!(
            "{} tcp --target {target} --count {count}",
            bin_dir().join("netprobe").display()
        ),
    );
    let v: serde_json::Value =
        serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    let answers = v["answers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .collect();
    let failed = v["errors"]
        .as_object()
        .unwrap()
        .values()
        .filter_map(serde_json::Value::as_u64)
        .sum();
    (answers, failed)
}

fn cluster_ip(b: &Box, svc: &str) -> String {
    b.kubectl(&["get", "svc", svc, "-o", "jsonpath={.spec.clusterIP}"])
}

/// Upstream's "should be able to up and down services" and "should work
/// after the service has been recreated" (test/e2e/network/service.go), on
/// the box: two Services answer from node-1's own processes (socket path)
/// with their own pods; one deleted stops answering while the other goes
/// on; recreated, it answers again.
#[test]
fn should_be_able_to_up_and_down_services_and_work_after_the_service_has_been_recreated() {
    let b = Box::up("u", &[]);
    let st = b.state_json();
    let node1_cg = PathBuf::from(st["nodes"][0]["cgroup"].as_str().unwrap());
    let n1 = format!("{}-n1", b.prefix);
    serve(&b, "up-a", 2, "");
    serve(&b, "up-b", 2, "");
    let answered_by_its_pods = |svc: &str| {
        let target = format!("{}:80", cluster_ip(&b, svc));
        answered_by(&b, &target, &pod_names(&b, svc), 20);
    };
    answered_by_its_pods("up-a");
    answered_by_its_pods("up-b");
    // Down: up-a's ClusterIP answers no more; up-b still does.
    let gone = format!("{}:80", cluster_ip(&b, "up-a"));
    b.kubectl(&["delete", "svc", "up-a"]);
    wait(
        "up-a's ClusterIP unanswered",
        || b.logs(),
        || {
            let (answers, _) = connect(&b, &n1, Some(&node1_cg), &gone, 3);
            answers.is_empty().then_some(())
        },
    );
    answered_by_its_pods("up-b");
    // Recreated (a new ClusterIP): answered again by the same pods.
    b.kubectl_stdin(&["apply", "-f", "-"], &service_yaml("up-a", ""));
    answered_by_its_pods("up-a");
    answered_by_its_pods("up-b");
}

/// Upstream's "should have session affinity work for service with type
/// clusterIP" and "… for NodePort service": with `sessionAffinity:
/// ClientIP` over 3 pods, every connection from one client reaches one
/// pod — from node-1's own processes to the ClusterIP (socket path) and
/// from outside to the NodePort (per-packet path); switched off, the
/// connections spread again.
#[test]
fn should_have_session_affinity_work_for_cluster_ip_and_node_port_services() {
    let b = Box::up("s", &[]);
    let st = b.state_json();
    let node1_cg = PathBuf::from(st["nodes"][0]["cgroup"].as_str().unwrap());
    let (n1, ext) = (format!("{}-n1", b.prefix), format!("{}-ext", b.prefix));
    serve(
        &b,
        "sticky",
        3,
        "  type: NodePort\n  sessionAffinity: ClientIP\n",
    );
    let pods = pod_names(&b, "sticky");
    let vip = format!("{}:80", cluster_ip(&b, "sticky"));
    let node_port = b.kubectl(&[
        "get",
        "svc",
        "sticky",
        "-o",
        "jsonpath={.spec.ports[0].nodePort}",
    ]);
    let via_node_port = format!("192.168.0.11:{node_port}");
    let one_pod = |ns: &str, cg: Option<&Path>, target: &str| {
        wait(
            &format!("every connection to {target} from {ns} on one pod"),
            || b.logs(),
            || {
                let (answers, failed) = connect(&b, ns, cg, target, 20);
                let seen: std::collections::BTreeSet<String> = answers.iter().cloned().collect();
                (failed == 0 && answers.len() == 20 && seen.len() == 1 && seen.is_subset(&pods))
                    .then_some(())
            },
        );
    };
    one_pod(&n1, Some(&node1_cg), &vip);
    one_pod(&ext, None, &via_node_port);
    b.kubectl(&[
        "patch",
        "svc",
        "sticky",
        "-p",
        r#"{"spec":{"sessionAffinity":"None"}}"#,
    ]);
    wait(
        "connections spread over the pods without affinity",
        || b.logs(),
        || {
            let (answers, failed) = connect(&b, &n1, Some(&node1_cg), &vip, 30);
            let seen: std::collections::BTreeSet<String> = answers.into_iter().collect();
            (failed == 0 && seen.len() > 1).then_some(())
        },
    );
}

/// A pod template's `spec` lines for one container `serve` running
/// `netprobe serve` on `port`, answering `$(POD_NAME)<suffix>`; `pre` runs
/// first in the same shell (`exec` keeps what it sets, ignored signals
/// included).
fn serve_container(name: &str, port: u16, suffix: &str, pre: &str) -> String {
    format!(
        r#"      - name: {name}
        image: switchyard/testbed:1
        command: [sh, -c, '{pre}exec /bin/netprobe serve --name "$POD_NAME{suffix}" --port {port}']
        env: [{{name: POD_NAME, valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}}}]
"#
    )
}

/// Applies Deployment `name` (`replicas` pods labelled `app: name`, pod
/// `spec` lines `pod_spec`) and waits until every pod is Running and Ready.
fn deploy(b: &Box, name: &str, replicas: u32, pod_spec: &str) {
    b.kubectl_stdin(
        &["apply", "-f", "-"],
        &format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: {name}}}\nspec:\n  replicas: {replicas}\n  selector: {{matchLabels: {{app: {name}}}}}\n  template:\n    metadata: {{labels: {{app: {name}}}}}\n    spec:\n{pod_spec}"
        ),
    );
    wait(
        &format!("{replicas} {name} pods Running and Ready"),
        || b.logs(),
        || {
            let out = b.kubectl(&[
                "get", "pods", "-l", &format!("app={name}"), "-o",
                r#"jsonpath={range .items[*]}{.status.phase}/{.status.conditions[?(@.type=="Ready")].status} {end}"#,
            ]);
            (out.split_whitespace()
                .filter(|s| *s == "Running/True")
                .count()
                == replicas as usize)
                .then_some(())
        },
    );
}

/// Waits until `count` connections to `target` from node-1's own processes
/// all succeed and are answered by exactly `want`.
fn answered_by(b: &Box, target: &str, want: &std::collections::BTreeSet<String>, count: usize) {
    let st = b.state_json();
    let node1_cg = PathBuf::from(st["nodes"][0]["cgroup"].as_str().unwrap());
    let n1 = format!("{}-n1", b.prefix);
    wait(
        &format!("{target} answered by {want:?}"),
        || b.logs(),
        || {
            let (answers, failed) = connect(b, &n1, Some(&node1_cg), target, count);
            let seen: std::collections::BTreeSet<String> = answers.into_iter().collect();
            (failed == 0 && seen == *want).then_some(())
        },
    );
}

/// Upstream's "should serve multiport endpoints from pods": a Service with
/// two ports whose target ports are two containers of each pod; each
/// Service port reaches its own container, on every pod, and the
/// EndpointSlice names both ports.
#[test]
fn should_serve_multiport_endpoints_from_pods() {
    let b = Box::up("m", &[]);
    let containers = format!(
        "{}{}",
        serve_container("a", 8080, "-a", ""),
        serve_container("b", 8081, "-b", "")
    );
    deploy(&b, "multi", 2, &format!("      containers:\n{containers}"));
    b.kubectl_stdin(
        &["apply", "-f", "-"],
        "apiVersion: v1\nkind: Service\nmetadata: {name: multi}\nspec:\n  selector: {app: multi}\n  ports: [{name: a, port: 80, targetPort: 8080}, {name: b, port: 81, targetPort: 8081}]\n",
    );
    let pods = pod_names(&b, "multi");
    let vip = cluster_ip(&b, "multi");
    for (port, suffix) in [(80, "-a"), (81, "-b")] {
        let want = pods.iter().map(|p| format!("{p}{suffix}")).collect();
        answered_by(&b, &format!("{vip}:{port}"), &want, 20);
    }
    let ports = b.kubectl(&[
        "get",
        "endpointslices",
        "-l",
        "kubernetes.io/service-name=multi",
        "-o",
        "jsonpath={range .items[*].ports[*]}{.name}={.port} {end}",
    ]);
    let mut ports: Vec<&str> = ports.split_whitespace().collect();
    ports.sort_unstable();
    assert_eq!(ports, ["a=8080", "b=8081"]);
}

/// Upstream's "should be able to update a Service's endpoints on readiness
/// failure" in the box: a pod whose readiness probe starts failing leaves
/// the Service's traffic without a restart, and comes back when it passes.
#[test]
fn readiness_probe_failure_removes_a_pod_from_endpoints_and_traffic() {
    let b = Box::up("r", &[]);
    let mut spec = String::from("      containers:\n");
    spec.push_str(&serve_container("serve", 8080, "", "touch /tmp/ready; "));
    spec.push_str(
        "        readinessProbe: {exec: {command: [test, -f, /tmp/ready]}, periodSeconds: 1, failureThreshold: 1}\n",
    );
    deploy(&b, "ready", 3, &spec);
    b.kubectl_stdin(&["apply", "-f", "-"], &service_yaml("ready", ""));
    let pods = pod_names(&b, "ready");
    let target = format!("{}:80", cluster_ip(&b, "ready"));
    answered_by(&b, &target, &pods, 30);
    let victim = pods.iter().next().unwrap().clone();
    b.kubectl(&["exec", &victim, "--", "rm", "/tmp/ready"]);
    let rest = pods.iter().filter(|p| **p != victim).cloned().collect();
    answered_by(&b, &target, &rest, 30);
    let restarts = b.kubectl(&[
        "get",
        "pod",
        &victim,
        "-o",
        "jsonpath={.status.containerStatuses[0].restartCount}",
    ]);
    assert_eq!(restarts, "0", "readiness alone never restarts");
    b.kubectl(&["exec", &victim, "--", "touch", "/tmp/ready"]);
    answered_by(&b, &target, &pods, 30);
}

/// Upstream's "should keep established connections to a terminating pod
/// while new ones go elsewhere" in the box (its pods ignore SIGTERM, so
/// they serve through their grace period): a connection held from node-1
/// to the Service's pod goes on answering after that pod is deleted, while
/// every new connection reaches the other pod.
#[test]
fn graceful_termination_keeps_established_connections_while_new_ones_go_elsewhere() {
    let b = Box::up("g", &[]);
    let mut spec = String::from("      terminationGracePeriodSeconds: 60\n      containers:\n");
    spec.push_str(&serve_container("serve", 8080, "", "trap \"\" TERM; "));
    deploy(&b, "grace", 2, &spec);
    b.kubectl_stdin(&["apply", "-f", "-"], &service_yaml("grace", ""));
    let pods = pod_names(&b, "grace");
    let target = format!("{}:80", cluster_ip(&b, "grace"));
    answered_by(&b, &target, &pods, 20);
    // One connection held open from node-1's own processes.
    let st = b.state_json();
    let node1_cg = st["nodes"][0]["cgroup"].as_str().unwrap().to_owned();
    let mut held = Command::new("sh")
        .args([
            "-c",
            &format!(
                "echo $$ > {node1_cg}/cgroup.procs && exec ip netns exec {}-n1 {} hold --target {target} --count 1",
                b.prefix,
                bin_dir().join("netprobe").display()
            ),
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(held.stdout.take().unwrap()));
    let mut stdin = held.stdin.take().unwrap();
    let mut outcome =
        || -> serde_json::Value { serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap() };
    let first = outcome();
    let victim = first["answers"][0].as_str().unwrap().to_owned();
    assert!(pods.contains(&victim), "{first}");
    b.kubectl(&["delete", "pod", &victim, "--wait=false"]);
    wait(
        &format!("{victim} terminating"),
        || b.logs(),
        || {
            let out = b.kubectl(&[
                "get",
                "pod",
                &victim,
                "-o",
                "jsonpath={.metadata.deletionTimestamp}",
            ]);
            (!out.is_empty()).then_some(())
        },
    );
    // New connections: never the terminating pod (the Deployment's new pod
    // may answer too once it is ready).
    let st2 = b.state_json();
    let n1 = format!("{}-n1", b.prefix);
    let cg = PathBuf::from(st2["nodes"][0]["cgroup"].as_str().unwrap());
    wait(
        "new connections avoid the terminating pod",
        || b.logs(),
        || {
            let (answers, failed) = connect(&b, &n1, Some(&cg), &target, 20);
            (failed == 0 && !answers.is_empty() && !answers.contains(&victim)).then_some(())
        },
    );
    // The established one still answers, from the terminating pod.
    use std::io::Write as _;
    writeln!(stdin, "check").unwrap();
    let check = outcome();
    assert_eq!(check["answers"], serde_json::json!([victim]), "{check}");
    assert!(
        check["errors"].as_object().unwrap().is_empty(),
        "the established connection broke: {check}"
    );
    drop(stdin);
    let _ = held.wait();
}

/// Kills component `name` of the box (SIGKILL) and starts it again as
/// `sy-cluster` started it: the same command line (plus `extra`), network
/// namespace, cgroup and log; the state file then records the new process,
/// so `down` stops it.
// The new process is the box's from here (`down` ends it by PID), so it is
// not waited for here.
#[allow(clippy::zombie_processes)]
fn restart(b: &Box, name: &str, extra: &[&str]) {
    let mut st = b.state_json();
    let rec = st["processes"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("no {name} in the state file"));
    let pid = rec["pid"].as_i64().unwrap();
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    let argv: Vec<String> = cmdline
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    // cgroup v2: "0::/<path>" under the cgroup2 mount.
    let rel = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("0::").map(str::to_owned))
        .unwrap();
    let mount = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .find(|l| l.contains(" - cgroup2 "))
        .and_then(|l| l.split_whitespace().nth(4).map(str::to_owned))
        .unwrap();
    let cgroup = format!("{mount}{rel}");
    kill_and_wait(b, name, pid);
    let log = std::fs::OpenOptions::new()
        .append(true)
        .open(rec["log"].as_str().unwrap())
        .unwrap();
    let netns = rec["netns"].as_str().unwrap().to_owned();
    let child = Command::new("sh")
        .args([
            "-c",
            // nsenter, not `ip netns exec`: that remounts /sys, and the
            // daemon opens its cgroup there.
            r#"cg=$1; ns=$2; shift 2; echo $$ > "$cg/cgroup.procs" && exec nsenter --net=/run/netns/"$ns" "$@""#,
            "sh",
            &cgroup,
            &netns,
        ])
        .args(&argv)
        .args(extra)
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let new_pid = child.id();
    let stat = std::fs::read_to_string(format!("/proc/{new_pid}/stat")).unwrap();
    let start: u64 = stat[stat.rfind(')').unwrap() + 1..]
        .split_whitespace()
        .nth(19)
        .unwrap()
        .parse()
        .unwrap();
    rec["pid"] = serde_json::json!(new_pid);
    rec["start_time"] = serde_json::json!(start);
    std::fs::write(
        b.state().join("state.json"),
        serde_json::to_vec_pretty(&st).unwrap(),
    )
    .unwrap();
}

/// Upstream's "should work after restarting kube-proxy" and "should work
/// after restarting apiserver", in the box: node-1's `switchyard` daemon,
/// then the API server, killed and started again; the Services made before
/// go on answering, and one made after each restart is served.
#[test]
fn should_work_after_restarting_the_proxy_and_the_api_server() {
    let b = Box::up("p", &[]);
    serve(&b, "before", 2, "");
    let before = (
        pod_names(&b, "before"),
        format!("{}:80", cluster_ip(&b, "before")),
    );
    answered_by(&b, &before.1, &before.0, 20);

    restart(&b, "switchyard node-1", &[]);
    answered_by(&b, &before.1, &before.0, 20);
    serve(&b, "after-proxy", 2, "");
    let after_proxy = (
        pod_names(&b, "after-proxy"),
        format!("{}:80", cluster_ip(&b, "after-proxy")),
    );
    answered_by(&b, &after_proxy.1, &after_proxy.0, 20);

    restart(&b, "sy-apiserver", &[]);
    wait(
        "the API server answering again",
        || b.logs(),
        || {
            Command::new(kubectl_bin())
                .env("KUBECONFIG", b.state().join("kubeconfig"))
                .env("HOME", b.home.path())
                .args(["get", "ns", "default"])
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|_| ())
        },
    );
    answered_by(&b, &before.1, &before.0, 20);
    answered_by(&b, &after_proxy.1, &after_proxy.0, 20);
    serve(&b, "after-api", 1, "");
    let after_api = (
        pod_names(&b, "after-api"),
        format!("{}:80", cluster_ip(&b, "after-api")),
    );
    answered_by(&b, &after_api.1, &after_api.0, 20);
    b.down_and_check(&[]);
}

/// `nslookup name` run in pod `pod` (busybox's, through the pod's
/// resolv.conf: the cluster DNS Service, the search list, `ndots:5`).
fn lookup(b: &Box, pod: &str, name: &str) -> String {
    let out = Command::new(kubectl_bin())
        .env("KUBECONFIG", b.state().join("kubeconfig"))
        .env("HOME", b.home.path())
        .args(["exec", pod, "--", "nslookup", name])
        .output()
        .unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Upstream's DNS conformance behaviours (test/e2e/network/dns.go), asked
/// from a real pod of the box: a headless Service's name gives its ready
/// pods' addresses, also as a partial name through the search list; a pod
/// with `hostname` and `subdomain` gets its own record; an ExternalName
/// Service is a CNAME to its target; a ClusterIP Service's name gives its
/// ClusterIP.
#[test]
fn should_provide_dns_for_services_headless_pods_external_names_and_partial_names() {
    let b = Box::up("d", &[]);
    serve(&b, "web", 2, "  clusterIP: None\n");
    serve(&b, "plain", 1, "");
    b.kubectl_stdin(
        &["apply", "-f", "-"],
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: named, labels: {{app: web}}}}\nspec:\n  hostname: h1\n  subdomain: web\n  containers:\n{}---\napiVersion: v1\nkind: Service\nmetadata: {{name: alias}}\nspec: {{type: ExternalName, externalName: plain.default.svc.cluster.local}}\n",
            serve_container("serve", 8080, "", "")
        ),
    );
    wait(
        "pod named Running",
        || b.logs(),
        || {
            let phase = b.kubectl(&["get", "pod", "named", "-o", "jsonpath={.status.phase}"]);
            (phase == "Running").then_some(())
        },
    );
    let ip_of = |pod: &str| b.kubectl(&["get", "pod", pod, "-o", "jsonpath={.status.podIP}"]);
    let asker = pod_names(&b, "plain").into_iter().next().unwrap();
    let web_ips: Vec<String> = pod_names(&b, "web").iter().map(|p| ip_of(p)).collect();
    let plain_ip = cluster_ip(&b, "plain");
    for name in ["web.default.svc.cluster.local", "web"] {
        wait(
            &format!("{name} → every ready web pod"),
            || b.logs(),
            || {
                let out = lookup(&b, &asker, name);
                web_ips
                    .iter()
                    .all(|ip| out.contains(ip.as_str()))
                    .then_some(())
            },
        );
    }
    let named_ip = ip_of("named");
    wait(
        "h1.web → the named pod",
        || b.logs(),
        || {
            let out = lookup(&b, &asker, "h1.web.default.svc.cluster.local");
            out.contains(named_ip.as_str()).then_some(())
        },
    );
    let out = lookup(&b, &asker, "alias");
    assert!(
        out.contains("plain.default.svc.cluster.local") && out.contains(plain_ip.as_str()),
        "alias: {out}"
    );
    let out = lookup(&b, &asker, "plain");
    assert!(out.contains(plain_ip.as_str()), "plain: {out}");
}

/// Upstream's "a node stopped → its pods are recreated on another node and
/// the Service keeps answering", in the box: node-2's agent killed (its
/// Lease stops); the node lifecycle controller (grace period shortened to
/// 6 s for the test) marks the Node unreachable, its pods not ready and
/// then evicts them (they tolerate `unreachable` for 2 s); the Deployment
/// recreates them on node-1, and the Service is answered by node-1's pods
/// alone.
#[test]
fn a_stopped_node_s_pods_are_recreated_elsewhere_and_the_service_keeps_answering() {
    let b = Box::up("n", &[]);
    restart(
        &b,
        "sy-controller-manager",
        &[
            "--node-monitor-grace-period",
            "6s",
            "--node-monitor-period",
            "1s",
        ],
    );
    let mut spec = String::from(
        "      tolerations: [{key: node.kubernetes.io/unreachable, operator: Exists, effect: NoExecute, tolerationSeconds: 2}]\n      containers:\n",
    );
    spec.push_str(&serve_container("serve", 8080, "", ""));
    deploy(&b, "survivor", 4, &spec);
    b.kubectl_stdin(&["apply", "-f", "-"], &service_yaml("survivor", ""));
    let on_node = |node: &str| -> std::collections::BTreeSet<String> {
        b.kubectl(&[
            "get", "pods", "-l", "app=survivor", "-o",
            r#"jsonpath={range .items[*]}{.metadata.name}/{.spec.nodeName}/{.status.conditions[?(@.type=="Ready")].status}/{.metadata.deletionTimestamp} {end}"#,
        ])
        .split_whitespace()
        .filter_map(|row| {
            let f: Vec<&str> = row.split('/').collect();
            (f.len() >= 3 && f[1] == node && f[2] == "True" && f.get(3).is_none_or(|d| d.is_empty()))
                .then(|| f[0].to_owned())
        })
        .collect()
    };
    let target = format!("{}:80", cluster_ip(&b, "survivor"));
    wait(
        "pods on both nodes",
        || b.logs(),
        || (!on_node("node-1").is_empty() && !on_node("node-2").is_empty()).then_some(()),
    );
    let all = pod_names(&b, "survivor");
    answered_by(&b, &target, &all, 30);
    // node-2 stops: its agent dies (its pods' containers go on running).
    let st = b.state_json();
    let agent = st["processes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "sy-node-agent node-2")
        .unwrap()["pid"]
        .as_i64()
        .unwrap();
    kill_and_wait(&b, "sy-node-agent node-2", agent);
    wait(
        "node-2 not Ready",
        || b.logs(),
        || {
            let ready = b.kubectl(&[
                "get",
                "node",
                "node-2",
                "-o",
                r#"jsonpath={.status.conditions[?(@.type=="Ready")].status}"#,
            ]);
            (ready == "Unknown").then_some(())
        },
    );
    // Four ready pods again, all on node-1, and only they answer.
    let survivors = wait(
        "4 ready pods on node-1",
        || b.logs(),
        || {
            let pods = on_node("node-1");
            (pods.len() == 4).then_some(pods)
        },
    );
    answered_by(&b, &target, &survivors, 30);
}
