//! Probe handlers as kubelet runs them (`pkg/probe`): `exec` (exit 0 within
//! the timeout), `httpGet` (200 ≤ status < 400, `User-Agent:
//! kube-probe/<major>.<minor>`) and `tcpSocket` (the connect succeeds).
//! Network probes connect from the node's namespace, as kubelet does.
use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::PathBuf,
    time::Duration,
};

use anyhow::{Result, bail};
use k8s_openapi::{
    api::core::v1::{Container, Probe},
    apimachinery::pkg::util::intstr::IntOrString,
};

use super::{netns::in_netns, runtime::Runtime};

/// Upstream's probe defaults (`k8s.io/api/core/v1` `Probe`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    pub initial_delay: Duration,
    pub period: Duration,
    pub timeout: Duration,
    pub success_threshold: u32,
    pub failure_threshold: u32,
}

/// The timing of `p` with upstream's defaults (period 10 s, timeout 1 s,
/// thresholds 1 and 3).
pub fn timing(p: &Probe) -> Timing {
    let secs = |v: Option<i32>, d: i32| Duration::from_secs(v.unwrap_or(d).max(0) as u64);
    Timing {
        initial_delay: secs(p.initial_delay_seconds, 0),
        period: secs(p.period_seconds, 10).max(Duration::from_secs(1)),
        timeout: secs(p.timeout_seconds, 1).max(Duration::from_secs(1)),
        success_threshold: p.success_threshold.unwrap_or(1).max(1) as u32,
        failure_threshold: p.failure_threshold.unwrap_or(3).max(1) as u32,
    }
}

/// A port number or a name among the container's ports.
pub fn resolve_port(port: &IntOrString, c: &Container) -> Result<u16> {
    match port {
        IntOrString::Int(n) if (1..=65535).contains(n) => Ok(*n as u16),
        IntOrString::Int(n) => bail!("port {n} is out of range"),
        IntOrString::String(name) => {
            if let Ok(n) = name.parse::<u16>() {
                return Ok(n);
            }
            c.ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(name))
                .map(|p| p.container_port as u16)
                .ok_or_else(|| anyhow::anyhow!("container {} has no port named {name}", c.name))
        }
    }
}

/// Where a network probe goes, in which namespace it connects.
#[derive(Clone, Debug)]
pub struct Target {
    pub node_netns: PathBuf,
    pub pod_ip: String,
}

/// Runs one probe handler; `Ok(())` is success, an error is a failure
/// with its reason.
pub async fn run(
    p: &Probe,
    c: &Container,
    container_id: &str,
    runtime: &Runtime,
    target: &Target,
) -> Result<()> {
    let t = timing(p);
    if let Some(e) = &p.exec {
        let argv = e.command.clone().unwrap_or_default();
        let mut cmd = runtime.exec(container_id, &argv);
        cmd.stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true);
        let status = tokio::time::timeout(t.timeout, cmd.status()).await;
        return match status {
            Err(_) => bail!("command {argv:?} timed out after {:?}", t.timeout),
            Ok(Err(e)) => bail!("command {argv:?}: {e}"),
            Ok(Ok(s)) if s.success() => Ok(()),
            Ok(Ok(s)) => bail!("command {argv:?} exited with {}", s.code().unwrap_or(-1)),
        };
    }
    if let Some(h) = &p.http_get {
        let port = resolve_port(&h.port, c)?;
        let host = h
            .host
            .clone()
            .filter(|x| !x.is_empty())
            .unwrap_or_else(|| target.pod_ip.clone());
        let path = h
            .path
            .clone()
            .filter(|x| !x.is_empty())
            .unwrap_or_else(|| "/".into());
        if h.scheme
            .as_deref()
            .is_some_and(|s| s.eq_ignore_ascii_case("HTTPS"))
        {
            bail!("HTTPS probes are not supported");
        }
        let headers: Vec<(String, String)> = h
            .http_headers
            .iter()
            .flatten()
            .map(|x| (x.name.clone(), x.value.clone()))
            .collect();
        let ns = target.node_netns.clone();
        let timeout = t.timeout;
        let code = tokio::task::spawn_blocking(move || {
            in_netns(&ns, move |_| {
                http_get(&host, port, &path, &headers, timeout)
            })
        })
        .await??;
        if (200..400).contains(&code) {
            return Ok(());
        }
        bail!("HTTP probe failed with statuscode: {code}");
    }
    if let Some(s) = &p.tcp_socket {
        let port = resolve_port(&s.port, c)?;
        let host = s
            .host
            .clone()
            .filter(|x| !x.is_empty())
            .unwrap_or_else(|| target.pod_ip.clone());
        let ns = target.node_netns.clone();
        let timeout = t.timeout;
        return tokio::task::spawn_blocking(move || {
            in_netns(&ns, move |_| {
                let addr: SocketAddr = format!("{host}:{port}").parse()?;
                TcpStream::connect_timeout(&addr, timeout)?;
                Ok(())
            })
        })
        .await?;
    }
    bail!("probe has no handler (exec, httpGet or tcpSocket)")
}

/// A minimal HTTP/1.1 GET; the status code of the answer.
fn http_get(
    host: &str,
    port: u16,
    path: &str,
    headers: &[(String, String)],
    timeout: Duration,
) -> Result<u16> {
    let addr: SocketAddr = format!("{host}:{port}").parse()?;
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n");
    let has = |n: &str| headers.iter().any(|(k, _)| k.eq_ignore_ascii_case(n));
    if !has("User-Agent") {
        req.push_str("User-Agent: kube-probe/1.33\r\n");
    }
    if !has("Accept") {
        req.push_str("Accept: */*\r\n");
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())?;
    let mut buf = [0u8; 64];
    let mut got = Vec::new();
    while !got.windows(2).any(|w| w == b"\r\n") {
        let n = s.read(&mut buf)?;
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&got);
    let code = line
        .split(' ')
        .nth(1)
        .and_then(|c| c.trim().parse().ok())
        .ok_or_else(|| {
            anyhow::anyhow!(
                "not an HTTP answer: {:?}",
                line.lines().next().unwrap_or("")
            )
        })?;
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_named_ports() {
        let t = timing(&Probe::default());
        assert_eq!(t.period, Duration::from_secs(10));
        assert_eq!(t.failure_threshold, 3);
        let c: Container = serde_json::from_value(serde_json::json!({
            "name": "c", "ports": [{"name": "http", "containerPort": 8080}]}))
        .unwrap();
        assert_eq!(
            resolve_port(&IntOrString::String("http".into()), &c).unwrap(),
            8080
        );
        assert!(resolve_port(&IntOrString::String("nope".into()), &c).is_err());
    }
}
