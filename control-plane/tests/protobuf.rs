//! `application/vnd.kubernetes.protobuf` over HTTP, as client-go speaks
//! it: bodies built and answers read with k8s-pb's generated messages, on
//! both stores. (kubectl's generators drive it in tests/kubectl.rs.)
mod common;

use std::io::{Read as _, Write as _};

use common::{Backend, Server};
use k8s_pb::{
    api::core::v1::{ConfigMap, ConfigMapList},
    apimachinery::pkg::{
        apis::meta::v1::{ObjectMeta, WatchEvent},
        runtime::{TypeMeta, Unknown},
    },
};
use prost::Message as _;

const PROTOBUF: &str = "application/vnd.kubernetes.protobuf";
const CMS: &str = "/api/v1/namespaces/default/configmaps";

fn envelope(api_version: &str, kind: &str, raw: Vec<u8>) -> Vec<u8> {
    let mut out = b"k8s\0".to_vec();
    Unknown {
        type_meta: Some(TypeMeta {
            api_version: Some(api_version.into()),
            kind: Some(kind.into()),
        }),
        raw: Some(raw),
        content_encoding: Some(String::new()),
        content_type: Some(String::new()),
    }
    .encode(&mut out)
    .unwrap();
    out
}

/// The `(typeMeta, raw)` of a protobuf body.
fn open(body: &[u8]) -> (TypeMeta, Vec<u8>) {
    assert_eq!(&body[..4], b"k8s\0", "the magic");
    let u = Unknown::decode(&body[4..]).unwrap();
    (u.type_meta.unwrap(), u.raw.unwrap())
}

fn config_map(name: &str, value: &str) -> Vec<u8> {
    let cm = ConfigMap {
        metadata: Some(ObjectMeta {
            name: Some(name.into()),
            // What gogo writes for unset strings.
            namespace: Some(String::new()),
            uid: Some(String::new()),
            ..Default::default()
        }),
        data: [("k".to_owned(), value.to_owned())].into(),
        ..Default::default()
    };
    envelope("v1", "ConfigMap", cm.encode_to_vec())
}

fn protobuf_bodies_and_answers(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_on(backend, &dir.path().join("data"));
    let both = [
        ("Content-Type", PROTOBUF),
        (
            "Accept",
            "application/vnd.kubernetes.protobuf, application/json",
        ),
    ];

    // Create in protobuf, answered in protobuf.
    let r = server.raw("POST", CMS, &both, &config_map("a", "1"));
    assert_eq!(r.code, 201, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("content-type"), Some(PROTOBUF));
    let (tm, raw) = open(&r.body);
    assert_eq!(
        (tm.api_version.as_deref(), tm.kind.as_deref()),
        (Some("v1"), Some("ConfigMap"))
    );
    let created = ConfigMap::decode(raw.as_slice()).unwrap();
    let meta = created.metadata.unwrap();
    assert_eq!(meta.namespace.as_deref(), Some("default"));
    assert_eq!(
        meta.uid.as_deref().map(str::len),
        Some(36),
        "the server's uid, not the empty one sent"
    );
    assert!(meta.creation_timestamp.unwrap().seconds.unwrap() > 1_700_000_000);
    assert_eq!(created.data["k"], "1");

    // The same object in JSON, without the empty strings protobuf carried.
    let (code, json) = server.json("GET", &format!("{CMS}/a"), "");
    assert_eq!(code, 200);
    assert_eq!(json["data"]["k"], "1");
    assert!(json["metadata"].get("generateName").is_none(), "{json}");

    // A list in protobuf.
    server.raw("POST", CMS, &both, &config_map("b", "2"));
    let r = server.raw("GET", CMS, &[("Accept", PROTOBUF)], b"");
    let (tm, raw) = open(&r.body);
    assert_eq!(tm.kind.as_deref(), Some("ConfigMapList"));
    let list = ConfigMapList::decode(raw.as_slice()).unwrap();
    let names: Vec<_> = list
        .items
        .iter()
        .map(|c| c.metadata.as_ref().unwrap().name.clone().unwrap())
        .collect();
    assert_eq!(names, ["a", "b"]);
    let list_rv = list.metadata.unwrap().resource_version.unwrap();

    // A watch in protobuf: length-prefixed WatchEvents holding protobuf objects.
    let mut w = common::tls_connect(&server.addr, &server.data_dir).unwrap();
    let token = common::admin_token(&server.data_dir);
    write!(
        w,
        "GET {CMS}?watch=true&resourceVersion={list_rv} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nAccept: {PROTOBUF}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    server.raw(
        "PUT",
        &format!("{CMS}/a"),
        &both,
        &config_map("a", "changed"),
    );
    w.sock
        .set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let event = loop {
        let n = w.read(&mut chunk).expect("watch bytes in time");
        assert!(n > 0, "the watch ended early");
        buf.extend_from_slice(&chunk[..n]);
        if let Some(ev) = first_frame(&buf) {
            break ev;
        }
    };
    let head = String::from_utf8_lossy(&buf);
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/vnd.kubernetes.protobuf;stream=watch"),
        "{head}"
    );
    assert_eq!(event.r#type.as_deref(), Some("MODIFIED"));
    let (_, raw) = open(&event.object.unwrap().raw.unwrap());
    assert_eq!(
        ConfigMap::decode(raw.as_slice()).unwrap().data["k"],
        "changed"
    );

    // Refusals, as upstream words them.
    let r = server.raw("POST", CMS, &[("Content-Type", PROTOBUF)], b"not protobuf");
    assert_eq!(r.code, 400, "{}", String::from_utf8_lossy(&r.body));
    let r = server.raw(
        "POST",
        CMS,
        &[("Content-Type", "application/cbor")],
        b"\xa0",
    );
    let status: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(
        (r.code, status["reason"].as_str()),
        (415, Some("UnsupportedMediaType"))
    );
    assert!(
        status["message"]
            .as_str()
            .unwrap()
            .contains("application/vnd.kubernetes.protobuf"),
        "{status}"
    );
    let r = server.raw("GET", &format!("{CMS}/a"), &[("Accept", "text/html")], b"");
    assert_eq!(r.code, 406);
    let r = server.raw(
        "GET",
        &format!("{CMS}/a"),
        &[("Accept", "application/yaml")],
        b"",
    );
    assert!(
        String::from_utf8_lossy(&r.body).contains("k: changed"),
        "YAML answer"
    );
    // Nothing half-written by the refused requests.
    let (_, list) = server.json("GET", CMS, "");
    assert_eq!(list["items"].as_array().unwrap().len(), 2);
}

/// The first complete frame of an HTTP/1.1 chunked protobuf watch body.
fn first_frame(raw: &[u8]) -> Option<WatchEvent> {
    let at = raw.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    // De-chunk what has arrived.
    let mut body = Vec::new();
    let mut s = &raw[at..];
    while let Some(nl) = s.windows(2).position(|w| w == b"\r\n") {
        let n = usize::from_str_radix(std::str::from_utf8(&s[..nl]).ok()?.trim(), 16).ok()?;
        let rest = &s[nl + 2..];
        if n == 0 || rest.len() < n + 2 {
            break;
        }
        body.extend_from_slice(&rest[..n]);
        s = &rest[n + 2..];
    }
    let len = u32::from_be_bytes(body.get(..4)?.try_into().ok()?) as usize;
    let frame = body.get(4..4 + len)?;
    Some(WatchEvent::decode(frame).unwrap())
}

#[test]
fn protobuf_bodies_and_answers_embedded() {
    protobuf_bodies_and_answers(Backend::Embedded);
}

#[test]
fn protobuf_bodies_and_answers_on_etcd() {
    protobuf_bodies_and_answers(Backend::Etcd);
}
