//! `pods/log` and `pods/exec`: the API server checks the pod and the
//! container (upstream's `LogLocation`/`streamLocation`, with their
//! messages) and proxies the request to the node agent running the pod,
//! whose address the Node carries in [`AGENT_ENDPOINT`], with its own
//! bearer token ([`crate::pki::KUBELET_CLIENT`]). Logs stream back
//! as the agent sends them (`follow`); exec is a WebSocket upgrade
//! (`v5.channel.k8s.io`/`v4.channel.k8s.io`, as kubectl ≥ 1.31 speaks it)
//! whose bytes are relayed both ways once both sides switched protocols,
//! as upstream's `UpgradeAwareHandler` does. SPDY is refused.
use std::time::Duration;

use axum::{
    body::Body,
    http::{self, HeaderMap, HeaderValue, StatusCode, header},
    response::Response,
};
use hyper_util::rt::TokioIo;
use serde_json::Value;

use super::{
    ApiServer, Request,
    path::Target,
    read::get_object,
    resources::Resource,
    status::{ApiError, ApiResult},
};
use crate::store::Store;

/// The Node annotation holding the agent's `host:port` (written by
/// `sy-node-agent`).
pub const AGENT_ENDPOINT: &str = "node.switchyard.io/agent-endpoint";

/// How long dialing the agent may take.
const DIAL_TIMEOUT: Duration = Duration::from_secs(5);

/// The log options passed on to the agent (upstream's `PodLogOptions`).
const LOG_PARAMS: &[&str] = &[
    "follow",
    "previous",
    "timestamps",
    "tailLines",
    "limitBytes",
    "sinceSeconds",
    "sinceTime",
];

/// The exec options passed on (upstream's `PodExecOptions`).
const EXEC_PARAMS: &[&str] = &["command", "stdin", "stdout", "stderr", "tty"];

fn names(list: Option<&Value>) -> Vec<&str> {
    list.and_then(Value::as_array)
        .map(|cs| cs.iter().filter_map(|c| c["name"].as_str()).collect())
        .unwrap_or_default()
}

/// The container a request is about (upstream's container checks):
/// the one named, which must be the pod's; else the pod's only container.
/// Errors are 400 with upstream's messages.
pub fn container_of(pod: &Value, asked: Option<&str>, exec: bool) -> ApiResult<String> {
    let pod_name = pod
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("");
    let spec = &pod["spec"];
    let (main, init, ephemeral) = (
        names(spec.get("containers")),
        names(spec.get("initContainers")),
        names(spec.get("ephemeralContainers")),
    );
    match asked {
        Some(c) => {
            if main.contains(&c) || init.contains(&c) || ephemeral.contains(&c) {
                Ok(c.to_owned())
            } else {
                Err(ApiError::bad_request(format!(
                    "container {c} is not valid for pod {pod_name}"
                )))
            }
        }
        None => match main.as_slice() {
            [one] => Ok((*one).to_owned()),
            [] => Err(ApiError::bad_request(format!(
                "a container name must be specified for pod {pod_name}"
            ))),
            _ if exec => {
                // streamLocation's form: init containers listed apart.
                let mut m = format!(
                    "a container name must be specified for pod {pod_name}, choose one of: [{}]",
                    main.join(" ")
                );
                if !init.is_empty() {
                    m.push_str(&format!(
                        " or one of the init containers: [{}]",
                        init.join(" ")
                    ));
                }
                Err(ApiError::bad_request(m))
            }
            _ => {
                // validateContainer's form: every container, Go's `%s` of a slice.
                let all: Vec<&str> = init
                    .iter()
                    .chain(&main)
                    .chain(&ephemeral)
                    .copied()
                    .collect();
                Err(ApiError::bad_request(format!(
                    "a container name must be specified for pod {pod_name}, choose one of: [{}]",
                    all.join(" ")
                )))
            }
        },
    }
}

/// Upstream's `PodLogOptions` validation (422 naming the field).
fn validate_log_options(pod: &str, req: &Request) -> ApiResult<()> {
    let mut causes = Vec::new();
    let mut int = |key: &str, min: i64, what: &str| {
        if let Some(v) = req.query.get(key) {
            match v.parse::<i64>() {
                Ok(n) if n < min => causes.push(super::status::Cause::invalid(
                    key,
                    format!("Invalid value: {n}: {what}"),
                )),
                Ok(_) => {}
                Err(_) => causes.push(super::status::Cause::invalid(
                    key,
                    format!("Invalid value: \"{v}\": not an integer"),
                )),
            }
        }
    };
    int("tailLines", 0, "must be greater than or equal to 0");
    int("limitBytes", 1, "must be greater than 0");
    int("sinceSeconds", 1, "must be greater than 0");
    if req.query.get("sinceSeconds").is_some() && req.query.get("sinceTime").is_some() {
        causes.push(super::status::Cause::forbidden(
            "",
            "at most one of `sinceTime` or `sinceSeconds` may be specified",
        ));
    }
    if causes.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid("PodLogOptions", pod, causes))
    }
}

/// The agent of the node a pod is bound to; `None` for an unscheduled pod.
async fn agent_of<S: Store>(api: &ApiServer<S>, pod: &Value) -> ApiResult<Option<String>> {
    let node = pod
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .unwrap_or("");
    if node.is_empty() {
        return Ok(None);
    }
    let nodes = Resource::find("", "v1", "nodes")
        .ok_or_else(|| ApiError::internal("nodes are not served"))?;
    let t = Target {
        res: nodes,
        namespace: None,
        name: Some(node.to_owned()),
        sub: None,
    };
    let (obj, _) = get_object(api, &t).await?;
    obj.pointer("/metadata/annotations")
        .and_then(|a| a.get(AGENT_ENDPOINT))
        .and_then(Value::as_str)
        .map(|e| Some(e.to_owned()))
        .ok_or_else(|| {
            ApiError::internal(format!(
                "error dialing backend: node {node:?} has no agent endpoint (annotation {AGENT_ENDPOINT})"
            ))
        })
}

/// The agent's path with the request's options for it (origin-form: the
/// connection already goes to the agent).
fn agent_uri(path: &str, req: &Request, keep: &[&str]) -> String {
    let mut q = form_urlencoded::Serializer::new(String::new());
    for k in keep {
        for v in req.query.all(k) {
            q.append_pair(k, v);
        }
    }
    let q = q.finish();
    if q.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{q}")
    }
}

fn seg(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// An HTTP/1.1 connection to the agent (with upgrades, for exec).
async fn dial(endpoint: &str) -> ApiResult<hyper::client::conn::http1::SendRequest<Body>> {
    let dial_error = |e: String| ApiError::internal(format!("error dialing backend: {e}"));
    let tcp = tokio::time::timeout(DIAL_TIMEOUT, tokio::net::TcpStream::connect(endpoint))
        .await
        .map_err(|_| dial_error(format!("dial tcp {endpoint}: i/o timeout")))?
        .map_err(|e| dial_error(format!("dial tcp {endpoint}: {e}")))?;
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| dial_error(e.to_string()))?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "agent connection ended");
        }
    });
    Ok(send)
}

/// The API server's credentials for the agent (a bearer token of
/// [`crate::pki::KUBELET_CLIENT`]), which it checks as a kubelet in webhook
/// mode does.
fn with_credentials<S: Store>(
    out: http::request::Builder,
    api: &ApiServer<S>,
) -> http::request::Builder {
    match &api.settings.kubelet_client_token {
        Some(token) => out.header(header::AUTHORIZATION, format!("Bearer {token}")),
        None => out,
    }
}

/// An agent's refusal as upstream passes a kubelet's on: the status code
/// with the body as the message.
async fn refusal(resp: http::Response<hyper::body::Incoming>) -> ApiError {
    let code = resp.status();
    let body = axum::body::to_bytes(Body::new(resp.into_body()), 64 * 1024)
        .await
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&body).trim().to_owned();
    let mut e = match code {
        StatusCode::BAD_REQUEST => ApiError::bad_request(text),
        StatusCode::NOT_FOUND => {
            let mut e = ApiError::bad_request(text);
            e.code = StatusCode::NOT_FOUND;
            e.reason = "NotFound";
            e
        }
        _ => ApiError::internal(text),
    };
    if code.is_server_error() {
        e.code = code;
    }
    e
}

/// `GET pods/{name}/log`.
pub(super) async fn log<S: Store>(
    api: &ApiServer<S>,
    t: &Target,
    req: &Request,
) -> ApiResult<Response> {
    let (pod, _) = get_object(api, &pod_of(t)).await?;
    let name = t.name.as_deref().unwrap_or("");
    let container = container_of(&pod, req.query.get("container"), false)?;
    validate_log_options(name, req)?;
    // An unscheduled pod has no logs yet: an empty answer, as upstream's
    // LocationStreamer without a location.
    let Some(endpoint) = agent_of(api, &pod).await? else {
        return Ok(text_response(Body::empty()));
    };
    let ns = t.namespace.as_deref().unwrap_or("default");
    let uri = agent_uri(
        &format!(
            "/containerLogs/{}/{}/{}",
            seg(ns),
            seg(name),
            seg(&container)
        ),
        req,
        LOG_PARAMS,
    );
    let mut send = dial(&endpoint).await?;
    let out = with_credentials(
        http::Request::get(&uri).header(header::HOST, &endpoint),
        api,
    )
    .body(Body::empty())
    .map_err(|e| ApiError::internal(e.to_string()))?;
    let resp = send
        .send_request(out)
        .await
        .map_err(|e| ApiError::internal(format!("error reading from the agent: {e}")))?;
    if !resp.status().is_success() {
        return Err(refusal(resp).await);
    }
    Ok(text_response(Body::new(resp.into_body())))
}

/// The pod a subresource request is about.
fn pod_of(t: &Target) -> Target {
    Target {
        res: t.res,
        namespace: t.namespace.clone(),
        name: t.name.clone(),
        sub: None,
    }
}

fn text_response(body: Body) -> Response {
    let mut r = Response::new(body);
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    r
}

/// Whether a request asks to switch to a WebSocket.
fn websocket_upgrade(h: &HeaderMap) -> bool {
    let has = |name: header::HeaderName, token: &str| {
        h.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    has(header::CONNECTION, "upgrade") && has(header::UPGRADE, "websocket")
}

/// `GET`/`POST pods/{name}/exec` upgraded to a WebSocket.
pub(super) async fn exec<S: Store>(
    api: &ApiServer<S>,
    t: &Target,
    req: &Request,
) -> ApiResult<Response> {
    let (pod, _) = get_object(api, &pod_of(t)).await?;
    let name = t.name.as_deref().unwrap_or("");
    let container = container_of(&pod, req.query.get("container"), true)?;
    let Some(endpoint) = agent_of(api, &pod).await? else {
        return Err(ApiError::bad_request(format!(
            "pod {name} does not have a host assigned"
        )));
    };
    if !websocket_upgrade(&req.headers) {
        // SPDY (kubectl's fallback) or a plain request.
        return Err(ApiError::bad_request(
            "Upgrade request required: this server streams exec over WebSocket (v5.channel.k8s.io, v4.channel.k8s.io) only, not SPDY",
        ));
    }
    let Some(client_side) = req.take_upgrade() else {
        return Err(ApiError::internal("the connection cannot be upgraded"));
    };
    let ns = t.namespace.as_deref().unwrap_or("default");
    let uri = agent_uri(
        &format!("/exec/{}/{}/{}", seg(ns), seg(name), seg(&container)),
        req,
        EXEC_PARAMS,
    );
    let mut out = with_credentials(
        http::Request::get(&uri).header(header::HOST, &endpoint),
        api,
    );
    // The WebSocket handshake is the client's, passed through whole: the
    // agent's Sec-WebSocket-Accept answers the client's key.
    for (k, v) in &req.headers {
        let k = k.as_str();
        if k.starts_with("sec-websocket-") || k == "connection" || k == "upgrade" {
            out = out.header(k, v);
        }
    }
    let out = out
        .body(Body::empty())
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let mut send = dial(&endpoint).await?;
    let mut resp = send
        .send_request(out)
        .await
        .map_err(|e| ApiError::internal(format!("error reading from the agent: {e}")))?;
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        return Err(refusal(resp).await);
    }
    let agent_side = hyper::upgrade::on(&mut resp);
    let mut answer = Response::new(Body::empty());
    *answer.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    for (k, v) in resp.headers() {
        answer.headers_mut().append(k, v.clone());
    }
    tokio::spawn(async move {
        let (client, agent) = match tokio::try_join!(client_side, agent_side) {
            Ok(both) => both,
            Err(e) => {
                tracing::debug!(error = %e, "exec upgrade failed");
                return;
            }
        };
        let (mut client, mut agent) = (TokioIo::new(client), TokioIo::new(agent));
        let _ = tokio::io::copy_bidirectional(&mut client, &mut agent).await;
    });
    Ok(answer)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn containers_are_checked_with_upstreams_messages() {
        let pod = json!({"metadata": {"name": "web"}, "spec": {
            "initContainers": [{"name": "setup"}],
            "containers": [{"name": "a"}, {"name": "b"}]}});
        assert_eq!(container_of(&pod, Some("b"), false).unwrap(), "b");
        assert_eq!(container_of(&pod, Some("setup"), true).unwrap(), "setup");
        let e = container_of(&pod, Some("x"), false).unwrap_err();
        assert_eq!(
            (e.code, e.message.as_str()),
            (
                StatusCode::BAD_REQUEST,
                "container x is not valid for pod web"
            )
        );
        let e = container_of(&pod, None, false).unwrap_err();
        assert_eq!(
            e.message,
            "a container name must be specified for pod web, choose one of: [setup a b]"
        );
        let e = container_of(&pod, None, true).unwrap_err();
        assert_eq!(
            e.message,
            "a container name must be specified for pod web, choose one of: [a b] or one of the init containers: [setup]"
        );
        let one = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "only"}]}});
        assert_eq!(container_of(&one, None, true).unwrap(), "only");
    }

    #[test]
    fn websocket_upgrades_are_recognised() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert!(websocket_upgrade(&h));
        h.insert(header::UPGRADE, HeaderValue::from_static("SPDY/3.1"));
        assert!(!websocket_upgrade(&h));
    }
}
