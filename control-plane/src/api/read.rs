//! get, list and watch.
use std::time::Duration;

use axum::{
    body::{Body, Bytes},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use futures::StreamExt as _;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::{
    ApiServer, Request,
    list_options::{ListOptions, Plan, Read, encode_continue},
    media::Encoding,
    objects::{self, from_stored},
    path::Target,
    selectors::{FieldSelector, LabelSelector},
    status::{ApiError, ApiResult},
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

/// A get: with a `resourceVersion`, not older than it (upstream waits up to
/// 3 s for the store to reach it, then answers 504).
pub(super) async fn get<S: Store>(
    api: &ApiServer<S>,
    t: &Target,
    req: &Request,
) -> ApiResult<Response> {
    if let Some(rv) = req.query.get("resourceVersion") {
        // Upstream's versioner error reaches the client as a 500 here.
        let rev: Revision = rv.parse().map_err(|_| {
            ApiError::internal(format!(
                "resourceVersion: Invalid value: {}: strconv.ParseUint: parsing {}: invalid syntax",
                super::validation::quote(rv),
                super::validation::quote(rv)
            ))
        })?;
        if rev > 0 {
            wait_for_revision(api, rev).await?;
        }
    }
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

    /// Selects everything.
    pub(super) fn is_empty(&self) -> bool {
        self.labels.is_empty() && self.fields.is_empty()
    }

    /// Narrows to one object, as upstream does for a watch on an object's
    /// path; a field selector naming another object is a 400.
    pub(super) fn require_name(&mut self, name: &str) -> ApiResult<()> {
        match self.fields.exact("metadata.name") {
            Some(n) if n != name => Err(ApiError::bad_request(
                "fieldSelector metadata.name doesn't match requested name",
            )),
            Some(_) => Ok(()),
            None if !self.fields.is_empty() => Err(ApiError::bad_request(
                "fieldSelector metadata.name doesn't match requested name",
            )),
            None => {
                self.fields =
                    FieldSelector::parse(&format!("metadata.name={name}"), &["metadata.name"])
                        .map_err(ApiError::bad_request)?;
                Ok(())
            }
        }
    }
}

/// Waits, up to upstream's 3 s, for the store to reach `rev`; upstream's
/// 504 if it does not.
async fn wait_for_revision<S: Store>(api: &ApiServer<S>, rev: Revision) -> ApiResult<Revision> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    loop {
        let current = api
            .store
            .current_revision()
            .await
            .map_err(|e| ApiError::from_store(e, "", ""))?;
        if current >= rev {
            return Ok(current);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(ApiError::too_large_resource_version(rev, current));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Upstream's answers for a list whose revision is gone.
fn list_expired(plan: &Plan, prefix: &str) -> ApiError {
    if plan.continuing {
        let mut e = ApiError::expired(
            "The provided continue parameter is too old to display a consistent list result. \
             You can start a new list without the continue parameter, or use the continue token \
             in this response to retrieve the remainder of the results. Continuing with the \
             provided token results in an inconsistent list - objects that were created, \
             modified, or deleted between the time the first chunk was returned and now may \
             show up in the list.",
        );
        // Continues the same list at the latest revision.
        let start = plan.start_after.as_deref().unwrap_or(prefix);
        e.about_mut().list_continue = Some(encode_continue(start, prefix, -1));
        e
    } else {
        ApiError::expired("The resourceVersion for the provided list is too old.")
    }
}

/// Walks a collection's stored objects as `plan` says — at one revision,
/// from its start key, up to its limit of kept objects — handing each to
/// `keep`, which says whether it counted; returns the revision read at and
/// a continue token when more remain.
async fn walk_list<S: Store>(
    api: &ApiServer<S>,
    t: &Target,
    plan: &Plan,
    mut keep: impl FnMut(&crate::store::KeyValue) -> ApiResult<bool>,
) -> ApiResult<(Revision, Option<String>)> {
    let prefix = t.res.key_prefix(t.namespace.as_deref());
    let err = |e| match e {
        crate::store::Error::Compacted { .. } => list_expired(plan, &prefix),
        e => ApiError::from_store(e, &t.res.qualified(), ""),
    };
    let mut at = match plan.read {
        Read::Latest => None,
        Read::AtLeast(rev) => {
            wait_for_revision(api, rev).await?;
            None
        }
        Read::Exact(rev) => Some(rev),
    };
    let mut start = plan.start_after.clone();
    let mut kept = 0;
    loop {
        // Later batches read at the first one's revision: one consistent list.
        let page = match at {
            None => {
                api.store
                    .list(&prefix, start.as_deref(), Some(LIST_BATCH))
                    .await
            }
            Some(rev) => {
                api.store
                    .list_at(&prefix, start.as_deref(), Some(LIST_BATCH), rev)
                    .await
            }
        }
        .map_err(err)?;
        let rv = *at.get_or_insert(page.revision);
        for kv in &page.items {
            if plan.limit.is_some_and(|l| kept >= l) {
                let last = start.as_deref().unwrap_or(&prefix);
                return Ok((rv, Some(encode_continue(last, &prefix, rv as i64))));
            }
            start = Some(kv.key.clone());
            if keep(kv)? {
                kept += 1;
            }
        }
        if !page.more {
            return Ok((rv, None));
        }
    }
}

/// Matching objects of a collection, as `plan` says: one page, plus the
/// revision it was read at and a continue token when more remain.
pub(super) async fn list_objects<S: Store>(
    api: &ApiServer<S>,
    t: &Target,
    filter: &Filter,
    plan: &Plan,
) -> ApiResult<(Vec<Value>, Revision, Option<String>)> {
    let mut items = Vec::new();
    let (rv, cont) = walk_list(api, t, plan, |kv| {
        let obj = from_stored(&kv.value, kv.mod_rev)?;
        let matched = filter.matches(&obj);
        if matched {
            items.push(obj);
        }
        Ok(matched)
    })
    .await?;
    Ok((items, rv, cont))
}

/// The list's envelope around its items (`{"kind":"ServiceList",…,"items":[`
/// and `]}`), as JSON text.
fn list_envelope(t: &Target, rv: Revision, cont: Option<&str>) -> (String, &'static str) {
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    if let Some(c) = cont {
        metadata["continue"] = json!(c);
    }
    let head = json!({"kind": format!("{}List", t.res.kind), "apiVersion": t.res.api_version(), "metadata": metadata});
    let head = head.to_string();
    (format!("{},\"items\":[", &head[..head.len() - 1]), "]}")
}

/// A JSON list without selectors: the stored bytes, each with its
/// resourceVersion spliced in, are the items — nothing is parsed or
/// serialized again (a list's main cost otherwise).
async fn list_json_unfiltered<S: Store>(
    api: &ApiServer<S>,
    t: &Target,
    plan: &Plan,
) -> ApiResult<Response> {
    let mut items: Vec<u8> = Vec::new();
    let (rv, cont) = walk_list(api, t, plan, |kv| {
        if !items.is_empty() {
            items.push(b',');
        }
        if !objects::splice_revision(&kv.value, kv.mod_rev, &mut items) {
            let obj = from_stored(&kv.value, kv.mod_rev)?;
            serde_json::to_writer(&mut items, &obj)
                .map_err(|e| ApiError::internal(e.to_string()))?;
        }
        Ok(true)
    })
    .await?;
    let (head, tail) = list_envelope(t, rv, cont.as_deref());
    let mut body = Vec::with_capacity(head.len() + items.len() + tail.len());
    body.extend_from_slice(head.as_bytes());
    body.extend_from_slice(&items);
    body.extend_from_slice(tail.as_bytes());
    Ok((
        StatusCode::OK,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response())
}

pub(super) async fn list<S: Store>(
    api: &ApiServer<S>,
    t: &Target,
    req: &Request,
) -> ApiResult<Response> {
    let opts = ListOptions::from_request(req, false)?;
    let filter = Filter::from_request(t, req)?;
    let plan = opts.plan(&t.res.key_prefix(t.namespace.as_deref()))?;
    let json_first = matches!(req.accepted().first(), Some(Encoding::Json));
    if filter.is_empty() && json_first && !req.accepts_table() {
        return list_json_unfiltered(api, t, &plan).await;
    }
    let (items, rv, cont) = list_objects(api, t, &filter, &plan).await?;
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

/// Upstream's watch of `t`'s collection (or, with a name, of one object:
/// a field selector on `metadata.name`), from the request's parameters.
/// `sendInitialEvents` (WatchList) is refused as 1.33 does by default;
/// clients then list and watch.
pub(super) async fn watch<S: Store>(
    api: &ApiServer<S>,
    t: &Target,
    req: &Request,
) -> ApiResult<Response> {
    let opts = ListOptions::from_request(req, true)?;
    let mut filter = Filter::from_request(t, req)?;
    if let Some(name) = t.name.as_deref() {
        filter.require_name(name)?;
    }
    let as_table = req.accepts_table();
    let framing = Framing::negotiate(t, req)?;
    let bookmarks = opts.allow_watch_bookmarks;
    // Upstream's default lasts between one and two `--min-request-timeout`s.
    let timeout = Duration::from_secs(match opts.timeout_seconds {
        Some(s) if s > 0 => s as u64,
        _ => 1800 + u64::from(uuid::Uuid::new_v4().as_bytes()[0]) * 1800 / 256,
    });
    let timeout = Some(timeout);
    let prefix = t.res.key_prefix(t.namespace.as_deref());
    let err = |e| ApiError::from_store(e, &t.res.qualified(), "");
    // Upstream's versioner error reaches the client as a 500 here.
    let requested = opts.parsed_revision().map_err(ApiError::internal)?;

    // No resourceVersion, or "0": the current state as ADDED events first.
    let mut initial = Vec::new();
    let start = if requested == 0 {
        let (items, rv, _) = list_objects(api, t, &filter, &Plan::everything()).await?;
        initial = items;
        rv
    } else {
        requested
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
        // JSON without a selector or a Table: every event is in the
        // selection, and its frame is the stored bytes with the revision
        // spliced in — no parse and no re-encoding per watcher.
        let raw = filter.is_empty() && !as_table && framing == Framing::JsonLines;
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
            if let Some(frame) = raw.then(|| raw_frame(&event)).flatten() {
                if tx.send(Ok(frame)).await.is_err() {
                    return;
                }
                continue;
            }
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

/// `{"type":…,"object":…}` and a newline, straight from the stored bytes,
/// for a watch whose selection is everything; `None` when the revision
/// cannot be spliced in (the caller then parses the object).
fn raw_frame(event: &crate::store::Event) -> Option<Bytes> {
    let kind = match event.kind {
        EventKind::Delete => "DELETED",
        EventKind::Put if event.is_create() => "ADDED",
        EventKind::Put => "MODIFIED",
    };
    let mut out = Vec::with_capacity(event.kv.value.len() + 64);
    out.extend_from_slice(b"{\"type\":\"");
    out.extend_from_slice(kind.as_bytes());
    out.extend_from_slice(b"\",\"object\":");
    if !objects::splice_revision(&event.kv.value, event.revision(), &mut out) {
        return None;
    }
    out.extend_from_slice(b"}\n");
    Some(Bytes::from(out))
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
            // Every object is in an unfiltered watch's selection: no need
            // to parse what the object was.
            let before = filter.is_empty()
                || event
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
