//! TLS with the generated CA, token and certificate authentication, and
//! each identity kept to what its bootstrap binding grants — through the
//! kubeconfigs the server writes, with real kubectl (RBAC itself:
//! `tests/rbac.rs`).
mod common;

use std::io::{Read as _, Write as _};

use common::{Kubectl, Server, kubectl_dispatcher, tls_connect};

fn raw(server: &Server, request: &str) -> String {
    let mut s = tls_connect(&server.addr, &server.data_dir).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn identities_are_kept_to_their_roles() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(&dir.path().join("data"), &["--node-names", "n1,n2"]);
    let data = &server.data_dir;
    let as_user = |file: &str| {
        let mut k = Kubectl::new(
            kubectl_dispatcher(),
            &server,
            &dir.path().join(format!("home-{file}")),
        );
        k.kubeconfig = data.join(file);
        k
    };
    let (admin, reader, n1) = (
        as_user("admin.kubeconfig"),
        as_user("reader.kubeconfig"),
        as_user("node-n1.kubeconfig"),
    );

    // Anonymous and unknown tokens: 401. Probes and /version stay public.
    let anon = raw(
        &server,
        "GET /api/v1/namespaces HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert!(anon.starts_with("HTTP/1.1 401"), "{anon}");
    let forged = raw(
        &server,
        "GET /api/v1/namespaces HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer nope\r\nConnection: close\r\n\r\n",
    );
    assert!(forged.starts_with("HTTP/1.1 401"), "{forged}");
    assert!(
        raw(
            &server,
            "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .ends_with("ok")
    );

    // The admin (client certificate) may do anything.
    admin.ok_stdin(
        &["create", "-f", "-"],
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n",
    );
    admin.ok_stdin(&["create", "-f", "-"], "apiVersion: v1\nkind: Node\nmetadata: {name: n1}\n---\napiVersion: v1\nkind: Node\nmetadata: {name: n2}\n");

    // The reader (token) reads and nothing else.
    assert!(
        reader
            .ok(&["get", "cm", "c", "-o", "name"])
            .contains("configmap/c")
    );
    let out = reader.run(&["delete", "cm", "c"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains("User \"reader\" cannot delete resource \"configmaps\""),
        "{err}"
    );

    // A node (client certificate) reads, writes its own Node, not another's.
    assert!(n1.ok(&["get", "cm", "-o", "name"]).contains("configmap/c"));
    n1.ok(&["label", "node", "n1", "ready=yes"]);
    let out = n1.run(&["label", "node", "n2", "ready=yes"]);
    assert!(!out.status.success(), "a node labelled another node");
    let out = n1.run(&["delete", "cm", "c"]);
    assert!(!out.status.success(), "a node deleted a ConfigMap");
    assert!(
        admin
            .ok(&["get", "cm", "c", "-o", "name"])
            .contains("configmap/c"),
        "nothing refused was applied"
    );
}

#[test]
fn the_ca_and_credentials_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let first = Server::start(&data);
    let ca = std::fs::read_to_string(data.join("pki/ca.crt")).unwrap();
    let token = common::admin_token(&data);
    drop(first);
    let second = Server::start(&data);
    assert_eq!(
        std::fs::read_to_string(data.join("pki/ca.crt")).unwrap(),
        ca,
        "the CA is made once"
    );
    assert_eq!(common::admin_token(&data), token);
    let k = Kubectl::new(kubectl_dispatcher(), &second, &dir.path().join("home"));
    assert!(
        k.ok(&["get", "ns", "-o", "name"])
            .contains("namespace/default")
    );
}
