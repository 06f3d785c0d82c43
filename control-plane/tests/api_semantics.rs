//! List/watch and write semantics over plain HTTP, as client libraries see
//! them: resourceVersion resume, bookmarks, "too old" as an in-stream 410,
//! selectors on watches, paging, optimistic concurrency, crash safety.
mod common;

use std::{
    io::{BufRead as _, BufReader, Write as _},
    time::Duration,
};

use common::{Kubectl, Server, kubectl_dispatcher, kubectl_newest};
use serde_json::{Value, json};

const CMS: &str = "/api/v1/namespaces/default/configmaps";
const MERGE: &str = "application/merge-patch+json";

fn cm(name: &str, labels: Value) -> String {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "labels": labels}, "data": {"k": "v"}}).to_string()
}

fn rv(obj: &Value) -> u64 {
    obj["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

/// A watch request's event lines, read as they come.
struct Watch {
    lines: std::io::Lines<BufReader<common::Tls>>,
}

impl Watch {
    fn open(server: &Server, path_and_query: &str) -> Self {
        let mut s = common::tls_connect(&server.addr, &server.data_dir).unwrap();
        s.sock
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let token = common::admin_token(&server.data_dir);
        write!(
            s,
            "GET {path_and_query} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n"
        )
        .unwrap();
        let mut lines = BufReader::new(s).lines();
        // Status line and headers.
        let status = lines.next().unwrap().unwrap();
        assert!(status.contains(" 200 "), "{status}");
        for l in lines.by_ref() {
            if l.unwrap().is_empty() {
                break;
            }
        }
        Self { lines }
    }

    /// The next event (chunk-size lines of the chunked encoding skipped).
    fn next(&mut self) -> Value {
        loop {
            let l = self
                .lines
                .next()
                .expect("stream open")
                .expect("an event in time");
            if let Ok(v) = serde_json::from_str::<Value>(&l)
                && v.is_object()
            {
                return v;
            }
        }
    }
}

#[test]
fn watch_resumes_from_a_resource_version_with_selectors_and_bookmarks() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(&dir.path().join("data"), &["--bookmark-interval", "1"]);
    let (_, a) = server.json("POST", CMS, &cm("a", json!({"app": "web"})));
    let (_, b) = server.json("POST", CMS, &cm("b", json!({"app": "db"})));
    assert!(rv(&b) > rv(&a), "revisions grow");

    // Resume after `a`: `b` is not selected, so the first event is the update below.
    let mut w = Watch::open(
        &server,
        &format!(
            "{CMS}?watch=true&resourceVersion={}&labelSelector=app%3Dweb&allowWatchBookmarks=true",
            rv(&a)
        ),
    );
    let (code, _) = server.http(
        "PATCH",
        &format!("{CMS}/b"),
        MERGE,
        r#"{"metadata":{"labels":{"app":"web"}}}"#,
    );
    assert_eq!(code, 200);
    let mut events = Vec::new();
    let mut saw_bookmark = false;
    for _ in 0..20 {
        if events.len() == 3 {
            break;
        }
        let e = w.next();
        if e["type"] == "BOOKMARK" {
            saw_bookmark = true;
            assert!(rv(&e["object"]) >= rv(&a));
            continue;
        }
        events.push((
            e["type"].as_str().unwrap().to_owned(),
            e["object"]["metadata"]["name"].as_str().unwrap().to_owned(),
        ));
        match events.len() {
            1 => {
                // `a` leaves the selection, then is deleted while outside it.
                server.http(
                    "PATCH",
                    &format!("{CMS}/a"),
                    MERGE,
                    r#"{"metadata":{"labels":{"app":"api"}}}"#,
                );
                server.json("DELETE", &format!("{CMS}/a"), "");
            }
            2 => {
                server.json("DELETE", &format!("{CMS}/b"), "");
            }
            _ => {}
        }
    }
    assert_eq!(
        events,
        [
            ("ADDED".into(), "b".into()),
            ("DELETED".into(), "a".into()),
            ("DELETED".into(), "b".into())
        ],
        "an object entering the selection is ADDED, leaving it DELETED"
    );
    // Idle: a bookmark arrives within the interval.
    if !saw_bookmark {
        assert_eq!(w.next()["type"], "BOOKMARK");
    }
}

#[test]
fn watch_without_resource_version_starts_with_the_current_state() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));
    server.json("POST", CMS, &cm("a", json!({})));
    let mut w = Watch::open(&server, &format!("{CMS}?watch=1"));
    let first = w.next();
    assert_eq!(
        (
            first["type"].as_str(),
            first["object"]["metadata"]["name"].as_str()
        ),
        (Some("ADDED"), Some("a"))
    );
    assert_eq!(first["object"]["kind"], "ConfigMap");
    server.json("POST", CMS, &cm("b", json!({})));
    assert_eq!(w.next()["object"]["metadata"]["name"], "b");
}

#[test]
fn a_compacted_resource_version_is_an_in_stream_410() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(
        &dir.path().join("data"),
        &["--watch-history", "3", "--compaction-interval", "1"],
    );
    for i in 0..10 {
        server.json("POST", CMS, &cm(&format!("c{i}"), json!({})));
    }
    std::thread::sleep(Duration::from_millis(2500));
    let mut w = Watch::open(&server, &format!("{CMS}?watch=true&resourceVersion=1"));
    let e = w.next();
    assert_eq!(e["type"], "ERROR", "{e}");
    assert_eq!(
        (e["object"]["code"].as_u64(), e["object"]["reason"].as_str()),
        (Some(410), Some("Expired"))
    );
    assert!(
        e["object"]["message"]
            .as_str()
            .unwrap()
            .contains("too old resource version")
    );
}

#[test]
fn lists_page_with_limit_and_continue() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));
    for i in 0..25 {
        server.json(
            "POST",
            CMS,
            &cm(
                &format!("c{i:02}"),
                json!({"even": (i % 2 == 0).to_string()}),
            ),
        );
    }
    let (mut names, mut cont, mut pages) = (Vec::new(), String::new(), 0);
    let mut list_rv = None;
    loop {
        let (code, page) = server.json(
            "GET",
            &format!("/api/v1/configmaps?&limit=10&labelSelector=even%3Dtrue&continue={cont}"),
            "",
        );
        assert_eq!(code, 200, "{page}");
        pages += 1;
        let this_rv = page["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .to_owned();
        assert_eq!(
            list_rv.get_or_insert(this_rv.clone()),
            &this_rv,
            "one revision for all pages"
        );
        names.extend(
            page["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i["metadata"]["name"].as_str().unwrap().to_owned()),
        );
        match page["metadata"]["continue"].as_str() {
            Some(c) => cont = c.to_owned(),
            None => break,
        }
    }
    assert_eq!((names.len(), pages), (13, 2));
    assert_eq!(names.first().map(String::as_str), Some("c00"));
}

#[test]
fn stale_updates_conflict_and_bad_requests_are_refused_whole() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));
    let (_, created) = server.json("POST", CMS, &cm("a", json!({})));
    let mut stale = created.clone();
    server.http(
        "PATCH",
        &format!("{CMS}/a"),
        MERGE,
        r#"{"data":{"k":"v2"}}"#,
    );
    stale["data"]["k"] = json!("v3");
    let (code, status) = server.json("PUT", &format!("{CMS}/a"), &stale.to_string());
    assert_eq!(
        (code, status["reason"].as_str()),
        (409, Some("Conflict")),
        "{status}"
    );
    assert!(
        status["message"]
            .as_str()
            .unwrap()
            .contains("the object has been modified")
    );
    let (_, now) = server.json("GET", &format!("{CMS}/a"), "");
    assert_eq!(now["data"]["k"], "v2", "the stale write changed nothing");

    let (code, status) = server.json("POST", CMS, &cm("a", json!({})));
    assert_eq!(
        (code, status["reason"].as_str()),
        (409, Some("AlreadyExists"))
    );
    let (code, _) = server.json("POST", CMS, "{not json");
    assert_eq!(code, 400);
    let (code, status) = server.http("PATCH", &format!("{CMS}/a"), "application/x-unknown", "{}");
    assert_eq!(
        (code, status["reason"].as_str()),
        (415, Some("UnsupportedMediaType"))
    );
    let big = format!(
        "{{\"metadata\":{{\"name\":\"big\"}},\"data\":{{\"k\":\"{}\"}}}}",
        "x".repeat(4 << 20)
    );
    let (code, _) = server.json("POST", CMS, &big);
    assert_eq!(code, 413);
    let (code, svc) = server.json(
        "POST",
        "/api/v1/namespaces/default/services",
        r#"{"metadata":{"name":"s"},"spec":{"clusterIP":"10.96.0.50","ports":[{"port":80}]}}"#,
    );
    assert_eq!(
        (code, svc["spec"]["clusterIP"].as_str()),
        (201, Some("10.96.0.50")),
        "{svc}"
    );
    let (code, dup) = server.json(
        "POST",
        "/api/v1/namespaces/default/services",
        r#"{"metadata":{"name":"t"},"spec":{"clusterIP":"10.96.0.50","ports":[{"port":80}]}}"#,
    );
    assert_eq!(code, 422);
    assert!(
        dup["details"]["causes"][0]["message"]
            .as_str()
            .unwrap()
            .contains("already allocated"),
        "{dup}"
    );
    let (_, missing) = server.json("GET", "/api/v1/namespaces/default/services/t", "");
    assert_eq!(missing["code"], 404, "the refused Service was not written");
    let (code, changed) = server.http(
        "PATCH",
        "/api/v1/namespaces/default/services/s",
        MERGE,
        r#"{"spec":{"clusterIP":"10.96.0.51"}}"#,
    );
    assert_eq!(code, 422, "clusterIP is immutable: {changed}");
}

#[test]
fn finalizers_hold_a_deleted_object_until_removed() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));
    let body =
        json!({"metadata": {"name": "held", "finalizers": ["example.com/hold"]}}).to_string();
    server.json("POST", CMS, &body);
    let (code, deleting) = server.json(
        "DELETE",
        &format!("{CMS}/held"),
        r#"{"propagationPolicy":"Background"}"#,
    );
    assert_eq!(code, 200);
    assert!(deleting["metadata"]["deletionTimestamp"].is_string());
    let (code, _) = server.json("GET", &format!("{CMS}/held"), "");
    assert_eq!(code, 200, "still there while a finalizer holds it");
    server.http(
        "PATCH",
        &format!("{CMS}/held"),
        MERGE,
        r#"{"metadata":{"finalizers":null}}"#,
    );
    let (code, _) = server.json("GET", &format!("{CMS}/held"), "");
    assert_eq!(code, 404, "gone once the last finalizer is removed");
}

fn kubectl_watch_sees_a_change(bin: std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));
    let k = Kubectl::new(bin, &server, &dir.path().join("home"));
    server.json("POST", CMS, &cm("first", json!({})));
    let mut watch = k
        .command(&["get", "cm", "-w", "-o", "name"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(watch.stdout.take().unwrap()).lines();
    assert_eq!(
        lines.next().unwrap().unwrap(),
        "configmap/first",
        "the initial list"
    );
    server.json("POST", CMS, &cm("second", json!({})));
    assert_eq!(
        lines.next().unwrap().unwrap(),
        "configmap/second",
        "the change"
    );
    let _ = watch.kill();
    let _ = watch.wait();
}

#[test]
fn kubectl_1_33_get_watch_sees_a_change() {
    kubectl_watch_sees_a_change(kubectl_dispatcher());
}

#[test]
fn kubectl_1_37_get_watch_sees_a_change() {
    kubectl_watch_sees_a_change(kubectl_newest());
}

#[test]
fn acknowledged_writes_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Server::start(&data);
    let (mut acked, mut last_rv) = (Vec::new(), 0);
    let probe = server.probe();
    use std::sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    };
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicUsize::new(0));
    let (stop2, written2) = (Arc::clone(&stop), Arc::clone(&written));
    // Writes stream in on one thread while the server is killed.
    let writer = std::thread::spawn(move || {
        let mut out = Vec::new();
        for i in 0.. {
            if stop2.load(Ordering::Relaxed) {
                break;
            }
            match probe.try_json("POST", CMS, &cm(&format!("w{i}"), json!({}))) {
                Some((201, obj)) => out.push((format!("w{i}"), rv(&obj))),
                _ => break,
            }
            written2.fetch_add(1, Ordering::Relaxed);
        }
        out
    });
    // Killed mid-stream, once the writer got going (however slow the
    // machine), and at least 1.5 s in.
    let started = std::time::Instant::now();
    while (written.load(Ordering::Relaxed) <= 20 || started.elapsed() < Duration::from_millis(1500))
        && started.elapsed() < Duration::from_secs(30)
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    server.kill();
    stop.store(true, Ordering::Relaxed);
    for (name, rev) in writer.join().unwrap() {
        acked.push(name);
        last_rv = last_rv.max(rev);
    }
    assert!(acked.len() > 10, "the writer got going: {}", acked.len());

    let server = Server::start(&data);
    let (_, list) = server.json("GET", CMS, "");
    let present: std::collections::BTreeSet<_> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["metadata"]["name"].as_str().unwrap().to_owned())
        .collect();
    for name in &acked {
        assert!(present.contains(name), "acknowledged write {name} was lost");
    }
    assert!(
        rv(&list) >= last_rv,
        "resourceVersion went backwards: {} < {last_rv}",
        rv(&list)
    );
    let (_, next) = server.json("POST", CMS, &cm("after", json!({})));
    assert!(rv(&next) > last_rv);
}

/// A /28 (14 usable addresses) and two node ports.
const SMALL_RANGES: [&str; 4] = [
    "--service-cluster-ip-range",
    "10.96.0.0/28",
    "--service-node-port-range",
    "30000-30001",
];

#[test]
fn service_addresses_are_unique_and_freed_on_delete() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(&dir.path().join("data"), &SMALL_RANGES);
    const SVC: &str = "/api/v1/namespaces/default/services";
    // A /28 has 14 usable addresses; the first is the `kubernetes` Service's.
    let mut ips = std::collections::BTreeSet::new();
    for i in 0..13 {
        let (code, s) = server.json(
            "POST",
            SVC,
            &json!({"metadata": {"name": format!("s{i}")}, "spec": {"ports": [{"port": 80}]}})
                .to_string(),
        );
        assert_eq!(code, 201, "{s}");
        assert!(
            ips.insert(s["spec"]["clusterIP"].as_str().unwrap().to_owned()),
            "duplicate IP"
        );
    }
    let (code, full) = server.json(
        "POST",
        SVC,
        &json!({"metadata": {"name": "extra"}, "spec": {"ports": [{"port": 80}]}}).to_string(),
    );
    assert_eq!(code, 500, "{full}");
    let (code, _) = server.json("DELETE", &format!("{SVC}/s3"), "");
    assert_eq!(code, 200);
    let (code, again) = server.json(
        "POST",
        SVC,
        &json!({"metadata": {"name": "extra"}, "spec": {"ports": [{"port": 80}]}}).to_string(),
    );
    assert_eq!(code, 201, "the deleted Service's IP is free again: {again}");
    // Node ports: two in the range, none twice, also within one Service
    // (NodePort Services are never headless: they need addresses).
    for i in [0, 1] {
        server.json("DELETE", &format!("{SVC}/s{i}"), "");
    }
    let (code, two) = server.json("POST", SVC, &json!({"metadata": {"name": "np-two"}, "spec": {"type": "NodePort", "ports": [{"name": "a", "port": 80}, {"name": "b", "port": 81}]}}).to_string());
    assert_eq!(code, 201, "{two}");
    assert_ne!(
        two["spec"]["ports"][0]["nodePort"],
        two["spec"]["ports"][1]["nodePort"]
    );
    server.json("DELETE", &format!("{SVC}/np-two"), "");
    let np = |name: &str| {
        json!({"metadata": {"name": name}, "spec": {"type": "NodePort", "ports": [{"port": 80}]}})
            .to_string()
    };
    let (_, a) = server.json("POST", SVC, &np("np-a"));
    let (_, b) = server.json("POST", SVC, &np("np-b"));
    let (code, _) = server.json("POST", SVC, &np("np-c"));
    assert_ne!(
        a["spec"]["ports"][0]["nodePort"],
        b["spec"]["ports"][0]["nodePort"]
    );
    assert_eq!(code, 500, "the node port range is exhausted");
    // After a restart the allocations are read back from the store.
    drop(server);
    let server = Server::start_with(&dir.path().join("data"), &SMALL_RANGES);
    let (code, _) = server.json(
        "POST",
        SVC,
        &json!({"metadata": {"name": "after"}, "spec": {"ports": [{"port": 80}]}}).to_string(),
    );
    assert_eq!(code, 500, "every IP is still taken after a restart");
}

/// An owner ConfigMap with two dependents (one of them with a dependent of
/// its own); returns the owner's uid.
fn family(server: &Server) -> String {
    let (_, owner) = server.json("POST", CMS, &cm("owner", json!({})));
    let uid = owner["metadata"]["uid"].as_str().unwrap().to_owned();
    let owned_by = |name: &str, uid: &str| {
        json!({"metadata": {"name": name, "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "x", "uid": uid}]}}).to_string()
    };
    server.json("POST", CMS, &owned_by("child-a", &uid));
    let (_, b) = server.json("POST", CMS, &owned_by("child-b", &uid));
    server.json(
        "POST",
        CMS,
        &owned_by("grandchild", b["metadata"]["uid"].as_str().unwrap()),
    );
    server.json("POST", CMS, &cm("stranger", json!({})));
    uid
}

fn names(server: &Server) -> Vec<String> {
    let (_, list) = server.json("GET", CMS, "");
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["metadata"]["name"].as_str().unwrap().to_owned())
        .collect()
}

/// The server records a delete's propagation policy and leaves the work to
/// the garbage-collector controller (none runs here): Background deletes
/// the owner at once, Foreground and Orphan hold it with their finalizer;
/// an invalid policy, or one given twice, is refused.
#[test]
fn deletion_records_the_propagation_policy() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));
    family(&server);
    let (code, _) = server.json(
        "DELETE",
        &format!("{CMS}/owner"),
        r#"{"propagationPolicy":"Background"}"#,
    );
    assert_eq!(code, 200);
    assert_eq!(
        names(&server),
        ["child-a", "child-b", "grandchild", "stranger"],
        "Background: only the owner went; its dependents are the collector's"
    );
    for (policy, finalizer) in [("Foreground", "foregroundDeletion"), ("Orphan", "orphan")] {
        let dir = tempfile::tempdir().unwrap();
        let server = Server::start(&dir.path().join("data"));
        family(&server);
        let (code, owner) = server.json(
            "DELETE",
            &format!("{CMS}/owner"),
            &json!({"propagationPolicy": policy}).to_string(),
        );
        assert_eq!(code, 200, "{owner}");
        assert_eq!(
            owner["metadata"]["finalizers"],
            json!([finalizer]),
            "{policy}: {owner}"
        );
        assert!(owner["metadata"]["deletionTimestamp"].is_string());
        assert_eq!(names(&server).len(), 5, "{policy}: nothing deleted yet");
        // The finalizer removed (as the collector does), the owner goes.
        let (code, _) = server.http(
            "PATCH",
            &format!("{CMS}/owner"),
            MERGE,
            r#"{"metadata":{"finalizers":null}}"#,
        );
        assert_eq!(code, 200);
        assert!(!names(&server).contains(&"owner".to_owned()));
    }
    let (code, e) = server.json(
        "DELETE",
        &format!("{CMS}/stranger"),
        r#"{"propagationPolicy":"Sideways"}"#,
    );
    assert_eq!(code, 422, "{e}");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("Unsupported value: \"Sideways\""),
        "{e}"
    );
    let (code, e) = server.json(
        "DELETE",
        &format!("{CMS}/stranger"),
        r#"{"propagationPolicy":"Orphan","orphanDependents":true}"#,
    );
    assert_eq!(code, 422, "{e}");
}

#[test]
fn deletecollection_honours_selectors_and_finalizers() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));
    server.json("POST", CMS, &cm("a", json!({"tier": "fe"})));
    server.json("POST", CMS, &cm("b", json!({"tier": "fe"})));
    server.json("POST", CMS, &cm("c", json!({"tier": "be"})));
    let held = json!({"metadata": {"name": "d", "labels": {"tier": "fe"}, "finalizers": ["example.com/hold"]}}).to_string();
    server.json("POST", CMS, &held);
    let (code, gone) = server.json("DELETE", &format!("{CMS}?labelSelector=tier%3Dfe"), "");
    assert_eq!(code, 200, "{gone}");
    assert_eq!(gone["items"].as_array().map(Vec::len), Some(3));
    assert_eq!(
        names(&server),
        ["c", "d"],
        "c is not selected; d waits for its finalizer"
    );
}
