//! A private bpffs mount and a cgroup v2 child, both removed on drop.
use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};

use crate::cmd::run;

/// A bpffs instance mounted on a fresh directory: pins made under it vanish
/// with the mount, so no test leaves anything in /sys/fs/bpf.
pub struct PrivateBpffs {
    path: PathBuf,
}

impl PrivateBpffs {
    pub fn new(prefix: &str) -> Result<Self> {
        let path = std::env::temp_dir().join(format!("{prefix}-bpffs"));
        fs::create_dir_all(&path)?;
        run(
            "mount",
            &["-t", "bpf", "bpf", path.to_str().context("path")?],
        )?;
        Ok(Self { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for PrivateBpffs {
    fn drop(&mut self) {
        let _ = run("umount", &["-l", &self.path.to_string_lossy()]);
        let _ = fs::remove_dir(&self.path);
    }
}

/// A child cgroup of a cgroup v2 hierarchy, for one test's "node". If no
/// cgroup2 is mounted, a private mount is made and removed with the guard.
pub struct Cgroup {
    path: PathBuf,
    private_mount: Option<PathBuf>,
}

impl Cgroup {
    pub fn new(prefix: &str) -> Result<Self> {
        let (root, private_mount) = match cgroup2_mount()? {
            Some(root) => (root, None),
            None => {
                let m = std::env::temp_dir().join(format!("{prefix}-cgroup2"));
                fs::create_dir_all(&m)?;
                run(
                    "mount",
                    &["-t", "cgroup2", "none", m.to_str().context("path")?],
                )?;
                (m.clone(), Some(m))
            }
        };
        let path = root.join(format!("{prefix}-node"));
        fs::create_dir(&path)
            .with_context(|| format!("cannot create cgroup {}", path.display()))?;
        Ok(Self {
            path,
            private_mount,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `cgroup.procs` of this cgroup: a process writes its PID here to join.
    pub fn procs_file(&self) -> PathBuf {
        self.path.join("cgroup.procs")
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        // Processes started in it were ended by their own guards first; a
        // cgroup with members cannot be removed, so retry briefly.
        for _ in 0..50 {
            if fs::remove_dir(&self.path).is_ok() || !self.path.exists() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        if let Some(m) = &self.private_mount {
            let _ = run("umount", &["-l", &m.to_string_lossy()]);
            let _ = fs::remove_dir(m);
        }
    }
}

/// Where a cgroup2 hierarchy is mounted, if anywhere.
fn cgroup2_mount() -> Result<Option<PathBuf>> {
    let mounts = fs::read_to_string("/proc/self/mounts")?;
    Ok(mounts
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.len() > 2 && f[2] == "cgroup2")
        .map(|f| PathBuf::from(f[1])))
}
