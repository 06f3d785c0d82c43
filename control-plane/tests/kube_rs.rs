//! kube-rs, as switchyard's daemon will use it, against a real sy-apiserver:
//! `watcher` + `reflector` over Services and EndpointSlices see creates,
//! updates and deletes; a forced 410 makes them re-list and converge; a
//! 5,000-object list pages through `continue`.
mod common;

use std::{collections::BTreeSet, time::Duration};

use common::{Backend, Server, free_port};
use futures::StreamExt as _;
use k8s_openapi::api::{
    core::v1::{ConfigMap, Service},
    discovery::v1::EndpointSlice,
};
use kube::{
    Api, Client, Config,
    api::ListParams,
    config::{KubeConfigOptions, Kubeconfig},
    runtime::{WatchStreamExt as _, reflector, watcher},
};
use serde_json::json;

async fn client(server: &Server) -> Client {
    let kubeconfig = Kubeconfig::read_from(server.kubeconfig()).unwrap();
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap();
    Client::try_from(config).unwrap()
}

fn svc(name: &str) -> String {
    json!({"metadata": {"name": name, "labels": {"app": name}}, "spec": {"ports": [{"port": 80}]}})
        .to_string()
}

const SVCS: &str = "/api/v1/namespaces/default/services";

/// Waits until `cond` holds for the reflector's names, or panics.
async fn until(
    what: &str,
    store: &reflector::Store<Service>,
    cond: impl Fn(&BTreeSet<String>) -> bool,
) {
    until_within(what, Duration::from_secs(10), store, cond).await;
}

async fn until_within(
    what: &str,
    limit: Duration,
    store: &reflector::Store<Service>,
    cond: impl Fn(&BTreeSet<String>) -> bool,
) {
    for _ in 0..limit.as_millis() / 50 {
        let names: BTreeSet<String> = store
            .state()
            .iter()
            .filter_map(|s| s.metadata.name.clone())
            .collect();
        if cond(&names) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let names: Vec<_> = store
        .state()
        .iter()
        .filter_map(|s| s.metadata.name.clone())
        .collect();
    panic!("{what}: reflector holds {names:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflector_follows_changes_and_survives_a_forced_410() {
    reflector_scenario(Backend::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflector_follows_changes_and_survives_a_forced_410_on_etcd() {
    reflector_scenario(Backend::Etcd).await;
}

async fn reflector_scenario(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let listen = format!("127.0.0.1:{}", free_port());
    let flags = [
        "--listen",
        listen.as_str(),
        "--watch-history",
        "2",
        "--compaction-interval",
        "1",
    ];
    // (Re)starts a server on the same store: the embedded file, or the same etcd.
    let start = |etcd: Option<common::EtcdProcess>, flags: &[&str]| match (backend, etcd) {
        (Backend::Etcd, Some(e)) => Server::start_on_this_etcd(e, &data, flags),
        (Backend::Etcd, None) => Server::start_on_etcd(&data, flags),
        (Backend::Embedded, _) => Server::start_with(&data, flags),
    };
    let server = start(None, &flags);
    server.json("POST", SVCS, &svc("a"));
    let kube = client(&server).await;

    let (store, writer) = reflector::store::<Service>();
    let services = Api::<Service>::all(kube.clone());
    let stream = reflector(writer, watcher(services, watcher::Config::default()))
        .default_backoff()
        .touched_objects();
    let task = tokio::spawn(stream.for_each(|_| std::future::ready(())));
    // kube-proxy's own selector, which needs set-based `!key` support.
    let slices = Api::<EndpointSlice>::namespaced(kube.clone(), "default");
    let slice_cfg = watcher::Config::default()
        .labels("kubernetes.io/service-name,!service.kubernetes.io/headless");
    let mut slice_events = watcher(slices, slice_cfg)
        .default_backoff()
        .applied_objects()
        .boxed();

    until("initial list", &store, |n| n.contains("a")).await;
    server.json("POST", SVCS, &svc("b"));
    server.http(
        "PATCH",
        &format!("{SVCS}/a"),
        "application/merge-patch+json",
        r#"{"metadata":{"labels":{"v":"2"}}}"#,
    );
    until("create", &store, |n| n.contains("b")).await;
    for _ in 0..100 {
        if store.state().iter().any(|s| {
            s.metadata
                .labels
                .as_ref()
                .is_some_and(|l| l.get("v").is_some_and(|v| v == "2"))
        }) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.json("DELETE", &format!("{SVCS}/b"), "");
    until("delete", &store, |n| !n.contains("b")).await;

    let slice = json!({"metadata": {"name": "a-1", "labels": {"kubernetes.io/service-name": "a"}}, "addressType": "IPv4",
        "endpoints": [{"addresses": ["10.244.1.11"], "conditions": {"ready": true}}], "ports": [{"port": 8080, "protocol": "TCP"}]});
    server.json(
        "POST",
        "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices",
        &slice.to_string(),
    );
    let seen = tokio::time::timeout(Duration::from_secs(10), slice_events.next())
        .await
        .expect("slice event")
        .unwrap()
        .unwrap();
    assert_eq!(seen.metadata.name.as_deref(), Some("a-1"));

    // Force a 410: the server goes away; on a port the watcher cannot reach,
    // the world changes and the change log is compacted past the watcher's
    // resourceVersion; then the server comes back where the watcher looks.
    let etcd = server.kill_keeping_store();
    let elsewhere = start(
        etcd,
        &["--watch-history", "2", "--compaction-interval", "1"],
    );
    elsewhere.json("DELETE", &format!("{SVCS}/a"), "");
    for i in 0..10 {
        elsewhere.json("POST", SVCS, &svc(&format!("c{i}")));
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let etcd = elsewhere.kill_keeping_store();
    let server = start(etcd, &flags);
    // The watcher's backoff grew while the server was away (up to 30 s).
    until_within("re-list after 410", Duration::from_secs(45), &store, |n| {
        !n.contains("a") && (0..10).all(|i| n.contains(&format!("c{i}")))
    })
    .await;
    // The watch goes on after the re-list.
    server.json("POST", SVCS, &svc("d"));
    until("watch after re-list", &store, |n| n.contains("d")).await;
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_5000_object_list_pages_through_continue() {
    paging_scenario(Backend::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_5000_object_list_pages_through_continue_on_etcd() {
    paging_scenario(Backend::Etcd).await;
}

async fn paging_scenario(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_on(backend, &dir.path().join("data"));
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let probe = server.probe();
            std::thread::spawn(move || {
                for i in (w..5000).step_by(4) {
                    let body = json!({"metadata": {"name": format!("cm-{i:04}")}, "data": {"i": i.to_string()}}).to_string();
                    let (code, _) = probe.try_json("POST", "/api/v1/namespaces/default/configmaps", &body).expect("server up");
                    assert_eq!(code, 201);
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    let api = Api::<ConfigMap>::namespaced(client(&server).await, "default");
    let (mut names, mut pages, mut token) = (BTreeSet::new(), 0, None::<String>);
    loop {
        let mut lp = ListParams::default().limit(500);
        if let Some(t) = &token {
            lp = lp.continue_token(t);
        }
        let page = api.list(&lp).await.unwrap();
        pages += 1;
        names.extend(page.items.into_iter().filter_map(|c| c.metadata.name));
        match page.metadata.continue_ {
            Some(t) if !t.is_empty() => token = Some(t),
            _ => break,
        }
    }
    assert_eq!((names.len(), pages), (5000, 10));
    // The watcher's initial list follows the same pages.
    let (store, writer) = reflector::store::<ConfigMap>();
    let stream = reflector(writer, watcher(api, watcher::Config::default()))
        .default_backoff()
        .touched_objects();
    let task = tokio::spawn(stream.for_each(|_| std::future::ready(())));
    for _ in 0..200 {
        if store.state().len() == 5000 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(store.state().len(), 5000);
    task.abort();
}
