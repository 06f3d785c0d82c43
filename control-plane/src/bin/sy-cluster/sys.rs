//! The machine-facing helpers of `sy-cluster`: `ip`, processes started in
//! a namespace and cgroup, plain HTTP probes from inside a namespace, the
//! cgroup v2 root and mount points.
use std::{
    fs::File,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use control_plane::node_agent::netns::netns_path;

use crate::state::{ProcRec, start_time};

/// Runs `ip args…` inside namespace `ns`.
pub fn ip_in(ns: &str, args: &[&str]) -> Result<()> {
    run("ip", &[&["-n", ns], args].concat())
}

/// Runs `cmd args…`, failing with its stderr.
pub fn run(cmd: &str, args: &[&str]) -> Result<()> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .with_context(|| format!("running {cmd}"))?;
    if !out.status.success() {
        bail!(
            "`{cmd} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Sets sysctl `key` inside namespace `ns`.
pub fn sysctl_in(ns: &str, key: &str, value: &str) -> Result<()> {
    run(
        "ip",
        &[
            "netns",
            "exec",
            ns,
            "sysctl",
            "-qw",
            &format!("{key}={value}"),
        ],
    )
}

/// Starts `program args…` detached (own session, stdin closed, output to
/// `log`) inside network namespace `netns` (else this one) and, if given, cgroup `cgroup`
/// (entered before exec, so everything it starts is under it).
pub fn spawn(
    name: &str,
    netns: Option<&str>,
    cgroup: Option<&Path>,
    program: &Path,
    args: &[String],
    env: &[(&str, &str)],
    log: &Path,
) -> Result<(ProcRec, Child)> {
    let ns_file = netns
        .map(|n| {
            File::open(netns_path(n)).with_context(|| format!("opening network namespace {n}"))
        })
        .transpose()?;
    let cg_file = cgroup
        .map(|c| {
            std::fs::OpenOptions::new()
                .write(true)
                .open(c.join("cgroup.procs"))
                .with_context(|| format!("opening {}/cgroup.procs", c.display()))
        })
        .transpose()?;
    let out = File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let ns_fd = ns_file.as_ref().map(|f| f.as_raw_fd());
    let cg_fd = cg_file.as_ref().map(|f| f.as_raw_fd());
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out);
    for (k, v) in env {
        cmd.env(k, v);
    }
    // SAFETY: only async-signal-safe calls (setsid, setns, write) between
    // fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if let Some(fd) = ns_fd
                && libc::setns(fd, libc::CLONE_NEWNET) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            // "0" moves the writing process (cgroup v2).
            if let Some(fd) = cg_fd
                && libc::write(fd, b"0".as_ptr().cast(), 1) != 1
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .with_context(|| format!("starting {}", program.display()))?;
    let pid = child.id() as i32;
    let start_time = start_time(pid)
        .with_context(|| format!("{name} (pid {pid}) exited at once; see {}", log.display()))?;
    Ok((
        ProcRec {
            name: name.to_owned(),
            pid,
            start_time,
            log: log.to_owned(),
            netns: netns.unwrap_or_default().to_owned(),
        },
        child,
    ))
}

/// Runs `f` on a thread inside network namespace `ns` (sockets it opens
/// belong to that namespace).
pub fn in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    let path = netns_path(ns);
    std::thread::spawn(move || {
        let file = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
        nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET)
            .with_context(|| format!("entering {}", path.display()))?;
        f()
    })
    .join()
    .map_err(|_| anyhow::anyhow!("netns thread panicked"))?
}

/// `GET path` over plain HTTP/1.0 to `addr` from inside `ns`: the status
/// code and body.
pub fn http_get(ns: &str, addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    let path = path.to_owned();
    in_netns(ns, move || {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
        let mut resp = String::new();
        s.read_to_string(&mut resp)?;
        let code = resp
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .with_context(|| format!("no HTTP status from {addr}"))?;
        let body = resp.split_once("\r\n\r\n").map(|x| x.1).unwrap_or("");
        Ok((code, body.to_owned()))
    })
}

/// Whether a TCP connection to `addr` from inside `ns` succeeds.
pub fn tcp_ok(ns: &str, addr: SocketAddr) -> bool {
    in_netns(ns, move || {
        TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
        Ok(())
    })
    .is_ok()
}

/// Where the cgroup v2 hierarchy is mounted (`/sys/fs/cgroup`, or
/// `/sys/fs/cgroup/unified` on a hybrid machine).
pub fn cgroup2_root() -> Result<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts")?;
    let mut found: Vec<PathBuf> = mounts
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(2) == Some(&"cgroup2")).then(|| PathBuf::from(f[1]))
        })
        .collect();
    found.sort_by_key(|p| p.as_os_str().len());
    found
        .into_iter()
        .next()
        .context("no cgroup2 hierarchy is mounted (the socket-level programs need one)")
}

/// Mount points at or under `dir` (from `/proc/self/mountinfo`), deepest first.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut v: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .map(unescape_octal)
        .map(PathBuf::from)
        .filter(|p| p.starts_with(dir))
        .collect();
    v.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    v.dedup();
    v
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_octal(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8)
        {
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The last `n` lines of `log`.
pub fn tail(log: &Path, n: usize) -> String {
    let s = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Finds a sibling binary of this executable (the same cargo target dir).
pub fn sibling(name: &str) -> Result<PathBuf> {
    let me = std::env::current_exe()?;
    let dir = me.parent().context("no executable directory")?;
    let p = dir.join(name);
    anyhow::ensure!(
        p.exists(),
        "{} is missing: build every binary first (`cargo build --bins`)",
        p.display()
    );
    Ok(p)
}
