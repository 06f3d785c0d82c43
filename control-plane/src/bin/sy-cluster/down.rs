//! `sy-cluster down`: removes everything the state file records, in
//! reverse order, whatever state `up` (or a crash) left it in.
use std::{
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};
use nix::{sys::signal::Signal, unistd::Pid};

use crate::{
    state::{ProcRec, State, is_same_running},
    sys,
};

/// Removes the cluster recorded in `st`; every failure is reported and the
/// rest still removed. Errors list what could not be removed.
pub fn down(st: &State) -> Result<()> {
    let mut problems = Vec::new();
    stop_processes(&st.processes);

    // The pods' containers (runc state under each agent's root), their
    // mounts and network namespaces.
    for n in &st.nodes {
        let runc_root = n.agent_root.join("runc");
        if runc_root.exists()
            && let Ok(o) = std::process::Command::new("runc")
                .arg("--root")
                .arg(&runc_root)
                .args(["list", "-q"])
                .output()
        {
            for id in String::from_utf8_lossy(&o.stdout).lines() {
                let _ = std::process::Command::new("runc")
                    .arg("--root")
                    .arg(&runc_root)
                    .args(["delete", "--force", id])
                    .output();
            }
        }
        if let Ok(pods) = std::fs::read_dir(n.agent_root.join("pods")) {
            for d in pods.flatten() {
                let ns = format!("sypod-{}", d.file_name().to_string_lossy());
                if let Err(e) = control_plane::node_agent::netns::delete_netns(&ns) {
                    problems.push(format!("network namespace {ns}: {e:#}"));
                }
            }
        }
    }
    // Whatever still runs in the cluster's own cgroups (containers whose
    // runtime state was lost) is ended through those cgroups.
    for cg in st.cgroups.iter().rev() {
        kill_cgroup(cg);
    }
    // Mounts: the pods' (under the state directory) and the bpffs, deepest first.
    for m in sys::mounts_under(&st.state_dir)
        .into_iter()
        .chain(st.mounts.iter().rev().cloned())
    {
        if sys::mounts_under(&m).contains(&m)
            && let Err(e) = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH)
        {
            problems.push(format!("unmounting {}: {e}", m.display()));
        }
    }
    for cg in st.cgroups.iter().rev() {
        if let Err(e) = remove_cgroup(cg) {
            problems.push(format!("cgroup {}: {e:#}", cg.display()));
        }
    }
    for ns in st.netns.iter().rev() {
        if let Err(e) = control_plane::node_agent::netns::delete_netns(ns) {
            problems.push(format!("network namespace {ns}: {e:#}"));
        }
    }
    // Files last: never remove a directory something is still mounted on.
    let left = sys::mounts_under(&st.state_dir);
    if !left.is_empty() {
        problems.push(format!(
            "still mounted, so {} is kept: {left:?}",
            st.state_dir.display()
        ));
    } else if st.created_state_dir {
        if let Err(e) = std::fs::remove_dir_all(&st.state_dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            problems.push(format!("removing {}: {e}", st.state_dir.display()));
        }
    } else if let Ok(entries) = std::fs::read_dir(&st.state_dir) {
        for e in entries.flatten() {
            let p = e.path();
            let r = if p.is_dir() {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            };
            if let Err(e) = r {
                problems.push(format!("removing {}: {e}", p.display()));
            }
        }
    }
    if !problems.is_empty() {
        bail!(
            "not everything could be removed:\n  {}",
            problems.join("\n  ")
        );
    }
    Ok(())
}

/// SIGTERM to every recorded process still running as itself (newest
/// first), SIGKILL to those left after 5 s.
fn stop_processes(procs: &[ProcRec]) {
    for sig in [Signal::SIGTERM, Signal::SIGKILL] {
        let live: Vec<&ProcRec> = procs.iter().rev().filter(|p| is_same_running(p)).collect();
        if live.is_empty() {
            return;
        }
        for p in &live {
            let _ = nix::sys::signal::kill(Pid::from_raw(p.pid), sig);
        }
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(5) && live.iter().any(|p| is_same_running(p)) {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// `cgroup.kill` on `cg` (kernel 5.14+) and its descendants; waits until empty.
fn kill_cgroup(cg: &Path) {
    if !cg.exists() {
        return;
    }
    let _ = std::fs::write(cg.join("cgroup.kill"), "1");
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(5)
        && std::fs::read_to_string(cg.join("cgroup.procs")).is_ok_and(|s| !s.trim().is_empty())
    {
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Removes `cg` and every cgroup below it (runc's per-container ones).
fn remove_cgroup(cg: &Path) -> Result<()> {
    if !cg.exists() {
        return Ok(());
    }
    if let Ok(entries) = std::fs::read_dir(cg) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup(&e.path())?;
            }
        }
    }
    // A cgroup empties asynchronously after its last process exits.
    let start = Instant::now();
    loop {
        match std::fs::remove_dir(cg) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) if start.elapsed() > Duration::from_secs(5) => {
                bail!("rmdir: {e}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}
