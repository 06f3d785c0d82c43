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

/// Two distinct free loopback ports (both held while choosing, so they
/// differ).
fn free_ports() -> Result<(u16, u16)> {
    let a = TcpListener::bind("127.0.0.1:0")?;
    let b = TcpListener::bind("127.0.0.1:0")?;
    Ok((a.local_addr()?.port(), b.local_addr()?.port()))
}

impl LocalEtcd {
    pub fn start() -> Result<Self> {
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
        let etcd = Self {
            child,
            endpoint,
            dir,
        };
        for _ in 0..100 {
            if TcpStream::connect(("127.0.0.1", client)).is_ok() {
                return Ok(etcd);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("etcd did not start listening on {}", etcd.endpoint)
    }
}

impl Drop for LocalEtcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
