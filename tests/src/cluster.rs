//! A one-node cluster in a box for end-to-end tests and benchmarks: our API
//! server on loopback, the node topology of [`Testbed`] (client pod, backend
//! pods), and the `switchyard` daemon watching the server and programming
//! the node's cgroup and pod-facing interfaces, its pins on a private bpffs.
//!
//! Everything is a real process: `sy-apiserver`, `switchyard`, `kubectl`,
//! the Python client. Processes end by PID, the rest is removed on drop.
use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use switchyard::datapath::MapSizes;

use crate::{fs::PrivateBpffs, lab::Testbed, proc::Proc, proc::sibling_binary};

/// The node name the daemon runs as.
pub const NODE_NAME: &str = "node-1";

/// A directory under the temp dir, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(prefix: &str, name: &str) -> Result<Self> {
        let p = std::env::temp_dir().join(format!("{prefix}-{name}"));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p)?;
        Ok(Self(p))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `sy-apiserver` on 127.0.0.1 with an embedded store in `data_dir`.
pub struct ApiServer {
    _proc: Proc,
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
    log: PathBuf,
}

impl ApiServer {
    /// Starts the server on a free port (or on `port`, to come back on the
    /// same address after a stop).
    pub fn start(data_dir: &Path, port: u16) -> Result<Self> {
        Self::start_with(data_dir, port, &[])
    }

    /// [`Self::start`] with more flags (e.g. `--advertise-address`).
    pub fn start_with(data_dir: &Path, port: u16, extra: &[&str]) -> Result<Self> {
        let bin = sibling_binary("sy-apiserver")?;
        let log = data_dir.join("apiserver.log");
        let mut args = vec![
            "--listen".to_owned(),
            format!("127.0.0.1:{port}"),
            "--data-dir".to_owned(),
            data_dir.display().to_string(),
        ];
        args.extend(extra.iter().map(|a| (*a).to_owned()));
        let mut proc = Proc::spawn_logged(&bin, &args, &log)?;
        let addr = loop {
            let line = proc
                .read_line()
                .with_context(|| format!("sy-apiserver log:\n{}", read(&log)))?;
            if let Some(a) = line.strip_prefix("listening on ") {
                break a.parse()?;
            }
        };
        Ok(Self {
            _proc: proc,
            addr,
            data_dir: data_dir.to_owned(),
            log,
        })
    }

    /// The admin kubeconfig the server wrote.
    pub fn kubeconfig(&self) -> PathBuf {
        self.data_dir.join("admin.kubeconfig")
    }

    pub fn log(&self) -> String {
        read(&self.log)
    }
}

/// `kubectl` (the preinstalled dispatcher, matching the server's version)
/// against a server, with its own HOME for the discovery cache.
pub struct Kubectl {
    kubeconfig: PathBuf,
    home: PathBuf,
}

impl Kubectl {
    pub fn new(kubeconfig: &Path, home: &Path) -> Result<Self> {
        std::fs::create_dir_all(home)?;
        Ok(Self {
            kubeconfig: kubeconfig.to_owned(),
            home: home.to_owned(),
        })
    }

    fn command(&self) -> Command {
        // The preinstalled dispatcher picks the kubectl matching the server.
        let bin = ["/usr/bin/kubectl", "/usr/local/bin/kubectl"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .unwrap_or("kubectl");
        let mut c = Command::new(bin);
        c.env("KUBECONFIG", &self.kubeconfig)
            .env("HOME", &self.home);
        c
    }

    /// Runs `kubectl args…`; fails with its stderr.
    pub fn run(&self, args: &[&str]) -> Result<String> {
        self.with_stdin(args, "")
    }

    /// `kubectl apply -f -` of a YAML text.
    pub fn apply(&self, yaml: &str) -> Result<String> {
        self.with_stdin(&["apply", "-f", "-"], yaml)
    }

    pub fn with_stdin(&self, args: &[&str], input: &str) -> Result<String> {
        let mut child = self
            .command()
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot run kubectl")?;
        child
            .stdin
            .take()
            .context("stdin")?
            .write_all(input.as_bytes())?;
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "kubectl {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// The official Python client (from the venv scripts/setup.sh makes).
pub fn python(kubeconfig: &Path, script: &str) -> Result<String> {
    let venv = std::env::var_os("SWITCHYARD_VENV").map_or_else(
        || {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                .join(".local/share/switchyard/venv")
        },
        PathBuf::from,
    );
    let py = venv.join("bin/python");
    if !py.exists() {
        bail!("{} is missing: run scripts/setup.sh", py.display());
    }
    let out = Command::new(&py)
        .arg("-c")
        .arg(script)
        .env("KUBECONFIG", kubeconfig)
        .output()?;
    if !out.status.success() {
        bail!(
            "python client script failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The `switchyard` daemon, restartable with the same flags.
pub struct Daemon {
    proc: Option<Proc>,
    bin: PathBuf,
    args: Vec<String>,
    pin_root: PathBuf,
    pub log: PathBuf,
    pub healthz: SocketAddr,
    pub metrics: SocketAddr,
}

impl Daemon {
    /// Flags every daemon started here has: its pins, the API server, the
    /// node name, health and metrics on free loopback ports, map sizes.
    pub fn base_args(
        pin_root: &Path,
        kubeconfig: &Path,
        node: &str,
        sizes: &MapSizes,
    ) -> Result<Vec<String>> {
        let mut args = Vec::new();
        let mut flag = |name: &str, value: String| args.extend([name.to_owned(), value]);
        flag("--pin-root", pin_root.display().to_string());
        flag("--kubeconfig", kubeconfig.display().to_string());
        flag("--hostname-override", node.to_owned());
        flag(
            "--healthz-bind-address",
            format!("127.0.0.1:{}", free_port()?),
        );
        flag(
            "--metrics-bind-address",
            format!("127.0.0.1:{}", free_port()?),
        );
        flag("--max-frontends", sizes.frontends.to_string());
        flag("--max-backends", sizes.backends.to_string());
        flag("--max-backend-slots", sizes.backend_slots.to_string());
        flag("--max-conntrack", sizes.conntrack.to_string());
        flag("--max-affinity", sizes.affinity.to_string());
        flag("--max-sockets", sizes.sockets.to_string());
        Ok(args)
    }

    /// Flags for `bed`'s node: socket hooks on its cgroup, TC on every
    /// pod-facing interface, small maps (tests run side by side).
    pub fn args_for(bed: &Testbed, kubeconfig: &Path, pin_root: &Path) -> Result<Vec<String>> {
        let mut args = Self::base_args(pin_root, kubeconfig, NODE_NAME, &MapSizes::small())?;
        args.extend(["--cluster-cidr".to_owned(), "10.244.0.0/16".to_owned()]);
        args.extend([
            "--cgroup-path".to_owned(),
            bed.cgroup.path().display().to_string(),
        ]);
        args.extend(["--tc-netns".to_owned(), bed.topo.node.name().to_owned()]);
        for iface in bed.topo.host_ifs() {
            args.extend(["--tc-iface".to_owned(), iface.to_owned()]);
        }
        Ok(args)
    }

    pub fn start(args: Vec<String>, log: &Path) -> Result<Self> {
        let flag = |name: &str| -> Result<String> {
            let i = args
                .iter()
                .position(|a| a == name)
                .context(name.to_owned())?;
            Ok(args[i + 1].clone())
        };
        let mut d = Self {
            proc: None,
            bin: sibling_binary("switchyard")?,
            pin_root: flag("--pin-root")?.into(),
            healthz: flag("--healthz-bind-address")?.parse()?,
            metrics: flag("--metrics-bind-address")?.parse()?,
            args,
            log: log.to_owned(),
        };
        d.restart()?;
        Ok(d)
    }

    /// PID of the running daemon.
    pub fn pid(&self) -> u32 {
        self.proc.as_ref().map_or(0, Proc::pid)
    }

    /// Changes a flag for the next start.
    pub fn set_flag(&mut self, flag: &str, value: &str) -> Result<()> {
        let i = self
            .args
            .iter()
            .position(|a| a == flag)
            .context(flag.to_owned())?;
        self.args[i + 1] = value.to_owned();
        Ok(())
    }

    /// Starts the daemon (again) with the same flags.
    pub fn restart(&mut self) -> Result<()> {
        if self.proc.as_mut().is_some_and(|p| p.exited().is_none()) {
            bail!("the daemon is still running");
        }
        self.proc = Some(Proc::spawn_logged(&self.bin, &self.args, &self.log)?);
        Ok(())
    }

    /// Stops it with `signal`; returns the exit status.
    pub fn stop(&mut self, signal: nix::sys::signal::Signal) -> Result<std::process::ExitStatus> {
        let mut p = self.proc.take().context("the daemon is not running")?;
        p.signal_and_wait(signal, Duration::from_secs(10))
    }

    pub fn log(&self) -> String {
        read(&self.log)
    }

    /// GET `path` on the health server: (status, body).
    pub fn healthz(&self, path: &str) -> Result<(u16, String)> {
        http_get(self.healthz, path)
    }

    /// Waits until `/healthz` answers 200 (first sync done).
    pub fn wait_healthy(&mut self, timeout: Duration) -> Result<()> {
        let (log, healthz) = (self.log.clone(), self.healthz);
        let proc = &mut self.proc;
        poll(
            timeout,
            || {
                if let Some(status) = proc.as_mut().and_then(Proc::exited) {
                    bail!("the daemon exited ({status}):\n{}", read(&log));
                }
                Ok(matches!(http_get(healthz, "/healthz"), Ok((200, _))).then_some(()))
            },
            || format!("the daemon is not healthy:\n{}", read(&log)),
        )
    }

    /// The Prometheus exposition text.
    pub fn metrics_text(&self) -> Result<String> {
        let (status, body) = http_get(self.metrics, "/metrics")?;
        if status != 200 {
            bail!("/metrics answered {status}");
        }
        Ok(body)
    }

    /// The value of one sample, e.g. `switchyard_invalid_objects{kind="Service"}`.
    pub fn metric(&self, sample: &str) -> Result<f64> {
        let text = self.metrics_text()?;
        text.lines()
            .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' '))
            .with_context(|| format!("no sample `{sample}` in\n{text}"))?
            .parse()
            .context("sample value")
    }

    /// `switchyard inspect WHAT --json` on the pinned maps.
    pub fn inspect(&self, what: &str) -> Result<Value> {
        let out = Command::new(&self.bin)
            .arg("--pin-root")
            .arg(&self.pin_root)
            .args(["inspect", what, "--json"])
            .output()?;
        if !out.status.success() {
            bail!("inspect {what}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    /// Backends (`ip:port/PROTO`) of frontend `ip:port/PROTO`, `None` if it
    /// is not in the maps.
    pub fn frontend(&self, frontend: &str) -> Result<Option<Vec<String>>> {
        let rows = self.inspect("services")?;
        Ok(rows
            .as_array()
            .into_iter()
            .flatten()
            .find(|r| r["frontend"] == frontend)
            .map(|r| {
                let mut b: Vec<String> = r["backends"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|b| b.as_str().map(str::to_owned))
                    .collect();
                b.sort();
                b
            }))
    }

    /// Waits until `inspect services` has a row for `frontend` that
    /// `pred` accepts (the row as JSON).
    pub fn wait_row(&self, frontend: &str, pred: impl Fn(&Value) -> bool) -> Result<()> {
        let last = std::cell::RefCell::new(Value::Null);
        poll(
            Duration::from_secs(20),
            || {
                let rows = self.inspect("services")?;
                let row = rows
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|r| r["frontend"] == frontend)
                    .cloned()
                    .unwrap_or(Value::Null);
                let done = !row.is_null() && pred(&row);
                *last.borrow_mut() = row;
                Ok(done.then_some(()))
            },
            || {
                format!(
                    "frontend {frontend}: last row {}\ndaemon log:\n{}",
                    last.borrow(),
                    self.log()
                )
            },
        )
    }

    /// Waits until the maps hold `frontend` with exactly `backends`
    /// (`None`: until it is gone).
    pub fn wait_frontend(&self, frontend: &str, backends: Option<&[String]>) -> Result<()> {
        let want = backends.map(|b| {
            let mut b = b.to_vec();
            b.sort();
            b
        });
        let last = std::cell::RefCell::new(None);
        poll(
            Duration::from_secs(20),
            || {
                let now = self.frontend(frontend)?;
                let done = now == want;
                *last.borrow_mut() = Some(now);
                Ok(done.then_some(()))
            },
            || {
                format!(
                    "frontend {frontend}: maps hold {:?}, expected {want:?}\ndaemon log:\n{}",
                    last.borrow(),
                    self.log()
                )
            },
        )
    }
}

/// The whole one-node cluster. Field order is drop order: the daemon and
/// the API server end first, then pins, then the node and its pods.
pub struct Cluster {
    pub daemon: Daemon,
    pub api: ApiServer,
    pub kubectl: Kubectl,
    pub bpffs: PrivateBpffs,
    pub bed: Testbed,
    pub dir: TempDir,
}

impl Cluster {
    /// API server, node with `backends` pods, and the daemon, healthy.
    pub fn start(backends: u8) -> Result<Self> {
        Self::start_with(backends, |_| {})
    }

    /// The same, with the daemon's flags adjusted by `edit`.
    pub fn start_with(backends: u8, edit: impl FnOnce(&mut Vec<String>)) -> Result<Self> {
        let bed = Testbed::new(backends)?;
        let dir = TempDir::new(&bed.prefix, "cluster")?;
        let bpffs = PrivateBpffs::new(&bed.prefix)?;
        let api_dir = dir.path().join("apiserver");
        std::fs::create_dir_all(&api_dir)?;
        let api = ApiServer::start(&api_dir, 0)?;
        let kubectl = Kubectl::new(&api.kubeconfig(), &dir.path().join("home"))?;
        let mut args = Daemon::args_for(&bed, &api.kubeconfig(), &bpffs.path().join("switchyard"))?;
        edit(&mut args);
        let mut daemon = Daemon::start(args, &dir.path().join("switchyard.log"))?;
        daemon.wait_healthy(Duration::from_secs(30))?;
        Ok(Self {
            daemon,
            api,
            kubectl,
            bpffs,
            bed,
            dir,
        })
    }

    /// Address of backend pod `b{i}` (1-based).
    pub fn pod_ip(&self, i: usize) -> String {
        self.bed.topo.backends[i - 1].ip.to_string()
    }

    /// `ip:port/TCP` of backend pod `b{i}` on `port`.
    pub fn backend(&self, i: usize, port: u16, proto: &str) -> String {
        format!("{}:{port}/{proto}", self.bed.topo.backends[i - 1].ip)
    }
}

/// Calls `check` every 50 ms until it returns `Some`, or fails after
/// `timeout` with `describe()`'s account of what it saw last.
pub fn poll<T>(
    timeout: Duration,
    mut check: impl FnMut() -> Result<Option<T>>,
    describe: impl Fn() -> String,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check()? {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("not within {timeout:?}: {}", describe());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A port free on 127.0.0.1 right now, below the ephemeral range
/// (net.ipv4.ip_local_port_range starts at 32768): no outgoing connection
/// can take it between this check and a daemon's (re)start binding it.
pub fn free_port() -> Result<u16> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    // Spread test processes over the range by PID, then walk it.
    let base = std::process::id().wrapping_mul(7919);
    for _ in 0..1000 {
        let n = base.wrapping_add(NEXT.fetch_add(1, Ordering::Relaxed) * 13);
        let port = 20_000 + (n % 12_000) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no free port in 20000..32000 on 127.0.0.1")
}

/// A minimal HTTP/1.1 GET: (status, body).
pub fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let status = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("not an HTTP response: {resp:?}"))?;
    let body = resp
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    Ok((status, body))
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}
