//! The official Python `kubernetes` client (37.x, installed by
//! scripts/setup.sh) against a real sy-apiserver: create, list with a
//! selector, watch resumed from a resourceVersion, stale replace → 409,
//! upstream's refusals (a link-local endpoint, a selector that misses its template),
//! server-side apply's conflicts and force.
mod common;

use common::{Backend, Server, venv};

#[test]
fn python_client_create_list_watch_conflict() {
    python_client_checks(Backend::Embedded);
}

#[test]
fn python_client_create_list_watch_conflict_on_etcd() {
    python_client_checks(Backend::Etcd);
}

fn python_client_checks(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_on(backend, &dir.path().join("data"));
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/client_checks.py");
    let out = std::process::Command::new(venv().join("bin/python"))
        .arg(script)
        .arg(server.kubeconfig())
        .output()
        .expect("run the Python client checks");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "Python client checks failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout.lines().filter(|l| l.starts_with("ok ")).count(),
        13,
        "{stdout}"
    );
}
