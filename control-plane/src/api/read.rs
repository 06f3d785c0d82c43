//! get, list and watch.
use std::time::Duration;

use axum::{
    body::{Body, Bytes},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use base64::Engine as _;
use futures::StreamExt as _;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::{
    ApiServer, Request,
    media::Encoding,
    objects::{self, from_stored},
    path::Target,
    selectors::{FieldSelector, LabelSelector},
    status::{ApiError, ApiResult, Cause},
    table,
};
use crate::store::{EventKind, Revision, Store, WatchItem};

/// Keys read from the store per round while filling a list page.
const LIST_BATCH: usize = 500;

pub(super) fn object_name(t: &Target) -> &str {
    t.name.as_deref().unwrap_or_default()
}

pub(super) async fn get_object<S: Store>(
    api: &ApiServer<S>,
    t: &Target,
) -> ApiResult<(Value, Revision)> {
    let name = object_name(t);
    let key = t.res.key(t.namespace.as_deref(), name);
    match api
        .store
        .get(&key)
        .await
        .map_err(|e| ApiError::from_store(e, &t.res.qualified(), name))?
    {
        Some(kv) => Ok((from_stored(&kv.value, kv.mod_rev)?, kv.mod_rev)),
        None => Err(ApiError::not_found(&t.res.qualified(), name)),
    }
}

pub(super) async fn get<S: Store>(
    api: &ApiServer<S>,
    t: &Target,
    req: &Request,
) -> ApiResult<Response> {
    let (obj, _) = get_object(api, t).await?;
    Ok(req.reply(StatusCode::OK, &obj))
}

/// The `autoscaling/v1` Scale view of an object with replicas.
pub(super) fn scale_of(obj: &Value) -> Value {
    let meta = objects::meta(obj).cloned().unwrap_or_default();
    let pick = |k: &str| meta.get(k).cloned().unwrap_or(Value::Null);
    let selector = obj
        .pointer("/spec/selector/matchLabels")
        .or_else(|| obj.pointer("/spec/selector"))
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some(format!("{k}={}", v.as_str()?)))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default();
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": pick("name"), "namespace": pick("namespace"), "uid": pick("uid"),
            "resourceVersion": pick("resourceVersion"), "creationTimestamp": pick("creationTimestamp"),
        },
        "spec": {"replicas": obj.pointer("/spec/replicas").cloned().unwrap_or(json!(1))},
        "status": {
            "replicas": obj.pointer("/status/replicas").cloned().unwrap_or(json!(0)),
            "selector": selector,
        },
    })
}

pub(super) async fn get_scale<S: Store>(
    api: &ApiServer<S>,
    t: &Target,
    req: &Request,
) -> ApiResult<Response> {
    let (obj, _) = get_object(api, t).await?;
    Ok(req.reply(StatusCode::OK, &scale_of(&obj)))
}

/// Label and field selectors of a request.
pub(super) struct Filter {
    labels: LabelSelector,
    fields: FieldSelector,
}

impl Filter {
    pub(super) fn from_request(t: &Target, req: &Request) -> ApiResult<Self> {
        let labels = LabelSelector::parse(req.query.get("labelSelector").unwrap_or(""))
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        let fields = FieldSelector::parse(
            req.query.get("fieldSelector").unwrap_or(""),
            &t.res.field_selectors(),
        )
        .map_err(ApiError::bad_request)?;
        Ok(Self { labels, fields })
    }

    pub(super) fn matches(&self, obj: &Value) -> bool {
        self.labels.matches_object(obj) && self.fields.matches_object(obj)
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct ContinueToken {
    rv: Revision,
    start: String,
}

fn decode_continue(token: &str) -> ApiResult<ContinueToken> {
    let bad = || ApiError::bad_request("continue key is not valid");
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| bad())?;
    serde_json::from_slice(&raw).map_err(|_| bad())
}

fn encode_continue(rv: Revision, start: &str) -> String {
    let raw = serde_json::to_vec(&ContinueToken {
        rv,
        start: start.to_owned(),
    })
    .expect("serializes");
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
}

/// Matching objects of a collection: one page of at most `limit`, plus the
/// revision and continue token.
pub(super) async fn list_objects<S: Store>(
    api: &ApiServer<S>,
    t: &Target,
    filter: &Filter,
    limit: Option<usize>,
    cont: Option<&str>,
) -> ApiResult<(Vec<Value>, Revision, Option<String>)> {
    let prefix = t.res.key_prefix(t.namespace.as_deref());
    let err = |e| ApiError::from_store(e, &t.res.qualified(), "");
    let (mut start, mut rv) = (None, None);
    if let Some(token) = cont {
        let token = decode_continue(token)?;
        if token.rv < api.store.compacted_revision().await.map_err(err)? {
            return Err(ApiError::expired(
                "The provided continue parameter is too old to display a consistent list result. \
                 You can start a new list without the continue parameter.",
            ));
        }
        start = Some(token.start);
        rv = Some(token.rv);
    }
    let mut items = Vec::new();
    loop {
        let page = api
            .store
            .list(&prefix, start.as_deref(), Some(LIST_BATCH))
            .await
            .map_err(err)?;
        let rv = *rv.get_or_insert(page.revision);
        for kv in &page.items {
            if limit.is_some_and(|l| items.len() >= l) {
                return Ok((
                    items,
                    rv,
                    Some(encode_continue(rv, start.as_deref().unwrap_or_default())),
                ));
            }
            let obj = from_stored(&kv.value, kv.mod_rev)?;
            start = Some(kv.key.clone());
            if filter.matches(&obj) {
                items.push(obj);
            }
        }
        if !page.more {
            return Ok((items, rv, None));
        }
    }
}

pub(super) async fn list<S: Store>(
    api: &ApiServer<S>,
    t: &Target,
    req: &Request,
) -> ApiResult<Response> {
    let filter = Filter::from_request(t, req)?;
    let limit = req
        .query
        .number("limit")?
        .filter(|l| *l > 0)
        .map(|l| l as usize);
    let (items, rv, cont) = list_objects(api, t, &filter, limit, req.query.get("continue")).await?;
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    if let Some(c) = cont {
        metadata["continue"] = json!(c);
    }
    let body = if req.accepts_table() {
        table::table(
            t.res,
            &items,
            metadata,
            req.query.get("includeObject") == Some("Object"),
        )
    } else {
        json!({"kind": format!("{}List", t.res.kind), "apiVersion": t.res.api_version(), "metadata": metadata, "items": items})
    };
    Ok(if req.accepts_table() {
        super::json_response(StatusCode::OK, &body)
    } else {
        req.reply(StatusCode::OK, &body)
    })
}

/// How watch events are written: one JSON object per line, or
/// length-prefixed protobuf `WatchEvent`s whose object is a full protobuf
/// body (upstream's `application/vnd.kubernetes.protobuf;stream=watch`).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Framing {
    JsonLines,
    Protobuf,
}

impl Framing {
    fn negotiate(t: &Target, req: &Request) -> ApiResult<Self> {
        if req.accepts_table() {
            return Ok(Self::JsonLines);
        }
        let kind_has_proto = super::proto::message_name(&t.res.api_version(), t.res.kind).is_some();
        for enc in req.accepted() {
            match enc {
                Encoding::Protobuf if kind_has_proto => return Ok(Self::Protobuf),
                Encoding::Protobuf | Encoding::Yaml => {}
                Encoding::Json => return Ok(Self::JsonLines),
            }
        }
        Err(super::media::not_acceptable())
    }

    fn content_type(self) -> &'static str {
        match self {
            Self::JsonLines => "application/json",
            Self::Protobuf => super::proto::WATCH_MEDIA_TYPE,
        }
    }

    /// One event: `{"type": …, "object": …}`.
    fn frame(self, event: &Value) -> Bytes {
        match self {
            Self::JsonLines => {
                let mut v = serde_json::to_vec(event).expect("serializes");
                v.push(b'\n');
                Bytes::from(v)
            }
            Self::Protobuf => {
                let object = super::proto::encode_object(&event["object"])
                    .and_then(Result::ok)
                    .unwrap_or_default();
                let watch_event = json!({"type": event["type"], "object": Value::Null});
                let mut raw = super::proto::codec::encode(
                    "k8s.io.apimachinery.pkg.apis.meta.v1.WatchEvent",
                    &watch_event,
                )
                .expect("a WatchEvent encodes");
                // object = RawExtension{raw: the object's protobuf body}
                let mut ext = Vec::new();
                super::proto::put_len_field(&mut ext, 1, &object);
                super::proto::put_len_field(&mut raw, 2, &ext);
                let mut out = (raw.len() as u32).to_be_bytes().to_vec();
                out.extend_from_slice(&raw);
                Bytes::from(out)
            }
        }
    }
}

fn bookmark(t: &Target, rv: Revision) -> Value {
    json!({"type": "BOOKMARK", "object": {"kind": t.res.kind, "apiVersion": t.res.api_version(), "metadata": {"resourceVersion": rv.to_string()}}})
}

pub(super) async fn watch<S: Store>(
    api: &ApiServer<S>,
    t: &Target,
    req: &Request,
) -> ApiResult<Response> {
    if req.query.flag("sendInitialEvents") {
        // WatchList is not implemented: clients fall back to list + watch on 422.
        return Err(ApiError::invalid(
            "ListOptions",
            "",
            vec![Cause::forbidden(
                "sendInitialEvents",
                "sendInitialEvents is forbidden for watch unless the WatchList feature gate is enabled",
            )],
        ));
    }
    let filter = Filter::from_request(t, req)?;
    let as_table = req.accepts_table();
    let framing = Framing::negotiate(t, req)?;
    let bookmarks = req.query.flag("allowWatchBookmarks");
    let timeout = req.query.number("timeoutSeconds")?.map(Duration::from_secs);
    let prefix = t.res.key_prefix(t.namespace.as_deref());
    let err = |e| ApiError::from_store(e, &t.res.qualified(), "");

    // No resourceVersion, or "0": the current state as ADDED events first.
    let mut initial = Vec::new();
    let start = match req.query.get("resourceVersion").unwrap_or("0") {
        "0" => {
            let (items, rv, _) = list_objects(api, t, &filter, None, None).await?;
            initial = items;
            rv
        }
        rv => rv
            .parse::<Revision>()
            .map_err(|_| ApiError::bad_request(format!("invalid resourceVersion `{rv}`")))?,
    };
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(64);
    let stream = match api.store.watch(&prefix, start).await {
        Ok(s) => s,
        Err(crate::store::Error::Compacted { requested, oldest }) => {
            // Clients re-list only on the in-stream form of "too old".
            let status =
                ApiError::expired(format!("too old resource version: {requested} ({oldest})"))
                    .to_status();
            let _ = tx
                .send(Ok(
                    framing.frame(&json!({"type": "ERROR", "object": status}))
                ))
                .await;
            drop(tx);
            return Ok(stream_response(rx, framing));
        }
        Err(e) => return Err(err(e)),
    };
    let (res, bookmark_every) = (t.res, api.settings.bookmark_interval);
    let target = Target {
        res,
        namespace: t.namespace.clone(),
        name: None,
        sub: None,
    };
    tokio::spawn(async move {
        let send = |v: Value| {
            let tx = tx.clone();
            async move { tx.send(Ok(framing.frame(&v))).await.is_ok() }
        };
        let wrap = |obj: Value| {
            if as_table {
                table::table(res, &[obj], json!({}), false)
            } else {
                obj
            }
        };
        for obj in initial {
            if !send(json!({"type": "ADDED", "object": wrap(obj)})).await {
                return;
            }
        }
        let deadline = timeout.map(|d| tokio::time::Instant::now() + d);
        let mut last = start;
        let mut stream = stream;
        let mut ticker = tokio::time::interval(bookmark_every);
        ticker.tick().await;
        loop {
            let next = tokio::select! {
                item = stream.next() => item,
                _ = ticker.tick(), if bookmarks => {
                    if !send(bookmark(&target, last)).await { return; }
                    continue;
                }
                () = sleep_until(deadline) => {
                    if bookmarks { send(bookmark(&target, last)).await; }
                    return;
                }
            };
            let event = match next {
                Some(Ok(WatchItem::Progress(rev))) => {
                    last = rev;
                    continue;
                }
                Some(Ok(WatchItem::Event(e))) => e,
                Some(Err(crate::store::Error::Compacted { requested, oldest })) => {
                    let status = ApiError::expired(format!(
                        "too old resource version: {requested} ({oldest})"
                    ))
                    .to_status();
                    send(json!({"type": "ERROR", "object": status})).await;
                    return;
                }
                // Stream end or lag: the client re-watches from `last`.
                Some(Err(_)) | None => return,
            };
            last = event.revision();
            let Some(out) = translate(&event, &filter) else {
                continue;
            };
            let (kind, obj) = out;
            if !send(json!({"type": kind, "object": wrap(obj)})).await {
                return;
            }
        }
    });
    Ok(stream_response(rx, framing))
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// The watch event a store event becomes under `filter`: an update that
/// moves an object into the selection is ADDED, out of it DELETED.
fn translate(event: &crate::store::Event, filter: &Filter) -> Option<(&'static str, Value)> {
    let obj = from_stored(&event.kv.value, event.revision()).ok()?;
    let now = filter.matches(&obj);
    match event.kind {
        EventKind::Delete => now.then_some(("DELETED", obj)),
        EventKind::Put if event.is_create() => now.then_some(("ADDED", obj)),
        EventKind::Put => {
            let before = event
                .prev_value
                .as_deref()
                .and_then(|p| serde_json::from_slice::<Value>(p).ok())
                .is_some_and(|p| filter.matches(&p));
            match (before, now) {
                (true, true) => Some(("MODIFIED", obj)),
                (false, true) => Some(("ADDED", obj)),
                (true, false) => Some(("DELETED", obj)),
                (false, false) => None,
            }
        }
    }
}

fn stream_response(
    rx: mpsc::Receiver<Result<Bytes, std::io::Error>>,
    framing: Framing,
) -> Response {
    let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, framing.content_type())],
        body,
    )
        .into_response()
}
