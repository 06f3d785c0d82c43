//! A throwaway etcd (Debian's `etcd-server`) on free loopback ports, for the
//! tests and benchmarks that run the API server on etcd. Killed, by PID,
//! when dropped; its data directory goes with it.
use std::{
    net::{TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};

pub struct LocalEtcd {
    child: Child,
    /// `http://127.0.0.1:<port>`, for `--etcd-servers`.
    pub endpoint: String,
    dir: PathBuf,
}

/// Two distinct free loopback ports.
fn free_ports() -> Result<(u16, u16)> {
    Ok((free_loopback_port()?, free_loopback_port()?))
}

/// A TCP port free on 127.0.0.1 right now, distinct from every port this
/// process was handed before, and below the ephemeral range
/// (`net.ipv4.ip_local_port_range` starts at 32768) so that no outgoing
/// connection can take it between this check and a server binding it.
/// Test processes start at different places (by PID) and walk the range.
/// The test bed has the same picker (`testbed::cluster::free_port`): it does
/// not depend on the control plane, so that `cargo xtask bench` builds only
/// the proxy and the test bed.
///
/// # Errors
/// When none of 1,000 candidates in 20000..32000 is free.
pub fn free_loopback_port() -> Result<u16> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
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

impl LocalEtcd {
    /// Starts etcd and returns once it answers `/health` as healthy. The
    /// ports are free when chosen but not held, so another process can
    /// take one first; then etcd exits, and it is started again on others.
    pub fn start() -> Result<Self> {
        let mut last = None;
        for _ in 0..3 {
            match Self::try_start() {
                Ok(etcd) => return Ok(etcd),
                Err(e) => last = Some(e),
            }
        }
        Err(last.expect("three attempts"))
    }

    fn try_start() -> Result<Self> {
        let (client, peer) = free_ports()?;
        let dir = std::env::temp_dir().join(format!("sy-etcd-{}-{client}", std::process::id()));
        let endpoint = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let child = Command::new("etcd")
            .arg("--data-dir")
            .arg(&dir)
            .args([
                "--listen-client-urls",
                &endpoint,
                "--advertise-client-urls",
                &endpoint,
            ])
            .args([
                "--listen-peer-urls",
                &peer_url,
                "--initial-advertise-peer-urls",
                &peer_url,
            ])
            .args(["--initial-cluster", &format!("default={peer_url}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting etcd (Debian's etcd-server; run scripts/setup.sh)")?;
        let mut etcd = Self {
            child,
            endpoint,
            dir,
        };
        for _ in 0..200 {
            if let Some(status) = etcd.child.try_wait()? {
                bail!("etcd on {} exited at start ({status})", etcd.endpoint);
            }
            // Something answering on the port is not enough: it may be
            // another process that took the port first.
            if healthy(client) {
                return Ok(etcd);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!(
            "etcd on {} did not report healthy within 10 s",
            etcd.endpoint
        )
    }
}

/// Whether the etcd on `127.0.0.1:port` answers `GET /health` with
/// `"health":"true"`.
fn healthy(port: u16) -> bool {
    use std::io::{Read as _, Write as _};
    let Ok(mut conn) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = conn.set_read_timeout(Some(Duration::from_secs(1)));
    if conn
        .write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut answer = String::new();
    let _ = conn.read_to_string(&mut answer);
    answer.contains(r#""health":"true""#)
}

impl Drop for LocalEtcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
