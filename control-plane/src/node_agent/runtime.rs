//! Containers through an OCI runtime (`runc`, from Debian): a bundle per
//! container (`config.json` written with `oci-spec`, the root filesystem an
//! overlay of the unpacked image), run in the foreground so the runtime's
//! exit status is the container's (a signal N gives 128+N), stdout/stderr
//! copied into a CRI-format log file.
//!
//! Every container of a pod joins the pod's network namespace by path
//! (localhost is shared) and has its own mount, PID, IPC and UTS
//! namespaces (hostname = the pod's).
use std::{
    collections::HashSet,
    path::{Path, PathBuf},
    process::Stdio,
    sync::Arc,
};

use anyhow::{Context as _, Result, bail};
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use oci_spec::runtime::{
    Capability, LinuxCapabilitiesBuilder, LinuxNamespaceBuilder, LinuxNamespaceType, Mount,
    MountBuilder, ProcessBuilder, RootBuilder, Spec, UserBuilder,
};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncRead, AsyncWriteExt as _, BufReader},
    process::{Child, Command},
    sync::Mutex,
};

/// A bind mount into a container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BindMount {
    pub source: PathBuf,
    pub destination: String,
    pub read_only: bool,
}

/// What a container's bundle says.
#[derive(Clone, Debug)]
pub struct ContainerSpec {
    pub args: Vec<String>,
    /// `KEY=value`, later entries win.
    pub env: Vec<String>,
    pub cwd: String,
    pub hostname: String,
    /// The network namespace to join (the pod's, or the node's).
    pub netns: PathBuf,
    pub mounts: Vec<BindMount>,
    pub uid: u32,
    pub gid: u32,
    pub read_only_root: bool,
    /// Added to kubelet's default capability set.
    pub add_caps: Vec<String>,
    pub privileged: bool,
}

/// Kubernetes' default capabilities (containerd's and CRI-O's set).
const DEFAULT_CAPS: [Capability; 14] = [
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Mknod,
    Capability::NetRaw,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

/// Parses a capability name as Kubernetes writes it (`NET_ADMIN`).
fn capability(name: &str) -> Result<Capability> {
    let full = if name.starts_with("CAP_") {
        name.to_owned()
    } else {
        format!("CAP_{name}")
    };
    serde_json::from_value(serde_json::Value::String(full))
        .with_context(|| format!("unknown capability `{name}`"))
}

/// The runtime spec of one container (pure: no file is touched).
pub fn build_spec(c: &ContainerSpec) -> Result<Spec> {
    let mut caps: HashSet<Capability> = DEFAULT_CAPS.into_iter().collect();
    for n in &c.add_caps {
        caps.insert(capability(n)?);
    }
    if c.privileged {
        for n in [
            "SYS_ADMIN",
            "NET_ADMIN",
            "SYS_PTRACE",
            "SYS_RESOURCE",
            "IPC_LOCK",
            "SYS_TIME",
        ] {
            caps.insert(capability(n)?);
        }
    }
    let caps = LinuxCapabilitiesBuilder::default()
        .bounding(caps.clone())
        .effective(caps.clone())
        .permitted(caps)
        .build()?;
    let process = ProcessBuilder::default()
        .terminal(false)
        .args(c.args.clone())
        .env(c.env.clone())
        .cwd(c.cwd.clone())
        .user(UserBuilder::default().uid(c.uid).gid(c.gid).build()?)
        .capabilities(caps)
        .no_new_privileges(!c.privileged)
        .build()?;
    let mut spec = Spec::default();
    spec.set_process(Some(process));
    spec.set_hostname(Some(c.hostname.clone()));
    spec.set_root(Some(
        RootBuilder::default()
            .path("rootfs")
            .readonly(c.read_only_root)
            .build()?,
    ));
    let mut mounts: Vec<Mount> = spec.mounts().clone().unwrap_or_default();
    for m in &c.mounts {
        let mut opts = vec!["rbind".to_owned(), "rprivate".to_owned()];
        opts.push(if m.read_only { "ro" } else { "rw" }.to_owned());
        mounts.push(
            MountBuilder::default()
                .destination(&m.destination)
                .typ("bind")
                .source(&m.source)
                .options(opts)
                .build()?,
        );
    }
    spec.set_mounts(Some(mounts));
    let linux = spec
        .linux_mut()
        .as_mut()
        .context("default spec has linux")?;
    let ns = |t: LinuxNamespaceType| LinuxNamespaceBuilder::default().typ(t).build();
    linux.set_namespaces(Some(vec![
        ns(LinuxNamespaceType::Pid)?,
        ns(LinuxNamespaceType::Ipc)?,
        ns(LinuxNamespaceType::Uts)?,
        ns(LinuxNamespaceType::Mount)?,
        LinuxNamespaceBuilder::default()
            .typ(LinuxNamespaceType::Network)
            .path(c.netns.clone())
            .build()?,
    ]));
    if c.privileged {
        linux.set_masked_paths(None);
        linux.set_readonly_paths(None);
    }
    Ok(spec)
}

/// The OCI runtime binary and its state directory (`--root`), one per
/// agent so that agents on one machine never see each other's containers.
#[derive(Clone, Debug)]
pub struct Runtime {
    pub binary: PathBuf,
    pub root: PathBuf,
}

impl Runtime {
    fn cmd(&self) -> Command {
        let mut c = Command::new(&self.binary);
        c.arg("--root").arg(&self.root);
        c
    }

    /// Prepares `bundle`: the overlay root filesystem over `image_rootfs`
    /// and `config.json`. A bundle left over from a previous run is reused.
    pub fn prepare_bundle(
        &self,
        bundle: &Path,
        image_rootfs: &Path,
        spec: &ContainerSpec,
    ) -> Result<()> {
        for d in ["rootfs", "upper", "work"] {
            std::fs::create_dir_all(bundle.join(d))?;
        }
        let rootfs = bundle.join("rootfs");
        if !is_mountpoint(&rootfs) {
            let opts = format!(
                "lowerdir={},upperdir={},workdir={}",
                image_rootfs.display(),
                bundle.join("upper").display(),
                bundle.join("work").display()
            );
            mount(
                Some("overlay"),
                &rootfs,
                Some("overlay"),
                MsFlags::empty(),
                Some(opts.as_str()),
            )
            .with_context(|| format!("mounting the overlay root of {}", bundle.display()))?;
        }
        // Mount targets must exist in the root filesystem.
        for m in &spec.mounts {
            let dest = rootfs.join(m.destination.trim_start_matches('/'));
            if m.source.is_dir() {
                std::fs::create_dir_all(&dest)?;
            } else if !dest.exists() {
                if let Some(p) = dest.parent() {
                    std::fs::create_dir_all(p)?;
                }
                std::fs::write(&dest, b"")?;
            }
        }
        build_spec(spec)?
            .save(bundle.join("config.json"))
            .with_context(|| format!("writing {}/config.json", bundle.display()))?;
        Ok(())
    }

    /// Starts container `id` from `bundle` (foreground `run`), its output
    /// appended to `log` in the CRI format. The returned child's exit status
    /// is the container's.
    pub async fn start(&self, id: &str, bundle: &Path, log: &Path) -> Result<Child> {
        // A container of that id left by a crash would block the name.
        let _ = self.delete(id).await;
        let mut child = self
            .cmd()
            .arg("run")
            .arg("--bundle")
            .arg(bundle)
            .arg(id)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(false)
            .spawn()
            .with_context(|| format!("running {}", self.binary.display()))?;
        if let Some(p) = log.parent() {
            std::fs::create_dir_all(p)?;
        }
        let file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .await?;
        let file = Arc::new(Mutex::new(file));
        if let Some(out) = child.stdout.take() {
            tokio::spawn(copy_log(out, "stdout", Arc::clone(&file)));
        }
        if let Some(err) = child.stderr.take() {
            tokio::spawn(copy_log(err, "stderr", file));
        }
        Ok(child)
    }

    /// Sends `signal` (`TERM`, `KILL`) to the container's processes.
    pub async fn kill(&self, id: &str, signal: &str) -> Result<()> {
        let out = self
            .cmd()
            .args(["kill", "--all", id, signal])
            .output()
            .await?;
        if !out.status.success() {
            bail!(
                "runc kill {id} {signal}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    /// Removes the container's runtime state, stopped or not.
    pub async fn delete(&self, id: &str) -> Result<()> {
        let out = self.cmd().args(["delete", "--force", id]).output().await?;
        if !out.status.success() {
            bail!(
                "runc delete {id}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    /// The ids of the containers this runtime root holds.
    pub async fn list(&self) -> Result<Vec<String>> {
        let out = self.cmd().args(["list", "-q"]).output().await?;
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect())
    }

    /// A command running `argv` inside container `id` (probes, exec).
    pub fn exec(&self, id: &str, argv: &[String]) -> Command {
        let mut c = self.cmd();
        c.arg("exec").arg(id).args(argv);
        c
    }
}

/// Unmounts a bundle's root filesystem and removes the bundle.
pub fn remove_bundle(bundle: &Path) -> Result<()> {
    let rootfs = bundle.join("rootfs");
    if is_mountpoint(&rootfs) {
        umount2(&rootfs, MntFlags::MNT_DETACH)
            .with_context(|| format!("unmounting {}", rootfs.display()))?;
    }
    if bundle.exists() {
        std::fs::remove_dir_all(bundle)
            .with_context(|| format!("removing {}", bundle.display()))?;
    }
    Ok(())
}

/// Whether `p` is a mount point (listed in this process's mountinfo).
pub fn is_mountpoint(p: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = p.to_string_lossy();
    info.lines()
        .any(|l| l.split(' ').nth(4) == Some(want.as_ref()))
}

/// One CRI log line: `<RFC3339Nano> <stream> F <text>`.
pub fn cri_line(now: &str, stream: &str, text: &str) -> String {
    format!("{now} {stream} F {text}\n")
}

async fn copy_log(
    r: impl AsyncRead + Unpin,
    stream: &'static str,
    file: Arc<Mutex<tokio::fs::File>>,
) {
    let mut lines = BufReader::new(r).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let now = k8s_openapi::jiff::Timestamp::now().to_string();
        let mut f = file.lock().await;
        if f.write_all(cri_line(&now, stream, &line).as_bytes())
            .await
            .is_err()
        {
            return;
        }
        let _ = f.flush().await;
    }
}

/// Splits a CRI log line into (timestamp, stream, text).
pub fn parse_cri_line(line: &str) -> Option<(&str, &str, &str)> {
    let mut it = line.splitn(4, ' ');
    let ts = it.next()?;
    let stream = it.next()?;
    let _tag = it.next()?;
    Some((ts, stream, it.next().unwrap_or("")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spec_joins_the_pod_network_and_binds_volumes() {
        let spec = build_spec(&ContainerSpec {
            args: vec!["sh".into()],
            env: vec!["A=1".into()],
            cwd: "/".into(),
            hostname: "web-1".into(),
            netns: "/run/netns/pod".into(),
            mounts: vec![BindMount {
                source: "/x".into(),
                destination: "/data".into(),
                read_only: true,
            }],
            uid: 0,
            gid: 0,
            read_only_root: false,
            add_caps: vec!["NET_ADMIN".into()],
            privileged: false,
        })
        .unwrap();
        let v = serde_json::to_value(&spec).unwrap();
        let ns = v["linux"]["namespaces"].as_array().unwrap();
        assert!(
            ns.iter()
                .any(|n| n["type"] == "network" && n["path"] == "/run/netns/pod")
        );
        assert!(!ns.iter().any(|n| n["type"] == "cgroup"));
        assert!(
            v["mounts"]
                .as_array()
                .unwrap()
                .iter()
                .any(|m| m["destination"] == "/data"
                    && m["options"].as_array().unwrap().contains(&"ro".into()))
        );
        assert!(
            v["process"]["capabilities"]["bounding"]
                .as_array()
                .unwrap()
                .contains(&"CAP_NET_ADMIN".into())
        );
        assert_eq!(v["hostname"], "web-1");
        assert!(capability("NOPE").is_err());
    }

    #[test]
    fn cri_lines_round_trip() {
        let l = cri_line("2024-01-01T00:00:00Z", "stdout", "hello world");
        assert_eq!(
            parse_cri_line(l.trim_end()),
            Some(("2024-01-01T00:00:00Z", "stdout", "hello world"))
        );
    }
}
