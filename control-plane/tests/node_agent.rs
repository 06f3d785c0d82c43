//! The node agent on a two-node cluster in a box: a real sy-apiserver,
//! controller manager (node IPAM, ReplicationController, EndpointSlice)
//! and scheduler, and two `sy-node-agent`s each serving a node network
//! namespace on an underlay bridge (nothing in the root namespace), with
//! containers run by runc from an image built of busybox-static and the
//! test bed's `netprobe`:
//!
//! - should serve a basic endpoint from pods: an RC's pods on both nodes
//!   answer over the network with their own names (fieldRef env, `$(VAR)`
//!   args), Running and Ready with addresses from their node's podCIDR;
//! - Service environment variables in a pod, ConfigMap/Secret refs;
//! - a readiness probe failing makes the pod not Ready and its endpoint
//!   leaves the EndpointSlice's ready set;
//! - graceful termination: the API server keeps a deleted pod for its
//!   grace period (its endpoint terminating), a container ignoring SIGTERM
//!   is killed at the end of it, a second DELETE shortens it;
//! - `kubectl logs [-f]` and `kubectl exec` (1.33 and 1.37) through the
//!   API server's `pods/log` and `pods/exec`;
//! - restarts: an exiting container restarts with restartCount and the
//!   last exit code reported.
//!
//! Needs root (namespaces, mounts) and runc; `netprobe` must be built
//! (`cargo build --bins`, as the README's test command does).
mod common;
mod controllers_support;

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use common::Backend;
use controllers_support::{Plane, endpoints, pod_ip};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::{Api, ResourceExt as _};

const T: Duration = Duration::from_secs(60);
const IMAGE: &str = "switchyard/testbed:1";

fn sh(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A named netns, deleted on drop.
struct Ns(String);
impl Ns {
    fn new(name: &str) -> Self {
        let _ = Command::new("ip").args(["netns", "del", name]).output();
        sh("ip", &["netns", "add", name]);
        sh("ip", &["-n", name, "link", "set", "lo", "up"]);
        Ns(name.to_owned())
    }
}
impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

/// An agent process, killed (by PID) on drop.
struct AgentProc {
    child: Child,
    log: PathBuf,
}
impl Drop for AgentProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn bin_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_sy-node-agent"))
        .parent()
        .unwrap()
        .to_owned()
}

struct Box2 {
    // Drop order: agents (they clean their pods), then namespaces, then the plane.
    agents: Vec<AgentProc>,
    nodes: Vec<Ns>,
    _underlay: Ns,
    plane: Plane,
    roots: Vec<PathBuf>,
}

impl Drop for Box2 {
    fn drop(&mut self) {
        // Stop the agents, then remove what their pods left (mounts, netns).
        self.agents.clear();
        for r in &self.roots {
            let _ = Command::new("sh")
                .arg("-c")
                .arg(format!(
                    "for m in $(awk '{{print $5}}' /proc/self/mountinfo | grep '^{}' | sort -r); do umount -l $m; done",
                    r.display()
                ))
                .output();
            let _ = Command::new("runc")
                .arg("--root")
                .arg(r.join("runc"))
                .args(["list", "-q"])
                .output()
                .map(|o| {
                    for id in String::from_utf8_lossy(&o.stdout).lines() {
                        let _ = Command::new("runc")
                            .arg("--root")
                            .arg(r.join("runc"))
                            .args(["delete", "--force", id])
                            .output();
                    }
                });
            if let Ok(ds) = std::fs::read_dir(r.join("pods")) {
                for d in ds.flatten() {
                    let _ = Command::new("ip")
                        .args([
                            "netns",
                            "del",
                            &format!("sypod-{}", d.file_name().to_string_lossy()),
                        ])
                        .output();
                }
            }
        }
    }
}

fn preflight() {
    assert!(
        nix_is_root(),
        "the node agent tests need root (network namespaces, mounts)"
    );
    let runc = Command::new("runc").arg("--version").output();
    assert!(
        runc.is_ok_and(|o| o.status.success()),
        "runc is not installed (scripts/setup.sh installs it)"
    );
    assert!(
        Path::new("/bin/busybox").exists(),
        "busybox-static is not installed (scripts/setup.sh installs it)"
    );
    assert!(
        bin_dir().join("netprobe").exists(),
        "netprobe is not built: run `cargo build --bins` first"
    );
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
}

fn start_box(tag: &str) -> Box2 {
    preflight();
    let mut plane = Plane::start(Backend::Embedded, 0);
    plane.fallback_cidrs = false;
    plane.start_manager(&[
        "--allocate-node-cidrs=true",
        "--cluster-cidr=10.244.0.0/16",
        "--service-cluster-ip-range=10.96.0.0/12",
    ]);
    plane.start_scheduler();
    let underlay = Ns::new(&format!("sya{tag}-ul"));
    sh(
        "ip",
        &["-n", &underlay.0, "link", "add", "br0", "type", "bridge"],
    );
    sh("ip", &["-n", &underlay.0, "link", "set", "br0", "up"]);
    let image_dir = plane.dir.path().join("image");
    let agent_bin = env!("CARGO_BIN_EXE_sy-node-agent");
    let netprobe = bin_dir().join("netprobe");
    sh(
        agent_bin,
        &[
            "image",
            "build",
            "--out",
            image_dir.to_str().unwrap(),
            "--name",
            IMAGE,
            "--add",
            &format!("{}:/bin/netprobe", netprobe.display()),
        ],
    );
    let mut nodes = Vec::new();
    let mut agents = Vec::new();
    let mut roots = Vec::new();
    for i in 1..=2u8 {
        let ns = Ns::new(&format!("sya{tag}-n{i}"));
        let (a, b) = (format!("u{i}"), format!("sya{tag}u{i}"));
        sh(
            "ip",
            &[
                "-n",
                &ns.0,
                "link",
                "add",
                &a,
                "type",
                "veth",
                "peer",
                "name",
                &b,
                "netns",
                &underlay.0,
            ],
        );
        sh(
            "ip",
            &["-n", &underlay.0, "link", "set", &b, "master", "br0", "up"],
        );
        sh(
            "ip",
            &[
                "-n",
                &ns.0,
                "addr",
                "add",
                &format!("192.168.0.{}/24", 10 + i),
                "dev",
                &a,
            ],
        );
        sh("ip", &["-n", &ns.0, "link", "set", &a, "up"]);
        sh(
            "ip",
            &[
                "netns",
                "exec",
                &ns.0,
                "sysctl",
                "-qw",
                "net.ipv4.ip_forward=1",
            ],
        );
        let root = plane.dir.path().join(format!("agent-{i}"));
        sh(
            agent_bin,
            &[
                "--root-dir",
                root.to_str().unwrap(),
                "image",
                "import",
                image_dir.to_str().unwrap(),
            ],
        );
        let log = plane.dir.path().join(format!("agent-{i}.log"));
        let child = Command::new(agent_bin)
            .args(["--kubeconfig", plane.server.kubeconfig().to_str().unwrap()])
            .args(["--node-name", &format!("node-{i}"), "--node-netns", &ns.0])
            .args([
                "--root-dir",
                root.to_str().unwrap(),
                "--port",
                "0",
                "--lease-interval",
                "1s",
            ])
            .env("RUST_LOG", "info,control_plane=debug")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        agents.push(AgentProc { child, log });
        nodes.push(ns);
        roots.push(root);
    }
    let bx = Box2 {
        agents,
        nodes,
        _underlay: underlay,
        plane,
        roots,
    };
    // Routes between the nodes' pod CIDRs (a cloud's route controller's job).
    let cidrs: Vec<String> = bx.plane.wait("podCIDRs on both nodes", T, || {
        let api: Api<Node> = Api::all(bx.plane.client.clone());
        (1..=2)
            .map(|i| {
                bx.plane
                    .rt
                    .block_on(api.get_opt(&format!("node-{i}")))
                    .ok()
                    .flatten()?
                    .spec?
                    .pod_cidr
            })
            .collect()
    });
    for (i, ns) in bx.nodes.iter().enumerate() {
        let j = 1 - i;
        sh(
            "ip",
            &[
                "-n",
                &ns.0,
                "route",
                "add",
                &cidrs[j],
                "via",
                &format!("192.168.0.{}", 11 + j),
            ],
        );
    }
    bx
}

impl Box2 {
    fn logs(&self) -> String {
        let mut s = self.plane.logs();
        for a in &self.agents {
            let l = std::fs::read_to_string(&a.log).unwrap_or_default();
            let tail: Vec<&str> = l.lines().rev().take(60).collect();
            s.push_str(&format!(
                "\n--- {} ---\n{}",
                a.log.display(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            ));
        }
        s
    }

    fn wait<X>(&self, what: &str, limit: Duration, mut f: impl FnMut() -> Option<X>) -> X {
        let start = Instant::now();
        loop {
            if let Some(v) = f() {
                return v;
            }
            assert!(
                start.elapsed() < limit,
                "timed out after {limit:?} waiting for {what}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn pod(&self, ns: &str, name: &str) -> Option<Pod> {
        let api: Api<Pod> = Api::namespaced(self.plane.client.clone(), ns);
        self.plane.rt.block_on(api.get_opt(name)).unwrap()
    }

    /// `netprobe tcp` from node `i`'s namespace: who answered.
    fn probe_from_node(&self, i: usize, target: &str) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.nodes[i - 1].0])
            .arg(bin_dir().join("netprobe"))
            .args(["tcp", "--target", target, "--count", "1"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The container's log as the agent wrote it (CRI lines' text).
    fn log_of(&self, pod: &Pod, container: &str) -> String {
        let dir = format!(
            "{}_{}_{}",
            pod.namespace().unwrap(),
            pod.name_any(),
            pod.uid().unwrap()
        );
        self.roots
            .iter()
            .filter_map(|r| {
                std::fs::read_to_string(r.join("logs").join(&dir).join(container).join("0.log"))
                    .ok()
            })
            .flat_map(|t| {
                t.lines()
                    .map(|l| l.splitn(4, ' ').nth(3).unwrap_or("").to_owned())
                    .collect::<Vec<_>>()
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

fn ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

const RC: &str = r#"
apiVersion: v1
kind: ReplicationController
metadata: {name: web}
spec:
  replicas: 4
  selector: {app: web}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: web
        image: switchyard/testbed:1
        command: [netprobe, serve]
        args: [--name, $(POD_NAME), --port, "8080"]
        env:
        - name: POD_NAME
          valueFrom: {fieldRef: {fieldPath: metadata.name}}
        ports: [{containerPort: 8080, name: tcp}]
        readinessProbe:
          tcpSocket: {port: tcp}
          periodSeconds: 1
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{name: tcp, port: 80, targetPort: 8080}]
"#;

#[test]
fn should_serve_a_basic_endpoint_from_pods_on_two_agents() {
    let bx = start_box("b");
    bx.plane.kubectl.ok_stdin(&["apply", "-f", "-"], RC);
    let pods = bx.wait("4 ready pods with addresses", T, || {
        let pods = bx.plane.pods("default", "app=web");
        (pods.len() == 4 && pods.iter().all(|p| ready(p) && pod_ip(p).is_some())).then_some(pods)
    });
    let mut nodes: Vec<String> = pods
        .iter()
        .filter_map(|p| p.spec.as_ref()?.node_name.clone())
        .collect();
    nodes.sort();
    nodes.dedup();
    assert_eq!(
        nodes,
        ["node-1", "node-2"],
        "the scheduler spreads the RC over both agents"
    );
    for p in &pods {
        let ip = pod_ip(p).unwrap();
        let st = p.status.as_ref().unwrap();
        assert_eq!(st.phase.as_deref(), Some("Running"));
        let cs = &st.container_statuses.as_ref().unwrap()[0];
        assert!(cs.ready && cs.started == Some(true) && cs.restart_count == 0);
        assert!(cs.container_id.as_deref().unwrap().starts_with("runc://"));
        // From node-1's namespace, each pod (local or across the underlay)
        // answers with its own name.
        let out = bx.probe_from_node(1, &format!("{ip}:8080"));
        assert!(
            out.contains(&p.name_any()),
            "pod {} at {ip} answered {out:?}\n{}",
            p.name_any(),
            bx.logs()
        );
    }
    let slices = bx.plane.slices("default", "web");
    let eps = endpoints(&slices);
    assert_eq!(eps.iter().filter(|e| e.1).count(), 4, "{eps:?}");
}

#[test]
fn service_env_vars_readiness_and_restarts() {
    let bx = start_box("e");
    let host = bx.plane.dir.path().join("hostdir");
    std::fs::create_dir_all(&host).unwrap();
    bx.plane.kubectl.ok_stdin(
        &["apply", "-f", "-"],
        r#"
apiVersion: v1
kind: Service
metadata: {name: backend-service}
spec:
  selector: {app: none}
  ports: [{name: http, port: 8080}, {name: dns, port: 53, protocol: UDP}]
---
apiVersion: v1
kind: ConfigMap
metadata: {name: cfg}
data: {greeting: hello}
---
apiVersion: v1
kind: Secret
metadata: {name: sec}
stringData: {password: hunter2}
"#,
    );
    let svc = bx.plane.service("default", "backend-service");
    let cip = svc.spec.unwrap().cluster_ip.unwrap();
    let pod_yaml = format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: envpod}}
spec:
  terminationGracePeriodSeconds: 20
  volumes:
  - {{name: host, hostPath: {{path: {host}}}}}
  - {{name: cm, configMap: {{name: cfg}}}}
  containers:
  - name: main
    image: switchyard/testbed:1
    command: [sh, -c]
    args:
    - |
      env | sort
      echo "file=$(cat /etc/cfg/greeting)"
      trap 'echo term >> /host/events; exit 0' TERM
      touch /tmp/ready
      (sleep 6; rm /tmp/ready) &
      while true; do sleep 0.2; done
    env:
    - {{name: GREETING, valueFrom: {{configMapKeyRef: {{name: cfg, key: greeting}}}}}}
    - {{name: PASSWORD, valueFrom: {{secretKeyRef: {{name: sec, key: password}}}}}}
    volumeMounts:
    - {{name: host, mountPath: /host}}
    - {{name: cm, mountPath: /etc/cfg, readOnly: true}}
    readinessProbe:
      exec: {{command: [cat, /tmp/ready]}}
      periodSeconds: 1
    lifecycle:
      preStop:
        exec: {{command: [sh, -c, "echo prestop >> /host/events"]}}
  - name: crasher
    image: switchyard/testbed:1
    command: [sh, -c, "echo run; sleep 1; exit 3"]
"#,
        host = host.display()
    );
    bx.plane.kubectl.ok_stdin(&["apply", "-f", "-"], &pod_yaml);
    let p = bx.wait("envpod ready", T, || {
        bx.pod("default", "envpod").filter(|p| {
            p.status
                .as_ref()
                .and_then(|s| s.container_statuses.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.name == "main" && c.ready))
        })
    });
    let log = bx.wait("the env dump", T, || {
        let l = bx.log_of(&p, "main");
        l.contains("file=").then_some(l)
    });
    for want in [
        format!("BACKEND_SERVICE_SERVICE_HOST={cip}"),
        "BACKEND_SERVICE_SERVICE_PORT=8080".into(),
        "BACKEND_SERVICE_SERVICE_PORT_HTTP=8080".into(),
        format!("BACKEND_SERVICE_PORT=tcp://{cip}:8080"),
        format!("BACKEND_SERVICE_PORT_53_UDP=udp://{cip}:53"),
        "BACKEND_SERVICE_PORT_53_UDP_PROTO=udp".into(),
        "BACKEND_SERVICE_PORT_53_UDP_PORT=53".into(),
        format!("BACKEND_SERVICE_PORT_53_UDP_ADDR={cip}"),
        "KUBERNETES_SERVICE_PORT=443".into(),
        "GREETING=hello".into(),
        "PASSWORD=hunter2".into(),
        "file=hello".into(),
        "HOSTNAME=envpod".into(),
    ] {
        assert!(
            log.lines().any(|l| l == want),
            "`{want}` not in the container's env:\n{log}"
        );
    }
    // The readiness probe starts failing after 6 s: not Ready, no restart.
    let p = bx.wait("envpod not ready", T, || {
        bx.pod("default", "envpod").filter(|p| {
            !ready(p)
                && p.status
                    .as_ref()
                    .unwrap()
                    .container_statuses
                    .as_ref()
                    .unwrap()
                    .iter()
                    .any(|c| c.name == "main" && !c.ready)
        })
    });
    let cs = p
        .status
        .as_ref()
        .unwrap()
        .container_statuses
        .clone()
        .unwrap();
    let main = cs.iter().find(|c| c.name == "main").unwrap();
    assert_eq!(main.restart_count, 0, "readiness failures never restart");
    assert!(main.state.as_ref().unwrap().running.is_some());
    // The crasher restarts (restartPolicy Always), its exit code reported.
    let p = bx.wait("crasher restarted", T, || {
        bx.pod("default", "envpod").filter(|p| {
            p.status
                .as_ref()
                .unwrap()
                .container_statuses
                .as_ref()
                .unwrap()
                .iter()
                .any(|c| c.name == "crasher" && c.restart_count >= 1)
        })
    });
    let crasher = p
        .status
        .unwrap()
        .container_statuses
        .unwrap()
        .into_iter()
        .find(|c| c.name == "crasher")
        .unwrap();
    let last = crasher
        .last_state
        .and_then(|s| s.terminated)
        .expect("lastState.terminated");
    assert_eq!(last.exit_code, 3);
    assert_eq!(last.reason.as_deref(), Some("Error"));
}

// Upstream's graceful deletion, end to end: the API server keeps the
// deleted pod (deletionTimestamp, deletionGracePeriodSeconds) while the
// agent stops it; its endpoint turns terminating (serving while Ready);
// a second DELETE may shorten the grace period; the agent's DELETE with
// grace 0 at the end removes the pod.
#[test]
fn a_container_ignoring_sigterm_is_killed_at_the_end_of_the_grace_period() {
    let bx = start_box("k");
    bx.plane.kubectl.ok_stdin(
        &["apply", "-f", "-"],
        r#"
apiVersion: v1
kind: Pod
metadata: {name: stubborn, labels: {app: stubborn}}
spec:
  terminationGracePeriodSeconds: 10
  containers:
  - name: main
    image: switchyard/testbed:1
    command: [sh, -c, "trap '' TERM; echo up; while true; do sleep 0.2; done"]
---
apiVersion: v1
kind: Pod
metadata: {name: patient}
spec:
  terminationGracePeriodSeconds: 600
  containers:
  - name: main
    image: switchyard/testbed:1
    command: [sh, -c, "trap '' TERM; while true; do sleep 0.2; done"]
---
apiVersion: v1
kind: Service
metadata: {name: stubborn}
spec:
  selector: {app: stubborn}
  ports: [{port: 80}]
"#,
    );
    let bxr = &bx;
    let running = |name: &'static str| {
        move || {
            bxr.pod("default", name)
                .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        }
    };
    let pod = bx.wait("stubborn running", T, running("stubborn"));
    let ip = pod_ip(&pod).unwrap();
    bx.wait("stubborn's endpoint ready", T, || {
        let eps = endpoints(&bx.plane.slices("default", "stubborn"));
        (eps.len() == 1 && eps[0].0 == ip && eps[0].1).then_some(())
    });
    let t0 = Instant::now();
    bx.plane
        .kubectl
        .ok(&["delete", "pod", "stubborn", "--wait=false"]);
    // Still there, terminating, with the pod's grace period.
    let marked = bx
        .pod("default", "stubborn")
        .expect("kept while terminating");
    assert!(marked.metadata.deletion_timestamp.is_some());
    assert_eq!(marked.metadata.deletion_grace_period_seconds, Some(10));
    // Its endpoint: not ready, still serving (the pod is Ready), terminating.
    bx.wait("stubborn's endpoint terminating", T, || {
        let eps = endpoints(&bx.plane.slices("default", "stubborn"));
        (eps.len() == 1 && eps[0] == (ip.clone(), false, true, true, eps[0].4.clone()))
            .then_some(())
    });
    bx.wait("stubborn gone", T, || {
        bx.pod("default", "stubborn").is_none().then_some(())
    });
    let took = t0.elapsed();
    // The grace period is long enough for the terminating endpoint to be
    // seen under load, and the upper bound loose for the same reason.
    assert!(
        took >= Duration::from_secs(10),
        "killed before the grace period ended: {took:?}\n{}",
        bx.logs()
    );
    assert!(
        took < Duration::from_secs(30),
        "not killed at the end of the grace period: {took:?}"
    );
    bx.wait("the endpoint gone", T, || {
        endpoints(&bx.plane.slices("default", "stubborn"))
            .is_empty()
            .then_some(())
    });

    // A second DELETE shortens a long grace period (a longer one is ignored).
    bx.wait("patient running", T, running("patient"));
    bx.plane
        .kubectl
        .ok(&["delete", "pod", "patient", "--wait=false"]);
    bx.plane.kubectl.ok(&[
        "delete",
        "pod",
        "patient",
        "--wait=false",
        "--grace-period=900",
    ]);
    let p = bx.pod("default", "patient").unwrap();
    assert_eq!(p.metadata.deletion_grace_period_seconds, Some(600));
    let t1 = Instant::now();
    bx.plane.kubectl.ok(&[
        "delete",
        "pod",
        "patient",
        "--wait=false",
        "--grace-period=2",
    ]);
    let p = bx.pod("default", "patient").unwrap();
    assert_eq!(p.metadata.deletion_grace_period_seconds, Some(2));
    bx.wait("patient gone", T, || {
        bx.pod("default", "patient").is_none().then_some(())
    });
    assert!(
        t1.elapsed() < Duration::from_secs(20),
        "the shortened grace period was not kept: {:?}",
        t1.elapsed()
    );
}

/// `kubectl logs [-f]` and `kubectl exec` through sy-apiserver's
/// `pods/log` and `pods/exec`, proxied to the agent, with kubectl 1.33 and
/// 1.37 (both exec over WebSocket): output, new lines followed, exit codes,
/// stdin; upstream's errors for a wrong container, a missing pod and an
/// unscheduled one; RBAC's `get pods/log` and `create pods/exec`.
#[test]
fn kubectl_logs_and_exec_through_the_api_server() {
    let bx = start_box("x");
    bx.plane.kubectl.ok_stdin(
        &["apply", "-f", "-"],
        r#"
apiVersion: v1
kind: Pod
metadata: {name: talker}
spec:
  containers:
  - name: main
    image: switchyard/testbed:1
    command: [sh, -c, "i=0; while true; do echo line $i; i=$((i+1)); sleep 0.3; done"]
  - name: side
    image: switchyard/testbed:1
    command: [sh, -c, "echo side up; exec sleep 3600"]
---
apiVersion: v1
kind: Pod
metadata: {name: nowhere}
spec:
  nodeSelector: {no-such-label: "true"}
  containers:
  - name: main
    image: switchyard/testbed:1
"#,
    );
    bx.wait("talker running", T, || {
        bx.pod("default", "talker")
            .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
    });
    let newest = common::Kubectl::new(
        common::kubectl_newest(),
        &bx.plane.server,
        &bx.plane.dir.path().join("home-newest"),
    );
    for k in [&bx.plane.kubectl, &newest] {
        let which = k.bin.display().to_string();
        let logs = bx.wait("log lines", T, || {
            let out = k.ok(&["logs", "talker", "-c", "main"]);
            out.contains("line 2").then_some(out)
        });
        assert!(logs.starts_with("line 0\n"), "{which}: {logs}");
        assert_eq!(k.ok(&["logs", "talker", "-c", "side"]), "side up\n");
        let tail = k.ok(&["logs", "talker", "-c", "main", "--tail=1"]);
        assert_eq!(tail.lines().count(), 1, "{which}: {tail}");
        let stamped = k.ok(&["logs", "talker", "-c", "side", "--timestamps"]);
        assert!(
            stamped.ends_with("Z side up\n") && stamped.starts_with("20"),
            "{which}: {stamped}"
        );

        // -f: lines written after the request arrive.
        let last: u64 = tail
            .trim()
            .strip_prefix("line ")
            .and_then(|n| n.parse().ok())
            .unwrap();
        let mut follow = k
            .command(&["logs", "-f", "talker", "-c", "main"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let stdout = follow.stdout.take().unwrap();
        std::thread::spawn(move || {
            use std::io::BufRead as _;
            for l in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if tx.send(l).is_err() {
                    return;
                }
            }
        });
        let want = last + 5;
        let start = Instant::now();
        let mut seen = Vec::new();
        while !seen.contains(&format!("line {want}")) {
            assert!(
                start.elapsed() < T,
                "{which}: `logs -f` did not follow: {seen:?}"
            );
            if let Ok(l) = rx.recv_timeout(Duration::from_millis(500)) {
                seen.push(l);
            }
        }
        let _ = follow.kill();
        let _ = follow.wait();

        // exec: output, hostname, exit codes, stdin.
        assert_eq!(
            k.ok(&["exec", "talker", "-c", "main", "--", "cat", "/etc/hostname"]),
            "talker\n"
        );
        let out = k.run(&[
            "exec",
            "talker",
            "-c",
            "main",
            "--",
            "sh",
            "-c",
            "echo out; echo err >&2; exit 3",
        ]);
        assert_eq!(out.status.code(), Some(3), "{which}: {out:?}");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
        assert!(String::from_utf8_lossy(&out.stderr).contains("err\n"));
        assert_eq!(
            k.ok_stdin(
                &["exec", "-i", "talker", "-c", "main", "--", "cat"],
                "hi\nthere\n"
            ),
            "hi\nthere\n"
        );

        // Upstream's refusals.
        let out = k.run(&["logs", "talker", "-c", "nope"]);
        assert!(
            String::from_utf8_lossy(&out.stderr)
                .contains("container nope is not valid for pod talker"),
            "{which}: {out:?}"
        );
        let out = k.run(&["exec", "talker", "-c", "nope", "--", "true"]);
        assert!(
            !out.status.success()
                && String::from_utf8_lossy(&out.stderr)
                    .contains("container nope is not valid for pod talker"),
            "{which}: {out:?}"
        );
        let out = k.run(&["exec", "ghost", "--", "true"]);
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("pods \"ghost\" not found"),
            "{which}: {out:?}"
        );
        let out = k.run(&["exec", "nowhere", "--", "true"]);
        assert!(
            String::from_utf8_lossy(&out.stderr)
                .contains("pod nowhere does not have a host assigned"),
            "{which}: {out:?}"
        );
    }

    // The agent's own endpoint answers only a user the API server vouches
    // for (TokenReview) and allows `nodes/proxy` on that node
    // (SubjectAccessReview), as a kubelet in webhook mode: not a pod that
    // reaches the node's address, with or without its ServiceAccount token.
    let node = bx
        .plane
        .kubectl
        .ok(&["get", "pod", "talker", "-o", "jsonpath={.spec.nodeName}"]);
    let endpoint = bx.plane.kubectl.ok(&[
        "get",
        "node",
        &node,
        "-o",
        r"jsonpath={.metadata.annotations.node\.switchyard\.io/agent-endpoint}",
    ]);
    let tokens = std::fs::read_to_string(bx.plane.server.data_dir.join("pki/tokens.csv")).unwrap();
    let token_of = |user: &str| {
        tokens
            .lines()
            .find(|l| l.split(',').nth(1) == Some(user))
            .and_then(|l| l.split(',').next())
            .unwrap_or_else(|| panic!("no {user} token in {tokens}"))
            .to_owned()
    };
    let status_with = |token: Option<&str>| {
        let mut args = vec![
            "-s".to_owned(),
            "-o".to_owned(),
            "/dev/null".to_owned(),
            "-w".to_owned(),
            "%{http_code}".to_owned(),
        ];
        if let Some(t) = token {
            args.extend(["-H".to_owned(), format!("Authorization: Bearer {t}")]);
        }
        args.push(format!(
            "http://{endpoint}/containerLogs/default/talker/side"
        ));
        let out = Command::new("curl").args(&args).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(status_with(None), "401", "no token");
    assert_eq!(status_with(Some("not-a-token")), "401", "an unknown token");
    // A ServiceAccount with no role (a reader may: its role allows `get` on
    // every resource and subresource, `nodes/proxy` included, as RBAC's
    // `*` does upstream).
    let pod_identity = bx.plane.kubectl.ok(&["create", "token", "default"]);
    assert_eq!(
        status_with(Some(pod_identity.trim())),
        "403",
        "the default ServiceAccount"
    );
    assert_eq!(status_with(Some(&token_of("reader"))), "200", "a reader");
    assert_eq!(status_with(Some(&token_of("admin"))), "200", "an admin");

    // The raw API: no container named on a two-container pod.
    let (code, status) =
        bx.plane
            .server
            .json("GET", "/api/v1/namespaces/default/pods/talker/log", "");
    assert_eq!(code, 400, "{status}");
    assert_eq!(
        status["message"],
        "a container name must be specified for pod talker, choose one of: [main side]"
    );
    let (code, status) = bx.plane.server.json(
        "GET",
        "/api/v1/namespaces/default/pods/talker/log?container=main&tailLines=-1",
        "",
    );
    assert_eq!(
        (code, status["reason"].as_str()),
        (422, Some("Invalid")),
        "{status}"
    );

    // RBAC: `get pods/log` lets bob read logs; exec needs `create pods/exec`.
    let admin = &bx.plane.kubectl;
    admin.ok(&[
        "create",
        "role",
        "logs",
        "--verb=get",
        "--resource=pods,pods/log",
    ]);
    admin.ok(&[
        "create",
        "rolebinding",
        "bob-logs",
        "--role=logs",
        "--user=bob",
    ]);
    bx.wait("bob reads logs", T, || {
        admin
            .run(&["logs", "talker", "-c", "side", "--as=bob"])
            .status
            .success()
            .then_some(())
    });
    let out = admin.run(&["exec", "talker", "-c", "main", "--as=bob", "--", "true"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(
            "cannot create resource \"pods/exec\" in API group \"\" in the namespace \"default\""
        ),
        "{out:?}"
    );
    admin.ok(&[
        "create",
        "role",
        "exec",
        "--verb=create",
        "--resource=pods/exec",
    ]);
    admin.ok(&[
        "create",
        "rolebinding",
        "bob-exec",
        "--role=exec",
        "--user=bob",
    ]);
    bx.wait("bob execs", T, || {
        let out = admin.run(&[
            "exec", "talker", "-c", "main", "--as=bob", "--", "echo", "ok",
        ]);
        (out.status.success() && out.stdout == b"ok\n").then_some(())
    });
}
