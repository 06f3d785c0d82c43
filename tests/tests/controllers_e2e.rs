//! End to end with the controllers: the EndpointSlice controller
//! (`sy-controller-manager`) and the `switchyard` daemon watch the same API
//! server. The test plays the kubelet — it registers the Node and writes
//! the pods' status (their test-bed addresses, readiness) — and only ever
//! writes Pods and a Service: the slices the daemon programs are the
//! controller's, and traffic from the client pod follows them.
use testbed::{
    cluster::{Cluster, python},
    lab::ClientPlacement,
    privileges,
    probe::Outcome,
    proc::{Proc, sibling_binary},
};

const VIP: &str = "10.96.0.10";

fn pod(name: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: default, labels: {{app: web}}}}\nspec:\n  nodeName: node-1\n  containers:\n  - name: web\n    image: registry.example/web:1\n    ports: [{{name: http, containerPort: 8080}}]\n---\n"
    )
}

/// Writes pod `name`'s status as its kubelet would: Running at `ip`, Ready
/// or not.
fn report(c: &Cluster, name: &str, ip: &str, ready: bool) {
    let status = if ready { "True" } else { "False" };
    python(
        &c.api.kubeconfig(),
        &format!(
            "from kubernetes import client, config\n\
             config.load_kube_config()\n\
             v1 = client.CoreV1Api()\n\
             p = v1.read_namespaced_pod_status({name:?}, 'default')\n\
             p.status.phase = 'Running'\n\
             p.status.pod_ip = {ip:?}\n\
             p.status.pod_ips = [client.V1PodIP(ip={ip:?})]\n\
             p.status.conditions = [client.V1PodCondition(type='Ready', status={status:?})]\n\
             v1.replace_namespaced_pod_status({name:?}, 'default', p)\n"
        ),
    )
    .unwrap();
}

fn connect(c: &Cluster, count: usize) -> Outcome {
    c.bed
        .client(
            ClientPlacement::InNodeCgroup,
            &[
                "tcp",
                "--target",
                &format!("{VIP}:80"),
                "--count",
                &count.to_string(),
            ],
        )
        .unwrap()
}

fn answered_by(out: &Outcome) -> Vec<String> {
    assert_eq!(out.error_count(), 0, "{out:?}");
    out.counts().keys().cloned().collect()
}

#[test]
fn switchyard_programs_controller_written_slices() {
    privileges::require();
    let c = Cluster::start(3).unwrap();
    let log = c.dir.path().join("controller-manager.log");
    let _manager = Proc::spawn_logged(
        &sibling_binary("sy-controller-manager").unwrap(),
        &[
            "--kubeconfig".to_owned(),
            c.api.kubeconfig().display().to_string(),
            "--leader-elect=false".to_owned(),
            "--controllers=endpointslice".to_owned(),
        ],
        &log,
    )
    .unwrap();
    let node = "apiVersion: v1\nkind: Node\nmetadata: {name: node-1, labels: {kubernetes.io/hostname: node-1}}\n";
    c.kubectl.apply(node).unwrap();
    let pods: String = ["b1", "b2", "b3"].iter().map(|n| pod(n)).collect();
    c.kubectl.apply(&pods).unwrap();
    for i in 1..=3 {
        report(&c, &format!("b{i}"), &c.pod_ip(i), true);
    }
    c.kubectl
        .apply(&format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: default}}\nspec:\n  clusterIP: {VIP}\n  selector: {{app: web}}\n  ports: [{{name: http, port: 80, targetPort: http}}]\n"
        ))
        .unwrap();
    let fe = format!("{VIP}:80/TCP");
    let backends = |pods: &[usize]| -> Vec<String> {
        pods.iter().map(|i| c.backend(*i, 8080, "TCP")).collect()
    };
    let wait = |pods: &[usize]| {
        c.daemon
            .wait_frontend(&fe, Some(&backends(pods)))
            .unwrap_or_else(|e| {
                panic!(
                    "{e}\ncontroller manager:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                )
            })
    };
    wait(&[1, 2, 3]);
    assert_eq!(answered_by(&connect(&c, 60)), ["b1", "b2", "b3"]);

    // b2's kubelet reports it not ready: the controller's slice, then the
    // maps, drop it.
    report(&c, "b2", &c.pod_ip(2), false);
    wait(&[1, 3]);
    assert_eq!(answered_by(&connect(&c, 40)), ["b1", "b3"]);

    // b3 is deleted (terminating, as its kubelet has not finished): only
    // b1 serves.
    c.kubectl
        .run(&["delete", "pod", "b3", "--wait=false"])
        .unwrap();
    wait(&[1]);
    assert_eq!(answered_by(&connect(&c, 20)), ["b1"]);
}
