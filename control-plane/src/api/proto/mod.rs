//! `application/vnd.kubernetes.protobuf`, the encoding client-go's typed
//! clients (kubectl's generators among them) send and ask for first.
//!
//! A body is the 4-byte magic `k8s\0` followed by a `runtime.Unknown`
//! message (from the `k8s-pb` crate) whose `typeMeta` names the kind and
//! whose `raw` holds the object's own message. Objects are converted to and
//! from the JSON the rest of the server works on by a table-driven codec
//! ([`codec`]): k8s-pb's generated types have no JSON form, and Kubernetes'
//! JSON is not proto3's JSON mapping.
use prost::Message as _;
use serde_json::Value;

pub mod codec;
pub mod omit;
pub mod schema;
mod wire;

use k8s_pb::apimachinery::pkg::runtime::{TypeMeta, Unknown};

use super::status::{ApiError, ApiResult};

pub const MEDIA_TYPE: &str = "application/vnd.kubernetes.protobuf";
/// The content type of a protobuf watch stream.
pub const WATCH_MEDIA_TYPE: &str = "application/vnd.kubernetes.protobuf;stream=watch";
const MAGIC: &[u8; 4] = b"k8s\0";
const META: &str = "k8s.io.apimachinery.pkg.apis.meta.v1";

/// The protobuf message of `apiVersion`/`kind` (`v1`/`ConfigMap` →
/// `k8s.io.api.core.v1.ConfigMap`), if it has one.
pub fn message_name(api_version: &str, kind: &str) -> Option<String> {
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    let package = match (group, kind) {
        // Kinds every group version carries, defined once in meta/v1.
        (_, "Status" | "DeleteOptions" | "WatchEvent") | ("meta.k8s.io", _) => META.to_owned(),
        ("", _) => format!("k8s.io.api.core.{version}"),
        ("apiextensions.k8s.io", _) => {
            format!("k8s.io.apiextensions_apiserver.pkg.apis.apiextensions.{version}")
        }
        (g, _) => format!(
            "k8s.io.api.{}.{version}",
            g.split('.').next().unwrap_or_default()
        ),
    };
    let name = format!("{package}.{kind}");
    schema::message(&name).map(|_| name)
}

fn bad(message: String) -> ApiError {
    ApiError::bad_request(message)
}

/// The object a protobuf request body holds, as JSON with `apiVersion` and
/// `kind` from the envelope.
pub fn decode_object(body: &[u8]) -> ApiResult<Value> {
    let rest = body.strip_prefix(MAGIC.as_slice()).ok_or_else(|| {
        bad("the protobuf body does not start with the Kubernetes magic k8s\\0".into())
    })?;
    let unknown = Unknown::decode(rest)
        .map_err(|e| bad(format!("the protobuf body is not a runtime.Unknown: {e}")))?;
    let type_meta = unknown.type_meta.unwrap_or_default();
    let api_version = type_meta.api_version.unwrap_or_default();
    let kind = type_meta.kind.unwrap_or_default();
    if let Some(encoding) = unknown.content_encoding.filter(|e| !e.is_empty()) {
        return Err(bad(format!(
            "unsupported protobuf content encoding {encoding:?}"
        )));
    }
    let name = message_name(&api_version, &kind).ok_or_else(|| {
        bad(format!(
            "no protobuf message for kind {kind:?} in version {api_version:?}"
        ))
    })?;
    let mut obj = codec::decode(&name, &unknown.raw.unwrap_or_default())
        .map_err(|e| bad(format!("the protobuf {kind} could not be decoded: {e}")))?
        .unwrap_or_else(|| Value::Object(serde_json::Map::new()));
    if let Some(m) = obj.as_object_mut() {
        m.insert("apiVersion".into(), Value::String(api_version));
        m.insert("kind".into(), Value::String(kind));
    }
    Ok(obj)
}

/// `obj` (which carries its `apiVersion` and `kind`) as a protobuf body;
/// `None` when its kind has no protobuf message (custom resources, Tables).
pub fn encode_object(obj: &Value) -> Option<Result<Vec<u8>, codec::Error>> {
    let api_version = obj.get("apiVersion")?.as_str()?;
    let kind = obj.get("kind")?.as_str()?;
    let name = message_name(api_version, kind)?;
    Some(codec::encode(&name, obj).map(|raw| envelope(api_version, kind, raw)))
}

/// Wraps a message's bytes in the magic and a `runtime.Unknown`.
pub fn envelope(api_version: &str, kind: &str, raw: Vec<u8>) -> Vec<u8> {
    let unknown = Unknown {
        type_meta: Some(TypeMeta {
            api_version: Some(api_version.to_owned()),
            kind: Some(kind.to_owned()),
        }),
        raw: Some(raw),
        content_encoding: Some(String::new()),
        content_type: Some(String::new()),
    };
    let mut out = MAGIC.to_vec();
    unknown.encode(&mut out).expect("a Vec grows as needed");
    out
}

/// Appends a length-delimited field to a message being built by hand.
pub fn put_len_field(buf: &mut Vec<u8>, number: u32, bytes: &[u8]) {
    let mut w = wire::Writer::default();
    w.len_field(number, bytes);
    buf.extend_from_slice(&w.into_bytes());
}

#[cfg(test)]
mod tests;
