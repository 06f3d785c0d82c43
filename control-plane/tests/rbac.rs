//! RBAC enforced as upstream's authorizer enforces it, driven by kubectl
//! 1.33 and 1.37 on both stores: the server's identities hold their rights
//! through ordinary bootstrap bindings; Roles and bindings grant to users,
//! groups and ServiceAccounts and revoke when deleted; `kubectl auth can-i`
//! (with `--list` and `--as`) and `auth whoami` answer; nobody grants what
//! they do not hold; ServiceAccount tokens from TokenRequest authenticate,
//! die with their bound pod, and give a pod's in-cluster configuration (the
//! Python client) exactly its account's rights.
mod common;

use std::time::{Duration, Instant};

use common::{Backend, Kubectl, Server, kubectl_dispatcher, kubectl_newest, venv};
use serde_json::{Value, json};

fn stderr_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `kubectl auth can-i …`: "yes" (exit 0) or "no" (exit 1).
fn can_i(k: &Kubectl, args: &[&str]) -> bool {
    let mut a = vec!["auth", "can-i"];
    a.extend_from_slice(args);
    let out = k.run(&a);
    let said = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(
        said == "yes" || said == "no",
        "can-i said {said:?}: {}",
        stderr_of(&out)
    );
    assert_eq!(out.status.success(), said == "yes");
    said == "yes"
}

/// Waits (at most 5 s) until `can_i` gives `want`: a revocation reaches
/// the authorizer through a watch, as upstream's informers.
fn eventually_can_i(k: &Kubectl, args: &[&str], want: bool) {
    let start = Instant::now();
    while can_i(k, args) != want {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "can-i {args:?} stayed {}",
            !want
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// kubectl as a bearer token alone (no client certificate).
fn with_token(k: &Kubectl, server: &Server, home: &std::path::Path, token: &str) -> Kubectl {
    let ca = server.data_dir.join("pki/ca.crt");
    let config = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://{}\n    certificate-authority: {}\n\
         users:\n- name: u\n  user:\n    token: {token}\ncontexts:\n- name: c\n  context: {{cluster: c, user: u, namespace: default}}\ncurrent-context: c\n",
        server.addr,
        ca.display()
    );
    std::fs::create_dir_all(home).unwrap();
    let path = home.join("config");
    std::fs::write(&path, config).unwrap();
    Kubectl {
        bin: k.bin.clone(),
        kubeconfig: path,
        home: home.to_owned(),
    }
}

fn rbac(bin: std::path::PathBuf, backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_on(backend, &dir.path().join("data"));
    let admin = Kubectl::new(bin.clone(), &server, &dir.path().join("home"));
    let mut reader = Kubectl::new(bin, &server, &dir.path().join("home-reader"));
    reader.kubeconfig = server.data_dir.join("reader.kubeconfig");

    // The server's identities hold their rights through bootstrap bindings.
    let crb = admin.json(&["get", "clusterrolebinding", "cluster-admin"]);
    assert_eq!(
        crb["subjects"],
        json!([{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "system:masters"}])
    );
    assert_eq!(
        crb["metadata"]["labels"]["kubernetes.io/bootstrapping"],
        "rbac-defaults"
    );
    assert!(can_i(&reader, &["list", "secrets", "-A"]));
    assert!(!can_i(&reader, &["delete", "pods"]));
    let who = reader.ok(&["auth", "whoami"]);
    assert!(
        who.contains("reader") && who.contains("[switchyard:readers system:authenticated]"),
        "{who}"
    );

    // A Role bound to a user, in one namespace.
    admin.ok(&["create", "namespace", "team"]);
    admin.ok(&[
        "create",
        "role",
        "pod-reader",
        "-n",
        "team",
        "--verb=get,list,watch",
        "--resource=pods",
    ]);
    assert!(!can_i(&admin, &["list", "pods", "-n", "team", "--as=bob"]));
    admin.ok(&[
        "create",
        "rolebinding",
        "bob-reads",
        "-n",
        "team",
        "--role=pod-reader",
        "--user=bob",
    ]);
    assert!(
        can_i(&admin, &["list", "pods", "-n", "team", "--as=bob"]),
        "granted from the moment the binding exists"
    );
    assert!(!can_i(
        &admin,
        &["list", "pods", "-n", "default", "--as=bob"]
    ));
    assert!(!can_i(
        &admin,
        &["delete", "pods", "-n", "team", "--as=bob"]
    ));
    let rules = admin.ok(&["auth", "can-i", "--list", "-n", "team", "--as=bob"]);
    assert!(
        rules
            .lines()
            .any(|l| l.starts_with("pods ") && l.contains("[get list watch]")),
        "{rules}"
    );
    // Groups, and a ClusterRole bound cluster-wide.
    admin.ok(&[
        "create",
        "clusterrole",
        "cm-editor",
        "--verb=get,list,create,update,patch",
        "--resource=configmaps",
    ]);
    admin.ok(&[
        "create",
        "clusterrolebinding",
        "devs-edit-cm",
        "--clusterrole=cm-editor",
        "--group=devs",
    ]);
    assert!(can_i(
        &admin,
        &[
            "create",
            "configmaps",
            "-n",
            "kube-system",
            "--as=carl",
            "--as-group=devs"
        ]
    ));
    assert!(!can_i(&admin, &["create", "configmaps", "--as=carl"]));
    // Revoked when the binding goes.
    admin.ok(&["delete", "clusterrolebinding", "devs-edit-cm"]);
    eventually_can_i(
        &admin,
        &["create", "configmaps", "--as=carl", "--as-group=devs"],
        false,
    );

    // The refusal as upstream words it, through a SubjectAccessReview too.
    let out = admin.run(&["get", "pods", "-n", "default", "--as=bob"]);
    assert!(
        stderr_of(&out).contains(r#"pods is forbidden: User "bob" cannot list resource "pods" in API group "" in the namespace "default""#),
        "{}",
        stderr_of(&out)
    );
    let (code, sar) = server.json(
        "POST",
        "/apis/authorization.k8s.io/v1/subjectaccessreviews",
        r#"{"apiVersion":"authorization.k8s.io/v1","kind":"SubjectAccessReview","spec":{"user":"bob","resourceAttributes":{"namespace":"team","verb":"get","resource":"pods"}}}"#,
    );
    assert_eq!(code, 201, "{sar}");
    assert_eq!(
        sar["status"],
        json!({"allowed": true, "reason": r#"RBAC: allowed by RoleBinding "bob-reads/team" of Role "pod-reader" to User "bob""#})
    );

    // Nobody grants what they do not hold.
    admin.ok(&[
        "create",
        "role",
        "binder",
        "-n",
        "team",
        "--verb=create,update",
        "--resource=roles,rolebindings",
    ]);
    admin.ok(&[
        "create",
        "rolebinding",
        "bob-binds",
        "-n",
        "team",
        "--role=binder",
        "--user=bob",
    ]);
    let out = admin.run(&[
        "create",
        "role",
        "secrets",
        "-n",
        "team",
        "--verb=get,delete",
        "--resource=secrets",
        "--as=bob",
    ]);
    let err = stderr_of(&out);
    assert!(!out.status.success());
    assert!(
        err.contains(r#"roles.rbac.authorization.k8s.io "secrets" is forbidden: user "bob" (groups=["system:authenticated"]) is attempting to grant RBAC permissions not currently held:"#)
            && err.contains(r#"{APIGroups:[""], Resources:["secrets"], Verbs:["get" "delete"]}"#),
        "{err}"
    );
    let out = admin.run(&[
        "create",
        "rolebinding",
        "bob-admin",
        "-n",
        "team",
        "--clusterrole=cluster-admin",
        "--user=bob",
        "--as=bob",
    ]);
    assert!(
        !out.status.success()
            && stderr_of(&out).contains("attempting to grant RBAC permissions not currently held"),
        "{}",
        stderr_of(&out)
    );
    // What bob holds he may pass on.
    admin.ok(&[
        "create",
        "role",
        "pods-too",
        "-n",
        "team",
        "--verb=get,list",
        "--resource=pods",
        "--as=bob",
    ]);

    // ServiceAccount tokens: issued by TokenRequest, authenticated, bound.
    admin.ok(&["create", "serviceaccount", "bot"]);
    let out = admin.run(&["create", "token", "bot", "--duration=5m"]);
    assert!(
        stderr_of(&out).contains("spec.expirationSeconds: Invalid value: 300: may not specify a duration less than 10 minutes"),
        "{}",
        stderr_of(&out)
    );
    let token = admin.ok(&["create", "token", "bot"]).trim().to_owned();
    let bot = with_token(&admin, &server, &dir.path().join("home-bot"), &token);
    let who = bot.ok(&["auth", "whoami"]);
    assert!(who.contains("system:serviceaccount:default:bot"), "{who}");
    let out = bot.run(&["get", "pods"]);
    assert!(
        stderr_of(&out)
            .contains(r#"User "system:serviceaccount:default:bot" cannot list resource "pods""#),
        "{}",
        stderr_of(&out)
    );
    admin.ok(&[
        "create",
        "rolebinding",
        "bot-pods",
        "--clusterrole=switchyard:reader",
        "--serviceaccount=default:bot",
    ]);
    bot.ok(&["get", "pods"]);

    // A token bound to a pod works while the pod lives.
    admin.ok(&[
        "run",
        "runner",
        "--image=nginx",
        "--overrides",
        r#"{"spec":{"serviceAccountName":"bot"}}"#,
    ]);
    let bound = admin
        .ok(&[
            "create",
            "token",
            "bot",
            "--bound-object-kind=Pod",
            "--bound-object-name=runner",
        ])
        .trim()
        .to_owned();
    let pod_bot = with_token(&admin, &server, &dir.path().join("home-pod"), &bound);
    pod_bot.ok(&["get", "pods"]);
    let (code, review) = server.json(
        "POST",
        "/apis/authentication.k8s.io/v1/tokenreviews",
        &json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": bound}}).to_string(),
    );
    assert_eq!(code, 201);
    assert_eq!(review["status"]["authenticated"], true, "{review}");
    assert_eq!(
        review["status"]["user"]["extra"]["authentication.kubernetes.io/pod-name"],
        json!(["runner"])
    );

    // The pod's own view: in-cluster configuration of the Python client,
    // pointed where the default/kubernetes endpoints say the server is.
    let endpoints = admin.json(&["get", "endpoints", "kubernetes"]);
    let (host, port) = (
        endpoints["subsets"][0]["addresses"][0]["ip"]
            .as_str()
            .unwrap()
            .to_owned(),
        endpoints["subsets"][0]["ports"][0]["port"].to_string(),
    );
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, &bound).unwrap();
    let out = std::process::Command::new(venv().join("bin/python"))
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/python/incluster.py"
        ))
        .args([&host, &port])
        .arg(&token_file)
        .arg(server.data_dir.join("pki/ca.crt"))
        .output()
        .expect("run the in-cluster checks");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", stderr_of(&out));
    assert_eq!(
        stdout.lines().filter(|l| l.starts_with("ok ")).count(),
        4,
        "{stdout}"
    );

    admin.ok(&["delete", "pod", "runner", "--now"]);
    let out = pod_bot.run(&["get", "pods"]);
    assert!(!out.status.success());
    assert!(
        stderr_of(&out).contains("Unauthorized"),
        "{}",
        stderr_of(&out)
    );
    let (_, review) = server.json(
        "POST",
        "/apis/authentication.k8s.io/v1/tokenreviews",
        &json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": bound}}).to_string(),
    );
    assert_eq!(
        review["status"]["error"], r#"pods "runner" not found"#,
        "{review}"
    );
    bot.ok(&["get", "pods"]);

    // system:masters stays a superuser whatever the bindings say.
    admin.ok(&["delete", "clusterrolebinding", "cluster-admin"]);
    admin.ok(&["get", "secrets", "-A"]);
}

/// The discovery paths are granted by a binding too: without it, a
/// non-superuser cannot discover; restored, it can again.
fn discovery_is_a_binding(bin: std::path::PathBuf, backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_on(backend, &dir.path().join("data"));
    let admin = Kubectl::new(bin, &server, &dir.path().join("home"));
    let saved: Value = admin.json(&["get", "clusterrolebinding", "system:discovery"]);
    admin.ok(&["delete", "clusterrolebinding", "system:discovery"]);
    let out = admin.run(&["get", "--raw", "/apis", "--as=bob"]);
    assert!(
        stderr_of(&out).contains(r#"forbidden: User "bob" cannot get path "/apis""#),
        "{}",
        stderr_of(&out)
    );
    let mut restored = saved.clone();
    restored["metadata"] = json!({"name": "system:discovery"});
    admin.ok_stdin(&["create", "-f", "-"], &restored.to_string());
    admin.ok(&["get", "--raw", "/apis", "--as=bob"]);
}

#[test]
fn kubectl_1_33_rbac() {
    rbac(kubectl_dispatcher(), Backend::Embedded);
}

#[test]
fn kubectl_1_33_rbac_on_etcd() {
    rbac(kubectl_dispatcher(), Backend::Etcd);
}

#[test]
fn kubectl_1_37_rbac() {
    rbac(kubectl_newest(), Backend::Embedded);
}

#[test]
fn kubectl_1_37_rbac_on_etcd() {
    rbac(kubectl_newest(), Backend::Etcd);
}

#[test]
fn kubectl_1_37_discovery_is_a_binding() {
    discovery_is_a_binding(kubectl_newest(), Backend::Embedded);
}

#[test]
fn kubectl_1_33_discovery_is_a_binding_on_etcd() {
    discovery_is_a_binding(kubectl_dispatcher(), Backend::Etcd);
}
