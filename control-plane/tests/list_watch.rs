//! Every combination of the list and watch parameters that upstream treats
//! differently — resourceVersion, resourceVersionMatch, limit, continue,
//! watch, sendInitialEvents — answered as upstream 1.33 does, on both
//! stores. The table these follow is in docs/control-plane.md.
mod common;

use std::{
    io::{BufRead as _, BufReader, Write as _},
    time::{Duration, Instant},
};

use common::{Backend, Server};
use serde_json::{Value, json};

const CMS: &str = "/api/v1/namespaces/default/configmaps";

fn cm(name: &str) -> String {
    json!({"metadata": {"name": name}, "data": {"v": "1"}}).to_string()
}

fn rv(v: &Value) -> u64 {
    v["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

fn names(list: &Value) -> Vec<String> {
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["metadata"]["name"].as_str().unwrap().to_owned())
        .collect()
}

fn get(server: &Server, query: &str) -> (u16, Value) {
    server.json("GET", &format!("{CMS}?{query}"), "")
}

/// `(code, reason, message)` of a refusal.
fn refusal(server: &Server, query: &str) -> (u16, String, String) {
    let (code, s) = get(server, query);
    (
        code,
        s["reason"].as_str().unwrap_or_default().to_owned(),
        s["message"].as_str().unwrap_or_default().to_owned(),
    )
}

fn start(backend: Backend, dir: &std::path::Path) -> Server {
    // A short history, compacted every second, for the 410 cases.
    let extra = ["--watch-history", "5", "--compaction-interval", "1"];
    match backend {
        Backend::Embedded => Server::start_with(dir, &extra),
        Backend::Etcd => Server::start_on_etcd(dir, &extra),
    }
}

fn lists(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let server = start(backend, &dir.path().join("data"));
    for n in ["a", "b", "c"] {
        server.json("POST", CMS, &cm(n));
    }
    let (_, first) = get(&server, "limit=1");
    assert_eq!(names(&first), ["a"]);
    let token = first["metadata"]["continue"].as_str().unwrap().to_owned();
    let snapshot = rv(&first);

    // The issue's case: a resourceVersion with continue is a 400; 0 is allowed.
    assert_eq!(
        refusal(
            &server,
            &format!("limit=1&continue={token}&resourceVersion=5")
        ),
        (
            400,
            "BadRequest".into(),
            "specifying resource version is not allowed when using continue".into()
        )
    );
    let (code, page) = get(
        &server,
        &format!("limit=1&continue={token}&resourceVersion=0"),
    );
    assert_eq!((code, names(&page)), (200, vec!["b".to_owned()]));

    // Pages are one snapshot: later changes do not show in later pages.
    server.json("DELETE", &format!("{CMS}/b"), "");
    server.json("POST", CMS, &cm("bb"));
    let (_, page) = get(&server, &format!("limit=5&continue={token}"));
    assert_eq!(
        names(&page),
        ["b", "c"],
        "the state of the first page's revision"
    );
    assert_eq!(rv(&page), snapshot);
    assert!(page["metadata"].get("continue").is_none());

    // resourceVersion and its match.
    let now = rv(&get(&server, "").1);
    let (_, exact) = get(
        &server,
        &format!("resourceVersion={snapshot}&resourceVersionMatch=Exact"),
    );
    assert_eq!(
        (names(&exact), rv(&exact)),
        (vec!["a".into(), "b".into(), "c".into()], snapshot)
    );
    let (_, legacy) = get(&server, &format!("resourceVersion={snapshot}&limit=10"));
    assert_eq!(
        names(&legacy),
        ["a", "b", "c"],
        "a resourceVersion with limit is exact"
    );
    let (_, newer) = get(
        &server,
        &format!("resourceVersion={snapshot}&resourceVersionMatch=NotOlderThan&limit=10"),
    );
    assert_eq!(
        (names(&newer), rv(&newer)),
        (vec!["a".into(), "bb".into(), "c".into()], now)
    );
    let (_, bare) = get(&server, &format!("resourceVersion={snapshot}"));
    assert_eq!(
        names(&bare),
        ["a", "bb", "c"],
        "without limit: not older than"
    );
    let (_, any) = get(&server, "resourceVersion=0&limit=1");
    assert_eq!(
        names(&any).len(),
        3,
        "resourceVersion=0 is served whole, limit ignored"
    );
    assert!(any["metadata"].get("continue").is_none());

    // Upstream's refusals, each with its wording.
    for (query, code, reason, message) in [
        (
            "resourceVersionMatch=NotOlderThan",
            422,
            "Invalid",
            "resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden unless resourceVersion is provided",
        ),
        (
            "resourceVersion=0&resourceVersionMatch=Exact",
            422,
            "Invalid",
            "resourceVersionMatch: Forbidden: resourceVersionMatch \"exact\" is forbidden for resourceVersion \"0\"",
        ),
        (
            "resourceVersion=1&resourceVersionMatch=Newest",
            422,
            "Invalid",
            "Unsupported value: \"Newest\": supported values: \"Exact\", \"NotOlderThan\", \"\"",
        ),
        (
            "sendInitialEvents=true",
            422,
            "Invalid",
            "sendInitialEvents: Forbidden: sendInitialEvents is forbidden for list",
        ),
        (
            "resourceVersion=abc",
            400,
            "BadRequest",
            "invalid resource version: resourceVersion: Invalid value: \"abc\": strconv.ParseUint: parsing \"abc\": invalid syntax",
        ),
        (
            "limit=ten",
            400,
            "BadRequest",
            "strconv.ParseInt: parsing \"ten\": invalid syntax",
        ),
        (
            "limit=1&continue=bm9wZQ",
            400,
            "BadRequest",
            "invalid continue token: continue key is not valid",
        ),
    ] {
        let (c, r, m) = refusal(&server, query);
        assert_eq!((c, r.as_str()), (code, reason), "{query}: {m}");
        assert!(m.contains(message), "{query}: {m}");
    }
    let (c, r, m) = refusal(
        &server,
        &format!("resourceVersionMatch=NotOlderThan&resourceVersion=1&continue={token}"),
    );
    assert_eq!((c, r.as_str()), (422, "Invalid"));
    assert!(
        m.contains("resourceVersionMatch is forbidden when continue is provided"),
        "{m}"
    );

    // A resourceVersion not reached yet: upstream waits, then answers 504.
    for query in [
        format!("resourceVersion={}", now + 100),
        format!("resourceVersion={}&resourceVersionMatch=Exact", now + 100),
    ] {
        let started = Instant::now();
        let (code, s) = get(&server, &query);
        assert_eq!(
            (code, s["reason"].as_str()),
            (504, Some("Timeout")),
            "{query}: {s}"
        );
        assert_eq!(
            s["message"],
            format!("Too large resource version: {}, current: {now}", now + 100)
        );
        assert_eq!(
            s["details"]["causes"][0]["reason"],
            "ResourceVersionTooLarge"
        );
        assert_eq!(s["details"]["retryAfterSeconds"], 1);
        if !query.contains("Exact") {
            assert!(started.elapsed() >= Duration::from_secs(2), "it waited");
        }
    }
    let (code, s) = server.json("GET", &format!("{CMS}/a?resourceVersion={}", now + 100), "");
    assert_eq!(code, 504, "{s}");

    // Once the history is compacted: an exact list is 410, a continue 410
    // with a token that goes on at the latest revision.
    for i in 0..10 {
        server.json("POST", CMS, &cm(&format!("z{i}")));
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    let expired = loop {
        let (code, s) = get(&server, &format!("limit=1&continue={token}"));
        if code == 410 {
            break s;
        }
        assert!(Instant::now() < deadline, "never compacted: {code} {s}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(expired["reason"], "Expired");
    assert!(
        expired["message"]
            .as_str()
            .unwrap()
            .contains("use the continue token in this response")
    );
    let latest = expired["metadata"]["continue"]
        .as_str()
        .expect("a token to go on with");
    let (code, rest) = get(&server, &format!("limit=100&continue={latest}"));
    assert_eq!(code, 200, "{rest}");
    assert_eq!(
        names(&rest).first().map(String::as_str),
        Some("bb"),
        "after `a`, at the latest revision"
    );
    let (c, r, m) = refusal(
        &server,
        &format!("resourceVersion={snapshot}&resourceVersionMatch=Exact"),
    );
    assert_eq!(
        (c, r.as_str(), m.as_str()),
        (
            410,
            "Expired",
            "The resourceVersion for the provided list is too old."
        )
    );
}

#[test]
fn list_parameters_embedded() {
    lists(Backend::Embedded);
}

#[test]
fn list_parameters_on_etcd() {
    lists(Backend::Etcd);
}

/// A watch's event lines (`None` when the stream ends or stays quiet).
struct Watch(std::io::Lines<BufReader<common::Tls>>);

impl Watch {
    /// Opens a watch; `Err` holds a refusal's code and Status.
    fn open(server: &Server, path: &str) -> Result<Self, (u16, Value)> {
        let mut s = common::tls_connect(&server.addr, &server.data_dir).unwrap();
        s.sock
            .set_read_timeout(Some(Duration::from_secs(15)))
            .unwrap();
        let token = common::admin_token(&server.data_dir);
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut lines = BufReader::new(s).lines();
        let status = lines.next().unwrap().unwrap();
        let code: u16 = status.split(' ').nth(1).unwrap().parse().unwrap();
        let mut chunked = false;
        for l in lines.by_ref() {
            let l = l.unwrap();
            chunked |= l.to_ascii_lowercase().contains("chunked");
            if l.is_empty() {
                break;
            }
        }
        if code != 200 {
            let body: String = lines.map_while(Result::ok).collect::<Vec<_>>().join("\n");
            let json = body.lines().find(|l| l.starts_with('{')).unwrap_or("null");
            return Err((code, serde_json::from_str(json).unwrap()));
        }
        assert!(chunked);
        Ok(Self(lines))
    }

    fn next(&mut self) -> Option<Value> {
        loop {
            let l = self.0.next()?.ok()?;
            if let Ok(v) = serde_json::from_str::<Value>(&l)
                && v.is_object()
            {
                return Some(v);
            }
        }
    }
}

fn watches(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let server = start(backend, &dir.path().join("data"));
    let (_, a) = server.json("POST", CMS, &cm("a"));
    server.json("POST", CMS, &cm("b"));

    // Refusals: WatchList is off in 1.33 (clients then list and watch).
    let (code, s) = Watch::open(
        &server,
        &format!("{CMS}?watch=1&sendInitialEvents=true&allowWatchBookmarks=true"),
    )
    .err()
    .unwrap();
    let causes: Vec<_> = s["details"]["causes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["field"].as_str().unwrap())
        .collect();
    assert_eq!(
        (code, causes),
        (422, vec!["resourceVersionMatch", "sendInitialEvents"])
    );
    let (code, s) = Watch::open(
        &server,
        &format!("{CMS}?watch=1&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true"),
    )
    .err()
    .unwrap();
    assert_eq!(code, 422);
    assert_eq!(
        s["message"],
        "ListOptions.meta.k8s.io \"\" is invalid: sendInitialEvents: Forbidden: sendInitialEvents is forbidden for watch unless the WatchList feature gate is enabled"
    );
    let (code, s) = Watch::open(
        &server,
        &format!("{CMS}?watch=1&resourceVersionMatch=NotOlderThan&resourceVersion=1"),
    )
    .err()
    .unwrap();
    assert_eq!(code, 422);
    assert!(s["message"].as_str().unwrap().contains(
        "resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided"
    ));
    let (code, s) = Watch::open(&server, &format!("{CMS}?watch=1&resourceVersion=abc"))
        .err()
        .unwrap();
    assert_eq!(
        (code, s["message"].as_str()),
        (
            500,
            Some(
                "resourceVersion: Invalid value: \"abc\": strconv.ParseUint: parsing \"abc\": invalid syntax"
            )
        )
    );

    // One object's path, and the legacy /watch/ path; limit and continue are ignored.
    let mut one = Watch::open(
        &server,
        &format!("{CMS}/a?watch=1&resourceVersion={}", rv(&a)),
    )
    .unwrap();
    let mut legacy = Watch::open(
        &server,
        &format!(
            "/api/v1/watch/namespaces/default/configmaps?resourceVersion={}&limit=1&continue=x",
            rv(&a)
        ),
    )
    .unwrap();
    server.http(
        "PATCH",
        &format!("{CMS}/b"),
        "application/merge-patch+json",
        r#"{"data":{"v":"2"}}"#,
    );
    server.http(
        "PATCH",
        &format!("{CMS}/a"),
        "application/merge-patch+json",
        r#"{"data":{"v":"2"}}"#,
    );
    let e = one.next().unwrap();
    assert_eq!(
        (e["type"].as_str(), e["object"]["metadata"]["name"].as_str()),
        (Some("MODIFIED"), Some("a")),
        "only `a`"
    );
    let seen: Vec<_> = (0..3)
        .map(|_| {
            legacy.next().unwrap()["object"]["metadata"]["name"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(seen, ["b", "b", "a"], "b created, b patched, a patched");
    let (code, _) = Watch::open(
        &server,
        &format!("{CMS}/a?watch=1&fieldSelector=metadata.name%3Db"),
    )
    .err()
    .unwrap();
    assert_eq!(code, 400);

    // A future resourceVersion: only what comes after it.
    let now = rv(&get(&server, "").1);
    let mut future = Watch::open(
        &server,
        &format!("{CMS}?watch=1&resourceVersion={}", now + 2),
    )
    .unwrap();
    for n in ["f1", "f2", "f3"] {
        server.json("POST", CMS, &cm(n));
    }
    assert_eq!(future.next().unwrap()["object"]["metadata"]["name"], "f3");
}

#[test]
fn watch_parameters_embedded() {
    watches(Backend::Embedded);
}

#[test]
fn watch_parameters_on_etcd() {
    watches(Backend::Etcd);
}
