//! The state file: everything `up` made, recorded before (or right after)
//! it is made, so that `down` can remove it even after a crash.
use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};

/// The file's name inside the state directory.
pub const FILE: &str = "state.json";

/// A process `up` started, identified by PID and start time (clock ticks
/// since boot, `/proc/<pid>/stat` field 22), so that a PID reused by some
/// other process after a crash is never signalled.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ProcRec {
    /// The component (`sy-apiserver`, `sy-node-agent node-1`, …).
    pub name: String,
    pub pid: i32,
    pub start_time: u64,
    /// Its stdout and stderr.
    pub log: PathBuf,
    /// The network namespace it runs in.
    pub netns: String,
}

/// One node of the box.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NodeRec {
    /// The Node's name, `node-<i>`.
    pub name: String,
    /// Its network namespace.
    pub netns: String,
    /// Its underlay address.
    pub addr: Ipv4Addr,
    /// Its cgroup (cgroup v2 directory); the agent, the daemon and the
    /// pods' containers live under it.
    pub cgroup: PathBuf,
    /// The daemon's `--pin-root`.
    pub pin_root: PathBuf,
    /// The agent's `--root-dir`.
    pub agent_root: PathBuf,
}

/// Everything one cluster is made of.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct State {
    /// Prefix of every namespace and of the cgroup.
    pub prefix: String,
    pub state_dir: PathBuf,
    /// Whether `up` created the state directory (then `down` removes it).
    pub created_state_dir: bool,
    /// Network namespaces, in creation order.
    pub netns: Vec<String>,
    /// cgroup directories, parents first.
    pub cgroups: Vec<PathBuf>,
    /// Mount points (the bpffs).
    pub mounts: Vec<PathBuf>,
    /// Processes, in start order.
    pub processes: Vec<ProcRec>,
    pub nodes: Vec<NodeRec>,
    /// The kubeconfig for clients in the root namespace (through the relay).
    pub kubeconfig: Option<PathBuf>,
    /// The components' kubeconfig (the API server's address on the underlay).
    pub admin_kubeconfig: Option<PathBuf>,
    /// `--etcd`: the API server stores in an etcd of its own.
    pub etcd: bool,
}

impl State {
    /// The state file of `dir`.
    pub fn path(dir: &Path) -> PathBuf {
        dir.join(FILE)
    }

    /// Reads `dir`'s state file; `None` when there is none.
    pub fn load(dir: &Path) -> Result<Option<Self>> {
        let p = Self::path(dir);
        match std::fs::read(&p) {
            Ok(b) => Ok(Some(
                serde_json::from_slice(&b).with_context(|| format!("reading {}", p.display()))?,
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", p.display())),
        }
    }

    /// Writes the state file atomically (a crash leaves the old or the new one).
    pub fn save(&self) -> Result<()> {
        let p = Self::path(&self.state_dir);
        let tmp = p.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?)
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &p).with_context(|| format!("writing {}", p.display()))
    }

    /// The control-plane namespace (API server, controllers, DNS).
    pub fn cp_netns(&self) -> String {
        format!("{}-cp", self.prefix)
    }

    /// The external client's namespace.
    pub fn ext_netns(&self) -> String {
        format!("{}-ext", self.prefix)
    }
}

/// Field 22 (`starttime`) of a `/proc/<pid>/stat` line; `None` if the line
/// is malformed. The command name (field 2) may hold spaces and parentheses,
/// so fields are counted after its last `)`.
pub fn start_time_of_stat(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Whether `stat` describes a zombie (state `Z`, or `X`: dead).
pub fn is_dead_stat(stat: &str) -> bool {
    stat.rfind(')')
        .and_then(|i| stat[i + 1..].split_whitespace().next())
        .is_some_and(|s| s == "Z" || s == "X")
}

/// Whether the recorded process still runs and is the same process. A
/// thread-group leader that has exited shows as a zombie while its other
/// threads are still exiting, and those still hold the process's files
/// (listening sockets, store locks): it runs until they are gone too.
pub fn is_same_running(p: &ProcRec) -> bool {
    std::fs::read_to_string(format!("/proc/{}/stat", p.pid)).is_ok_and(|s| {
        (!is_dead_stat(&s) || has_other_threads(p.pid))
            && start_time_of_stat(&s) == Some(p.start_time)
    })
}

/// Whether `/proc/<pid>/task` lists threads besides the leader.
pub fn has_other_threads(pid: i32) -> bool {
    std::fs::read_dir(format!("/proc/{pid}/task")).is_ok_and(|d| d.count() > 1)
}

/// `pid`'s start time, if it runs.
pub fn start_time(pid: i32) -> Option<u64> {
    start_time_of_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Whether `prefix` is usable in namespace and cgroup names: 1–12
/// characters of `a-z`, `0-9` and `-`, starting with a letter.
pub fn check_prefix(prefix: &str) -> Result<()> {
    let ok = (1..=12).contains(&prefix.len())
        && prefix.starts_with(|c: char| c.is_ascii_lowercase())
        && prefix
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    anyhow::ensure!(
        ok,
        "--prefix `{prefix}`: 1 to 12 characters of a-z, 0-9 and `-`, starting with a letter"
    );
    Ok(())
}

/// Node `i`'s (1-based) underlay address: 192.168.0.(10+i).
pub fn node_addr(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(192, 168, 0, 10 + i)
}

/// The API server's (and DNS server's) address on the underlay.
pub const CP_ADDR: Ipv4Addr = Ipv4Addr::new(192, 168, 0, 2);
/// The external client's address on the underlay.
pub const EXT_ADDR: Ipv4Addr = Ipv4Addr::new(192, 168, 0, 200);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_counts_fields_after_the_command_name() {
        let stat =
            "4242 (a b) c) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        assert_eq!(start_time_of_stat(stat), Some(987654));
        assert!(!is_dead_stat(stat));
        assert!(is_dead_stat(
            "7 (x) Z 1 7 7 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 5 0 0"
        ));
        assert_eq!(start_time_of_stat("garbage"), None);
    }

    #[test]
    fn prefixes() {
        assert!(check_prefix("sy").is_ok());
        assert!(check_prefix("t-1a").is_ok());
        for bad in ["", "1a", "Sy", "a_b", "abcdefghijklm"] {
            assert!(check_prefix(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn state_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = State {
            prefix: "t".into(),
            state_dir: dir.path().to_owned(),
            ..State::default()
        };
        s.netns.push("t-ul".into());
        s.save().unwrap();
        let back = State::load(dir.path()).unwrap().unwrap();
        assert_eq!(back.netns, ["t-ul"]);
        assert!(State::load(&dir.path().join("none")).unwrap().is_none());
    }
}
