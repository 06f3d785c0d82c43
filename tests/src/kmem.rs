//! Kernel memory, as the kernel itself accounts it, for the benchmarks:
//!
//! - rules: a tool (`iptables-restore`, `nft`) runs inside a fresh memory
//!   cgroup of its own; what stays charged to it after the tool exits is
//!   kernel memory the tool left behind (x_tables blobs and nf_tables
//!   objects are allocated with `GFP_KERNEL_ACCOUNT`, so they are charged
//!   to the memcg of the process that loaded them). Legacy iptables' per-rule
//!   counters are per-CPU allocations the kernel does not charge, so its
//!   figure is a lower bound.
//! - maps: `memlock:` in `/proc/self/fdinfo/<fd>` of each BPF map fd this
//!   process holds (the kernel's `bpf_map_memory_usage`).
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

/// Where a cgroup v1 `memory` hierarchy is mounted.
pub const V1_MEMORY_ROOT: &str = "/sys/fs/cgroup/memory";

/// A memory cgroup this process created, removed on drop (its remaining
/// charges move to the parent, as the kernel does for any removed memcg).
pub struct MemCgroup {
    dir: PathBuf,
    version: Version,
}

#[derive(Clone, Copy)]
enum Version {
    /// cgroup v1 `memory` hierarchy: `memory.kmem.usage_in_bytes`.
    V1,
    /// cgroup v2 with the memory controller: `kernel` in `memory.stat`.
    V2,
}

impl MemCgroup {
    /// Creates `<memory hierarchy>/<name>`. Errors when the machine has no
    /// memory controller (v1 `memory` mount, or v2 root delegating `memory`).
    pub fn new(name: &str) -> Result<Self> {
        let v1 = Path::new(V1_MEMORY_ROOT);
        let (parent, version) = if v1.join("memory.kmem.usage_in_bytes").exists() {
            (v1.to_path_buf(), Version::V1)
        } else {
            let v2 = Path::new("/sys/fs/cgroup");
            let controllers =
                std::fs::read_to_string(v2.join("cgroup.subtree_control")).unwrap_or_default();
            if !controllers.split_whitespace().any(|c| c == "memory") {
                bail!(
                    "no memory cgroup controller: neither /sys/fs/cgroup/memory (v1) nor `memory` in /sys/fs/cgroup/cgroup.subtree_control (v2)"
                );
            }
            (v2.to_path_buf(), Version::V2)
        };
        let dir = parent.join(name);
        std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Self { dir, version })
    }

    /// `program args…` wrapped so that it joins this cgroup before it
    /// execs (children inherit it; this process stays where it is).
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", r#"echo $$ > "$0" && exec "$@""#])
            .arg(self.dir.join("cgroup.procs"))
            .arg(program);
        cmd
    }

    /// Kernel memory charged to this cgroup now, in bytes.
    pub fn kernel_bytes(&self) -> Result<u64> {
        match self.version {
            Version::V1 => {
                let path = self.dir.join("memory.kmem.usage_in_bytes");
                let text = std::fs::read_to_string(&path)
                    .with_context(|| format!("reading {}", path.display()))?;
                text.trim()
                    .parse()
                    .with_context(|| format!("{}: `{}`", path.display(), text.trim()))
            }
            Version::V2 => {
                let path = self.dir.join("memory.stat");
                let text = std::fs::read_to_string(&path)
                    .with_context(|| format!("reading {}", path.display()))?;
                stat_field(&text, "kernel")
                    .with_context(|| format!("no `kernel` line in {}", path.display()))
            }
        }
    }
}

impl Drop for MemCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// The value of `key` in a `memory.stat`-style text (`key value` lines).
fn stat_field(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// One BPF map this process holds open.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapMemory {
    /// The map's name (the kernel keeps the first 15 bytes).
    pub name: String,
    /// Capacity in entries.
    pub max_entries: u64,
    /// Bytes the kernel accounts to the map (`memlock:` in fdinfo).
    pub memlock: u64,
}

impl MapMemory {
    /// Bytes per entry of capacity (preallocated maps cost this whether the
    /// entry is used or not).
    pub fn bytes_per_entry(&self) -> f64 {
        self.memlock as f64 / self.max_entries.max(1) as f64
    }
}

/// Every BPF map open in this process, one row per map id (several fds
/// may refer to one map).
pub fn bpf_maps() -> Result<Vec<MapMemory>> {
    let mut seen = std::collections::BTreeMap::new();
    for entry in std::fs::read_dir("/proc/self/fdinfo")? {
        let Ok(text) = std::fs::read_to_string(entry?.path()) else {
            continue; // closed since the listing
        };
        let Some(fdinfo) = parse_map_fdinfo(&text) else {
            continue; // not a map
        };
        if seen.contains_key(&fdinfo.0) {
            continue;
        }
        let info = aya::maps::MapInfo::from_id(fdinfo.0)
            .with_context(|| format!("map id {}", fdinfo.0))?;
        seen.insert(
            fdinfo.0,
            MapMemory {
                name: info.name_as_str().unwrap_or("").to_owned(),
                max_entries: fdinfo.1,
                memlock: fdinfo.2,
            },
        );
    }
    Ok(seen.into_values().collect())
}

/// `(map_id, max_entries, memlock)` from a BPF map's fdinfo text; `None`
/// for any other kind of fd.
fn parse_map_fdinfo(text: &str) -> Option<(u32, u64, u64)> {
    let field = |key: &str| {
        text.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == key)
                .then(|| v.trim().parse::<u64>().ok())
                .flatten()
        })
    };
    Some((
        u32::try_from(field("map_id")?).ok()?,
        field("max_entries")?,
        field("memlock")?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_map_fdinfo_and_skips_other_fds() {
        let map = "pos:\t0\nflags:\t02000002\nmnt_id:\t15\nino:\t1057\nmap_type:\t1\nkey_size:\t16\nvalue_size:\t8\nmax_entries:\t1024\nmap_flags:\t0x0\nmap_extra:\t0x0\nmemlock:\t91232\nmap_id:\t42\nfrozen:\t0\n";
        assert_eq!(parse_map_fdinfo(map), Some((42, 1024, 91232)));
        let file = "pos:\t0\nflags:\t02100000\nmnt_id:\t25\nino:\t3\n";
        assert_eq!(parse_map_fdinfo(file), None);
    }

    #[test]
    fn finds_the_kernel_line_of_memory_stat() {
        let stat = "anon 4096\nfile 0\nkernel 1200128\nkernel_stack 16384\n";
        assert_eq!(stat_field(stat, "kernel"), Some(1_200_128));
        assert_eq!(stat_field(stat, "sock"), None);
    }
}
