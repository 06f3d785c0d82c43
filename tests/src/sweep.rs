//! Guards clean up on success, failure and panic, but not after SIGKILL (a
//! CI time-out, a killed `cargo test`). Everything the test bed makes carries
//! its creator's PID (`sy<pid>x<n>…`); what belongs to a dead PID is removed
//! here before new topologies are built.
use std::{fs, path::Path};

use crate::cmd::run;

fn owner_pid(name: &str) -> Option<u32> {
    name.strip_prefix("sy")?.split_once('x')?.0.parse().ok()
}

fn is_stale(name: &str) -> bool {
    owner_pid(name).is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
}

/// Removes namespaces, cgroups, bpffs/cgroup2 mounts and temp directories
/// of dead test processes. (Their daemons and API servers died with them:
/// see `Proc::spawn_logged`.)
pub fn stale() {
    if let Ok(list) = run("ip", &["netns", "list"]) {
        for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
            if is_stale(name) {
                let _ = run("ip", &["netns", "del", name]);
            }
        }
    }
    let tmp = std::env::temp_dir();
    if let Ok(entries) = fs::read_dir(&tmp) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !is_stale(&name) {
                continue;
            }
            if name.ends_with("-bpffs") || name.ends_with("-cgroup2") {
                let _ = run("umount", &["-l", &e.path().to_string_lossy()]);
                let _ = fs::remove_dir(e.path());
            } else {
                // Cluster directories: API server data, logs, kubeconfigs.
                let _ = fs::remove_dir_all(e.path());
            }
        }
    }
    if let Ok(mounts) = fs::read_to_string("/proc/self/mounts") {
        // cgroup2 mounts, and the v1 memory hierarchy (`kmem::MemCgroup`).
        let dirs = mounts
            .lines()
            .filter_map(|l| {
                let f: Vec<_> = l.split_whitespace().collect();
                (f.len() > 2 && f[2] == "cgroup2").then(|| f[1].to_owned())
            })
            .chain([crate::kmem::V1_MEMORY_ROOT.to_owned()]);
        for dir in dirs {
            if let Ok(entries) = fs::read_dir(&dir) {
                for e in entries.flatten() {
                    if is_stale(&e.file_name().to_string_lossy()) {
                        let _ = fs::remove_dir(e.path());
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn owner_pid_is_parsed_from_names() {
        assert_eq!(super::owner_pid("sy1234x0-node"), Some(1234));
        assert_eq!(super::owner_pid("sy1234x12-bpffs"), Some(1234));
        assert_eq!(super::owner_pid("system.slice"), None);
        assert_eq!(super::owner_pid("sy-x"), None);
    }
}
