//! The manifests in `deploy/` (switchyard as a DaemonSet in place of
//! kube-proxy) through real kubectl (the preinstalled 1.33 and 1.37 from
//! PyPI): `kubectl apply -f deploy/` creates every object, `get` returns
//! them as written, and a second apply changes nothing.
mod common;

use std::path::{Path, PathBuf};

use common::{Kubectl, Server, kubectl_dispatcher, kubectl_newest};
use serde_json::Value;

const RBAC: &str = "rbac.authorization.k8s.io";

/// What `kubectl apply -f deploy/` names, in its output's form.
const OBJECTS: [&str; 5] = [
    "configmap/switchyard-config",
    "daemonset.apps/switchyard",
    "serviceaccount/switchyard",
    "clusterrole.rbac.authorization.k8s.io/switchyard",
    "clusterrolebinding.rbac.authorization.k8s.io/switchyard",
];

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
        .join("deploy")
}

/// The status of every object in one `kubectl apply` output, by object.
fn applied(out: &str) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = out
        .lines()
        .filter_map(|l| l.rsplit_once(' '))
        .map(|(o, s)| (o.to_owned(), s.to_owned()))
        .collect();
    v.sort();
    v
}

fn expected(status: &str) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = OBJECTS
        .iter()
        .map(|o| ((*o).to_owned(), status.to_owned()))
        .collect();
    v.sort();
    v
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a list: {v}"))
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect()
}

fn deploy_applies(bin: PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));
    let k = Kubectl::new(bin, &server, &dir.path().join("home"));
    let deploy = deploy_dir();
    let deploy = deploy.to_str().unwrap();

    // Default (strict) validation: kubectl checks the OpenAPI for the
    // fieldValidation parameter of every kind, cluster-scoped RBAC included.
    let out = k.ok(&["apply", "-f", deploy]);
    assert_eq!(applied(&out), expected("created"), "{out}");

    // The DaemonSet as written.
    let ds = k.json(&["get", "ds", "switchyard", "-n", "kube-system"]);
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostNetwork"], true, "{pod}");
    assert_eq!(pod["hostPID"], true, "pods' namespaces through /proc");
    assert_eq!(pod["dnsPolicy"], "ClusterFirstWithHostNet");
    assert_eq!(pod["priorityClassName"], "system-node-critical");
    assert_eq!(pod["serviceAccountName"], "switchyard");
    assert_eq!(
        pod["tolerations"],
        serde_json::json!([{"operator": "Exists"}])
    );
    assert_eq!(ds["spec"]["updateStrategy"]["type"], "RollingUpdate");
    assert_eq!(
        ds["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"],
        1
    );
    assert_eq!(
        ds["spec"]["selector"]["matchLabels"]["k8s-app"],
        "switchyard"
    );
    let c = &pod["containers"][0];
    assert_eq!(c["image"], "switchyard:0.1.0");
    assert_eq!(strings(&c["command"]), ["/usr/local/bin/switchyard"]);
    assert_eq!(
        strings(&c["args"]),
        [
            "--config=/var/lib/switchyard/config.conf",
            "--hostname-override=$(NODE_NAME)",
            "--pin-root=/sys/fs/bpf/switchyard",
            "--cgroup-path=/run/switchyard/cgroupv2",
        ]
    );
    assert_eq!(
        c["env"][0]["valueFrom"]["fieldRef"]["fieldPath"],
        "spec.nodeName"
    );
    let sc = &c["securityContext"];
    assert_eq!(sc["privileged"], false);
    assert_eq!(
        strings(&sc["capabilities"]["add"]),
        ["BPF", "NET_ADMIN", "PERFMON", "SYS_RESOURCE", "SYS_ADMIN"]
    );
    assert_eq!(strings(&sc["capabilities"]["drop"]), ["ALL"]);
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/livez");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["port"], 10256);
    assert_eq!(c["resources"]["requests"]["memory"], "64Mi");
    let mounts: Vec<(&str, bool)> = c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["mountPath"].as_str().unwrap(),
                m["readOnly"].as_bool().unwrap_or(false),
            )
        })
        .collect();
    assert_eq!(
        mounts,
        [
            ("/sys/fs/bpf", false),
            ("/run/switchyard/cgroupv2", true),
            ("/lib/modules", true),
            ("/var/lib/switchyard", true),
        ]
    );
    assert_eq!(
        c["volumeMounts"][0]["mountPropagation"], "HostToContainer",
        "pins made on the host's bpffs stay visible"
    );
    let host_paths: Vec<&str> = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["hostPath"]["path"].as_str())
        .collect();
    assert_eq!(
        host_paths,
        ["/sys/fs/bpf", "/sys/fs/cgroup", "/lib/modules"]
    );

    // The ConfigMap holds a kube-proxy configuration file.
    let cm = k.json(&["get", "cm", "switchyard-config", "-n", "kube-system"]);
    let conf = cm["data"]["config.conf"].as_str().expect("config.conf");
    assert!(conf.contains("kind: KubeProxyConfiguration"), "{conf}");
    let conf: serde_yaml::Value = serde_yaml::from_str(conf).expect("config.conf is YAML");
    assert_eq!(conf["kind"].as_str(), Some("KubeProxyConfiguration"));
    assert_eq!(
        conf["apiVersion"].as_str(),
        Some("kubeproxy.config.k8s.io/v1alpha1")
    );
    assert_eq!(conf["healthzBindAddress"].as_str(), Some("0.0.0.0:10256"));
    assert_eq!(conf["clusterCIDR"].as_str(), Some("10.244.0.0/16"));
    assert_eq!(conf["syncPeriod"].as_str(), Some("30s"));
    assert_eq!(
        conf["clientConnection"]["kubeconfig"].as_str(),
        Some("/var/lib/switchyard/kubeconfig.conf"),
        "the API server's real address, not the kubernetes ClusterIP"
    );
    assert_eq!(
        conf["detectLocal"]["interfaceNamePrefix"].as_str(),
        Some("veth")
    );
    let kc = cm["data"]["kubeconfig.conf"]
        .as_str()
        .expect("kubeconfig.conf");
    let kc: serde_yaml::Value = serde_yaml::from_str(kc).expect("kubeconfig.conf is YAML");
    assert_eq!(
        kc["users"][0]["user"]["tokenFile"].as_str(),
        Some("/var/run/secrets/kubernetes.io/serviceaccount/token")
    );

    // RBAC: the account, the role, and the binding between them.
    let sa = k.json(&["get", "sa", "switchyard", "-n", "kube-system"]);
    assert_eq!(sa["metadata"]["namespace"], "kube-system");
    let role = k.json(&["get", "clusterrole", "switchyard"]);
    assert_eq!(role["apiVersion"], format!("{RBAC}/v1"));
    assert!(
        role["metadata"].get("namespace").is_none(),
        "cluster-scoped: {role}"
    );
    let rules = role["rules"].as_array().unwrap();
    let grants = |group: &str, resource: &str| -> Vec<&str> {
        rules
            .iter()
            .filter(|r| strings(&r["apiGroups"]).contains(&group))
            .filter(|r| strings(&r["resources"]).contains(&resource))
            .flat_map(|r| strings(&r["verbs"]))
            .collect()
    };
    for (group, resource) in [
        ("", "services"),
        ("", "nodes"),
        ("discovery.k8s.io", "endpointslices"),
    ] {
        assert_eq!(
            grants(group, resource),
            ["get", "list", "watch"],
            "{resource}"
        );
    }
    for group in ["", "events.k8s.io"] {
        assert_eq!(grants(group, "events"), ["create", "patch", "update"]);
    }
    let binding = k.json(&["get", "clusterrolebinding", "switchyard"]);
    assert_eq!(
        (
            binding["roleRef"]["kind"].as_str(),
            binding["roleRef"]["name"].as_str()
        ),
        (Some("ClusterRole"), Some("switchyard"))
    );
    assert_eq!(
        binding["subjects"],
        serde_json::json!([
            {"kind": "ServiceAccount", "name": "switchyard", "namespace": "kube-system"}
        ])
    );
    // The binding is enforced: the DaemonSet's account may do what the role
    // grants and nothing else.
    let can_i = |args: &[&str]| {
        let mut a = vec![
            "auth",
            "can-i",
            "--as=system:serviceaccount:kube-system:switchyard",
        ];
        a.extend_from_slice(args);
        let out = k.run(&a);
        String::from_utf8_lossy(&out.stdout).trim() == "yes"
    };
    assert!(can_i(&["watch", "endpointslices.discovery.k8s.io", "-A"]));
    assert!(can_i(&["list", "services", "-A"]));
    assert!(can_i(&["create", "events", "-n", "default"]));
    assert!(!can_i(&["delete", "services", "-n", "default"]));
    assert!(!can_i(&["get", "secrets", "-n", "kube-system"]));
    // (A list: single-object gets are not served as Tables.)
    let table = k.ok(&["get", "clusterrolebindings"]);
    assert!(table.contains("ClusterRole/switchyard"), "{table}");

    // Applying again finds nothing to change.
    let out = k.ok(&["apply", "-f", deploy]);
    assert_eq!(applied(&out), expected("unchanged"), "{out}");

    // Discovery of the RBAC group, as kubectl sees it.
    let resources = k.ok(&["api-resources", "--api-group", RBAC, "-o", "name"]);
    let mut names: Vec<&str> = resources.lines().collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "clusterrolebindings.rbac.authorization.k8s.io",
            "clusterroles.rbac.authorization.k8s.io",
            "rolebindings.rbac.authorization.k8s.io",
            "roles.rbac.authorization.k8s.io",
        ]
    );
}

#[test]
fn kubectl_1_33_applies_deploy() {
    deploy_applies(kubectl_dispatcher());
}

#[test]
fn kubectl_1_37_applies_deploy() {
    deploy_applies(kubectl_newest());
}

/// `/apis`, `/apis/<group>`, `/apis/<group>/v1` and the OpenAPI list the RBAC
/// kinds like every other group, the cluster-scoped ones without a namespace.
#[test]
fn rbac_discovery_and_openapi() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));

    let (code, groups) = server.json("GET", "/apis", "");
    assert_eq!(code, 200);
    let rbac = groups["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["name"] == RBAC)
        .unwrap_or_else(|| panic!("no {RBAC} in {groups}"));
    assert_eq!(
        rbac["preferredVersion"]["groupVersion"],
        format!("{RBAC}/v1")
    );

    let (code, group) = server.json("GET", &format!("/apis/{RBAC}"), "");
    assert_eq!(code, 200, "{group}");
    assert_eq!(group["kind"], "APIGroup");
    assert_eq!(group["name"], RBAC);
    assert_eq!(
        group["versions"],
        serde_json::json!([rbac["preferredVersion"]])
    );
    let (code, _) = server.json("GET", "/apis/apps", "");
    assert_eq!(code, 200, "every group answers");
    let (code, _) = server.json("GET", "/apis/nope.example.com", "");
    assert_eq!(code, 404);

    let (code, list) = server.json("GET", &format!("/apis/{RBAC}/v1"), "");
    assert_eq!(code, 200);
    assert_eq!(list["groupVersion"], format!("{RBAC}/v1"));
    let scoped: Vec<(&str, &str, bool)> = list["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["name"].as_str().unwrap(),
                r["kind"].as_str().unwrap(),
                r["namespaced"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        scoped,
        [
            ("roles", "Role", true),
            ("rolebindings", "RoleBinding", true),
            ("clusterroles", "ClusterRole", false),
            ("clusterrolebindings", "ClusterRoleBinding", false),
        ]
    );

    let (code, index) = server.json("GET", "/openapi/v3", "");
    assert_eq!(code, 200);
    assert!(
        index["paths"][format!("apis/{RBAC}/v1")].is_object(),
        "{index}"
    );
    let (code, doc) = server.json("GET", &format!("/openapi/v3/apis/{RBAC}/v1"), "");
    assert_eq!(code, 200);
    let cluster_path = format!("/apis/{RBAC}/v1/clusterroles/{{name}}");
    let gvk = &doc["paths"][cluster_path]["patch"]["x-kubernetes-group-version-kind"];
    assert_eq!(gvk["kind"], "ClusterRole", "{doc}");
    assert!(
        doc["paths"][format!("/apis/{RBAC}/v1/namespaces/{{namespace}}/roles/{{name}}")]
            .is_object(),
        "{doc}"
    );
}
