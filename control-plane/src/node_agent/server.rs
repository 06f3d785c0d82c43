//! The agent's endpoint for the API server's `pods/log` and `pods/exec`
//! (kubelet's paths): `GET /containerLogs/{ns}/{pod}/{container}` with
//! `follow`, `previous`, `timestamps`, `sinceSeconds`, `sinceTime`,
//! `tailLines`, `limitBytes`; and
//! `GET /exec/{ns}/{pod}/{container}?command=…` upgraded to a WebSocket
//! speaking `v5.channel.k8s.io` or `v4.channel.k8s.io` (kubectl ≥ 1.30:
//! byte 0 of each binary message is the channel — 0 stdin, 1 stdout,
//! 2 stderr, 3 the final `Status`, 4 resize, and in v5 `[255, n]` closes
//! channel n).
//!
//! Every request but `/healthz` must carry a bearer token the API server
//! vouches for, of a user allowed `nodes/proxy` on this node ([`authn`]):
//! the API server presents its own (`kube-apiserver-kubelet-client`); a pod
//! that reaches the node's address gets 401.
use std::{
    path::PathBuf,
    process::Stdio,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use axum::{
    Router,
    body::{Body, Bytes},
    extract::{
        Path, RawQuery, State,
        ws::{Message, WebSocket, WebSocketUpgrade},
    },
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::get,
};
use futures::{SinkExt as _, StreamExt as _};
use serde_json::json;
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    sync::mpsc,
};

use super::{Agent, ContainerView, authn, runtime::parse_cri_line};

/// Serves the endpoint on `listener` until the process ends.
pub async fn serve(agent: Arc<Agent>, listener: tokio::net::TcpListener) {
    let app = Router::new()
        .route("/containerLogs/{ns}/{pod}/{container}", get(logs))
        .route("/exec/{ns}/{pod}/{container}", get(exec).post(exec))
        .route_layer(axum::middleware::from_fn_with_state(
            Arc::clone(&agent),
            authorize,
        ))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(agent);
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(error = %e, "agent endpoint stopped");
    }
}

/// Lets a request through only for a user the API server allows
/// `nodes/proxy` on this node.
async fn authorize(
    State(agent): State<Arc<Agent>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let Some(token) = authn::bearer(req.headers()) else {
        return bad(StatusCode::UNAUTHORIZED, "Unauthorized".to_owned());
    };
    let verb = authn::verb(req.method());
    match agent
        .gate
        .check(&agent.client, token, verb, &agent.opts.node_name)
        .await
    {
        Ok(()) => next.run(req).await,
        Err((code, msg)) => bad(code, msg),
    }
}

fn bad(code: StatusCode, msg: String) -> Response {
    (code, msg).into_response()
}

/// The container `ns/pod/container` on this node, or a 404 (status and
/// message, kept small: the `Result` stays cheap to return).
fn find(
    agent: &Agent,
    ns: &str,
    pod: &str,
    container: &str,
) -> Result<ContainerView, (StatusCode, String)> {
    let pods = agent.pods.lock().expect("pods lock");
    let Some(p) = pods.get(&(ns.to_owned(), pod.to_owned())) else {
        return Err((
            StatusCode::NOT_FOUND,
            format!("pod \"{pod}\" not found on this node"),
        ));
    };
    p.containers
        .iter()
        .find(|c| c.name == container)
        .cloned()
        .ok_or_else(|| {
            (
                StatusCode::NOT_FOUND,
                format!("container \"{container}\" in pod \"{pod}\" not found"),
            )
        })
}

fn params(raw: Option<&str>) -> Vec<(String, String)> {
    form_urlencoded::parse(raw.unwrap_or("").as_bytes())
        .into_owned()
        .collect()
}

fn flag(ps: &[(String, String)], k: &str) -> bool {
    ps.iter().any(|(n, v)| n == k && (v == "true" || v == "1"))
}

fn num(ps: &[(String, String)], k: &str) -> Option<i64> {
    ps.iter()
        .find(|(n, _)| n == k)
        .and_then(|(_, v)| v.parse().ok())
}

/// The earliest log time asked for: `sinceSeconds` before now, or
/// `sinceTime` (RFC 3339).
fn since(ps: &[(String, String)]) -> Option<SystemTime> {
    if let Some(s) = num(ps, "sinceSeconds") {
        return SystemTime::now().checked_sub(Duration::from_secs(s.max(0).unsigned_abs()));
    }
    ps.iter()
        .find(|(n, _)| n == "sinceTime")
        .and_then(|(_, v)| crate::api::clock::parse(v))
}

/// Whether a CRI log line was written at or after `since` (to the second).
fn newer(line: &str, since: Option<SystemTime>) -> bool {
    let Some(since) = since else { return true };
    let since_secs = since.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    parse_cri_line(line)
        .and_then(|(ts, _, _)| crate::api::clock::parse(ts))
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .is_none_or(|t| t.as_secs() >= since_secs)
}

/// Formats one CRI log line as `kubectl logs` shows it.
fn render(line: &str, timestamps: bool) -> Option<String> {
    let (ts, _stream, text) = parse_cri_line(line)?;
    Some(if timestamps {
        format!("{ts} {text}\n")
    } else {
        format!("{text}\n")
    })
}

async fn logs(
    State(agent): State<Arc<Agent>>,
    Path((ns, pod, container)): Path<(String, String, String)>,
    RawQuery(q): RawQuery,
) -> Response {
    let c = match find(&agent, &ns, &pod, &container) {
        Ok(c) => c,
        Err((code, msg)) => return bad(code, msg),
    };
    let ps = params(q.as_deref());
    let (follow, timestamps) = (flag(&ps, "follow"), flag(&ps, "timestamps"));
    let path: PathBuf = if flag(&ps, "previous") {
        match c.previous_log.clone() {
            Some(p) => p,
            None => {
                return bad(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "previous terminated container \"{container}\" in pod \"{pod}\" not found"
                    ),
                );
            }
        }
    } else {
        c.log.clone()
    };
    if !path.exists()
        && let Some(r) = c.waiting_reason
    {
        return bad(
            StatusCode::BAD_REQUEST,
            format!("container \"{container}\" in pod \"{pod}\" is waiting to start: {r}"),
        );
    }
    let text = tokio::fs::read_to_string(&path).await.unwrap_or_default();
    let since = since(&ps);
    let mut lines: Vec<String> = text
        .lines()
        .filter(|l| newer(l, since))
        .filter_map(|l| render(l, timestamps))
        .collect();
    if let Some(n) = num(&ps, "tailLines") {
        let n = n.max(0) as usize;
        if lines.len() > n {
            lines.drain(..lines.len() - n);
        }
    }
    let mut first: String = lines.concat();
    if let Some(limit) = num(&ps, "limitBytes") {
        let limit = limit.max(0) as usize;
        if first.len() > limit {
            first.truncate(first.floor_char_boundary(limit));
        }
    }
    if !follow {
        return (StatusCode::OK, [("content-type", "text/plain")], first).into_response();
    }
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(16);
    let offset = text.len() as u64;
    tokio::spawn(async move {
        if tx.send(Ok(Bytes::from(first))).await.is_err() {
            return;
        }
        let Ok(f) = tokio::fs::File::open(&path).await else {
            return;
        };
        let mut f = f;
        let _ = tokio::io::AsyncSeekExt::seek(&mut f, std::io::SeekFrom::Start(offset)).await;
        let mut r = BufReader::new(f);
        let mut line = String::new();
        loop {
            line.clear();
            match r.read_line(&mut line).await {
                Ok(0) => {
                    let running = find(&agent, &ns, &pod, &container)
                        .is_ok_and(|c| c.running && c.log == path);
                    if !running {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Ok(_) if line.ends_with('\n') => {
                    if let Some(out) = render(line.trim_end(), timestamps)
                        && tx.send(Ok(Bytes::from(out))).await.is_err()
                    {
                        return;
                    }
                }
                // A partial line: wait for its end.
                Ok(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                Err(_) => return,
            }
        }
    });
    let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    (StatusCode::OK, [("content-type", "text/plain")], body).into_response()
}

const V5: &str = "v5.channel.k8s.io";
const V4: &str = "v4.channel.k8s.io";

async fn exec(
    State(agent): State<Arc<Agent>>,
    Path((ns, pod, container)): Path<(String, String, String)>,
    RawQuery(q): RawQuery,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    let c = match find(&agent, &ns, &pod, &container) {
        Ok(c) => c,
        Err((code, msg)) => return bad(code, msg),
    };
    let Ok(ws) = ws else {
        return bad(StatusCode::BAD_REQUEST, "exec needs a WebSocket upgrade (v5.channel.k8s.io or v4.channel.k8s.io); SPDY is not supported".into());
    };
    if !c.running {
        return bad(
            StatusCode::BAD_REQUEST,
            format!("container \"{container}\" in pod \"{pod}\" is not running"),
        );
    }
    let ps = params(q.as_deref());
    let argv: Vec<String> = ps
        .iter()
        .filter(|(k, _)| k == "command")
        .map(|(_, v)| v.clone())
        .collect();
    if argv.is_empty() {
        return bad(
            StatusCode::BAD_REQUEST,
            "you must specify at least 1 command".into(),
        );
    }
    let stdin = flag(&ps, "stdin") || flag(&ps, "input");
    let tty = flag(&ps, "tty");
    ws.protocols([V5, V4])
        .on_upgrade(move |socket| async move {
            let v5 = socket.protocol().is_some_and(|p| p == V5);
            run_exec(agent, c.id, argv, stdin, tty, v5, socket).await;
        })
        .into_response()
}

/// The final `Status` on channel 3 (client-go's remotecommand v4 form).
fn exit_status(code: Option<i32>) -> String {
    match code {
        Some(0) => json!({"metadata": {}, "status": "Success"}).to_string(),
        Some(c) => json!({
            "metadata": {}, "status": "Failure", "reason": "NonZeroExitCode",
            "message": format!("command terminated with non-zero exit code: {c}"),
            "details": {"causes": [{"reason": "ExitCode", "message": c.to_string()}]},
        })
        .to_string(),
        None => json!({"metadata": {}, "status": "Failure", "reason": "InternalError",
                       "message": "the command was killed"})
        .to_string(),
    }
}

async fn run_exec(
    agent: Arc<Agent>,
    id: String,
    argv: Vec<String>,
    stdin: bool,
    tty: bool,
    v5: bool,
    socket: WebSocket,
) {
    let (mut sink, mut stream) = socket.split();
    let mut cmd = agent.runtime.exec(&id, &argv);
    cmd.stdin(if stdin { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            let st = json!({"metadata": {}, "status": "Failure", "reason": "InternalError", "message": e.to_string()});
            let mut m = vec![3u8];
            m.extend_from_slice(st.to_string().as_bytes());
            let _ = sink.send(Message::Binary(m.into())).await;
            close_normally(&mut sink).await;
            return;
        }
    };
    let (out_tx, mut out_rx) = mpsc::channel::<Vec<u8>>(32);
    // A tty has no separate stderr: both go to channel 1.
    let err_channel = if tty { 1u8 } else { 2u8 };
    let mut pumps = Vec::new();
    for (reader, ch) in [
        (
            child
                .stdout
                .take()
                .map(|r| Box::new(r) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
            1u8,
        ),
        (
            child
                .stderr
                .take()
                .map(|r| Box::new(r) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
            err_channel,
        ),
    ] {
        let Some(mut reader) = reader else { continue };
        let tx = out_tx.clone();
        pumps.push(tokio::spawn(async move {
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                match reader.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        let mut m = Vec::with_capacity(n + 1);
                        m.push(ch);
                        m.extend_from_slice(&buf[..n]);
                        if tx.send(m).await.is_err() {
                            return;
                        }
                    }
                }
            }
        }));
    }
    drop(out_tx);
    let mut child_stdin = child.stdin.take();
    // The first frame tells the client the stream is up.
    let _ = sink.send(Message::Binary(vec![1u8].into())).await;
    let mut out_open = true;
    loop {
        tokio::select! {
            m = out_rx.recv(), if out_open => match m {
                Some(m) => { if sink.send(Message::Binary(m.into())).await.is_err() { break; } }
                None => out_open = false,
            },
            msg = stream.next() => match msg {
                Some(Ok(Message::Binary(b))) if !b.is_empty() => match b[0] {
                    0 => if let Some(w) = child_stdin.as_mut() && w.write_all(&b[1..]).await.is_err() { child_stdin = None; },
                    255 if v5 && b.get(1) == Some(&0) => child_stdin = None,
                    _ => {}
                },
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => { let _ = child.start_kill(); break; }
                _ => {}
            },
            _ = tokio::time::sleep(Duration::from_millis(50)), if !out_open => break,
        }
    }
    let code = child.wait().await.ok().and_then(|s| s.code());
    for p in pumps {
        let _ = p.await;
    }
    while let Ok(m) = out_rx.try_recv() {
        let _ = sink.send(Message::Binary(m.into())).await;
    }
    let mut m = vec![3u8];
    m.extend_from_slice(exit_status(code).as_bytes());
    let _ = sink.send(Message::Binary(m.into())).await;
    close_normally(&mut sink).await;
}

/// Ends the exec stream with a Close frame carrying 1000 (normal closure).
/// client-go reads only that code as the end of the streams; a Close frame
/// without a code arrives as 1005 and fails `kubectl exec` with "error
/// reading from error stream" even after the exit status was sent.
async fn close_normally(sink: &mut futures::stream::SplitSink<WebSocket, Message>) {
    let frame = axum::extract::ws::CloseFrame {
        code: axum::extract::ws::close_code::NORMAL,
        reason: "".into(),
    };
    let _ = sink.send(Message::Close(Some(frame))).await;
    let _ = sink.close().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_statuses_as_client_go_reads_them() {
        assert!(exit_status(Some(0)).contains("Success"));
        let s: serde_json::Value = serde_json::from_str(&exit_status(Some(7))).unwrap();
        assert_eq!(s["details"]["causes"][0]["message"], "7");
        assert_eq!(s["reason"], "NonZeroExitCode");
    }

    #[test]
    fn since_keeps_lines_from_that_second_on() {
        let since = crate::api::clock::parse("2024-01-01T00:00:10Z");
        assert!(!newer("2024-01-01T00:00:09.999Z stdout F a", since));
        assert!(newer("2024-01-01T00:00:10.1Z stdout F b", since));
        assert!(newer("2024-01-01T00:00:09Z stdout F c", None));
        let ps = vec![("sinceTime".to_owned(), "2024-01-01T00:00:10Z".to_owned())];
        assert_eq!(super::since(&ps), since);
    }

    #[test]
    fn cri_lines_render_with_and_without_timestamps() {
        let l = "2024-01-01T00:00:00Z stdout F hi there";
        assert_eq!(render(l, false).unwrap(), "hi there\n");
        assert_eq!(render(l, true).unwrap(), "2024-01-01T00:00:00Z hi there\n");
    }
}
